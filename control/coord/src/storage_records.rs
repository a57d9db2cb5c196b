//! Buckets and file shares as replicated control state (issue 17): their existence and
//! settings, not their objects (object replication is issue 20).
//!
//! Records (see `records.rs`): `bucket/<name>` -> [`BucketSpec`], `share/<name>` ->
//! [`ShareSpec`]; a delete is a tombstone. The coordinator that runs an admin command applies
//! it to its own object store first (where refusals such as "not empty" are decided), then
//! writes the record ([`Coordinator::put_bucket`], [`Coordinator::put_share`]); every
//! coordinator's daemon materialises the records into its local store
//! ([`Coordinator::storage_spec`], daemon `storage_sync.rs`). The rule for a bucket deleted
//! elsewhere that still holds objects here: it is kept (objects are never lost) and the
//! conflict is audited once ([`Coordinator::audit_storage_conflict`]); it is deleted once empty.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Coordinator, Error};

/// Record key prefix of buckets.
pub(crate) const BUCKET_PREFIX: &str = "bucket/";
/// Record key prefix of shares.
pub(crate) const SHARE_PREFIX: &str = "share/";

/// The replicated settings of a bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSpec {
    /// Byte quota (`None`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    /// S3 versioning once it was set (`enabled` or `suspended`; `None`: never, unversioned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versioning: Option<String>,
}

/// The replicated settings of a file share (its bucket is a [`BucketSpec`] of the same name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSpec {
    #[serde(default)]
    pub read_only: bool,
    /// uid/gid 0 become the anonymous ids.
    #[serde(default)]
    pub root_squash: bool,
    /// Every uid/gid becomes the anonymous ids.
    #[serde(default)]
    pub all_squash: bool,
    pub anonuid: u32,
    pub anongid: u32,
}

/// One bucket or share record as this coordinator holds it: its settings, or `None` if it
/// was deleted, and when it was written (milliseconds since the Unix epoch, from its stamp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired<T> {
    pub spec: Option<T>,
    pub written_ms: u64,
    /// A key of the write, unique in the mesh (for audit records about it).
    pub stamp: String,
}

/// Every bucket and share record, deleted ones included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageSpec {
    pub buckets: BTreeMap<String, Desired<BucketSpec>>,
    pub shares: BTreeMap<String, Desired<ShareSpec>>,
}

fn desired<T: serde::de::DeserializeOwned>(
    store: &tm_cluster::Store,
    prefix: &str,
) -> BTreeMap<String, Desired<T>> {
    let mut out = BTreeMap::new();
    for r in store.records().filter(|r| r.key.starts_with(prefix)) {
        let spec = match &r.value {
            None => None,
            Some(v) => match serde_json::from_value(v.clone()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(key = %r.key, "skipping a malformed storage record: {e}");
                    continue;
                }
            },
        };
        out.insert(
            r.key[prefix.len()..].to_owned(),
            Desired {
                spec,
                written_ms: r.stamp.wall_ms,
                stamp: format!(
                    "{:016x}-{}-{}",
                    r.stamp.origin.0, r.stamp.wall_ms, r.stamp.logical
                ),
            },
        );
    }
    out
}

impl Coordinator {
    /// Records bucket `name` with `spec` (`None`: deleted) for every coordinator, durably here
    /// before it returns, audited as done by `who`. The caller has applied it to its own store.
    pub fn put_bucket(&self, name: &str, spec: Option<BucketSpec>, who: &str) -> Result<(), Error> {
        let action = match &spec {
            None => "bucket.delete",
            Some(_) if self.lock().state.buckets.contains_key(name) => "bucket.set",
            Some(_) => "bucket.create",
        };
        let detail = spec.as_ref().map_or_else(String::new, |s| {
            format!(
                "quota {} versioning {}",
                s.quota_bytes.map_or("none".into(), |q| q.to_string()),
                s.versioning.as_deref().unwrap_or("off")
            )
        });
        let changed = self.commit(|s| {
            let changed = match spec {
                Some(v) => s.buckets.insert(name.to_owned(), v.clone()) != Some(v),
                None => s.buckets.remove(name).is_some(),
            };
            Ok((changed, false))
        })?;
        if changed {
            self.audit(who, action, name, detail)?;
        }
        Ok(())
    }

    /// Records share `name` with `spec` (`None`: no longer exported) for every coordinator,
    /// like [`Coordinator::put_bucket`].
    pub fn put_share(&self, name: &str, spec: Option<ShareSpec>, who: &str) -> Result<(), Error> {
        let action = match &spec {
            None => "share.delete",
            Some(_) if self.lock().state.shares.contains_key(name) => "share.set",
            Some(_) => "share.create",
        };
        let detail = spec.as_ref().map_or_else(String::new, |s| {
            format!(
                "read_only {} root_squash {} all_squash {} anon {}:{}",
                s.read_only, s.root_squash, s.all_squash, s.anonuid, s.anongid
            )
        });
        let changed = self.commit(|s| {
            let changed = match spec {
                Some(v) => s.shares.insert(name.to_owned(), v.clone()) != Some(v),
                None => s.shares.remove(name).is_some(),
            };
            Ok((changed, false))
        })?;
        if changed {
            self.audit(who, action, name, detail)?;
        }
        Ok(())
    }

    /// A receiver that changes after every merge of other coordinators' records, once
    /// [`Coordinator::storage_spec`] shows them (wake-ups for materialising them).
    pub fn subscribe_merges(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.merged.subscribe()
    }

    /// Every bucket and share record this coordinator holds, deleted ones included (what its
    /// local object store should hold).
    pub fn storage_spec(&self) -> StorageSpec {
        let rep = self.replica();
        StorageSpec {
            buckets: desired(rep.store(), BUCKET_PREFIX),
            shares: desired(rep.store(), SHARE_PREFIX),
        }
    }

    /// Audits, once in the mesh per coordinator and write, that this coordinator could not
    /// apply the record write `stamp` to `name` (a deleted bucket that still holds objects
    /// here): `detail` says what it did instead. Returns whether the entry is new.
    pub fn audit_storage_conflict(
        &self,
        name: &str,
        stamp: &str,
        detail: String,
    ) -> Result<bool, Error> {
        let me = crate::replicate::origin_of(&self.public_key()).0;
        let key = format!(
            "{}conflict/storage/{name}/{me:016x}-{stamp}",
            crate::replicate::AUDIT_PREFIX
        );
        if self.replica().store().get(&key).is_some() {
            return Ok(false);
        }
        let e = self.audit_entry("cluster", "storage.conflict", name, detail);
        let value = serde_json::to_value(&e).expect("audit entries serialize");
        self.write_records(vec![(key, Some(value))])?;
        Ok(true)
    }
}
