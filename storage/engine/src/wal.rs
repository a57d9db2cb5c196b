//! Write-ahead redo log of metadata commits: one small sequential write and one `fdatasync`
//! per group commit instead of a durable redb commit (a dozen scattered page writes plus the
//! sync).
//!
//! How: every table mutation a batch makes goes through [`Tx`], which records it (table name,
//! key bytes, value bytes or removal) besides applying it. The committer appends the batch's
//! record to `meta.wal` (pre-written, fixed size, so an overwrite needs no file-system journal
//! commit) and syncs it, then commits the redb transaction with `Durability::None` (visible to
//! readers at once, persisted by the next durable commit). A checkpoint — a durable redb commit
//! — happens when the log is half full, after [`CHECKPOINT_AFTER`] without one, when a batch is
//! too large for the log, and when the store closes; after it the log starts again at offset 0.
//!
//! Recovery ([`Wal::open`]): redb comes back at its last durable commit, whose `wal_meta.lsn`
//! says which record it includes last; the records after it are read from offset 0 (each has a
//! sequence number and a BLAKE3 checksum; reading stops at the first torn or foreign one) and
//! their mutations replayed in order. A record is replayed only if its whole batch was synced,
//! and a batch is acknowledged only after that sync, so an acknowledged commit is never lost
//! and an unacknowledged one is either entirely there or entirely absent.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::ops::{Deref, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use redb::{
    AccessGuard, Key, Range, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    TableError, TableHandle, TableStats, Value, WriteTransaction,
};

use crate::StorageError;

/// `lsn` → sequence number of the last log record included in the database.
pub(crate) const WAL_META: TableDefinition<&str, u64> = TableDefinition::new("wal_meta");
/// Size of the log file (written once with zeros when created).
pub(crate) const LOG_SIZE: u64 = 8 << 20;
/// Largest record; larger batches commit durably in redb instead.
pub(crate) const RECORD_MAX: usize = 1 << 20;
/// Checkpoint once the log holds this much.
const CHECKPOINT_BYTES: u64 = LOG_SIZE / 2;
/// Checkpoint when the oldest commit not yet durable in redb is this old.
pub(crate) const CHECKPOINT_AFTER: Duration = Duration::from_millis(250);
const MAGIC: u32 = 0x4c57_4d54; // "TMWL"
/// magic u32 | lsn u64 | payload length u32 | checksum 16 bytes
const HEADER: usize = 32;
const OP_INSERT: u8 = 1;
const OP_REMOVE: u8 = 2;

/// A write transaction whose table mutations are also recorded for the redo log.
pub(crate) struct Tx<'a> {
    wtx: &'a WriteTransaction,
    redo: RefCell<Vec<u8>>,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(wtx: &'a WriteTransaction) -> Tx<'a> {
        Tx {
            wtx,
            redo: RefCell::new(Vec::new()),
        }
    }

    /// Open a table for reading and (recorded) writing.
    pub(crate) fn open_table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<TableW<'_, K, V>, TableError> {
        Ok(TableW {
            t: self.wtx.open_table(def)?,
            name: def.name().to_string(),
            redo: &self.redo,
        })
    }

    /// The recorded mutations (empty when the batch changed nothing).
    pub(crate) fn into_redo(self) -> Vec<u8> {
        self.redo.into_inner()
    }
}

/// A table of a [`Tx`]: reads through `Deref`, writes through `insert`/`remove` (recorded).
pub(crate) struct TableW<'t, K: Key + 'static, V: Value + 'static> {
    t: Table<'t, K, V>,
    name: String,
    redo: &'t RefCell<Vec<u8>>,
}

impl<'t, K: Key + 'static, V: Value + 'static> Deref for TableW<'t, K, V> {
    type Target = Table<'t, K, V>;
    fn deref(&self) -> &Table<'t, K, V> {
        &self.t
    }
}

impl<K: Key + 'static, V: Value + 'static> ReadableTableMetadata for TableW<'_, K, V> {
    fn stats(&self) -> redb::Result<TableStats> {
        self.t.stats()
    }
    fn len(&self) -> redb::Result<u64> {
        self.t.len()
    }
}

impl<K: Key + 'static, V: Value + 'static> ReadableTable<K, V> for TableW<'_, K, V> {
    fn get<'a>(
        &self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> redb::Result<Option<AccessGuard<'_, V>>> {
        self.t.get(key)
    }
    fn range<'a, KR>(&self, range: impl RangeBounds<KR> + 'a) -> redb::Result<Range<'_, K, V>>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        self.t.range(range)
    }
    fn first(&self) -> redb::Result<Option<(AccessGuard<'_, K>, AccessGuard<'_, V>)>> {
        self.t.first()
    }
    fn last(&self) -> redb::Result<Option<(AccessGuard<'_, K>, AccessGuard<'_, V>)>> {
        self.t.last()
    }
}

impl<K: Key + 'static, V: Value + 'static> TableW<'_, K, V> {
    fn record(&self, op: u8, key: &[u8], value: Option<&[u8]>) {
        let mut r = self.redo.borrow_mut();
        r.push(op);
        r.push(u8::try_from(self.name.len()).expect("table names are short"));
        r.extend_from_slice(self.name.as_bytes());
        put_bytes(&mut r, key);
        if let Some(v) = value {
            put_bytes(&mut r, v);
        }
    }

    /// Like redb's `Table::insert`.
    pub(crate) fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<Option<AccessGuard<'_, V>>, redb::StorageError> {
        self.record(
            OP_INSERT,
            K::as_bytes(key.borrow()).as_ref(),
            Some(V::as_bytes(value.borrow()).as_ref()),
        );
        self.t.insert(key, value)
    }

    /// Like redb's `Table::remove`.
    pub(crate) fn remove<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<Option<AccessGuard<'_, V>>, redb::StorageError> {
        self.record(OP_REMOVE, K::as_bytes(key.borrow()).as_ref(), None);
        self.t.remove(key)
    }
}

fn put_bytes(r: &mut Vec<u8>, b: &[u8]) {
    r.extend_from_slice(
        &u32::try_from(b.len())
            .expect("key/value below 4 GiB")
            .to_le_bytes(),
    );
    r.extend_from_slice(b);
}

/// Re-apply one recorded batch (`payload` of a log record) in `wtx`.
pub(crate) fn replay(wtx: &WriteTransaction, payload: &[u8]) -> Result<(), StorageError> {
    use crate::fs::{FS_INODES, FS_META, FS_PATHS};
    use crate::meta::*;
    use crate::share::SHARES;
    let bad = || StorageError::Corrupt("write-ahead log record".into());
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], StorageError> {
        let s = payload
            .get(at..at.checked_add(n).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        at += n;
        Ok(s)
    };
    let mut ops = 0usize;
    while let Ok(op) = take(1) {
        let op = op[0];
        let nlen = take(1)?[0] as usize;
        let name = std::str::from_utf8(take(nlen)?)
            .map_err(|_| bad())?
            .to_string();
        let klen = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let key = take(klen)?.to_vec();
        let value = match op {
            OP_INSERT => {
                let vlen = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
                Some(take(vlen)?.to_vec())
            }
            OP_REMOVE => None,
            _ => return Err(bad()),
        };
        let v = value.as_deref();
        match name.as_str() {
            "buckets" => apply(wtx, BUCKETS, &key, v)?,
            "objects" => apply(wtx, OBJECTS, &key, v)?,
            "obj_chunks" => apply(wtx, OBJ_CHUNKS, &key, v)?,
            "refs" => apply(wtx, REFS, &key, v)?,
            "uploads" => apply(wtx, UPLOADS, &key, v)?,
            "parts" => apply(wtx, PARTS, &key, v)?,
            "part_chunks" => apply(wtx, PART_CHUNKS, &key, v)?,
            "creds" => apply(wtx, CREDS, &key, v)?,
            "stats" => apply(wtx, STATS, &key, v)?,
            "chunk_data" => apply(wtx, CHUNK_DATA, &key, v)?,
            "fs_inodes" => apply(wtx, FS_INODES, &key, v)?,
            "fs_paths" => apply(wtx, FS_PATHS, &key, v)?,
            "fs_meta" => apply(wtx, FS_META, &key, v)?,
            "shares" => apply(wtx, SHARES, &key, v)?,
            other => {
                return Err(StorageError::Corrupt(format!(
                    "write-ahead log names an unknown table {other:?}"
                )))
            }
        }
        ops += 1;
    }
    debug_assert!(ops > 0, "empty records are never written");
    Ok(())
}

fn apply<K: Key + 'static, V: Value + 'static>(
    wtx: &WriteTransaction,
    def: TableDefinition<K, V>,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<(), StorageError> {
    let mut t = wtx.open_table(def)?;
    match value {
        Some(v) => {
            t.insert(K::from_bytes(key), V::from_bytes(v))?;
        }
        None => {
            t.remove(K::from_bytes(key))?;
        }
    }
    Ok(())
}

fn checksum(lsn: u64, payload: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&lsn.to_le_bytes());
    h.update(&(payload.len() as u64).to_le_bytes());
    h.update(payload);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// The log file and where the next record goes.
pub(crate) struct Wal {
    file: File,
    tail: u64,
    /// Sequence number of the last record written (or included in the database).
    last: u64,
    /// When the oldest record not yet made durable by redb was written.
    oldest: Option<Instant>,
}

impl Wal {
    /// Open (creating if needed) the log at `path`; returns it with the payloads of the records
    /// after `applied`, in order, for the caller to replay and then [`Wal::reset`].
    pub(crate) fn open(path: &Path, applied: u64) -> Result<(Wal, Vec<Vec<u8>>), StorageError> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => create(path)?,
            Err(e) => return Err(e.into()),
        };
        if file.metadata()?.len() < LOG_SIZE {
            // Torn creation: nothing in it was ever acknowledged (creation syncs before use).
            drop(file);
            std::fs::remove_file(path)?;
            return Wal::open(path, applied);
        }
        // Read record by record: a clean log (the usual case after a shutdown) costs one
        // header read, not the whole file.
        let mut out = Vec::new();
        let mut expect = applied + 1;
        let mut at = 0u64;
        let mut h = [0u8; HEADER];
        while at + HEADER as u64 <= LOG_SIZE {
            file.read_exact_at(&mut h, at)?;
            if u32::from_le_bytes(h[0..4].try_into().expect("4")) != MAGIC {
                break;
            }
            let lsn = u64::from_le_bytes(h[4..12].try_into().expect("8"));
            let len = u32::from_le_bytes(h[12..16].try_into().expect("4")) as u64;
            if len > RECORD_MAX as u64 || at + HEADER as u64 + len > LOG_SIZE {
                break;
            }
            let mut payload = vec![0u8; len as usize];
            file.read_exact_at(&mut payload, at + HEADER as u64)?;
            if h[16..32] != checksum(lsn, &payload) {
                break;
            }
            if lsn == expect {
                out.push(payload);
                expect += 1;
            } else if lsn > applied {
                break; // a gap: nothing after it belongs to this run
            }
            at += HEADER as u64 + len;
        }
        let wal = Wal {
            file,
            tail: 0,
            last: expect - 1,
            oldest: None,
        };
        Ok((wal, out))
    }

    /// Sequence number of the last record (what a commit stores as `wal_meta.lsn`).
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// Whether a record with `len` payload bytes fits now.
    pub(crate) fn fits(&self, len: usize) -> bool {
        len <= RECORD_MAX && self.tail + (HEADER + len) as u64 <= LOG_SIZE
    }

    /// Append one record and sync it; returns its sequence number.
    #[cfg(test)]
    pub(crate) fn append(&mut self, payload: &[u8]) -> std::io::Result<u64> {
        let lsn = self.write(payload)?;
        self.sync()?;
        Ok(lsn)
    }

    /// Sync what [`Wal::write`] wrote.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Append one record without syncing it; returns its sequence number.
    pub(crate) fn write(&mut self, payload: &[u8]) -> std::io::Result<u64> {
        let lsn = self.last + 1;
        let mut rec = Vec::with_capacity(HEADER + payload.len());
        rec.extend_from_slice(&MAGIC.to_le_bytes());
        rec.extend_from_slice(&lsn.to_le_bytes());
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&checksum(lsn, payload));
        rec.extend_from_slice(payload);
        self.file.write_all_at(&rec, self.tail)?;
        self.tail += rec.len() as u64;
        self.last = lsn;
        self.oldest.get_or_insert_with(Instant::now);
        Ok(lsn)
    }

    /// Undo the last append (its batch could not be committed): zero its header so recovery
    /// stops before it; the next record takes its place and its sequence number.
    pub(crate) fn cancel_last(&mut self, len: usize) -> std::io::Result<()> {
        let at = self.tail - (HEADER + len) as u64;
        self.file.write_all_at(&[0u8; HEADER], at)?;
        self.file.sync_data()?;
        self.tail = at;
        self.last -= 1;
        Ok(())
    }

    /// Everything up to [`Wal::last`] is durable in the database: start again at offset 0.
    pub(crate) fn reset(&mut self) {
        self.tail = 0;
        self.oldest = None;
    }

    /// Whether records wait for a checkpoint.
    pub(crate) fn dirty(&self) -> bool {
        self.oldest.is_some()
    }

    /// Time left until a checkpoint is due (`None`: nothing waits).
    pub(crate) fn due_in(&self) -> Option<Duration> {
        if self.tail >= CHECKPOINT_BYTES {
            return Some(Duration::ZERO);
        }
        self.oldest
            .map(|t| CHECKPOINT_AFTER.saturating_sub(t.elapsed()))
    }
}

/// Create the log: written with zeros (blocks allocated, so overwrites need no journal commit),
/// synced, directory entry synced.
fn create(path: &Path) -> Result<File, StorageError> {
    let tmp = path.with_extension("wal.tmp");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..LOG_SIZE / (1 << 20) {
        f.write_all(&zeros)?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_in_order_and_stop_at_torn_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("meta.wal");
        let (mut w, got) = Wal::open(&p, 0).expect("open");
        assert!(got.is_empty());
        for i in 1..=3u8 {
            assert_eq!(w.append(&[i; 100]).expect("append"), u64::from(i));
        }
        // Tear the third record's payload.
        let f = OpenOptions::new().write(true).open(&p).expect("open");
        f.write_all_at(&[9u8], (2 * (HEADER + 100) + HEADER + 50) as u64)
            .expect("write");
        drop(w);
        let (w, got) = Wal::open(&p, 0).expect("reopen");
        assert_eq!(got, vec![vec![1u8; 100], vec![2u8; 100]]);
        assert_eq!(w.last(), 2);
        // Records the database already includes are skipped.
        let (_, got) = Wal::open(&p, 1).expect("reopen");
        assert_eq!(got, vec![vec![2u8; 100]]);
    }

    #[test]
    fn after_reset_new_records_replace_old_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("meta.wal");
        let (mut w, _) = Wal::open(&p, 0).expect("open");
        for i in 1..=5u8 {
            w.append(&[i; 10]).expect("append");
        }
        w.reset(); // as after a checkpoint that included 1..=5
        w.append(&[6; 30]).expect("append");
        drop(w);
        let (w, got) = Wal::open(&p, 5).expect("reopen");
        assert_eq!(got, vec![vec![6u8; 30]]);
        assert_eq!(w.last(), 6);
        // Nothing new after the checkpoint: old records are all skipped.
        let (w, got) = Wal::open(&p, 6).expect("reopen");
        assert!(got.is_empty());
        assert_eq!(w.last(), 6);
    }

    #[test]
    fn cancelled_record_is_not_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("meta.wal");
        let (mut w, _) = Wal::open(&p, 0).expect("open");
        w.append(&[1; 10]).expect("append");
        w.append(&[2; 10]).expect("append");
        w.cancel_last(10).expect("cancel");
        drop(w);
        let (mut w, got) = Wal::open(&p, 0).expect("reopen");
        assert_eq!(got, vec![vec![1u8; 10]]);
        // The next record takes its place.
        w.reset();
        let (mut w, _) = {
            drop(w);
            Wal::open(&p, 0).expect("reopen")
        };
        w.tail = (HEADER + 10) as u64;
        assert_eq!(w.append(&[3; 20]).expect("append"), 2);
        drop(w);
        let (_, got) = Wal::open(&p, 0).expect("reopen");
        assert_eq!(got, vec![vec![1u8; 10], vec![3u8; 20]]);
    }
}
