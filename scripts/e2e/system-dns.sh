#!/usr/bin/env bash
# `.mesh` names for every program, and stock NFS clients without port options, as a new user
# meets them (issue 19). A coordinator and a member in namespaces, each with its own
# /etc/netns/<ns>/resolv.conf (bind-mounted over /etc/resolv.conf by `ip netns exec`):
#   - on the member, with no resolver flags: `getent hosts` finds coord.mesh and beta.mesh,
#     curl reaches http://coordinator.mesh:8080/s3/, and a non-mesh name still resolves
#     through the previous nameserver (a tiny upstream DNS in the member's namespace);
#   - `rpcinfo -p coordinator.mesh` lists MOUNT and NFS on 2049, and `nfs-ls` lists the default
#     share with no nfsport/mountport;
#   - resolv.conf is byte-identical after stop, and after kill -9 + restart + stop;
#   - the coordinator has `dns: {manage_system: false}`: its resolv.conf is never touched.
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
source "$(dirname "$0")/../lib/mesh.sh"
tm_init system-dns 200
require_tm_binaries
for t in getent curl python3; do command -v $t >/dev/null || fail "$t missing"; done
command -v rpcinfo >/dev/null || fail "rpcinfo missing (rpcbind; run scripts/install-test-deps.sh)"
command -v nfs-ls >/dev/null || fail "nfs-ls missing (libnfs-utils; run scripts/install-test-deps.sh)"

lan_create coord beta
RC_COORD=/etc/netns/$(ns_name coord)/resolv.conf
RC_BETA=/etc/netns/$(ns_name beta)/resolv.conf
# The previous resolver of the member: an upstream on its loopback. No trailing newline and
# a comment, so that "byte-identical" means something.
printf '# written by the test\nnameserver 127.0.0.1\noptions timeout:1 attempts:2' >"$RC_BETA"
printf 'nameserver 127.0.0.1\n' >"$RC_COORD"
cp "$RC_BETA" "$TM_TMP/beta.orig"
cp "$RC_COORD" "$TM_TMP/coord.orig"

# Upstream DNS: *.example.test A -> 192.0.2.200, everything else NXDOMAIN (UDP, port 53).
cat >"$TM_TMP/upstream.py" <<'EOF'
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
while True:
    q, peer = s.recvfrom(4096)
    if len(q) < 12:
        continue
    i, end = 12, 12
    labels = []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode().lower())
        i += 1 + q[i]
    qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
    question = q[12:i + 5]
    name = ".".join(labels)
    hit = name.endswith("example.test")
    flags = 0x8180 if hit else 0x8183
    an = 1 if hit and qtype == 1 else 0
    r = q[:2] + struct.pack("!HHHHH", flags, 1, an, 0, 0) + question
    if an:
        r += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton("192.0.2.200")
    s.sendto(r, peer)
EOF
ns_spawn beta upstream.log python3 "$TM_TMP/upstream.py"
wait_for 5 "upstream DNS" ns_exec beta getent hosts www.example.test || fail "the test's upstream DNS does not answer"

declare -A PID=()
start() {
    local n=$1
    shift
    rm -f "$(sock "$n")"
    ns_spawn "$n" "$n.log" env HOME="$TM_TMP/$n/home" TUNNELMESH_LOG="${TM_RUST_LOG:-info}" \
        "$TM_BIN" join "$@" --config "$TM_TMP/$n/config.yaml"
    PID[$n]=$TM_LAST_PID
    wait_for 30 "$n ready" ready "$n" || fail "$n did not come up (see $n.log)"
}
stop() { kill -TERM "${PID[$1]}"; wait_for 15 "$1 exits" bash -c "! kill -0 ${PID[$1]}" || fail "$1 did not stop"; }

conf coord 'coordinator: {enabled: true, listen: ":8443"}
dns: {manage_system: false}
'
start coord
TOKEN=$(ctl coord token) || fail "tmctl token"
COORD_IP=$(mesh_ip_of coord)
conf beta
start beta "$(lan_ip coord):8443" --token "$TOKEN"
BETA_IP=$(mesh_ip_of beta)
cmp -s "$RC_COORD" "$TM_TMP/coord.orig" || fail "manage_system: false, yet the coordinator's resolv.conf changed"
log "ok: manage_system: false leaves resolv.conf alone"
head -2 "$RC_BETA" | grep -qx "nameserver $BETA_IP" || fail "no managed block: $(cat "$RC_BETA")"

wait_for 10 "beta resolves coord.mesh" bash -c "ip netns exec $(ns_name beta) getent hosts coord.mesh | grep -q '^$COORD_IP '" ||
    fail "getent hosts coord.mesh: '$(ns_exec beta getent hosts coord.mesh)'"
got=$(ns_exec beta getent hosts beta.mesh) || fail "getent hosts beta.mesh failed"
[[ $got == "$BETA_IP "* ]] || fail "getent hosts beta.mesh: '$got'"
log "ok: getent hosts coord.mesh / beta.mesh with no resolver flags ($got)"
code=$(ns_exec beta curl -s -o /dev/null -w '%{http_code}' --max-time 10 http://coordinator.mesh:8080/s3/) || true
[[ $code =~ ^[1-5][0-9][0-9]$ ]] || fail "curl http://coordinator.mesh:8080/s3/: no HTTP answer ($code)"
log "ok: curl http://coordinator.mesh:8080/s3/ answered HTTP $code"
got=$(ns_exec beta getent hosts www.example.test) || fail "a non-mesh name no longer resolves"
[[ $got == "192.0.2.200 "* ]] || fail "getent hosts www.example.test: '$got'"
log "ok: non-mesh names go to the previous resolver ($got)"

# tmctl without --socket: with two nodes running it names both instead of guessing.
if [[ ! -e /var/lib/tunnelmesh/control.sock ]]; then
    out=$(env -u TUNNELMESH_SOCKET timeout 10 "$TMCTL_BIN" status 2>&1) && fail "tmctl guessed between two nodes: $out"
    [[ $out == *"several nodes run here"*"$TM_TMP/coord/control.sock"* || $out == *"several nodes run here"*"$TM_TMP/beta/control.sock"* ]] ||
        fail "tmctl without --socket: $out"
    grep -q "$TM_TMP/beta/control.sock" <<<"$out" && grep -q "$TM_TMP/coord/control.sock" <<<"$out" ||
        fail "tmctl does not name both running nodes: $out"
    log "ok: tmctl without --socket names the running nodes ($out)"
fi

# --- portmapper ---------------------------------------------------------------------------
out=$(ns_exec beta timeout 10 rpcinfo -p coordinator.mesh 2>&1) || fail "rpcinfo -p: $out"
grep -Eq '100005 +3 +tcp +2049' <<<"$out" || fail "rpcinfo -p has no MOUNT v3 on 2049: $out"
grep -Eq '100003 +3 +tcp +2049' <<<"$out" || fail "rpcinfo -p has no NFS v3 on 2049: $out"
log "ok: rpcinfo -p coordinator.mesh lists MOUNT and NFS v3 on 2049"
echo hello >"$TM_TMP/hello.txt"
out=$(ns_exec beta timeout 20 nfs-cp "$TM_TMP/hello.txt" 'nfs://coordinator.mesh/shares/default/hello.txt?version=3' 2>&1) ||
    fail "nfs-cp without ports: $out"
out=$(ns_exec beta timeout 20 nfs-ls 'nfs://coordinator.mesh/shares/default?version=3' 2>&1) ||
    fail "nfs-ls without nfsport/mountport: $out"
grep -q hello.txt <<<"$out" || fail "nfs-ls does not list hello.txt: $out"
log "ok: nfs-ls nfs://coordinator.mesh/shares/default without ports ($(wc -l <<<"$out") entries)"

# --- restore ------------------------------------------------------------------------------
stop beta
cmp "$RC_BETA" "$TM_TMP/beta.orig" || fail "resolv.conf differs after stop"
log "ok: resolv.conf byte-identical after stop"
start beta
grep -q "^nameserver $BETA_IP" "$RC_BETA" || fail "no block after restart"
kill -KILL "${PID[beta]}" 2>/dev/null
wait_for 10 "beta dead" bash -c "! kill -0 ${PID[beta]}" || fail "kill -9"
grep -q "^nameserver $BETA_IP" "$RC_BETA" || fail "the block should survive kill -9 (nothing ran)"
wait_for 10 "the dataplane follows" bash -c "! ip netns exec $(ns_name beta) ip link show tunnelmesh0" || fail "TUN left behind after kill -9"
start beta
[[ $(grep -c "^# tunnelmesh: begin" "$RC_BETA") == 1 ]] || fail "stale block not replaced: $(cat "$RC_BETA")"
stop beta
cmp "$RC_BETA" "$TM_TMP/beta.orig" || fail "resolv.conf differs after kill -9 + restart + stop"
log "ok: resolv.conf byte-identical after kill -9 + restart + stop"
pass
