//! Local filesystem chunk backend: `root/xx/yy/<hex>`.
//!
//! Where a chunk becomes durable: [`make_durable`] (fsync of the chunk file, then of its
//! directory, after the rename that put it in place). `put` calls it before returning;
//! `put_deferred` renames unflushed and `sync` calls it later.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{hex, ChunkId, ChunkStore};
use crate::StorageError;

/// Local filesystem backend: `root/xx/yy/<hex>`, written to a temp name, renamed into place, then
/// the file and its directory fsynced (`make_durable`).
pub struct FsChunkStore {
    root: PathBuf,
    known_dirs: Mutex<HashSet<u16>>,
    tmp_seq: AtomicU64,
}

const TMP_MARK: &str = ".tmp";

impl FsChunkStore {
    /// Open (creating) a chunk directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<FsChunkStore, StorageError> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        if let Some(parent) = root.parent() {
            fsync_dir(parent)?;
        }
        Ok(FsChunkStore {
            root,
            known_dirs: Mutex::new(HashSet::new()),
            tmp_seq: AtomicU64::new(0),
        })
    }

    fn dir(&self, id: &ChunkId) -> PathBuf {
        self.root.join(hex(&id.0[..1])).join(hex(&id.0[1..2]))
    }

    /// Where a chunk lives on disk.
    pub fn path(&self, id: &ChunkId) -> PathBuf {
        self.dir(id).join(id.to_hex())
    }

    fn open_chunk(&self, id: &ChunkId) -> Result<File, StorageError> {
        match File::open(self.path(id)) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(StorageError::Corrupt(format!("{id:?} missing")))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn ensure_dir(&self, id: &ChunkId) -> Result<PathBuf, StorageError> {
        let dir = self.dir(id);
        let key = u16::from_be_bytes([id.0[0], id.0[1]]);
        if self
            .known_dirs
            .lock()
            .expect("known_dirs lock poisoned")
            .contains(&key)
        {
            return Ok(dir);
        }
        fs::create_dir_all(&dir)?;
        // Make both directory entries durable, whoever created them.
        let xx = dir.parent().expect("chunk dir has a parent");
        fsync_dir(xx)?;
        fsync_dir(&self.root)?;
        self.known_dirs
            .lock()
            .expect("known_dirs lock poisoned")
            .insert(key);
        Ok(dir)
    }

    /// Writes a new chunk file under a temp name and renames it into place; `durable`: then
    /// [`make_durable`].
    fn write_new(
        &self,
        dir: &Path,
        path: &Path,
        id: &ChunkId,
        data: &[u8],
        durable: bool,
    ) -> Result<(), StorageError> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            "{}{TMP_MARK}{}-{seq}",
            id.to_hex(),
            std::process::id()
        ));
        let res = (|| -> Result<(), StorageError> {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            fs::rename(&tmp, path)?;
            if durable {
                make_durable(&f, dir)?;
            }
            Ok(())
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }
}

/// THE place a chunk becomes durable (every `put`, and `sync` after `put_deferred`): its file's
/// bytes are flushed, then the directory holding its final name. A chunk file is renamed into
/// place before this; until it returns no metadata commit references the chunk, and a crash
/// before it leaves a file that the garbage collection at open removes (it is unreferenced).
fn make_durable(file: &File, dir: &Path) -> Result<(), StorageError> {
    file.sync_all()?;
    fsync_dir(dir)
}

fn fsync_dir(p: &Path) -> Result<(), StorageError> {
    File::open(p)?.sync_all()?;
    Ok(())
}

impl ChunkStore for FsChunkStore {
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StorageError> {
        let dir = self.ensure_dir(id)?;
        let path = dir.join(id.to_hex());
        if path.exists() {
            // Dedup hit. Its writer may not have flushed it yet (`put_deferred`, or a `put` about
            // to fsync the directory): fsync file and directory ourselves, cheap when clean.
            return self.sync(id);
        }
        self.write_new(&dir, &path, id, data, true)
    }

    fn put_deferred(&self, id: &ChunkId, data: &[u8]) -> Result<(), StorageError> {
        let dir = self.ensure_dir(id)?;
        let path = dir.join(id.to_hex());
        if path.exists() {
            return Ok(()); // `sync` flushes it, whoever wrote it
        }
        // Renamed into place unflushed: a crash may leave it torn under its final name, but then
        // no committed manifest references it (commits come after `sync`) and the GC at open
        // removes it before anything could deduplicate against it.
        self.write_new(&dir, &path, id, data, false)
    }

    fn sync(&self, id: &ChunkId) -> Result<(), StorageError> {
        let path = self.path(id);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StorageError::Corrupt(format!("{id:?} missing at sync")))
            }
            Err(e) => return Err(e.into()),
        };
        make_durable(&f, path.parent().expect("chunk path has a parent"))
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, StorageError> {
        let data = match fs::read(self.path(id)) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StorageError::Corrupt(format!("{id:?} missing")))
            }
            Err(e) => return Err(e.into()),
        };
        if ChunkId::of(&data) != *id {
            return Err(StorageError::Corrupt(format!("{id:?} hash mismatch")));
        }
        Ok(data)
    }

    fn read_at(&self, id: &ChunkId, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        let f = self.open_chunk(id)?;
        let mut done = 0;
        while done < buf.len() {
            let n = f.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    fn open_file(&self, id: &ChunkId) -> Result<Option<File>, StorageError> {
        self.open_chunk(id).map(Some)
    }

    fn delete(&self, id: &ChunkId) -> Result<(), StorageError> {
        match fs::remove_file(self.path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn exists(&self, id: &ChunkId) -> Result<bool, StorageError> {
        Ok(self.path(id).exists())
    }

    fn list(&self, f: &mut dyn FnMut(ChunkId)) -> Result<(), StorageError> {
        walk(&self.root, &mut |path, name| {
            if let Some(id) = ChunkId::from_hex(name) {
                if self.path(&id) == path {
                    f(id);
                }
            }
            Ok(())
        })
    }

    fn cleanup_temp(&self) -> Result<u64, StorageError> {
        let mut n = 0;
        walk(&self.root, &mut |path, name| {
            let misplaced = ChunkId::from_hex(name).is_some_and(|id| self.path(&id) != path);
            if name.contains(TMP_MARK) || misplaced {
                fs::remove_file(path)?;
                n += 1;
            }
            Ok(())
        })?;
        Ok(n)
    }
}

/// Visit every file two directory levels below `root`.
fn walk(
    root: &Path,
    f: &mut dyn FnMut(&Path, &str) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    for xx in fs::read_dir(root)? {
        let xx = xx?;
        if !xx.file_type()?.is_dir() {
            continue;
        }
        for yy in fs::read_dir(xx.path())? {
            let yy = yy?;
            if !yy.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(yy.path())? {
                let file = file?;
                let name = file.file_name();
                if let Some(name) = name.to_str() {
                    f(&file.path(), name)?;
                }
            }
        }
    }
    Ok(())
}
