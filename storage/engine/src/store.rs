//! The [`Store`]: bucket/object/multipart/credential operations, the group-commit thread, the
//! background reclaimer and garbage collection.
//!
//! Flow of a put: 1. `PutWriter` cuts the body into chunks, pins each (under the GC read lock) and
//! writes it durably through the [`ChunkStore`] 2. `commit` runs one closure in a metadata
//! transaction (on the caller's thread when nobody else commits, else the committer thread
//! runs all queued closures in ONE transaction and commits once: one log record, `mem.rs`)
//! 3. pins are released. Deletes/overwrites push chunks whose refcount reached 0 onto a queue the
//! reclaimer drains.
//!
//! GC safety rule: a chunk file may be deleted only under the GC *write* lock, when it has no
//! entry in `refs` and no pin. Everything that adds references (commits of puts, parts, copies,
//! completions) and every reader pinning a manifest holds the GC *read* lock, so the GC sees a
//! state in which no reference can appear behind its back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::mem::{Local, Mem, Overlay, ReadTable, Tx, View};
use crate::wal::{Wal, CHECKPOINT_AFTER, WAL_META};
use md5::{Digest, Md5};
use redb::{Database, ReadableTable as _};

use crate::chunk::{hex, nibble, ChunkId, ChunkStore, FsChunkStore};
use crate::meta::*;
use crate::reader::ObjectReader;
use crate::writer::{PutWriter, Target};
use crate::{
    check_key, valid_bucket_name, BucketInfo, CommitStats, FsckReport, GcStats, ObjectInfo,
    ObjectMeta, PartInfo, StorageError, StoreConfig, UploadInfo, Usage, DEFAULT_CHUNK_SIZE,
    MAX_PART_NUMBER, MIN_PART_SIZE, SYSTEM_BUCKET,
};

/// Most jobs folded into one metadata transaction.
const MAX_BATCH: usize = 512;
/// Retries of a read-modify-write (`write_at`/`truncate`) that lost a race.
const SPLICE_RETRIES: usize = 8;

/// State shared by the store, its writers and its readers (readers do not keep the DB open).
pub(crate) struct Shared {
    pub chunks: Arc<dyn ChunkStore>,
    pub chunk_size: u32,
    gc_lock: RwLock<()>,
    pins: Mutex<HashMap<ChunkId, u32>>,
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
    fn write_guard(&self) -> RwLockWriteGuard<'_, ()> {
        self.gc_lock.write().unwrap_or_else(|p| p.into_inner())
    }
    fn pins(&self) -> MutexGuard<'_, HashMap<ChunkId, u32>> {
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

type CredCache = (u64, HashMap<String, (String, String)>);
type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send>;
type RunFn = Box<dyn FnOnce(&Tx, &mut Vec<ChunkId>) -> Step + Send>;

enum Step {
    /// The job ran (or refused without mutating); tell it the commit result.
    Done(Completion),
    /// The job hit a machine failure mid-way: the transaction must be aborted.
    Fatal(StorageError),
}

struct Job {
    run: RunFn,
    fail: Box<dyn FnOnce(StorageError) + Send>,
}

struct Inner {
    /// redb and the in-memory layer of commits not yet checkpointed into it (`mem.rs`).
    mem: Arc<Mem>,
    shared: Arc<Shared>,
    max_size: Option<u64>,
    freed: Arc<Mutex<Vec<ChunkId>>>,
    commit_stats: Arc<Mutex<CommitStats>>,
    /// Credentials already read from (or written to) the `creds` table.
    creds: Mutex<CredCache>,
    jobs: Option<Sender<Job>>,
    /// The redo log; whoever commits holds it for the whole commit (committer or caller).
    wal: Arc<Mutex<Wal>>,
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
    stop_reclaim: Option<Sender<()>>,
    reclaimer: Option<JoinHandle<()>>,
    /// Writes staged by the file-system view (NFS UNSTABLE), applied before any read.
    wb: crate::writeback::WriteBack,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.jobs.take();
        self.stop_reclaim.take();
        if let Some(h) = self.committer.take() {
            let _ = h.join();
        }
        // After the last commit: the checkpoint thread writes everything to redb.
        self.stop_ckpt.store(true, Ordering::Release);
        self.ckpt_thread.unpark();
        if let Some(h) = self.checkpointer.take() {
            let _ = h.join();
        }
        if let Some(h) = self.reclaimer.take() {
            let _ = h.join();
        }
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Open the redo log and replay what it holds beyond the database's last durable commit (one
/// durable transaction), before anything else touches the store.
fn open_wal(db: &Database, path: &std::path::Path) -> Result<Wal, StorageError> {
    let applied = {
        let rtx = db.begin_read()?;
        let t = rtx.open_table(WAL_META)?;
        let v = t.get("lsn")?.map(|v| v.value());
        v.unwrap_or(0)
    };
    let (mut wal, records) = Wal::open(path, applied)?;
    if !records.is_empty() {
        let wtx = db.begin_write()?;
        crate::wal::replay(&wtx, &records)?;
        wtx.open_table(WAL_META)?.insert("lsn", wal.last())?;
        wtx.commit()?;
    }
    wal.reset();
    Ok(wal)
}

/// A blocking checkpoint of everything (the caller holds the log): waits for a running
/// background checkpoint, then applies the layer (and `extra`, a batch too large for the log)
/// to redb in one durable commit and starts the log region again. On failure the log keeps its
/// records and the layer its versions.
fn checkpoint_all(mem: &Mem, wal: &mut Wal, extra: Option<&Local>) -> Result<(), String> {
    while mem.frozen() {
        // The background checkpoint finishes without the log.
        std::thread::sleep(Duration::from_micros(200));
    }
    let lsn = wal.last();
    mem.checkpoint_all(|latest| commit_to_redb(mem, [Some(latest), extra], lsn))?;
    wal.reset();
    Ok(())
}

/// Apply `writes` (in order) to redb in one durable commit that records the log's records up
/// to `lsn` as included.
fn commit_to_redb<'a>(
    mem: &Mem,
    writes: impl IntoIterator<Item = Option<&'a Local>>,
    lsn: u64,
) -> Result<(), String> {
    let wtx = mem.db().begin_write().map_err(|e| e.to_string())?;
    for w in writes.into_iter().flatten() {
        crate::wal::apply(&wtx, w).map_err(|e| e.to_string())?;
    }
    set_lsn(&wtx, lsn)?;
    wtx.commit().map_err(|e| e.to_string())
}

/// The checkpoint thread: when the log region holds `wal::CHECKPOINT_BYTES` or its oldest
/// record is [`CHECKPOINT_AFTER`] old, freeze the layer and switch log regions (briefly holding the log),
/// then write the frozen layer to redb while commits go on. At `stop`, a last checkpoint of
/// everything.
fn checkpointer(mem: Arc<Mem>, wal: Arc<Mutex<Wal>>, stop: Arc<AtomicBool>) {
    let mut pending: Option<(Arc<Overlay>, u64)> = None;
    loop {
        if let Some((layer, lsn)) = &pending {
            match commit_to_redb(&mem, [Some(&layer.latest())], *lsn) {
                Ok(()) => {
                    mem.thaw();
                    pending = None;
                }
                Err(_) if stop.load(Ordering::Acquire) => return, // the log keeps the records
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
            continue;
        }
        let due = {
            let mut w = lock(&wal);
            if stop.load(Ordering::Acquire) {
                if w.dirty() {
                    let _ = checkpoint_all(&mem, &mut w, None);
                }
                return;
            }
            match w.due_in() {
                Some(d) if d.is_zero() => {
                    if let Some(layer) = mem.freeze() {
                        pending = Some((layer, w.last()));
                        w.switch();
                    }
                    None
                }
                d => Some(d.unwrap_or(CHECKPOINT_AFTER)),
            }
        };
        if let Some(d) = due {
            std::thread::park_timeout(d);
        }
    }
}

fn set_lsn(wtx: &redb::WriteTransaction, lsn: u64) -> Result<(), String> {
    let mut t = wtx.open_table(WAL_META).map_err(|e| e.to_string())?;
    t.insert("lsn", lsn).map_err(|e| e.to_string())?;
    Ok(())
}

/// Make a batch durable and visible: its redo record written to the log and synced, then its
/// writes published in the in-memory layer (waking the checkpoint thread when one is due);
/// or, when the record does not fit (or the log fails), a checkpoint that includes it.
fn commit_batch(
    mem: &Mem,
    tx: Tx,
    wal: &mut Wal,
    ckpt: &std::thread::Thread,
) -> Result<(), String> {
    let (redo, local) = tx.into_parts();
    if redo.is_empty() {
        return Ok(()); // nothing changed (refusals only)
    }
    if wal.fits(redo.len()) {
        if let Ok(lsn) = wal.write(&redo) {
            match wal.sync() {
                Ok(()) => {
                    mem.publish(local, lsn);
                    if wal.due_in() == Some(Duration::ZERO) {
                        ckpt.unpark();
                    }
                    return Ok(());
                }
                Err(_) => {
                    // Never replay a record whose sync failed: the next one takes its place.
                    let _ = wal.cancel_last(redo.len());
                }
            }
        }
    }
    checkpoint_all(mem, wal, Some(&local))
}

/// What the committer thread shares with the store.
struct CommitterCtx {
    mem: Arc<Mem>,
    freed_q: Arc<Mutex<Vec<ChunkId>>>,
    stats: Arc<Mutex<CommitStats>>,
    wal: Arc<Mutex<Wal>>,
    queued: Arc<AtomicUsize>,
    commits: Arc<AtomicU64>,
    ckpt: std::thread::Thread,
}

fn committer(rx: Receiver<Job>, ctx: CommitterCtx) {
    let CommitterCtx {
        mem,
        freed_q,
        stats,
        wal,
        queued,
        commits,
        ckpt,
    } = ctx;
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(j) => {
                    queued.fetch_sub(1, Ordering::AcqRel);
                    pending.push_back(j);
                }
                Err(_) => return, // the store closed; the checkpoint thread writes the rest
            }
        }
        while pending.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => {
                    queued.fetch_sub(1, Ordering::AcqRel);
                    pending.push_back(j);
                }
                Err(_) => break,
            }
        }
        let mut wal = lock(&wal);
        let tx = match mem.begin() {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                for j in pending.drain(..) {
                    (j.fail)(StorageError::Db(msg.clone()));
                }
                continue;
            }
        };
        let mut done: Vec<Completion> = Vec::new();
        let mut freed = Vec::new();
        let mut fatal = false;
        while let Some(Job { run, fail }) = pending.pop_front() {
            if done.len() >= MAX_BATCH {
                pending.push_front(Job { run, fail });
                break;
            }
            match run(&tx, &mut freed) {
                Step::Done(c) => done.push(c),
                Step::Fatal(e) => {
                    fail(e);
                    fatal = true;
                    break;
                }
            }
        }
        let result = if fatal {
            drop(tx);
            Err("transaction aborted: another write in the batch failed".to_string())
        } else {
            commit_batch(&mem, tx, &mut wal, &ckpt)
        };
        drop(wal);
        match result {
            Ok(()) => {
                commits.fetch_add(1, Ordering::Release);
                lock(&freed_q).extend(freed);
                {
                    let mut st = lock(&stats);
                    st.transactions += 1;
                    st.operations += done.len() as u64;
                }
                for c in done {
                    c(Ok(()));
                }
            }
            Err(msg) => {
                for c in done {
                    c(Err(StorageError::Db(msg.clone())));
                }
            }
        }
    }
}

fn reclaimer(
    mem: Arc<Mem>,
    shared: Arc<Shared>,
    freed: Arc<Mutex<Vec<ChunkId>>>,
    stop: Receiver<()>,
) {
    loop {
        match stop.recv_timeout(Duration::from_millis(200)) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let _ = reclaim(&mem, &shared, &freed);
    }
}

/// Delete queued chunks that are still unreferenced and unpinned; keep pinned ones queued.
fn reclaim(mem: &Mem, shared: &Shared, freed: &Mutex<Vec<ChunkId>>) -> Result<u64, StorageError> {
    let ids: Vec<ChunkId> = std::mem::take(&mut *lock(freed));
    if ids.is_empty() {
        return Ok(0);
    }
    let ids: HashSet<ChunkId> = ids.into_iter().collect();
    let _w = shared.write_guard();
    let rtx = mem.view()?;
    let refs = rtx.open_table(REFS)?;
    let pins = shared.pins();
    let mut requeue = Vec::new();
    let mut n = 0;
    for id in ids {
        if refs.get(id.0.as_slice())?.is_some() {
            continue;
        }
        if pins.contains_key(&id) {
            requeue.push(id);
            continue;
        }
        if let Err(e) = shared.chunks.delete(&id) {
            requeue.push(id);
            lock(freed).extend(requeue);
            return Err(e);
        }
        n += 1;
    }
    lock(freed).extend(requeue);
    Ok(n)
}

fn bucket_info(name: &str, r: &BucketRec) -> BucketInfo {
    BucketInfo {
        name: name.to_string(),
        created: from_nanos(r.created),
        quota: r.quota,
    }
}

fn random_id() -> Result<String, StorageError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b)
        .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
    Ok(hex(&b))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() & 1 == 1 {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some((nibble(p[0])? << 4) | nibble(p[1])?))
        .collect()
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

enum Edit<'a> {
    Write { offset: u64, data: &'a [u8] },
    Truncate(u64),
}

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
        if cfg.chunk_size > 1 << 30 {
            return Err(StorageError::Unsupported("chunk_size above 1 GiB"));
        }
        std::fs::create_dir_all(&cfg.data_dir)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(cfg.data_dir.join("meta.redb"))?;
        file.try_lock().map_err(|_| {
            StorageError::Db(format!(
                "{} is already open (another store on the same data directory); stop it first",
                cfg.data_dir.join("meta.redb").display()
            ))
        })?;
        let db =
            Arc::new(redb::Builder::new().create_with_backend(crate::dbfile::DbFile::new(file)?)?);
        {
            let wtx = db.begin_write()?;
            {
                wtx.open_table(WAL_META)?;
                let mut buckets = wtx.open_table(BUCKETS)?;
                wtx.open_table(OBJECTS)?;
                wtx.open_table(OBJ_CHUNKS)?;
                wtx.open_table(REFS)?;
                wtx.open_table(UPLOADS)?;
                wtx.open_table(PARTS)?;
                wtx.open_table(PART_CHUNKS)?;
                wtx.open_table(CREDS)?;
                wtx.open_table(STATS)?;
                wtx.open_table(CHUNK_DATA)?;
                crate::fs::create_tables(&wtx)?;
                if buckets.get(SYSTEM_BUCKET)?.is_none() {
                    let rec = BucketRec {
                        created: now_nanos(),
                        quota: None,
                        bytes: 0,
                        objects: 0,
                    };
                    buckets.insert(SYSTEM_BUCKET, serde_json::to_vec(&rec)?.as_slice())?;
                }
            }
            // Nothing here needs the log: this transaction commits durably.
            wtx.commit()?;
        }
        let wal = open_wal(&db, &cfg.data_dir.join("meta.wal"))?;
        let mem = Arc::new(Mem::new(db, wal.last()));
        let chunk_size = if cfg.chunk_size == 0 {
            DEFAULT_CHUNK_SIZE
        } else {
            cfg.chunk_size
        };
        let shared = Arc::new(Shared {
            chunks,
            chunk_size,
            gc_lock: RwLock::new(()),
            pins: Mutex::new(HashMap::new()),
        });
        let freed = Arc::new(Mutex::new(Vec::new()));
        let (jobs, rx) = mpsc::channel();
        let commit_stats = Arc::new(Mutex::new(CommitStats::default()));
        let wal = Arc::new(Mutex::new(wal));
        let queued = Arc::new(AtomicUsize::new(0));
        let commits = Arc::new(AtomicU64::new(0));
        let stop_ckpt = Arc::new(AtomicBool::new(false));
        let checkpointer = {
            let (mem, wal, stop) = (mem.clone(), wal.clone(), stop_ckpt.clone());
            std::thread::Builder::new()
                .name("tm-storage-ckpt".into())
                .spawn(move || checkpointer(mem, wal, stop))?
        };
        let ckpt_thread = checkpointer.thread().clone();
        let committer = {
            let ckpt = ckpt_thread.clone();
            let mem = mem.clone();
            let freed = freed.clone();
            let stats = commit_stats.clone();
            let (wal, queued) = (wal.clone(), queued.clone());
            let commits = commits.clone();
            std::thread::Builder::new()
                .name("tm-storage-commit".into())
                .spawn(move || {
                    let ctx = CommitterCtx {
                        mem,
                        freed_q: freed,
                        stats,
                        wal,
                        queued,
                        commits,
                        ckpt,
                    };
                    committer(rx, ctx)
                })?
        };
        let (stop_reclaim, stop_rx) = mpsc::channel();
        let reclaimer = {
            let (mem, shared, freed) = (mem.clone(), shared.clone(), freed.clone());
            std::thread::Builder::new()
                .name("tm-storage-reclaim".into())
                .spawn(move || reclaimer(mem, shared, freed, stop_rx))?
        };
        let store = Store {
            inner: Arc::new(Inner {
                mem,
                shared,
                max_size: cfg.max_size,
                freed,
                commit_stats,
                creds: Mutex::new((0, HashMap::new())),
                jobs: Some(jobs),
                wal,
                queued,
                commits,
                committer: Some(committer),
                ckpt_thread,
                checkpointer: Some(checkpointer),
                stop_ckpt,
                stop_reclaim: Some(stop_reclaim),
                reclaimer: Some(reclaimer),
                wb: crate::writeback::WriteBack::default(),
            }),
        };
        store.gc()?;
        Ok(store)
    }

    /// Number of commits so far: unchanged means the metadata did not change.
    pub(crate) fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Acquire)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// A consistent read snapshot of the metadata (redb and the in-memory layer).
    pub(crate) fn view(&self) -> Result<View, StorageError> {
        self.inner.mem.view()
    }

    /// The global `max_size` cap.
    pub(crate) fn max_size(&self) -> Option<u64> {
        self.inner.max_size
    }

    /// Writes staged by the file-system view.
    pub(crate) fn wb(&self) -> &crate::writeback::WriteBack {
        &self.inner.wb
    }

    /// Apply writes staged over NFS to `bucket/key` (every key under it with `prefix`) before
    /// the object is read, replaced or removed, so it is seen with every acknowledged write.
    /// Costs one atomic load when nothing is staged. A failed flush is reported to the NFS
    /// client at its next WRITE or COMMIT.
    fn settle(&self, bucket: &str, key: &str, prefix: bool) {
        if self.inner.wb.is_empty() {
            return;
        }
        let inos = self.inner.wb.inodes_at(&obj_key(bucket, key), prefix);
        if inos.is_empty() {
            return;
        }
        let fs = crate::fs::FileSystem::bare(self.clone());
        for ino in inos {
            fs.flush_background(ino);
        }
    }

    /// Run `f` inside the next group-committed write transaction; returns once it is durable.
    ///
    /// Contract for `f`: do every check (and return refusals) before the first mutation; only
    /// failures (`is_failure()`) may happen after mutating, and they abort the whole batch.
    pub(crate) fn txn<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx, &mut Vec<ChunkId>) -> Result<T, StorageError> + Send + 'static,
    {
        // Nobody else committing or queued: commit here (no hand-off to the committer thread
        // and back). Otherwise join the committer's next batch (group commit).
        if self.inner.queued.load(Ordering::Acquire) == 0 {
            if let Ok(wal) = self.inner.wal.try_lock() {
                return self.commit_here(wal, f);
            }
        }
        let (tx, rx) = mpsc::sync_channel::<Result<T, StorageError>>(1);
        self.submit(f, move |r| {
            let _ = tx.send(r);
        });
        rx.recv()
            .map_err(|_| StorageError::Db("committer thread stopped".into()))?
    }

    /// [`Store::txn`] on the caller's thread, holding the log.
    fn commit_here<T, F>(&self, mut wal: MutexGuard<'_, Wal>, f: F) -> Result<T, StorageError>
    where
        F: FnOnce(&Tx, &mut Vec<ChunkId>) -> Result<T, StorageError>,
    {
        let tx = self.inner.mem.begin()?;
        let mut freed = Vec::new();
        let v = f(&tx, &mut freed)?; // a refusal or failure drops the transaction: nothing changed
        let r = commit_batch(&self.inner.mem, tx, &mut wal, &self.inner.ckpt_thread);
        self.inner.commits.fetch_add(1, Ordering::Release);
        r.map_err(StorageError::Db)?;
        drop(wal);
        lock(&self.inner.freed).extend(freed);
        let mut st = lock(&self.inner.commit_stats);
        st.transactions += 1;
        st.operations += 1;
        Ok(v)
    }

    /// Like [`Store::txn`] without blocking: queues `f` for the next group commit and returns at
    /// once; `done` runs exactly once, on the committer thread after the commit (or at once if
    /// the committer is gone), with `f`'s result if the commit succeeded. `done` must not block.
    pub(crate) fn submit<T, F, D>(&self, f: F, done: D)
    where
        T: Send + 'static,
        F: FnOnce(&Tx, &mut Vec<ChunkId>) -> Result<T, StorageError> + Send + 'static,
        D: FnOnce(Result<T, StorageError>) + Send + 'static,
    {
        // `done` is reached either through `run` (commit result) or `fail` (never ran, or the
        // transaction was aborted by this job's failure): whichever comes first takes it.
        let done = Arc::new(Mutex::new(Some(done)));
        let d2 = done.clone();
        let job = Job {
            run: Box::new(move |wtx, freed| match f(wtx, freed) {
                Ok(v) => Step::Done(Box::new(move |r| {
                    if let Some(d) = lock(&done).take() {
                        d(r.map(|()| v));
                    }
                })),
                Err(e) if e.is_failure() => Step::Fatal(e),
                Err(e) => Step::Done(Box::new(move |_| {
                    if let Some(d) = lock(&done).take() {
                        d(Err(e));
                    }
                })),
            }),
            fail: Box::new(move |e| {
                if let Some(d) = lock(&d2).take() {
                    d(Err(e));
                }
            }),
        };
        let stopped = || StorageError::Db("committer thread stopped".into());
        match self.inner.jobs.as_ref() {
            Some(jobs) => {
                self.inner.queued.fetch_add(1, Ordering::AcqRel);
                if let Err(mpsc::SendError(job)) = jobs.send(job) {
                    self.inner.queued.fetch_sub(1, Ordering::AcqRel);
                    (job.fail)(stopped());
                }
            }
            None => (job.fail)(stopped()),
        }
    }

    fn read_bucket(&self, name: &str) -> Result<BucketRec, StorageError> {
        let rtx = self.view()?;
        let t = rtx.open_table(BUCKETS)?;
        get_json(&t, name)?.ok_or(StorageError::NoSuchBucket)
    }

    // ---------------------------------------------------------------- buckets

    /// Create a bucket (S3 naming rules, else `InvalidBucketName`; `BucketExists` if taken).
    pub fn create_bucket(&self, name: &str) -> Result<(), StorageError> {
        if name == SYSTEM_BUCKET {
            return Err(StorageError::BucketExists);
        }
        if !valid_bucket_name(name) {
            return Err(StorageError::InvalidBucketName);
        }
        let name = name.to_string();
        self.txn(move |wtx, _| {
            let mut t = wtx.open_table(BUCKETS)?;
            if get_json::<BucketRec, _>(&t, &name)?.is_some() {
                return Err(StorageError::BucketExists);
            }
            let rec = BucketRec {
                created: now_nanos(),
                quota: None,
                bytes: 0,
                objects: 0,
            };
            put_json(&mut t, &name, &rec)
        })
    }

    /// Delete an empty bucket; its unfinished multipart uploads are aborted with it.
    pub fn delete_bucket(&self, name: &str) -> Result<(), StorageError> {
        if name == SYSTEM_BUCKET {
            return Err(StorageError::ReservedBucket);
        }
        let name = name.to_string();
        self.txn(move |wtx, freed| {
            let rec: BucketRec = {
                let t = wtx.open_table(BUCKETS)?;
                get_json(&t, &name)?.ok_or(StorageError::NoSuchBucket)?
            };
            if rec.objects > 0 {
                return Err(StorageError::BucketNotEmpty);
            }
            let mut ids = Vec::new();
            {
                let uploads = wtx.open_table(UPLOADS)?;
                for e in uploads.iter()? {
                    let (k, v) = e?;
                    let u: UploadRec = serde_json::from_slice(v.value())?;
                    if u.bucket == name {
                        ids.push(k.value().to_string());
                    }
                }
            }
            for id in ids {
                remove_upload(wtx, freed, &id)?;
            }
            wtx.open_table(BUCKETS)?.remove(name.as_str())?;
            Ok(())
        })
    }

    /// All buckets (including `_tunnelmesh`), by name.
    pub fn list_buckets(&self) -> Result<Vec<BucketInfo>, StorageError> {
        let rtx = self.view()?;
        let t = rtx.open_table(BUCKETS)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            let r: BucketRec = serde_json::from_slice(v.value())?;
            out.push(bucket_info(k.value(), &r));
        }
        Ok(out)
    }

    /// One bucket.
    pub fn bucket(&self, name: &str) -> Result<BucketInfo, StorageError> {
        Ok(bucket_info(name, &self.read_bucket(name)?))
    }

    /// Set or clear a bucket's byte quota. Lowering it below current usage is allowed; later
    /// writes that grow the bucket are then refused.
    pub fn set_quota(&self, bucket: &str, bytes: Option<u64>) -> Result<(), StorageError> {
        let bucket = bucket.to_string();
        self.txn(move |wtx, _| {
            let mut t = wtx.open_table(BUCKETS)?;
            let mut r: BucketRec = get_json(&t, &bucket)?.ok_or(StorageError::NoSuchBucket)?;
            r.quota = bytes;
            put_json(&mut t, &bucket, &r)
        })
    }

    /// Exact usage of a bucket.
    pub fn usage(&self, bucket: &str) -> Result<Usage, StorageError> {
        let r = self.read_bucket(bucket)?;
        Ok(Usage {
            bytes: r.bytes,
            objects: r.objects,
        })
    }

    /// Exact usage of the whole store (what `max_size` limits).
    pub fn total_usage(&self) -> Result<Usage, StorageError> {
        let rtx = self.view()?;
        let t = rtx.open_table(STATS)?;
        Ok(Usage {
            bytes: stat(&t, "bytes")?,
            objects: stat(&t, "objects")?,
        })
    }

    // ---------------------------------------------------------------- objects

    /// How many bytes a new version of `bucket/key` may have (None = unlimited).
    fn room(&self, bucket: &str, key: &str) -> Result<Option<u64>, StorageError> {
        let rtx = self.view()?;
        let b: BucketRec =
            get_json(&rtx.open_table(BUCKETS)?, bucket)?.ok_or(StorageError::NoSuchBucket)?;
        let old = get_json::<ObjRec, _>(&rtx.open_table(OBJECTS)?, &obj_key(bucket, key))?
            .map_or(0, |o| o.size);
        let total = stat(&rtx.open_table(STATS)?, "bytes")?;
        let lim_b = b
            .quota
            .map(|q| q.saturating_sub(b.bytes.saturating_sub(old)).max(old));
        let lim_g = self
            .inner
            .max_size
            .map(|m| m.saturating_sub(total.saturating_sub(old)).max(old));
        Ok(match (lim_b, lim_g) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Start writing a new version of `bucket/key`. Nothing is visible until
    /// [`PutWriter::commit`] returns; dropping the writer aborts.
    pub fn begin_put(
        &self,
        bucket: &str,
        key: &str,
        meta: ObjectMeta,
    ) -> Result<PutWriter, StorageError> {
        check_key(key)?;
        self.settle(bucket, key, false);
        let limit = self.room(bucket, key)?;
        Ok(PutWriter::new(
            self.clone(),
            Target::Object {
                bucket: bucket.to_string(),
                key: key.to_string(),
                meta,
            },
            limit,
        ))
    }

    pub(crate) fn commit_object(
        &self,
        bucket: String,
        key: String,
        rec: ObjRec,
        manifest: Vec<ChunkRef>,
        inline: Option<Vec<u8>>,
    ) -> Result<ObjectInfo, StorageError> {
        let max_size = self.inner.max_size;
        let _g = self.inner.shared.read_guard();
        self.txn(move |wtx, freed| {
            install_object(
                wtx,
                freed,
                max_size,
                &bucket,
                &key,
                &rec,
                &manifest,
                inline.as_deref(),
            )
        })
    }

    /// Store a whole small object (at most [`INLINE_MAX`] bytes) WITHOUT blocking: hashes it,
    /// queues it for the next group commit and returns at once. `done` runs exactly once, on the
    /// committer thread, after the object is durable and visible (or with the refusal:
    /// `NoSuchBucket`, `QuotaExceeded`, ...; nothing stored). `done` must not block.
    ///
    /// The bytes live in the metadata store (inline), so no chunk file and no extra fsync is
    /// involved: one group-committed transaction is the whole write.
    pub fn put_small(
        &self,
        bucket: &str,
        key: &str,
        meta: ObjectMeta,
        data: Vec<u8>,
        done: impl FnOnce(Result<ObjectInfo, StorageError>) + Send + 'static,
    ) {
        if let Err(e) = check_key(key) {
            return done(Err(e));
        }
        if data.len() > INLINE_MAX {
            return done(Err(StorageError::Unsupported("put_small above INLINE_MAX")));
        }
        // NFS writes staged to this key were acknowledged first: apply them before the new
        // version replaces them (blocks only in that rare case).
        self.settle(bucket, key, false);
        let rec = ObjRec {
            size: data.len() as u64,
            etag: hex(&Md5::digest(&data)),
            modified: now_nanos(),
            meta,
        };
        let manifest = if data.is_empty() {
            Vec::new()
        } else {
            vec![ChunkRef {
                id: ChunkId::of(&data),
                len: u32::try_from(data.len()).expect("inline chunk is small"),
                inline: true,
            }]
        };
        // No GC guard needed: an inline chunk has no file the collector could remove.
        let (bucket, key, max_size) = (bucket.to_string(), key.to_string(), self.inner.max_size);
        self.submit(
            move |wtx, freed| {
                let inline = (!data.is_empty()).then_some(data.as_slice());
                install_object(wtx, freed, max_size, &bucket, &key, &rec, &manifest, inline)
            },
            done,
        );
    }

    pub(crate) fn commit_part(
        &self,
        bucket: String,
        key: String,
        upload_id: String,
        number: u32,
        rec: PartRec,
        manifest: Vec<ChunkRef>,
    ) -> Result<ObjectInfo, StorageError> {
        let _g = self.inner.shared.read_guard();
        self.txn(move |wtx, freed| {
            {
                let uploads = wtx.open_table(UPLOADS)?;
                match get_json::<UploadRec, _>(&uploads, &upload_id)? {
                    Some(u) if u.bucket == bucket && u.key == key => {}
                    _ => return Err(StorageError::NoSuchUpload),
                }
            }
            let pk = part_key(&upload_id, number);
            add_refs(wtx, &manifest)?;
            let mut parts = wtx.open_table(PARTS)?;
            let mut chunks = wtx.open_table(PART_CHUNKS)?;
            let old = get_manifest(&chunks, &pk)?;
            drop_refs(wtx, &old, freed)?;
            put_json(&mut parts, &pk, &rec)?;
            chunks.insert(pk.as_str(), encode_manifest(&manifest).as_slice())?;
            Ok(ObjectInfo {
                key,
                size: rec.size,
                etag: rec.etag.clone(),
                modified: from_nanos(rec.modified),
                meta: ObjectMeta::default(),
            })
        })
    }

    /// Metadata of an object.
    pub fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, StorageError> {
        self.settle(bucket, key, false);
        let rtx = self.view()?;
        get_json::<BucketRec, _>(&rtx.open_table(BUCKETS)?, bucket)?
            .ok_or(StorageError::NoSuchBucket)?;
        let rec: ObjRec = get_json(&rtx.open_table(OBJECTS)?, &obj_key(bucket, key))?
            .ok_or(StorageError::NoSuchKey)?;
        Ok(rec.info(key))
    }

    /// Open the current version for reading. The reader keeps that version readable (its chunks
    /// are pinned) even if the object is replaced or deleted meanwhile.
    pub fn open_object(&self, bucket: &str, key: &str) -> Result<ObjectReader, StorageError> {
        self.settle(bucket, key, false);
        self.open_object_raw(bucket, key)
    }

    /// [`Store::open_object`] without applying staged writes first (the file-system view
    /// applies them itself, by inode).
    pub(crate) fn open_object_raw(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<ObjectReader, StorageError> {
        let shared = self.inner.shared.clone();
        let _g = shared.read_guard();
        let rtx = self.view()?;
        get_json::<BucketRec, _>(&rtx.open_table(BUCKETS)?, bucket)?
            .ok_or(StorageError::NoSuchBucket)?;
        let ok = obj_key(bucket, key);
        let rec: ObjRec =
            get_json(&rtx.open_table(OBJECTS)?, &ok)?.ok_or(StorageError::NoSuchKey)?;
        let manifest = get_manifest(&rtx.open_table(OBJ_CHUNKS)?, &ok)?;
        let sum: u64 = manifest.iter().map(|c| u64::from(c.len)).sum();
        if sum != rec.size {
            return Err(StorageError::Corrupt(format!(
                "{ok}: manifest size {sum} != {}",
                rec.size
            )));
        }
        let mut inline = HashMap::new();
        if manifest.iter().any(|c| c.inline) {
            let data = rtx.open_table(CHUNK_DATA)?;
            for (i, c) in manifest.iter().enumerate().filter(|(_, c)| c.inline) {
                let v = data.get(c.id.0.as_slice())?.ok_or_else(|| {
                    StorageError::Corrupt(format!("{:?} inline data missing", c.id))
                })?;
                inline.insert(i, v.value().to_vec());
            }
        }
        for c in &manifest {
            shared.pin(c.id);
        }
        let pins = Pins {
            shared: shared.clone(),
            ids: manifest.iter().map(|c| c.id).collect(),
        };
        Ok(ObjectReader::new(rec.info(key), manifest, inline, pins))
    }

    /// Delete an object; deleting a missing key succeeds.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        self.settle(bucket, key, false);
        let (bucket, key) = (bucket.to_string(), key.to_string());
        self.txn(move |wtx, freed| remove_object(wtx, freed, &bucket, &key).map(|_| ()))
    }

    /// Copy an object, sharing its chunks. `meta: None` keeps the source metadata (S3 `COPY`
    /// directive), `Some` replaces it. The ETag is the source's.
    pub fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        meta: Option<ObjectMeta>,
    ) -> Result<ObjectInfo, StorageError> {
        check_key(dst_key)?;
        self.settle(src_bucket, src_key, false);
        self.settle(dst_bucket, dst_key, false);
        let max_size = self.inner.max_size;
        let (sb, sk, db, dk) = (
            src_bucket.to_string(),
            src_key.to_string(),
            dst_bucket.to_string(),
            dst_key.to_string(),
        );
        let _g = self.inner.shared.read_guard();
        self.txn(move |wtx, freed| {
            let sok = obj_key(&sb, &sk);
            let (src, manifest) = {
                if get_json::<BucketRec, _>(&wtx.open_table(BUCKETS)?, &sb)?.is_none() {
                    return Err(StorageError::NoSuchBucket);
                }
                let src: ObjRec =
                    get_json(&wtx.open_table(OBJECTS)?, &sok)?.ok_or(StorageError::NoSuchKey)?;
                let m = get_manifest(&wtx.open_table(OBJ_CHUNKS)?, &sok)?;
                (src, m)
            };
            let rec = ObjRec {
                size: src.size,
                etag: src.etag,
                modified: now_nanos(),
                meta: meta.unwrap_or(src.meta),
            };
            install_object(wtx, freed, max_size, &db, &dk, &rec, &manifest, None)
        })
    }

    /// Objects whose key starts with `prefix` and sorts after `start_after`, in byte order of the
    /// key, at most `max`.
    pub fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<ObjectInfo>, StorageError> {
        self.settle(bucket, prefix, true);
        let rtx = self.view()?;
        get_json::<BucketRec, _>(&rtx.open_table(BUCKETS)?, bucket)?
            .ok_or(StorageError::NoSuchBucket)?;
        let t = rtx.open_table(OBJECTS)?;
        let base = obj_key(bucket, "");
        let full_prefix = obj_key(bucket, prefix);
        let start = match start_after {
            Some(s) if s >= prefix => obj_key(bucket, s),
            _ => full_prefix.clone(),
        };
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        for e in t.range(start.as_str()..)? {
            let (k, v) = e?;
            let k = k.value();
            if !k.starts_with(&full_prefix) {
                break;
            }
            if start_after.is_some_and(|s| k == obj_key(bucket, s)) {
                continue;
            }
            let rec: ObjRec = serde_json::from_slice(v.value())?;
            out.push(rec.info(&k[base.len()..]));
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- multipart

    fn check_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<UploadRec, StorageError> {
        let rtx = self.view()?;
        match get_json::<UploadRec, _>(&rtx.open_table(UPLOADS)?, upload_id)? {
            Some(u) if u.bucket == bucket && u.key == key => Ok(u),
            _ => {
                get_json::<BucketRec, _>(&rtx.open_table(BUCKETS)?, bucket)?
                    .ok_or(StorageError::NoSuchBucket)?;
                Err(StorageError::NoSuchUpload)
            }
        }
    }

    /// Start a multipart upload; returns its id (random, 32 hex chars).
    pub fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        meta: ObjectMeta,
    ) -> Result<String, StorageError> {
        check_key(key)?;
        let id = random_id()?;
        let rec = UploadRec {
            bucket: bucket.to_string(),
            key: key.to_string(),
            initiated: now_nanos(),
            meta,
        };
        let id2 = id.clone();
        self.txn(move |wtx, _| {
            if get_json::<BucketRec, _>(&wtx.open_table(BUCKETS)?, &rec.bucket)?.is_none() {
                return Err(StorageError::NoSuchBucket);
            }
            put_json(&mut wtx.open_table(UPLOADS)?, &id2, &rec)
        })?;
        Ok(id)
    }

    /// Start writing one part; its `commit` returns an `ObjectInfo` carrying the part's ETag.
    /// Re-uploading a part number replaces it.
    pub fn begin_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
    ) -> Result<PutWriter, StorageError> {
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(StorageError::InvalidPartNumber);
        }
        self.check_upload(bucket, key, upload_id)?;
        let limit = self.room(bucket, key)?;
        Ok(PutWriter::new(
            self.clone(),
            Target::Part {
                bucket: bucket.to_string(),
                key: key.to_string(),
                upload_id: upload_id.to_string(),
                number: part_number,
            },
            limit,
        ))
    }

    /// Assemble the listed parts into the object (sharing their chunks) and end the upload.
    /// ETags may be given with or without quotes.
    pub fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<ObjectInfo, StorageError> {
        self.settle(bucket, key, false);
        let max_size = self.inner.max_size;
        let (bucket, key, upload_id) = (bucket.to_string(), key.to_string(), upload_id.to_string());
        let parts: Vec<(u32, String)> = parts
            .iter()
            .map(|(n, e)| (*n, e.trim().trim_matches('"').to_ascii_lowercase()))
            .collect();
        let _g = self.inner.shared.read_guard();
        self.txn(move |wtx, freed| {
            let upload: UploadRec = match get_json(&wtx.open_table(UPLOADS)?, &upload_id)? {
                Some(u @ UploadRec { .. }) if u.bucket == bucket && u.key == key => u,
                _ => return Err(StorageError::NoSuchUpload),
            };
            if parts.is_empty() || parts.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(StorageError::InvalidPartOrder);
            }
            let mut manifest = Vec::new();
            let mut md5s = Md5::new();
            let mut size = 0u64;
            let mut too_small = false;
            {
                let pt = wtx.open_table(PARTS)?;
                let pc = wtx.open_table(PART_CHUNKS)?;
                for (i, (n, etag)) in parts.iter().enumerate() {
                    let pk = part_key(&upload_id, *n);
                    let rec: PartRec = get_json(&pt, &pk)?.ok_or(StorageError::InvalidPart)?;
                    if rec.etag != *etag {
                        return Err(StorageError::InvalidPart);
                    }
                    if i + 1 < parts.len() && rec.size < MIN_PART_SIZE {
                        too_small = true;
                    }
                    let raw = unhex(&rec.etag)
                        .ok_or_else(|| StorageError::Corrupt("part etag".into()))?;
                    md5s.update(&raw);
                    size += rec.size;
                    manifest.extend(get_manifest(&pc, &pk)?);
                }
            }
            if too_small {
                return Err(StorageError::EntityTooSmall);
            }
            let rec = ObjRec {
                size,
                etag: format!("{}-{}", hex(&md5s.finalize()), parts.len()),
                modified: now_nanos(),
                meta: upload.meta,
            };
            let info = install_object(wtx, freed, max_size, &bucket, &key, &rec, &manifest, None)?;
            remove_upload(wtx, freed, &upload_id)?;
            Ok(info)
        })
    }

    /// Abort an upload, dropping its parts.
    pub fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StorageError> {
        let (bucket, key, upload_id) = (bucket.to_string(), key.to_string(), upload_id.to_string());
        self.txn(move |wtx, freed| {
            match get_json::<UploadRec, _>(&wtx.open_table(UPLOADS)?, &upload_id)? {
                Some(u) if u.bucket == bucket && u.key == key => {}
                _ => return Err(StorageError::NoSuchUpload),
            }
            remove_upload(wtx, freed, &upload_id)
        })
    }

    /// Parts uploaded so far, by number.
    pub fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<PartInfo>, StorageError> {
        self.check_upload(bucket, key, upload_id)?;
        let rtx = self.view()?;
        let t = rtx.open_table(PARTS)?;
        let (lo, hi) = (format!("{upload_id}/"), format!("{upload_id}0"));
        let mut out = Vec::new();
        for e in t.range(lo.as_str()..hi.as_str())? {
            let (k, v) = e?;
            let number: u32 = k.value()[lo.len()..]
                .parse()
                .map_err(|_| StorageError::Corrupt("part key".into()))?;
            let r: PartRec = serde_json::from_slice(v.value())?;
            out.push(PartInfo {
                number,
                etag: r.etag,
                size: r.size,
                modified: from_nanos(r.modified),
            });
        }
        Ok(out)
    }

    /// Uploads in progress in `bucket` whose key starts with `prefix`, by key then start time.
    pub fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<UploadInfo>, StorageError> {
        let rtx = self.view()?;
        get_json::<BucketRec, _>(&rtx.open_table(BUCKETS)?, bucket)?
            .ok_or(StorageError::NoSuchBucket)?;
        let t = rtx.open_table(UPLOADS)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            let u: UploadRec = serde_json::from_slice(v.value())?;
            if u.bucket == bucket && u.key.starts_with(prefix) {
                out.push(UploadInfo {
                    key: u.key,
                    upload_id: k.value().to_string(),
                    initiated: from_nanos(u.initiated),
                });
            }
        }
        out.sort_by(|a, b| {
            (&a.key, a.initiated, &a.upload_id).cmp(&(&b.key, b.initiated, &b.upload_id))
        });
        Ok(out)
    }

    // ---------------------------------------------------------------- credentials

    /// Store (or replace) an S3 access key.
    pub fn put_credential(
        &self,
        access_key: &str,
        secret: &str,
        principal: &str,
    ) -> Result<(), StorageError> {
        let ak = access_key.to_string();
        let rec = CredRec {
            secret: secret.to_string(),
            principal: principal.to_string(),
        };
        let cached = (rec.secret.clone(), rec.principal.clone());
        self.txn(move |wtx, _| put_json(&mut wtx.open_table(CREDS)?, &ak, &rec))?;
        let mut c = self.creds_cache();
        c.0 += 1; // a lookup that read the table before this commit must not cache its result
        c.1.insert(access_key.to_string(), cached);
        Ok(())
    }

    /// Look up an access key: `(secret, principal)`. Served from memory after the first lookup.
    pub fn credential(&self, access_key: &str) -> Result<Option<(String, String)>, StorageError> {
        let generation = {
            let c = self.creds_cache();
            if let Some(hit) = c.1.get(access_key) {
                return Ok(Some(hit.clone()));
            }
            c.0
        };
        let rtx = self.view()?;
        let found = get_json::<CredRec, _>(&rtx.open_table(CREDS)?, access_key)?
            .map(|c| (c.secret, c.principal));
        if let Some(f) = &found {
            let mut c = self.creds_cache();
            if c.0 == generation {
                c.1.insert(access_key.to_string(), f.clone());
            }
        }
        Ok(found)
    }

    /// Every credential as `(access_key, principal)`, sorted by access key.
    pub fn list_credentials(&self) -> Result<Vec<(String, String)>, StorageError> {
        let rtx = self.view()?;
        let t = rtx.open_table(CREDS)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            let r: CredRec = serde_json::from_slice(v.value())?;
            out.push((k.value().to_string(), r.principal));
        }
        Ok(out)
    }

    /// Revoke an access key; returns whether it existed. Later lookups fail at once (the
    /// in-memory cache entry goes with it).
    pub fn delete_credential(&self, access_key: &str) -> Result<bool, StorageError> {
        let ak = access_key.to_string();
        let existed =
            self.txn(move |wtx, _| Ok(wtx.open_table(CREDS)?.remove(ak.as_str())?.is_some()))?;
        let mut c = self.creds_cache();
        c.0 += 1;
        c.1.remove(access_key);
        Ok(existed)
    }

    /// [`Store::credential`] if it is already in memory; never blocks on I/O (async callers use
    /// it first and fall back to `credential` on the blocking pool).
    pub fn cached_credential(&self, access_key: &str) -> Option<(String, String)> {
        self.creds_cache().1.get(access_key).cloned()
    }

    /// (generation bumped by every `put_credential` / `delete_credential`, access key ->
    /// (secret, principal)).
    fn creds_cache(&self) -> MutexGuard<'_, CredCache> {
        lock(&self.inner.creds)
    }

    // ---------------------------------------------------------------- NFS-style edits

    /// Write `data` at `offset` (creating the object if missing, zero-filling any gap), rewriting
    /// only the chunks the write touches. The new ETag is `md5(chunk ids)-N`.
    pub fn write_at(
        &self,
        bucket: &str,
        key: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<ObjectInfo, StorageError> {
        check_key(key)?;
        self.splice(bucket, key, Edit::Write { offset, data })
    }

    /// Set the object's size (creating it if missing), cutting or zero-extending the tail.
    pub fn truncate(&self, bucket: &str, key: &str, size: u64) -> Result<ObjectInfo, StorageError> {
        check_key(key)?;
        self.splice(bucket, key, Edit::Truncate(size))
    }

    fn splice(&self, bucket: &str, key: &str, edit: Edit<'_>) -> Result<ObjectInfo, StorageError> {
        let cs = u64::from(self.inner.shared.chunk_size);
        for _ in 0..SPLICE_RETRIES {
            let old = match self.open_object(bucket, key) {
                Ok(r) => Some(r),
                Err(StorageError::NoSuchKey) => None,
                Err(e) => return Err(e),
            };
            let size = old.as_ref().map_or(0, |r| r.info.size);
            let old_m: Vec<ChunkRef> = old
                .as_ref()
                .map(|r| r.manifest().to_vec())
                .unwrap_or_default();
            let (new_size, lo, hi, patch) = match edit {
                Edit::Write { offset, data } => {
                    if data.is_empty() {
                        if let Some(r) = &old {
                            return Ok(r.info.clone());
                        }
                    }
                    let end = offset
                        .checked_add(data.len() as u64)
                        .ok_or(StorageError::Unsupported("offset overflow"))?;
                    (size.max(end), offset.min(size), end, Some((offset, data)))
                }
                Edit::Truncate(t) => {
                    if t == size {
                        if let Some(r) = &old {
                            return Ok(r.info.clone());
                        }
                    }
                    (t, t.min(size), t, None)
                }
            };
            // chunk start offsets
            let mut starts = Vec::with_capacity(old_m.len());
            let mut acc = 0u64;
            for c in &old_m {
                starts.push(acc);
                acc += u64::from(c.len);
            }
            let n = old_m.len();
            let end_of = |i: usize| starts[i] + u64::from(old_m[i].len);
            let mut i0 = (0..n).find(|&i| end_of(i) > lo).unwrap_or(n);
            if i0 == n && n > 0 && u64::from(old_m[n - 1].len) < cs {
                i0 = n - 1;
            }
            let region_start = if i0 < n { starts[i0] } else { size };
            // Chunks entirely after the edit survive unchanged (unless the object shrinks past them).
            let tail = (i0..n)
                .find(|&j| starts[j] >= hi)
                .filter(|_| n > 0 && end_of(n - 1) <= new_size)
                .unwrap_or(n);
            let region_end = if tail < n { starts[tail] } else { new_size };
            let mut pins = Pins {
                shared: self.inner.shared.clone(),
                ids: Vec::new(),
            };
            let mut manifest: Vec<ChunkRef> = old_m[..i0].to_vec();
            let mut p = region_start;
            while p < region_end {
                let p_end = (p + cs).min(region_end);
                let mut buf = vec![0u8; (p_end - p) as usize];
                if let Some(r) = &old {
                    let old_end = p_end.min(size);
                    if p < old_end {
                        r.read_exact_at(p, &mut buf[..(old_end - p) as usize])?;
                    }
                }
                if let Some((off, data)) = patch {
                    let s = off.max(p);
                    let e = (off + data.len() as u64).min(p_end);
                    if s < e {
                        buf[(s - p) as usize..(e - p) as usize]
                            .copy_from_slice(&data[(s - off) as usize..(e - off) as usize]);
                    }
                }
                manifest.push(pins.put_chunk(&buf)?);
                p = p_end;
            }
            manifest.extend_from_slice(&old_m[tail..]);
            let sum: u64 = manifest.iter().map(|c| u64::from(c.len)).sum();
            debug_assert_eq!(sum, new_size);
            let rec = ObjRec {
                size: new_size,
                etag: manifest_etag(&manifest),
                modified: now_nanos(),
                meta: old
                    .as_ref()
                    .map(|r| r.info.meta.clone())
                    .unwrap_or_default(),
            };
            let existed = old.is_some();
            let expect = encode_manifest(&old_m);
            let (b, k) = (bucket.to_string(), key.to_string());
            let max_size = self.inner.max_size;
            let _g = self.inner.shared.read_guard();
            let r = self.txn(move |wtx, freed| {
                let ok = obj_key(&b, &k);
                {
                    let exists = wtx.open_table(OBJECTS)?.get(ok.as_str())?.is_some();
                    let cur = wtx
                        .open_table(OBJ_CHUNKS)?
                        .get(ok.as_str())?
                        .map(|v| v.value().to_vec());
                    if exists != existed || (exists && cur.as_deref() != Some(expect.as_slice())) {
                        return Err(StorageError::Conflict);
                    }
                }
                install_object(wtx, freed, max_size, &b, &k, &rec, &manifest, None)
            });
            drop(_g);
            drop(pins);
            match r {
                Err(StorageError::Conflict) => continue,
                other => return other,
            }
        }
        Err(StorageError::Conflict)
    }

    // ---------------------------------------------------------------- maintenance

    /// Full garbage collection: delete every stored chunk that is neither referenced nor pinned,
    /// and temp files of interrupted writes. Blocks writers while it runs.
    pub fn gc(&self) -> Result<GcStats, StorageError> {
        let sh = &self.inner.shared;
        let _w = sh.write_guard();
        let rtx = self.view()?;
        let refs = rtx.open_table(REFS)?;
        let mut ids = Vec::new();
        sh.chunks.list(&mut |id| ids.push(id))?;
        let mut st = GcStats::default();
        let mut requeue = Vec::new();
        {
            let pins = sh.pins();
            for id in ids {
                if refs.get(id.0.as_slice())?.is_some() {
                    st.chunks_kept += 1;
                } else if pins.contains_key(&id) {
                    st.chunks_kept += 1;
                    requeue.push(id);
                } else {
                    sh.chunks.delete(&id)?;
                    st.chunks_deleted += 1;
                }
            }
        }
        st.temp_deleted = sh.chunks.cleanup_temp()?;
        lock(&self.inner.freed).extend(requeue);
        Ok(st)
    }

    /// Group-commit counters (operations per transaction shows the batching).
    pub fn commit_stats(&self) -> CommitStats {
        *lock(&self.inner.commit_stats)
    }

    /// Delete queued freed chunks now (the background reclaimer does this every 200 ms).
    pub fn reclaim(&self) -> Result<u64, StorageError> {
        reclaim(&self.inner.mem, &self.inner.shared, &self.inner.freed)
    }

    /// Check metadata against itself and the chunk backend (reads no chunk contents).
    pub fn fsck(&self) -> Result<FsckReport, StorageError> {
        let sh = &self.inner.shared;
        let _w = sh.write_guard();
        let rtx = self.view()?;
        let mut rep = FsckReport::default();
        let mut counts: HashMap<ChunkId, u64> = HashMap::new();
        let mut usage: HashMap<String, (u64, u64)> = HashMap::new();
        let objects = rtx.open_table(OBJECTS)?;
        let obj_chunks = rtx.open_table(OBJ_CHUNKS)?;
        for e in objects.iter()? {
            let (k, v) = e?;
            let rec: ObjRec = serde_json::from_slice(v.value())?;
            let m = get_manifest(&obj_chunks, k.value())?;
            rep.objects += 1;
            if m.iter().map(|c| u64::from(c.len)).sum::<u64>() != rec.size {
                rep.bad_sizes += 1;
            }
            for c in &m {
                *counts.entry(c.id).or_default() += 1;
            }
            let bucket = k.value().split('/').next().unwrap_or_default().to_string();
            let u = usage.entry(bucket).or_default();
            u.0 += rec.size;
            u.1 += 1;
        }
        for e in rtx.open_table(PART_CHUNKS)?.iter()? {
            let (_, v) = e?;
            for c in decode_manifest(v.value())? {
                *counts.entry(c.id).or_default() += 1;
            }
        }
        let refs = rtx.open_table(REFS)?;
        let mut stored_refs = 0u64;
        for e in refs.iter()? {
            let (k, v) = e?;
            stored_refs += 1;
            let mut id = [0u8; 32];
            if k.value().len() != 32 {
                rep.bad_refcounts += 1;
                continue;
            }
            id.copy_from_slice(k.value());
            if counts.get(&ChunkId(id)).copied() != Some(v.value()) {
                rep.bad_refcounts += 1;
            }
        }
        if stored_refs != counts.len() as u64 {
            rep.bad_refcounts += 1;
        }
        rep.chunks_referenced = counts.len() as u64;
        let mut stored = HashSet::new();
        sh.chunks.list(&mut |id| {
            stored.insert(id);
        })?;
        let mut inline_ids = HashSet::new();
        for e in rtx.open_table(CHUNK_DATA)?.iter()? {
            let (k, _) = e?;
            let mut id = [0u8; 32];
            if k.value().len() == 32 {
                id.copy_from_slice(k.value());
                inline_ids.insert(ChunkId(id));
            }
        }
        rep.chunks_in_backend = counts.keys().filter(|id| stored.contains(id)).count() as u64;
        rep.missing_chunks = counts
            .keys()
            .filter(|id| !stored.contains(id) && !inline_ids.contains(id))
            .count() as u64;
        rep.orphan_chunks = stored.iter().filter(|id| !counts.contains_key(id)).count() as u64;
        let (mut tb, mut to) = (0, 0);
        for e in rtx.open_table(BUCKETS)?.iter()? {
            let (k, v) = e?;
            let r: BucketRec = serde_json::from_slice(v.value())?;
            let u = usage.get(k.value()).copied().unwrap_or_default();
            if (r.bytes, r.objects) != u {
                rep.bad_usage += 1;
            }
            tb += r.bytes;
            to += r.objects;
        }
        let stats = rtx.open_table(STATS)?;
        if (stat(&stats, "bytes")?, stat(&stats, "objects")?) != (tb, to) {
            rep.bad_usage += 1;
        }
        Ok(rep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k
    }

    fn get(s: &Store, i: u32) -> Option<Vec<u8>> {
        let v = s.view().expect("view");
        let t = v.open_table(CHUNK_DATA).expect("table");
        let r = t
            .get(key(i).as_slice())
            .expect("get")
            .map(|g| g.value().to_vec());
        r
    }

    #[test]
    fn background_checkpoints_and_an_oversized_batch_survive_reopen() {
        let d = tempfile::tempdir().expect("tempdir");
        let cfg = StoreConfig::new(d.path());
        let big = vec![7u8; crate::wal::RECORD_MAX + 1000];
        {
            let s = Store::open(cfg.clone()).expect("open");
            // ~1 MiB of records: several background checkpoints, both halves of the log.
            for i in 0..3000u32 {
                s.txn(move |tx, _| {
                    let mut t = tx.open_table(CHUNK_DATA)?;
                    t.insert(key(i).as_slice(), vec![i as u8; 300].as_slice())?;
                    if i % 3 == 0 && i > 0 {
                        t.remove(key(i - 1).as_slice())?;
                    }
                    Ok(())
                })
                .expect("commit");
            }
            // One batch larger than a log record: committed by a blocking checkpoint.
            let b = big.clone();
            s.txn(move |tx, _| {
                tx.open_table(CHUNK_DATA)?
                    .insert(key(u32::MAX).as_slice(), b.as_slice())?;
                Ok(())
            })
            .expect("oversized commit");
            assert_eq!(get(&s, u32::MAX).as_deref(), Some(big.as_slice()));
            assert_eq!(get(&s, 2999), Some(vec![2999u32 as u8; 300]));
        }
        let s = Store::open(cfg).expect("reopen");
        for i in 0..3000u32 {
            let want = (i % 3 != 2 || i == 2999).then(|| vec![i as u8; 300]);
            assert_eq!(get(&s, i), want, "key {i} after reopen");
        }
        assert_eq!(get(&s, u32::MAX).as_deref(), Some(big.as_slice()));
    }
}
