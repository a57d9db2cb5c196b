//! Buckets and file shares as replicated control state (issue 17), on a coordinator's object
//! store: the bucket and share commands run here are recorded for every coordinator
//! ([`Storage::handle_replicated`]), and the records are materialised into this store
//! ([`Storage::reconcile`], at start and after every merge of other coordinators' records:
//! [`spawn`]).
//!
//! [`plan`] is the sans-IO core: from the records (tm-coord `StorageSpec`, deletes included)
//! and what the store holds, what to change. Rules:
//!
//! - a live bucket record: the bucket exists here with the record's quota;
//! - a live share record: the share exists here with its settings (its bucket is created if
//!   missing), unless the bucket's record is deleted (a deleted bucket is not brought back);
//! - a deleted share record: the share is no longer exported here (its bucket stays);
//! - a deleted bucket record: the bucket is deleted here if it is empty. **A bucket that still
//!   holds objects (or versions) here is kept** (objects are never lost) and the conflict is
//!   logged and audited once (`storage.conflict`); it is deleted once emptied (at the next
//!   materialisation: the next merge, or within [`RECONCILE_EVERY`]). The coordinator that ran `bucket delete` refused it unless empty there.
//! - a deleted record touches only a bucket or share created here before the delete was
//!   written (by its stamp's clock, give or take [`CLOCK_SLACK_MS`], the clock skew the
//!   coordinators accept), so one re-created later survives an old delete;
//! - versioning is applied only towards a versioned state (never back to unversioned).
//!
//! Buckets made, versioned or deleted through S3 are recorded too (tm-s3 tells the daemon's
//! `MeshAuthority`, `identity.rs`). Buckets and shares without a record (created before the
//! coordinators were clustered) are left alone.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use tm_api::{Command, Response};
use tm_coord::{BucketSpec, Coordinator, ShareSpec, StorageSpec};

use crate::storage::Storage;

/// How much later than a delete's stamp a local bucket or share may have been created and
/// still be taken by it: coordinators' clocks differ by up to this much (a bucket created
/// here from the record just before the delete must not survive it).
pub const CLOCK_SLACK_MS: u64 = tm_coord::tm_cluster::MAX_SKEW_MS;

/// A bucket as the local store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalBucket {
    pub created_ms: u64,
    pub quota: Option<u64>,
    pub versioning: tm_storage::Versioning,
    pub objects: u64,
}

/// The record of a bucket with `quota` and `versioning`.
pub fn bucket_spec(quota: Option<u64>, versioning: tm_storage::Versioning) -> BucketSpec {
    use tm_storage::Versioning as V;
    BucketSpec {
        quota_bytes: quota,
        versioning: match versioning {
            V::Unversioned => None,
            V::Enabled => Some("enabled".into()),
            V::Suspended => Some("suspended".into()),
        },
    }
}

/// The versioning a bucket record asks for (`None`: none; a bucket once versioned stays so).
fn versioning_of(s: &BucketSpec) -> Option<tm_storage::Versioning> {
    match s.versioning.as_deref() {
        Some("enabled") => Some(tm_storage::Versioning::Enabled),
        Some("suspended") => Some(tm_storage::Versioning::Suspended),
        _ => None,
    }
}

/// A share as the local store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalShare {
    pub created_ms: u64,
    pub spec: ShareSpec,
}

/// One change to the local store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateBucket {
        name: String,
        quota: Option<u64>,
        versioning: Option<tm_storage::Versioning>,
    },
    SetQuota {
        name: String,
        quota: Option<u64>,
    },
    SetVersioning {
        name: String,
        versioning: tm_storage::Versioning,
    },
    DeleteBucket {
        name: String,
        stamp: String,
    },
    /// A deleted bucket that holds objects here: kept, audited.
    KeepBucket {
        name: String,
        stamp: String,
        objects: u64,
    },
    CreateShare {
        name: String,
        spec: ShareSpec,
    },
    SetShare {
        name: String,
        spec: ShareSpec,
    },
    DeleteShare {
        name: String,
    },
}

/// Whether something created at `created_ms` here predates the write `d` (see
/// [`CLOCK_SLACK_MS`]).
fn before<T>(created_ms: u64, d: &tm_coord::Desired<T>) -> bool {
    created_ms <= d.written_ms.saturating_add(CLOCK_SLACK_MS)
}

/// What to change so that `buckets` and `shares` (the local store) follow `want`.
pub fn plan(
    want: &StorageSpec,
    buckets: &BTreeMap<String, LocalBucket>,
    shares: &BTreeMap<String, LocalShare>,
) -> Vec<Action> {
    let mut out = Vec::new();
    for (name, d) in &want.buckets {
        let local = buckets.get(name);
        match (&d.spec, local) {
            (Some(s), None) => out.push(Action::CreateBucket {
                name: name.clone(),
                quota: s.quota_bytes,
                versioning: versioning_of(s),
            }),
            (Some(s), Some(l)) => {
                if l.quota != s.quota_bytes {
                    out.push(Action::SetQuota {
                        name: name.clone(),
                        quota: s.quota_bytes,
                    });
                }
                match versioning_of(s) {
                    Some(v) if v != l.versioning => out.push(Action::SetVersioning {
                        name: name.clone(),
                        versioning: v,
                    }),
                    _ => {}
                }
            }
            (None, Some(l)) if before(l.created_ms, d) && name != tm_storage::DEFAULT_SHARE => {
                if l.objects == 0 {
                    out.push(Action::DeleteBucket {
                        name: name.clone(),
                        stamp: d.stamp.clone(),
                    });
                } else {
                    out.push(Action::KeepBucket {
                        name: name.clone(),
                        stamp: d.stamp.clone(),
                        objects: l.objects,
                    });
                }
            }
            _ => {}
        }
    }
    for (name, d) in &want.shares {
        let bucket_deleted = want.buckets.get(name).is_some_and(|b| b.spec.is_none());
        match (&d.spec, shares.get(name)) {
            (Some(s), None) if !bucket_deleted => out.push(Action::CreateShare {
                name: name.clone(),
                spec: s.clone(),
            }),
            (Some(s), Some(l)) if &l.spec != s => out.push(Action::SetShare {
                name: name.clone(),
                spec: s.clone(),
            }),
            (None, Some(l)) if before(l.created_ms, d) && name != tm_storage::DEFAULT_SHARE => {
                out.push(Action::DeleteShare { name: name.clone() })
            }
            _ => {}
        }
    }
    out
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn spec_of_share(s: &tm_storage::ShareInfo) -> ShareSpec {
    ShareSpec {
        read_only: s.read_only,
        root_squash: s.squash.root,
        all_squash: s.squash.all,
        anonuid: s.squash.anonuid,
        anongid: s.squash.anongid,
    }
}

fn squash_of(s: &ShareSpec) -> tm_storage::Squash {
    tm_storage::Squash {
        root: s.root_squash,
        all: s.all_squash,
        anonuid: s.anonuid,
        anongid: s.anongid,
    }
}

/// The buckets and shares of a store.
type Local = (BTreeMap<String, LocalBucket>, BTreeMap<String, LocalShare>);

/// A bucket or share the store could not follow (logged; kept buckets are audited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub name: String,
    pub stamp: String,
    pub detail: String,
}

impl Storage {
    /// The store's buckets and shares.
    fn local(&self) -> Result<Local, tm_storage::FsError> {
        let s = &self.store;
        let mut buckets = BTreeMap::new();
        for b in s.list_buckets()? {
            let objects = s.usage(&b.name)?.objects;
            buckets.insert(
                b.name.clone(),
                LocalBucket {
                    created_ms: ms(b.created),
                    quota: b.quota,
                    versioning: s.versioning(&b.name)?,
                    objects,
                },
            );
        }
        let mut shares = BTreeMap::new();
        for sh in s.list_shares()? {
            shares.insert(
                sh.name.clone(),
                LocalShare {
                    created_ms: ms(sh.created),
                    spec: spec_of_share(&sh),
                },
            );
        }
        Ok((buckets, shares))
    }

    /// Makes the store follow `want` ([`plan`]); returns the buckets it kept against a delete
    /// (blocking).
    pub fn materialise(&self, want: &StorageSpec) -> Vec<Conflict> {
        let _g = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        let (buckets, shares) = match self.local() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("reading the buckets and shares of the store: {e}");
                return Vec::new();
            }
        };
        let s = &self.store;
        let mut conflicts = Vec::new();
        for a in plan(want, &buckets, &shares) {
            let r: Result<(), tm_storage::FsError> = match &a {
                Action::CreateBucket {
                    name,
                    quota,
                    versioning,
                } => s
                    .create_bucket(name)
                    .and_then(|()| s.set_quota(name, *quota))
                    .and_then(|()| match versioning {
                        Some(v) => s.set_versioning(name, *v),
                        None => Ok(()),
                    })
                    .map_err(Into::into),
                Action::SetVersioning { name, versioning } => {
                    s.set_versioning(name, *versioning).map_err(Into::into)
                }
                Action::SetQuota { name, quota } => s.set_quota(name, *quota).map_err(Into::into),
                Action::DeleteBucket { name, stamp } => match s.delete_bucket(name) {
                    // Objects arrived since it was read (or versions): kept.
                    Err(tm_storage::StorageError::BucketNotEmpty) => {
                        conflicts.push(Conflict {
                            name: name.clone(),
                            stamp: stamp.clone(),
                            detail: format!(
                                "bucket {name:?} was deleted on another coordinator but is not \
                                 empty here: kept (delete its objects to let it go)"
                            ),
                        });
                        Ok(())
                    }
                    r => r.map_err(Into::into),
                },
                Action::KeepBucket {
                    name,
                    stamp,
                    objects,
                } => {
                    conflicts.push(Conflict {
                        name: name.clone(),
                        stamp: stamp.clone(),
                        detail: format!(
                            "bucket {name:?} was deleted on another coordinator but holds \
                             {objects} objects here: kept (delete its objects to let it go)"
                        ),
                    });
                    Ok(())
                }
                Action::CreateShare { name, spec } => s
                    .create_share(name, None, spec.read_only)
                    .and_then(|_| s.set_share_squash(name, squash_of(spec))),
                Action::SetShare { name, spec } => s
                    .set_share_read_only(name, spec.read_only)
                    .and_then(|()| s.set_share_squash(name, squash_of(spec))),
                Action::DeleteShare { name } => s.delete_share(name),
            };
            match r {
                Ok(()) => tracing::info!(?a, "replicated storage record applied"),
                Err(e) => tracing::warn!(?a, "cannot apply a replicated storage record: {e}"),
            }
        }
        conflicts
    }

    /// Materialises `c`'s bucket and share records into this store; a kept bucket is logged
    /// and audited once per delete (blocking; [`spawn`] runs it).
    pub fn reconcile(&self, c: &Coordinator) {
        for k in self.materialise(&c.storage_spec()) {
            match c.audit_storage_conflict(&k.name, &k.stamp, k.detail.clone()) {
                Ok(true) => tracing::warn!(bucket = %k.name, "{}", k.detail),
                Ok(false) => {}
                Err(e) => tracing::warn!(bucket = %k.name, "{} (not audited: {e})", k.detail),
            }
        }
    }

    /// Runs a storage command ([`Storage::handle`]) on a coordinator; a bucket or share change
    /// that succeeded here is then recorded for every coordinator as `who` (durable here before
    /// the answer). Blocking.
    pub fn handle_replicated(&self, c: &Coordinator, cmd: &Command, who: &str) -> Response {
        let _g = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        let resp = self.handle(cmd);
        if !resp.ok {
            return resp;
        }
        let s = &self.store;
        let bucket = |name: &str| -> Result<(), String> {
            let quota = s.bucket(name).map_err(|e| e.to_string())?.quota;
            let versioning = s.versioning(name).map_err(|e| e.to_string())?;
            c.put_bucket(name, Some(bucket_spec(quota, versioning)), who)
                .map_err(|e| e.to_string())
        };
        let share = |name: &str| -> Result<(), String> {
            let sh = s.share(name).map_err(|e| e.to_string())?;
            c.put_share(name, Some(spec_of_share(&sh)), who)
                .map_err(|e| e.to_string())
        };
        let r = match cmd {
            Command::BucketCreate { name } | Command::BucketQuotaSet { name, .. } => bucket(name),
            Command::BucketDelete { name } => {
                // Its share (if any) goes with it, here and in the records.
                let _ = s.delete_share(name);
                c.put_share(name, None, who)
                    .and_then(|()| c.put_bucket(name, None, who))
                    .map_err(|e| e.to_string())
            }
            Command::ShareCreate { name, .. } => bucket(name).and_then(|()| share(name)),
            Command::ShareSquash { name, .. } => share(name),
            Command::ShareDelete { name } => {
                c.put_share(name, None, who).map_err(|e| e.to_string())
            }
            _ => Ok(()),
        };
        match r {
            Ok(()) => resp,
            Err(e) => Response::err(format!(
                "done on this coordinator, but not recorded for the other coordinators: {e}"
            )),
        }
    }
}

/// How often the records are materialised without a merge (a kept bucket that was emptied
/// here goes then).
pub const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Materialises `c`'s records into `st` now, after every merge of other coordinators' records
/// and every [`RECONCILE_EVERY`] (one at a time; merges during one are coalesced into the
/// next).
pub fn spawn(st: Storage, c: Coordinator) {
    tokio::spawn(async move {
        let mut merges = c.subscribe_merges();
        loop {
            let (st2, c2) = (st.clone(), c.clone());
            if tokio::task::spawn_blocking(move || st2.reconcile(&c2))
                .await
                .is_err()
            {
                tracing::error!("materialising buckets and shares failed");
            }
            tokio::select! {
                r = merges.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
        }
    });
}

#[cfg(test)]
#[path = "storage_sync_tests.rs"]
mod tests;
