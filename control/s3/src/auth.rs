//! Request authentication, sans-IO: [`parse`] the credentials a request claims, look the access
//! key's secret up (the caller does the I/O), then [`verify`] the claim against the ORIGINAL
//! method, path, query and headers at an injected time `now`.
//!
//! Supported: SigV4 header auth, SigV4 presigned query auth, HTTP Basic (access key / secret) and
//! Bearer (mesh token). The verified outcome says how the body must be checked or decoded
//! ([`BodyMode`]).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Method};
use sha2::{Digest, Sha256};

use crate::error::Error;

type HmacSha256 = Hmac<Sha256>;

/// Maximum accepted clock difference for signed requests.
pub(crate) const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// Longest presign validity S3 accepts (7 days).
const MAX_PRESIGN_EXPIRES: u64 = 7 * 24 * 3600;
/// SHA-256 of the empty string, hex.
pub(crate) const EMPTY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Query parameters that belong to a presigned URL (removed before s3s sees the request).
pub(crate) const PRESIGN_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// What the client declared about the payload (`x-amz-content-sha256`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PayloadHash {
    /// `UNSIGNED-PAYLOAD` (or absent on presigned URLs).
    Unsigned,
    /// Hex SHA-256 of the whole body.
    Sha256(String),
    /// aws-chunked body; `signed`: chunks carry signatures; `trailer`: trailing headers follow.
    Streaming { signed: bool, trailer: bool },
}

impl PayloadHash {
    fn parse(v: &str) -> Result<Self, Error> {
        Ok(match v {
            "UNSIGNED-PAYLOAD" => Self::Unsigned,
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" => Self::Streaming {
                signed: true,
                trailer: false,
            },
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => Self::Streaming {
                signed: true,
                trailer: true,
            },
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Self::Streaming {
                signed: false,
                trailer: true,
            },
            h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Self::Sha256(h.to_ascii_lowercase())
            }
            other => {
                return Err(Error::MalformedAuth(format!(
                    "unsupported x-amz-content-sha256: {other}"
                )))
            }
        })
    }

    fn canonical(&self) -> &str {
        match self {
            Self::Unsigned => "UNSIGNED-PAYLOAD",
            Self::Sha256(h) => h,
            Self::Streaming {
                signed: true,
                trailer: false,
            } => "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            Self::Streaming {
                signed: true,
                trailer: true,
            } => "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
            Self::Streaming { signed: false, .. } => "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        }
    }
}

/// A parsed SigV4 claim.
#[derive(Clone, Debug)]
pub(crate) struct SigV4 {
    pub access_key: String,
    /// `YYYYMMDDTHHMMSSZ`.
    amz_date: String,
    when: SystemTime,
    /// `date/region/service/aws4_request`.
    scope: String,
    scope_date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    /// `Some(seconds)` for presigned URLs.
    presign_expires: Option<u64>,
    payload: PayloadHash,
}

/// The credentials a request claims, before verification.
#[derive(Clone, Debug)]
pub(crate) enum Claim {
    /// SigV4 header or presigned-query auth.
    SigV4(Box<SigV4>),
    /// HTTP Basic: access key and secret.
    Basic { access_key: String, secret: String },
    /// Bearer: the mesh token.
    Bearer { token: String },
}

impl Claim {
    /// The access key whose secret the caller must look up, if any.
    pub(crate) fn access_key(&self) -> Option<&str> {
        match self {
            Claim::SigV4(s) => Some(&s.access_key),
            Claim::Basic { access_key, .. } => Some(access_key),
            Claim::Bearer { .. } => None,
        }
    }
}

/// Signing material to verify aws-chunked chunk signatures.
#[derive(Clone, Debug)]
pub(crate) struct ChunkSigner {
    key: [u8; 32],
    amz_date: String,
    scope: String,
    /// The previous signature (seed = the request signature).
    pub prev: String,
}

impl ChunkSigner {
    /// Signature of one chunk whose data hashes to `chunk_sha256_hex`.
    pub(crate) fn chunk(&self, chunk_sha256_hex: &str) -> String {
        let sts = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{}\n{}",
            self.amz_date, self.scope, self.prev, EMPTY_SHA256, chunk_sha256_hex
        );
        hex::encode(hmac(&self.key, sts.as_bytes()))
    }

    /// Signature of the trailing-header block (`canonical` = "name:value\n" lines).
    pub(crate) fn trailer(&self, canonical: &[u8]) -> String {
        let sts = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{}\n{}",
            self.amz_date,
            self.scope,
            self.prev,
            hex::encode(Sha256::digest(canonical))
        );
        hex::encode(hmac(&self.key, sts.as_bytes()))
    }
}

/// How the body must be treated after authentication.
#[derive(Clone, Debug)]
pub(crate) enum BodyMode {
    /// Pass through unchanged.
    Plain,
    /// Verify the body hashes to this hex SHA-256 before it is accepted.
    Sha256(String),
    /// Decode aws-chunked framing; verify chunk signatures when `signer` is set.
    Chunked {
        signer: Option<ChunkSigner>,
        trailer: bool,
    },
}

/// Result of a successful verification.
#[derive(Clone, Debug)]
pub(crate) struct Verified {
    /// Principal name from the credential table (or [`crate::MESH_PRINCIPAL`]).
    pub principal: String,
    pub body: BodyMode,
}

/// Request data needed for verification (borrowed from the original request).
pub(crate) struct ReqView<'a> {
    pub method: &'a Method,
    /// Raw path as sent (percent-encoded), including any `/s3` prefix.
    pub path: &'a str,
    /// Raw query string (without `?`), if any.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Decoded query pairs (`+` is kept literally, as SigV4 requires).
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

pub(crate) fn pct_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Parses the claimed credentials of a request. `Ok(None)`: anonymous.
pub(crate) fn parse(req: &ReqView<'_>) -> Result<Option<Claim>, Error> {
    if let Some(auth) = header(req.headers, "authorization") {
        let auth = auth.trim();
        if let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256") {
            return parse_header_v4(rest, req).map(|s| Some(Claim::SigV4(Box::new(s))));
        }
        if let Some(b64) = strip_prefix_ci(auth, "basic ") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| Error::MalformedAuth("bad Basic credentials".into()))?;
            let raw = String::from_utf8(raw)
                .map_err(|_| Error::MalformedAuth("bad Basic credentials".into()))?;
            let (ak, secret) = raw
                .split_once(':')
                .ok_or_else(|| Error::MalformedAuth("bad Basic credentials".into()))?;
            return Ok(Some(Claim::Basic {
                access_key: ak.to_owned(),
                secret: secret.to_owned(),
            }));
        }
        if let Some(tok) = strip_prefix_ci(auth, "bearer ") {
            return Ok(Some(Claim::Bearer {
                token: tok.trim().to_owned(),
            }));
        }
        return Err(Error::MalformedAuth(
            "unsupported authorization scheme (use AWS4-HMAC-SHA256, Basic or Bearer)".into(),
        ));
    }
    let pairs = query_pairs(req.query);
    if pairs.iter().any(|(k, _)| k == "X-Amz-Signature") {
        return parse_presign(&pairs, req).map(|s| Some(Claim::SigV4(Box::new(s))));
    }
    if pairs.iter().any(|(k, _)| k == "AWSAccessKeyId") {
        return Err(Error::MalformedAuth(
            "SigV2 presigned URLs are not supported".into(),
        ));
    }
    Ok(None)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn parse_amz_date(s: &str) -> Result<SystemTime, Error> {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let dt = time::PrimitiveDateTime::parse(s, &fmt)
        .map_err(|_| Error::MalformedAuth(format!("bad X-Amz-Date: {s}")))?;
    Ok(dt.assume_utc().into())
}

fn format_amz_date(t: SystemTime) -> String {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .expect("formatting a valid timestamp with a fixed format cannot fail")
}

struct Credential {
    access_key: String,
    date: String,
    region: String,
    service: String,
}

fn parse_credential(c: &str) -> Result<Credential, Error> {
    // ak/date/region/service/aws4_request — the access key itself has no '/'.
    let parts: Vec<&str> = c.split('/').collect();
    match parts.as_slice() {
        [ak, date, region, service, "aws4_request"] if !ak.is_empty() => Ok(Credential {
            access_key: (*ak).to_owned(),
            date: (*date).to_owned(),
            region: (*region).to_owned(),
            service: (*service).to_owned(),
        }),
        _ => Err(Error::MalformedAuth(format!("bad credential scope: {c}"))),
    }
}

fn parse_header_v4(rest: &str, req: &ReqView<'_>) -> Result<SigV4, Error> {
    let mut cred = None;
    let mut signed = None;
    let mut sig = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(parse_credential(v.trim())?);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v.trim().to_owned());
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v.trim().to_owned());
        }
    }
    let (Some(cred), Some(signed), Some(sig)) = (cred, signed, sig) else {
        return Err(Error::MalformedAuth(
            "Authorization needs Credential, SignedHeaders and Signature".into(),
        ));
    };
    let (amz_date, when) = if let Some(d) = header(req.headers, "x-amz-date") {
        (d.to_owned(), parse_amz_date(d)?)
    } else if let Some(d) = header(req.headers, "date") {
        let t = httpdate::parse_http_date(d)
            .map_err(|_| Error::MalformedAuth("bad Date header".into()))?;
        (format_amz_date(t), t)
    } else {
        return Err(Error::MalformedAuth(
            "signed requests need X-Amz-Date or Date".into(),
        ));
    };
    let payload = match header(req.headers, "x-amz-content-sha256") {
        Some(v) => PayloadHash::parse(v.trim())?,
        None => PayloadHash::Unsigned,
    };
    Ok(SigV4 {
        access_key: cred.access_key,
        scope: format!(
            "{}/{}/{}/aws4_request",
            cred.date, cred.region, cred.service
        ),
        scope_date: cred.date,
        region: cred.region,
        service: cred.service,
        amz_date,
        when,
        signed_headers: signed.split(';').map(str::to_owned).collect(),
        signature: sig.to_ascii_lowercase(),
        presign_expires: None,
        payload,
    })
}

fn parse_presign(pairs: &[(String, String)], req: &ReqView<'_>) -> Result<SigV4, Error> {
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| Error::MalformedAuth(format!("presigned URL lacks {name}")))
    };
    if get("X-Amz-Algorithm")? != "AWS4-HMAC-SHA256" {
        return Err(Error::MalformedAuth("unsupported X-Amz-Algorithm".into()));
    }
    let cred = parse_credential(get("X-Amz-Credential")?)?;
    let amz_date = get("X-Amz-Date")?.to_owned();
    let when = parse_amz_date(&amz_date)?;
    let expires: u64 = get("X-Amz-Expires")?
        .parse()
        .map_err(|_| Error::MalformedAuth("bad X-Amz-Expires".into()))?;
    if expires > MAX_PRESIGN_EXPIRES {
        return Err(Error::MalformedAuth(
            "X-Amz-Expires must be at most 604800".into(),
        ));
    }
    let payload = match header(req.headers, "x-amz-content-sha256") {
        Some(v) => PayloadHash::parse(v.trim())?,
        None => PayloadHash::Unsigned,
    };
    Ok(SigV4 {
        access_key: cred.access_key,
        scope: format!(
            "{}/{}/{}/aws4_request",
            cred.date, cred.region, cred.service
        ),
        scope_date: cred.date,
        region: cred.region,
        service: cred.service,
        amz_date,
        when,
        signed_headers: get("X-Amz-SignedHeaders")?
            .split(';')
            .map(str::to_owned)
            .collect(),
        signature: get("X-Amz-Signature")?.to_ascii_lowercase(),
        presign_expires: Some(expires),
        payload,
    })
}

/// S3's URI encoding: unreserved characters stay, everything else is `%XX` (uppercase).
pub(crate) fn uri_encode(input: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(input.len() * 3 / 2);
    for &b in input.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'~' | b'.' => {
                out.push(char::from(b))
            }
            b'/' if !encode_slash => out.push('/'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    m.update(data);
    m.finalize().into_bytes().into()
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// Constant-time equality.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn normalize_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn canonical_request(s: &SigV4, req: &ReqView<'_>, canonical_uri: &str) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(req.query)
        .into_iter()
        .filter(|(k, _)| !(s.presign_expires.is_some() && k == "X-Amz-Signature"))
        .map(|(k, v)| (uri_encode(&k, true), uri_encode(&v, true)))
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers = String::new();
    for name in &s.signed_headers {
        let values: Vec<String> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| normalize_value(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&values.join(","));
        headers.push('\n');
    }
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method.as_str(),
        canonical_uri,
        query,
        headers,
        s.signed_headers.join(";"),
        s.payload.canonical()
    )
}

fn signature_for(s: &SigV4, key: &[u8; 32], req: &ReqView<'_>, canonical_uri: &str) -> String {
    let creq = canonical_request(s, req, canonical_uri);
    let sts = format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        s.amz_date,
        s.scope,
        hex::encode(Sha256::digest(creq.as_bytes()))
    );
    hex::encode(hmac(key, sts.as_bytes()))
}

fn abs_diff(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_else(|e| e.duration())
}

/// Verifies `claim` given the looked-up credential `(secret, principal)` of its access key
/// (`None`: unknown key), the mesh token, and the current time.
pub(crate) fn verify(
    claim: &Claim,
    cred: Option<(String, String)>,
    mesh_token: Option<&str>,
    req: &ReqView<'_>,
    now: SystemTime,
) -> Result<Verified, Error> {
    match claim {
        Claim::Bearer { token } => match mesh_token {
            Some(t) if ct_eq(t.as_bytes(), token.as_bytes()) => Ok(Verified {
                principal: crate::MESH_PRINCIPAL.to_owned(),
                body: BodyMode::Plain,
            }),
            _ => Err(Error::SignatureDoesNotMatch),
        },
        Claim::Basic { secret, .. } => {
            let (want, principal) = cred.ok_or(Error::InvalidAccessKeyId)?;
            if !ct_eq(want.as_bytes(), secret.as_bytes()) {
                return Err(Error::SignatureDoesNotMatch);
            }
            Ok(Verified {
                principal,
                body: BodyMode::Plain,
            })
        }
        Claim::SigV4(s) => verify_v4(s, cred, req, now),
    }
}

fn verify_v4(
    s: &SigV4,
    cred: Option<(String, String)>,
    req: &ReqView<'_>,
    now: SystemTime,
) -> Result<Verified, Error> {
    let (secret, principal) = cred.ok_or(Error::InvalidAccessKeyId)?;
    if !s.amz_date.starts_with(&s.scope_date) {
        return Err(Error::MalformedAuth(
            "credential scope date does not match the request date".into(),
        ));
    }
    if !s.signed_headers.iter().any(|h| h == "host") {
        return Err(Error::MalformedAuth(
            "SignedHeaders must include host".into(),
        ));
    }
    match s.presign_expires {
        None => {
            if abs_diff(now, s.when) > MAX_SKEW {
                return Err(Error::RequestTimeTooSkewed);
            }
        }
        Some(exp) => {
            if s.when > now + MAX_SKEW {
                return Err(Error::RequestTimeTooSkewed);
            }
            if now > s.when + Duration::from_secs(exp) {
                return Err(Error::Expired);
            }
        }
    }
    let key = signing_key(&secret, &s.scope_date, &s.region, &s.service);
    let decoded = pct_decode(req.path);
    let path = if decoded.is_empty() {
        "/"
    } else {
        decoded.as_str()
    };
    let canonical = uri_encode(path, false);
    let mut ok = ct_eq(
        signature_for(s, &key, req, &canonical).as_bytes(),
        s.signature.as_bytes(),
    );
    if !ok && canonical != req.path {
        // Some clients sign the path exactly as sent.
        ok = ct_eq(
            signature_for(s, &key, req, req.path).as_bytes(),
            s.signature.as_bytes(),
        );
    }
    if !ok {
        return Err(Error::SignatureDoesNotMatch);
    }
    let body = match &s.payload {
        PayloadHash::Unsigned => BodyMode::Plain,
        PayloadHash::Sha256(h) => BodyMode::Sha256(h.clone()),
        PayloadHash::Streaming { signed, trailer } => BodyMode::Chunked {
            signer: signed.then(|| ChunkSigner {
                key,
                amz_date: s.amz_date.clone(),
                scope: s.scope.clone(),
                prev: s.signature.clone(),
            }),
            trailer: *trailer,
        },
    };
    Ok(Verified { principal, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The example from the AWS S3 SigV4 documentation ("GET Object").
    #[test]
    fn aws_doc_example_get_object() {
        let mut h = HeaderMap::new();
        h.insert(
            "host",
            HeaderValue::from_static("examplebucket.s3.amazonaws.com"),
        );
        h.insert("range", HeaderValue::from_static("bytes=0-9"));
        h.insert(
            "x-amz-content-sha256",
            HeaderValue::from_static(EMPTY_SHA256),
        );
        h.insert("x-amz-date", HeaderValue::from_static("20130524T000000Z"));
        h.insert("authorization", HeaderValue::from_static(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"));
        let m = Method::GET;
        let req = ReqView {
            method: &m,
            path: "/test.txt",
            query: None,
            headers: &h,
        };
        let claim = parse(&req).expect("parse").expect("claim");
        let now = parse_amz_date("20130524T000500Z").expect("date");
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned();
        let v = verify(&claim, Some((secret.clone(), "p".into())), None, &req, now).expect("valid");
        assert_eq!(v.principal, "p");
        assert!(matches!(v.body, BodyMode::Sha256(ref x) if x == EMPTY_SHA256));
        // wrong secret
        let e = verify(&claim, Some(("nope".into(), "p".into())), None, &req, now).unwrap_err();
        assert!(matches!(e, Error::SignatureDoesNotMatch));
        // unknown key
        let e = verify(&claim, None, None, &req, now).unwrap_err();
        assert!(matches!(e, Error::InvalidAccessKeyId));
        // skew
        let late = now + Duration::from_secs(16 * 60);
        let e = verify(&claim, Some((secret, "p".into())), None, &req, late).unwrap_err();
        assert!(matches!(e, Error::RequestTimeTooSkewed));
    }

    /// The presigned-URL example from the AWS documentation.
    #[test]
    fn aws_doc_example_presigned() {
        let mut h = HeaderMap::new();
        h.insert(
            "host",
            HeaderValue::from_static("examplebucket.s3.amazonaws.com"),
        );
        let m = Method::GET;
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        let req = ReqView {
            method: &m,
            path: "/test.txt",
            query: Some(q),
            headers: &h,
        };
        let claim = parse(&req).expect("parse").expect("claim");
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned();
        let t0 = parse_amz_date("20130524T000000Z").expect("date");
        let ok = verify(
            &claim,
            Some((secret.clone(), "p".into())),
            None,
            &req,
            t0 + Duration::from_secs(3600),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let exp = verify(
            &claim,
            Some((secret, "p".into())),
            None,
            &req,
            t0 + Duration::from_secs(86401),
        );
        assert!(matches!(exp, Err(Error::Expired)));
    }

    /// The streaming (aws-chunked) seed signature example from the AWS documentation.
    #[test]
    fn aws_doc_example_chunk_signatures() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("s3.amazonaws.com"));
        h.insert("x-amz-date", HeaderValue::from_static("20130524T000000Z"));
        h.insert(
            "x-amz-storage-class",
            HeaderValue::from_static("REDUCED_REDUNDANCY"),
        );
        h.insert(
            "x-amz-content-sha256",
            HeaderValue::from_static("STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        );
        h.insert("content-encoding", HeaderValue::from_static("aws-chunked"));
        h.insert(
            "x-amz-decoded-content-length",
            HeaderValue::from_static("66560"),
        );
        h.insert("content-length", HeaderValue::from_static("66824"));
        h.insert("authorization", HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"));
        let m = Method::PUT;
        let req = ReqView {
            method: &m,
            path: "/examplebucket/chunkObject.txt",
            query: None,
            headers: &h,
        };
        let claim = parse(&req).expect("parse").expect("claim");
        let now = parse_amz_date("20130524T000000Z").expect("date");
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned();
        let v = verify(&claim, Some((secret, "p".into())), None, &req, now).expect("valid");
        let BodyMode::Chunked {
            signer: Some(mut s),
            trailer: false,
        } = v.body
        else {
            panic!("mode")
        };
        let chunk = vec![b'a'; 65536];
        let sig1 = s.chunk(&hex::encode(Sha256::digest(&chunk)));
        assert_eq!(
            sig1,
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
        s.prev = sig1;
        let sig2 = s.chunk(&hex::encode(Sha256::digest(vec![b'a'; 1024])));
        assert_eq!(
            sig2,
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
        );
    }

    #[test]
    fn basic_and_bearer() {
        let h = HeaderMap::new();
        let m = Method::GET;
        let req = ReqView {
            method: &m,
            path: "/",
            query: None,
            headers: &h,
        };
        let basic = Claim::Basic {
            access_key: "ak".into(),
            secret: "s3cret".into(),
        };
        let now = SystemTime::now();
        assert!(verify(
            &basic,
            Some(("s3cret".into(), "alice".into())),
            None,
            &req,
            now
        )
        .is_ok());
        assert!(matches!(
            verify(
                &basic,
                Some(("other".into(), "alice".into())),
                None,
                &req,
                now
            ),
            Err(Error::SignatureDoesNotMatch)
        ));
        assert!(matches!(
            verify(&basic, None, None, &req, now),
            Err(Error::InvalidAccessKeyId)
        ));
        let bearer = Claim::Bearer {
            token: "tok".into(),
        };
        assert_eq!(
            verify(&bearer, None, Some("tok"), &req, now)
                .expect("ok")
                .principal,
            crate::MESH_PRINCIPAL
        );
        assert!(verify(&bearer, None, Some("tok2"), &req, now).is_err());
        assert!(verify(&bearer, None, None, &req, now).is_err());
    }

    #[test]
    fn uri_encoding() {
        assert_eq!(uri_encode("a b/c+d~", false), "a%20b/c%2Bd~");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
    }
}
