//! Names: create, mkdir, symlink, remove, rmdir and rename.

use super::inode::*;
use super::share::{ShareRec, SHARES};
use super::*;
use crate::chunks::ChunkId;
use crate::db::{ReadTable as _, Tx};
use crate::object::meta::*;
use crate::object::types::{ObjectMeta, MAX_KEY_LEN};
use crate::StorageError;

/// Outcome of [`create_in`].
pub(super) enum Created {
    /// A new file: its attributes and the directory's after the change.
    New(FileAttr, FileAttr),
    /// The name holds a file this mode returns (its inode).
    Existing(u64),
}

/// CREATE inside one transaction: checks (directory, read-only share, name, mode) before any
/// change, then the empty object, its inode and the directory's times.
pub(super) fn create_in(
    wtx: &Tx,
    freed: &mut Vec<ChunkId>,
    max_size: Option<u64>,
    dir: u64,
    name: &str,
    how: CreateMode,
    sa: &SetAttrs,
) -> Result<Created, FsError> {
    let drec = match get_inode(&wtx.open_table(FS_INODES)?, dir)? {
        Some(r) if !r.removed => r,
        _ => return Err(FsError::Stale),
    };
    let share: ShareRec = get_json(&wtx.open_table(SHARES)?, &drec.share)?.ok_or(FsError::Stale)?;
    if share.read_only {
        return Err(FsError::ReadOnly);
    }
    let dnode = match probe(&wtx.open_table(OBJECTS)?, &drec.share, &drec.path)? {
        Some(n @ Node::Dir { .. }) => n,
        Some(_) => return Err(FsError::NotADirectory),
        None => return Err(FsError::Stale),
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
            (_, Node::Dir { .. }) => Err(FsError::Exists),
            (CreateMode::Guarded, _) => Err(FsError::Exists),
            (CreateMode::Exclusive(v), _) => match (ino, rec) {
                (Some(i), Some(r)) if r.verf == Some(v) => Ok(Created::Existing(i)),
                _ => Err(FsError::Exists),
            },
            (CreateMode::Unchecked, Node::Symlink(_)) => Err(FsError::Exists),
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
    let drec = get_inode(&wtx.open_table(FS_INODES)?, dir)?.ok_or(FsError::Stale)?;
    Ok(Created::New(
        attr_of(ino, &rec, &Node::File(orec)),
        attr_of(dir, &drec, &dnode),
    ))
}

impl FileSystem {
    /// Create a regular file in `dir`.
    pub fn create(
        &self,
        dir: u64,
        name: &str,
        how: CreateMode,
        sa: &SetAttrs,
    ) -> Result<FileAttr, FsError> {
        check_name(name)?;
        super::edit::check_size(&[], sa.size)?;
        let max_size = self.store.max_size();
        let (name2, sa2) = (name.to_string(), sa.clone());
        let made = self
            .store
            .txn_as(move |wtx, freed| create_in(wtx, freed, max_size, dir, &name2, how, &sa2))?;
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
    ) -> Result<Option<(FileAttr, FileAttr)>, FsError> {
        check_name(name)?;
        if sa.size.is_some_and(|s| s > 0) {
            return Ok(None);
        }
        let max_size = self.store.max_size();
        let (name, sa) = (name.to_string(), sa.clone());
        let made = self
            .store
            .txn_as(move |wtx, freed| create_in(wtx, freed, max_size, dir, &name, how, &sa))?;
        Ok(match made {
            Created::New(a, d) => Some((a, d)),
            Created::Existing(_) => None,
        })
    }

    /// Create a directory (a marker object `path/`).
    pub fn mkdir(&self, dir: u64, name: &str, sa: &SetAttrs) -> Result<FileAttr, FsError> {
        self.writable(dir)?;
        check_name(name)?;
        let d = self.resolve_dir(dir)?;
        let (share, path) = (d.rec.share.clone(), join(&d.rec.path, name));
        check_path(&share, &path)?;
        let max_size = self.store.max_size();
        let sa = sa.clone();
        let (sh, p, dpath) = (share.clone(), path.clone(), d.rec.path.clone());
        self.store.txn_as(move |wtx, freed| {
            if probe(&wtx.open_table(OBJECTS)?, &sh, &p)?.is_some() {
                return Err(FsError::Exists);
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
    ) -> Result<FileAttr, FsError> {
        self.writable(dir)?;
        check_name(name)?;
        if target.is_empty() || target.len() > INLINE_MAX.min(4096) {
            return Err(FsError::NameTooLong);
        }
        let d = self.resolve_dir(dir)?;
        let (share, path) = (d.rec.share.clone(), join(&d.rec.path, name));
        check_path(&share, &path)?;
        let max_size = self.store.max_size();
        let sa = sa.clone();
        let body = target.as_bytes().to_vec();
        // Sealed like any other chunk when the store seals every chunk.
        let (c, stored) =
            crate::object::pins::Pins::new(self.store.shared().clone()).inline_chunk(&body)?;
        let (sh, p, dpath) = (share.clone(), path.clone(), d.rec.path.clone());
        self.store.txn_as(move |wtx, freed| {
            if probe(&wtx.open_table(OBJECTS)?, &sh, &p)?.is_some() {
                return Err(FsError::Exists);
            }
            let mut meta = ObjectMeta::default();
            meta.user.insert(TYPE_META.into(), SYMLINK.into());
            let orec = ObjRec {
                version_id: None,
                size: body.len() as u64,
                etag: String::new(),
                modified: now_nanos(),
                meta,
            };
            let mut orec2 = orec.clone();
            orec2.etag = manifest_etag(&[c]);
            install_object(wtx, freed, max_size, &sh, &p, &orec2, &[c], Some(&stored))?;
            let mut rec = default_rec(&sh, &p, &Node::Symlink(orec2.clone()));
            apply_attrs(&mut rec, &sa, orec2.modified);
            new_ino(wtx, rec)?;
            touch_dir(wtx, &sh, &dpath)
        })?;
        self.attr_at(&share, &path)
    }

    /// Remove a file or symlink.
    pub fn remove(&self, dir: u64, name: &str) -> Result<(), FsError> {
        self.unlink(dir, name, false)
    }

    /// Remove an empty directory.
    pub fn rmdir(&self, dir: u64, name: &str) -> Result<(), FsError> {
        self.unlink(dir, name, true)
    }

    fn unlink(&self, dir: u64, name: &str, want_dir: bool) -> Result<(), FsError> {
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
        self.store.txn_as(move |wtx, freed| {
            let node = probe(&wtx.open_table(OBJECTS)?, &sh, &p)?.ok_or(StorageError::NoSuchKey)?;
            match (&node, want_dir) {
                (Node::Dir { .. }, false) => return Err(FsError::IsADirectory),
                (Node::File(_) | Node::Symlink(_), true) => return Err(FsError::NotADirectory),
                (Node::Dir { .. }, true) => {
                    let pfx = obj_key(&sh, &format!("{p}/"));
                    let objects = wtx.open_table(OBJECTS)?;
                    for e in objects.range(pfx.as_str()..)? {
                        let (k, _) = e?;
                        if !k.value().starts_with(&pfx) {
                            break;
                        }
                        if k.value() != pfx {
                            return Err(FsError::DirectoryNotEmpty);
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
    pub fn rename(&self, from_dir: u64, from: &str, to_dir: u64, to: &str) -> Result<(), FsError> {
        self.writable(from_dir)?;
        check_name(from)?;
        check_name(to)?;
        let fd = self.resolve_dir(from_dir)?;
        let td = self.resolve_dir(to_dir)?;
        if fd.rec.share != td.rec.share {
            return Err(FsError::Invalid("rename across shares"));
        }
        let sh = fd.rec.share.clone();
        let (src, dst) = (join(&fd.rec.path, from), join(&td.rec.path, to));
        check_path(&sh, &dst)?;
        if src == dst {
            return Ok(());
        }
        if dst.starts_with(&format!("{src}/")) {
            return Err(FsError::Invalid("directory moved into itself"));
        }
        let (fpath, tpath) = (fd.rec.path.clone(), td.rec.path.clone());
        let max_size = self.store.max_size();
        // Staged writes of what moves go to the old keys first; those of a replaced target
        // are dropped with it.
        self.flush_under(&sh, &src)?;
        let (share, old_dst) = (sh.clone(), dst.clone());
        let moved = self.store.txn_as(move |wtx, freed| {
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
                                return Err(FsError::DirectoryNotEmpty);
                            }
                        }
                    }
                    Some(_) => return Err(FsError::NotADirectory),
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
                        return Err(FsError::NameTooLong);
                    }
                    moves.push((rel.to_string(), nk));
                }
            } else {
                if let Some(Node::Dir { .. }) = dnode {
                    return Err(FsError::IsADirectory);
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
        let wb = self.wb();
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
}
