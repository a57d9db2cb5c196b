//! Server-side encryption headers: which key a request brings (SSE-S3 or SSE-C, for the
//! object and for a copy source), checked as S3 checks them, and the headers answered for an
//! encrypted object. Sans-IO: headers in, a key or an error out. The engine does the
//! encryption (`tm_storage::PutWriter::encrypt`, `ObjectReader::unlock`).

use base64::Engine as _;
use http::HeaderMap;
use md5::{Digest, Md5};
use tm_storage::{Encryption, EncryptionKey, SecretKey};

use crate::error::Error;

/// The one algorithm S3 names for SSE-S3 and SSE-C (we seal with XChaCha20-Poly1305, as
/// permitted by S3's contract: the algorithm name is what clients send and expect back).
pub(crate) const AES256: &str = "AES256";

/// Where a request's SSE-C headers are: for the object, or for a copy source.
#[derive(Clone, Copy)]
pub(crate) enum Side {
    Object,
    CopySource,
}

impl Side {
    fn prefix(self) -> &'static str {
        match self {
            Side::Object => "x-amz-server-side-encryption-customer-",
            Side::CopySource => "x-amz-copy-source-server-side-encryption-customer-",
        }
    }
}

fn value<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}").trim())
}

/// The customer key on `side` (None without SSE-C headers), checked: all three headers,
/// algorithm `AES256`, a 256-bit base64 key whose MD5 is the one given.
pub(crate) fn customer_key(h: &HeaderMap, side: Side) -> Result<Option<EncryptionKey>, Error> {
    let p = side.prefix();
    let alg = value(h, &format!("{p}algorithm"));
    let key = value(h, &format!("{p}key"));
    let md5 = value(h, &format!("{p}key-md5"));
    if alg.is_none() && key.is_none() && md5.is_none() {
        return Ok(None);
    }
    let Some(alg) = alg else {
        return Err(Error::InvalidArgument(
            "Requests specifying Server Side Encryption with Customer provided keys must provide \
             a valid encryption algorithm."
                .into(),
        ));
    };
    if alg != AES256 {
        return Err(Error::InvalidArgument(
            "The encryption algorithm specified is not valid.".into(),
        ));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(key) = key else {
        return Err(Error::InvalidArgument(
            "Requests specifying Server Side Encryption with Customer provided keys must provide \
             an appropriate secret key."
                .into(),
        ));
    };
    let key: [u8; 32] = b64
        .decode(key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| {
            Error::InvalidArgument("The secret key was invalid for the specified algorithm.".into())
        })?;
    let Some(md5) = md5 else {
        return Err(Error::InvalidArgument(
            "Requests specifying Server Side Encryption with Customer provided keys must provide \
             the client calculated MD5 of the secret key."
                .into(),
        ));
    };
    if b64.encode(Md5::digest(key)) != md5 {
        return Err(Error::InvalidArgument(
            "The calculated MD5 hash of the key did not match the hash that was provided.".into(),
        ));
    }
    Ok(Some(EncryptionKey::Customer(SecretKey(key))))
}

/// The key a write asks its object to be encrypted with: `x-amz-server-side-encryption:
/// AES256` (SSE-S3) or SSE-C headers; both at once is `InvalidArgument`. SSE-KMS is
/// `NotImplemented`; another value `InvalidArgument`.
pub(crate) fn object_key(h: &HeaderMap) -> Result<Option<EncryptionKey>, Error> {
    let customer = customer_key(h, Side::Object)?;
    match value(h, "x-amz-server-side-encryption") {
        None => Ok(customer),
        Some(AES256) if customer.is_some() => Err(Error::InvalidArgument(
            "Server Side Encryption with Customer provided key is incompatible with the \
             encryption method specified"
                .into(),
        )),
        Some(AES256) => Ok(Some(EncryptionKey::Managed)),
        Some(v) if v.starts_with("aws:kms") => Err(Error::NotImplemented(format!(
            "A header you provided implies functionality that is not implemented: \
             x-amz-server-side-encryption: {v} (SSE-KMS)"
        ))),
        Some(_) => Err(Error::InvalidArgument(
            "The encryption method specified is not supported".into(),
        )),
    }
}

/// Whether `key` (from a read or a copy source) opens an object encrypted as `sse`: the
/// engine's verdict, also for objects without encryption (a customer key for them is refused).
pub(crate) fn check_read(
    sse: Option<&Encryption>,
    key: Option<&EncryptionKey>,
) -> Result<(), tm_storage::StorageError> {
    match sse {
        Some(e) => e.check(key),
        None if matches!(key, Some(EncryptionKey::Customer(_))) => {
            Err(tm_storage::StorageError::NotCustomerEncrypted)
        }
        None => Ok(()),
    }
}

/// Whether an object encrypted as `sse` is what a write asking for `key` would store (so a
/// copy may share its chunks): both plain, both SSE-S3, or SSE-C with the same key.
pub(crate) fn same(sse: Option<&Encryption>, key: Option<&EncryptionKey>) -> bool {
    match (sse, key) {
        (None, None) => true,
        (Some(e), Some(EncryptionKey::Managed)) => !e.is_customer(),
        (Some(e), Some(EncryptionKey::Customer(k))) => {
            e.customer_key_md5.as_deref() == Some(tm_storage::customer_key_md5(k).as_str())
        }
        _ => false,
    }
}

/// The answer headers of an object encrypted as `sse`: `(x-amz-server-side-encryption,
/// customer algorithm, customer key MD5)`, as S3 sets them (SSE-C objects answer only the
/// customer pair).
pub(crate) fn answer(
    sse: Option<&Encryption>,
) -> (
    Option<s3s::dto::ServerSideEncryption>,
    Option<String>,
    Option<String>,
) {
    match sse {
        None => (None, None, None),
        Some(e) => match &e.customer_key_md5 {
            Some(m) => (None, Some(AES256.to_owned()), Some(m.clone())),
            None => (
                Some(s3s::dto::ServerSideEncryption::from_static(
                    s3s::dto::ServerSideEncryption::AES256,
                )),
                None,
                None,
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        m
    }

    fn code(r: Result<Option<EncryptionKey>, Error>) -> String {
        match r {
            Ok(None) => "none".into(),
            Ok(Some(EncryptionKey::Managed)) => "managed".into(),
            Ok(Some(EncryptionKey::Customer(_))) => "customer".into(),
            Err(e) => crate::error::aws_error(e, "b").code().as_str().to_owned(),
        }
    }

    #[test]
    fn headers() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = [9u8; 32];
        let k = b64.encode(key);
        let m = b64.encode(Md5::digest(key));
        let alg = "x-amz-server-side-encryption-customer-algorithm";
        let kh = "x-amz-server-side-encryption-customer-key";
        let mh = "x-amz-server-side-encryption-customer-key-md5";
        assert_eq!(code(object_key(&h(&[]))), "none");
        let sse = "x-amz-server-side-encryption";
        assert_eq!(code(object_key(&h(&[(sse, "AES256")]))), "managed");
        assert_eq!(code(object_key(&h(&[(sse, "aws:kms")]))), "NotImplemented");
        assert_eq!(code(object_key(&h(&[(sse, "DES")]))), "InvalidArgument");
        assert_eq!(
            code(object_key(&h(&[(alg, "AES256"), (kh, &k), (mh, &m)]))),
            "customer"
        );
        let both = h(&[(sse, "AES256"), (alg, "AES256"), (kh, &k), (mh, &m)]);
        assert_eq!(code(object_key(&both)), "InvalidArgument");
        for bad in [
            h(&[(kh, &k), (mh, &m)]),
            h(&[(alg, "AES128"), (kh, &k), (mh, &m)]),
            h(&[(alg, "AES256"), (mh, &m)]),
            h(&[(alg, "AES256"), (kh, &k)]),
            h(&[(alg, "AES256"), (kh, "c2hvcnQ="), (mh, &m)]),
            h(&[(alg, "AES256"), (kh, &k), (mh, "AAAAAAAAAAAAAAAAAAAAAA==")]),
        ] {
            assert_eq!(code(object_key(&bad)), "InvalidArgument");
        }
        let copy = h(&[
            (
                "x-amz-copy-source-server-side-encryption-customer-algorithm",
                "AES256",
            ),
            ("x-amz-copy-source-server-side-encryption-customer-key", &k),
            (
                "x-amz-copy-source-server-side-encryption-customer-key-md5",
                &m,
            ),
        ]);
        assert_eq!(code(customer_key(&copy, Side::CopySource)), "customer");
        assert_eq!(code(object_key(&copy)), "none");
    }
}
