#!/usr/bin/env bash
# The main job: on a fresh machine, installs what is needed, builds the COS-shaped
# fixture image and cos-customizer, and customizes the fixture under QEMU with the
# sample script in fixtures/sample-context. Prints where the output is and how to boot it.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
repo=$PWD

scripts/install-deps.sh
image=$(scripts/make-fixture.sh | tail -n 1)
provisioner=$(scripts/build-provisioner.sh | tail -n 1)
cargo build -q --release -p cos-customizer
cc=$repo/target/release/cos-customizer

out=$repo/out/customized-cos.img
mkdir -p "$repo/out"
# A fresh demo each run: its own state folder, and the previous output replaced.
workdir=.cos-customizer-demo
rm -rf "${HOME:?}/$workdir" "$out"

"$cc" -local-state-workdir=$workdir start-image-build \
    -build-context=fixtures/sample-context -image-file="$image"
"$cc" -local-state-workdir=$workdir run-script -script=preload.sh -env=GREETING=hello,world
"$cc" -local-state-workdir=$workdir finish-image-build \
    -output-file="$out" -provisioner="$provisioner" -timeout=20m

cat <<MSG

Output image: $out (raw; -output-file=….qcow2 or ….tar.gz picks another format)
It is the fixture with /var/lib/sample/greeting added. Boot it and see the file:
  scripts/make-seed.sh out/check-seed.img fixtures/sample-context/check.yaml
  scripts/boot-fixture.sh $out out/check-seed.img | grep SAMPLE:
MSG
