#!/usr/bin/env bash
# make-seed.sh OUT.img USER_DATA_FILE [META_DATA_FILE]
#
# Test helper: writes a cloud-init NoCloud seed disk (FAT, label CIDATA) with
# user-data and meta-data at its root, like cos-customizer's cidata.img.
# Without META_DATA_FILE, meta-data is empty (as upstream's CIDATA). The product
# builds CIDATA itself; this is only for checking the fixture by hand/in tests.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 OUT.img USER_DATA_FILE [META_DATA_FILE]" >&2
    exit 2
fi
OUT=$1
USER_DATA=$2
META_DATA=${3:-}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cp "$USER_DATA" "$TMP/user-data"
if [[ -n $META_DATA ]]; then cp "$META_DATA" "$TMP/meta-data"; else : >"$TMP/meta-data"; fi

rm -f "$OUT.tmp"
mkfs.vfat -n CIDATA -C "$OUT.tmp" 16384 >/dev/null   # 16 MiB (upstream: 128 MiB)
MTOOLS_SKIP_CHECK=1 mcopy -i "$OUT.tmp" "$TMP/user-data" "$TMP/meta-data" ::/
mv -f "$OUT.tmp" "$OUT"
