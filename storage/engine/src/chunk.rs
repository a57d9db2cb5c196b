//! Content-addressed chunk backends.
//!
//! A chunk is an immutable byte string named by its BLAKE3 hash ([`ChunkId`]). Backends only store
//! and fetch bytes; reference counting, pinning and garbage collection live in the engine.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::StorageError;

/// BLAKE3 hash of a chunk's bytes; the chunk's name in every backend.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hash `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Lowercase hex form (64 chars).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parse the 64-char hex form.
    pub fn from_hex(s: &str) -> Option<ChunkId> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
        }
        Some(ChunkId(out))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chunk:{}", &self.to_hex()[..16])
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

pub(crate) fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A chunk backend. Methods are synchronous; async callers use `spawn_blocking`.
///
/// Contract: `put` is idempotent and durable when it returns (a later crash never loses the chunk);
/// `get` returns exactly the bytes that were put (backends verify the hash); `delete` of a missing
/// chunk is not an error. The engine never calls `delete` on a chunk that is referenced or pinned.
pub trait ChunkStore: Send + Sync + 'static {
    /// Store `data` under `id` (= `ChunkId::of(data)`), durably.
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StorageError>;
    /// Like `put`, but the chunk need only be durable once [`ChunkStore::sync`] of its id has
    /// returned (lets a writer overlap the next chunk with this one's flush). The default is
    /// `put` (already durable; `sync` is then a no-op).
    fn put_deferred(&self, id: &ChunkId, data: &[u8]) -> Result<(), StorageError> {
        self.put(id, data)
    }
    /// Make a chunk stored with `put_deferred` durable.
    fn sync(&self, _id: &ChunkId) -> Result<(), StorageError> {
        Ok(())
    }
    /// Fetch a whole chunk, verifying its hash.
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, StorageError>;
    /// Read up to `buf.len()` bytes of the chunk starting at `offset`; returns the count (0 at end).
    fn read_at(&self, id: &ChunkId, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        let data = self.get(id)?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
    /// The chunk as a local file open for reading, for zero-copy reads (`sendfile`). The
    /// default is None: the backend has no local files and callers copy through
    /// [`ChunkStore::read_at`]. A returned file is the stored chunk (not hash-verified here).
    fn open_file(&self, _id: &ChunkId) -> Result<Option<File>, StorageError> {
        Ok(None)
    }
    /// Remove a chunk (missing is fine).
    fn delete(&self, id: &ChunkId) -> Result<(), StorageError>;
    /// Whether the chunk is stored.
    fn exists(&self, id: &ChunkId) -> Result<bool, StorageError>;
    /// Call `f` for every stored chunk.
    fn list(&self, f: &mut dyn FnMut(ChunkId)) -> Result<(), StorageError>;
    /// Remove leftovers of interrupted `put`s (and files that are not where their name says).
    /// Called by GC while no `put` is running.
    fn cleanup_temp(&self) -> Result<u64, StorageError> {
        Ok(0)
    }
}

/// Local filesystem backend: `root/xx/yy/<hex>`, written to a temp name, fsynced, renamed, and the
/// directory fsynced.
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

    /// Writes a new chunk file under a temp name and renames it into place; `durable`: fsync
    /// the file before and the directory after the rename.
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
            if durable {
                f.sync_all()?;
            }
            drop(f);
            fs::rename(&tmp, path)?;
            if durable {
                fsync_dir(dir)?;
            }
            Ok(())
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }
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
        match File::open(&path) {
            Ok(f) => f.sync_all()?,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StorageError::Corrupt(format!("{id:?} missing at sync")))
            }
            Err(e) => return Err(e.into()),
        }
        fsync_dir(path.parent().expect("chunk path has a parent"))
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

/// In-memory backend for tests and fakes (not durable).
#[derive(Default)]
pub struct MemChunkStore {
    chunks: Mutex<HashMap<ChunkId, Vec<u8>>>,
}

impl MemChunkStore {
    /// Empty store.
    pub fn new() -> MemChunkStore {
        MemChunkStore::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, Vec<u8>>> {
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ChunkStore for MemChunkStore {
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StorageError> {
        self.map().entry(*id).or_insert_with(|| data.to_vec());
        Ok(())
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, StorageError> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| StorageError::Corrupt(format!("{id:?} missing")))
    }

    fn delete(&self, id: &ChunkId) -> Result<(), StorageError> {
        self.map().remove(id);
        Ok(())
    }

    fn exists(&self, id: &ChunkId) -> Result<bool, StorageError> {
        Ok(self.map().contains_key(id))
    }

    fn list(&self, f: &mut dyn FnMut(ChunkId)) -> Result<(), StorageError> {
        let ids: Vec<ChunkId> = self.map().keys().copied().collect();
        ids.into_iter().for_each(f);
        Ok(())
    }
}
