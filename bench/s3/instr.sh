#!/usr/bin/env bash
# Instructions per S3 small operation, counted by callgrind: a figure that does not depend on the
# load of the machine (wall-clock ops/s on a shared 2-core box does).
#
#   bench/s3/instr.sh LABEL=SERVER_BIN [LABEL=SERVER_BIN ...]
#
# Each SERVER_BIN is a `tm-s3-server` (this directory's, built with `cargo build --release --bins`,
# possibly from another commit's tree). For each one, in order and REPEAT times: a fresh data dir,
# the server under `valgrind --tool=callgrind` on 127.0.0.1, then `s3bench` (native, one
# connection) does OPS put-small (unique 4 KiB objects), then get-small over those OPS keys
# (OPS untimed preload GETs, all hits, + OPS timed GETs = 2*OPS GETs). Counters are zeroed before
# the PUTs and dumped after each phase (`callgrind_control`), so server start-up is not counted.
# Prints instructions (Ir, user space) per PUT and per GET as a markdown table: those of the
# request path (every server thread but the storage checkpointer) and, apart, those of the
# checkpoint thread and its number of checkpoints (time-driven, so they depend on how fast the run
# went: see ../cgsum.py). Keeps the callgrind files (one per thread per phase) in $OUT for
# `callgrind_annotate`.
#
# Environment: OPS (2000), REPEAT (1), OUT (/tmp/tm-s3instr), PORT (19320),
# S3BENCH (client binary; default: build this directory's s3bench, release).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OPS="${OPS:-2000}"
REPEAT="${REPEAT:-1}"
OUT="${OUT:-/tmp/tm-s3instr}"
PORT="${PORT:-19320}"
AK=BENCHINSTRAK
SK=benchinstrsecretkey0123456789

(($#)) || { sed -n '2,18p' "$0" >&2; exit 2; }
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
    { echo "valgrind (callgrind) missing: apt-get install valgrind" >&2; exit 1; }
if [[ -z ${S3BENCH:-} ]]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERE/target}"
    cargo build --release --manifest-path "$HERE/Cargo.toml" --bin s3bench
    S3BENCH="$CARGO_TARGET_DIR/release/s3bench"
fi
mkdir -p "$OUT"

SPID=
DATA=
cleanup() {
    [[ -n $SPID ]] && { kill -INT "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; }
    [[ -n $DATA ]] && rm -rf "$DATA"
    return 0
}
trap cleanup EXIT

# Total Ir of one callgrind dump file.
ROWS=()
for r in $(seq 1 "$REPEAT"); do
    for spec in "$@"; do
        label="${spec%%=*}" bin="${spec#*=}"
        DATA="$(mktemp -d "$OUT/data.XXXXXX")"
        cg="$OUT/cg.$label.$r"
        rm -f "$cg".*
        echo "== $(date +%T) $label (run $r): $bin" >&2
        valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$cg.%p" \
            "$bin" --listen "127.0.0.1:$PORT" --data "$DATA" --ak "$AK" --sk "$SK" \
            >"$OUT/server.$label.$r.log" 2>&1 &
        SPID=$!
        for _ in $(seq 1 600); do
            (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
            kill -0 "$SPID" 2>/dev/null || { cat "$OUT/server.$label.$r.log" >&2; exit 1; }
            sleep 0.1
        done
        # The bucket first (one request, not counted), then zero the counters.
        "$S3BENCH" --target "http://127.0.0.1:$PORT" --ak "$AK" --sk "$SK" --conns 1 \
            --scenario put-small --ops 0 >/dev/null
        callgrind_control -z "$SPID" >/dev/null
        "$S3BENCH" --target "http://127.0.0.1:$PORT" --ak "$AK" --sk "$SK" --conns 1 \
            --scenario put-small --ops "$OPS" --duration 1e6 --name "$label" >>"$OUT/s3bench.jsonl"
        callgrind_control -d put "$SPID" >/dev/null
        "$S3BENCH" --target "http://127.0.0.1:$PORT" --ak "$AK" --sk "$SK" --conns 1 \
            --scenario get-small --ops "$OPS" --duration 1e6 --get-keys "$OPS" --name "$label" >>"$OUT/s3bench.jsonl"
        callgrind_control -d get "$SPID" >/dev/null
        kill -INT "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=
        rm -rf "$DATA"; DATA=
        # Every operation done (no errors, none cut short), else the division below would lie.
        tail -n 2 "$OUT/s3bench.jsonl" | grep -c "\"errors\":0,.*\"ops\":$OPS," | grep -qx 2 ||
            { echo "s3bench did not complete $OPS operations per phase" >&2; tail -n 2 "$OUT/s3bench.jsonl" >&2; exit 1; }
        read -r pr pc pn < <(python3 "$HERE/../cgsum.py" "$OPS" $(grep -l '^desc: Trigger: .*put' "$cg".*))
        read -r gr gc gn < <(python3 "$HERE/../cgsum.py" "$((2 * OPS))" $(grep -l '^desc: Trigger: .*get' "$cg".*))
        ROWS+=("| $label | $r | $OPS | $pr | $gr | $pc ($pn) | $gc ($gn) |")
    done
done
{
    echo "| server | run | PUTs | Ir per PUT | Ir per GET | checkpointer Ir per PUT (checkpoints) | same per GET |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${ROWS[@]}"
} | tee "$OUT/instr.md"
