//! The in-memory layer over redb: committed metadata that the redo log made durable but no
//! checkpoint has written to redb yet.
//!
//! Why: a redb commit copies every page it touches (about 18 for a file create), and with
//! `Durability::None` none of the old pages can be reused until a durable commit, so every
//! small transaction cost a redb commit (~70 µs) plus ~65 KiB written at the next checkpoint
//! (~100-170 µs per transaction, measured). Here a commit is: run the transaction against
//! [`Tx`] (reads see base + layer + own writes; writes stay in the transaction), append its
//! redo record to the log and sync it, then publish the writes into the [`Overlay`] under a
//! new sequence number. A checkpoint freezes the layer (commits go on in a new one, read
//! over it), writes the frozen layer to redb in one durable commit — each page once for
//! hundreds of transactions — on the checkpoint thread, and then drops it.
//!
//! Readers ([`View`]) pair a redb read transaction (the base) with the layers current when
//! they started and the last published sequence number `s`; they see a version in a layer
//! only if its sequence is at most `s`. The pair is taken under the mutex that publishes
//! sequence numbers, freezes and drops layers, so a reader's base never holds a commit its
//! layers do not show: the base is either older than the frozen layer, or (after the
//! checkpoint's commit, before the drop) holds exactly what the frozen layer holds, which
//! reads the same. The rare blocking checkpoint that adds a batch too large for the log
//! holds readers off for its commit.
//!
//! Memory: the layers hold every version written since the last checkpoint, which the log
//! bounds (a checkpoint starts when its region holds 256 KiB, and commits wait for a running
//! checkpoint when the other region is full). Old layers live as long as a reader that
//! started on them.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use redb::{Database, Key, ReadTransaction, TableDefinition, TableError, Value};

use super::table::{Side, TableR, TableW};
use crate::StorageError;

pub(super) type Bytes = Arc<[u8]>;
pub(super) type Cmp = fn(&[u8], &[u8]) -> Ordering;

/// A key of one table, ordered as redb orders it (`Key::compare`).
#[derive(Clone)]
pub(crate) struct OKey {
    pub(super) b: Bytes,
    cmp: Cmp,
}

impl OKey {
    pub(super) fn new(b: &[u8], cmp: Cmp) -> OKey {
        OKey { b: b.into(), cmp }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.b
    }
}

impl PartialEq for OKey {
    fn eq(&self, o: &OKey) -> bool {
        (self.cmp)(&self.b, &o.b) == Ordering::Equal
    }
}
impl Eq for OKey {}
impl PartialOrd for OKey {
    fn partial_cmp(&self, o: &OKey) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OKey {
    fn cmp(&self, o: &OKey) -> Ordering {
        (self.cmp)(&self.b, &o.b)
    }
}

/// One table's versions: per key, (sequence, value or `None` = removed), oldest first.
type Versions = BTreeMap<OKey, Vec<(u64, Option<Bytes>)>>;

/// The newest of a key's versions visible at `seq`.
fn visible(vs: &[(u64, Option<Bytes>)], seq: u64) -> Option<&Option<Bytes>> {
    vs.iter().rev().find(|(s, _)| *s <= seq).map(|(_, v)| v)
}

/// Writes of one transaction, per table: the last value (or removal) of each key.
pub(crate) type Local = HashMap<String, BTreeMap<OKey, Option<Bytes>>>;

/// The committed layer over one redb checkpoint.
pub(crate) struct Overlay {
    tables: RwLock<HashMap<String, Versions>>,
}

impl Overlay {
    fn new() -> Overlay {
        Overlay {
            tables: RwLock::new(HashMap::new()),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Versions>> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest version of `key` in `table` visible at `seq`: `None` if the layer has none,
    /// `Some(None)` if it was removed.
    pub(super) fn get(&self, table: &str, key: &OKey, seq: u64) -> Option<Option<Bytes>> {
        let t = self.read();
        visible(t.get(table)?.get(key)?, seq).cloned()
    }

    /// The newest visible versions of the first `n` keys of `table` within the bounds (that
    /// have one), in key order; whether there may be more.
    pub(super) fn range(
        &self,
        table: &str,
        lo: &Bound<OKey>,
        hi: &Bound<OKey>,
        seq: u64,
        n: usize,
    ) -> (Vec<(OKey, Option<Bytes>)>, bool) {
        let t = self.read();
        let Some(vs) = t.get(table) else {
            return (Vec::new(), false);
        };
        let mut out = Vec::new();
        for (k, v) in vs.range((lo.clone(), hi.clone())) {
            if out.len() == n {
                return (out, true);
            }
            if let Some(v) = visible(v, seq) {
                out.push((k.clone(), v.clone()));
            }
        }
        (out, false)
    }

    /// Add a transaction's writes as versions `seq` (not yet visible: see [`Mem::publish`]).
    fn add(&self, local: Local, seq: u64) {
        let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
        for (name, writes) in local {
            let tab = t.entry(name).or_default();
            for (k, v) in writes {
                tab.entry(k).or_default().push((seq, v));
            }
        }
    }

    /// Newest version of every key of every table (what a checkpoint writes).
    pub(crate) fn latest(&self) -> Local {
        let t = self.read();
        t.iter()
            .map(|(name, vs)| {
                let m = vs
                    .iter()
                    .filter_map(|(k, v)| v.last().map(|(_, v)| (k.clone(), v.clone())))
                    .collect();
                (name.clone(), m)
            })
            .collect()
    }
}

/// The layers over redb and the last published sequence number; changed only under
/// [`Mem`]'s mutex, so a snapshot of them and a redb read transaction taken under it match.
struct Layers {
    /// Where commits are published.
    active: Arc<Overlay>,
    /// The layer a running checkpoint is writing to redb (read under `active`).
    frozen: Option<Arc<Overlay>>,
    seq: u64,
}

/// The database with its layers; see the module docs for the protocol.
pub(crate) struct Mem {
    db: Arc<Database>,
    cur: Mutex<Layers>,
}

impl Mem {
    /// `seq`: sequence number of the last log record the database includes.
    pub(crate) fn new(db: Arc<Database>, seq: u64) -> Mem {
        Mem {
            db,
            cur: Mutex::new(Layers {
                active: Arc::new(Overlay::new()),
                frozen: None,
                seq,
            }),
        }
    }

    fn cur(&self) -> MutexGuard<'_, Layers> {
        self.cur.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn db(&self) -> &Arc<Database> {
        &self.db
    }

    /// The base and the layers as of now, taken under the layer mutex so that they agree.
    /// `all`: every published version (a writer's), else those up to the current sequence.
    fn snap(&self, all: bool) -> Result<Snap, StorageError> {
        let g = self.cur();
        let (active, frozen) = (g.active.clone(), g.frozen.clone());
        let seq = if all { u64::MAX } else { g.seq };
        let rtx = self.db.begin_read()?;
        drop(g);
        Ok(Snap {
            rtx,
            active,
            frozen,
            seq,
        })
    }

    /// A consistent snapshot for reading.
    pub(crate) fn view(&self) -> Result<View, StorageError> {
        Ok(View(self.snap(false)?))
    }

    /// A write transaction; the caller holds the log (one writer at a time).
    pub(crate) fn begin(&self) -> Result<Tx, StorageError> {
        Ok(Tx {
            snap: self.snap(true)?,
            local: RefCell::new(HashMap::new()),
            redo: RefCell::new(Vec::new()),
        })
    }

    /// Make a committed transaction's writes visible as sequence `seq` (its log record's).
    pub(crate) fn publish(&self, local: Local, seq: u64) {
        let active = self.cur().active.clone();
        active.add(local, seq);
        self.cur().seq = seq;
    }

    /// Start a checkpoint (the caller holds the log): the active layer becomes the frozen one,
    /// commits go to a new layer; returns what to write to redb. `None` while one runs.
    pub(crate) fn freeze(&self) -> Option<Arc<Overlay>> {
        let mut g = self.cur();
        if g.frozen.is_some() {
            return None;
        }
        let f = std::mem::replace(&mut g.active, Arc::new(Overlay::new()));
        g.frozen = Some(f.clone());
        Some(f)
    }

    /// The checkpoint of the frozen layer is durable in redb: drop it. (Until now readers
    /// paired the new base with a layer it already includes, which reads the same.)
    pub(crate) fn thaw(&self) {
        self.cur().frozen = None;
    }

    /// Whether a checkpoint is writing a frozen layer.
    pub(crate) fn frozen(&self) -> bool {
        self.cur().frozen.is_some()
    }

    /// A checkpoint of everything (no frozen layer may exist; the caller holds the log):
    /// `commit` gets the active layer's newest versions and must make them (and whatever it
    /// adds) durable in redb; readers are held off meanwhile, as the base then holds more
    /// than the layer shows. On success the layer is emptied.
    pub(crate) fn checkpoint_all<E>(
        &self,
        commit: impl FnOnce(&Local) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut g = self.cur();
        debug_assert!(
            g.frozen.is_none(),
            "checkpoint_all during a background checkpoint"
        );
        commit(&g.active.latest())?;
        g.active = Arc::new(Overlay::new());
        Ok(())
    }
}

/// A redb read transaction and the layers (and sequence) that go with it.
struct Snap {
    rtx: ReadTransaction,
    active: Arc<Overlay>,
    frozen: Option<Arc<Overlay>>,
    seq: u64,
}

impl Snap {
    /// A table over this snapshot, with a transaction's own writes on top when `local` is set.
    fn table<'t, K: Key + 'static, V: Value + 'static>(
        &'t self,
        def: TableDefinition<K, V>,
        local: Option<&'t RefCell<Local>>,
    ) -> Result<TableR<'t, K, V>, TableError> {
        let side = Side {
            active: &self.active,
            frozen: self.frozen.as_deref(),
            seq: self.seq,
            local,
        };
        TableR::open(&self.rtx, def, side)
    }
}

/// A read snapshot: a redb read transaction and the layer that goes with it.
pub(crate) struct View(Snap);

impl View {
    pub(crate) fn open_table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<TableR<'_, K, V>, TableError> {
        self.0.table(def, None)
    }
}

pub(super) const OP_INSERT: u8 = 1;
pub(super) const OP_REMOVE: u8 = 2;

/// A write transaction: reads see the base, the layer and the transaction's own writes;
/// writes are kept (and recorded for the redo log) until the commit publishes them.
pub(crate) struct Tx {
    snap: Snap,
    local: RefCell<Local>,
    redo: RefCell<Vec<u8>>,
}

impl Tx {
    /// Open a table for reading and (recorded) writing.
    pub(crate) fn open_table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<TableW<'_, K, V>, TableError> {
        Ok(TableW {
            r: self.snap.table(def, Some(&self.local))?,
            local: &self.local,
            redo: &self.redo,
        })
    }

    /// The redo record (empty when nothing changed) and the writes.
    pub(crate) fn into_parts(self) -> (Vec<u8>, Local) {
        (self.redo.into_inner(), self.local.into_inner())
    }
}

/// One recorded write: table name, key, value (`None`: removed).
pub(crate) type Write = (String, Vec<u8>, Option<Vec<u8>>);

/// Decode a redo record into per-table writes, in order (a later write of a key wins).
pub(crate) fn decode(payload: &[u8]) -> Result<Vec<Write>, StorageError> {
    let bad = || StorageError::Corrupt("write-ahead log record".into());
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], StorageError> {
        let s = payload
            .get(at..at.checked_add(n).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        at += n;
        Ok(s)
    };
    let mut out = Vec::new();
    while let Ok(op) = take(1) {
        let op = op[0];
        let nlen = take(1)?[0] as usize;
        let name = std::str::from_utf8(take(nlen)?)
            .map_err(|_| bad())?
            .to_string();
        let klen = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let key = take(klen)?.to_vec();
        let value = match op {
            OP_INSERT => {
                let vlen = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
                Some(take(vlen)?.to_vec())
            }
            OP_REMOVE => None,
            _ => return Err(bad()),
        };
        out.push((name, key, value));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "mem_tests.rs"]
pub(crate) mod tests;
