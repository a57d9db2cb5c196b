#!/usr/bin/env python3
"""S3 second round, the rest (issue 18) with boto3: GetObject/HeadObject by partNumber, object
and bucket tagging (per version, limits), ListBuckets pagination.

Env: S3_ENDPOINT, S3_AK, S3_SECRET. Exits non-zero on the first failed assertion; prints one
line per section.
"""
import hashlib
import http.client
import os
import urllib.parse

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.client import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

EP = os.environ["S3_ENDPOINT"]
AK = os.environ["S3_AK"]
SK = os.environ["S3_SECRET"]
MiB = 1 << 20

s3 = boto3.client(
    "s3", endpoint_url=EP, aws_access_key_id=AK, aws_secret_access_key=SK,
    region_name="us-east-1",
    config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                  retries={"max_attempts": 1}))


def err(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except ClientError as e:
        return e.response["Error"].get("Code"), e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{fn.__name__} {kw.get('Key')} unexpectedly succeeded")


def signed_get(path_query):
    """A SigV4-signed GET sent with http.client (for what boto3 refuses to send)."""
    u0 = urllib.parse.urlsplit(EP)
    req = AWSRequest(method="GET", url=f"{u0.scheme}://{u0.netloc}{path_query}")
    req.headers["x-amz-content-sha256"] = hashlib.sha256(b"").hexdigest()
    SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(req)
    p = req.prepare()
    u = urllib.parse.urlsplit(p.url)
    conn = http.client.HTTPConnection(u0.hostname, u0.port, timeout=30)
    conn.request("GET", u.path + ("?" + u.query if u.query else ""), headers=dict(p.headers))
    r = conn.getresponse()
    return r.status, r.read().decode(errors="replace")


B = "round3"
s3.create_bucket(Bucket=B)

# --- 1. partNumber on GET and HEAD
p1, p2, p3 = os.urandom(5 * MiB), os.urandom(5 * MiB + 7), os.urandom(1234)
up = s3.create_multipart_upload(Bucket=B, Key="mp")["UploadId"]
etags = [s3.upload_part(Bucket=B, Key="mp", UploadId=up, PartNumber=n, Body=b)["ETag"]
         for n, b in ((1, p1), (2, p2), (3, p3))]
done = s3.complete_multipart_upload(Bucket=B, Key="mp", UploadId=up, MultipartUpload={
    "Parts": [{"PartNumber": n + 1, "ETag": e} for n, e in enumerate(etags)]})
total = len(p1) + len(p2) + len(p3)
off = 0
for n, b in ((1, p1), (2, p2), (3, p3)):
    g = s3.get_object(Bucket=B, Key="mp", PartNumber=n)
    assert g["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert g["PartsCount"] == 3 and g["ETag"] == done["ETag"], g
    assert g["ContentRange"] == f"bytes {off}-{off + len(b) - 1}/{total}", g["ContentRange"]
    assert g["ContentLength"] == len(b) and g["Body"].read() == b
    h = s3.head_object(Bucket=B, Key="mp", PartNumber=n)
    assert h["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert h["PartsCount"] == 3 and h["ContentLength"] == len(b), h
    off += len(b)
assert err(s3.get_object, Bucket=B, Key="mp", PartNumber=4) == ("InvalidPartNumber", 416)
assert err(s3.head_object, Bucket=B, Key="mp", PartNumber=4)[1] == 416
assert err(s3.get_object, Bucket=B, Key="mp", PartNumber=0)[0] == "InvalidArgument"
assert err(s3.get_object, Bucket=B, Key="mp", PartNumber=10001)[0] == "InvalidArgument"
assert err(s3.get_object, Bucket=B, Key="mp", PartNumber=1, Range="bytes=0-1")[0] \
    == "InvalidRequest"
# A plain object is its own part 1 (and has no part 2); no parts count.
s3.put_object(Bucket=B, Key="one", Body=b"hello world")
g = s3.get_object(Bucket=B, Key="one", PartNumber=1)
assert g["Body"].read() == b"hello world" and "PartsCount" not in g, g
assert err(s3.get_object, Bucket=B, Key="one", PartNumber=2) == ("InvalidPartNumber", 416)
# boto3's download manager uses ranges; an unrelated ranged GET still works.
assert s3.get_object(Bucket=B, Key="mp", Range="bytes=5-9")["Body"].read() == p1[5:10]
print("round3: partNumber OK")

# --- 2. Object tagging
s3.put_object(Bucket=B, Key="t", Body=b"x", Tagging="project=mesh&team=a%20b")
g = s3.get_object(Bucket=B, Key="t")
assert g["TagCount"] == 2, g
ts = s3.get_object_tagging(Bucket=B, Key="t")["TagSet"]
assert ts == [{"Key": "project", "Value": "mesh"}, {"Key": "team", "Value": "a b"}], ts
etag = s3.head_object(Bucket=B, Key="t")["ETag"]
s3.put_object_tagging(Bucket=B, Key="t", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
assert s3.get_object_tagging(Bucket=B, Key="t")["TagSet"] == [{"Key": "k", "Value": "v"}]
assert s3.head_object(Bucket=B, Key="t")["ETag"] == etag, "tagging does not change the object"
r = s3.delete_object_tagging(Bucket=B, Key="t")
assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
assert s3.get_object_tagging(Bucket=B, Key="t")["TagSet"] == []
assert "TagCount" not in s3.get_object(Bucket=B, Key="t")
# Limits: InvalidTag, nothing changed.
s3.put_object_tagging(Bucket=B, Key="t", Tagging={"TagSet": [{"Key": "keep", "Value": "1"}]})
bad = [
    [{"Key": f"k{i}", "Value": "v"} for i in range(11)],
    [{"Key": "k" * 129, "Value": "v"}],
    [{"Key": "k", "Value": "v" * 257}],
    [{"Key": "k", "Value": "1"}, {"Key": "k", "Value": "2"}],
    [{"Key": "aws:k", "Value": "1"}],
]
for ts in bad:
    assert err(s3.put_object_tagging, Bucket=B, Key="t", Tagging={"TagSet": ts}) \
        == ("InvalidTag", 400), ts
assert s3.get_object_tagging(Bucket=B, Key="t")["TagSet"] == [{"Key": "keep", "Value": "1"}]
s3.put_object_tagging(Bucket=B, Key="t", Tagging={"TagSet": [
    {"Key": "k" * 128, "Value": "v" * 256}] + [{"Key": f"k{i}", "Value": ""} for i in range(9)]})
assert err(s3.put_object, Bucket=B, Key="t2", Body=b"x",
           Tagging="&".join(f"k{i}=v" for i in range(11))) == ("InvalidTag", 400)
assert err(s3.head_object, Bucket=B, Key="t2")[1] == 404, "nothing stored"
assert err(s3.get_object_tagging, Bucket=B, Key="missing")[0] == "NoSuchKey"
# Copy: COPY keeps the source's tags, REPLACE takes the header's.
s3.put_object(Bucket=B, Key="src", Body=b"y", Tagging="a=1")
s3.copy_object(Bucket=B, Key="c1", CopySource={"Bucket": B, "Key": "src"})
assert s3.get_object_tagging(Bucket=B, Key="c1")["TagSet"] == [{"Key": "a", "Value": "1"}]
s3.copy_object(Bucket=B, Key="c2", CopySource={"Bucket": B, "Key": "src"},
               TaggingDirective="REPLACE", Tagging="b=2")
assert s3.get_object_tagging(Bucket=B, Key="c2")["TagSet"] == [{"Key": "b", "Value": "2"}]
s3.copy_object(Bucket=B, Key="src", CopySource={"Bucket": B, "Key": "src"},
               TaggingDirective="REPLACE", Tagging="c=3")
assert s3.get_object_tagging(Bucket=B, Key="src")["TagSet"] == [{"Key": "c", "Value": "3"}]
# Multipart: the upload's x-amz-tagging.
up = s3.create_multipart_upload(Bucket=B, Key="tm", Tagging="m=1")["UploadId"]
e = s3.upload_part(Bucket=B, Key="tm", UploadId=up, PartNumber=1, Body=b"z")["ETag"]
s3.complete_multipart_upload(Bucket=B, Key="tm", UploadId=up, MultipartUpload={
    "Parts": [{"PartNumber": 1, "ETag": e}]})
assert s3.get_object_tagging(Bucket=B, Key="tm")["TagSet"] == [{"Key": "m", "Value": "1"}]
# Versions keep their own tags.
VB = "round3-ver"
s3.create_bucket(Bucket=VB)
s3.put_bucket_versioning(Bucket=VB, VersioningConfiguration={"Status": "Enabled"})
v1 = s3.put_object(Bucket=VB, Key="k", Body=b"1", Tagging="v=1")["VersionId"]
v2 = s3.put_object(Bucket=VB, Key="k", Body=b"2", Tagging="v=2")["VersionId"]
r = s3.put_object_tagging(Bucket=VB, Key="k", VersionId=v1,
                          Tagging={"TagSet": [{"Key": "v", "Value": "one"}]})
assert r["VersionId"] == v1, r
t1 = s3.get_object_tagging(Bucket=VB, Key="k", VersionId=v1)
assert t1["TagSet"] == [{"Key": "v", "Value": "one"}] and t1["VersionId"] == v1, t1
t2 = s3.get_object_tagging(Bucket=VB, Key="k")
assert t2["TagSet"] == [{"Key": "v", "Value": "2"}] and t2["VersionId"] == v2, t2
assert err(s3.get_object_tagging, Bucket=VB, Key="k", VersionId="nope")[0] in (
    "NoSuchVersion", "InvalidArgument")
print("round3: object tagging OK")

# --- 3. Bucket tagging
assert err(s3.get_bucket_tagging, Bucket=B) == ("NoSuchTagSet", 404)
r = s3.put_bucket_tagging(Bucket=B, Tagging={"TagSet": [{"Key": "env", "Value": "prod"}]})
assert r["ResponseMetadata"]["HTTPStatusCode"] == 204, r
assert s3.get_bucket_tagging(Bucket=B)["TagSet"] == [{"Key": "env", "Value": "prod"}]
assert err(s3.put_bucket_tagging, Bucket=B, Tagging={"TagSet": [
    {"Key": f"k{i}", "Value": "v"} for i in range(51)]}) == ("InvalidTag", 400)
s3.put_bucket_tagging(Bucket=B, Tagging={"TagSet": [
    {"Key": f"k{i}", "Value": "v"} for i in range(50)]})
assert len(s3.get_bucket_tagging(Bucket=B)["TagSet"]) == 50
s3.delete_bucket_tagging(Bucket=B)
assert err(s3.get_bucket_tagging, Bucket=B)[0] == "NoSuchTagSet"
assert err(s3.get_bucket_tagging, Bucket="no-such-bucket-r3")[0] == "NoSuchBucket"
print("round3: bucket tagging OK")

# --- 4. ListBuckets pagination
names = [f"page-{i:02d}" for i in range(7)]
for n in names:
    s3.create_bucket(Bucket=n)
seen, token, pages = [], None, 0
while True:
    kw = {"MaxBuckets": 3, "Prefix": "page-"}
    if token:
        kw["ContinuationToken"] = token
    r = s3.list_buckets(**kw)
    pages += 1
    assert r.get("Prefix") == "page-", r
    seen += [b["Name"] for b in r["Buckets"]]
    token = r.get("ContinuationToken")
    if not token:
        break
assert seen == names and pages == 3, (seen, pages)
every = [b["Name"] for b in s3.list_buckets()["Buckets"]]
assert set(names) | {B, VB} <= set(every) and "ContinuationToken" not in s3.list_buckets()
assert [b["Name"] for b in s3.list_buckets(Prefix="page-0")["Buckets"]] == names
for q in ("max-buckets=0", "max-buckets=10001"):
    st, txt = signed_get(urllib.parse.urlsplit(EP).path.rstrip("/") + "/?" + q)
    assert st == 400 and "InvalidArgument" in txt, (q, st, txt)
assert err(s3.list_buckets, ContinuationToken="!!not-a-token!!")[0] == "InvalidArgument"
# paginator (what tools use)
pg = s3.get_paginator("list_buckets").paginate(Prefix="page-", PaginationConfig={"PageSize": 2})
assert [b["Name"] for p in pg for b in p["Buckets"]] == names
print("round3: list buckets OK")

# --- 5. Browser POST uploads are not implemented: refused, nothing stored
post = s3.generate_presigned_post(B, "posted", Fields={"acl": "private"})
u = urllib.parse.urlsplit(post["url"])
boundary = "----tmboundary"
parts = []
for k, v in post["fields"].items():
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n')
parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
             f'Content-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n')
body = "".join(parts).encode()
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
conn.request("POST", u.path, body=body,
             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
r = conn.getresponse()
txt = r.read().decode(errors="replace")
assert r.status == 501 and "NotImplemented" in txt, (r.status, txt)
assert err(s3.head_object, Bucket=B, Key="posted")[1] == 404
print("round3: POST uploads refused OK")
print("round3: all OK")
