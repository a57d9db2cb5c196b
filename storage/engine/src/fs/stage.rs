//! Staged (NFS UNSTABLE) writes: kept in the store-wide write-back buffer (`writeback.rs`)
//! until COMMIT, visible at once to every reader of the store.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::writeback::{lock, WriteBack};
use super::*;
use crate::object::meta::*;
use crate::object::Staging;
use crate::StorageError;

impl Staging for WriteBack {
    /// Apply the writes staged to `bucket/key` (every key under it with `prefix`) before the
    /// store reads, replaces or removes the object, so it is seen with every acknowledged
    /// write. Costs one atomic load when nothing is staged. A failed flush is reported to the
    /// NFS client at its next WRITE or COMMIT.
    fn settle(&self, store: &Store, bucket: &str, key: &str, prefix: bool) {
        if self.is_empty() {
            return;
        }
        let inos = self.inodes_at(&obj_key(bucket, key), prefix);
        if inos.is_empty() {
            return;
        }
        let fs = FileSystem::bare(store.clone());
        for ino in inos {
            fs.flush_background(ino);
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl FileSystem {
    /// Stage a write in memory (NFS UNSTABLE): it is visible at once to every reader of the
    /// store (reads apply staged writes first) and durable after [`FileSystem::flush`]. Quota,
    /// read-only and file-type checks happen here, so a refusal stores nothing.
    pub fn stage(&self, ino: u64, offset: u64, data: &[u8]) -> Result<Staged, FsError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::FileTooBig)?;
        if end > super::MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        let (mut attr, room, key) = self.check_write(ino)?;
        let wb = self.wb();
        if self.journal_full() {
            self.drain_journal();
        }
        if data.is_empty() {
            self.overlay(&mut attr);
            return Ok(Staged {
                attr,
                inode_bytes: 0,
                total_bytes: wb.total.load(Ordering::Relaxed),
            });
        }
        let now = now_nanos();
        let base = attr.size;
        let cs = u64::from(self.store.shared().chunk_size);
        let r = wb.with_state(ino, &key, |d| {
            if let Some(e) = d.error.take() {
                return Err(e);
            }
            let new_end = if d.overlays() { d.end.max(end) } else { end };
            if let Some(room) = room {
                if new_end > base && new_end - base > room {
                    return Err(StorageError::QuotaExceeded.into());
                }
            }
            // Journaled (page cache) before it is acknowledged, in the critical section that
            // stages it: a crash of the process then loses nothing acknowledged.
            if let Some(j) = wb.journal.get() {
                d.seq = j.write(ino, offset, data)?;
            }
            // Extents never cross a chunk boundary, so a sequential writer fills whole-chunk
            // buffers that the flush stores without another copy; large writes use recycled
            // chunk-sized buffers (no fresh pages to fault in and zero per byte written).
            let mut rest = data;
            let mut at = offset;
            while !rest.is_empty() {
                let limit = (at / cs + 1) * cs;
                let room = (limit - at) as usize;
                let n = room.min(rest.len());
                match d.extents.last_mut() {
                    Some((o, v)) if *o + v.len() as u64 == at && *o / cs == at / cs => {
                        v.extend_from_slice(&rest[..n]);
                        rest = &rest[n..];
                        at += n as u64;
                    }
                    _ => {
                        let mut v = if data.len() >= STAGE_POOLED_MIN {
                            wb.buffer(room)
                        } else {
                            Vec::with_capacity(n)
                        };
                        v.extend_from_slice(&rest[..n]);
                        d.extents.push((at, v));
                        rest = &rest[n..];
                        at += n as u64;
                    }
                }
            }
            d.bytes += data.len();
            d.end = new_end;
            d.mtime = now.max(d.mtime);
            d.since.get_or_insert_with(Instant::now);
            Ok((d.bytes, new_end, d.mtime))
        });
        let (inode_bytes, new_end, mtime) = match r {
            Ok(x) => x,
            Err(e) => {
                wb.retire(ino, false);
                return Err(e);
            }
        };
        let total_bytes = wb.total.fetch_add(data.len(), Ordering::Relaxed) + data.len();
        attr.size = attr.size.max(new_end);
        attr.mtime = from_nanos(mtime);
        attr.ctime = attr.mtime;
        Ok(Staged {
            attr,
            inode_bytes,
            total_bytes,
        })
    }

    /// Apply every write staged for `ino` durably (NFS COMMIT); returns at once when nothing
    /// is staged. Reports a failure of an earlier background flush of this inode.
    pub fn flush(&self, ino: u64) -> Result<(), FsError> {
        self.flush_opt(ino, false)
    }

    /// Like [`FileSystem::flush`], keeping a failure for the inode's next stage or flush.
    pub fn flush_background(&self, ino: u64) {
        let _ = self.flush_opt(ino, true);
    }

    pub(super) fn flush_opt(&self, ino: u64, remember: bool) -> Result<(), FsError> {
        let wb = self.wb();
        let Some(b) = wb.get(ino) else {
            return Ok(());
        };
        let mut upto = 0;
        let r = {
            let _serial = lock(&b.flush);
            let taken = {
                let mut d = lock(&b.state);
                match d.error.take() {
                    Some(e) if !remember => Err(e),
                    e => {
                        d.error = e;
                        upto = d.seq;
                        let ex = std::mem::take(&mut d.extents);
                        let n = std::mem::take(&mut d.bytes);
                        d.since = None;
                        d.flushing = !ex.is_empty();
                        wb.total.fetch_sub(n, Ordering::Relaxed);
                        Ok(ex)
                    }
                }
            };
            match taken {
                Err(e) => Err(e),
                Ok(ex) if ex.is_empty() => Ok(()),
                Ok(ex) => {
                    let refs: Vec<(u64, &[u8])> =
                        ex.iter().map(|(o, d)| (*o, d.as_slice())).collect();
                    let r = self.edit(ino, &refs, None, None).map(|_| ());
                    drop(refs);
                    if r.is_ok() {
                        if let Some(j) = wb.journal.get() {
                            j.done(ino, upto);
                        }
                    }
                    wb.recycle(ex);
                    let mut d = lock(&b.state);
                    d.flushing = false;
                    match r {
                        Err(e) if remember => {
                            d.error.get_or_insert(e);
                            Ok(())
                        }
                        r => r,
                    }
                }
            }
        };
        wb.retire(ino, false);
        if wb.is_empty() {
            // Nothing staged any more: everything in the journal is applied.
            if let Some(j) = wb.journal.get() {
                let _ = j.reset(|| wb.is_empty());
            }
        }
        r
    }

    /// Flush (in the background sense: failures are kept for the inode's next COMMIT) every
    /// inode whose oldest staged write is older than `age`; all of them with a zero `age`.
    pub fn flush_idle(&self, age: Duration) {
        for (ino, b) in self.wb().all() {
            let due = {
                let d = lock(&b.state);
                d.since.is_some_and(|t| t.elapsed() >= age)
            };
            if due || age.is_zero() {
                self.flush_background(ino);
            } else {
                self.wb().retire(ino, false);
            }
        }
    }

    /// Whether the journal of staged writes is over its size limit: the next [`Self::stage`]
    /// drains it first ([`Self::drain_journal`]; blocking, call it off async threads).
    pub fn journal_full(&self) -> bool {
        self.wb()
            .journal
            .get()
            .is_some_and(|j| j.len() > super::journal::LIMIT)
    }

    /// Flushes every staged inode and empties the journal if nothing is staged then (other
    /// writers that find the journal over its limit wait here meanwhile).
    pub fn drain_journal(&self) {
        let wb = self.wb();
        let Some(j) = wb.journal.get() else { return };
        let _one = lock(&j.drain);
        if j.len() <= super::journal::LIMIT {
            return;
        }
        self.flush_idle(Duration::ZERO);
        let _ = j.reset(|| wb.is_empty());
    }

    /// Opens the store's journal of staged writes if no view did yet, and applies the writes
    /// a crash of this boot left in it (`journal.rs`).
    pub(super) fn open_journal(&self) -> Result<(), FsError> {
        let wb = self.wb();
        let _one = lock(&wb.journal_init);
        if wb.journal.get().is_some() {
            return Ok(());
        }
        let (j, pending) = super::journal::Journal::open(self.store.data_dir())?;
        let replayed = !pending.is_empty();
        for (ino, writes) in pending {
            let refs: Vec<(u64, &[u8])> = writes.iter().map(|(o, d)| (*o, d.as_slice())).collect();
            match self.edit(ino, &refs, None, None) {
                Ok(_) | Err(FsError::Stale | FsError::IsADirectory | FsError::Invalid(_)) => {}
                Err(FsError::Storage(StorageError::QuotaExceeded)) => {}
                Err(e) => return Err(e),
            }
        }
        if replayed {
            // The chunks the replayed edits replaced are freed now, not by the background
            // reclaimer later (a consistency check right after opening finds none left).
            self.store.gc()?;
        }
        j.reset(|| true)?;
        let _ = wb.journal.set(j);
        Ok(())
    }

    /// Whether `ino` has staged writes, a flush of them running, or a kept flush failure
    /// (one atomic load when nothing is staged anywhere).
    pub fn is_staged(&self, ino: u64) -> bool {
        self.wb().get(ino).is_some()
    }

    /// Number of inodes with staged writes (or a kept flush failure) in the whole store.
    pub fn staged_inodes(&self) -> usize {
        self.wb().len()
    }

    /// Bytes staged in the whole store and not yet being applied.
    pub fn staged_bytes(&self) -> usize {
        self.wb().total.load(Ordering::Relaxed)
    }

    /// Flush staged writes of every inode at `path` or below it (before a rename moves them).
    pub(super) fn flush_under(&self, share: &str, path: &str) -> Result<(), FsError> {
        let wb = self.wb();
        if wb.is_empty() {
            return Ok(());
        }
        let mut inos = wb.inodes_at(&obj_key(share, path), false);
        inos.extend(wb.inodes_at(&obj_key(share, &format!("{path}/")), true));
        for ino in inos {
            self.flush_background(ino);
        }
        Ok(())
    }

    /// Drop (without applying) the staged writes to the file at `share/path` (it was removed
    /// or replaced).
    pub(super) fn discard_at(&self, share: &str, path: &str) {
        let wb = self.wb();
        for ino in wb.inodes_at(&obj_key(share, path), false) {
            wb.retire(ino, true);
        }
    }
}
