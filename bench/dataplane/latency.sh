#!/usr/bin/env bash
# UDP ping-pong latency through our tunnel (hdrhistogram p50/p99/p99.9), idle and under a
# single-stream iperf3 load, in the harness's namespaces (../shared/bench/lib.sh: fresh
# vpnbench-a/-b + veth, deleted afterwards; nothing leaves them).
#
#   sudo bench/dataplane/latency.sh            # needs tunnelmesh/tm-dataplane (TM_BIN_DIR) and
#                                              # the probe (cargo build --release in bench/dataplane)
#   COUNT=2000 INTERVAL_US=1000 DURATION=10 TM_DP_OFFLOAD=0 ... (knobs)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${BENCH_DIR:=$HERE/../../../shared/bench}"
: "${PROBE:=${CARGO_TARGET_DIR:-$HERE/target}/release/latency-probe}"
: "${COUNT:=2000}" "${INTERVAL_US:=1000}" "${DURATION:=10}" "${NICE:=-15}"
[ -x "$PROBE" ] || { echo "build the probe first: (cd $HERE && cargo build --release)" >&2; exit 1; }
# shellcheck source=/dev/null
. "$BENCH_DIR/lib.sh"
[ "$NICE" != 0 ] && renice -n "$NICE" -p $$ >/dev/null
WORKDIR=$(mktemp -d /tmp/tm-latency-XXXX); export WORKDIR
trap 'ns_teardown quiet; rm -rf "$WORKDIR"' EXIT
ns_setup
export NS_A NS_B VETH_A VETH_B UNDERLAY_A UNDERLAY_B PORT_A PORT_B TUN_A_IP TUN_B_IP TUN_PREFIX \
       TUN_A_DEV TUN_B_DEV TUN_MTU
: > "$WORKDIR/pids"
"$HERE/up-ours.sh" || die "up-ours.sh failed"
wait_reachable "$TUN_B_IP" 30 || die "tunnel not reachable"
nsb "$PROBE" echo "$TUN_B_IP:7777" & echo $! >> "$WORKDIR/pids"
nsb iperf3 -s -B "$TUN_B_IP" -p 5201 >/dev/null 2>&1 & echo $! >> "$WORKDIR/pids"
sleep 0.5
nsa "$PROBE" ping "$TUN_B_IP:7777" "$COUNT" "$INTERVAL_US" idle
nsa timeout $((DURATION + 10)) iperf3 -c "$TUN_B_IP" -p 5201 -t "$DURATION" > "$WORKDIR/iperf.txt" 2>&1 &
ip=$!
sleep 1
nsa "$PROBE" ping "$TUN_B_IP:7777" $(( (DURATION - 2) * 1000000 / INTERVAL_US )) "$INTERVAL_US" "under-load(tcp1)"
wait "$ip"
grep -E "sender|receiver" "$WORKDIR/iperf.txt"
kill $(cat "$WORKDIR/pids") 2>/dev/null
exit 0
