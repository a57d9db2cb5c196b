//! Static keys: X25519 private/public keys in WireGuard's base64 form, OpenSSH ed25519 keys
//! mapped to X25519 (private = clamp(SHA-512(seed)[..32]), public = the Edwards->Montgomery
//! map of the ed25519 public key), and pre-shared keys.
//!
//! Parsers never panic on input; every failure is a [`KeyError`] that says what was wrong.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha512};
use zeroize::{Zeroize, Zeroizing};

use crate::Error as KeyError;

const OPENSSH_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const OPENSSH_END: &str = "-----END OPENSSH PRIVATE KEY-----";
const OPENSSH_MAGIC: &[u8] = b"openssh-key-v1\0";
const SSH_ED25519: &str = "ssh-ed25519";

/// Clamps a scalar as X25519 does (RFC 7748).
fn clamp(mut b: [u8; 32]) -> [u8; 32] {
    b[0] &= 248;
    b[31] &= 127;
    b[31] |= 64;
    b
}

/// An X25519 private key (clamped). Zeroized on drop; `Debug` never prints it.
#[derive(Clone)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh random key (like `wg genkey`).
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        let k = Self::from_bytes(b);
        b.zeroize();
        k
    }

    /// Wraps 32 bytes, clamping them.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(clamp(bytes))
    }

    /// The X25519 private key derived from an ed25519 seed: clamp(SHA-512(seed)[..32]).
    pub fn from_ed25519_seed(seed: &[u8; 32]) -> Self {
        let mut h: [u8; 64] = Sha512::digest(seed).into();
        let mut b = [0u8; 32];
        b.copy_from_slice(&h[..32]);
        h.zeroize();
        let k = Self::from_bytes(b);
        b.zeroize();
        k
    }

    /// The matching public key (like `wg pubkey`).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.to_secret()).to_bytes())
    }

    /// The clamped private scalar bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// `wg genkey` text (44 base64 characters, no newline).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub(crate) fn to_secret(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(self.0)
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl core::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PrivateKey(<redacted>, public {})", self.public_key())
    }
}

/// An X25519 public key. `Display`/`Debug` print WireGuard base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The X25519 key of an ed25519 public key (Edwards->Montgomery map). Rejects encodings
    /// that are not a canonical, torsion-free, non-small-order curve point.
    pub fn from_ed25519(ed: &[u8; 32]) -> Result<Self, KeyError> {
        let point = ed25519_point(ed)?;
        Ok(Self(point.to_montgomery().to_bytes()))
    }
}

impl core::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl core::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl core::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        parse_public_key(s)
    }
}

fn ed25519_point(ed: &[u8; 32]) -> Result<EdwardsPoint, KeyError> {
    let p = CompressedEdwardsY(*ed)
        .decompress()
        .ok_or(KeyError::InvalidPublicKey("not an ed25519 curve point"))?;
    if p.compress().0 != *ed {
        return Err(KeyError::InvalidPublicKey(
            "non-canonical ed25519 point encoding",
        ));
    }
    if p.is_small_order() {
        return Err(KeyError::InvalidPublicKey("small-order ed25519 point"));
    }
    if !p.is_torsion_free() {
        return Err(KeyError::InvalidPublicKey(
            "ed25519 point has a torsion component",
        ));
    }
    Ok(p)
}

fn ed25519_public_from_seed(seed: &[u8; 32]) -> [u8; 32] {
    let mut h: [u8; 64] = Sha512::digest(seed).into();
    let mut a = [0u8; 32];
    a.copy_from_slice(&h[..32]);
    h.zeroize();
    let p = EdwardsPoint::mul_base_clamped(a);
    a.zeroize();
    p.compress().0
}

fn decode_32(text: &str, what: &'static str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let raw = Zeroizing::new(
        STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::InvalidBase64(what))?,
    );
    if raw.len() != 32 {
        return Err(KeyError::WrongKeyLength {
            what,
            expected: 32,
            got: raw.len(),
        });
    }
    let mut b = Zeroizing::new([0u8; 32]);
    b.copy_from_slice(&raw);
    Ok(b)
}

/// A WireGuard base64 private key (44 chars, `wg genkey` format) or an unencrypted OpenSSH
/// ed25519 private key file (`openssh-key-v1`, cipher `none`), whose X25519 private key is
/// clamp(SHA-512(seed)[..32]). Encrypted keys and other key types are rejected with an error
/// that says so.
pub fn parse_private_key(text: &str) -> Result<PrivateKey, KeyError> {
    let t = text.trim();
    if t.starts_with(OPENSSH_BEGIN) {
        let seed = parse_openssh_ed25519(t)?;
        return Ok(PrivateKey::from_ed25519_seed(&seed));
    }
    if let Some(rest) = t.strip_prefix("-----BEGIN ") {
        let kind = rest.split("-----").next().unwrap_or("").trim();
        return Err(KeyError::UnsupportedKeyType(format!(
            "PEM \"{kind}\" (only OpenSSH ed25519 or WireGuard base64 keys are supported)"
        )));
    }
    let b = decode_32(t, "private key")?;
    Ok(PrivateKey::from_bytes(*b))
}

/// A base64 WireGuard public key, or an `ssh-ed25519 AAAA... [comment]` line mapped to X25519.
pub fn parse_public_key(text: &str) -> Result<PublicKey, KeyError> {
    let t = text.trim();
    let mut fields = t.split_whitespace();
    let first = fields.next().unwrap_or("");
    if first == SSH_ED25519 {
        let b64 = fields
            .next()
            .ok_or(KeyError::MalformedSsh("missing base64 after ssh-ed25519"))?;
        let blob = STANDARD
            .decode(b64)
            .map_err(|_| KeyError::InvalidBase64("ssh public key"))?;
        let mut r = Reader(&blob);
        let kind = r.string()?;
        if kind != SSH_ED25519.as_bytes() {
            return Err(KeyError::MalformedSsh(
                "key blob type does not match the line",
            ));
        }
        let pk = r.string()?;
        let pk: [u8; 32] = pk
            .try_into()
            .map_err(|_| KeyError::MalformedSsh("ed25519 public key is not 32 bytes"))?;
        if !r.0.is_empty() {
            return Err(KeyError::MalformedSsh(
                "trailing bytes in ssh public key blob",
            ));
        }
        return PublicKey::from_ed25519(&pk);
    }
    if first.starts_with("ssh-") || first.starts_with("ecdsa-") || first.starts_with("sk-") {
        return Err(KeyError::UnsupportedKeyType(format!(
            "{first} (only ssh-ed25519 keys can be mapped to X25519)"
        )));
    }
    let b = decode_32(t, "public key")?;
    Ok(PublicKey(*b))
}

/// A base64 pre-shared key (32 bytes).
pub fn parse_preshared_key(text: &str) -> Result<[u8; 32], KeyError> {
    Ok(*decode_32(text, "pre-shared key")?)
}

/// Big-endian SSH wire reader over a borrowed buffer.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KeyError> {
        if self.0.len() < n {
            return Err(KeyError::MalformedSsh("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, KeyError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<&'a [u8], KeyError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Returns the ed25519 seed of an unencrypted OpenSSH private key file.
fn parse_openssh_ed25519(text: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let body = text
        .strip_prefix(OPENSSH_BEGIN)
        .and_then(|r| r.split(OPENSSH_END).next())
        .ok_or(KeyError::MalformedSsh("missing PEM markers"))?;
    if !text.contains(OPENSSH_END) {
        return Err(KeyError::MalformedSsh("missing END marker"));
    }
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let raw = Zeroizing::new(
        STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| KeyError::InvalidBase64("OpenSSH private key"))?,
    );
    let mut r = Reader(&raw);
    if r.take(OPENSSH_MAGIC.len())? != OPENSSH_MAGIC {
        return Err(KeyError::MalformedSsh("not openssh-key-v1"));
    }
    let cipher = r.string()?;
    let kdf = r.string()?;
    let _kdf_options = r.string()?;
    if cipher != b"none" || kdf != b"none" {
        return Err(KeyError::EncryptedKey(
            String::from_utf8_lossy(cipher).into_owned(),
        ));
    }
    if r.u32()? != 1 {
        return Err(KeyError::MalformedSsh("expected exactly one key"));
    }
    let pub_blob = r.string()?;
    let private = r.string()?;
    let mut pb = Reader(pub_blob);
    let kind = pb.string()?;
    if kind != SSH_ED25519.as_bytes() {
        return Err(KeyError::UnsupportedKeyType(format!(
            "{} (only ssh-ed25519 keys can be mapped to X25519)",
            String::from_utf8_lossy(kind)
        )));
    }
    let mut p = Reader(private);
    if p.u32()? != p.u32()? {
        return Err(KeyError::MalformedSsh("check integers differ"));
    }
    if p.string()? != SSH_ED25519.as_bytes() {
        return Err(KeyError::MalformedSsh("private section key type mismatch"));
    }
    let pk = p.string()?;
    let sk = p.string()?;
    if pk.len() != 32 || sk.len() != 64 || &sk[32..] != pk || pb.string()? != pk {
        return Err(KeyError::MalformedSsh(
            "inconsistent ed25519 key lengths or copies",
        ));
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(&sk[..32]);
    if ed25519_public_from_seed(&seed)[..] != pk[..] {
        return Err(KeyError::MalformedSsh(
            "ed25519 seed does not match its public key",
        ));
    }
    Ok(seed)
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    let n = u32::try_from(s.len()).expect("SSH fields written here are small");
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(s);
}

/// A fresh ed25519 identity as `ssh-keygen -t ed25519 -N ''` writes it. Returns the private
/// key file text and the `ssh-ed25519 AAAA... comment` public line.
pub fn generate_openssh_ed25519<R: RngCore + CryptoRng>(
    rng: &mut R,
    comment: &str,
) -> (String, String) {
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(seed.as_mut());
    let check = rng.next_u32();
    openssh_ed25519_text(&seed, check, comment)
}

/// Encodes a known seed (deterministic; `check` is the file's random check integer).
pub fn openssh_ed25519_text(seed: &[u8; 32], check: u32, comment: &str) -> (String, String) {
    let pk = ed25519_public_from_seed(seed);
    let mut pub_blob = Vec::new();
    put_string(&mut pub_blob, SSH_ED25519.as_bytes());
    put_string(&mut pub_blob, &pk);

    let mut private = Zeroizing::new(Vec::new());
    private.extend_from_slice(&check.to_be_bytes());
    private.extend_from_slice(&check.to_be_bytes());
    put_string(&mut private, SSH_ED25519.as_bytes());
    put_string(&mut private, &pk);
    let mut sk = Zeroizing::new([0u8; 64]);
    sk[..32].copy_from_slice(seed);
    sk[32..].copy_from_slice(&pk);
    put_string(&mut private, sk.as_ref());
    put_string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }

    let mut raw = Zeroizing::new(Vec::new());
    raw.extend_from_slice(OPENSSH_MAGIC);
    put_string(&mut raw, b"none");
    put_string(&mut raw, b"none");
    put_string(&mut raw, b"");
    raw.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut raw, &pub_blob);
    put_string(&mut raw, &private);

    let b64 = Zeroizing::new(STANDARD.encode(raw.as_slice()));
    let mut file = String::with_capacity(b64.len() + 100);
    file.push_str(OPENSSH_BEGIN);
    file.push('\n');
    for chunk in b64.as_bytes().chunks(70) {
        file.push_str(core::str::from_utf8(chunk).expect("base64 is ASCII"));
        file.push('\n');
    }
    file.push_str(OPENSSH_END);
    file.push('\n');

    let mut line = format!("{SSH_ED25519} {}", STANDARD.encode(&pub_blob));
    if !comment.is_empty() {
        line.push(' ');
        line.push_str(comment);
    }
    (file, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct CountingRng(u8);
    impl RngCore for CountingRng {
        fn next_u32(&mut self) -> u32 {
            self.0 = self.0.wrapping_add(1);
            u32::from(self.0)
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.next_u32())
        }
        fn fill_bytes(&mut self, d: &mut [u8]) {
            for b in d {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
        }
        fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(d);
            Ok(())
        }
    }
    impl CryptoRng for CountingRng {}

    #[test]
    fn generated_openssh_roundtrips() {
        let (file, line) = generate_openssh_ed25519(&mut CountingRng(0), "node@test");
        assert!(line.ends_with(" node@test"));
        let sk = parse_private_key(&file).expect("own file parses");
        let pk = parse_public_key(&line).expect("own line parses");
        assert_eq!(
            sk.public_key(),
            pk,
            "X25519 of seed == Montgomery map of ed25519 pub"
        );
    }

    #[test]
    fn base64_roundtrip_and_debug_hides_secret() {
        let sk = PrivateKey::generate(&mut CountingRng(7));
        let again = parse_private_key(&sk.to_base64()).expect("parses");
        assert_eq!(again.to_bytes(), sk.to_bytes());
        let pk = sk.public_key();
        assert_eq!(parse_public_key(&pk.to_string()), Ok(pk));
        let dbg = format!("{sk:?}");
        assert!(!dbg.contains(&sk.to_base64()));
    }

    #[test]
    fn rejects_small_order_and_noncanonical_ed25519() {
        // The identity point (y = 1) is small-order.
        let mut id = [0u8; 32];
        id[0] = 1;
        assert!(matches!(
            PublicKey::from_ed25519(&id),
            Err(KeyError::InvalidPublicKey(_))
        ));
        // y = p + 1 is a non-canonical encoding of the identity.
        let mut nc = [0xffu8; 32];
        nc[0] = 0xee;
        nc[31] = 0x7f;
        assert!(matches!(
            PublicKey::from_ed25519(&nc),
            Err(KeyError::InvalidPublicKey(_))
        ));
    }
}
