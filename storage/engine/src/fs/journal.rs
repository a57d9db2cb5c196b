//! The journal of staged (NFS UNSTABLE) writes: `data_dir/fs_unstable.log`, with the marks of
//! applied writes in `data_dir/fs_unstable.done`.
//!
//! Every staged write is appended to the log (page cache, no fsync) before it is acknowledged,
//! so a crash of the process (kill -9, abort) loses no acknowledged write: the page cache
//! survives it, and the next [`crate::FileSystem::new`] over the store replays the writes that
//! were not applied yet. Only a power cut (or a crash of the machine) can lose them, as with
//! kernel and ganesha NFS servers; COMMIT makes them durable (it applies them to the store).
//!
//! Records: `Write {ino, seq, offset, data}` in the log for each staged write, and `Done {ino,
//! upto}` in the done file once the writes of `ino` up to sequence number `upto` are applied
//! durably (or discarded: the file was removed or replaced). A write is appended while its
//! inode's staging state is locked, in the same critical section that adds it to the
//! write-back buffer, so the writes a flush takes are exactly the inode's records up to the
//! sequence number it notes.
//!
//! Replay is safe after a power cut too, even one without a reboot (the power-loss harness
//! cuts that way, keeping any subset of the unsynced pages):
//! * Each record carries its length and a BLAKE3 checksum over its head, its data and the
//!   journal's epoch; replay stops at the first record that does not check, so a torn or
//!   garbage tail (a write the cut interrupted, never acknowledged, or pages that never reached
//!   the disk) is never applied.
//! * `Done` records go to their own small file, which is `fdatasync`ed before `done` returns,
//!   so the mark of an applied write is durable before any later change of that file can be
//!   (a `Write` kept without its `Done` would otherwise be applied again over later changes).
//!   The log itself is never synced: its data pages are garbage once applied.
//! * Both files' headers name an epoch, new at every reset (random); a record written under
//!   another epoch does not check, so bytes of an earlier, emptied journal that a cut brings
//!   back are never applied, and a log whose epoch differs from the done file's (a cut lost one
//!   of the resets) is not replayed at all (it holds no write it could prove unapplied;
//!   dropping UNSTABLE writes at a power cut is what NFSv3 allows).
//!
//! The header also names the kernel's boot id. A journal from another boot is discarded, not
//! replayed: after a real power cut the machine rebooted and the page cache is gone.
//!
//! Size: the log is emptied whenever a flush leaves nothing staged. Once it exceeds [`LIMIT`]
//! anyway (writers that never pause), the next staged write first flushes every staged
//! inode and truncates the log when nothing is staged any more
//! ([`crate::FileSystem::drain_journal`], which tm-nfs calls on a blocking thread first).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use super::writeback::lock;
use super::FsError;

/// File name of the log of staged writes in the data directory.
pub(crate) const FILE: &str = "fs_unstable.log";
/// File name of the (synced) marks of applied writes.
pub(crate) const DONE_FILE: &str = "fs_unstable.done";
/// Size beyond which the journal is drained and truncated (it is also emptied whenever a
/// flush leaves nothing staged; this bounds it under writers that never pause).
pub(crate) const LIMIT: u64 = 1 << 30;
const MAGIC: &[u8; 8] = b"TMFSJNL2";
const DONE_MAGIC: &[u8; 8] = b"TMFSDON2";
const HEADER: u64 = 64;
/// Boot id: header bytes 8..BOOT_END; epoch: the last 8 bytes.
const BOOT_END: usize = 48;
const REC: usize = 48;
const WRITE: u8 = 1;
const DONE: u8 = 2;

/// One store's journal.
pub(crate) struct Journal {
    inner: Mutex<Inner>,
    done: Mutex<DoneLog>,
    /// Held by the writer that drains the journal (others wait for it).
    pub drain: Mutex<()>,
}

struct Inner {
    file: File,
    len: u64,
    seq: u64,
    epoch: u64,
}

struct DoneLog {
    file: File,
    len: u64,
    epoch: u64,
}

/// Writes to apply after a crash: per inode, in order.
pub(crate) type Pending = HashMap<u64, Vec<(u64, Vec<u8>)>>;

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= BOOT_END - MAGIC.len())
}

fn header(magic: &[u8; 8], epoch: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(magic);
    if let Some(b) = boot_id() {
        h[8..8 + b.len()].copy_from_slice(b.as_bytes());
    }
    h[HEADER as usize - 8..].copy_from_slice(&epoch.to_le_bytes());
    h
}

fn new_epoch() -> u64 {
    let mut b = [0u8; 8];
    // Without randomness, the clock: still different from every earlier reset's.
    match getrandom::getrandom(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => crate::object::meta::now_nanos(),
    }
}

fn check(head: &[u8], epoch: u64, data: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&head[..32]);
    h.update(&epoch.to_le_bytes());
    h.update(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

fn record(kind: u8, epoch: u64, ino: u64, seq: u64, offset: u64, data: &[u8]) -> [u8; REC] {
    let mut r = [0u8; REC];
    r[0] = kind;
    r[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
    r[8..16].copy_from_slice(&ino.to_le_bytes());
    r[16..24].copy_from_slice(&seq.to_le_bytes());
    r[24..32].copy_from_slice(&offset.to_le_bytes());
    let c = check(&r, epoch, data);
    r[32..48].copy_from_slice(&c);
    r
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl Journal {
    /// Opens the journal in `dir` and returns it with the writes a crash of this boot left
    /// unapplied (none from another boot). The caller applies them, then calls
    /// [`Journal::reset`].
    pub(crate) fn open(dir: &Path) -> Result<(Journal, Pending), FsError> {
        let file = open_rw(&dir.join(FILE))?;
        let done = open_rw(&dir.join(DONE_FILE))?;
        let pending = read_pending(&file, &done)?;
        Ok((
            Journal {
                inner: Mutex::new(Inner {
                    file,
                    len: 0,
                    seq: 0,
                    epoch: 0,
                }),
                done: Mutex::new(DoneLog {
                    file: done,
                    len: 0,
                    epoch: 0,
                }),
                drain: Mutex::new(()),
            },
            pending,
        ))
    }

    /// Empties the journal (everything in it is applied or dropped) under a new epoch; `keep`
    /// decides, under the journal's lock, whether that is still true (nothing staged).
    pub(crate) fn reset(&self, keep: impl FnOnce() -> bool) -> Result<(), FsError> {
        let mut j = lock(&self.inner);
        if !keep() {
            return Ok(());
        }
        let epoch = new_epoch();
        j.file.set_len(0)?;
        j.file.write_all_at(&header(MAGIC, epoch), 0)?;
        j.len = HEADER;
        j.epoch = epoch;
        // Under the log's lock: no write of the new epoch is appended before both are reset.
        let mut d = lock(&self.done);
        d.file.set_len(0)?;
        d.file.write_all_at(&header(DONE_MAGIC, epoch), 0)?;
        d.len = HEADER;
        d.epoch = epoch;
        Ok(())
    }

    /// Current size of the log in bytes.
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
        let head = record(WRITE, j.epoch, ino, seq, offset, data);
        j.file.write_all_at(&head, at)?;
        j.file.write_all_at(data, at + REC as u64)?;
        j.len = at + (REC + data.len()) as u64;
        Ok(seq)
    }

    /// Notes, durably (the done file is synced before this returns), that the writes of `ino`
    /// up to `upto` are applied durably or dropped.
    pub(crate) fn done(&self, ino: u64, upto: u64) {
        if upto == 0 {
            return;
        }
        let mut d = lock(&self.done);
        let at = d.len;
        let rec = record(DONE, d.epoch, ino, upto, 0, &[]);
        if d.file.write_all_at(&rec, at).is_ok() {
            d.len = at + REC as u64;
            // A failed sync leaves a mark that a power cut may lose: the write is then applied
            // again at the next start (as before this journal had marks at all).
            let _ = d.file.sync_data();
        }
    }
}

/// The epoch of a header of this boot with `magic`, if `file` has one.
fn epoch_of(file: &File, magic: &[u8; 8]) -> Result<Option<u64>, FsError> {
    let size = file.metadata()?.len();
    let mut h = [0u8; HEADER as usize];
    if size < HEADER || file.read_exact_at(&mut h, 0).is_err() || &h[..8] != magic {
        return Ok(None);
    }
    let ours = header(magic, 0);
    if ours[8..BOOT_END] != h[8..BOOT_END] || boot_id().is_none() {
        // Another boot (or no boot id to tell): the page cache did not survive.
        return Ok(None);
    }
    Ok(Some(le64(&h[HEADER as usize - 8..])))
}

/// Calls `f(kind, ino, seq, offset, data)` for each record of `file` under `epoch`, in order,
/// up to the first that does not check (a torn or garbage tail).
fn records(
    file: &File,
    epoch: u64,
    mut f: impl FnMut(u8, u64, u64, u64, Vec<u8>),
) -> Result<(), FsError> {
    let size = file.metadata()?.len();
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
        if check(&r, epoch, &data) != r[32..48] {
            break;
        }
        f(r[0], le64(&r[8..]), le64(&r[16..]), le64(&r[24..]), data);
        at += REC as u64 + len;
    }
    Ok(())
}

/// The `Write` records of this boot's log without a `Done` in the done file of the same epoch.
fn read_pending(file: &File, done: &File) -> Result<Pending, FsError> {
    let Some(epoch) = epoch_of(file, MAGIC)? else {
        return Ok(HashMap::new());
    };
    if epoch_of(done, DONE_MAGIC)? != Some(epoch) {
        // A cut lost one of the two resets: nothing in the log can be shown unapplied.
        return Ok(HashMap::new());
    }
    let mut applied: HashMap<u64, u64> = HashMap::new();
    records(done, epoch, |kind, ino, upto, _, _| {
        if kind == DONE {
            let a = applied.entry(ino).or_default();
            *a = (*a).max(upto);
        }
    })?;
    let mut pending: Pending = HashMap::new();
    let mut valid = true;
    records(file, epoch, |kind, ino, seq, offset, data| {
        valid &= kind == WRITE;
        if valid && applied.get(&ino).is_none_or(|a| seq > *a) {
            pending.entry(ino).or_default().push((offset, data));
        }
    })?;
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need_boot_id() {
        assert!(
            boot_id().is_some(),
            "/proc/sys/kernel/random/boot_id is needed (without it nothing is replayed)"
        );
    }

    fn pending(dir: &Path) -> Pending {
        Journal::open(dir).expect("reopen").1
    }

    /// A fresh journal in a new directory.
    fn fresh() -> (tempfile::TempDir, Journal) {
        need_boot_id();
        let d = tempfile::tempdir().expect("tmp");
        let (j, p) = Journal::open(d.path()).expect("open");
        assert!(p.is_empty());
        j.reset(|| true).expect("reset");
        (d, j)
    }

    #[test]
    fn replay_keeps_writes_without_done_stops_at_a_torn_tail_and_ignores_other_boots() {
        let (d, j) = fresh();
        let s1 = j.write(5, 0, b"aaa").expect("write");
        j.write(6, 10, b"xyz").expect("write");
        j.done(5, s1);
        j.write(5, 3, b"bbb").expect("write");
        j.write(7, 0, b"gone").expect("write");
        let s4 = j.write(7, 4, b"gone").expect("write");
        j.done(7, s4);
        let epoch = lock(&j.inner).epoch;
        drop(j);
        let expect: Pending = [
            (5, vec![(3, b"bbb".to_vec())]),
            (6, vec![(10, b"xyz".to_vec())]),
        ]
        .into_iter()
        .collect();
        assert_eq!(pending(d.path()), expect);
        // A torn record at the end (a write the crash interrupted) is not replayed.
        let path = d.path().join(FILE);
        let mut raw = std::fs::read(&path).expect("read");
        let good = raw.len();
        raw.extend_from_slice(&record(WRITE, epoch, 5, 99, 0, b"torn")[..]);
        raw.extend_from_slice(b"to");
        std::fs::write(&path, &raw).expect("write");
        assert_eq!(pending(d.path()), expect);
        // A damaged record stops the replay there.
        raw.truncate(good);
        raw.extend_from_slice(&record(WRITE, epoch, 8, 100, 0, b"okay")[..]);
        raw.extend_from_slice(b"okay");
        let at = raw.len() - 1;
        raw[at] ^= 1;
        std::fs::write(&path, &raw).expect("write");
        assert_eq!(pending(d.path()), expect);
        // Another boot's journal is discarded.
        raw[8] ^= 1;
        std::fs::write(&path, &raw).expect("write");
        assert!(pending(d.path()).is_empty());
    }

    /// Cutting the log anywhere inside its last record (truncated there, or the rest of the
    /// record zeros or garbage, as lost pages leave it) never applies that record, and keeps
    /// every earlier one.
    #[test]
    fn a_last_record_torn_at_every_byte_offset_is_never_applied() {
        let (d, j) = fresh();
        let s = j.write(1, 0, b"applied").expect("write");
        j.done(1, s);
        j.write(2, 100, b"kept").expect("write");
        let path = d.path().join(FILE);
        let before = std::fs::read(&path).expect("read").len();
        j.write(3, 7, &[0x5a; 300]).expect("write");
        drop(j);
        let full = std::fs::read(&path).expect("read");
        let kept: Pending = [(2, vec![(100, b"kept".to_vec())])].into_iter().collect();
        let mut all = kept.clone();
        all.insert(3, vec![(7, vec![0x5a; 300])]);
        assert_eq!(pending(d.path()), all, "the whole record is replayed");
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for cut in before..full.len() {
            let mut torn = full[..cut].to_vec();
            std::fs::write(&path, &torn).expect("write");
            assert_eq!(pending(d.path()), kept, "truncated at {cut}");
            torn.resize(full.len(), 0);
            std::fs::write(&path, &torn).expect("write");
            assert_eq!(pending(d.path()), kept, "zeros from {cut}");
            for b in &mut torn[cut..] {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                *b = rng as u8;
            }
            std::fs::write(&path, &torn).expect("write");
            assert_eq!(pending(d.path()), kept, "garbage from {cut}");
        }
    }

    /// Garbage after the last record (random bytes, a head declaring a huge length, a copy of
    /// a valid record with one bit flipped) is ignored.
    #[test]
    fn a_garbage_tail_is_ignored() {
        let (d, j) = fresh();
        j.write(4, 0, b"real").expect("write");
        let epoch = lock(&j.inner).epoch;
        drop(j);
        let path = d.path().join(FILE);
        let good = std::fs::read(&path).expect("read");
        let kept: Pending = [(4, vec![(0, b"real".to_vec())])].into_iter().collect();
        let mut rng = 7u64;
        for n in [1usize, 47, 48, 49, 4096, 70_000] {
            let mut raw = good.clone();
            for _ in 0..n {
                rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                raw.push((rng >> 33) as u8);
            }
            std::fs::write(&path, &raw).expect("write");
            assert_eq!(pending(d.path()), kept, "{n} random bytes");
        }
        let mut huge = record(WRITE, epoch, 4, 2, 0, b"");
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut raw = good.clone();
        raw.extend_from_slice(&huge);
        std::fs::write(&path, &raw).expect("write");
        assert_eq!(pending(d.path()), kept, "a head declaring 4 GiB");
        let mut flipped = record(WRITE, epoch, 9, 2, 0, b"data").to_vec();
        flipped.extend_from_slice(b"data");
        flipped[12] ^= 0x10;
        let mut raw = good;
        raw.extend_from_slice(&flipped);
        std::fs::write(&path, &raw).expect("write");
        assert_eq!(pending(d.path()), kept, "a record with a flipped bit");
    }

    /// Bytes of an earlier epoch that a cut brings back after a reset are never applied, and
    /// a log whose reset was lost while the done file's was kept is not replayed.
    #[test]
    fn records_of_an_earlier_epoch_are_never_applied() {
        let (d, j) = fresh();
        let s = j.write(5, 0, b"old-applied").expect("write");
        j.done(5, s);
        let path = d.path().join(FILE);
        let old = std::fs::read(&path).expect("read");
        j.reset(|| true).expect("reset");
        j.write(6, 0, b"new").expect("write");
        drop(j);
        let new = std::fs::read(&path).expect("read");
        // The new header with the old record's bytes behind it (its page was kept).
        let mut mixed = new[..HEADER as usize].to_vec();
        mixed.extend_from_slice(&old[HEADER as usize..]);
        std::fs::write(&path, &mixed).expect("write");
        assert!(
            pending(d.path()).is_empty(),
            "an old record under the new epoch"
        );
        // The whole old log (its reset lost), with the new done file (its reset kept): the
        // old write's mark is gone with the old done file, so the log is not replayed.
        std::fs::write(&path, &old).expect("write");
        assert!(pending(d.path()).is_empty(), "a log of an earlier epoch");
        // The new log as written is replayed.
        std::fs::write(&path, &new).expect("write");
        let expect: Pending = [(6, vec![(0, b"new".to_vec())])].into_iter().collect();
        assert_eq!(pending(d.path()), expect);
    }
}
