#!/usr/bin/env bash
# Benchmark: the floor (a bare boot-to-poweroff of the fixture, same VM shape as a
# default build: 1 vCPU), a one-script build's total time, their ratio, the CIDATA
# build time and the host CLI's peak memory; then the same script in two builds that
# repartition the boot disk (`seal-oem` with `-oem-size=50M`, and `disable-auto-update`),
# each with its boots, total time, ratio to the one-script build, the time the exit
# ramdisk spent relocating, and the bytes it moved against the partitions' sizes.
# Prints figures; asserts nothing.
#
# Honours CARGO_TARGET_DIR (where the CLI is built) and COS_CUSTOMIZER_PROVISIONER (a
# static provisioner to use instead of building one with scripts/build-provisioner.sh).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
repo=$PWD

scripts/install-deps.sh >&2
image=$(scripts/make-fixture.sh | tail -n 1)
provisioner=${COS_CUSTOMIZER_PROVISIONER:-$(scripts/build-provisioner.sh 2>/dev/null | tail -n 1)}
cargo build -q --release -p cos-customizer
cc=${CARGO_TARGET_DIR:-$repo/target}/release/cos-customizer

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }
# Prefixes each line with the time it arrived (for the relocation's duration).
stamp() {
    local line
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done
}
# A boot ends with the provisioner asking for a reboot, or with the build's end.
boots() { echo $(($(grep -c 'Reboot is required to continue provisioning' "$1" || true) + 1)); }

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
rm -f "$work/out.img"
cidata=$(sed -n 's/.*Built the CIDATA disk in \([0-9.]*\)s.*/\1/p' "$work/build.err")

echo "floor (bare boot to poweroff, 1 vCPU, TCG): ${floor} s"
echo "one-script build (finish-image-build):      ${build} s, $(boots "$work/build.out") boot(s)"
echo "ratio build/floor:                          $(awk -v a="$build" -v b="$floor" 'BEGIN {printf "%.2f", a / b}')"
echo "CIDATA build:                               ${cidata} s"
echo "host CLI peak memory (VmHWM):               $((peak / 1024)) MiB"

# repartitioning NAME STEP [FINISH_FLAG...]: the one-script build plus STEP (seal-oem or
# disable-auto-update), with its figures.
repartitioning() {
    local name=$1 step=$2 w=".w-$1" t0 total out="$work/$1.out"
    shift 2
    "$cc" -local-state-workdir="$w" start-image-build -build-context=ctx -image-file="$image" 2>/dev/null
    "$cc" -local-state-workdir="$w" run-script -script=bench.sh 2>/dev/null
    "$cc" -local-state-workdir="$w" "$step" 2>/dev/null
    t0=$(now)
    if ! "$cc" -local-state-workdir="$w" finish-image-build -output-file="$work/$name.img" \
        -provisioner="$provisioner" -timeout=20m "$@" 2>"$work/$name.err" | stamp >"$out"; then
        echo "$name build: FAILED after $(secs "$t0" "$(now)") s; its last lines:"
        tail -n 15 "$out" "$work/$name.err" | sed 's/^/    /'
        return 0
    fi
    total=$(secs "$t0" "$(now)")
    rm -f "$work/$name.img"
    printf '%-43s %s s, %s boots, ratio to the one-script build %s\n' "$step${*:+ $*} build:" "$total" \
        "$(boots "$out")" "$(awk -v a="$total" -v b="$build" 'BEGIN {printf "%.2f", a / b}')"
    # Where the time goes, from the build's start (the first status line of each boot,
    # the root copy, the reboot request, the relocation, the end of the build).
    awk -v t0="$t0" '
        function at(what) { printf "    %-44s at %6.1f s\n", what, $1 - t0 }
        /BuildStatus: Boot disk:/ && !b1 { b1 = 1; at("boot 1: the provisioner starts") }
        /Copying ROOT-A/ && !c { c = $1 }
        /BuildStatus: Copied [0-9]* bytes/ && c { printf "    %-44s %6.1f s\n", "boot 1: ROOT-A copied to ROOT-B in", $1 - c; c = 0 }
        /Reboot is required/ && !r { r = 1; at("boot 1: asks for the reboot") }
        /Relocation complete/ { x = 1; at("the exit ramdisk has moved the partitions") }
        x && /BuildStatus:/ && !/Relocation/ && !b2 { b2 = 1; at("boot 2: the provisioner starts") }
        /BuildSucceeded:/ { at("boot 2: BuildSucceeded") }' "$out"
    # Seen by the host as the preloader forwards serial port 3, so to within a poll.
    awk '/Relocating partitions at shutdown/ {s = $1}
         /Relocation (complete|failed)/ && s {
             line = $0; sub(/^[^ ]* +/, "", line)
             printf "    relocation at shutdown: %.1f s until \"%s\"\n", $1 - s, line; s = 0}' "$out"
    sed -n 's/.*Relocation moved \([0-9]*\) bytes of partition \([0-9]*\) (\([0-9]*\) bytes, \([0-9.]*%\)).*/\2 \1 \3 \4/p' "$out" |
        while read -r part moved size pct; do
            awk -v p="$part" -v m="$moved" -v s="$size" -v pct="$pct" \
                'BEGIN {printf "    partition %s: moved %.1f MiB of %.1f MiB (%s)\n", p, m / 1048576, s / 1048576, pct}'
        done
}

repartitioning seal-oem seal-oem -oem-size=50M
repartitioning disable-auto-update disable-auto-update
