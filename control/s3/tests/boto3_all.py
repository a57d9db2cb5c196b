#!/usr/bin/env python3
"""Exercises every supported S3 operation with boto3 against the test server.

Env: S3_ENDPOINT, S3_AK, S3_SECRET, S3_QUOTA_BUCKET (exists, 1 MiB quota).
Exits non-zero on the first failed assertion.
"""
import datetime
import hashlib
import hmac
import http.client
import io
import os
import sys
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
QB = os.environ["S3_QUOTA_BUCKET"]


def client(ak=AK, sk=SK, **cfg):
    return boto3.client(
        "s3",
        endpoint_url=EP,
        aws_access_key_id=ak,
        aws_secret_access_key=sk,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"max_attempts": 1}, **cfg),
    )


s3 = client()


def err_code(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{fn.__name__} unexpectedly succeeded")


def md5hex(b):
    return hashlib.md5(b).hexdigest()


B = "boto-all"
# --- buckets
s3.create_bucket(Bucket=B)
assert B in [b["Name"] for b in s3.list_buckets()["Buckets"]]
s3.head_bucket(Bucket=B)
loc = s3.get_bucket_location(Bucket=B)
assert loc.get("LocationConstraint") in (None, "", "us-east-1"), loc
assert err_code(s3.create_bucket, Bucket="Bad_Name")[0] == "InvalidBucketName"
assert err_code(s3.head_bucket, Bucket="no-such-bucket-x")[1] == 404
assert err_code(s3.list_objects_v2, Bucket="no-such-bucket-x")[0] == "NoSuchBucket"

# --- put/get/head with metadata and content headers
body = b"hello world, this is tunnelmesh\n" * 100
r = s3.put_object(Bucket=B, Key="dir/a.txt", Body=body, ContentType="text/plain",
                  ContentEncoding="identity", Metadata={"color": "blue", "x-y": "z"},
                  CacheControl="max-age=60", ContentDisposition="inline")
assert r["ETag"] == f'"{md5hex(body)}"', r["ETag"]
g = s3.get_object(Bucket=B, Key="dir/a.txt")
assert g["Body"].read() == body
assert g["ContentType"] == "text/plain"
assert g["ContentEncoding"] == "identity"
assert g["Metadata"] == {"color": "blue", "x-y": "z"}, g["Metadata"]
assert g["CacheControl"] == "max-age=60"
assert g["ContentDisposition"] == "inline"
h = s3.head_object(Bucket=B, Key="dir/a.txt")
assert h["ContentLength"] == len(body) and h["ETag"] == r["ETag"]
assert err_code(s3.get_object, Bucket=B, Key="missing")[0] == "NoSuchKey"
assert err_code(s3.head_object, Bucket=B, Key="missing")[1] == 404
# Content-MD5 mismatch stores nothing
assert err_code(s3.put_object, Bucket=B, Key="bad-md5", Body=b"abc",
                ContentMD5="AAAAAAAAAAAAAAAAAAAAAA==")[0] == "BadDigest"
assert err_code(s3.head_object, Bucket=B, Key="bad-md5")[1] == 404
# empty object and unicode key
s3.put_object(Bucket=B, Key="empty", Body=b"")
assert s3.get_object(Bucket=B, Key="empty")["Body"].read() == b""
uk = "ünï cødé/with space+plus&amp?.txt"
s3.put_object(Bucket=B, Key=uk, Body=b"u")
assert s3.get_object(Bucket=B, Key=uk)["Body"].read() == b"u"

# --- ranges
g = s3.get_object(Bucket=B, Key="dir/a.txt", Range="bytes=6-10")
assert g["Body"].read() == body[6:11] and g["ContentRange"] == f"bytes 6-10/{len(body)}"
assert g["ResponseMetadata"]["HTTPStatusCode"] == 206
assert s3.get_object(Bucket=B, Key="dir/a.txt", Range="bytes=-5")["Body"].read() == body[-5:]
assert s3.get_object(Bucket=B, Key="dir/a.txt", Range="bytes=3190-")["Body"].read() == body[3190:]
code, status = err_code(s3.get_object, Bucket=B, Key="dir/a.txt", Range=f"bytes={len(body) + 10}-")
assert (code, status) == ("InvalidRange", 416), (code, status)

# --- conditionals
et = r["ETag"]
lm = h["LastModified"]
assert s3.get_object(Bucket=B, Key="dir/a.txt", IfMatch=et)["Body"].read() == body
assert err_code(s3.get_object, Bucket=B, Key="dir/a.txt", IfMatch='"nope"')[1] == 412
assert err_code(s3.get_object, Bucket=B, Key="dir/a.txt", IfNoneMatch=et)[1] == 304
assert err_code(s3.get_object, Bucket=B, Key="dir/a.txt",
                IfModifiedSince=lm + datetime.timedelta(seconds=5))[1] == 304
assert s3.get_object(Bucket=B, Key="dir/a.txt",
                     IfModifiedSince=lm - datetime.timedelta(days=1))["Body"].read() == body
assert err_code(s3.get_object, Bucket=B, Key="dir/a.txt",
                IfUnmodifiedSince=lm - datetime.timedelta(days=1))[1] == 412
assert s3.get_object(Bucket=B, Key="dir/a.txt",
                     IfUnmodifiedSince=lm + datetime.timedelta(days=1))["Body"].read() == body

# --- copy (COPY and REPLACE directives)
s3.copy_object(Bucket=B, Key="copy1", CopySource={"Bucket": B, "Key": "dir/a.txt"})
h1 = s3.head_object(Bucket=B, Key="copy1")
assert h1["Metadata"] == {"color": "blue", "x-y": "z"} and h1["ETag"] == et
s3.copy_object(Bucket=B, Key="copy2", CopySource={"Bucket": B, "Key": "dir/a.txt"},
               MetadataDirective="REPLACE", Metadata={"k": "v"}, ContentType="application/x-new")
h2 = s3.head_object(Bucket=B, Key="copy2")
assert h2["Metadata"] == {"k": "v"} and h2["ContentType"] == "application/x-new", h2
assert s3.get_object(Bucket=B, Key="copy2")["Body"].read() == body
assert err_code(s3.copy_object, Bucket=B, Key="dir/a.txt",
                CopySource={"Bucket": B, "Key": "dir/a.txt"})[0] == "InvalidRequest"
s3.copy_object(Bucket=B, Key=uk + "-copy", CopySource={"Bucket": B, "Key": uk})
assert s3.get_object(Bucket=B, Key=uk + "-copy")["Body"].read() == b"u"
assert err_code(s3.copy_object, Bucket=B, Key="x",
                CopySource={"Bucket": B, "Key": "missing"})[0] == "NoSuchKey"

# --- listing v1 and v2
L = "list-b"
s3.create_bucket(Bucket=L)
keys = ["a/1", "a/2", "b/1", "c", "d e/f", "d+e", "z"]
for k in keys:
    s3.put_object(Bucket=L, Key=k, Body=k.encode())
v2 = s3.list_objects_v2(Bucket=L)
assert [o["Key"] for o in v2["Contents"]] == sorted(keys) and v2["KeyCount"] == len(keys)
v2 = s3.list_objects_v2(Bucket=L, Delimiter="/")
assert [p["Prefix"] for p in v2["CommonPrefixes"]] == ["a/", "b/", "d e/"]
assert [o["Key"] for o in v2["Contents"]] == ["c", "d+e", "z"]
v2 = s3.list_objects_v2(Bucket=L, Prefix="a/")
assert [o["Key"] for o in v2["Contents"]] == ["a/1", "a/2"]
v2 = s3.list_objects_v2(Bucket=L, StartAfter="b/1")
assert [o["Key"] for o in v2["Contents"]] == ["c", "d e/f", "d+e", "z"]
seen, token = [], None
while True:
    kw = {"ContinuationToken": token} if token else {}
    page = s3.list_objects_v2(Bucket=L, MaxKeys=2, **kw)
    seen += [o["Key"] for o in page.get("Contents", [])]
    if not page["IsTruncated"]:
        break
    token = page["NextContinuationToken"]
assert seen == sorted(keys), seen
# encoding-type=url (an explicit EncodingType is not decoded by botocore)
v2 = s3.list_objects_v2(Bucket=L, EncodingType="url", Prefix="d")
assert [o["Key"] for o in v2["Contents"]] == ["d%20e/f", "d%2Be"], v2["Contents"]
v1 = s3.list_objects(Bucket=L, Delimiter="/", MaxKeys=2)
assert v1["IsTruncated"] and [p["Prefix"] for p in v1["CommonPrefixes"]] == ["a/", "b/"]
v1b = s3.list_objects(Bucket=L, Delimiter="/", Marker=v1["NextMarker"])
assert [o["Key"] for o in v1b["Contents"]] == ["c", "d+e", "z"], v1b
assert [p["Prefix"] for p in v1b["CommonPrefixes"]] == ["d e/"]
pg = s3.get_paginator("list_objects")
assert sum(len(p.get("Contents", [])) for p in pg.paginate(Bucket=L, PaginationConfig={"PageSize": 3})) == len(keys)

# --- delete, delete objects
s3.delete_object(Bucket=L, Key="z")
s3.delete_object(Bucket=L, Key="z")  # idempotent
d = s3.delete_objects(Bucket=L, Delete={"Objects": [{"Key": k} for k in keys if k != "z"]})
assert sorted(x["Key"] for x in d["Deleted"]) == sorted(k for k in keys if k != "z")
assert s3.list_objects_v2(Bucket=L)["KeyCount"] == 0
s3.delete_bucket(Bucket=L)
assert err_code(s3.delete_bucket, Bucket=B)[0] == "BucketNotEmpty"

# --- multipart: create, upload part, upload part copy, list parts/uploads, complete, abort
MK = "mp/object.bin"
p1 = os.urandom(5 * 1024 * 1024)
p3 = os.urandom(1234)
up = s3.create_multipart_upload(Bucket=B, Key=MK, ContentType="application/x-mp", Metadata={"m": "1"})
uid = up["UploadId"]
e1 = s3.upload_part(Bucket=B, Key=MK, UploadId=uid, PartNumber=1, Body=p1)["ETag"]
big_src = os.urandom(6 * 1024 * 1024)
s3.put_object(Bucket=B, Key="copysrc", Body=big_src)
e2 = s3.upload_part_copy(Bucket=B, Key=MK, UploadId=uid, PartNumber=2,
                         CopySource={"Bucket": B, "Key": "copysrc"},
                         CopySourceRange="bytes=0-5242879")["CopyPartResult"]["ETag"]
e3 = s3.upload_part(Bucket=B, Key=MK, UploadId=uid, PartNumber=3, Body=p3)["ETag"]
parts = s3.list_parts(Bucket=B, Key=MK, UploadId=uid)["Parts"]
assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, len(p1)), (2, 5242880), (3, len(p3))]
assert uid in [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=B)["Uploads"]]
assert err_code(s3.complete_multipart_upload, Bucket=B, Key=MK, UploadId=uid,
                MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2},
                                           {"PartNumber": 1, "ETag": e1}]})[0] == "InvalidPartOrder"
assert err_code(s3.complete_multipart_upload, Bucket=B, Key=MK, UploadId=uid,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"0000"'}]})[0] == "InvalidPart"
c = s3.complete_multipart_upload(Bucket=B, Key=MK, UploadId=uid, MultipartUpload={"Parts": [
    {"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}, {"PartNumber": 3, "ETag": e3}]})
whole = p1 + big_src[:5242880] + p3
want = hashlib.md5(b"".join(hashlib.md5(x).digest() for x in [p1, big_src[:5242880], p3])).hexdigest() + "-3"
assert c["ETag"] == f'"{want}"', (c["ETag"], want)
g = s3.get_object(Bucket=B, Key=MK)
assert g["Body"].read() == whole and g["ContentType"] == "application/x-mp" and g["Metadata"] == {"m": "1"}
assert err_code(s3.list_parts, Bucket=B, Key=MK, UploadId=uid)[0] == "NoSuchUpload"
up2 = s3.create_multipart_upload(Bucket=B, Key="mp/aborted")["UploadId"]
s3.upload_part(Bucket=B, Key="mp/aborted", UploadId=up2, PartNumber=1, Body=b"x" * 100)
s3.abort_multipart_upload(Bucket=B, Key="mp/aborted", UploadId=up2)
assert up2 not in [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=B).get("Uploads", [])]
assert err_code(s3.head_object, Bucket=B, Key="mp/aborted")[1] == 404
up3 = s3.create_multipart_upload(Bucket=B, Key="mp/small")["UploadId"]
a = s3.upload_part(Bucket=B, Key="mp/small", UploadId=up3, PartNumber=1, Body=b"x" * 100)["ETag"]
b_ = s3.upload_part(Bucket=B, Key="mp/small", UploadId=up3, PartNumber=2, Body=b"y" * 100)["ETag"]
assert err_code(s3.complete_multipart_upload, Bucket=B, Key="mp/small", UploadId=up3, MultipartUpload={
    "Parts": [{"PartNumber": 1, "ETag": a}, {"PartNumber": 2, "ETag": b_}]})[0] == "EntityTooSmall"

# --- presigned GET and PUT
url = s3.generate_presigned_url("get_object", Params={"Bucket": B, "Key": "dir/a.txt"}, ExpiresIn=60)
u = urllib.parse.urlsplit(url)
conn = http.client.HTTPConnection(u.hostname, u.port)
conn.request("GET", u.path + "?" + u.query)
resp = conn.getresponse()
assert resp.status == 200 and resp.read() == body
url = s3.generate_presigned_url("put_object", Params={"Bucket": B, "Key": "presigned-put"}, ExpiresIn=60)
u = urllib.parse.urlsplit(url)
conn = http.client.HTTPConnection(u.hostname, u.port)
conn.request("PUT", u.path + "?" + u.query, body=b"via presign")
resp = conn.getresponse()
resp.read()
assert resp.status == 200, resp.status
assert s3.get_object(Bucket=B, Key="presigned-put")["Body"].read() == b"via presign"


# --- signed streaming upload (STREAMING-AWS4-HMAC-SHA256-PAYLOAD), hand-rolled like the Java/Go SDKs
def streaming_put(key, data, chunk=64 * 1024, tamper=False, truncate=False):
    u = urllib.parse.urlsplit(EP)
    now = datetime.datetime.now(datetime.timezone.utc)
    amz = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz[:8]
    scope = f"{date}/us-east-1/s3/aws4_request"
    path = (u.path.rstrip("/") + f"/{B}/{key}")
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    if truncate:  # a well-formed stream that ends before x-amz-decoded-content-length bytes
        chunks = chunks[: len(chunks) // 2]
    chunks.append(b"")

    def framed_len():
        n = 0
        for c in chunks:
            n += len(f"{len(c):x};chunk-signature=") + 64 + 2 + len(c) + 2
        return n
    headers = {
        "host": f"{u.hostname}:{u.port}",
        "x-amz-date": amz,
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "content-length": str(framed_len()),
    }
    signed = sorted(headers)
    creq = "\n".join(["PUT", urllib.parse.quote(path, safe="/~"), "",
                      "".join(f"{h}:{headers[h]}\n" for h in signed), ";".join(signed),
                      "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"])
    sts = "\n".join(["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(creq.encode()).hexdigest()])

    def hm(k, m):
        return hmac.new(k, m.encode(), hashlib.sha256).digest()
    key_ = hm(hm(hm(hm(("AWS4" + SK).encode(), date), "us-east-1"), "s3"), "aws4_request")
    sig = hmac.new(key_, sts.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={AK}/{scope}, "
                                f"SignedHeaders={';'.join(signed)}, Signature={sig}")
    out = io.BytesIO()
    prev = sig
    empty = hashlib.sha256(b"").hexdigest()
    for c in chunks:
        s2 = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz, scope, prev, empty, hashlib.sha256(c).hexdigest()])
        prev = hmac.new(key_, s2.encode(), hashlib.sha256).hexdigest()
        payload = (b"X" + c[1:]) if (tamper and c) else c
        out.write(f"{len(c):x};chunk-signature={prev}\r\n".encode() + payload + b"\r\n")
    raw = out.getvalue()
    conn = http.client.HTTPConnection(u.hostname, u.port)
    conn.request("PUT", path, body=raw, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read().decode(errors="replace")


data = os.urandom(200 * 1024 + 17)
st, txt = streaming_put("streamed", data)
assert st == 200, (st, txt)
assert s3.get_object(Bucket=B, Key="streamed")["Body"].read() == data
st, txt = streaming_put("streamed-bad", data, tamper=True)
assert st == 403 and "SignatureDoesNotMatch" in txt, (st, txt)
assert err_code(s3.head_object, Bucket=B, Key="streamed-bad")[1] == 404
st, txt = streaming_put("streamed-trunc", data, truncate=True)
assert st == 400 and "IncompleteBody" in txt, (st, txt)
assert err_code(s3.head_object, Bucket=B, Key="streamed-trunc")[1] == 404

# --- auth errors
assert err_code(client(sk="wrong-secret").list_buckets)[0] == "SignatureDoesNotMatch"
assert err_code(client(ak="AKNOSUCHKEY").list_buckets)[0] == "InvalidAccessKeyId"
assert err_code(client(sk="wrong-secret").put_object, Bucket=B, Key="nope", Body=b"x")[0] == "SignatureDoesNotMatch"
assert err_code(s3.head_object, Bucket=B, Key="nope")[1] == 404

# --- the system bucket is private to the coordinator: peers can neither write nor read it
assert err_code(s3.put_object, Bucket="_tunnelmesh", Key="x", Body=b"x")[0] == "AccessDenied"
assert err_code(s3.delete_object, Bucket="_tunnelmesh", Key="x")[0] == "AccessDenied"
assert err_code(s3.delete_bucket, Bucket="_tunnelmesh")[0] == "AccessDenied"
assert err_code(s3.create_multipart_upload, Bucket="_tunnelmesh", Key="x")[0] == "AccessDenied"
assert err_code(s3.list_objects_v2, Bucket="_tunnelmesh")[0] == "AccessDenied"
assert err_code(s3.list_objects, Bucket="_tunnelmesh")[0] == "AccessDenied"
assert err_code(s3.head_bucket, Bucket="_tunnelmesh")[1] == 403
assert err_code(s3.get_object, Bucket="_tunnelmesh", Key="coordinator/state.json")[0] == "AccessDenied"
assert err_code(s3.head_object, Bucket="_tunnelmesh", Key="coordinator/state.json")[1] == 403
assert err_code(s3.list_multipart_uploads, Bucket="_tunnelmesh")[0] == "AccessDenied"
_c = err_code(s3.copy_object, Bucket=B, Key="stolen",
                CopySource={"Bucket": "_tunnelmesh", "Key": "coordinator/state.json"})
# (s3s refuses the `_tunnelmesh` copy-source name itself, before our access check)
assert _c[0] in ("AccessDenied", "InvalidArgument"), _c
assert err_code(s3.head_object, Bucket=B, Key="stolen")[1] == 404
assert "_tunnelmesh" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]

# --- quota: refused with QuotaExceeded, nothing stored, smaller writes still fit
code, status = err_code(s3.put_object, Bucket=QB, Key="too-big", Body=os.urandom(2 * 1024 * 1024))
assert (code, status) == ("QuotaExceeded", 403), (code, status)
assert err_code(s3.head_object, Bucket=QB, Key="too-big")[1] == 404
s3.put_object(Bucket=QB, Key="fits", Body=b"x" * 1000)
assert s3.list_objects_v2(Bucket=QB)["KeyCount"] == 1

# --- unimplemented operations answer NotImplemented, never success
assert err_code(s3.get_bucket_lifecycle_configuration, Bucket=B)[0] == "NotImplemented"
assert err_code(s3.put_bucket_lifecycle_configuration, Bucket=B, LifecycleConfiguration={
    "Rules": [{"ID": "r", "Status": "Enabled", "Filter": {"Prefix": ""},
               "Expiration": {"Days": 1}}]})[0] == "NotImplemented"

# --- bad input: malformed XML bodies and oversized headers get S3 errors, store nothing, and the
# server keeps serving
def signed_raw(method, path_query, body=b"", headers=None):
    req = AWSRequest(method=method, url=EP.rstrip("/") + path_query, data=body,
                     headers=dict(headers or {}))
    req.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(req)
    p = req.prepare()
    u = urllib.parse.urlsplit(p.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request(method, u.path + ("?" + u.query if u.query else ""), body=body,
                 headers=dict(p.headers))
    r = conn.getresponse()
    return r.status, r.read().decode(errors="replace")


s3.put_object(Bucket=B, Key="keep-me", Body=b"still here")
bad = b"<Delete><Object><Key>keep-me</Key></Object>"  # unterminated
import base64
md5b64 = base64.b64encode(hashlib.md5(bad).digest()).decode()
st, txt = signed_raw("POST", f"/{B}?delete", bad, {"Content-MD5": md5b64})
assert st == 400 and "MalformedXML" in txt, (st, txt)
assert s3.get_object(Bucket=B, Key="keep-me")["Body"].read() == b"still here"
up = s3.create_multipart_upload(Bucket=B, Key="mpu-bad")["UploadId"]
s3.upload_part(Bucket=B, Key="mpu-bad", UploadId=up, PartNumber=1, Body=b"p" * 10)
st, txt = signed_raw("POST", f"/{B}/mpu-bad?uploadId={urllib.parse.quote(up)}", b"not xml at all")
assert st == 400 and "MalformedXML" in txt, (st, txt)
assert err_code(s3.head_object, Bucket=B, Key="mpu-bad")[1] == 404
s3.abort_multipart_upload(Bucket=B, Key="mpu-bad", UploadId=up)
# 600 KB of request headers: refused at the HTTP layer (431/400), connection closed, server fine.
u = urllib.parse.urlsplit(EP)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
try:
    conn.request("GET", (u.path.rstrip("/") + f"/{B}/keep-me"), headers={"x-big": "a" * 600_000})
    big_status = conn.getresponse().status
except (ConnectionError, http.client.HTTPException):
    big_status = "closed"
assert big_status in (400, 431, "closed"), big_status
s3.head_bucket(Bucket=B)

print("boto3: all operations OK")
