//! One replicated write, as a state machine without I/O.
//!
//! The coordinator that received a PUT (or DELETE: a delete marker is a version like any other)
//! has made the version ([`super::vv::Version::new`]) and computed the key's owners
//! ([`super::placement::owners`]). The version's causal context is the coordinator's own
//! versions of the key, and in `consistent` mode also the answer of a read quorum
//! ([`super::read::ReadRound`], its `VersionSet::context`) taken first: the new version then
//! dominates every write acknowledged before it started, so clocks never decide between them
//! (the simulation shows the undone write that skewed clocks cause without it). The driver's
//! HLC should also observe the stamps of the versions it receives (replies included), so a
//! new version's clock is above those it dominates (the simulation does not, to stay
//! adversarial: resolution never relies on it). A
//! [`WriteRound`] then tells it what to do, from the replies it feeds in:
//!
//! - [`WriteRound::start`]: store the version locally, durable (when the local coordinator is
//!   an owner; in `available` mode always, as a hint holder if it is not an owner), with
//!   hinted-handoff records for the other owners in the same transaction (`available`), and
//!   send the version to every other owner.
//! - [`WriteRound::on_event`] with each owner's (or the local store's) durable/failed reply, and
//!   [`WriteRound::on_tick`] with the time: answer the client ([`WriteAction::Ack`] with the
//!   `x-tm-replicas: k/RF` count, or [`WriteAction::Fail`]), then keep following the late
//!   replies until every target answered or the deadline passed, clearing the hint of each
//!   owner that confirmed ([`WriteAction::ClearHint`]) or keeping one for an owner that did not
//!   ([`WriteAction::KeepHint`], consistent mode; in available mode the hints were written with
//!   the local copy and simply stay).
//!
//! When to answer:
//! - `consistent`: success once `W = floor(RF/2)+1` owners hold the version durably; failure
//!   as soon as too few owners are left to reach `W`, or at the deadline.
//! - `available`: success once the local copy and its hint records are durable (or, if the
//!   local store failed, once `W` owners hold it); failure when neither can happen any more,
//!   or at the deadline.
//!
//! A failed write's outcome is unknown to the client (as with any 5xx): copies that did become
//! durable stay, and may become visible through repair; the client retries.

use super::{Mode, NodeId, Quorums};
use std::collections::BTreeMap;

/// A reply about one target's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteEvent {
    /// `node` (an owner, or the local coordinator) holds the version durably.
    Durable(NodeId),
    /// `node` refused or could not store it (error reply, link down, disk full).
    Failed(NodeId),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAction {
    /// Store the version here, durably, with hinted-handoff records for `hints` in the same
    /// transaction; then feed `Durable(local)` or `Failed(local)`.
    StoreLocal {
        /// Owners that get a hint record (each names the version and the owner lacking it).
        hints: Vec<NodeId>,
    },
    /// Send the version to owner `to`; feed its reply (or `Failed` if the link is down).
    Send {
        /// The owner.
        to: NodeId,
    },
    /// Answer the client with success and `x-tm-replicas: {replicas}/{rf}`.
    Ack {
        /// Durable copies when answering (at most `rf`).
        replicas: usize,
        /// The replication factor.
        rf: usize,
    },
    /// Answer the client with a failure (503, retry).
    Fail {
        /// Durable copies when giving up.
        replicas: usize,
        /// How many were needed.
        needed: usize,
    },
    /// Remove the local hint record for this owner: it confirmed the version durable.
    ClearHint(NodeId),
    /// Record a hint for this owner (it did not confirm; hand the local copy off later).
    KeepHint(NodeId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Pending,
    Durable,
    Failed,
}

/// Where the round is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteState {
    /// Not yet answered.
    Pending,
    /// The client got a success; following late replies.
    Acked,
    /// The client got a failure; following late replies.
    Failed,
    /// Every target answered or the deadline passed; nothing more to do.
    Done,
}

/// One replicated write.
#[derive(Debug, Clone)]
pub struct WriteRound {
    local: NodeId,
    owners: Vec<NodeId>,
    mode: Mode,
    q: Quorums,
    deadline_ms: u64,
    /// Every target (owners, plus the local coordinator when it stores a copy) and its reply.
    replies: BTreeMap<NodeId, Reply>,
    /// Whether the local coordinator stores a copy in this round.
    local_stores: bool,
    /// Hints written with the local copy (available mode).
    hinted: Vec<NodeId>,
    /// Owners whose `ClearHint` waits for the local copy (and its hints) to be durable.
    clear_pending: Vec<NodeId>,
    state: WriteState,
    started: bool,
}

impl WriteRound {
    /// A round for a version of a key owned by `owners` (best first; RF = their number),
    /// received by `local`, answering by `now_ms + timeout_ms` at the latest.
    pub fn new(
        local: NodeId,
        owners: Vec<NodeId>,
        mode: Mode,
        now_ms: u64,
        timeout_ms: u64,
    ) -> WriteRound {
        let q = Quorums::new(mode, owners.len());
        let local_is_owner = owners.contains(&local);
        let local_stores = local_is_owner || mode == Mode::Available;
        let mut replies: BTreeMap<NodeId, Reply> =
            owners.iter().map(|&o| (o, Reply::Pending)).collect();
        if local_stores {
            replies.insert(local, Reply::Pending);
        }
        let hinted = match mode {
            Mode::Available => owners.iter().copied().filter(|&o| o != local).collect(),
            Mode::Consistent => Vec::new(),
        };
        WriteRound {
            local,
            owners,
            mode,
            q,
            deadline_ms: now_ms.saturating_add(timeout_ms),
            replies,
            local_stores,
            hinted,
            clear_pending: Vec::new(),
            state: WriteState::Pending,
            started: false,
        }
    }

    /// The first actions: the local store (if any) and one send per other owner. With no owner
    /// at all (no coordinator of non-zero weight) the write fails at once.
    pub fn start(&mut self) -> Vec<WriteAction> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        let mut out = Vec::new();
        if self.owners.is_empty() {
            self.state = WriteState::Done;
            out.push(WriteAction::Fail {
                replicas: 0,
                needed: 1,
            });
            return out;
        }
        if self.local_stores {
            out.push(WriteAction::StoreLocal {
                hints: self.hinted.clone(),
            });
        }
        for &o in &self.owners {
            if o != self.local {
                out.push(WriteAction::Send { to: o });
            }
        }
        out
    }

    /// A reply. Replies from nodes that are not targets, repeated replies and replies after
    /// the round is done are ignored.
    pub fn on_event(&mut self, ev: WriteEvent) -> Vec<WriteAction> {
        let mut out = Vec::new();
        if self.state == WriteState::Done {
            return out;
        }
        let (node, reply) = match ev {
            WriteEvent::Durable(n) => (n, Reply::Durable),
            WriteEvent::Failed(n) => (n, Reply::Failed),
        };
        match self.replies.get_mut(&node) {
            Some(r) if *r == Reply::Pending => *r = reply,
            _ => return out,
        }
        if node != self.local && reply == Reply::Durable && self.hinted.contains(&node) {
            // The hint for this owner may go, once the local copy (which carries it) is durable.
            match self.replies[&self.local] {
                Reply::Durable => out.push(WriteAction::ClearHint(node)),
                Reply::Pending => self.clear_pending.push(node),
                Reply::Failed => {} // no hint was written
            }
        }
        if node == self.local {
            if reply == Reply::Durable {
                out.extend(self.clear_pending.drain(..).map(WriteAction::ClearHint));
            } else {
                self.clear_pending.clear();
            }
        }
        self.decide(&mut out);
        out
    }

    /// The time passed: at the deadline an unanswered client gets a failure, and the round
    /// ends (targets that never answered keep their hints).
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<WriteAction> {
        let mut out = Vec::new();
        if self.state == WriteState::Done || now_ms < self.deadline_ms {
            return out;
        }
        if self.state == WriteState::Pending {
            self.state = WriteState::Failed;
            out.push(WriteAction::Fail {
                replicas: self.copies(),
                needed: self.needed(),
            });
        }
        self.finish(&mut out);
        out
    }

    /// Where the round is.
    pub fn state(&self) -> WriteState {
        self.state
    }

    /// When the driver must call [`WriteRound::on_tick`] at the latest.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// Durable copies so far (owners, plus a non-owner hint holder), at most RF.
    pub fn copies(&self) -> usize {
        let n = self
            .replies
            .values()
            .filter(|r| **r == Reply::Durable)
            .count();
        n.min(self.q.rf)
    }

    fn durable_owners(&self) -> usize {
        self.owners
            .iter()
            .filter(|o| self.replies[o] == Reply::Durable)
            .count()
    }

    fn possible_owners(&self) -> usize {
        self.owners
            .iter()
            .filter(|o| self.replies[o] != Reply::Failed)
            .count()
    }

    fn local_reply(&self) -> Reply {
        if self.local_stores {
            self.replies[&self.local]
        } else {
            Reply::Failed
        }
    }

    fn needed(&self) -> usize {
        match self.mode {
            Mode::Consistent => self.q.w,
            Mode::Available => 1,
        }
    }

    /// Ack or fail if it is decided; end the round when every target answered.
    fn decide(&mut self, out: &mut Vec<WriteAction>) {
        if self.state == WriteState::Pending {
            let quorum = Quorums::new(Mode::Consistent, self.q.rf).w;
            let (ack, hopeless) = match self.mode {
                Mode::Consistent => (
                    self.durable_owners() >= quorum,
                    self.possible_owners() < quorum,
                ),
                Mode::Available => (
                    self.local_reply() == Reply::Durable || self.durable_owners() >= quorum,
                    self.local_reply() == Reply::Failed && self.possible_owners() < quorum,
                ),
            };
            if ack {
                self.state = WriteState::Acked;
                out.push(WriteAction::Ack {
                    replicas: self.copies(),
                    rf: self.q.rf,
                });
            } else if hopeless {
                self.state = WriteState::Failed;
                out.push(WriteAction::Fail {
                    replicas: self.copies(),
                    needed: self.needed(),
                });
            }
        }
        if self.replies.values().all(|r| *r != Reply::Pending) {
            self.finish(out);
        }
    }

    /// The round ends: in consistent mode, an acknowledged write whose local copy is durable
    /// keeps a hint for each owner that did not confirm.
    fn finish(&mut self, out: &mut Vec<WriteAction>) {
        if self.mode == Mode::Consistent
            && self.state == WriteState::Acked
            && self.local_reply() == Reply::Durable
        {
            for &o in &self.owners {
                if o != self.local && self.replies[&o] != Reply::Durable {
                    out.push(WriteAction::KeepHint(o));
                }
            }
        }
        self.state = WriteState::Done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WriteAction::*;
    use WriteEvent::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);
    const D: NodeId = NodeId(4);

    fn round(local: NodeId, owners: &[NodeId], mode: Mode) -> WriteRound {
        WriteRound::new(local, owners.to_vec(), mode, 1_000, 500)
    }

    #[test]
    fn consistent_acks_at_two_of_three() {
        let mut w = round(A, &[A, B, C], Mode::Consistent);
        assert_eq!(
            w.start(),
            vec![StoreLocal { hints: vec![] }, Send { to: B }, Send { to: C }]
        );
        assert!(
            w.on_event(Durable(B)).is_empty(),
            "one copy is not a quorum"
        );
        assert_eq!(w.on_event(Durable(A)), vec![Ack { replicas: 2, rf: 3 }]);
        assert_eq!(w.state(), WriteState::Acked);
        // C never answers: at the deadline the round ends with a hint for C.
        assert!(w.on_tick(1_499).is_empty());
        assert_eq!(w.on_tick(1_500), vec![KeepHint(C)]);
        assert_eq!(w.state(), WriteState::Done);
        assert!(
            w.on_event(Durable(C)).is_empty(),
            "late reply after the end"
        );
    }

    #[test]
    fn consistent_fails_when_quorum_is_unreachable() {
        let mut w = round(A, &[A, B, C], Mode::Consistent);
        w.start();
        assert!(w.on_event(Failed(B)).is_empty());
        assert_eq!(
            w.on_event(Failed(C)),
            vec![Fail {
                replicas: 0,
                needed: 2
            }]
        );
        assert_eq!(w.state(), WriteState::Failed);
        // The local copy still lands; no success is ever sent after a failure.
        assert!(w.on_event(Durable(A)).is_empty());
        assert_eq!(w.state(), WriteState::Done);
    }

    #[test]
    fn consistent_times_out() {
        let mut w = round(A, &[A, B, C], Mode::Consistent);
        w.start();
        w.on_event(Durable(A));
        assert_eq!(
            w.on_tick(1_500),
            vec![Fail {
                replicas: 1,
                needed: 2
            }]
        );
    }

    /// Two coordinators, RF 2, one down: consistent cannot write (W = 2), available can.
    #[test]
    fn two_nodes_one_down() {
        let mut w = round(A, &[A, B], Mode::Consistent);
        w.start();
        w.on_event(Durable(A));
        assert_eq!(
            w.on_event(Failed(B)),
            vec![Fail {
                replicas: 1,
                needed: 2
            }]
        );

        let mut w = round(A, &[A, B], Mode::Available);
        assert_eq!(
            w.start(),
            vec![StoreLocal { hints: vec![B] }, Send { to: B }]
        );
        assert_eq!(w.on_event(Durable(A)), vec![Ack { replicas: 1, rf: 2 }]);
        assert!(w.on_event(Failed(B)).is_empty(), "B's hint stays");
        assert_eq!(w.state(), WriteState::Done);
    }

    /// Available: a hint is cleared only once the local copy that carries it is durable.
    #[test]
    fn available_clears_hints_after_local_commit() {
        let mut w = round(A, &[A, B, C], Mode::Available);
        assert_eq!(w.start()[0], StoreLocal { hints: vec![B, C] });
        assert!(
            w.on_event(Durable(B)).is_empty(),
            "B's hint is not written yet"
        );
        assert_eq!(
            w.on_event(Durable(A)),
            vec![ClearHint(B), Ack { replicas: 2, rf: 3 }]
        );
        assert_eq!(w.on_event(Durable(C)), vec![ClearHint(C)]);
        assert_eq!(w.state(), WriteState::Done);
    }

    /// Available, local store failed: falls back to a majority of owners, no hints to clear.
    #[test]
    fn available_local_failure_needs_a_quorum() {
        let mut w = round(A, &[A, B, C], Mode::Available);
        w.start();
        w.on_event(Durable(B));
        assert!(w.on_event(Failed(A)).is_empty());
        assert_eq!(w.on_event(Durable(C)), vec![Ack { replicas: 2, rf: 3 }]);

        let mut w = round(A, &[A, B, C], Mode::Available);
        w.start();
        assert!(w.on_event(Failed(A)).is_empty());
        // With A and B failed, no majority of owners is possible any more.
        assert_eq!(
            w.on_event(Failed(B)),
            vec![Fail {
                replicas: 0,
                needed: 1
            }]
        );
        assert!(w.on_event(Durable(C)).is_empty());
        assert_eq!(w.state(), WriteState::Done);
    }

    /// A non-owner coordinator: in consistent mode it only forwards; in available mode it keeps
    /// a copy with hints for every owner (so a write succeeds with every owner down).
    #[test]
    fn non_owner_coordinator() {
        let mut w = round(D, &[A, B, C], Mode::Consistent);
        assert_eq!(
            w.start(),
            vec![Send { to: A }, Send { to: B }, Send { to: C }]
        );
        w.on_event(Durable(A));
        assert_eq!(w.on_event(Durable(C)), vec![Ack { replicas: 2, rf: 3 }]);
        assert!(
            w.on_event(Failed(B)).is_empty(),
            "no local copy, so no hint: anti-entropy repairs B"
        );
        assert_eq!(w.state(), WriteState::Done);

        let mut w = round(D, &[A, B, C], Mode::Available);
        assert_eq!(
            w.start()[0],
            StoreLocal {
                hints: vec![A, B, C]
            }
        );
        for o in [A, B, C] {
            assert!(w.on_event(Failed(o)).is_empty());
        }
        assert_eq!(w.on_event(Durable(D)), vec![Ack { replicas: 1, rf: 3 }]);
    }

    #[test]
    fn no_owner_fails() {
        let mut w = round(A, &[], Mode::Available);
        assert_eq!(
            w.start(),
            vec![Fail {
                replicas: 0,
                needed: 1
            }]
        );
        assert!(w.start().is_empty());
    }

    #[test]
    fn ignores_strangers_and_repeats() {
        let mut w = round(A, &[A, B, C], Mode::Consistent);
        w.start();
        assert!(w.on_event(Durable(D)).is_empty(), "not a target");
        w.on_event(Durable(B));
        assert!(w.on_event(Durable(B)).is_empty(), "counted once");
        assert!(w.on_event(Failed(B)).is_empty(), "a reply is final");
        assert_eq!(w.state(), WriteState::Pending);
    }

    /// Over every order of replies and every outcome per target: never both an ack and a fail,
    /// exactly one answer once all replied, the ack count never exceeds the durable copies, and
    /// a consistent ack always has a majority of owners durable.
    #[test]
    fn exhaustive_reply_orders() {
        let owners = [A, B, C];
        for mode in [Mode::Consistent, Mode::Available] {
            for local in [A, D] {
                let targets: Vec<NodeId> = if local == D && mode == Mode::Available {
                    vec![A, B, C, D] // the non-owner keeps a hinted copy
                } else {
                    vec![A, B, C]
                };
                let k = targets.len();
                for outcome in 0..(1u32 << k) {
                    for perm in permutations(k) {
                        let mut w = round(local, &owners, mode);
                        let mut all = w.start();
                        let mut durable_owners = 0;
                        for &i in &perm {
                            let ok = outcome & (1 << i) != 0;
                            let n = targets[i];
                            let acts = w.on_event(if ok { Durable(n) } else { Failed(n) });
                            if ok && owners.contains(&n) {
                                durable_owners += 1;
                            }
                            if acts.iter().any(|a| matches!(a, Ack { .. }))
                                && mode == Mode::Consistent
                            {
                                assert!(durable_owners >= 2, "consistent ack without a majority");
                            }
                            all.extend(acts);
                        }
                        let answers: Vec<&WriteAction> = all
                            .iter()
                            .filter(|a| matches!(a, Ack { .. } | Fail { .. }))
                            .collect();
                        assert_eq!(
                            answers.len(),
                            1,
                            "{mode:?} local {local:?} outcome {outcome:b} perm {perm:?}: {all:?}"
                        );
                        assert_eq!(w.state(), WriteState::Done);
                        let durable = (0..k).filter(|i| outcome & (1 << i) != 0).count();
                        if let Ack { replicas, .. } = answers[0] {
                            assert!(*replicas <= durable);
                        }
                    }
                }
            }
        }
    }

    fn permutations(k: usize) -> Vec<Vec<usize>> {
        if k == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(k - 1) {
            for pos in 0..=p.len() {
                let mut q = p.clone();
                q.insert(pos, k - 1);
                out.push(q);
            }
        }
        out
    }
}
