//! S3 additional checksums (`x-amz-checksum-*`): what a request declares (a header value, an
//! aws-chunked trailer, or only an algorithm), a body adapter that verifies the declared value
//! when the body ends (so a mismatch fails the body and nothing is committed), and the
//! composite checksum of a multipart upload (the checksum of the parts' raw checksums, `-N`).
//!
//! Stored form (in `ObjectMeta::checksum` and part records): `ALGORITHM:base64`, e.g.
//! `CRC32:NSRBwg==`; a composite ends in `-N`.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use http::HeaderMap;
use s3s::crypto::{Checksum as _, Crc32, Crc32c, Crc64Nvme, Sha1, Sha256};

use crate::body::{BodyStream, StdError};
use crate::error::Error;

/// A checksum algorithm S3 defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algo {
    Crc32,
    Crc32c,
    Sha1,
    Sha256,
    Crc64Nvme,
}

impl Algo {
    pub(crate) const ALL: [Algo; 5] = [
        Algo::Crc32,
        Algo::Crc32c,
        Algo::Sha1,
        Algo::Sha256,
        Algo::Crc64Nvme,
    ];

    /// The name as in `x-amz-sdk-checksum-algorithm` (`CRC32`, ...).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Algo::Crc32 => "CRC32",
            Algo::Crc32c => "CRC32C",
            Algo::Sha1 => "SHA1",
            Algo::Sha256 => "SHA256",
            Algo::Crc64Nvme => "CRC64NVME",
        }
    }

    /// The header carrying its value (`x-amz-checksum-crc32`, ...).
    pub(crate) fn header(self) -> &'static str {
        match self {
            Algo::Crc32 => "x-amz-checksum-crc32",
            Algo::Crc32c => "x-amz-checksum-crc32c",
            Algo::Sha1 => "x-amz-checksum-sha1",
            Algo::Sha256 => "x-amz-checksum-sha256",
            Algo::Crc64Nvme => "x-amz-checksum-crc64nvme",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Algo> {
        Algo::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name.trim()))
    }

    fn from_header(h: &str) -> Option<Algo> {
        Algo::ALL
            .into_iter()
            .find(|a| a.header().eq_ignore_ascii_case(h.trim()))
    }

    /// Digest length in bytes.
    fn len(self) -> usize {
        match self {
            Algo::Crc32 | Algo::Crc32c => 4,
            Algo::Sha1 => 20,
            Algo::Sha256 => 32,
            Algo::Crc64Nvme => 8,
        }
    }

    pub(crate) fn digest(self, data: &[u8]) -> Vec<u8> {
        let mut h = Hasher::new(self);
        h.update(data);
        h.finalize()
    }
}

/// An incremental hasher for one [`Algo`].
pub(crate) enum Hasher {
    Crc32(Crc32),
    Crc32c(Crc32c),
    Sha1(Sha1),
    Sha256(Sha256),
    Crc64Nvme(Crc64Nvme),
}

impl Hasher {
    pub(crate) fn new(a: Algo) -> Hasher {
        match a {
            Algo::Crc32 => Hasher::Crc32(Crc32::new()),
            Algo::Crc32c => Hasher::Crc32c(Crc32c::new()),
            Algo::Sha1 => Hasher::Sha1(Sha1::new()),
            Algo::Sha256 => Hasher::Sha256(Sha256::new()),
            Algo::Crc64Nvme => Hasher::Crc64Nvme(Crc64Nvme::new()),
        }
    }

    pub(crate) fn update(&mut self, d: &[u8]) {
        match self {
            Hasher::Crc32(h) => h.update(d),
            Hasher::Crc32c(h) => h.update(d),
            Hasher::Sha1(h) => h.update(d),
            Hasher::Sha256(h) => h.update(d),
            Hasher::Crc64Nvme(h) => h.update(d),
        }
    }

    pub(crate) fn finalize(self) -> Vec<u8> {
        match self {
            Hasher::Crc32(h) => h.finalize().to_vec(),
            Hasher::Crc32c(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().as_ref().to_vec(),
            Hasher::Sha256(h) => h.finalize().as_ref().to_vec(),
            Hasher::Crc64Nvme(h) => h.finalize().to_vec(),
        }
    }
}

fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn unb64(a: Algo, v: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()
        .filter(|r| r.len() == a.len())
}

/// The stored form of a checksum.
pub(crate) fn stored(a: Algo, raw: &[u8]) -> String {
    format!("{}:{}", a.name(), b64(raw))
}

/// Splits a stored checksum into its algorithm and base64 value (with any `-N` suffix).
pub(crate) fn parse_stored(s: &str) -> Option<(Algo, &str)> {
    let (a, v) = s.split_once(':')?;
    Some((Algo::parse(a)?, v))
}

/// Where the declared value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// Raw digest from the `x-amz-checksum-*` header.
    Header(Vec<u8>),
    /// From the aws-chunked trailer named in `x-amz-trailer`.
    Trailer,
    /// Only the algorithm was named: compute and store, nothing to compare.
    Compute,
}

/// The checksum a request declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Declared {
    pub algo: Algo,
    expect: Expect,
}

fn invalid(m: impl Into<String>) -> Error {
    Error::InvalidRequest(m.into())
}

/// What the request declares about its body's checksum (`None`: nothing).
pub(crate) fn declared(h: &HeaderMap) -> Result<Option<Declared>, Error> {
    let mut found: Option<Declared> = None;
    for a in Algo::ALL {
        if let Some(v) = h.get(a.header()) {
            if found.is_some() {
                return Err(invalid("Expecting a single x-amz-checksum- header"));
            }
            let raw =
                v.to_str().ok().and_then(|v| unb64(a, v)).ok_or_else(|| {
                    invalid(format!("Value for {} header is invalid.", a.header()))
                })?;
            found = Some(Declared {
                algo: a,
                expect: Expect::Header(raw),
            });
        }
    }
    if let Some(t) = h.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
        for name in t.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some(a) = Algo::from_header(name) else {
                if name.to_ascii_lowercase().starts_with("x-amz-checksum-") {
                    return Err(invalid(format!("The trailer {name} is not supported")));
                }
                continue;
            };
            if found.is_some() {
                return Err(invalid("Expecting a single x-amz-checksum- header"));
            }
            found = Some(Declared {
                algo: a,
                expect: Expect::Trailer,
            });
        }
    }
    let named = h
        .get("x-amz-sdk-checksum-algorithm")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(Algo::parse)
                .ok_or_else(|| invalid("Checksum algorithm provided is unsupported."))
        })
        .transpose()?;
    match (&found, named) {
        (Some(d), Some(n)) if d.algo != n => Err(invalid(format!(
            "Value for x-amz-sdk-checksum-algorithm header is invalid: the checksum sent is {}",
            d.algo.name()
        ))),
        (None, Some(n)) => Ok(Some(Declared {
            algo: n,
            expect: Expect::Compute,
        })),
        _ => Ok(found),
    }
}

/// The verified checksum of a request body (stored form), filled when the body ended intact.
/// The front puts one into every request's extensions; the service reads it before commit.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outcome(Arc<Mutex<Option<String>>>);

impl Outcome {
    pub(crate) fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set(&self, v: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
    }
}

/// Trailing headers of an aws-chunked body (lower-case name, value), filled by the decoder
/// before its stream ends.
#[derive(Clone, Debug, Default)]
pub(crate) struct Trailers(Arc<Mutex<Vec<(String, String)>>>);

impl Trailers {
    pub(crate) fn push(&self, name: String, value: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, value));
    }
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

struct Verify {
    inner: BodyStream,
    hasher: Option<Hasher>,
    decl: Declared,
    trailers: Trailers,
    out: Outcome,
}

impl Verify {
    /// At the end of the body: compares and records. `Err` fails the body.
    fn finish(&mut self) -> Result<(), Error> {
        let Some(h) = self.hasher.take() else {
            return Ok(());
        };
        let got = h.finalize();
        let a = self.decl.algo;
        let want = match &self.decl.expect {
            Expect::Header(raw) => Some(raw.clone()),
            Expect::Trailer => {
                let v = self.trailers.get(a.header()).ok_or_else(|| {
                    Error::MalformedTrailer(format!("the trailer {} is missing", a.header()))
                })?;
                Some(unb64(a, &v).ok_or_else(|| {
                    invalid(format!(
                        "Value for {} trailing header is invalid.",
                        a.header()
                    ))
                })?)
            }
            Expect::Compute => None,
        };
        if want.is_some_and(|w| w != got) {
            return Err(Error::BadDigest(a.name()));
        }
        self.out.set(stored(a, &got));
        Ok(())
    }
}

/// Passes `inner` through, hashing it; at its end checks the declared value (from the header or
/// from `trailers`) and records the stored form in `out`, or fails with `BadDigest`.
pub(crate) fn verified(
    inner: BodyStream,
    decl: Declared,
    trailers: Trailers,
    out: Outcome,
) -> BodyStream {
    let v = Verify {
        inner,
        hasher: Some(Hasher::new(decl.algo)),
        decl,
        trailers,
        out,
    };
    Box::pin(futures::stream::unfold(Some(v), |st| async move {
        let mut v = st?;
        match v.inner.next().await {
            Some(Ok(b)) => {
                if let Some(h) = v.hasher.as_mut() {
                    h.update(&b);
                }
                Some((Ok::<Bytes, StdError>(b), Some(v)))
            }
            Some(Err(e)) => Some((Err(e), None)),
            None => match v.finish() {
                Ok(()) => None,
                Err(e) => Some((Err(Box::new(e) as StdError), None)),
            },
        }
    }))
}

/// The composite checksum of a multipart object from its parts' stored checksums, if every
/// part has one of the same algorithm: `ALGO:base64(algo(raw1 || raw2 ...))-N`.
pub(crate) fn composite(parts: &[Option<String>]) -> Option<String> {
    let mut algo = None;
    let mut cat = Vec::new();
    for p in parts {
        let (a, v) = parse_stored(p.as_deref()?)?;
        if algo.is_some_and(|x| x != a) || v.contains('-') {
            return None;
        }
        algo = Some(a);
        cat.extend(unb64(a, v)?);
    }
    let a = algo?;
    Some(format!("{}-{}", stored(a, &a.digest(&cat)), parts.len()))
}

/// The checksum fields of an S3 answer: one `Some` for the stored algorithm, and the type.
#[derive(Default)]
pub(crate) struct Fields {
    pub crc32: Option<String>,
    pub crc32c: Option<String>,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
    pub crc64nvme: Option<String>,
    pub full_object: bool,
    pub set: bool,
}

/// The answer fields for a stored checksum.
pub(crate) fn fields(stored: Option<&str>) -> Fields {
    let mut f = Fields::default();
    let Some((a, v)) = stored.and_then(parse_stored) else {
        return f;
    };
    let v = Some(v.to_owned());
    f.full_object = !v.as_deref().is_some_and(|v| v.contains('-'));
    f.set = true;
    match a {
        Algo::Crc32 => f.crc32 = v,
        Algo::Crc32c => f.crc32c = v,
        Algo::Sha1 => f.sha1 = v,
        Algo::Sha256 => f.sha256 = v,
        Algo::Crc64Nvme => f.crc64nvme = v,
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn known_values() {
        // "hello world": CRC32 0x0d4a1185, CRC32C 0xc99465aa
        assert_eq!(
            Algo::Crc32.digest(b"hello world"),
            vec![0x0d, 0x4a, 0x11, 0x85]
        );
        assert_eq!(
            Algo::Crc32c.digest(b"hello world"),
            vec![0xc9, 0x94, 0x65, 0xaa]
        );
        assert_eq!(
            stored(Algo::Crc32, &[0x0d, 0x4a, 0x11, 0x85]),
            "CRC32:DUoRhQ=="
        );
        assert_eq!(parse_stored("SHA256:abc-2"), Some((Algo::Sha256, "abc-2")));
    }

    #[test]
    fn declarations() {
        let mut h = HeaderMap::new();
        assert_eq!(declared(&h).expect("ok"), None);
        h.insert("x-amz-checksum-crc32", HeaderValue::from_static("DUoRhQ=="));
        let d = declared(&h).expect("ok").expect("some");
        assert_eq!(d.algo, Algo::Crc32);
        h.insert("x-amz-checksum-sha1", HeaderValue::from_static("x"));
        assert!(declared(&h).is_err(), "two checksum headers");
        let mut h = HeaderMap::new();
        h.insert("x-amz-checksum-crc32", HeaderValue::from_static("AAAA"));
        assert!(declared(&h).is_err(), "3 bytes is not a CRC32");
        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-trailer",
            HeaderValue::from_static("x-amz-checksum-crc32c"),
        );
        h.insert(
            "x-amz-sdk-checksum-algorithm",
            HeaderValue::from_static("CRC32C"),
        );
        assert_eq!(
            declared(&h).expect("ok").expect("some").expect,
            Expect::Trailer
        );
        h.insert(
            "x-amz-sdk-checksum-algorithm",
            HeaderValue::from_static("SHA1"),
        );
        assert!(
            declared(&h).is_err(),
            "algorithm differs from the trailer's"
        );
        h.insert(
            "x-amz-sdk-checksum-algorithm",
            HeaderValue::from_static("MD4"),
        );
        assert!(declared(&h).is_err());
    }

    #[test]
    fn composite_of_parts() {
        let p1 = stored(Algo::Crc32, &Algo::Crc32.digest(b"a"));
        let p2 = stored(Algo::Crc32, &Algo::Crc32.digest(b"b"));
        let mut cat = Algo::Crc32.digest(b"a");
        cat.extend(Algo::Crc32.digest(b"b"));
        let want = format!("{}-2", stored(Algo::Crc32, &Algo::Crc32.digest(&cat)));
        assert_eq!(composite(&[Some(p1.clone()), Some(p2)]), Some(want));
        assert_eq!(composite(&[Some(p1.clone()), None]), None);
        let s = stored(Algo::Sha1, &Algo::Sha1.digest(b"b"));
        assert_eq!(composite(&[Some(p1), Some(s)]), None);
    }

    #[tokio::test]
    async fn verifies_at_the_end() {
        let input = |d: &'static [u8]| -> BodyStream {
            Box::pin(futures::stream::iter([Ok(Bytes::from_static(d))]))
        };
        let mut h = HeaderMap::new();
        h.insert("x-amz-checksum-crc32", HeaderValue::from_static("DUoRhQ=="));
        let d = declared(&h).expect("ok").expect("some");
        let out = Outcome::default();
        let mut s = verified(
            input(b"hello world"),
            d.clone(),
            Trailers::default(),
            out.clone(),
        );
        while let Some(x) = s.next().await {
            x.expect("good body");
        }
        assert_eq!(out.get().as_deref(), Some("CRC32:DUoRhQ=="));
        let out = Outcome::default();
        let mut s = verified(input(b"hello worle"), d, Trailers::default(), out.clone());
        let mut failed = false;
        while let Some(x) = s.next().await {
            failed |= x.is_err();
        }
        assert!(failed && out.get().is_none());
    }
}
