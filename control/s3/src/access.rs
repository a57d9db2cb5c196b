//! Who may do what: every S3 operation asks [`check`] with its bucket, key (or list prefix) and
//! operation class before touching the store.
//!
//! On a mesh (an [`crate::Authority`] that has a policy) the decision is
//! [`tm_policy::decide()`] on the compiled policy the front layer put into the request next to
//! the authenticated [`Principal`]: the same function, artifact and identity as NFS, the admin
//! API and `policy explain`. Without one (a standalone node) the built-in rule: only the store
//! owner ([`Principal::Coordinator`]) or local root reads the system bucket, nobody writes it
//! over S3, ordinary buckets are open to every authenticated principal, and
//! [`Principal::Anonymous`] may do nothing.

use std::sync::Arc;

use s3s::{S3Error, S3ErrorCode, S3Request, S3Result};
use tm_policy::{Artifact, Identity, Request, S3Op};

use crate::error::{aws_error, Error};
use crate::{Principal, SYSTEM_BUCKET};

/// The compiled policy in force when the request was authenticated (request extensions).
#[derive(Clone, Debug)]
pub(crate) struct PolicySnapshot(pub Option<Arc<Artifact>>);

/// The principal the front layer put into the request (none: AccessDenied).
pub(crate) fn principal<T>(req: &S3Request<T>) -> S3Result<&Principal> {
    req.extensions
        .get::<Principal>()
        .ok_or_else(|| aws_error(Error::MissingAuth, ""))
}

/// The policy identity of a principal (typed, never by name).
pub fn identity(p: &Principal) -> Identity {
    match p {
        Principal::LocalRoot => Identity::LocalRoot,
        Principal::Coordinator => Identity::Coordinator,
        Principal::Node { key, .. } => Identity::Node(tm_policy::NodeKey(key.to_string())),
        Principal::Token { id, .. } => Identity::Token(tm_policy::TokenId(id.clone())),
        Principal::Anonymous => Identity::Anonymous,
    }
}

/// The decision for `p` doing `op` on `bucket`/`key`: `Err(reason)` refuses. `policy` is the
/// mesh's compiled policy (`None`: the built-in rule of a standalone node).
pub fn decide(
    policy: Option<&Artifact>,
    p: &Principal,
    bucket: &str,
    key: &str,
    op: S3Op,
) -> Result<(), String> {
    let write = !matches!(op, S3Op::Read | S3Op::List);
    if bucket == SYSTEM_BUCKET && write {
        // Whatever the policy: the coordinator writes its state into the store directly, and
        // an S3 write there could only corrupt it.
        return Err(format!(
            "the system bucket {SYSTEM_BUCKET} is written only by the coordinator itself"
        ));
    }
    if let Some(art) = policy {
        let d = tm_policy::decide(art, &identity(p), &Request::S3 { bucket, key, op });
        return if d.allow { Ok(()) } else { Err(d.message()) };
    }
    if bucket == SYSTEM_BUCKET {
        if !p.may_read_system_bucket() {
            return Err(format!(
                "the system bucket {SYSTEM_BUCKET} is private to the coordinator"
            ));
        }
        return Ok(());
    }
    if p.may_use_buckets() {
        Ok(())
    } else {
        Err(format!("{p} may not access bucket {bucket}"))
    }
}

fn snapshot<T>(req: &S3Request<T>) -> Option<&Artifact> {
    req.extensions
        .get::<PolicySnapshot>()
        .and_then(|s| s.0.as_deref())
}

/// Refuses with AccessDenied unless the request's principal may do `op` on `bucket`/`key`.
pub(crate) fn check<T>(req: &S3Request<T>, bucket: &str, key: &str, op: S3Op) -> S3Result<()> {
    let p = principal(req)?;
    decide(snapshot(req), p, bucket, key, op)
        .map_err(|msg| S3Error::with_message(S3ErrorCode::AccessDenied, msg))
}

/// Whether ListBuckets shows `bucket` to the request's principal (it may list it).
pub(crate) fn visible<T>(req: &S3Request<T>, p: &Principal, bucket: &str) -> bool {
    decide(snapshot(req), p, bucket, "", S3Op::List).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeKey;

    #[test]
    fn system_bucket_is_private_without_a_policy() {
        let node = |name: &str| Principal::Node {
            key: NodeKey([1; 32]),
            name: name.into(),
            tags: vec![],
        };
        let token = Principal::Token {
            id: "t".into(),
            tags: vec![],
        };
        let ok = |p: &Principal, b: &str, op| decide(None, p, b, "k", op).is_ok();
        assert!(ok(&Principal::Coordinator, SYSTEM_BUCKET, S3Op::Read));
        assert!(ok(&Principal::Coordinator, SYSTEM_BUCKET, S3Op::List));
        assert!(!ok(&Principal::Coordinator, SYSTEM_BUCKET, S3Op::Write));
        for op in [S3Op::Read, S3Op::List, S3Op::Write, S3Op::Admin] {
            assert!(ok(&Principal::Coordinator, "data", op));
            for p in [
                node("beta"),
                node("system"),
                node("coordinator"),
                token.clone(),
            ] {
                assert!(!ok(&p, SYSTEM_BUCKET, op), "{p} {op:?}");
                assert!(ok(&p, "data", op), "{p} {op:?}");
            }
            assert!(!ok(&Principal::Anonymous, "data", op));
            assert!(!ok(&Principal::Anonymous, SYSTEM_BUCKET, op));
        }
    }

    #[test]
    fn node_identity_is_the_key_text_the_coordinator_uses() {
        let k = NodeKey([7; 32]);
        let p = Principal::Node {
            key: k,
            name: "system".into(),
            tags: vec![],
        };
        assert_eq!(
            identity(&p),
            Identity::Node(tm_policy::NodeKey(k.to_string()))
        );
        assert_eq!(identity(&Principal::Coordinator), Identity::Coordinator);
    }
}
