//! Lookups and reads (with read-ahead and a cache of open readers), and symlink targets.

use super::inode::*;
use super::*;
use crate::object::meta::*;
use crate::object::reader::ObjectReader;
use crate::StorageError;

impl FileSystem {
    /// Look `name` up in directory `dir` (`.` and `..` included).
    pub fn lookup(&self, dir: u64, name: &str) -> Result<FileAttr, FsError> {
        self.lookup_opt(dir, name, true)?
            .ok_or(FsError::Storage(StorageError::Conflict))
    }

    /// Read-only lookup: `Ok(None)` when the name exists but has no inode yet (an object put
    /// over S3 that NFS never saw); [`FileSystem::lookup`] then allocates one (a write).
    pub fn lookup_existing(&self, dir: u64, name: &str) -> Result<Option<FileAttr>, FsError> {
        self.lookup_opt(dir, name, false)
    }

    /// [`FileSystem::lookup_existing`] plus the directory's attributes (an NFS LOOKUP reply
    /// carries both): `Err` only when `dir` itself fails; the lookup's own result inside.
    #[allow(clippy::type_complexity)]
    pub fn lookup_existing_with_dir(
        &self,
        dir: u64,
        name: &str,
    ) -> Result<(Result<Option<FileAttr>, FsError>, FileAttr), FsError> {
        let d = self.resolve_dir(dir)?;
        let dattr = attr_of(dir, &d.rec, &d.node);
        Ok((self.lookup_in(d, dir, name, false), dattr))
    }

    pub(super) fn lookup_opt(
        &self,
        dir: u64,
        name: &str,
        alloc: bool,
    ) -> Result<Option<FileAttr>, FsError> {
        let d = self.resolve_dir(dir)?;
        self.lookup_in(d, dir, name, alloc)
    }

    pub(super) fn lookup_in(
        &self,
        d: Resolved,
        dir: u64,
        name: &str,
        alloc: bool,
    ) -> Result<Option<FileAttr>, FsError> {
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
    pub fn read(&self, ino: u64, offset: u64, count: u32) -> Result<(Vec<u8>, bool), FsError> {
        self.read_with_attr(ino, offset, count)
            .map(|(data, eof, _)| (data, eof))
    }

    /// [`FileSystem::read`] plus the file's attributes (from the same metadata snapshot).
    pub fn read_with_attr(
        &self,
        ino: u64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool, FileAttr), FsError> {
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
    ) -> Result<(Vec<u8>, bool, FileAttr), FsError> {
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

    /// [`FileSystem::read_with_attr`] as segments ([`ObjectReader::segments`]): chunk
    /// files come as open files (for `sendfile`), so the bytes are not copied here. Returns
    /// `(segments, byte count, eof, attributes)`.
    pub fn read_segments_with_attr(
        &self,
        ino: u64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<crate::object::reader::Segment>, usize, bool, FileAttr), FsError> {
        let (obj, attr) = self.open_for_read(ino)?;
        let segs = obj.segments(offset, count as usize)?;
        let n: usize = segs.iter().map(crate::object::reader::Segment::len).sum();
        let eof = offset.saturating_add(n as u64) >= obj.size();
        Ok((segs, n, eof, attr))
    }

    /// Apply staged writes of `ino`, then its (cached) reader and attributes from one
    /// metadata snapshot.
    pub(super) fn open_for_read(&self, ino: u64) -> Result<(ObjectReader, FileAttr), FsError> {
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
            Node::Dir { .. } => return Err(FsError::IsADirectory),
            Node::Symlink(_) => return Err(FsError::Invalid("read of a symlink")),
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
                Err(StorageError::NoSuchKey) => return Err(FsError::Stale),
                Err(e) => return Err(e.into()),
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
    pub fn readlink(&self, ino: u64) -> Result<String, FsError> {
        let r = self.resolve(ino)?;
        if !matches!(r.node, Node::Symlink(_)) {
            return Err(FsError::Invalid("not a symlink"));
        }
        let obj = self.store.open_object_raw(&r.rec.share, &r.rec.path)?;
        let mut buf = vec![0u8; obj.size() as usize];
        let n = obj.read_at(0, &mut buf)?;
        buf.truncate(n);
        String::from_utf8(buf)
            .map_err(|_| FsError::Storage(StorageError::Corrupt("symlink target".into())))
    }
}
