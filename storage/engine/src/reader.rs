//! [`ObjectReader`]: random and sequential reads of one pinned object version.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use crate::meta::ChunkRef;
use crate::store::Pins;
use crate::{ObjectInfo, StorageError};

struct Inner {
    manifest: Vec<ChunkRef>,
    /// Start offset of each chunk.
    starts: Vec<u64>,
    /// Bytes of inline chunks, by manifest index.
    inline: HashMap<usize, Vec<u8>>,
    pins: Pins,
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
                pins,
            }),
        }
    }

    pub(crate) fn manifest(&self) -> &[ChunkRef] {
        &self.inner.manifest
    }

    /// The chunk ids of this version, in order (lets tests see which chunks an edit replaced).
    pub fn chunk_ids(&self) -> Vec<crate::ChunkId> {
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

/// Sequential reader over a byte range of an [`ObjectReader`]; owns what it needs (`'static`).
pub struct RangeReader {
    obj: ObjectReader,
    pos: u64,
    end: u64,
    cur: Option<(usize, Vec<u8>)>,
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
            let data = match self.obj.inner.inline.get(&i) {
                Some(d) => d.clone(),
                None => self
                    .obj
                    .inner
                    .pins
                    .shared
                    .chunks
                    .get(&c.id)
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
