//! AWS Signature Version 4 for S3, sans-IO: the one implementation shared by the S3 server
//! (`tm-s3`, verification), the remote chunk backend (`tm-storage`, signing) and the benchmark
//! client (`bench/s3`, signing).
//!
//! What it does: canonical requests ([`CanonicalRequest`]), strings to sign ([`string_to_sign`]),
//! signing keys ([`SigningKey`]), client-side header and presigned-URL signing ([`Signer`]),
//! parsing of `Authorization` headers and credential scopes ([`parse_authorization`],
//! [`parse_credential`]), constant-time signature checks ([`ct_eq`]), and the aws-chunked
//! signature chain ([`ChunkSigner`]). Time is always passed in.
//!
//! What it never does: I/O, reading clocks, looking up secrets, deciding skew or expiry policy,
//! or parsing HTTP messages (callers hand it method, path, query pairs and header values).
//!
//! Call order, verifying: [`parse_authorization`] (or [`parse_credential`] for presigned URLs) →
//! look the access key's secret up → [`SigningKey::derive`] → build a [`CanonicalRequest`] from the
//! ORIGINAL request → [`SigningKey::sign`] of [`string_to_sign`] → [`ct_eq`] with the claimed
//! signature → for aws-chunked bodies, [`ChunkSigner::new`] seeded with that signature and
//! [`ChunkSigner::verify_chunk`] per chunk. Signing: [`Signer::sign_headers`] or
//! [`Signer::presign`]; streaming uploads continue with [`ChunkSigner::sign_chunk`].
#![forbid(unsafe_code)]

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The only algorithm name of SigV4 (header and `X-Amz-Algorithm`).
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Hex SHA-256 of the empty string.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// `x-amz-content-sha256` of requests whose body is not signed (and of presigned URLs).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// `x-amz-content-sha256` of signed aws-chunked bodies.
pub const STREAMING_PAYLOAD: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";

type HmacSha256 = Hmac<Sha256>;

/// Why a SigV4 input could not be parsed.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// An `X-Amz-Date` value is not `YYYYMMDDTHHMMSSZ` (or not a real date).
    #[error("bad X-Amz-Date: {0}")]
    BadDate(String),
    /// A credential scope is not `access-key/date/region/service/aws4_request`.
    #[error("bad credential scope: {0}")]
    BadCredential(String),
    /// The `Authorization` header is not a well-formed `AWS4-HMAC-SHA256` header.
    #[error("malformed authorization: {0}")]
    Malformed(&'static str),
}

// ------------------------------------------------------------------------------------ primitives

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(H[usize::from(b >> 4)]));
        s.push(char::from(H[usize::from(b & 15)]));
    }
    s
}

/// Hex SHA-256 of `data` (payload hashes, canonical-request hashes).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Constant-time equality (for signatures, secrets and tokens).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// S3's URI encoding: unreserved characters (`A-Za-z0-9-_.~`) stay, everything else becomes
/// `%XX` (uppercase); `/` stays when `encode_slash` is false (paths), not in query parts.
pub fn uri_encode(input: &str, encode_slash: bool) -> String {
    const H: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(input.len() + input.len() / 2);
    for &b in input.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'~' | b'.' => {
                out.push(char::from(b));
            }
            b'/' if !encode_slash => out.push('/'),
            _ => {
                out.push('%');
                out.push(char::from(H[usize::from(b >> 4)]));
                out.push(char::from(H[usize::from(b & 15)]));
            }
        }
    }
    out
}

/// Canonical query string from DECODED `(name, value)` pairs: each part URI-encoded (slashes
/// too), sorted by name then value, joined with `&`.
pub fn canonical_query<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let mut enc: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (uri_encode(k.as_ref(), true), uri_encode(v.as_ref(), true)))
        .collect();
    enc.sort();
    let mut out = String::new();
    for (i, (k, v)) in enc.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

// ------------------------------------------------------------------------------------ dates

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `(year, month, day)` of a day count since 1970-01-01 (`civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYYMMDDTHHMMSSZ` (UTC) of `t`; times before 1970 are clamped to the epoch.
pub fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2));
    let rem = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Parses `YYYYMMDDTHHMMSSZ` (UTC).
pub fn parse_amz_date(s: &str) -> Result<SystemTime, SigV4Error> {
    let bad = || SigV4Error::BadDate(s.chars().take(32).collect());
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, SigV4Error> {
        let part = &b[r];
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(part
            .iter()
            .fold(0i64, |acc, c| acc * 10 + i64::from(c - b'0')))
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if y < 1970 || !(1..=12).contains(&mo) || d < 1 || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let days = days_from_civil(y, mo, d);
    if civil_from_days(days) != (y, mo, d) {
        return Err(bad()); // e.g. February 30th
    }
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    let secs = u64::try_from(secs).map_err(|_| bad())?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

// ------------------------------------------------------------------------------------ scope, key

/// A credential scope: `date/region/service/aws4_request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// `YYYYMMDD`.
    pub date: String,
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// Service, `s3` for S3.
    pub service: String,
}

impl Scope {
    /// The scope for a request signed at `amz_date` (`YYYYMMDDTHHMMSSZ`; its first 8 chars).
    pub fn new(amz_date: &str, region: &str, service: &str) -> Scope {
        Scope {
            date: amz_date.get(..8).unwrap_or(amz_date).to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// Splits `access-key/date/region/service/aws4_request` (the access key contains no `/`).
pub fn parse_credential(c: &str) -> Result<(String, Scope), SigV4Error> {
    let parts: Vec<&str> = c.split('/').collect();
    match parts.as_slice() {
        [ak, date, region, service, "aws4_request"] if !ak.is_empty() => Ok((
            (*ak).to_owned(),
            Scope {
                date: (*date).to_owned(),
                region: (*region).to_owned(),
                service: (*service).to_owned(),
            },
        )),
        _ => Err(SigV4Error::BadCredential(c.chars().take(128).collect())),
    }
}

/// The derived signing key of one secret and scope.
#[derive(Clone)]
pub struct SigningKey([u8; 32]);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// `HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
    pub fn derive(secret: &str, scope: &Scope) -> SigningKey {
        let k = hmac_sha256(format!("AWS4{secret}").as_bytes(), scope.date.as_bytes());
        let k = hmac_sha256(&k, scope.region.as_bytes());
        let k = hmac_sha256(&k, scope.service.as_bytes());
        SigningKey(hmac_sha256(&k, b"aws4_request"))
    }

    /// Hex signature of a string to sign.
    pub fn sign(&self, string_to_sign: &str) -> String {
        hex(&hmac_sha256(&self.0, string_to_sign.as_bytes()))
    }
}

// ------------------------------------------------------------------------------------ requests

/// The parts of a request that SigV4 covers.
#[derive(Clone, Copy, Debug)]
pub struct CanonicalRequest<'a> {
    /// HTTP method, e.g. `GET`.
    pub method: &'a str,
    /// Canonical (URI-encoded) path, e.g. `/bucket/my%20key`.
    pub uri: &'a str,
    /// Canonical query string (see [`canonical_query`]).
    pub query: &'a str,
    /// Signed headers as `(lowercase name, value)` in `SignedHeaders` order; several values of
    /// one header are joined with `,` by the caller. Values are whitespace-normalised here.
    pub headers: &'a [(String, String)],
    /// The payload hash: hex SHA-256, [`UNSIGNED_PAYLOAD`] or a `STREAMING-*` marker.
    pub payload_hash: &'a str,
}

impl CanonicalRequest<'_> {
    /// `SignedHeaders`: the header names joined with `;`.
    pub fn signed_headers(&self) -> String {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        names.join(";")
    }

    /// The canonical request text.
    pub fn text(&self) -> String {
        let mut s = String::with_capacity(256);
        s.push_str(self.method);
        s.push('\n');
        s.push_str(self.uri);
        s.push('\n');
        s.push_str(self.query);
        s.push('\n');
        for (k, v) in self.headers {
            s.push_str(k);
            s.push(':');
            for (i, w) in v.split_whitespace().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                s.push_str(w);
            }
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.signed_headers());
        s.push('\n');
        s.push_str(self.payload_hash);
        s
    }

    /// The hex signature of this request at `amz_date` in `scope`.
    pub fn signature(&self, key: &SigningKey, amz_date: &str, scope: &Scope) -> String {
        key.sign(&string_to_sign(amz_date, scope, &self.text()))
    }
}

/// `AWS4-HMAC-SHA256\n<amz_date>\n<scope>\n<hex sha256(canonical request)>`.
pub fn string_to_sign(amz_date: &str, scope: &Scope, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// A parsed `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthHeader {
    /// Access key id.
    pub access_key: String,
    /// Credential scope.
    pub scope: Scope,
    /// Lowercase signed header names, in order.
    pub signed_headers: Vec<String>,
    /// Claimed signature, lowercase hex.
    pub signature: String,
}

/// Parses an `Authorization` header value; `Ok(None)` if it is not SigV4 at all.
pub fn parse_authorization(value: &str) -> Result<Option<AuthHeader>, SigV4Error> {
    let Some(rest) = value.trim().strip_prefix(ALGORITHM) else {
        return Ok(None);
    };
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(parse_credential(v.trim())?);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v.trim());
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v.trim());
        }
    }
    let (Some((access_key, scope)), Some(signed), Some(sig)) = (cred, signed, sig) else {
        return Err(SigV4Error::Malformed(
            "Authorization needs Credential, SignedHeaders and Signature",
        ));
    };
    Ok(Some(AuthHeader {
        access_key,
        scope,
        signed_headers: signed
            .split(';')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        signature: sig.to_ascii_lowercase(),
    }))
}

// ------------------------------------------------------------------------------------ signing

/// Client-side signing with one access key.
#[derive(Clone)]
pub struct Signer {
    access_key: String,
    secret_key: String,
    region: String,
    service: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for `service` (`s3`) in `region`.
    pub fn new(access_key: &str, secret_key: &str, region: &str, service: &str) -> Signer {
        Signer {
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
        }
    }

    /// The scope and signing key for requests signed at `amz_date`.
    pub fn key(&self, amz_date: &str) -> (Scope, SigningKey) {
        let scope = Scope::new(amz_date, &self.region, &self.service);
        let key = SigningKey::derive(&self.secret_key, &scope);
        (scope, key)
    }

    /// Header form. `uri` is the canonical (encoded) path, `query` the DECODED parameters,
    /// `headers` every header to sign (must include `host`; names in any case). Appends
    /// `x-amz-date` to `headers` and returns the `Authorization` value plus the request
    /// signature (the seed of an aws-chunked body).
    pub fn sign_headers(
        &self,
        method: &str,
        uri: &str,
        query: &[(&str, &str)],
        headers: &mut Vec<(String, String)>,
        payload_hash: &str,
        now: SystemTime,
    ) -> (String, String) {
        let date = amz_date(now);
        headers.push(("x-amz-date".into(), date.clone()));
        let mut canon: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        canon.sort();
        let (scope, key) = self.key(&date);
        let creq = CanonicalRequest {
            method,
            uri,
            query: &canonical_query(query),
            headers: &canon,
            payload_hash,
        };
        let sig = creq.signature(&key, &date, &scope);
        let auth = format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={sig}",
            self.access_key,
            creq.signed_headers()
        );
        (auth, sig)
    }

    /// Presigned URL query (header `host` only, unsigned payload) valid for `expires_secs`
    /// from `now`: `query` (DECODED extra parameters) plus the `X-Amz-*` parameters, encoded
    /// and ready to append after `?`.
    pub fn presign(
        &self,
        method: &str,
        uri: &str,
        host: &str,
        query: &[(&str, &str)],
        expires_secs: u64,
        now: SystemTime,
    ) -> String {
        let date = amz_date(now);
        let (scope, key) = self.key(&date);
        let credential = format!("{}/{scope}", self.access_key);
        let expires = expires_secs.to_string();
        let mut pairs: Vec<(&str, &str)> = query.to_vec();
        pairs.extend([
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", credential.as_str()),
            ("X-Amz-Date", date.as_str()),
            ("X-Amz-Expires", expires.as_str()),
            ("X-Amz-SignedHeaders", "host"),
        ]);
        let q = canonical_query(&pairs);
        let headers = [("host".to_owned(), host.to_owned())];
        let creq = CanonicalRequest {
            method,
            uri,
            query: &q,
            headers: &headers,
            payload_hash: UNSIGNED_PAYLOAD,
        };
        let sig = creq.signature(&key, &date, &scope);
        format!("{q}&X-Amz-Signature={sig}")
    }
}

// ------------------------------------------------------------------------------------ aws-chunked

/// The signature chain of an aws-chunked body (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`):
/// every chunk's signature covers the previous one, starting from the request signature.
#[derive(Clone, Debug)]
pub struct ChunkSigner {
    key: SigningKey,
    amz_date: String,
    scope: String,
    prev: String,
}

impl ChunkSigner {
    /// Starts the chain with the request's (seed) signature.
    pub fn new(key: SigningKey, amz_date: &str, scope: &Scope, seed_signature: &str) -> Self {
        ChunkSigner {
            key,
            amz_date: amz_date.to_owned(),
            scope: scope.to_string(),
            prev: seed_signature.to_owned(),
        }
    }

    /// The previous signature in the chain (the seed before the first chunk).
    pub fn previous(&self) -> &str {
        &self.prev
    }

    /// Signature of the next chunk, whose data hashes to `chunk_sha256_hex`; does not advance.
    pub fn signature_for(&self, chunk_sha256_hex: &str) -> String {
        let sts = format!(
            "{ALGORITHM}-PAYLOAD\n{}\n{}\n{}\n{EMPTY_SHA256}\n{chunk_sha256_hex}",
            self.amz_date, self.scope, self.prev
        );
        self.key.sign(&sts)
    }

    /// Client: signs the next chunk (the final chunk is empty) and advances the chain.
    pub fn sign_chunk(&mut self, data: &[u8]) -> String {
        let sig = self.signature_for(&sha256_hex(data));
        self.prev.clone_from(&sig);
        sig
    }

    /// Server: checks the claimed signature of the next chunk (constant time); advances the
    /// chain only when it matches.
    pub fn verify_chunk(&mut self, data: &[u8], claimed: &str) -> bool {
        let want = self.signature_for(&sha256_hex(data));
        let ok = ct_eq(want.as_bytes(), claimed.as_bytes());
        if ok {
            self.prev = want;
        }
        ok
    }

    /// Signature of the trailing-header block (`canonical`: `name:value\n` lines), chained to
    /// the final chunk's signature.
    pub fn trailer_signature(&self, canonical: &[u8]) -> String {
        let sts = format!(
            "{ALGORITHM}-TRAILER\n{}\n{}\n{}\n{}",
            self.amz_date,
            self.scope,
            self.prev,
            sha256_hex(canonical)
        );
        self.key.sign(&sts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AK: &str = "AKIAIOSFODNN7EXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn dates_round_trip_and_reject_garbage() {
        assert_eq!(amz_date(at(0)), "19700101T000000Z");
        assert_eq!(amz_date(at(1_369_353_600)), "20130524T000000Z");
        assert_eq!(amz_date(at(951_868_799)), "20000229T235959Z");
        assert_eq!(amz_date(at(1_709_251_199)), "20240229T235959Z");
        for s in ["20130524T000000Z", "20000229T235959Z", "20991231T235959Z"] {
            assert_eq!(amz_date(parse_amz_date(s).expect(s)), s);
        }
        for bad in [
            "",
            "20130524",
            "20130524T000000",
            "2013-05-24T00:00Z",
            "20130230T000000Z",
            "20131324T000000Z",
            "20130524T240000Z",
            "2013052AT000000Z",
            "19690101T000000Z",
        ] {
            assert!(parse_amz_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn encoding_and_query() {
        assert_eq!(uri_encode("a b/c+d~é", false), "a%20b/c%2Bd~%C3%A9");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
        assert_eq!(
            canonical_query(&[("prefix", "x/"), ("list-type", "2"), ("a", "")]),
            "a=&list-type=2&prefix=x%2F"
        );
        let empty: [(&str, &str); 0] = [];
        assert_eq!(canonical_query(&empty), "");
    }

    #[test]
    fn credential_and_authorization_parsing() {
        let (ak, scope) = parse_credential("AK/20130524/us-east-1/s3/aws4_request").expect("ok");
        assert_eq!(ak, "AK");
        assert_eq!(scope.to_string(), "20130524/us-east-1/s3/aws4_request");
        assert!(parse_credential("AK/20130524/us-east-1/s3").is_err());
        assert!(parse_credential("/20130524/us-east-1/s3/aws4_request").is_err());
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AK/20130524/r/s3/aws4_request, SignedHeaders=Host;x-amz-date, Signature=ABCD",
        )
        .expect("ok")
        .expect("sigv4");
        assert_eq!(a.signed_headers, ["host", "x-amz-date"]);
        assert_eq!(a.signature, "abcd");
        assert_eq!(parse_authorization("Basic Zm9v").expect("ok"), None);
        assert!(
            parse_authorization("AWS4-HMAC-SHA256 Credential=AK/20130524/r/s3/aws4_request")
                .is_err()
        );
    }

    /// "Example: GET Object" of the AWS S3 SigV4 documentation, signed and verified.
    #[test]
    fn aws_doc_get_object() {
        let s = Signer::new(AK, SK, "us-east-1", "s3");
        let mut headers = h(&[
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
        ]);
        let (auth, sig) = s.sign_headers(
            "GET",
            "/test.txt",
            &[],
            &mut headers,
            EMPTY_SHA256,
            at(1_369_353_600),
        );
        let want = "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41";
        assert_eq!(sig, want);
        assert_eq!(
            auth,
            format!(
                "AWS4-HMAC-SHA256 Credential={AK}/20130524/us-east-1/s3/aws4_request, \
                 SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature={want}"
            )
        );
        // Verification side: parse the header, rebuild from the received headers.
        let parsed = parse_authorization(&auth).expect("ok").expect("v4");
        let received = h(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ]);
        let key = SigningKey::derive(SK, &parsed.scope);
        let creq = CanonicalRequest {
            method: "GET",
            uri: "/test.txt",
            query: "",
            headers: &received,
            payload_hash: EMPTY_SHA256,
        };
        let got = creq.signature(&key, "20130524T000000Z", &parsed.scope);
        assert!(ct_eq(got.as_bytes(), parsed.signature.as_bytes()));
        // Any change in what is covered breaks it.
        let wrong_key = SigningKey::derive("other", &parsed.scope);
        assert_ne!(
            creq.signature(&wrong_key, "20130524T000000Z", &parsed.scope),
            want
        );
        let moved = CanonicalRequest {
            uri: "/test.txt2",
            ..creq
        };
        assert_ne!(
            moved.signature(&key, "20130524T000000Z", &parsed.scope),
            want
        );
    }

    /// `get-vanilla` of the AWS SigV4 test suite (service `service`).
    #[test]
    fn aws_suite_get_vanilla() {
        let s = Signer::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "service",
        );
        let mut headers = h(&[("Host", "example.amazonaws.com")]);
        let (_, sig) = s.sign_headers(
            "GET",
            "/",
            &[],
            &mut headers,
            EMPTY_SHA256,
            at(1_440_938_160),
        );
        assert_eq!(
            sig,
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// The presigned-URL example of the AWS S3 documentation.
    #[test]
    fn aws_doc_presigned() {
        let s = Signer::new(AK, SK, "us-east-1", "s3");
        let q = s.presign(
            "GET",
            "/test.txt",
            "examplebucket.s3.amazonaws.com",
            &[],
            86_400,
            at(1_369_353_600),
        );
        assert_eq!(
            q,
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    /// The aws-chunked upload example of the AWS S3 documentation: seed, 2 chunks, final chunk.
    #[test]
    fn aws_doc_chunked_upload() {
        let received = h(&[
            ("content-encoding", "aws-chunked"),
            ("content-length", "66824"),
            ("host", "s3.amazonaws.com"),
            ("x-amz-content-sha256", STREAMING_PAYLOAD),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-decoded-content-length", "66560"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ]);
        let scope = Scope::new("20130524T000000Z", "us-east-1", "s3");
        let key = SigningKey::derive(SK, &scope);
        let seed = CanonicalRequest {
            method: "PUT",
            uri: "/examplebucket/chunkObject.txt",
            query: "",
            headers: &received,
            payload_hash: STREAMING_PAYLOAD,
        }
        .signature(&key, "20130524T000000Z", &scope);
        assert_eq!(
            seed,
            "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
        );

        let mut client = ChunkSigner::new(key.clone(), "20130524T000000Z", &scope, &seed);
        let mut server = client.clone();
        let c1 = vec![b'a'; 65536];
        let c2 = vec![b'a'; 1024];
        let s1 = client.sign_chunk(&c1);
        assert_eq!(
            s1,
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
        let s2 = client.sign_chunk(&c2);
        assert_eq!(
            s2,
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
        );
        let s3 = client.sign_chunk(b"");
        assert_eq!(
            s3,
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        );

        // The server refuses a wrong or reordered chunk without advancing, then accepts.
        assert!(!server.verify_chunk(&c2, &s1));
        assert!(!server.verify_chunk(&c1, &s2));
        assert_eq!(server.previous(), seed);
        assert!(server.verify_chunk(&c1, &s1));
        assert!(server.verify_chunk(&c2, &s2));
        assert!(server.verify_chunk(b"", &s3));
        // Trailer signatures chain to the last chunk and cover the trailer text.
        let t1 = server.trailer_signature(b"x-amz-checksum-crc32:AAAA\n");
        let t2 = server.trailer_signature(b"x-amz-checksum-crc32:AAAB\n");
        assert_ne!(t1, t2);
        assert_eq!(t1, client.trailer_signature(b"x-amz-checksum-crc32:AAAA\n"));
    }

    #[test]
    fn ct_eq_basics() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
