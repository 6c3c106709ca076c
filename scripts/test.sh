#!/usr/bin/env bash
# The test command: installs what the tests need, builds the COS-shaped fixture and
# the static provisioner (both reused while unchanged), then runs every tier:
#   1. `cargo test --workspace`: unit and CLI tests, no VM, no fixture (under a minute);
#   2. the fixture suite: cloud-init's schema check of our user-data;
#   3. the VM suites: the QEMU backend booting OVMF, and the end-to-end builds that boot
#      the fixture under QEMU, locally and as GCE builds against the Compute emulator whose
#      instances boot (each suite runs as many VMs at once as there are cores).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

# The Cloud Storage tests fail rather than skip without fake-gcs-server, which
# scripts/install-deps.sh links here (the provisioner's tests read FAKE_GCS_SERVER too).
export REQUIRE_FAKE_GCS=1
# The dm-verity tests compare with veritysetup on the host (cryptsetup-bin) rather than skip.
export REQUIRE_VERITYSETUP=1
# The man page test renders the pages in groff (groff-base) rather than skip.
export REQUIRE_GROFF=1
export FAKE_GCS_SERVER="${FAKE_GCS_SERVER:-$PWD/.venv-gcs/bin/fake-gcs-server}"

scripts/install-deps.sh
scripts/make-fixture.sh >/dev/null
COS_CUSTOMIZER_PROVISIONER=$(scripts/build-provisioner.sh | tail -n 1)
export COS_CUSTOMIZER_PROVISIONER

cargo test --workspace
cargo test -p cos-customizer-core --test cloud_init_schema
cargo test -p cos-customizer-qemu --test vm
cargo test -p cos-customizer --test e2e --test e2e_guest --test e2e_disk --test e2e_powercut \
    --test faults --test e2e_containers --test e2e_gpu --test e2e_gce
