//! Sealing bytes at rest: XChaCha20-Poly1305 (the AEAD the mesh already uses) with a random
//! 192-bit nonce per sealed message, so one key seals any number of chunks without nonce
//! bookkeeping. A sealed message is `nonce (24) || ciphertext || tag (16)`.
//!
//! A sealed chunk is stored under the hash of its *sealed* bytes: the random nonce makes two
//! seals of the same plaintext differ, so chunk names never reveal that two plaintexts are
//! equal (and such chunks are not deduplicated).

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::StorageError;

/// Bytes a seal adds to a message (nonce and tag).
pub const SEAL_OVERHEAD: usize = 24 + 16;

/// A 256-bit key whose `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Seals and opens messages under one key.
pub struct Sealer(XChaCha20Poly1305);

impl Sealer {
    /// A sealer with `key`.
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer(XChaCha20Poly1305::new(key.into()))
    }

    /// A sealer whose key is derived from `secret` for one purpose (`context`, a fixed string):
    /// keys for different purposes derived from one secret are independent.
    pub fn derive(context: &str, secret: &[u8]) -> Sealer {
        Sealer::new(&blake3::derive_key(context, secret))
    }

    /// `plain` sealed under a fresh random nonce.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, StorageError> {
        let mut nonce = [0u8; 24];
        random(&mut nonce)?;
        let ct = self
            .0
            .encrypt(XNonce::from_slice(&nonce), plain)
            .map_err(|_| StorageError::Corrupt("sealing failed".into()))?;
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plain.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// The plaintext of a sealed message; None if it was not sealed with this key or was
    /// altered.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let (nonce, ct) = sealed.split_at(24);
        self.0.decrypt(XNonce::from_slice(nonce), ct).ok()
    }
}

/// Fill `b` from the OS random source.
pub fn random(b: &mut [u8]) -> Result<(), StorageError> {
    getrandom::getrandom(b).map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let s = Sealer::derive("test", b"secret");
        let a = s.seal(b"hello world").expect("seal");
        let b = s.seal(b"hello world").expect("seal");
        assert_ne!(a, b, "a fresh nonce per seal");
        assert_eq!(a.len(), 11 + SEAL_OVERHEAD);
        assert!(!a.windows(5).any(|w| w == b"hello"), "no plaintext");
        assert_eq!(s.open(&a).as_deref(), Some(&b"hello world"[..]));
        assert!(Sealer::derive("other", b"secret").open(&a).is_none());
        let mut t = a.clone();
        t[30] ^= 1;
        assert!(s.open(&t).is_none(), "tampering detected");
        assert!(s.open(&a[..10]).is_none());
    }
}
