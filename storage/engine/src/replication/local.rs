//! Storage-level operations the replication driver performs on this coordinator's store: make a
//! stamped version (PUT or delete marker) with its hinted-handoff records in one transaction,
//! list a key's versions, export one with its chunk ids, apply a version received from another
//! coordinator, and move chunks by content id.
//!
//! Every replicated version keeps its replication identity (dot, version vector, HLC) in
//! `rep_versions` (`bucket/key` NUL version id -> json), next to the object layer's own record
//! of it; its S3 version id is its dot's ([`Dot::version_id`]), so it is the same on every
//! coordinator. After every change to a key its stored versions are arranged by
//! [`VersionSet::resolve`]: the winner is the current version (in `objects`, or a delete marker
//! at the head of `versions`), every other version (concurrent losers, then superseded ones)
//! stays as a non-current version; nothing is dropped. Versions without replication identity
//! (written before replication was on) stay behind them, in their order.
//!
//! Hints (`rep_hints`): one record per (owner that lacks a version, version), written in the
//! transaction that stores the version, removed when the owner confirmed it durable.

use std::sync::{Arc, Mutex};

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::vv::{Dot, Hlc, Version, VersionSet, VersionVector};
use super::NodeId;
use crate::chunks::ChunkId;
use crate::db::{ReadTable as _, Schema, Tx};
use crate::object::meta::*;
use crate::object::pins::Pins;
use crate::object::types::WriteCondition;
use crate::object::types::{valid_bucket_name, ObjectInfo, ObjectMeta, SYSTEM_BUCKET};
use crate::object::versions::{ver_key, versions_of};
use crate::object::writer::PutWriter;
use crate::object::writer::{Installer, Prepared};
use crate::object::Store;
use crate::StorageError;

/// `bucket/key` NUL version id -> [`RepRec`] (json).
const REP_VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("rep_versions");
/// `owner (16 hex)` NUL version id NUL bucket NUL key -> empty: hinted handoffs.
const REP_HINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rep_hints");
/// `dot` -> the last dot counter this coordinator used.
const REP_SEQ: TableDefinition<&str, u64> = TableDefinition::new("rep_seq");

/// The replication layer's tables.
pub(crate) fn schema() -> Schema {
    let mut s = Schema::default();
    s.table(REP_VERSIONS).table(REP_HINTS).table(REP_SEQ);
    s
}

/// A version's replication identity as stored.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct RepRec {
    node: u64,
    counter: u64,
    vv: Vec<(u64, u64)>,
    wall_ms: u64,
    logical: u32,
    deleted: bool,
}

impl RepRec {
    fn of(v: &Version) -> RepRec {
        RepRec {
            node: v.dot.node.0,
            counter: v.dot.counter,
            vv: v.vv.entries().map(|(n, c)| (n.0, c)).collect(),
            wall_ms: v.clock.wall_ms,
            logical: v.clock.logical,
            deleted: v.deleted,
        }
    }

    fn version(&self) -> Version {
        let mut vv = VersionVector::new();
        for &(n, c) in &self.vv {
            vv.observe(NodeId(n), c);
        }
        Version {
            dot: Dot {
                node: NodeId(self.node),
                counter: self.counter,
            },
            vv,
            clock: Hlc {
                wall_ms: self.wall_ms,
                logical: self.logical,
            },
            deleted: self.deleted,
        }
    }
}

/// How the driver stamps a version made here.
#[derive(Debug, Clone)]
pub struct Stamp {
    /// This coordinator.
    pub node: NodeId,
    /// Its hybrid clock now.
    pub clock: Hlc,
    /// Causal context beyond the local versions (consistent mode: a read quorum's).
    pub context: VersionVector,
    /// Owners that get a hinted-handoff record with the version (available mode).
    pub hints: Vec<NodeId>,
}

/// One chunk of an exported version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    /// Content id.
    pub id: ChunkId,
    /// Bytes.
    pub len: u32,
    /// Kept in the metadata store (its bytes travel with the version).
    pub inline: bool,
}

/// One version as it travels between coordinators.
#[derive(Debug, Clone)]
pub struct Exported {
    /// Replication identity.
    pub version: Version,
    /// Object size (0 for a delete marker).
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    /// Modification time, ns since the epoch.
    pub modified_ns: u64,
    /// Metadata.
    pub meta: ObjectMeta,
    /// Manifest (empty for a delete marker).
    pub chunks: Vec<ChunkEntry>,
    /// The bytes of an inline chunk.
    pub inline: Option<Vec<u8>>,
}

fn rep_prefix(bucket: &str, key: &str) -> (String, String) {
    let ok = obj_key(bucket, key);
    (format!("{ok}\u{0}"), format!("{ok}\u{1}"))
}

fn rep_key(bucket: &str, key: &str, vid: &str) -> String {
    format!("{}\u{0}{vid}", obj_key(bucket, key))
}

/// One stored version of a key inside a transaction.
struct Entry {
    /// Its row in `versions` (`None`: the current version in `objects`).
    vk: Option<String>,
    vid: Option<String>,
    modified: u64,
    rec: Option<ObjRec>,
    manifest: Vec<u8>,
    version: Option<Version>,
}

/// Every stored version of `bucket/key`: the current one first, then `versions` in order.
fn load(wtx: &Tx, bucket: &str, key: &str) -> Result<Vec<Entry>, StorageError> {
    let ok = obj_key(bucket, key);
    let reps = wtx.open_table(REP_VERSIONS)?;
    let rep = |vid: &Option<String>| -> Result<Option<Version>, StorageError> {
        let Some(vid) = vid else { return Ok(None) };
        Ok(get_json::<RepRec, _>(&reps, &rep_key(bucket, key, vid))?.map(|r| r.version()))
    };
    let mut out = Vec::new();
    if let Some(rec) = get_json::<ObjRec, _>(&wtx.open_table(OBJECTS)?, &ok)? {
        let manifest = wtx
            .open_table(OBJ_CHUNKS)?
            .get(ok.as_str())?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        out.push(Entry {
            vk: None,
            vid: rec.version_id.clone(),
            modified: rec.modified,
            version: rep(&rec.version_id)?,
            rec: Some(rec),
            manifest,
        });
    }
    let vc = wtx.open_table(VER_CHUNKS)?;
    for (vk, vr) in versions_of(&wtx.open_table(VERSIONS)?, bucket, key)? {
        let manifest = vc
            .get(vk.as_str())?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        out.push(Entry {
            version: rep(&vr.version_id)?,
            vk: Some(vk),
            vid: vr.version_id,
            modified: vr.modified,
            rec: vr.rec,
            manifest,
        });
    }
    Ok(out)
}

/// Rewrites the key's rows: the resolution's current version first (in `objects` if it is an
/// object), every other version after it in `versions`. Moves rows only: references and usage
/// are unchanged.
fn arrange(wtx: &Tx, bucket: &str, key: &str, mut entries: Vec<Entry>) -> Result<(), StorageError> {
    let mut set = VersionSet::new();
    for e in &entries {
        if let Some(v) = &e.version {
            set.insert(v.clone());
        }
    }
    if set.is_empty() {
        return Ok(());
    }
    let res = set.resolve();
    let order: Vec<Dot> = res
        .current
        .into_iter()
        .chain(res.concurrent)
        .chain(res.superseded)
        .collect();
    let rank = |e: &Entry| -> usize {
        e.version
            .as_ref()
            .and_then(|v| order.iter().position(|d| *d == v.dot))
            .unwrap_or(order.len())
    };
    // Stable: versions without replication identity keep their order, after the others.
    entries.sort_by_key(|e| rank(e));
    let ok = obj_key(bucket, key);
    let mut objects = wtx.open_table(OBJECTS)?;
    let mut oc = wtx.open_table(OBJ_CHUNKS)?;
    let mut versions = wtx.open_table(VERSIONS)?;
    let mut vc = wtx.open_table(VER_CHUNKS)?;
    objects.remove(ok.as_str())?;
    oc.remove(ok.as_str())?;
    for e in &entries {
        if let Some(vk) = &e.vk {
            versions.remove(vk.as_str())?;
            vc.remove(vk.as_str())?;
        }
    }
    let n = entries.len() as u64;
    for (i, e) in entries.into_iter().enumerate() {
        match e.rec {
            Some(rec) if i == 0 => {
                put_json(&mut objects, &ok, &rec)?;
                oc.insert(ok.as_str(), e.manifest.as_slice())?;
            }
            rec => {
                // Newest first: a larger sequence sorts earlier.
                let vk = ver_key(bucket, key, (1u64 << 62) + n - i as u64);
                let vr = VerRec {
                    version_id: e.vid,
                    modified: e.modified,
                    rec,
                };
                put_json(&mut versions, &vk, &vr)?;
                vc.insert(vk.as_str(), e.manifest.as_slice())?;
            }
        }
    }
    Ok(())
}

/// What a new version brings: an object (record, manifest, inline bytes) or nothing (marker).
type Body = Option<(ObjRec, Vec<ChunkRef>, Option<Vec<u8>>)>;

/// Adds `v` (with `body`) to the key's versions unless it is there already, then arranges them.
/// Returns whether it was new. Quotas are checked before the first mutation.
#[allow(clippy::too_many_arguments)]
fn add(
    wtx: &Tx,
    max_size: Option<u64>,
    bucket: &str,
    key: &str,
    mut entries: Vec<Entry>,
    v: &Version,
    body: Body,
    modified: u64,
) -> Result<bool, StorageError> {
    if entries
        .iter()
        .any(|e| e.version.as_ref().is_some_and(|x| x.dot == v.dot))
    {
        return Ok(false);
    }
    let vid = v.dot.version_id();
    let entry = match body {
        Some((mut rec, manifest, inline)) => {
            let mut buckets = wtx.open_table(BUCKETS)?;
            let mut brec: BucketRec =
                get_json(&buckets, bucket)?.ok_or(StorageError::NoSuchBucket)?;
            let mut stats = wtx.open_table(STATS)?;
            let total = stat(&stats, "bytes")?;
            if brec.quota.is_some_and(|q| brec.bytes + rec.size > q)
                || max_size.is_some_and(|m| total + rec.size > m)
            {
                return Err(StorageError::QuotaExceeded);
            }
            if let (Some(bytes), [c]) = (&inline, manifest.as_slice()) {
                let mut data = wtx.open_table(CHUNK_DATA)?;
                if data.get(c.id.0.as_slice())?.is_none() {
                    data.insert(c.id.0.as_slice(), bytes.as_slice())?;
                }
            }
            add_refs(wtx, &manifest)?;
            brec.bytes += rec.size;
            brec.objects += 1;
            put_json(&mut buckets, bucket, &brec)?;
            stats.insert("bytes", total + rec.size)?;
            let objs = stat(&stats, "objects")?;
            stats.insert("objects", objs + 1)?;
            rec.version_id = Some(vid.clone());
            Entry {
                vk: None,
                vid: Some(vid.clone()),
                modified: rec.modified,
                rec: Some(rec),
                manifest: encode_manifest(&manifest),
                version: Some(v.clone()),
            }
        }
        None => Entry {
            vk: None,
            vid: Some(vid.clone()),
            modified,
            rec: None,
            manifest: encode_manifest(&[]),
            version: Some(v.clone()),
        },
    };
    // The current row (if any) is moved by `arrange`; a new entry has no row yet.
    entries.push(entry);
    put_json(
        &mut wtx.open_table(REP_VERSIONS)?,
        &rep_key(bucket, key, &vid),
        &RepRec::of(v),
    )?;
    arrange(wtx, bucket, key, entries)?;
    Ok(true)
}

/// Makes the version this coordinator writes now: context = `stamp.context` + every local
/// version's vector, dot above the persisted sequence (which it advances).
fn make_version(
    wtx: &Tx,
    entries: &[Entry],
    stamp: &Stamp,
    deleted: bool,
) -> Result<Version, StorageError> {
    let mut ctx = stamp.context.clone();
    for v in entries.iter().filter_map(|e| e.version.as_ref()) {
        ctx.merge(&v.vv);
    }
    let mut seq = wtx.open_table(REP_SEQ)?;
    let last = seq.get("dot")?.map(|v| v.value()).unwrap_or(0);
    let v = Version::new(&ctx, stamp.node, last, stamp.clock, deleted);
    seq.insert("dot", v.dot.counter)?;
    Ok(v)
}

/// The installer of a stamped version made here: the condition, the context, the next dot,
/// the version and its hints, in the commit's transaction; the version lands in `made`.
fn stamped(stamp: Stamp, made: Arc<Mutex<Option<Version>>>) -> Installer {
    Box::new(move |wtx, _freed, max_size, p: Prepared| {
        if p.manifest.iter().any(|c| c.seal != Seal::Plain) {
            return Err(StorageError::Unsupported(
                "encrypted objects in a replicated bucket",
            ));
        }
        check_condition(wtx, &p.bucket, &p.key, &p.cond)?;
        let entries = load(wtx, &p.bucket, &p.key)?;
        let v = make_version(wtx, &entries, &stamp, false)?;
        let mut rec = p.rec;
        rec.version_id = Some(v.dot.version_id());
        let info = rec.info(&p.key);
        let modified = rec.modified;
        add(
            wtx,
            max_size,
            &p.bucket,
            &p.key,
            entries,
            &v,
            Some((rec, p.manifest, p.inline)),
            modified,
        )?;
        write_hints(wtx, &p.bucket, &p.key, v.dot, &stamp.hints)?;
        *made.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
        Ok(info)
    })
}

fn take(made: &Mutex<Option<Version>>) -> Result<Version, StorageError> {
    made.lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or(StorageError::Unsupported(
            "replicated commit without a version",
        ))
}

/// Commits the object `w` wrote as a new replicated version made here, with hint records for
/// `stamp.hints`, in one transaction (the writer's condition is checked in it too). Sealed
/// objects are refused (`Unsupported`): another coordinator could not open them.
pub fn commit_put(mut w: PutWriter, stamp: Stamp) -> Result<(ObjectInfo, Version), StorageError> {
    if w.is_sealed() {
        return Err(StorageError::Unsupported(
            "encrypted objects in a replicated bucket",
        ));
    }
    let made: Arc<Mutex<Option<Version>>> = Arc::default();
    w.set_installer(stamped(stamp, made.clone()));
    let info = w.commit()?;
    Ok((info, take(&made)?))
}

/// Completes a multipart upload as a new replicated version made here (with its hints, in the
/// completion's transaction); otherwise as [`Store::complete_multipart_if`].
#[allow(clippy::too_many_arguments)]
pub fn commit_multipart(
    store: &Store,
    bucket: &str,
    key: &str,
    upload_id: &str,
    parts: &[(u32, String)],
    cond: WriteCondition,
    checksum: Option<String>,
    stamp: Stamp,
) -> Result<(ObjectInfo, Version), StorageError> {
    let made: Arc<Mutex<Option<Version>>> = Arc::default();
    // The condition is checked by the completion itself (before the installer runs).
    let info = store.complete_installed(
        bucket,
        key,
        upload_id,
        parts,
        cond,
        checksum,
        Some(stamped(stamp, made.clone())),
    )?;
    Ok((info, take(&made)?))
}

/// Makes a delete marker for `bucket/key` here, with hint records, in one transaction.
pub fn commit_delete(
    store: &Store,
    bucket: &str,
    key: &str,
    stamp: Stamp,
) -> Result<Version, StorageError> {
    let (bucket, key) = (bucket.to_owned(), key.to_owned());
    store.txn(move |wtx, _| {
        get_json::<BucketRec, _>(&wtx.open_table(BUCKETS)?, &bucket)?
            .ok_or(StorageError::NoSuchBucket)?;
        let entries = load(wtx, &bucket, &key)?;
        let v = make_version(wtx, &entries, &stamp, true)?;
        add(wtx, None, &bucket, &key, entries, &v, None, now_nanos())?;
        write_hints(wtx, &bucket, &key, v.dot, &stamp.hints)?;
        Ok(v)
    })
}

/// Every replicated version of `bucket/key` this coordinator holds (empty without the bucket).
pub fn versions(store: &Store, bucket: &str, key: &str) -> Result<VersionSet, StorageError> {
    let rtx = store.view()?;
    let t = rtx.open_table(REP_VERSIONS)?;
    let (lo, hi) = rep_prefix(bucket, key);
    let mut set = VersionSet::new();
    for e in t.range(lo.as_str()..hi.as_str())? {
        let (_, v) = e?;
        let r: RepRec = serde_json::from_slice(v.value())?;
        set.insert(r.version());
    }
    Ok(set)
}

/// The version `dot` of `bucket/key` with its manifest, as another coordinator applies it
/// (`None` if it is not stored here). Sealed chunks are refused (`Unsupported`).
pub fn export(
    store: &Store,
    bucket: &str,
    key: &str,
    dot: Dot,
) -> Result<Option<Exported>, StorageError> {
    let vid = dot.version_id();
    let rtx = store.view()?;
    let Some(rep) =
        get_json::<RepRec, _>(&rtx.open_table(REP_VERSIONS)?, &rep_key(bucket, key, &vid))?
    else {
        return Ok(None);
    };
    let ok = obj_key(bucket, key);
    let mut found: Option<(Option<ObjRec>, Vec<ChunkRef>, u64)> = None;
    if let Some(rec) = get_json::<ObjRec, _>(&rtx.open_table(OBJECTS)?, &ok)? {
        if rec.version_id.as_deref() == Some(vid.as_str()) {
            let m = get_manifest(&rtx.open_table(OBJ_CHUNKS)?, &ok)?;
            let modified = rec.modified;
            found = Some((Some(rec), m, modified));
        }
    }
    if found.is_none() {
        for (vk, vr) in versions_of(&rtx.open_table(VERSIONS)?, bucket, key)? {
            if vr.version_id.as_deref() == Some(vid.as_str()) {
                let m = get_manifest(&rtx.open_table(VER_CHUNKS)?, &vk)?;
                found = Some((vr.rec, m, vr.modified));
                break;
            }
        }
    }
    let Some((rec, manifest, modified)) = found else {
        return Ok(None);
    };
    if manifest.iter().any(|c| c.seal != Seal::Plain) {
        return Err(StorageError::Unsupported(
            "encrypted objects in a replicated bucket",
        ));
    }
    let mut inline = None;
    if let [c] = manifest.as_slice() {
        if c.inline {
            let data = rtx.open_table(CHUNK_DATA)?;
            let v = data
                .get(c.id.0.as_slice())?
                .ok_or_else(|| StorageError::Corrupt(format!("{:?} inline data missing", c.id)))?;
            inline = Some(v.value().to_vec());
        }
    }
    let chunks = manifest
        .iter()
        .map(|c| ChunkEntry {
            id: c.id,
            len: c.len,
            inline: c.inline,
        })
        .collect();
    let (size, etag, meta) = match rec {
        Some(r) => (r.size, r.etag, r.meta),
        None => (0, String::new(), ObjectMeta::default()),
    };
    Ok(Some(Exported {
        version: rep.version(),
        size,
        etag,
        modified_ns: modified,
        meta,
        chunks,
        inline,
    }))
}

/// The chunks of `chunks` (not inline) this store does not hold.
pub fn missing_chunks(store: &Store, chunks: &[ChunkEntry]) -> Result<Vec<ChunkId>, StorageError> {
    let cs = &store.shared().chunks;
    let mut out = Vec::new();
    for c in chunks.iter().filter(|c| !c.inline) {
        if !cs.exists(&c.id)? && !out.contains(&c.id) {
            out.push(c.id);
        }
    }
    Ok(out)
}

/// The stored bytes of chunk `id`.
pub fn read_chunk(store: &Store, id: &ChunkId) -> Result<Vec<u8>, StorageError> {
    store.shared().chunks.get(id)
}

/// Stores a chunk received from another coordinator, durably; refused (`Corrupt`) unless its
/// bytes hash to its name.
pub fn put_chunk(store: &Store, id: &ChunkId, data: &[u8]) -> Result<(), StorageError> {
    if ChunkId::of(data) != *id {
        return Err(StorageError::Corrupt(format!(
            "chunk {} does not match its content",
            id.to_hex()
        )));
    }
    store.shared().chunks.put(id, data)
}

/// Applies a version received from another coordinator (a no-op if it is stored already).
/// Refused before anything changes if a chunk it names is missing here (`Corrupt`, naming
/// it), its inline bytes do not match their id, or its sizes disagree. A bucket this
/// coordinator does not have yet is created (bucket settings are not replicated yet).
/// Returns whether the version was new.
pub fn apply(store: &Store, bucket: &str, key: &str, ex: Exported) -> Result<bool, StorageError> {
    if bucket == SYSTEM_BUCKET || !valid_bucket_name(bucket) {
        return Err(StorageError::InvalidBucketName);
    }
    crate::object::types::check_key(key)?;
    let sum: u64 = ex.chunks.iter().map(|c| u64::from(c.len)).sum();
    if !ex.version.deleted && sum != ex.size {
        return Err(StorageError::Corrupt(format!(
            "a replicated version of {bucket}/{key}: manifest size {sum} != {}",
            ex.size
        )));
    }
    let shared = store.shared().clone();
    let _g = shared.read_guard();
    let ids: Vec<ChunkId> = ex.chunks.iter().map(|c| c.id).collect();
    for id in &ids {
        shared.pin(*id);
    }
    let _pins = Pins::reading(shared.clone(), ids);
    let inline_ok = match (&ex.inline, ex.chunks.as_slice()) {
        (None, cs) => cs.iter().all(|c| !c.inline),
        (Some(b), [c]) => c.inline && ChunkId::of_inline(b) == c.id && b.len() == c.len as usize,
        _ => false,
    };
    if !inline_ok {
        return Err(StorageError::Corrupt(format!(
            "a replicated version of {bucket}/{key}: inline bytes do not match the manifest"
        )));
    }
    if let Some(m) = missing_chunks(store, &ex.chunks)?.first() {
        return Err(StorageError::Corrupt(format!(
            "a replicated version of {bucket}/{key} names the missing chunk {}",
            m.to_hex()
        )));
    }
    let (bucket, key) = (bucket.to_owned(), key.to_owned());
    let max_size = store.max_size();
    store.txn(move |wtx, _| {
        ensure_bucket(wtx, &bucket)?;
        let entries = load(wtx, &bucket, &key)?;
        let body = (!ex.version.deleted).then(|| {
            let manifest = ex
                .chunks
                .iter()
                .map(|c| ChunkRef {
                    id: c.id,
                    len: c.len,
                    inline: c.inline,
                    seal: Seal::Plain,
                })
                .collect();
            let rec = ObjRec {
                size: ex.size,
                etag: ex.etag.clone(),
                modified: ex.modified_ns,
                meta: ex.meta.clone(),
                version_id: None,
            };
            (rec, manifest, ex.inline.clone())
        });
        add(
            wtx,
            max_size,
            &bucket,
            &key,
            entries,
            &ex.version,
            body,
            ex.modified_ns,
        )
    })
}

fn ensure_bucket(wtx: &Tx, bucket: &str) -> Result<(), StorageError> {
    let mut t = wtx.open_table(BUCKETS)?;
    if get_json::<BucketRec, _>(&t, bucket)?.is_none() {
        let rec = BucketRec {
            created: now_nanos(),
            quota: None,
            bytes: 0,
            objects: 0,
            versioning: None,
            tags: Vec::new(),
        };
        put_json(&mut t, bucket, &rec)?;
    }
    Ok(())
}

/// Every key with replicated versions here for which `keep(bucket, key)` holds, with its
/// versions (anti-entropy; a scan of `rep_versions`).
pub fn replicated_keys(
    store: &Store,
    keep: impl Fn(&str, &str) -> bool,
) -> Result<Vec<(String, String, VersionSet)>, StorageError> {
    let rtx = store.view()?;
    let t = rtx.open_table(REP_VERSIONS)?;
    let mut out: Vec<(String, String, VersionSet)> = Vec::new();
    for e in t.range::<&str>(..)? {
        let (k, v) = e?;
        let Some((ok, _vid)) = k.value().rsplit_once('\u{0}') else {
            continue;
        };
        let Some((bucket, key)) = ok.split_once('/') else {
            continue;
        };
        if !keep(bucket, key) {
            continue;
        }
        let r: RepRec = serde_json::from_slice(v.value())?;
        match out.last_mut() {
            Some((b, k, set)) if b == bucket && k == key => {
                set.insert(r.version());
            }
            _ => {
                let mut set = VersionSet::new();
                set.insert(r.version());
                out.push((bucket.to_owned(), key.to_owned(), set));
            }
        }
    }
    Ok(out)
}

mod hints;
use hints::write_hints;
pub use hints::{add_hint, clear_hint, figures, hints, hints_for, Figures, Hint};

#[cfg(test)]
mod tests;
