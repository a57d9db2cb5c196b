#!/usr/bin/env python3
"""S3 second round (issue 18), with boto3 and raw HTTP where boto3 cannot send the case.

Sections: leaked chunks, refusals (never a wrong success), signing scope, checksums, conditional
writes (with a concurrency race), wrong codes and fields. Env: S3_ENDPOINT, S3_AK, S3_SECRET,
S3_DATA_DIR (the store's data dir, to count chunk files), S3_QUOTA_BUCKET (1 MiB quota).
Exits non-zero on the first failed assertion; prints one line per section.
"""
import base64
import datetime
import email.utils
import hashlib
import hmac
import http.client
import os
import socket
import sys
import threading
import time
import urllib.parse
import zlib

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
QB = os.environ["S3_QUOTA_BUCKET"]
U = urllib.parse.urlsplit(EP)
MiB = 1 << 20


def client(region="us-east-1", **cfg):
    return boto3.client(
        "s3", endpoint_url=EP, aws_access_key_id=AK, aws_secret_access_key=SK,
        region_name=region,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"max_attempts": 1}, **cfg))


s3 = client()


def err(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except ClientError as e:
        return (e.response["Error"].get("Code"), e.response["ResponseMetadata"]["HTTPStatusCode"],
                e.response)
    raise AssertionError(f"{fn.__name__} {a} {kw} unexpectedly succeeded")


def code(fn, *a, **kw):
    return err(fn, *a, **kw)[0]


def missing(b, k):
    return err(s3.head_object, Bucket=b, Key=k)[1] == 404


def path(b, k=""):
    return U.path.rstrip("/") + f"/{b}" + (f"/{urllib.parse.quote(k)}" if k else "")


def signed_raw(method, path_query, body=b"", headers=None, payload_hash=None, service="s3",
               region="us-east-1"):
    """A SigV4-signed request sent with http.client; returns (status, headers, body)."""
    req = AWSRequest(method=method, url=f"{U.scheme}://{U.netloc}{path_query}", data=body,
                     headers=dict(headers or {}))
    req.headers["x-amz-content-sha256"] = payload_hash or hashlib.sha256(body).hexdigest()
    SigV4Auth(Credentials(AK, SK), service, region).add_auth(req)
    p = req.prepare()
    u = urllib.parse.urlsplit(p.url)
    conn = http.client.HTTPConnection(U.hostname, U.port, timeout=30)
    conn.request(method, u.path + ("?" + u.query if u.query else ""), body=body,
                 headers=dict(p.headers))
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode(errors="replace")


# --- checksum algorithms in pure Python (botocore needs awscrt for CRC32C/CRC64NVME)
def _table(poly, bits):
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        t.append(c)
    return t


_T32C = _table(0x82F63B78, 32)
_T64N = _table(0x9A6C9329AC4BC9B5, 64)


def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c = _T32C[(c ^ x) & 0xFF] ^ (c >> 8)
    return (c ^ 0xFFFFFFFF).to_bytes(4, "big")


def crc64nvme(b):
    m = (1 << 64) - 1
    c = m
    for x in b:
        c = _T64N[(c ^ x) & 0xFF] ^ (c >> 8)
    return (c ^ m).to_bytes(8, "big")


assert crc32c(b"123456789").hex() == "e3069283"
assert crc64nvme(b"123456789").hex() == "ae8b14860a799888"
DIGEST = {
    "CRC32": lambda b: zlib.crc32(b).to_bytes(4, "big"),
    "CRC32C": crc32c,
    "SHA1": lambda b: hashlib.sha1(b).digest(),
    "SHA256": lambda b: hashlib.sha256(b).digest(),
    "CRC64NVME": crc64nvme,
}


def b64(raw):
    return base64.b64encode(raw).decode()


def chunk_files():
    n = 0
    for _root, _dirs, files in os.walk(os.path.join(DATA, "chunks")):
        n += sum(1 for f in files if len(f) == 64)
    return n


def settled(want, what):
    """Chunk count back to `want` (polled with a deadline: a dropped connection is noticed by the
    server asynchronously)."""
    deadline = time.time() + 10
    while chunk_files() != want and time.time() < deadline:
        time.sleep(0.05)
    assert chunk_files() == want, f"{what}: {chunk_files()} chunk files, expected {want}"


# =============================================================================================
# 1. No leaked chunks: every failed upload removes what it wrote before answering
B = "round2"
s3.create_bucket(Bucket=B)
s3.put_object(Bucket=B, Key="exists", Body=os.urandom(3 * MiB))
base = chunk_files()
assert base >= 3, base


def same(what):
    assert chunk_files() == base, f"{what}: {chunk_files()} chunk files, expected {base}"


big = os.urandom(3 * MiB)
assert code(s3.put_object, Bucket=B, Key="l1", Body=big, ContentMD5=b64(b"\0" * 16)) == "BadDigest"
same("whole object, wrong Content-MD5")
st, _, txt = signed_raw("PUT", path(B, "l2"), big, payload_hash=hashlib.sha256(b"x").hexdigest())
assert st == 400 and "XAmzContentSHA256Mismatch" in txt, (st, txt)
same("whole object, wrong x-amz-content-sha256")
assert code(s3.put_object, Bucket=B, Key="l3", Body=os.urandom(3 * MiB),
            ChecksumCRC32=b64(b"\0\0\0\0")) == "BadDigest"
same("whole object, wrong CRC32")
assert code(s3.put_object, Bucket=QB, Key="l4", Body=os.urandom(3 * MiB)) == "QuotaExceeded"
same("whole object over quota")
assert code(s3.put_object, Bucket=B, Key="exists", Body=os.urandom(3 * MiB), IfNoneMatch="*") \
    == "PreconditionFailed"
same("whole object, failed If-None-Match")


def truncated(target, declared, sent):
    """PUT `target` declaring `declared` bytes, send `sent`, end the stream; returns the answer.
    The server answers only after the aborted write removed its chunks, so counting them after
    the answer is not racing the server."""
    sock = socket.create_connection((U.hostname, U.port))
    hdrs = (f"PUT {target} HTTP/1.1\r\nHost: {U.netloc}\r\nContent-Length: {declared}\r\n"
            f"Authorization: Basic {b64(f'{AK}:{SK}'.encode())}\r\n\r\n")
    sock.sendall(hdrs.encode() + os.urandom(sent))
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(10)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    return answer.decode(errors="replace")


# truncated body: 3 MiB declared, 2 MiB sent, stream ended
ans = truncated(path(B, "l5"), 3 * MiB, 2 * MiB)
assert ans.startswith("HTTP/1.1 400") and "IncompleteBody" in ans, ans
same("whole object, truncated body")
assert missing(B, "l5")
# parts
up = s3.create_multipart_upload(Bucket=B, Key="mp")["UploadId"]
assert code(s3.upload_part, Bucket=B, Key="mp", UploadId=up, PartNumber=1,
            Body=os.urandom(5 * MiB), ContentMD5=b64(b"\1" * 16)) == "BadDigest"
same("part, wrong Content-MD5")
assert code(s3.upload_part, Bucket=B, Key="mp", UploadId=up, PartNumber=1,
            Body=os.urandom(5 * MiB), ChecksumSHA256=b64(b"\0" * 32)) == "BadDigest"
same("part, wrong SHA256 checksum")
st, _, txt = signed_raw("PUT", path(B, "mp") + f"?partNumber=1&uploadId={up}", os.urandom(5 * MiB),
                        payload_hash=hashlib.sha256(b"y").hexdigest())
assert st == 400 and "XAmzContentSHA256Mismatch" in txt, (st, txt)
same("part, wrong x-amz-content-sha256")
ans = truncated(path(B, "mp") + f"?partNumber=2&uploadId={up}", 5 * MiB, 3 * MiB)
assert ans.startswith("HTTP/1.1 400") and "IncompleteBody" in ans, ans
same("part, truncated body")
s3.upload_part(Bucket=B, Key="mp", UploadId=up, PartNumber=1, Body=os.urandom(5 * MiB))
s3.upload_part(Bucket=B, Key="mp", UploadId=up, PartNumber=2, Body=os.urandom(2 * MiB))
assert chunk_files() == base + 7
s3.abort_multipart_upload(Bucket=B, Key="mp", UploadId=up)
same("aborted multipart upload")
print("round2: no leaked chunks OK")

# =============================================================================================
# 2. Never a wrong success: one case per header / parameter
K = "refused"
NI = "NotImplemented"
cases = [
    # (SSE-S3 and SSE-C are implemented: boto3_sse.py)
    ("SSE-KMS", dict(ServerSideEncryption="aws:kms", SSEKMSKeyId="k"), NI),
    ("SSE-KMS context", dict(SSEKMSEncryptionContext=b64(b'{"a":"b"}')), NI),
    ("SSE bucket key", dict(BucketKeyEnabled=True), NI),
    ("SSE-C short key", dict(SSECustomerAlgorithm="AES256", SSECustomerKey="k" * 16),
     "InvalidArgument"),
    ("object lock mode", dict(ObjectLockMode="GOVERNANCE",
                              ObjectLockRetainUntilDate=datetime.datetime(2030, 1, 1)), NI),
    ("legal hold", dict(ObjectLockLegalHoldStatus="ON"), NI),
    ("canned ACL", dict(ACL="public-read"), "AccessControlListNotSupported"),
    ("grant read", dict(GrantRead='id="someone"'), "AccessControlListNotSupported"),
    ("grant full control", dict(GrantFullControl='id="x"'), "AccessControlListNotSupported"),
    ("tagging over the limit", dict(Tagging="&".join(f"k{i}=v" for i in range(11))),
     "InvalidTag"),
    ("storage class GLACIER", dict(StorageClass="GLACIER"), NI),
    ("storage class invalid", dict(StorageClass="FAST"), "InvalidStorageClass"),
    ("website redirect", dict(WebsiteRedirectLocation="/x"), NI),
    ("expected bucket owner", dict(ExpectedBucketOwner="123456789012"), "AccessDenied"),
    ("If-None-Match etag", dict(IfNoneMatch='"abc"'), NI),
]
for name, kw, want in cases:
    got = code(s3.put_object, Bucket=B, Key=K, Body=b"x", **kw)
    assert got == want, (name, got, want)
    assert missing(B, K), name
s3.put_object(Bucket=B, Key=K, Body=b"x", ACL="private", StorageClass="STANDARD",
              ExpectedBucketOwner="tunnelmesh")
# a copy-source customer key for a source without one
assert code(s3.copy_object, Bucket=B, Key="c", CopySource={"Bucket": B, "Key": K},
            CopySourceSSECustomerAlgorithm="AES256",
            CopySourceSSECustomerKey="k" * 32) == "InvalidRequest"
assert code(s3.copy_object, Bucket=B, Key="c", CopySource={"Bucket": B, "Key": K},
            ServerSideEncryption="aws:kms") == NI
assert code(s3.copy_object, Bucket=B, Key="c", CopySource={"Bucket": B, "Key": K},
            TaggingDirective="REPLACE", Tagging="aws:a=b") == "InvalidTag"
assert code(s3.create_multipart_upload, Bucket=B, Key="c", ServerSideEncryption="aws:kms") == NI
assert code(s3.create_multipart_upload, Bucket=B, Key="c", ChecksumAlgorithm="CRC32",
            ChecksumType="FULL_OBJECT") == NI
assert code(s3.create_bucket, Bucket="locked-b", ObjectLockEnabledForBucket=True) == NI
assert code(s3.create_bucket, Bucket="owned-b", ObjectOwnership="ObjectWriter") == NI
assert code(s3.create_bucket, Bucket="eu-b", CreateBucketConfiguration={
    "LocationConstraint": "eu-west-1"}) == "IllegalLocationConstraintException"
assert code(s3.create_bucket, Bucket="acl-b", ACL="public-read") == "AccessControlListNotSupported"
assert "eu-b" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
assert code(s3.put_object_acl, Bucket=B, Key=K, ACL="public-read") == "AccessControlListNotSupported"
assert code(s3.put_object_tagging, Bucket=B, Key=K, Tagging={"TagSet": [
    {"Key": "a", "Value": "1"}, {"Key": "a", "Value": "2"}]}) == "InvalidTag"
assert code(s3.put_object_retention, Bucket=B, Key=K,
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": datetime.datetime(2030, 1, 1)}) == NI
assert code(s3.put_object_legal_hold, Bucket=B, Key=K, LegalHold={"Status": "ON"}) == NI
assert code(s3.put_bucket_encryption, Bucket=B, ServerSideEncryptionConfiguration={"Rules": [
    {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}) == NI
# versions of an unversioned bucket: every object is the `null` version
assert s3.get_object(Bucket=B, Key=K, VersionId="null")["Body"].read() == b"x"
assert code(s3.get_object, Bucket=B, Key=K, VersionId="3HL4kqtJlcpXroDTDmJ") == "NoSuchVersion"
assert err(s3.head_object, Bucket=B, Key=K, VersionId="3HL4kqtJlcpXroDTDmJ")[1] == 404
s3.delete_object(Bucket=B, Key=K, VersionId="3HL4kqtJlcpXroDTDmJ")  # no such version: a no-op
assert code(s3.copy_object, Bucket=B, Key="c",
            CopySource={"Bucket": B, "Key": K, "VersionId": "3HL4kqtJ"}) == "NoSuchVersion"
assert missing(B, "c")
s3.delete_objects(Bucket=B, Delete={"Objects": [{"Key": K, "VersionId": "3HL4kqtJ"}]})
assert s3.get_object(Bucket=B, Key=K)["Body"].read() == b"x", "nothing deleted"
# (partNumber on GET/HEAD is implemented: boto3_round3.py)
assert s3.get_object(Bucket=B, Key=K, PartNumber=1)["Body"].read() == b"x"
print("round2: refusals OK")

# =============================================================================================
# 3. Signing scope: region and service
e = err(client(region="eu-west-1").list_objects_v2, Bucket=B)
assert e[0] == "AuthorizationHeaderMalformed" and "expecting 'us-east-1'" in e[2]["Error"]["Message"], e
url = client(region="eu-west-1").generate_presigned_url(
    "get_object", Params={"Bucket": B, "Key": K}, ExpiresIn=60)
u = urllib.parse.urlsplit(url)
conn = http.client.HTTPConnection(u.hostname, u.port)
conn.request("GET", u.path + "?" + u.query)
r = conn.getresponse()
txt = r.read().decode()
assert r.status == 400 and "AuthorizationHeaderMalformed" in txt and "us-east-1" in txt, txt
st, _, txt = signed_raw("GET", path(B, K), service="iam")
assert st == 400 and "AuthorizationHeaderMalformed" in txt and "expecting &apos;s3&apos;" in txt, txt
st, _, txt = signed_raw("GET", path(B, K))
assert st == 200 and txt == "x"
print("round2: signing scope OK")

# =============================================================================================
# 4. Checksums
data = os.urandom(100_000)
r = s3.put_object(Bucket=B, Key="ck-default", Body=data)  # boto3's default: CRC32
assert r.get("ChecksumCRC32") == b64(DIGEST["CRC32"](data)), r
h = s3.head_object(Bucket=B, Key="ck-default", ChecksumMode="ENABLED")
assert h["ChecksumCRC32"] == b64(DIGEST["CRC32"](data)) and h.get("ChecksumType") == "FULL_OBJECT", h
g = s3.get_object(Bucket=B, Key="ck-default", ChecksumMode="ENABLED")
assert g["Body"].read() == data and g["ChecksumCRC32"] == h["ChecksumCRC32"]
assert "ChecksumCRC32" not in s3.head_object(Bucket=B, Key="ck-default")
for algo, fn in DIGEST.items():
    for size in (1000, 2 * MiB + 5):  # small (inline) and chunked objects
        body = os.urandom(size)
        key = f"ck-{algo}-{size}"
        good = b64(fn(body))
        s3.put_object(Bucket=B, Key=key, Body=body, **{f"Checksum{algo}": good})
        h = s3.head_object(Bucket=B, Key=key, ChecksumMode="ENABLED")
        assert h.get(f"Checksum{algo}") == good, (algo, h)
        bad = b64(fn(body + b"!"))
        assert code(s3.put_object, Bucket=B, Key=key + "-bad", Body=body,
                    **{f"Checksum{algo}": bad}) == "BadDigest", algo
        assert missing(B, key + "-bad")
# malformed value, two checksums
assert code(s3.put_object, Bucket=B, Key="ck-x", Body=b"a", ChecksumCRC32="AAAA") == "InvalidRequest"
st, _, txt = signed_raw("PUT", path(B, "ck-x"), b"a", {
    "x-amz-checksum-crc32": b64(DIGEST["CRC32"](b"a")), "x-amz-checksum-sha1": b64(DIGEST["SHA1"](b"a"))})
assert st == 400 and "InvalidRequest" in txt, txt
assert missing(B, "ck-x")


# aws-chunked with a checksum trailer (STREAMING-UNSIGNED-PAYLOAD-TRAILER), as SDKs send over TLS
def trailer_put(key, body, trailer_value, algo="crc32"):
    framed = b""
    for i in range(0, len(body), 65536):
        c = body[i:i + 65536]
        framed += f"{len(c):x}\r\n".encode() + c + b"\r\n"
    framed += f"0\r\nx-amz-checksum-{algo}:{trailer_value}\r\n\r\n".encode()
    return signed_raw("PUT", path(B, key), framed, {
        "content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(body)),
        "x-amz-trailer": f"x-amz-checksum-{algo}", "x-amz-sdk-checksum-algorithm": algo.upper()},
        payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")


body = os.urandom(300_000)
st, _, txt = trailer_put("ck-trailer", body, b64(DIGEST["CRC32"](body)))
assert st == 200, (st, txt)
h = s3.head_object(Bucket=B, Key="ck-trailer", ChecksumMode="ENABLED")
assert h["ChecksumCRC32"] == b64(DIGEST["CRC32"](body))
assert s3.get_object(Bucket=B, Key="ck-trailer")["Body"].read() == body
st, _, txt = trailer_put("ck-trailer-bad", body, b64(DIGEST["CRC32"](b"other")))
assert st == 400 and "BadDigest" in txt, (st, txt)
assert missing(B, "ck-trailer-bad")
st, _, txt = trailer_put("ck-trailer-c", body, b64(crc32c(body)), "crc32c")
assert st == 200, (st, txt)
assert s3.head_object(Bucket=B, Key="ck-trailer-c", ChecksumMode="ENABLED")["ChecksumCRC32C"] \
    == b64(crc32c(body))
# multipart with CRC32 part checksums: composite checksum
MK = "ck-mp"
up = s3.create_multipart_upload(Bucket=B, Key=MK, ChecksumAlgorithm="CRC32")
assert up.get("ChecksumAlgorithm") == "CRC32", up
uid = up["UploadId"]
p1, p2 = os.urandom(5 * MiB), os.urandom(1000)
r1 = s3.upload_part(Bucket=B, Key=MK, UploadId=uid, PartNumber=1, Body=p1, ChecksumAlgorithm="CRC32")
r2 = s3.upload_part(Bucket=B, Key=MK, UploadId=uid, PartNumber=2, Body=p2, ChecksumAlgorithm="CRC32")
assert r1["ChecksumCRC32"] == b64(DIGEST["CRC32"](p1)), r1
lp = s3.list_parts(Bucket=B, Key=MK, UploadId=uid)["Parts"]
assert [p.get("ChecksumCRC32") for p in lp] == [r1["ChecksumCRC32"], r2["ChecksumCRC32"]], lp
assert code(s3.complete_multipart_upload, Bucket=B, Key=MK, UploadId=uid, MultipartUpload={"Parts": [
    {"PartNumber": 1, "ETag": r1["ETag"], "ChecksumCRC32": r2["ChecksumCRC32"]},
    {"PartNumber": 2, "ETag": r2["ETag"], "ChecksumCRC32": r2["ChecksumCRC32"]}]}) == "InvalidPart"
want = b64(DIGEST["CRC32"](DIGEST["CRC32"](p1) + DIGEST["CRC32"](p2))) + "-2"
good_parts = {"Parts": [
    {"PartNumber": 1, "ETag": r1["ETag"], "ChecksumCRC32": r1["ChecksumCRC32"]},
    {"PartNumber": 2, "ETag": r2["ETag"], "ChecksumCRC32": r2["ChecksumCRC32"]}]}
assert code(s3.complete_multipart_upload, Bucket=B, Key=MK, UploadId=uid, MultipartUpload=good_parts,
            ChecksumCRC32="AAAAAA==-2") == "BadDigest"
assert missing(B, MK)
c = s3.complete_multipart_upload(Bucket=B, Key=MK, UploadId=uid, MultipartUpload=good_parts,
                                 ChecksumCRC32=want)
assert c.get("ChecksumCRC32") == want, (c, want)
h = s3.head_object(Bucket=B, Key=MK, ChecksumMode="ENABLED")
assert h["ChecksumCRC32"] == want and h["ChecksumType"] == "COMPOSITE", h
g = s3.get_object(Bucket=B, Key=MK, ChecksumMode="ENABLED")
assert g["Body"].read() == p1 + p2
# s3transfer (upload_file / download_file) with its default checksums, multipart and not
src = os.path.join(DATA, "..", "src.bin")
with open(src, "wb") as f:
    f.write(os.urandom(20 * MiB + 3))
s3.upload_file(src, B, "transfer-big")
h = s3.head_object(Bucket=B, Key="transfer-big", ChecksumMode="ENABLED")
assert h["ContentLength"] == 20 * MiB + 3 and h["ChecksumCRC32"].endswith("-3"), h
dst = src + ".back"
s3.download_file(B, "transfer-big", dst)
assert open(dst, "rb").read() == open(src, "rb").read()
print("round2: checksums OK")

# =============================================================================================
# 5. Conditional writes
r = s3.put_object(Bucket=B, Key="cw", Body=b"one", IfNoneMatch="*")
assert code(s3.put_object, Bucket=B, Key="cw", Body=b"two", IfNoneMatch="*") == "PreconditionFailed"
assert s3.put_object(Bucket=B, Key="cw", Body=b"three", IfMatch=r["ETag"])["ETag"] != r["ETag"]
assert code(s3.put_object, Bucket=B, Key="cw", Body=b"four", IfMatch=r["ETag"]) == "PreconditionFailed"
assert code(s3.put_object, Bucket=B, Key="cw-missing", Body=b"x", IfMatch=r["ETag"]) == "NoSuchKey"
assert s3.get_object(Bucket=B, Key="cw")["Body"].read() == b"three"
# CopyObject (boto3 has no parameter for it: raw header)
st, _, txt = signed_raw("PUT", path(B, "cw"), b"", {"x-amz-copy-source": f"/{B}/{K}",
                                                     "If-None-Match": "*"})
assert st == 412 and "PreconditionFailed" in txt, (st, txt)
st, _, txt = signed_raw("PUT", path(B, "cw-copy"), b"", {"x-amz-copy-source": f"/{B}/{K}",
                                                          "If-None-Match": "*"})
assert st == 200, (st, txt)
# CompleteMultipartUpload
up = s3.create_multipart_upload(Bucket=B, Key="cw")["UploadId"]
e1 = s3.upload_part(Bucket=B, Key="cw", UploadId=up, PartNumber=1, Body=b"mp")["ETag"]
parts = {"Parts": [{"PartNumber": 1, "ETag": e1}]}
assert code(s3.complete_multipart_upload, Bucket=B, Key="cw", UploadId=up, MultipartUpload=parts,
            IfNoneMatch="*") == "PreconditionFailed"
assert code(s3.complete_multipart_upload, Bucket=B, Key="cw", UploadId=up, MultipartUpload=parts,
            IfMatch='"0123"') == "PreconditionFailed"
cur = s3.head_object(Bucket=B, Key="cw")["ETag"]
s3.complete_multipart_upload(Bucket=B, Key="cw", UploadId=up, MultipartUpload=parts, IfMatch=cur)
assert s3.get_object(Bucket=B, Key="cw")["Body"].read() == b"mp"


# the race: N clients PUT one new key with If-None-Match: * at once, exactly one wins
def race(key, size, n=16):
    gate = threading.Barrier(n)
    results = [None] * n
    bodies = [os.urandom(size) for _ in range(n)]

    def one(i):
        c = client()
        gate.wait()
        try:
            c.put_object(Bucket=B, Key=key, Body=bodies[i], IfNoneMatch="*")
            results[i] = "won"
        except ClientError as e:
            results[i] = e.response["Error"]["Code"]
    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    won = [i for i, x in enumerate(results) if x == "won"]
    assert len(won) == 1, results
    assert all(x in ("won", "PreconditionFailed", "ConditionalRequestConflict") for x in results), results
    assert s3.get_object(Bucket=B, Key=key)["Body"].read() == bodies[won[0]]


before = chunk_files()
race("race-small", 1000)
race("race-big", 2 * MiB + 1)
settled(before + 3, "race losers left chunks")  # only the winner's 3 chunks stay
print("round2: conditional writes OK")

# =============================================================================================
# 6. Wrong codes and fields
# repeated CompleteMultipartUpload answers 200 with the same ETag; a part listed twice is accepted
up = s3.create_multipart_upload(Bucket=B, Key="again")["UploadId"]
a1 = s3.upload_part(Bucket=B, Key="again", UploadId=up, PartNumber=1, Body=os.urandom(5 * MiB))["ETag"]
a1b = s3.upload_part(Bucket=B, Key="again", UploadId=up, PartNumber=1, Body=os.urandom(5 * MiB))["ETag"]
a2 = s3.upload_part(Bucket=B, Key="again", UploadId=up, PartNumber=2, Body=b"end")["ETag"]
parts = {"Parts": [{"PartNumber": 1, "ETag": a1}, {"PartNumber": 1, "ETag": a1b},
                   {"PartNumber": 2, "ETag": a2}]}
c1 = s3.complete_multipart_upload(Bucket=B, Key="again", UploadId=up, MultipartUpload=parts)
assert c1["ETag"].endswith('-2"'), c1
c2 = s3.complete_multipart_upload(Bucket=B, Key="again", UploadId=up, MultipartUpload=parts)
assert c2["ETag"] == c1["ETag"], (c1, c2)
assert code(s3.complete_multipart_upload, Bucket=B, Key="again", UploadId="nope",
            MultipartUpload=parts) == "NoSuchUpload"
# re-creating your own bucket (us-east-1 answers 200)
s3.create_bucket(Bucket=B)
# Content-MD5 of a wrong length, or empty
assert code(s3.put_object, Bucket=B, Key="md5", Body=b"a", ContentMD5=b64(b"short")) == "InvalidDigest"
st, _, txt = signed_raw("PUT", path(B, "md5"), b"a", {"Content-MD5": ""})
assert st == 400 and "InvalidDigest" in txt, (st, txt)
assert missing(B, "md5")


# SigV4 with a Date header (RFC 2822, `-0000`) and no X-Amz-Date, hand-signed
def date_signed_get(key):
    now = datetime.datetime.now(datetime.timezone.utc)
    date_hdr = email.utils.formatdate(now.timestamp(), usegmt=False)
    assert date_hdr.endswith("-0000"), date_hdr
    amz = now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz[:8]}/us-east-1/s3/aws4_request"
    p = path(B, key)
    h = {"host": U.netloc, "date": date_hdr, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    signed = sorted(h)
    creq = "\n".join(["GET", p, "", "".join(f"{k}:{h[k]}\n" for k in signed), ";".join(signed),
                      "UNSIGNED-PAYLOAD"])
    sts = "\n".join(["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(creq.encode()).hexdigest()])

    def hm(k, m):
        return hmac.new(k, m.encode(), hashlib.sha256).digest()
    key_ = hm(hm(hm(hm(("AWS4" + SK).encode(), amz[:8]), "us-east-1"), "s3"), "aws4_request")
    sig = hmac.new(key_, sts.encode(), hashlib.sha256).hexdigest()
    h["authorization"] = (f"AWS4-HMAC-SHA256 Credential={AK}/{scope}, "
                          f"SignedHeaders={';'.join(signed)}, Signature={sig}")
    conn = http.client.HTTPConnection(U.hostname, U.port)
    conn.request("GET", p, headers=h)
    r = conn.getresponse()
    return r.status, r.read()


assert date_signed_get(K) == (200, b"x")
# 304 carries the ETag and Last-Modified
etag = s3.head_object(Bucket=B, Key=K)["ETag"]
e = err(s3.get_object, Bucket=B, Key=K, IfNoneMatch=etag)
assert e[1] == 304 and e[2]["ResponseMetadata"]["HTTPHeaders"].get("etag") == etag, e
assert "last-modified" in e[2]["ResponseMetadata"]["HTTPHeaders"]
# Expires and Content-Language are stored
exp = datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)
s3.put_object(Bucket=B, Key="meta", Body=b"m", Expires=exp, ContentLanguage="de-CH")
for r in (s3.head_object(Bucket=B, Key="meta"), s3.get_object(Bucket=B, Key="meta")):
    assert r["ContentLanguage"] == "de-CH", r
    assert r["ResponseMetadata"]["HTTPHeaders"].get("expires") == "Tue, 06 May 2031 07:08:09 GMT", r
# errors carry a request id, in the header and in the body
st, hd, txt = signed_raw("GET", path(B, "no-such-key"))
assert st == 404 and hd.get("x-amz-request-id") and \
    f"<RequestId>{hd['x-amz-request-id']}</RequestId>" in txt, (hd, txt)
st, hd, txt = signed_raw("GET", path(B, K), service="iam")
assert f"<RequestId>{hd['x-amz-request-id']}</RequestId>" in txt, txt
assert code(s3.get_object, Bucket=B, Key="nope") == "NoSuchKey"
assert err(s3.get_object, Bucket=B, Key="nope")[2]["ResponseMetadata"]["RequestId"]
# ListObjectsV2: Owner only with fetch-owner; an empty delimiter is not echoed; max-keys 0 / -1
v2 = s3.list_objects_v2(Bucket=B, Prefix="ck-")
assert v2["Contents"] and all("Owner" not in o for o in v2["Contents"]), v2["Contents"][0]
v2 = s3.list_objects_v2(Bucket=B, Prefix="ck-", FetchOwner=True)
assert all(o["Owner"]["ID"] == "tunnelmesh" for o in v2["Contents"])
v2 = s3.list_objects_v2(Bucket=B, Delimiter="")
assert "Delimiter" not in v2 and v2["KeyCount"] > 0, v2.get("Delimiter")
v2 = s3.list_objects_v2(Bucket=B, MaxKeys=0)
assert v2["IsTruncated"] is False and v2["KeyCount"] == 0, v2
assert code(s3.list_objects_v2, Bucket=B, MaxKeys=-1) == "InvalidArgument"
assert code(s3.list_objects, Bucket=B, MaxKeys=-1) == "InvalidArgument"
# an XML body over 20 MiB: refused from its declared length (Expect: 100-continue, so the
# 21 MiB are never sent)
big_xml = b"<" * (21 * MiB)
req = AWSRequest(method="POST", url=f"{U.scheme}://{U.netloc}{path(B)}?delete", data=big_xml,
                 headers={"Content-MD5": b64(hashlib.md5(big_xml).digest()),
                          "x-amz-content-sha256": hashlib.sha256(big_xml).hexdigest()})
SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(req)
p = req.prepare()
sock = socket.create_connection((U.hostname, U.port), timeout=10)
head = f"POST {path(B)}?delete HTTP/1.1\r\nHost: {U.netloc}\r\n" + "".join(
    f"{k}: {v}\r\n" for k, v in p.headers.items() if k.lower() != "content-length")
head += f"Content-Length: {len(big_xml)}\r\nExpect: 100-continue\r\n\r\n"
sock.sendall(head.encode())
resp = b""
while b"</Error>" not in resp:
    got = sock.recv(65536)
    if not got:
        break
    resp += got
sock.close()
txt = resp.decode(errors="replace")
assert txt.startswith("HTTP/1.1 400") and "MaxMessageLengthExceeded" in txt, txt[:400]
assert s3.get_object(Bucket=B, Key=K)["Body"].read() == b"x"
print("round2: codes and fields OK")

# =============================================================================================
# 7. Versioning
V = "versioned"
s3.create_bucket(Bucket=V)
assert "Status" not in s3.get_bucket_versioning(Bucket=V)
s3.put_bucket_versioning(Bucket=V, VersioningConfiguration={"Status": "Enabled"})
assert s3.get_bucket_versioning(Bucket=V)["Status"] == "Enabled"
one, two = b"one", os.urandom(2 * MiB + 7)
v1 = s3.put_object(Bucket=V, Key="k", Body=one)["VersionId"]
v2 = s3.put_object(Bucket=V, Key="k", Body=two)["VersionId"]
assert v1 and v2 and v1 != v2 and v1 != "null"
assert s3.get_object(Bucket=V, Key="k")["Body"].read() == two
g = s3.get_object(Bucket=V, Key="k", VersionId=v1)
assert g["Body"].read() == one and g["VersionId"] == v1
h = s3.head_object(Bucket=V, Key="k", VersionId=v1)
assert h["ContentLength"] == 3 and h["VersionId"] == v1
assert s3.head_object(Bucket=V, Key="k")["VersionId"] == v2
assert code(s3.get_object, Bucket=V, Key="k", VersionId="0000nosuchversion") == "NoSuchVersion"
d = s3.delete_object(Bucket=V, Key="k")
dm = d["VersionId"]
assert d["DeleteMarker"] is True and dm not in (v1, v2), d
e = err(s3.get_object, Bucket=V, Key="k")
assert e[0] == "NoSuchKey" and e[2]["ResponseMetadata"]["HTTPHeaders"].get("x-amz-delete-marker") == "true"
assert e[2]["ResponseMetadata"]["HTTPHeaders"].get("x-amz-version-id") == dm, e
e = err(s3.head_object, Bucket=V, Key="k")
assert e[1] == 404 and e[2]["ResponseMetadata"]["HTTPHeaders"].get("x-amz-delete-marker") == "true"
assert err(s3.get_object, Bucket=V, Key="k", VersionId=dm)[1] == 405
assert s3.get_object(Bucket=V, Key="k", VersionId=v2)["Body"].read() == two
lv = s3.list_object_versions(Bucket=V)
assert [(x["Key"], x["VersionId"], x["IsLatest"]) for x in lv["Versions"]] == \
    [("k", v2, False), ("k", v1, False)], lv["Versions"]
assert [(x["Key"], x["VersionId"], x["IsLatest"]) for x in lv["DeleteMarkers"]] == [("k", dm, True)]
assert "k" not in [o["Key"] for o in s3.list_objects_v2(Bucket=V).get("Contents", [])]
c = s3.copy_object(Bucket=V, Key="k-copy", CopySource={"Bucket": V, "Key": "k", "VersionId": v1})
assert c["CopySourceVersionId"] == v1 and c["VersionId"]
assert s3.get_object(Bucket=V, Key="k-copy")["Body"].read() == one
r = s3.delete_object(Bucket=V, Key="k", VersionId=dm)
assert r["DeleteMarker"] is True and r["VersionId"] == dm
assert s3.get_object(Bucket=V, Key="k")["Body"].read() == two, "the marker is gone: v2 is current"
s3.delete_object(Bucket=V, Key="k", VersionId=v2)
assert s3.get_object(Bucket=V, Key="k")["Body"].read() == one, "v1 is current again"
assert code(s3.get_object, Bucket=V, Key="k", VersionId=v2) == "NoSuchVersion"
# prefix, delimiter, key and version-id markers
for k in ["a/1", "a/2", "b/1", "c"]:
    s3.put_object(Bucket=V, Key=k, Body=k.encode())
    s3.put_object(Bucket=V, Key=k, Body=k.encode() + b"'")
lv = s3.list_object_versions(Bucket=V, Prefix="a/")
assert [x["Key"] for x in lv["Versions"]] == ["a/1", "a/1", "a/2", "a/2"], lv["Versions"]
assert [x["IsLatest"] for x in lv["Versions"]] == [True, False, True, False]
lv = s3.list_object_versions(Bucket=V, Delimiter="/")
assert [p["Prefix"] for p in lv["CommonPrefixes"]] == ["a/", "b/"], lv
assert sorted({x["Key"] for x in lv["Versions"]}) == ["c", "k", "k-copy"], lv["Versions"]
full = [(x["Key"], x["VersionId"]) for x in s3.list_object_versions(Bucket=V)["Versions"]]
seen, km, vm = [], None, None
while True:
    kw = {"KeyMarker": km, "VersionIdMarker": vm} if km else {}
    page = s3.list_object_versions(Bucket=V, MaxKeys=3, **kw)
    seen += [(x["Key"], x["VersionId"]) for x in page.get("Versions", [])]
    if not page["IsTruncated"]:
        break
    km, vm = page["NextKeyMarker"], page["NextVersionIdMarker"]
assert seen == full and len(full) == 10, (seen, full)
p = s3.get_paginator("list_object_versions")
assert sum(len(x.get("Versions", [])) for x in p.paginate(Bucket=V, PaginationConfig={"PageSize": 2})) == 10
# DeleteObjects with version ids
d = s3.delete_objects(Bucket=V, Delete={"Objects": [{"Key": "c", "VersionId": x["VersionId"]}
                                                    for x in lv["Versions"] if x["Key"] == "c"]})
assert len(d["Deleted"]) == 2 and code(s3.head_object, Bucket=V, Key="c") in ("404", "NoSuchKey")
assert not [x for x in s3.list_object_versions(Bucket=V, Prefix="c").get("Versions", [])]
# suspended: writes are the null version, replacing the previous null version
s3.put_bucket_versioning(Bucket=V, VersioningConfiguration={"Status": "Suspended"})
assert s3.get_bucket_versioning(Bucket=V)["Status"] == "Suspended"
s3.put_object(Bucket=V, Key="k", Body=b"null-1")
s3.put_object(Bucket=V, Key="k", Body=b"null-2")
vs = [x["VersionId"] for x in s3.list_object_versions(Bucket=V, Prefix="k")["Versions"]
      if x["Key"] == "k"]
assert vs == ["null", v1], vs
assert s3.get_object(Bucket=V, Key="k", VersionId="null")["Body"].read() == b"null-2"
d = s3.delete_object(Bucket=V, Key="k")
assert d["DeleteMarker"] is True and d["VersionId"] == "null", d
lv = s3.list_object_versions(Bucket=V, Prefix="k")
assert [x["VersionId"] for x in lv["Versions"] if x["Key"] == "k"] == [v1]
assert [x["VersionId"] for x in lv["DeleteMarkers"]] == ["null"]
# a bucket holding only versions / markers is not empty
assert code(s3.delete_bucket, Bucket=V) == "BucketNotEmpty"
# quotas count every stored version
QV = os.environ["S3_QUOTA_VERSIONED"]
s3.put_bucket_versioning(Bucket=QV, VersioningConfiguration={"Status": "Enabled"})
q1 = s3.put_object(Bucket=QV, Key="q", Body=os.urandom(600_000))["VersionId"]
assert code(s3.put_object, Bucket=QV, Key="q", Body=os.urandom(600_000)) == "QuotaExceeded"
s3.delete_object(Bucket=QV, Key="q", VersionId=q1)
s3.put_object(Bucket=QV, Key="q", Body=os.urandom(600_000))
print("round2: versioning OK")
print("round2: all OK")
