//! Who may do what, decided from the typed [`Principal`] alone (the policy file will refine the
//! ordinary-bucket part): only [`Principal::Coordinator`] may read the system bucket (GET,
//! HEAD, LIST, copy source) and nobody writes it over S3 (the coordinator writes its state into
//! the store directly); ordinary buckets are open to every authenticated principal;
//! [`Principal::Anonymous`] may do nothing.

use s3s::{S3Error, S3ErrorCode, S3Request, S3Result};

use crate::error::{aws_error, Error};
use crate::{Principal, SYSTEM_BUCKET};

/// The kind of access an operation needs on a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// GET, HEAD, LIST, copy source.
    Read,
    /// PUT, DELETE, multipart, bucket create/delete.
    Write,
}

/// The principal the front layer put into the request (none: AccessDenied).
pub(crate) fn principal<T>(req: &S3Request<T>) -> S3Result<&Principal> {
    req.extensions
        .get::<Principal>()
        .ok_or_else(|| aws_error(Error::MissingAuth, ""))
}

/// Whether `p` may have `access` to `bucket`.
pub(crate) fn allowed(p: &Principal, bucket: &str, access: Access) -> bool {
    if bucket == SYSTEM_BUCKET {
        access == Access::Read && p.may_read_system_bucket()
    } else {
        p.may_use_buckets()
    }
}

/// Refuses with AccessDenied unless the request's principal may have `access` to `bucket`.
pub(crate) fn check<T>(req: &S3Request<T>, bucket: &str, access: Access) -> S3Result<()> {
    let p = principal(req)?;
    if allowed(p, bucket, access) {
        return Ok(());
    }
    let msg = if bucket == SYSTEM_BUCKET && access == Access::Write {
        format!("the system bucket {SYSTEM_BUCKET} is written only by the coordinator itself")
    } else if bucket == SYSTEM_BUCKET {
        format!("the system bucket {SYSTEM_BUCKET} is private to the coordinator")
    } else {
        format!("{p} may not access bucket {bucket}")
    };
    Err(S3Error::with_message(S3ErrorCode::AccessDenied, msg))
}

/// [`check`] for reads.
pub(crate) fn check_read<T>(req: &S3Request<T>, bucket: &str) -> S3Result<()> {
    check(req, bucket, Access::Read)
}

/// [`check`] for writes.
pub(crate) fn check_write<T>(req: &S3Request<T>, bucket: &str) -> S3Result<()> {
    check(req, bucket, Access::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeKey;

    #[test]
    fn system_bucket_is_private() {
        let node = |name: &str| Principal::Node {
            key: NodeKey([1; 32]),
            name: name.into(),
            tags: vec![],
        };
        let token = Principal::Token {
            id: "t".into(),
            tags: vec![],
        };
        assert!(allowed(
            &Principal::Coordinator,
            SYSTEM_BUCKET,
            Access::Read
        ));
        assert!(!allowed(
            &Principal::Coordinator,
            SYSTEM_BUCKET,
            Access::Write
        ));
        for a in [Access::Read, Access::Write] {
            assert!(allowed(&Principal::Coordinator, "data", a));
            for p in [
                node("beta"),
                node("system"),
                node("coordinator"),
                token.clone(),
            ] {
                assert!(!allowed(&p, SYSTEM_BUCKET, a), "{p} {a:?}");
                assert!(allowed(&p, "data", a), "{p} {a:?}");
            }
            assert!(!allowed(&Principal::Anonymous, "data", a));
            assert!(!allowed(&Principal::Anonymous, SYSTEM_BUCKET, a));
        }
    }
}
