//! Anti-entropy: how two replicas find and exchange what one has and the other lacks.
//!
//! Versions are immutable and named by their dots, so two replicas of a key agree exactly when
//! they hold the same dots. The key space is cut into [`PARTITIONS`] partitions (by the first
//! byte of a hash of the key, independent of placement); each partition's digest is the XOR of
//! its keys' digests (a key's digest hashes the key and its sorted dots), so it is updated
//! incrementally when a version is stored (XOR out the key's old digest, XOR in the new one)
//! and does not depend on the order keys were stored in. Two replicas compare their 256
//! partition digests ([`differing_partitions`]), list `(key, dots)` for the partitions that
//! differ, and [`plan`] says, per key, which versions each side must send the other.
//!
//! The digests cover every version a replica holds (current, non-current, delete markers), so
//! repair never drops a version: it only ever adds the missing ones on both sides.

use super::vv::{Dot, VersionSet};

/// Partitions of the key space per digest table.
pub const PARTITIONS: usize = 256;

/// A digest: 32 bytes.
pub type Digest = [u8; 32];

/// The partition of a key.
pub fn partition(key: &[u8]) -> usize {
    let h = blake3::Hasher::new_derive_key("tunnelmesh replication anti-entropy partition v1")
        .update(key)
        .finalize();
    h.as_bytes()[0] as usize
}

/// The digest of one key's versions (all zero for none: such a key contributes nothing).
pub fn key_digest(key: &[u8], versions: &VersionSet) -> Digest {
    if versions.is_empty() {
        return [0; 32];
    }
    let mut h = blake3::Hasher::new_derive_key("tunnelmesh replication anti-entropy key v1");
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    for d in versions.dots() {
        h.update(&d.node.0.to_le_bytes());
        h.update(&d.counter.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

/// One replica's partition digests, kept up to date as versions are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestTable {
    parts: Vec<Digest>,
}

impl Default for DigestTable {
    fn default() -> DigestTable {
        DigestTable {
            parts: vec![[0; 32]; PARTITIONS],
        }
    }
}

impl DigestTable {
    /// All partitions empty.
    pub fn new() -> DigestTable {
        DigestTable::default()
    }

    /// A key's versions changed from `before` to `after` (the sets, before and after storing).
    pub fn update(&mut self, key: &[u8], before: &VersionSet, after: &VersionSet) {
        let p = &mut self.parts[partition(key)];
        let old = key_digest(key, before);
        let new = key_digest(key, after);
        for i in 0..32 {
            p[i] ^= old[i] ^ new[i];
        }
    }

    /// The digest of partition `p`.
    pub fn get(&self, p: usize) -> Digest {
        self.parts[p]
    }
}

/// Partitions whose digests differ.
pub fn differing_partitions(a: &DigestTable, b: &DigestTable) -> Vec<usize> {
    (0..PARTITIONS)
        .filter(|&p| a.parts[p] != b.parts[p])
        .collect()
}

/// What two replicas of one key must send each other.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exchange {
    /// Dots we hold and the peer lacks: send them.
    pub send: Vec<Dot>,
    /// Dots the peer holds and we lack: ask for them.
    pub fetch: Vec<Dot>,
}

/// Compare our versions of a key with the dots the peer listed for it.
pub fn plan(ours: &VersionSet, theirs: &[Dot]) -> Exchange {
    Exchange {
        send: ours.dots().filter(|d| !theirs.contains(d)).collect(),
        fetch: theirs
            .iter()
            .copied()
            .filter(|d| !ours.contains(*d))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::vv::{Hlc, Version, VersionVector};
    use super::super::NodeId;
    use super::*;

    fn v(node: u64, counter: u64) -> Version {
        Version::new(
            &VersionVector::new(),
            NodeId(node),
            counter - 1,
            Hlc::default(),
            false,
        )
    }

    fn store(
        table: &mut DigestTable,
        sets: &mut std::collections::BTreeMap<Vec<u8>, VersionSet>,
        key: &[u8],
        ver: Version,
    ) {
        let before = sets.get(key).cloned().unwrap_or_default();
        let mut after = before.clone();
        after.insert(ver);
        table.update(key, &before, &after);
        sets.insert(key.to_vec(), after);
    }

    /// Same versions in any order: same digests; one missing version: exactly its partition
    /// differs, and the plan sends exactly it.
    #[test]
    fn digests_find_the_difference() {
        let keys: Vec<Vec<u8>> = (0..500).map(|i| format!("k{i}").into_bytes()).collect();
        let (mut ta, mut tb) = (DigestTable::new(), DigestTable::new());
        let (mut sa, mut sb) = (Default::default(), Default::default());
        for (i, k) in keys.iter().enumerate() {
            store(&mut ta, &mut sa, k, v(1, i as u64 + 1));
            store(&mut ta, &mut sa, k, v(2, i as u64 + 1));
        }
        for (i, k) in keys.iter().enumerate().rev() {
            store(&mut tb, &mut sb, k, v(2, i as u64 + 1));
            store(&mut tb, &mut sb, k, v(1, i as u64 + 1));
        }
        assert!(differing_partitions(&ta, &tb).is_empty());
        assert_ne!(ta, DigestTable::new());

        let extra = v(3, 1);
        store(&mut ta, &mut sa, b"k42", extra.clone());
        assert_eq!(differing_partitions(&ta, &tb), vec![partition(b"k42")]);
        let theirs: Vec<Dot> = sb[&b"k42".to_vec()].dots().collect();
        let x = plan(&sa[&b"k42".to_vec()], &theirs);
        assert_eq!(x.send, vec![extra.dot]);
        assert!(x.fetch.is_empty());
        let ours: Vec<Dot> = sa[&b"k42".to_vec()].dots().collect();
        assert_eq!(plan(&sb[&b"k42".to_vec()], &ours).fetch, vec![extra.dot]);

        // Storing it on B makes the tables equal again.
        store(&mut tb, &mut sb, b"k42", extra);
        assert!(differing_partitions(&ta, &tb).is_empty());
    }

    #[test]
    fn partitions_spread() {
        let mut seen = vec![0usize; PARTITIONS];
        for i in 0..20_000 {
            seen[partition(format!("obj/{i}").as_bytes())] += 1;
        }
        assert!(seen.iter().all(|&c| c > 30 && c < 130), "{seen:?}");
    }
}
