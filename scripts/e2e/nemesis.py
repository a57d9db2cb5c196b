#!/usr/bin/env python3
"""Workload and checker of the replication nemesis suite (issue 20), with boto3.

  nemesis.py workload --endpoints URL,URL,... --bucket B --seconds S --seed N --log ops.jsonl
      Client threads write (unique payloads), overwrite, delete and read a small key space
      through random coordinators, one operation at a time per thread, and log every
      operation with its start/end time and outcome: ok (acknowledged), fail (an error answer)
      or unknown (no answer: timeout, reset). Runs while the nemesis injects faults.

  nemesis.py check --endpoints URL,... --bucket B --log ops.jsonl [--consistent] [--quiesce S]
      After the heal: waits until every coordinator serves the same version listing (at most
      --quiesce seconds), then checks
        1. every acknowledged PUT is stored, current or not, with its exact bytes, on every
           coordinator (the bucket is versioned, so no PUT may vanish), and so is the delete
           marker of every acknowledged DELETE;
        2. no acknowledged write is undone: for a key whose last write was acknowledged and
           overlapped no other write, with --consistent every coordinator's current state is
           that write (its bytes, or 404 for a DELETE: an acknowledged DELETE never comes
           back). In available mode writes that no coordinator had exchanged yet are
           concurrent and ordered by clock, so the current state must only be one of the
           key's writes (the loser stays a non-current version: check 1); such keys are
           counted and listed;
        3. --consistent: no read returned a value older than a write acknowledged before the
           read began (read-after-write);
        4. every coordinator serves the same listing.
      Prints the counts and every anomaly; exits 1 if there is any.

Payloads start with a header naming the operation (`nemesis <op id>\\n`), so a read names the
write it saw. Only the standard library and boto3.
"""

import argparse
import hashlib
import json
import random
import sys
import threading
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

KEYS = 12


def client(endpoint, args, timeout=5):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=args.access_key,
        aws_secret_access_key=args.secret_key,
        region_name="us-east-1",
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=2,
            read_timeout=timeout,
        ),
    )


def payload(op_id, rng):
    # Small (inline) and chunked sizes both.
    size = rng.choice([40, 3000, 20_000, 150_000])
    head = f"nemesis {op_id}\n".encode()
    return head + rng.randbytes(max(0, size - len(head)))


def writer_of(body):
    line = body.split(b"\n", 1)[0]
    if not line.startswith(b"nemesis "):
        return None
    return line[len("nemesis "):].decode()


def workload(args):
    endpoints = args.endpoints.split(",")
    stop = time.monotonic() + args.seconds
    out = open(args.log, "w")
    lock = threading.Lock()
    counter = [0]

    def log(rec):
        with lock:
            out.write(json.dumps(rec) + "\n")
            out.flush()

    def next_id(t):
        with lock:
            counter[0] += 1
            return f"{args.seed}-{t}-{counter[0]}"

    def run(t):
        rng = random.Random(args.seed * 1000 + t)
        clients = [client(e, args) for e in endpoints]
        while time.monotonic() < stop:
            i = rng.randrange(len(endpoints))
            c = clients[i]
            key = f"k{rng.randrange(KEYS)}"
            r = rng.random()
            op = "put" if r < 0.55 else "delete" if r < 0.7 else "get"
            op_id = next_id(t)
            rec = {"id": op_id, "op": op, "key": key, "ep": i}
            body = None
            if op == "put":
                body = payload(op_id, rng)
                rec["sha"] = hashlib.sha256(body).hexdigest()
                rec["md5"] = hashlib.md5(body).hexdigest()
            rec["start"] = time.time()
            try:
                if op == "put":
                    resp = c.put_object(Bucket=args.bucket, Key=key, Body=body)
                    rec["version"] = resp.get("VersionId")
                    rec["replicas"] = resp["ResponseMetadata"]["HTTPHeaders"].get("x-tm-replicas")
                elif op == "delete":
                    resp = c.delete_object(Bucket=args.bucket, Key=key)
                    rec["version"] = resp.get("VersionId")
                else:
                    try:
                        got = c.get_object(Bucket=args.bucket, Key=key)["Body"].read()
                        rec["saw"] = writer_of(got)
                        rec["saw_sha"] = hashlib.sha256(got).hexdigest()
                    except ClientError as e:
                        if e.response["Error"]["Code"] not in ("NoSuchKey", "404"):
                            raise
                        rec["saw"] = None
                rec["status"] = "ok"
            except ClientError as e:
                rec["status"] = "fail"
                rec["err"] = e.response["Error"].get("Code", "?")
            except (BotoCoreError, OSError) as e:
                rec["status"] = "unknown"
                rec["err"] = type(e).__name__
            rec["end"] = time.time()
            log(rec)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()
    ops = [json.loads(line) for line in open(args.log)]
    by = {}
    for o in ops:
        by[(o["op"], o["status"])] = by.get((o["op"], o["status"]), 0) + 1
    print("workload: %d operations: %s" % (len(ops), ", ".join(
        f"{k[0]} {k[1]} {v}" for k, v in sorted(by.items()))))


def listing(c, bucket):
    """(key, version id, etag or 'marker', is latest) of every version and delete marker."""
    items = []
    kw = {"Bucket": bucket}
    while True:
        r = c.list_object_versions(**kw)
        for v in r.get("Versions", []):
            items.append((v["Key"], v["VersionId"], v["ETag"].strip('"'), v["IsLatest"]))
        for m in r.get("DeleteMarkers", []):
            items.append((m["Key"], m["VersionId"], "marker", m["IsLatest"]))
        if not r.get("IsTruncated"):
            return sorted(items)
        kw["KeyMarker"] = r.get("NextKeyMarker")
        kw["VersionIdMarker"] = r.get("NextVersionIdMarker")


def check(args):
    endpoints = args.endpoints.split(",")
    clients = [client(e, args, timeout=20) for e in endpoints]
    ops = [json.loads(line) for line in open(args.log)]
    anomalies = []

    # 4. (and the quiesce) every coordinator serves the same listing.
    deadline = time.monotonic() + args.quiesce
    t0 = time.monotonic()
    while True:
        lists = []
        for i, c in enumerate(clients):
            try:
                lists.append(listing(c, args.bucket))
            except (ClientError, BotoCoreError, OSError) as e:
                lists.append(f"error {e}")
        if all(item == lists[0] for item in lists) and not isinstance(lists[0], str):
            break
        if time.monotonic() > deadline:
            for i, item in enumerate(lists[1:], 1):
                if item != lists[0]:
                    a = set(lists[0]) if not isinstance(lists[0], str) else set()
                    b = set(item) if not isinstance(item, str) else set()
                    anomalies.append(
                        f"listings differ after {args.quiesce} s: coordinator 0 vs {i}: "
                        f"only on 0: {sorted(a - b)[:5]}, only on {i}: {sorted(b - a)[:5]}"
                        if not isinstance(item, str) else f"coordinator {i}: {item}")
            break
        time.sleep(0.5)
    quiesced = time.monotonic() - t0

    # 1. every acknowledged PUT is stored with its exact bytes, on every coordinator.
    puts = [o for o in ops if o["op"] == "put"]
    acked = [o for o in puts if o["status"] == "ok"]
    for i, c in enumerate(clients):
        try:
            lst = listing(c, args.bucket)
        except (ClientError, BotoCoreError, OSError) as e:
            anomalies.append(f"coordinator {i}: cannot list: {e}")
            continue
        by_etag = {}
        markers = set()
        for key, vid, etag, _ in lst:
            by_etag.setdefault((key, etag), []).append(vid)
            if etag == "marker":
                markers.add((key, vid))
        # Every acknowledged DELETE left its delete marker (a delete is a version too).
        for o in ops:
            if o["op"] == "delete" and o["status"] == "ok" and o.get("version") \
                    and (o["key"], o["version"]) not in markers:
                anomalies.append(f"coordinator {i}: the delete marker {o['version']} of "
                                 f"acknowledged DELETE {o['id']} of {o['key']} is not stored")
        for o in acked:
            vids = by_etag.get((o["key"], o["md5"]))
            if not vids:
                anomalies.append(f"coordinator {i}: acknowledged PUT {o['id']} of {o['key']} "
                                 f"(version {o.get('version')}) is not stored")
                continue
            body = c.get_object(Bucket=args.bucket, Key=o["key"], VersionId=vids[0])["Body"].read()
            if hashlib.sha256(body).hexdigest() != o["sha"]:
                anomalies.append(f"coordinator {i}: PUT {o['id']} of {o['key']}: wrong bytes")

    # 2. no acknowledged write is undone.
    writes = {}
    for o in ops:
        if o["op"] in ("put", "delete"):
            writes.setdefault(o["key"], []).append(o)
    settled = 0
    reordered = []
    ids_of = {key: {o["id"] for o in ws if o["op"] == "put"} for key, ws in writes.items()}
    for key, ws in writes.items():
        last = max(ws, key=lambda o: o["start"])
        if last["status"] != "ok":
            continue
        # Overlapping writes may be ordered either way, and an unanswered one may be applied
        # at any time later: only a last write that started after every other write had its
        # answer (acknowledged or refused) is judged.
        if any(o is not last and (o["status"] == "unknown" or o["end"] >= last["start"]) for o in ws):
            continue
        settled += 1
        for i, c in enumerate(clients):
            try:
                got = c.get_object(Bucket=args.bucket, Key=key)["Body"].read()
                saw = writer_of(got)
            except ClientError as e:
                if e.response["Error"]["Code"] not in ("NoSuchKey", "404"):
                    anomalies.append(f"coordinator {i}: GET {key}: {e}")
                    continue
                saw = None
            want = last["id"] if last["op"] == "put" else None
            if saw == want:
                continue
            if args.consistent:
                anomalies.append(
                    f"coordinator {i}: {key} is {saw or 'absent'}, but the last write was the "
                    f"acknowledged {last['op']} {last['id']}")
                continue
            # Available mode: writes through coordinators that had not yet exchanged them are
            # concurrent, and the larger clock wins (a skewed clock can make the earlier one
            # current; the other stays a non-current version, checked above). The current
            # state must still be one of the key's writes, the same everywhere (checked by the
            # equal listings).
            if saw is not None and saw not in ids_of[key]:
                anomalies.append(f"coordinator {i}: {key} is {saw}, which no write of it wrote")
            elif i == 0:
                reordered.append(f"{key}: {saw or 'absent'} current, not the later {last['op']} {last['id']}")

    # 3. read-after-write for consistent buckets.
    stale = 0
    if args.consistent:
        ends = {o["id"]: o for o in ops if o["op"] in ("put", "delete")}
        for r in (o for o in ops if o["op"] == "get" and o["status"] == "ok"):
            before = [w for w in writes.get(r["key"], []) if w["status"] == "ok" and w["end"] < r["start"]]
            if not before:
                continue
            seen = ends.get(r["saw"]) if r["saw"] else None
            if r["saw"] and seen is None:
                anomalies.append(f"read {r['id']} of {r['key']} saw unknown writer {r['saw']}")
                continue
            if seen is not None:
                newer = [w for w in before if w["start"] > seen["end"]]
            else:
                # Absent: stale if an acknowledged PUT precedes the read and no DELETE (in any
                # state) could be ordered after it.
                newer = [w for w in before if w["op"] == "put" and not any(
                    d["op"] == "delete" and d["end"] >= w["start"] for d in writes[r["key"]])]
            if newer:
                stale += 1
                anomalies.append(
                    f"stale read {r['id']} of {r['key']}: saw {r['saw'] or 'absent'}, but "
                    f"{newer[0]['op']} {newer[0]['id']} was acknowledged before the read began")

    counts = {
        "operations": len(ops),
        "puts acknowledged": len(acked),
        "puts failed/unknown": len(puts) - len(acked),
        "deletes acknowledged": sum(1 for o in ops if o["op"] == "delete" and o["status"] == "ok"),
        "reads": sum(1 for o in ops if o["op"] == "get" and o["status"] == "ok"),
        "keys with a settled last write": settled,
        "of them ordered by clock (available mode)": len(reordered),
        "stale reads": stale,
        "quiesce seconds": round(quiesced, 1),
        "anomalies": len(anomalies),
    }
    print("check: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for r in reordered:
        print("clock-ordered: " + r)
    for a in anomalies[:40]:
        print("ANOMALY: " + a)
    return 1 if anomalies else 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["workload", "check"])
    p.add_argument("--endpoints", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--access-key", required=True)
    p.add_argument("--secret-key", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--consistent", action="store_true")
    p.add_argument("--quiesce", type=float, default=60)
    args = p.parse_args()
    if args.mode == "workload":
        workload(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
