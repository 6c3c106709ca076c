#!/usr/bin/env bash
# Benchmark: the floor (a bare boot-to-poweroff of the fixture, same VM shape as a
# default build: 1 vCPU), a one-script build's total time, their ratio, the CIDATA
# build time and the host CLI's peak memory. Prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
repo=$PWD

scripts/install-deps.sh
image=$(scripts/make-fixture.sh | tail -n 1)
provisioner=$(scripts/build-provisioner.sh 2>/dev/null | tail -n 1)
cargo build -q --release -p cos-customizer
cc=$repo/target/release/cos-customizer

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }

# Floor: boot the fixture with a seed that only powers off.
printf '#cloud-config\nruncmd:\n  - [ systemctl, poweroff ]\n' >"$work/poweroff.yaml"
printf 'instance-id: bench\n' >"$work/meta"
scripts/make-seed.sh "$work/seed.img" "$work/poweroff.yaml" "$work/meta"
t0=$(now)
BOOT_SMP=1 scripts/boot-fixture.sh "$image" "$work/seed.img" 300 >"$work/floor.log"
floor=$(secs "$t0" "$(now)")

# One-script build, timed from finish-image-build's start to the output on disk.
mkdir -p "$work/home/ctx"
printf 'echo hello > /var/lib/bench\n' >"$work/home/ctx/bench.sh"
export HOME=$work/home
cd "$HOME"
"$cc" start-image-build -build-context=ctx -image-file="$image" 2>/dev/null
"$cc" run-script -script=bench.sh 2>/dev/null
t0=$(now)
"$cc" finish-image-build -output-file="$work/out.img" -provisioner="$provisioner" \
    -timeout=20m >"$work/build.out" 2>"$work/build.err" &
pid=$!
peak=0
while kill -0 "$pid" 2>/dev/null; do
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [[ -n $hwm && $hwm -gt $peak ]] && peak=$hwm
    sleep 0.2
done
wait "$pid"
build=$(secs "$t0" "$(now)")
cidata=$(sed -n 's/.*Built the CIDATA disk in \([0-9.]*\)s.*/\1/p' "$work/build.err")

echo "floor (bare boot to poweroff, 1 vCPU, TCG): ${floor} s"
echo "one-script build (finish-image-build):      ${build} s"
echo "ratio build/floor:                          $(awk -v a="$build" -v b="$floor" 'BEGIN {printf "%.2f", a / b}')"
echo "CIDATA build:                               ${cidata} s"
echo "host CLI peak memory (VmHWM):               $((peak / 1024)) MiB"
