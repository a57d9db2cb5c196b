//! WireGuard's primitives (whitepaper section 5.4): HASH, MAC, HMAC, KDF1/2/3, AEAD,
//! XAEAD and DH, on fixed-size arrays. Nothing here keeps state.

use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroize;

use crate::Error;

/// `HASH(a || b || ...)`: BLAKE2s with a 32-byte output.
pub(crate) fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

type Mac16 = Blake2sMac<blake2::digest::consts::U16>;

fn mac_state(key: &[u8], parts: &[&[u8]]) -> Mac16 {
    let mut m = <Mac16 as KeyInit>::new_from_slice(key).expect("MAC keys are at most 32 bytes");
    for p in parts {
        Mac::update(&mut m, p);
    }
    m
}

/// `MAC(key, a || b || ...)`: keyed BLAKE2s with a 16-byte output.
pub(crate) fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    mac_state(key, parts).finalize().into_bytes().into()
}

/// Constant-time check that `tag == MAC(key, parts)`.
pub(crate) fn mac_verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    mac_state(key, parts).verify_slice(tag).is_ok()
}

/// `HMAC(key, input)` built from BLAKE2s (block size 64) as RFC 2104 describes.
pub(crate) fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Blake2s256::new();
    inner.update(ipad);
    for p in parts {
        inner.update(p);
    }
    let mut ih: [u8; 32] = inner.finalize().into();
    let out = hash(&[&opad, &ih]);
    ih.zeroize();
    ipad.zeroize();
    opad.zeroize();
    out
}

/// `KDF1(key, input)`.
pub(crate) fn kdf1(key: &[u8; 32], input: &[u8]) -> [u8; 32] {
    let mut t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[1]]);
    t0.zeroize();
    t1
}

/// `KDF2(key, input)`.
pub(crate) fn kdf2(key: &[u8; 32], input: &[u8]) -> ([u8; 32], [u8; 32]) {
    let mut t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[1]]);
    let t2 = hmac(&t0, &[&t1, &[2]]);
    t0.zeroize();
    (t1, t2)
}

/// `KDF3(key, input)`.
pub(crate) fn kdf3(key: &[u8; 32], input: &[u8]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let mut t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[1]]);
    let t2 = hmac(&t0, &[&t1, &[2]]);
    let t3 = hmac(&t0, &[&t2, &[3]]);
    t0.zeroize();
    (t1, t2, t3)
}

fn aead_key(key: &[u8; 32]) -> ring::aead::LessSafeKey {
    let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key)
        .expect("ChaCha20-Poly1305 keys are 32 bytes");
    ring::aead::LessSafeKey::new(unbound)
}

fn aead_nonce(counter: u64) -> ring::aead::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    ring::aead::Nonce::assume_unique_for_key(n)
}

/// `AEAD(key, counter, plain, aad)`: ChaCha20-Poly1305, nonce = 4 zero bytes || counter (LE).
/// `out` must be `plain.len() + 16` bytes.
pub(crate) fn aead_seal(key: &[u8; 32], counter: u64, plain: &[u8], aad: &[u8], out: &mut [u8]) {
    let (body, tag_out) = out.split_at_mut(plain.len());
    body.copy_from_slice(plain);
    let tag = aead_key(key)
        .seal_in_place_separate_tag(aead_nonce(counter), ring::aead::Aad::from(aad), body)
        .expect("handshake payloads are far below the AEAD length limit");
    tag_out.copy_from_slice(tag.as_ref());
}

/// Opens `sealed` (ciphertext || tag) into `out` (`sealed.len() - 16` bytes).
pub(crate) fn aead_open(
    key: &[u8; 32],
    counter: u64,
    sealed: &[u8],
    aad: &[u8],
    out: &mut [u8],
) -> Result<(), Error> {
    let mut buf = [0u8; 64];
    let buf = buf.get_mut(..sealed.len()).ok_or(Error::Decrypt)?;
    buf.copy_from_slice(sealed);
    let res =
        match aead_key(key).open_in_place(aead_nonce(counter), ring::aead::Aad::from(aad), buf) {
            Ok(plain) if plain.len() == out.len() => {
                out.copy_from_slice(plain);
                Ok(())
            }
            _ => Err(Error::Decrypt),
        };
    buf.zeroize();
    res
}

/// `XAEAD(key, nonce, plain, aad)` for the 16-byte cookie.
pub(crate) fn xaead_seal(
    key: &[u8; 32],
    nonce: &[u8; 24],
    plain: &[u8; 16],
    aad: &[u8],
) -> [u8; 32] {
    let cipher = <XChaCha20Poly1305 as chacha20poly1305::KeyInit>::new(key.into());
    let mut body = *plain;
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, &mut body)
        .expect("a 16-byte cookie is far below the AEAD length limit");
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&body);
    out[16..].copy_from_slice(&tag);
    out
}

/// Opens a sealed cookie (16 bytes + tag).
pub(crate) fn xaead_open(
    key: &[u8; 32],
    nonce: &[u8],
    sealed: &[u8],
    aad: &[u8],
) -> Result<[u8; 16], Error> {
    if nonce.len() != 24 || sealed.len() != 32 {
        return Err(Error::BadLength);
    }
    let cipher = <XChaCha20Poly1305 as chacha20poly1305::KeyInit>::new(key.into());
    let mut body = [0u8; 16];
    body.copy_from_slice(&sealed[..16]);
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            aad,
            &mut body,
            chacha20poly1305::Tag::from_slice(&sealed[16..]),
        )
        .map_err(|_| Error::Decrypt)?;
    Ok(body)
}

/// `DH(private, public)`; an all-zero result (a small-order public key) is an error, as in
/// the kernel's `curve25519()` check.
pub(crate) fn dh(
    private: &x25519_dalek::StaticSecret,
    public: &[u8; 32],
) -> Result<[u8; 32], Error> {
    let shared = private.diffie_hellman(&x25519_dalek::PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(Error::InvalidPoint);
    }
    Ok(shared.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KDF chaining properties (KDF1 is KDF2's first output, and so on).
    #[test]
    fn hmac_depends_on_key_and_message() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        assert_ne!(hmac(&k1, &[b"abc"]), hmac(&k2, &[b"abc"]));
        assert_ne!(hmac(&k1, &[b"abc"]), hmac(&k1, &[b"abd"]));
        assert_eq!(hmac(&k1, &[b"ab", b"c"]), hmac(&k1, &[b"abc"]));
        let (a, b) = kdf2(&k1, b"x");
        assert_eq!(a, kdf1(&k1, b"x"));
        let (a3, b3, c3) = kdf3(&k1, b"x");
        assert_eq!((a, b), (a3, b3));
        assert_ne!(b3, c3);
    }

    /// Pinned against Python's `hmac.new(key, msg, hashlib.blake2s)` (printed by
    /// tests/vectors/ssh_x25519.py).
    #[test]
    fn hmac_blake2s_matches_python() {
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::try_from(i).expect("small");
        }
        let got = hmac(&key, &[b"WireGuard v1 zx2c4 Jason@zx2c4.com"]);
        let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "b9f2e5767a6cdfa821d56eb9a1d60bd7604e1f6eaa167773dd4580ccb475d570"
        );
    }

    #[test]
    fn aead_roundtrip_and_tamper() {
        let key = [7u8; 32];
        let mut sealed = [0u8; 28];
        aead_seal(&key, 0, b"hello world!", b"aad", &mut sealed);
        let mut out = [0u8; 12];
        aead_open(&key, 0, &sealed, b"aad", &mut out).expect("opens");
        assert_eq!(&out, b"hello world!");
        assert_eq!(
            aead_open(&key, 1, &sealed, b"aad", &mut out),
            Err(Error::Decrypt)
        );
        assert_eq!(
            aead_open(&key, 0, &sealed, b"aaX", &mut out),
            Err(Error::Decrypt)
        );
        sealed[0] ^= 1;
        assert_eq!(
            aead_open(&key, 0, &sealed, b"aad", &mut out),
            Err(Error::Decrypt)
        );
    }

    #[test]
    fn xaead_roundtrip_and_tamper() {
        let key = [9u8; 32];
        let nonce = [3u8; 24];
        let sealed = xaead_seal(&key, &nonce, &[5u8; 16], b"mac1");
        assert_eq!(xaead_open(&key, &nonce, &sealed, b"mac1"), Ok([5u8; 16]));
        assert_eq!(
            xaead_open(&key, &nonce, &sealed, b"mac2"),
            Err(Error::Decrypt)
        );
    }

    #[test]
    fn mac_verify_rejects_wrong_tag() {
        let t = mac(b"key", &[b"msg"]);
        assert!(mac_verify(b"key", &[b"m", b"sg"], &t));
        let mut bad = t;
        bad[15] ^= 0x80;
        assert!(!mac_verify(b"key", &[b"msg"], &bad));
        assert!(!mac_verify(b"key", &[b"msg"], &t[..15]));
    }
}
