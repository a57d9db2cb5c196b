//! The [`Dataplane`] state machine.
//!
//! Outbound flow: 1. TUN packet -> 2. destination -> 3. allowed-IPs LPM -> 4. current
//! session usable? else stage + NeedHandshake -> 5. pad, seal in `out` -> 6. Send.
//!
//! Inbound flow: 1. classify -> 2. types 1-3 to the control plane -> 3. session by
//! receiver index -> 4. replay check (read-only) -> 5. open in place -> 6. window
//! update -> 7. confirm `next`, roam, timers -> 8. keepalive? -> 9. inner header,
//! trim padding -> 10. cryptokey routing on the inner source -> 11. WriteTun.

mod ctl;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tm_wire::ipc::{DpMsg, DropReason, PeerId, PeerStats, Prefix, Timers};
use tm_wire::wg::{
    self, timers::REKEY_AFTER_MESSAGES, DataPacket, WireError, DATA_HEADER_LEN, DATA_OVERHEAD,
    MSG_DATA,
};

use crate::filter::{default_flows, ActiveFilter, Dir, FlowTable};
use crate::packet;
use crate::peer::{Peer, PeerTimers, Slot};
use crate::route::RouteTable;
use crate::session::{Role, Session};
use crate::shared::{
    Activity, Durations, IndexEntry, PeerEntry, Punt, Shared, Snapshot, ACTIVITIES,
};
use tm_wire::filter::Reassembly;

/// Counters are reported this often.
const COUNTERS_INTERVAL: Duration = Duration::from_secs(1);
/// Handshake datagrams waiting in the event queue beyond this are dropped (`RingFull`).
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Dataplane configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpConfig {
    /// Tunnel MTU: inner packets are padded up to a multiple of 16 but never beyond it.
    pub mtu: u16,
}

impl Default for DpConfig {
    fn default() -> Self {
        Self { mtu: 1420 }
    }
}

/// Result of [`Dataplane::handle_tun`].
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// `out[..len]` is a datagram for `to`.
    Send { to: SocketAddr, len: usize },
    /// The packet was staged until a session exists.
    Queued,
    /// The packet was dropped (and counted).
    Drop(DropReason),
}

/// Result of [`Dataplane::handle_udp`].
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// `dgram[start..start + len]` is the decrypted inner packet, for the TUN.
    WriteTun { start: usize, len: usize },
    /// Handled internally (keepalive, handshake forwarded as an event).
    Consumed,
    /// The datagram was dropped (and counted).
    Drop(DropReason),
}

/// Work for [`Dataplane::poll_transmit`].
#[derive(Debug)]
enum Pending {
    /// A control-plane datagram, sent verbatim.
    Datagram { to: SocketAddr, data: Vec<u8> },
    /// Seal and send this peer's staged packets.
    Flush(PeerId),
    /// Send a keepalive (empty data message) to this peer.
    Keepalive(PeerId),
}

impl From<Timers> for Durations {
    fn from(t: Timers) -> Self {
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        Self {
            rekey_after: ms(t.rekey_after_ms),
            reject_after: ms(t.reject_after_ms),
            rekey_timeout: ms(t.rekey_timeout_ms),
            keepalive: ms(t.keepalive_timeout_ms),
        }
    }
}

/// The sans-IO packet path of one node. See the crate docs for the call order.
pub struct Dataplane {
    cfg: DpConfig,
    t: Durations,
    peers: BTreeMap<PeerId, Peer>,
    /// Local session index -> owning peer.
    by_index: HashMap<u32, PeerId>,
    /// Allowed-IPs snapshot, republished whenever a peer's allowed IPs change.
    routes: ArcSwap<RouteTable>,
    /// Last allowed-IPs lookup (address -> peer): segments of one super-packet and
    /// datagrams of one GRO batch share it. Cleared whenever the routes change.
    route_cache: Option<(IpAddr, Option<PeerId>)>,
    events: VecDeque<DpMsg>,
    pending_handshakes: usize,
    transmits: VecDeque<Pending>,
    drops: [u64; DropReason::COUNT],
    rx_datagrams: u64,
    tx_datagrams: u64,
    next_counters: Instant,
    /// A lower bound of every peer deadline (session expiry, keepalive, handshake,
    /// persistent keepalive), so that [`Self::poll_timeout`] does not walk every peer on
    /// every batch (issue 16's cost: 1,000 peers walked three times per batch cost 11 %).
    /// Set by [`Self::rescan_timers`] to `min(earliest deadline, now + guard)`; a deadline
    /// set later on the packet path is at least `guard` after its `now` (see
    /// [`Durations::guard`]), so the bound stays below it until the next rescan, which
    /// `handle_timeout` (run when the bound passes), `fold_activity` and every control
    /// message do.
    timer_bound: Instant,
    /// State shared with the fast-path workers (snapshot, punt queues, counters).
    shared: Arc<Shared>,
    /// Peers, sessions, endpoints, routes, timers or the filter changed since the last
    /// snapshot.
    dirty: bool,
    /// The packet filter (None: allow all).
    filter: Option<Arc<ActiveFilter>>,
    /// Generation of the last filter update applied (set or cleared).
    filter_generation: u64,
    /// `SetFilter` transfers that were out of order or did not decode.
    filter_bad: u64,
    reassembly: Reassembly,
    /// The flow table, created with the first filter and kept across generations.
    flows: Option<Arc<FlowTable>>,
    flow_capacity: usize,
}

/// Result of [`Dataplane::handle_punt`].
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PuntResult {
    /// A punted TUN packet: `out[..len]` is a datagram for `to` (or, `Queued`/`Drop`, nothing).
    Tun(Outbound),
    /// A punted datagram: on `WriteTun`, `data[start..start + len]` of the punt's data.
    Udp(Inbound),
}

/// Pads `len` up to a multiple of 16, never beyond `mtu` (and never below `len`).
pub(crate) fn padded_len(len: usize, mtu: usize) -> usize {
    let rounded = len.div_ceil(16) * 16;
    rounded.min(mtu).max(len)
}

fn expired(s: &Session, now: Instant, t: &Durations) -> bool {
    now.saturating_duration_since(s.created) >= t.reject_after
}

/// The earliest deadline of one peer: session expiries and timers.
fn peer_deadline(p: &Peer, t: &Durations) -> Option<Instant> {
    let sessions = [&p.previous, &p.current, &p.next];
    let expiries = sessions
        .into_iter()
        .flatten()
        .map(|s| s.created + t.reject_after);
    let tm = &p.timers;
    let deadlines = [tm.keepalive_due, tm.handshake_due, tm.persistent_due]
        .into_iter()
        .flatten();
    expiries.chain(deadlines).min()
}

/// Current session usable for sending right now.
fn can_send(peer: &Peer, now: Instant, t: &Durations) -> bool {
    peer.current
        .as_ref()
        .is_some_and(|s| s.can_send() && !expired(s, now, t))
}

/// Emits `NeedHandshake` unless one was emitted within the last rekey timeout.
fn need_handshake(
    peer: &mut PeerTimers,
    id: PeerId,
    now: Instant,
    t: &Durations,
    ev: &mut VecDeque<DpMsg>,
) {
    let recent = peer
        .last_need_handshake
        .is_some_and(|at| now.saturating_duration_since(at) < t.rekey_timeout);
    if !recent {
        peer.last_need_handshake = Some(now);
        ev.push_back(DpMsg::NeedHandshake { peer: id });
    }
}

/// Seals `out[16..16 + padded]` with the peer's current session and runs the send-side
/// timers. Caller checked `can_send`. Returns the datagram length.
fn seal_current(
    peer: &mut Peer,
    now: Instant,
    out: &mut [u8],
    padded: usize,
    is_data: bool,
    t: &Durations,
    ev: &mut VecDeque<DpMsg>,
) -> Option<usize> {
    let s = peer.current.as_ref().expect("caller checked can_send");
    let Some(n) = s.seal(out, padded) else {
        // A worker took the last counters since `can_send`: nothing was written.
        return None;
    };
    let rekey = s.role == Role::Initiator
        && (now.saturating_duration_since(s.created) >= t.rekey_after
            || s.send_counter() > REKEY_AFTER_MESSAGES);
    peer.traffic.tx_packets += 1;
    peer.traffic.tx_bytes += n as u64;
    let tm = &mut peer.timers;
    tm.keepalive_due = None;
    if is_data && tm.handshake_due.is_none() {
        tm.handshake_due = Some(now + t.keepalive + t.rekey_timeout);
    }
    if peer.persistent_keepalive > 0 {
        tm.persistent_due = Some(now + Duration::from_secs(u64::from(peer.persistent_keepalive)));
    }
    if rekey {
        need_handshake(tm, peer.id, now, t, ev);
    }
    Some(n)
}

impl Dataplane {
    /// A dataplane with no peers and default timers (one worker: this one).
    pub fn new(cfg: DpConfig, now: Instant) -> Self {
        Self::with_workers(cfg, now, 1)
    }

    /// A dataplane that shares its peer table with `workers - 1` fast-path workers
    /// ([`crate::FastPath::new`] with [`Self::shared`] and indices 1..workers); clamped to
    /// 1..=64.
    pub fn with_workers(cfg: DpConfig, now: Instant, workers: usize) -> Self {
        let t: Durations = Timers::default().into();
        let shared = Arc::new(Shared::new(workers, now, Snapshot::empty(t, cfg.mtu)));
        let flow_capacity = default_flows(shared.workers());
        Self {
            cfg,
            t: Timers::default().into(),
            peers: BTreeMap::new(),
            by_index: HashMap::new(),
            routes: ArcSwap::from_pointee(RouteTable::default()),
            route_cache: None,
            events: VecDeque::new(),
            pending_handshakes: 0,
            transmits: VecDeque::new(),
            drops: [0; DropReason::COUNT],
            rx_datagrams: 0,
            tx_datagrams: 0,
            next_counters: now + COUNTERS_INTERVAL,
            timer_bound: now,
            shared,
            dirty: false,
            filter: None,
            filter_generation: 0,
            filter_bad: 0,
            reassembly: Reassembly::default(),
            flows: None,
            flow_capacity,
        }
    }

    /// Sets the flow table's size (entries) used when the first filter arrives (default
    /// [`crate::filter::default_flows`] of the worker count: 65,536 up to two workers, 32,768
    /// per worker above).
    pub fn set_flow_capacity(&mut self, entries: usize) {
        self.flow_capacity = entries.max(crate::filter::WAYS);
    }

    /// The flow table (once a filter was installed).
    pub fn flow_table(&self) -> Option<&FlowTable> {
        self.flows.as_deref()
    }

    /// Generation of the installed filter, if any.
    pub fn filter_generation(&self) -> Option<u64> {
        self.filter.as_ref().map(|f| f.spec.generation)
    }

    /// Runs the filter on an outbound packet to `peer`.
    fn filter_out(&self, now: Instant, peer: PeerId, pkt: &[u8]) -> Result<(), DropReason> {
        let Some(f) = &self.filter else {
            return Ok(());
        };
        let now_s = self.shared.secs(now);
        // The routes are loaded only for an ICMP error (the rare case that asks).
        let r = f.check(peer, pkt, Dir::Out, now_s, |a| {
            self.routes.load().lookup(a) == Some(peer)
        });
        if let (Err(e), Some(p)) = (r, self.peers.get(&peer)) {
            crate::filter::sample(&p.shared, now_s, e, pkt, Dir::Out);
        }
        r
    }

    /// The state shared with the fast-path workers.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Publishes a new snapshot for the workers if anything changed (only with workers).
    fn publish(&mut self) {
        if !std::mem::take(&mut self.dirty) || self.shared.workers() < 2 {
            return;
        }
        let mut snap = Snapshot::empty(self.t, self.cfg.mtu);
        snap.routes = self.routes.load_full();
        snap.filter = self.filter.clone();
        for p in self.peers.values() {
            snap.peers.insert(
                p.id,
                PeerEntry {
                    endpoint: p.endpoint,
                    current: p.current.clone(),
                    shared: Arc::clone(&p.shared),
                },
            );
            for (slot, s) in [
                (Slot::Current, &p.current),
                (Slot::Previous, &p.previous),
                (Slot::Next, &p.next),
            ] {
                if let Some(s) = s {
                    snap.by_index.insert(
                        s.local_index,
                        IndexEntry {
                            peer: p.id,
                            session: Arc::clone(s),
                            next: slot == Slot::Next,
                            current: slot == Slot::Current,
                        },
                    );
                }
            }
        }
        self.shared.snapshot.store(Arc::new(snap));
    }

    /// Folds what the workers recorded (activity stamps, rekey requests) into the timers.
    /// Called by [`Self::handle_timeout`] and [`Self::poll_timeout`]'s driver before
    /// deciding what is due; a no-op with one worker.
    pub fn fold_activity(&mut self, now: Instant) {
        if self.shared.workers() < 2 {
            return;
        }
        let t = self.t;
        for (&id, p) in self.peers.iter_mut() {
            let mut new: [(u64, usize); ACTIVITIES] = [(0, 0); ACTIVITIES];
            let mut n = 0;
            for (k, a) in p.shared.activity.iter().enumerate() {
                let v = a.load(std::sync::atomic::Ordering::Acquire);
                if v > p.folded[k] {
                    p.folded[k] = v;
                    new[n] = (v, k);
                    n += 1;
                }
            }
            new[..n].sort_unstable();
            for &(stamp, k) in &new[..n] {
                let at = self.shared.instant(stamp);
                let tm = &mut p.timers;
                if k == Activity::Rx as usize {
                    tm.last_rx = Some(tm.last_rx.map_or(at, |l| l.max(at)));
                    tm.handshake_due = None;
                    if p.persistent_keepalive > 0 {
                        tm.persistent_due =
                            Some(at + Duration::from_secs(u64::from(p.persistent_keepalive)));
                    }
                } else if k == Activity::DataRx as usize {
                    if tm.keepalive_due.is_none() {
                        tm.keepalive_due = Some(at + t.keepalive);
                    }
                } else {
                    tm.keepalive_due = None;
                    if tm.handshake_due.is_none() {
                        tm.handshake_due = Some(at + t.keepalive + t.rekey_timeout);
                    }
                    if p.persistent_keepalive > 0 {
                        tm.persistent_due =
                            Some(at + Duration::from_secs(u64::from(p.persistent_keepalive)));
                    }
                }
            }
            // Load first: a swap would write the shared line on every fold.
            if p.shared
                .want_handshake
                .load(std::sync::atomic::Ordering::Relaxed)
                && p.shared
                    .want_handshake
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                need_handshake(&mut p.timers, id, now, &t, &mut self.events);
            }
            // Folded stamps may lie in the past: their deadlines can be below the bound.
            if let Some(d) = peer_deadline(p, &t).filter(|_| n > 0) {
                self.timer_bound = self.timer_bound.min(d);
            }
        }
    }

    /// Next packet a worker punted to this (owner) dataplane, round robin over workers.
    pub fn poll_punt(&mut self) -> Option<Punt> {
        let n = self.shared.workers.len();
        (1..n).find_map(|i| self.shared.workers[i].punts.pop())
    }

    /// Runs a punted packet through the full path: a TUN packet as [`Self::handle_tun`]
    /// (datagram in `out`), a datagram as [`Self::handle_udp`] (decrypted in the punt's
    /// data). Takes the punt mutably so the datagram can be opened in place.
    pub fn handle_punt(&mut self, now: Instant, punt: &mut Punt, out: &mut [u8]) -> PuntResult {
        match punt {
            Punt::Tun(pkt) => PuntResult::Tun(self.handle_tun(now, pkt, out)),
            Punt::Udp { from, data } => {
                let r = self.handle_udp(now, *from, data);
                // The worker that received it counted it already.
                self.rx_datagrams -= 1;
                PuntResult::Udp(r)
            }
        }
    }

    /// The current allowed-IPs snapshot (for workers that route on their own).
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// Global drop counter for `reason`.
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Cumulative counters of one peer.
    pub fn peer_stats(&self, now: Instant, peer: PeerId) -> Option<PeerStats> {
        self.peers.get(&peer).map(|p| Self::stats_of(p, now))
    }

    /// The peer's endpoint as currently known.
    pub fn endpoint(&self, peer: PeerId) -> Option<SocketAddr> {
        self.peers.get(&peer).and_then(|p| p.endpoint)
    }

    fn stats_of(p: &Peer, now: Instant) -> PeerStats {
        use std::sync::atomic::Ordering::Relaxed;
        let sh = &p.shared;
        PeerStats {
            rx_bytes: p.traffic.rx_bytes + sh.rx_bytes.load(Relaxed),
            rx_packets: p.traffic.rx_packets + sh.rx_packets.load(Relaxed),
            tx_bytes: p.traffic.tx_bytes + sh.tx_bytes.load(Relaxed),
            tx_packets: p.traffic.tx_packets + sh.tx_packets.load(Relaxed),
            last_rx_ago_ms: p.timers.last_rx.map_or(u64::MAX, |at| {
                u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX)
            }),
        }
    }

    fn count(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    fn rebuild_routes(&mut self) {
        let entries: Vec<(Prefix, PeerId)> = self
            .peers
            .values()
            .flat_map(|p| p.allowed_ips.iter().map(move |a| (*a, p.id)))
            .collect();
        let table = RouteTable::new(&entries).expect("allowed IPs are normalized on AddPeer");
        self.routes.store(Arc::new(table));
        self.route_cache = None;
        self.dirty = true;
    }

    /// Allowed-IPs lookup through the one-entry cache.
    fn lookup(&mut self, a: IpAddr) -> Option<PeerId> {
        match self.route_cache {
            Some((k, v)) if k == a => v,
            _ => {
                let v = self.routes.load().lookup(a);
                self.route_cache = Some((a, v));
                v
            }
        }
    }

    /// Encapsulates one IP packet read from the TUN into `out`.
    ///
    /// Routes by destination (allowed-IPs longest prefix match), seals for the peer's
    /// current session into `out` (16-byte header + plaintext padded with zeros to a
    /// multiple of 16 but never beyond the MTU + 16-byte tag) and returns the
    /// datagram. Without a usable session the packet is staged (at most 32 per peer,
    /// oldest dropped and counted as `NoSession`) and `NeedHandshake` is emitted
    /// (rate-limited to once per rekey timeout per peer). `out` must hold
    /// `pkt.len() + 47` bytes or the packet is dropped as `IoError`.
    pub fn handle_tun(&mut self, now: Instant, pkt: &[u8], out: &mut [u8]) -> Outbound {
        match self.tun(now, pkt, out) {
            Ok(o) => o,
            Err(r) => {
                self.count(r);
                Outbound::Drop(r)
            }
        }
    }

    /// [`Self::handle_tun`] without the copy: the IP packet is already at
    /// `buf[16..16 + len]` (the data header's room in front of it). `buf` must hold the
    /// padded packet plus the 16-byte tag (`len + 47` bytes is always enough) or the packet
    /// is dropped as `IoError`. On `Send`, `buf[..len]` is the datagram; on `Queued` a copy
    /// was staged.
    pub fn handle_tun_in_place(&mut self, now: Instant, buf: &mut [u8], len: usize) -> Outbound {
        match self.tun_in_place(now, buf, len) {
            Ok(o) => o,
            Err(r) => {
                self.count(r);
                Outbound::Drop(r)
            }
        }
    }

    fn tun_in_place(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        len: usize,
    ) -> Result<Outbound, DropReason> {
        let pkt = buf
            .get(DATA_HEADER_LEN..DATA_HEADER_LEN + len)
            .ok_or(DropReason::IoError)?;
        let dst = packet::destination(pkt).ok_or(DropReason::BadInnerPacket)?;
        let id = self.lookup(dst).ok_or(DropReason::NoRoute)?;
        self.filter_out(now, id, &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len])?;
        let peer = self.peers.get_mut(&id).ok_or(DropReason::NoRoute)?;
        let to = peer.endpoint.ok_or(DropReason::NoEndpoint)?;
        if !can_send(peer, now, &self.t) {
            let pkt = &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len];
            if peer.stage(pkt) {
                self.drops[DropReason::NoSession as usize] += 1;
            }
            need_handshake(&mut peer.timers, id, now, &self.t, &mut self.events);
            return Ok(Outbound::Queued);
        }
        let padded = padded_len(len, usize::from(self.cfg.mtu));
        if buf.len() < padded + DATA_OVERHEAD {
            return Err(DropReason::IoError);
        }
        buf[DATA_HEADER_LEN + len..DATA_HEADER_LEN + padded].fill(0);
        let n = seal_current(peer, now, buf, padded, true, &self.t, &mut self.events)
            .ok_or(DropReason::SessionExpired)?;
        self.tx_datagrams += 1;
        Ok(Outbound::Send { to, len: n })
    }

    fn tun(&mut self, now: Instant, pkt: &[u8], out: &mut [u8]) -> Result<Outbound, DropReason> {
        let dst = packet::destination(pkt).ok_or(DropReason::BadInnerPacket)?;
        let id = self.routes.load().lookup(dst).ok_or(DropReason::NoRoute)?;
        self.filter_out(now, id, pkt)?;
        let peer = self.peers.get_mut(&id).ok_or(DropReason::NoRoute)?;
        let to = peer.endpoint.ok_or(DropReason::NoEndpoint)?;
        if !can_send(peer, now, &self.t) {
            if peer.stage(pkt) {
                self.drops[DropReason::NoSession as usize] += 1;
            }
            need_handshake(&mut peer.timers, id, now, &self.t, &mut self.events);
            return Ok(Outbound::Queued);
        }
        let padded = padded_len(pkt.len(), usize::from(self.cfg.mtu));
        if out.len() < padded + DATA_OVERHEAD {
            return Err(DropReason::IoError);
        }
        out[DATA_HEADER_LEN..DATA_HEADER_LEN + pkt.len()].copy_from_slice(pkt);
        out[DATA_HEADER_LEN + pkt.len()..DATA_HEADER_LEN + padded].fill(0);
        let len = seal_current(peer, now, out, padded, true, &self.t, &mut self.events)
            .ok_or(DropReason::SessionExpired)?;
        self.tx_datagrams += 1;
        Ok(Outbound::Send { to, len })
    }

    /// Handles one UDP datagram, decrypting data messages in place.
    ///
    /// Types 1-3 become `HandshakeDatagram` events. Type 4: session by receiver index,
    /// replay check (window untouched), open in place, then window update; the first
    /// packet under a responder session confirms it (`SessionConfirmed`, staged packets
    /// flush); a new source address updates the endpoint (`EndpointChanged`); an empty
    /// plaintext is a keepalive (`Consumed`); otherwise the inner IPv4/IPv6 header is
    /// validated, padding trimmed, and the inner source must be in this peer's allowed
    /// IPs. Every `Drop` is counted under its reason.
    pub fn handle_udp(&mut self, now: Instant, from: SocketAddr, dgram: &mut [u8]) -> Inbound {
        self.rx_datagrams += 1;
        let r = match self.udp(now, from, dgram) {
            Ok(i) => i,
            Err(r) => {
                self.count(r);
                Inbound::Drop(r)
            }
        };
        if self.dirty {
            self.publish();
        }
        r
    }

    fn udp(
        &mut self,
        now: Instant,
        from: SocketAddr,
        dgram: &mut [u8],
    ) -> Result<Inbound, DropReason> {
        let ty = wg::classify(dgram).map_err(|e| match e {
            WireError::BadLength => DropReason::Malformed,
            _ => DropReason::UnknownType,
        })?;
        if ty != MSG_DATA {
            if self.pending_handshakes >= MAX_PENDING_HANDSHAKES {
                return Err(DropReason::RingFull);
            }
            self.pending_handshakes += 1;
            self.events.push_back(DpMsg::HandshakeDatagram {
                from,
                data: dgram.to_vec(),
            });
            return Ok(Inbound::Consumed);
        }
        let (receiver, counter) = {
            let d = DataPacket::new_checked(&*dgram).map_err(|_| DropReason::Malformed)?;
            (d.receiver(), d.counter())
        };
        let id = *self
            .by_index
            .get(&receiver)
            .ok_or(DropReason::UnknownReceiver)?;
        let peer = self.peers.get_mut(&id).ok_or(DropReason::UnknownReceiver)?;
        let slot = peer.find(receiver).ok_or(DropReason::UnknownReceiver)?;
        let t = self.t;
        let s = peer
            .slot(slot)
            .as_ref()
            .expect("find returned an occupied slot");
        if expired(s, now, &t) {
            return Err(DropReason::SessionExpired);
        }
        let plain_len = s.open_once(counter, dgram)?;
        let role = s.role;
        let created = s.created;
        let local_index = s.local_index;

        // Authenticated from here on.
        if slot == Slot::Next {
            peer.promote_next(&mut self.by_index);
            self.dirty = true;
            self.events.push_back(DpMsg::SessionConfirmed {
                peer: id,
                local_index,
            });
            if !peer.staged.is_empty() && !peer.timers.flush_queued {
                peer.timers.flush_queued = true;
                self.transmits.push_back(Pending::Flush(id));
            }
        }
        if peer.endpoint != Some(from) {
            peer.endpoint = Some(from);
            self.dirty = true;
            self.events.push_back(DpMsg::EndpointChanged {
                peer: id,
                endpoint: from,
            });
        }
        peer.traffic.rx_packets += 1;
        peer.traffic.rx_bytes += dgram.len() as u64;
        let tm = &mut peer.timers;
        tm.last_rx = Some(now);
        tm.handshake_due = None;
        if peer.persistent_keepalive > 0 {
            tm.persistent_due =
                Some(now + Duration::from_secs(u64::from(peer.persistent_keepalive)));
        }
        // Keep the key fresh: an initiator session close to rejection asks for a rekey.
        let fresh_limit = t
            .reject_after
            .saturating_sub(t.keepalive)
            .saturating_sub(t.rekey_timeout);
        let is_current = peer
            .current
            .as_ref()
            .is_some_and(|c| c.local_index == local_index);
        if is_current
            && role == Role::Initiator
            && now.saturating_duration_since(created) >= fresh_limit
        {
            need_handshake(tm, id, now, &t, &mut self.events);
        }
        if plain_len == 0 {
            return Ok(Inbound::Consumed);
        }
        if tm.keepalive_due.is_none() {
            tm.keepalive_due = Some(now + t.keepalive);
        }
        let plain = &dgram[DATA_HEADER_LEN..DATA_HEADER_LEN + plain_len];
        let (src, len) = packet::inbound(plain).ok_or(DropReason::BadInnerPacket)?;
        if self.lookup(src) != Some(id) {
            return Err(DropReason::SourceNotAllowed);
        }
        if let Some(f) = &self.filter {
            let inner = &dgram[DATA_HEADER_LEN..DATA_HEADER_LEN + len];
            let now_s = self.shared.secs(now);
            // The routes are loaded only for an ICMP error (the rare case that asks).
            let routes_to = |a| self.routes.load().lookup(a) == Some(id);
            if let Err(e) = f.check(id, inner, Dir::In, now_s, routes_to) {
                if let Some(p) = self.peers.get(&id) {
                    crate::filter::sample(&p.shared, now_s, e, inner, Dir::In);
                }
                return Err(e);
            }
        }
        Ok(Inbound::WriteTun {
            start: DATA_HEADER_LEN,
            len,
        })
    }

    /// Runs timers due at `now`: session expiry, keepalives, handshake requests,
    /// periodic counters.
    pub fn handle_timeout(&mut self, now: Instant) {
        let t = self.t;
        for (&id, p) in self.peers.iter_mut() {
            if p.shared.drop_sample.load().is_some() {
                if let Some(d) = p.shared.drop_sample.swap(None) {
                    self.events.push_back(DpMsg::FilterDrop {
                        peer: id,
                        reason: d.reason,
                        inbound: d.dir == Dir::In,
                        proto: d.proto,
                        src: d.src,
                        dst: d.dst,
                        sport: d.sport,
                        dport: d.dport,
                    });
                }
            }
            for slot in [Slot::Previous, Slot::Current, Slot::Next] {
                let dead = p.slot(slot).as_ref().is_some_and(|s| expired(s, now, &t));
                if dead {
                    self.dirty = true;
                    if let Some(local_index) = p.clear(slot, &mut self.by_index) {
                        self.events.push_back(DpMsg::SessionExpired {
                            peer: id,
                            local_index,
                        });
                    }
                }
            }
            let usable = can_send(p, now, &t) && p.endpoint.is_some();
            if p.timers.keepalive_due.is_some_and(|d| now >= d) {
                p.timers.keepalive_due = None;
                if usable && !p.timers.keepalive_queued {
                    p.timers.keepalive_queued = true;
                    self.transmits.push_back(Pending::Keepalive(id));
                }
            }
            if p.timers.handshake_due.is_some_and(|d| now >= d) {
                p.timers.handshake_due = None;
                need_handshake(&mut p.timers, id, now, &t, &mut self.events);
            }
            if p.timers.persistent_due.is_some_and(|d| now >= d) {
                let every = Duration::from_secs(u64::from(p.persistent_keepalive));
                p.timers.persistent_due = Some(now + every);
                if usable {
                    if !p.timers.keepalive_queued {
                        p.timers.keepalive_queued = true;
                        self.transmits.push_back(Pending::Keepalive(id));
                    }
                } else {
                    need_handshake(&mut p.timers, id, now, &t, &mut self.events);
                }
            }
        }
        if now >= self.next_counters {
            self.emit_counters(now);
            self.next_counters += COUNTERS_INTERVAL;
            if self.next_counters <= now {
                self.next_counters = now + COUNTERS_INTERVAL;
            }
        }
        self.rescan_timers(now);
        self.publish();
    }

    /// An instant at or before the earliest one at which [`Self::handle_timeout`] has work
    /// (at most a guard interval, <= 1 s, before it). O(1): no walk over the peers.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_counters.min(self.timer_bound))
    }

    /// Walks every peer for its earliest deadline and resets the bound of
    /// [`Self::poll_timeout`].
    pub(crate) fn rescan_timers(&mut self, now: Instant) {
        self.timer_bound = self.earliest_deadline().min(now + self.t.guard());
    }

    /// The bound itself (without the counters' deadline), for tests.
    #[cfg(test)]
    pub(crate) fn timer_bound(&self) -> Instant {
        self.timer_bound
    }

    /// The earliest peer deadline (a walk over every peer; `Instant` far ahead if none).
    pub(crate) fn earliest_deadline(&self) -> Instant {
        let far = self.next_counters + Duration::from_secs(3600);
        self.peers
            .values()
            .filter_map(|p| peer_deadline(p, &self.t))
            .fold(far, Instant::min)
    }

    /// Next datagram that is not the direct result of `handle_tun`: control-plane
    /// handshake datagrams, staged packets flushed after a session install, keepalives.
    /// Writes it to `out` and returns the destination and length. A datagram that does
    /// not fit in `out` is dropped as `IoError`.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let t = self.t;
        let mtu = usize::from(self.cfg.mtu);
        loop {
            match self.transmits.front_mut()? {
                Pending::Datagram { to, data } => {
                    let (to, n) = (*to, data.len());
                    let fits = out.len() >= n;
                    if fits {
                        out[..n].copy_from_slice(data);
                    }
                    self.transmits.pop_front();
                    if !fits {
                        self.count(DropReason::IoError);
                        continue;
                    }
                    self.tx_datagrams += 1;
                    return Some((to, n));
                }
                Pending::Flush(id) => {
                    let id = *id;
                    let Some(p) = self.peers.get_mut(&id) else {
                        self.transmits.pop_front();
                        continue;
                    };
                    let (Some(to), true) = (p.endpoint, can_send(p, now, &t)) else {
                        // Stay staged until the next session.
                        p.timers.flush_queued = false;
                        self.transmits.pop_front();
                        continue;
                    };
                    let Some(pkt) = p.staged.pop_front() else {
                        p.timers.flush_queued = false;
                        self.transmits.pop_front();
                        continue;
                    };
                    if p.staged.is_empty() {
                        p.timers.flush_queued = false;
                        self.transmits.pop_front();
                    }
                    let padded = padded_len(pkt.len(), mtu);
                    if out.len() < padded + DATA_OVERHEAD {
                        self.drops[DropReason::IoError as usize] += 1;
                        continue;
                    }
                    out[DATA_HEADER_LEN..DATA_HEADER_LEN + pkt.len()].copy_from_slice(&pkt);
                    out[DATA_HEADER_LEN + pkt.len()..DATA_HEADER_LEN + padded].fill(0);
                    let Some(n) = seal_current(p, now, out, padded, true, &t, &mut self.events)
                    else {
                        self.drops[DropReason::SessionExpired as usize] += 1;
                        continue;
                    };
                    self.tx_datagrams += 1;
                    return Some((to, n));
                }
                Pending::Keepalive(id) => {
                    let id = *id;
                    self.transmits.pop_front();
                    let Some(p) = self.peers.get_mut(&id) else {
                        continue;
                    };
                    p.timers.keepalive_queued = false;
                    let (Some(to), true) = (p.endpoint, can_send(p, now, &t)) else {
                        continue;
                    };
                    if out.len() < DATA_OVERHEAD {
                        self.drops[DropReason::IoError as usize] += 1;
                        continue;
                    }
                    let Some(n) = seal_current(p, now, out, 0, false, &t, &mut self.events) else {
                        continue;
                    };
                    self.tx_datagrams += 1;
                    return Some((to, n));
                }
            }
        }
    }

    /// Test hook: jump the send counter of `peer`'s current session.
    #[cfg(test)]
    pub(crate) fn set_send_counter(&mut self, peer: PeerId, v: u64) {
        if let Some(s) = self.peers.get(&peer).and_then(|p| p.current.as_ref()) {
            s.set_send_counter(v);
        }
    }

    /// Next event for the control plane (encode with `DpMsg::encode`).
    pub fn poll_event(&mut self) -> Option<DpMsg> {
        let m = self.events.pop_front()?;
        if matches!(m, DpMsg::HandshakeDatagram { .. }) {
            self.pending_handshakes -= 1;
        }
        Some(m)
    }
}
