//! Objects: puts (streamed and small), reads, deletes, copies and listings.

use std::collections::HashMap;

use md5::{Digest, Md5};

use super::meta::*;
use super::pins::Pins;
use super::reader::ObjectReader;
use super::types::{check_key, ObjectInfo, ObjectMeta, WriteCondition};
use super::writer::{PutWriter, Target};
use super::Store;
use crate::chunks::hex;
use crate::db::ReadTable as _;
use crate::StorageError;

impl Store {
    /// How many bytes a new version of `bucket/key` may have (None = unlimited).
    pub(super) fn room(&self, bucket: &str, key: &str) -> Result<Option<u64>, StorageError> {
        let rtx = self.view()?;
        let b: BucketRec =
            get_json(&rtx.open_table(BUCKETS)?, bucket)?.ok_or(StorageError::NoSuchBucket)?;
        let old = get_json::<ObjRec, _>(&rtx.open_table(OBJECTS)?, &obj_key(bucket, key))?
            .map_or(0, |o| o.size);
        let total = stat(&rtx.open_table(STATS)?, "bytes")?;
        let lim_b = b
            .quota
            .map(|q| q.saturating_sub(b.bytes.saturating_sub(old)).max(old));
        let lim_g = self
            .inner
            .max_size
            .map(|m| m.saturating_sub(total.saturating_sub(old)).max(old));
        Ok(match (lim_b, lim_g) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Start writing a new version of `bucket/key`. Nothing is visible until
    /// [`PutWriter::commit`] returns; dropping the writer aborts.
    pub fn begin_put(
        &self,
        bucket: &str,
        key: &str,
        meta: ObjectMeta,
    ) -> Result<PutWriter, StorageError> {
        check_key(key)?;
        self.settle(bucket, key, false);
        let limit = self.room(bucket, key)?;
        Ok(PutWriter::new(
            self.clone(),
            Target::Object {
                bucket: bucket.to_string(),
                key: key.to_string(),
                meta: Box::new(meta),
            },
            limit,
        ))
    }

    pub(crate) fn commit_object(
        &self,
        bucket: String,
        key: String,
        rec: ObjRec,
        manifest: Vec<ChunkRef>,
        inline: Option<Vec<u8>>,
        cond: WriteCondition,
    ) -> Result<ObjectInfo, StorageError> {
        let max_size = self.inner.max_size;
        let _g = self.inner.shared.read_guard();
        self.txn(move |wtx, freed| {
            check_condition(wtx, &bucket, &key, &cond)?;
            super::versions::install_version(
                wtx,
                freed,
                max_size,
                &bucket,
                &key,
                &rec,
                &manifest,
                inline.as_deref(),
            )
        })
    }

    /// Commits a prepared version through a custom installer (`PutWriter::set_installer`).
    pub(crate) fn commit_installed(
        &self,
        install: super::writer::Installer,
        p: super::writer::Prepared,
    ) -> Result<ObjectInfo, StorageError> {
        let max_size = self.inner.max_size;
        let _g = self.inner.shared.read_guard();
        self.txn(move |wtx, freed| install(wtx, freed, max_size, p))
    }

    /// Store a whole small object (at most [`INLINE_MAX`] bytes) WITHOUT blocking: hashes it,
    /// queues it for the next group commit and returns at once. `done` runs exactly once, on the
    /// committer thread, after the object is durable and visible (or with the refusal:
    /// `NoSuchBucket`, `QuotaExceeded`, ...; nothing stored). `done` must not block.
    ///
    /// The bytes live in the metadata store (inline), so no chunk file and no extra fsync is
    /// involved: one group-committed transaction is the whole write.
    pub fn put_small(
        &self,
        bucket: &str,
        key: &str,
        meta: ObjectMeta,
        data: Vec<u8>,
        done: impl FnOnce(Result<ObjectInfo, StorageError>) + Send + 'static,
    ) {
        self.put_small_if(bucket, key, meta, data, WriteCondition::Always, done);
    }

    /// [`Store::put_small`] that stores only if `cond` holds (checked atomically with the write).
    pub fn put_small_if(
        &self,
        bucket: &str,
        key: &str,
        meta: ObjectMeta,
        data: Vec<u8>,
        cond: WriteCondition,
        done: impl FnOnce(Result<ObjectInfo, StorageError>) + Send + 'static,
    ) {
        if let Err(e) = check_key(key) {
            return done(Err(e));
        }
        if data.len() > INLINE_MAX {
            return done(Err(StorageError::Unsupported("put_small above INLINE_MAX")));
        }
        // NFS writes staged to this key were acknowledged first: apply them before the new
        // version replaces them (blocks only in that rare case).
        self.settle(bucket, key, false);
        let rec = ObjRec {
            version_id: None,
            size: data.len() as u64,
            etag: hex(&Md5::digest(&data)),
            modified: now_nanos(),
            meta,
        };
        // Sealed with the node key when the store seals every chunk.
        let (manifest, data) = if data.is_empty() {
            (Vec::new(), data)
        } else {
            match Pins::new(self.inner.shared.clone()).inline_chunk(&data) {
                Ok((c, stored)) => (vec![c], stored),
                Err(e) => return done(Err(e)),
            }
        };
        // No GC guard needed: an inline chunk has no file the collector could remove.
        let (bucket, key, max_size) = (bucket.to_string(), key.to_string(), self.inner.max_size);
        self.submit(
            move |wtx, freed| {
                check_condition(wtx, &bucket, &key, &cond)?;
                let inline = (!data.is_empty()).then_some(data.as_slice());
                super::versions::install_version(
                    wtx, freed, max_size, &bucket, &key, &rec, &manifest, inline,
                )
            },
            done,
        );
    }

    pub(crate) fn commit_part(
        &self,
        bucket: String,
        key: String,
        upload_id: String,
        number: u32,
        rec: PartRec,
        manifest: Vec<ChunkRef>,
    ) -> Result<ObjectInfo, StorageError> {
        let _g = self.inner.shared.read_guard();
        self.txn(move |wtx, freed| {
            {
                let uploads = wtx.open_table(UPLOADS)?;
                match get_json::<UploadRec, _>(&uploads, &upload_id)? {
                    Some(u) if u.bucket == bucket && u.key == key => {}
                    _ => return Err(StorageError::NoSuchUpload),
                }
            }
            let pk = part_key(&upload_id, number);
            add_refs(wtx, &manifest)?;
            let mut parts = wtx.open_table(PARTS)?;
            let mut chunks = wtx.open_table(PART_CHUNKS)?;
            let old = get_manifest(&chunks, &pk)?;
            drop_refs(wtx, &old, freed)?;
            put_json(&mut parts, &pk, &rec)?;
            chunks.insert(pk.as_str(), encode_manifest(&manifest).as_slice())?;
            Ok(ObjectInfo {
                key,
                size: rec.size,
                etag: rec.etag.clone(),
                modified: from_nanos(rec.modified),
                meta: ObjectMeta::default(),
                version_id: None,
            })
        })
    }

    /// Metadata of an object.
    pub fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, StorageError> {
        self.settle(bucket, key, false);
        let rtx = self.view()?;
        get_json::<BucketRec, _>(&rtx.open_table(BUCKETS)?, bucket)?
            .ok_or(StorageError::NoSuchBucket)?;
        let rec: ObjRec = get_json(&rtx.open_table(OBJECTS)?, &obj_key(bucket, key))?
            .ok_or(StorageError::NoSuchKey)?;
        Ok(rec.info(key))
    }

    /// Open the current version for reading. The reader keeps that version readable (its chunks
    /// are pinned) even if the object is replaced or deleted meanwhile.
    pub fn open_object(&self, bucket: &str, key: &str) -> Result<ObjectReader, StorageError> {
        self.settle(bucket, key, false);
        self.open_object_raw(bucket, key)
    }

    /// [`Store::open_object`] without applying staged writes first (the file-system view
    /// applies them itself, by inode).
    pub(crate) fn open_object_raw(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<ObjectReader, StorageError> {
        let shared = self.inner.shared.clone();
        let _g = shared.read_guard();
        let rtx = self.view()?;
        get_json::<BucketRec, _>(&rtx.open_table(BUCKETS)?, bucket)?
            .ok_or(StorageError::NoSuchBucket)?;
        let ok = obj_key(bucket, key);
        let rec: ObjRec =
            get_json(&rtx.open_table(OBJECTS)?, &ok)?.ok_or(StorageError::NoSuchKey)?;
        let manifest = get_manifest(&rtx.open_table(OBJ_CHUNKS)?, &ok)?;
        let sum: u64 = manifest.iter().map(|c| u64::from(c.len)).sum();
        if sum != rec.size {
            return Err(StorageError::Corrupt(format!(
                "{ok}: manifest size {sum} != {}",
                rec.size
            )));
        }
        let mut inline = HashMap::new();
        if manifest.iter().any(|c| c.inline) {
            let data = rtx.open_table(CHUNK_DATA)?;
            for (i, c) in manifest.iter().enumerate().filter(|(_, c)| c.inline) {
                let v = data.get(c.id.0.as_slice())?.ok_or_else(|| {
                    StorageError::Corrupt(format!("{:?} inline data missing", c.id))
                })?;
                inline.insert(i, v.value().to_vec());
            }
        }
        for c in &manifest {
            shared.pin(c.id);
        }
        let pins = Pins::reading(shared.clone(), manifest.iter().map(|c| c.id).collect());
        Ok(ObjectReader::new(rec.info(key), manifest, inline, pins))
    }

    /// Delete an object; deleting a missing key succeeds.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        self.settle(bucket, key, false);
        let (bucket, key) = (bucket.to_string(), key.to_string());
        self.txn(move |wtx, freed| remove_object(wtx, freed, &bucket, &key).map(|_| ()))
    }

    /// Copy an object, sharing its chunks. `meta: None` keeps the source metadata (S3 `COPY`
    /// directive), `Some` replaces it. The ETag is the source's.
    pub fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        meta: Option<ObjectMeta>,
    ) -> Result<ObjectInfo, StorageError> {
        self.copy_object_if(
            (src_bucket, src_key, None),
            dst_bucket,
            dst_key,
            meta,
            WriteCondition::Always,
        )
    }

    /// [`Store::copy_object`] from `(bucket, key, version)` (`None`: the current version,
    /// `"null"`: the null version) that writes only if `cond` holds for the destination (checked
    /// atomically with the write). A replaced `meta` without a checksum keeps the source's.
    pub fn copy_object_if(
        &self,
        (src_bucket, src_key, src_version): (&str, &str, Option<&str>),
        dst_bucket: &str,
        dst_key: &str,
        meta: Option<ObjectMeta>,
        cond: WriteCondition,
    ) -> Result<ObjectInfo, StorageError> {
        check_key(dst_key)?;
        self.settle(src_bucket, src_key, false);
        self.settle(dst_bucket, dst_key, false);
        let max_size = self.inner.max_size;
        let (sb, sk, db, dk) = (
            src_bucket.to_string(),
            src_key.to_string(),
            dst_bucket.to_string(),
            dst_key.to_string(),
        );
        let sv = src_version.map(str::to_string);
        let _g = self.inner.shared.read_guard();
        self.txn(move |wtx, freed| {
            let sok = obj_key(&sb, &sk);
            let (src, manifest) = {
                if get_json::<BucketRec, _>(&wtx.open_table(BUCKETS)?, &sb)?.is_none() {
                    return Err(StorageError::NoSuchBucket);
                }
                match sv.as_deref() {
                    None => {
                        let src: ObjRec = get_json(&wtx.open_table(OBJECTS)?, &sok)?
                            .ok_or(StorageError::NoSuchKey)?;
                        let m = get_manifest(&wtx.open_table(OBJ_CHUNKS)?, &sok)?;
                        (src, m)
                    }
                    Some(v) => super::versions::version_in_txn(wtx, &sb, &sk, v)?,
                }
            };
            check_condition(wtx, &db, &dk, &cond)?;
            let meta = match meta {
                Some(mut m) => {
                    if m.checksum.is_none() {
                        m.checksum = src.meta.checksum;
                    }
                    // The chunks are shared: so is the key that opens them (and the ETag
                    // stays the source's, parts and all).
                    m.sse = src.meta.sse;
                    m.part_sizes = src.meta.part_sizes;
                    m
                }
                None => src.meta,
            };
            let rec = ObjRec {
                version_id: None,
                size: src.size,
                etag: src.etag,
                modified: now_nanos(),
                meta,
            };
            super::versions::install_version(wtx, freed, max_size, &db, &dk, &rec, &manifest, None)
        })
    }

    /// Objects whose key starts with `prefix` and sorts after `start_after`, in byte order of the
    /// key, at most `max`.
    pub fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<ObjectInfo>, StorageError> {
        self.settle(bucket, prefix, true);
        let rtx = self.view()?;
        get_json::<BucketRec, _>(&rtx.open_table(BUCKETS)?, bucket)?
            .ok_or(StorageError::NoSuchBucket)?;
        let t = rtx.open_table(OBJECTS)?;
        let base = obj_key(bucket, "");
        let full_prefix = obj_key(bucket, prefix);
        let start = match start_after {
            Some(s) if s >= prefix => obj_key(bucket, s),
            _ => full_prefix.clone(),
        };
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        for e in t.range(start.as_str()..)? {
            let (k, v) = e?;
            let k = k.value();
            if !k.starts_with(&full_prefix) {
                break;
            }
            if start_after.is_some_and(|s| k == obj_key(bucket, s)) {
                continue;
            }
            let rec: ObjRec = serde_json::from_slice(v.value())?;
            out.push(rec.info(&k[base.len()..]));
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }
}
