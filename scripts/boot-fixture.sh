#!/usr/bin/env bash
# boot-fixture.sh IMAGE SEED_IMG [TIMEOUT_S]
#
# Boots a COS-shaped disk image (e.g. fixtures/out/cos-fixture.img) under
# QEMU/TCG through UEFI (OVMF) with SEED_IMG (a CIDATA disk, see make-seed.sh)
# as a second, read-only virtio disk, then prints the serial logs of ttyS0
# (console), ttyS1 and ttyS2 (GCE "serial port 3", used by cos-customizer).
# IMAGE is never written: the VM runs on a qcow2 overlay.
#
# Exit status: QEMU's (0 = guest powered off; 1 = guest panic via pvpanic;
# 124 = TIMEOUT_S, default 180, expired).
#
# Environment (all optional):
#   BOOT_OVERLAY=PATH   use/keep this qcow2 overlay instead of a throw-away one;
#                       created on IMAGE if missing, reused as is if present
#                       (boot the same disk twice)
#   BOOT_LOGDIR=DIR     keep ttyS0.log ttyS1.log ttyS2.log there
#   BOOT_GUESTFWD_CMD=PROGRAM
#                       serve 169.254.169.254:80 to the guest: QEMU runs PROGRAM
#                       per connection with stdin/stdout as the socket
#   BOOT_SMP=N          vCPUs (default 2)
#   BOOT_QEMU_EXTRA="…" extra QEMU arguments (word-split)
#
# Never uses KVM: /dev/kvm on these hosts is PVM and hangs stock guests.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 IMAGE SEED_IMG [TIMEOUT_S]" >&2
    exit 2
fi
IMAGE=$(readlink -f "$1")
SEED=$(readlink -f "$2")
TIMEOUT_S=${3:-180}
[[ -f $IMAGE ]] || { echo "no such image: $1" >&2; exit 2; }
[[ -f $SEED ]] || { echo "no such seed: $2" >&2; exit 2; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
LOGDIR=${BOOT_LOGDIR:-$TMP}
mkdir -p "$LOGDIR"

OVERLAY=${BOOT_OVERLAY:-$TMP/disk.qcow2}
if [[ ! -f $OVERLAY ]]; then
    qemu-img create -q -f qcow2 -b "$IMAGE" -F raw "$OVERLAY"
fi
# Per-VM copy of the UEFI variable store (the code part is shared, read-only).
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$TMP/OVMF_VARS.fd"

# User networking around the GCE metadata address so it is on-link for the
# guest; restrict=on keeps the guest off every other network.
NETDEV="user,id=n0,restrict=on,net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.15"
if [[ -n ${BOOT_GUESTFWD_CMD:-} ]]; then
    NETDEV+=",guestfwd=tcp:169.254.169.254:80-cmd:$BOOT_GUESTFWD_CMD"
fi

for n in 0 1 2; do : >"$LOGDIR/ttyS$n.log"; done
# shellcheck disable=SC2206  # BOOT_QEMU_EXTRA is deliberately word-split
EXTRA=(${BOOT_QEMU_EXTRA:-})
rc=0
start=$(date +%s.%N)
timeout --kill-after=10 "$TIMEOUT_S" qemu-system-x86_64 \
    -accel tcg -cpu max -smp "${BOOT_SMP:-2}" -m 1024 -machine q35 \
    -nodefaults -display none -no-reboot \
    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
    -drive if=pflash,format=raw,file="$TMP/OVMF_VARS.fd" \
    -drive file="$OVERLAY",format=qcow2,if=virtio \
    -drive file="$SEED",format=raw,if=virtio,readonly=on \
    -netdev "$NETDEV" -device virtio-net-pci,netdev=n0 \
    -device pvpanic -action panic=exit-failure \
    -serial file:"$LOGDIR/ttyS0.log" -serial file:"$LOGDIR/ttyS1.log" -serial file:"$LOGDIR/ttyS2.log" \
    "${EXTRA[@]}" || rc=$?
end=$(date +%s.%N)

for n in 0 1 2; do
    echo "===== ttyS$n ====="
    cat "$LOGDIR/ttyS$n.log"
done
awk -v rc="$rc" -v s="$start" -v e="$end" 'BEGIN {printf "===== qemu exit %s after %.1f s =====\n", rc, e - s}'
exit "$rc"
