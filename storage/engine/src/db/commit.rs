//! The commit path: where a metadata transaction becomes durable.
//!
//! [`commit_batch`] is the one place: the batch's redo record is written to the log and synced
//! (`Wal::write` + `Wal::sync`), and only then are its writes published in the in-memory layer
//! (visible to readers); a record that does not fit the log is made durable by a blocking
//! checkpoint instead. Callers reach it through [`Db::txn`] (on the caller's thread when nobody
//! else commits, else through the committer thread) and [`Db::submit`] (queued, non-blocking):
//! the committer runs every queued job in ONE transaction and commits once (group commit: one
//! log write and sync for many operations).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::checkpoint::checkpoint_all;
use super::mem::{Mem, Tx};
use super::wal::Wal;
use super::{lock, Db, Schema};
use crate::StorageError;

/// Most jobs folded into one metadata transaction.
const MAX_BATCH: usize = 512;

/// An error a transaction closure may return: a refusal (the closure changed nothing) or a
/// failure (`is_failure`), which aborts the whole batch.
pub(crate) trait TxError: From<StorageError> + Send + 'static {
    /// True for machine failures (as opposed to refusals of a request).
    fn is_failure(&self) -> bool;
}

impl TxError for StorageError {
    fn is_failure(&self) -> bool {
        StorageError::is_failure(self)
    }
}

/// Group-commit counters since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Metadata write transactions committed (one fsync each).
    pub transactions: u64,
    /// Operations carried by them.
    pub operations: u64,
}

type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send>;
type RunFn<E> = Box<dyn FnOnce(&Tx, &mut E) -> Step + Send>;

pub(super) enum Step {
    /// The job ran (or refused without mutating); tell it the commit result.
    Done(Completion),
    /// The job hit a machine failure mid-way: the transaction must be aborted (this reports
    /// the failure to the job's caller).
    Fatal(Box<dyn FnOnce() + Send>),
}

pub(super) struct Job<E> {
    run: RunFn<E>,
    fail: Box<dyn FnOnce(StorageError) + Send>,
}

/// Make a batch durable and visible: its redo record written to the log and synced, then its
/// writes published in the in-memory layer (waking the checkpoint thread when one is due);
/// or, when the record does not fit (or the log fails), a checkpoint that includes it.
pub(super) fn commit_batch(
    mem: &Mem,
    schema: &Schema,
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
    checkpoint_all(mem, schema, wal, Some(&local))
}

/// What the committer thread shares with the database.
pub(super) struct CommitterCtx<E> {
    pub mem: Arc<Mem>,
    pub schema: Arc<Schema>,
    pub after: Arc<dyn Fn(E) + Send + Sync>,
    pub stats: Arc<Mutex<CommitStats>>,
    pub wal: Arc<Mutex<Wal>>,
    pub queued: Arc<AtomicUsize>,
    pub commits: Arc<AtomicU64>,
    pub ckpt: std::thread::Thread,
}

pub(super) fn committer<E: Default + Send + 'static>(rx: Receiver<Job<E>>, ctx: CommitterCtx<E>) {
    let CommitterCtx {
        mem,
        schema,
        after,
        stats,
        wal,
        queued,
        commits,
        ckpt,
    } = ctx;
    let mut pending: VecDeque<Job<E>> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(j) => {
                    queued.fetch_sub(1, Ordering::AcqRel);
                    pending.push_back(j);
                }
                Err(_) => return, // the database closed; the checkpoint thread writes the rest
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
        let mut effects = E::default();
        let mut fatal = false;
        while let Some(Job { run, fail }) = pending.pop_front() {
            if done.len() >= MAX_BATCH {
                pending.push_front(Job { run, fail });
                break;
            }
            match run(&tx, &mut effects) {
                Step::Done(c) => done.push(c),
                Step::Fatal(report) => {
                    report();
                    fatal = true;
                    break;
                }
            }
        }
        let result = if fatal {
            drop(tx);
            Err("transaction aborted: another write in the batch failed".to_string())
        } else {
            commit_batch(&mem, &schema, tx, &mut wal, &ckpt)
        };
        drop(wal);
        match result {
            Ok(()) => {
                commits.fetch_add(1, Ordering::Release);
                after(effects);
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

impl<E: Default + Send + 'static> Db<E> {
    /// Run `f` inside the next group-committed write transaction; returns once it is durable.
    /// `f` also collects effects (`E`) that the database hands to its `after` hook once the
    /// transaction is durable.
    ///
    /// Contract for `f`: do every check (and return refusals) before the first mutation; only
    /// failures (`is_failure()`) may happen after mutating, and they abort the whole batch.
    pub(crate) fn txn<T, R, F>(&self, f: F) -> Result<T, R>
    where
        T: Send + 'static,
        R: TxError,
        F: FnOnce(&Tx, &mut E) -> Result<T, R> + Send + 'static,
    {
        // Nobody else committing or queued: commit here (no hand-off to the committer thread
        // and back). Otherwise join the committer's next batch (group commit).
        if self.queued.load(Ordering::Acquire) == 0 {
            if let Ok(wal) = self.wal.try_lock() {
                return self.commit_here(wal, f);
            }
        }
        let (tx, rx) = mpsc::sync_channel::<Result<T, R>>(1);
        self.submit(f, move |r| {
            let _ = tx.send(r);
        });
        rx.recv()
            .map_err(|_| R::from(StorageError::Db("committer thread stopped".into())))?
    }

    /// [`Db::txn`] on the caller's thread, holding the log.
    fn commit_here<T, R, F>(&self, mut wal: MutexGuard<'_, Wal>, f: F) -> Result<T, R>
    where
        R: TxError,
        F: FnOnce(&Tx, &mut E) -> Result<T, R>,
    {
        let tx = self.mem.begin()?;
        let mut effects = E::default();
        let v = f(&tx, &mut effects)?; // a refusal or failure drops the transaction: nothing changed
        let r = commit_batch(&self.mem, &self.schema, tx, &mut wal, &self.ckpt_thread);
        self.commits.fetch_add(1, Ordering::Release);
        r.map_err(|m| R::from(StorageError::Db(m)))?;
        drop(wal);
        (self.after)(effects);
        let mut st = lock(&self.stats);
        st.transactions += 1;
        st.operations += 1;
        Ok(v)
    }

    /// Like [`Db::txn`] without blocking: queues `f` for the next group commit and returns at
    /// once; `done` runs exactly once, on the committer thread after the commit (or at once if
    /// the committer is gone), with `f`'s result if the commit succeeded. `done` must not block.
    pub(crate) fn submit<T, R, F, D>(&self, f: F, done: D)
    where
        T: Send + 'static,
        R: TxError,
        F: FnOnce(&Tx, &mut E) -> Result<T, R> + Send + 'static,
        D: FnOnce(Result<T, R>) + Send + 'static,
    {
        // `done` is reached either through `run` (commit result) or `fail` (never ran, or the
        // transaction was aborted by this job's failure): whichever comes first takes it.
        let done = Arc::new(Mutex::new(Some(done)));
        let d2 = done.clone();
        let job = Job {
            run: Box::new(move |wtx, effects| match f(wtx, effects) {
                Ok(v) => Step::Done(Box::new(move |r| {
                    if let Some(d) = lock(&done).take() {
                        d(r.map(|()| v).map_err(R::from));
                    }
                })),
                Err(e) if e.is_failure() => Step::Fatal(Box::new(move || {
                    if let Some(d) = lock(&done).take() {
                        d(Err(e));
                    }
                })),
                Err(e) => Step::Done(Box::new(move |_| {
                    if let Some(d) = lock(&done).take() {
                        d(Err(e));
                    }
                })),
            }),
            fail: Box::new(move |e| {
                if let Some(d) = lock(&d2).take() {
                    d(Err(R::from(e)));
                }
            }),
        };
        let stopped = || StorageError::Db("committer thread stopped".into());
        match self.jobs.as_ref() {
            Some(jobs) => {
                self.queued.fetch_add(1, Ordering::AcqRel);
                if let Err(mpsc::SendError(job)) = jobs.send(job) {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    (job.fail)(stopped());
                }
            }
            None => (job.fail)(stopped()),
        }
    }
}
