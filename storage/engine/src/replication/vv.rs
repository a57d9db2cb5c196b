//! Version vectors with dots, and the resolution of concurrent versions.
//!
//! Every version of an object (a PUT or a delete marker) is made by one coordinator and
//! carries:
//! - a **dot** `(coordinator, counter)`: its identity, unique mesh-wide (the coordinator takes
//!   the counter from its own persisted sequence, above everything the key's context holds for
//!   it: [`VersionVector::next_dot`]); the S3 `versionId` is derived from it;
//! - a **version vector**: the causal context the coordinator had for the key when it made the
//!   version (the merge of the vectors of every version of the key it held) plus the dot;
//! - a **hybrid clock** stamp ([`Hlc`], the cluster layer's HLC) used only to order versions
//!   that are concurrent.
//!
//! Version `a` dominates `b` when `a`'s vector is at least `b`'s at every coordinator and they
//! differ: `a` was made by a coordinator that had seen `b`. Neither dominating the other means
//! concurrent (made on different sides of a partition, or at the same time on two
//! coordinators). A [`VersionSet`] holds every version of a key a replica knows; its
//! [`Resolution`] picks the current version deterministically: among the versions no other
//! dominates, the largest `(clock, coordinator, counter)`. The other undominated versions are
//! concurrent losers, kept (the caller stores them as non-current S3 versions); dominated ones
//! are superseded (non-current versions, as an overwrite makes them). The result depends only
//! on the set, never on the order versions arrived in, so replicas that hold the same versions
//! agree on the current one.

use super::NodeId;
use std::collections::BTreeMap;

/// A hybrid logical clock stamp without its origin (the origin is the dot's coordinator):
/// `wall_ms` then `logical`, as the cluster layer's HLC stamps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (the largest physical time the stamper had seen).
    pub wall_ms: u64,
    /// Events within the same millisecond.
    pub logical: u32,
}

/// The identity of one version: the coordinator that made it and its counter there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    /// The coordinator that made the version.
    pub node: NodeId,
    /// Its counter on that coordinator (from 1).
    pub counter: u64,
}

impl Dot {
    /// The S3 `versionId` of this version: 32 hex digits, coordinator then counter.
    pub fn version_id(&self) -> String {
        format!("{:016x}{:016x}", self.node.0, self.counter)
    }

    /// Parses a `versionId` made by [`Dot::version_id`]; `None` for anything else.
    pub fn parse_version_id(s: &str) -> Option<Dot> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let node = u64::from_str_radix(&s[..16], 16).ok()?;
        let counter = u64::from_str_radix(&s[16..], 16).ok()?;
        (counter > 0).then_some(Dot {
            node: NodeId(node),
            counter,
        })
    }
}

/// How two versions (or vectors) relate causally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// The same.
    Equal,
    /// The left one has seen the right one (and more).
    Dominates,
    /// The right one has seen the left one (and more).
    Dominated,
    /// Neither has seen the other.
    Concurrent,
}

impl Causality {
    /// The relation seen from the other side.
    pub fn reverse(self) -> Causality {
        match self {
            Causality::Dominates => Causality::Dominated,
            Causality::Dominated => Causality::Dominates,
            other => other,
        }
    }
}

/// A version vector: per coordinator, the largest counter of its versions of this key that
/// are in the causal past. Absent entries are 0.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    /// The empty vector (before every version).
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The entry of `node` (0 when absent).
    pub fn get(&self, node: NodeId) -> u64 {
        self.0.get(&node).copied().unwrap_or(0)
    }

    /// Raises the entry of `node` to at least `counter`.
    pub fn observe(&mut self, node: NodeId, counter: u64) {
        if counter > 0 {
            let e = self.0.entry(node).or_insert(0);
            *e = (*e).max(counter);
        }
    }

    /// Whether the version named by `dot` is in this vector's causal past.
    pub fn contains(&self, dot: Dot) -> bool {
        self.get(dot.node) >= dot.counter
    }

    /// Makes this vector the least upper bound of itself and `other` (entry-wise maximum).
    pub fn merge(&mut self, other: &VersionVector) {
        for (&n, &c) in &other.0 {
            self.observe(n, c);
        }
    }

    /// The dot of a new version made by `node` with this vector as context: a counter above
    /// both this vector's entry for `node` and `last_used`, the node's persisted sequence
    /// (which makes dots unique even for keys the node no longer holds).
    pub fn next_dot(&self, node: NodeId, last_used: u64) -> Dot {
        Dot {
            node,
            counter: self.get(node).max(last_used) + 1,
        }
    }

    /// Entries, by coordinator.
    pub fn entries(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.0.iter().map(|(&n, &c)| (n, c))
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut ge = true; // self >= other everywhere
        let mut le = true; // self <= other everywhere
        for (&n, &c) in &self.0 {
            let o = other.get(n);
            ge &= c >= o;
            le &= c <= o;
        }
        for (&n, &o) in &other.0 {
            let c = self.get(n);
            ge &= c >= o;
            le &= c <= o;
        }
        match (ge, le) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::Dominates,
            (false, true) => Causality::Dominated,
            (false, false) => Causality::Concurrent,
        }
    }
}

/// One version of an object, as replication sees it (the caller keeps the manifest or the
/// delete marker it names, by dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Identity.
    pub dot: Dot,
    /// Causal context plus the dot itself.
    pub vv: VersionVector,
    /// When it was made (orders concurrent versions).
    pub clock: Hlc,
    /// A delete marker rather than data.
    pub deleted: bool,
}

impl Version {
    /// A new version made by `node` at `clock`, having seen `context` (the merge of the vectors
    /// of every version of the key the node holds: [`VersionSet::context`]); `last_used` is the
    /// node's persisted dot sequence (store the returned dot's counter as the new one).
    pub fn new(
        context: &VersionVector,
        node: NodeId,
        last_used: u64,
        clock: Hlc,
        deleted: bool,
    ) -> Version {
        let dot = context.next_dot(node, last_used);
        let mut vv = context.clone();
        vv.observe(dot.node, dot.counter);
        Version {
            dot,
            vv,
            clock,
            deleted,
        }
    }

    /// How `self` relates to `other`: by their dots first (the same dot is the same version),
    /// then by their vectors. Two distinct versions with equal vectors cannot arise from
    /// [`Version::new`]; should it happen they count as concurrent (both are kept).
    pub fn compare(&self, other: &Version) -> Causality {
        if self.dot == other.dot {
            return Causality::Equal;
        }
        match self.vv.compare(&other.vv) {
            Causality::Equal => Causality::Concurrent,
            c => c,
        }
    }

    /// The order of concurrent versions: the larger wins (largest clock, then coordinator id,
    /// then counter; total, since dots are unique).
    pub fn rank(&self) -> (Hlc, NodeId, u64) {
        (self.clock, self.dot.node, self.dot.counter)
    }
}

/// Which version of a key is current, and what the others are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolution {
    /// The current version (it may be a delete marker: then the key reads as absent); `None`
    /// when the set is empty.
    pub current: Option<Dot>,
    /// Versions concurrent with the current one that lost the tie-break: kept, non-current.
    /// Best first.
    pub concurrent: Vec<Dot>,
    /// Versions some other version dominates (overwritten): non-current. Newest first.
    pub superseded: Vec<Dot>,
}

/// Every version of one key that a replica holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionSet {
    versions: BTreeMap<Dot, Version>,
}

impl VersionSet {
    /// The empty set.
    pub fn new() -> VersionSet {
        VersionSet::default()
    }

    /// Adds a version; false if it was already there (same dot: versions are immutable).
    pub fn insert(&mut self, v: Version) -> bool {
        if self.versions.contains_key(&v.dot) {
            return false;
        }
        self.versions.insert(v.dot, v);
        true
    }

    /// Adds every version of `other`; returns how many were new.
    pub fn merge(&mut self, other: &VersionSet) -> usize {
        other.iter().filter(|v| self.insert((*v).clone())).count()
    }

    /// Whether the version `dot` is held.
    pub fn contains(&self, dot: Dot) -> bool {
        self.versions.contains_key(&dot)
    }

    /// The version `dot`.
    pub fn get(&self, dot: Dot) -> Option<&Version> {
        self.versions.get(&dot)
    }

    /// Versions, by dot.
    pub fn iter(&self) -> impl Iterator<Item = &Version> {
        self.versions.values()
    }

    /// Dots, in order.
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.versions.keys().copied()
    }

    /// How many versions.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether no version is held.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The causal context for a new version of this key: the merge of every held vector.
    pub fn context(&self) -> VersionVector {
        let mut ctx = VersionVector::new();
        for v in self.versions.values() {
            ctx.merge(&v.vv);
        }
        ctx
    }

    /// Versions held here and not in `other` (what `other` needs from us).
    pub fn missing_from(&self, other: &VersionSet) -> Vec<Version> {
        self.iter()
            .filter(|v| !other.contains(v.dot))
            .cloned()
            .collect()
    }

    /// The current version and the non-current ones (see the module documentation).
    pub fn resolve(&self) -> Resolution {
        let all: Vec<&Version> = self.versions.values().collect();
        let (mut maximal, mut dominated): (Vec<&Version>, Vec<&Version>) = all
            .iter()
            .partition(|v| !all.iter().any(|o| o.compare(v) == Causality::Dominates));
        maximal.sort_by_key(|v| std::cmp::Reverse(v.rank()));
        dominated.sort_by_key(|v| std::cmp::Reverse(v.rank()));
        let mut maximal = maximal.into_iter().map(|v| v.dot);
        Resolution {
            current: maximal.next(),
            concurrent: maximal.collect(),
            superseded: dominated.into_iter().map(|v| v.dot).collect(),
        }
    }

    /// The current version, if any.
    pub fn current(&self) -> Option<&Version> {
        self.resolve().current.and_then(|d| self.get(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(i: u64) -> NodeId {
        NodeId(i)
    }

    fn vv(entries: &[(u64, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(node, c) in entries {
            v.observe(n(node), c);
        }
        v
    }

    #[test]
    fn compare_basic() {
        assert_eq!(vv(&[(1, 2)]).compare(&vv(&[(1, 2)])), Causality::Equal);
        assert_eq!(
            vv(&[(1, 2), (2, 1)]).compare(&vv(&[(1, 2)])),
            Causality::Dominates
        );
        assert_eq!(vv(&[(1, 1)]).compare(&vv(&[(1, 2)])), Causality::Dominated);
        assert_eq!(vv(&[(1, 2)]).compare(&vv(&[(2, 1)])), Causality::Concurrent);
        assert_eq!(
            VersionVector::new().compare(&VersionVector::new()),
            Causality::Equal
        );
        assert_eq!(
            vv(&[(1, 0)]),
            VersionVector::new(),
            "zero entries are absent"
        );
    }

    #[test]
    fn version_id_round_trips() {
        let d = Dot {
            node: n(0xdead_beef),
            counter: 42,
        };
        assert_eq!(d.version_id().len(), 32);
        assert_eq!(Dot::parse_version_id(&d.version_id()), Some(d));
        assert_eq!(Dot::parse_version_id("null"), None);
        assert_eq!(
            Dot::parse_version_id(&"0".repeat(32)),
            None,
            "counter 0 is no version"
        );
        assert_eq!(Dot::parse_version_id(&"g".repeat(32)), None);
    }

    /// An overwrite on one coordinator dominates what it had; writes on two sides of a
    /// partition are concurrent, the larger clock wins, the loser is kept; a later write that
    /// has seen both dominates both.
    #[test]
    fn overwrite_partition_and_heal() {
        let (a, b) = (n(1), n(2));
        let mut at_a = VersionSet::new();
        let v1 = Version::new(
            &at_a.context(),
            a,
            0,
            Hlc {
                wall_ms: 10,
                logical: 0,
            },
            false,
        );
        at_a.insert(v1.clone());
        let mut at_b = at_a.clone();
        // Partition: both overwrite.
        let va = Version::new(
            &at_a.context(),
            a,
            1,
            Hlc {
                wall_ms: 20,
                logical: 0,
            },
            false,
        );
        let vb = Version::new(
            &at_b.context(),
            b,
            0,
            Hlc {
                wall_ms: 25,
                logical: 0,
            },
            true,
        );
        assert_eq!(va.compare(&v1), Causality::Dominates);
        assert_eq!(va.compare(&vb), Causality::Concurrent);
        at_a.insert(va.clone());
        at_b.insert(vb.clone());
        // Heal.
        at_a.merge(&at_b);
        at_b.merge(&at_a);
        assert_eq!(at_a, at_b);
        let r = at_a.resolve();
        assert_eq!(
            r.current,
            Some(vb.dot),
            "the larger clock wins (a delete marker here)"
        );
        assert_eq!(r.concurrent, vec![va.dot], "the loser is kept");
        assert_eq!(r.superseded, vec![v1.dot]);
        // A write after the heal has seen both.
        let v3 = Version::new(
            &at_a.context(),
            a,
            va.dot.counter,
            Hlc {
                wall_ms: 30,
                logical: 0,
            },
            false,
        );
        assert_eq!(v3.compare(&va), Causality::Dominates);
        assert_eq!(v3.compare(&vb), Causality::Dominates);
        at_a.insert(v3.clone());
        let r = at_a.resolve();
        assert_eq!(r.current, Some(v3.dot));
        assert!(r.concurrent.is_empty());
        assert_eq!(r.superseded.len(), 3);
    }

    /// A dominating version wins even with a smaller clock (a coordinator whose clock is
    /// behind still overwrites what it has seen).
    #[test]
    fn dominance_beats_clock() {
        let mut s = VersionSet::new();
        let v1 = Version::new(
            &s.context(),
            n(1),
            0,
            Hlc {
                wall_ms: 100,
                logical: 0,
            },
            false,
        );
        s.insert(v1);
        let v2 = Version::new(
            &s.context(),
            n(2),
            0,
            Hlc {
                wall_ms: 5,
                logical: 0,
            },
            false,
        );
        s.insert(v2.clone());
        assert_eq!(s.resolve().current, Some(v2.dot));
    }

    /// Equal clocks are broken by coordinator id.
    #[test]
    fn tie_break_by_coordinator() {
        let mut s = VersionSet::new();
        let c = Hlc {
            wall_ms: 7,
            logical: 3,
        };
        let lo = Version::new(&VersionVector::new(), n(3), 0, c, false);
        let hi = Version::new(&VersionVector::new(), n(9), 0, c, false);
        s.insert(hi.clone());
        s.insert(lo.clone());
        let r = s.resolve();
        assert_eq!((r.current, r.concurrent), (Some(hi.dot), vec![lo.dot]));
    }

    /// next_dot stays above the persisted sequence and the context.
    #[test]
    fn next_dot_is_fresh() {
        let ctx = vv(&[(1, 5)]);
        assert_eq!(ctx.next_dot(n(1), 3).counter, 6);
        assert_eq!(ctx.next_dot(n(1), 9).counter, 10);
        assert_eq!(ctx.next_dot(n(2), 0).counter, 1);
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((1u64..4, 0u64..4), 0..4).prop_map(|e| vv(&e))
    }

    /// A random history: writes on 3 coordinators (each with the context of what it holds) and
    /// syncs between them; returns every version made.
    #[derive(Debug, Clone)]
    enum Op {
        Write { at: usize, wall: u64, deleted: bool },
        Sync { from: usize, to: usize },
    }

    fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            (0usize..3, 0u64..20, any::<bool>()).prop_map(|(at, wall, deleted)| Op::Write {
                at,
                wall,
                deleted
            }),
            (0usize..3, 0usize..3).prop_map(|(from, to)| Op::Sync { from, to }),
        ];
        proptest::collection::vec(op, 1..40)
    }

    fn run(ops: &[Op]) -> (Vec<VersionSet>, Vec<Version>) {
        let mut sets = vec![VersionSet::new(); 3];
        let mut seq = [0u64; 3];
        let mut made = Vec::new();
        for op in ops {
            match *op {
                Op::Write { at, wall, deleted } => {
                    let v = Version::new(
                        &sets[at].context(),
                        n(at as u64 + 1),
                        seq[at],
                        Hlc {
                            wall_ms: wall,
                            logical: 0,
                        },
                        deleted,
                    );
                    seq[at] = v.dot.counter;
                    // Causality: it dominates everything its coordinator held.
                    for old in sets[at].iter() {
                        assert_eq!(v.compare(old), Causality::Dominates);
                    }
                    sets[at].insert(v.clone());
                    made.push(v);
                }
                Op::Sync { from, to } => {
                    let src = sets[from].clone();
                    sets[to].merge(&src);
                }
            }
        }
        (sets, made)
    }

    proptest! {
        #[test]
        fn compare_is_antisymmetric(a in arb_vv(), b in arb_vv()) {
            prop_assert_eq!(a.compare(&b), b.compare(&a).reverse());
            prop_assert_eq!(a.compare(&b) == Causality::Equal, a == b);
        }

        #[test]
        fn dominance_is_transitive(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            if a.compare(&b) == Causality::Dominates && b.compare(&c) == Causality::Dominates {
                prop_assert_eq!(a.compare(&c), Causality::Dominates);
            }
        }

        #[test]
        fn merge_is_the_least_upper_bound(a in arb_vv(), b in arb_vv()) {
            let mut m = a.clone();
            m.merge(&b);
            prop_assert!(matches!(m.compare(&a), Causality::Dominates | Causality::Equal));
            prop_assert!(matches!(m.compare(&b), Causality::Dominates | Causality::Equal));
            for (node, c) in m.entries() {
                prop_assert_eq!(c, a.get(node).max(b.get(node)), "not the least bound");
            }
            let mut m2 = b.clone();
            m2.merge(&a);
            prop_assert_eq!(m, m2);
        }

        /// Versions from real histories: dominance is antisymmetric and transitive, dots are
        /// unique, and the resolution of a set does not depend on the order its versions arrived.
        #[test]
        fn resolution_is_order_independent(ops in arb_ops(), seed in any::<u64>()) {
            let (_, made) = run(&ops);
            let mut dots: Vec<Dot> = made.iter().map(|v| v.dot).collect();
            dots.sort();
            dots.dedup();
            prop_assert_eq!(dots.len(), made.len(), "a dot was made twice");
            for a in &made {
                for b in &made {
                    prop_assert_eq!(a.compare(b), b.compare(a).reverse());
                    for c in &made {
                        if a.compare(b) == Causality::Dominates && b.compare(c) == Causality::Dominates {
                            prop_assert_eq!(a.compare(c), Causality::Dominates);
                        }
                    }
                }
            }
            let mut forward = VersionSet::new();
            for v in &made { forward.insert(v.clone()); }
            // A pseudo-random permutation of arrival.
            let mut shuffled = made.clone();
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut other = VersionSet::new();
            for v in shuffled { other.insert(v); }
            let r = forward.resolve();
            prop_assert_eq!(&r, &other.resolve());
            // Every version is accounted for exactly once: nothing is dropped.
            let total = r.current.iter().count() + r.concurrent.len() + r.superseded.len();
            prop_assert_eq!(total, made.len());
            // The current version is dominated by nobody, and outranks every concurrent one.
            if let Some(cur) = r.current {
                let cur = forward.get(cur).unwrap();
                for v in &made {
                    prop_assert_ne!(v.compare(cur), Causality::Dominates);
                }
                for d in &r.concurrent {
                    prop_assert!(forward.get(*d).unwrap().rank() < cur.rank());
                }
            }
        }

        /// After every replica has synced with every other, all agree on the resolution.
        #[test]
        fn synced_replicas_agree(ops in arb_ops()) {
            let (mut sets, _) = run(&ops);
            for _ in 0..2 {
                for from in 0..3 {
                    for to in 0..3 {
                        let s = sets[from].clone();
                        sets[to].merge(&s);
                    }
                }
            }
            prop_assert_eq!(sets[0].resolve(), sets[1].resolve());
            prop_assert_eq!(sets[1].resolve(), sets[2].resolve());
        }
    }
}
