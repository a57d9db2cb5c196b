//! The interface between the S3 layer and the replication driver: tm-s3 calls a
//! [`Replicator`] (when it has one) around its writes and reads of a replicated bucket; the
//! driver (tm-coord) implements it over the coordinator link. Kept here, in the storage crate
//! both depend on, so neither control crate depends on the other.

use std::future::Future;
use std::pin::Pin;

use super::local::Stamp;
use super::vv::Version;
use super::Mode;

/// A boxed future (the trait is object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How one write of a key is to be made here, decided before its body is stored.
#[derive(Debug, Clone)]
pub struct WritePlan {
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// The stamp for the local commit (`local::commit_put` / `local::commit_delete`).
    pub stamp: Stamp,
    /// The bucket's mode.
    pub mode: Mode,
    /// The key's owners, best first.
    pub owners: Vec<super::NodeId>,
}

/// Why a replicated operation could not be done: the answer is 503 (retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The replication driver as the S3 layer sees it.
pub trait Replicator: Send + Sync + std::fmt::Debug + 'static {
    /// Whether writes and reads of `bucket` are replicated now (false: the S3 layer does
    /// exactly what it does without replication, e.g. with a single coordinator).
    fn replicated(&self, bucket: &str) -> bool;

    /// Prepares one write of `bucket/key` (consistent mode reads a quorum's versions first).
    fn plan(&self, bucket: String, key: String) -> BoxFuture<'_, Result<WritePlan, Unavailable>>;

    /// Sends `version` (committed locally with `plan`'s stamp; `None` if the local commit
    /// failed) to the other owners and waits as the mode says. Returns `(replicas, rf)` for
    /// `x-tm-replicas`.
    fn replicate(
        &self,
        plan: WritePlan,
        version: Option<Version>,
    ) -> BoxFuture<'_, Result<(usize, usize), Unavailable>>;

    /// Before a read of `bucket/key`: brings this store up to date with the key's owners as the
    /// mode says (fetching versions it lacks), so the local read answers.
    fn before_read(&self, bucket: String, key: String) -> BoxFuture<'_, Result<(), Unavailable>>;
}
