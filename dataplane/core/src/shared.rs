//! State shared between the owner (worker 0, which runs the [`crate::Dataplane`]) and the
//! fast-path workers 1..N ([`crate::FastPath`]): the immutable peer/session [`Snapshot`]
//! (swapped atomically, loaded once per batch), per-peer activity timestamps and traffic
//! counters (atomics the owner folds into its timers and reports), per-worker counters and
//! the bounded punt queues (worker -> owner).
//!
//! Nothing here locks: the snapshot is an `ArcSwap`, counters are relaxed atomics written by
//! one thread each (per-peer ones with one `fetch_add` per batch and peer), and each punt
//! queue is a single-producer single-consumer ring of `ArcSwapOption` slots.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tm_wire::ipc::{DropReason, PeerId, WorkerStats};

use crate::route::RouteTable;
use crate::session::Session;

/// Punts a worker can queue for the owner before further ones are dropped (and counted).
pub const PUNT_QUEUE_LEN: usize = 4096;
/// Most workers a dataplane runs.
pub const MAX_WORKERS: usize = 64;

/// Protocol durations, as configured by `SetTimers`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Durations {
    pub rekey_after: Duration,
    pub reject_after: Duration,
    pub rekey_timeout: Duration,
    pub keepalive: Duration,
}

impl Durations {
    /// The least time after `now` at which the packet path sets any deadline (keepalive,
    /// handshake, persistent keepalive of at least 1 s, session expiry): what lets
    /// `Dataplane::poll_timeout` answer from a bound instead of walking every peer.
    pub fn guard(&self) -> Duration {
        self.keepalive
            .min(self.rekey_timeout)
            .min(self.reject_after)
            .min(Duration::from_secs(1))
    }
}

/// Kinds of activity a worker records for a peer (index into [`PeerShared`]'s stamps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activity {
    /// An authenticated packet (keepalive or data) arrived.
    Rx = 0,
    /// An authenticated data packet (non-empty) arrived.
    DataRx = 1,
    /// A data message was sent.
    DataTx = 2,
}

/// Number of [`Activity`] kinds.
pub(crate) const ACTIVITIES: usize = 3;

/// Per-peer state shared by every worker and every snapshot of that peer.
#[derive(Debug, Default)]
pub struct PeerShared {
    pub(crate) rx_packets: AtomicU64,
    pub(crate) rx_bytes: AtomicU64,
    pub(crate) tx_packets: AtomicU64,
    pub(crate) tx_bytes: AtomicU64,
    /// Latest activity per [`Activity`], as nanoseconds since [`Shared`]'s base + 1
    /// (0 = never).
    pub(crate) activity: [AtomicU64; ACTIVITIES],
    /// A worker saw a rekey condition (initiator session too old or too many messages).
    pub(crate) want_handshake: AtomicBool,
    /// Second (flow-table clock) of the last sampled filter drop of this peer.
    pub(crate) drop_sampled_s: std::sync::atomic::AtomicU32,
    /// The sampled drop waiting for the owner to report it (`filter log`).
    pub(crate) drop_sample: ArcSwapOption<crate::filter::DropSample>,
}

/// One peer as the fast path sees it.
#[derive(Clone)]
pub(crate) struct PeerEntry {
    pub endpoint: Option<SocketAddr>,
    pub current: Option<Arc<Session>>,
    pub shared: Arc<PeerShared>,
}

/// One receiver index as the fast path sees it.
#[derive(Clone)]
pub(crate) struct IndexEntry {
    pub peer: PeerId,
    pub session: Arc<Session>,
    /// The peer's `next` (unconfirmed responder) session: only the owner may promote it.
    pub next: bool,
    /// The peer's current session.
    pub current: bool,
}

/// Immutable view of the peer table published by the owner whenever peers, sessions,
/// endpoints, allowed IPs or timers change.
pub struct Snapshot {
    pub(crate) routes: Arc<RouteTable>,
    pub(crate) peers: HashMap<PeerId, PeerEntry>,
    pub(crate) by_index: HashMap<u32, IndexEntry>,
    pub(crate) t: Durations,
    pub(crate) mtu: u16,
    /// The packet filter (None: allow all).
    pub(crate) filter: Option<Arc<crate::filter::ActiveFilter>>,
}

impl Snapshot {
    pub(crate) fn empty(t: Durations, mtu: u16) -> Snapshot {
        Snapshot {
            routes: Arc::new(RouteTable::default()),
            peers: HashMap::new(),
            by_index: HashMap::new(),
            t,
            mtu,
            filter: None,
        }
    }

    /// Number of peers in this snapshot.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }
}

/// What a worker hands to the owner (a copy: the slow path may allocate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Punt {
    /// An inner IP packet read from the TUN (one segment, no vnet header).
    Tun(Vec<u8>),
    /// A datagram received on the worker's socket, untouched.
    Udp { from: SocketAddr, data: Vec<u8> },
}

/// Bounded single-producer single-consumer queue of punts (lock-free).
pub(crate) struct PuntQueue {
    slots: Box<[ArcSwapOption<Punt>]>,
    /// Next slot to pop (written by the consumer only).
    head: AtomicUsize,
    /// Next slot to push (written by the producer only).
    tail: AtomicUsize,
}

impl PuntQueue {
    pub(crate) fn new(cap: usize) -> PuntQueue {
        PuntQueue {
            slots: (0..cap).map(|_| ArcSwapOption::empty()).collect(),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
        }
    }

    /// Producer side: false (and the punt is dropped) if the queue is full.
    pub(crate) fn push(&self, p: Punt) -> bool {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        if tail.wrapping_sub(head) >= self.slots.len() {
            return false;
        }
        self.slots[tail % self.slots.len()].store(Some(Arc::new(p)));
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
        true
    }

    /// Consumer side.
    pub(crate) fn pop(&self) -> Option<Punt> {
        let head = self.head.load(Ordering::Relaxed);
        if head == self.tail.load(Ordering::Acquire) {
            return None;
        }
        let p = self.slots[head % self.slots.len()].swap(None);
        self.head.store(head.wrapping_add(1), Ordering::Release);
        p.map(Arc::unwrap_or_clone)
    }
}

/// Counters of one worker, published by that worker once per batch.
struct WorkerCell {
    scalars: [AtomicU64; WorkerStats::SCALARS],
    drops: [AtomicU64; DropReason::COUNT],
    /// Data datagrams handled (rx) and sealed (tx) by the fast path, for the global counters.
    datagrams: [AtomicU64; 2],
}

/// One worker's shared slot.
pub(crate) struct WorkerSlot {
    cell: WorkerCell,
    pub(crate) punts: PuntQueue,
}

/// Everything the owner shares with the workers.
pub struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    base: Instant,
    pub(crate) workers: Box<[WorkerSlot]>,
}

impl Shared {
    pub(crate) fn new(workers: usize, base: Instant, snap: Snapshot) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snap),
            base,
            workers: (0..workers.clamp(1, MAX_WORKERS))
                .map(|_| WorkerSlot {
                    cell: WorkerCell {
                        scalars: std::array::from_fn(|_| AtomicU64::new(0)),
                        drops: std::array::from_fn(|_| AtomicU64::new(0)),
                        datagrams: std::array::from_fn(|_| AtomicU64::new(0)),
                    },
                    punts: PuntQueue::new(PUNT_QUEUE_LEN),
                })
                .collect(),
        }
    }

    /// Number of workers (owner included).
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The latest counters worker `i` published.
    pub fn worker_stats(&self, i: usize) -> WorkerStats {
        let Some(w) = self.workers.get(i) else {
            return WorkerStats::default();
        };
        WorkerStats::from_scalars(
            std::array::from_fn(|k| w.cell.scalars[k].load(Ordering::Relaxed)),
            std::array::from_fn(|k| w.cell.drops[k].load(Ordering::Relaxed)),
        )
    }

    /// Data datagrams worker `i`'s fast path handled (received, sealed): part of the global
    /// `rx_datagrams` / `tx_datagrams` (punted datagrams are counted by the owner).
    pub fn worker_datagrams(&self, i: usize) -> (u64, u64) {
        self.workers.get(i).map_or((0, 0), |w| {
            (
                w.cell.datagrams[0].load(Ordering::Relaxed),
                w.cell.datagrams[1].load(Ordering::Relaxed),
            )
        })
    }

    /// Publishes worker `i`'s counters (called by that worker only).
    pub(crate) fn publish_stats(&self, i: usize, s: &WorkerStats, rx: u64, tx: u64) {
        let Some(w) = self.workers.get(i) else {
            return;
        };
        for (a, v) in w.cell.scalars.iter().zip(s.scalars()) {
            a.store(v, Ordering::Relaxed);
        }
        for (a, v) in w.cell.drops.iter().zip(s.drops) {
            a.store(v, Ordering::Relaxed);
        }
        w.cell.datagrams[0].store(rx, Ordering::Relaxed);
        w.cell.datagrams[1].store(tx, Ordering::Relaxed);
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// `t` as a stamp (nanoseconds since the base + 1, so 0 means never).
    pub(crate) fn stamp(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// `t` in whole seconds since the base + 1 (the flow table's clock).
    pub(crate) fn secs(&self, t: Instant) -> u32 {
        u32::try_from(t.saturating_duration_since(self.base).as_secs())
            .unwrap_or(u32::MAX - 1)
            .saturating_add(1)
    }

    /// The instant of a non-zero stamp.
    pub(crate) fn instant(&self, stamp: u64) -> Instant {
        self.base + Duration::from_nanos(stamp - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punt_queue_is_bounded_fifo_across_threads() {
        let q = Arc::new(PuntQueue::new(8));
        for i in 0..8u8 {
            assert!(q.push(Punt::Tun(vec![i])));
        }
        assert!(!q.push(Punt::Tun(vec![99])), "full");
        assert_eq!(q.pop(), Some(Punt::Tun(vec![0])));
        assert!(q.push(Punt::Tun(vec![8])));
        for i in 1..=8u8 {
            assert_eq!(q.pop(), Some(Punt::Tun(vec![i])));
        }
        assert_eq!(q.pop(), None);
        // One producer thread, one consumer: everything arrives once, in order.
        const N: u32 = 50_000;
        let prod = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                let mut i = 0u32;
                while i < N {
                    if q.push(Punt::Tun(i.to_le_bytes().to_vec())) {
                        i += 1;
                    } else {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let mut want = 0u32;
        while want < N {
            match q.pop() {
                Some(Punt::Tun(v)) => {
                    assert_eq!(v, want.to_le_bytes().to_vec());
                    want += 1;
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => std::thread::yield_now(),
            }
        }
        prod.join().expect("producer");
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn stamps_round_trip() {
        let base = Instant::now();
        let t = Durations {
            rekey_after: Duration::ZERO,
            reject_after: Duration::ZERO,
            rekey_timeout: Duration::ZERO,
            keepalive: Duration::ZERO,
        };
        let s = Shared::new(3, base, Snapshot::empty(t, 1420));
        assert_eq!(s.workers(), 3);
        let at = base + Duration::from_millis(1500);
        assert_eq!(s.instant(s.stamp(at)), at);
        assert_eq!(s.stamp(base), 1);
    }
}
