//! The redb storage backend: `meta.redb` with page writes kept in memory until redb syncs.
//!
//! Every redb commit is a checkpoint (`mem.rs`: the in-memory layer written out in one durable
//! commit), so redb writes a batch of pages and then calls `sync_data`. The pages wait here as
//! copies in a map and are written in one pass at `sync_data`, which then syncs the file.
//! After a crash the file holds the state of the last checkpoint, which is all redb and the
//! redo log assume. The caller (`Store::open_with`) holds the file's lock.
//!
//! Extents in the map never overlap (a write replaces what it covers), so a read is the file's
//! bytes with the overlapping extents copied over them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::StorageBackend;

#[derive(Default)]
struct State {
    /// Length redb sees (the file is kept at this length).
    len: u64,
    /// Written and not yet in the file: offset → bytes.
    dirty: BTreeMap<u64, Vec<u8>>,
}

/// See the module documentation.
pub(crate) struct DbFile {
    file: File,
    st: RwLock<State>,
    /// Bytes held in `dirty`.
    held: AtomicUsize,
}

impl std::fmt::Debug for DbFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbFile")
            .field("held", &self.held.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl DbFile {
    /// Wrap `file` (already locked by the caller).
    pub(crate) fn new(file: File) -> io::Result<DbFile> {
        let len = file.metadata()?.len();
        Ok(DbFile {
            file,
            st: RwLock::new(State {
                len,
                dirty: BTreeMap::new(),
            }),
            held: AtomicUsize::new(0),
        })
    }

    fn read_st(&self) -> RwLockReadGuard<'_, State> {
        self.st.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_st(&self) -> RwLockWriteGuard<'_, State> {
        self.st.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Remove what `off..end` covers from `dirty` (keeping the uncovered parts of partly covered
/// extents); returns the number of bytes removed.
fn cut(dirty: &mut BTreeMap<u64, Vec<u8>>, off: u64, end: u64) -> usize {
    let mut hits: Vec<u64> = Vec::new();
    if let Some((&o, d)) = dirty.range(..off).next_back() {
        if o + d.len() as u64 > off {
            hits.push(o);
        }
    }
    hits.extend(dirty.range(off..end).map(|(&o, _)| o));
    let mut removed = 0;
    for o in hits {
        let d = dirty.remove(&o).expect("key found above");
        let dend = o + d.len() as u64;
        removed += d.len();
        if o < off {
            let keep = d[..(off - o) as usize].to_vec();
            removed -= keep.len();
            dirty.insert(o, keep);
        }
        if dend > end {
            let keep = d[(end - o) as usize..].to_vec();
            removed -= keep.len();
            dirty.insert(end, keep);
        }
    }
    removed
}

impl StorageBackend for DbFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.read_st().len)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let st = self.read_st();
        let end = offset
            .checked_add(len as u64)
            .filter(|e| *e <= st.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        let start = st
            .dirty
            .range(..=offset)
            .next_back()
            .map_or(offset, |(&o, _)| o);
        for (&o, d) in st.dirty.range(start..end) {
            let s = o.max(offset);
            let e = (o + d.len() as u64).min(end);
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&d[(s - o) as usize..(e - o) as usize]);
            }
        }
        Ok(buf)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.write_st();
        self.file.set_len(len)?;
        if len < st.len {
            let removed = cut(&mut st.dirty, len, u64::MAX);
            self.held.fetch_sub(removed, Ordering::Relaxed);
        }
        st.len = len;
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        let mut st = self.write_st();
        for (&o, d) in &st.dirty {
            self.file.write_all_at(d, o)?;
        }
        let n: usize = st.dirty.values().map(Vec::len).sum();
        st.dirty.clear();
        self.held.fetch_sub(n, Ordering::Relaxed);
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.write_st();
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= st.len)
            .ok_or_else(|| io::Error::other("write past the end"))?;
        let removed = cut(&mut st.dirty, offset, end);
        st.dirty.insert(offset, data.to_vec());
        self.held.fetch_add(data.len(), Ordering::Relaxed);
        self.held.fetch_sub(removed, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> DbFile {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("db"))
            .expect("open");
        DbFile::new(f).expect("new")
    }

    #[test]
    fn reads_see_overlapping_writes_and_sync_writes_them_out() {
        let d = tempfile::tempdir().expect("tempdir");
        let b = open(d.path());
        b.set_len(100).expect("set_len");
        let mut model = vec![0u8; 100];
        let writes: [(u64, &[u8]); 5] = [
            (10, &[1; 20]),
            (50, &[2; 10]),
            (15, &[3; 5]),  // inside the first
            (25, &[4; 30]), // over the end of the first and the start of the second
            (0, &[5; 3]),
        ];
        for (o, w) in writes {
            b.write(o, w).expect("write");
            model[o as usize..o as usize + w.len()].copy_from_slice(w);
            assert_eq!(b.read(0, 100).expect("read"), model);
        }
        assert_eq!(b.read(12, 50).expect("read"), model[12..62]);
        assert_eq!(b.held.load(Ordering::Relaxed), 53); // bytes 0..3 and 10..60
                                                        // Nothing reached the file before the sync; everything after it.
        assert_eq!(
            std::fs::read(d.path().join("db")).expect("read"),
            vec![0; 100]
        );
        b.sync_data(false).expect("sync");
        assert_eq!(b.held.load(Ordering::Relaxed), 0);
        assert_eq!(std::fs::read(d.path().join("db")).expect("read"), model);
        drop(b);
        let b = open(d.path());
        assert_eq!(b.read(0, 100).expect("read"), model);
    }

    #[test]
    fn shrinking_drops_writes_past_the_end_and_bounds_are_checked() {
        let d = tempfile::tempdir().expect("tempdir");
        let b = open(d.path());
        b.set_len(64).expect("set_len");
        b.write(40, &[7; 20]).expect("write");
        b.set_len(50).expect("shrink");
        assert_eq!(b.held.load(Ordering::Relaxed), 10);
        assert_eq!(b.len().expect("len"), 50);
        assert!(b.read(45, 10).is_err());
        assert!(b.write(45, &[1; 10]).is_err());
        b.set_len(64).expect("grow");
        assert_eq!(
            b.read(40, 24).expect("read"),
            [[7u8; 10].as_slice(), &[0; 14]].concat()
        );
    }
}
