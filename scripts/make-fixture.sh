#!/usr/bin/env bash
# make-fixture.sh [OUTDIR]
#
# Builds OUTDIR/cos-fixture.img: a raw, sparse, 4 GiB disk image shaped like
# Container-Optimized OS (COS partition numbers, labels, type codes and physical
# order; UEFI -> GRUB -> verified root on ROOT-A via dm-verity; STATE/OEM/ESP),
# made only from Debian bookworm packages, with a Debian systemd + cloud-init
# root file system. See fixtures/README.md for the layout and the contract.
#
# Also keeps OUTDIR/rootfs/ (the unpacked root file system) so tests can run
# cloud-init's schema checker from it, and OUTDIR/recipe.sha256 so a repeat run
# with an unchanged recipe returns at once. The image path is the last line
# printed on stdout.
#
# Needs root (debootstrap + chroot apt-get, and root-owned files in the image)
# and the Debian packages: debootstrap gdisk cgpt dosfstools mtools e2fsprogs
# cryptsetup-bin grub-efi-amd64-bin busybox-static cpio kmod zstd fdisk.
# No loop devices and no mounts of the image: every file system is written at
# its partition offset (mkfs -E offset / --offset, mtools img@@offset).
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO_DIR=$(dirname "$(dirname "$SCRIPT_PATH")")
OUTDIR=$(readlink -m "${1:-$REPO_DIR/fixtures/out}")
IMG="$OUTDIR/cos-fixture.img"
SUITE=bookworm
MIRROR=${FIXTURE_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${FIXTURE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

log() { printf '[make-fixture %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------
# Reuse: the recipe is this script (it reads no other file from fixtures/).
# ---------------------------------------------------------------------------
RECIPE_HASH=$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)
if [[ -f $IMG && -f $OUTDIR/recipe.sha256 && $(<"$OUTDIR/recipe.sha256") == "$RECIPE_HASH" ]]; then
    log "up to date (recipe $RECIPE_HASH)"
    echo "$IMG"
    exit 0
fi

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot, root-owned image files)"
for tool in debootstrap sgdisk cgpt mkfs.vfat mmd mcopy mkfs.ext4 veritysetup grub-mkimage \
    cpio depmod modprobe zstd sfdisk dpkg-deb apt-get; do
    command -v "$tool" >/dev/null || die "missing host tool: $tool"
done
if ! /bin/busybox --list 2>/dev/null | grep -x modprobe >/dev/null; then die "need busybox-static (/bin/busybox)"; fi

mkdir -p "$OUTDIR/cache"
rm -f "$OUTDIR/recipe.sha256"   # a half-finished build must not look reusable
WORK=$(mktemp -d "$OUTDIR/.build.XXXXXX")
ROOTFS="$WORK/rootfs"

cleanup() {
    # Only ever unmount what this script mounted inside its own work dir.
    for m in "$WORK/base/proc" "$WORK/base/sys"; do
        if mountpoint -q "$m" 2>/dev/null; then umount -l "$m" || true; fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
# 1. Root file system: debootstrap + apt, cached as a tarball keyed by the
#    package list (debootstrap ~35 s and apt ~12 s dominate the build).
# ---------------------------------------------------------------------------
BASE_INCLUDE=systemd,systemd-sysv,udev,kmod
# python3-cffi-backend: cloud-init's python3-cryptography depends on a virtual
# package that debootstrap cannot resolve, so install in a second stage.
# dbus: systemd-logind needs it to run, and on COS logind powers off on the ACPI power
# button (what a local build's acknowledgement presses).
# No cryptsetup-bin: COS has no veritysetup on PATH, and the provisioner must not need it.
# docker.io (with containerd and runc) and sudo: COS ships docker and containerd, and the
# original's test scripts preload containers with `sudo docker pull`. apparmor: the kernel
# enforces it, as COS's, and docker loads its docker-default profile with apparmor_parser.
# libnss-myhostname: the VM resolves its own name (COS: systemd-resolved does), which sudo
# looks up.
EXTRA_PKGS=(cloud-init python3-cffi-backend e2fsprogs cgpt dmsetup fdisk
    util-linux iproute2 curl dbus docker.io sudo apparmor libnss-myhostname)
ROOTFS_KEY=$(printf '%s\n' "$SUITE" "$MIRROR" "$SECURITY_MIRROR" "$BASE_INCLUDE" "${EXTRA_PKGS[@]}" \
    | sha256sum | cut -c1-16)
ROOTFS_TAR="$OUTDIR/cache/rootfs-$ROOTFS_KEY.tar.zst"

if [[ ! -f $ROOTFS_TAR ]]; then
    log "debootstrap $SUITE (minbase + $BASE_INCLUDE)"
    base="$WORK/base"
    debootstrap --variant=minbase --include="$BASE_INCLUDE" "$SUITE" "$base" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    cat >"$base/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    log "apt-get install ${EXTRA_PKGS[*]}"
    mount -t proc proc "$base/proc"
    chroot "$base" /usr/bin/env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 sh -ec '
        apt-get -q update
        apt-get -q -y --no-install-recommends -o Dpkg::Options::=--force-confold dist-upgrade
        apt-get -q -y --no-install-recommends install "$@"
        apt-get clean' sh "${EXTRA_PKGS[@]}" >"$WORK/apt.log" 2>&1 \
        || { umount "$base/proc"; tail -n 30 "$WORK/apt.log" >&2; die "chroot apt-get failed"; }
    umount "$base/proc"
    # Slim: apt caches, docs and locales are not needed (keep __pycache__: the
    # precompiled .pyc files matter a lot under TCG).
    rm -rf "$base"/var/cache/apt/archives/*.deb "$base"/var/cache/apt/*.bin "$base"/var/lib/apt/lists/* \
        "$base"/usr/share/doc/* "$base"/usr/share/man/* "$base"/usr/share/info/* \
        "$base"/usr/share/locale/* "$base"/usr/share/i18n/* "$base"/var/log/*.log \
        "$base"/var/log/apt/* "$base"/var/cache/debconf/*-old
    tar -C "$base" --numeric-owner -cf - . | zstd -q -T0 -3 -o "$ROOTFS_TAR.tmp"
    mv -f "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$base"
else
    log "reusing cached rootfs $ROOTFS_TAR"
fi
mkdir "$ROOTFS"
zstd -q -dc "$ROOTFS_TAR" | tar -C "$ROOTFS" --numeric-owner -xpf -

# ---------------------------------------------------------------------------
# 2. Kernel: Debian's cloud flavour (LZ4 bzImage, ext4 built in), unpacked, not
#    installed on the host. The ABI name changes with security updates.
# ---------------------------------------------------------------------------
KPKG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $KPKG ]] || die "cannot resolve linux-image-cloud-amd64 (apt-get update?)"
KVER=${KPKG#linux-image-}
KDEB=$(find "$OUTDIR/cache" -maxdepth 1 -name "${KPKG}_*.deb" | head -n1)
if [[ -z $KDEB ]]; then
    log "downloading $KPKG"
    (cd "$OUTDIR/cache" && apt-get download -q "$KPKG" >/dev/null 2>&1)
    KDEB=$(find "$OUTDIR/cache" -maxdepth 1 -name "${KPKG}_*.deb" | head -n1)
    [[ -n $KDEB ]] || die "apt-get download $KPKG failed"
fi
KDIR="$WORK/kernel"
dpkg-deb -x "$KDEB" "$KDIR"
depmod -b "$KDIR" "$KVER"
VMLINUZ="$KDIR/boot/vmlinuz-$KVER"
log "kernel $KVER"

# ---------------------------------------------------------------------------
# 3. Customise the root file system (COS-like runtime behaviour).
# ---------------------------------------------------------------------------
R=$ROOTFS
# Kernel modules (all of them: docker/overlay/loop etc. may be needed by scripts).
mkdir -p "$R/usr/lib/modules"
cp -a "$KDIR/lib/modules/$KVER" "$R/usr/lib/modules/"
depmod -b "$R" "$KVER"

BUILD_ID="fixture-$(date -u +%Y%m%d%H%M%S)-${RECIPE_HASH:0:12}"
cat >"$R/usr/lib/os-release" <<EOF
NAME="Container-Optimized OS"
ID=cos
PRETTY_NAME="Container-Optimized OS fixture (Debian $SUITE based)"
HOME_URL="https://cloud.google.com/container-optimized-os/docs"
VERSION=fixture
VERSION_ID=fixture
BUILD_ID=$BUILD_ID
VARIANT_ID=fixture
KERNEL_VERSION=$KVER
EOF
ln -sfn ../usr/lib/os-release "$R/etc/os-release"

echo cos-fixture >"$R/etc/hostname"
cat >"$R/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
169.254.169.254	metadata.google.internal metadata
EOF
# The QEMU backend's user network answers DNS at 169.254.169.3 (its DHCP says so; COS's
# systemd-resolved would take it from there, the fixture has no resolved).
printf '# cos-fixture: the QEMU user network resolver\nnameserver 169.254.169.3\n' >"$R/etc/resolv.conf"
# Mounts are systemd units below (like COS); libguestfs wants the file to exist.
echo '# cos-fixture: all mounts are systemd units in /usr/lib/systemd/system' >"$R/etc/fstab"
: >"$R/etc/machine-id"              # first boot generates one (COS: /etc is volatile)
rm -f "$R/var/lib/dbus/machine-id"
# Fake SSH host keys, so the provisioner's cleanup of /etc/ssh/ssh_host_* is testable.
mkdir -p "$R/etc/ssh"
echo "fake host key for cos-fixture (not a key)" >"$R/etc/ssh/ssh_host_test_key"
echo "fake host key for cos-fixture (not a key)" >"$R/etc/ssh/ssh_host_test_key.pub"

# Persistent journal in /var/log/journal (on STATE through the /var bind mount).
mkdir -p "$R/etc/systemd/journald.conf.d" "$R/var/log/journal"
printf '[Journal]\nStorage=persistent\n' >"$R/etc/systemd/journald.conf.d/10-cos-fixture.conf"

# `rootdev -s` (ChromeOS tool the upstream provisioner calls): print the
# physical device behind / (the slave of dm-0 for a verified root).
cat >"$R/usr/bin/rootdev" <<'EOF'
#!/bin/sh
# cos-fixture stand-in for ChromeOS rootdev: prints the block device holding /.
dev=$(findmnt -n -o SOURCE /) || exit 1
name=$(basename "$(readlink -f "$dev")")
if [ "$1" = "-s" ] && [ -d "/sys/block/$name/slaves" ]; then
    for s in /sys/block/"$name"/slaves/*; do name=$(basename "$s"); break; done
fi
echo "/dev/$name"
EOF
chmod 0755 "$R/usr/bin/rootdev"

# Mount points must exist on the read-only root.
mkdir -p "$R/mnt/stateful_partition" "$R/mnt/disks" "$R/usr/share/oem" "$R/var/lib/cloud" "$R/home"

# --- systemd units -----------------------------------------------------------
U="$R/usr/lib/systemd/system"
mkdir -p "$U/local-fs.target.wants"
unit_mount() {  # name what type options [extra [Unit] lines...]
    local name=$1 what=$2 type=$3 opts=$4; shift 4
    {
        echo "# cos-fixture: COS-like mount"
        echo "[Unit]"
        echo "Description=cos-fixture mount $name"
        local l; for l in "$@"; do echo "$l"; done
        echo "[Mount]"
        echo "What=$what"
        echo "Where=$(systemd-escape -u -p "${name%.mount}")"
        echo "Type=$type"
        echo "Options=$opts"
        echo "[Install]"
        echo "WantedBy=local-fs.target"
    } >"$U/$name"
    ln -sfn "../$name" "$U/local-fs.target.wants/$name"
}
# STATE (found by GPT name, never by vdaN) holds /var and /home as on COS.
unit_mount mnt-stateful_partition.mount /dev/disk/by-partlabel/STATE ext4 rw,nosuid,nodev,commit=30 \
    "Before=local-fs.target"
unit_mount var.mount /mnt/stateful_partition/var_overlay none bind,nosuid,nodev,noexec \
    "RequiresMountsFor=/mnt/stateful_partition" "Before=local-fs.target"
unit_mount home.mount /mnt/stateful_partition/home none bind,nosuid,nodev,noexec \
    "RequiresMountsFor=/mnt/stateful_partition" "Before=local-fs.target"
# Container data on STATE, exec (as COS's var-lib-docker/var-lib-containerd mounts):
# /var itself is noexec.
unit_mount var-lib-docker.mount /mnt/stateful_partition/var_lib_docker none bind \
    "RequiresMountsFor=/mnt/stateful_partition /var" "Before=local-fs.target"
unit_mount var-lib-containerd.mount /mnt/stateful_partition/var_lib_containerd none bind \
    "RequiresMountsFor=/mnt/stateful_partition /var" "Before=local-fs.target"
# tmpfs /var/lib/cloud: cloud-init sees a new instance and runs on EVERY boot (COS).
unit_mount var-lib-cloud.mount tmpfs tmpfs mode=0755,nosuid,nodev "Before=local-fs.target"
unit_mount tmp.mount tmpfs tmpfs mode=1777,nosuid,nodev,noexec "Before=local-fs.target"
unit_mount mnt-disks.mount tmpfs tmpfs mode=0755,nosuid,nodev "Before=local-fs.target"
# OEM: nofail-style (no Before=local-fs.target, only wanted), so a missing or
# sealed OEM does not block boot.
unit_mount usr-share-oem.mount /dev/disk/by-partlabel/OEM ext4 rw,nosuid,nodev,commit=30 "TimeoutSec=20"

# update-engine stand-in: something to stop/mask, active after boot.
cat >"$U/update-engine.service" <<'EOF'
# cos-fixture stand-in for COS update_engine (does nothing, runs forever).
[Unit]
Description=Update Engine (cos-fixture stand-in)
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
EOF

# Network: systemd-networkd DHCP on the virtio NIC (QEMU user net hands out
# 169.254.169.15+ on 169.254.169.0/24, so the metadata address is on-link).
mkdir -p "$R/etc/systemd/network" "$R/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat >"$R/etc/systemd/network/80-cos-fixture-dhcp.network" <<'EOF'
[Match]
Name=en* eth*
[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
# Don't hang boot for 2 minutes when a VM has no NIC.
cat >"$R/etc/systemd/system/systemd-networkd-wait-online.service.d/cos-fixture.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=20
EOF

# STATE grows to fill its disk at every boot, as on COS (a disk made larger than its image
# gets a larger STATE; this is why the preloader keeps the disk small until partitions have
# moved). Only when STATE is the disk's last partition and 1 MiB or more would be gained;
# sfdisk also moves the backup GPT to the end of a grown disk. Online: resizepart tells the
# kernel, resize2fs grows the mounted file system.
mkdir -p "$R/usr/lib/cos-fixture"
cat >"$R/usr/lib/cos-fixture/grow-state" <<'EOF'
#!/bin/sh
# cos-fixture: grow STATE to the end of its disk (COS does this at boot).
set -eu
part=$(readlink -f /dev/disk/by-partlabel/STATE)
name=$(basename "$part")
sys=/sys/class/block/$name
disk=/dev/$(basename "$(readlink -f "$sys/..")")
num=$(cat "$sys/partition")
start=$(cat "$sys/start")
size=$(cat "$sys/size")
end=$((start + size))
for other in "$sys"/../*/start; do
    if [ "$(cat "$other")" -ge "$end" ]; then
        echo "cos-fixture: STATE is not the last partition on $disk; not growing it"
        exit 0
    fi
done
# The backup GPT takes the disk's last 33 sectors.
if [ $(($(cat "$sys/../size") - 33 - end)) -lt 2048 ]; then
    exit 0
fi
echo ',+' | sfdisk --quiet --no-reread --no-tell-kernel -N "$num" "$disk"
new=$(sfdisk --dump "$disk" | awk -v n="$num" -v d="$disk" '
    index($0, d) == 1 && $1 ~ ("[^0-9]" n "$") {sub(/.*size= */, ""); sub(/,.*/, ""); print}')
resizepart "$disk" "$num" "$new"
resize2fs "$part" >/dev/null 2>&1
echo "cos-fixture: grew STATE ($part) from $size to $new sectors"
EOF
chmod 0755 "$R/usr/lib/cos-fixture/grow-state"
cat >"$U/cos-fixture-grow-state.service" <<'EOF'
# cos-fixture: STATE fills its disk, as on COS.
[Unit]
Description=Grow STATE to the end of its disk (as COS)
DefaultDependencies=no
Requires=mnt-stateful_partition.mount
After=mnt-stateful_partition.mount
Before=local-fs.target cloud-init-local.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/cos-fixture/grow-state
StandardOutput=journal+console
[Install]
WantedBy=local-fs.target
EOF
ln -sfn ../cos-fixture-grow-state.service "$U/local-fs.target.wants/cos-fixture-grow-state.service"

chroot "$R" systemctl enable -q update-engine.service systemd-networkd.service \
    systemd-networkd-wait-online.service docker.socket
# docker (and containerd with it) start on the first use of /run/docker.sock: a boot under
# TCG does not pay for a daemon most builds never use.
chroot "$R" systemctl disable -q docker.service containerd.service
# Masks: gettys (no login on the console; ttyS0 is the log console), timers and
# services that only cost boot time under TCG, and cloud-config.service (trim B).
chroot "$R" systemctl mask -q getty@tty1.service serial-getty@ttyS0.service serial-getty@ttyS1.service \
    serial-getty@ttyS2.service getty-static.service getty.target apt-daily.timer apt-daily-upgrade.timer \
    dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    systemd-tmpfiles-clean.timer cloud-init-hotplugd.socket systemd-pstore.service \
    systemd-update-utmp.service systemd-update-utmp-runlevel.service remote-fs.target \
    cloud-config.service

# cloud-init: as COS, the GCE datasource first (user-data from the metadata server,
# found through SMBIOS "Google Compute Engine"); NoCloud from a disk labelled CIDATA
# for machines that are not GCE-shaped; trimmed module lists ("trim B").
cat >"$R/etc/cloud/cloud.cfg.d/99-cos-fixture.cfg" <<'EOF'
# cos-fixture: GCE, else NoCloud from a disk labelled CIDATA; 3 stages
# (cloud-config.service is masked), user commands in cloud-final after multi-user.target.
datasource_list: [ GCE, NoCloud, None ]
network: {config: disabled}
cloud_init_modules: [write-files]
cloud_config_modules: []
cloud_final_modules: [runcmd, scripts-user, write-files-deferred, power-state-change]
EOF

# --- STATE contents: /var (from the rootfs) and /home -----------------------
STATE_DIR="$WORK/state"
mkdir -p "$STATE_DIR/home" "$STATE_DIR/var_lib_docker" "$STATE_DIR/var_lib_containerd"
cp -a "$R/var" "$STATE_DIR/var_overlay"
mkdir -p "$STATE_DIR/var_overlay/lib/docker" "$STATE_DIR/var_overlay/lib/containerd"
chmod 0755 "$STATE_DIR"

# ---------------------------------------------------------------------------
# 4. Initramfs: busybox + modules + dmsetup/blkid. Replaces COS's in-kernel
#    dm-init (Debian has no CONFIG_DM_INIT), picks the boot slot from the GPT
#    priorities like COS's GRUB gptpriority, mounts the verified root read-only
#    and a volatile /etc, then switch_root to systemd.
# ---------------------------------------------------------------------------
INITRD_DIR="$WORK/initrd"
mkdir -p "$INITRD_DIR"/{bin,sbin,dev,proc,sys,newroot,esp,lib64,run}
cp /bin/busybox "$INITRD_DIR/bin/busybox"
for applet in $(/bin/busybox --list); do
    [[ -e $INITRD_DIR/bin/$applet ]] || ln -s busybox "$INITRD_DIR/bin/$applet"
done
# dmsetup and blkid (PARTUUID lookup for the "local image" entries) with their libs.
for bin in /usr/sbin/dmsetup /usr/sbin/blkid; do
    cp -L "$R$bin" "$INITRD_DIR/sbin/"
    chroot "$R" ldd "$bin" | grep -o '/[^ ]*' | while read -r lib; do
        mkdir -p "$INITRD_DIR$(dirname "$lib")"
        cp -L "$R$lib" "$INITRD_DIR$lib"
    done
done
INITRD_MODULES=(virtio_pci virtio_blk virtio_scsi sd_mod virtio_rng pvpanic-mmio dm-mod dm-verity dm-bufio reed_solomon
    overlay vfat nls_cp437 nls_ascii)
for m in "${INITRD_MODULES[@]}"; do
    modprobe -d "$KDIR" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | sort -u | while read -r ko; do
    rel=${ko#"$KDIR"}
    mkdir -p "$INITRD_DIR$(dirname "$rel")"
    cp "$ko" "$INITRD_DIR$rel"
done
cp "$KDIR/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$INITRD_DIR/lib/modules/$KVER/"
depmod -b "$INITRD_DIR" "$KVER"
printf '%s\n' "${INITRD_MODULES[@]}" >"$INITRD_DIR/modules"

cat >"$INITRD_DIR/init" <<'INIT_EOF'
#!/bin/sh
# cos-fixture initramfs /init (busybox sh). See fixtures/README.md.
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

log() { echo "cos-fixture-initramfs: $*" >/dev/console; echo "cos-fixture-initramfs: $*" >/dev/kmsg; }
# A failed boot must be loud: panic -> pvpanic -> QEMU exits non-zero.
die() { log "FATAL: $*"; sleep 1; echo c >/proc/sysrq-trigger; }

while read -r m; do modprobe "$m" 2>/dev/null || log "modprobe $m failed"; done </modules

CMDLINE=$(cat /proc/cmdline)
cmdline_arg() {  # value of NAME=... (first match, unquoted words only)
    for w in $CMDLINE; do case "$w" in "$1="*) echo "${w#*=}"; return 0 ;; esac; done; return 1
}
# dm-mod.create value from a line; GRUB turns dm-mod.create="X Y" into "dm-mod.create=X Y".
dm_spec() { sed -n 's/.*dm-mod\.create="\{0,1\}\([^"]*\)".*/\1/p'; }

# Partition by GPT partition name (kernel uevent PARTNAME), e.g. part_by_name STATE.
part_by_name() {
    for u in /sys/class/block/*/uevent; do
        if grep -qx "PARTNAME=$1" "$u"; then echo "/dev/$(sed -n 's/^DEVNAME=//p' "$u")"; return 0; fi
    done
    return 1
}

# Wait for the boot disk (virtio probing is asynchronous).
i=0
until ROOTA=$(part_by_name ROOT-A); do
    i=$((i + 1)); [ $i -gt 100 ] && die "no partition named ROOT-A"
    sleep 0.1
done
DISK=/dev/$(basename "$(readlink -f "/sys/class/block/${ROOTA#/dev/}/..")")

# GPT attribute priority (bits 48-51) of partition number $1 on $DISK, like cgpt.
gpt_priority() {
    ss=$(cat "/sys/class/block/${DISK#/dev/}/queue/logical_block_size")
    ent_lba=$(od -An -tu8 -j $((ss + 72)) -N 8 "$DISK" | tr -d ' ')
    ent_size=$(od -An -tu4 -j $((ss + 84)) -N 4 "$DISK" | tr -d ' ')
    byte=$(od -An -tu1 -j $((ent_lba * ss + ($1 - 1) * ent_size + 54)) -N 1 "$DISK" | tr -d ' ')
    echo $((byte & 15))
}

ROOT=$(cmdline_arg root) || ROOT=
INIT=$(cmdline_arg init) || INIT=/sbin/init
SLOT=A
mkdir -p /run/cos-fixture

case "$ROOT" in
/dev/dm-0)
    # Verified boot. COS's GRUB picks "verified image B" when
    # priority(KERN-B, part 4) > priority(KERN-A, part 2). Debian GRUB has no
    # gptpriority, so apply the same rule here: take B's verity table from the
    # "verified image B" entry of grub.cfg on the ESP.
    SPEC=$(echo "$CMDLINE" | dm_spec)
    PA=$(gpt_priority 2); PB=$(gpt_priority 4)
    log "GPT priorities: KERN-A=$PA KERN-B=$PB"
    if [ "$PB" -gt "$PA" ]; then
        SLOT=B
        ESP=$(part_by_name EFI-SYSTEM) || die "no EFI-SYSTEM partition"
        mount -t vfat -o ro "$ESP" /esp || die "cannot mount ESP"
        SPEC=$(awk '/^[ \t]*menuentry[ \t]+"verified image B"/ {f=1} f && /^[ \t]*linux[ \t]/ {print; exit}' \
            /esp/efi/boot/grub.cfg | dm_spec)
        umount /esp
        [ -n "$SPEC" ] || die "no dm-mod.create in the 'verified image B' entry of grub.cfg"
    fi
    [ -n "$SPEC" ] || die "root=/dev/dm-0 but no dm-mod.create= on the command line"
    log "slot $SLOT: dmsetup create --concise \"$SPEC\""
    dmsetup create --noudevsync --concise "$SPEC" || die "dmsetup create failed"
    [ -b /dev/dm-0 ] || die "/dev/dm-0 missing after dmsetup"
    mount -t ext4 -o ro /dev/dm-0 /newroot || die "cannot mount /dev/dm-0"
    ;;
PARTUUID=*|PARTLABEL=*|LABEL=*|/dev/*)
    # "local image A/B": no verity.
    case "$ROOT" in /dev/*) DEV=$ROOT ;; *) DEV=$(blkid -l -o device -t "$ROOT") ;; esac
    [ -b "$DEV" ] || die "root device $ROOT not found"
    case "$(sed -n 's/^PARTNAME=//p' "/sys/class/block/${DEV#/dev/}/uevent")" in ROOT-B) SLOT=B ;; esac
    MODE=ro; for w in $CMDLINE; do [ "$w" = rw ] && MODE=rw; done
    mount -t ext4 -o "$MODE" "$DEV" /newroot || die "cannot mount $DEV"
    ;;
*) die "unsupported root=$ROOT" ;;
esac

# Volatile, writable /etc (COS: /etc is rw tmpfs): overlay, tmpfs upper in /run.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run || die "cannot mount /run"
mkdir -p /newroot/run/cos-fixture/etc/upper /newroot/run/cos-fixture/etc/work
mount -t overlay overlay -o lowerdir=/newroot/etc,upperdir=/newroot/run/cos-fixture/etc/upper,workdir=/newroot/run/cos-fixture/etc/work /newroot/etc \
    || die "cannot mount /etc overlay"
echo "$SLOT" >/newroot/run/cos-fixture/boot-slot
log "root from slot $SLOT ($ROOT); switching to $INIT"

mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot "$INIT"
INIT_EOF
chmod 0755 "$INITRD_DIR/init"
INITRD="$WORK/initrd.img"
(cd "$INITRD_DIR" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -6 >"$INITRD"

# ---------------------------------------------------------------------------
# 5. Disk layout: COS numbers, names, type codes and physical order.
# ---------------------------------------------------------------------------
TMPIMG="$WORK/cos-fixture.img"
truncate -s 4G "$TMPIMG"
# Start sectors and sizes as in local-qemu.md §7 (512-byte sectors; a bare
# "+N" size in sgdisk is N sectors).
ROOT_SECTORS=$((1024 * 1024 * 2))    # ROOT-A / ROOT-B: 1 GiB each
sgdisk -o -a 1 \
    -n 11:64:+8M -t 11:EF02 -c 11:RWFW \
    -n 6:16448:16448 -t 6:7F00 -c 6:KERN-C \
    -n 7:16449:16449 -t 7:7F01 -c 7:ROOT-C \
    -n 9:16450:16450 -t 9:7F02 -c 9:reserved \
    -n 10:16451:16451 -t 10:7F02 -c 10:reserved \
    -n 2:20480:+16M -t 2:7F00 -c 2:KERN-A \
    -n 4:53248:+16M -t 4:7F00 -c 4:KERN-B \
    -n 8:86016:+16M -t 8:8300 -c 8:OEM \
    -n 12:118784:+64M -t 12:EF00 -c 12:EFI-SYSTEM \
    -n 5:249856:+$ROOT_SECTORS -t 5:7F01 -c 5:ROOT-B \
    -n 3:$((249856 + ROOT_SECTORS)):+$ROOT_SECTORS -t 3:7F01 -c 3:ROOT-A \
    -n 1:$((249856 + 2 * ROOT_SECTORS)):0 -t 1:8300 -c 1:STATE \
    "$TMPIMG" >/dev/null
# ChromeOS boot attributes, set by cgpt itself: A preferred and marked good.
cgpt add -i 2 -P 1 -S 1 -T 0 "$TMPIMG"
cgpt add -i 4 -P 0 -S 0 -T 0 "$TMPIMG"

part_start() { sfdisk -d "$TMPIMG" | awk -v p="$TMPIMG$1 " 'index($0, p) == 1 {sub(/.*start= */, ""); sub(/,.*/, ""); print}'; }
part_size() { sfdisk -d "$TMPIMG" | awk -v p="$TMPIMG$1 " 'index($0, p) == 1 {sub(/.*size= */, ""); sub(/,.*/, ""); print}'; }
part_uuid() { sgdisk -i "$1" "$TMPIMG" | awk '/Partition unique GUID/ {print tolower($4)}'; }
[[ $(part_size 3) == "$ROOT_SECTORS" && $(part_size 5) == "$ROOT_SECTORS" ]] || die "ROOT sizes wrong"

# --- OEM (8): empty ext4 with 4 KiB blocks, as COS (mke2fs would pick 1 KiB for --
# 16 MiB, and a sealed OEM with 1 KiB blocks cannot be mounted on dm-verity).
mkfs.ext4 -q -F -b 4096 -L OEM -E "offset=$(($(part_start 8) * 512)),nodiscard" "$TMPIMG" "$(($(part_size 8) / 2))k"

# --- STATE (1): ext4 with var_overlay/ and home/ -------------------------------
mkfs.ext4 -q -F -L STATE -d "$STATE_DIR" -E "offset=$(($(part_start 1) * 512)),nodiscard" \
    "$TMPIMG" "$(($(part_size 1) / 2))k"

# --- ROOT-A (3): read-only ext2 + dm-verity hash tree appended (hashstart = data size)
ROOT_DATA_BLOCKS=$(( (ROOT_SECTORS / 8) - 4096 ))   # 4 KiB blocks; leave 16 MiB for the hash tree
ROOT_DATA_SECTORS=$((ROOT_DATA_BLOCKS * 8))
ROOT_PART="$WORK/root-a.img"
truncate -s $((ROOT_SECTORS * 512)) "$ROOT_PART"
mkfs.ext2 -q -F -b 4096 -L ROOT-A -d "$R" -E nodiscard "$ROOT_PART" "$ROOT_DATA_BLOCKS"
veritysetup format --no-superblock --format=0 --hash=sha256 --data-block-size=4096 --hash-block-size=4096 \
    --data-blocks="$ROOT_DATA_BLOCKS" --hash-offset=$((ROOT_DATA_BLOCKS * 4096)) \
    "$ROOT_PART" "$ROOT_PART" >"$WORK/verity.txt"
ROOT_HASH=$(awk '/^Root hash:/ {print $3}' "$WORK/verity.txt")
SALT=$(awk '/^Salt:/ {print $2}' "$WORK/verity.txt")
[[ -n $ROOT_HASH && -n $SALT ]] || die "veritysetup format output not understood"
dd if="$ROOT_PART" of="$TMPIMG" bs=4M conv=notrunc,sparse oflag=seek_bytes seek=$(($(part_start 3) * 512)) status=none
rm -f "$ROOT_PART"

UUID_A=$(part_uuid 3)
UUID_B=$(part_uuid 5)
verity_table() {  # PARTUUID -> upstream dm-mod.create value (format 0 = ChromeOS, no superblock)
    echo "vroot,,,ro,0 $ROOT_DATA_SECTORS verity 0 PARTUUID=$1 PARTUUID=$1 4096 4096 $ROOT_DATA_BLOCKS $ROOT_DATA_BLOCKS sha256 $ROOT_HASH $SALT"
}

# --- EFI-SYSTEM (12): GRUB, grub.cfg, kernels and initrds -----------------------
COMMON_ARGS="init=/usr/lib/systemd/systemd boot=local rootwait ro noresume noswap loglevel=4 console=ttyS0"
VERITY_ARGS="dm_verity.error_behavior=3 dm_verity.max_bios=-1 dm_verity.dev_wait=1"
cat >"$WORK/grub.cfg" <<EOF
# cos-fixture grub.cfg, shaped like COS's /efi/boot/grub.cfg.
# COS picks the default slot with the ChromeOS-only GRUB command gptpriority:
#   gptpriority \$grubdisk 2 prioA; gptpriority \$grubdisk 4 prioB
#   if [ \$prioA -lt \$prioB ]; then set default=\$defaultB; fi
# Debian's GRUB lacks it; the fixture's initramfs applies that rule instead and
# then uses the dm-mod.create= of the "verified image B" entry below.
defaultA=2
defaultB=3
set default=\$defaultA
set timeout=0

menuentry "local image A" {
  linux /syslinux/vmlinuz.A $COMMON_ARGS root=PARTUUID=$UUID_A
  initrd /syslinux/initrd.A
}

menuentry "local image B" {
  linux /syslinux/vmlinuz.B $COMMON_ARGS root=PARTUUID=$UUID_B
  initrd /syslinux/initrd.B
}

menuentry "verified image A" {
  linux /syslinux/vmlinuz.A $COMMON_ARGS $VERITY_ARGS cros_efi root=/dev/dm-0 dm-mod.create="$(verity_table "$UUID_A")"
  initrd /syslinux/initrd.A
}

menuentry "verified image B" {
  linux /syslinux/vmlinuz.B $COMMON_ARGS $VERITY_ARGS cros_efi root=/dev/dm-0 dm-mod.create="$(verity_table "$UUID_B")"
  initrd /syslinux/initrd.B
}
EOF
grub-mkimage -O x86_64-efi -p /efi/boot -o "$WORK/bootx64.efi" \
    part_gpt fat ext2 normal linux configfile search echo test cat ls gzio serial terminal sleep efi_gop all_video
ESP_OFF=$(($(part_start 12) * 512))
mkfs.vfat -F 16 -n EFI-SYSTEM -h "$(part_start 12)" --offset "$(part_start 12)" "$TMPIMG" \
    "$(($(part_size 12) / 2))" >/dev/null 2>&1 || die "mkfs.vfat failed"
export MTOOLS_SKIP_CHECK=1
mmd -i "$TMPIMG@@$ESP_OFF" ::/efi ::/efi/boot ::/syslinux
mcopy -i "$TMPIMG@@$ESP_OFF" "$WORK/bootx64.efi" ::/efi/boot/bootx64.efi
mcopy -i "$TMPIMG@@$ESP_OFF" "$WORK/grub.cfg" ::/efi/boot/grub.cfg
for s in A B; do
    mcopy -i "$TMPIMG@@$ESP_OFF" "$VMLINUZ" "::/syslinux/vmlinuz.$s"
    mcopy -i "$TMPIMG@@$ESP_OFF" "$INITRD" "::/syslinux/initrd.$s"
done

# ---------------------------------------------------------------------------
# 6. Publish: re-sparsify (mkfs writes zero blocks), rename into place atomically.
# ---------------------------------------------------------------------------
cp --sparse=always "$TMPIMG" "$OUTDIR/.cos-fixture.img.tmp"
rm -f "$TMPIMG"
mv -f "$OUTDIR/.cos-fixture.img.tmp" "$IMG"
rm -rf "$OUTDIR/.rootfs.old"
[[ -d $OUTDIR/rootfs ]] && mv "$OUTDIR/rootfs" "$OUTDIR/.rootfs.old"
mv "$ROOTFS" "$OUTDIR/rootfs"
rm -rf "$OUTDIR/.rootfs.old"
cat >"$OUTDIR/fixture-info.txt" <<EOF
image=$IMG
kernel=$KVER
build_id=$BUILD_ID
root_a_partuuid=$UUID_A
root_b_partuuid=$UUID_B
root_data_blocks=$ROOT_DATA_BLOCKS
root_hash=$ROOT_HASH
salt=$SALT
EOF
echo "$RECIPE_HASH" >"$OUTDIR/recipe.sha256"
log "done: $(du -h "$IMG" | cut -f1) used of $(du -h --apparent-size "$IMG" | cut -f1)"
echo "$IMG"
