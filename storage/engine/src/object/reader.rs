//! [`ObjectReader`]: random and sequential reads of one pinned object version.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex, OnceLock};

use super::meta::{ChunkRef, Seal};
use super::pins::Pins;
use super::types::{EncryptionKey, ObjectInfo};
use crate::chunks::seal::Sealer;
use crate::chunks::ChunkId;
use crate::StorageError;

/// Chunk files kept open per reader: the last one opened, which is where a sequential reader
/// continues (also when its reads straddle chunk boundaries). One, not one per chunk: the
/// file system caches up to 256 readers, so this bounds the descriptors they hold to 256.
const OPEN_FILES: usize = 1;

struct Inner {
    manifest: Vec<ChunkRef>,
    /// Start offset of each chunk.
    starts: Vec<u64>,
    /// Bytes of inline chunks, by manifest index.
    inline: HashMap<usize, Vec<u8>>,
    /// Recently opened chunk files (most recent last), for [`ObjectReader::segments`].
    files: Mutex<Vec<(ChunkId, Arc<File>)>>,
    pins: Pins,
    /// The object's data key (encrypted objects), once unwrapped.
    key: OnceLock<Arc<Sealer>>,
    /// The last sealed chunk opened (index, plaintext): where a sequential reader continues.
    opened: Mutex<Option<(usize, Arc<Vec<u8>>)>>,
}

/// A piece of the bytes of a read, in order: see [`ObjectReader::segments`].
#[derive(Debug, Clone)]
pub enum Segment {
    /// Bytes in memory (inline chunks, and chunks of backends without local files).
    Bytes(Vec<u8>),
    /// `len` bytes of an open chunk file from `offset` (the file is immutable and holds at
    /// least `offset + len` bytes; checked when it was opened).
    File {
        /// The chunk file (shared: do not use its file position, read at explicit offsets).
        file: Arc<File>,
        /// Offset within the file.
        offset: u64,
        /// Byte count.
        len: usize,
    },
}

impl Segment {
    /// Byte count.
    pub fn len(&self) -> usize {
        match self {
            Segment::Bytes(b) => b.len(),
            Segment::File { len, .. } => *len,
        }
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One version of an object, readable for as long as this value (or a clone, or a
/// [`RangeReader`] made from it) lives — even after the object is overwritten or deleted.
#[derive(Clone)]
pub struct ObjectReader {
    /// The version being read.
    pub info: ObjectInfo,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    pub(crate) fn new(
        info: ObjectInfo,
        manifest: Vec<ChunkRef>,
        inline: HashMap<usize, Vec<u8>>,
        pins: Pins,
    ) -> ObjectReader {
        let mut starts = Vec::with_capacity(manifest.len());
        let mut acc = 0u64;
        for c in &manifest {
            starts.push(acc);
            acc += u64::from(c.len);
        }
        ObjectReader {
            info,
            inner: Arc::new(Inner {
                manifest,
                starts,
                inline,
                files: Mutex::new(Vec::new()),
                pins,
                key: OnceLock::new(),
                opened: Mutex::new(None),
            }),
        }
    }

    /// Opens an encrypted version with the key a request brought: an SSE-C object needs its
    /// customer key (`KeyRequired`, `KeyMismatch`); a customer key for any other object is
    /// `NotCustomerEncrypted`. SSE-S3 objects open with the master key by themselves.
    pub fn unlock(&self, key: Option<&EncryptionKey>) -> Result<(), StorageError> {
        match &self.info.meta.sse {
            None if matches!(key, Some(EncryptionKey::Customer(_))) => {
                Err(StorageError::NotCustomerEncrypted)
            }
            None => Ok(()),
            Some(e) => {
                if self.inner.key.get().is_some() {
                    return e.check(key);
                }
                let s = e.unwrap(&self.inner.pins.shared, key)?;
                let _ = self.inner.key.set(s);
                Ok(())
            }
        }
    }

    /// The object's data key: unwrapped by [`ObjectReader::unlock`], or here with the master
    /// key (SSE-S3).
    fn object_key(&self) -> Result<Arc<Sealer>, StorageError> {
        if let Some(k) = self.inner.key.get() {
            return Ok(k.clone());
        }
        match &self.info.meta.sse {
            Some(e) if !e.is_customer() => {
                self.unlock(None)?;
                Ok(self.inner.key.get().expect("unlocked above").clone())
            }
            Some(_) => Err(StorageError::KeyRequired),
            None => Err(StorageError::Corrupt(
                "a chunk sealed with an object key in an unencrypted object".into(),
            )),
        }
    }

    /// How an in-place edit of this version seals its new chunks: with the object's data key
    /// if it is encrypted (an SSE-C object not unlocked cannot be edited: `KeyRequired`),
    /// else as the store seals chunks without an object key.
    pub(crate) fn edit_seal(&self) -> Result<Option<(Seal, Arc<Sealer>)>, StorageError> {
        if self.info.meta.sse.is_some() {
            return Ok(Some((Seal::Object, self.object_key()?)));
        }
        Ok(self.inner.pins.shared.default_seal())
    }

    /// The plaintext of chunk `i` if it is sealed (None: stored as is), whole and verified.
    fn sealed_chunk(&self, i: usize) -> Result<Option<Arc<Vec<u8>>>, StorageError> {
        let c = self.inner.manifest[i];
        if c.seal == Seal::Plain {
            return Ok(None);
        }
        let lock = || self.inner.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((j, p)) = &*lock() {
            if *j == i {
                return Ok(Some(p.clone()));
            }
        }
        let key = match c.seal {
            Seal::Object => self.object_key()?,
            _ => self
                .inner
                .pins
                .shared
                .node
                .clone()
                .ok_or(StorageError::NoMasterKey)?,
        };
        let stored = match self.inner.inline.get(&i) {
            Some(d) => Cow::Borrowed(d.as_slice()),
            None => Cow::Owned(self.inner.pins.shared.chunks.get(&c.id)?),
        };
        let plain = key
            .open(&stored)
            .ok_or_else(|| StorageError::Corrupt(format!("{:?} does not open", c.id)))?;
        if plain.len() != c.len as usize {
            return Err(StorageError::Corrupt(format!("{:?} length", c.id)));
        }
        let plain = Arc::new(plain);
        *lock() = Some((i, plain.clone()));
        Ok(Some(plain))
    }

    /// `want` bytes of sealed chunk `i` from `within`, if it is sealed.
    fn sealed_piece(
        &self,
        i: usize,
        within: u64,
        want: usize,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(p) = self.sealed_chunk(i)? else {
            return Ok(None);
        };
        let w = within as usize;
        p.get(w..w + want)
            .map(|b| Some(b.to_vec()))
            .ok_or_else(|| truncated(&self.inner.manifest[i].id))
    }

    pub(crate) fn manifest(&self) -> &[ChunkRef] {
        &self.inner.manifest
    }

    /// The chunk ids of this version, in order (lets tests see which chunks an edit replaced).
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        self.inner.manifest.iter().map(|c| c.id).collect()
    }

    /// Object size.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// Index of the chunk holding byte `offset` (< size).
    fn chunk_at(&self, offset: u64) -> usize {
        self.inner.starts.partition_point(|&s| s <= offset) - 1
    }

    /// Read up to `buf.len()` bytes at `offset`; returns fewer only at the end of the object
    /// (0 at or past the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        let mut done = 0usize;
        let chunks = &self.inner.pins.shared.chunks;
        while done < buf.len() {
            let pos = offset + done as u64;
            if pos >= self.info.size {
                break;
            }
            let i = self.chunk_at(pos);
            let c = self.inner.manifest[i];
            let within = pos - self.inner.starts[i];
            let want = (buf.len() - done).min((u64::from(c.len) - within) as usize);
            if let Some(p) = self.sealed_chunk(i)? {
                let w = within as usize;
                buf[done..done + want]
                    .copy_from_slice(p.get(w..w + want).ok_or_else(|| truncated(&c.id))?);
                done += want;
                continue;
            }
            let n = match self.inner.inline.get(&i) {
                Some(d) => {
                    let w = within as usize;
                    let n = want.min(d.len().saturating_sub(w));
                    buf[done..done + n].copy_from_slice(&d[w..w + n]);
                    n
                }
                None => chunks.read_at(&c.id, within, &mut buf[done..done + want])?,
            };
            if n != want {
                return Err(StorageError::Corrupt(format!("{:?} truncated", c.id)));
            }
            done += n;
        }
        Ok(done)
    }

    /// Up to `len` bytes at `offset` (fewer only at the end of the object, none at or past
    /// it) as segments, without copying chunk-file bytes: chunk files of a backend that has
    /// them ([`crate::ChunkStore::open_file`]) come as open files (kept open in this reader
    /// for the next call), inline chunks and other backends' chunks as bytes. Chunk files are
    /// not hash-verified here (like [`ObjectReader::read_at`]); a chunk file shorter than its
    /// manifest length is `Corrupt`.
    pub fn segments(&self, offset: u64, len: usize) -> Result<Vec<Segment>, StorageError> {
        let chunks = &self.inner.pins.shared.chunks;
        let mut out = Vec::new();
        for (i, within, want) in self.pieces(offset, len) {
            let c = self.inner.manifest[i];
            if let Some(b) = self.sealed_piece(i, within, want)? {
                out.push(Segment::Bytes(b));
                continue;
            }
            let seg = match self.inline_piece(i, within, want)? {
                Some(b) => Segment::Bytes(b.to_vec()),
                None => match self.chunk_file(&c)? {
                    Some(file) => Segment::File {
                        file,
                        offset: within,
                        len: want,
                    },
                    None => {
                        let mut b = vec![0u8; want];
                        let n = chunks.read_at(&c.id, within, &mut b)?;
                        if n != want {
                            return Err(truncated(&c.id));
                        }
                        Segment::Bytes(b)
                    }
                },
            };
            out.push(seg);
        }
        Ok(out)
    }

    /// `(manifest index, offset within the chunk, byte count)` of each chunk piece of the
    /// range `offset..offset + len` clamped to the size.
    fn pieces(&self, offset: u64, len: usize) -> Vec<(usize, u64, usize)> {
        let end = offset.saturating_add(len as u64).min(self.info.size);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let i = self.chunk_at(pos);
            let within = pos - self.inner.starts[i];
            let want = (end - pos).min(u64::from(self.inner.manifest[i].len) - within) as usize;
            out.push((i, within, want));
            pos += want as u64;
        }
        out
    }

    /// The bytes of an inline chunk's piece (None: chunk `i` is not inline).
    fn inline_piece(
        &self,
        i: usize,
        within: u64,
        want: usize,
    ) -> Result<Option<&[u8]>, StorageError> {
        let Some(d) = self.inner.inline.get(&i) else {
            return Ok(None);
        };
        let w = within as usize;
        match d.get(w..w + want) {
            Some(b) => Ok(Some(b)),
            None => Err(truncated(&self.inner.manifest[i].id)),
        }
    }

    /// The open file of chunk `c` (cached), or None when the backend has no local files.
    fn chunk_file(&self, c: &ChunkRef) -> Result<Option<Arc<File>>, StorageError> {
        let lock = || self.inner.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, f)) = lock().iter().find(|(id, _)| *id == c.id) {
            return Ok(Some(f.clone()));
        }
        let Some(f) = self.inner.pins.shared.chunks.open_file(&c.id)? else {
            return Ok(None);
        };
        if f.metadata()?.len() < u64::from(c.len) {
            return Err(truncated(&c.id));
        }
        let f = Arc::new(f);
        let mut files = lock();
        if !files.iter().any(|(id, _)| *id == c.id) {
            if files.len() >= OPEN_FILES {
                files.remove(0);
            }
            files.push((c.id, f.clone()));
        }
        Ok(Some(f))
    }

    /// Up to `len` bytes at `offset` into a new vector (fewer only at the end of the object).
    /// Chunk-file bytes are read straight into the vector's spare capacity (no zeroing first).
    pub fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
        let pieces = self.pieces(offset, len);
        let chunks = &self.inner.pins.shared.chunks;
        let mut out = Vec::with_capacity(pieces.iter().map(|p| p.2).sum());
        for (i, within, want) in pieces {
            if let Some(b) = self.sealed_piece(i, within, want)? {
                out.extend_from_slice(&b);
                continue;
            }
            if let Some(b) = self.inline_piece(i, within, want)? {
                out.extend_from_slice(b);
                continue;
            }
            let id = self.inner.manifest[i].id;
            // A private descriptor (its own file position): `read_to_end` then fills the
            // uninitialised capacity, where a positional read would need zeroed bytes.
            let got = match chunks.open_file(&id)? {
                Some(mut f) => {
                    f.seek(SeekFrom::Start(within))?;
                    if within + want as u64 == u64::from(self.inner.manifest[i].len) {
                        // To the end of the chunk: `File`'s own `read_to_end` sizes its read
                        // from the file length (one read, where a `Take` starts small).
                        f.read_to_end(&mut out)?
                    } else {
                        f.take(want as u64).read_to_end(&mut out)?
                    }
                }
                None => {
                    let at = out.len();
                    out.resize(at + want, 0);
                    let n = chunks.read_at(&id, within, &mut out[at..])?;
                    out.truncate(at + n);
                    n
                }
            };
            if got != want {
                return Err(truncated(&id));
            }
        }
        Ok(out)
    }

    pub(crate) fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        let n = self.read_at(offset, buf)?;
        if n != buf.len() {
            return Err(StorageError::Corrupt("short read".into()));
        }
        Ok(())
    }

    /// A sequential reader of bytes `start..end` (end exclusive, both clamped to the size).
    /// It fetches (and hash-verifies) whole chunks.
    pub fn range(&self, start: u64, end: u64) -> RangeReader {
        let end = end.min(self.info.size);
        RangeReader {
            obj: self.clone(),
            pos: start.min(end),
            end,
            cur: None,
        }
    }

    /// The whole object as a sequential reader.
    pub fn reader(&self) -> RangeReader {
        self.range(0, self.info.size)
    }
}

fn truncated(id: &ChunkId) -> StorageError {
    StorageError::Corrupt(format!("{id:?} truncated"))
}

/// Sequential reader over a byte range of an [`ObjectReader`]; owns what it needs (`'static`).
pub struct RangeReader {
    obj: ObjectReader,
    pos: u64,
    end: u64,
    cur: Option<(usize, Arc<Vec<u8>>)>,
}

impl RangeReader {
    /// Bytes left.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.end || buf.is_empty() {
            return Ok(0);
        }
        let i = self.obj.chunk_at(self.pos);
        if self.cur.as_ref().is_none_or(|(ci, _)| *ci != i) {
            let c = self.obj.inner.manifest[i];
            let sealed = self.obj.sealed_chunk(i).map_err(std::io::Error::other)?;
            let data = match (sealed, self.obj.inner.inline.get(&i)) {
                (Some(p), _) => p,
                (None, Some(d)) => Arc::new(d.clone()),
                (None, None) => self
                    .obj
                    .inner
                    .pins
                    .shared
                    .chunks
                    .get(&c.id)
                    .map(Arc::new)
                    .map_err(std::io::Error::other)?,
            };
            if data.len() != c.len as usize {
                return Err(std::io::Error::other(StorageError::Corrupt(format!(
                    "{:?} length",
                    c.id
                ))));
            }
            self.cur = Some((i, data));
        }
        let (_, data) = self.cur.as_ref().expect("chunk loaded above");
        let within = (self.pos - self.obj.inner.starts[i]) as usize;
        let n = buf
            .len()
            .min(data.len() - within)
            .min((self.end - self.pos) as usize);
        buf[..n].copy_from_slice(&data[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::chunks::{ChunkStore, FsChunkStore, MemChunkStore};
    use crate::object::pins::Shared;
    use crate::object::types::ObjectMeta;

    fn bytes(seed: u8, n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A reader over `parts` (bytes, inline?) stored in `chunks`; also returns the whole body.
    fn reader(chunks: Arc<dyn ChunkStore>, parts: &[(Vec<u8>, bool)]) -> (ObjectReader, Vec<u8>) {
        let shared = Shared::for_test(chunks.clone());
        let mut manifest = Vec::new();
        let mut inline = HashMap::new();
        let mut body = Vec::new();
        for (i, (d, is_inline)) in parts.iter().enumerate() {
            let id = ChunkId::of(d);
            if *is_inline {
                inline.insert(i, d.clone());
            } else {
                chunks.put(&id, d).expect("put");
            }
            manifest.push(ChunkRef {
                id,
                len: d.len() as u32,
                inline: *is_inline,
                seal: Seal::Plain,
            });
            body.extend_from_slice(d);
        }
        let info = ObjectInfo {
            key: "k".into(),
            size: body.len() as u64,
            etag: String::new(),
            modified: std::time::UNIX_EPOCH,
            meta: ObjectMeta::default(),
            version_id: None,
        };
        let pins = Pins::reading(shared, Vec::new());
        (ObjectReader::new(info, manifest, inline, pins), body)
    }

    /// The bytes of `segs`, and how many were file segments.
    fn gather(segs: &[Segment]) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut files = 0;
        for s in segs {
            match s {
                Segment::Bytes(b) => out.extend_from_slice(b),
                Segment::File { file, offset, len } => {
                    files += 1;
                    let mut b = vec![0u8; *len];
                    file.read_exact_at(&mut b, *offset).expect("pread");
                    out.extend_from_slice(&b);
                }
            }
        }
        (out, files)
    }

    fn check_ranges(r: &ObjectReader, body: &[u8]) {
        let n = body.len() as u64;
        let ranges = [
            (0, body.len()),
            (0, 1),
            (1, 4095),
            (4095, 2),
            (4000, 5000),
            (n - 1, 10),
            (n - 7, 7),
            (n, 1),
            (n + 5, 10),
            (3, 0),
            (10, usize::MAX),
        ];
        for (off, len) in ranges {
            let segs = r.segments(off, len).expect("segments");
            let s = (off.min(n)) as usize;
            let e = (off.saturating_add(len as u64)).min(n) as usize;
            let want = &body[s..e.max(s)];
            assert_eq!(gather(&segs).0, want, "segments {off}+{len}");
            assert!(segs.iter().all(|s| !s.is_empty()), "no empty segments");
            assert_eq!(
                r.read_vec(off, len).expect("read_vec"),
                want,
                "read_vec {off}+{len}"
            );
        }
    }

    #[test]
    fn file_chunks_come_as_files_and_stay_open() {
        let d = tempfile::tempdir().expect("tmp");
        let cs: Arc<dyn ChunkStore> = Arc::new(FsChunkStore::open(d.path()).expect("store"));
        let parts: Vec<_> = (0..3).map(|i| (bytes(i, 4096), false)).collect();
        let (r, body) = reader(cs, &parts);
        check_ranges(&r, &body);
        // A range over all three chunks: three file segments at the right offsets.
        let segs = r.segments(100, 3 * 4096).expect("segments");
        assert_eq!(gather(&segs), (body[100..].to_vec(), 3));
        match &segs[0] {
            Segment::File { offset, len, .. } => assert_eq!((*offset, *len), (100, 3996)),
            s => panic!("expected a file segment, got {s:?}"),
        }
        // The chunk file of the last call is reused (same open file), not reopened.
        let a = r.segments(2 * 4096, 10).expect("segments");
        let b = r.segments(2 * 4096 + 10, 10).expect("segments");
        match (&a[0], &b[0]) {
            (Segment::File { file: fa, .. }, Segment::File { file: fb, .. }) => {
                assert!(Arc::ptr_eq(fa, fb), "cached chunk file reused");
            }
            _ => panic!("expected file segments"),
        }
        assert!(r.inner.files.lock().expect("lock").len() <= OPEN_FILES);
    }

    #[test]
    fn inline_and_mixed_manifests() {
        let d = tempfile::tempdir().expect("tmp");
        let cs: Arc<dyn ChunkStore> = Arc::new(FsChunkStore::open(d.path()).expect("store"));
        // A lone inline chunk (small object): bytes only.
        let (r, body) = reader(cs.clone(), &[(bytes(9, 300), true)]);
        let segs = r.segments(0, 1 << 20).expect("segments");
        assert_eq!(gather(&segs), (body.clone(), 0));
        assert_eq!(r.read_vec(10, 5).expect("read_vec"), body[10..15]);
        // file, inline, file, inline (odd lengths).
        let parts = vec![
            (bytes(1, 4096), false),
            (bytes(2, 777), true),
            (bytes(3, 5000), false),
            (bytes(4, 33), true),
        ];
        let (r, body) = reader(cs, &parts);
        check_ranges(&r, &body);
        let segs = r.segments(4000, 1000).expect("segments");
        assert_eq!(segs.len(), 3);
        assert!(matches!(segs[0], Segment::File { len: 96, .. }));
        assert!(matches!(&segs[1], Segment::Bytes(b) if b.len() == 777));
        assert!(matches!(
            segs[2],
            Segment::File {
                offset: 0,
                len: 127,
                ..
            }
        ));
    }

    #[test]
    fn backends_without_files_give_bytes() {
        let cs: Arc<dyn ChunkStore> = Arc::new(MemChunkStore::new());
        let parts = vec![
            (bytes(5, 4096), false),
            (bytes(6, 100), true),
            (bytes(7, 4096), false),
        ];
        let (r, body) = reader(cs, &parts);
        check_ranges(&r, &body);
        assert_eq!(gather(&r.segments(0, usize::MAX).expect("segments")).1, 0);
    }

    #[test]
    fn truncated_chunk_file_is_corrupt_before_any_segment() {
        let d = tempfile::tempdir().expect("tmp");
        let fs_store = Arc::new(FsChunkStore::open(d.path()).expect("store"));
        let cs: Arc<dyn ChunkStore> = fs_store.clone();
        let parts = vec![(bytes(1, 4096), false), (bytes(2, 4096), false)];
        let (r, _) = reader(cs, &parts);
        let id = ChunkId::of(&parts[1].0);
        std::fs::OpenOptions::new()
            .write(true)
            .open(fs_store.path(&id))
            .expect("open chunk")
            .set_len(100)
            .expect("truncate");
        assert!(r.segments(0, 10).is_ok(), "the intact chunk still reads");
        assert!(matches!(r.segments(0, 8192), Err(StorageError::Corrupt(_))));
        assert!(matches!(
            r.read_vec(4096, 200),
            Err(StorageError::Corrupt(_))
        ));
    }
}
