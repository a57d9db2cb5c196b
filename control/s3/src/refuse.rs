//! Never a wrong success: request headers and query parameters that ask for something this
//! server does not do are refused here, in the front, before s3s sees the request (with
//! `NotImplemented`, or the error AWS itself gives). Sans-IO: headers and query in, a verdict out.
//!
//! Refused: SSE-KMS (SSE-S3 and SSE-C headers are checked here: malformed ones get S3's
//! `InvalidArgument`), object lock
//! and legal hold, ACL grants and canned ACLs other than `private`/`bucket-owner-full-control`
//! (`AccessControlListNotSupported`, as an AWS bucket with ACLs disabled), object ownership
//! other than `BucketOwnerEnforced`, website redirects, appends
//! (`x-amz-write-offset-bytes`), MFA delete, storage classes other than `STANDARD` (an unknown
//! one: `InvalidStorageClass`), an `x-amz-expected-bucket-owner` that is not us (`AccessDenied`),
//! `If-None-Match` other than `*` and `If-Match: *` on writes,
//! multipart checksum type `FULL_OBJECT`, a malformed `Content-MD5` (`InvalidDigest`), and XML
//! request bodies above 20 MiB (`MaxMessageLengthExceeded`).

use http::{HeaderMap, Method};

use crate::auth::pct_decode;
use crate::error::Error;
use crate::sse;

/// The owner id this server answers with (`Owner/ID` in listings).
pub(crate) const OWNER_ID: &str = "tunnelmesh";
/// Largest XML request body (as S3).
pub(crate) const MAX_XML_BODY: u64 = 20 << 20;

/// Storage classes S3 knows; only `STANDARD` is what we store.
const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "GLACIER_IR",
    "SNOW",
    "EXPRESS_ONEZONE",
];

fn not_impl(what: &str) -> Error {
    Error::NotImplemented(format!(
        "A header or query you provided implies functionality that is not implemented: {what}"
    ))
}

fn value<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}").trim())
}

/// Whether the request is a PutObject or UploadPart (its body is object data, not XML).
fn is_object_put(method: &Method, query: &[(String, String)]) -> bool {
    *method == Method::PUT
        && query
            .iter()
            .all(|(k, _)| k == "partNumber" || k == "uploadId" || k.starts_with("x-id"))
}

/// The verdict on one request (after authentication). `query` is the raw query string.
pub(crate) fn check(
    method: &Method,
    path: &str,
    query: Option<&str>,
    h: &HeaderMap,
) -> Result<(), Error> {
    let q: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect();
    let has = |name: &str| h.contains_key(name);

    // Encryption: SSE-S3 and SSE-C are implemented (their headers are checked here, used by
    // the operations); SSE-KMS is not: never store "encrypted" in clear.
    for name in [
        "x-amz-server-side-encryption-aws-kms-key-id",
        "x-amz-server-side-encryption-context",
    ] {
        if has(name) {
            return Err(not_impl(&format!("{name} (SSE-KMS)")));
        }
    }
    if value(h, "x-amz-server-side-encryption-bucket-key-enabled")
        .is_some_and(|v| !v.eq_ignore_ascii_case("false"))
    {
        return Err(not_impl(
            "x-amz-server-side-encryption-bucket-key-enabled (SSE-KMS)",
        ));
    }
    sse::object_key(h)?;
    sse::customer_key(h, sse::Side::CopySource)?;
    if (*method == Method::GET || *method == Method::HEAD) && has("x-amz-server-side-encryption") {
        return Err(Error::InvalidArgument(
            "x-amz-server-side-encryption is not valid on a read (only SSE-C headers are)".into(),
        ));
    }
    // Object lock, retention and legal hold.
    for name in [
        "x-amz-object-lock-mode",
        "x-amz-object-lock-retain-until-date",
        "x-amz-object-lock-legal-hold",
    ] {
        if has(name) {
            return Err(not_impl(&format!("{name} (object lock)")));
        }
    }
    if value(h, "x-amz-bucket-object-lock-enabled")
        .is_some_and(|v| !v.eq_ignore_ascii_case("false"))
    {
        return Err(not_impl("x-amz-bucket-object-lock-enabled (object lock)"));
    }
    // ACLs: as an AWS bucket with ACLs disabled (BucketOwnerEnforced, the default).
    if let Some(acl) = value(h, "x-amz-acl") {
        if acl != "private" && acl != "bucket-owner-full-control" {
            return Err(Error::AclNotSupported);
        }
    }
    if h.keys().any(|k| k.as_str().starts_with("x-amz-grant-")) {
        return Err(Error::AclNotSupported);
    }
    if value(h, "x-amz-object-ownership").is_some_and(|v| v != "BucketOwnerEnforced") {
        return Err(not_impl(
            "x-amz-object-ownership other than BucketOwnerEnforced",
        ));
    }
    for (name, what) in [
        ("x-amz-website-redirect-location", "website redirects"),
        ("x-amz-write-offset-bytes", "appends"),
        ("x-amz-mfa", "MFA delete"),
    ] {
        if has(name) {
            return Err(not_impl(&format!("{name} ({what})")));
        }
    }
    if value(h, "x-amz-tagging-directive").is_some_and(|v| v != "COPY" && v != "REPLACE") {
        // (x-amz-tagging itself is implemented: checked by the operations.)
        return Err(Error::InvalidArgument("Unknown tagging directive.".into()));
    }
    if let Some(sc) = value(h, "x-amz-storage-class") {
        if !STORAGE_CLASSES.contains(&sc) {
            return Err(Error::InvalidStorageClass);
        }
        if sc != "STANDARD" {
            return Err(not_impl(&format!(
                "storage class {sc} (only STANDARD is stored)"
            )));
        }
    }
    for name in [
        "x-amz-expected-bucket-owner",
        "x-amz-source-expected-bucket-owner",
    ] {
        if value(h, name).is_some_and(|v| v != OWNER_ID) {
            return Err(Error::WrongOwner);
        }
    }
    if value(h, "x-amz-checksum-type").is_some_and(|v| !v.eq_ignore_ascii_case("COMPOSITE")) {
        return Err(not_impl("x-amz-checksum-type other than COMPOSITE"));
    }
    if let Some(m) = h.get("content-md5") {
        let ok = m
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .and_then(|m| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(m).ok()
            })
            .is_some_and(|d| d.len() == 16);
        if !ok {
            return Err(Error::InvalidDigest);
        }
    }
    // Writes: If-None-Match only as `*`, If-Match only with an ETag.
    let object_write = *method == Method::PUT
        || (*method == Method::POST && q.iter().any(|(k, _)| k == "uploadId"));
    if object_write {
        if value(h, "if-none-match").is_some_and(|v| v != "*") {
            return Err(not_impl("If-None-Match other than * on a write"));
        }
        if value(h, "if-match").is_some_and(|v| v == "*") {
            return Err(not_impl("If-Match: * on a write"));
        }
    }
    let _ = path;
    // XML bodies (everything but object data) are at most 20 MiB.
    if !is_object_put(method, &q) && *method != Method::GET && *method != Method::HEAD {
        let len = value(h, "x-amz-decoded-content-length")
            .or_else(|| value(h, "content-length"))
            .and_then(|v| v.parse::<u64>().ok());
        if len.is_some_and(|n| n > MAX_XML_BODY) {
            return Err(Error::MaxMessageLengthExceeded);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn verdict(
        method: Method,
        path: &str,
        query: Option<&str>,
        hs: &[(&'static str, &'static str)],
    ) -> String {
        let mut h = HeaderMap::new();
        for (k, v) in hs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        match check(&method, path, query, &h) {
            Ok(()) => "ok".into(),
            Err(e) => crate::error::aws_error(e, "b").code().as_str().to_owned(),
        }
    }

    #[test]
    fn verdicts() {
        let put = |hs| verdict(Method::PUT, "/b/k", None, hs);
        assert_eq!(put(&[]), "ok");
        assert_eq!(put(&[("x-amz-server-side-encryption", "AES256")]), "ok");
        assert_eq!(
            put(&[("x-amz-server-side-encryption", "aws:kms")]),
            "NotImplemented"
        );
        assert_eq!(
            put(&[("x-amz-server-side-encryption-aws-kms-key-id", "k")]),
            "NotImplemented"
        );
        assert_eq!(
            put(&[("x-amz-server-side-encryption-customer-algorithm", "AES256")]),
            "InvalidArgument"
        );
        assert_eq!(
            verdict(
                Method::GET,
                "/b/k",
                None,
                &[("x-amz-server-side-encryption", "AES256")]
            ),
            "InvalidArgument"
        );
        assert_eq!(put(&[("x-amz-acl", "private")]), "ok");
        assert_eq!(
            put(&[("x-amz-acl", "public-read")]),
            "AccessControlListNotSupported"
        );
        assert_eq!(put(&[("x-amz-storage-class", "STANDARD")]), "ok");
        assert_eq!(put(&[("x-amz-storage-class", "GLACIER")]), "NotImplemented");
        assert_eq!(
            put(&[("x-amz-storage-class", "FAST")]),
            "InvalidStorageClass"
        );
        assert_eq!(put(&[("content-md5", "")]), "InvalidDigest");
        assert_eq!(put(&[("content-md5", "AAAA")]), "InvalidDigest");
        assert_eq!(put(&[("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==")]), "ok");
        assert_eq!(put(&[("if-none-match", "\"abc\"")]), "NotImplemented");
        assert_eq!(
            put(&[("x-amz-expected-bucket-owner", "123456789012")]),
            "AccessDenied"
        );
        assert_eq!(
            verdict(Method::GET, "/b/k", Some("partNumber=1"), &[]),
            "ok"
        );
        assert_eq!(
            verdict(
                Method::POST,
                "/b",
                Some("delete"),
                &[("content-length", "30000000")]
            ),
            "MaxMessageLengthExceeded"
        );
        assert_eq!(put(&[("content-length", "30000000")]), "ok");
    }
}
