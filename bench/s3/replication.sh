#!/usr/bin/env bash
# Object replication cost (issue 20): three coordinators, each in its own network namespace
# (scripts/lib/coords.sh), S3 through each one's LAN address, s3bench in a fourth namespace.
# For RF=1, 2 and 3 (a fresh cluster each, `s3: {replication: {factor: RF, mode: MODE}}`):
# PUT/GET of small objects and PUT/GET of large ones through ca, then GET of the small objects
# through cb (with RF=1 most of them live elsewhere: a GET through a non-owner). Side by side
# in one run; one JSON line per scenario in $OUT/results.jsonl and a markdown table.
#
#   sudo bench/s3/replication.sh       # env: MODE (available), RFS ("1 2 3"), DURATION (8),
#                                      # CONNS (8), LARGE_MIB (16), LARGE_COUNT (4), OUT,
#                                      # TM_BIN_DIR (release binaries: target/release), S3BENCH
#
# Wall-clock figures: run it on an idle machine. Not measured yet: rebalance speed when a fourth
# coordinator joins (no rebalancing to measure).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export TM_BIN_DIR=${TM_BIN_DIR:-$ROOT/target/release}
MODE=${MODE:-available}
RFS=${RFS:-1 2 3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-8}
LARGE_MIB=${LARGE_MIB:-16}
LARGE_COUNT=${LARGE_COUNT:-4}
OUT=${OUT:-/tmp/tm-repl-bench/$(date +%Y%m%d-%H%M%S)}
S3BENCH=${S3BENCH:-}
mkdir -p "$OUT"
if [[ -z $S3BENCH ]]; then
    CARGO_TARGET_DIR=$ROOT/target/bench cargo build --release --manifest-path "$ROOT/bench/s3/Cargo.toml" \
        --bin s3bench >&2 || exit 1
    S3BENCH=$ROOT/target/bench/release/s3bench
fi

if [[ ${1:-} != --one ]]; then
    : >"$OUT/results.jsonl"
    for rf in $RFS; do
        echo "== $(date +%T) RF=$rf mode $MODE, load $(cut -d' ' -f1-3 /proc/loadavg)"
        RF=$rf OUT=$OUT S3BENCH=$S3BENCH "$0" --one 2> >(tee -a "$OUT/rf$rf.log" >&2) ||
            echo "RF=$rf failed (see $OUT/rf$rf.log)"
    done
    "$S3BENCH" --table "$OUT/results.jsonl" | tee "$OUT/table.md"
    echo "results: $OUT"
    exit 0
fi

# --- one RF, in its own namespaces ---------------------------------------------------------------
source "$ROOT/scripts/lib/netns.sh"
source "$ROOT/scripts/lib/node.sh"
source "$ROOT/scripts/lib/mesh.sh"
source "$ROOT/scripts/lib/coords.sh"
tm_init "repl-bench-rf$RF" 900
require_tm_binaries
coords_up "replication: {factor: $RF, mode: $MODE}" ca cb cc
bench() { # bench COORD NAME SCENARIOS...
    local c=$1 name=$2
    shift 2
    ns_exec client "$S3BENCH" --target "http://${COORD_LAN[$c]}:8080" --ak "$COORD_AK" --sk "$COORD_SK" \
        --name "$name" --bucket bench --scenario "$(
            IFS=,
            echo "$*"
        )" --duration "$DURATION" --conns "$CONNS" --large-mib "$LARGE_MIB" \
        --large-count "$LARGE_COUNT" --out "$OUT/results.jsonl" >/dev/null ||
        fail "s3bench $name"
}
bench ca "RF=$RF via ca" put-small get-small put-large get-large
bench cb "RF=$RF via cb (GET of ca's writes)" get-small
pass
