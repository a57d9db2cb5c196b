//! File shares: a share is a bucket plus a share record (read-only flag) in the `shares` table.
//!
//! The bucket keeps the data, the quota and the exact usage; the share record only says that the
//! bucket is exported over NFS (as `/shares/<name>`) and how. Deleting a share removes the record
//! and keeps the bucket (its objects stay reachable over S3). The share [`DEFAULT_SHARE`] cannot be
//! deleted; coordinators create it at start ([`Store::ensure_share`]).

use std::time::SystemTime;

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::FsError;
use crate::db::ReadTable as _;
use crate::object::meta::{from_nanos, get_json, now_nanos, put_json, BucketRec, BUCKETS};
use crate::object::types::{valid_bucket_name, SYSTEM_BUCKET};
use crate::object::Store;
use crate::StorageError;

pub(crate) const SHARES: TableDefinition<&str, &[u8]> = TableDefinition::new("shares");

/// The share every coordinator exports.
pub const DEFAULT_SHARE: &str = "default";

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct ShareRec {
    pub created: u64,
    pub read_only: bool,
    /// Absent in records written before squashing existed: no squashing.
    #[serde(default)]
    pub squash: Squash,
}

/// Which callers' AUTH_SYS identities NFS replaces by an anonymous one (like exports(5)
/// `root_squash`/`all_squash` with `anonuid`/`anongid`). Default: none (`no_root_squash`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Squash {
    /// uid 0 becomes `anonuid` and gid 0 `anongid`.
    pub root: bool,
    /// Every uid and gid becomes the anonymous one.
    pub all: bool,
    /// The anonymous user (default 65534, `nobody`).
    pub anonuid: u32,
    /// The anonymous group (default 65534, `nogroup`).
    pub anongid: u32,
}

impl Default for Squash {
    fn default() -> Squash {
        Squash {
            root: false,
            all: false,
            anonuid: NOBODY,
            anongid: NOBODY,
        }
    }
}

/// Default anonymous uid and gid.
pub const NOBODY: u32 = 65_534;

/// A share as reported by [`Store::list_shares`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareInfo {
    /// Share (and bucket) name.
    pub name: String,
    /// Writes are refused (`NFS3ERR_ROFS`).
    pub read_only: bool,
    /// Identity squashing of NFS callers.
    pub squash: Squash,
    /// The bucket's byte quota, if any.
    pub quota: Option<u64>,
    /// Exact bytes stored in the bucket.
    pub used_bytes: u64,
    /// Objects in the bucket (files, symlinks and directory markers).
    pub objects: u64,
    /// When the share was created.
    pub created: SystemTime,
}

impl Store {
    /// Create a share (and its bucket if it does not exist yet; an existing bucket is adopted).
    /// `quota` replaces the bucket quota when given. `Exists` if the share exists already.
    pub fn create_share(
        &self,
        name: &str,
        quota: Option<u64>,
        read_only: bool,
    ) -> Result<ShareInfo, FsError> {
        if name == SYSTEM_BUCKET || !valid_bucket_name(name) {
            return Err(StorageError::InvalidBucketName.into());
        }
        let n = name.to_string();
        self.txn_as(move |wtx, _| {
            let mut shares = wtx.open_table(SHARES)?;
            if shares.get(n.as_str())?.is_some() {
                return Err(FsError::Exists);
            }
            let mut buckets = wtx.open_table(BUCKETS)?;
            let mut b: BucketRec = get_json(&buckets, &n)?.unwrap_or(BucketRec {
                versioning: None,
                created: now_nanos(),
                quota: None,
                bytes: 0,
                objects: 0,
                tags: Vec::new(),
            });
            if quota.is_some() {
                b.quota = quota;
            }
            put_json(&mut buckets, &n, &b)?;
            let rec = ShareRec {
                created: now_nanos(),
                read_only,
                squash: Squash::default(),
            };
            Ok(put_json(&mut shares, &n, &rec)?)
        })?;
        self.share(name)
    }

    /// Create the share if it is missing (used for [`DEFAULT_SHARE`] at start).
    pub fn ensure_share(&self, name: &str) -> Result<ShareInfo, FsError> {
        match self.create_share(name, None, false) {
            Ok(s) => Ok(s),
            Err(FsError::Exists) => self.share(name),
            Err(e) => Err(e),
        }
    }

    /// Change the read-only flag of a share.
    pub fn set_share_read_only(&self, name: &str, read_only: bool) -> Result<(), FsError> {
        let n = name.to_string();
        self.txn_as(move |wtx, _| {
            let mut shares = wtx.open_table(SHARES)?;
            let mut r: ShareRec = get_json(&shares, &n)?.ok_or(FsError::NoSuchShare)?;
            r.read_only = read_only;
            Ok(put_json(&mut shares, &n, &r)?)
        })
    }

    /// Change the identity squashing of a share (NFS calls see it within a second).
    pub fn set_share_squash(&self, name: &str, squash: Squash) -> Result<(), FsError> {
        let n = name.to_string();
        self.txn_as(move |wtx, _| {
            let mut shares = wtx.open_table(SHARES)?;
            let mut r: ShareRec = get_json(&shares, &n)?.ok_or(FsError::NoSuchShare)?;
            r.squash = squash;
            Ok(put_json(&mut shares, &n, &r)?)
        })
    }

    /// Remove the share record (the bucket and its objects stay). The default share cannot be
    /// deleted.
    pub fn delete_share(&self, name: &str) -> Result<(), FsError> {
        if name == DEFAULT_SHARE {
            return Err(FsError::Invalid("the default share cannot be deleted"));
        }
        let n = name.to_string();
        self.txn_as(move |wtx, _| {
            let mut shares = wtx.open_table(SHARES)?;
            if shares.get(n.as_str())?.is_none() {
                return Err(FsError::NoSuchShare);
            }
            shares.remove(n.as_str())?;
            Ok(())
        })
    }

    /// One share with its bucket's quota and usage.
    pub fn share(&self, name: &str) -> Result<ShareInfo, FsError> {
        let rtx = self.view()?;
        let r: ShareRec = get_json(&rtx.open_table(SHARES)?, name)?.ok_or(FsError::NoSuchShare)?;
        let b: BucketRec =
            get_json(&rtx.open_table(BUCKETS)?, name)?.ok_or(StorageError::NoSuchBucket)?;
        Ok(info(name, &r, &b))
    }

    /// All shares, by name.
    pub fn list_shares(&self) -> Result<Vec<ShareInfo>, FsError> {
        let rtx = self.view()?;
        let shares = rtx.open_table(SHARES)?;
        let buckets = rtx.open_table(BUCKETS)?;
        let mut out = Vec::new();
        for e in shares.iter()? {
            let (k, v) = e?;
            let r: ShareRec = serde_json::from_slice(v.value())?;
            if let Some(b) = get_json::<BucketRec, _>(&buckets, k.value())? {
                out.push(info(k.value(), &r, &b));
            }
        }
        Ok(out)
    }
}

fn info(name: &str, r: &ShareRec, b: &BucketRec) -> ShareInfo {
    ShareInfo {
        name: name.to_string(),
        read_only: r.read_only,
        squash: r.squash,
        quota: b.quota,
        used_bytes: b.bytes,
        objects: b.objects,
        created: from_nanos(r.created),
    }
}
