//! Replicated buckets (issue 20): what the S3 operations ask the replication driver
//! ([`tm_storage::replication::hook::Replicator`], implemented by tm-coord) around their local
//! work. A PUT or DELETE of a replicated bucket is planned by the driver (the stamp, the
//! owners; consistent mode reads a quorum's versions first), committed here as a stamped
//! version with its hints in one transaction, then replicated; the answer carries
//! `x-tm-replicas: k/RF`, or 503 when the mode's quorum is out of reach. A GET or HEAD first
//! lets the driver bring the key up to date from its owners (failover read), then reads
//! locally. Operations not replicated yet are refused with `NotImplemented` in a replicated
//! bucket (never a silent local-only success).

use std::sync::Arc;

use s3s::{S3Error, S3ErrorCode, S3Response};
use tm_storage::replication::hook::{Replicator, Unavailable};

use super::TmS3;

/// The reply header with the number of replicas that acknowledged a write.
pub(crate) const REPLICAS_HEADER: &str = "x-tm-replicas";

impl TmS3 {
    /// The driver, if `bucket` is replicated now.
    pub(super) fn repl(&self, bucket: &str) -> Option<Arc<dyn Replicator>> {
        self.replicator
            .as_ref()
            .filter(|r| r.replicated(bucket))
            .cloned()
    }

    /// Refuses `what` in a replicated bucket (not replicated yet).
    pub(super) fn refuse_replicated(&self, bucket: &str, what: &str) -> Result<(), S3Error> {
        match self.repl(bucket) {
            Some(_) => Err(not_replicated(what)),
            None => Ok(()),
        }
    }

    /// Before a read of `bucket/key`: the driver's failover/quorum read.
    pub(super) async fn replicated_read(&self, bucket: &str, key: &str) -> Result<(), S3Error> {
        match self.repl(bucket) {
            Some(r) => r
                .before_read(bucket.to_owned(), key.to_owned())
                .await
                .map_err(unavailable),
            None => Ok(()),
        }
    }
}

/// 503 for a replicated operation whose quorum is out of reach.
pub(super) fn unavailable(e: Unavailable) -> S3Error {
    S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.0)
}

/// `NotImplemented` for an operation not replicated yet.
pub(super) fn not_replicated(what: &str) -> S3Error {
    S3Error::with_message(
        S3ErrorCode::NotImplemented,
        format!("{what} is not supported in a replicated bucket yet"),
    )
}

/// Adds `x-tm-replicas: k/rf` to a reply.
pub(super) fn set_replicas<T>(r: &mut S3Response<T>, replicas: Option<(usize, usize)>) {
    if let Some((k, rf)) = replicas {
        if let Ok(v) = http::HeaderValue::from_str(&format!("{k}/{rf}")) {
            r.headers.insert(REPLICAS_HEADER, v);
        }
    }
}
