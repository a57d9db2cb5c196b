//! Object and bucket tags (S3 tagging): an object version's tags live in its record (so every
//! version keeps its own), a bucket's in the bucket record. Setting tags changes nothing else
//! (not the ETag, not the modification time). The S3 limits are checked by the caller.

use super::meta::*;
use super::types::ObjectInfo;
use super::versions::{same_version, versions_of};
use super::Store;
use crate::StorageError;

impl Store {
    /// Replaces the tags of a version of `bucket/key`: the current one (`version: None`), or
    /// the one with that id (`"null"`: the null version). Returns the version's info.
    pub fn set_object_tags(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
        tags: Vec<(String, String)>,
    ) -> Result<ObjectInfo, StorageError> {
        self.settle(bucket, key, false);
        let (b, k) = (bucket.to_string(), key.to_string());
        let v = version.map(|v| v.to_string());
        self.txn(move |wtx, _| {
            if get_json::<BucketRec, _>(&wtx.open_table(BUCKETS)?, &b)?.is_none() {
                return Err(StorageError::NoSuchBucket);
            }
            let want = v.as_deref().filter(|v| *v != "null");
            let ok = obj_key(&b, &k);
            let mut objects = wtx.open_table(OBJECTS)?;
            if let Some(mut rec) = get_json::<ObjRec, _>(&objects, &ok)? {
                if v.is_none() || same_version(rec.version_id.as_deref(), want) {
                    rec.meta.tags = tags;
                    put_json(&mut objects, &ok, &rec)?;
                    return Ok(rec.info(&k));
                }
            } else if v.is_none() {
                return Err(StorageError::NoSuchKey);
            }
            let mut versions = wtx.open_table(VERSIONS)?;
            let (vk, mut vr) = versions_of(&versions, &b, &k)?
                .into_iter()
                .find(|(_, r)| same_version(r.version_id.as_deref(), want))
                .ok_or(if v.is_some() {
                    StorageError::NoSuchVersion
                } else {
                    StorageError::NoSuchKey
                })?;
            let Some(rec) = vr.rec.as_mut() else {
                return Err(StorageError::DeleteMarker);
            };
            rec.meta.tags = tags;
            let info = rec.info(&k);
            put_json(&mut versions, &vk, &vr)?;
            Ok(info)
        })
    }

    /// Replaces the bucket's tags (empty: removes them).
    pub fn set_bucket_tags(
        &self,
        bucket: &str,
        tags: Vec<(String, String)>,
    ) -> Result<(), StorageError> {
        let b = bucket.to_string();
        self.txn(move |wtx, _| {
            let mut t = wtx.open_table(BUCKETS)?;
            let mut rec: BucketRec = get_json(&t, &b)?.ok_or(StorageError::NoSuchBucket)?;
            rec.tags = tags;
            put_json(&mut t, &b, &rec)
        })
    }

    /// The bucket's tags.
    pub fn bucket_tags(&self, bucket: &str) -> Result<Vec<(String, String)>, StorageError> {
        let rtx = self.view()?;
        let rec: BucketRec =
            get_json(&rtx.open_table(BUCKETS)?, bucket)?.ok_or(StorageError::NoSuchBucket)?;
        Ok(rec.tags)
    }
}
