//! Layer 3b, replication: beside the object layer (issue 20, the sans-IO core only).
//!
//! Replicating objects (and their metadata) across coordinators. Rule for what lands here: it
//! may import the object layer and the layers below it (`crate::object`, `crate::chunks`,
//! `crate::db`); the object layer never imports it, and the file-system view reaches it only
//! through the object layer.
//!
//! What is here so far is the core, with no I/O and no clock reads (callers pass `now` and
//! what they received; the core returns decisions):
//! - [`placement`]: which coordinators own a key (weighted rendezvous hashing);
//! - [`vv`]: version vectors with dots, and the deterministic resolution of concurrent
//!   versions (every loser kept);
//! - [`write`](mod@write): one replicated write (quorums, `x-tm-replicas`, hinted handoffs);
//! - [`read`]: one replicated read (whom to ask, when to answer, read repair);
//! - [`antientropy`]: what two replicas of a key must send each other.
//!
//! Beside the core, two storage-level pieces: [`local`] (what the driver does to this store:
//! stamped versions with their hints in one transaction, export/apply of versions, chunks by
//! content id) and [`hook`] (the interface the S3 layer calls, implemented by the driver in
//! tm-coord, `control/coord/src/objrep/`, which maps the cluster's `Origin` to [`NodeId`] and
//! its HLC `Stamp` to [`vv::Hlc`]). docs/ARCHITECTURE.md, "Replication", has the design.

pub mod antientropy;
pub mod hook;
pub mod local;
pub mod placement;
pub mod read;
pub mod vv;
pub mod write;

#[cfg(test)]
mod sim;

/// A coordinator's identity in placement, version vectors and replication messages (the
/// cluster layer's `Origin`, a number derived from the coordinator's static key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

/// How a bucket trades availability against consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read and write quorums (W = floor(RF/2)+1, R = RF-W+1, so R+W > RF): a read that
    /// starts after a write was acknowledged sees it, while a majority of owners is up.
    Consistent,
    /// A write is acknowledged once durable on one coordinator together with hinted-handoff
    /// records for the other owners (in the same transaction); a read answers from the first
    /// replica. Keeps working with any one coordinator up; reads may be stale until repair.
    Available,
}

/// Write and read quorums of a mode for replication factor `rf` (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorums {
    /// Owners per key.
    pub rf: usize,
    /// Durable copies on owners before a consistent write is acknowledged.
    pub w: usize,
    /// Replies from owners before a consistent read answers.
    pub r: usize,
}

impl Quorums {
    /// The quorums for `mode` with `rf` owners (`rf` 0 is taken as 1).
    pub fn new(mode: Mode, rf: usize) -> Quorums {
        let rf = rf.max(1);
        match mode {
            Mode::Consistent => {
                let w = rf / 2 + 1;
                Quorums {
                    rf,
                    w,
                    r: rf - w + 1,
                }
            }
            Mode::Available => Quorums { rf, w: 1, r: 1 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistent_quorums_intersect() {
        for rf in 1..=9 {
            let q = Quorums::new(Mode::Consistent, rf);
            assert_eq!(q.w, rf / 2 + 1);
            assert!(
                q.r + q.w > rf,
                "rf {rf}: r {} + w {} must exceed rf",
                q.r,
                q.w
            );
            assert!(q.r <= rf && q.w <= rf);
        }
        // RF=3: one of three may be down for both reads and writes.
        let q = Quorums::new(Mode::Consistent, 3);
        assert_eq!((q.w, q.r), (2, 2));
        assert_eq!(
            Quorums::new(Mode::Available, 3),
            Quorums { rf: 3, w: 1, r: 1 }
        );
    }
}
