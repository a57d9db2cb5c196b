//! Buckets, quotas and usage.

use super::meta::*;
use super::types::{valid_bucket_name, BucketInfo, Usage, SYSTEM_BUCKET};
use super::Store;
use crate::db::ReadTable as _;
use crate::StorageError;

fn bucket_info(name: &str, r: &BucketRec) -> BucketInfo {
    BucketInfo {
        name: name.to_string(),
        created: from_nanos(r.created),
        quota: r.quota,
    }
}

impl Store {
    pub(super) fn read_bucket(&self, name: &str) -> Result<BucketRec, StorageError> {
        let rtx = self.view()?;
        let t = rtx.open_table(BUCKETS)?;
        get_json(&t, name)?.ok_or(StorageError::NoSuchBucket)
    }

    /// Create a bucket (S3 naming rules, else `InvalidBucketName`; `BucketExists` if taken).
    pub fn create_bucket(&self, name: &str) -> Result<(), StorageError> {
        if name == SYSTEM_BUCKET {
            return Err(StorageError::BucketExists);
        }
        if !valid_bucket_name(name) {
            return Err(StorageError::InvalidBucketName);
        }
        let name = name.to_string();
        self.txn(move |wtx, _| {
            let mut t = wtx.open_table(BUCKETS)?;
            if get_json::<BucketRec, _>(&t, &name)?.is_some() {
                return Err(StorageError::BucketExists);
            }
            let rec = BucketRec {
                versioning: None,
                created: now_nanos(),
                quota: None,
                bytes: 0,
                objects: 0,
                tags: Vec::new(),
            };
            put_json(&mut t, &name, &rec)
        })
    }

    /// Delete an empty bucket; its unfinished multipart uploads are aborted with it.
    pub fn delete_bucket(&self, name: &str) -> Result<(), StorageError> {
        if name == SYSTEM_BUCKET {
            return Err(StorageError::ReservedBucket);
        }
        let name = name.to_string();
        self.txn(move |wtx, freed| {
            let rec: BucketRec = {
                let t = wtx.open_table(BUCKETS)?;
                get_json(&t, &name)?.ok_or(StorageError::NoSuchBucket)?
            };
            if rec.objects > 0 || super::versions::has_versions(wtx, &name)? {
                return Err(StorageError::BucketNotEmpty);
            }
            let mut ids = Vec::new();
            {
                let uploads = wtx.open_table(UPLOADS)?;
                for e in uploads.iter()? {
                    let (k, v) = e?;
                    let u: UploadRec = serde_json::from_slice(v.value())?;
                    if u.bucket == name {
                        ids.push(k.value().to_string());
                    }
                }
            }
            for id in ids {
                remove_upload(wtx, freed, &id)?;
            }
            wtx.open_table(BUCKETS)?.remove(name.as_str())?;
            Ok(())
        })
    }

    /// All buckets (including `_tunnelmesh`), by name.
    pub fn list_buckets(&self) -> Result<Vec<BucketInfo>, StorageError> {
        let rtx = self.view()?;
        let t = rtx.open_table(BUCKETS)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            let r: BucketRec = serde_json::from_slice(v.value())?;
            out.push(bucket_info(k.value(), &r));
        }
        Ok(out)
    }

    /// One bucket.
    pub fn bucket(&self, name: &str) -> Result<BucketInfo, StorageError> {
        Ok(bucket_info(name, &self.read_bucket(name)?))
    }

    /// Set or clear a bucket's byte quota. Lowering it below current usage is allowed; later
    /// writes that grow the bucket are then refused.
    pub fn set_quota(&self, bucket: &str, bytes: Option<u64>) -> Result<(), StorageError> {
        let bucket = bucket.to_string();
        self.txn(move |wtx, _| {
            let mut t = wtx.open_table(BUCKETS)?;
            let mut r: BucketRec = get_json(&t, &bucket)?.ok_or(StorageError::NoSuchBucket)?;
            r.quota = bytes;
            put_json(&mut t, &bucket, &r)
        })
    }

    /// Sets or clears a bucket's quota unless the new quota is below the bucket's current
    /// usage; `force` sets it anyway (writes that grow the bucket are then refused). Decided in
    /// the transaction that makes the change. Returns whether it was set, and the usage it was
    /// compared with.
    pub fn set_quota_checked(
        &self,
        bucket: &str,
        bytes: Option<u64>,
        force: bool,
    ) -> Result<(bool, Usage), StorageError> {
        let bucket = bucket.to_string();
        self.txn(move |wtx, _| {
            let mut t = wtx.open_table(BUCKETS)?;
            let mut r: BucketRec = get_json(&t, &bucket)?.ok_or(StorageError::NoSuchBucket)?;
            let usage = Usage {
                bytes: r.bytes,
                objects: r.objects,
            };
            if bytes.is_some_and(|q| q < r.bytes) && !force {
                return Ok((false, usage));
            }
            r.quota = bytes;
            put_json(&mut t, &bucket, &r)?;
            Ok((true, usage))
        })
    }

    /// Exact usage of a bucket.
    pub fn usage(&self, bucket: &str) -> Result<Usage, StorageError> {
        let r = self.read_bucket(bucket)?;
        Ok(Usage {
            bytes: r.bytes,
            objects: r.objects,
        })
    }

    /// Exact usage of the whole store (what `max_size` limits).
    pub fn total_usage(&self) -> Result<Usage, StorageError> {
        let rtx = self.view()?;
        let t = rtx.open_table(STATS)?;
        Ok(Usage {
            bytes: stat(&t, "bytes")?,
            objects: stat(&t, "objects")?,
        })
    }
}
