#!/usr/bin/env bash
# Where the dataplane's CPU goes per TM_BENCH_FILTER variant (off, rules10, big, peers1k): two
# nodes from up-ours.sh in namespaces (the harness's lib.sh), then per variant
#   1. idle: CPU ticks of both nodes' tunnelmesh + tm-dataplane over 10 s, and their RSS;
#   2. load: iperf3 tcp1 for 9 s with `perf record -e cpu-clock -g` on both tm-dataplane
#      processes for 6 s of it; prints the throughput and the top user-space symbols.
#
#   sudo bench/dataplane/profile.sh off big peers1k     # env: TM_BIN_DIR (default target/release),
#                                                       #      BENCH_DIR (../shared/bench), OUT
# A wall-clock tool like the harness: the shares move with the machine's load.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
: "${BENCH_DIR:=$ROOT/../shared/bench}"
: "${TM_BIN_DIR:=$ROOT/target/release}"
OUT="${OUT:-/tmp/tm-dp-profile}"
export TM_BIN_DIR
[ "$(id -u)" = 0 ] || { echo "needs root (netns, TUN)" >&2; exit 1; }
command -v perf >/dev/null || { echo "perf missing (apt-get install linux-perf)" >&2; exit 1; }
NS_A=tmprf-a NS_B=tmprf-b VETH_A=tp-a VETH_B=tp-b TUN_A_DEV=tpA TUN_B_DEV=tpB
# shellcheck source=/dev/null
. "$BENCH_DIR/lib.sh"
export NS_A NS_B VETH_A VETH_B UNDERLAY_A UNDERLAY_B PORT_A PORT_B TUN_A_IP TUN_B_IP TUN_PREFIX \
    TUN_A_DEV TUN_B_DEV TUN_MTU
mkdir -p "$OUT"
trap 'ns_teardown quiet' EXIT
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
for v in "$@"; do
    ns_setup
    WORKDIR=$(mktemp -d "$OUT/work.XXXX")
    export WORKDIR
    : >"$WORKDIR/pids"
    if [ "$v" = off ]; then unset TM_BENCH_FILTER; else export TM_BENCH_FILTER=$v; fi
    bash "$HERE/up-ours.sh" >"$WORKDIR/up.log" 2>&1 || { cat "$WORKDIR/up.log" >&2; exit 1; }
    mapfile -t pids < <(grep -E '^[0-9]+$' "$WORKDIR/pids")
    for _ in $(seq 50); do nsa ping -c1 -W1 "$TUN_B_IP" >/dev/null 2>&1 && break; sleep 0.2; done
    t0=$(ticks "${pids[@]}"); sleep 10; t1=$(ticks "${pids[@]}")
    rss=$(for p in "${pids[@]}"; do printf '%s %s kB, ' "$(cat "/proc/$p/comm")" "$(awk '/VmRSS/ {print $2}' "/proc/$p/status")"; done)
    idle=$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", 100 * t / hz / 10 }')
    echo "== $v: idle CPU of both nodes $idle % of a core (10 s); RSS ${rss%, }"
    dps=$(for p in "${pids[@]}"; do [ "$(cat "/proc/$p/comm")" = tm-dataplane ] && echo "$p"; done | paste -sd,)
    nsb iperf3 -s -B "$TUN_B_IP" -p 5201 >/dev/null 2>&1 &
    srv=$!
    sleep 0.5
    nsa iperf3 -c "$TUN_B_IP" -p 5201 -t 9 -J >"$OUT/$v.iperf.json" 2>/dev/null &
    cli=$!
    sleep 1
    perf record -q -e cpu-clock -F 2000 -g -p "$dps" -o "$OUT/$v.perf.data" -- sleep 6 >/dev/null 2>&1 || true
    wait "$cli" || true
    kill "$srv" 2>/dev/null || true
    python3 -c "import json,sys; print('   tcp1 %.2f Gbit/s' % (json.load(open(sys.argv[1]))['end']['sum_received']['bits_per_second'] / 1e9))" "$OUT/$v.iperf.json"
    perf report -i "$OUT/$v.perf.data" --no-children --sort sym --stdio -g none 2>/dev/null |
        grep -E '^ +[0-9.]+%' | grep '\[\.\]' | head -15 | sed 's/^/   /'
    kill "${pids[@]}" 2>/dev/null || true
    sleep 0.5
    ns_teardown quiet
    rm -rf "$WORKDIR"
done
echo "perf data: $OUT/<variant>.perf.data"
