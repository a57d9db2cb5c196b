#!/usr/bin/env bash
# The packet filter (issue 16) with three real nodes (alpha, beta, web1) in namespaces, a local
# policy loaded on web1 (`tmctl filter load`):
#   - allowed ports connect, denied ones are dropped and counted (filter_denied, filter_no_rule);
#   - `tunnelmesh filter test` agrees with what the dataplane did, on a table of cases;
#   - web1's UDP query to beta gets its answer under "default": "deny" (stateful replies),
#     while beta's unsolicited UDP to web1 is dropped;
#   - revocation: a policy change cuts beta's established TCP stream within 2 s
#     (filter_revoked counted); alpha (group:ops) keeps working throughout;
#   - `tunnelmesh filter log --peer beta` shows beta's sampled drops.
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
tm_init filter 170
command -v socat >/dev/null || fail "socat missing (run scripts/install-test-deps.sh)"

lan_create alpha beta web1
node_new alpha tm 1
node_new beta tm 2
node_new web1 tm 3
node_connect alpha beta
node_connect alpha web1
node_connect beta web1
node_up alpha
node_up beta
node_up web1
ALPHA=$(node_mesh_ip alpha)
BETA=$(node_mesh_ip beta)
WEB1=$(node_mesh_ip web1)

wait_for 15 "alpha -> web1 over the tunnel" ping_ok alpha "$WEB1" 1 || fail "no tunnel alpha -> web1"
wait_for 15 "beta -> web1 over the tunnel" ping_ok beta "$WEB1" 1 || fail "no tunnel beta -> web1"
wait_for 15 "alpha -> beta over the tunnel" ping_ok alpha "$BETA" 1 || fail "no tunnel alpha -> beta"

# Listeners on web1: each answers "hi-PORT" and closes.
for port in 22 80 443 2222 8080; do
    ns_spawn web1 "srv-$port.log" socat "TCP-LISTEN:$port,bind=$WEB1,fork,reuseaddr" \
        "SYSTEM:echo hi-$port"
done
for port in 22 80 443 2222 8080; do
    wait_for 5 "web1 listens on $port" ns_exec web1 sh -c "ss -Hltn 'sport = :$port' | grep -q ." ||
        fail "web1 listener $port"
done

# tcp_ok FROM PORT : a connection from FROM to web1:PORT gets its greeting.
tcp_ok() {
    local out
    out=$(ns_exec "$1" timeout 4 socat -T 3 - "TCP:$WEB1:$2,connect-timeout=2" </dev/null 2>/dev/null)
    [[ $out == "hi-$2" ]]
}

# Without a policy everything is allowed.
run_step "no policy: beta -> web1:22" tcp_ok beta 22

cat >"$TM_TMP/policy.hujson" <<'EOF'
// Issue 16's example, on names (no tags without a coordinator), plus a port for the stream.
{
  "groups": {"group:ops": ["alpha"]},
  "acls": [
    {"action": "accept", "src": ["group:ops"], "dst": ["*:*"]},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["web1:80,443"]},
    {"action": "accept", "src": ["beta"], "dst": ["web1:2222"]},
  ],
  "deny": [{"src": ["beta"], "dst": ["web1"], "ip": ["tcp:22"]}],
  "default": "deny",
  "tests": [{"src": "beta", "accept": ["web1:443"], "deny": ["web1:22"]}],
}
EOF
# The same without beta's stream port (the revocation).
sed '/web1:2222/d' "$TM_TMP/policy.hujson" >"$TM_TMP/policy2.hujson"

# A broken policy is refused with its place and changes nothing.
printf '{"acls": [{"action": "accept", "src": ["nobody"], "dst": ["web1:80"]}], "default": "deny"}\n' \
    >"$TM_TMP/bad.hujson"
if err=$(tmctl_for web1 filter load "$TM_TMP/bad.hujson" 2>&1); then
    fail "a policy naming an unknown node was accepted: $err"
fi
log "bad policy refused: $err"
[[ $err == *"bad.hujson:1:"* ]] || fail "refusal does not name file:line: $err"
run_step "still no policy: beta -> web1:22" tcp_ok beta 22

run_step "load the policy on web1" tmctl_for web1 filter load "$TM_TMP/policy.hujson"
assert_eq "$(node_counter web1 "d['filter']['active']")" true "web1 filter active"
gen1=$(node_counter web1 "d['filter']['generation']")

# Differential table: `filter test` (tm-policy's matcher) vs what the dataplane did.
before_denied=$(node_drop web1 filter_denied)
before_norule=$(node_drop web1 filter_no_rule)
cases="beta:443 beta:80 beta:22 beta:2222 beta:8080 alpha:22 alpha:8080 alpha:443"
for c in $cases; do
    src=${c%%:*}
    port=${c##*:}
    want=$("$TM_BIN" --socket "$(node_sock web1)" filter test --src "$src" --dst "web1:$port/tcp" --json |
        json_get 'd["allow"]') || fail "filter test $src web1:$port/tcp"
    if tcp_ok "$src" "$port"; then got=true; else got=false; fi
    log "case $src -> web1:$port/tcp: filter test says allow=$want, dataplane: connected=$got"
    [[ $want == "$got" ]] || fail "filter test and the dataplane disagree on $src -> web1:$port/tcp"
done
assert_eq "$(tcp_ok beta 22 && echo y || echo n)" n "beta -> web1:22 is dropped"
assert_ge "$(node_drop web1 filter_denied)" $((before_denied + 1)) "web1 filter_denied (tcp:22 denied explicitly)"
assert_ge "$(node_drop web1 filter_no_rule)" $((before_norule + 1)) "web1 filter_no_rule (8080: no rule)"
run_step "alpha (group:ops) pings web1" ping_ok alpha "$WEB1" 3
# Echo follows web1's rules: beta may reach web1:80/443 and no rule denies ICMP, so it may
# ping; `filter test HOST/icmp` (an echo request) says the same.
run_step "beta (web1:80,443 allowed) pings web1" ping_ok beta "$WEB1" 3
assert_eq "$("$TM_BIN" --socket "$(node_sock web1)" filter test --src beta --dst web1/icmp --json |
    json_get 'd["allow"]')" true "filter test beta -> web1/icmp"
# `filter log --peer beta`: sampled drops (at most one line per second per peer).
filter_log_has_22() {
    "$TM_BIN" --socket "$(node_sock web1)" filter log --peer beta >"$TM_TMP/filter-log.txt" 2>&1 &&
        grep -q "beta in tcp $BETA:[0-9]* -> $WEB1:22 filter_denied" "$TM_TMP/filter-log.txt"
}
wait_for 5 "filter log shows beta's drop to :22" filter_log_has_22 ||
    fail "filter log --peer beta: $(cat "$TM_TMP/filter-log.txt")"
grep -q " alpha " "$TM_TMP/filter-log.txt" && fail "filter log --peer beta shows other peers"
log "ok: filter log --peer beta: $(wc -l <"$TM_TMP/filter-log.txt") lines, e.g. $(grep -m1 ':22 filter_denied' "$TM_TMP/filter-log.txt")"

# UDP replies under default deny: web1 asks beta (port 53), beta's answer comes back.
ns_spawn beta udp-srv.log socat "UDP-RECVFROM:53,bind=$BETA,fork" "SYSTEM:echo answer"
wait_for 5 "beta listens on udp 53" ns_exec beta sh -c "ss -Hlun 'sport = :53' | grep -q ." ||
    fail "beta udp listener"
udp_answer() {
    local out
    out=$(echo query | ns_exec web1 timeout 3 socat -T 2 - "UDP:$BETA:53" 2>/dev/null)
    [[ $out == answer ]]
}
wait_for 10 "web1's UDP query to beta is answered" udp_answer || fail "UDP reply to web1's query dropped"
log "ok: web1 -> beta:53/udp answered under default deny"
# Beta's unsolicited UDP to web1 is not delivered.
ns_spawn web1 udp-web1.log timeout 20 socat -u "UDP-RECV:5999,bind=$WEB1" "OPEN:$TM_TMP/udp-got,creat,append"
wait_for 5 "web1 listens on udp 5999" ns_exec web1 sh -c "ss -Hlun 'sport = :5999' | grep -q ." ||
    fail "web1 udp listener"
nr=$(node_drop web1 filter_no_rule)
for _ in 1 2 3; do echo unsolicited | ns_exec beta socat -u - "UDP:$WEB1:5999"; done
wait_for 5 "web1 counts beta's UDP as filter_no_rule" \
    sh -c "[ \$(\"$TMCTL_BIN\" --socket '$(node_sock web1)' status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"counters\"][\"drops\"][\"filter_no_rule\"])') -ge $((nr + 3)) ]" ||
    fail "beta's unsolicited UDP was not counted"
[[ -s $TM_TMP/udp-got ]] && fail "beta's unsolicited UDP reached web1: $(cat "$TM_TMP/udp-got")"
log "ok: beta -> web1:5999/udp dropped and counted"

# Revocation: beta streams to web1:2222; the new policy cuts it.
ns_spawn web1 stream-srv.log timeout 60 socat -u "TCP-LISTEN:2223,bind=$WEB1,reuseaddr" "OPEN:$TM_TMP/stream,creat,trunc"
# (2223 is not in the policy: load a policy allowing it first.)
sed 's/web1:2222/web1:2222,2223/' "$TM_TMP/policy.hujson" >"$TM_TMP/policy-stream.hujson"
run_step "allow the stream port" tmctl_for web1 filter load "$TM_TMP/policy-stream.hujson"
wait_for 5 "web1 listens on 2223" ns_exec web1 sh -c "ss -Hltn 'sport = :2223' | grep -q ." ||
    fail "stream listener"
ns_spawn beta stream-cli.log timeout 60 sh -c \
    "while :; do echo tick; sleep 0.05; done | socat -u - TCP:$WEB1:2223,connect-timeout=3"
size() { stat -c %s "$TM_TMP/stream" 2>/dev/null || echo 0; }
wait_for 10 "beta's stream flows" sh -c "[ \$(stat -c %s '$TM_TMP/stream' 2>/dev/null || echo 0) -gt 100 ]" ||
    fail "the stream did not start"
s0=$(size)
sleep 1
s1=$(size)
assert_ge "$s1" $((s0 + 20)) "stream bytes grow before revocation"
rev0=$(node_drop web1 filter_revoked)
t0=${EPOCHREALTIME/./}
run_step "revoke: load the policy without beta's stream port" tmctl_for web1 filter load "$TM_TMP/policy2.hujson"
gen2=$(node_counter web1 "d['filter']['generation']")
assert_ge "$gen2" $((gen1 + 2)) "filter generation increased"
wait_for 2 "beta's packets on the old stream counted as revoked" \
    sh -c "[ \$(\"$TMCTL_BIN\" --socket '$(node_sock web1)' status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"counters\"][\"drops\"][\"filter_revoked\"])') -gt $rev0 ]" ||
    fail "no filter_revoked drop within 2 s of the policy change"
log "revoked after $(elapsed_ms "$t0") ms"
sleep 0.5
s2=$(size)
sleep 1.5
s3=$(size)
assert_eq "$s3" "$s2" "no stream bytes arrive after revocation"
assert_eq "$(tcp_ok beta 2222 && echo y || echo n)" n "beta -> web1:2222 after revocation"
run_step "beta -> web1:443 still allowed" tcp_ok beta 443
run_step "alpha -> web1:22 still allowed" tcp_ok alpha 22

# An explicit ICMP deny stops beta's ping (and `filter test` agrees), TCP to 443 still works.
sed 's|"ip": \["tcp:22"\]|"ip": ["tcp:22", "icmp"]|' "$TM_TMP/policy2.hujson" >"$TM_TMP/policy3.hujson"
grep -q '"icmp"' "$TM_TMP/policy3.hujson" || fail "policy3 has no icmp deny"
run_step "deny beta's ICMP on web1" tmctl_for web1 filter load "$TM_TMP/policy3.hujson"
assert_eq "$(ping_ok beta "$WEB1" 2 && echo y || echo n)" n "beta's ping after the ICMP deny"
assert_eq "$("$TM_BIN" --socket "$(node_sock web1)" filter test --src beta --dst web1/icmp --json |
    json_get 'd["allow"]')" false "filter test beta -> web1/icmp after the deny"
run_step "beta -> web1:443 still allowed after the ICMP deny" tcp_ok beta 443

# Clearing the policy allows everything again.
run_step "clear the policy" tmctl_for web1 filter clear
run_step "no policy: beta -> web1:22 again" tcp_ok beta 22
node_dump web1
pass
