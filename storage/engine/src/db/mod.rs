//! Layer 1, the metadata database: redb, the redo log (`wal.rs`), the in-memory layer
//! (`mem.rs`, `table.rs`) and checkpoints (`checkpoint.rs`), behind group-committed
//! transactions ([`Db::txn`], `commit.rs`).
//!
//! It knows no table by name: the layers above register their typed tables in a [`Schema`]
//! and the log replays any registered table. It imports nothing of the engine but the error
//! type.
//!
//! Durability of a metadata commit: `commit.rs`, `commit_batch` (log record written and
//! synced, then published); checkpoints into redb: `checkpoint.rs`, `commit_to_redb`.

mod checkpoint;
mod commit;
mod dbfile;
mod mem;
mod schema;
mod table;
pub(crate) mod wal;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

pub use commit::CommitStats;
pub(crate) use commit::TxError;
pub(crate) use mem::{Mem, Tx, View};
pub(crate) use schema::Schema;
pub(crate) use table::{ReadTable, TableW};

use crate::StorageError;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An open metadata database. `E` is what transactions collect for the layer above (handed to
/// its `after` hook once the transaction is durable). Closing it (drop) stops the committer and
/// writes everything to redb in a last checkpoint.
pub(crate) struct Db<E: Default + Send + 'static> {
    /// redb and the in-memory layer of commits not yet checkpointed into it.
    mem: Arc<Mem>,
    schema: Arc<Schema>,
    after: Arc<dyn Fn(E) + Send + Sync>,
    stats: Arc<Mutex<CommitStats>>,
    jobs: Option<Sender<commit::Job<E>>>,
    /// The redo log; whoever commits holds it for the whole commit (committer or caller).
    wal: Arc<Mutex<wal::Wal>>,
    /// Jobs sent to the committer and not yet taken into a batch.
    queued: Arc<AtomicUsize>,
    /// Bumped after every commit that may have changed something (lets caches revalidate
    /// without a read transaction).
    commits: Arc<AtomicU64>,
    committer: Option<JoinHandle<()>>,
    /// The checkpoint thread (woken when a checkpoint is due) and its stop flag.
    ckpt_thread: std::thread::Thread,
    checkpointer: Option<JoinHandle<()>>,
    stop_ckpt: Arc<AtomicBool>,
}

impl<E: Default + Send + 'static> Drop for Db<E> {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(h) = self.committer.take() {
            let _ = h.join();
        }
        // After the last commit: the checkpoint thread writes everything to redb.
        self.stop_ckpt.store(true, Ordering::Release);
        self.ckpt_thread.unpark();
        if let Some(h) = self.checkpointer.take() {
            let _ = h.join();
        }
    }
}

impl<E: Default + Send + 'static> Db<E> {
    /// Open (creating if needed) `dir/meta.redb` and `dir/meta.wal`, locked against a second
    /// opener: create the schema's tables and run its initialisers (one durable redb commit),
    /// replay the log, start the committer and checkpoint threads.
    pub(crate) fn open(
        dir: &Path,
        schema: Schema,
        after: impl Fn(E) + Send + Sync + 'static,
    ) -> Result<Db<E>, StorageError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("meta.redb");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        file.try_lock().map_err(|_| {
            StorageError::Db(format!(
                "{} is already open (another store on the same data directory); stop it first",
                path.display()
            ))
        })?;
        let db = Arc::new(redb::Builder::new().create_with_backend(dbfile::DbFile::new(file)?)?);
        {
            let wtx = db.begin_write()?;
            wtx.open_table(wal::WAL_META)?;
            schema.create(&wtx)?;
            // Nothing here needs the log: this transaction commits durably.
            wtx.commit()?;
        }
        let schema = Arc::new(schema);
        let wal = checkpoint::open_wal(&db, &schema, &dir.join("meta.wal"))?;
        let mem = Arc::new(Mem::new(db, wal.last()));
        let (jobs, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(CommitStats::default()));
        let wal = Arc::new(Mutex::new(wal));
        let queued = Arc::new(AtomicUsize::new(0));
        let commits = Arc::new(AtomicU64::new(0));
        let stop_ckpt = Arc::new(AtomicBool::new(false));
        let after: Arc<dyn Fn(E) + Send + Sync> = Arc::new(after);
        let checkpointer = {
            let (mem, schema, wal, stop) =
                (mem.clone(), schema.clone(), wal.clone(), stop_ckpt.clone());
            std::thread::Builder::new()
                .name("tm-storage-ckpt".into())
                .spawn(move || checkpoint::checkpointer(mem, schema, wal, stop))?
        };
        let ckpt_thread = checkpointer.thread().clone();
        let committer = {
            let ctx = commit::CommitterCtx {
                mem: mem.clone(),
                schema: schema.clone(),
                after: after.clone(),
                stats: stats.clone(),
                wal: wal.clone(),
                queued: queued.clone(),
                commits: commits.clone(),
                ckpt: ckpt_thread.clone(),
            };
            std::thread::Builder::new()
                .name("tm-storage-commit".into())
                .spawn(move || commit::committer(rx, ctx))?
        };
        Ok(Db {
            mem,
            schema,
            after,
            stats,
            jobs: Some(jobs),
            wal,
            queued,
            commits,
            committer: Some(committer),
            ckpt_thread,
            checkpointer: Some(checkpointer),
            stop_ckpt,
        })
    }

    /// A consistent read snapshot (redb and the in-memory layer).
    pub(crate) fn view(&self) -> Result<View, StorageError> {
        self.mem.view()
    }

    /// The snapshot source, for threads that read without holding the database open.
    pub(crate) fn mem(&self) -> &Arc<Mem> {
        &self.mem
    }

    /// Number of commits so far: unchanged means the metadata did not change.
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Acquire)
    }

    /// Group-commit counters.
    pub(crate) fn stats(&self) -> CommitStats {
        *lock(&self.stats)
    }
}
