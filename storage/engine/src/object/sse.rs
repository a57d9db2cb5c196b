//! Server-side encryption: per-object data keys and what wraps them.
//!
//! An encrypted object (SSE-S3 or SSE-C) has a random 256-bit data key; every chunk of it is
//! sealed with that key (`crate::chunks::seal`: XChaCha20-Poly1305, random nonce per chunk) and
//! stored under the hash of the sealed bytes, so equal plaintexts in different objects share
//! nothing. The data key is kept only wrapped (sealed) in the object's metadata
//! ([`Encryption`]): by a key derived from the node's master key (SSE-S3), or by a key derived
//! from the customer's key (SSE-C; only the key's MD5 is stored, to tell a wrong key from a
//! right one as S3 does). With `StoreConfig::encrypt_all`, every other chunk is sealed with the
//! node's chunk key (derived from the master key too). Which key seals a chunk is recorded per
//! chunk in the manifest ([`super::meta::Seal`]).

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use md5::{Digest, Md5};

use super::meta::{ChunkRef, Seal};
use super::pins::Shared;
use super::types::{Encryption, EncryptionKey};
use super::Store;
use crate::chunks::seal::{random, Sealer, SecretKey};
use crate::chunks::ChunkId;
use crate::StorageError;

/// Derivation context of the key wrapping SSE-S3 data keys (from the master key).
pub(crate) const WRAP_CONTEXT: &str = "tunnelmesh 2026 sse-s3 data-key wrap v1";
/// Derivation context of the node's chunk key (`encrypt_all`, from the master key).
pub(crate) const NODE_SEAL_CONTEXT: &str = "tunnelmesh 2026 node chunk seal v1";
/// Derivation context of the key wrapping SSE-C data keys (from the customer's key).
const CUSTOMER_CONTEXT: &str = "tunnelmesh 2026 sse-c data-key wrap v1";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Base64 MD5 of a customer key (`x-amz-server-side-encryption-customer-key-MD5`).
pub fn customer_key_md5(k: &SecretKey) -> String {
    b64().encode(Md5::digest(k.0))
}

impl Encryption {
    /// Whether the object is encrypted with a customer key (SSE-C).
    pub fn is_customer(&self) -> bool {
        self.customer_key_md5.is_some()
    }

    /// Whether `key` (the key a request brought, if any) opens this encryption, by the key's
    /// MD5: SSE-C needs the same customer key (`KeyRequired`, `KeyMismatch`); a customer key
    /// for an SSE-S3 object is `NotCustomerEncrypted`.
    pub fn check(&self, key: Option<&EncryptionKey>) -> Result<(), StorageError> {
        match (&self.customer_key_md5, key) {
            (Some(_), None | Some(EncryptionKey::Managed)) => Err(StorageError::KeyRequired),
            (Some(m), Some(EncryptionKey::Customer(k))) if customer_key_md5(k) != *m => {
                Err(StorageError::KeyMismatch)
            }
            (None, Some(EncryptionKey::Customer(_))) => Err(StorageError::NotCustomerEncrypted),
            _ => Ok(()),
        }
    }

    /// The data key's sealer, unwrapped with `key` (SSE-C) or the master key (SSE-S3).
    pub(crate) fn unwrap(
        &self,
        shared: &Shared,
        key: Option<&EncryptionKey>,
    ) -> Result<Arc<Sealer>, StorageError> {
        self.check(key)?;
        let wrapped = b64()
            .decode(&self.wrapped)
            .map_err(|_| StorageError::Corrupt("wrapped data key".into()))?;
        let dk = match key {
            Some(EncryptionKey::Customer(k)) => Sealer::derive(CUSTOMER_CONTEXT, &k.0)
                .open(&wrapped)
                .ok_or(StorageError::KeyMismatch)?,
            _ => shared
                .wrap
                .as_ref()
                .ok_or(StorageError::NoMasterKey)?
                .open(&wrapped)
                .ok_or_else(|| {
                    StorageError::Corrupt(
                        "SSE-S3 data key does not open with the master key".into(),
                    )
                })?,
        };
        let dk: [u8; 32] = dk
            .try_into()
            .map_err(|_| StorageError::Corrupt("data key length".into()))?;
        Ok(Arc::new(Sealer::new(&dk)))
    }
}

/// A new random data key for `key`'s kind of encryption: its record and its sealer.
pub(crate) fn new_encryption(
    shared: &Shared,
    key: &EncryptionKey,
) -> Result<(Encryption, Arc<Sealer>), StorageError> {
    let mut dk = [0u8; 32];
    random(&mut dk)?;
    let (wrapped, md5) = match key {
        EncryptionKey::Managed => (
            shared
                .wrap
                .as_ref()
                .ok_or(StorageError::NoMasterKey)?
                .seal(&dk)?,
            None,
        ),
        EncryptionKey::Customer(k) => (
            Sealer::derive(CUSTOMER_CONTEXT, &k.0).seal(&dk)?,
            Some(customer_key_md5(k)),
        ),
    };
    let e = Encryption {
        customer_key_md5: md5,
        wrapped: b64().encode(wrapped),
    };
    Ok((e, Arc::new(Sealer::new(&dk))))
}

impl Store {
    /// A new encryption record (random data key, wrapped for `key`), for a multipart upload
    /// whose parts and object it will encrypt (set it as the upload's `ObjectMeta::sse`).
    /// `NoMasterKey` for SSE-S3 on a store without a master key.
    pub fn new_encryption(&self, key: &EncryptionKey) -> Result<Encryption, StorageError> {
        new_encryption(self.shared(), key).map(|(e, _)| e)
    }

    /// Whether this store seals every chunk (`StoreConfig::encrypt_all`).
    pub fn encrypts_all(&self) -> bool {
        self.shared().seal_all
    }
}

/// `data` (plaintext) as a chunk sealed by `seal` (if any): its manifest entry and its stored
/// bytes.
pub(crate) fn seal_chunk<'a>(
    seal: Option<&(Seal, Arc<Sealer>)>,
    data: &'a [u8],
    inline: bool,
) -> Result<(ChunkRef, Cow<'a, [u8]>), StorageError> {
    let len = u32::try_from(data.len()).expect("chunk length fits u32 (chunk_size is u32)");
    let (stored, kind) = match seal {
        Some((kind, s)) => (Cow::Owned(s.seal(data)?), *kind),
        None => (Cow::Borrowed(data), Seal::Plain),
    };
    let c = ChunkRef {
        id: if inline {
            ChunkId::of_inline(&stored)
        } else {
            ChunkId::of(&stored)
        },
        len,
        inline,
        seal: kind,
    };
    Ok((c, stored))
}
