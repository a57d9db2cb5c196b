//! Hinted handoffs (`rep_hints`) and the figures `cluster status` shows.

use super::*;

/// A hinted handoff: `target` (an owner) lacks the version `dot` of `bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The owner.
    pub target: NodeId,
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// The version.
    pub dot: Dot,
}

impl Hint {
    pub(super) fn table_key(&self) -> String {
        format!(
            "{:016x}\u{0}{}\u{0}{}\u{0}{}",
            self.target.0,
            self.dot.version_id(),
            self.bucket,
            self.key
        )
    }

    fn parse(k: &str) -> Option<Hint> {
        let mut it = k.splitn(4, '\u{0}');
        let target = u64::from_str_radix(it.next()?, 16).ok()?;
        let dot = Dot::parse_version_id(it.next()?)?;
        let bucket = it.next()?.to_owned();
        let key = it.next()?.to_owned();
        Some(Hint {
            target: NodeId(target),
            bucket,
            key,
            dot,
        })
    }
}

pub(super) fn write_hints(
    wtx: &Tx,
    bucket: &str,
    key: &str,
    dot: Dot,
    hints: &[NodeId],
) -> Result<(), StorageError> {
    let mut t = wtx.open_table(REP_HINTS)?;
    for &target in hints {
        let h = Hint {
            target,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            dot,
        };
        t.insert(h.table_key().as_str(), [].as_slice())?;
    }
    Ok(())
}

/// What this coordinator stores, for `cluster status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Figures {
    /// Bytes of every stored version.
    pub bytes: u64,
    /// Stored object versions.
    pub objects: u64,
    /// `max_size` (`None`: unlimited).
    pub capacity: Option<u64>,
    /// Hinted handoffs pending: (owner, version) pairs an owner is known to lack.
    pub under_replicated: u64,
}

/// This store's [`Figures`].
pub fn figures(store: &Store) -> Result<Figures, StorageError> {
    let u = store.total_usage()?;
    let rtx = store.view()?;
    let t = rtx.open_table(REP_HINTS)?;
    let mut under_replicated = 0;
    for e in t.range::<&str>(..)? {
        e?;
        under_replicated += 1;
    }
    Ok(Figures {
        bytes: u.bytes,
        objects: u.objects,
        capacity: store.max_size(),
        under_replicated,
    })
}

/// Up to `max` hinted handoffs, by owner.
pub fn hints(store: &Store, max: usize) -> Result<Vec<Hint>, StorageError> {
    let rtx = store.view()?;
    let t = rtx.open_table(REP_HINTS)?;
    let mut out = Vec::new();
    for e in t.range::<&str>(..)? {
        let (k, _) = e?;
        if let Some(h) = Hint::parse(k.value()) {
            out.push(h);
        }
        if out.len() >= max {
            break;
        }
    }
    Ok(out)
}

/// Up to `max` hinted handoffs for owner `target`.
pub fn hints_for(store: &Store, target: NodeId, max: usize) -> Result<Vec<Hint>, StorageError> {
    let rtx = store.view()?;
    let t = rtx.open_table(REP_HINTS)?;
    let (lo, hi) = (
        format!("{:016x}\u{0}", target.0),
        format!("{:016x}\u{1}", target.0),
    );
    let mut out = Vec::new();
    for e in t.range(lo.as_str()..hi.as_str())? {
        let (k, _) = e?;
        if let Some(h) = Hint::parse(k.value()) {
            out.push(h);
        }
        if out.len() >= max {
            break;
        }
    }
    Ok(out)
}

/// Records a hint (an owner did not confirm a version stored here).
pub fn add_hint(store: &Store, h: &Hint) -> Result<(), StorageError> {
    let k = h.table_key();
    store.txn(move |wtx, _| {
        wtx.open_table(REP_HINTS)?
            .insert(k.as_str(), [].as_slice())?;
        Ok(())
    })
}

/// Removes a hint: its owner confirmed the version durable.
pub fn clear_hint(store: &Store, h: &Hint) -> Result<(), StorageError> {
    let k = h.table_key();
    store.txn(move |wtx, _| {
        wtx.open_table(REP_HINTS)?.remove(k.as_str())?;
        Ok(())
    })
}
