#!/usr/bin/env bash
# Relay fallback: a coordinator and two peers; UDP between the peers is blocked with iptables,
# so their tunnel moves to the coordinator's TLS relay (`path: relay`) and still carries
# traffic (ping + a 5 MiB transfer with sha256 compared). When UDP is unblocked the peers go
# back to `direct`. `tmctl ping` shows each path (direct with the peer's endpoint, relay via the
# coordinator), a round-trip time, the path MTU, a one-line error for a non-member and a timeout.
# `tmctl status` lists the services that run with endpoints that answer, says "not running" for
# the others, and names the coordinator.
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
tm_init mesh-relay 200
require_tm_binaries
command -v iptables >/dev/null || fail "iptables missing (run scripts/install-test-deps.sh)"

lan_create coord alpha beta
declare -A PID=()
COORD=192.0.2.1:8443
# Short timers so path changes happen within seconds (relay after 2*rekey_timeout+1 s, direct
# probe every 4*rekey_timeout).
TIMERS='testing: {rekey_timeout_ms: 1500, keepalive_timeout_ms: 2000}
'
conf() {
    mkdir -p "$TM_TMP/$1/home"
    printf 'name: %s\ndata_dir: %s\n%s%s' "$1" "$TM_TMP/$1" "$TIMERS" "${2:-}" >"$TM_TMP/$1/config.yaml"
}
sock() { printf '%s' "$TM_TMP/$1/control.sock"; }
ctl() { local n=$1; shift; timeout 10 "$TMCTL_BIN" --socket "$(sock "$n")" "$@"; }
ready() { ctl "$1" status --json | json_get 'd["mesh"]["netmap_version"]' >/dev/null; }
start() {
    local n=$1
    shift
    echo "=== $(date +%T) tunnelmesh join $* ===" >>"$TM_TMP/$n.log"
    ns_spawn "$n" "$n.log" env HOME="$TM_TMP/$n/home" TUNNELMESH_LOG="${TM_RUST_LOG:-info}" \
        "$TM_BIN" join "$@" --config "$TM_TMP/$n/config.yaml"
    PID[$n]=$TM_LAST_PID
    wait_for 20 "$n ready" ready "$n" || fail "$n did not come up (see $n.log)"
}
# ping_shows NODE PEER REGEX [ARGS...]: `tmctl ping` succeeds and every pong line matches.
ping_shows() {
    local n=$1 peer=$2 re=$3 out
    shift 3
    out=$(ctl "$n" ping "$peer" -c 2 "$@") || fail "tmctl ping $peer on $n: $out"
    log "tmctl ping $peer on $n:"$'\n'"$out"
    [[ $(grep -c '^pong from ' <<<"$out") == 2 ]] || fail "expected 2 pongs"
    grep '^pong from ' <<<"$out" | grep -Evq "$re" && fail "a pong line does not match /$re/"
    grep -q '^path MTU: 1420 ' <<<"$out" || fail "no path MTU line"
    grep -q '^2 sent, 2 received, 0% lost' <<<"$out" || fail "no summary line"
}
path_of() { ctl "$1" peers --json | json_get "[p for p in d if p['name'] == '$2'][0]['path']"; }
path_is() { [[ $(path_of "$1" "$2") == "$3" ]]; } # path_is NODE PEER WANT (for wait_for)
mesh_ip_of() { ctl "$1" status --json | json_get 'd["address"].split("/")[0]'; }

conf coord 'coordinator: {enabled: true}
'
start coord
TOKEN=$(ctl coord token) || fail "tmctl token"
# A join to a port nobody listens on: one error line, its cause printed once.
mkdir -p "$TM_TMP/lost/home"
printf 'name: lost\ndata_dir: %s\n' "$TM_TMP/lost" >"$TM_TMP/lost/config.yaml"
ns_exec alpha env HOME="$TM_TMP/lost/home" timeout 20 "$TM_BIN" join 192.0.2.1:1 --token "$TOKEN" \
    --config "$TM_TMP/lost/config.yaml" >/dev/null 2>"$TM_TMP/lost.err" && fail "a join to a closed port succeeded"
err=$(grep '^tunnelmesh: ' "$TM_TMP/lost.err")
assert_eq "$err" "tunnelmesh: joining 192.0.2.1:1: connect to 192.0.2.1:1: Connection refused (os error 111)" \
    "join error, each cause once"
conf alpha
conf beta
start alpha "$COORD" --token "$TOKEN"
start beta "$COORD" --token "$TOKEN"
A=$(mesh_ip_of alpha)
B=$(mesh_ip_of beta)
C=$(mesh_ip_of coord)
st=$(ctl coord status --json) || fail "tmctl status on coord"
# (The Docker agent is listed too when a Docker engine runs on this machine: not compared.)
assert_eq "$(json_get '[[s["name"], s["running"], s["endpoints"]] for s in d["services"] if s["name"] != "docker"]' <<<"$st")" \
    "[[\"s3\", true, [\"http://$C:8080/s3\"]], [\"nfs\", true, [\"$C:2049\"]], [\"portmapper\", true, [\"$C:111 (udp, tcp)\"]], [\"dns\", true, [\"127.0.0.53:5353\", \"$C:53\"]], [\"coordinator\", true, [\"https://0.0.0.0:8443\"]]]" \
    "coord's services"
for hp in "$C:8080" "$C:2049" "$C:111" "$C:53" 127.0.0.1:8443; do
    ns_exec coord timeout 5 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp#*:}" || fail "coord lists $hp but nothing answers there"
done
assert_eq "$(json_get '[[c["name"], c["api"], c["this_node"]] for c in d["coordinators"]]' <<<"$st")" \
    '[["coord", "0.0.0.0:8443", true]]' "coord's coordinators"
st=$(ctl alpha status --json) || fail "tmctl status on alpha"
assert_eq "$(json_get '[s["name"] for s in d["services"] if s["running"] and s["name"] != "docker"]' <<<"$st")" '["dns"]' "alpha's running services"
assert_eq "$(json_get '[[c["name"], c["mesh_ip"], c["api"], c["reachable"]] for c in d["coordinators"]]' <<<"$st")" \
    "[[\"coord\", \"$C\", \"192.0.2.1:8443\", true]]" "alpha's coordinators"
text=$(ctl alpha status) || fail "tmctl status (text) on alpha"
grep -q '^  s3  *not running (not on this node: members use the coordinator' <<<"$text" || fail "alpha's s3 line: $text"
grep -q "^  dns  *127.0.0.53:5353, $A:53  zone .mesh" <<<"$text" || fail "alpha's dns line: $text"
grep -qx "  coord ($C) api 192.0.2.1:8443 (reachable)" <<<"$text" || fail "alpha's coordinator line: $text"
wait_for 15 "alpha pings beta directly" ping_ok alpha "$B" 1 || fail "no direct tunnel alpha -> beta"
assert_eq "$(path_of alpha beta)" direct "alpha -> beta path before blocking"
RTT='in [0-9]+\.[0-9]{2} ms \(84 bytes\)$'
ping_shows alpha beta "^pong from beta \($B\) via direct 192\.0\.2\.3:[0-9]+ $RTT"
ping_shows alpha "$B" "^pong from beta \($B\) via direct 192\.0\.2\.3:[0-9]+ $RTT"
ping_shows coord beta.mesh "^pong from beta \($B\) via direct 192\.0\.2\.3:[0-9]+ $RTT"
j=$(ctl alpha ping beta -c 1 --json) || fail "tmctl ping --json"
assert_eq "$(json_get '[d["probes"][0]["reply"]["path"], d["received"], d["path_mtu"]]' <<<"$j")" \
    '["direct", 1, 1420]' "ping --json: path, received, path MTU"
err=$(ctl alpha ping zeta 2>&1) && fail "pinging a non-member succeeded: $err"
assert_eq "$(wc -l <<<"$err")" 1 "lines of the non-member error"
[[ $err == "tmctl: ping: no peer named 'zeta' "* ]] || fail "non-member error: $err"
wait_for 10 "relay connected on alpha" sh -c "'$TMCTL_BIN' --socket '$(sock alpha)' status --json | grep -q '\"relay_connected\": true'" ||
    fail "alpha has no relay connection"

log "blocking UDP between alpha and beta"
ns_exec alpha iptables -A OUTPUT -p udp -d 192.0.2.3 -j DROP
ns_exec alpha iptables -A INPUT -p udp -s 192.0.2.3 -j DROP
t0=${EPOCHREALTIME/./}
# Traffic keeps the session busy: the dead path is noticed and the relay takes over.
ns_spawn alpha ping-bg.log ping -i 0.5 -W 1 "$B"
wait_for 45 "alpha -> beta on the relay" path_is alpha beta relay ||
    fail "alpha -> beta did not move to the relay"
log "alpha -> beta on the relay after $(elapsed_ms "$t0") ms"
wait_for 20 "alpha pings beta through the relay" ping_ok alpha "$B" 3 || fail "no traffic through the relay"
ping_shows alpha beta "^pong from beta \($B\) via relay 192\.0\.2\.1:8443 $RTT"
wait_for 10 "beta -> alpha on the relay" path_is beta alpha relay ||
    fail "beta -> alpha is not on the relay"
run_step "beta pings alpha through the relay (5x)" ping_ok beta "$A" 5
make_blob "$TM_TMP/blob" 5
run_step "5 MiB TCP alpha -> beta over the relay" tcp_transfer alpha beta "$B" 5001 "$TM_TMP/blob" "$TM_TMP/rx" 60
rm -f "$TM_TMP/rx"
# UDP is still blocked, so all of it went through the relay: the counters say so.
drops=$(ns_exec alpha iptables -vnL OUTPUT | awk '/DROP/ {print $1; exit}')
log "UDP datagrams alpha -> beta dropped by iptables: $drops"

log "unblocking UDP"
ns_exec alpha iptables -F OUTPUT
ns_exec alpha iptables -F INPUT
t0=${EPOCHREALTIME/./}
wait_for 40 "alpha -> beta back to direct" path_is alpha beta direct ||
    fail "alpha -> beta did not return to direct"
wait_for 20 "beta -> alpha back to direct" path_is beta alpha direct ||
    fail "beta -> alpha did not return to direct"
log "back to direct after $(elapsed_ms "$t0") ms"
run_step "alpha pings beta directly again" ping_ok alpha "$B" 5
ep=$(ctl alpha peers --json | json_get "[p for p in d if p['name'] == 'beta'][0]['endpoint']")
[[ $ep == 192.0.2.3:* ]] || fail "alpha's endpoint for beta is '$ep', expected 192.0.2.3:*"
ping_shows alpha beta "^pong from beta \($B\) via direct 192\.0\.2\.3:[0-9]+ $RTT"
log "beta drops echo requests: tmctl ping times out"
ns_exec beta iptables -A INPUT -p icmp --icmp-type echo-request -j DROP
out=$(ctl alpha ping beta -c 1 --timeout 1s 2>&1) && fail "ping succeeded although beta drops pings: $out"
log "$out"
grep -q "^no reply from beta ($B) within 1s; last handshake [0-9]*s ago$" <<<"$out" || fail "timeout line: $out"
grep -qx "tmctl: no reply from beta to 1 probe (timeout 1s each)" <<<"$out" || fail "timeout error: $out"
pass
