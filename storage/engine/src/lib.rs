//! Object store engine: chunked, content-addressed storage with transactional metadata.
//!
//! What it does: objects are cut into fixed-size chunks (default 1 MiB) named by their BLAKE3
//! hash and kept by a [`ChunkStore`] backend (local filesystem by default, `data_dir/chunks/xx/yy/`,
//! or, with the `remote` feature, an S3-compatible object store: [`Store::open_remote`], see
//! [`remote`]); everything else — buckets, object manifests, multipart uploads, quotas, exact usage, chunk
//! reference counts, S3 credentials — lives in one embedded redb database (`data_dir/meta.redb`).
//!
//! Durability: a write returns only after its chunks were written to a temp file, renamed into
//! place, and the file and its directory fsynced (`chunks/local.rs`, `make_durable`), and then
//! ONE metadata transaction was made durable: its redo
//! record written synchronously to `data_dir/meta.wal`, then its writes published in an
//! in-memory layer that checkpoints fold into redb (`db/`). Concurrent writers'
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
//!
//! # Layers
//!
//! The crate is five layers; each module directory imports only the layers below it
//! (`scripts/check-layers.sh` checks the `use crate::...` lines, rank per directory):
//!
//! ```text
//!  rank 4   fs/  file-system view for NFS          replication/  (sans-IO core + local.rs)
//!           (inodes, paths, staging; FsError)            |
//!              |                                          |
//!  rank 3   object/  Store: buckets, objects, manifests, multipart, quotas & usage,
//!           credentials, GC (`object/gc.rs`)
//!              |                        |
//!  rank 2   chunks/  ChunkStore trait:  |
//!           local files, remote S3      |
//!                                       |
//!  rank 1   db/  metadata database: redb + redo log + in-memory layer + checkpoints;
//!           typed tables registered by the layers above, replayed generically
//!
//!  rank 0   error.rs (StorageError)     crate root (lib.rs): wires the layers (Store::open)
//! ```
//!
//! Where things become durable or get deleted:
//! - a chunk: `chunks/local.rs`, `make_durable` (fsync of the chunk file, then of its
//!   directory); the remote backend's chunk is durable when S3 answers its PUT.
//! - a metadata commit: `db/commit.rs`, `commit_batch` (redo record written and synced to
//!   `meta.wal`, then published); checkpoints into redb: `db/checkpoint.rs`, `commit_to_redb`.
//! - GC decides to delete a chunk in `object/gc.rs` (`reclaim` and `Store::gc`: no `refs`
//!   entry and no pin, under the GC write lock).
//!
//! Callers (tm-s3, tm-nfs, the daemon, the benches) use the object layer's [`Store`] and the
//! file-system view's [`FileSystem`] (plus the chunk-store trait to plug in a backend); the
//! metadata database is private.
#![forbid(unsafe_code)]

mod chunks;
mod db;
mod error;
pub mod fs;
mod object;
pub mod replication;

use std::sync::Arc;

#[cfg(feature = "remote")]
pub use chunks::remote;
#[cfg(feature = "remote")]
pub use chunks::remote::{RemoteConfig, S3ChunkStore};
pub use chunks::seal::SecretKey;
pub use chunks::{ChunkId, ChunkStore, FsChunkStore, MemChunkStore};
pub use db::CommitStats;
pub use error::StorageError;
pub use fs::{
    CreateMode, DirEntry, FileAttr, FileKind, FileSystem, FsError, FsStat, ReadAhead, SetAttrs,
    ShareInfo, Squash, Staged, DEFAULT_SHARE, MAX_FILE_SIZE, NOBODY,
};
pub use object::meta::INLINE_MAX;
pub use object::reader::{ObjectReader, RangeReader, Segment};
pub use object::sse::customer_key_md5;
pub use object::types::{
    valid_bucket_name, BucketInfo, Encryption, EncryptionKey, FsckReport, GcStats, ObjectInfo,
    ObjectMeta, PartInfo, StoreConfig, UploadInfo, Usage, Versioning, WriteCondition,
    DEFAULT_CHUNK_SIZE, MAX_KEY_LEN, MAX_PART_NUMBER, MIN_PART_SIZE, SYSTEM_BUCKET,
};
pub use object::versions::{Deleted, VersionEntry};
pub use object::writer::PutWriter;
pub use object::Store;

/// Opening a store wires the layers together: the object layer's [`Store`] over a chunk store,
/// with the tables of every layer above it registered in the metadata database.
impl Store {
    /// Open (creating if needed) the store in `cfg.data_dir` with the local filesystem backend,
    /// create the system bucket, and run a GC pass.
    pub fn open(cfg: StoreConfig) -> Result<Store, StorageError> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let chunks = FsChunkStore::open(cfg.data_dir.join("chunks"))?;
        Store::open_with(cfg, Arc::new(chunks))
    }

    /// Like [`Store::open`] with another chunk backend (metadata still lives in `data_dir`).
    pub fn open_with(cfg: StoreConfig, chunks: Arc<dyn ChunkStore>) -> Result<Store, StorageError> {
        let mut extra = fs::schema();
        extra.extend(&replication::local::schema());
        Store::open_layers(cfg, chunks, &extra)
    }

    /// Like [`Store::open`], but chunks live in the S3-compatible store described by `remote`
    /// (metadata still lives in `cfg.data_dir`). Fails early if the bucket is unreachable, missing
    /// or the credentials are refused.
    #[cfg(feature = "remote")]
    pub fn open_remote(cfg: StoreConfig, remote: RemoteConfig) -> Result<Store, StorageError> {
        let chunks = S3ChunkStore::new(remote)?;
        Store::open_with(cfg, Arc::new(chunks))
    }
}
