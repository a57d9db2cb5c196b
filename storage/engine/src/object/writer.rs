//! [`PutWriter`]: streams a body into chunks, then commits it in one metadata transaction.
//!
//! Flow: 1. `write_all` cuts chunks, stores each with `put_deferred` (no flush) and hands its id
//! to this writer's syncer thread, which flushes it (`ChunkStore::sync`) while the next chunk is
//! hashed and written 2. `commit` waits for the syncer (every chunk durable) 3. one
//! group-committed metadata transaction makes the object visible.

use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use md5::{Digest, Md5};

use super::meta::{now_nanos, ChunkRef, ObjRec, PartRec, Seal, INLINE_MAX};
use super::pins::Pins;
use super::types::{Encryption, EncryptionKey, ObjectInfo, ObjectMeta, WriteCondition};
use super::Store;
use crate::chunks::{hex, ChunkId, ChunkStore};
use crate::db::Tx;
use crate::StorageError;

pub(crate) enum Target {
    Object {
        bucket: String,
        key: String,
        meta: Box<ObjectMeta>,
    },
    Part {
        bucket: String,
        key: String,
        upload_id: String,
        number: u32,
        /// The upload's encryption: its parts are sealed with its data key.
        sse: Option<Encryption>,
    },
}

/// Installs a finished object version inside the commit's transaction instead of the bucket's
/// versioning rules (a layer above, e.g. replication, stamps it): gets the transaction, the
/// chunks it frees, the store's size limit, bucket, key, record, manifest and inline bytes.
pub(crate) type Installer = Box<
    dyn FnOnce(&Tx, &mut Vec<ChunkId>, Option<u64>, Prepared) -> Result<ObjectInfo, StorageError>
        + Send,
>;

/// An object version whose chunks are durable, ready for its transaction.
pub(crate) struct Prepared {
    pub bucket: String,
    pub key: String,
    pub rec: ObjRec,
    pub manifest: Vec<ChunkRef>,
    pub inline: Option<Vec<u8>>,
    /// The writer's condition (`PutWriter::set_condition`), for the installer to check.
    pub cond: WriteCondition,
}

/// Writes one object version (or one multipart part).
///
/// Call order: `write_all`* then `commit`. Dropping without a successful `commit` aborts:
/// nothing becomes visible and the chunk files this writer stored (and nobody else references
/// or pins) are deleted before the drop returns. After any error the writer is poisoned.
pub struct PutWriter {
    store: Store,
    target: Target,
    limit: Option<u64>,
    chunk_size: usize,
    buf: Vec<u8>,
    md5: Md5,
    size: u64,
    manifest: Vec<ChunkRef>,
    pins: Pins,
    syncer: Option<Syncer>,
    poisoned: bool,
    cond: WriteCondition,
    checksum: Option<String>,
    committed: bool,
    /// A part of an SSE-C upload whose key was not given yet ([`PutWriter::encrypt`]).
    locked: bool,
    /// Installs the object instead of the bucket's versioning rules (objects only).
    installer: Option<Installer>,
}

/// Flushes this writer's chunks in the background, in order; stops at the first failure.
struct Syncer {
    tx: Sender<ChunkId>,
    handle: JoinHandle<Result<(), StorageError>>,
}

impl Syncer {
    fn start(chunks: Arc<dyn ChunkStore>) -> Result<Syncer, StorageError> {
        let (tx, rx) = mpsc::channel::<ChunkId>();
        let handle = std::thread::Builder::new()
            .name("tm-storage-sync".into())
            .spawn(move || rx.iter().try_for_each(|id| chunks.sync(&id)))?;
        Ok(Syncer { tx, handle })
    }

    /// Waits until every chunk sent so far is durable.
    fn finish(self) -> Result<(), StorageError> {
        drop(self.tx);
        self.handle
            .join()
            .map_err(|_| StorageError::Io(std::io::Error::other("chunk sync thread panicked")))?
    }
}

impl PutWriter {
    pub(crate) fn new(store: Store, target: Target, limit: Option<u64>) -> PutWriter {
        let shared = store.shared().clone();
        let mut pins = Pins::new(shared.clone());
        let mut locked = false;
        if let Target::Part { sse: Some(e), .. } = &target {
            // SSE-S3 parts open the upload's data key with the master key; SSE-C parts wait for
            // the customer key.
            match e.unwrap(&shared, None) {
                Ok(k) => pins.seal = Some((Seal::Object, k)),
                Err(_) => locked = true,
            }
        }
        PutWriter {
            chunk_size: shared.chunk_size as usize,
            store,
            target,
            limit,
            buf: Vec::new(),
            md5: Md5::new(),
            size: 0,
            manifest: Vec::new(),
            pins,
            syncer: None,
            poisoned: false,
            cond: WriteCondition::Always,
            checksum: None,
            committed: false,
            locked,
            installer: None,
        }
    }

    /// Encrypts what this writer stores (before the first byte is written): an object gets a
    /// new data key wrapped for `key` (SSE-S3 or SSE-C; recorded in its metadata), a part uses
    /// its upload's data key, which `key` must open (`KeyRequired`, `KeyMismatch`, or
    /// `NotCustomerEncrypted` for a customer key and an upload without one).
    pub fn encrypt(&mut self, key: &EncryptionKey) -> Result<(), StorageError> {
        if self.size > 0 || self.poisoned {
            return Err(StorageError::Unsupported("encrypt after writing"));
        }
        let shared = self.pins.shared.clone();
        match &mut self.target {
            Target::Object { meta, .. } => {
                let (e, k) = super::sse::new_encryption(&shared, key)?;
                meta.sse = Some(e);
                self.pins.seal = Some((Seal::Object, k));
            }
            Target::Part { sse, .. } => match sse {
                Some(e) => {
                    let k = e.unwrap(&shared, Some(key))?;
                    self.pins.seal = Some((Seal::Object, k));
                    self.locked = false;
                }
                None if matches!(key, EncryptionKey::Customer(_)) => {
                    return Err(StorageError::NotCustomerEncrypted)
                }
                None => return Err(StorageError::Unsupported("SSE on a part of a plain upload")),
            },
        }
        Ok(())
    }

    /// Makes the commit of an object conditional (checked atomically with it; ignored for parts).
    pub fn set_condition(&mut self, cond: WriteCondition) {
        self.cond = cond;
    }

    /// Records the verified checksum (`ALGORITHM:base64`) with the object or part.
    pub fn set_checksum(&mut self, checksum: Option<String>) {
        self.checksum = checksum;
    }

    /// Installs the object with `i` instead of the bucket's versioning rules.
    pub(crate) fn set_installer(&mut self, i: Installer) {
        self.installer = Some(i);
    }

    /// The bucket and key of an object writer (`None` for a part).
    pub fn object_key(&self) -> Option<(&str, &str)> {
        match &self.target {
            Target::Object { bucket, key, .. } => Some((bucket, key)),
            Target::Part { .. } => None,
        }
    }

    /// Whether what this writer stores is sealed (SSE, or the store seals every chunk).
    pub fn is_sealed(&self) -> bool {
        self.pins.seal.is_some()
    }

    /// The store this writer writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.size
    }

    /// Append `data`. Fails with `QuotaExceeded` as soon as the size can no longer fit.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Unsupported("write after error"));
        }
        let r = self.write_inner(data);
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    fn write_inner(&mut self, mut data: &[u8]) -> Result<(), StorageError> {
        if self.locked {
            return Err(StorageError::KeyRequired);
        }
        self.size += data.len() as u64;
        if self.limit.is_some_and(|l| self.size > l) {
            return Err(StorageError::QuotaExceeded);
        }
        self.md5.update(data);
        let cs = self.chunk_size;
        while !data.is_empty() {
            if self.buf.is_empty() && data.len() >= cs {
                // Whole chunk straight from the caller's buffer.
                self.store_chunk(&data[..cs])?;
                data = &data[cs..];
                continue;
            }
            let n = (cs - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == cs {
                let buf = std::mem::take(&mut self.buf);
                self.store_chunk(&buf)?;
                self.buf = buf;
                self.buf.clear();
            }
        }
        Ok(())
    }

    /// Stores one chunk unflushed and queues it for the syncer.
    fn store_chunk(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let c = self.pins.put_chunk_deferred(data)?;
        if self.syncer.is_none() {
            self.syncer = Some(Syncer::start(self.pins.shared.chunks.clone())?);
        }
        let s = self.syncer.as_ref().expect("syncer was just started");
        s.tx.send(c.id)
            .map_err(|_| StorageError::Io(std::io::Error::other("chunk sync thread stopped")))?;
        self.manifest.push(c);
        Ok(())
    }

    /// Make the object (or part) durable and visible. Returns its info; for a part, `etag` is the
    /// part's MD5 hex and `meta` is empty.
    pub fn commit(mut self) -> Result<ObjectInfo, StorageError> {
        if self.poisoned {
            return Err(StorageError::Unsupported("commit after error"));
        }
        if self.locked {
            return Err(StorageError::KeyRequired);
        }
        let small = self.manifest.is_empty()
            && !self.buf.is_empty()
            && self.buf.len() <= INLINE_MAX
            && matches!(self.target, Target::Object { .. });
        let mut inline = None;
        if small {
            let (c, stored) = self.pins.inline_chunk(&std::mem::take(&mut self.buf))?;
            self.manifest.push(c);
            inline = Some(stored);
        } else if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            self.store_chunk(&buf)?;
        }
        // Every chunk durable before the metadata that references it commits.
        if let Some(s) = self.syncer.take() {
            s.finish()?;
        }
        let etag = hex(&std::mem::take(&mut self.md5).finalize());
        let manifest = std::mem::take(&mut self.manifest);
        let modified = now_nanos();
        let target = std::mem::replace(
            &mut self.target,
            Target::Object {
                bucket: String::new(),
                key: String::new(),
                meta: Box::default(),
            },
        );
        // `self.pins` stays alive until the transaction has committed (dropped with `self`).
        let r = match target {
            Target::Object {
                bucket,
                key,
                mut meta,
            } => {
                if self.checksum.is_some() {
                    meta.checksum = self.checksum.take();
                }
                let rec = ObjRec {
                    version_id: None,
                    size: self.size,
                    etag,
                    modified,
                    meta: *meta,
                };
                let cond = std::mem::take(&mut self.cond);
                match self.installer.take() {
                    Some(i) => self.store.commit_installed(
                        i,
                        Prepared {
                            bucket,
                            key,
                            rec,
                            manifest,
                            inline,
                            cond,
                        },
                    ),
                    None => self
                        .store
                        .commit_object(bucket, key, rec, manifest, inline, cond),
                }
            }
            Target::Part {
                bucket,
                key,
                upload_id,
                number,
                ..
            } => {
                let rec = PartRec {
                    size: self.size,
                    etag,
                    modified,
                    checksum: self.checksum.take(),
                };
                self.store
                    .commit_part(bucket, key, upload_id, number, rec, manifest)
            }
        };
        self.committed = r.is_ok();
        r
    }
}

impl Drop for PutWriter {
    /// An aborted (or refused) write removes the chunk files it stored before returning, so a
    /// failed upload leaves nothing behind on disk (chunks shared with a committed object or
    /// pinned by another writer stay).
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Some(s) = self.syncer.take() {
            let _ = s.finish();
        }
        let ids = std::mem::take(&mut self.pins.ids);
        if ids.is_empty() {
            return;
        }
        self.pins.shared.unpin(&ids);
        self.store.discard(ids);
    }
}

impl std::io::Write for PutWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        PutWriter::write_all(self, buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
