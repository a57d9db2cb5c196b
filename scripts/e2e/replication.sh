#!/usr/bin/env bash
# Object replication across two coordinators (issue 20), in network namespaces, with boto3 (a
# client nobody here wrote) in its own namespace:
#   - coordinators ca and cb (cb joins with a coordinator token), both with
#     `s3: {replication: {factor: 2, mode: consistent}}` and S3 on their LAN address
#   - objects of 10 KiB to 3 MiB (inline and multi-chunk) written through ca: every PUT is
#     acknowledged with `x-tm-replicas: 2/2` (W = 2 of RF 2); one deleted (a delete marker);
#     a 12 MiB multipart upload (boto3 upload_file, 3 parts) completed through ca
#   - `tunnelmesh cluster status` on ca: the same number of stored versions on each
#     coordinator, none under-replicated
#   - kill -9 ca; every acknowledged object is read through cb with the exact SHA-256, and
#     the deleted one is 404 there
#   - a PUT through cb with ca down is refused with 503 (the write quorum is out of reach),
#     never acknowledged
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
source "$(dirname "$0")/../lib/mesh.sh"
tm_init replication 90
require_tm_binaries
python3 -c 'import boto3' 2>/dev/null || fail "boto3 missing (run scripts/install-test-deps.sh)"

lan_create ca cb client
CA=192.0.2.1:8443
PORT=9000

start() { # start NS NAME ARGS...
    local ns=$1 n=$2
    shift 2
    ns_spawn "$ns" "$n.log" env HOME="$TM_TMP/$n/home" TUNNELMESH_LOG="${TM_RUST_LOG:-info}" \
        "$TM_BIN" join "$@" --config "$TM_TMP/$n/config.yaml"
    eval "PID_$n=$TM_LAST_PID"
    wait_for 25 "$n ready" ready "$n" || fail "$n did not come up (see $n.log)"
}
creds() { # creds NAME FIELD: the coordinator's own S3 key
    ctl "$1" s3 credentials --json | json_get "d[\"$2\"]"
}
SETTINGS="coordinator: {enabled: true, listen: \":8443\"}
s3: {listen: \"0.0.0.0:$PORT\", replication: {factor: 2, mode: consistent}}
"
conf ca "$SETTINGS"
start ca ca
CTOKEN=$(tm ca token create --coordinator --json | json_get 'd["token"]') || fail "token create --coordinator"
conf cb "$SETTINGS"
start cb cb "$CA" --token "$CTOKEN"
coordinators() { # how many coordinators ca lists
    tm ca node list --json | python3 -c 'import json,sys; print(sum(n["is_coordinator"] for n in json.load(sys.stdin)))'
}
two_coordinators() { [[ $(coordinators) == 2 ]]; }
wait_for 15 "ca lists both coordinators" two_coordinators || fail "ca lists $(coordinators) coordinators"

export AKA SKA AKB SKB
AKA=$(creds ca access_key) && SKA=$(creds ca secret_key) || fail "ca credentials"
AKB=$(creds cb access_key) && SKB=$(creds cb secret_key) || fail "cb credentials"

client() { # client PHASE: the boto3 client in its own namespace
    ns_exec client env AKA="$AKA" SKA="$SKA" AKB="$AKB" SKB="$SKB" \
        STATE="$TM_TMP/acked.json" PHASE="$1" timeout 60 python3 - <<'PY'
import hashlib, json, os, sys, time
import boto3
from botocore.config import Config

def s3(host, ak, sk):
    return boto3.client("s3", endpoint_url=f"http://{host}:9000", aws_access_key_id=ak,
                        aws_secret_access_key=sk, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}, connect_timeout=5,
                                      read_timeout=20))

a = s3("192.0.2.1", os.environ["AKA"], os.environ["SKA"])
b = s3("192.0.2.2", os.environ["AKB"], os.environ["SKB"])
state = os.environ["STATE"]
if os.environ["PHASE"] == "write":
    a.create_bucket(Bucket="repl")
    # The link between the coordinators comes up within seconds: until then a consistent
    # PUT is refused (503), never acknowledged.
    deadline = time.time() + 20
    while True:
        try:
            r = a.put_object(Bucket="repl", Key="warm", Body=b"warm")
            break
        except Exception as e:
            if time.time() > deadline:
                sys.exit(f"no acknowledged PUT within 20 s: {e}")
            time.sleep(0.3)
    acked = {}
    sizes = [10 << 10, 1 << 20, (3 << 20) + 77, 200 << 10, 5, 2 << 20]
    for i in range(18):
        body = os.urandom(sizes[i % len(sizes)])
        r = a.put_object(Bucket="repl", Key=f"obj-{i}", Body=body)
        rep = r["ResponseMetadata"]["HTTPHeaders"].get("x-tm-replicas")
        if rep != "2/2":
            sys.exit(f"obj-{i}: x-tm-replicas {rep!r}, expected 2/2")
        acked[f"obj-{i}"] = hashlib.sha256(body).hexdigest()
    # A multipart upload (12 MiB in 5 MiB parts) through ca: completed only once on both.
    from boto3.s3.transfer import TransferConfig
    big = os.urandom(12 << 20)
    path = state + ".big"
    open(path, "wb").write(big)
    a.upload_file(path, "repl", "multipart", Config=TransferConfig(
        multipart_threshold=5 << 20, multipart_chunksize=5 << 20, use_threads=False))
    if not a.head_object(Bucket="repl", Key="multipart")["ETag"].strip('"').endswith("-3"):
        sys.exit("the 12 MiB upload was not a 3-part multipart upload")
    acked["multipart"] = hashlib.sha256(big).hexdigest()
    r = a.delete_object(Bucket="repl", Key="obj-0")
    if r["ResponseMetadata"]["HTTPHeaders"].get("x-tm-replicas") != "2/2":
        sys.exit(f"delete: {r['ResponseMetadata']['HTTPHeaders']}")
    del acked["obj-0"]
    json.dump(acked, open(state, "w"))
    print(f"{len(acked)} objects acknowledged 2/2 through ca (one a multipart upload), "
          "obj-0 deleted")
else:
    acked = json.load(open(state))
    for k, h in sorted(acked.items()):
        got = hashlib.sha256(b.get_object(Bucket="repl", Key=k)["Body"].read()).hexdigest()
        if got != h:
            sys.exit(f"{k}: sha256 {got} through cb, acknowledged {h}")
    try:
        b.get_object(Bucket="repl", Key="obj-0")
        sys.exit("obj-0 was deleted (acknowledged) but cb serves it")
    except b.exceptions.NoSuchKey:
        pass
    try:
        b.put_object(Bucket="repl", Key="late", Body=b"x")
        sys.exit("a consistent PUT with the quorum out of reach was acknowledged")
    except Exception as e:
        code = getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code != 503:
            sys.exit(f"PUT with ca down: {e!r}, expected 503")
    print(f"{len(acked)} acknowledged objects read through cb with their SHA-256; "
          "deleted one 404; PUT without quorum 503")
PY
}

out=$(client write 2>&1) || fail "writes through ca: $out"
log "ok: $out"
# `cluster status` on ca: both stores hold the same versions (18 objects and the warm-up
# writes: a refused warm-up PUT may stay on ca, its outcome unknown, and reach cb by repair),
# nothing pending.
figures() { # figures NAME: "objects/under_replicated" of NAME in ca's cluster status
    tm ca cluster status --json | python3 -c 'import json, sys
d = json.load(sys.stdin)
c = [c["objects"] for c in d["coordinators"] if c["name"] == sys.argv[1] and "objects" in c]
print("%d/%d" % (c[0]["objects"], c[0]["under_replicated"]) if c else "none")' "$1"
}
both_figures() { # the same versions on both (18 objects, warm at least once), none pending
    local a b
    a=$(figures ca) && b=$(figures cb) && [[ $a == "$b" && $a == */0 && ${a%/*} -ge 19 ]]
}
wait_for 10 "cluster status: the same versions on both, none under-replicated" both_figures ||
    fail "cluster status: ca $(figures ca), cb $(figures cb): $(tm ca cluster status)"
log "ok: cluster status: $(tm ca cluster status | tail -2 | tr -s ' ' | tr '\n' ';')"
kill -KILL "$PID_ca" || fail "kill -9 ca"
wait "$PID_ca" 2>/dev/null
out=$(client read 2>&1) || fail "reads through cb after kill -9 ca: $out"
log "ok: $out"
pass
