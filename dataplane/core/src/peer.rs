//! Per-peer state: configuration, the three session slots, staged packets, timer
//! deadlines and traffic counters.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tm_wire::ipc::{PeerId, Prefix};

use crate::session::Session;
use crate::shared::{PeerShared, ACTIVITIES};

/// Packets staged per peer while it has no usable session (oldest dropped first).
pub const MAX_STAGED: usize = 32;

/// Which of a peer's session slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The session before `current`, kept to receive in-flight packets.
    Previous,
    /// The session we send with.
    Current,
    /// A responder session waiting for its first packet.
    Next,
}

/// Deadlines and timestamps driving the protocol timers.
#[derive(Debug, Default, Clone)]
pub struct PeerTimers {
    /// Last `NeedHandshake` emission (rate limit: one per rekey timeout).
    pub last_need_handshake: Option<Instant>,
    /// Last authenticated packet received.
    pub last_rx: Option<Instant>,
    /// Passive keepalive: data received and nothing sent since.
    pub keepalive_due: Option<Instant>,
    /// Data sent and nothing received since.
    pub handshake_due: Option<Instant>,
    /// Persistent keepalive.
    pub persistent_due: Option<Instant>,
    /// A `Keepalive` transmit for this peer is already queued.
    pub keepalive_queued: bool,
    /// A `Flush` transmit for this peer is already queued.
    pub flush_queued: bool,
}

/// Cumulative per-peer counters; bytes are whole UDP payloads (datagram bytes) of
/// authenticated transport-data messages, keepalives included.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// One configured peer.
pub struct Peer {
    pub id: PeerId,
    pub public_key: [u8; 32],
    pub allowed_ips: Vec<Prefix>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds, 0 = off.
    pub persistent_keepalive: u16,
    pub previous: Option<Arc<Session>>,
    pub current: Option<Arc<Session>>,
    pub next: Option<Arc<Session>>,
    pub staged: VecDeque<Vec<u8>>,
    pub timers: PeerTimers,
    /// Counted by the owner; the workers' counts are in `shared`.
    pub traffic: Traffic,
    /// Counters and activity stamps the fast-path workers update.
    pub shared: Arc<PeerShared>,
    /// Activity stamps already folded into `timers`.
    pub folded: [u64; ACTIVITIES],
}

impl Peer {
    pub fn new(id: PeerId) -> Self {
        Self {
            id,
            public_key: [0; 32],
            allowed_ips: Vec::new(),
            endpoint: None,
            persistent_keepalive: 0,
            previous: None,
            current: None,
            next: None,
            staged: VecDeque::new(),
            timers: PeerTimers::default(),
            traffic: Traffic::default(),
            shared: Arc::new(PeerShared::default()),
            folded: [0; ACTIVITIES],
        }
    }

    pub fn slot(&mut self, s: Slot) -> &mut Option<Arc<Session>> {
        match s {
            Slot::Previous => &mut self.previous,
            Slot::Current => &mut self.current,
            Slot::Next => &mut self.next,
        }
    }

    /// Slot holding the session with `local_index`.
    pub fn find(&self, local_index: u32) -> Option<Slot> {
        [
            (Slot::Current, &self.current),
            (Slot::Previous, &self.previous),
            (Slot::Next, &self.next),
        ]
        .into_iter()
        .find(|(_, s)| s.as_ref().is_some_and(|s| s.local_index == local_index))
        .map(|(slot, _)| slot)
    }

    /// Removes the session in `s`, unregistering its index. Returns its local index.
    pub fn clear(&mut self, s: Slot, by_index: &mut HashMap<u32, PeerId>) -> Option<u32> {
        let old = self.slot(s).take()?;
        if by_index.get(&old.local_index) == Some(&self.id) {
            by_index.remove(&old.local_index);
        }
        Some(old.local_index)
    }

    /// Removes every session.
    pub fn clear_all(&mut self, by_index: &mut HashMap<u32, PeerId>) {
        for s in [Slot::Previous, Slot::Current, Slot::Next] {
            self.clear(s, by_index);
        }
    }

    /// Responder confirmation: `next` becomes `current`, old `current` becomes
    /// `previous`, old `previous` is dropped.
    pub fn promote_next(&mut self, by_index: &mut HashMap<u32, PeerId>) {
        if self.next.is_none() {
            return;
        }
        self.clear(Slot::Previous, by_index);
        self.previous = self.current.take();
        self.current = self.next.take();
    }

    /// Stages a packet; returns true if the oldest staged packet was dropped.
    pub fn stage(&mut self, pkt: &[u8]) -> bool {
        let dropped = if self.staged.len() >= MAX_STAGED {
            self.staged.pop_front();
            true
        } else {
            false
        };
        self.staged.push_back(pkt.to_vec());
        dropped
    }
}
