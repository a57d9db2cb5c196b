//! Who a request is: a typed [`Principal`], never a name compared with a string, and the
//! [`Authority`] that knows the mesh's live identities (tokens, nodes, the seed login).
//!
//! [`authenticate`] is sans-IO: given the parsed claim, the credential-table entry of its
//! access key (looked up by the caller) and the TCP source address, it decides the principal.
//!
//! Credential-table entries name their principal in a reserved text form
//! ([`Principal::credential_string`]); anything else (a legacy plain name such as `system`)
//! decodes to [`Principal::Anonymous`], which has no powers.

use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::auth::{self, BodyMode, Claim, ReqView, Verified};
use crate::error::Error;

/// A node's X25519 static public key (WireGuard base64 when printed).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey(pub [u8; 32]);

impl NodeKey {
    /// Parses standard base64 of exactly 32 bytes.
    pub fn parse(s: &str) -> Option<Self> {
        let v = STANDARD.decode(s.trim()).ok()?;
        v.try_into().ok().map(NodeKey)
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({self})")
    }
}

/// The authenticated identity of a request, stored in the request extensions by the front
/// layer. It maps one to one onto the policy's identities.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// Root on the node, through its control socket (never arrives over S3).
    LocalRoot,
    /// The node process that owns this store (on a mesh: the coordinator itself), through its
    /// own random S3 credential. The only principal that may read [`crate::SYSTEM_BUCKET`].
    Coordinator,
    /// A mesh node, by its static key: through its per-node S3 credential, or the seed login
    /// from its own mesh address.
    Node {
        /// Static public key (the identity).
        key: NodeKey,
        /// Its current name (informational: never compared to grant anything).
        name: String,
        /// Its tags (`tag:...`), as the coordinator has them.
        tags: Vec<String>,
    },
    /// A mesh token (Bearer, or the password of HTTP Basic).
    Token {
        /// The token's id (never its secret).
        id: String,
        /// The token's tags.
        tags: Vec<String>,
    },
    /// Nobody we know. Has no powers at all.
    Anonymous,
}

const CRED_PREFIX: &str = "tm:";

impl Principal {
    /// The text stored as the principal of a credential-table entry. Only
    /// [`Principal::Coordinator`] and [`Principal::Node`] own credentials; the others encode to
    /// a form that decodes to [`Principal::Anonymous`].
    #[must_use]
    pub fn credential_string(&self) -> String {
        match self {
            Principal::Coordinator => format!("{CRED_PREFIX}coordinator"),
            Principal::Node { key, name, .. } => format!("{CRED_PREFIX}node:{key}:{name}"),
            _ => format!("{CRED_PREFIX}none"),
        }
    }

    /// Decodes [`Principal::credential_string`]; anything else is [`Principal::Anonymous`].
    #[must_use]
    pub fn from_credential(s: &str) -> Principal {
        let Some(rest) = s.strip_prefix(CRED_PREFIX) else {
            return Principal::Anonymous;
        };
        if rest == "coordinator" {
            return Principal::Coordinator;
        }
        if let Some(node) = rest.strip_prefix("node:") {
            if let Some((key, name)) = node.split_once(':') {
                if let Some(key) = NodeKey::parse(key) {
                    return Principal::Node {
                        key,
                        name: name.to_owned(),
                        tags: Vec::new(),
                    };
                }
            }
        }
        Principal::Anonymous
    }

    /// Whether this principal may read and list the system bucket (nobody writes it over S3:
    /// the coordinator writes its state into the store directly).
    #[must_use]
    pub fn may_read_system_bucket(&self) -> bool {
        matches!(self, Principal::Coordinator | Principal::LocalRoot)
    }

    /// Whether this principal may use ordinary buckets (without a policy: every member).
    #[must_use]
    pub fn may_use_buckets(&self) -> bool {
        !matches!(self, Principal::Anonymous)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::LocalRoot => f.write_str("local root"),
            Principal::Coordinator => f.write_str("coordinator"),
            Principal::Node { name, key, .. } => write!(f, "node {name} ({key})"),
            Principal::Token { id, .. } => write!(f, "token {id}"),
            Principal::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Not a token of this mesh.
    Unknown,
    /// The token (by id) was revoked.
    Revoked(String),
    /// The token (by id) has expired.
    Expired(String),
}

/// What the seed login of one node needs: access key = the node's name, secret = the mesh's
/// default token, accepted only from the node's mesh address.
#[derive(Clone, Debug)]
pub struct SeedLogin {
    /// The node's principal ([`Principal::Node`]).
    pub principal: Principal,
    /// The node's mesh address (the only source the login is accepted from).
    pub mesh_ip: IpAddr,
    /// The default token's text (the SigV4 secret); `None`: there is no default token.
    pub secret: Option<String>,
}

/// The mesh's live identities, asked on every request (answers must not block on I/O).
pub trait Authority: Send + Sync + fmt::Debug {
    /// A token's principal ([`Principal::Token`]), or why it is refused.
    fn token(&self, token: &str) -> Result<Principal, TokenRefusal>;
    /// The seed login of the node named `name`, if it is a member.
    fn seed_login(&self, name: &str) -> Option<SeedLogin>;
    /// The current principal of the node with `key` (fresh name and tags); `None` once it is
    /// no longer a member (its credentials stop working at once).
    fn node(&self, key: &NodeKey) -> Option<Principal>;
    /// The mesh's compiled policy, which every operation is decided by (`None`: the built-in
    /// rule of a standalone node, see `access.rs`).
    fn policy(&self) -> Option<std::sync::Arc<tm_policy::Artifact>> {
        None
    }
    /// `who` created bucket `bucket` (`Some`: its settings now), changed its versioning, or
    /// deleted it (`None`) through S3, in this node's store: a mesh with several coordinators
    /// records it for the others. Blocking (called off the async workers) and done before the
    /// request is answered; `Err`: why it could not be recorded (the request fails with it).
    fn bucket_changed(
        &self,
        bucket: &str,
        now: Option<&BucketSettings>,
        who: &Principal,
    ) -> Result<(), String> {
        let _ = (bucket, now, who);
        Ok(())
    }
}

/// The settings of a bucket S3 changed ([`Authority::bucket_changed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSettings {
    pub quota: Option<u64>,
    pub versioning: tm_storage::Versioning,
}

fn refused(r: TokenRefusal) -> Error {
    match r {
        TokenRefusal::Unknown => {
            Error::CredentialRefused("the token is not valid in this mesh".into())
        }
        TokenRefusal::Revoked(id) => Error::TokenRefused(format!("token {id} has been revoked")),
        TokenRefusal::Expired(id) => Error::TokenRefused(format!("token {id} has expired")),
    }
}

/// Decides the principal of a request. `cred` is the credential-table entry of the claim's
/// access key (`(secret, principal text)`), `remote` the TCP source address.
pub(crate) fn authenticate(
    claim: &Claim,
    cred: Option<(String, String)>,
    authority: Option<&dyn Authority>,
    remote: IpAddr,
    req: &ReqView<'_>,
    now: SystemTime,
) -> Result<Verified, Error> {
    if let Claim::Bearer { token } = claim {
        let a = authority.ok_or_else(|| {
            Error::CredentialRefused(
                "Bearer tokens are accepted only by the S3 of a mesh coordinator".into(),
            )
        })?;
        let principal = a.token(token).map_err(refused)?;
        return Ok(Verified {
            principal,
            body: BodyMode::Plain,
        });
    }
    if let Some((secret, p)) = cred {
        let mut principal = Principal::from_credential(&p);
        if let (Principal::Node { key, .. }, Some(a)) = (&principal, authority) {
            // A removed node's keys stop working at once; tags are the current ones.
            principal = a.node(key).ok_or(Error::InvalidAccessKeyId)?;
        }
        return auth::verify(claim, Some((secret, principal)), req, now);
    }
    let Some(a) = authority else {
        return auth::verify(claim, None, req, now);
    };
    let access_key = claim.access_key().unwrap_or_default();
    if let Some(seed) = a.seed_login(access_key) {
        let Some(secret) = seed.secret else {
            return Err(Error::InvalidAccessKeyId);
        };
        if seed.mesh_ip.to_canonical() != remote.to_canonical() {
            return Err(Error::SeedLoginSource(access_key.to_owned()));
        }
        return auth::verify(claim, Some((secret, seed.principal)), req, now);
    }
    if let Claim::Basic { secret, .. } = claim {
        return match a.token(secret) {
            Ok(principal) => Ok(Verified {
                principal,
                body: BodyMode::Plain,
            }),
            Err(TokenRefusal::Unknown) => Err(Error::InvalidAccessKeyId),
            Err(r) => Err(refused(r)),
        };
    }
    Err(Error::InvalidAccessKeyId)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method};
    use std::collections::HashMap;

    #[test]
    fn credential_strings_are_typed() {
        let k = NodeKey([7; 32]);
        let n = Principal::Node {
            key: k,
            name: "beta".into(),
            tags: vec![],
        };
        assert_eq!(Principal::from_credential(&n.credential_string()), n);
        assert_eq!(
            Principal::from_credential(&Principal::Coordinator.credential_string()),
            Principal::Coordinator
        );
        // Names never alias a built-in principal: legacy plain names have no powers.
        for legacy in [
            "system",
            "coordinator",
            "admin",
            "root",
            "seed",
            "tm:system",
            "",
        ] {
            let p = Principal::from_credential(legacy);
            assert_eq!(p, Principal::Anonymous, "{legacy}");
            assert!(!p.may_read_system_bucket());
            assert!(!p.may_use_buckets());
        }
        // A node named `coordinator` or `system` is a plain node.
        for name in ["system", "coordinator"] {
            let n = Principal::Node {
                key: k,
                name: name.into(),
                tags: vec![],
            };
            let back = Principal::from_credential(&n.credential_string());
            assert!(matches!(back, Principal::Node { .. }));
            assert!(!back.may_read_system_bucket());
        }
        assert!(Principal::Coordinator.may_read_system_bucket());
    }

    #[derive(Debug, Default)]
    struct Fake {
        tokens: HashMap<String, Result<Principal, TokenRefusal>>,
        nodes: HashMap<String, (NodeKey, IpAddr)>,
        default: Option<String>,
    }

    impl Authority for Fake {
        fn token(&self, token: &str) -> Result<Principal, TokenRefusal> {
            self.tokens
                .get(token)
                .cloned()
                .unwrap_or(Err(TokenRefusal::Unknown))
        }
        fn seed_login(&self, name: &str) -> Option<SeedLogin> {
            let (key, ip) = self.nodes.get(name)?;
            Some(SeedLogin {
                principal: Principal::Node {
                    key: *key,
                    name: name.into(),
                    tags: vec![],
                },
                mesh_ip: *ip,
                secret: self.default.clone(),
            })
        }
        fn node(&self, key: &NodeKey) -> Option<Principal> {
            self.nodes
                .iter()
                .find(|(_, (k, _))| k == key)
                .map(|(n, (k, _))| Principal::Node {
                    key: *k,
                    name: n.clone(),
                    tags: vec!["tag:x".into()],
                })
        }
    }

    fn fake() -> Fake {
        let mut f = Fake::default();
        let tok = Principal::Token {
            id: "tk1".into(),
            tags: vec!["tag:ci".into()],
        };
        f.tokens.insert("tm1_good".into(), Ok(tok));
        f.tokens.insert(
            "tm1_revoked".into(),
            Err(TokenRefusal::Revoked("tk2".into())),
        );
        f.nodes.insert(
            "beta".into(),
            (NodeKey([2; 32]), "100.64.0.2".parse().expect("ip")),
        );
        f.default = Some("tm1_good".into());
        f
    }

    fn run(
        claim: &Claim,
        cred: Option<(String, String)>,
        a: &Fake,
        from: &str,
    ) -> Result<Principal, Error> {
        let h = HeaderMap::new();
        let m = Method::GET;
        let req = ReqView {
            method: &m,
            path: "/",
            query: None,
            headers: &h,
        };
        authenticate(
            claim,
            cred,
            Some(a),
            from.parse().expect("ip"),
            &req,
            SystemTime::now(),
        )
        .map(|v| v.principal)
    }

    #[test]
    fn bearer_and_basic_tokens() {
        let a = fake();
        let bearer = |t: &str| Claim::Bearer { token: t.into() };
        let p = run(&bearer("tm1_good"), None, &a, "10.0.0.9").expect("token");
        assert!(matches!(p, Principal::Token { ref id, .. } if id == "tk1"));
        let e = run(&bearer("tm1_revoked"), None, &a, "10.0.0.9").unwrap_err();
        assert!(
            matches!(e, Error::TokenRefused(ref m) if m.contains("revoked")),
            "{e:?}"
        );
        let e = run(&bearer("tm1_nope"), None, &a, "10.0.0.9").unwrap_err();
        assert!(matches!(e, Error::CredentialRefused(ref m) if m.contains("not valid")));
        let basic = |ak: &str, s: &str| Claim::Basic {
            access_key: ak.into(),
            secret: s.into(),
        };
        let p = run(&basic("anything", "tm1_good"), None, &a, "10.0.0.9").expect("basic");
        assert!(matches!(p, Principal::Token { .. }));
        let e = run(&basic("anything", "tm1_revoked"), None, &a, "10.0.0.9").unwrap_err();
        assert!(matches!(e, Error::TokenRefused(_)));
        let e = run(&basic("anything", "wrong"), None, &a, "10.0.0.9").unwrap_err();
        assert!(matches!(e, Error::InvalidAccessKeyId));
    }

    #[test]
    fn seed_login_only_from_the_nodes_mesh_address() {
        let a = fake();
        let basic = Claim::Basic {
            access_key: "beta".into(),
            secret: "tm1_good".into(),
        };
        let p = run(&basic, None, &a, "100.64.0.2").expect("from beta");
        assert!(matches!(p, Principal::Node { ref name, .. } if name == "beta"));
        let e = run(&basic, None, &a, "100.64.0.3").unwrap_err();
        assert!(matches!(e, Error::SeedLoginSource(_)), "{e:?}");
        let e = run(&basic, None, &a, "127.0.0.1").unwrap_err();
        assert!(matches!(e, Error::SeedLoginSource(_)), "{e:?}");
        // wrong secret from the right address
        let bad = Claim::Basic {
            access_key: "beta".into(),
            secret: "tm1_revoked".into(),
        };
        let e = run(&bad, None, &a, "100.64.0.2").unwrap_err();
        assert!(matches!(e, Error::CredentialRefused(_)), "{e:?}");
        // without a default token there is no seed login
        let mut none = fake();
        none.default = None;
        let e = run(&basic, None, &none, "100.64.0.2").unwrap_err();
        assert!(matches!(e, Error::InvalidAccessKeyId), "{e:?}");
    }

    #[test]
    fn node_credentials_follow_membership() {
        let a = fake();
        let basic = Claim::Basic {
            access_key: "TMKEY".into(),
            secret: "s".into(),
        };
        let cred = |k: NodeKey| {
            Some((
                "s".to_owned(),
                Principal::Node {
                    key: k,
                    name: "beta".into(),
                    tags: vec![],
                }
                .credential_string(),
            ))
        };
        let p = run(&basic, cred(NodeKey([2; 32])), &a, "10.0.0.1").expect("member");
        assert!(matches!(p, Principal::Node { ref tags, .. } if tags == &["tag:x"]));
        // a removed node's key stops working
        let e = run(&basic, cred(NodeKey([9; 32])), &a, "10.0.0.1").unwrap_err();
        assert!(matches!(e, Error::InvalidAccessKeyId));
        // a legacy credential named `system` is anonymous
        let p = run(&basic, Some(("s".into(), "system".into())), &a, "10.0.0.1").expect("verifies");
        assert_eq!(p, Principal::Anonymous);
    }
}
