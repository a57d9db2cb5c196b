//! Join tokens: `tm1_` + base64url (no padding) of `version (1) | SHA-256(CA cert DER) (32) |
//! join secret (32)`. The hash lets a joining node authenticate the coordinator; the secret
//! authorises registration (and, as a Bearer token, S3 access as that token).
//!
//! The coordinator state keeps every token as a [`TokenRecord`]: its id, the SHA-256 of its
//! secret (never the secret), tags, expiry, single-use or reusable, who created it and whether
//! it was revoked. One token is the default (the one `tmctl token` prints and the seed's S3
//! login uses); its secret also lives in `coordinator/join_secret` (mode 0600), outside the state.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// Most tags a node or token may carry.
pub const MAX_TAGS: usize = 32;

/// A token as the coordinator stores it (no secret: only its SHA-256).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public identifier (`tk` + 12 hex digits), what `token revoke` takes.
    pub id: String,
    /// Lower-case hex SHA-256 of the 32-byte secret.
    pub secret_sha256: String,
    /// Tags given to every node that joins with it (`tag:...`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Creation time (Unix seconds).
    pub created_unix: u64,
    /// Expiry (Unix seconds); `None`: never.
    #[serde(default)]
    pub expires_unix: Option<u64>,
    /// Usable for any number of joins; otherwise one node may join with it.
    pub reusable: bool,
    /// For single-use tokens: the node that joined with it.
    #[serde(default)]
    pub used_by: Option<String>,
    /// Who created it (`local root`, `upgrade`, ...).
    pub created_by: String,
    /// When it was revoked (Unix seconds).
    #[serde(default)]
    pub revoked_unix: Option<u64>,
    /// The mesh's default token (exactly one valid default exists).
    #[serde(default)]
    pub default: bool,
    /// Admits coordinators (and only coordinators): `token create --coordinator`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub coordinator: bool,
}

/// Whether a token may be used now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenStatus {
    /// Usable.
    Valid,
    /// Revoked by an admin.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Single-use and already used by this node.
    Used(String),
}

impl TokenRecord {
    /// The token's status at `now_unix` for a use by `node` (a single-use token stays usable
    /// by the node that used it, so re-registering the same node is idempotent).
    pub fn status(&self, now_unix: u64, node: Option<&str>) -> TokenStatus {
        if self.revoked_unix.is_some() {
            return TokenStatus::Revoked;
        }
        if self.expires_unix.is_some_and(|e| now_unix >= e) {
            return TokenStatus::Expired;
        }
        match &self.used_by {
            Some(by) if !self.reusable && node != Some(by.as_str()) => {
                TokenStatus::Used(by.clone())
            }
            _ => TokenStatus::Valid,
        }
    }

    /// The refusal for a token that is not [`TokenStatus::Valid`].
    pub fn check(&self, now_unix: u64, node: Option<&str>) -> Result<(), Error> {
        match self.status(now_unix, node) {
            TokenStatus::Valid => Ok(()),
            TokenStatus::Revoked => Err(Error::TokenRefused(format!(
                "token {} has been revoked",
                self.id
            ))),
            TokenStatus::Expired => Err(Error::TokenRefused(format!(
                "token {} has expired",
                self.id
            ))),
            TokenStatus::Used(by) => Err(Error::TokenRefused(format!(
                "token {} was single-use and node {by} already joined with it (create a new one, \
                 or one with --reusable)",
                self.id
            ))),
        }
    }
}

/// Lower-case hex SHA-256 of a token secret.
pub fn secret_sha256(secret: &[u8; 32]) -> String {
    crate::wire::hex(&Sha256::digest(secret))
}

/// A fresh token id.
pub fn new_token_id<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> String {
    let mut b = [0u8; 6];
    rng.fill_bytes(&mut b);
    format!("tk{}", crate::wire::hex(&b))
}

/// The record whose secret hash matches `secret` (every record is compared, in constant time
/// per record).
pub fn find_by_secret<'a>(
    tokens: impl IntoIterator<Item = &'a TokenRecord>,
    secret: &[u8; 32],
) -> Option<&'a TokenRecord> {
    let h = secret_sha256(secret);
    let mut found = None;
    for t in tokens {
        if ct_eq(t.secret_sha256.as_bytes(), h.as_bytes()) && found.is_none() {
            found = Some(t);
        }
    }
    found
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a tag: `tag:` followed by 1-63 of a-z, 0-9 and inner '-'.
pub fn validate_tag(tag: &str) -> Result<(), Error> {
    let bad = |why| Err(Error::BadTag(tag.to_owned(), why));
    let Some(name) = tag.strip_prefix("tag:") else {
        return bad("tags start with 'tag:' (e.g. tag:ci)");
    };
    if name.is_empty() || name.len() > 63 {
        return bad("the name after 'tag:' must be 1 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return bad("only a-z, 0-9 and inner '-' are allowed after 'tag:'");
    }
    Ok(())
}

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

    fn rec() -> TokenRecord {
        TokenRecord {
            id: "tk1".into(),
            secret_sha256: secret_sha256(&[1; 32]),
            tags: vec![],
            created_unix: 100,
            expires_unix: Some(200),
            reusable: false,
            used_by: None,
            created_by: "local root".into(),
            revoked_unix: None,
            default: false,
            coordinator: false,
        }
    }

    #[test]
    fn token_status_expiry_single_use_revocation() {
        let mut t = rec();
        assert_eq!(t.status(150, Some("a")), TokenStatus::Valid);
        assert_eq!(t.status(200, Some("a")), TokenStatus::Expired);
        let e = t.check(250, None).unwrap_err().to_string();
        assert!(e.contains("tk1 has expired"), "{e}");
        t.used_by = Some("a".into());
        assert_eq!(
            t.status(150, Some("a")),
            TokenStatus::Valid,
            "same node again"
        );
        assert_eq!(t.status(150, Some("b")), TokenStatus::Used("a".into()));
        assert!(t
            .check(150, Some("b"))
            .unwrap_err()
            .to_string()
            .contains("single-use"));
        t.reusable = true;
        assert_eq!(t.status(150, Some("b")), TokenStatus::Valid);
        t.revoked_unix = Some(160);
        assert_eq!(t.status(150, Some("b")), TokenStatus::Revoked);
        assert!(t
            .check(150, None)
            .unwrap_err()
            .to_string()
            .contains("revoked"));
    }

    #[test]
    fn lookup_by_secret_and_tags() {
        let a = rec();
        let mut b = rec();
        b.id = "tk2".into();
        b.secret_sha256 = secret_sha256(&[2; 32]);
        let all = [a, b];
        assert_eq!(
            find_by_secret(&all, &[2; 32]).map(|t| t.id.as_str()),
            Some("tk2")
        );
        assert!(find_by_secret(&all, &[3; 32]).is_none());
        assert!(!format!("{all:?}").contains(&crate::wire::hex(&[2; 32])));
        validate_tag("tag:ci").expect("ok");
        validate_tag("tag:untrusted-2").expect("ok");
        for bad in ["ci", "tag:", "tag:CI", "tag:-a", "tag:a b", "group:x"] {
            assert!(matches!(validate_tag(bad), Err(Error::BadTag(..))), "{bad}");
        }
        assert_ne!(
            new_token_id(&mut rand_core::OsRng),
            new_token_id(&mut rand_core::OsRng)
        );
    }

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
