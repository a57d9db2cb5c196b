//! Checkpoints: the in-memory layer folded into redb, in one durable redb commit each.
//!
//! Where a checkpoint's redb commit happens: [`commit_to_redb`] (it also records which log
//! record it includes last, `wal_meta.lsn`, so replay skips what redb already holds). The
//! checkpoint thread ([`checkpointer`]) runs one in the background when the log region is due
//! ([`CHECKPOINT_AFTER`], `wal::CHECKPOINT_BYTES`); [`checkpoint_all`] blocks (a batch too large
//! for the log, a full region, closing the database).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::Database;

use super::mem::{Local, Mem, Overlay};
use super::wal::{Wal, CHECKPOINT_AFTER, WAL_META};
use super::{lock, Schema};
use crate::StorageError;

/// Open the redo log and replay what it holds beyond the database's last durable commit (one
/// durable transaction), before anything else touches the database.
pub(super) fn open_wal(
    db: &Database,
    schema: &Schema,
    path: &std::path::Path,
) -> Result<Wal, StorageError> {
    let applied = {
        let rtx = db.begin_read()?;
        let t = rtx.open_table(WAL_META)?;
        let v = t.get("lsn")?.map(|v| v.value());
        v.unwrap_or(0)
    };
    let (mut wal, records) = Wal::open(path, applied)?;
    if !records.is_empty() {
        let wtx = db.begin_write()?;
        schema.replay(&wtx, &records)?;
        wtx.open_table(WAL_META)?.insert("lsn", wal.last())?;
        wtx.commit()?;
    }
    wal.reset();
    Ok(wal)
}

/// A blocking checkpoint of everything (the caller holds the log): waits for a running
/// background checkpoint, then applies the layer (and `extra`, a batch too large for the log)
/// to redb in one durable commit and starts the log region again. On failure the log keeps its
/// records and the layer its versions.
pub(super) fn checkpoint_all(
    mem: &Mem,
    schema: &Schema,
    wal: &mut Wal,
    extra: Option<&Local>,
) -> Result<(), String> {
    while mem.frozen() {
        // The background checkpoint finishes without the log.
        std::thread::sleep(Duration::from_micros(200));
    }
    let lsn = wal.last();
    mem.checkpoint_all(|latest| commit_to_redb(mem, schema, [Some(latest), extra], lsn))?;
    wal.reset();
    Ok(())
}

/// Apply `writes` (in order) to redb in one durable commit that records the log's records up
/// to `lsn` as included.
fn commit_to_redb<'a>(
    mem: &Mem,
    schema: &Schema,
    writes: impl IntoIterator<Item = Option<&'a Local>>,
    lsn: u64,
) -> Result<(), String> {
    let wtx = mem.db().begin_write().map_err(|e| e.to_string())?;
    for w in writes.into_iter().flatten() {
        schema.apply(&wtx, w).map_err(|e| e.to_string())?;
    }
    set_lsn(&wtx, lsn)?;
    wtx.commit().map_err(|e| e.to_string())
}

/// The checkpoint thread: when the log region holds `wal::CHECKPOINT_BYTES` or its oldest
/// record is [`CHECKPOINT_AFTER`] old, freeze the layer and switch log regions (briefly holding the log),
/// then write the frozen layer to redb while commits go on. At `stop`, a last checkpoint of
/// everything.
pub(super) fn checkpointer(
    mem: Arc<Mem>,
    schema: Arc<Schema>,
    wal: Arc<Mutex<Wal>>,
    stop: Arc<AtomicBool>,
) {
    let mut pending: Option<(Arc<Overlay>, u64)> = None;
    loop {
        if let Some((layer, lsn)) = &pending {
            match commit_to_redb(&mem, &schema, [Some(&layer.latest())], *lsn) {
                Ok(()) => {
                    mem.thaw();
                    pending = None;
                }
                Err(_) if stop.load(Ordering::Acquire) => return, // the log keeps the records
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
            continue;
        }
        let due = {
            let mut w = lock(&wal);
            if stop.load(Ordering::Acquire) {
                if w.dirty() {
                    let _ = checkpoint_all(&mem, &schema, &mut w, None);
                }
                return;
            }
            match w.due_in() {
                Some(d) if d.is_zero() => {
                    if let Some(layer) = mem.freeze() {
                        pending = Some((layer, w.last()));
                        w.switch();
                    }
                    None
                }
                d => Some(d.unwrap_or(CHECKPOINT_AFTER)),
            }
        };
        if let Some(d) = due {
            std::thread::park_timeout(d);
        }
    }
}

fn set_lsn(wtx: &redb::WriteTransaction, lsn: u64) -> Result<(), String> {
    let mut t = wtx.open_table(WAL_META).map_err(|e| e.to_string())?;
    t.insert("lsn", lsn).map_err(|e| e.to_string())?;
    Ok(())
}
