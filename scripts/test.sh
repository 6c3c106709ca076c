#!/usr/bin/env bash
# The test command: installs what the tests need, builds the COS-shaped fixture and
# the static provisioner (both reused while unchanged), then runs every tier:
#   1. `cargo test --workspace`: unit and CLI tests, no VM, no fixture (under a minute);
#   2. the fixture suite: cloud-init's schema check of our user-data;
#   3. the VM suites: the QEMU backend booting OVMF, and the end-to-end builds that boot
#      the fixture under QEMU, locally and as GCE builds against the Compute emulator whose
#      instances boot (each suite runs as many VMs at once as there are cores), two of them
#      the README's cloudbuild.yaml run in the builder image, which this script builds
#      first; beside them, the builder image's and the local Cloud Build runner's suites.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

# The Cloud Storage tests fail rather than skip without fake-gcs-server, which
# scripts/install-deps.sh links here (the provisioner's tests read FAKE_GCS_SERVER too).
export REQUIRE_FAKE_GCS=1
# The dm-verity tests compare with veritysetup on the host (cryptsetup-bin) rather than skip.
export REQUIRE_VERITYSETUP=1
# The man page test renders the pages in groff (groff-base) rather than skip.
export REQUIRE_GROFF=1
# The Dockerfile is linted by hadolint (installed by scripts/install-deps.sh) rather than not.
export REQUIRE_HADOLINT=1
export FAKE_GCS_SERVER="${FAKE_GCS_SERVER:-$PWD/.venv-gcs/bin/fake-gcs-server}"

scripts/install-deps.sh
scripts/make-fixture.sh >/dev/null
COS_CUSTOMIZER_PROVISIONER=$(scripts/build-provisioner.sh | tail -n 1)
export COS_CUSTOMIZER_PROVISIONER
# podman and buildah as this kind of machine needs them (the file says why).
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/tests/containers.conf}"
# The builder image, built below from nothing as its users build it (no daemon, no registry).
export COS_CUSTOMIZER_BUILDER_IMAGE=localhost/cos-customizer:test

cargo test --workspace
cargo test -p cos-customizer-core --test cloud_init_schema
cargo test -p cos-customizer-qemu --test vm

# The end-to-end suites run side by side, each its own process, sharing one VM slot per
# core (tests/common/mod.rs): a suite whose last test runs alone no longer leaves a core
# idle. Longest first; each suite's output is printed whole when it ends. The builder image
# is built beside them (it fills the moments a core is free of VMs); the suites that run it
# start when it is there. The two container suites boot no VM and take no slot.
suites=(e2e_disk e2e e2e_powercut faults e2e_containers e2e_gpu e2e_guest)
image_suites=(e2e_gce builder_image cloudbuild_runner)
cargo test -p cos-customizer "${suites[@]/#/--test=}" "${image_suites[@]/#/--test=}" --no-run
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
declare -A pid
begun=$SECONDS
for s in "${suites[@]}"; do
    cargo test -p cos-customizer --test "$s" >"$logs/$s.log" 2>&1 &
    pid[$s]=$!
done
failed=()
if scripts/build-builder-image.sh "$COS_CUSTOMIZER_BUILDER_IMAGE" >/dev/null 2>"$logs/image.log"; then
    echo "=== the builder image took $((SECONDS - begun)) s to build: $(grep '^image ' "$logs/image.log")"
    for s in "${image_suites[@]}"; do
        cargo test -p cos-customizer --test "$s" >"$logs/$s.log" 2>&1 &
        pid[$s]=$!
    done
    suites+=("${image_suites[@]}")
else
    echo "=== the builder image FAILED to build; its suites (${image_suites[*]}) did not run"
    cat "$logs/image.log"
    failed+=(builder-image)
fi
for s in "${suites[@]}"; do
    if wait "${pid[$s]}"; then verdict=passed; else verdict=FAILED; failed+=("$s"); fi
    echo "=== suite $s $verdict (its time is on its \"test result\" line)"
    cat "$logs/$s.log"
done
echo "=== the end-to-end and container suites took $((SECONDS - begun)) s side by side"
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
