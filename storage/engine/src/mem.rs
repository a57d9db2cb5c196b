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

use std::borrow::Borrow;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use redb::{
    AccessGuard, Database, Key, ReadOnlyTable, ReadTransaction, ReadableTable as _,
    TableDefinition, TableError, TableHandle, Value,
};

use crate::StorageError;

type Bytes = Arc<[u8]>;
type Cmp = fn(&[u8], &[u8]) -> Ordering;

/// A key of one table, ordered as redb orders it (`Key::compare`).
#[derive(Clone)]
pub(crate) struct OKey {
    b: Bytes,
    cmp: Cmp,
}

impl OKey {
    fn new(b: &[u8], cmp: Cmp) -> OKey {
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
    fn get(&self, table: &str, key: &OKey, seq: u64) -> Option<Option<Bytes>> {
        let t = self.read();
        visible(t.get(table)?.get(key)?, seq).cloned()
    }

    /// The newest visible versions of the first `n` keys of `table` within the bounds (that
    /// have one), in key order; whether there may be more.
    fn range(
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

/// Where a table's layer versions come from, in rising priority: frozen, active, own writes.
#[derive(Clone, Copy)]
struct Side<'t> {
    active: &'t Overlay,
    frozen: Option<&'t Overlay>,
    seq: u64,
    local: Option<&'t RefCell<Local>>,
}

type Batch = (Vec<(OKey, Option<Bytes>)>, bool);

impl Side<'_> {
    fn get(&self, table: &str, key: &OKey) -> Option<Option<Bytes>> {
        if let Some(l) = self.local {
            if let Some(v) = l.borrow().get(table).and_then(|t| t.get(key)) {
                return Some(v.clone());
            }
        }
        if let Some(v) = self.active.get(table, key, self.seq) {
            return Some(v);
        }
        self.frozen.and_then(|f| f.get(table, key, self.seq))
    }

    /// Up to about `n` layer entries of `table` within the bounds per source, in key order
    /// (a higher-priority source's version of a key wins); whether there may be more after
    /// them.
    fn batch(&self, table: &str, lo: &Bound<OKey>, hi: &Bound<OKey>, n: usize) -> Batch {
        let mut parts: Vec<Batch> = Vec::with_capacity(3);
        if let Some(f) = self.frozen {
            parts.push(f.range(table, lo, hi, self.seq, n));
        }
        parts.push(self.active.range(table, lo, hi, self.seq, n));
        if let Some(l) = self.local {
            if let Some(t) = l.borrow().get(table) {
                let mut own = t.range((lo.clone(), hi.clone()));
                let mine: Vec<_> = own
                    .by_ref()
                    .take(n)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let more = own.next().is_some();
                parts.push((mine, more));
            }
        }
        if parts.len() == 1 {
            return parts.pop().expect("one part");
        }
        // Only keys up to the smallest last key of a cut-off source are complete.
        let mut cut: Option<&OKey> = None;
        for (v, more) in &parts {
            if let (true, Some((k, _))) = (more, v.last()) {
                cut = Some(cut.map_or(k, |c| c.min(k)));
            }
        }
        let cut = cut.cloned();
        let mut m: BTreeMap<OKey, Option<Bytes>> = BTreeMap::new();
        for (v, _) in parts {
            m.extend(v);
        }
        let out = m
            .into_iter()
            .filter(|(k, _)| cut.as_ref().is_none_or(|c| k <= c))
            .collect();
        (out, cut.is_some())
    }
}

/// A value (or key) read through the layer: redb's guard, or bytes from the layer.
pub(crate) enum Val<'t, V: Value + 'static> {
    Base(AccessGuard<'t, V>),
    Mem(Bytes, PhantomData<V>),
}

impl<V: Value + 'static> Val<'_, V> {
    pub(crate) fn value(&self) -> V::SelfType<'_> {
        match self {
            Val::Base(g) => g.value(),
            Val::Mem(b, _) => V::from_bytes(b),
        }
    }
}

/// Reading a table through the layer (readers and writers alike).
pub(crate) trait ReadTable<K: Key + 'static, V: Value + 'static> {
    fn get<'a>(
        &self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<Option<Val<'_, V>>, redb::StorageError>;

    /// Entries within `range`, in key order.
    fn range<'a, KR>(
        &self,
        range: impl RangeBounds<KR> + 'a,
    ) -> Result<Iter<'_, K, V>, redb::StorageError>
    where
        KR: Borrow<K::SelfType<'a>> + 'a;

    /// Every entry, in key order.
    fn iter(&self) -> Result<Iter<'_, K, V>, redb::StorageError>;
}

/// A table of a [`View`] or a [`Tx`].
pub(crate) struct TableR<'t, K: Key + 'static, V: Value + 'static> {
    base: ReadOnlyTable<K, V>,
    side: Side<'t>,
    name: String,
    cmp: Cmp,
}

impl<'t, K: Key + 'static, V: Value + 'static> TableR<'t, K, V> {
    fn open(
        rtx: &ReadTransaction,
        def: TableDefinition<K, V>,
        side: Side<'t>,
    ) -> Result<Self, TableError> {
        Ok(TableR {
            base: rtx.open_table(def)?,
            side,
            name: def.name().to_string(),
            cmp: cmp_of::<K>(),
        })
    }
}

/// `K::compare`, or plain byte order where it is the same (redb's `&str` compare validates
/// UTF-8 on every call).
fn cmp_of<K: Key + 'static>() -> Cmp {
    use std::any::TypeId;
    let t = TypeId::of::<K>();
    if t == TypeId::of::<&'static str>() || t == TypeId::of::<&'static [u8]>() {
        |a: &[u8], b: &[u8]| a.cmp(b)
    } else {
        K::compare
    }
}

fn to_bound<'a, K: Key + 'static, KR: Borrow<K::SelfType<'a>>>(
    b: Bound<&KR>,
    cmp: Cmp,
) -> Bound<OKey> {
    match b {
        Bound::Included(k) => Bound::Included(OKey::new(K::as_bytes(k.borrow()).as_ref(), cmp)),
        Bound::Excluded(k) => Bound::Excluded(OKey::new(K::as_bytes(k.borrow()).as_ref(), cmp)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Whether `(lo, hi)` holds no key (BTreeMap::range panics on such bounds).
fn empty_bounds(lo: &Bound<OKey>, hi: &Bound<OKey>) -> bool {
    match (lo, hi) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a), Bound::Excluded(b))
        | (Bound::Excluded(a), Bound::Included(b))
        | (Bound::Excluded(a), Bound::Excluded(b)) => a >= b,
        _ => false,
    }
}

impl<K: Key + 'static, V: Value + 'static> ReadTable<K, V> for TableR<'_, K, V> {
    fn get<'a>(
        &self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<Option<Val<'_, V>>, redb::StorageError> {
        let hit = {
            let k = OKey::new(K::as_bytes(key.borrow()).as_ref(), self.cmp);
            self.side.get(&self.name, &k)
        };
        match hit {
            Some(Some(v)) => Ok(Some(Val::Mem(v, PhantomData))),
            Some(None) => Ok(None),
            None => Ok(self.base.get(key)?.map(Val::Base)),
        }
    }

    fn range<'a, KR>(
        &self,
        range: impl RangeBounds<KR> + 'a,
    ) -> Result<Iter<'_, K, V>, redb::StorageError>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        let lo = to_bound::<K, KR>(range.start_bound(), self.cmp);
        let hi = to_bound::<K, KR>(range.end_bound(), self.cmp);
        let empty = empty_bounds(&lo, &hi);
        let mut it = Iter::new(self, self.base.range::<KR>(range)?, lo, hi);
        if empty {
            (it.base_done, it.more) = (true, false);
        }
        Ok(it)
    }

    fn iter(&self) -> Result<Iter<'_, K, V>, redb::StorageError> {
        Ok(Iter::new(
            self,
            self.base.iter()?,
            Bound::Unbounded,
            Bound::Unbounded,
        ))
    }
}

/// Entries of the base merged with the layer's (a layer version replaces the base's; a
/// removal hides it). The layer is read in growing batches, so taking the first few entries of
/// a large range costs a few lookups, not the whole range.
pub(crate) struct Iter<'t, K: Key + 'static, V: Value + 'static> {
    base: redb::Range<'t, K, V>,
    base_done: bool,
    b: Option<(AccessGuard<'t, K>, AccessGuard<'t, V>)>,
    side: Side<'t>,
    table: &'t str,
    cmp: Cmp,
    /// Where the next layer batch starts and ends.
    lo: Bound<OKey>,
    hi: Bound<OKey>,
    more: bool,
    batch: usize,
    mem: std::collections::VecDeque<(OKey, Option<Bytes>)>,
}

impl<'t, K: Key + 'static, V: Value + 'static> Iter<'t, K, V> {
    fn new(
        t: &'t TableR<'t, K, V>,
        base: redb::Range<'t, K, V>,
        lo: Bound<OKey>,
        hi: Bound<OKey>,
    ) -> Self {
        Iter {
            base,
            base_done: false,
            b: None,
            side: t.side,
            table: &t.name,
            cmp: t.cmp,
            lo,
            hi,
            more: true,
            batch: 8,
            mem: Default::default(),
        }
    }

    fn refill(&mut self) {
        if !self.mem.is_empty() || !self.more {
            return;
        }
        let (v, more) = self.side.batch(self.table, &self.lo, &self.hi, self.batch);
        self.batch = (self.batch * 4).min(1024);
        self.more = more;
        if let Some((k, _)) = v.last() {
            self.lo = Bound::Excluded(k.clone());
        }
        self.mem.extend(v);
    }
}

type Entry<'t, K, V> = (Val<'t, K>, Val<'t, V>);

impl<'t, K: Key + 'static, V: Value + 'static> Iterator for Iter<'t, K, V> {
    type Item = Result<Entry<'t, K, V>, redb::StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.b.is_none() && !self.base_done {
                match self.base.next() {
                    Some(Ok(e)) => self.b = Some(e),
                    Some(Err(e)) => return Some(Err(e)),
                    None => self.base_done = true,
                }
            }
            self.refill();
            let order = match (&self.b, self.mem.front()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((bk, _)), Some((mk, _))) => {
                    (self.cmp)(K::as_bytes(&bk.value()).as_ref(), mk.bytes())
                }
            };
            if order == Ordering::Less {
                let (k, v) = self.b.take().expect("base entry");
                return Some(Ok((Val::Base(k), Val::Base(v))));
            }
            if order == Ordering::Equal {
                self.b = None; // replaced or removed by the layer
            }
            let (k, v) = self.mem.pop_front().expect("layer entry");
            if let Some(v) = v {
                return Some(Ok((Val::Mem(k.b, PhantomData), Val::Mem(v, PhantomData))));
            }
        }
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

const OP_INSERT: u8 = 1;
const OP_REMOVE: u8 = 2;

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

/// A table of a [`Tx`]: reads through [`ReadTable`], writes through `insert`/`remove`.
pub(crate) struct TableW<'t, K: Key + 'static, V: Value + 'static> {
    r: TableR<'t, K, V>,
    local: &'t RefCell<Local>,
    redo: &'t RefCell<Vec<u8>>,
}

impl<K: Key + 'static, V: Value + 'static> ReadTable<K, V> for TableW<'_, K, V> {
    fn get<'a>(
        &self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<Option<Val<'_, V>>, redb::StorageError> {
        self.r.get(key)
    }

    fn range<'a, KR>(
        &self,
        range: impl RangeBounds<KR> + 'a,
    ) -> Result<Iter<'_, K, V>, redb::StorageError>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        self.r.range(range)
    }

    fn iter(&self) -> Result<Iter<'_, K, V>, redb::StorageError> {
        self.r.iter()
    }
}

impl<K: Key + 'static, V: Value + 'static> TableW<'_, K, V> {
    fn write(&self, key: &[u8], value: Option<&[u8]>) {
        {
            let mut r = self.redo.borrow_mut();
            r.push(if value.is_some() {
                OP_INSERT
            } else {
                OP_REMOVE
            });
            let name = &self.r.name;
            r.push(u8::try_from(name.len()).expect("table names are short"));
            r.extend_from_slice(name.as_bytes());
            put_bytes(&mut r, key);
            if let Some(v) = value {
                put_bytes(&mut r, v);
            }
        }
        self.local
            .borrow_mut()
            .entry(self.r.name.clone())
            .or_default()
            .insert(OKey::new(key, self.r.cmp), value.map(Bytes::from));
    }

    /// Like redb's `Table::insert` (without returning the old value).
    pub(crate) fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), redb::StorageError> {
        self.write(
            K::as_bytes(key.borrow()).as_ref(),
            Some(V::as_bytes(value.borrow()).as_ref()),
        );
        Ok(())
    }

    /// Like redb's `Table::remove`: returns the value removed.
    pub(crate) fn remove<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<Option<Val<'static, V>>, redb::StorageError> {
        let k = K::as_bytes(key.borrow());
        let old = self
            .r
            .get(K::from_bytes(k.as_ref()))?
            .map(|v| Val::Mem(Bytes::from(V::as_bytes(&v.value()).as_ref()), PhantomData));
        self.write(k.as_ref(), None);
        Ok(old)
    }
}

fn put_bytes(r: &mut Vec<u8>, b: &[u8]) {
    r.extend_from_slice(
        &u32::try_from(b.len())
            .expect("key/value below 4 GiB")
            .to_le_bytes(),
    );
    r.extend_from_slice(b);
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
pub(crate) mod tests {
    use super::*;

    pub(crate) const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn mem() -> Mem {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("db");
        let w = db.begin_write().expect("write");
        {
            let mut t = w.open_table(T).expect("table");
            for k in [1u64, 3, 300] {
                t.insert(k, format!("base{k}").as_bytes()).expect("insert");
            }
        }
        w.commit().expect("commit");
        Mem::new(Arc::new(db), 0)
    }

    fn commit(m: &Mem, seq: u64, f: impl FnOnce(&mut TableW<'_, u64, &'static [u8]>)) {
        let tx = m.begin().expect("begin");
        f(&mut tx.open_table(T).expect("table"));
        let (redo, local) = tx.into_parts();
        assert!(!redo.is_empty());
        m.publish(local, seq);
    }

    fn entries(it: Iter<'_, u64, &'static [u8]>) -> Vec<(u64, String)> {
        it.map(|e| {
            let (k, v) = e.expect("entry");
            (
                k.value(),
                String::from_utf8(v.value().to_vec()).expect("utf8"),
            )
        })
        .collect()
    }

    fn all(v: &View) -> Vec<(u64, String)> {
        entries(v.open_table(T).expect("table").iter().expect("iter"))
    }

    #[test]
    fn layer_replaces_hides_and_adds_in_key_order() {
        let m = mem();
        commit(&m, 1, |t| {
            t.insert(3, b"new3".as_slice()).expect("insert");
            t.insert(2, b"new2".as_slice()).expect("insert");
            t.insert(256, b"new256".as_slice()).expect("insert"); // LE bytes sort before 3's
            assert_eq!(
                t.remove(1).expect("remove").expect("had 1").value(),
                b"base1"
            );
            // The transaction reads its own writes.
            assert_eq!(t.get(2).expect("get").expect("2").value(), b"new2");
            assert!(t.get(1).expect("get").is_none());
        });
        let v = m.view().expect("view");
        let got = all(&v);
        let want = [(2, "new2"), (3, "new3"), (256, "new256"), (300, "base300")];
        assert_eq!(got, want.map(|(k, s)| (k, s.to_string())));
        let t = v.open_table(T).expect("table");
        let r: Vec<u64> = t
            .range(3..=256)
            .expect("range")
            .map(|e| e.expect("entry").0.value())
            .collect();
        assert_eq!(r, vec![3, 256]);
        assert!(t.get(1).expect("get").is_none());
        assert_eq!(t.range(5..5).expect("range").count(), 0);
    }

    #[test]
    fn views_keep_their_snapshot_across_commits_and_checkpoints() {
        let m = mem();
        commit(&m, 1, |t| t.insert(7, b"v1".as_slice()).expect("insert"));
        let before = m.view().expect("view");
        commit(&m, 2, |t| {
            t.insert(7, b"v2".as_slice()).expect("insert");
            t.remove(3).expect("remove");
        });
        // Checkpoint: the layer is frozen, commits go on in a new one, the frozen one goes
        // into redb and is dropped.
        let frozen = m.freeze().expect("no checkpoint running");
        assert!(m.freeze().is_none(), "one checkpoint at a time");
        commit(&m, 3, |t| {
            t.insert(8, b"during".as_slice()).expect("insert")
        });
        let during = m.view().expect("view");
        let w = m.db().begin_write().expect("write");
        crate::wal::apply(&w, &frozen.latest()).expect("apply");
        w.commit().expect("commit");
        // Base and frozen layer agree until the thaw: a view taken now reads the same.
        let between = m.view().expect("view");
        m.thaw();
        for v in [&during, &between] {
            let t = v.open_table(T).expect("table");
            assert_eq!(t.get(7).expect("get").expect("7").value(), b"v2");
            assert_eq!(t.get(8).expect("get").expect("8").value(), b"during");
            assert!(t.get(3).expect("get").is_none());
            assert_eq!(all(v).len(), 4);
        }
        let after = m.view().expect("view");
        let t = before.open_table(T).expect("table");
        assert_eq!(t.get(7).expect("get").expect("7").value(), b"v1");
        assert_eq!(t.get(3).expect("get").expect("3").value(), b"base3");
        let t = after.open_table(T).expect("table");
        assert_eq!(t.get(7).expect("get").expect("7").value(), b"v2");
        assert!(t.get(3).expect("get").is_none());
        assert_eq!(t.get(8).expect("get").expect("8").value(), b"during");
        assert_eq!(all(&after).len(), 4);
    }

    #[test]
    fn uncommitted_writes_are_invisible_and_dropping_discards_them() {
        let m = mem();
        let tx = m.begin().expect("begin");
        tx.open_table(T)
            .expect("table")
            .insert(9, b"x".as_slice())
            .expect("insert");
        assert!(m
            .view()
            .expect("view")
            .open_table(T)
            .expect("t")
            .get(9)
            .expect("get")
            .is_none());
        drop(tx);
        let tx = m.begin().expect("begin");
        assert!(tx.open_table(T).expect("t").get(9).expect("get").is_none());
    }

    #[test]
    fn byte_ordered_keys_compare_as_bytes_others_as_redb_does() {
        // No UTF-8 validation for `&str` keys (redb's compare checks it on every call).
        assert_eq!(cmp_of::<&str>()(b"\xff", b"a"), Ordering::Greater);
        assert_eq!(cmp_of::<&[u8]>()(b"ab", b"b"), Ordering::Less);
        // u64 keys are little-endian bytes: byte order would put 256 before 3.
        let (a, b) = (256u64.to_le_bytes(), 3u64.to_le_bytes());
        assert_eq!(cmp_of::<u64>()(&a, &b), Ordering::Greater);
    }

    #[test]
    fn redo_records_decode_to_the_writes() {
        let m = mem();
        let tx = m.begin().expect("begin");
        {
            let mut t = tx.open_table(T).expect("table");
            t.insert(5, b"five".as_slice()).expect("insert");
            t.remove(1).expect("remove");
        }
        let (redo, _) = tx.into_parts();
        let w = decode(&redo).expect("decode");
        assert_eq!(
            w,
            vec![
                (
                    "t".to_string(),
                    5u64.to_le_bytes().to_vec(),
                    Some(b"five".to_vec())
                ),
                ("t".to_string(), 1u64.to_le_bytes().to_vec(), None),
            ]
        );
        assert!(decode(&redo[..redo.len() - 1]).is_err());
    }

    #[test]
    fn ranges_merge_base_layer_and_own_writes_like_a_model() {
        let m = mem();
        let mut model: BTreeMap<u64, String> =
            [1u64, 3, 300].map(|k| (k, format!("base{k}"))).into();
        let mut x = 12345u64;
        let mut rnd = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut ops = Vec::new();
        for _ in 0..3000 {
            ops.push((rnd(4000), rnd(3) == 0));
        }
        let (committed, own) = ops.split_at(2500);
        for (seq, chunk) in committed.chunks(100).enumerate() {
            if seq == 12 {
                // Half the commits in a frozen layer (a checkpoint running), half over it.
                m.freeze().expect("freeze");
            }
            commit(&m, seq as u64 + 1, |t| {
                for &(k, del) in chunk {
                    if del {
                        t.remove(k).expect("remove");
                    } else {
                        t.insert(k, format!("c{k}").as_bytes()).expect("insert");
                    }
                }
            });
        }
        for &(k, del) in committed {
            if del {
                model.remove(&k);
            } else {
                model.insert(k, format!("c{k}"));
            }
        }
        let check = |t: &dyn Fn(u64, u64) -> Vec<(u64, String)>, model: &BTreeMap<u64, String>| {
            for (a, b) in [(0, u64::MAX), (0, 10), (17, 2900), (3999, 4000), (500, 501)] {
                let want: Vec<_> = model.range(a..b).map(|(k, v)| (*k, v.clone())).collect();
                assert_eq!(t(a, b), want, "range {a}..{b}");
            }
        };
        let v = m.view().expect("view");
        let vt = v.open_table(T).expect("table");
        let read = |a: u64, b: u64| entries(vt.range(a..b).expect("range"));
        check(&read, &model);
        let tx = m.begin().expect("begin");
        let mut t = tx.open_table(T).expect("table");
        for &(k, del) in own {
            if del {
                t.remove(k).expect("remove");
                model.remove(&k);
            } else {
                t.insert(k, format!("o{k}").as_bytes()).expect("insert");
                model.insert(k, format!("o{k}"));
            }
        }
        let read = |a: u64, b: u64| entries(t.range(a..b).expect("range"));
        check(&read, &model);
    }
}
