#!/usr/bin/env bash
# Two TunnelMesh nodes in two namespaces over a LAN: ping both ways, 50 MiB TCP transfer each
# way with sha256 compared, and `tmctl peers --json` shows a handshake and rx/tx counters.
#
# Harness self-test without our binaries: TM_NODE_KIND=wg runs wireguard-go in place of
# our nodes (the tmctl checks are skipped then).
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
tm_init tunnel-pair 170
KIND=${TM_NODE_KIND:-tm}

node_pair "$KIND" "$KIND"

# The first packets trigger the handshake; allow a few seconds for it.
wait_for 10 "ping a -> b over the tunnel" ping_ok a "$B" 1 || fail "no tunnel: a cannot ping $B"
run_step "ping a -> b (10x)" ping_ok a "$B" 10
run_step "ping b -> a (10x)" ping_ok b "$A" 10

make_blob "$TM_TMP/blob" 50
run_step "50 MiB TCP a -> b" tcp_transfer a b "$B" 5001 "$TM_TMP/blob" "$TM_TMP/rx-b" 90
run_step "50 MiB TCP b -> a" tcp_transfer b a "$A" 5002 "$TM_TMP/blob" "$TM_TMP/rx-a" 90
rm -f "$TM_TMP/blob" "$TM_TMP/rx-a" "$TM_TMP/rx-b"

if [[ $KIND == tm ]]; then
    node_dump a
    node_dump b
    for pair in "a b" "b a"; do
        set -- $pair
        hs=$(node_peer_field "$1" "$2" last_handshake_unix)
        [[ $hs =~ ^[0-9]+$ ]] || fail "$1: peer $2 last_handshake_unix is '$hs', expected a timestamp"
        now=$(date +%s)
        ((hs <= now + 5 && hs >= now - 300)) || fail "$1: last_handshake_unix $hs not recent (now $now)"
        assert_ge "$(node_peer_field "$1" "$2" sessions_established)" 1 "$1: peer $2 sessions_established"
        # 50 MiB went each way: both directions carried at least that much inner payload.
        assert_ge "$(node_peer_field "$1" "$2" rx_bytes)" $((50 * 1024 * 1024)) "$1: peer $2 rx_bytes"
        assert_ge "$(node_peer_field "$1" "$2" tx_bytes)" $((50 * 1024 * 1024)) "$1: peer $2 tx_bytes"
        assert_ge "$(node_peer_field "$1" "$2" rx_packets)" 1 "$1: peer $2 rx_packets"
        assert_ge "$(node_peer_field "$1" "$2" tx_packets)" 1 "$1: peer $2 tx_packets"
        assert_eq "$(node_peer_field "$1" "$2" mesh_ip)" "$(node_mesh_ip "$2")" "$1: peer $2 mesh_ip"
        assert_ge "$(node_counter "$1" "d['counters']['handshakes_completed']")" 1 "$1: handshakes_completed"
        assert_ge "$(node_counter "$1" "d['counters']['rx_datagrams']")" 1 "$1: rx_datagrams"
        assert_ge "$(node_counter "$1" "d['counters']['tx_datagrams']")" 1 "$1: tx_datagrams"
        assert_eq "$(node_counter "$1" "d['peers']")" 1 "$1: status peers"
        assert_eq "$(node_counter "$1" "d['dataplane']['running']")" true "$1: dataplane running"
    done
    node_down a
    node_down b
else
    ns_exec a wg show "${NODE_IF[a]}" >&2
fi
pass
