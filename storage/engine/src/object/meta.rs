//! Metadata schema in redb: table definitions, records, and the in-transaction helpers.
//!
//! Tables (all keys are UTF-8 strings unless noted):
//! - `buckets`: name -> [`BucketRec`] (json), including the bucket's exact usage.
//! - `objects`: `bucket/key` -> [`ObjRec`] (json); `obj_chunks`: same key -> manifest (binary).
//! - `refs`: chunk id (32 bytes) -> reference count (> 0; zero entries are removed).
//! - `uploads`: upload id -> [`UploadRec`]; `parts` / `part_chunks`: `uploadid/00042` -> part.
//! - `creds`: access key -> [`CredRec`]; `stats`: "bytes" / "objects" -> global usage.
//! - `chunk_data`: chunk id -> bytes of small inline chunks (see [`INLINE_MAX`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use redb::TableDefinition;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::types::{ObjectInfo, ObjectMeta, WriteCondition};
use crate::chunks::{hex, ChunkId};
use crate::db::{ReadTable, Schema, TableW, Tx};
use crate::StorageError;

pub(crate) const BUCKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("buckets");
pub(crate) const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
pub(crate) const OBJ_CHUNKS: TableDefinition<&str, &[u8]> = TableDefinition::new("obj_chunks");
pub(crate) const REFS: TableDefinition<&[u8], u64> = TableDefinition::new("refs");
pub(crate) const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
pub(crate) const PARTS: TableDefinition<&str, &[u8]> = TableDefinition::new("parts");
pub(crate) const PART_CHUNKS: TableDefinition<&str, &[u8]> = TableDefinition::new("part_chunks");
pub(crate) const CREDS: TableDefinition<&str, &[u8]> = TableDefinition::new("creds");
pub(crate) const STATS: TableDefinition<&str, u64> = TableDefinition::new("stats");
pub(crate) const CHUNK_DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chunk_data");
pub(crate) const VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("versions");
pub(crate) const VER_CHUNKS: TableDefinition<&str, &[u8]> = TableDefinition::new("ver_chunks");

/// The object layer's tables, and the system bucket created with them.
pub(crate) fn schema() -> Schema {
    let mut s = Schema::default();
    s.table(BUCKETS)
        .table(OBJECTS)
        .table(OBJ_CHUNKS)
        .table(REFS)
        .table(UPLOADS)
        .table(PARTS)
        .table(PART_CHUNKS)
        .table(CREDS)
        .table(STATS)
        .table(CHUNK_DATA)
        .table(VERSIONS)
        .table(VER_CHUNKS)
        .on_create(create_system_bucket);
    s
}

fn create_system_bucket(wtx: &redb::WriteTransaction) -> Result<(), StorageError> {
    use redb::ReadableTable as _;
    let mut buckets = wtx.open_table(BUCKETS)?;
    if buckets.get(super::types::SYSTEM_BUCKET)?.is_none() {
        let rec = BucketRec {
            created: now_nanos(),
            quota: None,
            bytes: 0,
            objects: 0,
            versioning: None,
            tags: Vec::new(),
        };
        buckets.insert(
            super::types::SYSTEM_BUCKET,
            serde_json::to_vec(&rec)?.as_slice(),
        )?;
    }
    Ok(())
}

/// Single-chunk objects up to this size keep their bytes in the metadata store (`chunk_data`,
/// refcounted like files): a small PUT then costs one group-committed fsync, not three.
pub const INLINE_MAX: usize = 16 * 1024;
const INLINE_FLAG: u32 = 1 << 31;
const OBJECT_SEAL_FLAG: u32 = 1 << 30;
const NODE_SEAL_FLAG: u32 = 1 << 29;
/// Chunk lengths are below this (the high bits of a manifest length are flags).
pub(crate) const MAX_CHUNK_LEN: u32 = NODE_SEAL_FLAG;

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct BucketRec {
    pub created: u64,
    pub quota: Option<u64>,
    pub bytes: u64,
    pub objects: u64,
    /// `Enabled` / `Suspended`; absent: never versioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versioning: Option<String>,
    /// The bucket's tags (S3 bucket tagging), in the order set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct ObjRec {
    pub size: u64,
    pub etag: String,
    pub modified: u64,
    pub meta: ObjectMeta,
    /// Version id (versioned buckets); absent: the `null` version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

/// A noncurrent version (`rec`) or a delete marker (`rec: None`) in `versions`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct VerRec {
    pub version_id: Option<String>,
    pub modified: u64,
    pub rec: Option<ObjRec>,
}

impl ObjRec {
    pub fn info(&self, key: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size: self.size,
            etag: self.etag.clone(),
            modified: from_nanos(self.modified),
            meta: self.meta.clone(),
            version_id: self.version_id.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct UploadRec {
    pub bucket: String,
    pub key: String,
    pub initiated: u64,
    pub meta: ObjectMeta,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct PartRec {
    pub size: u64,
    pub etag: String,
    pub modified: u64,
    /// Verified checksum, `ALGORITHM:base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct CredRec {
    pub secret: String,
    pub principal: String,
}

/// One entry of an object manifest: a chunk and how many bytes of the object it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
    /// Bytes live in `chunk_data`, not in the chunk backend.
    pub inline: bool,
    /// Whether (and with which key) the stored bytes are sealed; `len` is the plaintext length.
    pub seal: Seal,
}

/// How a chunk's stored bytes are sealed (`crate::chunks::seal`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Seal {
    /// Stored as is.
    #[default]
    Plain,
    /// With the object's data key (SSE-S3, SSE-C).
    Object,
    /// With the node's chunk key (`StoreConfig::encrypt_all`).
    Node,
}

const REF_BYTES: usize = 36;

pub(crate) fn encode_manifest(m: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() * REF_BYTES);
    for c in m {
        out.extend_from_slice(&c.id.0);
        let seal = match c.seal {
            Seal::Plain => 0,
            Seal::Object => OBJECT_SEAL_FLAG,
            Seal::Node => NODE_SEAL_FLAG,
        };
        let len = c.len | seal | if c.inline { INLINE_FLAG } else { 0 };
        out.extend_from_slice(&len.to_le_bytes());
    }
    out
}

pub(crate) fn decode_manifest(b: &[u8]) -> Result<Vec<ChunkRef>, StorageError> {
    let entries = b.chunks_exact(REF_BYTES);
    if !entries.remainder().is_empty() {
        return Err(StorageError::Corrupt("manifest length".into()));
    }
    Ok(entries
        .map(|c| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&c[..32]);
            let mut len = [0u8; 4];
            len.copy_from_slice(&c[32..]);
            let len = u32::from_le_bytes(len);
            ChunkRef {
                id: ChunkId(id),
                len: len & (MAX_CHUNK_LEN - 1),
                inline: len & INLINE_FLAG != 0,
                seal: if len & OBJECT_SEAL_FLAG != 0 {
                    Seal::Object
                } else if len & NODE_SEAL_FLAG != 0 {
                    Seal::Node
                } else {
                    Seal::Plain
                },
            }
        })
        .collect())
}

pub(crate) fn now_nanos() -> u64 {
    to_nanos(SystemTime::now())
}

pub(crate) fn to_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

pub(crate) fn obj_key(bucket: &str, key: &str) -> String {
    let mut s = String::with_capacity(bucket.len() + 1 + key.len());
    s.push_str(bucket);
    s.push('/');
    s.push_str(key);
    s
}

pub(crate) fn part_key(upload_id: &str, number: u32) -> String {
    format!("{upload_id}/{number:05}")
}

pub(crate) fn get_json<T, Tb>(t: &Tb, k: &str) -> Result<Option<T>, StorageError>
where
    T: DeserializeOwned,
    Tb: ReadTable<&'static str, &'static [u8]>,
{
    match t.get(k)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

pub(crate) fn put_json<T: Serialize>(
    t: &mut TableW<'_, &'static str, &'static [u8]>,
    k: &str,
    v: &T,
) -> Result<(), StorageError> {
    let bytes = serde_json::to_vec(v)?;
    t.insert(k, bytes.as_slice())?;
    Ok(())
}

pub(crate) fn get_manifest<Tb>(t: &Tb, k: &str) -> Result<Vec<ChunkRef>, StorageError>
where
    Tb: ReadTable<&'static str, &'static [u8]>,
{
    match t.get(k)? {
        Some(v) => decode_manifest(v.value()),
        None => Ok(Vec::new()),
    }
}

/// Increment the reference count of every chunk in `m`.
pub(crate) fn add_refs(wtx: &Tx, m: &[ChunkRef]) -> Result<(), StorageError> {
    let mut refs = wtx.open_table(REFS)?;
    for c in m {
        let n = refs.get(c.id.0.as_slice())?.map(|v| v.value()).unwrap_or(0);
        refs.insert(c.id.0.as_slice(), n + 1)?;
    }
    Ok(())
}

/// Decrement reference counts; chunks reaching zero are pushed to `freed`.
pub(crate) fn drop_refs(
    wtx: &Tx,
    m: &[ChunkRef],
    freed: &mut Vec<ChunkId>,
) -> Result<(), StorageError> {
    let mut refs = wtx.open_table(REFS)?;
    let mut data = wtx.open_table(CHUNK_DATA)?;
    for c in m {
        let n = refs.get(c.id.0.as_slice())?.map(|v| v.value()).unwrap_or(0);
        if n <= 1 {
            refs.remove(c.id.0.as_slice())?;
            data.remove(c.id.0.as_slice())?;
            freed.push(c.id);
        } else {
            refs.insert(c.id.0.as_slice(), n - 1)?;
        }
    }
    Ok(())
}

pub(crate) fn stat(t: &impl ReadTable<&'static str, u64>, k: &str) -> Result<u64, StorageError> {
    Ok(t.get(k)?.map(|v| v.value()).unwrap_or(0))
}

/// Checks `cond` against the current object at `bucket/key` (inside the write transaction, so
/// the check and the write that follows are atomic).
pub(crate) fn check_condition(
    wtx: &Tx,
    bucket: &str,
    key: &str,
    cond: &WriteCondition,
) -> Result<(), StorageError> {
    if *cond == WriteCondition::Always {
        return Ok(());
    }
    let cur: Option<ObjRec> = get_json(&wtx.open_table(OBJECTS)?, &obj_key(bucket, key))?;
    match (cond, cur) {
        (WriteCondition::IfAbsent, Some(_)) => Err(StorageError::PreconditionFailed),
        (WriteCondition::IfMatch(_), None) => Err(StorageError::NoSuchKey),
        (WriteCondition::IfMatch(e), Some(r))
            if !r.etag.eq_ignore_ascii_case(e.trim().trim_matches('"')) =>
        {
            Err(StorageError::PreconditionFailed)
        }
        _ => Ok(()),
    }
}

/// Check quotas and, if they hold, install `rec`/`manifest` as `bucket/key`, replacing (and
/// unreferencing) any previous version, and updating exact usage. Performs all checks before
/// the first mutation, so a refusal leaves the transaction untouched.
#[allow(clippy::too_many_arguments)] // one call per kind of write; a struct would only rename them
pub(crate) fn install_object(
    wtx: &Tx,
    freed: &mut Vec<ChunkId>,
    max_size: Option<u64>,
    bucket: &str,
    key: &str,
    rec: &ObjRec,
    manifest: &[ChunkRef],
    inline: Option<&[u8]>,
) -> Result<ObjectInfo, StorageError> {
    let ok = obj_key(bucket, key);
    let mut buckets = wtx.open_table(BUCKETS)?;
    let mut brec: BucketRec = get_json(&buckets, bucket)?.ok_or(StorageError::NoSuchBucket)?;
    let mut objects = wtx.open_table(OBJECTS)?;
    let old: Option<ObjRec> = get_json(&objects, &ok)?;
    let old_size = old.as_ref().map_or(0, |o| o.size);
    let new_bytes = brec.bytes - old_size + rec.size;
    if let Some(q) = brec.quota {
        if new_bytes > q && new_bytes > brec.bytes {
            return Err(StorageError::QuotaExceeded);
        }
    }
    let mut stats = wtx.open_table(STATS)?;
    let total = stat(&stats, "bytes")?;
    let new_total = total - old_size + rec.size;
    if let Some(m) = max_size {
        if new_total > m && new_total > total {
            return Err(StorageError::QuotaExceeded);
        }
    }
    // --- mutations from here on ---
    if let (Some(bytes), [c]) = (inline, manifest) {
        let mut data = wtx.open_table(CHUNK_DATA)?;
        if data.get(c.id.0.as_slice())?.is_none() {
            data.insert(c.id.0.as_slice(), bytes)?;
        }
    }
    add_refs(wtx, manifest)?;
    let mut chunks = wtx.open_table(OBJ_CHUNKS)?;
    if old.is_some() {
        let old_m = get_manifest(&chunks, &ok)?;
        drop_refs(wtx, &old_m, freed)?;
    }
    put_json(&mut objects, &ok, rec)?;
    chunks.insert(ok.as_str(), encode_manifest(manifest).as_slice())?;
    let new_objects = brec.objects + u64::from(old.is_none());
    brec.bytes = new_bytes;
    brec.objects = new_objects;
    put_json(&mut buckets, bucket, &brec)?;
    stats.insert("bytes", new_total)?;
    let objs = stat(&stats, "objects")?;
    stats.insert("objects", objs + u64::from(old.is_none()))?;
    Ok(rec.info(key))
}

/// Remove `bucket/key` if present; returns whether it existed.
pub(crate) fn remove_object(
    wtx: &Tx,
    freed: &mut Vec<ChunkId>,
    bucket: &str,
    key: &str,
) -> Result<bool, StorageError> {
    let ok = obj_key(bucket, key);
    let mut buckets = wtx.open_table(BUCKETS)?;
    let mut brec: BucketRec = get_json(&buckets, bucket)?.ok_or(StorageError::NoSuchBucket)?;
    let mut objects = wtx.open_table(OBJECTS)?;
    let Some(old) = get_json::<ObjRec, _>(&objects, &ok)? else {
        return Ok(false);
    };
    let mut chunks = wtx.open_table(OBJ_CHUNKS)?;
    let m = get_manifest(&chunks, &ok)?;
    drop_refs(wtx, &m, freed)?;
    objects.remove(ok.as_str())?;
    chunks.remove(ok.as_str())?;
    brec.bytes -= old.size;
    brec.objects -= 1;
    put_json(&mut buckets, bucket, &brec)?;
    let mut stats = wtx.open_table(STATS)?;
    let b = stat(&stats, "bytes")?;
    let o = stat(&stats, "objects")?;
    stats.insert("bytes", b - old.size)?;
    stats.insert("objects", o - 1)?;
    Ok(true)
}

/// Remove every part of an upload and the upload record itself.
pub(crate) fn remove_upload(
    wtx: &Tx,
    freed: &mut Vec<ChunkId>,
    upload_id: &str,
) -> Result<(), StorageError> {
    let lo = format!("{upload_id}/");
    let hi = format!("{upload_id}0");
    let mut parts = wtx.open_table(PARTS)?;
    let mut part_chunks = wtx.open_table(PART_CHUNKS)?;
    let mut keys = Vec::new();
    for e in parts.range(lo.as_str()..hi.as_str())? {
        let (k, _) = e?;
        keys.push(k.value().to_string());
    }
    for k in &keys {
        let m = get_manifest(&part_chunks, k)?;
        drop_refs(wtx, &m, freed)?;
        parts.remove(k.as_str())?;
        part_chunks.remove(k.as_str())?;
    }
    wtx.open_table(UPLOADS)?.remove(upload_id)?;
    Ok(())
}

/// ETag of an object whose body was rewritten in place: not an MD5 of the body, hence `-N`.
pub(crate) fn manifest_etag(m: &[ChunkRef]) -> String {
    let mut h = Md5::new();
    for c in m {
        h.update(c.id.0);
        h.update(c.len.to_le_bytes());
    }
    format!("{}-{}", hex(&h.finalize()), m.len().max(1))
}
