#!/usr/bin/env bash
# Instructions per NFS small-file operation, counted by callgrind: a figure that does not depend
# on the load of the machine (wall-clock ops/s on a shared 2-core box does).
#
#   bench/nfs/instr.sh LABEL=TM_NFS_SERVER_BIN [LABEL=BIN ...]
#
# Each BIN is a `tm-nfs-server` (`cargo build --release -p tm-nfs --bin tm-nfs-server`, possibly
# from another commit's tree). For each one, in order and REPEAT times: a fresh data dir, the
# server under `valgrind --tool=callgrind` on 127.0.0.1 with busy polling off (`--busy-poll-us 0`:
# the spin would count instructions that depend on timing), then `nfsbench` (bench/nfs/nfsbench.c,
# libnfs, native): FILES x (creat + 4 KiB write + close), then FILES x stat of those files.
# Counters are zeroed after a one-file warm-up and dumped after each phase (`callgrind_control`),
# so start-up is not counted (each phase's own mount, a handful of RPCs, is). Prints instructions (Ir, user space) per created file
# and per stat as a markdown table: those of the request path (every server thread but the
# storage checkpointer) and, apart, those of the checkpoint thread and its number of checkpoints
# (time-driven: see ../cgsum.py). Callgrind files (one per thread per phase) stay in $OUT.
#
# Environment: FILES (1000), REPEAT (1), OUT (/tmp/tm-nfsinstr), PORT (20490).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
FILES="${FILES:-1000}"
REPEAT="${REPEAT:-1}"
OUT="${OUT:-/tmp/tm-nfsinstr}"
PORT="${PORT:-20490}"

(($#)) || { sed -n '2,17p' "$0" >&2; exit 2; }
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
    { echo "valgrind (callgrind) missing: apt-get install valgrind" >&2; exit 1; }
[[ -f /usr/include/nfsc/libnfs.h ]] || { echo "libnfs-dev missing" >&2; exit 1; }
mkdir -p "$OUT"
gcc -O2 -Wall -o "$OUT/nfsbench" "$HERE/nfsbench.c" -lnfs
URL="nfs://127.0.0.1/shares/default?version=3&nfsport=$PORT&mountport=$PORT"

SPID=
DATA=
cleanup() {
    [[ -n $SPID ]] && { kill -TERM "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; }
    [[ -n $DATA ]] && rm -rf "$DATA"
    return 0
}
trap cleanup EXIT

ROWS=()
for r in $(seq 1 "$REPEAT"); do
    for spec in "$@"; do
        label="${spec%%=*}" bin="${spec#*=}"
        DATA="$(mktemp -d "$OUT/data.XXXXXX")"
        cg="$OUT/cg.$label.$r"
        rm -f "$cg".*
        echo "== $(date +%T) $label (run $r): $bin" >&2
        valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$cg.%p" \
            "$bin" --data "$DATA" --listen "127.0.0.1:$PORT" --busy-poll-us 0 \
            >"$OUT/server.$label.$r.log" 2>&1 &
        SPID=$!
        ok=0
        for _ in $(seq 1 300); do
            kill -0 "$SPID" 2>/dev/null || break
            if "$OUT/nfsbench" "$URL" smallfiles 1 >/dev/null 2>&1; then ok=1; break; fi
            sleep 0.2
        done
        ((ok)) || { echo "server did not come up" >&2; cat "$OUT/server.$label.$r.log" >&2; exit 1; }
        callgrind_control -z "$SPID" >/dev/null
        : >"$OUT/nfsbench.$label.log"
        "$OUT/nfsbench" "$URL" create "$FILES" >>"$OUT/nfsbench.$label.log"
        callgrind_control -d create "$SPID" >/dev/null
        "$OUT/nfsbench" "$URL" stat "$FILES" >>"$OUT/nfsbench.$label.log"
        callgrind_control -d stat "$SPID" >/dev/null
        kill -TERM "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=
        rm -rf "$DATA"; DATA=
        grep -q "create_4k_ops" "$OUT/nfsbench.$label.log" || { echo "nfsbench failed" >&2; exit 1; }
        read -r cr cc cn < <(python3 "$HERE/../cgsum.py" "$FILES" $(grep -l '^desc: Trigger: .*create' "$cg".*))
        read -r sr sc sn < <(python3 "$HERE/../cgsum.py" "$FILES" $(grep -l '^desc: Trigger: .*stat' "$cg".*))
        ROWS+=("| $label | $r | $FILES | $cr | $sr | $cc ($cn) | $sc ($sn) |")
    done
done
{
    echo "| server | run | files | Ir per create + 4 KiB write + close | Ir per stat | checkpointer Ir per create (checkpoints) | same per stat |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${ROWS[@]}"
} | tee "$OUT/instr.md"
