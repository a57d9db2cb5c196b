//! The GC protocol's shared state: the chunk backend, the GC lock and chunk pins.
//!
//! GC safety rule: a chunk file may be deleted only under the GC *write* lock, when it has no
//! entry in `refs` and no pin. Everything that adds references (commits of puts, parts, copies,
//! completions) and every reader pinning a manifest holds the GC *read* lock, so the GC sees a
//! state in which no reference can appear behind its back. Every chunk the object layer
//! stores goes through [`Pins`] (pinned first, then `ChunkStore::put`/`put_deferred`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::meta::ChunkRef;
#[cfg(test)]
use super::types::DEFAULT_CHUNK_SIZE;
use crate::chunks::{ChunkId, ChunkStore};
use crate::StorageError;

/// State shared by the store, its writers and its readers (readers do not keep the DB open).
pub(crate) struct Shared {
    pub chunks: Arc<dyn ChunkStore>,
    pub chunk_size: u32,
    pub(super) gc_lock: RwLock<()>,
    pub(super) pins: Mutex<HashMap<ChunkId, u32>>,
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
        })
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

/// Chunks pinned by one writer or reader; unpinned on drop.
pub(crate) struct Pins {
    pub shared: Arc<Shared>,
    pub ids: Vec<ChunkId>,
}

impl Drop for Pins {
    fn drop(&mut self) {
        self.shared.unpin(&self.ids);
    }
}

impl Pins {
    /// Hash, pin and durably store one chunk.
    pub fn put_chunk(&mut self, data: &[u8]) -> Result<ChunkRef, StorageError> {
        self.store_chunk(data, false)
    }

    /// Like `put_chunk`, but the chunk is durable only after `ChunkStore::sync` of its id.
    pub fn put_chunk_deferred(&mut self, data: &[u8]) -> Result<ChunkRef, StorageError> {
        self.store_chunk(data, true)
    }

    fn store_chunk(&mut self, data: &[u8], deferred: bool) -> Result<ChunkRef, StorageError> {
        let id = ChunkId::of(data);
        let len = u32::try_from(data.len()).expect("chunk length fits u32 (chunk_size is u32)");
        let _g = self.shared.read_guard();
        self.shared.pin(id);
        self.ids.push(id);
        if deferred {
            self.shared.chunks.put_deferred(&id, data)?;
        } else {
            self.shared.chunks.put(&id, data)?;
        }
        Ok(ChunkRef {
            id,
            len,
            inline: false,
        })
    }
}
