//! Multipart uploads: create, parts, complete (sharing the parts' chunks), abort, list.

use md5::{Digest, Md5};

use super::meta::*;
use super::types::{
    check_key, ObjectInfo, ObjectMeta, PartInfo, UploadInfo, WriteCondition, MAX_PART_NUMBER,
    MIN_PART_SIZE,
};
use super::writer::{PutWriter, Target};
use super::Store;
use crate::chunks::{hex, nibble};
use crate::db::ReadTable as _;
use crate::StorageError;

fn random_id() -> Result<String, StorageError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b)
        .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
    Ok(hex(&b))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() & 1 == 1 {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some((nibble(p[0])? << 4) | nibble(p[1])?))
        .collect()
}

impl Store {
    fn check_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<UploadRec, StorageError> {
        let rtx = self.view()?;
        match get_json::<UploadRec, _>(&rtx.open_table(UPLOADS)?, upload_id)? {
            Some(u) if u.bucket == bucket && u.key == key => Ok(u),
            _ => {
                get_json::<BucketRec, _>(&rtx.open_table(BUCKETS)?, bucket)?
                    .ok_or(StorageError::NoSuchBucket)?;
                Err(StorageError::NoSuchUpload)
            }
        }
    }

    /// Start a multipart upload; returns its id (random, 32 hex chars).
    pub fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        meta: ObjectMeta,
    ) -> Result<String, StorageError> {
        check_key(key)?;
        let id = random_id()?;
        let rec = UploadRec {
            bucket: bucket.to_string(),
            key: key.to_string(),
            initiated: now_nanos(),
            meta,
        };
        let id2 = id.clone();
        self.txn(move |wtx, _| {
            if get_json::<BucketRec, _>(&wtx.open_table(BUCKETS)?, &rec.bucket)?.is_none() {
                return Err(StorageError::NoSuchBucket);
            }
            put_json(&mut wtx.open_table(UPLOADS)?, &id2, &rec)
        })?;
        Ok(id)
    }

    /// Start writing one part; its `commit` returns an `ObjectInfo` carrying the part's ETag.
    /// Re-uploading a part number replaces it.
    pub fn begin_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
    ) -> Result<PutWriter, StorageError> {
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(StorageError::InvalidPartNumber);
        }
        let upload = self.check_upload(bucket, key, upload_id)?;
        let limit = self.room(bucket, key)?;
        Ok(PutWriter::new(
            self.clone(),
            Target::Part {
                bucket: bucket.to_string(),
                key: key.to_string(),
                upload_id: upload_id.to_string(),
                number: part_number,
                sse: upload.meta.sse,
            },
            limit,
        ))
    }

    /// Assemble the listed parts into the object (sharing their chunks) and end the upload.
    /// ETags may be given with or without quotes.
    pub fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<ObjectInfo, StorageError> {
        self.complete_multipart_if(bucket, key, upload_id, parts, WriteCondition::Always, None)
    }

    /// [`Store::complete_multipart`] that installs the object only if `cond` holds (checked
    /// atomically with the write) and records `checksum` (`ALGORITHM:base64-N`) with it. The
    /// upload's parts are freed (and their chunk files deleted) before this returns.
    pub fn complete_multipart_if(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
        cond: WriteCondition,
        checksum: Option<String>,
    ) -> Result<ObjectInfo, StorageError> {
        self.complete_installed(bucket, key, upload_id, parts, cond, checksum, None)
    }

    /// [`Store::complete_multipart_if`] installing the object with `install` (a layer above's
    /// installer, e.g. replication's) instead of the bucket's versioning rules.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn complete_installed(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
        cond: WriteCondition,
        checksum: Option<String>,
        install: Option<super::writer::Installer>,
    ) -> Result<ObjectInfo, StorageError> {
        let r = self.complete_inner(bucket, key, upload_id, parts, cond, checksum, install);
        if r.is_ok() {
            let _ = self.reclaim();
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn complete_inner(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
        cond: WriteCondition,
        checksum: Option<String>,
        install: Option<super::writer::Installer>,
    ) -> Result<ObjectInfo, StorageError> {
        self.settle(bucket, key, false);
        let max_size = self.inner.max_size;
        let (bucket, key, upload_id) = (bucket.to_string(), key.to_string(), upload_id.to_string());
        let parts: Vec<(u32, String)> = parts
            .iter()
            .map(|(n, e)| (*n, e.trim().trim_matches('"').to_ascii_lowercase()))
            .collect();
        let _g = self.inner.shared.read_guard();
        self.txn(move |wtx, freed| {
            let upload: UploadRec = match get_json(&wtx.open_table(UPLOADS)?, &upload_id)? {
                Some(u @ UploadRec { .. }) if u.bucket == bucket && u.key == key => u,
                _ => return Err(StorageError::NoSuchUpload),
            };
            if parts.is_empty() || parts.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(StorageError::InvalidPartOrder);
            }
            let mut manifest = Vec::new();
            let mut sizes = Vec::with_capacity(parts.len());
            let mut md5s = Md5::new();
            let mut size = 0u64;
            let mut too_small = false;
            {
                let pt = wtx.open_table(PARTS)?;
                let pc = wtx.open_table(PART_CHUNKS)?;
                for (i, (n, etag)) in parts.iter().enumerate() {
                    let pk = part_key(&upload_id, *n);
                    let rec: PartRec = get_json(&pt, &pk)?.ok_or(StorageError::InvalidPart)?;
                    if rec.etag != *etag {
                        return Err(StorageError::InvalidPart);
                    }
                    if i + 1 < parts.len() && rec.size < MIN_PART_SIZE {
                        too_small = true;
                    }
                    let raw = unhex(&rec.etag)
                        .ok_or_else(|| StorageError::Corrupt("part etag".into()))?;
                    md5s.update(&raw);
                    size += rec.size;
                    sizes.push(rec.size);
                    manifest.extend(get_manifest(&pc, &pk)?);
                }
            }
            if too_small {
                return Err(StorageError::EntityTooSmall);
            }
            check_condition(wtx, &bucket, &key, &cond)?;
            let mut meta = upload.meta;
            meta.checksum = checksum;
            meta.part_sizes = sizes;
            let rec = ObjRec {
                version_id: None,
                size,
                etag: format!("{}-{}", hex(&md5s.finalize()), parts.len()),
                modified: now_nanos(),
                meta,
            };
            let info = match install {
                Some(i) => i(
                    wtx,
                    freed,
                    max_size,
                    super::writer::Prepared {
                        bucket: bucket.clone(),
                        key: key.clone(),
                        rec,
                        manifest,
                        inline: None,
                        cond: WriteCondition::Always,
                    },
                )?,
                None => super::versions::install_version(
                    wtx, freed, max_size, &bucket, &key, &rec, &manifest, None,
                )?,
            };
            remove_upload(wtx, freed, &upload_id)?;
            Ok(info)
        })
    }

    /// Abort an upload, dropping its parts.
    pub fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StorageError> {
        let (bucket, key, upload_id) = (bucket.to_string(), key.to_string(), upload_id.to_string());
        self.txn(move |wtx, freed| {
            match get_json::<UploadRec, _>(&wtx.open_table(UPLOADS)?, &upload_id)? {
                Some(u) if u.bucket == bucket && u.key == key => {}
                _ => return Err(StorageError::NoSuchUpload),
            }
            remove_upload(wtx, freed, &upload_id)
        })?;
        // The parts' chunk files go before the abort is answered (not 200 ms later).
        let _ = self.reclaim();
        Ok(())
    }

    /// Parts uploaded so far, by number.
    pub fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<PartInfo>, StorageError> {
        self.check_upload(bucket, key, upload_id)?;
        let rtx = self.view()?;
        let t = rtx.open_table(PARTS)?;
        let (lo, hi) = (format!("{upload_id}/"), format!("{upload_id}0"));
        let mut out = Vec::new();
        for e in t.range(lo.as_str()..hi.as_str())? {
            let (k, v) = e?;
            let number: u32 = k.value()[lo.len()..]
                .parse()
                .map_err(|_| StorageError::Corrupt("part key".into()))?;
            let r: PartRec = serde_json::from_slice(v.value())?;
            out.push(PartInfo {
                number,
                etag: r.etag,
                size: r.size,
                modified: from_nanos(r.modified),
                checksum: r.checksum,
            });
        }
        Ok(out)
    }

    /// Uploads in progress in `bucket` whose key starts with `prefix`, by key then start time.
    pub fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<UploadInfo>, StorageError> {
        let rtx = self.view()?;
        get_json::<BucketRec, _>(&rtx.open_table(BUCKETS)?, bucket)?
            .ok_or(StorageError::NoSuchBucket)?;
        let t = rtx.open_table(UPLOADS)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            let u: UploadRec = serde_json::from_slice(v.value())?;
            if u.bucket == bucket && u.key.starts_with(prefix) {
                out.push(UploadInfo {
                    key: u.key,
                    upload_id: k.value().to_string(),
                    initiated: from_nanos(u.initiated),
                });
            }
        }
        out.sort_by(|a, b| {
            (&a.key, a.initiated, &a.upload_id).cmp(&(&b.key, b.initiated, &b.upload_id))
        });
        Ok(out)
    }
}
