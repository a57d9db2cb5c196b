#!/usr/bin/env bash
# Interop with a WireGuard implementation nobody here wrote: one TunnelMesh node (a) and
# Debian's wireguard-go (b). Two rounds, each starting both ends fresh:
#   1. the first packet comes from the wireguard-go side  -> wireguard-go initiates the handshake
#   2. the first packet comes from our side                -> our node initiates
# In each round: ping both ways and a TCP transfer both ways with sha256 compared. Which side
# initiated is read from wireguard-go's debug log (LOG_LEVEL=debug, in b.log).
#
# Harness self-test without our binaries: TM_NODE_KIND=wg.
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
tm_init interop-wg 170
KIND=${TM_NODE_KIND:-tm}
MIB=${TM_INTEROP_MIB:-20}

lan_create a b
node_new a "$KIND" 1
node_new b wg 2
node_connect a b
A=$(node_mesh_ip a)
B=$(node_mesh_ip b)
make_blob "$TM_TMP/blob" "$MIB"

# wg_log_since LINE : wireguard-go's log from line LINE on.
wg_log_since() { tail -n "+$1" "$TM_TMP/b.log"; }

round() {
    local first=$1 second=$2 first_ip=$3 second_ip=$4 port=$5
    local mark
    mark=1
    [[ -f $TM_TMP/b.log ]] && mark=$(($(wc -l <"$TM_TMP/b.log") + 1))
    node_up a
    node_up b
    log "round: first traffic from $first"
    wait_for 10 "first ping $first -> $second_ip" ping_ok "$first" "$second_ip" 1 ||
        fail "round $first-first: no reply from $second_ip (handshake initiated by $first failed)"
    # Which side initiated this round's (first) handshake, according to wireguard-go?
    local wglog
    wglog=$(wg_log_since "$mark")
    if [[ $first == b ]]; then
        grep -q "Sending handshake initiation" <<<"$wglog" ||
            fail "round b-first: wireguard-go log shows no 'Sending handshake initiation'"
        grep -q "Received handshake response" <<<"$wglog" ||
            fail "round b-first: wireguard-go never received our handshake response"
        log "ok: wireguard-go initiated, our node responded"
    else
        grep -q "Received handshake initiation" <<<"$wglog" ||
            fail "round a-first: wireguard-go log shows no 'Received handshake initiation' from our node"
        grep -q "Sending handshake initiation" <<<"$wglog" &&
            fail "round a-first: wireguard-go sent its own initiation although our node spoke first"
        log "ok: our node initiated, wireguard-go responded"
    fi
    run_step "ping $first -> $second (5x)" ping_ok "$first" "$second_ip" 5
    run_step "ping $second -> $first (5x)" ping_ok "$second" "$first_ip" 5
    run_step "TCP $MIB MiB $first -> $second" \
        tcp_transfer "$first" "$second" "$second_ip" "$port" "$TM_TMP/blob" "$TM_TMP/rx" 60
    run_step "TCP $MIB MiB $second -> $first" \
        tcp_transfer "$second" "$first" "$first_ip" $((port + 1)) "$TM_TMP/blob" "$TM_TMP/rx" 60
    if [[ $KIND == tm ]]; then
        node_dump a
        assert_ge "$(node_peer_field a b sessions_established)" 1 "a: peer b sessions_established"
        assert_ge "$(node_peer_field a b rx_bytes)" $((MIB * 1024 * 1024)) "a: peer b rx_bytes"
        assert_ge "$(node_peer_field a b tx_bytes)" $((MIB * 1024 * 1024)) "a: peer b tx_bytes"
    fi
    node_dump b
    node_down a
    node_down b
}

round b a "$B" "$A" 5101 # wireguard-go speaks first
round a b "$A" "$B" 5201 # our node speaks first
pass
