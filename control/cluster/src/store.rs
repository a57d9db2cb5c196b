//! The replicated control state: a map from keys to last-writer-wins registers. A record is
//! `(key, stamp, value)`; `value: None` is a tombstone (kept, so a delete wins over older
//! writes that arrive later). Merging takes, per key, the record with the greater stamp:
//! commutative, associative and idempotent, so replicas that have received the same records
//! in any order hold the same map. Sets are kept as one key per element (`node/K/tag/T`),
//! which makes them LWW-element sets.
//!
//! For anti-entropy the keys are split into [`BUCKETS`] buckets by a hash of the key; a
//! bucket's digest is the XOR of its records' `(key, stamp)` hashes, kept up to date on every
//! change, so comparing two replicas costs one 4 KiB message and repairing sends only the
//! records of the buckets that differ.

use crate::hlc::{Origin, Stamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

/// Number of anti-entropy buckets.
pub const BUCKETS: usize = 256;

/// Longest key accepted (bytes).
pub const MAX_KEY: usize = 512;

/// One register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `kind/id[/...]`, e.g. `node/<public key>`, `token/<id>`, `policy`.
    pub key: String,
    /// When and where it was written.
    pub stamp: Stamp,
    /// The value; `None`: deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

/// A bucket digest (128 bits of SHA-256, XOR-combined).
pub type BucketDigest = [u8; 16];

/// The bucket of a key.
pub fn bucket_of(key: &str) -> usize {
    let h = Sha256::digest(key.as_bytes());
    h[0] as usize
}

fn record_hash(key: &str, stamp: &Stamp) -> BucketDigest {
    let mut h = Sha256::new();
    h.update((key.len() as u64).to_le_bytes());
    h.update(key.as_bytes());
    h.update(stamp.wall_ms.to_le_bytes());
    h.update(stamp.logical.to_le_bytes());
    h.update(stamp.origin.0.to_le_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

fn xor(a: &mut BucketDigest, b: &BucketDigest) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// The largest stamp seen per origin: what a replica has seen of each coordinator's writes
/// (applied, or known to be overwritten by a record it holds; see [`Store::merge_seen`]).
/// Members carry the one of their last netmap, and a coordinator answers a poll only once its
/// own vector is at least as far along (so a member's view never goes back when it fails over).
/// On the wire: the list of stamps (each names its origin).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<Stamp>", into = "Vec<Stamp>")]
pub struct VersionVector(pub BTreeMap<Origin, Stamp>);

impl From<Vec<Stamp>> for VersionVector {
    fn from(v: Vec<Stamp>) -> Self {
        let mut vv = VersionVector::default();
        for s in v {
            vv.observe(s);
        }
        vv
    }
}

impl From<VersionVector> for Vec<Stamp> {
    fn from(v: VersionVector) -> Self {
        v.0.into_values().collect()
    }
}

impl VersionVector {
    /// Takes in one stamp.
    pub fn observe(&mut self, s: Stamp) {
        let e = self.0.entry(s.origin).or_insert(Stamp::ZERO);
        if s > *e {
            *e = s;
        }
    }

    /// Takes in everything `other` has seen.
    pub fn merge(&mut self, other: &VersionVector) {
        for s in other.0.values() {
            self.observe(*s);
        }
    }

    /// Whether this vector has seen at least everything `other` has.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other
            .0
            .iter()
            .all(|(o, s)| self.0.get(o).is_some_and(|mine| mine >= s))
    }

    /// A number that grows with the vector (the netmap `version` members compare).
    pub fn sum(&self) -> u64 {
        self.0
            .values()
            .map(|s| {
                s.wall_ms
                    .wrapping_mul(1 << 20)
                    .wrapping_add(u64::from(s.logical))
            })
            .fold(0u64, u64::wrapping_add)
    }
}

/// The records of one replica.
#[derive(Debug, Clone)]
pub struct Store {
    records: BTreeMap<String, Record>,
    digests: Vec<BucketDigest>,
    vv: VersionVector,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            records: BTreeMap::new(),
            digests: vec![[0u8; 16]; BUCKETS],
            vv: VersionVector::default(),
        }
    }
}

impl PartialEq for Store {
    fn eq(&self, other: &Self) -> bool {
        self.records == other.records
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    /// Merges one record: kept if its key is new or its stamp is greater than the stored one.
    /// Returns whether the store changed.
    pub fn apply(&mut self, r: Record) -> bool {
        self.vv.observe(r.stamp);
        let b = bucket_of(&r.key);
        match self.records.get(&r.key) {
            Some(old) if old.stamp >= r.stamp => false,
            old => {
                if let Some(old) = old {
                    let h = record_hash(&old.key, &old.stamp);
                    xor(&mut self.digests[b], &h);
                }
                xor(&mut self.digests[b], &record_hash(&r.key, &r.stamp));
                self.records.insert(r.key.clone(), r);
                true
            }
        }
    }

    /// The record of `key` (tombstones included).
    pub fn get(&self, key: &str) -> Option<&Record> {
        self.records.get(key)
    }

    /// The live value of `key`.
    pub fn value(&self, key: &str) -> Option<&serde_json::Value> {
        self.records.get(key).and_then(|r| r.value.as_ref())
    }

    /// Live records whose key starts with `prefix`, in key order.
    pub fn live_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a Record> + 'a {
        self.records
            .range(prefix.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, r)| r)
            .filter(|r| r.value.is_some())
    }

    /// Every record, in key order.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// Number of records (tombstones included).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The per-bucket digests.
    pub fn digests(&self) -> &[BucketDigest] {
        &self.digests
    }

    /// One digest of the whole store (equal on two replicas iff, barring a hash collision,
    /// they hold the same records).
    pub fn root(&self) -> BucketDigest {
        let mut h = Sha256::new();
        for d in &self.digests {
            h.update(d);
        }
        let d = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&d[..16]);
        out
    }

    /// The buckets whose digest differs from `theirs` (all of them if `theirs` is malformed).
    pub fn differing(&self, theirs: &[BucketDigest]) -> Vec<u16> {
        if theirs.len() != BUCKETS {
            return (0..BUCKETS as u16).collect();
        }
        (0..BUCKETS)
            .filter(|i| self.digests[*i] != theirs[*i])
            .map(|i| i as u16)
            .collect()
    }

    /// The records in `buckets`.
    pub fn in_buckets(&self, buckets: &[u16]) -> Vec<Record> {
        let mut want = [false; BUCKETS];
        for b in buckets {
            if let Some(w) = want.get_mut(*b as usize) {
                *w = true;
            }
        }
        self.records
            .values()
            .filter(|r| want[bucket_of(&r.key)])
            .cloned()
            .collect()
    }

    /// Takes in what another replica has seen, when this one is known to hold everything that
    /// one held at the time (its records, or later writes to the same keys): a write that was
    /// overwritten before it reached us counts as seen.
    pub fn merge_seen(&mut self, vv: &VersionVector) {
        self.vv.merge(vv);
    }

    /// What this replica has seen of each coordinator.
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// The largest stamp in the store (restores the clock after a restart).
    pub fn max_stamp(&self) -> Stamp {
        self.vv.0.values().copied().max().unwrap_or(Stamp::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, wall: u64, o: u64, v: Option<&str>) -> Record {
        Record {
            key: key.into(),
            stamp: Stamp {
                wall_ms: wall,
                logical: 0,
                origin: Origin(o),
            },
            value: v.map(|s| serde_json::Value::String(s.into())),
        }
    }

    #[test]
    fn later_stamp_wins_in_any_order_and_tombstones_stick() {
        let rs = [
            rec("a", 1, 1, Some("x")),
            rec("a", 3, 2, None),
            rec("a", 2, 1, Some("y")),
            rec("b", 5, 1, Some("z")),
        ];
        let mut one = Store::new();
        let mut two = Store::new();
        for r in &rs {
            one.apply(r.clone());
        }
        for r in rs.iter().rev() {
            two.apply(r.clone());
            two.apply(r.clone()); // idempotent
        }
        assert_eq!(one, two);
        assert_eq!(one.root(), two.root());
        assert_eq!(one.value("a"), None, "the delete is the latest write");
        assert_eq!(one.live_with_prefix("").count(), 1);
        assert!(
            !one.apply(rec("a", 2, 2, Some("late"))),
            "older than the tombstone"
        );
    }

    #[test]
    fn digests_find_exactly_the_buckets_that_differ() {
        let mut a = Store::new();
        let mut b = Store::new();
        for i in 0..200 {
            let r = rec(&format!("node/{i}"), 10, 1, Some("v"));
            a.apply(r.clone());
            b.apply(r);
        }
        assert!(a.differing(b.digests()).is_empty());
        b.apply(rec("node/7", 11, 2, Some("w")));
        let d = a.differing(b.digests());
        assert_eq!(d, vec![bucket_of("node/7") as u16]);
        for r in b.in_buckets(&d) {
            a.apply(r);
        }
        assert_eq!(a.root(), b.root());
        assert_eq!(a, b);
    }

    #[test]
    fn version_vectors_dominate_what_they_have_seen() {
        let mut a = Store::new();
        a.apply(rec("x", 5, 1, Some("v")));
        let mut b = a.clone();
        b.apply(rec("y", 6, 2, Some("v")));
        assert!(b.version_vector().dominates(a.version_vector()));
        assert!(!a.version_vector().dominates(b.version_vector()));
        assert!(b.version_vector().sum() > a.version_vector().sum());
    }
}
