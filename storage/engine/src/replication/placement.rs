//! Placement: which coordinators own a key, by weighted rendezvous hashing (HRW).
//!
//! Every member gets a score for the key, `weight / -ln(h)`, where `h` is a BLAKE3 hash of
//! (member id, key) mapped into the open interval (0, 1); the `rf` members with the highest
//! scores own the key, best first. That is the "weighted rendezvous" rule: with one owner per
//! key, a member's share of the keys is its weight over the total weight (`-ln(h)/w` is an
//! exponential variable of rate `w`, and the smallest of them is member `i`'s with probability
//! `w_i / sum w`); with `rf` owners, the owner set is a draw of `rf` members without
//! replacement, proportional to weight.
//!
//! No layout table: every coordinator computes the same owners from the same membership (the
//! hash is fixed, so the answer is the same in every process and on every architecture), and
//! a key's owner set changes only if a member that joined scores into its top `rf`, or a
//! member that left was in it. Adding or removing one member of `N` (equal weights) moves
//! about `rf/N` of the keys, each by one owner.
//!
//! A member of weight 0 owns nothing (how a drained coordinator is expressed); members are
//! identified by id, and a repeated id counts once (its first entry's weight).

use super::NodeId;

/// A coordinator as placement sees it: an id and a capacity weight (e.g. its storage capacity
/// in MB; only ratios matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Who.
    pub id: NodeId,
    /// Relative capacity; 0 = owns nothing (draining).
    pub weight: u64,
}

/// Domain separation for the placement hash (changing it reassigns every key: never do).
const PLACEMENT_KEY: [u8; 32] = *b"tunnelmesh.replication.hrw.v1...";

/// `h` in (0, 1) for a member and a key: the first 53 bits of a keyed BLAKE3 hash of
/// (member id, key), centred in its interval so that neither 0 nor 1 is reachable.
fn unit_hash(id: NodeId, key: &[u8]) -> f64 {
    let mut hasher = blake3::Hasher::new_keyed(&PLACEMENT_KEY);
    hasher.update(&id.0.to_le_bytes());
    hasher.update(key);
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    let bits = u64::from_le_bytes(first) >> 11; // 53 bits: exact in an f64
    (bits as f64 + 0.5) / (1u64 << 53) as f64
}

/// The weighted-HRW score of `member` for `key` (higher wins); `None` for weight 0.
pub fn score(member: Member, key: &[u8]) -> Option<f64> {
    if member.weight == 0 {
        return None;
    }
    let h = unit_hash(member.id, key);
    // ln(h) < 0 for h in (0, 1), so the score is positive and finite.
    Some(member.weight as f64 / -h.ln())
}

/// The owners of `key`: the `rf` members with the highest scores, best first (all members of
/// non-zero weight if there are fewer). Deterministic, independent of the order of `members`.
pub fn owners(key: &[u8], rf: usize, members: &[Member]) -> Vec<NodeId> {
    let mut scored: Vec<(f64, NodeId)> = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        if members[..i].iter().any(|earlier| earlier.id == m.id) {
            continue; // a repeated id counts once
        }
        if let Some(s) = score(*m, key) {
            scored.push((s, m.id));
        }
    }
    // Highest score first; equal scores (practically never) by id, so the order stays total.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.truncate(rf);
    scored.into_iter().map(|(_, id)| id).collect()
}

/// How a key's owner set changes between two memberships (what rebalancing must copy and,
/// once the new owners confirm the copies durable, may drop).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnerChange {
    /// Owners after that were not owners before: they need a copy.
    pub gained: Vec<NodeId>,
    /// Owners before that are not owners after: their copy may go only after every gained
    /// owner has confirmed its copy durable.
    pub lost: Vec<NodeId>,
}

impl OwnerChange {
    /// Whether the owner set is unchanged.
    pub fn is_empty(&self) -> bool {
        self.gained.is_empty() && self.lost.is_empty()
    }
}

/// The owner change of `key` from membership `before` to `after`.
pub fn owner_change(key: &[u8], rf: usize, before: &[Member], after: &[Member]) -> OwnerChange {
    let old = owners(key, rf, before);
    let new = owners(key, rf, after);
    OwnerChange {
        gained: new.iter().copied().filter(|n| !old.contains(n)).collect(),
        lost: old.iter().copied().filter(|n| !new.contains(n)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KEYS: usize = 20_000;

    fn members(n: u64) -> Vec<Member> {
        (1..=n)
            .map(|i| Member {
                id: NodeId(i * 7919),
                weight: 100,
            })
            .collect()
    }

    fn key(i: usize) -> Vec<u8> {
        format!("bucket/object-{i}").into_bytes()
    }

    /// Owners are distinct, `rf` of them, all members when there are fewer, none of weight 0.
    #[test]
    fn owners_are_distinct_and_rf_of_them() {
        let mut ms = members(5);
        ms.push(Member {
            id: NodeId(42),
            weight: 0,
        });
        for i in 0..2_000 {
            for rf in 1..=7 {
                let o = owners(&key(i), rf, &ms);
                assert_eq!(o.len(), rf.min(5), "rf {rf}");
                let mut d = o.clone();
                d.sort();
                d.dedup();
                assert_eq!(d.len(), o.len(), "duplicate owner in {o:?}");
                assert!(!o.contains(&NodeId(42)), "a weight-0 member owns {i}");
            }
        }
        assert!(owners(b"k", 3, &[]).is_empty());
    }

    /// The owner list is a prefix-stable ranking: the rf=2 owners are the first two rf=3 owners.
    #[test]
    fn smaller_rf_is_a_prefix() {
        let ms = members(6);
        for i in 0..1_000 {
            let o3 = owners(&key(i), 3, &ms);
            assert_eq!(owners(&key(i), 2, &ms), o3[..2]);
        }
    }

    /// A repeated id counts once.
    #[test]
    fn repeated_member_counts_once() {
        let mut ms = members(3);
        ms.push(ms[0]);
        for i in 0..500 {
            let o = owners(&key(i), 4, &ms);
            assert_eq!(o.len(), 3);
        }
    }

    /// Same answer whatever the order of the members (checked over every rotation and reversal).
    #[test]
    fn stable_under_member_order() {
        let ms = members(7);
        let reference: Vec<Vec<NodeId>> = (0..2_000).map(|i| owners(&key(i), 3, &ms)).collect();
        for r in 0..ms.len() {
            let mut p = ms.clone();
            p.rotate_left(r);
            if r % 2 == 1 {
                p.reverse();
            }
            for (i, want) in reference.iter().enumerate() {
                assert_eq!(&owners(&key(i), 3, &p), want, "rotation {r}, key {i}");
            }
        }
    }

    /// Fixed values: the hash must give the same owners in every process and on every
    /// architecture (a change here reassigns every key of every deployed cluster).
    #[test]
    fn deterministic_across_processes() {
        let ms = members(5);
        let got: Vec<Vec<u64>> = ["a", "logs/2026/12/07", "photos/cat.jpg"]
            .iter()
            .map(|k| owners(k.as_bytes(), 3, &ms).iter().map(|n| n.0).collect())
            .collect();
        // Recomputed from first principles below, not from `owners`.
        for (k, o) in ["a", "logs/2026/12/07", "photos/cat.jpg"].iter().zip(&got) {
            let mut by_hand: Vec<(f64, u64)> = ms
                .iter()
                .map(|m| {
                    let d = blake3::keyed_hash(
                        &PLACEMENT_KEY,
                        &[&m.id.0.to_le_bytes()[..], k.as_bytes()].concat(),
                    );
                    let x = u64::from_le_bytes(d.as_bytes()[..8].try_into().unwrap()) >> 11;
                    let h = (x as f64 + 0.5) / 9_007_199_254_740_992.0;
                    (100.0 / -h.ln(), m.id.0)
                })
                .collect();
            by_hand.sort_by(|a, b| b.0.total_cmp(&a.0));
            let want: Vec<u64> = by_hand.iter().take(3).map(|x| x.1).collect();
            assert_eq!(o, &want, "key {k}");
        }
        // And pinned, so that a change of hash, key or mapping is noticed.
        assert_eq!(
            got,
            pinned_owners(),
            "placement changed: every deployed key would move"
        );
    }

    fn pinned_owners() -> Vec<Vec<u64>> {
        PINNED.iter().map(|o| o.to_vec()).collect()
    }
    const PINNED: [[u64; 3]; 3] = [
        [23757, 31676, 15838],
        [7919, 15838, 31676],
        [23757, 31676, 15838],
    ];

    /// Adding one member to N moves only keys whose owner set gains the new member (one owner
    /// each), about rf/(N+1) of them; removing one moves only keys it owned, about rf/N.
    #[test]
    fn join_and_leave_move_about_rf_over_n() {
        for (n, rf) in [(3u64, 2usize), (5, 3), (9, 3), (4, 1)] {
            let before = members(n);
            let mut after = before.clone();
            let newcomer = Member {
                id: NodeId(1_000_003),
                weight: 100,
            };
            after.push(newcomer);
            let mut moved = 0;
            for i in 0..KEYS {
                let c = owner_change(&key(i), rf, &before, &after);
                if !c.is_empty() {
                    moved += 1;
                    assert_eq!(c.gained, vec![newcomer.id], "join moved key {i} elsewhere");
                    assert_eq!(c.lost.len(), 1, "key {i}");
                }
            }
            let frac = moved as f64 / KEYS as f64;
            let want = rf as f64 / (n + 1) as f64;
            assert!(
                (frac - want).abs() < 0.02,
                "join to {}: moved {frac:.4}, want {want:.4}",
                n + 1
            );

            // Leave: remove the second member.
            let gone = before[1].id;
            let fewer: Vec<Member> = before.iter().copied().filter(|m| m.id != gone).collect();
            let mut moved = 0;
            for i in 0..KEYS {
                let c = owner_change(&key(i), rf, &before, &fewer);
                if !c.is_empty() {
                    moved += 1;
                    assert_eq!(c.lost, vec![gone], "leave moved key {i} off a survivor");
                    // With rf = N nobody is left to take its place.
                    assert!(c.gained.len() == 1 || (n as usize) <= rf, "key {i}");
                }
            }
            let frac = moved as f64 / KEYS as f64;
            let want = (rf as f64 / n as f64).min(1.0);
            assert!(
                (frac - want).abs() < 0.02,
                "leave from {n}: moved {frac:.4}, want {want:.4}"
            );
        }
    }

    /// With one owner per key, shares follow weights: weights 1:2:1:4 get 1/8, 2/8, 1/8, 4/8.
    #[test]
    fn shares_follow_weights() {
        let ms: Vec<Member> = [(1, 100), (2, 200), (3, 100), (4, 400)]
            .iter()
            .map(|&(id, weight)| Member {
                id: NodeId(id),
                weight,
            })
            .collect();
        let mut count: HashMap<NodeId, usize> = HashMap::new();
        for i in 0..KEYS {
            *count.entry(owners(&key(i), 1, &ms)[0]).or_default() += 1;
        }
        for m in &ms {
            let got = count[&m.id] as f64 / KEYS as f64;
            let want = m.weight as f64 / 800.0;
            assert!(
                (got - want).abs() < 0.015,
                "member {:?}: share {got:.4}, want {want:.4}",
                m.id
            );
        }
        // Twice the capacity, about twice the keys.
        let ratio = count[&NodeId(2)] as f64 / count[&NodeId(1)] as f64;
        assert!(
            (1.8..2.2).contains(&ratio),
            "2x weight got {ratio:.3}x the keys"
        );
    }

    /// With rf = 3 over equal weights every member holds about rf/N of the keys (the 1.1 x RF/N
    /// bound the issue sets for a coordinator's share).
    #[test]
    fn equal_weights_balance_with_rf() {
        let (n, rf) = (5u64, 3usize);
        let ms = members(n);
        let mut count: HashMap<NodeId, usize> = HashMap::new();
        for i in 0..KEYS {
            for o in owners(&key(i), rf, &ms) {
                *count.entry(o).or_default() += 1;
            }
        }
        let fair = KEYS as f64 * rf as f64 / n as f64;
        for (id, c) in count {
            assert!(
                (c as f64) < 1.1 * fair && (c as f64) > 0.9 * fair,
                "{id:?}: {c} keys, fair {fair}"
            );
        }
    }

    /// Draining (weight 0) moves exactly the keys the drained member owned.
    #[test]
    fn drain_moves_only_its_keys() {
        let before = members(4);
        let mut after = before.clone();
        after[2].weight = 0;
        for i in 0..5_000 {
            let c = owner_change(&key(i), 2, &before, &after);
            let owned = owners(&key(i), 2, &before).contains(&before[2].id);
            assert_eq!(!c.is_empty(), owned, "key {i}");
            if owned {
                assert_eq!(c.lost, vec![before[2].id]);
            }
        }
    }
}
