//! File-system view of shares for NFS: persistent inodes, POSIX attributes, directories as key
//! prefixes and in-place edits that rewrite only the chunks they touch.
//!
//! Mapping: in share (bucket) `s`, the file `a/b/c.txt` is the object `a/b/c.txt`; the directory
//! `a/b` exists when the marker object `a/b/` exists (NFS `mkdir` creates it) or when any key
//! starts with `a/b/` (objects put over S3). A symlink is an object whose body is the target and
//! whose user metadata has `tm-type: symlink`. S3 writes are therefore visible here at once, and
//! the reverse.
//!
//! Inodes: `fs_paths` maps `bucket/path` to an inode number, `fs_inodes` maps the number to an
//! `InodeRec` (path, mode, uid, gid, times, exclusive-create verifier). Numbers come from a
//! persisted counter and are never reused, so a (generation, inode) file handle stays valid
//! across restarts and renames; `fs_meta.generation` is random, created once per store. Objects
//! that arrive over S3 get an inode the first time NFS sees them (one group-committed write).
//! Removed inodes stay as tombstones (their last name lets a directory cookie resume).
//!
//! Attributes: mode/uid/gid/atime are the inode's; mtime/ctime are the inode's unless the object
//! changed behind NFS's back (then the object's modification time is reported).
//!
//! Directory cookies: `1` = after `.`, `2` = after `..`, otherwise the inode number of the last
//! entry returned; listing resumes after that entry's name (entries are in key order), so
//! cookies stay valid while the directory changes.

mod edit;
mod error;
mod inode;
mod journal;
mod namespace;
mod read;
mod readdir;
pub(crate) mod share;
mod stage;
#[cfg(test)]
mod tests;
mod writeback;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::db::{ReadTable as _, Schema};
use crate::object::meta::{from_nanos, get_json, obj_key, ObjRec, OBJECTS};
use crate::object::reader::ObjectReader;
use crate::object::Staging;
use crate::object::Store;
use crate::StorageError;
use inode::{alloc_ino, attr_of, default_rec, get_inode, probe};
use share::{ShareRec, SHARES};
use writeback::{lock, WriteBack};

pub use error::FsError;
pub use inode::check_name;
pub use share::{ShareInfo, Squash, DEFAULT_SHARE, NOBODY};

pub(crate) const FS_INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("fs_inodes");
pub(crate) const FS_PATHS: TableDefinition<&str, u64> = TableDefinition::new("fs_paths");
pub(crate) const FS_META: TableDefinition<&str, u64> = TableDefinition::new("fs_meta");

/// First inode number handed out (cookies 1 and 2 are `.` and `..`).
const FIRST_INO: u64 = 16;
/// Directory cookie after `.`.
pub const COOKIE_DOT: u64 = 1;
/// Directory cookie after `..`.
pub const COOKIE_DOTDOT: u64 = 2;
/// Object user-metadata key marking symlinks.
pub const TYPE_META: &str = "tm-type";
const SYMLINK: &str = "symlink";
/// Largest size of a file of the file-system view (1 TiB): a write ending beyond it, or a size
/// set beyond it, is refused with [`FsError::FileTooBig`] (NFS `NFS3ERR_FBIG`) and stores
/// nothing. A file's manifest holds one 36-byte entry per chunk, holes included (a hole shares
/// one stored chunk of zeros but still has its entries), and an edit rewrites the manifest; at
/// this size with 1 MiB chunks that is a 36 MiB manifest, where an unbounded size (a client
/// setting 16 TiB, or writing one byte at 2^63) would ask for gigabytes of memory at once.
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Retries of an edit that lost a race with another writer.
const EDIT_RETRIES: usize = 8;
/// Writes at least this large are staged in recycled chunk-sized buffers.
const STAGE_POOLED_MIN: usize = 64 << 10;
/// Size reported for directories.
const DIR_SIZE: u64 = 4096;

/// The file-system view's tables (and the store generation, created once), for
/// [`Store`]'s open.
pub(crate) fn schema() -> Schema {
    let mut s = Schema::default();
    s.table(FS_INODES)
        .table(FS_PATHS)
        .table(FS_META)
        .table(SHARES)
        .on_create(create_meta);
    s
}

fn create_meta(wtx: &redb::WriteTransaction) -> Result<(), StorageError> {
    use redb::ReadableTable as _;
    let mut m = wtx.open_table(FS_META)?;
    if m.get("generation")?.is_none() {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b)
            .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
        // Keep it in 1..2^62: NFS servers compare generations, leave headroom, never 0.
        let g = (u64::from_le_bytes(b) >> 2).max(1);
        m.insert("generation", g)?;
    }
    if m.get("next_ino")?.is_none() {
        m.insert("next_ino", FIRST_INO)?;
    }
    Ok(())
}

/// Bytes read ahead by [`FileSystem::read_ahead`], for [`FileSystem::read_with_attr_ahead`].
#[derive(Debug)]
pub struct ReadAhead {
    ino: u64,
    offset: u64,
    count: u32,
    /// The store's commit counter before the read.
    commits: u64,
    data: Vec<u8>,
    eof: bool,
}

/// Kind of a file-system object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// Regular file (an object).
    File,
    /// Directory (a key prefix, with or without marker object).
    Directory,
    /// Symbolic link (an object holding the target).
    Symlink,
}

/// Attributes of an inode, as NFS reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileAttr {
    /// Inode number (NFS fileid).
    pub ino: u64,
    /// What it is.
    pub kind: FileKind,
    /// Permission bits (and setuid/setgid/sticky), exactly as last set.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Link count (1 for files, 2 for directories).
    pub nlink: u32,
    /// Access time.
    pub atime: SystemTime,
    /// Modification time.
    pub mtime: SystemTime,
    /// Change time.
    pub ctime: SystemTime,
    /// File-system id of the share (stable hash of its name).
    pub fsid: u64,
}

/// Attribute changes for [`FileSystem::setattr`] and creation; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttrs {
    /// New mode bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or zero-extend; files only).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SystemTime>,
    /// New modification time.
    pub mtime: Option<SystemTime>,
}

/// NFS `CREATE` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateMode {
    /// Create or open the existing file (applying the size in the attributes).
    Unchecked,
    /// Fail with `Exists` if the name exists.
    Guarded,
    /// Create once per verifier: a retry with the same verifier succeeds, anything else is
    /// `Exists`.
    Exclusive(u64),
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Name within the directory.
    pub name: String,
    /// Cookie to resume after this entry.
    pub cookie: u64,
    /// The entry's attributes.
    pub attr: FileAttr,
}

/// Space figures for `FSSTAT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStat {
    /// Capacity in bytes (quota, else global max size, else a large nominal figure).
    pub total_bytes: u64,
    /// Bytes still free.
    pub free_bytes: u64,
    /// Objects in the share.
    pub files: u64,
}

/// What [`FileSystem::stage`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged {
    /// The file's attributes including the staged write.
    pub attr: FileAttr,
    /// Bytes staged for this inode and not yet being applied.
    pub inode_bytes: usize,
    /// Bytes staged in the whole store and not yet being applied.
    pub total_bytes: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct InodeRec {
    pub share: String,
    /// Path inside the share, "" for its root, no leading or trailing slash.
    pub path: String,
    /// Last observed kind (a hint; the objects decide).
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    /// The object's `modified` when NFS last set this inode's times (files only).
    pub seen: u64,
    #[serde(default)]
    pub verf: Option<u64>,
    #[serde(default)]
    pub removed: bool,
}

enum Node {
    File(ObjRec),
    Symlink(ObjRec),
    Dir { marker: Option<u64> },
}

impl Node {
    fn kind(&self) -> FileKind {
        match self {
            Node::File(_) => FileKind::File,
            Node::Symlink(_) => FileKind::Symlink,
            Node::Dir { .. } => FileKind::Directory,
        }
    }
}

/// The NFS view of a [`Store`]'s shares. Cheap to clone; every method blocks.
///
/// Call order: [`Store::ensure_share`] → [`FileSystem::new`] → [`FileSystem::share_root`] (at
/// MNT) → `lookup`/`getattr`/`read`/`write`/... by inode number.
#[derive(Clone)]
pub struct FileSystem {
    store: Store,
    /// The store's write-back buffer of staged writes (installed by the first view).
    staged: Arc<dyn Staging>,
    generation: u64,
    /// Open readers by inode, revalidated against the object record on every use (saves the
    /// manifest decode and pinning per NFS READ).
    readers: Arc<Mutex<HashMap<u64, CachedReader>>>,
}

impl std::fmt::Debug for FileSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSystem")
            .field("store", &self.store)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A cached reader with the attributes read with it and the store's commit count then.
#[derive(Clone, Debug)]
struct CachedReader {
    commits: u64,
    attr: FileAttr,
    obj: ObjectReader,
}

/// Most cached readers (the cache is cleared when full).
const READER_CACHE: usize = 256;

/// A resolved inode: its record plus what exists at its path now.
struct Resolved {
    rec: InodeRec,
    node: Node,
}

impl FileSystem {
    /// The file-system view of `store`.
    pub fn new(store: Store) -> Result<FileSystem, FsError> {
        let rtx = store.view()?;
        let generation = rtx
            .open_table(FS_META)?
            .get("generation")?
            .map(|v| v.value())
            .ok_or_else(|| StorageError::Corrupt("fs_meta.generation missing".into()))?;
        let fs = FileSystem {
            staged: staging_of(&store),
            store,
            generation,
            readers: Arc::default(),
        };
        fs.open_journal()?;
        Ok(fs)
    }

    /// A view without a handle generation (for the store's own flushes of staged writes).
    pub(crate) fn bare(store: Store) -> FileSystem {
        FileSystem {
            staged: staging_of(&store),
            store,
            generation: 0,
            readers: Arc::default(),
        }
    }

    /// The store's write-back buffer of staged writes.
    fn wb(&self) -> &WriteBack {
        self.staged
            .as_any()
            .downcast_ref()
            .expect("a store's staging hook is the file-system view's write-back buffer")
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Random per-store number, created once: put it in file handles so they survive restarts.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Root directory of a share (allocating its inode on first use).
    pub fn share_root(&self, share: &str) -> Result<FileAttr, FsError> {
        {
            let rtx = self.store.view()?;
            if rtx.open_table(SHARES)?.get(share)?.is_none() {
                return Err(FsError::NoSuchShare);
            }
        }
        self.attr_at(share, "")
    }

    /// Share name and read-only flag of an inode.
    pub fn share_of(&self, ino: u64) -> Result<(String, bool), FsError> {
        let rtx = self.store.view()?;
        let rec = get_inode(&rtx.open_table(FS_INODES)?, ino)?.ok_or(FsError::Stale)?;
        let s: ShareRec = get_json(&rtx.open_table(SHARES)?, &rec.share)?.ok_or(FsError::Stale)?;
        Ok((rec.share, s.read_only))
    }

    fn writable(&self, ino: u64) -> Result<(), FsError> {
        match self.share_of(ino)? {
            (_, true) => Err(FsError::ReadOnly),
            _ => Ok(()),
        }
    }

    fn readers(&self) -> MutexGuard<'_, HashMap<u64, CachedReader>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop the cached reader of `ino` (its pins keep replaced chunks from being reclaimed).
    pub fn forget(&self, ino: u64) {
        self.readers().remove(&ino);
    }

    fn resolve(&self, ino: u64) -> Result<Resolved, FsError> {
        let rtx = self.store.view()?;
        let rec = get_inode(&rtx.open_table(FS_INODES)?, ino)?.ok_or(FsError::Stale)?;
        if rec.removed {
            return Err(FsError::Stale);
        }
        let node = probe(&rtx.open_table(OBJECTS)?, &rec.share, &rec.path)?;
        let node = match node {
            Some(n) => n,
            None => return Err(FsError::Stale),
        };
        Ok(Resolved { rec, node })
    }

    fn resolve_dir(&self, ino: u64) -> Result<Resolved, FsError> {
        let r = self.resolve(ino)?;
        if !matches!(r.node, Node::Dir { .. }) {
            return Err(FsError::NotADirectory);
        }
        Ok(r)
    }

    /// Attributes of whatever is at `share/path`, allocating its inode if needed.
    fn attr_at(&self, share: &str, path: &str) -> Result<FileAttr, FsError> {
        self.attr_at_opt(share, path, true)?
            .ok_or(FsError::Storage(StorageError::Conflict))
    }

    /// Like `attr_at`; with `alloc == false` returns `None` instead of writing a new inode.
    fn attr_at_opt(
        &self,
        share: &str,
        path: &str,
        alloc: bool,
    ) -> Result<Option<FileAttr>, FsError> {
        for _ in 0..EDIT_RETRIES {
            let rtx = self.store.view()?;
            let node =
                probe(&rtx.open_table(OBJECTS)?, share, path)?.ok_or(StorageError::NoSuchKey)?;
            let ino = rtx
                .open_table(FS_PATHS)?
                .get(obj_key(share, path).as_str())?
                .map(|v| v.value());
            if let Some(ino) = ino {
                let rec = get_inode(&rtx.open_table(FS_INODES)?, ino)?.ok_or(FsError::Stale)?;
                let mut a = attr_of(ino, &rec, &node);
                self.overlay(&mut a);
                return Ok(Some(a));
            }
            if !alloc {
                return Ok(None);
            }
            drop(rtx);
            let rec = default_rec(share, path, &node);
            self.store.txn_as(move |wtx, _| alloc_ino(wtx, rec))?;
        }
        Err(StorageError::Conflict.into())
    }

    /// Attributes of an inode (`Stale` once it is removed or its object vanished).
    pub fn getattr(&self, ino: u64) -> Result<FileAttr, FsError> {
        let r = self.resolve(ino)?;
        let mut a = attr_of(ino, &r.rec, &r.node);
        self.overlay(&mut a);
        Ok(a)
    }

    /// Report staged writes in `a` (size and times), as if they were applied.
    fn overlay(&self, a: &mut FileAttr) {
        if a.kind != FileKind::File {
            return;
        }
        if let Some(b) = self.wb().get(a.ino) {
            let d = lock(&b.state);
            if d.overlays() {
                a.size = a.size.max(d.end);
                a.mtime = from_nanos(d.mtime);
                a.ctime = a.mtime;
            }
        }
    }
}

/// The store's staging hook: the write-back buffer, created by the first view of the store.
fn staging_of(store: &Store) -> Arc<dyn Staging> {
    store.staging(|| Arc::new(WriteBack::default())).clone()
}
