//! Writes, truncations and attribute changes: splice the edit into the file, rewriting only
//! the chunks it touches, in one metadata transaction.

use std::borrow::Cow;

use super::inode::*;
use super::*;

use crate::db::ReadTable as _;
use crate::object::meta::*;
use crate::object::pins::Pins;
use crate::object::reader::ObjectReader;
use crate::StorageError;

/// Refuses `writes` or a `truncate` that would make a file larger than [`MAX_FILE_SIZE`].
pub(super) fn check_size(writes: &[(u64, &[u8])], truncate: Option<u64>) -> Result<(), FsError> {
    let ends = writes
        .iter()
        .map(|(o, d)| o.checked_add(d.len() as u64).unwrap_or(u64::MAX));
    match ends.chain(truncate).max() {
        Some(end) if end > MAX_FILE_SIZE => Err(FsError::FileTooBig),
        _ => Ok(()),
    }
}

/// A rebuilt object: record, manifest, and the bytes of an inline (small) single chunk.
type Built = (ObjRec, Vec<ChunkRef>, Option<Vec<u8>>);

impl FileSystem {
    /// Apply `writes` (in order; later ones win where they overlap) durably, rewriting only the
    /// chunks they touch. Returns the new attributes.
    pub fn write(&self, ino: u64, writes: &[(u64, &[u8])]) -> Result<FileAttr, FsError> {
        self.writable(ino)?;
        self.flush(ino)?;
        self.edit(ino, writes, None, None)
    }

    /// Change attributes (size changes rewrite only the cut chunk).
    pub fn setattr(&self, ino: u64, sa: &SetAttrs) -> Result<FileAttr, FsError> {
        self.writable(ino)?;
        // Staged writes first: they must not land after (and override) the new size or times.
        self.flush_background(ino);
        let r = self.resolve(ino)?;
        if sa.size.is_some() && !matches!(r.node, Node::File(_)) {
            return Err(match r.node {
                Node::Dir { .. } => FsError::IsADirectory,
                _ => FsError::Invalid("size of a symlink"),
            });
        }
        if sa.size.is_some() {
            return self.edit(ino, &[], sa.size, Some(sa.clone()));
        }
        let sa = sa.clone();
        let (share, path) = (r.rec.share.clone(), r.rec.path.clone());
        self.store.txn_as(move |wtx, _| {
            let seen = get_json::<ObjRec, _>(&wtx.open_table(OBJECTS)?, &obj_key(&share, &path))?
                .map(|o| o.modified);
            let mut inodes = wtx.open_table(FS_INODES)?;
            let mut rec = get_inode(&inodes, ino)?.ok_or(FsError::Stale)?;
            if rec.removed {
                return Err(FsError::Stale);
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
    pub(super) fn edit(
        &self,
        ino: u64,
        writes: &[(u64, &[u8])],
        truncate: Option<u64>,
        sa: Option<SetAttrs>,
    ) -> Result<FileAttr, FsError> {
        check_size(writes, truncate)?;
        for _ in 0..EDIT_RETRIES {
            let r = self.resolve(ino)?;
            match r.node {
                Node::File(_) => {}
                Node::Dir { .. } => return Err(FsError::IsADirectory),
                Node::Symlink(_) => return Err(FsError::Invalid("write to a symlink")),
            }
            let (share, path) = (r.rec.share.clone(), r.rec.path.clone());
            let old = match self.store.open_object_raw(&share, &path) {
                Ok(o) => o,
                Err(StorageError::NoSuchKey) => return Err(FsError::Stale),
                Err(e) => return Err(e.into()),
            };
            let mut pins = Pins::new(self.store.shared().clone());
            pins.seal = old.edit_seal()?;
            let (rec, manifest, inline) = self.build(&old, writes, truncate, &mut pins)?;
            let expect = encode_manifest(old.manifest());
            drop(old);
            self.forget(ino);
            let max_size = self.store.max_size();
            let sa = sa.clone();
            let _g = self.store.shared().read_guard();
            let res = self.store.txn_as(move |wtx, freed| {
                let ok = obj_key(&share, &path);
                let cur = wtx
                    .open_table(OBJ_CHUNKS)?
                    .get(ok.as_str())?
                    .map(|v| v.value().to_vec());
                if cur.as_deref() != Some(expect.as_slice()) {
                    return Err(StorageError::Conflict.into());
                }
                {
                    let inodes = wtx.open_table(FS_INODES)?;
                    match get_inode(&inodes, ino)? {
                        Some(i) if !i.removed && i.path == path && i.share == share => {}
                        _ => return Err(StorageError::Conflict.into()),
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
                let mut i = get_inode(&inodes, ino)?.ok_or(FsError::Stale)?;
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
                Err(FsError::Storage(StorageError::Conflict)) => continue,
                Err(e) => return Err(e),
                Ok(()) => return self.getattr(ino),
            }
        }
        Err(StorageError::Conflict.into())
    }

    /// New object record and manifest for `old` with `truncate` then `writes` applied. Chunks no
    /// write touches (and not cut) are kept; a short last chunk is merged with growth.
    pub(super) fn build(
        &self,
        old: &ObjectReader,
        writes: &[(u64, &[u8])],
        truncate: Option<u64>,
        pins: &mut Pins,
    ) -> Result<Built, FsError> {
        let cs = u64::from(self.store.shared().chunk_size);
        let size = old.size();
        let t = truncate.unwrap_or(size);
        let keep_limit = size.min(t);
        let mut new_size = t;
        for (o, d) in writes {
            let end = o
                .checked_add(d.len() as u64)
                .ok_or(FsError::Invalid("offset overflow"))?;
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
            let (c, buf) = pins.inline_chunk(&buf)?;
            let rec = ObjRec {
                version_id: old.info.version_id.clone(),
                size: new_size,
                etag: manifest_etag(&[c]),
                modified: now_nanos(),
                meta: crate::object::splice::edited_meta(&old.info.meta),
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
            version_id: old.info.version_id.clone(),
            size: new_size,
            etag: manifest_etag(&out),
            modified: now_nanos(),
            meta: crate::object::splice::edited_meta(&old.info.meta),
        };
        Ok((rec, out, None))
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
    let seal = pins.seal.clone();
    // Chunk writes wait on fsync more than on the CPU: more writers than cores.
    let threads = 8.min(pieces.len());
    let per = pieces.len().div_ceil(threads);
    let results: Vec<Result<Vec<ChunkRef>, StorageError>> = std::thread::scope(|s| {
        let hs: Vec<_> = pieces
            .chunks(per)
            .map(|grp| {
                let (shared, seal) = (shared.clone(), seal.clone());
                s.spawn(move || {
                    let mut local = Pins {
                        shared,
                        ids: Vec::new(),
                        seal,
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
