#!/usr/bin/env bash
# Thread-per-core dataplane: two workers per node (TM_DP_WORKERS=2), each with its own TUN
# queue, SO_REUSEPORT socket and io_uring loop.
# 1. `tmctl status --json` reports dataplane.workers == 2 and a `workers` list of 2 entries.
# 2. 4 parallel TCP transfers each way (8 MiB each, sha256 checked) arrive intact and in order
#    (the receivers' TcpExtTCPOFOQueue does not move), with no punt-queue drops.
# 3. Both workers of each node carry traffic: every worker has non-zero rx (TUN or UDP) and tx
#    (TUN or UDP) counters. Note: one peer's datagrams all hash to one SO_REUSEPORT socket, and
#    the kernel steers a TUN flow to the queue its reverse packets were written on, so the TCP
#    flows with one peer settle on the worker receiving that peer; 64 fresh UDP flows each way
#    (first packets are hashed over the queues) make sure both queues see new flows.
# 4. The per-worker counters add up: sum of the workers' drops == the global drops, and the
#    text `tmctl status` lists both workers.
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
tm_init dataplane-workers 200
export TM_DP_WORKERS=2

node_pair tm tm
wait_for 10 "ping a -> b" ping_ok a "$B" 1 || fail "no tunnel"

workers_reported() { [[ $(node_counter "$1" "len(d.get('workers', []))") == 2 ]]; }
for n in a b; do
    assert_eq "$(node_counter "$n" "d['dataplane']['workers']")" 2 "$n: dataplane.workers"
    wait_for 5 "$n: per-worker counters in status" workers_reported "$n" ||
        fail "$n: status has no 2-entry workers list: $(node_status "$n")"
done

ofo() { ns_exec "$1" nstat -az TcpExtTCPOFOQueue | awk '/TcpExtTCPOFOQueue/ {print $2}'; }
make_blob "$TM_TMP/blob" 8
oa=$(ofo a) ob=$(ofo b)
pids=()
for i in 1 2 3 4; do
    tcp_transfer a b "$B" $((5100 + i)) "$TM_TMP/blob" "$TM_TMP/rx-b$i" 90 &
    pids+=($!)
    tcp_transfer b a "$A" $((5200 + i)) "$TM_TMP/blob" "$TM_TMP/rx-a$i" 90 &
    pids+=($!)
done
bad=0
for p in "${pids[@]}"; do wait "$p" || bad=$((bad + 1)); done
assert_eq "$bad" 0 "failed parallel TCP transfers (of 8)"
assert_eq "$(ofo b)" "$ob" "b: TcpExtTCPOFOQueue during the parallel transfers (in order)"
assert_eq "$(ofo a)" "$oa" "a: TcpExtTCPOFOQueue during the parallel transfers (in order)"
rm -f "$TM_TMP"/blob "$TM_TMP"/rx-*

udp_flows() { # FROM_NS TO_ADDR : 64 UDP flows (distinct source ports), 3 datagrams each
    ns_exec "$1" python3 -c '
import socket, sys
for p in range(41000, 41064):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", p))
    for _ in range(3):
        s.sendto(b"x" * 200, (sys.argv[1], 9))
    s.close()
' "$2"
}
run_step "64 UDP flows a -> b" udp_flows a "$B"
run_step "64 UDP flows b -> a" udp_flows b "$A"
sleep 2.5 # counters are reported every second

for n in a b; do
    node_dump "$n"
    st=$(node_status "$n")
    for w in 0 1; do
        get() { json_get "$1" <<<"$st"; }
        rx=$(get "d['workers'][$w]['tun_rx_packets'] + d['workers'][$w]['udp_rx_packets']")
        tx=$(get "d['workers'][$w]['tun_tx_packets'] + d['workers'][$w]['udp_tx_packets']")
        log "$n: worker $w: $(get "d['workers'][$w]")"
        assert_ge "$rx" 1 "$n: worker $w rx packets (tun + udp)"
        assert_ge "$tx" 1 "$n: worker $w tx packets (tun + udp)"
        assert_eq "$(get "d['workers'][$w]['punt_drops']")" 0 "$n: worker $w punt_drops"
    done
    total=$(json_get "sum(d['counters']['drops'].values())" <<<"$st")
    per=$(json_get "sum(sum(w['drops'].values()) for w in d['workers'])" <<<"$st")
    assert_eq "$per" "$total" "$n: sum of per-worker drops == global drops"
    text=$(tmctl_for "$n" status) || fail "$n: tmctl status"
    grep -q '^worker 1 ' <<<"$text" || fail "$n: text status lists no worker 1: $text"
    grep -q '2 workers' <<<"$text" || fail "$n: text status does not say 2 workers: $text"
done
node_down a
node_down b
pass
