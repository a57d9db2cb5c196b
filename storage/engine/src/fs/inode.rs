//! Inodes: records, path lookups, attributes, and the in-transaction helpers that allocate,
//! re-point and tombstone them.

use super::*;
use crate::chunks::ChunkId;
use crate::db::{ReadTable, TableW, Tx};
use crate::object::meta::*;
use crate::object::types::{ObjectMeta, MAX_KEY_LEN};
use crate::StorageError;

pub(super) fn is_symlink(r: &ObjRec) -> bool {
    r.meta.user.get(TYPE_META).is_some_and(|v| v == SYMLINK)
}

pub(super) fn node_of(r: ObjRec) -> Node {
    if is_symlink(&r) {
        Node::Symlink(r)
    } else {
        Node::File(r)
    }
}

/// FNV-1a of the share name: the NFS fsid.
pub(super) fn fsid(share: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in share.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub(super) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

pub(super) fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

pub(super) fn last_name(path: &str) -> &str {
    path.rfind('/').map_or(path, |i| &path[i + 1..])
}

/// Check an NFS file name.
pub fn check_name(name: &str) -> Result<(), FsError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(FsError::InvalidName);
    }
    if name.len() > 255 {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

pub(super) fn check_path(share: &str, path: &str) -> Result<(), FsError> {
    // +1 for a directory marker's trailing slash.
    if path.len() + 1 > MAX_KEY_LEN || share.len() + path.len() + 2 > MAX_KEY_LEN + 64 {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

pub(super) fn get_inode(
    t: &impl ReadTable<u64, &'static [u8]>,
    ino: u64,
) -> Result<Option<InodeRec>, FsError> {
    match t.get(ino)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

pub(super) fn put_inode(
    t: &mut TableW<'_, u64, &'static [u8]>,
    ino: u64,
    rec: &InodeRec,
) -> Result<(), FsError> {
    t.insert(ino, serde_json::to_vec(rec)?.as_slice())?;
    Ok(())
}

/// What exists at `share/path`.
pub(super) fn probe(
    objects: &impl ReadTable<&'static str, &'static [u8]>,
    share: &str,
    path: &str,
) -> Result<Option<Node>, FsError> {
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

pub(super) fn default_rec(share: &str, path: &str, node: &Node) -> InodeRec {
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

pub(super) fn attr_of(ino: u64, rec: &InodeRec, node: &Node) -> FileAttr {
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
pub(super) fn alloc_ino(wtx: &Tx, rec: InodeRec) -> Result<u64, FsError> {
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
pub(super) fn new_ino(wtx: &Tx, rec: InodeRec) -> Result<u64, FsError> {
    tombstone(wtx, &rec.share, &rec.path)?;
    alloc_ino(wtx, rec)
}

/// Mark the inode at `share/path` (if any) removed and forget the path.
pub(super) fn tombstone(wtx: &Tx, share: &str, path: &str) -> Result<(), FsError> {
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
pub(super) fn touch_dir(wtx: &Tx, share: &str, path: &str) -> Result<(), FsError> {
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
pub(super) fn ensure_marker(
    wtx: &Tx,
    freed: &mut Vec<ChunkId>,
    max_size: Option<u64>,
    share: &str,
    dir: &str,
) -> Result<(), FsError> {
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

pub(super) fn empty_rec() -> ObjRec {
    ObjRec {
        version_id: None,
        size: 0,
        etag: "d41d8cd98f00b204e9800998ecf8427e".into(),
        modified: now_nanos(),
        meta: ObjectMeta::default(),
    }
}

/// Move one object's record and manifest from `src` to `dst` (replacing `dst`); usage and chunk
/// references do not change except for the replaced object.
pub(super) fn move_object(
    wtx: &Tx,
    freed: &mut Vec<ChunkId>,
    share: &str,
    src: &str,
    dst: &str,
) -> Result<(), FsError> {
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

pub(super) fn apply_attrs(r: &mut InodeRec, sa: &SetAttrs, now: u64) {
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
