#!/usr/bin/env bash
# The builder image's root file system, from Debian's packages, as a tarball: what both
# recipes put under the two binaries (scripts/build-builder-image.sh without a daemon, and
# the Dockerfile's `tree` stage with one), so both images hold the same files.
#
# Usage: scripts/builder-rootfs.sh OUT.tar
# DEBIAN_MIRROR and DEBIAN_SECURITY_MIRROR point at another mirror (a local one, a proxy).
#
# What is in it and why:
#   - Debian 12's Essential set (--variant=essential): the C library the program links
#     against, and tar, gzip and util-linux (setpriv), which the GCE path runs. No apt: the
#     image runs one program, and nothing installs into it at run time.
#   - e2fsprogs: mkfs.ext4, which formats install-gpu's SCRATCH disk (core/src/scratch.rs).
#   - ca-certificates: the roots rustls reads to reach the Google APIs.
#   - merged /usr through mmdebstrap's own hook, without the usrmerge package and the perl
#     it pulls in; no manuals, translations or documents but the copyright files (dpkg
#     keeps these path filters in /etc/dpkg/dpkg.cfg.d/99mmdebstrap).
#   - /workspace, Cloud Build's working folder, so that both recipes hold it.
#   - Left out of the tarball: device nodes (the container runtime provides /dev) and the
#     build host's /etc/hostname and /etc/resolv.conf (the runtime provides these too).
set -euo pipefail

out=${1:?usage: scripts/builder-rootfs.sh OUT.tar}
command -v mmdebstrap >/dev/null ||
  { echo "builder-rootfs: mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 1; }

suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

mmdebstrap --variant=essential --include=ca-certificates,e2fsprogs \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --customize-hook='mkdir -p "$1/workspace"' \
  "$suite" "$out" \
  "deb $mirror $suite main" \
  "deb $mirror $suite-updates main" \
  "deb $security $suite-security main" >&2

# Whether mmdebstrap could make device nodes depends on where it runs (a container build
# may not): dropping them here makes both recipes agree.
tar --delete -f "$out" --wildcards './dev/?*' ./etc/hostname ./etc/resolv.conf
