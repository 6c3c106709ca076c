#!/usr/bin/env bash
# Benchmark, run by hand (never by CI; about 10 minutes of both cores at the default 3 runs):
#   - the floor: the fixture booted to poweroff by the QEMU backend in a build VM's shape
#     (GCE SMBIOS, the metadata server, NAT, virtio-scsi boot and CIDATA disks, 1 vCPU),
#     its user-data powering off at once (backends/qemu/benches/floor.rs);
#   - the old floor, kept to compare with earlier figures: scripts/boot-fixture.sh
#     (virtio-blk, a NoCloud seed, no metadata server, 1 vCPU);
#   - a one-script build of the fixture (start-image-build, run-script, finish-image-build),
#     timed from finish-image-build's start to the output on disk;
# run alternately N times each, then their medians and the ratio build/floor; then the same
# build through -cache-dir twice: a miss (the build and the store) and a hit. Prints figures;
# asserts nothing.
#
# Usage: scripts/bench.sh [-n N] [--repartitioning]
#   -n N              runs of each (default 3, or $BENCH_RUNS)
#   --repartitioning  also the builds that repartition the boot disk (seal-oem with
#                     -oem-size=50M, disable-auto-update), with where their time goes
#
# Honours CARGO_TARGET_DIR (where the CLI is built) and COS_CUSTOMIZER_PROVISIONER (a
# static provisioner to use instead of building one with scripts/build-provisioner.sh).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
repo=$PWD

runs=${BENCH_RUNS:-3}
repartition=false
while [[ $# -gt 0 ]]; do
    case $1 in
    -n) runs=$2; shift 2 ;;
    --repartitioning) repartition=true; shift ;;
    *) echo "usage: $0 [-n N] [--repartitioning]" >&2; exit 2 ;;
    esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "-n wants a count above 0, not $runs" >&2; exit 2; }

scripts/install-deps.sh >&2
image=$(scripts/make-fixture.sh | tail -n 1)
provisioner=${COS_CUSTOMIZER_PROVISIONER:-$(scripts/build-provisioner.sh 2>/dev/null | tail -n 1)}
cargo build -q --release -p cos-customizer
# Run directly: HOME changes below, and cargo would look for its toolchain there.
# The floor bench's own artifact: the crate's other binaries are listed too, in an order
# that changes with what was already built.
floor_bin=$(cargo bench -q -p cos-customizer-qemu --bench floor --no-run --message-format=json |
    grep '"kind":\["bench"\]' | grep '"name":"floor"' |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[[ -x $floor_bin ]] || { echo "bench.sh: the floor benchmark was not built" >&2; exit 1; }
cc=${CARGO_TARGET_DIR:-$repo/target}/release/cos-customizer

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }
median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
# Prefixes each line with the time it arrived (for the relocation's duration).
stamp() {
    local line
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done
}
# A boot ends with the provisioner asking for a reboot, or with the build's end.
boots() { echo $(($(grep -c 'Reboot is required to continue provisioning' "$1" || true) + 1)); }

floor() {
    "$floor_bin" "$image" scsi 2>"$work/floor.err" |
        sed -n 's/^floor: \([0-9.]*\) s$/\1/p'
}

# The old floor: boot-fixture.sh with a seed that only powers off.
printf '#cloud-config\nruncmd:\n  - [ systemctl, poweroff ]\n' >"$work/poweroff.yaml"
printf 'instance-id: bench\n' >"$work/meta"
scripts/make-seed.sh "$work/seed.img" "$work/poweroff.yaml" "$work/meta"
old_floor() {
    local t0
    t0=$(now)
    BOOT_SMP=1 "$repo/scripts/boot-fixture.sh" "$image" "$work/seed.img" 300 >"$work/old-floor.log"
    secs "$t0" "$(now)"
}

mkdir -p "$work/home/ctx"
printf 'echo hello > /var/lib/bench\n' >"$work/home/ctx/bench.sh"
export HOME=$work/home
cd "$HOME"
# build [FINISH_FLAG...]: records the one-script build and finishes it; prints its seconds.
build() {
    local t0 pid hwm peak
    "$cc" start-image-build -build-context=ctx -image-file="$image" >/dev/null 2>&1
    "$cc" run-script -script=bench.sh >/dev/null 2>&1
    t0=$(now)
    "$cc" finish-image-build -output-file="$work/out.img" -provisioner="$provisioner" \
        -timeout=20m "$@" >"$work/build.out" 2>"$work/build.err" &
    pid=$!
    peak=0
    while kill -0 "$pid" 2>/dev/null; do
        hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        [[ -n $hwm && $hwm -gt $peak ]] && peak=$hwm
        sleep 0.2
    done
    wait "$pid"
    secs "$t0" "$(now)"
    echo "$peak" >"$work/peak"
    rm -f "$work/out.img"
}

: >"$work/floors"; : >"$work/old-floors"; : >"$work/builds"
for ((i = 1; i <= runs; i++)); do
    f=$(floor)
    o=$(old_floor)
    b=$(build)
    echo "$f" >>"$work/floors"; echo "$o" >>"$work/old-floors"; echo "$b" >>"$work/builds"
    printf 'run %d: floor %s s, old floor %s s, build %s s (%s boot(s)), ratio %s\n' "$i" "$f" "$o" "$b" \
        "$(boots "$work/build.out")" "$(awk -v a="$b" -v b="$f" 'BEGIN {printf "%.2f", a / b}')"
done
floor_med=$(median <"$work/floors")
build_med=$(median <"$work/builds")
peak_kib=$(cat "$work/peak")
cidata=$(sed -n 's/.*Built the CIDATA disk in \([0-9.]*\)s.*/\1/p' "$work/build.err")

# The cache: the same build kept (a miss: the build and the store), then a hit.
miss=$(build -cache-dir="$work/cache")
hit=$(build -cache-dir="$work/cache")
grep -q 'Cache hit' "$work/build.err" || { echo "the second cached build did not hit:" >&2; cat "$work/build.err" >&2; }

echo "medians of $runs alternating runs (TCG unless KVM works here):"
echo "floor (backend's build-shaped VM, boot to poweroff):  ${floor_med} s"
echo "old floor (boot-fixture.sh, virtio-blk, NoCloud):     $(median <"$work/old-floors") s"
echo "one-script build (finish-image-build):                ${build_med} s"
echo "ratio build/floor:                                    $(awk -v a="$build_med" -v b="$floor_med" 'BEGIN {printf "%.2f", a / b}')"
echo "cache miss (the build, then the store):               ${miss} s"
echo "cache hit (the output written, no VM):                ${hit} s"
echo "CIDATA build:                                         ${cidata} s"
echo "host CLI peak memory (VmHWM):                         $((peak_kib / 1024)) MiB"

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
        "$(boots "$out")" "$(awk -v a="$total" -v b="$build_med" 'BEGIN {printf "%.2f", a / b}')"
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

if $repartition; then
    repartitioning seal-oem seal-oem -oem-size=50M
    repartitioning disable-auto-update disable-auto-update
fi
