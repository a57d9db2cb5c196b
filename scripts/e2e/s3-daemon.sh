#!/usr/bin/env bash
# The object store through the daemon: one node with `s3: {listen: 127.0.0.1:PORT}` in its own
# namespace. `tunnelmesh bucket ...` (control socket) manages buckets; awscli (a client nobody
# here wrote) uses the keys from `tmctl s3 credentials --json`:
#   - create/list buckets with the CLI, see them in `aws s3 ls`
#   - cp up and down (a 20 MiB multipart file and a small one) byte-identical; usage exact
#   - quota set: a PUT that does not fit is refused with QuotaExceeded, nothing is stored,
#     usage unchanged to the byte; one that fits still works; a quota below the usage is
#     refused with the usage in the message (nothing changes), and accepted with --force,
#     which says the bucket is now over quota
#   - wrong HTTP Basic secret: AccessDenied; unknown Basic access key: InvalidAccessKeyId;
#     a Bearer token on a node without a coordinator: AccessDenied
#   - writes/deletes in the reserved bucket `_tunnelmesh` get AccessDenied
#   - delete refuses a non-empty bucket, works once it is empty
#   - `tunnelmesh share create/list/delete` with --quota and --read-only, checked through the
#     node's NFS server (`nfs: {listen: 127.0.0.1:2049}`) with libnfs-utils: a read-only share
#     refuses nfs-cp, a quota share refuses a file that does not fit and stores nothing, one
#     that fits reads back identical over NFS and over S3; `share squash` root_squash stops
#     root's writes in a root-owned directory; a deleted share is no longer listed
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
tm_init s3-daemon 180

command -v aws >/dev/null || fail "awscli missing (run scripts/install-test-deps.sh)"
for t in nfs-cp nfs-cat; do
    command -v "$t" >/dev/null || fail "$t missing (libnfs-utils; run scripts/install-test-deps.sh)"
done
PORT=${TM_S3_PORT:-9000}
BUCKET=e2e-artifacts

ns_create a
node_new a tm 1
NODE_EXTRA[a]="s3: {listen: 127.0.0.1:$PORT, max_size: 1GB}
nfs: {listen: 127.0.0.1:2049}"
node_up a
wait_for 10 "S3 listener on 127.0.0.1:$PORT" \
    ns_exec a sh -c "ss -Hltn 'sport = :$PORT' | grep -q ." || fail "S3 endpoint not listening"

# `tunnelmesh bucket ...` talks to the daemon over its control socket.
tmb() { TUNNELMESH_SOCKET=$(node_sock a) timeout 10 "$TM_BIN" bucket "$@"; }
usage_of() {
    local out
    out=$(tmb usage "$1" --json) || fail "tunnelmesh bucket usage $1 failed"
    json_get "$2" <<<"$out"
}

creds=$(tmctl_for a s3 credentials --json) || fail "tmctl s3 credentials --json failed"
AK=$(json_get 'd["access_key"]' <<<"$creds")
SK=$(json_get 'd["secret_key"]' <<<"$creds")
EP=$(json_get 'd["endpoint"]' <<<"$creds")
assert_eq "$EP" "http://127.0.0.1:$PORT/s3" "endpoint reported by tmctl s3 credentials"
[[ ${#SK} -ge 20 ]] || fail "secret key too short: '${#SK}' chars"

# awscli inside the node's namespace, with only these keys (no ~/.aws of the caller).
: >"$TM_TMP/aws-empty"
s3() {
    ns_exec a env AWS_ACCESS_KEY_ID="$AK" AWS_SECRET_ACCESS_KEY="$SK" AWS_DEFAULT_REGION=us-east-1 \
        AWS_CONFIG_FILE="$TM_TMP/aws-empty" AWS_SHARED_CREDENTIALS_FILE="$TM_TMP/aws-empty" \
        timeout 60 aws --endpoint-url "$EP" "$@"
}

# --- buckets through the CLI
run_step "tunnelmesh bucket create $BUCKET" tmb create "$BUCKET"
if tmb create "$BUCKET" >"$TM_TMP/dup.out" 2>&1; then fail "creating $BUCKET twice succeeded"; fi
log "ok: second create refused: $(head -c 200 "$TM_TMP/dup.out")"
list=$(tmb list --json) || fail "tunnelmesh bucket list --json"
assert_eq "$(json_get "[b['objects'] for b in d if b['name'] == '$BUCKET']" <<<"$list")" "[0]" \
    "objects in $BUCKET right after create"
s3 s3 ls >"$TM_TMP/ls.out" 2>&1 || fail "aws s3 ls: $(tail -3 "$TM_TMP/ls.out")"
grep -q " $BUCKET\$" "$TM_TMP/ls.out" || fail "aws s3 ls does not show $BUCKET: $(cat "$TM_TMP/ls.out")"

# --- copy up and down
make_blob "$TM_TMP/big" 20
head -c 12345 /dev/urandom >"$TM_TMP/small"
run_step "aws s3 cp 20 MiB up (multipart)" s3 s3 cp --only-show-errors "$TM_TMP/big" "s3://$BUCKET/v1.0/big.bin"
run_step "aws s3 cp 12345 B up" s3 s3 cp --only-show-errors "$TM_TMP/small" "s3://$BUCKET/v1.0/small.bin"
run_step "aws s3 cp 20 MiB down" s3 s3 cp --only-show-errors "s3://$BUCKET/v1.0/big.bin" "$TM_TMP/big.down"
run_step "aws s3 cp 12345 B down" s3 s3 cp --only-show-errors "s3://$BUCKET/v1.0/small.bin" "$TM_TMP/small.down"
cmp -s "$TM_TMP/big" "$TM_TMP/big.down" || fail "20 MiB object differs after the round trip"
cmp -s "$TM_TMP/small" "$TM_TMP/small.down" || fail "small object differs after the round trip"
log "ok: both objects byte-identical after cp up and down"
etag=$(s3 s3api head-object --bucket "$BUCKET" --key v1.0/big.bin --query ETag --output text) ||
    fail "head-object big.bin"
[[ $etag == *-3\"* || $etag == *-3 ]] || fail "multipart ETag of 20 MiB (3 x 8 MiB parts) expected md5-3, got $etag"

used=$((20 * 1024 * 1024 + 12345))
assert_eq "$(usage_of "$BUCKET" 'd["used_bytes"]')" "$used" "usage bytes after two uploads"
assert_eq "$(usage_of "$BUCKET" 'd["objects"]')" 2 "usage objects after two uploads"

# --- quota: 1 MB left; a 2 MiB PUT is refused, nothing stored; 500 KB still fits
quota=$((used + 1000000))
run_step "tunnelmesh bucket quota set $BUCKET ${quota}B" tmb quota set "$BUCKET" "${quota}B"
assert_eq "$(usage_of "$BUCKET" 'd["quota_bytes"]')" "$quota" "quota reported by usage"
head -c $((2 * 1024 * 1024)) /dev/urandom >"$TM_TMP/over"
if s3 s3 cp --only-show-errors "$TM_TMP/over" "s3://$BUCKET/over.bin" >"$TM_TMP/over.out" 2>&1; then
    fail "a 2 MiB PUT over the quota succeeded"
fi
grep -q "QuotaExceeded" "$TM_TMP/over.out" || fail "over-quota PUT: expected QuotaExceeded, got: $(cat "$TM_TMP/over.out")"
log "ok: over-quota PUT refused: $(grep -o 'An error occurred.*' "$TM_TMP/over.out" | head -c 160)"
if s3 s3api head-object --bucket "$BUCKET" --key over.bin >"$TM_TMP/head-over.out" 2>&1; then
    fail "the refused object exists"
fi
grep -q "404" "$TM_TMP/head-over.out" || fail "head of refused object: expected 404, got $(cat "$TM_TMP/head-over.out")"
assert_eq "$(usage_of "$BUCKET" 'd["used_bytes"]')" "$used" "usage bytes after the refused PUT"
assert_eq "$(usage_of "$BUCKET" 'd["objects"]')" 2 "usage objects after the refused PUT"
head -c 500000 /dev/urandom >"$TM_TMP/fits"
run_step "500 KB PUT within the quota" s3 s3 cp --only-show-errors "$TM_TMP/fits" "s3://$BUCKET/fits.bin"
assert_eq "$(usage_of "$BUCKET" 'd["used_bytes"]')" "$((used + 500000))" "usage bytes after a PUT that fits"
assert_eq "$(usage_of "$BUCKET" 'd["objects"]')" 3 "usage objects after a PUT that fits"

# --- a quota below the usage: refused with the usage, or accepted with --force
now=$((used + 500000))
if tmb quota set "$BUCKET" 1MB >"$TM_TMP/qlow.out" 2>&1; then fail "a quota below the usage was accepted"; fi
log "ok: $(cat "$TM_TMP/qlow.out")"
assert_eq "$(wc -l <"$TM_TMP/qlow.out")" 1 "lines of the refusal"
grep -q "^tunnelmesh: quota 976.6 KiB (1000000 bytes) is below the usage of bucket '$BUCKET': 20.5 MiB ($now bytes in 3 objects); .* --force" \
    "$TM_TMP/qlow.out" || fail "refusal message: $(cat "$TM_TMP/qlow.out")"
assert_eq "$(usage_of "$BUCKET" 'd["quota_bytes"]')" "$quota" "quota after the refusal"
out=$(tmb quota set "$BUCKET" 1MB --force) || fail "quota set --force: $out"
log "ok: $out"
grep -q "^bucket $BUCKET is now over quota: it holds 20.5 MiB ($now bytes)" <<<"$out" || fail "--force message: $out"
assert_eq "$(usage_of "$BUCKET" 'd["quota_bytes"]')" 1000000 "quota after --force"
if TUNNELMESH_SOCKET=$(node_sock a) timeout 10 "$TM_BIN" share create "$BUCKET" --quota 1MB >"$TM_TMP/sq.out" 2>&1; then
    fail "share create adopted $BUCKET with a quota below its usage"
fi
grep -q "is below the usage of bucket '$BUCKET': 20.5 MiB" "$TM_TMP/sq.out" || fail "share create refusal: $(cat "$TM_TMP/sq.out")"

# --- wrong HTTP Basic / Bearer credentials (curl, as the article's clients do)
s3code() { ns_exec a curl -s "$@" "$EP/$BUCKET/fits.bin" | grep -o '<Code>[A-Za-z]*</Code><Message>[^<]*'; }
assert_eq "$(s3code -u "$AK:wrong")" "<Code>AccessDenied</Code><Message>wrong secret for access key $AK" "Basic, wrong secret"
assert_eq "$(s3code -u "NOPE:x")" "<Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records." "Basic, unknown access key"
assert_eq "$(s3code -H 'Authorization: Bearer tm1_nope')" "<Code>AccessDenied</Code><Message>Bearer tokens are accepted only by the S3 of a mesh coordinator" "Bearer without a coordinator"
ns_exec a curl -sf -u "$AK:$SK" -o "$TM_TMP/fits.basic" "$EP/$BUCKET/fits.bin" || fail "Basic with the right secret"
cmp -s "$TM_TMP/fits" "$TM_TMP/fits.basic" || fail "Basic GET returned other bytes"

# --- the reserved system bucket
if s3 s3 cp --only-show-errors "$TM_TMP/small" "s3://_tunnelmesh/evil" >"$TM_TMP/sys.out" 2>&1; then
    fail "a peer wrote into _tunnelmesh"
fi
grep -q "AccessDenied" "$TM_TMP/sys.out" || fail "_tunnelmesh write: expected AccessDenied, got: $(cat "$TM_TMP/sys.out")"
log "ok: _tunnelmesh write refused with AccessDenied"
if s3 s3api delete-bucket --bucket _tunnelmesh >"$TM_TMP/sysdel.out" 2>&1; then
    fail "a peer deleted _tunnelmesh"
fi
grep -q "AccessDenied" "$TM_TMP/sysdel.out" || fail "_tunnelmesh delete: expected AccessDenied, got: $(cat "$TM_TMP/sysdel.out")"
log "ok: _tunnelmesh delete refused with AccessDenied"

# --- clear the quota, delete
run_step "tunnelmesh bucket quota clear $BUCKET" tmb quota clear "$BUCKET"
assert_eq "$(usage_of "$BUCKET" 'd["quota_bytes"]')" "null" "quota after clear"
if tmb delete "$BUCKET" >"$TM_TMP/del1.out" 2>&1; then fail "deleting a non-empty bucket succeeded"; fi
log "ok: non-empty delete refused: $(head -c 200 "$TM_TMP/del1.out")"
run_step "aws s3 rm --recursive" s3 s3 rm --only-show-errors --recursive "s3://$BUCKET/"
assert_eq "$(usage_of "$BUCKET" 'd["used_bytes"]')" 0 "usage bytes after rm"
run_step "tunnelmesh bucket delete $BUCKET" tmb delete "$BUCKET"
list=$(tmb list --json) || fail "tunnelmesh bucket list --json"
assert_eq "$(json_get "[b['name'] for b in d if b['name'] == '$BUCKET']" <<<"$list")" "[]" \
    "$BUCKET gone from bucket list"

# --- NFS shares through the CLI
tms() { TUNNELMESH_SOCKET=$(node_sock a) timeout 10 "$TM_BIN" share "$@"; }
nfsurl() { printf 'nfs://127.0.0.1/shares/%s%s?version=3&nfsport=2049&mountport=2049' "$1" "$2"; }
wait_for 10 "NFS listener on 127.0.0.1:2049" \
    ns_exec a sh -c "ss -Hltn 'sport = :2049' | grep -q ." || fail "NFS endpoint not listening"
run_step "tunnelmesh share create media --read-only" tms create media --read-only
run_step "tunnelmesh share create small --quota 100KB" tms create small --quota 100KB
shares=$(tms list --json) || fail "tunnelmesh share list --json"
assert_eq "$(json_get "sorted((x['name'], x['export'], x['read_only'], x['quota_bytes']) for x in d if x['name'] in ('media', 'small'))" <<<"$shares")" \
    '[["media", "/shares/media", true, null], ["small", "/shares/small", false, 100000]]' "share list"
head -c 50000 /dev/urandom >"$TM_TMP/fits"
head -c 200000 /dev/urandom >"$TM_TMP/toobig"
if ns_exec a nfs-cp "$TM_TMP/fits" "$(nfsurl media /f.bin)" >"$TM_TMP/ro.out" 2>&1; then
    fail "nfs-cp into the read-only share succeeded"
fi
log "ok: read-only share refused nfs-cp: $(head -c 200 "$TM_TMP/ro.out" | tr '\n' ' ')"
if ns_exec a nfs-cp "$TM_TMP/toobig" "$(nfsurl small /big.bin)" >"$TM_TMP/q.out" 2>&1; then
    fail "nfs-cp of 200 KB into a 100 KB share succeeded"
fi
log "ok: over-quota nfs-cp refused: $(head -c 200 "$TM_TMP/q.out" | tr '\n' ' ')"
# (nfs-cp does not print a WRITE's status; storage/nfs/tests/nfs.rs checks NFS3ERR_DQUOT.)
assert_eq "$(usage_of small 'd["used_bytes"]')" 0 "bytes stored by the refused write"
run_step "nfs-cp 50 KB into the quota share" ns_exec a nfs-cp "$TM_TMP/fits" "$(nfsurl small /fits.bin)"
ns_exec a nfs-cat "$(nfsurl small /fits.bin)" >"$TM_TMP/fits.nfs" || fail "nfs-cat fits.bin"
cmp -s "$TM_TMP/fits" "$TM_TMP/fits.nfs" || fail "nfs-cat returned different bytes"
s3 s3 cp --only-show-errors s3://small/fits.bin "$TM_TMP/fits.s3" || fail "aws s3 cp of the NFS file"
cmp -s "$TM_TMP/fits" "$TM_TMP/fits.s3" || fail "the NFS file differs over S3"
log "ok: file written over NFS is the same object over S3"
# Identity squashing (exports(5)): with root_squash, root (libnfs's default uid 0) is nobody,
# who may not write in the share's root-owned 0755 top directory; no_root_squash again: it may.
run_step "tunnelmesh share squash small root_squash" tms squash small root_squash
assert_eq "$(tms list --json | json_get "[x['squash'] for x in d if x['name'] == 'small']")" \
    '["root_squash"]' "squash in share list"
sleep 1.2 # the NFS server re-reads share settings at most once a second
if ns_exec a nfs-cp "$TM_TMP/fits" "$(nfsurl small /squashed.bin)" >"$TM_TMP/sq2.out" 2>&1; then
    fail "nfs-cp as root into a root_squash share's root-owned directory succeeded"
fi
log "ok: root_squash: root's nfs-cp refused: $(head -c 200 "$TM_TMP/sq2.out" | tr '\n' ' ')"
run_step "tunnelmesh share squash small no_root_squash" tms squash small no_root_squash
sleep 1.2
run_step "nfs-cp as root after no_root_squash" ns_exec a nfs-cp "$TM_TMP/fits" "$(nfsurl small /squashed.bin)"
run_step "tunnelmesh share delete media" tms delete media
shares=$(tms list --json) || fail "tunnelmesh share list --json"
assert_eq "$(json_get "[x['name'] for x in d if x['name'] == 'media']" <<<"$shares")" "[]" \
    "media gone from share list"

node_down a
pass
