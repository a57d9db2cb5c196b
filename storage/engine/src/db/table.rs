//! Tables read and written through the in-memory layer ([`super::mem`]): a typed table of a
//! [`super::View`] or [`super::Tx`] merges redb's committed pages with the layer's versions
//! (and a transaction's own writes), in key order, as redb would return them.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use redb::{
    AccessGuard, Key, ReadOnlyTable, ReadTransaction, ReadableTable as _, TableDefinition,
    TableError, TableHandle, Value,
};

use super::mem::{Bytes, Cmp, Local, OKey, Overlay, OP_INSERT, OP_REMOVE};

/// Where a table's layer versions come from, in rising priority: frozen, active, own writes.
#[derive(Clone, Copy)]
pub(super) struct Side<'t> {
    pub(super) active: &'t Overlay,
    pub(super) frozen: Option<&'t Overlay>,
    pub(super) seq: u64,
    pub(super) local: Option<&'t RefCell<Local>>,
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
    pub(super) fn open(
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
pub(super) fn cmp_of<K: Key + 'static>() -> Cmp {
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

/// A table of a [`Tx`]: reads through [`ReadTable`], writes through `insert`/`remove`.
pub(crate) struct TableW<'t, K: Key + 'static, V: Value + 'static> {
    pub(super) r: TableR<'t, K, V>,
    pub(super) local: &'t RefCell<Local>,
    pub(super) redo: &'t RefCell<Vec<u8>>,
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
