#!/usr/bin/env bash
# Identity on a real mesh: a coordinator and two members (alpha, beta), plus short-lived
# joiners in a third namespace. Checks, with awscli and curl through the tunnels:
#   - a member cannot read _tunnelmesh/coordinator/state.json (nor list the bucket): AccessDenied
#   - a join to a blackholed coordinator says what it waits for within 2 s and ends with a
#     one-line error
#   - a node named `system` is refused at join with a clear message
#   - the seed login (access key = node name, secret = mesh token) works from that node's
#     mesh address only
#   - a tagged single-use token tags the node that joins with it and cannot be used twice
#   - `token revoke` stops joins and Bearer S3 with that token at once
#   - `token rotate` invalidates the old default token for joins, Bearer and the seed login;
#     joined nodes keep working and the new token works
#   - `node tag/untag` show in `node list`; `node remove beta` cuts beta's S3 key at once and
#     its tunnels within seconds
#   - `tunnelmesh audit --json` has every change, by local root
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
source "$(dirname "$0")/../lib/mesh.sh"
tm_init identity 240
require_tm_binaries
command -v aws >/dev/null || fail "awscli missing (run scripts/install-test-deps.sh)"
command -v curl >/dev/null || fail "curl missing (run scripts/install-test-deps.sh)"

lan_create coord alpha beta gamma
declare -A PID=()
COORD=192.0.2.1:8443

start() { # start NS NAME ARGS... : tunnelmesh join ARGS in namespace NS as node NAME
    local ns=$1 n=$2
    shift 2
    rm -f "$(sock "$n")"
    ns_spawn "$ns" "$n.log" env HOME="$TM_TMP/$n/home" TUNNELMESH_LOG="${TM_RUST_LOG:-info}" \
        "$TM_BIN" join "$@" --config "$TM_TMP/$n/config.yaml"
    PID[$n]=$TM_LAST_PID
    wait_for 20 "$n ready" ready "$n" || fail "$n did not come up (see $n.log)"
}
# try_join NS NAME TOKEN : a one-off join attempt by a fresh key; prints its last line.
try_join() {
    conf "$2"
    ns_exec "$1" env HOME="$TM_TMP/$2/home" timeout 20 "$TM_BIN" join "$COORD" \
        --token "$3" --name "$2" --config "$TM_TMP/$2/config.yaml" 2>&1 | tail -1
}
: >"$TM_TMP/aws-empty"
aws_in() { # aws_in NS AK SK ARGS... : awscli in a namespace with exactly these keys
    local ns=$1 ak=$2 sk=$3
    shift 3
    ns_exec "$ns" env AWS_ACCESS_KEY_ID="$ak" AWS_SECRET_ACCESS_KEY="$sk" \
        AWS_DEFAULT_REGION=us-east-1 AWS_CONFIG_FILE="$TM_TMP/aws-empty" \
        AWS_SHARED_CREDENTIALS_FILE="$TM_TMP/aws-empty" AWS_EC2_METADATA_DISABLED=true \
        timeout 60 aws --endpoint-url "http://$CIP:8080/s3" "$@" 2>&1
}
bearer_code() { # bearer_code NS TOKEN : HTTP status of a bucket listing with Bearer TOKEN
    ns_exec "$1" curl -s --max-time 10 -o "$TM_TMP/bearer.out" -w '%{http_code}' \
        -H "Authorization: Bearer $2" "http://$CIP:8080/s3/shared/"
}

# --- coordinator and two members ------------------------------------------------------------
conf coord 'coordinator: {enabled: true, listen: ":8443"}
'
start coord coord
TOKEN=$(ctl coord token) || fail "tmctl token"
[[ $TOKEN == tm1_* ]] || fail "tmctl token printed '$TOKEN'"

# a coordinator that does not answer (its address blackholed): the join says what it waits for
# within 2 s and ends with a one-line error (in seconds, not the 40 s of a long poll)
mkdir -p "$TM_TMP/silent"
printf 'name: silent\ndata_dir: %s\n' "$TM_TMP/silent" >"$TM_TMP/silent/config.yaml"
ns_exec gamma iptables -A OUTPUT -d 192.0.2.1 -p tcp --dport 9443 -j DROP || fail "iptables in gamma"
ns_spawn gamma silent.log env HOME="$TM_TMP/silent" "$TM_BIN" join 192.0.2.1:9443 \
    --token "$TOKEN" --config "$TM_TMP/silent/config.yaml"
SILENT_PID=$TM_LAST_PID
wait_for 2 "the join says what it waits for" grep -q "waiting for the coordinator at 192.0.2.1:9443" \
    "$TM_TMP/silent.log" || fail "a join to a silent coordinator said nothing within 2 s: $(cat "$TM_TMP/silent.log")"
wait_for 15 "the join to a silent coordinator ends" bash -c "! kill -0 $SILENT_PID" ||
    fail "a join to a silent coordinator still runs after 15 s"
wait "$SILENT_PID" && fail "a join to a silent coordinator exited 0"
last=$(tail -n 1 "$TM_TMP/silent.log")
[[ $last == "tunnelmesh: joining 192.0.2.1:9443: "*"no answer within"* ]] ||
    fail "a join to a silent coordinator did not end with a one-line error: $(cat "$TM_TMP/silent.log")"
log "ok: a join to a silent coordinator says what it waits for, then: $last"

out=$(try_join gamma system "$TOKEN")
log "join as system: $out"
[[ $out == "tunnelmesh: "*system*reserved* ]] || fail "a node named system: unclear or no refusal: $out"
[[ -z $(ctl coord node list --json | json_get "[n for n in d if n['name'] == 'system']" | tr -d '[]') ]] ||
    fail "a node named system is in the mesh"

for n in alpha beta; do
    conf "$n"
    start "$n" "$n" "$COORD" --token "$TOKEN"
done
CIP=$(mesh_ip_of coord)
declare -A IP=([alpha]=$(mesh_ip_of alpha) [beta]=$(mesh_ip_of beta))
for n in alpha beta; do
    wait_for 15 "$n pings the coordinator" ping_ok "$n" "$CIP" 1 || fail "$n cannot reach $CIP"
done
wait_for 15 "alpha pings beta" ping_ok alpha "${IP[beta]}" 1 || fail "alpha cannot reach beta"
tm coord bucket create shared >/dev/null || fail "bucket create"

# --- the system bucket is private ----------------------------------------------------------
creds=$(ctl alpha s3 credentials --json) || fail "tmctl s3 credentials on alpha"
AK=$(json_get 'd["access_key"]' <<<"$creds")
SK=$(json_get 'd["secret_key"]' <<<"$creds")
out=$(aws_in alpha "$AK" "$SK" s3 cp s3://_tunnelmesh/coordinator/state.json "$TM_TMP/stolen.json") &&
    fail "alpha read the coordinator state: $out"
[[ $out == *AccessDenied* || $out == *403* ]] || fail "state.json GET: expected AccessDenied, got: $out"
[[ ! -s $TM_TMP/stolen.json ]] || fail "state.json was written locally"
out=$(aws_in alpha "$AK" "$SK" s3 ls s3://_tunnelmesh/) && fail "alpha listed _tunnelmesh: $out"
[[ $out == *AccessDenied* ]] || fail "_tunnelmesh LIST: expected AccessDenied, got: $out"
aws_in alpha "$AK" "$SK" s3 ls >"$TM_TMP/ls.out" || fail "aws s3 ls with alpha's key: $(cat "$TM_TMP/ls.out")"
grep -q _tunnelmesh "$TM_TMP/ls.out" && fail "_tunnelmesh listed to a member"
log "ok: alpha gets AccessDenied for GET/LIST of _tunnelmesh; own key works"

# --- the seed login: access key = node name, secret = the token, from that node only --------
aws_in alpha alpha "$TOKEN" s3 ls s3://shared/ >"$TM_TMP/seed.out" ||
    fail "seed login from alpha: $(cat "$TM_TMP/seed.out")"
out=$(aws_in beta alpha "$TOKEN" s3 ls s3://shared/) && fail "seed login as alpha from beta worked: $out"
[[ $out == *AccessDenied* || $out == *InvalidAccessKeyId* ]] || fail "seed login from beta: $out"
log "ok: seed login as alpha works from alpha's mesh address only"

# --- tokens: tagged single-use, revoke ------------------------------------------------------
new=$(tm coord token create --tag tag:ci --json) || fail "token create"
T1=$(json_get 'd["token"]' <<<"$new")
T1ID=$(json_get 'd["info"]["id"]' <<<"$new")
ctl coord token list --json | grep -q "tm1_" && fail "token list shows a token text"
conf gamma
start gamma gamma "$COORD" --token "$T1"
assert_eq "$(ctl coord node list --json | json_get "[n['tags'] for n in d if n['name'] == 'gamma'][0]")" \
    '["tag:ci"]' "tags of the node that joined with the tagged token"
out=$(try_join gamma delta "$T1")
log "second use of a single-use token: $out"
[[ $out == *single-use* ]] || fail "single-use token used twice: $out"
stop_pid "${PID[gamma]}" TERM 10

new=$(tm coord token create --reusable --json) || fail "token create --reusable"
T2=$(json_get 'd["token"]' <<<"$new")
T2ID=$(json_get 'd["info"]["id"]' <<<"$new")
assert_eq "$(bearer_code alpha "$T2")" 200 "Bearer S3 with a fresh token"
tm coord token revoke "$T2ID" >/dev/null || fail "token revoke"
assert_eq "$(bearer_code alpha "$T2")" 403 "Bearer S3 with a revoked token"
grep -q revoked "$TM_TMP/bearer.out" || fail "revoked Bearer: no reason given: $(cat "$TM_TMP/bearer.out")"
out=$(try_join gamma epsilon "$T2")
log "join with a revoked token: $out"
[[ $out == *revoked* ]] || fail "join with a revoked token: $out"

# --- rotate ---------------------------------------------------------------------------------
assert_eq "$(bearer_code alpha "$TOKEN")" 200 "Bearer S3 with the default token"
rot=$(tm coord token rotate --json) || fail "token rotate"
NEW=$(json_get 'd["token"]' <<<"$rot")
[[ $NEW == tm1_* && $NEW != "$TOKEN" ]] || fail "rotate printed '$NEW'"
assert_eq "$(ctl coord token)" "$NEW" "tmctl token after rotate"
assert_eq "$(bearer_code alpha "$TOKEN")" 403 "Bearer S3 with the old default token"
assert_eq "$(bearer_code alpha "$NEW")" 200 "Bearer S3 with the new default token"
out=$(aws_in alpha alpha "$TOKEN" s3 ls s3://shared/) && fail "seed login with the old token worked"
aws_in alpha alpha "$NEW" s3 ls s3://shared/ >/dev/null || fail "seed login with the new token"
out=$(try_join gamma zeta "$TOKEN")
log "join with the rotated-out token: $out"
[[ $out == *revoked* ]] || fail "join with the old default token: $out"
run_step "alpha still reaches beta after the rotation" ping_ok alpha "${IP[beta]}" 2

# --- tags and removal -----------------------------------------------------------------------
tm coord node tag beta tag:untrusted >/dev/null || fail "node tag"
assert_eq "$(ctl coord node list --json | json_get "[n['tags'] for n in d if n['name'] == 'beta'][0]")" \
    '["tag:untrusted"]' "beta's tags"
out=$(tm coord node tag beta untrusted 2>&1) && fail "a tag without tag: was accepted"
[[ $out == *"tag:"* ]] || fail "bad tag: unclear error: $out"
tm coord node untag beta tag:untrusted >/dev/null || fail "node untag"
out=$(ctl alpha node list 2>&1) && fail "node list answered on a member"
[[ $out == *"not allowed: tunnelmesh.io/cap/admin"* ]] || fail "admin command on a member: unclear error: $out"

bcreds=$(ctl beta s3 credentials --json) || fail "tmctl s3 credentials on beta"
BAK=$(json_get 'd["access_key"]' <<<"$bcreds")
BSK=$(json_get 'd["secret_key"]' <<<"$bcreds")
# (beta's keys are tried from alpha: beta's own tunnel to the coordinator goes away too)
aws_in alpha "$BAK" "$BSK" s3 ls s3://shared/ >/dev/null || fail "beta's key before removal"
tm coord node remove beta >/dev/null || fail "node remove beta"
out=$(aws_in alpha "$BAK" "$BSK" s3 ls s3://shared/) && fail "beta's S3 key works after removal"
[[ $out == *InvalidAccessKeyId* ]] || fail "beta's key after removal: $out"
log "ok: beta's S3 key refused right after node remove"
gone() { ! ctl alpha peers --json | grep -q '"beta"'; }
wait_for 5 "beta gone from alpha's peers" gone || fail "beta still a peer of alpha after removal"
wait_for 10 "alpha cannot reach beta" sh -c "! ip netns exec '$(ns_name alpha)' ping -c1 -W1 -q '${IP[beta]}' >/dev/null" ||
    fail "alpha still reaches beta after its removal"
log "ok: beta's tunnels are gone"

# --- audit ----------------------------------------------------------------------------------
audit=$(tm coord audit --json) || fail "audit"
acts=$(json_get '" ".join(e["action"] + ":" + e["target"] for e in d)' <<<"$audit")
log "audit: $acts"
for want in "token.create:$T1ID" "token.create:$T2ID" "token.revoke:$T2ID" "token.rotate:" \
    "node.tag:beta" "node.untag:beta" "node.remove:beta"; do
    [[ " $acts" == *" $want"* ]] || fail "audit lacks $want"
done
assert_eq "$(json_get 'all(e["who"] == "local root" for e in d)' <<<"$audit")" true "audit actor"
pass
