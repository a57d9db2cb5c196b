#!/usr/bin/env python3
"""Encryption at rest (issue 18) with boto3: SSE-S3 and SSE-C on put, get, head, copy, multipart
(parts and part copies), AWS's errors for missing, wrong and malformed keys, and the chunk files
and metadata on disk read back for plaintext (none may be found; an unencrypted control object
proves the scan finds plaintext when it is there).

Env: S3_ENDPOINT, S3_AK, S3_SECRET, S3_DATA_DIR (the store's data dir). With S3_ENCRYPT_ALL=1
(a store that seals every chunk) only the last section runs: plain objects hold no plaintext.
Exits non-zero on the first failed assertion; prints one line per section.
"""
import base64
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
DATA = os.environ["S3_DATA_DIR"]
U = urllib.parse.urlsplit(EP)
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


def body(marker, n):
    m = marker.encode()
    return (m * (n // len(m) + 1))[:n]


def files_with(needle):
    hits = []
    for root, _dirs, files in os.walk(DATA):
        for f in files:
            p = os.path.join(root, f)
            try:
                with open(p, "rb") as fh:
                    if needle in fh.read():
                        hits.append(p)
            except OSError:
                pass
    return hits


def signed_raw(method, path_query, headers, body_bytes=b""):
    req = AWSRequest(method=method, url=f"{U.scheme}://{U.netloc}{path_query}", data=body_bytes,
                     headers=dict(headers))
    req.headers["x-amz-content-sha256"] = hashlib.sha256(body_bytes).hexdigest()
    SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(req)
    p = req.prepare()
    u = urllib.parse.urlsplit(p.url)
    conn = http.client.HTTPConnection(U.hostname, U.port, timeout=30)
    conn.request(method, u.path + ("?" + u.query if u.query else ""), body=body_bytes,
                 headers=dict(p.headers))
    r = conn.getresponse()
    return r.status, r.read().decode(errors="replace")


def path(b, k):
    return U.path.rstrip("/") + f"/{b}/{urllib.parse.quote(k)}"


def b64(x):
    return base64.b64encode(x).decode()


B = "sse"
s3.create_bucket(Bucket=B)

if os.environ.get("S3_ENCRYPT_ALL") == "1":
    # Every chunk sealed: plain puts (small, chunked, multipart) leave no plaintext on disk.
    big = body("ALL-SEALED-BIG-0123456789abcdefghijklmnopq.", 3 * MiB)
    small = body("ALL-SEALED-SMALL-0123456789abcdefghijklmno.", 3000)
    part = body("ALL-SEALED-PART-0123456789abcdefghijklmnop.", 5 * MiB)
    s3.put_object(Bucket=B, Key="big", Body=big)
    s3.put_object(Bucket=B, Key="small", Body=small)
    up = s3.create_multipart_upload(Bucket=B, Key="mp")["UploadId"]
    e1 = s3.upload_part(Bucket=B, Key="mp", UploadId=up, PartNumber=1, Body=part)["ETag"]
    e2 = s3.upload_part(Bucket=B, Key="mp", UploadId=up, PartNumber=2, Body=small)["ETag"]
    s3.complete_multipart_upload(Bucket=B, Key="mp", UploadId=up, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert s3.get_object(Bucket=B, Key="big")["Body"].read() == big
    assert s3.get_object(Bucket=B, Key="small")["Body"].read() == small
    assert s3.get_object(Bucket=B, Key="mp")["Body"].read() == part + small
    r = s3.get_object(Bucket=B, Key="big", Range="bytes=1048570-1048600")["Body"].read()
    assert r == big[1048570:1048601]
    for m in (big, small, part):
        assert not files_with(m[:40]), files_with(m[:40])
    print("sse: encrypt-all OK")
    raise SystemExit(0)

# --- 1. SSE-S3
big = body("SSE-S3-BIG-MARKER-0123456789abcdefghijklmn.", 3 * MiB + 17)
small = body("SSE-S3-SMALL-MARKER-0123456789abcdefghijkl.", 2000)
r = s3.put_object(Bucket=B, Key="s3big", Body=big, ServerSideEncryption="AES256")
assert r["ServerSideEncryption"] == "AES256", r
s3.put_object(Bucket=B, Key="s3small", Body=small, ServerSideEncryption="AES256")
h = s3.head_object(Bucket=B, Key="s3big")
assert h["ServerSideEncryption"] == "AES256" and h["ContentLength"] == len(big), h
g = s3.get_object(Bucket=B, Key="s3big")
assert g["ServerSideEncryption"] == "AES256" and g["Body"].read() == big
assert s3.get_object(Bucket=B, Key="s3small")["Body"].read() == small
g = s3.get_object(Bucket=B, Key="s3big", Range="bytes=1048000-2100000")
assert g["Body"].read() == big[1048000:2100001]
# An unencrypted control object: its plaintext is on disk (the scan works), and no header.
ctl = body("PLAIN-CONTROL-MARKER-0123456789abcdefghijk.", 2 * MiB)
r = s3.put_object(Bucket=B, Key="plain", Body=ctl)
assert "ServerSideEncryption" not in r, r
assert "ServerSideEncryption" not in s3.head_object(Bucket=B, Key="plain")
assert files_with(ctl[:40]), "the control object's plaintext is on disk"
assert not files_with(big[:40]) and not files_with(small[:40])
assert err(s3.put_object, Bucket=B, Key="kms", Body=b"x", ServerSideEncryption="aws:kms")[0] \
    == "NotImplemented"
assert err(s3.head_object, Bucket=B, Key="kms")[1] == 404, "nothing stored"
st, _ = signed_raw("PUT", path(B, "bad"), {"x-amz-server-side-encryption": "AES128"}, b"x")
assert st == 400, st
print("sse: SSE-S3 OK")

# --- 2. SSE-C
key = os.urandom(32)
wrong = os.urandom(32)
C = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key}
W = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": wrong}
cbig = body("SSE-C-BIG-MARKER-0123456789abcdefghijklmno.", 2 * MiB + 5)
csmall = body("SSE-C-SMALL-MARKER-0123456789abcdefghijklm.", 1000)
r = s3.put_object(Bucket=B, Key="cbig", Body=cbig, **C)
kmd5 = b64(hashlib.md5(key).digest())
assert r["SSECustomerAlgorithm"] == "AES256" and r["SSECustomerKeyMD5"] == kmd5, r
assert "ServerSideEncryption" not in r, r
s3.put_object(Bucket=B, Key="csmall", Body=csmall, **C)
for k, want in (("cbig", cbig), ("csmall", csmall)):
    assert err(s3.get_object, Bucket=B, Key=k) == ("InvalidRequest", 400)
    assert err(s3.get_object, Bucket=B, Key=k, **W) == ("AccessDenied", 403)
    assert err(s3.head_object, Bucket=B, Key=k)[1] == 400
    assert err(s3.head_object, Bucket=B, Key=k, **W)[1] == 403
    g = s3.get_object(Bucket=B, Key=k, **C)
    assert g["SSECustomerKeyMD5"] == kmd5 and g["Body"].read() == want
    h = s3.head_object(Bucket=B, Key=k, **C)
    assert h["SSECustomerAlgorithm"] == "AES256" and h["ContentLength"] == len(want)
g = s3.get_object(Bucket=B, Key="cbig", Range="bytes=5-1048580", **C)
assert g["Body"].read() == cbig[5:1048581]
# A customer key for an object without one.
assert err(s3.get_object, Bucket=B, Key="plain", **C) == ("InvalidRequest", 400)
# Malformed keys: a short key, an MD5 that does not match, a missing algorithm, both kinds.
assert err(s3.put_object, Bucket=B, Key="c2", Body=b"x", SSECustomerAlgorithm="AES256",
           SSECustomerKey=os.urandom(16)) == ("InvalidArgument", 400)
hk = {"x-amz-server-side-encryption-customer-algorithm": "AES256",
      "x-amz-server-side-encryption-customer-key": b64(key),
      "x-amz-server-side-encryption-customer-key-md5": b64(hashlib.md5(wrong).digest())}
st, txt = signed_raw("PUT", path(B, "c3"), hk, b"x")
assert st == 400 and "InvalidArgument" in txt, (st, txt)
st, txt = signed_raw("PUT", path(B, "c3"), {
    "x-amz-server-side-encryption-customer-key": b64(key),
    "x-amz-server-side-encryption-customer-key-md5": kmd5}, b"x")
assert st == 400 and "InvalidArgument" in txt, (st, txt)
assert err(s3.put_object, Bucket=B, Key="c4", Body=b"x", ServerSideEncryption="AES256",
           **C) == ("InvalidArgument", 400)
for k in ("c2", "c3", "c4"):
    assert err(s3.head_object, Bucket=B, Key=k)[1] == 404, f"{k}: nothing stored"
assert not files_with(cbig[:40]) and not files_with(csmall[:40])
assert not files_with(key) and not files_with(b64(key).encode()), "the key is never stored"
print("sse: SSE-C OK")

# --- 3. Copies between encryptions
CS = {"CopySourceSSECustomerAlgorithm": "AES256", "CopySourceSSECustomerKey": key}
assert err(s3.copy_object, Bucket=B, Key="cp1", CopySource={"Bucket": B, "Key": "cbig"}) \
    == ("InvalidRequest", 400)
r = s3.copy_object(Bucket=B, Key="cp1", CopySource={"Bucket": B, "Key": "cbig"},
                   ServerSideEncryption="AES256", **CS)
assert r["ServerSideEncryption"] == "AES256", r
g = s3.get_object(Bucket=B, Key="cp1")
assert g["ServerSideEncryption"] == "AES256" and g["Body"].read() == cbig
r = s3.copy_object(Bucket=B, Key="cp2", CopySource={"Bucket": B, "Key": "s3big"}, **C)
assert r["SSECustomerKeyMD5"] == kmd5, r
assert err(s3.get_object, Bucket=B, Key="cp2")[1] == 400
assert s3.get_object(Bucket=B, Key="cp2", **C)["Body"].read() == big
# SSE-C to SSE-C with the same key shares chunks; to plain (no headers) decrypts.
s3.copy_object(Bucket=B, Key="cp3", CopySource={"Bucket": B, "Key": "cbig"}, **CS, **C)
assert s3.get_object(Bucket=B, Key="cp3", **C)["Body"].read() == cbig
s3.copy_object(Bucket=B, Key="cp4", CopySource={"Bucket": B, "Key": "cbig"}, **CS)
g = s3.get_object(Bucket=B, Key="cp4")
assert "ServerSideEncryption" not in g and g["Body"].read() == cbig
# Encrypting an object in place (same key, new encryption) is a valid copy.
s3.copy_object(Bucket=B, Key="plain", CopySource={"Bucket": B, "Key": "plain"},
               ServerSideEncryption="AES256")
assert s3.head_object(Bucket=B, Key="plain")["ServerSideEncryption"] == "AES256"
print("sse: copies OK")

# --- 4. Multipart: SSE-C (parts need the key) and SSE-S3, part copies
p1 = body("SSE-C-PART-ONE-0123456789abcdefghijklmnopq.", 5 * MiB)
p2 = body("SSE-C-PART-TWO-0123456789abcdefghijklmnopq.", 1 * MiB + 3)
up = s3.create_multipart_upload(Bucket=B, Key="cmp", **C)
assert up["SSECustomerKeyMD5"] == kmd5, up
uid = up["UploadId"]
assert err(s3.upload_part, Bucket=B, Key="cmp", UploadId=uid, PartNumber=1, Body=p1) \
    == ("InvalidRequest", 400)
assert err(s3.upload_part, Bucket=B, Key="cmp", UploadId=uid, PartNumber=1, Body=p1, **W) \
    == ("AccessDenied", 403)
e1 = s3.upload_part(Bucket=B, Key="cmp", UploadId=uid, PartNumber=1, Body=p1, **C)["ETag"]
e2 = s3.upload_part_copy(Bucket=B, Key="cmp", UploadId=uid, PartNumber=2,
                         CopySource={"Bucket": B, "Key": "s3big"},
                         CopySourceRange=f"bytes=0-{len(p2) - 1}", **C)["CopyPartResult"]["ETag"]
s3.complete_multipart_upload(Bucket=B, Key="cmp", UploadId=uid, MultipartUpload={"Parts": [
    {"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
assert err(s3.get_object, Bucket=B, Key="cmp")[1] == 400
assert s3.get_object(Bucket=B, Key="cmp", **C)["Body"].read() == p1 + big[:len(p2)]
up = s3.create_multipart_upload(Bucket=B, Key="smp", ServerSideEncryption="AES256")
assert up["ServerSideEncryption"] == "AES256", up
uid = up["UploadId"]
e1 = s3.upload_part(Bucket=B, Key="smp", UploadId=uid, PartNumber=1, Body=p2)["ETag"]
r = s3.complete_multipart_upload(Bucket=B, Key="smp", UploadId=uid, MultipartUpload={
    "Parts": [{"PartNumber": 1, "ETag": e1}]})
assert r["ServerSideEncryption"] == "AES256", r
g = s3.get_object(Bucket=B, Key="smp")
assert g["ServerSideEncryption"] == "AES256" and g["Body"].read() == p2
# boto3's managed transfer (multipart with SSE-C extra args) round-trips.
import io
s3.upload_fileobj(io.BytesIO(p1 + p2), B, "xfer", ExtraArgs=C)
out = io.BytesIO()
s3.download_fileobj(B, "xfer", out, ExtraArgs=C)
assert out.getvalue() == p1 + p2
assert not files_with(p1[:40]) and not files_with(p2[:40])
print("sse: multipart OK")
print("sse: all OK")
