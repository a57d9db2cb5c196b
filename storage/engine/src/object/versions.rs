//! Object versions (S3 bucket versioning).
//!
//! The current version of a key stays in `objects` / `obj_chunks` (so listings, the file-system
//! view and unversioned buckets are unchanged); older versions and delete markers live in
//! `versions` / `ver_chunks`, keyed `bucket/key` NUL `inverted sequence` so a key's versions sort
//! newest first. Invariant: if `objects` holds the key, it is the newest version; otherwise the
//! newest entry in `versions` (if any) is a delete marker. A version keeps its chunk references
//! while it is stored, and usage (quotas included) counts every stored version; delete markers
//! count nothing.
//!
//! Writes in a bucket with versioning `Enabled` get a fresh version id and keep the previous
//! current version; with `Suspended` they are the `null` version, replacing the previous `null`
//! version wherever it is. Unversioned buckets behave exactly as before versioning existed.

use std::collections::HashMap;

use super::meta::*;
use super::pins::Pins;
use super::reader::ObjectReader;
use super::types::{ObjectInfo, Versioning};
use super::Store;
use crate::chunks::{hex, ChunkId};
use crate::db::{ReadTable as _, Tx};
use crate::StorageError;

/// A version's record, manifest and inline chunk bytes (by manifest index).
type Loaded = (ObjRec, Vec<ChunkRef>, HashMap<usize, Vec<u8>>);

/// One stored version or delete marker, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionEntry {
    /// Object key.
    pub key: String,
    /// Version id; `None` is the `null` version.
    pub version_id: Option<String>,
    /// Whether this is the key's newest version (or delete marker).
    pub is_latest: bool,
    /// `None`: a delete marker (with its time in `modified`).
    pub info: Option<ObjectInfo>,
    /// When it was written.
    pub modified: std::time::SystemTime,
}

/// What a delete did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// The version id created (a delete marker) or removed; `None` is `null` (or unversioned).
    pub version_id: Option<String>,
    /// Whether a delete marker was created, or the removed version was one.
    pub delete_marker: bool,
}

fn ver_prefix(bucket: &str, key: &str) -> String {
    format!("{}\u{0}", obj_key(bucket, key))
}

pub(crate) fn ver_key(bucket: &str, key: &str, seq: u64) -> String {
    format!("{}{:016x}", ver_prefix(bucket, key), u64::MAX - seq)
}

/// A fresh version id: time-ordered and unique enough (nanoseconds and 48 random bits).
pub(crate) fn new_version_id() -> String {
    let mut r = [0u8; 6];
    let _ = getrandom_fill(&mut r);
    format!("{:016x}{}", now_nanos(), hex(&r))
}

fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

pub(crate) fn same_version(a: Option<&str>, b: Option<&str>) -> bool {
    a.unwrap_or("null") == b.unwrap_or("null")
}

/// The bucket's versioning state (inside a transaction or snapshot).
pub(crate) fn bucket_versioning(rec: &BucketRec) -> Versioning {
    match rec.versioning.as_deref() {
        Some("Enabled") => Versioning::Enabled,
        Some("Suspended") => Versioning::Suspended,
        _ => Versioning::Unversioned,
    }
}

/// The key's noncurrent versions and markers, newest first: (table key, record).
pub(crate) fn versions_of<T: crate::db::ReadTable<&'static str, &'static [u8]>>(
    t: &T,
    bucket: &str,
    key: &str,
) -> Result<Vec<(String, VerRec)>, StorageError> {
    let lo = ver_prefix(bucket, key);
    let hi = format!("{}\u{1}", obj_key(bucket, key));
    let mut out = Vec::new();
    for e in t.range(lo.as_str()..hi.as_str())? {
        let (k, v) = e?;
        out.push((k.value().to_string(), serde_json::from_slice(v.value())?));
    }
    Ok(out)
}

/// Moves the current version of `bucket/key` (if any) into `versions`, keeping its chunk
/// references and its usage. Returns whether there was one.
fn detach_current(wtx: &Tx, bucket: &str, key: &str) -> Result<bool, StorageError> {
    let ok = obj_key(bucket, key);
    let mut objects = wtx.open_table(OBJECTS)?;
    let Some(rec) = get_json::<ObjRec, _>(&objects, &ok)? else {
        return Ok(false);
    };
    let mut chunks = wtx.open_table(OBJ_CHUNKS)?;
    let manifest = get_manifest(&chunks, &ok)?;
    let vk = ver_key(bucket, key, rec.modified);
    let vr = VerRec {
        version_id: rec.version_id.clone(),
        modified: rec.modified,
        rec: Some(rec),
    };
    put_json(&mut wtx.open_table(VERSIONS)?, &vk, &vr)?;
    wtx.open_table(VER_CHUNKS)?
        .insert(vk.as_str(), encode_manifest(&manifest).as_slice())?;
    objects.remove(ok.as_str())?;
    chunks.remove(ok.as_str())?;
    Ok(true)
}

/// Removes one entry of `versions` for good (dropping its references and usage).
fn purge(
    wtx: &Tx,
    freed: &mut Vec<ChunkId>,
    bucket: &str,
    vk: &str,
    vr: &VerRec,
) -> Result<(), StorageError> {
    let mut vc = wtx.open_table(VER_CHUNKS)?;
    let m = get_manifest(&vc, vk)?;
    drop_refs(wtx, &m, freed)?;
    vc.remove(vk)?;
    wtx.open_table(VERSIONS)?.remove(vk)?;
    if let Some(rec) = &vr.rec {
        let mut buckets = wtx.open_table(BUCKETS)?;
        let mut brec: BucketRec = get_json(&buckets, bucket)?.ok_or(StorageError::NoSuchBucket)?;
        brec.bytes -= rec.size;
        brec.objects -= 1;
        put_json(&mut buckets, bucket, &brec)?;
        let mut stats = wtx.open_table(STATS)?;
        let (b, o) = (stat(&stats, "bytes")?, stat(&stats, "objects")?);
        stats.insert("bytes", b - rec.size)?;
        stats.insert("objects", o - 1)?;
    }
    Ok(())
}

/// If the key has no current version and its newest stored entry is an object version, makes
/// that version current again.
fn promote(wtx: &Tx, bucket: &str, key: &str) -> Result<(), StorageError> {
    let ok = obj_key(bucket, key);
    if get_json::<ObjRec, _>(&wtx.open_table(OBJECTS)?, &ok)?.is_some() {
        return Ok(());
    }
    let newest = versions_of(&wtx.open_table(VERSIONS)?, bucket, key)?
        .into_iter()
        .next();
    let Some((vk, VerRec { rec: Some(rec), .. })) = newest else {
        return Ok(());
    };
    let mut vc = wtx.open_table(VER_CHUNKS)?;
    let m = get_manifest(&vc, &vk)?;
    vc.remove(vk.as_str())?;
    wtx.open_table(VERSIONS)?.remove(vk.as_str())?;
    put_json(&mut wtx.open_table(OBJECTS)?, &ok, &rec)?;
    wtx.open_table(OBJ_CHUNKS)?
        .insert(ok.as_str(), encode_manifest(&m).as_slice())?;
    Ok(())
}

/// Installs `rec`/`manifest` as the new current version of `bucket/key` following the bucket's
/// versioning (see the module doc). All refusals (quota) come before the first mutation.
#[allow(clippy::too_many_arguments)] // install_object's arguments
pub(crate) fn install_version(
    wtx: &Tx,
    freed: &mut Vec<ChunkId>,
    max_size: Option<u64>,
    bucket: &str,
    key: &str,
    rec: &ObjRec,
    manifest: &[ChunkRef],
    inline: Option<&[u8]>,
) -> Result<ObjectInfo, StorageError> {
    let brec: BucketRec =
        get_json(&wtx.open_table(BUCKETS)?, bucket)?.ok_or(StorageError::NoSuchBucket)?;
    let mode = bucket_versioning(&brec);
    if mode == Versioning::Unversioned {
        return install_object(wtx, freed, max_size, bucket, key, rec, manifest, inline);
    }
    let ok = obj_key(bucket, key);
    let cur: Option<ObjRec> = get_json(&wtx.open_table(OBJECTS)?, &ok)?;
    let olds = versions_of(&wtx.open_table(VERSIONS)?, bucket, key)?;
    // What this write frees: under Suspended, the `null` version wherever it is.
    let mut freed_bytes = 0;
    let mut null_noncurrent = None;
    if mode == Versioning::Suspended {
        if let Some(c) = cur.as_ref().filter(|c| c.version_id.is_none()) {
            freed_bytes += c.size;
        }
        null_noncurrent = olds.iter().find(|(_, v)| v.version_id.is_none()).cloned();
        if let Some((_, VerRec { rec: Some(r), .. })) = &null_noncurrent {
            freed_bytes += r.size;
        }
    }
    let new_bytes = brec.bytes - freed_bytes + rec.size;
    if let Some(q) = brec.quota {
        if new_bytes > q && new_bytes > brec.bytes {
            return Err(StorageError::QuotaExceeded);
        }
    }
    if let Some(m) = max_size {
        let total = stat(&wtx.open_table(STATS)?, "bytes")?;
        let new_total = total - freed_bytes + rec.size;
        if new_total > m && new_total > total {
            return Err(StorageError::QuotaExceeded);
        }
    }
    // --- mutations from here on ---
    let mut rec = rec.clone();
    match mode {
        Versioning::Enabled => {
            rec.version_id = Some(new_version_id());
            detach_current(wtx, bucket, key)?;
        }
        _ => {
            rec.version_id = None;
            if cur.as_ref().is_some_and(|c| c.version_id.is_some()) {
                detach_current(wtx, bucket, key)?;
            }
            if let Some((vk, vr)) = &null_noncurrent {
                purge(wtx, freed, bucket, vk, vr)?;
            }
        }
    }
    install_object(wtx, freed, max_size, bucket, key, &rec, manifest, inline)
}

/// The record and manifest of one version inside a transaction (copy sources).
pub(crate) fn version_in_txn(
    wtx: &Tx,
    bucket: &str,
    key: &str,
    version_id: &str,
) -> Result<(ObjRec, Vec<ChunkRef>), StorageError> {
    let want = (version_id != "null").then_some(version_id);
    let ok = obj_key(bucket, key);
    if let Some(c) = get_json::<ObjRec, _>(&wtx.open_table(OBJECTS)?, &ok)? {
        if same_version(c.version_id.as_deref(), want) {
            return Ok((c, get_manifest(&wtx.open_table(OBJ_CHUNKS)?, &ok)?));
        }
    }
    let (vk, vr) = versions_of(&wtx.open_table(VERSIONS)?, bucket, key)?
        .into_iter()
        .find(|(_, v)| same_version(v.version_id.as_deref(), want))
        .ok_or(StorageError::NoSuchVersion)?;
    let rec = vr.rec.ok_or(StorageError::DeleteMarker)?;
    Ok((rec, get_manifest(&wtx.open_table(VER_CHUNKS)?, &vk)?))
}

/// Whether any version or delete marker of the bucket is stored (beyond current objects).
pub(crate) fn has_versions(wtx: &Tx, bucket: &str) -> Result<bool, StorageError> {
    let lo = format!("{bucket}/");
    let hi = format!("{bucket}0");
    let t = wtx.open_table(VERSIONS)?;
    let found = t.range(lo.as_str()..hi.as_str())?.next().is_some();
    Ok(found)
}

impl Store {
    /// The bucket's versioning state.
    pub fn versioning(&self, bucket: &str) -> Result<Versioning, StorageError> {
        let rtx = self.view()?;
        let b: BucketRec =
            get_json(&rtx.open_table(BUCKETS)?, bucket)?.ok_or(StorageError::NoSuchBucket)?;
        Ok(bucket_versioning(&b))
    }

    /// Enables or suspends versioning (a versioned bucket never becomes unversioned again).
    pub fn set_versioning(&self, bucket: &str, v: Versioning) -> Result<(), StorageError> {
        let state = match v {
            Versioning::Enabled => "Enabled",
            Versioning::Suspended => "Suspended",
            Versioning::Unversioned => {
                return Err(StorageError::Unsupported(
                    "a versioned bucket cannot become unversioned",
                ))
            }
        };
        let bucket = bucket.to_string();
        self.txn(move |wtx, _| {
            let mut t = wtx.open_table(BUCKETS)?;
            let mut b: BucketRec = get_json(&t, &bucket)?.ok_or(StorageError::NoSuchBucket)?;
            b.versioning = Some(state.to_owned());
            put_json(&mut t, &bucket, &b)
        })
    }

    /// Deletes `bucket/key` following the bucket's versioning: without `version_id`, a versioned
    /// bucket gets a delete marker (the current version is kept as noncurrent, or, suspended, the
    /// `null` version is removed); with `version_id` (`"null"` for the null version) that version
    /// or marker is removed for good and the newest remaining version becomes current.
    pub fn delete_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Deleted, StorageError> {
        self.settle(bucket, key, false);
        let (bucket, key) = (bucket.to_string(), key.to_string());
        let vid = version_id.map(str::to_string);
        let r = self.txn(move |wtx, freed| {
            let brec: BucketRec =
                get_json(&wtx.open_table(BUCKETS)?, &bucket)?.ok_or(StorageError::NoSuchBucket)?;
            let mode = bucket_versioning(&brec);
            let ok = obj_key(&bucket, &key);
            let cur: Option<ObjRec> = get_json(&wtx.open_table(OBJECTS)?, &ok)?;
            let olds = versions_of(&wtx.open_table(VERSIONS)?, &bucket, &key)?;
            let Some(vid) = vid else {
                if mode == Versioning::Unversioned {
                    remove_object(wtx, freed, &bucket, &key)?;
                    return Ok(Deleted::default());
                }
                let marker_id = match mode {
                    Versioning::Enabled => Some(new_version_id()),
                    _ => None,
                };
                if mode == Versioning::Suspended {
                    if cur.as_ref().is_some_and(|c| c.version_id.is_none()) {
                        remove_object(wtx, freed, &bucket, &key)?;
                    }
                    if let Some((vk, vr)) = olds.iter().find(|(_, v)| v.version_id.is_none()) {
                        purge(wtx, freed, &bucket, vk, vr)?;
                    }
                }
                detach_current(wtx, &bucket, &key)?;
                let seq = now_nanos();
                let m = VerRec {
                    version_id: marker_id.clone(),
                    modified: seq,
                    rec: None,
                };
                let vk = ver_key(&bucket, &key, seq);
                put_json(&mut wtx.open_table(VERSIONS)?, &vk, &m)?;
                wtx.open_table(VER_CHUNKS)?
                    .insert(vk.as_str(), encode_manifest(&[]).as_slice())?;
                return Ok(Deleted {
                    version_id: marker_id,
                    delete_marker: true,
                });
            };
            let want = (vid != "null").then_some(vid.as_str());
            if cur
                .as_ref()
                .is_some_and(|c| same_version(c.version_id.as_deref(), want))
            {
                remove_object(wtx, freed, &bucket, &key)?;
                promote(wtx, &bucket, &key)?;
                return Ok(Deleted {
                    version_id: want.map(str::to_string),
                    delete_marker: false,
                });
            }
            if let Some((vk, vr)) = olds
                .iter()
                .find(|(_, v)| same_version(v.version_id.as_deref(), want))
            {
                purge(wtx, freed, &bucket, vk, vr)?;
                promote(wtx, &bucket, &key)?;
                return Ok(Deleted {
                    version_id: want.map(str::to_string),
                    delete_marker: vr.rec.is_none(),
                });
            }
            // Deleting a version that does not exist succeeds (as S3).
            Ok(Deleted {
                version_id: want.map(str::to_string),
                delete_marker: false,
            })
        });
        let _ = self.reclaim();
        r
    }

    /// If the newest entry of a key without a current version is a delete marker: its version
    /// id (`Some(None)` for a `null` marker). Answers `x-amz-delete-marker` on a 404.
    pub fn latest_delete_marker(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Option<String>>, StorageError> {
        let rtx = self.view()?;
        if get_json::<ObjRec, _>(&rtx.open_table(OBJECTS)?, &obj_key(bucket, key))?.is_some() {
            return Ok(None);
        }
        let newest = versions_of(&rtx.open_table(VERSIONS)?, bucket, key)?
            .into_iter()
            .next();
        Ok(match newest {
            Some((
                _,
                VerRec {
                    rec: None,
                    version_id,
                    ..
                },
            )) => Some(version_id),
            _ => None,
        })
    }

    /// The record and manifest of one version (`"null"` for the null version), current or not.
    fn version_rec(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
    ) -> Result<Loaded, StorageError> {
        let rtx = self.view()?;
        get_json::<BucketRec, _>(&rtx.open_table(BUCKETS)?, bucket)?
            .ok_or(StorageError::NoSuchBucket)?;
        let want = (version_id != "null").then_some(version_id);
        let ok = obj_key(bucket, key);
        let (rec, manifest) = match get_json::<ObjRec, _>(&rtx.open_table(OBJECTS)?, &ok)? {
            Some(c) if same_version(c.version_id.as_deref(), want) => {
                (c, get_manifest(&rtx.open_table(OBJ_CHUNKS)?, &ok)?)
            }
            _ => {
                let olds = versions_of(&rtx.open_table(VERSIONS)?, bucket, key)?;
                let (vk, vr) = olds
                    .into_iter()
                    .find(|(_, v)| same_version(v.version_id.as_deref(), want))
                    .ok_or(StorageError::NoSuchVersion)?;
                let rec = vr.rec.ok_or(StorageError::DeleteMarker)?;
                (rec, get_manifest(&rtx.open_table(VER_CHUNKS)?, &vk)?)
            }
        };
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
        Ok((rec, manifest, inline))
    }

    /// One version's info (`NoSuchVersion`; `DeleteMarker` if it is a delete marker).
    pub fn head_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
    ) -> Result<ObjectInfo, StorageError> {
        self.settle(bucket, key, false);
        Ok(self.version_rec(bucket, key, version_id)?.0.info(key))
    }

    /// Opens one version for reading (its chunks pinned while the reader lives).
    pub fn open_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
    ) -> Result<ObjectReader, StorageError> {
        self.settle(bucket, key, false);
        let shared = self.shared().clone();
        let _g = shared.read_guard();
        let (rec, manifest, inline) = self.version_rec(bucket, key, version_id)?;
        for c in &manifest {
            shared.pin(c.id);
        }
        let pins = Pins::reading(shared.clone(), manifest.iter().map(|c| c.id).collect());
        Ok(ObjectReader::new(rec.info(key), manifest, inline, pins))
    }

    /// Versions and delete markers of keys starting with `prefix`, by key then newest first,
    /// after `(key, version)` (exclusive; a marker key alone skips all of that key's versions),
    /// at most `max`.
    pub fn list_versions(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<(&str, Option<&str>)>,
        max: usize,
    ) -> Result<Vec<VersionEntry>, StorageError> {
        self.settle(bucket, prefix, true);
        let rtx = self.view()?;
        get_json::<BucketRec, _>(&rtx.open_table(BUCKETS)?, bucket)?
            .ok_or(StorageError::NoSuchBucket)?;
        let objects = rtx.open_table(OBJECTS)?;
        let versions = rtx.open_table(VERSIONS)?;
        let base = obj_key(bucket, "");
        let full = obj_key(bucket, prefix);
        // Candidate keys in order, from both tables (bounded: stop once enough entries).
        let start = match after {
            Some((k, _)) if k >= prefix => obj_key(bucket, k),
            _ => full.clone(),
        };
        let mut keys: Vec<String> = Vec::new();
        for e in objects.range(start.as_str()..)? {
            let (k, _) = e?;
            if !k.value().starts_with(&full) || keys.len() > max + 1 {
                break;
            }
            keys.push(k.value()[base.len()..].to_string());
        }
        let mut vkeys = 0;
        for e in versions.range(start.as_str()..)? {
            let (k, _) = e?;
            let Some((ok, _)) = k.value().split_once('\u{0}') else {
                continue;
            };
            if !ok.starts_with(&full) || vkeys > max + 1 {
                break;
            }
            let key = ok[base.len()..].to_string();
            if keys.last() != Some(&key) && !keys.contains(&key) {
                keys.push(key);
                vkeys += 1;
            }
        }
        keys.sort();
        keys.dedup();
        let mut out = Vec::new();
        for key in keys {
            if let Some((ak, None)) = after {
                if key.as_str() <= ak {
                    continue;
                }
            }
            if let Some((ak, Some(_))) = after {
                if key.as_str() < ak {
                    continue;
                }
            }
            let mut entries = Vec::new();
            if let Some(rec) = get_json::<ObjRec, _>(&objects, &obj_key(bucket, &key))? {
                entries.push(VersionEntry {
                    key: key.clone(),
                    version_id: rec.version_id.clone(),
                    is_latest: true,
                    modified: from_nanos(rec.modified),
                    info: Some(rec.info(&key)),
                });
            }
            for (_, vr) in versions_of(&versions, bucket, &key)? {
                entries.push(VersionEntry {
                    key: key.clone(),
                    version_id: vr.version_id.clone(),
                    is_latest: entries.is_empty(),
                    modified: from_nanos(vr.modified),
                    info: vr.rec.map(|r| r.info(&key)),
                });
            }
            let mut skip = matches!(after, Some((ak, Some(_))) if ak == key);
            for e in entries {
                if skip {
                    if let Some((_, Some(av))) = after {
                        if same_version(e.version_id.as_deref(), Some(av).filter(|v| *v != "null"))
                        {
                            skip = false;
                        }
                    }
                    continue;
                }
                out.push(e);
                if out.len() >= max {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }
}
