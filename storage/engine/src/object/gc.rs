//! Garbage collection: where the engine decides to delete a chunk.
//!
//! Chunks whose reference count reaches 0 (deletes, overwrites, aborted uploads) are queued by
//! the commit that freed them; the reclaimer thread ([`reclaim`], every 200 ms) and a full
//! [`Store::gc`] (at open and on demand) delete a chunk only under the GC write lock, when it
//! has no entry in `refs` and no pin (see `pins.rs`). [`Store::fsck`] checks the metadata
//! against itself and the chunk backend.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::meta::*;
use super::pins::Shared;
use super::types::{FsckReport, GcStats};
use super::{lock, Store};
use crate::chunks::ChunkId;
use crate::db::{CommitStats, Mem, ReadTable as _};
use crate::StorageError;

pub(super) fn reclaimer(
    mem: Arc<Mem>,
    shared: Arc<Shared>,
    freed: Arc<Mutex<Vec<ChunkId>>>,
    stop: Receiver<()>,
) {
    loop {
        match stop.recv_timeout(Duration::from_millis(200)) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let _ = reclaim(&mem, &shared, &freed);
    }
}

/// Delete queued chunks that are still unreferenced and unpinned; keep pinned ones (and ones
/// whose delete failed: the first error is returned) queued.
fn reclaim(mem: &Mem, shared: &Shared, freed: &Mutex<Vec<ChunkId>>) -> Result<u64, StorageError> {
    let ids: Vec<ChunkId> = std::mem::take(&mut *lock(freed));
    if ids.is_empty() {
        return Ok(0);
    }
    let ids: HashSet<ChunkId> = ids.into_iter().collect();
    let _w = shared.write_guard();
    let mut requeue = Vec::new();
    let mut n = 0;
    let mut first_err = None;
    let res = (|| -> Result<(), StorageError> {
        let rtx = mem.view()?;
        let refs = rtx.open_table(REFS)?;
        let pins = shared.pins();
        for &id in &ids {
            if refs.get(id.0.as_slice())?.is_some() {
                continue;
            }
            if pins.contains_key(&id) {
                requeue.push(id);
                continue;
            }
            match shared.chunks.delete(&id) {
                Ok(()) => n += 1,
                Err(e) => {
                    requeue.push(id);
                    first_err.get_or_insert(e);
                }
            }
        }
        Ok(())
    })();
    if res.is_err() {
        // The metadata could not be read: keep every id queued for the next round.
        requeue = ids.into_iter().collect();
    }
    lock(freed).extend(requeue);
    res?;
    first_err.map_or(Ok(n), Err)
}

impl Store {
    /// Full garbage collection: delete every stored chunk that is neither referenced nor pinned,
    /// and temp files of interrupted writes. Blocks writers while it runs.
    pub fn gc(&self) -> Result<GcStats, StorageError> {
        let sh = &self.inner.shared;
        let _w = sh.write_guard();
        let rtx = self.view()?;
        let refs = rtx.open_table(REFS)?;
        let mut ids = Vec::new();
        sh.chunks.list(&mut |id| ids.push(id))?;
        let mut st = GcStats::default();
        let mut requeue = Vec::new();
        {
            let pins = sh.pins();
            for id in ids {
                if refs.get(id.0.as_slice())?.is_some() {
                    st.chunks_kept += 1;
                } else if pins.contains_key(&id) {
                    st.chunks_kept += 1;
                    requeue.push(id);
                } else {
                    sh.chunks.delete(&id)?;
                    st.chunks_deleted += 1;
                }
            }
        }
        st.temp_deleted = sh.chunks.cleanup_temp()?;
        lock(&self.inner.freed).extend(requeue);
        Ok(st)
    }

    /// Group-commit counters (operations per transaction shows the batching).
    pub fn commit_stats(&self) -> CommitStats {
        self.inner.db.stats()
    }

    /// Delete queued freed chunks now (the background reclaimer does this every 200 ms).
    pub fn reclaim(&self) -> Result<u64, StorageError> {
        reclaim(self.inner.db.mem(), &self.inner.shared, &self.inner.freed)
    }

    /// Deletes now the chunks `ids` (stored by an aborted write) that nothing references or
    /// pins; the others stay (queued for the reclaimer if they are freed later).
    pub(crate) fn discard(&self, ids: Vec<ChunkId>) {
        lock(&self.inner.freed).extend(ids);
        // On failure the ids stay queued and the background reclaimer retries.
        let _ = self.reclaim();
    }

    /// Check metadata against itself and the chunk backend (reads no chunk contents).
    pub fn fsck(&self) -> Result<FsckReport, StorageError> {
        let sh = &self.inner.shared;
        let _w = sh.write_guard();
        let rtx = self.view()?;
        let mut rep = FsckReport::default();
        let mut counts: HashMap<ChunkId, u64> = HashMap::new();
        let mut usage: HashMap<String, (u64, u64)> = HashMap::new();
        let objects = rtx.open_table(OBJECTS)?;
        let obj_chunks = rtx.open_table(OBJ_CHUNKS)?;
        for e in objects.iter()? {
            let (k, v) = e?;
            let rec: ObjRec = serde_json::from_slice(v.value())?;
            let m = get_manifest(&obj_chunks, k.value())?;
            rep.objects += 1;
            if m.iter().map(|c| u64::from(c.len)).sum::<u64>() != rec.size {
                rep.bad_sizes += 1;
            }
            for c in &m {
                *counts.entry(c.id).or_default() += 1;
            }
            let bucket = k.value().split('/').next().unwrap_or_default().to_string();
            let u = usage.entry(bucket).or_default();
            u.0 += rec.size;
            u.1 += 1;
        }
        let ver_chunks = rtx.open_table(VER_CHUNKS)?;
        for e in rtx.open_table(VERSIONS)?.iter()? {
            let (k, v) = e?;
            let vr: VerRec = serde_json::from_slice(v.value())?;
            for c in get_manifest(&ver_chunks, k.value())? {
                *counts.entry(c.id).or_default() += 1;
            }
            if let Some(rec) = vr.rec {
                let bucket = k.value().split('/').next().unwrap_or_default().to_string();
                let u = usage.entry(bucket).or_default();
                u.0 += rec.size;
                u.1 += 1;
            }
        }
        for e in rtx.open_table(PART_CHUNKS)?.iter()? {
            let (_, v) = e?;
            for c in decode_manifest(v.value())? {
                *counts.entry(c.id).or_default() += 1;
            }
        }
        let refs = rtx.open_table(REFS)?;
        let mut stored_refs = 0u64;
        for e in refs.iter()? {
            let (k, v) = e?;
            stored_refs += 1;
            let mut id = [0u8; 32];
            if k.value().len() != 32 {
                rep.bad_refcounts += 1;
                continue;
            }
            id.copy_from_slice(k.value());
            if counts.get(&ChunkId(id)).copied() != Some(v.value()) {
                rep.bad_refcounts += 1;
            }
        }
        if stored_refs != counts.len() as u64 {
            rep.bad_refcounts += 1;
        }
        rep.chunks_referenced = counts.len() as u64;
        let mut stored = HashSet::new();
        sh.chunks.list(&mut |id| {
            stored.insert(id);
        })?;
        let mut inline_ids = HashSet::new();
        for e in rtx.open_table(CHUNK_DATA)?.iter()? {
            let (k, _) = e?;
            let mut id = [0u8; 32];
            if k.value().len() == 32 {
                id.copy_from_slice(k.value());
                inline_ids.insert(ChunkId(id));
            }
        }
        rep.chunks_in_backend = counts.keys().filter(|id| stored.contains(id)).count() as u64;
        rep.missing_chunks = counts
            .keys()
            .filter(|id| !stored.contains(id) && !inline_ids.contains(id))
            .count() as u64;
        rep.orphan_chunks = stored.iter().filter(|id| !counts.contains_key(id)).count() as u64;
        let (mut tb, mut to) = (0, 0);
        for e in rtx.open_table(BUCKETS)?.iter()? {
            let (k, v) = e?;
            let r: BucketRec = serde_json::from_slice(v.value())?;
            let u = usage.get(k.value()).copied().unwrap_or_default();
            if (r.bytes, r.objects) != u {
                rep.bad_usage += 1;
            }
            tb += r.bytes;
            to += r.objects;
        }
        let stats = rtx.open_table(STATS)?;
        if (stat(&stats, "bytes")?, stat(&stats, "objects")?) != (tb, to) {
            rep.bad_usage += 1;
        }
        Ok(rep)
    }
}
