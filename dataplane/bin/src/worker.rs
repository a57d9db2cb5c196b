//! Workers 1..N: a `tm_dp::FastPath` between this thread's TUN queue, its `SO_REUSEPORT`
//! socket and its own io_uring loop.
//!
//! Flow: TUN read -> segment (offload mode) straight into the GSO batch -> `FastPath` seals
//! in place -> `TxBatch`; GRO receive -> each datagram opened in place -> `Gro` coalescer ->
//! TUN write on this queue. What the fast path cannot handle it copies into this worker's
//! punt queue; at the end of such a batch the owner is woken by writing its control eventfd.
//! The worker's own eventfd-like wakeup is a pipe the main thread writes to on shutdown.

use std::fs::File;
use std::io::{PipeReader, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tm_dp::offload::Gro;
use tm_dp::{FastIn, FastOut, FastPath};
use tm_dp_io::uring::{Handler, Io};
use tm_wire::ipc::DropReason;

use crate::glue::{deliver, segment_and_seal, IoCounts, TxBatch};

/// The loop handler of one fast-path worker.
pub struct WorkerGlue {
    fp: FastPath,
    vnet: bool,
    tx: TxBatch,
    gro: Gro,
    /// A dup of the owner's control eventfd (written to wake it for punts).
    wake: File,
    /// Readable when the main thread asks this worker to stop (a clone of the reader the
    /// loop polls).
    stop_rx: PipeReader,
    stop: Arc<AtomicBool>,
    io_counts: IoCounts,
    /// Socket/TUN write errors already folded into the drop counters.
    io_errors_seen: u64,
}

impl WorkerGlue {
    pub fn new(
        fp: FastPath,
        vnet: bool,
        coalesce: bool,
        wake: File,
        stop_rx: PipeReader,
        stop: Arc<AtomicBool>,
    ) -> WorkerGlue {
        WorkerGlue {
            fp,
            vnet,
            tx: TxBatch::new(),
            gro: Gro::new(vnet && coalesce),
            wake,
            stop_rx,
            stop,
            io_counts: IoCounts::default(),
            io_errors_seen: 0,
        }
    }

    fn bad_offload(&mut self) {
        self.fp.stats_mut().drops[DropReason::BadInnerPacket as usize] += 1;
    }
}

impl Handler for WorkerGlue {
    fn on_tun(&mut self, io: &mut Io<'_>, pkt: &mut [u8]) {
        let now = io.now();
        let fp = &mut self.fp;
        let r = segment_and_seal(
            &mut self.tx,
            io,
            &mut self.io_counts,
            self.vnet,
            pkt,
            |buf, n| match fp.handle_tun_in_place(now, buf, n) {
                FastOut::Send { to, len } => Some((to, len)),
                FastOut::Punted | FastOut::Drop(_) => None,
            },
        );
        if r.is_err() {
            self.bad_offload();
        }
    }

    fn on_udp(&mut self, io: &mut Io<'_>, from: SocketAddr, dgrams: &mut [u8], seg: usize) {
        self.io_counts.udp_rx(dgrams.len(), seg);
        let now = io.now();
        let seg = if seg == 0 { dgrams.len().max(1) } else { seg };
        for dgram in dgrams.chunks_mut(seg) {
            match self.fp.handle_udp(now, from, dgram) {
                FastIn::WriteTun { start, len } => deliver(
                    &mut self.gro,
                    self.vnet,
                    &mut self.io_counts,
                    io,
                    dgram,
                    start,
                    len,
                ),
                FastIn::Consumed | FastIn::Punted | FastIn::Drop(_) => {}
            }
        }
    }

    fn on_ctl_ready(&mut self, io: &mut Io<'_>) {
        // Only the shutdown path writes the pipe (after setting the flag), so this read
        // finds data and does not block.
        let mut b = [0u8; 64];
        let _ = self.stop_rx.read(&mut b);
        if self.stop.load(Ordering::Acquire) {
            io.stop();
        }
    }

    fn on_timeout(&mut self, _io: &mut Io<'_>) {}

    fn on_batch_end(&mut self, io: &mut Io<'_>) -> Option<Instant> {
        self.tx.flush(io);
        let counts = &mut self.io_counts;
        self.gro.flush(&mut |w: &[u8]| {
            if io.write_tun(w) {
                counts.tun_tx_bytes += w.len() as u64;
            }
        });
        let s = io.stats();
        let errors = s.udp_send_errors + s.tun_write_errors;
        let sent = self.tx.sent_bytes;
        let stats = self.fp.stats_mut();
        stats.drops[DropReason::IoError as usize] += errors - self.io_errors_seen;
        self.io_errors_seen = errors;
        self.io_counts.fill(stats, io, sent);
        if self.fp.end_batch() {
            // Wake the owner for the punts; a failed write only delays them until the
            // owner's next wakeup (at most its timer period).
            let _ = self.wake.write(&1u64.to_ne_bytes());
        }
        if self.stop.load(Ordering::Acquire) {
            io.stop();
        }
        None
    }
}
