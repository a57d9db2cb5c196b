#!/usr/bin/env bash
# Docker management through the mesh, end to end, with the host's real Docker engine (started
# here if none runs, and stopped again). Nodes in network namespaces share that engine: the
# coordinator `coord` and the member `beta` run agents; `help` and `oper` (no Docker) are the
# callers; `outside` is on the LAN but not in the mesh. Images: `docker import` of a root file
# system made from Debian's busybox-static (no registry is reachable). Checks:
#   - ps across the nodes (NODE column), asking only nodes whose netmap entry declares an agent
#     (`tmctl peers` shows it); the caller's own node without Docker listed apart; a node that does not
#     answer (packets dropped) listed as unavailable within the per-node timeout, the rest shown
#   - the role matrix: helpdesk (tag:help) reads logs but may not restart, and the refusal names
#     tunnelmesh.io/cap/docker restart; operator (tag:oper) restarts but may not exec
#   - stop/start round trip visible in `docker ps` of the engine itself; inspect
#   - logs --tail of a container that prints lines
#   - exec (tag:adm): `echo ok` prints ok and exits 0, `exit 3` exits 3, a TTY (stdin, the
#     initial size and a resize reach the container)
#   - audit: restart/stop/start and exec sessions (who, node, container, command, exit code)
#   - revocation: untagging closes a live `logs --follow` and a live exec within 2 s (and ends
#     the exec's command and the process it started in the background); removing
#     the caller's node ends its session on the agent within 2 s
#   - back-pressure: `logs` of a 40 MB log to a stalled reader does not grow the agent's memory
#   - the engine going away mid-stream (beta's engine socket is a proxy that is killed): one
#     line, exit 1, no hang; later calls say the engine is not reachable
#   - bad input: unknown node, unknown container, an ID prefix matching several containers, a
#     node without Docker: one line, exit 1
#   - the agent port refuses a non-mesh source (LAN route to the mesh address)
#   - stats --json: cpu seconds, memory bytes, up
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
source "$(dirname "$0")/../lib/mesh.sh"
tm_init docker 220
require_tm_binaries
command -v docker >/dev/null || skip "docker missing (docker.io; run scripts/install-test-deps.sh)"
command -v dockerd >/dev/null || skip "dockerd missing (docker.io; run scripts/install-test-deps.sh)"
command -v script >/dev/null || fail "script(1) missing (util-linux)"

# --- the engine and an image ---------------------------------------------------------------
DOCKERD_PID=""
C=tm$$ # container name prefix (the engine is shared with the host)
docker_exit() {
    local rc=$?
    docker ps -aq --filter "name=^$C-" 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1
    if [[ -n $DOCKERD_PID ]]; then
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
    fi
    (exit "$rc")
    tm_cleanup
}
trap docker_exit EXIT
if ! timeout 10 docker info >/dev/null 2>&1; then
    log "no Docker engine: starting dockerd"
    dockerd >"$TM_TMP/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    wait_for 30 "dockerd answers" timeout 5 docker info || fail "dockerd did not start (see dockerd.log)"
fi
IMAGE=tm-busybox:e2e
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    # The static busybox of Debian's busybox-static (installed by install-test-deps.sh, else
    # downloaded here).
    bb=$(dpkg -L busybox-static 2>/dev/null | grep -m1 '/bin/busybox$')
    if [[ -z $bb ]]; then
        (cd "$TM_TMP" && apt-get download busybox-static >/dev/null 2>&1) ||
            fail "busybox-static is not installed and cannot be downloaded"
        mkdir -p "$TM_TMP/deb"
        dpkg -x "$(ls "$TM_TMP"/busybox-static_*.deb | head -1)" "$TM_TMP/deb" || fail "dpkg -x"
        bb=$TM_TMP/deb/bin/busybox
    fi
    mkdir -p "$TM_TMP/rootfs/bin" "$TM_TMP/rootfs/tmp"
    cp "$bb" "$TM_TMP/rootfs/bin/busybox"
    for a in $("$TM_TMP/rootfs/bin/busybox" --list); do
        [[ $a == busybox ]] || ln -sf busybox "$TM_TMP/rootfs/bin/$a"
    done
    tar -C "$TM_TMP/rootfs" -c . | docker import -c 'ENV PATH=/bin' - "$IMAGE" >/dev/null ||
        fail "docker import"
fi
run_ctr() { # run_ctr NAME CMD : a detached container without network
    docker run -d --network none --name "$C-$1" "$IMAGE" sh -c "$2" >/dev/null || fail "docker run $1"
}
run_ctr web 'trap "exit 0" TERM; i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.2; done'
run_ctr db 'trap "exit 0" TERM; while true; do sleep 0.2; done'
engine_running() { docker ps -q --filter "name=^$C-$1\$" | grep -q .; }

# --- the mesh --------------------------------------------------------------------------------
lan_create coord beta help oper outside
COORD=192.0.2.1:8443
start() { # start NAME ARGS...
    local n=$1
    shift
    ns_spawn "$n" "$n.log" env HOME="$TM_TMP/$n/home" TUNNELMESH_LOG="${TM_RUST_LOG:-info}" \
        "$TM_BIN" join "$@" --config "$TM_TMP/$n/config.yaml"
    wait_for 20 "$n ready" ready "$n" || fail "$n did not come up (see $n.log)"
}
conf coord 'coordinator: {enabled: true, listen: ":8443"}
'
start coord
TOKEN=$(ctl coord token) || fail "tmctl token"
# beta reaches the engine through a socket proxy, so that its engine can "stop" mid-stream.
spawn socat.log socat "UNIX-LISTEN:$TM_TMP/engine.sock,fork" UNIX-CONNECT:/var/run/docker.sock
SOCAT=$TM_LAST_PID
wait_for 5 "engine proxy listening" test -S "$TM_TMP/engine.sock" || fail "socat engine proxy"
conf beta "docker: {enabled: true, socket: $TM_TMP/engine.sock}
"
start beta "$COORD" --token "$TOKEN"
BETA_PID=$TM_LAST_PID
for n in help oper; do
    conf "$n" 'docker: {enabled: false}
'
    start "$n" "$COORD" --token "$TOKEN"
done
CIP=$(mesh_ip_of coord)
for n in beta help oper; do
    wait_for 15 "$n pings the coordinator" ping_ok "$n" "$CIP" 1 || fail "$n cannot reach $CIP"
done
svc=$(ctl coord status --json | json_get '[s for s in d["services"] if s["name"] == "docker"][0]')
[[ $(json_get 'd["running"]' <<<"$svc") == true ]] || fail "coord's docker service: $svc"
cat >"$TM_TMP/policy.hujson" <<'EOF'
{
  "default": "allow",
  "tagOwners": {"tag:help": ["autogroup:member"], "tag:oper": ["autogroup:member"], "tag:adm": ["autogroup:member"]},
  "grants": [
    {"src": ["tag:help"], "dst": ["*"], "app": {"tunnelmesh.io/cap/docker": [{"containers": ["*"], "verbs": ["helpdesk"]}]}},
    {"src": ["tag:oper"], "dst": ["*"], "app": {"tunnelmesh.io/cap/docker": [{"containers": ["*"], "verbs": ["operator"]}]}},
    {"src": ["tag:adm"], "dst": ["*"], "app": {"tunnelmesh.io/cap/docker": [{"containers": ["*"], "verbs": ["admin"]}]}}
  ]
}
EOF
out=$(tm coord policy set "$TM_TMP/policy.hujson" 2>&1) || fail "policy set: $out"
tm coord node tag help tag:help >/dev/null || fail "tag help"
tm coord node tag oper tag:oper >/dev/null || fail "tag oper"

# --- before any grant reaches it: a member without a tag is refused, naming the capability ---
out=$(tm beta docker logs "coord/$C-web" --tail 1 2>&1) && fail "untagged beta read logs: $out"
[[ $out == *"not allowed: tunnelmesh.io/cap/docker logs on coord/$C-web"* ]] ||
    fail "untagged beta: unclear refusal: $out"
log "ok: untagged beta refused: $out"

# --- ps across nodes ---------------------------------------------------------------------------
ps_json() { tm "$1" docker ps --json; }
ps_has() { # ps_has CALLER NODE CONTAINER
    ps_json "$1" | json_get "any(r['node'] == '$2' and r['name'] == '$3' for r in d['containers'])" | grep -qx true
}
wait_for 5 "help sees coord's containers" ps_has help coord "$C-web" || fail "help's ps: $(tm help docker ps 2>&1)"
wait_for 5 "help sees beta's containers" ps_has help beta "$C-web" || fail "help's ps: $(tm help docker ps 2>&1)"
out=$(ps_json help) || fail "ps --json"
tm help docker ps | grep -E "^NODE|$C-|unavailable" >&2
# The netmap says which nodes run an agent: oper (docker disabled) is not asked at all; only
# the caller's own node is listed apart.
assert_eq "$(json_get "d['without_docker']" <<<"$out")" '["help"]' "nodes without Docker, listed apart"
assert_eq "$(ctl help peers --json | json_get "sorted(p['name'] for p in d if p['docker'])")" \
    '["beta", "coord"]' "peers that declare a Docker agent"
assert_eq "$(json_get "d['unavailable']" <<<"$out")" '[]' "unavailable nodes"
# A node that does not answer (its agent's packets dropped) is listed as unavailable; the rest is shown.
BETA_IP=$(mesh_ip_of beta)
ns_exec help iptables -I OUTPUT -d "$BETA_IP" -p tcp --dport 8375 -j DROP || fail "iptables"
t0=${EPOCHREALTIME/./}
out=$(ps_json help) || fail "ps with beta silent"
log "ps with beta silent took $(elapsed_ms "$t0") ms"
assert_eq "$(json_get "[u['node'] for u in d['unavailable']]" <<<"$out")" '["beta"]' "the silent node is unavailable"
json_get "any(r['node'] == 'coord' and r['name'] == '$C-web' for r in d['containers'])" <<<"$out" | grep -qx true ||
    fail "ps with beta silent lacks coord's containers: $out"
ns_exec help iptables -D OUTPUT -d "$BETA_IP" -p tcp --dport 8375 -j DROP || fail "iptables -D"
log "ok: ps across nodes; a silent node is unavailable, nodes without Docker are listed apart"

# --- role matrix -----------------------------------------------------------------------------
out=$(tm help docker logs "coord/$C-web" --tail 3) || fail "helpdesk logs: $out"
assert_eq "$(grep -c '^line-' <<<"$out")" 3 "logs --tail 3 lines"
out=$(tm help docker restart "coord/$C-web" 2>&1) && fail "helpdesk restarted: $out"
[[ $out == *"not allowed: tunnelmesh.io/cap/docker restart on coord/$C-web"* ]] || fail "helpdesk restart refusal: $out"
out=$(tm oper docker restart "coord/$C-web") || fail "operator restart: $out"
assert_eq "$out" "restarted coord/$C-web" "operator restart"
# The same on a member's agent (it decides on its own projection of the policy).
out=$(tm help docker logs "beta/$C-web" --tail 2) || fail "helpdesk logs on beta: $out"
assert_eq "$(grep -c '^line-' <<<"$out")" 2 "logs --tail 2 lines from beta's agent"
out=$(tm help docker restart "beta/$C-db" 2>&1) && fail "helpdesk restarted on beta: $out"
[[ $out == *"not allowed: tunnelmesh.io/cap/docker restart on beta/$C-db"* ]] || fail "helpdesk restart refusal on beta: $out"
out=$(tm oper docker restart "beta/$C-db") || fail "operator restart on beta: $out"
out=$(tm oper docker exec "coord/$C-web" echo ok 2>&1) && fail "operator exec: $out"
[[ $out == *"not allowed: tunnelmesh.io/cap/docker exec on coord/$C-web"* ]] || fail "operator exec refusal: $out"
log "ok: helpdesk logs yes, restart no; operator restart yes, exec no"

# --- start/stop visible in the engine; inspect ---------------------------------------------------
tm oper docker stop "coord/$C-db" >/dev/null || fail "stop"
engine_running db && fail "the engine still runs $C-db after stop"
tm oper docker start "coord/$C-db" >/dev/null || fail "start"
engine_running db || fail "the engine does not run $C-db after start"
out=$(tm help docker inspect "coord/$C-db") || fail "inspect"
assert_eq "$(json_get 'd["State"]["Running"]' <<<"$out")" true "inspect State.Running"
log "ok: stop/start round trip in the engine's own docker ps; inspect"

# --- bad input ---------------------------------------------------------------------------------
expect_err() { # expect_err WANT CMD... : exit 1 and one line containing WANT
    local want=$1 out rc=0
    shift
    out=$("$@" 2>&1) || rc=$?
    ((rc == 1)) || fail "$*: exit $rc, expected 1: $out"
    [[ $(wc -l <<<"$out") -eq 1 && $out == *"$want"* ]] || fail "$*: expected one line with '$want': $out"
    log "ok: $* -> $out"
}
expect_err 'unknown node "nope"' tm help docker logs "nope/$C-web"
expect_err "no container \"$C-nope\" on node coord" tm help docker logs "coord/$C-nope"
expect_err "node oper runs no Docker agent" tm help docker ps --node oper --json
expect_err "node oper runs no Docker agent" tm help docker logs "oper/x"
expect_err "give NODE/CONTAINER" tm help docker logs "$C-web"
# A name that matches several containers: an ID prefix (names are unique). Containers are
# created until two IDs share their first 3 hex digits, the shortest prefix taken (about 80
# on average; 300 without a match has odds below 1 in 50,000).
declare -A seen=()
dup=""
for i in $(seq 300); do
    id=$(docker create --network none --name "$C-dup$i" "$IMAGE" true) || fail "docker create"
    [[ -n ${seen[${id:0:3}]:-} ]] && dup=${id:0:3} && break
    seen[${id:0:3}]=1
done
[[ -n $dup ]] || fail "no two of 300 container IDs share their first 3 digits"
expect_err "\"$dup\" matches several containers on node coord" tm coord docker logs "coord/$dup"
docker ps -aq --filter "name=^$C-dup" | xargs -r docker rm -f >/dev/null
log "ok: an ID prefix of several containers (of $i created) is refused with their names"

# --- exec with the admin set ---------------------------------------------------------------------
# (The engine creates an exec's TTY before the agent sets its size, as with `docker exec -it`;
# the TTY check reads the size 0.5 s after the start.)
tm coord node tag oper tag:adm >/dev/null || fail "tag oper adm"
exec_ok() { [[ $(tm oper docker exec "coord/$C-web" echo ok 2>&1) == ok ]]; }
wait_for 3 "oper may exec" exec_ok || fail "exec echo ok: $(tm oper docker exec "coord/$C-web" echo ok 2>&1)"
rc=0
tm oper docker exec "coord/$C-web" sh -c 'exit 3' || rc=$?
assert_eq "$rc" 3 "exec exit code"
tty_exec() { # tty_exec STDIN CMD : the command in a pseudo-terminal (script(1)); output in $TM_TMP/tty.out
    printf '%s' "$1" | TUNNELMESH_SOCKET=$(sock oper) timeout 20 script -qefc "$2" /dev/null >"$TM_TMP/tty.out" 2>&1
}
rc=0
tty_exec 'echo in-$((40+2))
exit 3
' "$TM_BIN docker exec -it coord/$C-web sh" || rc=$?
assert_eq "$rc" 3 "exit code through a TTY"
grep -q 'in-42' "$TM_TMP/tty.out" || fail "TTY stdin did not reach the shell: $(cat -v "$TM_TMP/tty.out")"
rc=0
tty_exec '' "stty cols 100 rows 30; (sleep 2; stty cols 120 rows 40) </dev/tty & $TM_BIN docker exec -t coord/$C-web sh -c 'sleep 0.5; stty size; sleep 3; stty size'" || rc=$?
((rc == 0)) || fail "TTY exec: exit $rc: $(cat -v "$TM_TMP/tty.out")"
grep -q '30 100' "$TM_TMP/tty.out" || fail "initial TTY size: $(cat -v "$TM_TMP/tty.out")"
grep -q '40 120' "$TM_TMP/tty.out" || fail "resized TTY: $(cat -v "$TM_TMP/tty.out")"
log "ok: exec: ok/0, exit 3, TTY stdin, size and resize"

# --- audit -------------------------------------------------------------------------------------
audit=$(tm coord audit --json) || fail "audit"
has() { json_get "$1" <<<"$audit" | grep -qx true || fail "audit lacks: $1: $(json_get '[e for e in d if e["action"].startswith("docker.")]' <<<"$audit")"; }
has "any(e['action'] == 'docker.restart' and e['who'] == 'node oper' and e['target'] == 'coord/$C-web' for e in d)"
has "any(e['action'] == 'docker.stop' and e['target'] == 'coord/$C-db' for e in d)"
has "any(e['action'] == 'docker.restart' and e['who'] == 'node oper' and e['target'] == 'beta/$C-db' and 'reported_by=beta' in e['detail'] for e in d)"
has "any(e['action'] == 'docker.exec' and e['who'] == 'node oper' and 'exit=3' in e['detail'] and 'cmd=\"sh -c exit 3\"' in e['detail'] and 'end=' in e['detail'] for e in d)"
log "ok: audit has restart, stop and exec sessions with who, target, command and exit code"

# --- revocation closes live streams within 2 s (beta's agent: the change reaches it in a netmap) --
ns_spawn help follow.log env TUNNELMESH_SOCKET="$(sock help)" "$TM_BIN" docker logs -f "beta/$C-web" --tail 1
FOLLOW=$TM_LAST_PID
ns_spawn oper exec.log env TUNNELMESH_SOCKET="$(sock oper)" "$TM_BIN" docker exec "beta/$C-web" sh -c 'echo started; sleep 61 & sleep 62'
EXEC=$TM_LAST_PID
lines() { grep -c '^line-' "$TM_TMP/follow.log"; }
wait_for 5 "logs -f streams" bash -c "(( \$(grep -c '^line-' '$TM_TMP/follow.log') >= 3 ))" || fail "logs -f: $(cat "$TM_TMP/follow.log")"
wait_for 5 "exec session runs" grep -q started "$TM_TMP/exec.log" || fail "exec session: $(cat "$TM_TMP/exec.log")"
exec_procs() { docker top "$C-web" -o pid,args | grep -c 'sleep 6[12]'; }
wait_for 5 "the exec's two processes run" bash -c "[[ \$(docker top '$C-web' -o pid,args | grep -c 'sleep 6[12]') == 2 ]]" ||
    fail "the exec's processes: $(docker top "$C-web" -o pid,args)"
gone() { ! kill -0 "$1" 2>/dev/null; }
t0=${EPOCHREALTIME/./}
tm coord node untag help tag:help >/dev/null || fail "untag help"
wait_for 2 "logs -f ends after revocation" gone "$FOLLOW" || fail "logs -f still runs 2 s after the revocation"
log "logs -f ended $(elapsed_ms "$t0") ms after the untag: $(tail -1 "$TM_TMP/follow.log")"
grep -q "revoked: not allowed: tunnelmesh.io/cap/docker logs" "$TM_TMP/follow.log" || fail "logs -f end: $(tail -2 "$TM_TMP/follow.log")"
t0=${EPOCHREALTIME/./}
tm coord node untag oper tag:adm >/dev/null || fail "untag oper adm"
wait_for 2 "exec ends after revocation" gone "$EXEC" || fail "exec still runs 2 s after the revocation"
log "exec ended $(elapsed_ms "$t0") ms after the untag: $(tail -1 "$TM_TMP/exec.log")"
grep -q "revoked: not allowed: tunnelmesh.io/cap/docker exec" "$TM_TMP/exec.log" || fail "exec end: $(tail -2 "$TM_TMP/exec.log")"
# The exec's command and what it started end too (the engine cannot stop an exec; the agent
# kills its processes).
cmd_gone() { [[ $(exec_procs) == 0 ]]; }
wait_for 2 "the revoked exec's processes end" cmd_gone || fail "still running after the revocation: $(docker top "$C-web" -o pid,args | grep 'sleep 6')"
log "ok: revocation closes logs -f and exec within 2 s, and ends the exec's processes"

# --- back-pressure: a reader that stops does not make the agent buffer the log ---------------------
run_ctr big 'head -c 40000000 /dev/zero | tr "\\0" x | fold -w 3999; sleep 600'
big_done() { [[ $(docker inspect -f '{{.LogPath}}' "$C-big" | xargs stat -c %s) -gt 40000000 ]]; }
wait_for 30 "the big container wrote its 40 MB" big_done || fail "big container log"
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
rss0=$(rss_kb "$BETA_PID")
ns_spawn oper big.log bash -c "TUNNELMESH_SOCKET='$(sock oper)' '$TM_BIN' docker logs 'beta/$C-big' | (sleep 4; wc -c)"
BIG=$TM_LAST_PID
sleep 3 # the reader is paused: whatever the agent buffered now, it buffered for a stalled reader
rss1=$(rss_kb "$BETA_PID")
log "beta's RSS: ${rss0} kB before, ${rss1} kB with a stalled reader of a 40 MB log"
assert_le $((rss1 - rss0)) 16384 "beta's RSS growth (kB) with a stalled reader"
wait_for 60 "the slow reader got everything" gone "$BIG" || fail "logs to a slow reader did not finish"
assert_eq "$(tail -1 "$TM_TMP/big.log")" "$(docker logs "$C-big" 2>/dev/null | wc -c)" "bytes read by the slow reader (as the engine's own docker logs)"
log "ok: back-pressure: a stalled reader does not grow the agent's memory; everything arrives"

# --- stats -------------------------------------------------------------------------------------
out=$(tm oper docker stats --node coord --json) || fail "stats --json: $out"
row=$(json_get "[r for r in d['containers'] if r['name'] == '$C-web'][0]" <<<"$out") || fail "stats lacks $C-web: $out"
[[ $(json_get 'd["up"]' <<<"$row") == true ]] || fail "stats up: $row"
json_get 'd["memory_bytes"] > 0 and d["cpu_seconds"] > 0' <<<"$row" | grep -qx true || fail "stats numbers: $row"
log "ok: stats --json: $row"

# --- the agent port from outside the mesh ------------------------------------------------------
ns_exec outside ip route add "$CIP/32" via 192.0.2.1 || fail "route to the mesh address"
ns_exec coord sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0
out=$(ns_exec outside timeout 5 bash -c "exec 3<>/dev/tcp/$CIP/8375 && echo '{\"verb\":\"ps\"}' >&3 && cat <&3" 2>&1) &&
    fail "a non-mesh source reached the agent: $out"
[[ $out == *"refused"* ]] || fail "non-mesh source: unexpected: $out"
# The same path reaches other services of the node (the refusal is the agent's, not routing).
ns_exec outside timeout 5 bash -c "exec 3<>/dev/tcp/$CIP/8443" || fail "the LAN route to $CIP does not work at all"
log "ok: the agent port refuses a non-mesh source ($out)"

# --- removing the caller's node closes its live stream within 2 s ------------------------------
tm coord node tag help tag:help >/dev/null || fail "tag help again"
: >"$TM_TMP/follow2.log"
follow_again() {
    ns_spawn help follow2.log env TUNNELMESH_SOCKET="$(sock help)" "$TM_BIN" docker logs -f "beta/$C-web" --tail 1
    FOLLOW=$TM_LAST_PID
    wait_for 3 "logs -f streams" grep -q '^line-' "$TM_TMP/follow2.log"
}
wait_for 5 "help may follow logs again" follow_again || fail "logs -f after re-tagging: $(cat "$TM_TMP/follow2.log")"
# The removed node's tunnel is gone with it, so nothing reaches its CLI any more: what must end
# is the session on beta's agent (its log says so, its connection is no longer established).
HELP_IP=$(mesh_ip_of help)
agent_conn() { ns_exec beta ss -Htn state established "( sport = :8375 and dst $HELP_IP )" | grep -q .; }
agent_conn || fail "no established agent connection from help on beta"
t0=${EPOCHREALTIME/./}
tm coord node remove help >/dev/null || fail "node remove help"
ended() { grep -q "docker session ended by the policy: node .* is not in the mesh" "$TM_TMP/beta.log" && ! agent_conn; }
wait_for 2 "beta's agent ends the removed node's session" ended ||
    fail "beta's agent still serves the removed node 2 s later: $(grep 'docker session' "$TM_TMP/beta.log")"
log "beta's agent ended the session $(elapsed_ms "$t0") ms after node remove: $(grep -o 'docker session ended.*' "$TM_TMP/beta.log" | tail -1)"
stop_pid "$FOLLOW" TERM 5 >/dev/null
log "ok: removing the caller's node ends its session on the agent within 2 s"

# --- beta's engine stops mid-stream: one line, exit 1, no hang ----------------------------------
ns_spawn oper follow3.log env TUNNELMESH_SOCKET="$(sock oper)" "$TM_BIN" docker logs -f "beta/$C-web" --tail 1
FOLLOW=$TM_LAST_PID
wait_for 5 "oper follows beta's logs" grep -q '^line-' "$TM_TMP/follow3.log" || fail "logs -f: $(cat "$TM_TMP/follow3.log")"
pkill -P "$SOCAT" 2>/dev/null
kill "$SOCAT" 2>/dev/null
wait_for 5 "logs -f ends when the engine goes" gone "$FOLLOW" || fail "logs -f hangs after the engine went away"
rc=0
wait "$FOLLOW" || rc=$?
assert_eq "$rc" 1 "logs -f exit code when the engine goes away"
last=$(grep -v '^line-' "$TM_TMP/follow3.log")
[[ $(wc -l <<<"$last") -eq 1 && $last == "tunnelmesh: "*"ngine"* ]] || fail "logs -f end: $last"
log "ok: engine gone mid-stream: $last"
expect_err "Docker engine" tm oper docker logs "beta/$C-web" --tail 1
pass
