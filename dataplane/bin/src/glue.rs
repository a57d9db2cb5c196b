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

use tm_dp::offload::{Gro, Segmenter, VnetHdr, MAX_SUPER, VNET_HDR_LEN};
use tm_dp::{Dataplane, Inbound, Outbound};
use tm_dp_io::udp::MAX_GSO_SEGMENTS;
use tm_dp_io::uring::{Handler, Io};
use tm_ring::{Endpoint, PushError};
use tm_wire::ipc::{CtlMsg, DpMsg, DropReason};

/// Events kept while the ring to the control plane is full; beyond this they are dropped.
const MAX_BACKLOG: usize = 16 * 1024;
/// Payload bytes of one GSO send (the UDP length field and IP total length are 16 bits).
const GSO_MAX_BYTES: usize = 65_000;
/// Room the data header plus tag plus padding need around an inner packet.
const SEAL_ROOM: usize = 16 + 16 + 15;

/// Sealed datagrams waiting to leave as one GSO send: `buf[..len]`, every datagram `seg`
/// bytes except possibly the last, all to `to`.
struct TxBatch {
    buf: Box<[u8]>,
    len: usize,
    seg: usize,
    count: usize,
    to: Option<SocketAddr>,
    /// The last datagram was shorter than `seg`: nothing may follow it.
    closed: bool,
}

impl TxBatch {
    fn new() -> TxBatch {
        TxBatch {
            buf: vec![0u8; GSO_MAX_BYTES + MAX_SUPER + 2 * SEAL_ROOM].into_boxed_slice(),
            len: 0,
            seg: 0,
            count: 0,
            to: None,
            closed: false,
        }
    }

    /// Sends what is batched.
    fn flush(&mut self, io: &mut Io<'_>) {
        if let (Some(to), true) = (self.to, self.len > 0) {
            io.send_udp_gso(&self.buf[..self.len], self.seg, to);
        }
        self.len = 0;
        self.count = 0;
        self.to = None;
        self.closed = false;
    }

    /// Makes room for an inner packet of up to `max_len` bytes at `self.len + 16`.
    fn reserve(&mut self, io: &mut Io<'_>, max_len: usize) -> bool {
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
    fn commit(&mut self, io: &mut Io<'_>, to: SocketAddr, n: usize) {
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

pub struct Glue {
    dp: Dataplane,
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
}

impl Glue {
    /// `vnet`: the TUN was opened with `IFF_VNET_HDR`; `coalesce`: TCP segments may be
    /// written to it as `GSO_TCPV4/6` super-packets.
    pub fn new(dp: Dataplane, ring: Endpoint, buf_size: usize, vnet: bool, coalesce: bool) -> Glue {
        Glue {
            dp,
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

    fn timers(&mut self, now: Instant) {
        if self.dp.poll_timeout().is_some_and(|d| d <= now) {
            self.dp.handle_timeout(now);
        }
    }
}

impl Handler for Glue {
    fn on_tun(&mut self, io: &mut Io<'_>, pkt: &mut [u8]) {
        let (hdr, pkt) = if self.vnet {
            match VnetHdr::decode(pkt) {
                Some(h) => (h, &pkt[VNET_HDR_LEN..]),
                None => {
                    self.bad_offload += 1;
                    return;
                }
            }
        } else {
            (VnetHdr::default(), &pkt[..])
        };
        let mut seg = match Segmenter::new(pkt, hdr) {
            Ok(s) => s,
            Err(_) => {
                self.bad_offload += 1;
                return;
            }
        };
        let now = io.now();
        let max = seg.max_segment_len();
        loop {
            if !self.tx.reserve(io, max) {
                self.bad_offload += 1;
                return;
            }
            let at = self.tx.len;
            let Some(r) = seg.next_into(&mut self.tx.buf[at + 16..]) else {
                return;
            };
            let Ok(n) = r else {
                self.bad_offload += 1;
                return;
            };
            match self.dp.handle_tun_in_place(now, &mut self.tx.buf[at..], n) {
                Outbound::Send { to, len } => self.tx.commit(io, to, len),
                Outbound::Queued | Outbound::Drop(_) => {}
            }
        }
    }

    fn on_udp(&mut self, io: &mut Io<'_>, from: SocketAddr, dgrams: &mut [u8], seg: usize) {
        let now = io.now();
        let seg = if seg == 0 { dgrams.len().max(1) } else { seg };
        for dgram in dgrams.chunks_mut(seg) {
            match self.dp.handle_udp(now, from, dgram) {
                Inbound::WriteTun { start, len } => {
                    if start < VNET_HDR_LEN || start.saturating_add(len) > dgram.len() {
                        continue;
                    }
                    if self.vnet {
                        self.gro.push(dgram, start, len, &mut |w: &[u8]| {
                            io.write_tun(w);
                        });
                    } else {
                        io.write_tun(&dgram[start..start + len]);
                    }
                }
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
    }

    fn on_timeout(&mut self, io: &mut Io<'_>) {
        self.timers(io.now());
    }

    fn on_batch_end(&mut self, io: &mut Io<'_>) -> Option<Instant> {
        let now = io.now();
        self.tx.flush(io);
        self.gro.flush(&mut |w: &[u8]| {
            io.write_tun(w);
        });
        self.timers(now);
        while let Some((to, len)) = self.dp.poll_transmit(now, &mut self.out) {
            io.send_udp(&self.out[..len], to);
        }
        while let Some(mut ev) = self.dp.poll_event() {
            if let DpMsg::Counters { drops, .. } = &mut ev {
                // Socket/TUN write failures are seen here, not in the core.
                let s = io.stats();
                drops[DropReason::IoError as usize] += s.udp_send_errors + s.tun_write_errors;
                drops[DropReason::BadInnerPacket as usize] += self.bad_offload;
                drops[DropReason::RingFull as usize] += self.events_dropped;
            }
            self.push_event(&ev);
        }
        if self.flush_events().is_err() {
            // The eventfd write failed: the parent is gone or the fd is broken; the
            // control plane will see the messages when it next polls.
        }
        self.dp.poll_timeout()
    }
}
