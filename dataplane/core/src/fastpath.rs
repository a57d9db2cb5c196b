//! The fast path of workers 1..N: the common case of the packet path on a read-only
//! [`Snapshot`], everything else punted to the owner (worker 0).
//!
//! Outbound: inner packet -> route (allowed IPs) -> peer -> endpoint known and current
//! session usable (not expired, counter below `REJECT_AFTER_MESSAGES`) -> pad, seal in
//! place -> `Send`. No session / unusable session: punt (the owner stages it and asks for a
//! handshake).
//!
//! Inbound: data message -> session by receiver index (current or previous; unknown or
//! `next`: punt) -> source must be the peer's endpoint (else punt: roaming is the owner's)
//! -> expiry and replay check -> open in place -> replay claim -> keepalive? -> inner
//! header, padding trimmed -> cryptokey routing -> `WriteTun`. Handshake types 1-3: punt.
//!
//! Timers stay with the owner: the fast path records per-peer activity stamps (last
//! authenticated rx, last data rx, last data tx) and sets a "want handshake" flag when a
//! rekey condition is seen; the owner folds both in before evaluating its timers. Per-peer
//! traffic counters are accumulated locally and added to the shared atomics once per batch.
//!
//! Call order per batch: any number of [`FastPath::handle_tun_in_place`] /
//! [`FastPath::handle_udp`] (the first loads the snapshot), then [`FastPath::end_batch`]
//! (flushes counters and stamps; true = something was punted, wake the owner).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tm_wire::ipc::{DropReason, PeerId, WorkerStats};
use tm_wire::wg::{
    self, timers::REKEY_AFTER_MESSAGES, DataPacket, WireError, DATA_HEADER_LEN, DATA_OVERHEAD,
    MSG_DATA,
};

use crate::dataplane::padded_len;
use crate::filter::Dir;
use crate::packet;
use crate::session::{Role, Session};
use crate::shared::{Activity, PeerShared, Punt, Shared, Snapshot};

/// Result of [`FastPath::handle_tun_in_place`].
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastOut {
    /// `buf[..len]` is a sealed datagram for `to`.
    Send { to: SocketAddr, len: usize },
    /// Copied to the owner's queue (or dropped there if it was full, counted).
    Punted,
    /// Dropped and counted.
    Drop(DropReason),
}

/// Result of [`FastPath::handle_udp`].
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastIn {
    /// `dgram[start..start + len]` is the decrypted inner packet, for the TUN.
    WriteTun { start: usize, len: usize },
    /// An authenticated keepalive.
    Consumed,
    /// Copied to the owner's queue (or dropped there if it was full, counted).
    Punted,
    /// Dropped and counted.
    Drop(DropReason),
}

/// Per-peer counts and activity of the current batch.
struct Pending {
    peer: PeerId,
    shared: Arc<PeerShared>,
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
    /// Bit per [`Activity`] seen in this batch.
    activity: u8,
}

/// One fast-path worker (sans-IO: `now` is passed in, outputs are return values).
pub struct FastPath {
    shared: Arc<Shared>,
    index: usize,
    /// Loaded at the first packet of a batch.
    snap: Option<Arc<Snapshot>>,
    now: Instant,
    route_cache: Option<(IpAddr, Option<PeerId>)>,
    pending: Vec<Pending>,
    stats: WorkerStats,
    rx_datagrams: u64,
    tx_datagrams: u64,
    punted: bool,
}

fn expired(s: &Session, now: Instant, snap: &Snapshot) -> bool {
    now.saturating_duration_since(s.created) >= snap.t.reject_after
}

impl FastPath {
    /// Worker `index` (1..N) of `shared`.
    pub fn new(shared: Arc<Shared>, index: usize) -> FastPath {
        FastPath {
            shared,
            index,
            snap: None,
            now: Instant::now(),
            route_cache: None,
            pending: Vec::with_capacity(16),
            stats: WorkerStats::default(),
            rx_datagrams: 0,
            tx_datagrams: 0,
            punted: false,
        }
    }

    /// This worker's counters; the driver adds its I/O counts (TUN/UDP packets and bytes).
    pub fn stats_mut(&mut self) -> &mut WorkerStats {
        &mut self.stats
    }

    /// Takes the batch's snapshot out of `self` (loading it at the first packet of a
    /// batch); [`Self::put_back`] returns it. Moving the `Arc` keeps its (shared) reference
    /// count untouched per packet.
    fn begin(&mut self, now: Instant) -> Arc<Snapshot> {
        self.now = now;
        match self.snap.take() {
            Some(s) => s,
            None => {
                self.route_cache = None;
                self.shared.snapshot.load_full()
            }
        }
    }

    fn put_back(&mut self, snap: Arc<Snapshot>) {
        self.snap = Some(snap);
    }

    fn drop(&mut self, r: DropReason) {
        self.stats.drops[r as usize] += 1;
    }

    fn punt(&mut self, p: Punt) {
        self.stats.punts += 1;
        if self.shared.workers[self.index].punts.push(p) {
            self.punted = true;
        } else {
            self.stats.punt_drops += 1;
        }
    }

    fn lookup(&mut self, snap: &Snapshot, a: IpAddr) -> Option<PeerId> {
        match self.route_cache {
            Some((k, v)) if k == a => v,
            _ => {
                let v = snap.routes.lookup(a);
                self.route_cache = Some((a, v));
                v
            }
        }
    }

    fn pending(&mut self, peer: PeerId, shared: &Arc<PeerShared>) -> &mut Pending {
        let i = match self.pending.iter().position(|p| p.peer == peer) {
            Some(i) => i,
            None => {
                self.pending.push(Pending {
                    peer,
                    shared: Arc::clone(shared),
                    rx_packets: 0,
                    rx_bytes: 0,
                    tx_packets: 0,
                    tx_bytes: 0,
                    activity: 0,
                });
                self.pending.len() - 1
            }
        };
        &mut self.pending[i]
    }

    /// Outbound: the inner packet is at `buf[16..16 + len]`. On `Send`, `buf[..len]` is the
    /// datagram. `buf` must hold the padded packet plus the tag (`len + 47` bytes).
    pub fn handle_tun_in_place(&mut self, now: Instant, buf: &mut [u8], len: usize) -> FastOut {
        let snap = self.begin(now);
        let r = self.tun(&snap, buf, len);
        self.put_back(snap);
        match r {
            Ok(o) => o,
            Err(r) => {
                self.drop(r);
                FastOut::Drop(r)
            }
        }
    }

    fn tun(&mut self, snap: &Snapshot, buf: &mut [u8], len: usize) -> Result<FastOut, DropReason> {
        let pkt = buf
            .get(DATA_HEADER_LEN..DATA_HEADER_LEN + len)
            .ok_or(DropReason::IoError)?;
        let dst = packet::destination(pkt).ok_or(DropReason::BadInnerPacket)?;
        let id = self.lookup(snap, dst).ok_or(DropReason::NoRoute)?;
        let peer = snap.peers.get(&id).ok_or(DropReason::NoRoute)?;
        if let Some(f) = &snap.filter {
            let now_s = self.shared.secs(self.now);
            if let Err(e) = f.check(id, pkt, Dir::Out, now_s, |a| {
                snap.routes.lookup(a) == Some(id)
            }) {
                crate::filter::sample(&peer.shared, now_s, e, pkt, Dir::Out);
                return Err(e);
            }
        }
        let to = peer.endpoint.ok_or(DropReason::NoEndpoint)?;
        let usable = peer
            .current
            .as_ref()
            .filter(|s| s.can_send() && !expired(s, self.now, snap));
        let Some(s) = usable else {
            self.punt(Punt::Tun(pkt.to_vec()));
            return Ok(FastOut::Punted);
        };
        let padded = padded_len(len, usize::from(snap.mtu));
        if buf.len() < padded + DATA_OVERHEAD {
            return Err(DropReason::IoError);
        }
        buf[DATA_HEADER_LEN + len..DATA_HEADER_LEN + padded].fill(0);
        let Some(n) = s.seal(buf, padded) else {
            // Raced to the message limit: the owner stages it and rekeys.
            let pkt = buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len].to_vec();
            self.punt(Punt::Tun(pkt));
            return Ok(FastOut::Punted);
        };
        let rekey = s.role == Role::Initiator
            && (self.now.saturating_duration_since(s.created) >= snap.t.rekey_after
                || s.send_counter() > REKEY_AFTER_MESSAGES);
        if rekey && !peer.shared.want_handshake.load(Ordering::Relaxed) {
            peer.shared.want_handshake.store(true, Ordering::Relaxed);
        }
        let p = self.pending(id, &peer.shared);
        p.tx_packets += 1;
        p.tx_bytes += n as u64;
        p.activity |= 1 << Activity::DataTx as u8;
        self.tx_datagrams += 1;
        Ok(FastOut::Send { to, len: n })
    }

    /// Inbound: one datagram from `from`, decrypted in place on `WriteTun`.
    pub fn handle_udp(&mut self, now: Instant, from: SocketAddr, dgram: &mut [u8]) -> FastIn {
        let snap = self.begin(now);
        let r = self.udp(&snap, from, dgram);
        self.put_back(snap);
        match r {
            Ok(FastIn::Punted) => FastIn::Punted,
            Ok(i) => {
                self.rx_datagrams += 1;
                i
            }
            Err(r) => {
                self.rx_datagrams += 1;
                self.drop(r);
                FastIn::Drop(r)
            }
        }
    }

    fn udp(
        &mut self,
        snap: &Snapshot,
        from: SocketAddr,
        dgram: &mut [u8],
    ) -> Result<FastIn, DropReason> {
        let ty = wg::classify(dgram).map_err(|e| match e {
            WireError::BadLength => DropReason::Malformed,
            _ => DropReason::UnknownType,
        })?;
        let (receiver, counter) = if ty == MSG_DATA {
            let d = DataPacket::new_checked(&*dgram).map_err(|_| DropReason::Malformed)?;
            (d.receiver(), d.counter())
        } else {
            (0, 0)
        };
        let entry = (ty == MSG_DATA)
            .then(|| snap.by_index.get(&receiver))
            .flatten()
            .filter(|e| !e.next);
        let peer = entry.and_then(|e| snap.peers.get(&e.peer));
        let (Some(e), Some(peer)) = (entry, peer) else {
            self.punt(Punt::Udp {
                from,
                data: dgram.to_vec(),
            });
            return Ok(FastIn::Punted);
        };
        if peer.endpoint != Some(from) {
            self.punt(Punt::Udp {
                from,
                data: dgram.to_vec(),
            });
            return Ok(FastIn::Punted);
        }
        let s = &e.session;
        if expired(s, self.now, snap) {
            return Err(DropReason::SessionExpired);
        }
        let plain_len = s.open_once(counter, dgram)?;
        // Authenticated from here on.
        let t = snap.t;
        let fresh_limit = t
            .reject_after
            .saturating_sub(t.keepalive)
            .saturating_sub(t.rekey_timeout);
        if e.current
            && s.role == Role::Initiator
            && self.now.saturating_duration_since(s.created) >= fresh_limit
            && !peer.shared.want_handshake.load(Ordering::Relaxed)
        {
            peer.shared.want_handshake.store(true, Ordering::Relaxed);
        }
        let id = e.peer;
        let len = dgram.len() as u64;
        let p = self.pending(id, &peer.shared);
        p.rx_packets += 1;
        p.rx_bytes += len;
        p.activity |= 1 << Activity::Rx as u8;
        if plain_len == 0 {
            return Ok(FastIn::Consumed);
        }
        p.activity |= 1 << Activity::DataRx as u8;
        let plain = &dgram[DATA_HEADER_LEN..DATA_HEADER_LEN + plain_len];
        let (src, len) = packet::inbound(plain).ok_or(DropReason::BadInnerPacket)?;
        if self.lookup(snap, src) != Some(id) {
            return Err(DropReason::SourceNotAllowed);
        }
        if let Some(f) = &snap.filter {
            let inner = &dgram[DATA_HEADER_LEN..DATA_HEADER_LEN + len];
            let now_s = self.shared.secs(self.now);
            if let Err(e) = f.check(id, inner, Dir::In, now_s, |a| {
                snap.routes.lookup(a) == Some(id)
            }) {
                crate::filter::sample(&peer.shared, now_s, e, inner, Dir::In);
                return Err(e);
            }
        }
        Ok(FastIn::WriteTun {
            start: DATA_HEADER_LEN,
            len,
        })
    }

    /// Ends the batch: adds the per-peer counts to the shared counters, stamps activity,
    /// publishes this worker's counters and drops the snapshot. Returns true if anything
    /// was punted since the last call (the driver then wakes the owner).
    pub fn end_batch(&mut self) -> bool {
        let stamp = self.shared.stamp(self.now);
        for p in self.pending.drain(..) {
            let s = &p.shared;
            if p.rx_packets > 0 {
                s.rx_packets.fetch_add(p.rx_packets, Ordering::Relaxed);
                s.rx_bytes.fetch_add(p.rx_bytes, Ordering::Relaxed);
            }
            if p.tx_packets > 0 {
                s.tx_packets.fetch_add(p.tx_packets, Ordering::Relaxed);
                s.tx_bytes.fetch_add(p.tx_bytes, Ordering::Relaxed);
            }
            for (k, a) in s.activity.iter().enumerate() {
                if p.activity & (1 << k) != 0 {
                    a.fetch_max(stamp, Ordering::Release);
                }
            }
        }
        self.shared.publish_stats(
            self.index,
            &self.stats,
            self.rx_datagrams,
            self.tx_datagrams,
        );
        self.snap = None;
        std::mem::take(&mut self.punted)
    }
}
