//! The journal of staged (NFS UNSTABLE) writes: `data_dir/fs_unstable.log`.
//!
//! Every staged write is appended here (page cache, no fsync) before it is acknowledged, so a
//! crash of the process (kill -9, abort) loses no acknowledged write: the page cache survives
//! it, and the next [`crate::FileSystem::new`] over the store replays the writes that were
//! not applied yet. Only a power cut (or a crash of the machine) can lose them, as with
//! kernel and ganesha NFS servers; COMMIT makes them durable (it applies them to the store).
//!
//! Records: `Write {ino, seq, offset, data}` for each staged write, and `Done {ino, upto}` once
//! the writes of `ino` up to sequence number `upto` are applied durably (or discarded: the
//! file was removed or replaced). A write is appended while its inode's staging state is
//! locked, in the same critical section that adds it to the write-back buffer, so the writes a
//! flush takes are exactly the inode's records up to the sequence number it notes.
//! Each record carries a BLAKE3 checksum; replay stops at the first record that does not
//! check (the tail of a write the crash interrupted, never acknowledged).
//!
//! The header names the kernel's boot id. A journal from another boot is discarded, not
//! replayed: after a power cut the file may hold any subset of what was appended (a `Write`
//! without its `Done`), and replaying it could overwrite later durable changes. Within one
//! boot the page cache holds exactly what was appended, in order.
//!
//! Size: the file is emptied whenever a flush leaves nothing staged. Once it exceeds [`LIMIT`]
//! anyway (writers that never pause), the next staged write first flushes every staged
//! inode and truncates the file when nothing is staged any more
//! ([`crate::FileSystem::drain_journal`], which tm-nfs calls on a blocking thread first).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::writeback::lock;
use super::FsError;

/// File name in the data directory.
pub(crate) const FILE: &str = "fs_unstable.log";
/// Size beyond which the journal is drained and truncated (it is also emptied whenever a
/// flush leaves nothing staged; this bounds it under writers that never pause).
pub(crate) const LIMIT: u64 = 1 << 30;
const MAGIC: &[u8; 8] = b"TMFSJNL1";
const HEADER: u64 = 64;
const REC: usize = 48;
const WRITE: u8 = 1;
const DONE: u8 = 2;

/// One store's journal.
pub(crate) struct Journal {
    inner: Mutex<Inner>,
    /// Held by the writer that drains the journal (others wait for it).
    pub drain: Mutex<()>,
}

struct Inner {
    file: File,
    len: u64,
    seq: u64,
}

/// Writes to apply after a crash: per inode, in order.
pub(crate) type Pending = HashMap<u64, Vec<(u64, Vec<u8>)>>;

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= (HEADER as usize) - MAGIC.len())
}

fn header() -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    if let Some(b) = boot_id() {
        h[8..8 + b.len()].copy_from_slice(b.as_bytes());
    }
    h
}

fn check(head: &[u8], data: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&head[..32]);
    h.update(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

fn record(kind: u8, ino: u64, seq: u64, offset: u64, data: &[u8]) -> [u8; REC] {
    let mut r = [0u8; REC];
    r[0] = kind;
    r[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
    r[8..16].copy_from_slice(&ino.to_le_bytes());
    r[16..24].copy_from_slice(&seq.to_le_bytes());
    r[24..32].copy_from_slice(&offset.to_le_bytes());
    let c = check(&r, data);
    r[32..48].copy_from_slice(&c);
    r
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

impl Journal {
    /// Opens the journal in `dir` and returns it with the writes a crash of this boot left
    /// unapplied (none from another boot). The caller applies them, then calls
    /// [`Journal::reset`].
    pub(crate) fn open(dir: &Path) -> Result<(Journal, Pending), FsError> {
        let path: PathBuf = dir.join(FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let pending = read_pending(&file)?;
        Ok((
            Journal {
                inner: Mutex::new(Inner {
                    file,
                    len: 0,
                    seq: 0,
                }),
                drain: Mutex::new(()),
            },
            pending,
        ))
    }

    /// Empties the journal (everything in it is applied or dropped); `keep` decides, under the
    /// journal's lock, whether that is still true (nothing staged).
    pub(crate) fn reset(&self, keep: impl FnOnce() -> bool) -> Result<(), FsError> {
        let mut j = lock(&self.inner);
        if !keep() {
            return Ok(());
        }
        j.file.set_len(0)?;
        j.file.write_all_at(&header(), 0)?;
        j.len = HEADER;
        Ok(())
    }

    /// Current size in bytes.
    pub(crate) fn len(&self) -> u64 {
        lock(&self.inner).len
    }

    /// Appends a staged write; returns its sequence number. The write may be acknowledged
    /// once this returns.
    pub(crate) fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<u64, FsError> {
        let mut j = lock(&self.inner);
        j.seq += 1;
        let seq = j.seq;
        let at = j.len;
        let head = record(WRITE, ino, seq, offset, data);
        j.file.write_all_at(&head, at)?;
        j.file.write_all_at(data, at + REC as u64)?;
        j.len = at + (REC + data.len()) as u64;
        Ok(seq)
    }

    /// Notes that the writes of `ino` up to `upto` are applied durably or dropped.
    pub(crate) fn done(&self, ino: u64, upto: u64) {
        if upto == 0 {
            return;
        }
        let mut j = lock(&self.inner);
        let at = j.len;
        if j.file
            .write_all_at(&record(DONE, ino, upto, 0, &[]), at)
            .is_ok()
        {
            j.len = at + REC as u64;
        }
    }
}

/// The `Write` records of this boot's journal without a later `Done`.
fn read_pending(file: &File) -> Result<Pending, FsError> {
    let mut pending: HashMap<u64, Vec<(u64, u64, Vec<u8>)>> = HashMap::new();
    let size = file.metadata()?.len();
    let mut h = [0u8; HEADER as usize];
    if size < HEADER || file.read_exact_at(&mut h, 0).is_err() || &h[..8] != MAGIC {
        return Ok(HashMap::new());
    }
    let ours = header();
    if ours[8..] != h[8..] || boot_id().is_none() {
        // Another boot (or no boot id to tell): the page cache did not survive.
        return Ok(HashMap::new());
    }
    let mut at = HEADER;
    let mut r = [0u8; REC];
    while at + REC as u64 <= size {
        file.read_exact_at(&mut r, at)?;
        let len = u64::from(u32::from_le_bytes(r[4..8].try_into().expect("4 bytes")));
        if at + REC as u64 + len > size {
            break;
        }
        let mut data = vec![0u8; len as usize];
        file.read_exact_at(&mut data, at + REC as u64)?;
        if check(&r, &data) != r[32..48] {
            break;
        }
        let (ino, seq, offset) = (le64(&r[8..]), le64(&r[16..]), le64(&r[24..]));
        match r[0] {
            WRITE => pending.entry(ino).or_default().push((seq, offset, data)),
            DONE => {
                if let Some(v) = pending.get_mut(&ino) {
                    v.retain(|(s, _, _)| *s > seq);
                }
            }
            _ => break,
        }
        at += REC as u64 + len;
    }
    Ok(pending
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(ino, v)| (ino, v.into_iter().map(|(_, o, d)| (o, d)).collect()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_keeps_writes_without_done_stops_at_a_torn_tail_and_ignores_other_boots() {
        assert!(
            boot_id().is_some(),
            "/proc/sys/kernel/random/boot_id is needed (without it nothing is replayed)"
        );
        let d = tempfile::tempdir().expect("tmp");
        let (j, pending) = Journal::open(d.path()).expect("open");
        assert!(pending.is_empty());
        j.reset(|| true).expect("reset");
        let s1 = j.write(5, 0, b"aaa").expect("write");
        j.write(6, 10, b"xyz").expect("write");
        j.done(5, s1);
        j.write(5, 3, b"bbb").expect("write");
        j.write(7, 0, b"gone").expect("write");
        let s4 = j.write(7, 4, b"gone").expect("write");
        j.done(7, s4);
        drop(j);
        let expect: Pending = [
            (5, vec![(3, b"bbb".to_vec())]),
            (6, vec![(10, b"xyz".to_vec())]),
        ]
        .into_iter()
        .collect();
        let (_, p) = Journal::open(d.path()).expect("reopen");
        assert_eq!(p, expect);
        // A torn record at the end (a write the crash interrupted) is not replayed.
        let path = d.path().join(FILE);
        let mut raw = std::fs::read(&path).expect("read");
        let good = raw.len();
        raw.extend_from_slice(&record(WRITE, 5, 99, 0, b"torn")[..]);
        raw.extend_from_slice(b"to");
        std::fs::write(&path, &raw).expect("write");
        assert_eq!(Journal::open(d.path()).expect("reopen").1, expect);
        // A damaged record stops the replay there.
        raw.truncate(good);
        raw.extend_from_slice(&record(WRITE, 8, 100, 0, b"okay")[..]);
        raw.extend_from_slice(b"okay");
        let at = raw.len() - 1;
        raw[at] ^= 1;
        std::fs::write(&path, &raw).expect("write");
        assert_eq!(Journal::open(d.path()).expect("reopen").1, expect);
        // Another boot's journal is discarded.
        raw[8] ^= 1;
        std::fs::write(&path, &raw).expect("write");
        assert!(Journal::open(d.path()).expect("reopen").1.is_empty());
    }
}
