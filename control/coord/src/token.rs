//! Join tokens: `tm1_` + base64url (no padding) of `version (1) | SHA-256(CA cert DER) (32) |
//! join secret (32)`. The hash lets a joining node authenticate the coordinator; the secret
//! authorises registration.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::Error;

/// The text prefix of every token.
pub const TOKEN_PREFIX: &str = "tm1_";
/// The binary version byte.
pub const TOKEN_VERSION: u8 = 1;
const TOKEN_LEN: usize = 1 + 32 + 32;

/// A parsed join token. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the mesh CA certificate (DER).
    pub ca_sha256: [u8; 32],
    /// The join secret.
    pub secret: [u8; 32],
}

impl JoinToken {
    /// A token for a CA certificate (DER) and a join secret.
    pub fn new(ca_cert_der: &[u8], secret: [u8; 32]) -> Self {
        Self {
            ca_sha256: Sha256::digest(ca_cert_der).into(),
            secret,
        }
    }

    /// The text form `tm1_...`.
    pub fn format(&self) -> String {
        let mut b = [0u8; TOKEN_LEN];
        b[0] = TOKEN_VERSION;
        b[1..33].copy_from_slice(&self.ca_sha256);
        b[33..].copy_from_slice(&self.secret);
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(b))
    }

    /// Parses the text form (surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let body = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(Error::InvalidToken("it must start with tm1_"))?;
        let b = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| Error::InvalidToken("not base64url"))?;
        if b.len() != TOKEN_LEN {
            return Err(Error::InvalidToken("wrong length"));
        }
        if b[0] != TOKEN_VERSION {
            return Err(Error::InvalidToken("unsupported version"));
        }
        let mut ca_sha256 = [0u8; 32];
        ca_sha256.copy_from_slice(&b[1..33]);
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&b[33..]);
        Ok(Self { ca_sha256, secret })
    }
}

impl core::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_sha256", &crate::wire::hex(&self.ca_sha256))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl core::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.format())
    }
}

impl core::str::FromStr for JoinToken {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejections() {
        let t = JoinToken::new(b"ca", [7u8; 32]);
        let s = t.format();
        assert!(s.starts_with("tm1_"));
        assert_eq!(JoinToken::parse(&format!(" {s}\n")).expect("parses"), t);
        assert!(matches!(
            JoinToken::parse("tm2_AAAA"),
            Err(Error::InvalidToken(_))
        ));
        assert!(matches!(
            JoinToken::parse("tm1_!!"),
            Err(Error::InvalidToken(_))
        ));
        assert!(matches!(
            JoinToken::parse("tm1_AAAA"),
            Err(Error::InvalidToken(_))
        ));
        let mut b = URL_SAFE_NO_PAD.decode(&s[4..]).expect("b64");
        b[0] = 9;
        let bad = format!("tm1_{}", URL_SAFE_NO_PAD.encode(&b));
        assert!(matches!(
            JoinToken::parse(&bad),
            Err(Error::InvalidToken("unsupported version"))
        ));
        assert!(!format!("{t:?}").contains(&crate::wire::hex(&[7u8; 32])));
    }
}
