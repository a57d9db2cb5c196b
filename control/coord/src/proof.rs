//! Registration proofs. X25519 cannot sign, so a node proves possession of its static key
//! with a MAC keyed by the static-static Diffie-Hellman secret shared with the coordinator:
//!
//! `proof = BLAKE2s-MAC-256(key = DH(node_priv, coordinator_pub), "tunnelmesh register v1" ||
//! nonce || node_pub || len(name) as u8 || name || csr_der)`
//!
//! The coordinator recomputes it with `DH(coordinator_priv, node_pub)`. The join token's secret
//! is sent as is inside the pinned TLS connection (the coordinator stores only its SHA-256, so
//! it could not check a MAC keyed by it); [`token_mac`] remains for other uses.

use blake2::digest::{KeyInit, Mac};
use blake2::Blake2sMac256;
use tm_noise::{PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::Error;

/// Domain-separation label of the registration proof.
pub const PROOF_LABEL: &[u8] = b"tunnelmesh register v1";

fn mac_state(key: &[u8; 32], parts: &[&[u8]]) -> Blake2sMac256 {
    let mut m = <Blake2sMac256 as KeyInit>::new_from_slice(key).expect("a 32-byte key is valid");
    for p in parts {
        Mac::update(&mut m, p);
    }
    m
}

/// X25519 of our private key and a peer's public key; all-zero results are refused.
pub fn dh(private: &PrivateKey, public: &PublicKey) -> Result<Zeroizing<[u8; 32]>, Error> {
    let secret = x25519_dalek::StaticSecret::from(private.to_bytes());
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(public.0));
    if !shared.was_contributory() {
        return Err(Error::SmallOrderKey);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

fn proof_parts<'a>(
    nonce: &'a [u8; 32],
    node_pub: &'a PublicKey,
    name_len: &'a [u8; 1],
    name: &'a str,
    csr_der: &'a [u8],
) -> [&'a [u8]; 6] {
    [
        PROOF_LABEL,
        nonce,
        node_pub.as_bytes(),
        name_len,
        name.as_bytes(),
        csr_der,
    ]
}

fn name_len(name: &str) -> Result<[u8; 1], Error> {
    u8::try_from(name.len())
        .map(|l| [l])
        .map_err(|_| Error::BadName(name.to_owned(), "longer than 255 bytes"))
}

/// The node side: computes the proof with its private key and the coordinator's public key.
pub fn node_proof(
    node_priv: &PrivateKey,
    coordinator_pub: &PublicKey,
    nonce: &[u8; 32],
    name: &str,
    csr_der: &[u8],
) -> Result<[u8; 32], Error> {
    let key = dh(node_priv, coordinator_pub)?;
    let node_pub = node_priv.public_key();
    let nl = name_len(name)?;
    let m = mac_state(&key, &proof_parts(nonce, &node_pub, &nl, name, csr_der));
    Ok(m.finalize().into_bytes().into())
}

/// The coordinator side: checks a proof (constant time) with its private key.
pub fn verify_proof(
    coordinator_priv: &PrivateKey,
    node_pub: &PublicKey,
    nonce: &[u8; 32],
    name: &str,
    csr_der: &[u8],
    proof: &[u8; 32],
) -> Result<(), Error> {
    let key = dh(coordinator_priv, node_pub)?;
    let nl = name_len(name)?;
    mac_state(&key, &proof_parts(nonce, node_pub, &nl, name, csr_der))
        .verify_slice(proof)
        .map_err(|_| Error::BadProof)
}

/// `BLAKE2s-MAC-256(key = join_secret, nonce || node_pub)`.
pub fn token_mac(secret: &[u8; 32], nonce: &[u8; 32], node_pub: &PublicKey) -> [u8; 32] {
    mac_state(secret, &[nonce, node_pub.as_bytes()])
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a token MAC in constant time.
pub fn verify_token_mac(
    secret: &[u8; 32],
    nonce: &[u8; 32],
    node_pub: &PublicKey,
    tag: &[u8; 32],
) -> Result<(), Error> {
    mac_state(secret, &[nonce, node_pub.as_bytes()])
        .verify_slice(tag)
        .map_err(|_| Error::WrongToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_binds_every_input() {
        let node = PrivateKey::from_bytes([1; 32]);
        let coord = PrivateKey::from_bytes([2; 32]);
        let other = PrivateKey::from_bytes([3; 32]);
        let n = [9u8; 32];
        let p = node_proof(&node, &coord.public_key(), &n, "a", b"csr").expect("proof");
        verify_proof(&coord, &node.public_key(), &n, "a", b"csr", &p).expect("verifies");
        let bad = |r: Result<(), Error>| assert!(matches!(r, Err(Error::BadProof)));
        bad(verify_proof(
            &coord,
            &other.public_key(),
            &n,
            "a",
            b"csr",
            &p,
        ));
        bad(verify_proof(
            &coord,
            &node.public_key(),
            &[8; 32],
            "a",
            b"csr",
            &p,
        ));
        bad(verify_proof(
            &coord,
            &node.public_key(),
            &n,
            "b",
            b"csr",
            &p,
        ));
        bad(verify_proof(
            &coord,
            &node.public_key(),
            &n,
            "a",
            b"csx",
            &p,
        ));
        // Name/CSR boundary is length-prefixed: moving a byte across it changes the proof.
        let p2 = node_proof(&node, &coord.public_key(), &n, "ab", b"c").expect("proof");
        let p3 = node_proof(&node, &coord.public_key(), &n, "a", b"bc").expect("proof");
        assert_ne!(p2, p3);
    }

    #[test]
    fn small_order_key_refused() {
        let node = PrivateKey::from_bytes([1; 32]);
        let zero = PublicKey([0; 32]);
        assert!(matches!(
            node_proof(&node, &zero, &[0; 32], "a", b""),
            Err(Error::SmallOrderKey)
        ));
    }

    #[test]
    fn token_mac_checks() {
        let k = PublicKey([5; 32]);
        let t = token_mac(&[1; 32], &[2; 32], &k);
        verify_token_mac(&[1; 32], &[2; 32], &k, &t).expect("ok");
        assert!(verify_token_mac(&[3; 32], &[2; 32], &k, &t).is_err());
        assert!(verify_token_mac(&[1; 32], &[2; 32], &PublicKey([6; 32]), &t).is_err());
    }
}
