//! The GC protocol's shared state: the chunk backend, the GC lock and chunk pins.
//!
//! GC safety rule: a chunk file may be deleted only under the GC *write* lock, when it has no
//! entry in `refs` and no pin. Everything that adds references (commits of puts, parts, copies,
//! completions) and every reader pinning a manifest holds the GC *read* lock, so the GC sees a
//! state in which no reference can appear behind its back. Every chunk the object layer
//! stores goes through [`Pins`] (pinned first, then `ChunkStore::put`/`put_deferred`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::meta::{ChunkRef, Seal};
#[cfg(test)]
use super::types::DEFAULT_CHUNK_SIZE;
use crate::chunks::seal::Sealer;
use crate::chunks::{ChunkId, ChunkStore};
use crate::StorageError;

/// State shared by the store, its writers and its readers (readers do not keep the DB open).
pub(crate) struct Shared {
    pub chunks: Arc<dyn ChunkStore>,
    pub chunk_size: u32,
    pub(super) gc_lock: RwLock<()>,
    pub(super) pins: Mutex<HashMap<ChunkId, u32>>,
    /// Wraps SSE-S3 data keys (from the master key; None without one).
    pub(crate) wrap: Option<Arc<Sealer>>,
    /// The node's chunk key (from the master key; None without one): opens `Seal::Node` chunks.
    pub(crate) node: Option<Arc<Sealer>>,
    /// Seal every new chunk that has no object key with `node` (`StoreConfig::encrypt_all`).
    pub(crate) seal_all: bool,
}

impl Shared {
    /// A bare instance over `chunks` (unit tests of readers without a database).
    #[cfg(test)]
    pub fn for_test(chunks: Arc<dyn ChunkStore>) -> Arc<Shared> {
        Arc::new(Shared {
            chunks,
            chunk_size: DEFAULT_CHUNK_SIZE,
            gc_lock: RwLock::new(()),
            pins: Mutex::new(HashMap::new()),
            wrap: None,
            node: None,
            seal_all: false,
        })
    }

    /// How a new chunk without an object key is sealed: with the node key when every chunk
    /// is sealed, else not at all.
    pub fn default_seal(&self) -> Option<(Seal, Arc<Sealer>)> {
        if self.seal_all {
            self.node.clone().map(|s| (Seal::Node, s))
        } else {
            None
        }
    }

    pub fn read_guard(&self) -> RwLockReadGuard<'_, ()> {
        self.gc_lock.read().unwrap_or_else(|p| p.into_inner())
    }
    pub(super) fn write_guard(&self) -> RwLockWriteGuard<'_, ()> {
        self.gc_lock.write().unwrap_or_else(|p| p.into_inner())
    }
    pub(super) fn pins(&self) -> MutexGuard<'_, HashMap<ChunkId, u32>> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Pin `id`; caller holds the GC read lock.
    pub fn pin(&self, id: ChunkId) {
        *self.pins().entry(id).or_insert(0) += 1;
    }
    pub fn unpin(&self, ids: &[ChunkId]) {
        let mut pins = self.pins();
        for id in ids {
            if let Some(n) = pins.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(id);
                }
            }
        }
    }
}

/// Chunks pinned by one writer or reader; unpinned on drop. A writer's chunks are sealed
/// with `seal` (the object's data key, or the node key; none: stored as is).
pub(crate) struct Pins {
    pub shared: Arc<Shared>,
    pub ids: Vec<ChunkId>,
    pub seal: Option<(Seal, Arc<Sealer>)>,
}

impl Drop for Pins {
    fn drop(&mut self) {
        self.shared.unpin(&self.ids);
    }
}

impl Pins {
    /// Pins of a writer of chunks without an object key (sealed as the store says).
    pub fn new(shared: Arc<Shared>) -> Pins {
        let seal = shared.default_seal();
        Pins {
            shared,
            ids: Vec::new(),
            seal,
        }
    }

    /// Pins of a reader of `ids` (already pinned by the caller).
    pub fn reading(shared: Arc<Shared>, ids: Vec<ChunkId>) -> Pins {
        Pins {
            shared,
            ids,
            seal: None,
        }
    }

    /// `data` as an inline chunk (kept in the metadata store), sealed like this writer's
    /// chunks: its manifest entry and the bytes to store.
    pub fn inline_chunk(&self, data: &[u8]) -> Result<(ChunkRef, Vec<u8>), StorageError> {
        let (c, b) = super::sse::seal_chunk(self.seal.as_ref(), data, true)?;
        Ok((c, b.into_owned()))
    }

    /// Hash, pin and durably store one chunk.
    pub fn put_chunk(&mut self, data: &[u8]) -> Result<ChunkRef, StorageError> {
        self.store_chunk(data, false)
    }

    /// Like `put_chunk`, but the chunk is durable only after `ChunkStore::sync` of its id.
    pub fn put_chunk_deferred(&mut self, data: &[u8]) -> Result<ChunkRef, StorageError> {
        self.store_chunk(data, true)
    }

    fn store_chunk(&mut self, data: &[u8], deferred: bool) -> Result<ChunkRef, StorageError> {
        let (c, stored) = super::sse::seal_chunk(self.seal.as_ref(), data, false)?;
        let id = c.id;
        let _g = self.shared.read_guard();
        self.shared.pin(id);
        self.ids.push(id);
        if deferred {
            self.shared.chunks.put_deferred(&id, &stored)?;
        } else {
            self.shared.chunks.put(&id, &stored)?;
        }
        Ok(c)
    }
}
