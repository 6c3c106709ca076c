#!/usr/bin/env bash
# The test command: installs what the tests need, builds the COS-shaped fixture and
# the static provisioner (both reused while unchanged), then runs every test,
# including the end-to-end builds that boot real VMs under QEMU.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

scripts/install-deps.sh
scripts/make-fixture.sh >/dev/null
COS_CUSTOMIZER_PROVISIONER=$(scripts/build-provisioner.sh | tail -n 1)
export COS_CUSTOMIZER_PROVISIONER
cargo test --workspace "$@"
