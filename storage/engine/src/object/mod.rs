//! Layer 3, the object layer: the [`Store`] with buckets, objects, manifests, multipart
//! uploads, quotas and usage, and S3 credentials, over the metadata database (`crate::db`) and
//! a chunk store (`crate::chunks`).
//!
//! Flow of a put: 1. `PutWriter` (`writer.rs`) cuts the body into chunks, pins each (under the
//! GC read lock, `pins.rs`) and writes it durably through the [`ChunkStore`] 2. `commit` runs
//! one closure in a metadata transaction (`Db::txn`: the group commit of `crate::db`)
//! 3. pins are released. Deletes/overwrites push chunks whose refcount reached 0 onto a queue
//! that the reclaimer drains (`gc.rs`, where the engine decides to delete a chunk).
//!
//! Files: `bucket.rs` (buckets, quotas, usage), `objects.rs` (put/get/delete/copy/list),
//! `sse.rs` (server-side encryption: data keys, wrapping, which key seals a chunk), `tags.rs`
//! (object and bucket tags),
//! `splice.rs` (in-place edits), `multipart.rs`, `credentials.rs`, `gc.rs` (reclaim, gc,
//! fsck), `meta.rs` (tables, records, in-transaction helpers), `reader.rs`, `writer.rs`,
//! `types.rs` (public types).
//!
//! Writes acknowledged by a layer above but not yet stored (the file-system view's staged NFS
//! writes) reach this layer only through the [`Staging`] hook: the store asks it to apply
//! them before it reads, replaces or removes an object. This layer imports nothing above it.

mod bucket;
mod credentials;
mod gc;
pub(crate) mod meta;
mod multipart;
mod objects;
pub(crate) mod pins;
pub(crate) mod reader;
pub(crate) mod splice;
pub(crate) mod sse;
mod tags;
#[cfg(test)]
mod tests;
pub(crate) mod types;
pub(crate) mod versions;
pub(crate) mod writer;

use std::any::Any;
use std::collections::HashMap;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;

use crate::chunks::seal::Sealer;
use crate::chunks::{ChunkId, ChunkStore};
pub(crate) use crate::db::lock;
use crate::db::{Db, Schema, Tx, TxError, View};
use crate::StorageError;
use pins::Shared;
use types::{StoreConfig, DEFAULT_CHUNK_SIZE};

type CredCache = (u64, HashMap<String, (String, String)>);

/// Writes a layer above acknowledged and keeps outside the store (the file-system view's
/// staged writes), which the store must see before it reads, replaces or removes an object.
pub(crate) trait Staging: Send + Sync + 'static {
    /// Apply what is staged for `bucket/key` (every key under it with `prefix`) to `store`.
    /// Must cost next to nothing when nothing is staged.
    fn settle(&self, store: &Store, bucket: &str, key: &str, prefix: bool);
    /// For the layer that installed it, to get its own type back.
    fn as_any(&self) -> &dyn Any;
}

struct Inner {
    /// The metadata database; its transactions collect the chunks they free.
    db: Db<Vec<ChunkId>>,
    shared: Arc<Shared>,
    max_size: Option<u64>,
    freed: Arc<Mutex<Vec<ChunkId>>>,
    /// Credentials already read from (or written to) the `creds` table.
    creds: Mutex<CredCache>,
    stop_reclaim: Option<Sender<()>>,
    reclaimer: Option<JoinHandle<()>>,
    /// Writes staged by a layer above (NFS UNSTABLE), applied before any read.
    staging: OnceLock<Arc<dyn Staging>>,
    /// Where the store keeps its files.
    data_dir: std::path::PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_reclaim.take();
        if let Some(h) = self.reclaimer.take() {
            let _ = h.join();
        }
        // Then `db` drops: the committer stops and a last checkpoint writes everything.
    }
}

/// The object store. Cheap to clone (`Arc`), `Send + Sync`; every method blocks.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("max_size", &self.inner.max_size)
            .field("chunk_size", &self.inner.shared.chunk_size)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Open (creating if needed) the store in `cfg.data_dir` over `chunks`, with the object
    /// layer's tables plus `extra` (the tables of the layers above), and run a GC pass.
    pub(crate) fn open_layers(
        cfg: StoreConfig,
        chunks: Arc<dyn ChunkStore>,
        extra: &Schema,
    ) -> Result<Store, StorageError> {
        if cfg.chunk_size >= meta::MAX_CHUNK_LEN {
            return Err(StorageError::Unsupported("chunk_size of 512 MiB or more"));
        }
        if cfg.encrypt_all && cfg.master_key.is_none() {
            return Err(StorageError::NoMasterKey);
        }
        let mut schema = meta::schema();
        schema.extend(extra);
        let freed = Arc::new(Mutex::new(Vec::new()));
        let data_dir = cfg.data_dir.clone();
        let db = {
            let freed = freed.clone();
            Db::open(&cfg.data_dir, schema, move |f: Vec<ChunkId>| {
                if !f.is_empty() {
                    lock(&freed).extend(f);
                }
            })?
        };
        let chunk_size = if cfg.chunk_size == 0 {
            DEFAULT_CHUNK_SIZE
        } else {
            cfg.chunk_size
        };
        let key = |ctx: &str| {
            cfg.master_key
                .as_ref()
                .map(|k| Arc::new(Sealer::derive(ctx, &k.0)))
        };
        let shared = Arc::new(Shared {
            chunks,
            chunk_size,
            gc_lock: RwLock::new(()),
            pins: Mutex::new(HashMap::new()),
            wrap: key(sse::WRAP_CONTEXT),
            node: key(sse::NODE_SEAL_CONTEXT),
            seal_all: cfg.encrypt_all,
        });
        let (stop_reclaim, stop_rx) = mpsc::channel();
        let reclaimer = {
            let (mem, shared, freed) = (db.mem().clone(), shared.clone(), freed.clone());
            std::thread::Builder::new()
                .name("tm-storage-reclaim".into())
                .spawn(move || gc::reclaimer(mem, shared, freed, stop_rx))?
        };
        let store = Store {
            inner: Arc::new(Inner {
                db,
                shared,
                max_size: cfg.max_size,
                freed,
                creds: Mutex::new((0, HashMap::new())),
                stop_reclaim: Some(stop_reclaim),
                reclaimer: Some(reclaimer),
                staging: OnceLock::new(),
                data_dir,
            }),
        };
        store.gc()?;
        Ok(store)
    }

    /// Number of commits so far: unchanged means the metadata did not change.
    pub(crate) fn commits(&self) -> u64 {
        self.inner.db.commits()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// A consistent read snapshot of the metadata (redb and the in-memory layer).
    pub(crate) fn view(&self) -> Result<View, StorageError> {
        self.inner.db.view()
    }

    /// The store's data directory.
    pub(crate) fn data_dir(&self) -> &std::path::Path {
        &self.inner.data_dir
    }

    /// The global `max_size` cap.
    pub(crate) fn max_size(&self) -> Option<u64> {
        self.inner.max_size
    }

    /// The staging hook of this store, installing `init()` if there is none yet.
    pub(crate) fn staging(&self, init: impl FnOnce() -> Arc<dyn Staging>) -> &Arc<dyn Staging> {
        self.inner.staging.get_or_init(init)
    }

    /// Apply writes staged above this layer to `bucket/key` (every key under it with
    /// `prefix`) before the object is read, replaced or removed, so it is seen with every
    /// acknowledged write. Costs one atomic load when nothing is staged.
    fn settle(&self, bucket: &str, key: &str, prefix: bool) {
        if let Some(s) = self.inner.staging.get() {
            s.settle(self, bucket, key, prefix);
        }
    }

    /// Run `f` inside the next group-committed write transaction; returns once it is durable.
    /// `f` pushes the chunks whose last reference it dropped onto its second argument.
    ///
    /// Contract for `f`: do every check (and return refusals) before the first mutation; only
    /// failures (`is_failure()`) may happen after mutating, and they abort the whole batch.
    pub(crate) fn txn<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx, &mut Vec<ChunkId>) -> Result<T, StorageError> + Send + 'static,
    {
        self.inner.db.txn(f)
    }

    /// [`Store::txn`] for a layer above with its own error type (which must carry every
    /// [`StorageError`] and tell refusals from failures).
    pub(crate) fn txn_as<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: TxError,
        F: FnOnce(&Tx, &mut Vec<ChunkId>) -> Result<T, E> + Send + 'static,
    {
        self.inner.db.txn(f)
    }

    /// Like [`Store::txn`] without blocking; see `Db::submit`.
    pub(crate) fn submit<T, F, D>(&self, f: F, done: D)
    where
        T: Send + 'static,
        F: FnOnce(&Tx, &mut Vec<ChunkId>) -> Result<T, StorageError> + Send + 'static,
        D: FnOnce(Result<T, StorageError>) + Send + 'static,
    {
        self.inner.db.submit(f, done)
    }
}
