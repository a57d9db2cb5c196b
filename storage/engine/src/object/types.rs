//! Public types of the object layer: configuration, object/bucket/upload descriptions,
//! maintenance reports, limits and name rules.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::chunks::seal::SecretKey;
use crate::StorageError;

/// The reserved system bucket; always exists, cannot be deleted.
pub const SYSTEM_BUCKET: &str = "_tunnelmesh";
/// Default chunk size (1 MiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Minimum size of every multipart part except the last (5 MiB, as S3).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// Highest multipart part number (as S3).
pub const MAX_PART_NUMBER: u32 = 10_000;
/// Longest object key in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Where and how to store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory holding `meta.redb` and `chunks/`.
    pub data_dir: PathBuf,
    /// Global cap on the sum of all object sizes (logical bytes), if any.
    pub max_size: Option<u64>,
    /// Chunk size in bytes (0 means [`DEFAULT_CHUNK_SIZE`]; below 512 MiB). Changing it for an existing store is
    /// allowed: manifests record each chunk's length.
    pub chunk_size: u32,
    /// The node's master key: wraps the data keys of SSE-S3 objects and seals chunks when
    /// `encrypt_all` is on. Keep it outside `data_dir` (or derive it from a configured secret):
    /// a copy of the data directory alone then reads nothing encrypted. None: SSE-S3 is refused.
    pub master_key: Option<SecretKey>,
    /// Seal every chunk written from now on (objects without SSE included, NFS files, small
    /// objects kept in the metadata store) under a key derived from `master_key`: the operator
    /// of the chunk backend (e.g. a remote S3 cluster) reads nothing. Needs `master_key`.
    pub encrypt_all: bool,
}

impl StoreConfig {
    /// Defaults: no global cap, 1 MiB chunks.
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            max_size: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            master_key: None,
            encrypt_all: false,
        }
    }
}

/// Standard and user metadata stored with an object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// `Content-Disposition`.
    pub content_disposition: Option<String>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
    /// `x-amz-meta-*` pairs (names without the prefix).
    pub user: BTreeMap<String, String>,
    /// `Content-Language`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    /// `Expires` (as the client sent it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The verified checksum of the body, `ALGORITHM:base64` (e.g. `CRC32:AAAAAA==`; a
    /// multipart composite ends in `-N`). Set by the writer ([`crate::PutWriter::set_checksum`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Server-side encryption of the object (its chunks are sealed with a per-object data key).
    /// Set by the engine ([`crate::PutWriter::encrypt`], [`crate::Store::new_encryption`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<Encryption>,
    /// A completed multipart upload's part sizes, in order (S3 `partNumber` reads and
    /// `x-amz-mp-parts-count`); empty for any other object. Set by the engine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part_sizes: Vec<u64>,
    /// The version's tags (S3 object tagging), in the order set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
}

/// How an object is encrypted at rest: a random per-object data key, wrapped (sealed) by the
/// node's master key (SSE-S3) or by a key derived from the customer's key (SSE-C). The
/// customer's key itself is never stored, only its MD5 (as S3 does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// SSE-C: base64 MD5 of the customer's key; None: SSE-S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_key_md5: Option<String>,
    /// The data key sealed by the wrapping key (base64).
    pub(crate) wrapped: String,
}

/// The key a request brings for server-side encryption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncryptionKey {
    /// SSE-S3: the node's master key wraps the data key.
    Managed,
    /// SSE-C: the customer's 256-bit key wraps the data key.
    Customer(SecretKey),
}

/// A condition a write must meet, checked atomically with the write itself (S3 conditional
/// writes: `If-None-Match: *`, `If-Match: <etag>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WriteCondition {
    /// Always write.
    #[default]
    Always,
    /// Only if no object exists under the key (`PreconditionFailed` otherwise).
    IfAbsent,
    /// Only if the current object's ETag (without quotes) is this one (`PreconditionFailed`
    /// otherwise; `NoSuchKey` if there is no object).
    IfMatch(String),
}

/// What `head`/`list`/`commit` report about an object (or, from a part commit, a part).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag WITHOUT quotes: MD5 hex of the body, or `md5(part md5s)-N` for multipart (and for
    /// objects rewritten in place by `write_at`/`truncate`, `md5(chunk ids)-N`).
    pub etag: String,
    /// Last modification time.
    pub modified: SystemTime,
    /// Object metadata.
    pub meta: ObjectMeta,
    /// Version id in a versioned bucket; `None` is the `null` version (every object of an
    /// unversioned bucket).
    pub version_id: Option<String>,
}

/// A bucket's versioning state (S3 `GetBucketVersioning`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Versioning {
    /// Never enabled: one version per key, the `null` one.
    #[default]
    Unversioned,
    /// Every write creates a new version; deletes create delete markers.
    Enabled,
    /// Writes replace the `null` version; older versions are kept.
    Suspended,
}

/// A bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketInfo {
    /// Bucket name.
    pub name: String,
    /// Creation time.
    pub created: SystemTime,
    /// Byte quota, if any.
    pub quota: Option<u64>,
}

/// Exact usage: sum of object sizes and object count (multipart parts in progress not included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Logical bytes.
    pub bytes: u64,
    /// Number of objects.
    pub objects: u64,
}

/// One uploaded part of a multipart upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    /// Part number (1..=10000).
    pub number: u32,
    /// MD5 hex of the part, without quotes.
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
    /// Upload time.
    pub modified: SystemTime,
    /// The part's verified checksum, `ALGORITHM:base64`, if the client sent one.
    pub checksum: Option<String>,
}

/// A multipart upload in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadInfo {
    /// Target key.
    pub key: String,
    /// Upload id.
    pub upload_id: String,
    /// Creation time.
    pub initiated: SystemTime,
}

/// What a GC pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Unreferenced chunks removed.
    pub chunks_deleted: u64,
    /// Referenced (or pinned) chunks kept.
    pub chunks_kept: u64,
    /// Temp files of interrupted chunk writes removed.
    pub temp_deleted: u64,
}

/// Consistency report from [`super::Store::fsck`]; all problem counters are 0 on a healthy store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Objects checked.
    pub objects: u64,
    /// Distinct chunks referenced by objects and parts.
    pub chunks_referenced: u64,
    /// Referenced chunks present in the chunk backend (the rest are inline in the metadata).
    pub chunks_in_backend: u64,
    /// Referenced chunks missing from the backend.
    pub missing_chunks: u64,
    /// Chunks whose stored refcount differs from the number of manifest references.
    pub bad_refcounts: u64,
    /// Stored chunks no manifest references (garbage not yet collected).
    pub orphan_chunks: u64,
    /// Objects whose size differs from the sum of their chunk lengths.
    pub bad_sizes: u64,
    /// Buckets whose recorded usage differs from their objects (plus 1 if the global total does).
    pub bad_usage: u64,
}

/// Whether `name` is a valid S3 bucket name (3-63 chars of `a-z0-9.-`, starting and ending with a
/// letter or digit, no `..`/`.-`/`-.`, not an IPv4 address, no reserved prefixes/suffixes).
/// [`SYSTEM_BUCKET`] is not valid here: it cannot be created, it always exists.
pub fn valid_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    if !(3..=63).contains(&b.len()) {
        return false;
    }
    let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-';
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !b.iter().all(ok_char) || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return false;
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return false;
    }
    let reserved_prefix = ["xn--", "sthree-", "amzn-s3-demo-"];
    let reserved_suffix = ["-s3alias", "--ol-s3", ".mrap", "--x-s3"];
    !reserved_prefix.iter().any(|p| name.starts_with(p))
        && !reserved_suffix.iter().any(|s| name.ends_with(s))
}

pub(crate) fn check_key(key: &str) -> Result<(), StorageError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(StorageError::InvalidKey);
    }
    Ok(())
}
