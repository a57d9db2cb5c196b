//! Write-back buffer of the file-system view: NFS UNSTABLE writes staged in memory until COMMIT
//! (or a flush trigger) applies them to the store.
//!
//! It hangs off the [`crate::Store`] (one per store, its staging hook, shared by every clone and every
//! [`crate::FileSystem`] over it), so every read of an object through the store — S3 GET/HEAD,
//! list, copy, NFS READ — first applies the staged writes of that object (the store calls
//! its `Staging` hook, implemented in `stage.rs`):
//! a write is visible to everybody as soon as it is acknowledged, and durable at COMMIT.
//!
//! Locks: the map lock is taken before an inode's `state` lock and never while holding a
//! `flush` lock; `flush` (one per inode) serialises the flushes of an inode so staged writes are
//! applied in order; `state` is held only for memory operations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::FsError;

/// Staged writes of one inode.
#[derive(Default)]
pub(crate) struct Dirty {
    /// (offset, bytes) in arrival order; adjacent appends are coalesced.
    pub extents: Vec<(u64, Vec<u8>)>,
    /// Bytes in `extents`.
    pub bytes: usize,
    /// Highest end offset staged since the inode was last clean.
    pub end: u64,
    /// Time (ns since the epoch) of the last staged write.
    pub mtime: u64,
    /// When the oldest unapplied write arrived.
    pub since: Option<Instant>,
    /// Extents taken by a flush that has not finished yet.
    pub flushing: bool,
    /// A background flush failed: reported by the next stage or flush.
    pub error: Option<FsError>,
    /// Removed from the map: stage again through the map.
    pub dead: bool,
    /// Journal sequence number of the last write in `extents` (`journal.rs`).
    pub seq: u64,
}

impl Dirty {
    /// Whether the size/time overlay applies (writes staged or being applied).
    pub fn overlays(&self) -> bool {
        !self.extents.is_empty() || self.flushing
    }
}

/// One inode with staged writes.
pub(crate) struct InoBuf {
    /// `bucket/key` of the object the writes go to (kept current by rename, which flushes).
    pub key: Mutex<String>,
    pub flush: Mutex<()>,
    pub state: Mutex<Dirty>,
}

#[derive(Default)]
struct Map {
    by_ino: HashMap<u64, Arc<InoBuf>>,
    by_key: HashMap<String, u64>,
}

/// Every staged write of a store.
#[derive(Default)]
pub(crate) struct WriteBack {
    map: Mutex<Map>,
    /// Number of inodes in the map (lets readers skip the lock when nothing is staged).
    inodes: AtomicUsize,
    /// Bytes staged and not yet taken by a flush.
    pub total: AtomicUsize,
    /// Empty buffers of applied extents, for reuse by large staged writes.
    pool: Mutex<Vec<Vec<u8>>>,
    /// The journal of staged writes, opened (and replayed) by the first `FileSystem::new`.
    pub journal: std::sync::OnceLock<super::journal::Journal>,
    /// Serialises opening the journal.
    pub journal_init: Mutex<()>,
}

/// Most buffers kept for reuse.
const POOL_MAX: usize = 64;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WriteBack {
    /// Whether nothing is staged (one atomic load).
    pub fn is_empty(&self) -> bool {
        self.inodes.load(Ordering::Acquire) == 0
    }

    /// An empty buffer with room for at least `cap` bytes (recycled when possible).
    pub fn buffer(&self, cap: usize) -> Vec<u8> {
        let mut pool = lock(&self.pool);
        if let Some(i) = pool.iter().rposition(|b| b.capacity() >= cap) {
            return pool.swap_remove(i);
        }
        drop(pool);
        Vec::with_capacity(cap)
    }

    /// Keep the large buffers of applied extents for reuse.
    pub fn recycle(&self, extents: Vec<(u64, Vec<u8>)>) {
        let mut pool = lock(&self.pool);
        for (_, mut b) in extents {
            if b.capacity() >= 64 << 10 && pool.len() < POOL_MAX {
                b.clear();
                pool.push(b);
            }
        }
    }

    /// Number of inodes with a buffer.
    pub fn len(&self) -> usize {
        self.inodes.load(Ordering::Acquire)
    }

    /// The buffer of `ino`, if it has one.
    pub fn get(&self, ino: u64) -> Option<Arc<InoBuf>> {
        if self.is_empty() {
            return None;
        }
        lock(&self.map).by_ino.get(&ino).cloned()
    }

    /// Run `f` on the live state of `ino`'s buffer (created for `key` if missing).
    pub fn with_state<T>(&self, ino: u64, key: &str, f: impl FnOnce(&mut Dirty) -> T) -> T {
        let mut f = Some(f);
        loop {
            let b = {
                let mut m = lock(&self.map);
                match m.by_ino.get(&ino) {
                    Some(b) => b.clone(),
                    None => {
                        let b = Arc::new(InoBuf {
                            key: Mutex::new(key.to_string()),
                            flush: Mutex::new(()),
                            state: Mutex::new(Dirty::default()),
                        });
                        m.by_ino.insert(ino, b.clone());
                        m.by_key.insert(key.to_string(), ino);
                        self.inodes.store(m.by_ino.len(), Ordering::Release);
                        b
                    }
                }
            };
            let mut d = lock(&b.state);
            if d.dead {
                continue;
            }
            return (f.take().expect("called once"))(&mut d);
        }
    }

    /// Inodes whose object key is `key` (exact) or, with `prefix`, starts with `key`.
    pub fn inodes_at(&self, key: &str, prefix: bool) -> Vec<u64> {
        if self.is_empty() {
            return Vec::new();
        }
        let m = lock(&self.map);
        if !prefix {
            return m.by_key.get(key).copied().into_iter().collect();
        }
        m.by_key
            .iter()
            .filter(|(k, _)| k.starts_with(key))
            .map(|(_, i)| *i)
            .collect()
    }

    /// Every inode with a buffer.
    pub fn all(&self) -> Vec<(u64, Arc<InoBuf>)> {
        if self.is_empty() {
            return Vec::new();
        }
        lock(&self.map)
            .by_ino
            .iter()
            .map(|(i, b)| (*i, b.clone()))
            .collect()
    }

    /// The object of `ino` is now `key` (after a rename).
    pub fn rekey(&self, ino: u64, key: String) {
        let mut m = lock(&self.map);
        let Some(b) = m.by_ino.get(&ino).cloned() else {
            return;
        };
        let mut k = lock(&b.key);
        if m.by_key.get(&*k) == Some(&ino) {
            m.by_key.remove(&*k);
        }
        m.by_key.insert(key.clone(), ino);
        *k = key;
    }

    /// Forget `ino`'s buffer if it is clean (nothing staged, no flush running, no error), or
    /// unconditionally with `discard` (its file is gone). Caller holds no `state` lock.
    pub fn retire(&self, ino: u64, discard: bool) {
        let mut m = lock(&self.map);
        let Some(b) = m.by_ino.get(&ino).cloned() else {
            return;
        };
        let mut d = lock(&b.state);
        if !discard && (d.overlays() || d.error.is_some()) {
            return;
        }
        self.total.fetch_sub(d.bytes, Ordering::Relaxed);
        if discard && !d.extents.is_empty() {
            if let Some(j) = self.journal.get() {
                j.done(ino, d.seq);
            }
        }
        d.extents.clear();
        d.bytes = 0;
        d.dead = true;
        drop(d);
        m.by_ino.remove(&ino);
        let k = lock(&b.key).clone();
        if m.by_key.get(&k) == Some(&ino) {
            m.by_key.remove(&k);
        }
        self.inodes.store(m.by_ino.len(), Ordering::Release);
    }
}
