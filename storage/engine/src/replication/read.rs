//! One replicated read (GET/HEAD metadata lookup), as a state machine without I/O.
//!
//! The coordinator serving a GET asks the key's owners for their [`VersionSet`] (version
//! metadata only: the object's bytes are fetched afterwards from a replica that holds the
//! chosen version), feeds each reply or failure to a [`ReadRound`], and gets back:
//!
//! - [`ReadAction::Ask`]: which replicas to ask (every owner, in parallel: metadata is small);
//! - [`ReadAction::Answer`]: the merged versions to answer from, once enough replied —
//!   `consistent`: `R = RF - W + 1` owners (so the answer includes every write acknowledged
//!   by `W` owners before the read started); `available`: the first reply that holds any
//!   version, or, if every reply is empty, when all asked replicas answered or failed (or at
//!   the deadline, with at least one reply);
//! - [`ReadAction::Fail`]: too few replies (503);
//! - [`ReadAction::Repair`] (read repair): after answering, each replica that replied gets the
//!   versions the others had and it lacked, as soon as the round knows of them (late replies
//!   included).
//!
//! A non-owner that holds versions for the key (a hint holder in available mode) may add its
//! set as a reply too; it counts toward nothing but the merged answer.

use super::vv::{Dot, Version, VersionSet};
use super::{Mode, NodeId, Quorums};
use std::collections::{BTreeMap, BTreeSet};

/// A reply to a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEvent {
    /// `node` holds these versions of the key (empty: none).
    Reply(NodeId, VersionSet),
    /// `node` could not answer (error reply, link down).
    Failed(NodeId),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadAction {
    /// Ask `node` for its versions of the key.
    Ask(NodeId),
    /// Answer the client from these versions (resolve them for the current one).
    Answer(VersionSet),
    /// Answer the client with a failure (503, retry).
    Fail {
        /// Replies that came.
        replies: usize,
        /// How many were needed.
        needed: usize,
    },
    /// Send these versions (with their data) to `to`, which lacks them.
    Repair {
        /// The replica to repair.
        to: NodeId,
        /// What it lacks.
        versions: Vec<Version>,
    },
}

/// Where the round is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadState {
    /// Not yet answered.
    Pending,
    /// Answered (successfully); still repairing from late replies.
    Answered,
    /// Failed.
    Failed,
    /// Every asked replica answered or the deadline passed.
    Done,
}

/// One replicated read.
#[derive(Debug, Clone)]
pub struct ReadRound {
    owners: Vec<NodeId>,
    mode: Mode,
    q: Quorums,
    deadline_ms: u64,
    /// Owners not yet answered.
    pending: BTreeSet<NodeId>,
    /// Every replica that replied, and the dots it holds (its reply plus what we sent it).
    known: BTreeMap<NodeId, BTreeSet<Dot>>,
    owner_replies: usize,
    merged: VersionSet,
    state: ReadState,
    started: bool,
}

impl ReadRound {
    /// A read of a key owned by `owners`, answered by `now_ms + timeout_ms` at the latest.
    pub fn new(owners: Vec<NodeId>, mode: Mode, now_ms: u64, timeout_ms: u64) -> ReadRound {
        let q = Quorums::new(mode, owners.len());
        ReadRound {
            pending: owners.iter().copied().collect(),
            owners,
            mode,
            q,
            deadline_ms: now_ms.saturating_add(timeout_ms),
            known: BTreeMap::new(),
            owner_replies: 0,
            merged: VersionSet::new(),
            state: ReadState::Pending,
            started: false,
        }
    }

    /// The first actions: ask every owner (the local one too: the driver reads it directly).
    pub fn start(&mut self) -> Vec<ReadAction> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        if self.owners.is_empty() {
            self.state = ReadState::Done;
            return vec![ReadAction::Fail {
                replies: 0,
                needed: 1,
            }];
        }
        self.owners.iter().map(|&o| ReadAction::Ask(o)).collect()
    }

    /// A reply or failure; repeated ones and those after the end are ignored.
    pub fn on_event(&mut self, ev: ReadEvent) -> Vec<ReadAction> {
        let mut out = Vec::new();
        if self.state == ReadState::Done {
            return out;
        }
        match ev {
            ReadEvent::Reply(node, set) => {
                if self.known.contains_key(&node) {
                    return out;
                }
                if self.pending.remove(&node) {
                    self.owner_replies += 1;
                } else if self.owners.contains(&node) {
                    return out; // an owner that already failed
                }
                self.known.insert(node, set.dots().collect());
                self.merged.merge(&set);
            }
            ReadEvent::Failed(node) => {
                if !self.pending.remove(&node) {
                    return out;
                }
            }
        }
        self.decide(&mut out);
        out
    }

    /// The time passed: at the deadline, answer with what came if that is allowed (available
    /// mode, at least one reply), else fail; the round ends.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<ReadAction> {
        let mut out = Vec::new();
        if self.state == ReadState::Done || now_ms < self.deadline_ms {
            return out;
        }
        if self.state == ReadState::Pending {
            if self.mode == Mode::Available && !self.known.is_empty() {
                self.answer(&mut out);
            } else {
                self.state = ReadState::Failed;
                out.push(ReadAction::Fail {
                    replies: self.owner_replies,
                    needed: self.q.r,
                });
            }
        }
        self.state = ReadState::Done;
        out
    }

    /// Where the round is.
    pub fn state(&self) -> ReadState {
        self.state
    }

    /// When the driver must call [`ReadRound::on_tick`] at the latest.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    fn decide(&mut self, out: &mut Vec<ReadAction>) {
        if self.state == ReadState::Pending {
            let enough = match self.mode {
                Mode::Consistent => self.owner_replies >= self.q.r,
                Mode::Available => {
                    !self.merged.is_empty() || (self.pending.is_empty() && !self.known.is_empty())
                }
            };
            let hopeless = match self.mode {
                Mode::Consistent => self.owner_replies + self.pending.len() < self.q.r,
                Mode::Available => self.pending.is_empty() && self.known.is_empty(),
            };
            if enough {
                self.answer(out);
            } else if hopeless {
                self.state = ReadState::Failed;
                out.push(ReadAction::Fail {
                    replies: self.owner_replies,
                    needed: self.q.r,
                });
            }
        } else if self.state == ReadState::Answered {
            self.repair(out);
        }
        if self.pending.is_empty() {
            self.state = ReadState::Done;
        }
    }

    fn answer(&mut self, out: &mut Vec<ReadAction>) {
        self.state = ReadState::Answered;
        out.push(ReadAction::Answer(self.merged.clone()));
        self.repair(out);
    }

    /// Read repair: every replica that replied gets what the merged set has and it lacks.
    fn repair(&mut self, out: &mut Vec<ReadAction>) {
        for (&node, dots) in self.known.iter_mut() {
            let missing: Vec<Version> = self
                .merged
                .iter()
                .filter(|v| !dots.contains(&v.dot))
                .cloned()
                .collect();
            if !missing.is_empty() {
                dots.extend(missing.iter().map(|v| v.dot));
                out.push(ReadAction::Repair {
                    to: node,
                    versions: missing,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::vv::{Hlc, VersionVector};
    use super::*;
    use ReadAction::*;
    use ReadEvent::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);

    fn version(node: NodeId, counter: u64, ctx: &VersionVector) -> Version {
        Version::new(
            ctx,
            node,
            counter - 1,
            Hlc {
                wall_ms: counter,
                logical: 0,
            },
            false,
        )
    }

    fn set(vs: &[&Version]) -> VersionSet {
        let mut s = VersionSet::new();
        for v in vs {
            s.insert((*v).clone());
        }
        s
    }

    #[test]
    fn consistent_answers_at_two_of_three_and_repairs() {
        let v1 = version(A, 1, &VersionVector::new());
        let v2 = version(A, 2, &v1.vv);
        let mut r = ReadRound::new(vec![A, B, C], Mode::Consistent, 0, 100);
        assert_eq!(r.start(), vec![Ask(A), Ask(B), Ask(C)]);
        assert!(
            r.on_event(Reply(B, set(&[&v1]))).is_empty(),
            "one reply is not R"
        );
        let acts = r.on_event(Reply(A, set(&[&v1, &v2])));
        assert_eq!(acts[0], Answer(set(&[&v1, &v2])));
        assert_eq!(
            acts[1..],
            [Repair {
                to: B,
                versions: vec![v2.clone()]
            }]
        );
        assert_eq!(r.state(), ReadState::Answered);
        // C answers late with nothing: it gets both.
        assert_eq!(
            r.on_event(Reply(C, VersionSet::new())),
            vec![Repair {
                to: C,
                versions: vec![v1, v2]
            }]
        );
        assert_eq!(r.state(), ReadState::Done);
    }

    /// A late reply with a version nobody else had: the earlier repliers get it too.
    #[test]
    fn late_version_is_spread() {
        let v1 = version(A, 1, &VersionVector::new());
        let vc = version(C, 1, &VersionVector::new());
        let mut r = ReadRound::new(vec![A, B, C], Mode::Consistent, 0, 100);
        r.start();
        r.on_event(Reply(A, set(&[&v1])));
        let acts = r.on_event(Reply(B, set(&[&v1])));
        assert_eq!(acts, vec![Answer(set(&[&v1]))]);
        let acts = r.on_event(Reply(C, set(&[&vc])));
        assert_eq!(
            acts,
            vec![
                Repair {
                    to: A,
                    versions: vec![vc.clone()]
                },
                Repair {
                    to: B,
                    versions: vec![vc]
                },
                Repair {
                    to: C,
                    versions: vec![v1]
                },
            ]
        );
    }

    #[test]
    fn consistent_fails_without_quorum() {
        let mut r = ReadRound::new(vec![A, B, C], Mode::Consistent, 0, 100);
        r.start();
        r.on_event(Failed(A));
        assert_eq!(
            r.on_event(Failed(B)),
            vec![Fail {
                replies: 0,
                needed: 2
            }]
        );
        assert!(r.on_event(Reply(C, VersionSet::new())).is_empty());

        let mut r = ReadRound::new(vec![A, B, C], Mode::Consistent, 0, 100);
        r.start();
        r.on_event(Reply(A, VersionSet::new()));
        assert!(r.on_tick(99).is_empty());
        assert_eq!(
            r.on_tick(100),
            vec![Fail {
                replies: 1,
                needed: 2
            }]
        );
        assert_eq!(r.state(), ReadState::Done);
    }

    /// Available: the first non-empty reply answers; empty replies wait for the others.
    #[test]
    fn available_answers_first_holder() {
        let v1 = version(B, 1, &VersionVector::new());
        let mut r = ReadRound::new(vec![A, B], Mode::Available, 0, 100);
        r.start();
        assert!(
            r.on_event(Reply(A, VersionSet::new())).is_empty(),
            "an empty reply may be stale"
        );
        let acts = r.on_event(Reply(B, set(&[&v1])));
        assert_eq!(
            acts,
            vec![
                Answer(set(&[&v1])),
                Repair {
                    to: A,
                    versions: vec![v1]
                }
            ]
        );

        // Every owner empty: the key does not exist (answer with nothing).
        let mut r = ReadRound::new(vec![A, B], Mode::Available, 0, 100);
        r.start();
        r.on_event(Reply(A, VersionSet::new()));
        assert_eq!(r.on_event(Failed(B)), vec![Answer(VersionSet::new())]);

        // One owner down, the other empty, deadline: answer with what came.
        let mut r = ReadRound::new(vec![A, B], Mode::Available, 0, 100);
        r.start();
        r.on_event(Reply(A, VersionSet::new()));
        assert_eq!(r.on_tick(100), vec![Answer(VersionSet::new())]);

        // Nobody: fail.
        let mut r = ReadRound::new(vec![A, B], Mode::Available, 0, 100);
        r.start();
        r.on_event(Failed(A));
        assert_eq!(
            r.on_event(Failed(B)),
            vec![Fail {
                replies: 0,
                needed: 1
            }]
        );
    }

    /// A hint holder's versions join the answer but count toward no quorum.
    #[test]
    fn hint_holder_reply_is_merged() {
        let d = NodeId(9);
        let v = version(d, 1, &VersionVector::new());
        let mut r = ReadRound::new(vec![A, B, C], Mode::Consistent, 0, 100);
        r.start();
        assert!(r.on_event(Reply(d, set(&[&v]))).is_empty());
        r.on_event(Reply(A, VersionSet::new()));
        let acts = r.on_event(Reply(B, VersionSet::new()));
        assert_eq!(acts[0], Answer(set(&[&v])));
        assert_eq!(acts.len(), 3, "A and B are repaired: {acts:?}");
    }
}
