//! The loop handler: `tm_dp::Dataplane` between the TUN, the UDP socket and the ring.
//!
//! Flow: TUN packet -> `handle_tun` -> send on `Send`; datagram -> `handle_udp` (in place in
//! the receive buffer) -> TUN write on `WriteTun`; control eventfd -> clear it, pop every
//! `CtlMsg` -> `handle_ctl`; end of each batch -> timers due -> drain `poll_transmit`
//! (send) and `poll_event` (encode into the ring, one notify per batch) -> next deadline.
//! Events that do not fit into a full ring wait in a bounded backlog.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;

use tm_dp::{Dataplane, Inbound, Outbound};
use tm_dp_io::uring::{Handler, Io};
use tm_ring::{Endpoint, PushError};
use tm_wire::ipc::{CtlMsg, DpMsg, DropReason};

/// Events kept while the ring to the control plane is full; beyond this they are dropped.
const MAX_BACKLOG: usize = 16 * 1024;

pub struct Glue {
    dp: Dataplane,
    ring: Endpoint,
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
    pub fn new(dp: Dataplane, ring: Endpoint, buf_size: usize) -> Glue {
        Glue {
            dp,
            ring,
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
        match self.dp.handle_tun(io.now(), pkt, &mut self.out) {
            Outbound::Send { to, len } => {
                io.send_udp(&self.out[..len], to);
            }
            Outbound::Queued | Outbound::Drop(_) => {}
        }
    }

    fn on_udp(&mut self, io: &mut Io<'_>, from: std::net::SocketAddr, dgram: &mut [u8]) {
        match self.dp.handle_udp(io.now(), from, dgram) {
            Inbound::WriteTun { start, len } => {
                if let Some(pkt) = dgram.get(start..start.saturating_add(len)) {
                    io.write_tun(pkt);
                }
            }
            Inbound::Consumed | Inbound::Drop(_) => {}
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
        self.timers(now);
        while let Some((to, len)) = self.dp.poll_transmit(now, &mut self.out) {
            io.send_udp(&self.out[..len], to);
        }
        while let Some(mut ev) = self.dp.poll_event() {
            if let DpMsg::Counters { drops, .. } = &mut ev {
                // Socket/TUN write failures are seen here, not in the core.
                let s = io.stats();
                drops[DropReason::IoError as usize] += s.udp_send_errors + s.tun_write_errors;
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
