//! Object store engine: chunked, content-addressed storage with transactional metadata.
//!
//! What it does: objects are cut into fixed-size chunks (default 1 MiB) named by their BLAKE3
//! hash and kept by a [`ChunkStore`] backend (local filesystem by default, `data_dir/chunks/xx/yy/`,
//! or, with the `remote` feature, an S3-compatible object store: [`Store::open_remote`], see
//! [`remote`]); everything else — buckets, object manifests, multipart uploads, quotas, exact usage, chunk
//! reference counts, S3 credentials — lives in one embedded redb database (`data_dir/meta.redb`).
//!
//! Durability: a write returns only after its chunks were written to a temp file, fsynced, renamed
//! and the directory fsynced, and then ONE metadata transaction was made durable: its redo
//! record written synchronously to `data_dir/meta.wal`, then its writes published in an
//! in-memory layer that checkpoints fold into redb (`wal.rs`, `mem.rs`). Concurrent writers'
//! transactions are batched by a committer thread (group commit: many puts, one log write). An
//! object becomes visible only through that commit, so a crash never exposes a partial object;
//! chunks written but never referenced are garbage (removed at [`Store::open`] and by
//! [`Store::gc`]; chunks freed by deletes/overwrites are reclaimed in the background).
//!
//! Staged writes: the file-system view ([`FileSystem::stage`], used for NFS UNSTABLE writes)
//! keeps writes in a per-store memory buffer until COMMIT ([`FileSystem::flush`]); every read
//! through the store (`open_object`, `head`, `list_objects`, `copy_object`, and `begin_put` /
//! `delete_object` before they replace or remove) applies the staged writes of that object
//! first, so an S3 client sees an acknowledged NFS write at once. Staged bytes are not durable
//! until flushed (NFS clients resend them after a restart: the write verifier changes).
//!
//! What it never does: speak HTTP/S3 or NFS, authorise anybody (the S3 layer decides who may
//! touch `_tunnelmesh`), or run async code: every method blocks (async callers use
//! `spawn_blocking`) except [`Store::put_small`], which queues a whole small object for the
//! group committer and calls back once it is durable.
//!
//! Call order: [`Store::open`] → [`Store::create_bucket`] → [`Store::begin_put`] →
//! [`PutWriter::write_all`]* → [`PutWriter::commit`] (durable when it returns) →
//! [`Store::open_object`] → [`ObjectReader::read_at`] / [`ObjectReader::range`]. Multipart:
//! [`Store::create_multipart`] → [`Store::begin_part`]/commit per part →
//! [`Store::complete_multipart`] (or [`Store::abort_multipart`]).
#![forbid(unsafe_code)]

mod chunk;
mod dbfile;
mod error;
pub mod fs;
mod mem;
mod meta;
mod reader;
#[cfg(feature = "remote")]
pub mod remote;
mod share;
mod store;
mod wal;
mod writeback;
mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use chunk::{ChunkId, ChunkStore, FsChunkStore, MemChunkStore};
pub use error::StorageError;
pub use fs::{
    CreateMode, DirEntry, FileAttr, FileKind, FileSystem, FsStat, ReadAhead, SetAttrs, Staged,
};
pub use meta::INLINE_MAX;
pub use reader::{ObjectReader, RangeReader, Segment};
#[cfg(feature = "remote")]
pub use remote::{RemoteConfig, S3ChunkStore};
pub use share::{ShareInfo, DEFAULT_SHARE};
pub use store::Store;
pub use writer::PutWriter;

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
    /// Chunk size in bytes (0 means [`DEFAULT_CHUNK_SIZE`]; at most 1 GiB). Changing it for an existing store is
    /// allowed: manifests record each chunk's length.
    pub chunk_size: u32,
}

impl StoreConfig {
    /// Defaults: no global cap, 1 MiB chunks.
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            max_size: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
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

/// Group-commit counters since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Metadata write transactions committed (one fsync each).
    pub transactions: u64,
    /// Operations carried by them.
    pub operations: u64,
}

/// Consistency report from [`Store::fsck`]; all problem counters are 0 on a healthy store.
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
