#!/usr/bin/env bash
# Builds the Cloud Build builder image from the Dockerfile at the repo root, with docker
# or, where docker is missing, podman (CONTAINER_TOOL=docker|podman picks one).
# Usage: scripts/build-builder-image.sh [TAG]   (TAG defaults to cos-customizer:dev)
# The build log goes to stderr; the tag is printed last, on stdout.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

tag=${1:-cos-customizer:dev}
tool=${CONTAINER_TOOL:-}
if [[ -z $tool ]]; then
  for t in docker podman; do
    if command -v "$t" >/dev/null; then
      tool=$t
      break
    fi
  done
fi
if [[ -z $tool ]]; then
  echo "error: neither docker nor podman is on PATH (or set CONTAINER_TOOL)" >&2
  exit 1
fi

# linux/amd64: the provisioner is built for x86_64 and Cloud Build's workers are amd64.
"$tool" build --platform linux/amd64 --tag "$tag" --file Dockerfile . >&2
echo "$tag"
