#!/usr/bin/env bash
# The packet filter with the mesh policy (issue 16): a coordinator and two members (alpha, beta)
# joined in network namespaces; the policy is set on the coordinator with `tunnelmesh policy
# set` and every node's dataplane enforces its projection from the netmap. Checks:
#   - a bad `ip` part (unknown host, reversed or out-of-range ports, unknown protocol) is refused
#     at `policy set` with file:line and changes nothing;
#   - allowed ports connect, denied ones are dropped and counted (filter_denied, filter_no_rule);
#   - `tunnelmesh filter test` (on the node that enforces) agrees with what the dataplanes did,
#     on a table of cases, the coordinator's service ports included;
#   - coordinator service ports by capability, not hand rules: beta (an S3 grant) connects to
#     the coordinator's S3 port 8080, alpha (none) cannot even open a TCP connection to it; every
#     member's DNS query to the coordinator is answered under "default": "deny" (a stateful UDP
#     reply: no rule lets the coordinator send to members);
#   - revocation: `tunnelmesh node tag beta tag:untrusted` cuts beta's established TCP stream to
#     alpha within 2 s (one netmap push; filter_revoked counted by beta, which no longer sends
#     on it, or alpha), and alpha then does not even send to beta (outbound: no rule lets them
#     talk).
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
source "$(dirname "$0")/../lib/mesh.sh"
tm_init filter-mesh 240
require_tm_binaries
command -v socat >/dev/null || fail "socat missing (run scripts/install-test-deps.sh)"
command -v dig >/dev/null || fail "dig missing (dnsutils; run scripts/install-test-deps.sh)"

lan_create coord alpha beta
COORD=192.0.2.1:8443
start() { # start NS NAME ARGS...
    local ns=$1 n=$2
    shift 2
    ns_spawn "$ns" "$n.log" env HOME="$TM_TMP/$n/home" TUNNELMESH_LOG="${TM_RUST_LOG:-info}" \
        "$TM_BIN" join "$@" --config "$TM_TMP/$n/config.yaml"
    wait_for 20 "$n ready" ready "$n" || fail "$n did not come up (see $n.log)"
}
conf coord 'coordinator: {enabled: true, listen: ":8443"}
dns: {manage_system: false}
'
start coord coord
TOKEN=$(ctl coord token) || fail "tmctl token"
for n in alpha beta; do
    conf "$n" 'dns: {manage_system: false}
'
    start "$n" "$n" "$COORD" --token "$TOKEN"
done
CIP=$(mesh_ip_of coord)
ALPHA=$(mesh_ip_of alpha)
BETA=$(mesh_ip_of beta)
for n in alpha beta; do
    wait_for 15 "$n pings the coordinator" ping_ok "$n" "$CIP" 1 || fail "$n cannot reach $CIP"
done
wait_for 15 "beta pings alpha" ping_ok beta "$ALPHA" 1 || fail "no tunnel beta -> alpha"

# Listeners on alpha: each answers "hi-PORT" and closes.
for port in 22 80 443 8080; do
    ns_spawn alpha "srv-$port.log" socat "TCP-LISTEN:$port,bind=$ALPHA,fork,reuseaddr" \
        "SYSTEM:echo hi-$port"
done
for port in 22 80 443 8080; do
    wait_for 5 "alpha listens on $port" ns_exec alpha sh -c "ss -Hltn 'sport = :$port' | grep -q ." ||
        fail "alpha listener $port"
done
# tcp_ok FROM HOST PORT : a connection gets alpha's greeting (HOST alpha) or is accepted at all.
tcp_ok() {
    local out
    out=$(ns_exec "$1" timeout 4 socat -T 3 - "TCP:$2:$3,connect-timeout=2" </dev/null 2>/dev/null)
    [[ $2 != "$ALPHA" || $out == "hi-$3" ]]
}
# s3_port_open FROM : a TCP connection to the coordinator's S3 port is established.
s3_port_open() { ns_exec "$1" timeout 4 socat -T 2 /dev/null "TCP:$CIP:8080,connect-timeout=2" 2>/dev/null; }
dns_ok() { # dns_ok FROM : the coordinator's mesh DNS answers FROM's query for alpha.mesh
    local out
    out=$(ns_exec "$1" timeout 5 dig +short +time=2 +tries=1 "@$CIP" alpha.mesh A 2>/dev/null)
    [[ $out == "$ALPHA" ]]
}
run_step "no policy: beta -> alpha:22" tcp_ok beta "$ALPHA" 22
run_step "no policy: alpha -> coord:8080" s3_port_open alpha

cat >"$TM_TMP/mesh.hujson" <<'EOF'
// Issue 16 on a joined mesh: alpha serves, beta is a client with an S3 grant.
{
  "tagOwners": {"tag:untrusted": []},
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["alpha:80,443"]},
    {"action": "accept", "src": ["beta"], "dst": ["alpha:2222-2223"]},
  ],
  "grants": [
    {"src": ["beta"], "dst": ["*"], "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["*"], "access": "rw"}]}},
  ],
  "deny": [
    {"src": ["beta"], "dst": ["alpha"], "ip": ["tcp:22"]},
    {"src": ["tag:untrusted"], "dst": ["*"], "ip": ["*"]},
  ],
  "default": "deny",
  "tests": [{"src": "beta", "accept": ["alpha:443", "coord:8080"], "deny": ["alpha:22"]}],
}
EOF

# --- bad ip parts: refused with file:line, nothing changes --------------------------------------
before=$(tm coord policy get --json | json_get 'd["hash"]') || fail "policy get"
bad() { # bad NAME LINE NEEDLE ACL_DST [PROTO]
    local f=$TM_TMP/$1.hujson out
    printf '{\n  "default": "deny",\n  "acls": [\n    {"action": "accept", "src": ["beta"], "dst": ["%s"]%s},\n  ],\n}\n' \
        "$4" "${5:+, \"proto\": \"$5\"}" >"$f"
    out=$(tm coord policy set "$f" 2>&1) && fail "policy set accepted $1: $out"
    [[ $out == *"$1.hujson:$2:"*"$3"* ]] || fail "policy set $1: no file:line or reason: $out"
    log "ok: $1 refused: $out"
}
bad unknown-host 4 'unknown node or host "nosuch"' "nosuch:80"
bad reversed 4 'is reversed' "alpha:90-80"
bad out-of-range 4 'not a port' "alpha:65536"
bad unknown-proto 4 'unknown protocol "quic"' "alpha:443" quic
assert_eq "$(tm coord policy get --json | json_get 'd["hash"]')" "$before" "policy hash after refusals"
run_step "still no policy: beta -> alpha:22" tcp_ok beta "$ALPHA" 22

# --- the policy --------------------------------------------------------------------------------
out=$(tm coord policy set "$TM_TMP/mesh.hujson") || fail "policy set: $out"
log "policy set: $out"
filter_on() { [[ $(node_counter "$1" "d['filter']['source'] if d.get('filter') else ''") == coordinator ]]; }
for n in coord alpha beta; do
    wait_for 5 "$n's filter has the mesh policy" filter_on "$n" || fail "$n: no pushed filter: $(node_counter "$n" "d.get('filter')")"
done

# Differential table: `filter test` on the node that enforces vs. what the dataplanes did.
before_denied=$(node_drop alpha filter_denied)
before_norule=$(node_drop alpha filter_no_rule)
c_norule=$(node_drop coord filter_no_rule)
for c in beta:alpha:443 beta:alpha:80 beta:alpha:22 beta:alpha:8080 beta:coord:8080 \
    alpha:coord:8080 beta:coord:8443 coord:alpha:22 coord:alpha:443; do
    IFS=: read -r src dst port <<<"$c"
    want=$(tm "$dst" filter test --src "$src" --dst "$dst:$port/tcp" --json | json_get 'd["allow"]') ||
        fail "filter test $src -> $dst:$port/tcp on $dst"
    host=$ALPHA
    [[ $dst == coord ]] && host=$CIP
    if [[ $dst == coord && $port == 8080 ]]; then
        if s3_port_open "$src"; then got=true; else got=false; fi
    elif [[ $dst == coord ]]; then
        if ns_exec "$src" timeout 4 socat -T 2 /dev/null "TCP:$host:$port,connect-timeout=2" 2>/dev/null; then got=true; else got=false; fi
    else
        if tcp_ok "$src" "$host" "$port"; then got=true; else got=false; fi
    fi
    log "case $src -> $dst:$port/tcp: filter test says allow=$want, dataplane: connected=$got"
    [[ $want == "$got" ]] || fail "filter test and the dataplane disagree on $src -> $dst:$port/tcp"
done
assert_eq "$(s3_port_open beta && echo y || echo n)" y "beta (S3 grant) opens coord:8080"
assert_eq "$(s3_port_open alpha && echo y || echo n)" n "alpha (no S3 grant) cannot open coord:8080"
assert_ge "$(node_drop alpha filter_denied)" $((before_denied + 1)) "alpha filter_denied (beta's tcp:22)"
assert_ge "$(node_drop alpha filter_no_rule)" $((before_norule + 1)) "alpha filter_no_rule (8080: no rule)"
assert_ge "$(node_drop coord filter_no_rule)" $((c_norule + 1)) "the coordinator's own filter dropped alpha's SYN to 8080"
out=$(tm coord filter test --src alpha --dst coord:8080/tcp) || fail "filter test alpha -> coord:8080: $out"
[[ $out == deny* ]] || fail "filter test allows alpha -> coord:8080: $out"
out=$(tm coord filter test --src beta --dst coord:8080/tcp) || fail "filter test beta -> coord:8080: $out"
[[ $out == accept*"service port s3"*"tunnelmesh.io/cap/s3"* ]] || fail "filter test does not name the capability: $out"
log "ok: $out"

# DNS under default deny: members' queries to the coordinator are answered (no rule lets the
# coordinator send to them: the answers pass as replies).
for n in alpha beta; do
    wait_for 10 "$n's DNS query to the coordinator is answered" dns_ok "$n" || fail "$n: no DNS answer from $CIP"
done
log "ok: DNS answers under default deny"

# --- revocation ---------------------------------------------------------------------------------
ns_spawn alpha stream-srv.log timeout 60 socat -u "TCP-LISTEN:2223,bind=$ALPHA,reuseaddr" "OPEN:$TM_TMP/stream,creat,trunc"
wait_for 5 "alpha listens on 2223" ns_exec alpha sh -c "ss -Hltn 'sport = :2223' | grep -q ." ||
    fail "stream listener"
ns_spawn beta stream-cli.log timeout 60 sh -c \
    "while :; do echo tick; sleep 0.05; done | socat -u - TCP:$ALPHA:2223,connect-timeout=3"
size() { stat -c %s "$TM_TMP/stream" 2>/dev/null || echo 0; }
wait_for 10 "beta's stream flows" sh -c "[ \$(stat -c %s '$TM_TMP/stream' 2>/dev/null || echo 0) -gt 100 ]" ||
    fail "the stream did not start"
s0=$(size)
sleep 1
assert_ge "$(size)" $((s0 + 20)) "stream bytes grow before revocation"
# Revoked on either side: beta's own filter stops sending on the flow (it may reach no one
# now), alpha's drops what still arrives.
revs() { echo $(($(node_drop alpha filter_revoked) + $(node_drop beta filter_revoked))); }
rev0=$(revs)
revoked() { (($(revs) > rev0)); }
t0=${EPOCHREALTIME/./}
run_step "node tag beta tag:untrusted" tm coord node tag beta tag:untrusted
wait_for 2 "beta's packets on the old stream counted as revoked" revoked ||
    fail "no filter_revoked drop within 2 s of the tag"
log "revoked after $(elapsed_ms "$t0") ms"
sleep 0.5
s2=$(size)
sleep 1.5
assert_eq "$(size)" "$s2" "no stream bytes arrive after revocation"
assert_eq "$(tcp_ok beta "$ALPHA" 443 && echo y || echo n)" n "untrusted beta -> alpha:443"
out=$(tm alpha filter test --src beta --dst alpha:443/tcp) || fail "filter test on alpha: $out"
[[ $out == deny* ]] || fail "filter test still allows beta: $out"
log "ok: filter test agrees: $out"
# Outbound: nothing lets alpha and beta talk now; alpha does not even send to beta (its own
# filter drops the ping before encryption: filter log shows it outbound).
nr=$(node_drop alpha filter_no_rule)
ping_ok alpha "$BETA" 2 && fail "alpha reached beta after the revocation"
assert_ge "$(node_drop alpha filter_no_rule)" $((nr + 1)) "alpha's own filter drops its pings to beta"
out_logged() { tm alpha filter log --peer beta 2>/dev/null | grep -q "beta out icmp $ALPHA:[0-9]* -> $BETA:[0-9]* filter_no_rule"; }
wait_for 5 "alpha's filter log shows the outbound drop" out_logged ||
    fail "filter log: $(tm alpha filter log --peer beta 2>&1 | tail -3)"
assert_eq "$(s3_port_open beta && echo y || echo n)" n "untrusted beta (all ip denied) -> coord:8080"

run_step "untag beta" tm coord node untag beta tag:untrusted
wait_for 3 "beta -> alpha:443 again" tcp_ok beta "$ALPHA" 443 || fail "beta not allowed back after untag"
pass
