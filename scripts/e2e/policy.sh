#!/usr/bin/env bash
# The mesh policy end to end: a coordinator and two members (alpha, beta) in network namespaces,
# stock clients (awscli, libnfs-utils) through the tunnels. Checks:
#   - without a policy, `tmctl status` says "no policy: all members allowed" and members use S3
#   - `policy check` and `policy set` refuse a broken file (file:line:col) and a file whose own
#     test fails (the assertion and the decision); nothing changes
#   - `policy set examples/policy.hujson` (the seed's example), then `node tag beta
#     tag:untrusted`: within 2 s beta's S3 PUT is AccessDenied and its GET works, beta's NFS
#     mount is refused while alpha's works; `node untag` gives it back
#   - admin and bucket commands on a member are forwarded to the coordinator over mTLS and
#     decided there: alpha (admin in the example) tags beta, lists buckets and sets a share's
#     squashing; beta's attempts are refused with the missing capability
#   - `policy explain` names the deciding rule; `policy get` prints the file; members see the
#     policy hash in their status; the audit log has the policy change with its hash
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
source "$(dirname "$0")/../lib/mesh.sh"
tm_init policy 240
require_tm_binaries
command -v aws >/dev/null || fail "awscli missing (run scripts/install-test-deps.sh)"
command -v nfs-ls >/dev/null || fail "nfs-ls missing (libnfs-utils; run scripts/install-test-deps.sh)"
REPO=$(cd "$(dirname "$0")/../.." && pwd)

lan_create coord alpha beta
COORD=192.0.2.1:8443

start() { # start NS NAME ARGS...
    local ns=$1 n=$2
    shift 2
    ns_spawn "$ns" "$n.log" env HOME="$TM_TMP/$n/home" TUNNELMESH_LOG="${TM_RUST_LOG:-info}" \
        "$TM_BIN" join "$@" --config "$TM_TMP/$n/config.yaml"
    wait_for 20 "$n ready" ready "$n" || fail "$n did not come up (see $n.log)"
}
: >"$TM_TMP/aws-empty"
aws_as() { # aws_as NODE ARGS... : awscli in NODE's namespace with NODE's own S3 key
    local n=$1
    shift
    local c
    c=$(ctl "$n" s3 credentials --json) || fail "tmctl s3 credentials on $n"
    ns_exec "$n" env AWS_ACCESS_KEY_ID="$(json_get 'd["access_key"]' <<<"$c")" \
        AWS_SECRET_ACCESS_KEY="$(json_get 'd["secret_key"]' <<<"$c")" \
        AWS_DEFAULT_REGION=us-east-1 AWS_CONFIG_FILE="$TM_TMP/aws-empty" \
        AWS_SHARED_CREDENTIALS_FILE="$TM_TMP/aws-empty" AWS_EC2_METADATA_DISABLED=true \
        timeout 60 aws --endpoint-url "http://$CIP:8080/s3" "$@" 2>&1
}
nfs_ls() { # nfs_ls NODE : lists the default share from NODE's namespace
    ns_exec "$1" timeout 20 nfs-ls "nfs://$CIP/shares/default/?version=3&nfsport=2049&mountport=2049" 2>&1
}
put_denied() { # put_denied NODE : the node's PUT is refused with AccessDenied
    local out
    out=$(aws_as "$1" s3 cp "$TM_TMP/obj.txt" s3://build-artifacts/x.tar) && return 1
    [[ $out == *AccessDenied* ]]
}
put_ok() { aws_as "$1" s3 cp "$TM_TMP/obj.txt" s3://build-artifacts/x.tar >/dev/null; }

# --- a mesh without a policy -----------------------------------------------------------------
conf coord 'coordinator: {enabled: true, listen: ":8443"}
'
start coord coord
TOKEN=$(ctl coord token) || fail "tmctl token"
for n in alpha beta; do
    conf "$n"
    start "$n" "$n" "$COORD" --token "$TOKEN"
done
CIP=$(mesh_ip_of coord)
for n in alpha beta; do
    wait_for 15 "$n pings the coordinator" ping_ok "$n" "$CIP" 1 || fail "$n cannot reach $CIP"
done
tm coord bucket create build-artifacts >/dev/null || fail "bucket create"
echo "v1" >"$TM_TMP/obj.txt"
assert_eq "$(ctl coord status --json | json_get 'd["mesh"]["policy"]')" \
    "no policy: all members allowed" "coordinator status without a policy"
st=$(ctl coord status) || fail "tmctl status"
[[ $st == *"policy:      no policy: all members allowed"* ]] || fail "status text lacks the policy line: $st"
put_ok beta || fail "beta's PUT without a policy"
out=$(nfs_ls beta) || fail "beta's NFS listing without a policy: $out"
tm beta bucket create from-beta >/dev/null || fail "bucket create forwarded from beta (no policy: members create buckets)"
out=$(tm beta bucket list 2>&1) && fail "bucket list from beta (needs the admin capability): $out"
[[ $out == *"not allowed: tunnelmesh.io/cap/admin"* ]] || fail "bucket list from beta: unclear refusal: $out"
log "ok: no policy: members use S3 and NFS, and create buckets from their own node"

# --- refusals: nothing changes ---------------------------------------------------------------
before=$(tm coord policy get --json | json_get 'd["hash"]') || fail "policy get"
printf '{\n  "default": "allow",\n  "grants": [,\n}\n' >"$TM_TMP/broken.hujson"
out=$(tm coord policy set "$TM_TMP/broken.hujson" 2>&1) && fail "a broken file was accepted: $out"
[[ $out == *"broken.hujson:3:"* ]] || fail "broken file: no file:line:col: $out"
sed 's/"op": "put"}, "expect": "deny"/"op": "put"}, "expect": "allow"/' "$REPO/examples/policy.hujson" >"$TM_TMP/failing.hujson"
out=$(tm coord policy check "$TM_TMP/failing.hujson" 2>&1) && fail "a failing test passed check: $out"
[[ $out == *"test failed"*"expected allow, got deny"* ]] || fail "failing test: unclear: $out"
out=$(tm coord policy set "$TM_TMP/failing.hujson" 2>&1) && fail "a file with a failing test was set: $out"
assert_eq "$(tm coord policy get --json | json_get 'd["hash"]')" "$before" "policy hash after refusals"
log "ok: broken file and failing test refused with their places; nothing changed"

# --- the seed's example ------------------------------------------------------------------------
out=$(tm coord policy check "$REPO/examples/policy.hujson") || fail "policy check: $out"
out=$(tm coord policy set "$REPO/examples/policy.hujson") || fail "policy set: $out"
log "policy set: $out"
HASH=$(tm coord policy get --json | json_get 'd["hash"]')
[[ $HASH == sha256:* && $HASH != "$before" ]] || fail "policy hash after set: $HASH"
tm coord policy get >"$TM_TMP/got.hujson" || fail "policy get"
cmp -s "$TM_TMP/got.hujson" "$REPO/examples/policy.hujson" || fail "policy get does not print the file as set"
member_has_hash() { [[ $(ctl alpha status --json | json_get 'd["mesh"]["policy"]') == *"$HASH"* ]]; }
wait_for 5 "alpha's status shows the policy hash" member_has_hash || fail "alpha's status lacks $HASH"
put_ok beta || fail "beta's PUT under the policy, untagged"

tm coord node tag beta tag:untrusted >/dev/null || fail "node tag"
wait_for 2 "beta's PUT is refused" put_denied beta || fail "beta's PUT still works 2 s after the tag"
aws_as beta s3 cp s3://build-artifacts/x.tar "$TM_TMP/got.txt" >/dev/null || fail "beta's GET under untrusted"
cmp -s "$TM_TMP/obj.txt" "$TM_TMP/got.txt" || fail "beta's GET returned other bytes"
out=$(aws_as beta s3 ls s3://build-artifacts/) || fail "beta's LIST under untrusted: $out"
[[ $out == *x.tar* ]] || fail "beta's LIST lacks x.tar: $out"
out=$(nfs_ls beta) && fail "beta listed the NFS share while untrusted: $out"
[[ $out == *ACCES* || $out == *"ermission"* || $out == *denied* ]] || fail "beta's mount: unclear refusal: $out"
out=$(nfs_ls alpha) || fail "alpha's NFS listing: $out"
put_ok alpha || fail "alpha's PUT"
log "ok: untrusted beta: PUT AccessDenied, GET and LIST work, NFS mount refused; alpha unaffected"

out=$(tm coord policy explain --src beta --s3 build-artifacts --op put) || fail "explain: $out"
log "explain: $out"
out=${out%%$'\n'*} # the decision; "also matches" lines follow
[[ $out == "deny (rule policy.hujson:"*"): not allowed: tunnelmesh.io/cap/s3 write on bucket build-artifacts" ]] ||
    fail "explain put: $out"
out=$(tm coord policy explain --src beta --nfs default --op mount) || fail "explain nfs: $out"
[[ $out == "deny (rule policy.hujson:"* ]] || fail "explain mount: $out"
out=$(tm coord policy explain --src alpha --admin) || fail "explain admin: $out"
[[ $out == "allow (rule policy.hujson:"* ]] || fail "explain admin for alpha: $out"
log "ok: explain names the deciding rules"

tm coord node untag beta tag:untrusted >/dev/null || fail "node untag"
wait_for 2 "beta's PUT works again" put_ok beta || fail "beta's PUT after untag"
out=$(nfs_ls beta) || fail "beta's NFS listing after untag: $out"
log "ok: untag gives beta its writes and mounts back"

# --- admin from members: forwarded over mTLS, decided by the policy ---------------------------
out=$(tm alpha node list --json) || fail "node list on alpha (admin by the policy): $out"
json_get '[n["name"] for n in d]' <<<"$out" | grep -q beta || fail "alpha's node list: $out"
out=$(tm beta node tag alpha tag:web 2>&1) && fail "beta (no admin capability) tagged alpha: $out"
[[ $out == *"not allowed: tunnelmesh.io/cap/admin"* ]] || fail "beta's admin refusal: $out"
tm alpha node tag beta tag:web >/dev/null || fail "alpha tags beta through the coordinator"
tm alpha node untag beta tag:web >/dev/null || fail "alpha untags beta"
out=$(tm beta bucket delete from-beta 2>&1) && fail "beta deleted a bucket without S3 admin: $out"
[[ $out == *"not allowed: tunnelmesh.io/cap/s3 admin on bucket from-beta"* ]] || fail "bucket delete from beta: $out"
out=$(tm alpha bucket list) || fail "bucket list forwarded from alpha (admin): $out"
[[ $out == *from-beta* ]] || fail "bucket list from alpha lacks from-beta: $out"
tm alpha share create squashed >/dev/null || fail "share create forwarded from alpha (admin)"
out=$(tm alpha share squash squashed root_squash) || fail "share squash forwarded from alpha (admin): $out"
[[ $out == "share squashed: root_squash (anonuid=65534, anongid=65534)" ]] || fail "share squash from alpha: $out"
out=$(tm beta share squash squashed no_root_squash 2>&1) && fail "beta (no admin) changed a share's squash: $out"
[[ $out == *"not allowed: tunnelmesh.io/cap/admin"* ]] || fail "share squash from beta: unclear refusal: $out"
log "ok: admin commands from alpha (granted) run on the coordinator; beta's are refused"

audit=$(tm coord audit --json) || fail "audit"
assert_eq "$(json_get '[e["who"] for e in d if e["action"] == "node.tag"][-1]' <<<"$audit")" \
    "node alpha" "who tagged beta from alpha"
assert_eq "$(json_get '[e["policy_hash"] for e in d if e["action"] == "policy.set"][0]' <<<"$audit")" \
    "$HASH" "the audit entry of policy set carries its hash"
pass
