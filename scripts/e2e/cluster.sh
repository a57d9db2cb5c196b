#!/usr/bin/env bash
# Two coordinators of one mesh, no leader (issue 17), in network namespaces:
#   - coordinator cb joins ca's mesh with a `token create --coordinator` token (a member token
#     is refused for it); both list the same nodes and the same state digest
#   - member alpha joins through ca, beta through cb; each coordinator lists both; alpha and
#     beta ping each other; a tag set on cb is on ca within 5 s; `cluster status` shows the peer
#     in sync
#   - a bucket (with a quota) and a share (read-only, squashed) created through ca are listed
#     through cb with the same settings; deleted through ca, they are gone from cb; a bucket
#     made and versioned through S3 at ca is versioned at cb
#   - UDP between alpha and beta blocked: each relays through its own coordinator (alpha via
#     ca, beta via cb) and the coordinators forward between them; pings cross; unblocked, the
#     pair goes back to direct
#   - alpha's own node certificate gets 403 from ca's replication endpoint and link upgrade
#   - `coordinator.mesh` on a member names both coordinators; with ca killed, only cb (within
#     the liveness window, about 10 s); after ca's restart both again
#   - kill -9 ca: alpha <-> beta keeps working; gamma joins through cb and beta reaches it;
#     beta and alpha resolve gamma.mesh within 5 s of the join; alpha (joined through ca)
#     fails over to cb within 5 s and reaches gamma; gamma's S3 key (issued by cb) works on cb
#   - ca restarts from its disk and catches up: `node list --json` identical on both
#   - cb blackholed for alpha while alpha long-polls it (iptables DROP: no reset): TCP keepalive
#     ends the poll and alpha moves to ca within 5 s
#   - partition ca (with alpha) from cb (with beta); a node named `web` joins on each side;
#     after the heal both coordinators agree: one `web` (the earlier) and one `web-2`, unique
#     addresses; the renamed node's own status says `web-2`
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
source "$(dirname "$0")/../lib/mesh.sh"
tm_init cluster 240
require_tm_binaries
command -v dig >/dev/null || fail "dig missing (run scripts/install-test-deps.sh)"
command -v iptables >/dev/null || fail "iptables missing (run scripts/install-test-deps.sh)"
command -v aws >/dev/null || fail "awscli missing (run scripts/install-test-deps.sh)"

lan_create ca cb alpha beta gamma web1 web2
CA=192.0.2.1:8443
CB=192.0.2.2:8443

start() { # start NS NAME ARGS...
    local ns=$1 n=$2
    shift 2
    ns_spawn "$ns" "$n.log" env HOME="$TM_TMP/$n/home" TUNNELMESH_LOG="${TM_RUST_LOG:-info}" \
        "$TM_BIN" join "$@" --config "$TM_TMP/$n/config.yaml"
    eval "PID_$n=$TM_LAST_PID"
    wait_for 25 "$n ready" ready "$n" || fail "$n did not come up (see $n.log)"
}
nodes_of() { # the coordinator's node list, normalised (name, address, tags, role)
    tm "$1" node list --json | python3 -c 'import json,sys
print(json.dumps(sorted((n["name"], n["mesh_ip"], sorted(n["tags"]), n["is_coordinator"]) for n in json.load(sys.stdin))))'
}
digest_of() { tm "$1" cluster status --json | json_get 'd["digest"]'; }
same_state() {
    local a b
    a=$(nodes_of ca) && b=$(nodes_of cb) && [[ $a == "$b" ]] &&
        [[ $(digest_of ca) == "$(digest_of cb)" ]]
}
has_node() { nodes_of "$1" | grep -q "\"$2\""; }

# --- the second coordinator joins ------------------------------------------------------------
conf ca 'coordinator: {enabled: true, listen: ":8443"}
'
start ca ca
TOKEN=$(ctl ca token) || fail "tmctl token"
conf cb 'coordinator: {enabled: true, listen: ":8443"}
'
out=$(ns_exec cb env HOME="$TM_TMP/cb/home" timeout 30 "$TM_BIN" join "$CA" --token "$TOKEN" \
    --config "$TM_TMP/cb/config.yaml" 2>&1) && fail "a member token started a coordinator: $out"
[[ $out == *"token create --coordinator"* ]] || fail "member token as coordinator: unclear refusal: $out"
rm -rf "$TM_TMP/cb"
conf cb 'coordinator: {enabled: true, listen: ":8443"}
'
CTOKEN=$(tm ca token create --coordinator --json | json_get 'd["token"]') || fail "token create --coordinator"
start cb cb "$CA" --token "$CTOKEN"
wait_for 15 "ca and cb hold the same state" same_state || fail "coordinators differ: $(nodes_of ca) / $(nodes_of cb)"
log "ok: cb joined as a coordinator: $(nodes_of cb)"

# --- members on either coordinator -----------------------------------------------------------
# Short timers so the path moves to the relay within seconds (as in mesh-relay.sh).
TIMERS='testing: {rekey_timeout_ms: 1500, keepalive_timeout_ms: 2000}
'
conf alpha "$TIMERS"
start alpha alpha "$CA" --token "$TOKEN"
conf beta "$TIMERS"
start beta beta "$CB" --token "$TOKEN"
wait_for 10 "both coordinators list alpha and beta" same_state || fail "after joins: $(nodes_of ca) / $(nodes_of cb)"
has_node ca beta && has_node cb alpha || fail "a member is missing: $(nodes_of ca)"
AIP=$(mesh_ip_of alpha)
BIP=$(mesh_ip_of beta)
wait_for 15 "alpha pings beta (homed on different coordinators)" ping_ok alpha "$BIP" 1 || fail "alpha cannot reach beta"
t0=$EPOCHREALTIME
tm cb node tag beta tag:web >/dev/null || fail "node tag on cb"
wait_for 5 "the tag reaches ca" sh -c "TUNNELMESH_SOCKET=$(sock ca) timeout 10 $TM_BIN node list --json | grep -q tag:web" ||
    fail "tag set on cb not on ca within 5 s"
log "ok: a tag set on cb is on ca after $(elapsed_ms "${t0/./}") ms"
st=$(tm ca cluster status) || fail "cluster status"
[[ $st == *cb*"in sync"* ]] || fail "cluster status does not show cb in sync: $st"
log "ok: cluster status on ca:"$'\n'"$st"

# --- buckets and shares are replicated control state -----------------------------------------
tm ca bucket create photos >/dev/null || fail "bucket create on ca"
tm ca bucket quota set photos 10MB >/dev/null || fail "bucket quota set on ca"
tm ca share create docs --read-only >/dev/null || fail "share create on ca"
tm ca share squash docs all_squash --anonuid 1000 >/dev/null || fail "share squash on ca"
buckets_of() { tm "$1" bucket list --json | json_get 'sorted((b["name"], b["quota_bytes"]) for b in d)'; }
shares_of() { tm "$1" share list --json | json_get 'sorted((s["name"], s["read_only"], s["squash"], s["anonuid"]) for s in d)'; }
has() { [[ $($1 "$2") == *"$3"* ]]; }
wait_for 5 "cb lists ca's bucket" has buckets_of cb '["photos", 10000000]' || fail "bucket on cb: $(buckets_of cb)"
wait_for 5 "cb lists ca's share" has shares_of cb '["docs", true, "all_squash", 1000]' || fail "share on cb: $(shares_of cb)"
tm ca share delete docs >/dev/null && tm ca bucket delete photos >/dev/null || fail "deletes on ca"
deleted_on_cb() { [[ $(buckets_of cb) != *photos* && $(shares_of cb) != *docs* ]]; }
wait_for 5 "cb follows the deletes" deleted_on_cb || fail "still on cb: $(buckets_of cb) $(shares_of cb)"
log "ok: a bucket and a share made and deleted through ca are listed and gone through cb"
# Through S3 too: alpha (its keys are on every coordinator) makes a versioned bucket at ca.
: >"$TM_TMP/aws-empty"
aws_at() { # aws_at COORD ARGS... : awscli in alpha with alpha's keys against COORD's S3
    local ip
    ip=$(mesh_ip_of "$1") && shift || return 1
    ns_exec alpha env AWS_ACCESS_KEY_ID="$AK" AWS_SECRET_ACCESS_KEY="$SK" AWS_DEFAULT_REGION=us-east-1 \
        AWS_CONFIG_FILE="$TM_TMP/aws-empty" AWS_SHARED_CREDENTIALS_FILE="$TM_TMP/aws-empty" \
        AWS_EC2_METADATA_DISABLED=true timeout 30 aws --endpoint-url "http://$ip:8080/s3" "$@" 2>&1
}
AK=$(ctl alpha s3 credentials --json | json_get 'd["access_key"]') || fail "s3 credentials on alpha"
SK=$(ctl alpha s3 credentials --json | json_get 'd["secret_key"]')
out=$(aws_at ca s3api create-bucket --bucket logs) || fail "S3 CreateBucket at ca: $out"
out=$(aws_at ca s3api put-bucket-versioning --bucket logs --versioning-configuration Status=Enabled) ||
    fail "S3 PutBucketVersioning at ca: $out"
versioned_on_cb() { [[ $(aws_at cb s3api get-bucket-versioning --bucket logs) == *Enabled* ]]; }
wait_for 10 "cb has the versioned bucket made through S3 at ca" versioned_on_cb ||
    fail "logs on cb: $(aws_at cb s3api get-bucket-versioning --bucket logs)"
log "ok: a bucket made and versioned through S3 at ca is versioned at cb"

# --- relayed through two coordinators --------------------------------------------------------
path_of() { ctl "$1" peers --json | json_get "[p for p in d if p['name'] == '$2'][0]['path']"; }
path_is() { [[ $(path_of "$1" "$2") == "$3" ]]; }
relay_via() { # relay_via NODE PEER COORD: a ping of PEER goes through the relay at COORD
    local out
    out=$(ctl "$1" ping "$2" -c 1 2>&1) && [[ $out == *"via relay $3"* ]]
}
ns_exec alpha iptables -A OUTPUT -p udp -d 192.0.2.4 -j DROP
ns_exec alpha iptables -A INPUT -p udp -s 192.0.2.4 -j DROP
t0=$EPOCHREALTIME
# Traffic keeps the session busy: an idle session never notices its path died (as WireGuard).
ns_spawn alpha ping-bg.log ping -i 0.5 -W 1 "$BIP"
PING_BG=$TM_LAST_PID
wait_for 45 "alpha -> beta on the relay" path_is alpha beta relay || fail "alpha -> beta did not move to the relay"
wait_for 20 "alpha pings beta via ca's relay" relay_via alpha beta "$CA" ||
    fail "alpha -> beta not through ca: $(ctl alpha ping beta -c 1 2>&1)"
wait_for 20 "beta pings alpha via cb's relay" relay_via beta alpha "$CB" ||
    fail "beta -> alpha not through cb: $(ctl beta ping alpha -c 1 2>&1)"
ping_ok alpha "$BIP" 3 || fail "no traffic across the two relays"
log "ok: alpha (ca) and beta (cb) relayed through both coordinators after $(elapsed_ms "${t0/./}") ms"
ns_exec alpha iptables -F OUTPUT
ns_exec alpha iptables -F INPUT
wait_for 30 "alpha -> beta back to direct" path_is alpha beta direct || fail "alpha -> beta stayed on the relay"
kill "$PING_BG" 2>/dev/null

# --- a node certificate cannot speak the coordinator-to-coordinator API ----------------------
# alpha's own mesh identity (a valid node certificate of this mesh) against ca's replication
# endpoint and its link upgrade: both refused, nothing merged.
python3 - "$TM_TMP/alpha/mesh.json" "$TM_TMP/alpha-id" <<'EOF' || fail "alpha's identity"
import json, os, sys
i = json.load(open(sys.argv[1]))["identity"]
os.makedirs(sys.argv[2], exist_ok=True)
for k in ("key_pem", "cert_pem", "ca_pem"):
    open(os.path.join(sys.argv[2], k), "w").write(i[k])
EOF
as_alpha() { # as_alpha PATH CURL_ARGS... : prints the HTTP status of alpha's request to ca
    local p=$1
    shift
    ns_exec alpha curl -s -o "$TM_TMP/alpha-id/body" -w '%{http_code}' --max-time 5 \
        --cert "$TM_TMP/alpha-id/cert_pem" --key "$TM_TMP/alpha-id/key_pem" \
        --cacert "$TM_TMP/alpha-id/ca_pem" --resolve "coordinator.mesh:8443:192.0.2.1" \
        "$@" "https://coordinator.mesh:8443$p"
}
d0=$(digest_of ca)
code=$(as_alpha /v1/cluster -X POST -H 'content-type: application/json' --data '{"Digest":{}}')
assert_eq "$code" 403 "alpha's node certificate on POST /v1/cluster"
log "ok: POST /v1/cluster with a node certificate: $code $(head -c 200 "$TM_TMP/alpha-id/body")"
code=$(as_alpha /v1/relay -H 'Connection: Upgrade' -H 'Upgrade: tm-coord-link/1')
assert_eq "$code" 403 "alpha's node certificate on the coordinator link upgrade"
log "ok: link upgrade with a node certificate: $code $(head -c 200 "$TM_TMP/alpha-id/body")"
assert_eq "$(digest_of ca)" "$d0" "ca's state digest after the refused requests"

# --- kill -9 the first coordinator -----------------------------------------------------------
coordinators_seen_by() { # the addresses `coordinator.mesh` has on NODE, sorted, one line
    ns_exec "$1" dig +short +time=1 +tries=2 @127.0.0.53 -p 5353 coordinator.mesh A | sort | xargs
}
coordinators_are() { [[ $(coordinators_seen_by "$1") == "$2" ]]; } # for wait_for
CAIP=$(mesh_ip_of ca)
CBIP=$(mesh_ip_of cb)
BOTH=$(printf '%s\n' "$CAIP" "$CBIP" | sort | xargs)
assert_eq "$(coordinators_seen_by beta)" "$BOTH" "coordinator.mesh on beta, both coordinators up"
kill -KILL "$PID_ca" || fail "kill -9 ca"
wait "$PID_ca" 2>/dev/null
ping_ok alpha "$BIP" 3 || fail "alpha -> beta stopped with ca down"
conf gamma
start gamma gamma "$CB" --token "$TOKEN"
t_gamma=${EPOCHREALTIME/./}
GIP=$(mesh_ip_of gamma)
# The other members learn gamma and resolve its name within 5 s of its join (alpha must fail
# over from the dead ca to cb first).
resolves_gamma() { [[ $(ns_exec "$1" dig +short +time=1 +tries=1 @127.0.0.53 -p 5353 gamma.mesh A) == "$GIP" ]]; }
wait_for 5 "beta resolves gamma.mesh" resolves_gamma beta || fail "beta cannot resolve gamma.mesh"
wait_for 5 "alpha resolves gamma.mesh" resolves_gamma alpha || fail "alpha cannot resolve gamma.mesh"
ms=$(elapsed_ms "$t_gamma")
((ms <= 5000)) || fail "gamma.mesh resolved on both members only after $ms ms"
log "ok: beta and alpha resolve gamma.mesh to $GIP within $ms ms of its join"
# gamma's S3 key, issued by cb while ca is down, works there (awscli, gamma's own key only).
gcreds=$(ctl gamma s3 credentials --json) || fail "tmctl s3 credentials on gamma"
: >"$TM_TMP/aws-empty"
out=$(ns_exec gamma env AWS_ACCESS_KEY_ID="$(json_get 'd["access_key"]' <<<"$gcreds")" \
    AWS_SECRET_ACCESS_KEY="$(json_get 'd["secret_key"]' <<<"$gcreds")" AWS_DEFAULT_REGION=us-east-1 \
    AWS_CONFIG_FILE="$TM_TMP/aws-empty" AWS_SHARED_CREDENTIALS_FILE="$TM_TMP/aws-empty" \
    timeout 30 aws --endpoint-url "http://$CBIP:8080/s3" s3api list-buckets --output json 2>&1) ||
    fail "gamma's S3 key on cb with ca down: $out"
log "ok: gamma's S3 key (issued by cb, ca down) lists buckets on cb"
wait_for 10 "beta reaches gamma (joined through cb while ca is down)" ping_ok beta "$GIP" 1 ||
    fail "beta cannot reach gamma"
log "ok: with ca killed, alpha <-> beta works and gamma joined through cb"
# alpha joined through ca: it fails over to cb (learned from the netmap) and learns gamma.
wait_for 5 "alpha (joined through ca) reaches gamma via cb's netmap" ping_ok alpha "$GIP" 1 ||
    fail "alpha did not fail over to cb within 5 s: $(ctl alpha status --json)"
co=$(ctl alpha status --json | json_get 'd["mesh"]["coordinator"]')
[[ $co == *":8443" && $co != "$CA" ]] || fail "alpha's coordinator after the failover: $co"
log "ok: alpha failed over to $co"
wait_for 20 "coordinator.mesh on beta names only cb" coordinators_are beta "$CBIP" ||
    fail "coordinator.mesh on beta with ca down: $(coordinators_seen_by beta)"
log "ok: with ca down, coordinator.mesh on beta is $(coordinators_seen_by beta)"
start ca ca
wait_for 15 "ca catches up after its restart" same_state || fail "after the restart: $(nodes_of ca) / $(nodes_of cb)"
has_node ca gamma || fail "ca did not learn gamma"
log "ok: ca restarted and caught up: node list identical"
wait_for 20 "coordinator.mesh on beta names both again" coordinators_are beta "$BOTH" ||
    fail "coordinator.mesh on beta after ca's restart: $(coordinators_seen_by beta)"

# --- a coordinator cut off mid-poll (packets dropped, no reset) -------------------------------
# alpha long-polls cb since ca was killed; with cb's API blackholed for alpha (its LAN and mesh
# addresses), TCP keepalive ends the open poll (tm_coord::DEAD_CONNECTION_AFTER, 4 s) and alpha
# moves to the restarted ca within 5 s.
coordinator_of() { ctl "$1" status --json | json_get 'd["mesh"]["coordinator"]'; }
on_cb() { local co=$1; [[ $co == 192.0.2.2:* || $co == "$CBIP":* ]]; }
co=$(coordinator_of alpha)
on_cb "$co" || fail "alpha was expected to poll cb after ca's kill, polls $co"
for ip in 192.0.2.2 "$CBIP"; do
    ns_exec alpha iptables -A OUTPUT -p tcp -d "$ip" --dport 8443 -j DROP
    ns_exec alpha iptables -A INPUT -p tcp -s "$ip" --sport 8443 -j DROP
done
t0=$EPOCHREALTIME
left_cb() { ! on_cb "$(coordinator_of alpha)"; }
wait_for 10 "alpha leaves the cut-off cb" left_cb || fail "alpha still polls cb: $(coordinator_of alpha)"
ms=$(elapsed_ms "${t0/./}")
log "ok: alpha moved from cb ($co) to $(coordinator_of alpha) after $ms ms with cb cut off mid-poll"
((ms <= 6000)) || fail "alpha took $ms ms to leave a coordinator cut off mid-poll (want <= 5 s)"
ns_exec alpha iptables -F OUTPUT
ns_exec alpha iptables -F INPUT

# --- partition and heal ----------------------------------------------------------------------
cut() { # cut NS ADDR... : blackhole ADDRs from NS (add) or undo (del with CUT_OP=del)
    local ns=$1 a
    shift
    for a in "$@"; do ns_exec "$ns" ip route "${CUT_OP:-add}" blackhole "$a/32" || return 1; done
}
side_a=(192.0.2.1 192.0.2.3 192.0.2.6) # ca alpha web1
side_b=(192.0.2.2 192.0.2.4 192.0.2.7) # cb beta web2
partition() {
    for n in ca alpha web1; do cut "$n" "${side_b[@]}" || return 1; done
    for n in cb beta web2; do cut "$n" "${side_a[@]}" || return 1; done
}
partition || fail "partition"
conf web1
printf 'name: web\n' >>"$TM_TMP/web1/config.yaml"
sed -i '1d' "$TM_TMP/web1/config.yaml"
conf web2
printf 'name: web\n' >>"$TM_TMP/web2/config.yaml"
sed -i '1d' "$TM_TMP/web2/config.yaml"
ns_spawn web1 web1.log env HOME="$TM_TMP/web1/home" "$TM_BIN" join "$CA" --token "$TOKEN" --config "$TM_TMP/web1/config.yaml"
wait_for 25 "web (1) ready" ready web1 || fail "web via ca did not come up"
ns_spawn web2 web2.log env HOME="$TM_TMP/web2/home" "$TM_BIN" join "$CB" --token "$TOKEN" --config "$TM_TMP/web2/config.yaml"
wait_for 25 "web (2) ready" ready web2 || fail "web via cb did not come up"
[[ $(digest_of ca) != "$(digest_of cb)" ]] || fail "the partition did not separate the coordinators"
CUT_OP=del partition || fail "heal"
wait_for 20 "the coordinators converge after the heal" same_state || fail "after the heal: $(nodes_of ca) / $(nodes_of cb)"
list=$(nodes_of ca)
[[ $list == *'"web",'* && $list == *'"web-2",'* ]] || fail "expected web and web-2 after the heal: $list"
n_ips=$(python3 -c 'import json,sys; l=json.loads(sys.argv[1]); print(len({x[1] for x in l}) == len(l))' "$list")
assert_eq "$n_ips" True "mesh addresses unique after the heal"
log "ok: partition healed: $list"
# The renamed node itself follows: its status shows the name the mesh gave it.
own_name() { [[ $(ctl "$1" status --json | json_get 'd["name"]') == "$2" ]]; }
wait_for 10 "web2 calls itself web-2" own_name web2 web-2 ||
    fail "web2's own name after the heal: $(ctl web2 status --json | json_get 'd["name"]')"
own_name web1 web || fail "web1 was renamed too"
grep -q 'renamed this node from "web" to "web-2"' "$TM_TMP/web2.log" || fail "web2's log does not say it was renamed"
log "ok: the renamed node knows it is web-2"
pass
