//! The loop handler: `tm_dp::Dataplane` between the TUN, the UDP socket and the ring.
//!
//! Flow: TUN packet -> `handle_tun` -> send on `Send`; datagram -> `handle_udp` (in place in
//! the receive buffer) -> TUN write on `WriteTun`; control eventfd -> clear it, pop every
//! `CtlMsg` -> `handle_ctl`; end of each batch -> timers due -> drain `poll_transmit`
//! (send) and `poll_event` (encode into the ring, one notify per batch) -> next deadline.
//! Events that do not fit into a full ring wait in a bounded backlog.
//!
//! Offload mode (`IFF_VNET_HDR` TUN): a TUN read is a vnet header + super-packet; it is
//! segmented straight into the transmit batch buffer (room for the 16-byte data header in
//! front of each segment), every segment sealed in place, and consecutive datagrams to one
//! endpoint leave in one GSO `sendmsg` (`TxBatch`). A GRO receive is split into datagrams,
//! each opened in place, and the inner packets go through `tm_dp::offload::Gro`, which
//! coalesces TCP segments of one flow (in order) into super-packets for the TUN write.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Instant;

use std::sync::Arc;

use tm_dp::offload::{Gro, Segmenter, VnetHdr, MAX_SUPER, VNET_HDR_LEN};
use tm_dp::{Dataplane, Inbound, Outbound, PuntResult, Shared};
use tm_dp_io::udp::MAX_GSO_SEGMENTS;
use tm_dp_io::uring::{Handler, Io};
use tm_ring::{Endpoint, PushError};
use tm_wire::ipc::{CtlMsg, DpMsg, DropReason, WorkerStats};

/// I/O counters one worker keeps itself (the loop's `IoStats` has packet counts only).
#[derive(Default)]
pub(crate) struct IoCounts {
    pub tun_rx_packets: u64,
    pub tun_rx_bytes: u64,
    pub tun_tx_bytes: u64,
    pub udp_rx_packets: u64,
    pub udp_rx_bytes: u64,
    pub udp_tx_bytes: u64,
}

impl IoCounts {
    /// Fills the I/O fields of `w` from these counts, the loop's stats and the batch's bytes.
    pub(crate) fn fill(&self, w: &mut WorkerStats, io: &Io<'_>, tx_batch_bytes: u64) {
        let s = io.stats();
        w.tun_rx_packets = self.tun_rx_packets;
        w.tun_rx_bytes = self.tun_rx_bytes;
        w.tun_tx_packets = s.tun_tx;
        w.tun_tx_bytes = self.tun_tx_bytes;
        w.udp_rx_packets = self.udp_rx_packets;
        w.udp_rx_bytes = self.udp_rx_bytes;
        w.udp_tx_packets = s.udp_tx;
        w.udp_tx_bytes = self.udp_tx_bytes + tx_batch_bytes;
    }

    /// Counts one receive of `dgrams` bytes split into `seg`-byte datagrams.
    pub(crate) fn udp_rx(&mut self, len: usize, seg: usize) {
        self.udp_rx_packets += if seg == 0 {
            1
        } else {
            len.div_ceil(seg) as u64
        };
        self.udp_rx_bytes += len as u64;
    }
}

/// Longest delay before worker activity reaches worker 0's timers. Folding walks every peer
/// (1.2 % of the dataplane's CPU under tcp1 with 1,000 peers at 10 ms); activity keeps its own
/// timestamps and a fold always runs right before any timer does, so 100 ms only delays a
/// worker's rekey request by that much.
const FOLD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// Events kept while the ring to the control plane is full; beyond this they are dropped.
const MAX_BACKLOG: usize = 16 * 1024;
/// Payload bytes of one GSO send (the UDP length field and IP total length are 16 bits).
const GSO_MAX_BYTES: usize = 65_000;
/// Room the data header plus tag plus padding need around an inner packet.
const SEAL_ROOM: usize = 16 + 16 + 15;

/// Sealed datagrams waiting to leave as one GSO send: `buf[..len]`, every datagram `seg`
/// bytes except possibly the last, all to `to`.
pub(crate) struct TxBatch {
    pub(crate) buf: Box<[u8]>,
    pub(crate) len: usize,
    seg: usize,
    count: usize,
    to: Option<SocketAddr>,
    /// The last datagram was shorter than `seg`: nothing may follow it.
    closed: bool,
    /// Bytes handed to the socket so far (counters).
    pub(crate) sent_bytes: u64,
}

impl TxBatch {
    pub(crate) fn new() -> TxBatch {
        TxBatch {
            buf: vec![0u8; GSO_MAX_BYTES + MAX_SUPER + 2 * SEAL_ROOM].into_boxed_slice(),
            len: 0,
            seg: 0,
            count: 0,
            to: None,
            closed: false,
            sent_bytes: 0,
        }
    }

    /// Sends what is batched.
    pub(crate) fn flush(&mut self, io: &mut Io<'_>) {
        if let (Some(to), true) = (self.to, self.len > 0) {
            if io.send_udp_gso(&self.buf[..self.len], self.seg, to) {
                self.sent_bytes += self.len as u64;
            }
        }
        self.len = 0;
        self.count = 0;
        self.to = None;
        self.closed = false;
    }

    /// Makes room for an inner packet of up to `max_len` bytes at `self.len + 16`.
    pub(crate) fn reserve(&mut self, io: &mut Io<'_>, max_len: usize) -> bool {
        if self.count >= MAX_GSO_SEGMENTS
            || self.closed
            || self.len + max_len + SEAL_ROOM > GSO_MAX_BYTES
        {
            self.flush(io);
        }
        self.len + max_len + SEAL_ROOM <= self.buf.len()
    }

    /// The datagram `buf[self.len..self.len + n]` for `to` was just sealed: append it, or
    /// flush the batch and start a new one with it.
    pub(crate) fn commit(&mut self, io: &mut Io<'_>, to: SocketAddr, n: usize) {
        if self.count > 0 && (self.to != Some(to) || n > self.seg || self.closed) {
            let at = self.len;
            self.flush(io);
            self.buf.copy_within(at..at + n, 0);
        }
        if self.count == 0 {
            self.seg = n;
            self.to = Some(to);
        }
        self.closed = n < self.seg;
        self.len += n;
        self.count += 1;
    }
}

/// Splits one TUN read (`pkt`: vnet header + super-packet in offload mode, else one packet)
/// into segments written straight into `tx` with room for the data header, and has `seal`
/// seal each in place (`seal(buf, inner_len)` with the inner packet at `buf[16..]`,
/// returning the datagram's destination and length, or None if it was not sent). Counts the
/// read; Err(()) if the packet or its offload header was bad.
pub(crate) fn segment_and_seal(
    tx: &mut TxBatch,
    io: &mut Io<'_>,
    counts: &mut IoCounts,
    vnet: bool,
    pkt: &mut [u8],
    mut seal: impl FnMut(&mut [u8], usize) -> Option<(SocketAddr, usize)>,
) -> Result<(), ()> {
    counts.tun_rx_packets += 1;
    counts.tun_rx_bytes += pkt.len() as u64;
    let (hdr, pkt) = if vnet {
        let h = VnetHdr::decode(pkt).ok_or(())?;
        (h, &pkt[VNET_HDR_LEN..])
    } else {
        (VnetHdr::default(), &pkt[..])
    };
    let mut seg = Segmenter::new(pkt, hdr).map_err(|_| ())?;
    let max = seg.max_segment_len();
    loop {
        if !tx.reserve(io, max) {
            return Err(());
        }
        let at = tx.len;
        let Some(r) = seg.next_into(&mut tx.buf[at + 16..]) else {
            return Ok(());
        };
        let n = r.map_err(|_| ())?;
        if let Some((to, len)) = seal(&mut tx.buf[at..], n) {
            tx.commit(io, to, len);
        }
    }
}

/// Writes the decrypted inner packet `dgram[start..start + len]` to the TUN: through the
/// `Gro` coalescer in offload mode (the vnet header goes in front of it, in the datagram's
/// header room), else as is.
pub(crate) fn deliver(
    gro: &mut Gro,
    vnet: bool,
    counts: &mut IoCounts,
    io: &mut Io<'_>,
    dgram: &mut [u8],
    start: usize,
    len: usize,
) {
    if start < VNET_HDR_LEN || start.saturating_add(len) > dgram.len() {
        return;
    }
    if vnet {
        gro.push(dgram, start, len, &mut |w: &[u8]| {
            if io.write_tun(w) {
                counts.tun_tx_bytes += w.len() as u64;
            }
        });
    } else if io.write_tun(&dgram[start..start + len]) {
        counts.tun_tx_bytes += len as u64;
    }
}

pub struct Glue {
    dp: Dataplane,
    /// Next time the workers' activity stamps are folded into the timers (they are also
    /// folded whenever a timer is due).
    next_fold: Instant,
    ring: Endpoint,
    /// TUN packets carry a vnet header (offload mode).
    vnet: bool,
    tx: TxBatch,
    gro: Gro,
    /// TUN super-packets that did not segment (bad vnet header / headers).
    bad_offload: u64,
    /// Output buffer for sealing and `poll_transmit` (buffer size of the loop).
    out: Vec<u8>,
    /// Encoded events waiting for ring space (oldest first).
    backlog: VecDeque<Vec<u8>>,
    pushed: bool,
    /// Events dropped because the ring stayed full or they were too large.
    events_dropped: u64,
    /// Control messages that did not decode.
    bad_ctl: u64,
    fatal: Option<String>,
    /// Shared with the fast-path workers (their counters, for the reports).
    shared: Arc<Shared>,
    io_counts: IoCounts,
}

impl Glue {
    /// `vnet`: the TUN was opened with `IFF_VNET_HDR`; `coalesce`: TCP segments may be
    /// written to it as `GSO_TCPV4/6` super-packets.
    pub fn new(dp: Dataplane, ring: Endpoint, buf_size: usize, vnet: bool, coalesce: bool) -> Glue {
        let shared = dp.shared();
        Glue {
            dp,
            next_fold: Instant::now(),
            ring,
            vnet,
            tx: TxBatch::new(),
            gro: Gro::new(vnet && coalesce),
            bad_offload: 0,
            out: vec![0; buf_size],
            backlog: VecDeque::new(),
            pushed: false,
            events_dropped: 0,
            bad_ctl: 0,
            fatal: None,
            shared,
            io_counts: IoCounts::default(),
        }
    }

    /// A duplicate of the ring's "to dataplane" eventfd for the loop to poll.
    pub fn ctl_event_fd(&self) -> io::Result<OwnedFd> {
        self.ring.rx.event_fd().try_clone_to_owned()
    }

    /// Set when the control ring became unusable; the loop was stopped.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// Encodes and queues one event (pushed into the ring at once if there is room).
    pub fn push_event(&mut self, m: &DpMsg) {
        let mut b = Vec::with_capacity(64);
        m.encode(&mut b);
        self.backlog.push_back(b);
        self.drain_backlog();
        if self.backlog.len() > MAX_BACKLOG {
            self.backlog.pop_front();
            self.events_dropped += 1;
        }
    }

    fn drain_backlog(&mut self) {
        while let Some(b) = self.backlog.front() {
            match self.ring.tx.try_push(b) {
                Ok(()) => {
                    self.pushed = true;
                    self.backlog.pop_front();
                }
                Err(PushError::Full) => break,
                Err(_) => {
                    self.events_dropped += 1;
                    self.backlog.pop_front();
                }
            }
        }
    }

    /// Wakes the control plane if anything was pushed since the last call.
    pub fn flush_events(&mut self) -> io::Result<()> {
        self.drain_backlog();
        if std::mem::take(&mut self.pushed) {
            self.ring.tx.notify()?;
        }
        Ok(())
    }

    /// Runs every packet the workers punted through the full path.
    fn drain_punts(&mut self, io: &mut Io<'_>) {
        let now = io.now();
        while let Some(mut punt) = self.dp.poll_punt() {
            match self.dp.handle_punt(now, &mut punt, &mut self.out) {
                PuntResult::Tun(Outbound::Send { to, len }) => {
                    let sent = io.send_udp(&self.out[..len], to);
                    self.io_counts.udp_tx_bytes += if sent { len as u64 } else { 0 };
                }
                PuntResult::Udp(Inbound::WriteTun { start, len }) => {
                    let tm_dp::Punt::Udp { data, .. } = &mut punt else {
                        continue;
                    };
                    if start < VNET_HDR_LEN || start.saturating_add(len) > data.len() {
                        continue;
                    }
                    let counts = &mut self.io_counts;
                    if self.vnet {
                        self.gro.push(data, start, len, &mut |w: &[u8]| {
                            if io.write_tun(w) {
                                counts.tun_tx_bytes += w.len() as u64;
                            }
                        });
                    } else if io.write_tun(&data[start..start + len]) {
                        counts.tun_tx_bytes += len as u64;
                    }
                }
                _ => {}
            }
        }
    }

    /// Worker 0's own counters: its I/O plus the drops seen on this thread.
    fn own_stats(&self, io: &Io<'_>, drops: &[u64; DropReason::COUNT]) -> WorkerStats {
        let mut w = WorkerStats {
            drops: *drops,
            ..WorkerStats::default()
        };
        self.io_counts.fill(&mut w, io, self.tx.sent_bytes);
        w
    }

    fn timers(&mut self, now: Instant) {
        // Folding walks every peer: do it every FOLD_INTERVAL (timers have second
        // granularity) and right before any timer runs, not on every batch.
        let due = self.dp.poll_timeout().is_some_and(|d| d <= now);
        if due || now >= self.next_fold {
            self.dp.fold_activity(now);
            self.next_fold = now + FOLD_INTERVAL;
        }
        if self.dp.poll_timeout().is_some_and(|d| d <= now) {
            self.dp.handle_timeout(now);
        }
    }
}

impl Handler for Glue {
    fn on_tun(&mut self, io: &mut Io<'_>, pkt: &mut [u8]) {
        let now = io.now();
        let dp = &mut self.dp;
        let r = segment_and_seal(
            &mut self.tx,
            io,
            &mut self.io_counts,
            self.vnet,
            pkt,
            |buf, n| match dp.handle_tun_in_place(now, buf, n) {
                Outbound::Send { to, len } => Some((to, len)),
                Outbound::Queued | Outbound::Drop(_) => None,
            },
        );
        if r.is_err() {
            self.bad_offload += 1;
        }
    }

    fn on_udp(&mut self, io: &mut Io<'_>, from: SocketAddr, dgrams: &mut [u8], seg: usize) {
        self.io_counts.udp_rx(dgrams.len(), seg);
        let now = io.now();
        let seg = if seg == 0 { dgrams.len().max(1) } else { seg };
        for dgram in dgrams.chunks_mut(seg) {
            match self.dp.handle_udp(now, from, dgram) {
                Inbound::WriteTun { start, len } => deliver(
                    &mut self.gro,
                    self.vnet,
                    &mut self.io_counts,
                    io,
                    dgram,
                    start,
                    len,
                ),
                Inbound::Consumed | Inbound::Drop(_) => {}
            }
        }
    }

    fn on_ctl_ready(&mut self, io: &mut Io<'_>) {
        self.ring.rx.clear_event();
        let now = io.now();
        while let Some(m) = self.ring.rx.try_pop(CtlMsg::decode) {
            match m {
                Ok(m) => self.dp.handle_ctl(now, m),
                Err(_) => self.bad_ctl += 1,
            }
        }
        if self.ring.rx.is_broken() {
            self.fatal = Some("the control plane published a corrupt ring index".into());
            io.stop();
        }
        // The workers wake us through this eventfd too.
        self.drain_punts(io);
    }

    fn on_timeout(&mut self, io: &mut Io<'_>) {
        self.timers(io.now());
    }

    fn on_batch_end(&mut self, io: &mut Io<'_>) -> Option<Instant> {
        let now = io.now();
        self.drain_punts(io);
        self.tx.flush(io);
        let counts = &mut self.io_counts;
        self.gro.flush(&mut |w: &[u8]| {
            if io.write_tun(w) {
                counts.tun_tx_bytes += w.len() as u64;
            }
        });
        self.timers(now);
        while let Some((to, len)) = self.dp.poll_transmit(now, &mut self.out) {
            if io.send_udp(&self.out[..len], to) {
                self.io_counts.udp_tx_bytes += len as u64;
            }
        }
        while let Some(mut ev) = self.dp.poll_event() {
            let mut own = None;
            if let DpMsg::Counters {
                drops,
                rx_datagrams,
                tx_datagrams,
            } = &mut ev
            {
                // Socket/TUN write failures are seen here, not in the core.
                let s = io.stats();
                drops[DropReason::IoError as usize] += s.udp_send_errors + s.tun_write_errors;
                drops[DropReason::BadInnerPacket as usize] += self.bad_offload;
                drops[DropReason::RingFull as usize] += self.events_dropped;
                own = Some(self.own_stats(io, drops));
                // The global counters cover every worker.
                for i in 1..self.shared.workers() {
                    let w = self.shared.worker_stats(i);
                    for (a, b) in drops.iter_mut().zip(w.drops) {
                        *a += b;
                    }
                    let (rx, tx) = self.shared.worker_datagrams(i);
                    *rx_datagrams += rx;
                    *tx_datagrams += tx;
                }
            }
            self.push_event(&ev);
            if let Some(own) = own {
                self.push_event(&DpMsg::WorkerCounters {
                    worker: 0,
                    stats: own,
                });
                for i in 1..self.shared.workers() {
                    let stats = self.shared.worker_stats(i);
                    self.push_event(&DpMsg::WorkerCounters {
                        worker: u16::try_from(i).unwrap_or(u16::MAX),
                        stats,
                    });
                }
            }
        }
        if self.flush_events().is_err() {
            // The eventfd write failed: the parent is gone or the fd is broken; the
            // control plane will see the messages when it next polls.
        }
        self.dp.poll_timeout()
    }
}
