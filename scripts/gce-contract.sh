#!/usr/bin/env bash
# Contract check of the Compute Engine calls a GCE build makes (not run by CI).
#
# Sends, against real GCE or against the emulator, the call sequence of a build: the source
# image by family and by list filters, disks and operations (with requestId), a VM with
# metadata, labels and a maximum run duration, its serial port, setMetadata with a current and
# a stale fingerprint, a resize, a stop, an image from the disk with family, labels and
# licenses, a deprecation, deletes, and the error envelopes of a 404, a 409 and a disk in use.
# Each response is written sanitized (project, run id, ids, IPs, e-mails, timestamps,
# fingerprints and serial contents replaced) as NN-call.json, with NN-call.shape beside it:
# its sorted JSON paths and value types ("[]" for an array index, "*" for a label key), one
# "path type" per line.
# calls.log lists every call made, in order, with its HTTP status.
#
# --compare diffs the .shape files of two recordings and fails when a field the GCE backend
# reads (WATCHED below) is missing on one side or has another type.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/gce-contract.sh PROJECT ZONE BUCKET [OUTDIR]
       scripts/gce-contract.sh --emulator URL OUTDIR
       scripts/gce-contract.sh --compare DIR1 DIR2

Records a GCE build's Compute Engine calls and their responses, sanitized, as JSON plus a
.shape file per response.

  PROJECT ZONE BUCKET [OUTDIR]
      Real GCE (https://compute.googleapis.com/compute/v1/), authenticated with
      `gcloud auth print-access-token`. Creates, all labelled cos-customizer-contract=RUNID and
      all deleted on exit: a 10 GB pd-standard disk from cos-cloud/cos-stable, a 16 MiB
      disk imported from gs://BUCKET/cos-customizer-contract/RUNID/ (and its object), an
      n1-standard-1 VM (maximum run duration 15 min), and an image. Takes about 10 minutes.
      OUTDIR defaults to tests/golden/gce-contract/.
  --emulator URL OUTDIR
      The same sequence against the emulator's compute base URL (as gce-emulator prints it),
      project test-project, zone us-central1-a, without credentials. The 16 MiB disk is
      uploaded only when CONTRACT_STORAGE_URL (such as http://127.0.0.1:4443) is set, to
      CONTRACT_BUCKET (default builds).
  --compare DIR1 DIR2
      Diffs the .shape files of two recordings (DIR1 real GCE, DIR2 the emulator): prints the
      fields found on one side only, and exits 1 if any of them is one the backend reads.

Needs curl and jq (and gcloud for real GCE). Optional environment: CONTRACT_MACHINE_TYPE
(n1-standard-1), CONTRACT_NETWORK (default), CONTRACT_SUBNET (regions/R/subnetworks/S, or a
host project's projects/H/regions/R/subnetworks/S; then no network is sent),
CONTRACT_TRUNCATION_WAIT (seconds to wait for serial port 3 to overflow, real GCE only; 300,
0 skips it).
EOF
}

# Fields the GCE backend reads (backends/gce/src/compute/model.rs, error.rs, op.rs), as paths
# inside a resource or a list item. A shape difference under one of them fails --compare.
WATCHED=(
    status statusMessage
    error.code error.message 'error.errors[].reason'
    'error.errors[].code' 'error.errors[].message' httpErrorStatusCode
    contents start next
    metadata.fingerprint metadata.items
    selfLink name id zone targetLink nextPageToken creationTimestamp
    sizeGb diskSizeGb users licenses family labels architecture
    deprecated.state deprecated.replacement
)

die() {
    echo "gce-contract: $*" >&2
    exit 1
}

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool is needed"
    done
}

# --- compare mode -------------------------------------------------------------------------

# Whether a shape path (such as items.[].metadata.items.[].key) is under a watched field.
is_watched() {
    local p=$1 w
    p=${p#items.[].}
    p=${p//.[]/}
    for w in "${WATCHED[@]}"; do
        w=${w//\[\]/}
        if [[ $p == "$w" || $p == "$w".* ]]; then
            return 0
        fi
    done
    return 1
}

# Prints the lines of shape file $2 missing from shape file $3, each marked with $1, and
# whether the backend reads the field; returns 1 if it reads any.
one_side() {
    local label=$1 from=$2 to=$3 line path bad=0
    while IFS= read -r line; do
        path=${line% *}
        if is_watched "$path"; then
            printf '  %s: %s   [read by the backend]\n' "$label" "$line"
            bad=1
        else
            printf '  %s: %s\n' "$label" "$line"
        fi
    done < <(comm -23 "$from" "$to")
    return "$bad"
}

compare() {
    local real=$1 emu=$2 f name bad=0 missing=0
    [[ -d $real && -d $emu ]] || die "--compare needs two folders"
    shopt -s nullglob
    for f in "$real"/*.shape; do
        name=${f##*/}
        if [[ ! -f $emu/$name ]]; then
            echo "$name: only in $real (the call was not made in $emu)"
            missing=1
            continue
        fi
        if ! cmp -s "$f" "$emu/$name"; then
            echo "$name:"
            one_side "missing in $emu" "$f" "$emu/$name" || bad=1
            one_side "only in $emu" "$emu/$name" "$f" || bad=1
        fi
    done
    for f in "$emu"/*.shape; do
        name=${f##*/}
        if [[ ! -f $real/$name ]]; then
            echo "$name: only in $emu (the call was not made in $real)"
            missing=1
        fi
    done
    if ((bad)); then
        echo "differences in fields the backend reads" >&2
        return 1
    fi
    if ((missing)); then
        echo "no differences in fields the backend reads (some calls were made on one side only)"
    else
        echo "no differences in fields the backend reads"
    fi
}

# --- arguments ----------------------------------------------------------------------------

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=real
case ${1-} in
    -h | --help)
        usage
        exit 0
        ;;
    --compare)
        [[ $# -eq 3 ]] || {
            usage >&2
            exit 2
        }
        need comm
        compare "$2" "$3"
        exit
        ;;
    --emulator)
        [[ $# -eq 3 ]] || {
            usage >&2
            exit 2
        }
        MODE=emulator
        BASE=${2%/}/
        OUT=$3
        PROJECT=test-project
        ZONE=us-central1-a
        BUCKET=${CONTRACT_BUCKET:-builds}
        STORAGE=${CONTRACT_STORAGE_URL:-}
        ;;
    *)
        [[ $# -eq 3 || $# -eq 4 ]] || {
            usage >&2
            exit 2
        }
        BASE=https://compute.googleapis.com/compute/v1/
        PROJECT=$1
        ZONE=$2
        BUCKET=$3
        OUT=${4:-$REPO/tests/golden/gce-contract}
        STORAGE=https://storage.googleapis.com
        ;;
esac
need curl jq tar truncate
MACHINE_TYPE=${CONTRACT_MACHINE_TYPE:-n1-standard-1}
NETWORK=${CONTRACT_NETWORK:-default}
SUBNET=${CONTRACT_SUBNET:-}
TRUNCATION_WAIT=${CONTRACT_TRUNCATION_WAIT:-300}
TOKEN=
if [[ $MODE == real ]]; then
    need gcloud
    TOKEN=$(gcloud auth print-access-token) || die "gcloud auth print-access-token failed"
fi

RUNID=c$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
LABEL=cos-customizer-contract
FAMILY=contract-$RUNID
BOOT=boot-disk-contract-$RUNID
CIDATA=cidata-disk-contract-$RUNID
RAW_IMAGE=cidata-contract-$RUNID
VM=preload-vm-contract-$RUNID
IMAGE=image-contract-$RUNID
OBJECT=cos-customizer-contract/$RUNID/cidata-disk.tar.gz
ZP=projects/$PROJECT/zones/$ZONE
GP=projects/$PROJECT/global

WORK=$(mktemp -d)
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.json.txt "$OUT"/*.shape "$OUT/calls.log"

# --- recording ----------------------------------------------------------------------------

# jq definitions: what is replaced in a recorded response ($p the project, $r the run id).
# shellcheck disable=SC2016 # a jq program: its $ are jq's
SCRUB='
def scrub_string:
  gsub($r; "RUNID")
  | gsub($p; "PROJECT")
  | gsub("operation-[0-9]+-[0-9a-f]+(-[0-9a-f]+)*"; "operation-X")
  | gsub("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"; "UUID")
  | gsub("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})"; "TIMESTAMP")
  | gsub("[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[A-Za-z]{2,}"; "EMAIL")
  | gsub("(?<![0-9.])([0-9]{1,3}\\.){3}[0-9]{1,3}(?![0-9.])"; "IP")
  | gsub("[0-9]{10,}"; "ID");
def scrub_keys:
  if type == "object" then
    with_entries(
      if (.key | test("(^f|F)ingerprint$")) and (.value | type) == "string" then .value = "FINGERPRINT"
      elif (.key | test("^(id|.+Id)$")) and (.value | type) == "string" and (.value | test("^[0-9]+$")) then .value = "ID"
      elif .key == "contents" and (.value | type) == "string" and .value != "" then .value = "CONTENTS"
      else .value |= scrub_keys end)
  elif type == "array" then map(scrub_keys)
  else . end;
'
# The shape of a response: every leaf (false and null included) with its type; label keys,
# which are data rather than schema, as "*".
# shellcheck disable=SC2016 # a jq program
SHAPE='[paths as $q | (getpath($q) | type) as $t | select($t != "object" and $t != "array")
  | ($q | map(if type == "number" then "[]" else . end) | join(".")
     | gsub("(?<![A-Za-z])labels\\.[^.]+"; "labels.*")) as $path
  | "\($path) \($t)"] | unique | .[]'

scrub_text() {
    jq -Rr --arg p "$PROJECT" --arg r "$RUNID" "$SCRUB scrub_string" <<<"$1"
}

STATUS=
RESP=
LAST=
LOG_CALLS=1

# record ID NAME: writes the last response as OUT/ID-NAME.json and .shape.
record() {
    local base=$OUT/$1-$2
    if jq -e . >/dev/null 2>&1 <<<"$RESP"; then
        # Long lists keep their first 3 items in the file; the shape covers them all.
        jq --arg p "$PROJECT" --arg r "$RUNID" \
            "$SCRUB scrub_keys | walk(if type == \"string\" then scrub_string else . end)" \
            <<<"$RESP" >"$WORK/scrubbed.json"
        jq -r "$SHAPE" "$WORK/scrubbed.json" >"$base.shape"
        jq 'if (.items | type) == "array" and (.items | length) > 3 then .items |= .[:3] else . end' \
            "$WORK/scrubbed.json" >"$base.json"
    else
        printf '%s\n' "$RESP" | head -c 2000 >"$base.json.txt"
        echo "(not JSON) string" >"$base.shape"
    fi
}

# api ID NAME METHOD PATH [BODY]: one call to PATH (relative to the compute base, query
# included, or a full URL); ID "-" does not record it. Sets STATUS and RESP.
api() {
    local id=$1 name=$2 method=$3 path=$4 body=${5-} url attempt
    url=$path
    [[ $url == http* ]] || url=$BASE$path
    local args=(-sS -X "$method" -o "$WORK/resp" -w '%{http_code}' -H 'Accept: application/json')
    [[ -z $TOKEN || $url != https://* ]] || args+=(-H "Authorization: Bearer $TOKEN")
    if [[ -n $body ]]; then
        printf '%s' "$body" >"$WORK/req"
        args+=(-H 'Content-Type: application/json' --data-binary "@$WORK/req")
    elif [[ $method == POST ]]; then
        # Google's front end wants a length on every POST.
        args+=(-H 'Content-Type: application/json' --data-binary '')
    fi
    for attempt in 1 2 3 4 5; do
        : >"$WORK/resp"
        STATUS=$(curl "${args[@]}" "$url") || STATUS=000
        case $STATUS in
            000 | 429 | 500 | 502 | 503 | 504) sleep $((attempt * 3)) ;;
            *) break ;;
        esac
    done
    RESP=$(cat "$WORK/resp")
    LAST="$method ${path%%\?*}"
    if ((LOG_CALLS)); then
        printf '%s %s %s %s\n' "$id" "$method" "$(scrub_text "$path")" "$STATUS" >>"$OUT/calls.log"
        if [[ $id == - ]]; then
            echo "   (not recorded) $method ${path%%\?*} -> $STATUS" >&2
        else
            echo "$id $name: $method ${path%%\?*} -> $STATUS" >&2
        fi
    fi
    if [[ $id != - ]]; then
        record "$id" "$name"
    fi
}

# expect STATUS...: the last call answered one of these.
expect() {
    local s
    for s in "$@"; do
        [[ $STATUS != "$s" ]] || return 0
    done
    die "$LAST answered $STATUS, not $*: $(head -c 2000 <<<"$RESP")"
}

uuid() {
    cat /proc/sys/kernel/random/uuid
}

uri() {
    jq -rn --arg v "$1" '$v | @uri'
}

# wait_op ID NAME: waits (POST .../wait, as the backend does) for the operation in RESP to be
# DONE and records its last state; sets OP_ERR to its error codes (empty on success).
wait_op() {
    local id=$1 name=$2 op=$RESP path n=0
    path=$(jq -r --arg p "$PROJECT" \
        'if .zone then "projects/\($p)/zones/\(.zone | split("/") | last)/operations/\(.name)"
         else "projects/\($p)/global/operations/\(.name)" end' <<<"$op")
    while :; do
        n=$((n + 1))
        ((n <= 30)) || die "operation $path is not DONE after 30 waits"
        if ((n == 1)); then
            api "$id" "$name" POST "$path/wait"
        else
            api - - POST "$path/wait"
        fi
        expect 200
        [[ $(jq -r .status <<<"$RESP") != DONE ]] || break
    done
    ((n == 1)) || record "$id" "$name"
    OP_ERR=$(jq -r '[.error.errors[]?.code] | join(",")' <<<"$RESP")
}

# --- cleanup ------------------------------------------------------------------------------

# Deletes everything labelled with this run's id, and the uploaded object, whatever happened.
cleanup() {
    local rc=$? kind name op
    trap - EXIT INT TERM
    set +e
    LOG_CALLS=0
    if ((!MADE)); then
        rm -rf "$WORK"
        exit "$rc"
    fi
    echo "cleaning up run $RUNID" >&2
    local filter
    filter=$(uri "labels.$LABEL = $RUNID")
    for kind in instances disks images; do
        local list=$ZP/$kind
        [[ $kind != images ]] || list=$GP/images
        api - - GET "$list?filter=$filter" >/dev/null 2>&1
        [[ $STATUS == 200 ]] || {
            echo "could not list $kind (HTTP $STATUS): delete what carries $LABEL=$RUNID by hand" >&2
            continue
        }
        for name in $(jq -r '.items[]?.name' <<<"$RESP"); do
            api - - DELETE "$list/$name" 2>/dev/null
            if [[ $STATUS == 200 ]]; then
                op=$RESP
                for _ in 1 2 3 4 5 6 7 8 9 10; do
                    [[ $(jq -r .status <<<"$op") != DONE ]] || break
                    RESP=$op
                    local path
                    path=$(jq -r --arg p "$PROJECT" \
                        'if .zone then "projects/\($p)/zones/\(.zone | split("/") | last)/operations/\(.name)"
                         else "projects/\($p)/global/operations/\(.name)" end' <<<"$op")
                    api - - POST "$path/wait" 2>/dev/null
                    op=$RESP
                done
                echo "deleted $kind $name" >&2
            elif [[ $STATUS != 404 ]]; then
                echo "could not delete $kind $name (HTTP $STATUS)" >&2
            fi
        done
    done
    if [[ -n $STORAGE && $UPLOADED == 1 ]]; then
        api - - DELETE "$STORAGE/storage/v1/b/$BUCKET/o/$(uri "$OBJECT")" 2>/dev/null
        [[ $STATUS == 204 || $STATUS == 200 || $STATUS == 404 ]] ||
            echo "could not delete gs://$BUCKET/$OBJECT (HTTP $STATUS)" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
MADE=0
UPLOADED=0
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

labels() {
    jq -nc --arg k "$LABEL" --arg v "$RUNID" '{($k): $v}'
}

echo "run $RUNID: $MODE, project $PROJECT, zone $ZONE, responses in $OUT" >&2

# --- the source image, as start-image-build resolves it ---------------------------------

api 01 images.getFromFamily GET projects/cos-cloud/global/images/family/cos-stable
expect 200
SRC=$(jq -r .name <<<"$RESP")
SRC_LICENSE=$(jq -r '.licenses[0] // "" | sub("^https://www.googleapis.com/compute/v1/"; "")' <<<"$RESP")
MILESTONE=$(sed -E 's/^cos-([a-z]+-)*([0-9]+)-[0-9]+-[0-9]+-[0-9]+$/\2/' <<<"$SRC")
[[ $MILESTONE =~ ^[0-9]+$ ]] || MILESTONE='[0-9]+'

# -deprecate-old-images' filter, then paging, then -image-milestone's filter.
api 02 images.list-family GET \
    "projects/cos-cloud/global/images?filter=$(uri "(family = cos-stable) (name != $SRC)")"
expect 200
api 03 images.list-page1 GET \
    "projects/cos-cloud/global/images?filter=$(uri "(family = cos-stable)")&maxResults=1"
expect 200
TOKEN_PAGE=$(jq -r '.nextPageToken // empty' <<<"$RESP")
[[ -n $TOKEN_PAGE ]] || die "images.list with maxResults=1 gave no nextPageToken"
api 04 images.list-page2 GET \
    "projects/cos-cloud/global/images?filter=$(uri "(family = cos-stable)")&maxResults=1&pageToken=$(uri "$TOKEN_PAGE")"
expect 200
api 05 images.list-milestone GET \
    "projects/cos-cloud/global/images?filter=$(uri "name eq \"cos-([a-z]+-)*$MILESTONE-[0-9]+-[0-9]+-[0-9]+\"")&maxResults=3"
expect 200

# --- the boot disk ------------------------------------------------------------------------

BOOT_BODY=$(jq -nc --arg n "$BOOT" --arg s "projects/cos-cloud/global/images/$SRC" \
    --arg t "$ZP/diskTypes/pd-standard" --argjson l "$(labels)" \
    '{name: $n, sourceImage: $s, type: $t, sizeGb: "10", labels: $l}')
RID=$(uuid)
MADE=1
api 06 disks.insert POST "$ZP/disks?requestId=$RID" "$BOOT_BODY"
expect 200
OP_NAME=$(jq -r .name <<<"$RESP")
api 07 zoneOperations.get GET "$ZP/operations/$OP_NAME"
expect 200
wait_op 08 zoneOperations.wait-disk
[[ -z $OP_ERR ]] || die "disks.insert failed: $OP_ERR"
# A retry with the same requestId answers the first operation; a new one is a conflict.
api 09 disks.insert-same-requestId POST "$ZP/disks?requestId=$RID" "$BOOT_BODY"
expect 200
[[ $(jq -r .name <<<"$RESP") == "$OP_NAME" ]] ||
    echo "note: the retried requestId answered another operation" >&2
api 10 disks.insert-409 POST "$ZP/disks?requestId=$(uuid)" "$BOOT_BODY"
expect 409 200
if [[ $STATUS == 200 ]]; then
    wait_op 10 disks.insert-409-operation
fi
api 11 disks.get GET "$ZP/disks/$BOOT"
expect 200

# --- the CIDATA disk, imported through Cloud Storage as the backend does ---------------------

truncate -s 16M "$WORK/disk.raw"
printf 'cos-customizer contract %s' "$RUNID" |
    dd of="$WORK/disk.raw" bs=1 seek=1048576 conv=notrunc status=none
tar --format=oldgnu -Sczf "$WORK/cidata.tar.gz" -C "$WORK" disk.raw
if [[ -n $STORAGE ]]; then
    UPLOADED=1
    curl_args=(-sS -o "$WORK/upload" -w '%{http_code}' -X POST -H 'Content-Type: application/gzip'
        --data-binary "@$WORK/cidata.tar.gz")
    [[ -z $TOKEN ]] || curl_args+=(-H "Authorization: Bearer $TOKEN")
    STATUS=$(curl "${curl_args[@]}" \
        "$STORAGE/upload/storage/v1/b/$BUCKET/o?uploadType=media&name=$(uri "$OBJECT")")
    echo "- POST storage upload gs://BUCKET/cos-customizer-contract/RUNID/cidata-disk.tar.gz $STATUS" >>"$OUT/calls.log"
    [[ $STATUS == 200 ]] || die "uploading gs://$BUCKET/$OBJECT answered $STATUS: $(head -c 500 "$WORK/upload")"
fi
RAW_BODY=$(jq -nc --arg n "$RAW_IMAGE" --arg s "https://storage.googleapis.com/$BUCKET/$OBJECT" \
    --argjson l "$(labels)" '{name: $n, rawDisk: {source: $s}, labels: $l}')
api 12 images.insert-rawDisk POST "$GP/images?requestId=$(uuid)" "$RAW_BODY"
expect 200
wait_op 13 globalOperations.wait-rawDisk
DISKS=("$BOOT")
if [[ -n $OP_ERR ]]; then
    echo "note: importing a 16 MiB disk.raw failed ($OP_ERR); the VM gets no CIDATA disk" >&2
else
    api 14 images.get-rawDisk GET "$GP/images/$RAW_IMAGE"
    expect 200
    CIDATA_BODY=$(jq -nc --arg n "$CIDATA" --arg s "$GP/images/$RAW_IMAGE" \
        --arg t "$ZP/diskTypes/pd-standard" --argjson l "$(labels)" \
        '{name: $n, sourceImage: $s, type: $t, labels: $l}')
    api 15 disks.insert-from-rawDisk-image POST "$ZP/disks?requestId=$(uuid)" "$CIDATA_BODY"
    expect 200
    wait_op 16 zoneOperations.wait-cidata
    [[ -z $OP_ERR ]] || die "disks.insert from the imported image failed: $OP_ERR"
    DISKS+=("$CIDATA")
    # The disk holds its own copy: the image goes at once.
    api 17 images.delete-rawDisk DELETE "$GP/images/$RAW_IMAGE?requestId=$(uuid)"
    expect 200
    wait_op 18 globalOperations.wait-delete-rawDisk
fi

# --- the build VM -------------------------------------------------------------------------

USER_DATA="#cloud-config
runcmd:
- echo 'BuildStatus: cos-customizer contract $RUNID' > /dev/ttyS2
- sleep 30
- yes 'BuildStatus: filler to overflow the serial port buffer, abcdefghijklmnopqrstuvwxyz' | head -c 1400000 > /dev/ttyS2
"
VM_BODY=$(jq -nc --arg n "$VM" --arg mt "$ZP/machineTypes/$MACHINE_TYPE" \
    --arg zp "$ZP" --arg ud "$USER_DATA" --arg k "$LABEL" --arg v "$RUNID" \
    --arg net "projects/$PROJECT/global/networks/$NETWORK" --arg sub "$SUBNET" \
    --args '{
      name: $n,
      description: "cos-customizer contract run",
      machineType: $mt,
      disks: [$ARGS.positional | to_entries[] | {source: "\($zp)/disks/\(.value)",
        deviceName: .value, boot: (.key == 0), mode: "READ_WRITE", autoDelete: true}],
      labels: {($k): $v, "cos-customizer-cleanup": ""},
      metadata: {items: [
        {key: "user-data", value: $ud},
        {key: "block-project-ssh-keys", value: "TRUE"},
        {key: "cos-update-strategy", value: "update_disabled"}]},
      serviceAccounts: [{email: "default", scopes: [
        "https://www.googleapis.com/auth/cloud-platform",
        "https://www.googleapis.com/auth/devstorage.read_write"]}],
      networkInterfaces: [(if $sub == "" then {network: $net} else {subnetwork: $sub} end)
        + {accessConfigs: [{type: "ONE_TO_ONE_NAT"}]}],
      scheduling: {onHostMaintenance: "MIGRATE", provisioningModel: "STANDARD",
        instanceTerminationAction: "DELETE", maxRunDuration: {seconds: "900"}}
    }' "${DISKS[@]}")
api 19 instances.insert POST "$ZP/instances?requestId=$(uuid)" "$VM_BODY"
expect 200
wait_op 20 zoneOperations.wait-instance
[[ -z $OP_ERR ]] || die "instances.insert failed: $OP_ERR"
api 21 instances.get GET "$ZP/instances/$VM"
expect 200
FINGERPRINT=$(jq -r .metadata.fingerprint <<<"$RESP")
ITEMS=$(jq -c .metadata.items <<<"$RESP")

# What -enable-cleanup lists (filtered here to this run, so no one else's resource is recorded).
FILTER=$(uri "labels.$LABEL = $RUNID")
api 22 instances.list GET "$ZP/instances?filter=$FILTER"
expect 200
api 23 disks.list GET "$ZP/disks?filter=$FILTER"
expect 200

# --- serial port 3 --------------------------------------------------------------------------

if [[ $MODE == real ]]; then
    for _ in $(seq 1 30); do
        api - - GET "$ZP/instances/$VM/serialPort?port=3&start=0"
        expect 200
        [[ $(jq -r .next <<<"$RESP") == 0 ]] || break
        sleep 10
    done
fi
api 24 serialPort-console GET "$ZP/instances/$VM/serialPort?port=1&start=0"
expect 200
api 25 serialPort-3 GET "$ZP/instances/$VM/serialPort?port=3&start=0"
expect 200
NEXT=$(jq -r .next <<<"$RESP")
api 26 serialPort-3-negative-start GET "$ZP/instances/$VM/serialPort?port=3&start=-64"
expect 200
api 27 serialPort-3-at-next GET "$ZP/instances/$VM/serialPort?port=3&start=$NEXT"
expect 200
api 28 serialPort-3-beyond-end GET "$ZP/instances/$VM/serialPort?port=3&start=999999999"
expect 200 400
if [[ $MODE == real && $TRUNCATION_WAIT -gt 0 ]]; then
    # Read from the early offset until the output before it has been dropped.
    deadline=$((SECONDS + TRUNCATION_WAIT))
    truncated=0
    while ((SECONDS < deadline)); do
        api - - GET "$ZP/instances/$VM/serialPort?port=3&start=$NEXT"
        expect 200
        if (($(jq -r .start <<<"$RESP") > NEXT)); then
            truncated=1
            break
        fi
        sleep 15
    done
    if ((truncated)); then
        api 29 serialPort-3-after-truncation GET "$ZP/instances/$VM/serialPort?port=3&start=$NEXT"
        expect 200
    else
        echo "note: serial port 3 did not overflow within ${TRUNCATION_WAIT}s" >&2
    fi
fi

# --- the DaisyEnd acknowledgement: setMetadata with the fingerprint ---------------------

META_BODY=$(jq -nc --arg f "$FINGERPRINT" --argjson items "$ITEMS" \
    '{fingerprint: $f, items: ($items + [{key: "DaisyEnd", value: "ack"}])}')
api 30 instances.setMetadata POST "$ZP/instances/$VM/setMetadata?requestId=$(uuid)" "$META_BODY"
expect 200
wait_op 31 zoneOperations.wait-setMetadata
[[ -z $OP_ERR ]] || die "setMetadata failed: $OP_ERR"
# The same fingerprint again is now stale: 412 conditionNotMet, or a failed operation.
api 32 instances.setMetadata-stale POST "$ZP/instances/$VM/setMetadata?requestId=$(uuid)" "$META_BODY"
expect 412 200
if [[ $STATUS == 200 ]]; then
    wait_op 32 instances.setMetadata-stale-operation
    [[ -n $OP_ERR ]] || echo "note: a stale fingerprint was accepted" >&2
fi
api 33 instances.get-after-setMetadata GET "$ZP/instances/$VM"
expect 200

# --- the resize, and a disk in use ------------------------------------------------------------

api 34 disks.resize POST "$ZP/disks/$BOOT/resize?requestId=$(uuid)" '{"sizeGb":"11"}'
expect 200
wait_op 35 zoneOperations.wait-resize
[[ -z $OP_ERR ]] || die "disks.resize failed: $OP_ERR"
api 36 disks.get-resized GET "$ZP/disks/$BOOT"
expect 200
api 37 disks.delete-in-use DELETE "$ZP/disks/$BOOT?requestId=$(uuid)"
expect 400 200
if [[ $STATUS == 200 ]]; then
    wait_op 37 disks.delete-in-use-operation
    [[ -n $OP_ERR ]] || die "an attached disk was deleted"
fi

# --- the VM stops -------------------------------------------------------------------------

api 38 instances.stop POST "$ZP/instances/$VM/stop?requestId=$(uuid)"
expect 200
wait_op 39 zoneOperations.wait-stop
[[ -z $OP_ERR ]] || die "instances.stop failed: $OP_ERR"
for _ in $(seq 1 60); do
    api - - GET "$ZP/instances/$VM"
    expect 200
    [[ $(jq -r .status <<<"$RESP") != TERMINATED ]] || break
    sleep 5
done
api 40 instances.get-terminated GET "$ZP/instances/$VM"
expect 200
[[ $(jq -r .status <<<"$RESP") == TERMINATED ]] || die "the VM did not reach TERMINATED"
api 41 serialPort-3-terminated GET "$ZP/instances/$VM/serialPort?port=3&start=0"

# --- the output image ---------------------------------------------------------------------

IMAGE_BODY=$(jq -nc --arg n "$IMAGE" --arg d "$ZP/disks/$BOOT" --arg f "$FAMILY" \
    --argjson l "$(labels)" --arg lic "$SRC_LICENSE" \
    --arg desc "Derivative of projects/cos-cloud/global/images/$SRC." \
    '{name: $n, sourceDisk: $d, family: $f, labels: $l,
      licenses: (if $lic == "" then [] else [$lic] end), description: $desc}')
api 42 images.insert POST "$GP/images?requestId=$(uuid)" "$IMAGE_BODY"
expect 200
wait_op 43 globalOperations.wait-image
[[ -z $OP_ERR ]] || die "images.insert failed: $OP_ERR"
api 44 images.get GET "$GP/images/$IMAGE"
expect 200
api 45 images.getFromFamily-own GET "$GP/images/family/$FAMILY"
expect 200
api 46 images.list-own-family GET "$GP/images?filter=$(uri "(family = $FAMILY)")"
expect 200
DELETED=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
DEPRECATE_BODY=$(jq -nc --arg r "projects/cos-cloud/global/images/$SRC" --arg d "$DELETED" \
    '{state: "DEPRECATED", replacement: $r, deleted: $d}')
api 47 images.deprecate POST "$GP/images/$IMAGE/deprecate?requestId=$(uuid)" "$DEPRECATE_BODY"
expect 200
wait_op 48 globalOperations.wait-deprecate
[[ -z $OP_ERR ]] || die "images.deprecate failed: $OP_ERR"
api 49 images.get-deprecated GET "$GP/images/$IMAGE"
expect 200
# The family's only image is deprecated now.
api 50 images.getFromFamily-all-deprecated GET "$GP/images/family/$FAMILY"
api 51 images.get-404 GET "$GP/images/no-such-image-$RUNID"
expect 404

# --- deletes ------------------------------------------------------------------------------

api 52 instances.delete DELETE "$ZP/instances/$VM?requestId=$(uuid)"
expect 200
wait_op 53 zoneOperations.wait-delete-instance
[[ -z $OP_ERR ]] || die "instances.delete failed: $OP_ERR"
# autoDelete took the disks with the VM.
api 54 disks.get-after-autoDelete GET "$ZP/disks/$BOOT"
api 55 disks.delete-404 DELETE "$ZP/disks/$BOOT?requestId=$(uuid)"
api 56 images.delete DELETE "$GP/images/$IMAGE?requestId=$(uuid)"
expect 200
wait_op 57 globalOperations.wait-delete-image
[[ -z $OP_ERR ]] || die "images.delete failed: $OP_ERR"

echo "run $RUNID: $(grep -c . "$OUT/calls.log") calls, $(find "$OUT" -name '*.shape' | wc -l) responses recorded in $OUT" >&2
