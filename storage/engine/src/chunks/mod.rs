//! Layer 2, chunk stores: content-addressed chunk backends behind one trait, [`ChunkStore`].
//!
//! A chunk is an immutable byte string named by its BLAKE3 hash ([`ChunkId`]). Backends only store
//! and fetch bytes; reference counting, pinning and garbage collection live in the object layer.
//! Backends: local files ([`FsChunkStore`], `local.rs`: a chunk becomes durable in
//! `make_durable` there and nowhere else), an S3-compatible object store (`remote.rs`, feature
//! `remote`: durable when the remote answers the PUT) and memory ([`MemChunkStore`], tests).
//! Imports nothing of the engine but the error type.

mod local;
#[cfg(feature = "remote")]
pub mod remote;
pub mod seal;

pub use local::FsChunkStore;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::sync::Mutex;

use crate::StorageError;

/// BLAKE3 hash of a chunk's bytes; the chunk's name in every backend.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hash `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// The id of a chunk kept inline in the metadata store: a hash of `data` in its own domain,
    /// so it never names a chunk file. (A shared name made an aborted writer's file of the same
    /// bytes look referenced by the inline copy, and it stayed on disk.)
    pub fn of_inline(data: &[u8]) -> ChunkId {
        let mut h = blake3::Hasher::new_derive_key("tunnelmesh 2026 inline chunk id");
        h.update(data);
        ChunkId(*h.finalize().as_bytes())
    }

    /// Lowercase hex form (64 chars).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parse the 64-char hex form.
    pub fn from_hex(s: &str) -> Option<ChunkId> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
        }
        Some(ChunkId(out))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chunk:{}", &self.to_hex()[..16])
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

pub(crate) fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A chunk backend. Methods are synchronous; async callers use `spawn_blocking`.
///
/// Contract: `put` is idempotent and durable when it returns (a later crash never loses the chunk);
/// `get` returns exactly the bytes that were put (backends verify the hash); `delete` of a missing
/// chunk is not an error. The engine never calls `delete` on a chunk that is referenced or pinned.
pub trait ChunkStore: Send + Sync + 'static {
    /// Store `data` under `id` (= `ChunkId::of(data)`), durably.
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StorageError>;
    /// Like `put`, but the chunk need only be durable once [`ChunkStore::sync`] of its id has
    /// returned (lets a writer overlap the next chunk with this one's flush). The default is
    /// `put` (already durable; `sync` is then a no-op).
    fn put_deferred(&self, id: &ChunkId, data: &[u8]) -> Result<(), StorageError> {
        self.put(id, data)
    }
    /// Make a chunk stored with `put_deferred` durable.
    fn sync(&self, _id: &ChunkId) -> Result<(), StorageError> {
        Ok(())
    }
    /// Fetch a whole chunk, verifying its hash.
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, StorageError>;
    /// Read up to `buf.len()` bytes of the chunk starting at `offset`; returns the count (0 at end).
    fn read_at(&self, id: &ChunkId, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        Ok(copy_at(&self.get(id)?, offset, buf))
    }
    /// The chunk as a local file open for reading, for zero-copy reads (`sendfile`). The
    /// default is None: the backend has no local files and callers copy through
    /// [`ChunkStore::read_at`]. A returned file is the stored chunk (not hash-verified here).
    fn open_file(&self, _id: &ChunkId) -> Result<Option<File>, StorageError> {
        Ok(None)
    }
    /// Remove a chunk (missing is fine).
    fn delete(&self, id: &ChunkId) -> Result<(), StorageError>;
    /// Whether the chunk is stored.
    fn exists(&self, id: &ChunkId) -> Result<bool, StorageError>;
    /// Call `f` for every stored chunk.
    fn list(&self, f: &mut dyn FnMut(ChunkId)) -> Result<(), StorageError>;
    /// Remove leftovers of interrupted `put`s (and files that are not where their name says).
    /// Called by GC while no `put` is running.
    fn cleanup_temp(&self) -> Result<u64, StorageError> {
        Ok(0)
    }
}

/// In-memory backend for tests and fakes (not durable).
#[derive(Default)]
pub struct MemChunkStore {
    chunks: Mutex<HashMap<ChunkId, Vec<u8>>>,
}

impl MemChunkStore {
    /// Empty store.
    pub fn new() -> MemChunkStore {
        MemChunkStore::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, Vec<u8>>> {
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ChunkStore for MemChunkStore {
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StorageError> {
        self.map().entry(*id).or_insert_with(|| data.to_vec());
        Ok(())
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, StorageError> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| StorageError::Corrupt(format!("{id:?} missing")))
    }

    fn delete(&self, id: &ChunkId) -> Result<(), StorageError> {
        self.map().remove(id);
        Ok(())
    }

    fn exists(&self, id: &ChunkId) -> Result<bool, StorageError> {
        Ok(self.map().contains_key(id))
    }

    fn list(&self, f: &mut dyn FnMut(ChunkId)) -> Result<(), StorageError> {
        let ids: Vec<ChunkId> = self.map().keys().copied().collect();
        ids.into_iter().for_each(f);
        Ok(())
    }
}

/// Copies the part of a whole chunk `data` that starts at `offset` into `buf`; returns the
/// count (0 at or past the end). The `read_at` of backends that fetch whole chunks.
pub(crate) fn copy_at(data: &[u8], offset: u64, buf: &mut [u8]) -> usize {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let n = buf.len().min(data.len() - start);
    buf[..n].copy_from_slice(&data[start..start + n]);
    n
}
