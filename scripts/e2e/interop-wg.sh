#!/usr/bin/env bash
# Interop with a WireGuard implementation nobody here wrote: one TunnelMesh node (a) and
# Debian's wireguard-go (b). Two rounds, each starting both ends fresh:
#   1. the first packet comes from the wireguard-go side  -> wireguard-go initiates the handshake
#   2. the first packet comes from our side                -> our node initiates
# In each round: ping both ways and a TCP transfer both ways with sha256 compared. Which side
# initiated is read from wireguard-go's debug log (LOG_LEVEL=debug, in b.log). Then a policy on
# our node names the wireguard-go peer: allowed, denied and unlisted ports, as the dataplane
# and `filter test` see them.
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

# A stock WireGuard peer listed under `peers:` is a policy principal by name and is filtered
# like any member (issue 16): b may open a:5301, a:5302 is denied, a:5303 has no rule.
if [[ $KIND == tm ]]; then
    node_up a
    node_up b
    wait_for 10 "b -> a over the tunnel" ping_ok b "$A" 1 || fail "no tunnel b -> a"
    for port in 5301 5302 5303; do
        ns_spawn a "listen-$port.log" socat "TCP-LISTEN:$port,bind=$A,reuseaddr,fork" "SYSTEM:echo hi-$port"
        wait_for 5 "a listens on $port" ns_exec a sh -c "ss -Hltn 'sport = :$port' | grep -q ." ||
            fail "a listener $port"
    done
    wg_tcp_ok() {
        local out
        out=$(ns_exec b timeout 4 socat -T 3 - "TCP:$A:$1,connect-timeout=2" </dev/null 2>/dev/null)
        [[ $out == "hi-$1" ]]
    }
    cat >"$TM_TMP/policy.hujson" <<'EOF'
{
  "acls": [{"action": "accept", "src": ["b"], "dst": ["a:5301"]}],
  "deny": [{"src": ["b"], "dst": ["a"], "ip": ["tcp:5302"]}],
  "default": "deny",
}
EOF
    run_step "load a policy naming the stock peer b on a" tmctl_for a filter load "$TM_TMP/policy.hujson"
    denied0=$(node_drop a filter_denied)
    norule0=$(node_drop a filter_no_rule)
    for c in 5301:true 5302:false 5303:false; do
        port=${c%%:*}
        want=$("$TM_BIN" --socket "$(node_sock a)" filter test --src b --dst "a:$port/tcp" --json |
            json_get 'd["allow"]') || fail "filter test b a:$port/tcp"
        assert_eq "$want" "${c##*:}" "filter test b -> a:$port/tcp"
        if wg_tcp_ok "$port"; then got=true; else got=false; fi
        assert_eq "$got" "$want" "wireguard-go peer b -> a:$port/tcp connected"
    done
    assert_ge "$(node_drop a filter_denied)" $((denied0 + 1)) "a filter_denied (b -> 5302)"
    assert_ge "$(node_drop a filter_no_rule)" $((norule0 + 1)) "a filter_no_rule (b -> 5303)"
    run_step "b pings a (echo: b may reach a port of a)" ping_ok b "$A" 2
    run_step "a pings b (a's own flows and their replies)" ping_ok a "$B" 2
    node_down a
    node_down b
fi
pass
