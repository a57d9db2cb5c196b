#!/usr/bin/env bash
# One-command S3 benchmark: tm-s3 vs s3s-fs 0.14.1, side by side, loopback only.
# Builds release, installs s3s-fs if missing, starts both servers on 127.0.0.1 with temp data dirs
# on the same disk, runs every scenario against each (interleaved per scenario), prints a markdown
# table and writes results to $OUT (default /tmp/tm-s3bench). Extra args go to every s3bench call
# (e.g. ./run.sh --duration 20 --conns 32). Environment: SCENARIOS="put-small get-small" (subset),
# BIN_DIR=dir (use prebuilt s3bench + tm-s3-server from dir, no build), OUT, PORT_TM, PORT_FS,
# TM_SERVER_ARGS (extra tm-s3-server arguments, e.g. "--versioned bench", "--encrypt-all").
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-/tmp/tm-s3bench}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERE/target}"
S3S_ROOT="${S3S_ROOT:-$CARGO_TARGET_DIR/s3s-fs-root}"
DATA_PARENT="${DATA_PARENT:-$OUT}"   # both data dirs live here: same disk for both servers
PORT_TM="${PORT_TM:-19310}"
PORT_FS="${PORT_FS:-19311}"
AK="${AK:-BENCHAK$RANDOM$RANDOM}"
SK="${SK:-$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')}"

mkdir -p "$OUT"
if [ -n "${BIN_DIR:-}" ]; then
    BIN="$BIN_DIR"   # prebuilt s3bench + tm-s3-server (e.g. a saved baseline); no build
else
    echo "== build (release)"
    cargo build --release --manifest-path "$HERE/Cargo.toml" --bins
    BIN="$CARGO_TARGET_DIR/release"
fi

if [ ! -x "$S3S_ROOT/bin/s3s-fs" ]; then
    echo "== cargo install s3s-fs@0.14.1 --features binary --root $S3S_ROOT"
    cargo install s3s-fs@0.14.1 --features binary --locked --root "$S3S_ROOT"
fi

DATA_TM="$(mktemp -d "$DATA_PARENT/data-tm.XXXXXX")"
DATA_FS="$(mktemp -d "$DATA_PARENT/data-fs.XXXXXX")"
PIDS=()
cleanup() {
    echo "== $(date +%T) stopping servers"
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$DATA_TM" "$DATA_FS"
    echo "== $(date +%T) done"
}
trap cleanup EXIT

# shellcheck disable=SC2086 # TM_SERVER_ARGS is a list of words
"$BIN/tm-s3-server" --listen "127.0.0.1:$PORT_TM" --data "$DATA_TM" --ak "$AK" --sk "$SK" \
    ${TM_SERVER_ARGS:-} >"$OUT/tm-s3.log" 2>&1 &
PIDS+=($!)
RUST_LOG=warn "$S3S_ROOT/bin/s3s-fs" --host 127.0.0.1 --port "$PORT_FS" \
    --access-key "$AK" --secret-key "$SK" "$DATA_FS" >"$OUT/s3s-fs.log" 2>&1 &
PIDS+=($!)

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server on port $1 did not start" >&2
    return 1
}
wait_port "$PORT_TM"
wait_port "$PORT_FS"

# Server CPU time (user+system, all threads) in clock ticks, from /proc.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)

RESULTS="$OUT/results.jsonl"
CPU="$OUT/cpu.md"
: >"$RESULTS"
{
    echo "| scenario | server | ops | server CPU s | CPU ms/op |"
    echo "|---|---|---:|---:|---:|"
} >"$CPU"
for sc in ${SCENARIOS:-put-small get-small put-large get-large}; do
    for srv in tm-s3 s3s-fs; do
        port="$PORT_TM"; pid="${PIDS[0]}"
        [ "$srv" = s3s-fs ] && { port="$PORT_FS"; pid="${PIDS[1]}"; }
        echo "== $(date +%T) $sc against $srv"
        c0=$(cpu_ticks "$pid")
        "$BIN/s3bench" --target "http://127.0.0.1:$port" --ak "$AK" --sk "$SK" --name "$srv" \
            --scenario "$sc" --out "$RESULTS" "$@"
        c1=$(cpu_ticks "$pid")
        ops=$(tail -n 1 "$RESULTS" | sed 's/.*"ops":\([0-9]*\).*/\1/')
        awk -v sc="$sc" -v srv="$srv" -v ops="$ops" -v t=$((c1 - c0)) -v hz="$TCK" \
            'BEGIN { printf "| %s | %s | %d | %.2f | %.3f |\n", sc, srv, ops, t / hz, ops ? 1000 * t / hz / ops : 0 }' >>"$CPU"
    done
done

{
    echo "Machine: nproc=$(nproc), kernel $(uname -r), disk: $(df -h "$DATA_PARENT" | awk 'NR==2{print $1" "$2" ("$5" used)"}')"
    echo
    "$BIN/s3bench" --table "$RESULTS"
    echo
    echo "Server CPU per operation (from /proc/PID/stat; independent of other load on the box):"
    echo
    cat "$CPU"
} | tee "$OUT/table.md"
echo "results: $RESULTS, table: $OUT/table.md"
