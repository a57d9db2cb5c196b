//! Deterministic simulation of the replication core (tests only).
//!
//! Three coordinators, each an instance of the sans-IO core ([`WriteRound`], [`ReadRound`],
//! anti-entropy digests, hinted handoffs) over an in-memory map of version sets, exchange
//! messages through a simulated network on a virtual clock: random delays, message loss,
//! partitions (links blocked both ways), crashes and restarts (a crashed coordinator keeps
//! what it made durable and loses what was in flight). Clients write, overwrite and delete keys
//! with unique payloads and read them through random coordinators. After the nemesis stops,
//! the network heals, hints are handed off and anti-entropy runs; then [`check`] verifies the
//! history. Everything is driven by one seed, so a failure is replayed by its seed.

mod check;
mod deliver;

use super::antientropy::DigestTable;
use super::placement::{owners, Member};
use super::read::{ReadAction, ReadEvent, ReadRound};
use super::vv::{Dot, Hlc, Version, VersionSet, VersionVector};
use super::write::{WriteAction, WriteEvent, WriteRound, WriteState};
use super::{Mode, NodeId};
use std::collections::{BTreeMap, BTreeSet};

pub(super) use check::{check, Report};

const N: usize = 3;
const TIMEOUT_MS: u64 = 60;
const HANDOFF_MS: u64 = 50;
const AE_MS: u64 = 100;

/// xorshift64*: small, deterministic.
pub(super) struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }
}

type Key = Vec<u8>;

#[derive(Debug, Clone)]
enum Msg {
    /// Store a version; `round`: reply `Stored` to the writer; `handoff`: reply `HintDone`.
    Store {
        round: Option<u64>,
        handoff: bool,
        key: Key,
        v: Version,
        payload: Option<u64>,
    },
    Stored {
        round: u64,
    },
    HintDone {
        key: Key,
        dot: Dot,
    },
    Get {
        round: u64,
        key: Key,
    },
    Versions {
        round: u64,
        set: VersionSet,
        payloads: Vec<(Dot, u64)>,
    },
    AeDigests {
        table: Box<DigestTable>,
    },
    AeKeys {
        parts: Vec<usize>,
        entries: Vec<(Key, Vec<Dot>)>,
    },
    Fetch {
        key: Key,
        dots: Vec<Dot>,
    },
}

/// What a client did and what it was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Put(u64),
    Delete,
    Get,
}

#[derive(Debug, Clone)]
pub(super) struct Op {
    pub kind: Kind,
    pub key: Key,
    pub invoke: u64,
    /// When the client got an answer (None: its coordinator crashed first).
    pub response: Option<u64>,
    pub ok: bool,
    /// The version a write made.
    pub dot: Option<Dot>,
    /// `x-tm-replicas` of an acknowledged write.
    pub replicas: Option<(usize, usize)>,
    /// A read's answer: the versions it saw and the current one.
    pub seen: Option<(BTreeSet<Dot>, Option<Dot>)>,
}

struct PendingWrite {
    round: WriteRound,
    op: usize,
    key: Key,
    v: Version,
    payload: Option<u64>,
}

struct PendingRead {
    round: ReadRound,
    op: usize,
    key: Key,
    payloads: BTreeMap<Dot, u64>,
    /// A consistent write's context read: on the answer, make the version (payload, or a
    /// delete marker) with the answer's context and write it.
    then_write: Option<Option<u64>>,
}

pub(super) struct Node {
    pub id: NodeId,
    pub up: bool,
    pub store: BTreeMap<Key, VersionSet>,
    pub payloads: BTreeMap<Dot, u64>,
    digests: DigestTable,
    hints: BTreeSet<(NodeId, Key, Dot)>,
    seq: u64,
    hlc: Hlc,
    /// How far this coordinator's physical clock is ahead of the virtual clock.
    offset: u64,
    writes: BTreeMap<u64, PendingWrite>,
    reads: BTreeMap<u64, PendingRead>,
}

impl Node {
    fn tick(&mut self, now: u64) -> Hlc {
        self.hlc = if now > self.hlc.wall_ms {
            Hlc {
                wall_ms: now,
                logical: 0,
            }
        } else {
            Hlc {
                wall_ms: self.hlc.wall_ms,
                logical: self.hlc.logical + 1,
            }
        };
        self.hlc
    }

    /// Stores a version durably (idempotent) and observes its clock.
    fn apply(&mut self, key: &[u8], v: Version, payload: Option<u64>, lww_bug: bool) {
        self.hlc = self.hlc.max(v.clock);
        let before = self.store.get(key).cloned().unwrap_or_default();
        let mut after = before.clone();
        if let Some(p) = payload {
            self.payloads.insert(v.dot, p);
        }
        if !after.insert(v) {
            return;
        }
        if lww_bug {
            // The defect the checker must catch: keep only the winner (last writer wins,
            // losers dropped), as a naive replication would.
            let cur = after.resolve().current;
            let mut only = VersionSet::new();
            if let Some(c) = cur.and_then(|d| after.get(d)) {
                only.insert(c.clone());
            }
            after = only;
        }
        self.digests.update(key, &before, &after);
        self.store.insert(key.to_vec(), after);
    }
}

/// Simulation parameters.
#[derive(Debug, Clone, Copy)]
pub(super) struct Params {
    pub seed: u64,
    pub mode: Mode,
    pub rf: usize,
    /// Virtual milliseconds of client load under the nemesis.
    pub duration_ms: u64,
    /// Message loss while the nemesis runs, per mille.
    pub loss_permille: u64,
    /// Partitions and crashes (false: only `down` is applied, no other fault).
    pub nemesis: bool,
    /// A coordinator kept down for the whole load phase (index), if any.
    pub down: Option<usize>,
    /// Plant the last-writer-wins defect (the checker must report anomalies).
    pub lww_bug: bool,
    /// Coordinators' clocks are ahead of the virtual clock by 0..=skew_ms (fixed per run).
    pub skew_ms: u64,
    /// Consistent writes take their causal context from a read quorum first (the design);
    /// false: from the local replica only (to show what that breaks under clock skew).
    pub context_read: bool,
}

pub(super) struct World {
    pub p: Params,
    pub now: u64,
    rng: Rng,
    pub nodes: Vec<Node>,
    net: BTreeMap<(u64, u64), (usize, usize, Msg)>,
    msg_seq: u64,
    blocked: BTreeSet<(usize, usize)>,
    loss: u64,
    members: Vec<Member>,
    next_round: u64,
    next_payload: u64,
    pub history: Vec<Op>,
    pub faults: usize,
    pub dropped: usize,
    pub delivered: usize,
}

impl World {
    pub fn new(p: Params) -> World {
        let nodes = (0..N)
            .map(|i| Node {
                id: NodeId(i as u64 + 1),
                up: true,
                store: BTreeMap::new(),
                payloads: BTreeMap::new(),
                digests: DigestTable::new(),
                hints: BTreeSet::new(),
                seq: 0,
                hlc: Hlc::default(),
                offset: 0,
                writes: BTreeMap::new(),
                reads: BTreeMap::new(),
            })
            .collect::<Vec<_>>();
        let members = nodes
            .iter()
            .map(|n| Member {
                id: n.id,
                weight: 100,
            })
            .collect();
        let mut w = World {
            p,
            now: 1,
            rng: Rng::new(p.seed),
            nodes,
            net: BTreeMap::new(),
            msg_seq: 0,
            blocked: BTreeSet::new(),
            loss: p.loss_permille,
            members,
            next_round: 1,
            next_payload: 1,
            history: Vec::new(),
            faults: 0,
            dropped: 0,
            delivered: 0,
        };
        for i in 0..N {
            w.nodes[i].offset = w.rng.below(p.skew_ms + 1);
        }
        w
    }

    pub fn owners(&self, key: &[u8]) -> Vec<NodeId> {
        owners(key, self.p.rf, &self.members)
    }

    fn idx(id: NodeId) -> usize {
        id.0 as usize - 1
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if self.blocked.contains(&(from, to)) || self.rng.chance(self.loss) {
            self.dropped += 1;
            return;
        }
        let at = self.now + 1 + self.rng.below(10);
        self.msg_seq += 1;
        self.net.insert((at, self.msg_seq), (from, to, msg));
    }

    /// Runs the whole scenario: load under the nemesis, then heal and quiesce.
    pub fn run(&mut self) {
        if let Some(d) = self.p.down {
            self.crash(d);
        }
        let end = self.p.duration_ms;
        let mut next_fault = 100;
        let mut restart: Vec<(u64, usize)> = Vec::new();
        while self.now < end {
            if self.p.nemesis && self.now >= next_fault {
                self.nemesis(&mut restart);
                next_fault = self.now + 50 + self.rng.below(250);
            }
            restart.retain(|&(at, i)| {
                if at <= self.now {
                    self.nodes[i].up = true;
                    false
                } else {
                    true
                }
            });
            // A client operation now and then (several may be in flight).
            if self.rng.chance(300) {
                self.client_op();
            }
            self.step();
        }
        // Heal: everything up, no loss, no partition; hints and anti-entropy catch up.
        self.blocked.clear();
        self.loss = 0;
        for i in 0..N {
            self.nodes[i].up = true;
        }
        let quiet = self.now + 3_000;
        while self.now < quiet {
            self.step();
        }
        // Drain in-flight work.
        while !self.net.is_empty()
            || self
                .nodes
                .iter()
                .any(|n| !n.writes.is_empty() || !n.reads.is_empty())
        {
            self.step();
        }
    }

    fn nemesis(&mut self, restart: &mut Vec<(u64, usize)>) {
        self.faults += 1;
        match self.rng.below(4) {
            0 => self.blocked.clear(),
            1 => {
                // Isolate one coordinator.
                self.blocked.clear();
                let i = self.rng.below(N as u64) as usize;
                for j in 0..N {
                    if j != i {
                        self.blocked.insert((i, j));
                        self.blocked.insert((j, i));
                    }
                }
            }
            2 => {
                // Cut one link (both ways).
                let i = self.rng.below(N as u64) as usize;
                let j = (i + 1 + self.rng.below(N as u64 - 1) as usize) % N;
                self.blocked.insert((i, j));
                self.blocked.insert((j, i));
            }
            _ => {
                let i = self.rng.below(N as u64) as usize;
                if self.nodes[i].up && Some(i) != self.p.down {
                    self.crash(i);
                    restart.push((self.now + 100 + self.rng.below(400), i));
                }
            }
        }
    }

    /// kill -9: in-flight rounds are lost (their clients never get an answer); what was
    /// durable stays.
    fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.up = false;
        n.writes.clear();
        n.reads.clear();
    }

    fn client_op(&mut self) {
        let up: Vec<usize> = (0..N).filter(|&i| self.nodes[i].up).collect();
        if up.is_empty() {
            return;
        }
        let at = up[self.rng.below(up.len() as u64) as usize];
        let key = format!("key{}", self.rng.below(6)).into_bytes();
        let r = self.rng.below(10);
        if r < 5 {
            let payload = self.next_payload;
            self.next_payload += 1;
            self.write(at, key, Some(payload));
        } else if r < 7 {
            self.write(at, key, None);
        } else {
            self.read(at, key);
        }
    }

    fn write(&mut self, i: usize, key: Key, payload: Option<u64>) {
        self.history.push(Op {
            kind: payload.map_or(Kind::Delete, Kind::Put),
            key: key.clone(),
            invoke: self.now,
            response: None,
            ok: false,
            dot: None,
            replicas: None,
            seen: None,
        });
        let op = self.history.len() - 1;
        if self.p.mode == Mode::Consistent && self.p.context_read {
            self.start_read(i, key, op, Some(payload));
        } else {
            self.write_version(i, key, payload, op, &VersionVector::new());
        }
    }

    /// Makes the version (context: the local versions of the key plus `extra`) and writes it.
    fn write_version(
        &mut self,
        i: usize,
        key: Key,
        payload: Option<u64>,
        op: usize,
        extra: &VersionVector,
    ) {
        let owners = self.owners(&key);
        let now = self.now;
        let node = &mut self.nodes[i];
        let mut ctx = node
            .store
            .get(&key)
            .map(|s| s.context())
            .unwrap_or_default();
        ctx.merge(extra);
        let clock = node.tick(now + node.offset);
        let v = Version::new(&ctx, node.id, node.seq, clock, payload.is_none());
        node.seq = v.dot.counter;
        self.history[op].dot = Some(v.dot);
        let mut round = WriteRound::new(node.id, owners, self.p.mode, now, TIMEOUT_MS);
        let acts = round.start();
        let rid = self.next_round;
        self.next_round += 1;
        self.nodes[i].writes.insert(
            rid,
            PendingWrite {
                round,
                op,
                key,
                v,
                payload,
            },
        );
        self.write_actions(i, rid, acts);
    }

    fn write_actions(&mut self, i: usize, rid: u64, acts: Vec<WriteAction>) {
        let mut queue: std::collections::VecDeque<WriteAction> = acts.into();
        while let Some(a) = queue.pop_front() {
            let Some(w) = self.nodes[i].writes.get(&rid) else {
                return;
            };
            let (key, v, payload, op) = (w.key.clone(), w.v.clone(), w.payload, w.op);
            let me = self.nodes[i].id;
            match a {
                WriteAction::StoreLocal { hints } => {
                    let bug = self.p.lww_bug;
                    let n = &mut self.nodes[i];
                    n.apply(&key, v.clone(), payload, bug);
                    for h in hints {
                        n.hints.insert((h, key.clone(), v.dot));
                    }
                    let more = n
                        .writes
                        .get_mut(&rid)
                        .unwrap()
                        .round
                        .on_event(WriteEvent::Durable(me));
                    queue.extend(more);
                }
                WriteAction::Send { to } => {
                    let msg = Msg::Store {
                        round: Some(rid),
                        handoff: false,
                        key,
                        v,
                        payload,
                    };
                    self.send(i, Self::idx(to), msg);
                }
                WriteAction::Ack { replicas, rf } => {
                    let o = &mut self.history[op];
                    (o.response, o.ok, o.replicas) = (Some(self.now), true, Some((replicas, rf)));
                }
                WriteAction::Fail { .. } => {
                    let o = &mut self.history[op];
                    (o.response, o.ok) = (Some(self.now), false);
                }
                WriteAction::ClearHint(o) => {
                    self.nodes[i].hints.remove(&(o, key, v.dot));
                }
                WriteAction::KeepHint(o) => {
                    self.nodes[i].hints.insert((o, key, v.dot));
                }
            }
        }
        if self.nodes[i]
            .writes
            .get(&rid)
            .is_some_and(|w| w.round.state() == WriteState::Done)
        {
            self.nodes[i].writes.remove(&rid);
        }
    }

    fn read(&mut self, i: usize, key: Key) {
        self.history.push(Op {
            kind: Kind::Get,
            key: key.clone(),
            invoke: self.now,
            response: None,
            ok: false,
            dot: None,
            replicas: None,
            seen: None,
        });
        let op = self.history.len() - 1;
        self.start_read(i, key, op, None);
    }

    fn start_read(&mut self, i: usize, key: Key, op: usize, then_write: Option<Option<u64>>) {
        let owners = self.owners(&key);
        let mut round = ReadRound::new(owners, self.p.mode, self.now, TIMEOUT_MS);
        let acts = round.start();
        let rid = self.next_round;
        self.next_round += 1;
        self.nodes[i].reads.insert(
            rid,
            PendingRead {
                round,
                op,
                key,
                payloads: BTreeMap::new(),
                then_write,
            },
        );
        self.read_actions(i, rid, acts);
    }

    fn read_actions(&mut self, i: usize, rid: u64, acts: Vec<ReadAction>) {
        let mut queue: std::collections::VecDeque<ReadAction> = acts.into();
        while let Some(a) = queue.pop_front() {
            let Some(r) = self.nodes[i].reads.get(&rid) else {
                return;
            };
            let (key, op, then_write) = (r.key.clone(), r.op, r.then_write);
            let me = self.nodes[i].id;
            match a {
                ReadAction::Answer(set) if then_write.is_some() => {
                    self.write_version(i, key, then_write.unwrap(), op, &set.context());
                }
                ReadAction::Ask(o) if o == me => {
                    let n = &mut self.nodes[i];
                    let set = n.store.get(&key).cloned().unwrap_or_default();
                    let pl: Vec<(Dot, u64)> = set
                        .dots()
                        .filter_map(|d| n.payloads.get(&d).map(|p| (d, *p)))
                        .collect();
                    let r = n.reads.get_mut(&rid).unwrap();
                    r.payloads.extend(pl);
                    queue.extend(r.round.on_event(ReadEvent::Reply(me, set)));
                }
                ReadAction::Ask(o) => self.send(i, Self::idx(o), Msg::Get { round: rid, key }),
                ReadAction::Answer(set) => {
                    let cur = set.resolve().current;
                    let o = &mut self.history[op];
                    (o.response, o.ok) = (Some(self.now), true);
                    o.seen = Some((set.dots().collect(), cur));
                }
                ReadAction::Fail { .. } => {
                    let o = &mut self.history[op];
                    (o.response, o.ok) = (Some(self.now), false);
                }
                ReadAction::Repair { to, versions } => {
                    let pl = self.nodes[i].reads[&rid].payloads.clone();
                    for v in versions {
                        let payload = pl.get(&v.dot).copied();
                        if to == me {
                            let bug = self.p.lww_bug;
                            self.nodes[i].apply(&key, v, payload, bug);
                        } else {
                            let msg = Msg::Store {
                                round: None,
                                handoff: false,
                                key: key.clone(),
                                v,
                                payload,
                            };
                            self.send(i, Self::idx(to), msg);
                        }
                    }
                }
            }
        }
        if self.nodes[i]
            .reads
            .get(&rid)
            .is_some_and(|r| r.round.state() == super::read::ReadState::Done)
        {
            self.nodes[i].reads.remove(&rid);
        }
    }

    /// One virtual millisecond: deliver due messages, fire deadlines, hand off, anti-entropy.
    fn step(&mut self) {
        self.now += 1;
        while let Some((&(at, seq), _)) = self.net.first_key_value() {
            if at > self.now {
                break;
            }
            let (from, to, msg) = self.net.remove(&(at, seq)).unwrap();
            if !self.nodes[to].up {
                self.dropped += 1;
                continue;
            }
            self.delivered += 1;
            self.deliver(from, to, msg);
        }
        for i in 0..N {
            if !self.nodes[i].up {
                continue;
            }
            let due: Vec<u64> = self.nodes[i]
                .writes
                .iter()
                .filter(|(_, w)| w.round.deadline_ms() <= self.now)
                .map(|(&r, _)| r)
                .collect();
            for rid in due {
                let acts = self.nodes[i]
                    .writes
                    .get_mut(&rid)
                    .unwrap()
                    .round
                    .on_tick(self.now);
                self.write_actions(i, rid, acts);
                self.nodes[i].writes.remove(&rid);
            }
            let due: Vec<u64> = self.nodes[i]
                .reads
                .iter()
                .filter(|(_, r)| r.round.deadline_ms() <= self.now)
                .map(|(&r, _)| r)
                .collect();
            for rid in due {
                let acts = self.nodes[i]
                    .reads
                    .get_mut(&rid)
                    .unwrap()
                    .round
                    .on_tick(self.now);
                self.read_actions(i, rid, acts);
                self.nodes[i].reads.remove(&rid);
            }
            if self.now % HANDOFF_MS == i as u64 {
                self.handoff(i);
            }
            if self.now % AE_MS == 10 * i as u64 {
                let j = (i + 1 + self.rng.below(N as u64 - 1) as usize) % N;
                let table = Box::new(self.nodes[i].digests.clone());
                self.send(i, j, Msg::AeDigests { table });
            }
        }
    }

    /// A read of `key` through coordinator `i` after quiesce, run to completion.
    pub fn final_read(&mut self, i: usize, key: &[u8]) -> Option<(BTreeSet<Dot>, Option<Dot>)> {
        self.read(i, key.to_vec());
        let op = self.history.len() - 1;
        while self.history[op].response.is_none() {
            self.step();
        }
        self.history[op].seen.clone()
    }
}

#[cfg(test)]
mod tests;
