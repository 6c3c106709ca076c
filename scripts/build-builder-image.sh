#!/usr/bin/env bash
# Builds the Cloud Build builder image.
#
# Usage: scripts/build-builder-image.sh [--dockerfile] [TAG]   (TAG: cos-customizer:dev)
#
# By default without a daemon or a registry: cargo builds the two binaries here, the root
# file system comes from Debian's packages (scripts/builder-rootfs.sh, mmdebstrap), and
# buildah assembles them into an image in containers-storage, which podman runs and
# `buildah push` sends to a registry. Needs cargo, mmdebstrap and buildah (Debian: apt-get
# install mmdebstrap buildah), and a host whose C library is not newer than Debian 12's
# (checked).
#
# --dockerfile: `docker build` (or `podman build`, CONTAINER_TOOL=docker|podman picks) of
# the repository's Dockerfile instead, which builds the same image in containers and needs
# Docker Hub's rust and debian images.
#
# The log goes to stderr; the tag is printed last, on stdout.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

mode=daemonless
if [[ ${1:-} == --dockerfile ]]; then
  mode=dockerfile
  shift
fi
tag=${1:-cos-customizer:dev}

# The image's configuration; the Dockerfile's last stage states the same.
ENTRYPOINT='["/cos_customizer"]'
WORKDIR=/workspace
PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() {
  echo "build-builder-image: $*" >&2
  exit 1
}

if [[ $mode == dockerfile ]]; then
  tool=${CONTAINER_TOOL:-}
  if [[ -z $tool ]]; then
    for t in docker podman; do
      if command -v "$t" >/dev/null; then
        tool=$t
        break
      fi
    done
  fi
  [[ -n $tool ]] || die "neither docker nor podman is on PATH (or set CONTAINER_TOOL)"
  # linux/amd64: the provisioner is built for x86_64 and Cloud Build's workers are amd64.
  "$tool" build --platform linux/amd64 --tag "$tag" --file Dockerfile . >&2
  echo "$tag"
  exit 0
fi

for t in cargo mmdebstrap buildah; do
  command -v "$t" >/dev/null || die "$t is missing (Debian: apt-get install mmdebstrap buildah)"
done

cargo build --release --locked -p cos-customizer >&2
bin="$(readlink -f "${CARGO_TARGET_DIR:-target}/release/cos-customizer")"
prov=$(scripts/build-provisioner.sh | tail -n 1)

work=$(mktemp -d)
ctr=
cleanup() {
  [[ -z $ctr ]] || buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

scripts/builder-rootfs.sh "$work/rootfs.tar"

# The program links against the host's C library but runs on Debian 12's: refuse a binary
# that needs symbols Debian 12 lacks, rather than an image that fails at its first step.
glibc_of() { sed -n 's/^\([0-9]*\.[0-9]*\).*/\1/p' <<<"$1"; }
image_glibc=$(glibc_of "$(tar -xOf "$work/rootfs.tar" ./var/lib/dpkg/status |
  awk '/^Package: libc6$/ {p=1} p && /^Version:/ {print $2; exit}')")
needed=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
[[ -n $image_glibc && -n $needed ]] || die "could not read the C library versions"
if [[ $(printf '%s\n%s\n' "$needed" "$image_glibc" | sort -V | tail -n 1) != "$image_glibc" ]]; then
  die "$bin needs glibc $needed, newer than Debian 12's $image_glibc in the image: build on \
Debian 12, or with --dockerfile"
fi

ctr=$(buildah from --arch amd64 --os linux scratch)
buildah add "$ctr" "$work/rootfs.tar" / >&2
buildah copy --chmod 0755 "$ctr" "$bin" /cos_customizer >&2
buildah copy --chmod 0755 "$ctr" "$prov" /provisioner_amd64 >&2
buildah config --entrypoint "$ENTRYPOINT" --workingdir "$WORKDIR" --env "PATH=$PATH_ENV" \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$tag" >&2
ctr=

size=$(buildah images --noheading --format '{{.Size}}' "$tag")
mib() { echo "$(( ($1 + 524288) / 1048576 )) MiB"; }
echo "image $tag: $size in all; root file system $(mib "$(stat -c %s "$work/rootfs.tar")"), \
cos_customizer $(mib "$(stat -c %s "$bin")"), provisioner_amd64 $(mib "$(stat -c %s "$prov")")" >&2
echo "$tag"
