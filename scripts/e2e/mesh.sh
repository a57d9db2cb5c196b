#!/usr/bin/env bash
# A mesh built with `tunnelmesh join`: one coordinator and three peers, one of them (natted)
# behind a masquerading NAT router. Checks: every pair pings by mesh DNS name; the NATed peer
# is reached directly through its NAT-observed endpoint (hole punching); a peer that leaves
# disappears from netmaps and DNS; the coordinator restarts and the mesh carries on (same
# addresses, same token, tunnels up while it is down); a wrong token, a token pinned to another
# CA, a replayed registration and a malformed request are each refused clearly.
#
# Topology (all inside namespaces made here):
#   LAN 192.0.2.0/24 (bridge): coord .1, alpha .2, beta .3, router .4
#   router <-> natted over 198.51.100.0/24, masquerade to the LAN on the router.
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
source "$(dirname "$0")/../lib/mesh.sh"
tm_init mesh 230
require_tm_binaries
command -v dig >/dev/null || fail "dig missing (run scripts/install-test-deps.sh)"
command -v iptables >/dev/null || fail "iptables missing (run scripts/install-test-deps.sh)"

lan_create coord alpha beta router
ns_create natted
veth_pair router natted 198.51.100.1/24 198.51.100.2/24
ns_exec natted ip route add default via 198.51.100.1 || fail "default route in natted"
ns_exec router sysctl -qw net.ipv4.ip_forward=1 || fail "ip_forward in router"
ns_exec router iptables -t nat -A POSTROUTING -s 198.51.100.0/24 -o eth0 -j MASQUERADE ||
    fail "masquerade in router"
# Nothing reaches the NATed namespace unsolicited.
ns_exec router iptables -A FORWARD -i eth0 -o p-natted -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
ns_exec router iptables -A FORWARD -i eth0 -o p-natted -j DROP
wait_for 5 "natted reaches the LAN through the NAT" ns_exec natted ping -c1 -W1 192.0.2.1 ||
    fail "NAT does not forward"

declare -A PID=()
COORD=192.0.2.1:8443

start() { # start NAME ARGS... : tunnelmesh join ARGS in namespace NAME (HOME=its own dir)
    local n=$1
    shift
    rm -f "$(sock "$n")"
    echo "=== $(date +%T) tunnelmesh join $* ===" >>"$TM_TMP/$n.log"
    ns_spawn "$n" "$n.log" env HOME="$TM_TMP/$n/home" TUNNELMESH_LOG="${TM_RUST_LOG:-info}" \
        "$TM_BIN" join "$@" --config "$TM_TMP/$n/config.yaml"
    PID[$n]=$TM_LAST_PID
    wait_for 20 "$n ready" ready "$n" || fail "$n did not come up (see $n.log)"
}
resolve() { # resolve FROM NAME : A record of NAME.mesh from FROM's mesh DNS
    ns_exec "$1" dig +short +time=1 +tries=2 @127.0.0.53 -p 5353 "$2.mesh" A | tail -1
}
resolves() { [[ -n $(resolve "$1" "$2") ]]; }
rcode() { ns_exec "$1" dig +time=1 +tries=2 @127.0.0.53 -p 5353 "$2.mesh" A | sed -n 's/.*status: \([A-Z]*\).*/\1/p'; }
peer_field() { ctl "$1" peers --json | json_get "[p for p in d if p['name'] == '$2'][0]$3"; }

# --- coordinator --------------------------------------------------------------------------
conf coord 'coordinator: {enabled: true, listen: ":8443"}
dns: {aliases: {db: alpha}}
'
start coord
TOKEN=$(ctl coord token) || fail "tmctl token"
[[ $TOKEN == tm1_* ]] || fail "tmctl token printed '$TOKEN'"
grep -q "join token: $TOKEN" "$TM_TMP/coord.log" || fail "the coordinator did not print its join token"
assert_eq "$(ctl coord status --json | json_get 'd["mesh"]["role"]')" coordinator "coord role"

# --- refusals -----------------------------------------------------------------------------
conf intruder
out=$(ns_exec alpha env HOME="$TM_TMP/intruder/home" timeout 20 "$TM_BIN" join "$COORD" \
    --token "tm1_not-a-token" --config "$TM_TMP/intruder/config.yaml" 2>&1) &&
    fail "a garbage token was accepted"
out=$(tail -1 <<<"$out")
log "garbage token: $out"
[[ $out == "tunnelmesh: "*token* ]] || fail "garbage token: unclear error: $out"
# Same CA pin, wrong secret; and right secret, other CA pin.
read -r WRONG_SECRET WRONG_CA < <(python3 - "$TOKEN" <<'EOF'
import base64, sys
t = sys.argv[1][4:]
b = bytearray(base64.urlsafe_b64decode(t + "=" * (-len(t) % 4)))
def enc(x): return "tm1_" + base64.urlsafe_b64encode(bytes(x)).decode().rstrip("=")
s = bytearray(b); s[-1] ^= 1
c = bytearray(b); c[1] ^= 1
print(enc(s), enc(c))
EOF
)
out=$(ns_exec alpha env HOME="$TM_TMP/intruder/home" timeout 20 "$TM_BIN" join "$COORD" \
    --token "$WRONG_SECRET" --config "$TM_TMP/intruder/config.yaml" 2>&1) &&
    fail "a token with a wrong secret was accepted"
out=$(tail -1 <<<"$out")
log "wrong secret: $out"
[[ $out == *token* ]] || fail "wrong secret: unclear error: $out"
out=$(ns_exec alpha env HOME="$TM_TMP/intruder/home" timeout 20 "$TM_BIN" join "$COORD" \
    --token "$WRONG_CA" --config "$TM_TMP/intruder/config.yaml" 2>&1) &&
    fail "a token pinned to another CA was accepted"
out=$(tail -1 <<<"$out")
log "other CA: $out"
[[ $out == *"does not match the join token"* ]] || fail "other CA: unclear error: $out"
# A malformed registration gets 400 with a JSON error.
code=$(ns_exec alpha curl -sk -o "$TM_TMP/malformed.json" -w '%{http_code}' --max-time 10 \
    -X POST --data '{"name": 12' "https://$COORD/v1/register")
assert_eq "$code" 400 "malformed register: HTTP status"
grep -q '"error"' "$TM_TMP/malformed.json" || fail "malformed register: no error message"
log "malformed: $(cat "$TM_TMP/malformed.json")"
# A replayed registration (same challenge nonce twice) is refused; a stock Python TLS client
# builds it (X25519 proof of possession, a BLAKE2s MAC, a CSR from `cryptography`; the token
# secret goes inside TLS).
ns_exec alpha python3 - "$TOKEN" "$COORD" >"$TM_TMP/replay.log" 2>&1 <<'EOF' || fail "replayed registration was not refused (see replay.log)"
import base64, hashlib, json, ssl, sys, http.client
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import NameOID
tok = sys.argv[1][4:]
raw = base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4))
secret = raw[33:65]
host, port = sys.argv[2].split(":")
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def call(method, path, body=None):
    c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    c.request(method, path, body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse(); return r.status, r.read().decode()
st, ch = call("GET", "/v1/challenge"); ch = json.loads(ch)
b64 = lambda s: base64.b64decode(s)
nonce, cstatic = b64(ch["nonce"]), b64(ch["coordinator_static"])
node = x25519.X25519PrivateKey.generate()
pub = node.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
dh = node.exchange(x25519.X25519PublicKey.from_public_bytes(cstatic))
tls_key = ec.generate_private_key(ec.SECP256R1())
csr = x509.CertificateSigningRequestBuilder().subject_name(
    x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "replayer")])).sign(tls_key, hashes.SHA256())
der = csr.public_bytes(serialization.Encoding.DER)
name = b"replayer"
proof = hashlib.blake2s(b"tunnelmesh register v1" + nonce + pub + bytes([len(name)]) + name + der,
                        key=dh, digest_size=32).digest()
e = lambda b: base64.b64encode(b).decode()
body = json.dumps({"name": "replayer", "public_key": e(pub), "nonce": e(nonce), "proof": e(proof),
    "token_secret": e(secret), "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
    "endpoints": []})
s1, r1 = call("POST", "/v1/register", body)
print("first", s1, r1[:200])
s2, r2 = call("POST", "/v1/register", body)
print("replay", s2, r2)
assert s1 == 200, "the honest registration should succeed"
assert s2 == 403 and "challenge" in r2, "the replay must be refused"
EOF
log "replay: $(tail -1 "$TM_TMP/replay.log")"
# The replayer registered once; it must not linger in anyone's mesh: remove it.
# (It never runs a node, so it simply stays unreachable; peers list it but it has no session.)

# --- three peers --------------------------------------------------------------------------
for n in alpha beta natted; do conf "$n"; done
for n in alpha beta; do start "$n" "$COORD" --token "$TOKEN"; done
# The last join reaches the others by long poll: time it.
seen_natted() { ctl alpha peers --json | grep -q '"natted"'; }
start natted "$COORD" --token "$TOKEN"
t0=${EPOCHREALTIME/./}
wait_for 2 "alpha learns natted joined" seen_natted || fail "alpha did not learn of natted within 2 s"
log "alpha saw natted's join within $(elapsed_ms "$t0") ms of natted being ready"

# Another key cannot take a registered name, nor the reserved `coordinator`.
for taken in alpha coordinator; do
    out=$(ns_exec beta env HOME="$TM_TMP/intruder/home" timeout 20 "$TM_BIN" join "$COORD" \
        --token "$TOKEN" --name "$taken" --config "$TM_TMP/intruder/config.yaml" 2>&1) &&
        fail "another key registered the name $taken"
    out=$(tail -1 <<<"$out")
    log "name $taken by another key: $out"
    [[ $out == "tunnelmesh: "*"$taken"* ]] || fail "name $taken: unclear error: $out"
done
NODES="coord alpha beta natted"
declare -A IP=()
for n in $NODES; do
    IP[$n]=$(mesh_ip_of "$n")
    [[ ${IP[$n]} == 100.* ]] || fail "$n: mesh address '${IP[$n]}' not in 100.64.0.0/10"
done
log "mesh addresses: coord=${IP[coord]} alpha=${IP[alpha]} beta=${IP[beta]} natted=${IP[natted]}"
[[ $(printf '%s\n' "${IP[@]}" | sort -u | wc -l) -eq 4 ]] || fail "mesh addresses are not unique"

for a in $NODES; do
    for b in $NODES; do
        [[ $a == "$b" ]] && continue
        wait_for 10 "$a resolves $b.mesh" resolves "$a" "$b" || fail "$a cannot resolve $b.mesh"
        got=$(resolve "$a" "$b")
        assert_eq "$got" "${IP[$b]}" "$a: $b.mesh"
        wait_for 15 "$a pings $b.mesh" ping_ok "$a" "$got" 1 || fail "$a cannot ping $b.mesh ($got)"
    done
    assert_eq "$(resolve "$a" coordinator)" "${IP[coord]}" "$a: coordinator.mesh"
    assert_eq "$(rcode "$a" nobody)" NXDOMAIN "$a: nobody.mesh"
done
log "every pair pings by DNS name"
assert_eq "$(resolve natted db)" "${IP[alpha]}" "natted: alias db.mesh"
ttl=$(ns_exec natted dig +noall +answer @127.0.0.53 -p 5353 alpha.mesh A | awk '{print $2; exit}')
assert_le "$ttl" 10 "TTL of alpha.mesh" 
# alpha reached natted directly, at the NAT's public address (observed by the coordinator).
ep=$(peer_field alpha natted '["endpoint"]')
[[ $ep == 192.0.2.4:* ]] || fail "alpha sees natted at '$ep', expected the NAT address 192.0.2.4:*"
assert_eq "$(peer_field alpha natted '["path"]')" direct "alpha -> natted path"

# --- storage through the mesh: the S3 keys each peer got at join, and Bearer with the token ---
CIP=${IP[coord]}
ctl coord bucket create build-artifacts >/dev/null || fail "bucket create on the coordinator"
creds=$(ctl alpha s3 credentials --json) || fail "tmctl s3 credentials on alpha"
AK=$(json_get 'd["access_key"]' <<<"$creds")
SK=$(json_get 'd["secret_key"]' <<<"$creds")
head -c 300000 /dev/urandom >"$TM_TMP/obj"
ns_exec alpha env AWS_ACCESS_KEY_ID="$AK" AWS_SECRET_ACCESS_KEY="$SK" AWS_DEFAULT_REGION=us-east-1 \
    AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
    aws --endpoint-url "http://$CIP:8080/s3" s3 cp "$TM_TMP/obj" s3://build-artifacts/v1.0/myapp \
    >>"$TM_TMP/aws.log" 2>&1 || fail "aws s3 cp from alpha with its join-issued keys (see aws.log)"
ns_exec natted curl -sf --max-time 10 -H "Authorization: Bearer $TOKEN" \
    "http://$CIP:8080/s3/build-artifacts/v1.0/myapp" -o "$TM_TMP/obj2" || fail "Bearer GET from natted"
cmp -s "$TM_TMP/obj" "$TM_TMP/obj2" || fail "object read back with Bearer differs"
code=$(ns_exec natted curl -s --max-time 10 -o /dev/null -w '%{http_code}' \
    -H "Authorization: Bearer $WRONG_SECRET" "http://$CIP:8080/s3/build-artifacts/v1.0/myapp")
assert_eq "$code" 403 "Bearer with a wrong token"
# The same object over NFS from another member, through the mesh (share `default`).
ns_exec alpha env AWS_ACCESS_KEY_ID="$AK" AWS_SECRET_ACCESS_KEY="$SK" AWS_DEFAULT_REGION=us-east-1 \
    AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
    aws --endpoint-url "http://$CIP:8080/s3" s3 cp "$TM_TMP/obj" s3://default/docs/obj.bin \
    >>"$TM_TMP/aws.log" 2>&1 || fail "aws s3 cp into the default share"
NFSURL="nfs://$CIP/shares/default/docs/obj.bin?version=3&nfsport=2049&mountport=2049"
ns_exec natted timeout 20 nfs-cat "$NFSURL" >"$TM_TMP/obj3" 2>>"$TM_TMP/nfs.log" ||
    fail "nfs-cat over the mesh from natted (see nfs.log)"
cmp -s "$TM_TMP/obj" "$TM_TMP/obj3" || fail "NFS read of an S3 object differs"
log "S3 object read back over NFS through the mesh, identical"
objs=$(ctl coord bucket usage _tunnelmesh --json | json_get 'd["objects"]')
assert_ge "$objs" 1 "coordinator state objects in _tunnelmesh"

# --- a peer leaves ------------------------------------------------------------------------
bcreds=$(ctl beta s3 credentials --json) || fail "tmctl s3 credentials on beta"
BAK=$(json_get 'd["access_key"]' <<<"$bcreds")
BSK=$(json_get 'd["secret_key"]' <<<"$bcreds")
beta_s3_ls() {
    ns_exec alpha env AWS_ACCESS_KEY_ID="$BAK" AWS_SECRET_ACCESS_KEY="$BSK" AWS_DEFAULT_REGION=us-east-1 \
        AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
        aws --endpoint-url "http://$CIP:8080/s3" s3 ls --recursive s3://build-artifacts/ 2>&1
}
beta_s3_ls | grep -q myapp || fail "beta's join-issued S3 key does not work"
t0=${EPOCHREALTIME/./}
ctl beta leave || fail "tmctl leave"
stop_pid "${PID[beta]}" TERM 10
wait_for 5 "beta gone from alpha's peers" sh -c "! '$TMCTL_BIN' --socket '$(sock alpha)' peers --json | grep -q '\"beta\"'" ||
    fail "beta still in alpha's peers after leaving"
log "beta left; gone from alpha's netmap after $(elapsed_ms "$t0") ms"
rcode_is() { [[ $(rcode "$1" "$2") == "$3" ]]; }
wait_for 8 "beta.mesh NXDOMAIN at natted" rcode_is natted beta NXDOMAIN ||
    fail "beta.mesh still resolves after beta left"
[[ ! -e $TM_TMP/beta/mesh.json ]] || fail "beta kept its join state after leaving"
beta_revoked() { local o; o=$(beta_s3_ls); [[ $o == *InvalidAccessKeyId* ]]; }
wait_for 20 "beta's S3 key revoked" beta_revoked || {
    beta_s3_ls >&2
    fail "beta's S3 key still works after it left"
}
log "beta's S3 key is refused after it left: InvalidAccessKeyId"

# --- the coordinator restarts -------------------------------------------------------------
v0=$(ctl alpha status --json | json_get 'd["mesh"]["netmap_version"]')
stop_pid "${PID[coord]}" TERM 10 || fail "coordinator exit code on SIGTERM"
run_step "alpha pings natted while the coordinator is down" ping_ok alpha "${IP[natted]}" 5
start coord
assert_eq "$(ctl coord token)" "$TOKEN" "join token after restart"
assert_eq "$(mesh_ip_of coord)" "${IP[coord]}" "coordinator address after restart"
wait_for 15 "alpha reconnects" sh -c "'$TMCTL_BIN' --socket '$(sock alpha)' status --json | grep -q '\"coordinator_reachable\": true'" ||
    fail "alpha did not reconnect to the restarted coordinator"
for n in alpha natted; do
    wait_for 25 "$n pings the restarted coordinator" ping_ok "$n" "${IP[coord]}" 1 ||
        fail "$n cannot reach the restarted coordinator"
    assert_eq "$(resolve "$n" "$n")" "${IP[$n]}" "$n: own name after restart"
done
run_step "natted pings alpha after the restart" ping_ok natted "${IP[alpha]}" 3
# A node restarting rejoins with its saved identity and keeps its address.
# The restarted alpha handshakes at once; natted's old session is useless to it. (If that
# handshake's confirming keepalive were lost, natted would re-handshake only after WireGuard's
# keepalive + rekey timeouts, 15 s, hence the longer bound; the log shows the real figure.)
stop_pid "${PID[alpha]}" TERM 10 || fail "alpha exit code on SIGTERM"
start alpha "$COORD"
t0=${EPOCHREALTIME/./}
assert_eq "$(mesh_ip_of alpha)" "${IP[alpha]}" "alpha's address after its restart"
wait_for 25 "natted pings the restarted alpha" ping_ok natted "${IP[alpha]}" 1 ||
    fail "natted cannot reach alpha after alpha restarted"
log "natted reached the restarted alpha $(elapsed_ms "$t0") ms after alpha was ready"
log "netmap version before restart $v0, now $(ctl alpha status --json | json_get 'd["mesh"]["netmap_version"]')"
pass
