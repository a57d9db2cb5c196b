//! Conversions between engine records and s3s DTOs, and small request-parsing helpers.

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine as _;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Result};
use tm_storage::{ObjectInfo, ObjectMeta};

use super::MAX_KEYS;

pub(super) fn strip_quotes(s: &str) -> &str {
    s.trim().trim_matches('"')
}

pub(super) fn etag(info_etag: &str) -> ETag {
    ETag::Strong(strip_quotes(info_etag).to_owned())
}

pub(super) fn ts(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

pub(super) fn secs(t: SystemTime) -> i64 {
    time::OffsetDateTime::from(t).unix_timestamp()
}

pub(super) fn ts_secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

pub(super) fn user_meta(m: Option<Metadata>) -> BTreeMap<String, String> {
    m.map(|m| {
        m.into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect()
    })
    .unwrap_or_default()
}

pub(super) fn out_meta(m: &ObjectMeta) -> Option<Metadata> {
    (!m.user.is_empty()).then(|| m.user.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

pub(super) fn cond_matches(c: &ETagCondition, etag: &str) -> bool {
    match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => strip_quotes(e.value()) == strip_quotes(etag),
    }
}

/// HTTP conditional request semantics (RFC 9110 order) for GET/HEAD.
pub(super) fn check_conditions(
    info: &ObjectInfo,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let modified = secs(info.modified);
    if let Some(c) = if_match {
        if !cond_matches(c, &info.etag) {
            return Err(S3Error::new(S3ErrorCode::PreconditionFailed));
        }
    } else if let Some(t) = if_unmodified_since {
        if modified > ts_secs(t) {
            return Err(S3Error::new(S3ErrorCode::PreconditionFailed));
        }
    }
    let not_modified = match (if_none_match, if_modified_since) {
        (Some(c), _) => cond_matches(c, &info.etag),
        (None, Some(t)) => modified <= ts_secs(t),
        (None, None) => false,
    };
    if not_modified {
        // A 304 carries the validators (RFC 9110 15.4.5).
        let mut e = S3Error::new(S3ErrorCode::NotModified);
        let mut h = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&format!("\"{}\"", strip_quotes(&info.etag))) {
            h.insert(http::header::ETAG, v);
        }
        if let Ok(v) = http::HeaderValue::from_str(&httpdate::fmt_http_date(info.modified)) {
            h.insert(http::header::LAST_MODIFIED, v);
        }
        e.set_headers(h);
        return Err(e);
    }
    Ok(())
}

/// Conditions on a copy source: failures are always 412.
pub(super) fn check_copy_conditions(
    info: &ObjectInfo,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    check_conditions(
        info,
        if_match,
        if_none_match,
        if_modified_since,
        if_unmodified_since,
    )
    .map_err(|_| S3Error::new(S3ErrorCode::PreconditionFailed))
}

/// The copy source: bucket, key and version (`None`: the current one).
pub(super) fn copy_source(src: &CopySource) -> S3Result<(String, String, Option<String>)> {
    match src {
        CopySource::Bucket {
            bucket,
            key,
            version_id,
        } => Ok((
            bucket.to_string(),
            key.to_string(),
            version_id.as_deref().map(str::to_owned),
        )),
        _ => Err(S3Error::with_message(
            S3ErrorCode::NotImplemented,
            "access points are not supported",
        )),
    }
}

pub(super) fn max_keys(v: Option<i32>) -> usize {
    v.map_or(MAX_KEYS, |n| {
        usize::try_from(n.max(0)).unwrap_or(0).min(MAX_KEYS)
    })
}

/// `max-keys` / `max-uploads` / `max-parts` as S3 checks it: negative values are refused.
pub(super) fn checked_max(v: Option<i32>, name: &str) -> S3Result<usize> {
    if v.is_some_and(|n| n < 0) {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("Argument {name} must be an integer between 0 and 2147483647"),
        ));
    }
    Ok(max_keys(v))
}

/// Percent-encodes a listing value for `encoding-type=url` (keeps unreserved chars and `/`).
pub(super) fn url_enc(s: &str) -> String {
    crate::auth::uri_encode(s, false)
}

pub(super) fn enc_if(url: bool, s: String) -> String {
    if url {
        url_enc(&s)
    } else {
        s
    }
}

pub(super) fn owner() -> Owner {
    Owner {
        display_name: Some("tunnelmesh".to_owned()),
        id: Some("tunnelmesh".to_owned()),
    }
}

pub(super) struct PutMeta<'a> {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub cache_control: Option<String>,
    pub metadata: Option<Metadata>,
    /// The request headers (`Content-Language` and `Expires` are kept as sent).
    pub headers: &'a http::HeaderMap,
}

fn raw_header(h: &http::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

pub(super) fn object_meta(m: PutMeta<'_>) -> ObjectMeta {
    ObjectMeta {
        content_type: m.content_type,
        content_encoding: m.content_encoding,
        content_disposition: m.content_disposition,
        cache_control: m.cache_control,
        user: user_meta(m.metadata),
        content_language: raw_header(m.headers, "content-language"),
        expires: raw_header(m.headers, "expires"),
        checksum: None,
        sse: None,
        part_sizes: Vec::new(),
        tags: Vec::new(),
    }
}

/// Headers of a stored object that s3s has no typed field for (`Expires` as it was sent).
pub(super) fn extra_headers(m: &ObjectMeta) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    if let Some(v) = m
        .expires
        .as_deref()
        .and_then(|v| http::HeaderValue::from_str(v).ok())
    {
        h.insert(http::header::EXPIRES, v);
    }
    h
}

/// The write condition of a PutObject / CompleteMultipartUpload / CopyObject (`If-None-Match: *`,
/// `If-Match: <etag>`; other forms are refused by the front).
pub(super) fn write_condition(h: &http::HeaderMap) -> S3Result<tm_storage::WriteCondition> {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    match (get("if-none-match"), get("if-match")) {
        (None, None) => Ok(tm_storage::WriteCondition::Always),
        (Some("*"), None) => Ok(tm_storage::WriteCondition::IfAbsent),
        (None, Some(e)) if e != "*" => Ok(tm_storage::WriteCondition::IfMatch(
            strip_quotes(e).to_owned(),
        )),
        _ => Err(S3Error::with_message(
            S3ErrorCode::NotImplemented,
            "only If-None-Match: * or If-Match: <etag> (not both) are supported on writes",
        )),
    }
}

/// Sets the checksum fields of an S3 answer from a stored checksum (`None`: leaves them).
macro_rules! put_checksum {
    ($out:expr, $stored:expr) => {{
        let f = crate::checksum::fields($stored);
        $out.checksum_crc32 = f.crc32.clone();
        $out.checksum_crc32c = f.crc32c.clone();
        $out.checksum_sha1 = f.sha1.clone();
        $out.checksum_sha256 = f.sha256.clone();
        $out.checksum_crc64nvme = f.crc64nvme.clone();
        f
    }};
}
pub(super) use put_checksum;

/// Sets the server-side-encryption answer fields of `$out` for an object encrypted as `$sse`
/// (`Option<&tm_storage::Encryption>`).
macro_rules! put_sse {
    ($out:expr, $sse:expr) => {{
        let (s, a, m) = crate::sse::answer($sse);
        $out.server_side_encryption = s;
        $out.sse_customer_algorithm = a;
        $out.sse_customer_key_md5 = m;
    }};
}
pub(super) use put_sse;

/// The `x-amz-checksum-type` of a stored checksum.
pub(super) fn checksum_type(f: &crate::checksum::Fields) -> Option<ChecksumType> {
    f.set.then(|| {
        ChecksumType::from_static(if f.full_object {
            ChecksumType::FULL_OBJECT
        } else {
            ChecksumType::COMPOSITE
        })
    })
}

pub(super) fn part_number(n: i32) -> S3Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })
}

/// Parses `bytes=a-b` (x-amz-copy-source-range) against a source of `size` bytes.
pub(super) fn copy_range(r: &str, size: u64) -> S3Result<(u64, u64)> {
    let bad = || S3Error::with_message(S3ErrorCode::InvalidArgument, "bad x-amz-copy-source-range");
    let spec = r.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if a > b || b >= size {
        return Err(S3Error::new(S3ErrorCode::InvalidRange));
    }
    Ok((a, b + 1))
}

pub(super) fn encode_token(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

pub(super) fn decode_token(s: &str) -> S3Result<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                "The continuation token provided is incorrect",
            )
        })
}

pub(super) fn to_object(o: ObjectInfo, url: bool, with_owner: bool) -> Object {
    Object {
        e_tag: Some(etag(&o.etag)),
        key: Some(enc_if(url, o.key)),
        last_modified: Some(ts(o.modified)),
        size: i64::try_from(o.size).ok(),
        storage_class: Some(ObjectStorageClass::from_static(
            ObjectStorageClass::STANDARD,
        )),
        owner: with_owner.then(owner),
        ..Default::default()
    }
}

pub(super) fn common_prefixes(p: Vec<String>, url: bool) -> Option<Vec<CommonPrefix>> {
    (!p.is_empty()).then(|| {
        p.into_iter()
            .map(|p| CommonPrefix {
                prefix: Some(enc_if(url, p)),
            })
            .collect()
    })
}

pub(super) fn is_url(e: Option<&EncodingType>) -> bool {
    e.is_some_and(|e| e.as_str() == EncodingType::URL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(etag: &str, modified: SystemTime) -> ObjectInfo {
        ObjectInfo {
            key: "k".into(),
            size: 3,
            etag: etag.into(),
            modified,
            meta: ObjectMeta::default(),
            version_id: None,
        }
    }

    #[test]
    fn conditions() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let o = info("abc", t);
        let m = ETagCondition::ETag(ETag::Strong("abc".into()));
        let other = ETagCondition::ETag(ETag::Strong("zzz".into()));
        assert!(check_conditions(&o, Some(&m), None, None, None).is_ok());
        let e = check_conditions(&o, Some(&other), None, None, None).unwrap_err();
        assert_eq!(e.code(), &S3ErrorCode::PreconditionFailed);
        let e = check_conditions(&o, None, Some(&m), None, None).unwrap_err();
        assert_eq!(e.code(), &S3ErrorCode::NotModified);
        let later = ts(t + std::time::Duration::from_secs(10));
        let earlier = ts(t - std::time::Duration::from_secs(10));
        assert_eq!(
            check_conditions(&o, None, None, Some(&later), None)
                .unwrap_err()
                .code(),
            &S3ErrorCode::NotModified
        );
        assert!(check_conditions(&o, None, None, Some(&earlier), None).is_ok());
        assert_eq!(
            check_conditions(&o, None, None, None, Some(&earlier))
                .unwrap_err()
                .code(),
            &S3ErrorCode::PreconditionFailed
        );
        // If-None-Match wins over If-Modified-Since
        assert!(check_conditions(&o, None, Some(&other), Some(&later), None).is_ok());
    }

    #[test]
    fn copy_ranges_and_tokens() {
        assert_eq!(copy_range("bytes=0-9", 10).expect("ok"), (0, 10));
        assert!(copy_range("bytes=0-10", 10).is_err());
        assert!(copy_range("bytes=5-1", 10).is_err());
        assert_eq!(decode_token(&encode_token("a/b c")).expect("tok"), "a/b c");
        assert!(decode_token("%%%").is_err());
        assert!(part_number(0).is_err());
        assert_eq!(part_number(10_000).expect("ok"), 10_000);
    }
}
