//! In-place edits of an object (`write_at`, `truncate`): rewrite only the chunks an edit
//! touches, in one metadata transaction, retried when another writer got there first.

use super::meta::*;
use super::pins::Pins;
use super::types::{check_key, ObjectInfo};
use super::Store;
use crate::db::ReadTable as _;
use crate::StorageError;

/// Retries of a read-modify-write (`write_at`/`truncate`) that lost a race.
const SPLICE_RETRIES: usize = 8;

enum Edit<'a> {
    Write { offset: u64, data: &'a [u8] },
    Truncate(u64),
}

impl Store {
    /// Write `data` at `offset` (creating the object if missing, zero-filling any gap), rewriting
    /// only the chunks the write touches. The new ETag is `md5(chunk ids)-N`.
    pub fn write_at(
        &self,
        bucket: &str,
        key: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<ObjectInfo, StorageError> {
        check_key(key)?;
        self.splice(bucket, key, Edit::Write { offset, data })
    }

    /// Set the object's size (creating it if missing), cutting or zero-extending the tail.
    pub fn truncate(&self, bucket: &str, key: &str, size: u64) -> Result<ObjectInfo, StorageError> {
        check_key(key)?;
        self.splice(bucket, key, Edit::Truncate(size))
    }

    fn splice(&self, bucket: &str, key: &str, edit: Edit<'_>) -> Result<ObjectInfo, StorageError> {
        let cs = u64::from(self.inner.shared.chunk_size);
        for _ in 0..SPLICE_RETRIES {
            let old = match self.open_object(bucket, key) {
                Ok(r) => Some(r),
                Err(StorageError::NoSuchKey) => None,
                Err(e) => return Err(e),
            };
            let size = old.as_ref().map_or(0, |r| r.info.size);
            let old_m: Vec<ChunkRef> = old
                .as_ref()
                .map(|r| r.manifest().to_vec())
                .unwrap_or_default();
            let (new_size, lo, hi, patch) = match edit {
                Edit::Write { offset, data } => {
                    if data.is_empty() {
                        if let Some(r) = &old {
                            return Ok(r.info.clone());
                        }
                    }
                    let end = offset
                        .checked_add(data.len() as u64)
                        .ok_or(StorageError::Unsupported("offset overflow"))?;
                    (size.max(end), offset.min(size), end, Some((offset, data)))
                }
                Edit::Truncate(t) => {
                    if t == size {
                        if let Some(r) = &old {
                            return Ok(r.info.clone());
                        }
                    }
                    (t, t.min(size), t, None)
                }
            };
            // chunk start offsets
            let mut starts = Vec::with_capacity(old_m.len());
            let mut acc = 0u64;
            for c in &old_m {
                starts.push(acc);
                acc += u64::from(c.len);
            }
            let n = old_m.len();
            let end_of = |i: usize| starts[i] + u64::from(old_m[i].len);
            let mut i0 = (0..n).find(|&i| end_of(i) > lo).unwrap_or(n);
            if i0 == n && n > 0 && u64::from(old_m[n - 1].len) < cs {
                i0 = n - 1;
            }
            let region_start = if i0 < n { starts[i0] } else { size };
            // Chunks entirely after the edit survive unchanged (unless the object shrinks past them).
            let tail = (i0..n)
                .find(|&j| starts[j] >= hi)
                .filter(|_| n > 0 && end_of(n - 1) <= new_size)
                .unwrap_or(n);
            let region_end = if tail < n { starts[tail] } else { new_size };
            let mut pins = Pins::new(self.inner.shared.clone());
            if let Some(r) = &old {
                pins.seal = r.edit_seal()?;
            }
            let mut manifest: Vec<ChunkRef> = old_m[..i0].to_vec();
            let mut p = region_start;
            while p < region_end {
                let p_end = (p + cs).min(region_end);
                let mut buf = vec![0u8; (p_end - p) as usize];
                if let Some(r) = &old {
                    let old_end = p_end.min(size);
                    if p < old_end {
                        r.read_exact_at(p, &mut buf[..(old_end - p) as usize])?;
                    }
                }
                if let Some((off, data)) = patch {
                    let s = off.max(p);
                    let e = (off + data.len() as u64).min(p_end);
                    if s < e {
                        buf[(s - p) as usize..(e - p) as usize]
                            .copy_from_slice(&data[(s - off) as usize..(e - off) as usize]);
                    }
                }
                manifest.push(pins.put_chunk(&buf)?);
                p = p_end;
            }
            manifest.extend_from_slice(&old_m[tail..]);
            let sum: u64 = manifest.iter().map(|c| u64::from(c.len)).sum();
            debug_assert_eq!(sum, new_size);
            let rec = ObjRec {
                version_id: old.as_ref().and_then(|r| r.info.version_id.clone()),
                size: new_size,
                etag: manifest_etag(&manifest),
                modified: now_nanos(),
                meta: old
                    .as_ref()
                    .map(|r| edited_meta(&r.info.meta))
                    .unwrap_or_default(),
            };
            let existed = old.is_some();
            let expect = encode_manifest(&old_m);
            let (b, k) = (bucket.to_string(), key.to_string());
            let max_size = self.inner.max_size;
            let _g = self.inner.shared.read_guard();
            let r = self.txn(move |wtx, freed| {
                let ok = obj_key(&b, &k);
                {
                    let exists = wtx.open_table(OBJECTS)?.get(ok.as_str())?.is_some();
                    let cur = wtx
                        .open_table(OBJ_CHUNKS)?
                        .get(ok.as_str())?
                        .map(|v| v.value().to_vec());
                    if exists != existed || (exists && cur.as_deref() != Some(expect.as_slice())) {
                        return Err(StorageError::Conflict);
                    }
                }
                install_object(wtx, freed, max_size, &b, &k, &rec, &manifest, None)
            });
            drop(_g);
            drop(pins);
            match r {
                Err(StorageError::Conflict) => continue,
                other => return other,
            }
        }
        Err(StorageError::Conflict)
    }
}

/// The metadata of an object after an in-place edit: the same, but no longer a multipart
/// object (its ETag is not a multipart ETag any more).
pub(crate) fn edited_meta(m: &super::types::ObjectMeta) -> super::types::ObjectMeta {
    let mut m = m.clone();
    m.part_sizes.clear();
    m
}
