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

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::mem::ReadTable;
use crate::mem::{TableW, Tx};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::meta::{
    encode_manifest, from_nanos, get_json, install_object, now_nanos, obj_key, remove_object,
    to_nanos, BucketRec, ChunkRef, ObjRec, BUCKETS, OBJECTS, OBJ_CHUNKS, STATS,
};
use crate::share::{ShareRec, SHARES};
use crate::store::{manifest_etag, Pins};
use crate::writeback::lock;
use crate::{ObjectMeta, StorageError, Store, INLINE_MAX, MAX_KEY_LEN};

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
/// Retries of an edit that lost a race with another writer.
const EDIT_RETRIES: usize = 8;
/// Writes at least this large are staged in recycled chunk-sized buffers.
const STAGE_POOLED_MIN: usize = 64 << 10;
/// Size reported for directories.
const DIR_SIZE: u64 = 4096;

/// Create the file-system tables and the store generation (called from `Store::open_with`).
pub(crate) fn create_tables(wtx: &redb::WriteTransaction) -> Result<(), StorageError> {
    use redb::ReadableTable as _;
    wtx.open_table(FS_INODES)?;
    wtx.open_table(FS_PATHS)?;
    wtx.open_table(SHARES)?;
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

fn is_symlink(r: &ObjRec) -> bool {
    r.meta.user.get(TYPE_META).is_some_and(|v| v == SYMLINK)
}

fn node_of(r: ObjRec) -> Node {
    if is_symlink(&r) {
        Node::Symlink(r)
    } else {
        Node::File(r)
    }
}

/// FNV-1a of the share name: the NFS fsid.
fn fsid(share: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in share.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

fn last_name(path: &str) -> &str {
    path.rfind('/').map_or(path, |i| &path[i + 1..])
}

/// Check an NFS file name.
pub fn check_name(name: &str) -> Result<(), StorageError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(StorageError::InvalidName);
    }
    if name.len() > 255 {
        return Err(StorageError::NameTooLong);
    }
    Ok(())
}

fn check_path(share: &str, path: &str) -> Result<(), StorageError> {
    // +1 for a directory marker's trailing slash.
    if path.len() + 1 > MAX_KEY_LEN || share.len() + path.len() + 2 > MAX_KEY_LEN + 64 {
        return Err(StorageError::NameTooLong);
    }
    Ok(())
}

fn get_inode(
    t: &impl ReadTable<u64, &'static [u8]>,
    ino: u64,
) -> Result<Option<InodeRec>, StorageError> {
    match t.get(ino)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

fn put_inode(
    t: &mut TableW<'_, u64, &'static [u8]>,
    ino: u64,
    rec: &InodeRec,
) -> Result<(), StorageError> {
    t.insert(ino, serde_json::to_vec(rec)?.as_slice())?;
    Ok(())
}

/// What exists at `share/path`.
fn probe(
    objects: &impl ReadTable<&'static str, &'static [u8]>,
    share: &str,
    path: &str,
) -> Result<Option<Node>, StorageError> {
    if path.is_empty() {
        return Ok(Some(Node::Dir { marker: None }));
    }
    let k = obj_key(share, path);
    if let Some(r) = get_json::<ObjRec, _>(objects, &k)? {
        return Ok(Some(node_of(r)));
    }
    let pfx = format!("{k}/");
    if let Some(e) = objects.range(pfx.as_str()..)?.next() {
        let (key, v) = e?;
        if key.value() == pfx {
            let r: ObjRec = serde_json::from_slice(v.value())?;
            return Ok(Some(Node::Dir {
                marker: Some(r.modified),
            }));
        }
        if key.value().starts_with(&pfx) {
            return Ok(Some(Node::Dir { marker: None }));
        }
    }
    Ok(None)
}

fn default_rec(share: &str, path: &str, node: &Node) -> InodeRec {
    let now = now_nanos();
    let (kind, mode, t) = match node {
        Node::File(r) => (FileKind::File, 0o644, r.modified),
        Node::Symlink(r) => (FileKind::Symlink, 0o777, r.modified),
        Node::Dir { marker } => (FileKind::Directory, 0o755, marker.unwrap_or(now)),
    };
    InodeRec {
        share: share.to_string(),
        path: path.to_string(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        atime: t,
        mtime: t,
        ctime: t,
        seen: t,
        verf: None,
        removed: false,
    }
}

fn attr_of(ino: u64, rec: &InodeRec, node: &Node) -> FileAttr {
    let (kind, size, nlink, mtime, ctime) = match node {
        Node::File(o) | Node::Symlink(o) => {
            let (m, c) = if o.modified == rec.seen {
                (rec.mtime, rec.ctime)
            } else {
                (o.modified, o.modified.max(rec.ctime))
            };
            (node.kind(), o.size, 1, m, c)
        }
        Node::Dir { .. } => (FileKind::Directory, DIR_SIZE, 2, rec.mtime, rec.ctime),
    };
    FileAttr {
        ino,
        kind,
        mode: rec.mode,
        uid: rec.uid,
        gid: rec.gid,
        size,
        nlink,
        atime: from_nanos(rec.atime),
        mtime: from_nanos(mtime),
        ctime: from_nanos(ctime),
        fsid: fsid(&rec.share),
    }
}

/// Allocate (or find) the inode of `share/path`; `rec` is used when a new one is made.
fn alloc_ino(wtx: &Tx, rec: InodeRec) -> Result<u64, StorageError> {
    let mut paths = wtx.open_table(FS_PATHS)?;
    let pk = obj_key(&rec.share, &rec.path);
    if let Some(v) = paths.get(pk.as_str())? {
        return Ok(v.value());
    }
    let mut meta = wtx.open_table(FS_META)?;
    let ino = meta
        .get("next_ino")?
        .map_or(FIRST_INO, |v| v.value())
        .max(FIRST_INO);
    meta.insert("next_ino", ino + 1)?;
    paths.insert(pk.as_str(), ino)?;
    put_inode(&mut wtx.open_table(FS_INODES)?, ino, &rec)?;
    Ok(ino)
}

/// Replace the inode of `share/path` by a fresh one with `rec` (old one becomes a tombstone).
fn new_ino(wtx: &Tx, rec: InodeRec) -> Result<u64, StorageError> {
    tombstone(wtx, &rec.share, &rec.path)?;
    alloc_ino(wtx, rec)
}

/// Mark the inode at `share/path` (if any) removed and forget the path.
fn tombstone(wtx: &Tx, share: &str, path: &str) -> Result<(), StorageError> {
    let mut paths = wtx.open_table(FS_PATHS)?;
    let pk = obj_key(share, path);
    let ino = paths.remove(pk.as_str())?.map(|v| v.value());
    if let Some(ino) = ino {
        let mut inodes = wtx.open_table(FS_INODES)?;
        if let Some(mut r) = get_inode(&inodes, ino)? {
            r.removed = true;
            r.ctime = now_nanos();
            put_inode(&mut inodes, ino, &r)?;
        }
    }
    Ok(())
}

/// Set mtime/ctime of the directory `share/path` to now (if it has an inode).
fn touch_dir(wtx: &Tx, share: &str, path: &str) -> Result<(), StorageError> {
    let ino = wtx
        .open_table(FS_PATHS)?
        .get(obj_key(share, path).as_str())?
        .map(|v| v.value());
    if let Some(ino) = ino {
        let mut inodes = wtx.open_table(FS_INODES)?;
        if let Some(mut r) = get_inode(&inodes, ino)? {
            let now = now_nanos().max(r.mtime + 1);
            r.mtime = now;
            r.ctime = now;
            put_inode(&mut inodes, ino, &r)?;
        }
    }
    Ok(())
}

/// Make sure the directory `share/dir` keeps existing once it may have no entries (marker).
fn ensure_marker(
    wtx: &Tx,
    freed: &mut Vec<ChunkId>,
    max_size: Option<u64>,
    share: &str,
    dir: &str,
) -> Result<(), StorageError> {
    if dir.is_empty() {
        return Ok(());
    }
    let mk = format!("{dir}/");
    if wtx
        .open_table(OBJECTS)?
        .get(obj_key(share, &mk).as_str())?
        .is_some()
    {
        return Ok(());
    }
    install_object(wtx, freed, max_size, share, &mk, &empty_rec(), &[], None)?;
    Ok(())
}

/// Outcome of [`create_in`].
enum Created {
    /// A new file: its attributes and the directory's after the change.
    New(FileAttr, FileAttr),
    /// The name holds a file this mode returns (its inode).
    Existing(u64),
}

/// CREATE inside one transaction: checks (directory, read-only share, name, mode) before any
/// change, then the empty object, its inode and the directory's times.
fn create_in(
    wtx: &Tx,
    freed: &mut Vec<ChunkId>,
    max_size: Option<u64>,
    dir: u64,
    name: &str,
    how: CreateMode,
    sa: &SetAttrs,
) -> Result<Created, StorageError> {
    let drec = match get_inode(&wtx.open_table(FS_INODES)?, dir)? {
        Some(r) if !r.removed => r,
        _ => return Err(StorageError::Stale),
    };
    let share: ShareRec =
        get_json(&wtx.open_table(SHARES)?, &drec.share)?.ok_or(StorageError::Stale)?;
    if share.read_only {
        return Err(StorageError::ReadOnly);
    }
    let dnode = match probe(&wtx.open_table(OBJECTS)?, &drec.share, &drec.path)? {
        Some(n @ Node::Dir { .. }) => n,
        Some(_) => return Err(StorageError::NotADirectory),
        None => return Err(StorageError::Stale),
    };
    let (sh, p) = (drec.share.as_str(), join(&drec.path, name));
    check_path(sh, &p)?;
    if let Some(node) = probe(&wtx.open_table(OBJECTS)?, sh, &p)? {
        let ino = wtx
            .open_table(FS_PATHS)?
            .get(obj_key(sh, &p).as_str())?
            .map(|v| v.value());
        let rec = match ino {
            Some(i) => get_inode(&wtx.open_table(FS_INODES)?, i)?,
            None => None,
        };
        return match (how, &node) {
            (_, Node::Dir { .. }) => Err(StorageError::Exists),
            (CreateMode::Guarded, _) => Err(StorageError::Exists),
            (CreateMode::Exclusive(v), _) => match (ino, rec) {
                (Some(i), Some(r)) if r.verf == Some(v) => Ok(Created::Existing(i)),
                _ => Err(StorageError::Exists),
            },
            (CreateMode::Unchecked, Node::Symlink(_)) => Err(StorageError::Exists),
            (CreateMode::Unchecked, Node::File(_)) => match ino {
                Some(i) => Ok(Created::Existing(i)),
                None => Ok(Created::Existing(alloc_ino(
                    wtx,
                    default_rec(sh, &p, &node),
                )?)),
            },
        };
    }
    let orec = empty_rec();
    install_object(wtx, freed, max_size, sh, &p, &orec, &[], None)?;
    let mut rec = default_rec(sh, &p, &Node::File(orec.clone()));
    apply_attrs(&mut rec, sa, orec.modified);
    rec.ctime = orec.modified;
    if let CreateMode::Exclusive(v) = how {
        rec.verf = Some(v);
    }
    let ino = new_ino(wtx, rec.clone())?;
    touch_dir(wtx, sh, &drec.path)?;
    let drec = get_inode(&wtx.open_table(FS_INODES)?, dir)?.ok_or(StorageError::Stale)?;
    Ok(Created::New(
        attr_of(ino, &rec, &Node::File(orec)),
        attr_of(dir, &drec, &dnode),
    ))
}

fn empty_rec() -> ObjRec {
    ObjRec {
        size: 0,
        etag: "d41d8cd98f00b204e9800998ecf8427e".into(),
        modified: now_nanos(),
        meta: ObjectMeta::default(),
    }
}

/// Move one object's record and manifest from `src` to `dst` (replacing `dst`); usage and chunk
/// references do not change except for the replaced object.
fn move_object(
    wtx: &Tx,
    freed: &mut Vec<ChunkId>,
    share: &str,
    src: &str,
    dst: &str,
) -> Result<(), StorageError> {
    remove_object(wtx, freed, share, dst)?;
    let (sk, dk) = (obj_key(share, src), obj_key(share, dst));
    let mut objects = wtx.open_table(OBJECTS)?;
    let mut chunks = wtx.open_table(OBJ_CHUNKS)?;
    let rec = objects
        .remove(sk.as_str())?
        .map(|v| v.value().to_vec())
        .ok_or(StorageError::NoSuchKey)?;
    let m = chunks
        .remove(sk.as_str())?
        .map(|v| v.value().to_vec())
        .unwrap_or_default();
    objects.insert(dk.as_str(), rec.as_slice())?;
    chunks.insert(dk.as_str(), m.as_slice())?;
    Ok(())
}

fn apply_attrs(r: &mut InodeRec, sa: &SetAttrs, now: u64) {
    if let Some(m) = sa.mode {
        r.mode = m & 0o7777;
    }
    if let Some(u) = sa.uid {
        r.uid = u;
    }
    if let Some(g) = sa.gid {
        r.gid = g;
    }
    if let Some(t) = sa.atime {
        r.atime = to_nanos(t);
    }
    if let Some(t) = sa.mtime {
        r.mtime = to_nanos(t);
    }
    r.ctime = now;
}

/// The NFS view of a [`Store`]'s shares. Cheap to clone; every method blocks.
///
/// Call order: [`Store::ensure_share`] → [`FileSystem::new`] → [`FileSystem::share_root`] (at
/// MNT) → `lookup`/`getattr`/`read`/`write`/... by inode number.
#[derive(Clone, Debug)]
pub struct FileSystem {
    store: Store,
    generation: u64,
    /// Open readers by inode, revalidated against the object record on every use (saves the
    /// manifest decode and pinning per NFS READ).
    readers: Arc<Mutex<HashMap<u64, CachedReader>>>,
}

/// A rebuilt object: record, manifest, and the bytes of an inline (small) single chunk.
type Built = (ObjRec, Vec<ChunkRef>, Option<Vec<u8>>);

/// A cached reader with the attributes read with it and the store's commit count then.
#[derive(Clone, Debug)]
struct CachedReader {
    commits: u64,
    attr: FileAttr,
    obj: crate::ObjectReader,
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
    pub fn new(store: Store) -> Result<FileSystem, StorageError> {
        let rtx = store.view()?;
        let generation = rtx
            .open_table(FS_META)?
            .get("generation")?
            .map(|v| v.value())
            .ok_or_else(|| StorageError::Corrupt("fs_meta.generation missing".into()))?;
        Ok(FileSystem {
            store,
            generation,
            readers: Arc::default(),
        })
    }

    /// A view without a handle generation (for the store's own flushes of staged writes).
    pub(crate) fn bare(store: Store) -> FileSystem {
        FileSystem {
            store,
            generation: 0,
            readers: Arc::default(),
        }
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
    pub fn share_root(&self, share: &str) -> Result<FileAttr, StorageError> {
        {
            let rtx = self.store.view()?;
            if rtx.open_table(SHARES)?.get(share)?.is_none() {
                return Err(StorageError::NoSuchShare);
            }
        }
        self.attr_at(share, "")
    }

    /// Share name and read-only flag of an inode.
    pub fn share_of(&self, ino: u64) -> Result<(String, bool), StorageError> {
        let rtx = self.store.view()?;
        let rec = get_inode(&rtx.open_table(FS_INODES)?, ino)?.ok_or(StorageError::Stale)?;
        let s: ShareRec =
            get_json(&rtx.open_table(SHARES)?, &rec.share)?.ok_or(StorageError::Stale)?;
        Ok((rec.share, s.read_only))
    }

    fn writable(&self, ino: u64) -> Result<(), StorageError> {
        match self.share_of(ino)? {
            (_, true) => Err(StorageError::ReadOnly),
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

    fn resolve(&self, ino: u64) -> Result<Resolved, StorageError> {
        let rtx = self.store.view()?;
        let rec = get_inode(&rtx.open_table(FS_INODES)?, ino)?.ok_or(StorageError::Stale)?;
        if rec.removed {
            return Err(StorageError::Stale);
        }
        let node = probe(&rtx.open_table(OBJECTS)?, &rec.share, &rec.path)?;
        let node = match node {
            Some(n) => n,
            None => return Err(StorageError::Stale),
        };
        Ok(Resolved { rec, node })
    }

    fn resolve_dir(&self, ino: u64) -> Result<Resolved, StorageError> {
        let r = self.resolve(ino)?;
        if !matches!(r.node, Node::Dir { .. }) {
            return Err(StorageError::NotADirectory);
        }
        Ok(r)
    }

    /// Attributes of whatever is at `share/path`, allocating its inode if needed.
    fn attr_at(&self, share: &str, path: &str) -> Result<FileAttr, StorageError> {
        self.attr_at_opt(share, path, true)?
            .ok_or(StorageError::Conflict)
    }

    /// Like `attr_at`; with `alloc == false` returns `None` instead of writing a new inode.
    fn attr_at_opt(
        &self,
        share: &str,
        path: &str,
        alloc: bool,
    ) -> Result<Option<FileAttr>, StorageError> {
        for _ in 0..EDIT_RETRIES {
            let rtx = self.store.view()?;
            let node =
                probe(&rtx.open_table(OBJECTS)?, share, path)?.ok_or(StorageError::NoSuchKey)?;
            let ino = rtx
                .open_table(FS_PATHS)?
                .get(obj_key(share, path).as_str())?
                .map(|v| v.value());
            if let Some(ino) = ino {
                let rec =
                    get_inode(&rtx.open_table(FS_INODES)?, ino)?.ok_or(StorageError::Stale)?;
                let mut a = attr_of(ino, &rec, &node);
                self.overlay(&mut a);
                return Ok(Some(a));
            }
            if !alloc {
                return Ok(None);
            }
            drop(rtx);
            let rec = default_rec(share, path, &node);
            self.store.txn(move |wtx, _| alloc_ino(wtx, rec))?;
        }
        Err(StorageError::Conflict)
    }

    /// Attributes of an inode (`Stale` once it is removed or its object vanished).
    pub fn getattr(&self, ino: u64) -> Result<FileAttr, StorageError> {
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
        if let Some(b) = self.store.wb().get(a.ino) {
            let d = lock(&b.state);
            if d.overlays() {
                a.size = a.size.max(d.end);
                a.mtime = from_nanos(d.mtime);
                a.ctime = a.mtime;
            }
        }
    }

    // ------------------------------------------------------------ staged (UNSTABLE) writes

    /// Stage a write in memory (NFS UNSTABLE): it is visible at once to every reader of the
    /// store (reads apply staged writes first) and durable after [`FileSystem::flush`]. Quota,
    /// read-only and file-type checks happen here, so a refusal stores nothing.
    pub fn stage(&self, ino: u64, offset: u64, data: &[u8]) -> Result<Staged, StorageError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(StorageError::Invalid("offset overflow"))?;
        let (mut attr, room, key) = self.check_write(ino)?;
        let wb = self.store.wb();
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
                    return Err(StorageError::QuotaExceeded);
                }
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
    pub fn flush(&self, ino: u64) -> Result<(), StorageError> {
        self.flush_opt(ino, false)
    }

    /// Like [`FileSystem::flush`], keeping a failure for the inode's next stage or flush.
    pub fn flush_background(&self, ino: u64) {
        let _ = self.flush_opt(ino, true);
    }

    fn flush_opt(&self, ino: u64, remember: bool) -> Result<(), StorageError> {
        let wb = self.store.wb();
        let Some(b) = wb.get(ino) else {
            return Ok(());
        };
        let r = {
            let _serial = lock(&b.flush);
            let taken = {
                let mut d = lock(&b.state);
                match d.error.take() {
                    Some(e) if !remember => Err(e),
                    e => {
                        d.error = e;
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
        r
    }

    /// Flush (in the background sense: failures are kept for the inode's next COMMIT) every
    /// inode whose oldest staged write is older than `age`; all of them with a zero `age`.
    pub fn flush_idle(&self, age: Duration) {
        for (ino, b) in self.store.wb().all() {
            let due = {
                let d = lock(&b.state);
                d.since.is_some_and(|t| t.elapsed() >= age)
            };
            if due || age.is_zero() {
                self.flush_background(ino);
            } else {
                self.store.wb().retire(ino, false);
            }
        }
    }

    /// Whether `ino` has staged writes, a flush of them running, or a kept flush failure
    /// (one atomic load when nothing is staged anywhere).
    pub fn is_staged(&self, ino: u64) -> bool {
        self.store.wb().get(ino).is_some()
    }

    /// Number of inodes with staged writes (or a kept flush failure) in the whole store.
    pub fn staged_inodes(&self) -> usize {
        self.store.wb().len()
    }

    /// Bytes staged in the whole store and not yet being applied.
    pub fn staged_bytes(&self) -> usize {
        self.store.wb().total.load(Ordering::Relaxed)
    }

    /// Flush staged writes of every inode at `path` or below it (before a rename moves them).
    fn flush_under(&self, share: &str, path: &str) -> Result<(), StorageError> {
        let wb = self.store.wb();
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
    fn discard_at(&self, share: &str, path: &str) {
        let wb = self.store.wb();
        for ino in wb.inodes_at(&obj_key(share, path), false) {
            wb.retire(ino, true);
        }
    }

    /// Look `name` up in directory `dir` (`.` and `..` included).
    pub fn lookup(&self, dir: u64, name: &str) -> Result<FileAttr, StorageError> {
        self.lookup_opt(dir, name, true)?
            .ok_or(StorageError::Conflict)
    }

    /// Read-only lookup: `Ok(None)` when the name exists but has no inode yet (an object put
    /// over S3 that NFS never saw); [`FileSystem::lookup`] then allocates one (a write).
    pub fn lookup_existing(&self, dir: u64, name: &str) -> Result<Option<FileAttr>, StorageError> {
        self.lookup_opt(dir, name, false)
    }

    /// [`FileSystem::lookup_existing`] plus the directory's attributes (an NFS LOOKUP reply
    /// carries both): `Err` only when `dir` itself fails; the lookup's own result inside.
    #[allow(clippy::type_complexity)]
    pub fn lookup_existing_with_dir(
        &self,
        dir: u64,
        name: &str,
    ) -> Result<(Result<Option<FileAttr>, StorageError>, FileAttr), StorageError> {
        let d = self.resolve_dir(dir)?;
        let dattr = attr_of(dir, &d.rec, &d.node);
        Ok((self.lookup_in(d, dir, name, false), dattr))
    }

    fn lookup_opt(
        &self,
        dir: u64,
        name: &str,
        alloc: bool,
    ) -> Result<Option<FileAttr>, StorageError> {
        let d = self.resolve_dir(dir)?;
        self.lookup_in(d, dir, name, alloc)
    }

    fn lookup_in(
        &self,
        d: Resolved,
        dir: u64,
        name: &str,
        alloc: bool,
    ) -> Result<Option<FileAttr>, StorageError> {
        match name {
            "." => return Ok(Some(attr_of(dir, &d.rec, &d.node))),
            ".." => return self.attr_at_opt(&d.rec.share, parent_of(&d.rec.path), alloc),
            _ => {}
        }
        check_name(name)?;
        let path = join(&d.rec.path, name);
        check_path(&d.rec.share, &path)?;
        self.attr_at_opt(&d.rec.share, &path, alloc)
    }

    /// Read up to `count` bytes at `offset`: `(data, eof)`.
    pub fn read(&self, ino: u64, offset: u64, count: u32) -> Result<(Vec<u8>, bool), StorageError> {
        self.read_with_attr(ino, offset, count)
            .map(|(data, eof, _)| (data, eof))
    }

    /// [`FileSystem::read`] plus the file's attributes (from the same metadata snapshot).
    pub fn read_with_attr(
        &self,
        ino: u64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool, FileAttr), StorageError> {
        let (obj, attr) = self.open_for_read(ino)?;
        let size = obj.size();
        if offset >= size {
            return Ok((Vec::new(), true, attr));
        }
        let buf = obj.read_vec(offset, count as usize)?;
        let eof = offset + buf.len() as u64 >= size;
        Ok((buf, eof, attr))
    }

    /// Read `count` bytes at `offset` of `ino` before anybody asks (a sequential reader's next
    /// range, read while its previous reply is in flight). `None` when there is nothing to read
    /// or something is staged; errors are left for the real read to report.
    pub fn read_ahead(&self, ino: u64, offset: u64, count: u32) -> Option<ReadAhead> {
        // Sampled first: a commit during the read makes the result unusable.
        let commits = self.store.commits();
        if self.is_staged(ino) {
            return None;
        }
        let (obj, _) = self.open_for_read(ino).ok()?;
        if offset >= obj.size() {
            return None;
        }
        let data = obj.read_vec(offset, count as usize).ok()?;
        let eof = offset + data.len() as u64 >= obj.size();
        Some(ReadAhead {
            ino,
            offset,
            count,
            commits,
            data,
            eof,
        })
    }

    /// [`FileSystem::read_with_attr`], answered from `ahead` when it read this range and
    /// nothing was committed or staged since (the same bytes a read now would return).
    pub fn read_with_attr_ahead(
        &self,
        ahead: Option<ReadAhead>,
        ino: u64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool, FileAttr), StorageError> {
        if let Some(a) = ahead.filter(|a| (a.ino, a.offset, a.count) == (ino, offset, count)) {
            if !self.is_staged(ino) {
                let (_, attr) = self.open_for_read(ino)?;
                // Checked after the attributes: both are as of now.
                if self.store.commits() == a.commits && !self.is_staged(ino) {
                    return Ok((a.data, a.eof, attr));
                }
            }
        }
        self.read_with_attr(ino, offset, count)
    }

    /// [`FileSystem::read_with_attr`] as segments ([`crate::ObjectReader::segments`]): chunk
    /// files come as open files (for `sendfile`), so the bytes are not copied here. Returns
    /// `(segments, byte count, eof, attributes)`.
    pub fn read_segments_with_attr(
        &self,
        ino: u64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<crate::Segment>, usize, bool, FileAttr), StorageError> {
        let (obj, attr) = self.open_for_read(ino)?;
        let segs = obj.segments(offset, count as usize)?;
        let n: usize = segs.iter().map(crate::Segment::len).sum();
        let eof = offset.saturating_add(n as u64) >= obj.size();
        Ok((segs, n, eof, attr))
    }

    /// Apply staged writes of `ino`, then its (cached) reader and attributes from one
    /// metadata snapshot.
    fn open_for_read(&self, ino: u64) -> Result<(crate::ObjectReader, FileAttr), StorageError> {
        // Nothing committed since the reader was cached and nothing staged: it and its
        // attributes are current (no read transaction).
        let commits = self.store.commits();
        if !self.is_staged(ino) {
            if let Some(c) = self.readers().get(&ino).filter(|c| c.commits == commits) {
                return Ok((c.obj.clone(), c.attr.clone()));
            }
        }
        self.flush_background(ino);
        let commits = self.store.commits();
        let r = self.resolve(ino)?;
        let mut attr = attr_of(ino, &r.rec, &r.node);
        self.overlay(&mut attr);
        let cur = match r.node {
            Node::Dir { .. } => return Err(StorageError::IsADirectory),
            Node::Symlink(_) => return Err(StorageError::Invalid("read of a symlink")),
            Node::File(o) => o,
        };
        let cached = self.readers().get(&ino).map(|c| c.obj.clone()).filter(|o| {
            o.info.size == cur.size
                && o.info.etag == cur.etag
                && o.info.modified == from_nanos(cur.modified)
        });
        let obj = match cached {
            Some(o) => o,
            None => match self.store.open_object_raw(&r.rec.share, &r.rec.path) {
                Ok(o) => o,
                Err(StorageError::NoSuchKey) => return Err(StorageError::Stale),
                Err(e) => return Err(e),
            },
        };
        if !self.is_staged(ino) {
            let mut m = self.readers();
            if m.len() >= READER_CACHE && !m.contains_key(&ino) {
                m.clear();
            }
            let c = CachedReader {
                commits,
                attr: attr.clone(),
                obj: obj.clone(),
            };
            m.insert(ino, c);
        }
        Ok((obj, attr))
    }

    /// Target of a symlink.
    pub fn readlink(&self, ino: u64) -> Result<String, StorageError> {
        let r = self.resolve(ino)?;
        if !matches!(r.node, Node::Symlink(_)) {
            return Err(StorageError::Invalid("not a symlink"));
        }
        let obj = self.store.open_object_raw(&r.rec.share, &r.rec.path)?;
        let mut buf = vec![0u8; obj.size() as usize];
        let n = obj.read_at(0, &mut buf)?;
        buf.truncate(n);
        String::from_utf8(buf).map_err(|_| StorageError::Corrupt("symlink target".into()))
    }

    /// Apply `writes` (in order; later ones win where they overlap) durably, rewriting only the
    /// chunks they touch. Returns the new attributes.
    pub fn write(&self, ino: u64, writes: &[(u64, &[u8])]) -> Result<FileAttr, StorageError> {
        self.writable(ino)?;
        self.flush(ino)?;
        self.edit(ino, writes, None, None)
    }

    /// Change attributes (size changes rewrite only the cut chunk).
    pub fn setattr(&self, ino: u64, sa: &SetAttrs) -> Result<FileAttr, StorageError> {
        self.writable(ino)?;
        // Staged writes first: they must not land after (and override) the new size or times.
        self.flush_background(ino);
        let r = self.resolve(ino)?;
        if sa.size.is_some() && !matches!(r.node, Node::File(_)) {
            return Err(match r.node {
                Node::Dir { .. } => StorageError::IsADirectory,
                _ => StorageError::Invalid("size of a symlink"),
            });
        }
        if sa.size.is_some() {
            return self.edit(ino, &[], sa.size, Some(sa.clone()));
        }
        let sa = sa.clone();
        let (share, path) = (r.rec.share.clone(), r.rec.path.clone());
        self.store.txn(move |wtx, _| {
            let seen = get_json::<ObjRec, _>(&wtx.open_table(OBJECTS)?, &obj_key(&share, &path))?
                .map(|o| o.modified);
            let mut inodes = wtx.open_table(FS_INODES)?;
            let mut rec = get_inode(&inodes, ino)?.ok_or(StorageError::Stale)?;
            if rec.removed {
                return Err(StorageError::Stale);
            }
            if let Some(s) = seen {
                if s != rec.seen {
                    // Times changed over S3 since NFS last looked: adopt them first.
                    rec.mtime = s;
                    rec.ctime = rec.ctime.max(s);
                    rec.seen = s;
                }
            }
            apply_attrs(&mut rec, &sa, now_nanos());
            rec.verf = None;
            put_inode(&mut inodes, ino, &rec)
        })?;
        self.getattr(ino)
    }

    /// Splice writes and/or a truncation into the file `ino` and update its inode, in one
    /// metadata transaction (retrying if another writer got there first).
    fn edit(
        &self,
        ino: u64,
        writes: &[(u64, &[u8])],
        truncate: Option<u64>,
        sa: Option<SetAttrs>,
    ) -> Result<FileAttr, StorageError> {
        for _ in 0..EDIT_RETRIES {
            let r = self.resolve(ino)?;
            match r.node {
                Node::File(_) => {}
                Node::Dir { .. } => return Err(StorageError::IsADirectory),
                Node::Symlink(_) => return Err(StorageError::Invalid("write to a symlink")),
            }
            let (share, path) = (r.rec.share.clone(), r.rec.path.clone());
            let old = match self.store.open_object_raw(&share, &path) {
                Ok(o) => o,
                Err(StorageError::NoSuchKey) => return Err(StorageError::Stale),
                Err(e) => return Err(e),
            };
            let mut pins = Pins {
                shared: self.store.shared().clone(),
                ids: Vec::new(),
            };
            let (rec, manifest, inline) = self.build(&old, writes, truncate, &mut pins)?;
            let expect = encode_manifest(old.manifest());
            drop(old);
            self.forget(ino);
            let max_size = self.store.max_size();
            let sa = sa.clone();
            let _g = self.store.shared().read_guard();
            let res = self.store.txn(move |wtx, freed| {
                let ok = obj_key(&share, &path);
                let cur = wtx
                    .open_table(OBJ_CHUNKS)?
                    .get(ok.as_str())?
                    .map(|v| v.value().to_vec());
                if cur.as_deref() != Some(expect.as_slice()) {
                    return Err(StorageError::Conflict);
                }
                {
                    let inodes = wtx.open_table(FS_INODES)?;
                    match get_inode(&inodes, ino)? {
                        Some(i) if !i.removed && i.path == path && i.share == share => {}
                        _ => return Err(StorageError::Conflict),
                    }
                }
                install_object(
                    wtx,
                    freed,
                    max_size,
                    &share,
                    &path,
                    &rec,
                    &manifest,
                    inline.as_deref(),
                )?;
                let mut inodes = wtx.open_table(FS_INODES)?;
                let mut i = get_inode(&inodes, ino)?.ok_or(StorageError::Stale)?;
                i.mtime = rec.modified;
                i.ctime = rec.modified;
                i.seen = rec.modified;
                if let Some(sa) = &sa {
                    apply_attrs(&mut i, sa, rec.modified);
                    i.verf = None;
                }
                put_inode(&mut inodes, ino, &i)
            });
            drop(_g);
            drop(pins);
            match res {
                Err(StorageError::Conflict) => continue,
                Err(e) => return Err(e),
                Ok(()) => return self.getattr(ino),
            }
        }
        Err(StorageError::Conflict)
    }

    /// New object record and manifest for `old` with `truncate` then `writes` applied. Chunks no
    /// write touches (and not cut) are kept; a short last chunk is merged with growth.
    fn build(
        &self,
        old: &crate::ObjectReader,
        writes: &[(u64, &[u8])],
        truncate: Option<u64>,
        pins: &mut Pins,
    ) -> Result<Built, StorageError> {
        let cs = u64::from(self.store.shared().chunk_size);
        let size = old.size();
        let t = truncate.unwrap_or(size);
        let keep_limit = size.min(t);
        let mut new_size = t;
        for (o, d) in writes {
            let end = o
                .checked_add(d.len() as u64)
                .ok_or(StorageError::Invalid("offset overflow"))?;
            if !d.is_empty() {
                new_size = new_size.max(end);
            }
        }
        if new_size > 0 && new_size <= (INLINE_MAX as u64).min(cs) {
            // Small result: one chunk kept in the metadata store (one fsync, no chunk file).
            let mut buf = vec![0u8; new_size as usize];
            if keep_limit > 0 {
                old.read_exact_at(0, &mut buf[..keep_limit as usize])?;
            }
            for (o, d) in writes {
                let (o, e) = (*o as usize, *o as usize + d.len());
                buf[o..e].copy_from_slice(d);
            }
            let c = ChunkRef {
                id: ChunkId::of(&buf),
                len: u32::try_from(buf.len()).expect("inline chunk is small"),
                inline: true,
            };
            let rec = ObjRec {
                size: new_size,
                etag: manifest_etag(&[c]),
                modified: now_nanos(),
                meta: old.info.meta.clone(),
            };
            return Ok((rec, vec![c], Some(buf)));
        }
        let overlaps = |s: u64, e: u64| {
            writes
                .iter()
                .any(|(o, d)| !d.is_empty() && *o < e && o + d.len() as u64 > s)
        };
        let m = old.manifest();
        let mut out: Vec<ChunkRef> = Vec::with_capacity(m.len() + 1);
        let mut runs: Vec<(usize, u64, u64)> = Vec::new(); // (insert index in out, start, end)
        let mut run_start: Option<u64> = None;
        let mut s = 0u64;
        let mut covered = 0u64;
        for c in m {
            let e = s + u64::from(c.len);
            if s >= new_size {
                break;
            }
            let short_tail = e == size && u64::from(c.len) < cs && new_size > size;
            let keep = e <= keep_limit && !overlaps(s, e) && !short_tail;
            if keep {
                if let Some(rs) = run_start.take() {
                    runs.push((out.len(), rs, s));
                }
                out.push(*c);
                covered = e;
            } else if run_start.is_none() {
                run_start = Some(s);
            }
            s = e;
        }
        match run_start {
            Some(rs) => runs.push((out.len(), rs, new_size)),
            None if covered < new_size => runs.push((out.len(), covered, new_size)),
            None => {}
        }
        // Materialise the rewritten runs (from the back so insert indexes stay valid). Whole
        // chunks of zeros (sparse growth) share one chunk, stored once.
        let mut zero: Option<ChunkRef> = None;
        for (at, a, b) in runs.into_iter().rev() {
            let mut pieces = Vec::new();
            let mut refs: Vec<Option<ChunkRef>> = Vec::new();
            let mut p = a;
            while p < b {
                let pe = (p + cs).min(b);
                if pe - p == cs && p >= keep_limit && !overlaps(p, pe) {
                    if zero.is_none() {
                        zero = Some(pins.put_chunk(&vec![0u8; cs as usize])?);
                    }
                    refs.push(zero);
                    p = pe;
                    continue;
                }
                refs.push(None);
                let over: Vec<&(u64, &[u8])> = writes
                    .iter()
                    .filter(|(o, d)| !d.is_empty() && *o < pe && o + d.len() as u64 > p)
                    .collect();
                if let [(o, d)] = over.as_slice() {
                    if *o <= p && o + d.len() as u64 >= pe {
                        // One write covers the whole chunk: store its bytes without a copy.
                        pieces.push(Cow::Borrowed(&d[(p - o) as usize..(pe - o) as usize]));
                        p = pe;
                        continue;
                    }
                }
                let mut buf = vec![0u8; (pe - p) as usize];
                let fully_written = writes
                    .iter()
                    .any(|(o, d)| *o <= p && o + d.len() as u64 >= pe);
                let old_end = pe.min(keep_limit);
                if !fully_written && p < old_end {
                    old.read_exact_at(p, &mut buf[..(old_end - p) as usize])?;
                }
                for (o, d) in writes {
                    let ws = (*o).max(p);
                    let we = (o + d.len() as u64).min(pe);
                    if ws < we {
                        buf[(ws - p) as usize..(we - p) as usize]
                            .copy_from_slice(&d[(ws - o) as usize..(we - o) as usize]);
                    }
                }
                pieces.push(Cow::Owned(buf));
                p = pe;
            }
            let mut stored = put_pieces(pins, &pieces)?.into_iter();
            let refs: Vec<ChunkRef> = refs
                .into_iter()
                .map(|r| {
                    r.or_else(|| stored.next())
                        .expect("one stored piece per slot")
                })
                .collect();
            out.splice(at..at, refs);
        }
        debug_assert_eq!(out.iter().map(|c| u64::from(c.len)).sum::<u64>(), new_size);
        let rec = ObjRec {
            size: new_size,
            etag: manifest_etag(&out),
            modified: now_nanos(),
            meta: old.info.meta.clone(),
        };
        Ok((rec, out, None))
    }

    /// Create a regular file in `dir`.
    pub fn create(
        &self,
        dir: u64,
        name: &str,
        how: CreateMode,
        sa: &SetAttrs,
    ) -> Result<FileAttr, StorageError> {
        check_name(name)?;
        let max_size = self.store.max_size();
        let (name2, sa2) = (name.to_string(), sa.clone());
        let made = self
            .store
            .txn(move |wtx, freed| create_in(wtx, freed, max_size, dir, &name2, how, &sa2))?;
        match made {
            Created::Existing(ino) if sa.size.is_some() && how == CreateMode::Unchecked => self
                .setattr(
                    ino,
                    &SetAttrs {
                        size: sa.size,
                        ..Default::default()
                    },
                ),
            Created::Existing(ino) => self.getattr(ino),
            Created::New(a, _) if sa.size.is_some_and(|s| s > 0) => self.setattr(
                a.ino,
                &SetAttrs {
                    size: sa.size,
                    ..Default::default()
                },
            ),
            Created::New(a, _) => Ok(a),
        }
    }

    /// [`FileSystem::create`] for the common case, in one transaction: the new file's and the
    /// directory's attributes once durable, or `Ok(None)` when the request needs
    /// [`FileSystem::create`] instead (the name exists and the mode may return it, or a
    /// non-zero size is asked for).
    pub fn create_quick(
        &self,
        dir: u64,
        name: &str,
        how: CreateMode,
        sa: &SetAttrs,
    ) -> Result<Option<(FileAttr, FileAttr)>, StorageError> {
        check_name(name)?;
        if sa.size.is_some_and(|s| s > 0) {
            return Ok(None);
        }
        let max_size = self.store.max_size();
        let (name, sa) = (name.to_string(), sa.clone());
        let made = self
            .store
            .txn(move |wtx, freed| create_in(wtx, freed, max_size, dir, &name, how, &sa))?;
        Ok(match made {
            Created::New(a, d) => Some((a, d)),
            Created::Existing(_) => None,
        })
    }

    /// Create a directory (a marker object `path/`).
    pub fn mkdir(&self, dir: u64, name: &str, sa: &SetAttrs) -> Result<FileAttr, StorageError> {
        self.writable(dir)?;
        check_name(name)?;
        let d = self.resolve_dir(dir)?;
        let (share, path) = (d.rec.share.clone(), join(&d.rec.path, name));
        check_path(&share, &path)?;
        let max_size = self.store.max_size();
        let sa = sa.clone();
        let (sh, p, dpath) = (share.clone(), path.clone(), d.rec.path.clone());
        self.store.txn(move |wtx, freed| {
            if probe(&wtx.open_table(OBJECTS)?, &sh, &p)?.is_some() {
                return Err(StorageError::Exists);
            }
            let orec = empty_rec();
            install_object(
                wtx,
                freed,
                max_size,
                &sh,
                &format!("{p}/"),
                &orec,
                &[],
                None,
            )?;
            let mut rec = default_rec(
                &sh,
                &p,
                &Node::Dir {
                    marker: Some(orec.modified),
                },
            );
            apply_attrs(&mut rec, &sa, orec.modified);
            new_ino(wtx, rec)?;
            touch_dir(wtx, &sh, &dpath)
        })?;
        self.attr_at(&share, &path)
    }

    /// Create a symlink `name` -> `target`.
    pub fn symlink(
        &self,
        dir: u64,
        name: &str,
        target: &str,
        sa: &SetAttrs,
    ) -> Result<FileAttr, StorageError> {
        self.writable(dir)?;
        check_name(name)?;
        if target.is_empty() || target.len() > INLINE_MAX.min(4096) {
            return Err(StorageError::NameTooLong);
        }
        let d = self.resolve_dir(dir)?;
        let (share, path) = (d.rec.share.clone(), join(&d.rec.path, name));
        check_path(&share, &path)?;
        let max_size = self.store.max_size();
        let sa = sa.clone();
        let body = target.as_bytes().to_vec();
        let (sh, p, dpath) = (share.clone(), path.clone(), d.rec.path.clone());
        self.store.txn(move |wtx, freed| {
            if probe(&wtx.open_table(OBJECTS)?, &sh, &p)?.is_some() {
                return Err(StorageError::Exists);
            }
            let mut meta = ObjectMeta::default();
            meta.user.insert(TYPE_META.into(), SYMLINK.into());
            let orec = ObjRec {
                size: body.len() as u64,
                etag: String::new(),
                modified: now_nanos(),
                meta,
            };
            let c = ChunkRef {
                id: ChunkId::of(&body),
                len: u32::try_from(body.len()).expect("symlink target is small"),
                inline: true,
            };
            let mut orec2 = orec.clone();
            orec2.etag = manifest_etag(&[c]);
            install_object(wtx, freed, max_size, &sh, &p, &orec2, &[c], Some(&body))?;
            let mut rec = default_rec(&sh, &p, &Node::Symlink(orec2.clone()));
            apply_attrs(&mut rec, &sa, orec2.modified);
            new_ino(wtx, rec)?;
            touch_dir(wtx, &sh, &dpath)
        })?;
        self.attr_at(&share, &path)
    }

    /// Remove a file or symlink.
    pub fn remove(&self, dir: u64, name: &str) -> Result<(), StorageError> {
        self.unlink(dir, name, false)
    }

    /// Remove an empty directory.
    pub fn rmdir(&self, dir: u64, name: &str) -> Result<(), StorageError> {
        self.unlink(dir, name, true)
    }

    fn unlink(&self, dir: u64, name: &str, want_dir: bool) -> Result<(), StorageError> {
        self.writable(dir)?;
        check_name(name)?;
        let d = self.resolve_dir(dir)?;
        let (sh, p, dpath) = (
            d.rec.share.clone(),
            join(&d.rec.path, name),
            d.rec.path.clone(),
        );
        let max_size = self.store.max_size();
        let (share, path) = (sh.clone(), p.clone());
        self.store.txn(move |wtx, freed| {
            let node = probe(&wtx.open_table(OBJECTS)?, &sh, &p)?.ok_or(StorageError::NoSuchKey)?;
            match (&node, want_dir) {
                (Node::Dir { .. }, false) => return Err(StorageError::IsADirectory),
                (Node::File(_) | Node::Symlink(_), true) => {
                    return Err(StorageError::NotADirectory)
                }
                (Node::Dir { .. }, true) => {
                    let pfx = obj_key(&sh, &format!("{p}/"));
                    let objects = wtx.open_table(OBJECTS)?;
                    for e in objects.range(pfx.as_str()..)? {
                        let (k, _) = e?;
                        if !k.value().starts_with(&pfx) {
                            break;
                        }
                        if k.value() != pfx {
                            return Err(StorageError::DirectoryNotEmpty);
                        }
                    }
                }
                _ => {}
            }
            let key = if want_dir { format!("{p}/") } else { p.clone() };
            remove_object(wtx, freed, &sh, &key)?;
            tombstone(wtx, &sh, &p)?;
            ensure_marker(wtx, freed, max_size, &sh, &dpath)?;
            touch_dir(wtx, &sh, &dpath)
        })?;
        self.discard_at(&share, &path);
        Ok(())
    }

    /// Rename within or across directories of one share; an existing target file (or empty
    /// directory, for a directory source) is replaced.
    pub fn rename(
        &self,
        from_dir: u64,
        from: &str,
        to_dir: u64,
        to: &str,
    ) -> Result<(), StorageError> {
        self.writable(from_dir)?;
        check_name(from)?;
        check_name(to)?;
        let fd = self.resolve_dir(from_dir)?;
        let td = self.resolve_dir(to_dir)?;
        if fd.rec.share != td.rec.share {
            return Err(StorageError::Invalid("rename across shares"));
        }
        let sh = fd.rec.share.clone();
        let (src, dst) = (join(&fd.rec.path, from), join(&td.rec.path, to));
        check_path(&sh, &dst)?;
        if src == dst {
            return Ok(());
        }
        if dst.starts_with(&format!("{src}/")) {
            return Err(StorageError::Invalid("directory moved into itself"));
        }
        let (fpath, tpath) = (fd.rec.path.clone(), td.rec.path.clone());
        let max_size = self.store.max_size();
        // Staged writes of what moves go to the old keys first; those of a replaced target
        // are dropped with it.
        self.flush_under(&sh, &src)?;
        let (share, old_dst) = (sh.clone(), dst.clone());
        let moved = self.store.txn(move |wtx, freed| {
            let (snode, dnode) = {
                let objects = wtx.open_table(OBJECTS)?;
                (probe(&objects, &sh, &src)?, probe(&objects, &sh, &dst)?)
            };
            let snode = snode.ok_or(StorageError::NoSuchKey)?;
            let src_is_dir = matches!(snode, Node::Dir { .. });
            // Keys to move: (old key, new key).
            let mut moves: Vec<(String, String)> = Vec::new();
            let spfx = format!("{src}/");
            if src_is_dir {
                match &dnode {
                    Some(Node::Dir { .. }) => {
                        let pfx = obj_key(&sh, &format!("{dst}/"));
                        let objects = wtx.open_table(OBJECTS)?;
                        for e in objects.range(pfx.as_str()..)? {
                            let (k, _) = e?;
                            if !k.value().starts_with(&pfx) {
                                break;
                            }
                            if k.value() != pfx {
                                return Err(StorageError::DirectoryNotEmpty);
                            }
                        }
                    }
                    Some(_) => return Err(StorageError::NotADirectory),
                    None => {}
                }
                let base = obj_key(&sh, "");
                let full = obj_key(&sh, &spfx);
                let objects = wtx.open_table(OBJECTS)?;
                for e in objects.range(full.as_str()..)? {
                    let (k, _) = e?;
                    let k = k.value();
                    if !k.starts_with(&full) {
                        break;
                    }
                    let rel = &k[base.len()..];
                    let nk = format!("{dst}/{}", &rel[spfx.len()..]);
                    if nk.len() > MAX_KEY_LEN {
                        return Err(StorageError::NameTooLong);
                    }
                    moves.push((rel.to_string(), nk));
                }
            } else {
                if let Some(Node::Dir { .. }) = dnode {
                    return Err(StorageError::IsADirectory);
                }
                moves.push((src.clone(), dst.clone()));
            }
            // --- mutations ---
            if src_is_dir && dnode.is_some() {
                remove_object(wtx, freed, &sh, &format!("{dst}/"))?;
            }
            tombstone(wtx, &sh, &dst)?;
            for (a, b) in &moves {
                move_object(wtx, freed, &sh, a, b)?;
            }
            // Re-point inodes: the source itself and, for a directory, everything below it.
            let mut repoint: Vec<(String, u64)> = Vec::new();
            {
                let paths = wtx.open_table(FS_PATHS)?;
                let sk = obj_key(&sh, &src);
                if let Some(v) = paths.get(sk.as_str())? {
                    repoint.push((src.clone(), v.value()));
                }
                if src_is_dir {
                    let full = obj_key(&sh, &spfx);
                    let base = obj_key(&sh, "").len();
                    for e in paths.range(full.as_str()..)? {
                        let (k, v) = e?;
                        if !k.value().starts_with(&full) {
                            break;
                        }
                        repoint.push((k.value()[base..].to_string(), v.value()));
                    }
                }
            }
            {
                let mut paths = wtx.open_table(FS_PATHS)?;
                let mut inodes = wtx.open_table(FS_INODES)?;
                let now = now_nanos();
                for (old, ino) in &mut repoint {
                    let np = format!("{dst}{}", &old[src.len()..]);
                    paths.remove(obj_key(&sh, old).as_str())?;
                    paths.insert(obj_key(&sh, &np).as_str(), *ino)?;
                    if let Some(mut r) = get_inode(&inodes, *ino)? {
                        r.path = np.clone();
                        if *old == src {
                            r.ctime = now;
                        }
                        put_inode(&mut inodes, *ino, &r)?;
                    }
                    *old = np;
                }
            }
            ensure_marker(wtx, freed, max_size, &sh, &fpath)?;
            touch_dir(wtx, &sh, &fpath)?;
            if tpath != fpath {
                touch_dir(wtx, &sh, &tpath)?;
            }
            Ok(repoint)
        })?;
        let wb = self.store.wb();
        if !wb.is_empty() {
            let moved_inos: Vec<u64> = moved.iter().map(|(_, i)| *i).collect();
            for ino in wb.inodes_at(&obj_key(&share, &old_dst), false) {
                if !moved_inos.contains(&ino) {
                    wb.retire(ino, true);
                }
            }
            for (path, ino) in moved {
                wb.rekey(ino, obj_key(&share, &path));
            }
        }
        Ok(())
    }

    /// Up to `max` entries of directory `dir` after `cookie` (0 = from the start, with `.` and
    /// `..`): `(entries, eof)`.
    pub fn readdir(
        &self,
        dir: u64,
        cookie: u64,
        max: usize,
    ) -> Result<(Vec<DirEntry>, bool), StorageError> {
        let d = self.resolve_dir(dir)?;
        let share = d.rec.share.clone();
        let mut out = Vec::new();
        if cookie == 0 {
            out.push(DirEntry {
                name: ".".into(),
                cookie: COOKIE_DOT,
                attr: attr_of(dir, &d.rec, &d.node),
            });
        }
        if cookie <= COOKIE_DOT {
            let mut a = self.attr_at(&share, parent_of(&d.rec.path))?;
            if d.rec.path.is_empty() {
                a = attr_of(dir, &d.rec, &d.node);
            }
            out.push(DirEntry {
                name: "..".into(),
                cookie: COOKIE_DOTDOT,
                attr: a,
            });
        }
        let prefix = if d.rec.path.is_empty() {
            obj_key(&share, "")
        } else {
            obj_key(&share, &format!("{}/", d.rec.path))
        };
        let mut last: Option<String> = None;
        let mut start: Bound<String> = Bound::Included(prefix.clone());
        if cookie > COOKIE_DOTDOT {
            let rtx = self.store.view()?;
            let r =
                get_inode(&rtx.open_table(FS_INODES)?, cookie)?.ok_or(StorageError::BadCookie)?;
            if r.share != share {
                return Err(StorageError::BadCookie);
            }
            let name = last_name(&r.path).to_string();
            start = Bound::Excluded(format!("{prefix}{name}"));
            last = Some(name);
        }
        // (name, node) of the page, in key order.
        let mut found: Vec<(String, Node)> = Vec::new();
        let mut eof = true;
        let want = max.saturating_sub(out.len()).max(1);
        {
            let rtx = self.store.view()?;
            let objects = rtx.open_table(OBJECTS)?;
            'scan: loop {
                let range = objects.range::<&str>((
                    match &start {
                        Bound::Included(s) => Bound::Included(s.as_str()),
                        Bound::Excluded(s) => Bound::Excluded(s.as_str()),
                        Bound::Unbounded => Bound::Unbounded,
                    },
                    Bound::Unbounded,
                ))?;
                for e in range {
                    let (k, v) = e?;
                    let key = k.value();
                    if !key.starts_with(&prefix) {
                        break 'scan;
                    }
                    let rest = &key[prefix.len()..];
                    if rest.is_empty() {
                        continue;
                    }
                    let (name, is_dir) = match rest.find('/') {
                        Some(i) => (&rest[..i], true),
                        None => (rest, false),
                    };
                    let dup = last.as_deref() == Some(name);
                    let valid = check_name(name).is_ok();
                    if !dup && valid {
                        if found.len() >= want {
                            eof = false;
                            break 'scan;
                        }
                        let node = if is_dir {
                            Node::Dir { marker: None }
                        } else {
                            node_of(serde_json::from_slice(v.value())?)
                        };
                        found.push((name.to_string(), node));
                        last = Some(name.to_string());
                    }
                    if is_dir {
                        // Skip everything below this subdirectory.
                        start = Bound::Included(format!("{prefix}{name}0"));
                        continue 'scan;
                    }
                }
                break;
            }
        }
        // Inodes for the entries (allocating the missing ones in one transaction).
        let dir_path = d.rec.path.clone();
        let mut inos: Vec<Option<(u64, InodeRec)>> = Vec::with_capacity(found.len());
        {
            let rtx = self.store.view()?;
            let paths = rtx.open_table(FS_PATHS)?;
            let inodes = rtx.open_table(FS_INODES)?;
            for (name, _) in &found {
                let pk = obj_key(&share, &join(&dir_path, name));
                let got = match paths.get(pk.as_str())? {
                    Some(v) => get_inode(&inodes, v.value())?.map(|r| (v.value(), r)),
                    None => None,
                };
                inos.push(got);
            }
        }
        let missing: Vec<InodeRec> = found
            .iter()
            .zip(&inos)
            .filter(|(_, i)| i.is_none())
            .map(|((name, node), _)| default_rec(&share, &join(&dir_path, name), node))
            .collect();
        if !missing.is_empty() {
            let recs = missing.clone();
            let new = self.store.txn(move |wtx, _| {
                let mut v = Vec::new();
                for r in recs {
                    v.push(alloc_ino(wtx, r)?);
                }
                Ok(v)
            })?;
            let mut it = new.into_iter().zip(missing);
            for slot in inos.iter_mut().filter(|s| s.is_none()) {
                *slot = it.next();
            }
        }
        for ((name, node), ino) in found.into_iter().zip(inos) {
            let (ino, rec) = ino.expect("every entry has an inode after allocation");
            let mut attr = attr_of(ino, &rec, &node);
            self.overlay(&mut attr);
            out.push(DirEntry {
                name,
                cookie: ino,
                attr,
            });
        }
        Ok((out, eof))
    }

    /// Space and object figures of the share holding `ino`.
    pub fn fsstat(&self, ino: u64) -> Result<FsStat, StorageError> {
        let (share, _) = self.share_of(ino)?;
        let rtx = self.store.view()?;
        let b: BucketRec =
            get_json(&rtx.open_table(BUCKETS)?, &share)?.ok_or(StorageError::NoSuchBucket)?;
        let total_used = rtx
            .open_table(STATS)?
            .get("bytes")?
            .map_or(0, |v| v.value());
        let nominal: u64 = 1 << 50;
        let by_quota = b.quota.map(|q| (q, q.saturating_sub(b.bytes)));
        let by_max = self
            .store
            .max_size()
            .map(|m| (m, m.saturating_sub(total_used)));
        let (total, free) = match (by_quota, by_max) {
            (Some(q), Some(m)) => (q.0.min(m.0), q.1.min(m.1)),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => (nominal, nominal.saturating_sub(b.bytes)),
        };
        Ok(FsStat {
            total_bytes: total,
            free_bytes: free,
            files: b.objects,
        })
    }

    /// Everything a WRITE must know before it is buffered, in one read transaction: the
    /// file's attributes and how many bytes its share may still grow by (`None` = unlimited).
    /// `ReadOnly`, `IsADirectory`, `Invalid` (symlink) and `Stale` refuse the write.
    pub fn write_check(&self, ino: u64) -> Result<(FileAttr, Option<u64>), StorageError> {
        let (mut a, room, _) = self.check_write(ino)?;
        self.overlay(&mut a);
        Ok((a, room))
    }

    /// `write_check` without the staged-write overlay, plus the object key of the file.
    fn check_write(&self, ino: u64) -> Result<(FileAttr, Option<u64>, String), StorageError> {
        let rtx = self.store.view()?;
        let rec = get_inode(&rtx.open_table(FS_INODES)?, ino)?.ok_or(StorageError::Stale)?;
        if rec.removed {
            return Err(StorageError::Stale);
        }
        let node =
            probe(&rtx.open_table(OBJECTS)?, &rec.share, &rec.path)?.ok_or(StorageError::Stale)?;
        match node {
            Node::File(_) => {}
            Node::Dir { .. } => return Err(StorageError::IsADirectory),
            Node::Symlink(_) => return Err(StorageError::Invalid("write to a symlink")),
        }
        let sh: ShareRec =
            get_json(&rtx.open_table(SHARES)?, &rec.share)?.ok_or(StorageError::Stale)?;
        if sh.read_only {
            return Err(StorageError::ReadOnly);
        }
        let b: BucketRec =
            get_json(&rtx.open_table(BUCKETS)?, &rec.share)?.ok_or(StorageError::NoSuchBucket)?;
        let by_quota = b.quota.map(|q| q.saturating_sub(b.bytes));
        let by_max = match self.store.max_size() {
            Some(m) => {
                let used = rtx
                    .open_table(STATS)?
                    .get("bytes")?
                    .map_or(0, |v| v.value());
                Some(m.saturating_sub(used))
            }
            None => None,
        };
        let room = match (by_quota, by_max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok((
            attr_of(ino, &rec, &node),
            room,
            obj_key(&rec.share, &rec.path),
        ))
    }

    /// Bytes a file may still grow by in its share (`None` = unlimited); used to refuse
    /// buffered writes early with a quota error.
    pub fn room(&self, ino: u64) -> Result<Option<u64>, StorageError> {
        let st = self.fsstat(ino)?;
        let (share, _) = self.share_of(ino)?;
        let rtx = self.store.view()?;
        let b: BucketRec =
            get_json(&rtx.open_table(BUCKETS)?, &share)?.ok_or(StorageError::NoSuchBucket)?;
        if b.quota.is_none() && self.store.max_size().is_none() {
            return Ok(None);
        }
        Ok(Some(st.free_bytes))
    }
}

/// Store pieces as chunks, in parallel for large edits. Each chunk is written and renamed into
/// place unflushed, then flushed (`ChunkStore::sync`: file, then directory) once its group is
/// written: on a journaling file system the flushes of a group then share journal commits, and
/// the metadata that references the chunks is committed only after every flush returned.
fn put_pieces(pins: &mut Pins, pieces: &[Cow<'_, [u8]>]) -> Result<Vec<ChunkRef>, StorageError> {
    if pieces.len() < 2 {
        return pieces.iter().map(|p| pins.put_chunk(p)).collect();
    }
    let shared = pins.shared.clone();
    // Chunk writes wait on fsync more than on the CPU: more writers than cores.
    let threads = 8.min(pieces.len());
    let per = pieces.len().div_ceil(threads);
    let results: Vec<Result<Vec<ChunkRef>, StorageError>> = std::thread::scope(|s| {
        let hs: Vec<_> = pieces
            .chunks(per)
            .map(|grp| {
                let shared = shared.clone();
                s.spawn(move || {
                    let mut local = Pins {
                        shared,
                        ids: Vec::new(),
                    };
                    let r = (|| -> Result<Vec<ChunkRef>, StorageError> {
                        let refs: Vec<ChunkRef> = grp
                            .iter()
                            .map(|p| local.put_chunk_deferred(p))
                            .collect::<Result<_, _>>()?;
                        for c in &refs {
                            local.shared.chunks.sync(&c.id)?;
                        }
                        Ok(refs)
                    })();
                    (r, std::mem::take(&mut local.ids))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                let (r, ids) = h.join().expect("chunk writer thread panicked");
                // The pins move to the caller's set, which unpins them on drop.
                pins.ids.extend(ids);
                r
            })
            .collect()
    });
    let mut out = Vec::with_capacity(pieces.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;

    fn fs() -> (tempfile::TempDir, FileSystem) {
        let d = tempfile::tempdir().expect("tempdir");
        let mut c = StoreConfig::new(d.path());
        c.chunk_size = 64;
        let s = Store::open(c).expect("open");
        s.ensure_share("default").expect("share");
        (d, FileSystem::new(s).expect("fs"))
    }

    /// [`fs`] with an empty file `name` in the default share's root: (dir, fs, root, file).
    fn fs_with_file(name: &str) -> (tempfile::TempDir, FileSystem, u64, FileAttr) {
        let (d, fs) = fs();
        let root = fs.share_root("default").expect("root").ino;
        let f = fs
            .create(root, name, CreateMode::Unchecked, &SetAttrs::default())
            .expect("create");
        (d, fs, root, f)
    }

    #[test]
    fn create_write_read_rename_remove() {
        let (_d, fs) = fs();
        let root = fs.share_root("default").expect("root").ino;
        let f = fs
            .create(root, "a.txt", CreateMode::Guarded, &SetAttrs::default())
            .expect("create");
        assert_eq!(f.size, 0);
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        fs.write(f.ino, &[(0, &data)]).expect("write");
        fs.write(f.ino, &[(100, b"XYZ")]).expect("write at");
        let (got, eof) = fs.read(f.ino, 0, 1000).expect("read");
        assert!(eof);
        let mut want = data.clone();
        want[100..103].copy_from_slice(b"XYZ");
        assert_eq!(got, want);
        assert_eq!(
            fs.store()
                .open_object("default", "a.txt")
                .expect("obj")
                .size(),
            300
        );
        let sub = fs.mkdir(root, "sub", &SetAttrs::default()).expect("mkdir");
        fs.rename(root, "a.txt", sub.ino, "b.txt").expect("rename");
        assert_eq!(fs.getattr(f.ino).expect("same inode").size, 300);
        assert!(fs.store().head("default", "sub/b.txt").is_ok());
        assert!(matches!(
            fs.rmdir(root, "sub"),
            Err(StorageError::DirectoryNotEmpty)
        ));
        fs.remove(sub.ino, "b.txt").expect("remove");
        assert!(matches!(fs.getattr(f.ino), Err(StorageError::Stale)));
        fs.rmdir(root, "sub").expect("rmdir");
        let (ents, eof) = fs.readdir(root, 0, 100).expect("readdir");
        assert!(eof);
        assert_eq!(
            ents.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            [".", ".."]
        );
        assert_eq!(fs.store().fsck().expect("fsck").bad_refcounts, 0);
    }

    #[test]
    fn cached_readers_follow_every_change() {
        let (_d, fs, root, f) = fs_with_file("c");
        fs.write(f.ino, &[(0, b"first version")]).expect("write");
        let (got, _, a) = fs.read_with_attr(f.ino, 0, 100).expect("read");
        assert_eq!(got, b"first version");
        // Replaced over S3: the next read sees the new bytes and size.
        let mut w = fs
            .store()
            .begin_put("default", "c", crate::ObjectMeta::default())
            .expect("put");
        w.write_all(&[7u8; 150]).expect("body");
        w.commit().expect("commit");
        let (got, _, b) = fs.read_with_attr(f.ino, 0, 1000).expect("read");
        assert_eq!(got, vec![7u8; 150]);
        assert_eq!(b.size, 150);
        // A chmod shows in the attributes a READ returns.
        fs.setattr(
            f.ino,
            &SetAttrs {
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .expect("chmod");
        let (_, _, c) = fs.read_with_attr(f.ino, 0, 10).expect("read");
        assert_eq!(c.mode, 0o600);
        assert_ne!(a.mode, 0o600);
        // A staged (unstable) write shows before it is committed.
        fs.stage(f.ino, 0, b"ZZ").expect("stage");
        let (got, _, _) = fs.read_with_attr(f.ino, 0, 4).expect("read");
        assert_eq!(got, b"ZZ\x07\x07");
        // Removed: the handle is stale, not served from the cache.
        fs.remove(root, "c").expect("remove");
        assert!(matches!(
            fs.read_with_attr(f.ino, 0, 4),
            Err(StorageError::Stale)
        ));
    }

    #[test]
    fn read_ahead_is_used_only_while_current() {
        let (_d, fs, _, f) = fs_with_file("ra");
        fs.write(f.ino, &[(0, b"0123456789")]).expect("write");
        let read = |ahead| fs.read_with_attr_ahead(ahead, f.ino, 4, 4).expect("read").0;
        // Current: the bytes read ahead; beyond the end: nothing to read ahead.
        assert_eq!(read(fs.read_ahead(f.ino, 4, 4)), b"4567");
        assert!(fs.read_ahead(f.ino, 10, 4).is_none());
        // Another range than the one asked for: read afresh.
        assert_eq!(read(fs.read_ahead(f.ino, 0, 4)), b"4567");
        // Replaced over S3 after the read-ahead: the new bytes.
        let ahead = fs.read_ahead(f.ino, 4, 4);
        let mut w = fs
            .store()
            .begin_put("default", "ra", crate::ObjectMeta::default())
            .expect("put");
        w.write_all(b"abcdefghij").expect("body");
        w.commit().expect("commit");
        assert_eq!(read(ahead), b"efgh");
        // Written over NFS (staged, not committed) after the read-ahead: the new bytes.
        let ahead = fs.read_ahead(f.ino, 4, 4);
        fs.stage(f.ino, 5, b"XY").expect("stage");
        assert_eq!(read(ahead), b"eXYh");
        fs.stage(f.ino, 0, b"Q").expect("stage");
        assert!(
            fs.read_ahead(f.ino, 4, 4).is_none(),
            "nothing ahead while staged"
        );
    }

    #[test]
    fn staged_writes_are_seen_by_store_reads_and_follow_renames() {
        let (_d, fs, root, f) = fs_with_file("s");
        // 200 bytes over 64-byte chunks, in pieces that cross chunk boundaries
        let data: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
        for (i, piece) in data.chunks(30).enumerate() {
            fs.stage(f.ino, (i * 30) as u64, piece).expect("stage");
        }
        assert!(fs.is_staged(f.ino));
        assert_eq!(fs.getattr(f.ino).expect("attr").size, 200, "size overlay");
        let s = fs.store().clone();
        assert_eq!(s.head("default", "s").expect("head").size, 200);
        let o = s.open_object("default", "s").expect("open");
        let mut got = vec![0u8; 200];
        assert_eq!(o.read_at(0, &mut got).expect("read"), 200);
        assert_eq!(got, data, "an S3 read applies the staged writes first");
        assert!(!fs.is_staged(f.ino), "applied and forgotten");
        // staged, then renamed: the bytes go with the file
        fs.stage(f.ino, 0, b"AB").expect("stage");
        fs.rename(root, "s", root, "t").expect("rename");
        let o = s.open_object("default", "t").expect("open");
        let mut two = [0u8; 2];
        o.read_at(0, &mut two).expect("read");
        assert_eq!(&two, b"AB");
        // staged, then removed: nothing is applied to a later file of that name
        fs.stage(f.ino, 0, b"zz").expect("stage");
        fs.remove(root, "t").expect("remove");
        assert!(!fs.is_staged(f.ino));
        assert_eq!(fs.staged_bytes(), 0);
        assert_eq!(fs.store().fsck().expect("fsck").bad_refcounts, 0);
    }

    #[test]
    fn edit_touches_only_covered_chunks() {
        let (_d, fs, _, f) = fs_with_file("f");
        let data = vec![7u8; 64 * 10];
        fs.write(f.ino, &[(0, &data)]).expect("write");
        let before = fs
            .store()
            .open_object("default", "f")
            .expect("o")
            .manifest()
            .to_vec();
        fs.write(f.ino, &[(64 * 4 + 3, b"hi")]).expect("write");
        let after = fs
            .store()
            .open_object("default", "f")
            .expect("o")
            .manifest()
            .to_vec();
        assert_eq!(before.len(), after.len());
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 1);
        fs.setattr(
            f.ino,
            &SetAttrs {
                size: Some(64 * 3 + 1),
                ..Default::default()
            },
        )
        .expect("truncate");
        assert_eq!(fs.getattr(f.ino).expect("attr").size, 64 * 3 + 1);
        let (got, _) = fs.read(f.ino, 64 * 3, 10).expect("read");
        assert_eq!(got, [7u8]);
    }
}
