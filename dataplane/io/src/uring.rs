//! The io_uring event loop (one worker; the ring is single-issuer with deferred task run).
//!
//! Flow of one iteration:
//! 1. submit queued SQEs and wait for at least one completion;
//! 2. copy the completions out of the CQ, then for each: TUN read done -> `Handler::on_tun`
//!    and re-arm the read; UDP `recvmsg` done -> `Handler::on_udp` and re-arm; control
//!    eventfd readable -> `Handler::on_ctl_ready` and re-arm the poll; timer fired ->
//!    `Handler::on_timeout`; signalfd readable -> stop;
//! 3. `Handler::on_batch_end` flushes outputs (transmits, events to the control ring) and
//!    returns the next deadline; the timer is re-armed if that deadline is earlier than
//!    the armed one (never more than `LoopConfig::max_timer` away).
//!
//! Buffers: one page-aligned [`BufPool`]; slot `i` belongs to the i-th in-flight receive
//! (TUN reads first, then UDP receives) and is only touched by Rust after that receive's
//! completion arrived, so the kernel and the handler never see the same slot at once.
//! Outputs are written with direct nonblocking syscalls from [`Io`] (`write(2)` on the
//! TUN, `sendto`/`sendmsg(MSG_DONTWAIT)` on UDP, with `UDP_SEGMENT` for a batch of equal-size
//! datagrams): the handler's buffer is free again as soon as the call returns, and a full
//! socket buffer is a counted drop, never a stall. UDP receives carry a control buffer, so
//! with `UDP_GRO` on one completion hands the handler many datagrams and their segment size.
//!
//! UDP receive, multishot (default, [`LoopConfig::multishot`]): ONE `recvmsg` SQE with
//! `IORING_RECV_MULTISHOT` over a provided-buffer ring (`BufRing`): every datagram (or GRO
//! batch) completes into a buffer the kernel picked, laid out as `io_uring_recvmsg_out`,
//! source address, control messages, payload; the buffer goes back to the ring as soon as
//! the handler returns. The op stays armed across completions (re-armed when a CQE arrives
//! without `IORING_CQE_F_MORE`, e.g. after `ENOBUFS`). If the kernel refuses the buffer
//! ring or the multishot op, the loop falls back for good to one `recvmsg` per pool slot.
//!
//! Waiting: with [`LoopConfig::wait_nr`] > 1 and [`LoopConfig::min_wait_us`] > 0 (kernel
//! 6.12+, `IORING_FEAT_MIN_TIMEOUT`) the loop sleeps until `wait_nr` completions are ready
//! or `min_wait_us` has passed with at least one: under load one wakeup handles several
//! completions; an idle loop still wakes on the first completion after `min_wait_us`.
//!
//! Shutdown: dropping the loop cancels every in-flight operation and waits for each
//! completion before the pool is freed (if the kernel does not answer, the pool is leaked
//! rather than freed under it).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use crate::signals::SignalFd;
use crate::tun::Tun;
use crate::udp::{RawAddr, UdpSock};
use crate::{IoError, Result};

/// Sizes of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopConfig {
    /// Bytes per buffer; must hold the largest TUN packet (MTU) and the largest datagram
    /// (MTU + 32 bytes of WireGuard overhead). Larger packets are dropped and counted.
    pub buf_size: usize,
    /// TUN reads kept in flight.
    pub tun_reads: usize,
    /// UDP receives kept in flight.
    pub udp_recvs: usize,
    /// Longest timer ever armed (the loop wakes at least this often).
    pub max_timer: Duration,
    /// Use UDP GSO for [`Io::send_udp_gso`] (falls back by itself if the kernel refuses).
    pub udp_gso: bool,
    /// Receive UDP with one multishot `recvmsg` over a provided-buffer ring of
    /// `2 * udp_recvs` buffers (rounded up to a power of two); false: `udp_recvs` single
    /// `recvmsg` ops. Falls back to the latter by itself if the kernel refuses.
    pub multishot: bool,
    /// Completions to wait for before waking (1: wake on the first).
    pub wait_nr: u32,
    /// With `wait_nr > 1`: wake with fewer completions once this many microseconds passed
    /// (0: no batching wait).
    pub min_wait_us: u32,
}

impl LoopConfig {
    /// A configuration for the given TUN MTU (buffers of MTU + 256 bytes, rounded up to 64).
    pub fn for_mtu(mtu: u16) -> LoopConfig {
        LoopConfig {
            buf_size: (usize::from(mtu) + 256).next_multiple_of(64),
            ..LoopConfig::default()
        }
    }

    /// A configuration for super-packets (TUN offloads, UDP GRO/GSO): 64 KiB buffers and
    /// only 4 + 4 receives in flight. Each completion may carry 64 KiB, so a batch is still
    /// up to 512 KiB of work; more in flight only makes the other direction (and a ping)
    /// wait longer behind one batch.
    pub fn for_offload() -> LoopConfig {
        LoopConfig {
            buf_size: 65_536 + 256,
            tun_reads: 4,
            udp_recvs: 4,
            udp_gso: true,
            ..LoopConfig::default()
        }
    }
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            buf_size: 2048,
            tun_reads: 16,
            udp_recvs: 16,
            max_timer: Duration::from_millis(100),
            udp_gso: false,
            multishot: true,
            wait_nr: 1,
            min_wait_us: 0,
        }
    }
}

/// The fds the loop drives. They are borrowed for the loop's lifetime, so they outlive
/// every operation in flight.
#[derive(Debug, Clone, Copy)]
pub struct LoopFds<'a> {
    /// The TUN queue.
    pub tun: &'a Tun,
    /// The tunnel socket.
    pub udp: &'a UdpSock,
    /// The control ring's "to dataplane" eventfd (polled for readability).
    pub ctl_event: Option<BorrowedFd<'a>>,
    /// Termination signals; when one arrives `run` returns [`Exit::Signal`].
    pub signals: Option<&'a SignalFd>,
}

/// Counters kept by the loop itself (the handler keeps protocol counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Packets read from the TUN.
    pub tun_rx: u64,
    /// Packets written to the TUN.
    pub tun_tx: u64,
    /// Datagrams received.
    pub udp_rx: u64,
    /// Datagrams sent.
    pub udp_tx: u64,
    /// Failed TUN reads (other than cancellation).
    pub tun_read_errors: u64,
    /// Failed TUN writes.
    pub tun_write_errors: u64,
    /// Failed UDP receives, truncated datagrams and unknown source families.
    pub udp_recv_errors: u64,
    /// Failed UDP sends (including a full socket buffer).
    pub udp_send_errors: u64,
    /// GSO `sendmsg` calls (each counted datagram-wise in `udp_tx` too).
    pub udp_gso_sends: u64,
    /// UDP GSO sends are in use (cleared when the kernel refused one).
    pub gso_enabled: bool,
    /// Multishot receives ended because every provided buffer was in use (re-armed).
    pub udp_no_bufs: u64,
    /// UDP is received with a multishot `recvmsg` (false: one op per buffer).
    pub multishot: bool,
    /// Batched waits (`min_wait_us`) are in use (false if never asked for or refused).
    pub batched_wait: bool,
}

/// Why [`EventLoop::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A signal from the [`SignalFd`] arrived (its number).
    Signal(i32),
    /// The handler called [`Io::stop`].
    Stopped,
}

/// What the handler can do from a callback: direct, nonblocking output syscalls.
#[derive(Debug)]
pub struct Io<'a> {
    now: Instant,
    tun: &'a Tun,
    udp: &'a UdpSock,
    stats: &'a mut IoStats,
    stop: &'a mut bool,
}

impl<'a> Io<'a> {
    /// The handler's view of one batch (built by the loop from its own disjoint fields).
    fn new(now: Instant, fds: &LoopFds<'a>, stats: &'a mut IoStats, stop: &'a mut bool) -> Io<'a> {
        Io {
            now,
            tun: fds.tun,
            udp: fds.udp,
            stats,
            stop,
        }
    }

    /// The time this batch of completions was reaped (one clock read per batch).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Sends one datagram; false (and counted) on failure.
    pub fn send_udp(&mut self, buf: &[u8], to: SocketAddr) -> bool {
        match self.udp.send_to(buf, to) {
            Ok(_) => {
                self.stats.udp_tx += 1;
                true
            }
            Err(_) => {
                self.stats.udp_send_errors += 1;
                false
            }
        }
    }

    /// Sends `buf` as datagrams of `seg` bytes (the last may be shorter; `seg == 0`: one
    /// datagram) with one GSO `sendmsg`. If the kernel refuses
    /// GSO (`EIO`/`EINVAL`/`ENOPROTOOPT`), GSO is switched off for good and each datagram
    /// is sent on its own. False (and counted) on failure.
    pub fn send_udp_gso(&mut self, buf: &[u8], seg: usize, to: SocketAddr) -> bool {
        let segments = if seg == 0 {
            1
        } else {
            buf.len().div_ceil(seg) as u64
        };
        if segments > 1 && self.stats.gso_enabled {
            match self.udp.send_gso(buf, seg, to) {
                Ok(_) => {
                    self.stats.udp_tx += segments;
                    self.stats.udp_gso_sends += 1;
                    return true;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                    ) =>
                {
                    self.stats.gso_enabled = false;
                }
                Err(_) => {
                    self.stats.udp_send_errors += segments;
                    return false;
                }
            }
        }
        let mut ok = true;
        let each = if seg == 0 { buf.len() } else { seg };
        for d in buf.chunks(each.max(1)) {
            ok &= self.send_udp(d, to);
        }
        ok
    }

    /// Writes one IP packet to the TUN; false (and counted) on failure.
    pub fn write_tun(&mut self, pkt: &[u8]) -> bool {
        match self.tun.write(pkt) {
            Ok(_) => {
                self.stats.tun_tx += 1;
                true
            }
            Err(_) => {
                self.stats.tun_write_errors += 1;
                false
            }
        }
    }

    /// Makes [`EventLoop::run`] return [`Exit::Stopped`] after this batch.
    pub fn stop(&mut self) {
        *self.stop = true;
    }

    /// The loop's counters so far.
    pub fn stats(&self) -> IoStats {
        *self.stats
    }
}

/// The callbacks of the loop (implemented by the binary around `tm_dp::Dataplane`).
pub trait Handler {
    /// One IP packet read from the TUN (the slice may be modified in place).
    fn on_tun(&mut self, io: &mut Io<'_>, pkt: &mut [u8]);
    /// Datagrams received from `from` (v4-mapped sources already converted to IPv4). With
    /// `seg == 0` `dgrams` is one datagram; otherwise (`UDP_GRO`) it holds datagrams of
    /// `seg` bytes each, the last possibly shorter.
    fn on_udp(&mut self, io: &mut Io<'_>, from: SocketAddr, dgrams: &mut [u8], seg: usize);
    /// The control eventfd became readable: clear it, then drain the ring.
    fn on_ctl_ready(&mut self, io: &mut Io<'_>);
    /// The armed timer fired.
    fn on_timeout(&mut self, io: &mut Io<'_>);
    /// End of a batch: flush queued outputs and return the next deadline, if any.
    fn on_batch_end(&mut self, io: &mut Io<'_>) -> Option<Instant>;
}

/// A page-aligned pool of equally sized buffers that stays at one address for its life.
#[derive(Debug)]
pub struct BufPool {
    base: NonNull<u8>,
    size: usize,
    count: usize,
    layout: Layout,
}

impl BufPool {
    /// Allocates `count` zeroed buffers of `size` bytes each.
    pub fn new(size: usize, count: usize) -> io::Result<BufPool> {
        let total = size
            .checked_mul(count)
            .filter(|&t| t > 0)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let layout = Layout::from_size_align(total, 4096)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size (checked above).
        let p = unsafe { alloc_zeroed(layout) };
        let base = NonNull::new(p).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(BufPool {
            base,
            size,
            count,
            layout,
        })
    }

    /// Size of one buffer.
    pub fn buf_size(&self) -> usize {
        self.size
    }

    /// Number of buffers.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always false (a pool has at least one buffer).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Raw pointer to buffer `i` (for SQEs).
    fn ptr(&self, i: usize) -> *mut u8 {
        assert!(i < self.count, "pool slot out of range");
        // SAFETY: i < count, so the offset stays inside the allocation.
        unsafe { self.base.as_ptr().add(i * self.size) }
    }

    /// Buffer `i`, first `len` bytes.
    ///
    /// # Safety
    /// No operation that writes to buffer `i` may be in flight, and no other reference to
    /// it may be alive.
    unsafe fn slice_mut(&mut self, i: usize, len: usize) -> &mut [u8] {
        let len = len.min(self.size);
        // SAFETY: the pointer is in bounds for `size` bytes; exclusivity is the caller's
        // contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(i), len) }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: `base` was allocated with exactly this layout and is freed once.
        unsafe { dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// Bytes in front of the payload in a multishot receive buffer: the `io_uring_recvmsg_out`
/// header (four u32), the source address and the control messages (as sized by [`MULTI_NAME_LEN`]
/// and [`MULTI_CTRL_LEN`] in the multishot op's msghdr).
const MULTI_HDR_LEN: usize = 16;
/// Room for the source address of a multishot receive.
const MULTI_NAME_LEN: usize = size_of::<libc::sockaddr_storage>();
/// Room for the control messages of a multishot receive (`UDP_GRO`: one `cmsg` of 4 bytes).
const MULTI_CTRL_LEN: usize = 64;
const MULTI_PREFIX: usize = MULTI_HDR_LEN + MULTI_NAME_LEN + MULTI_CTRL_LEN;
/// Buffer group id of the UDP provided-buffer ring.
const UDP_BGID: u16 = 7;

/// A provided-buffer ring: `n` buffers (a power of two) the kernel picks from for multishot
/// receives, and the ring of `io_uring_buf` entries it reads them from. Both stay at one
/// address for their life. A buffer is the kernel's from [`BufRing::provide`] until the
/// completion naming its id is reaped.
struct BufRing {
    entries: NonNull<types::BufRingEntry>,
    layout: Layout,
    bufs: BufPool,
    n: u16,
    /// Our copy of the tail published to the kernel.
    tail: u16,
}

impl BufRing {
    fn new(n: u16, buf_size: usize) -> io::Result<BufRing> {
        assert!(
            n.is_power_of_two(),
            "buffer ring size must be a power of two"
        );
        let layout =
            Layout::from_size_align(usize::from(n) * size_of::<types::BufRingEntry>(), 4096)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size (n >= 1).
        let p = unsafe { alloc_zeroed(layout) };
        let entries = NonNull::new(p.cast::<types::BufRingEntry>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let bufs = BufPool::new(buf_size, usize::from(n))?;
        Ok(BufRing {
            entries,
            layout,
            bufs,
            n,
            tail: 0,
        })
    }

    /// Hands buffer `bid` (back) to the kernel.
    fn provide(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.n - 1));
        let addr = self.bufs.ptr(usize::from(bid)) as u64;
        // SAFETY: idx < n, so the entry is inside the allocation. The kernel reads only the
        // entries between its head and the published tail, and this one is at the tail,
        // outside that range until the store below; `set_*` leave the `resv` field (the
        // tail, in entry 0) alone.
        unsafe {
            let e = &mut *self.entries.as_ptr().add(idx);
            e.set_addr(addr);
            e.set_len(self.bufs.buf_size() as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field is the `resv` of entry 0, a naturally aligned u16 inside the
        // allocation that only this thread writes; the kernel reads it with acquire
        // semantics, so the entry written above is visible before the new tail.
        unsafe {
            let t = types::BufRingEntry::tail(self.entries.as_ptr()).cast_mut();
            std::sync::atomic::AtomicU16::from_ptr(t)
                .store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: `entries` was allocated with exactly this layout and is freed once.
        unsafe { dealloc(self.entries.as_ptr().cast(), self.layout) };
    }
}

/// Per-UDP-receive kernel structures; boxed so their addresses never change.
struct RecvMeta {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: libc::sockaddr_storage,
    /// Control messages (the `UDP_GRO` segment size).
    ctrl: [u64; 8],
}

const KIND_SHIFT: u32 = 48;
const K_TUN: u64 = 1;
const K_UDP: u64 = 2;
const K_CTL: u64 = 3;
const K_SIG: u64 = 4;
const K_TIMER: u64 = 5;
const K_CANCEL: u64 = 6;
const K_UDPM: u64 = 7;

fn ud(kind: u64, idx: u64) -> u64 {
    (kind << KIND_SHIFT) | idx
}

/// Consecutive failures of one receive op after which `run` gives up (the fd is broken;
/// spinning on it forever would burn a core).
pub const MAX_CONSECUTIVE_ERRORS: u32 = 1000;

/// The event loop. Not `Send`: create it on the thread that runs it.
pub struct EventLoop<'a> {
    ring: IoUring,
    fds: LoopFds<'a>,
    cfg: LoopConfig,
    pool: BufPool,
    recv: Box<[RecvMeta]>,
    /// The multishot receive's buffers and its msghdr (sizes of name and control room),
    /// while multishot is in use.
    multi: Option<(BufRing, Box<libc::msghdr>)>,
    /// The multishot receive is armed (its final CQE has not arrived yet).
    multi_armed: bool,
    /// A multishot completion has succeeded (a later EINVAL is an error, not "unsupported").
    multi_worked: bool,
    /// Ops submitted whose last CQE has not arrived yet.
    inflight: usize,
    /// Consecutive errors per receive slot.
    errors: Vec<u32>,
    timer_ts: Box<types::Timespec>,
    timer_gen: u64,
    timer_armed: Option<Instant>,
    cqes: Vec<(u64, i32, u32)>,
    stats: IoStats,
    stop: bool,
    exit: Option<Exit>,
    started: bool,
    sig_armed: bool,
}

impl std::fmt::Debug for EventLoop<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("cfg", &self.cfg)
            .field("inflight", &self.inflight)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'a> EventLoop<'a> {
    /// Creates the ring and the buffer pool; nothing is submitted until [`EventLoop::run`].
    pub fn new(cfg: LoopConfig, fds: LoopFds<'a>) -> Result<EventLoop<'a>> {
        let ops = cfg.tun_reads + cfg.udp_recvs + 8;
        let entries = (ops.next_power_of_two() as u32).max(64);
        // Single issuer + deferred task run (6.1+): completions are processed only when this
        // thread enters the kernel to wait, never by interrupting it. Older kernels: the
        // cooperative variant, then a plain ring.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_coop_taskrun().build(entries))
            .or_else(|_| IoUring::new(entries))
            .map_err(IoError::Uring)?;
        let pool = BufPool::new(cfg.buf_size, (cfg.tun_reads + cfg.udp_recvs).max(1))
            .map_err(IoError::Uring)?;
        let recv = (0..cfg.udp_recvs)
            .map(|_| {
                // SAFETY: msghdr, iovec and sockaddr_storage are plain data; all-zero is a
                // valid value (null pointers, zero lengths). Pointers are set before use.
                unsafe { zeroed::<RecvMeta>() }
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let multi = if cfg.multishot {
            Self::register_multi(&ring, &cfg)
        } else {
            None
        };
        let batched_wait =
            cfg.wait_nr > 1 && cfg.min_wait_us > 0 && ring.params().is_feature_min_timeout();
        Ok(EventLoop {
            ring,
            fds,
            cfg,
            pool,
            recv,
            inflight: 0,
            errors: vec![0; cfg.tun_reads + cfg.udp_recvs],
            timer_ts: Box::new(types::Timespec::new()),
            timer_gen: 0,
            timer_armed: None,
            cqes: Vec::with_capacity(entries as usize * 2),
            stats: IoStats {
                gso_enabled: cfg.udp_gso,
                multishot: multi.is_some(),
                batched_wait,
                ..IoStats::default()
            },
            multi,
            multi_armed: false,
            multi_worked: false,
            stop: false,
            exit: None,
            started: false,
            sig_armed: false,
        })
    }

    /// The loop's counters.
    pub fn stats(&self) -> IoStats {
        self.stats
    }

    /// Allocates and registers the UDP buffer ring, every buffer provided; None if the
    /// kernel refuses (no provided-buffer rings: the loop uses single receives).
    fn register_multi(ring: &IoUring, cfg: &LoopConfig) -> Option<(BufRing, Box<libc::msghdr>)> {
        let n = (cfg.udp_recvs.max(1) * 2).next_power_of_two().min(1 << 15) as u16;
        let mut br = BufRing::new(n, MULTI_PREFIX + cfg.buf_size).ok()?;
        // SAFETY: the entry array is page-aligned, `n` entries long, and lives (inside the
        // loop) until the ring is dropped; Drop unregisters it once no op uses it.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                br.entries.as_ptr() as u64,
                n,
                UDP_BGID,
                0,
            )
        }
        .ok()?;
        for bid in 0..n {
            br.provide(bid);
        }
        // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
        let mut hdr: Box<libc::msghdr> = Box::new(unsafe { zeroed() });
        hdr.msg_namelen = MULTI_NAME_LEN as libc::socklen_t;
        hdr.msg_controllen = MULTI_CTRL_LEN as _;
        Some((br, hdr))
    }

    fn arm_udp_multi(&mut self) -> Result<()> {
        let Some((_, hdr)) = &self.multi else {
            return Ok(());
        };
        let e = opcode::RecvMsgMulti::new(
            types::Fd(self.fds.udp.as_fd().as_raw_fd()),
            &**hdr as *const libc::msghdr,
            UDP_BGID,
        )
        .flags(libc::MSG_TRUNC as u32)
        .build()
        .user_data(ud(K_UDPM, 0));
        // SAFETY: the msghdr is boxed inside `self.multi` and only read by the kernel; the
        // buffers come from the registered ring, which outlives every op (Drop drains them
        // before it is unregistered); the socket outlives the loop's in-flight ops.
        unsafe { self.push(&e) }?;
        self.multi_armed = true;
        Ok(())
    }

    /// Multishot receives are not available: receive with one op per pool slot from now on.
    fn multi_fallback(&mut self) -> Result<()> {
        if let Some((br, _)) = self.multi.take() {
            if self.ring.submitter().unregister_buf_ring(UDP_BGID).is_ok() {
                drop(br);
            } else {
                std::mem::forget(br);
            }
        }
        self.stats.multishot = false;
        for j in 0..self.cfg.udp_recvs {
            self.arm_udp(j)?;
        }
        Ok(())
    }

    /// Pushes one SQE (flushing the SQ to the kernel if it is full).
    ///
    /// # Safety
    /// Every buffer and fd the entry refers to must stay valid until its CQE is reaped.
    unsafe fn push(&mut self, e: &squeue::Entry) -> Result<()> {
        // SAFETY: forwarded contract of this function.
        if unsafe { self.ring.submission().push(e) }.is_err() {
            self.ring.submit().map_err(IoError::Uring)?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(e) }
                .map_err(|_| IoError::Uring(io::Error::other("submission queue full")))?;
        }
        self.inflight += 1;
        Ok(())
    }

    fn arm_tun(&mut self, i: usize) -> Result<()> {
        let e = opcode::Read::new(
            types::Fd(self.fds.tun.as_fd().as_raw_fd()),
            self.pool.ptr(i),
            self.cfg.buf_size as u32,
        )
        .build()
        .user_data(ud(K_TUN, i as u64));
        // SAFETY: pool slot `i` is owned by this read until its CQE (nothing else touches
        // it meanwhile); the pool and the TUN fd outlive the loop's in-flight ops (Drop
        // drains them).
        unsafe { self.push(&e) }
    }

    fn arm_udp(&mut self, j: usize) -> Result<()> {
        let slot = self.cfg.tun_reads + j;
        let buf = self.pool.ptr(slot);
        let m = &mut self.recv[j];
        m.iov = libc::iovec {
            iov_base: buf.cast(),
            iov_len: self.cfg.buf_size,
        };
        m.hdr.msg_name = (&mut m.name as *mut libc::sockaddr_storage).cast();
        m.hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        m.hdr.msg_iov = &mut m.iov;
        m.hdr.msg_iovlen = 1;
        m.hdr.msg_control = m.ctrl.as_mut_ptr().cast();
        m.hdr.msg_controllen = size_of::<[u64; 8]>() as _;
        m.hdr.msg_flags = 0;
        let e = opcode::RecvMsg::new(
            types::Fd(self.fds.udp.as_fd().as_raw_fd()),
            &mut m.hdr as *mut libc::msghdr,
        )
        .flags(libc::MSG_TRUNC as u32)
        .build()
        .user_data(ud(K_UDP, j as u64));
        // SAFETY: the msghdr, its iovec and name live in the boxed `recv` slice (stable
        // address) and the buffer is pool slot `slot`, all owned by this receive until its
        // CQE; the socket outlives the loop's in-flight ops.
        unsafe { self.push(&e) }
    }

    fn arm_poll(&mut self, fd: RawFd, kind: u64) -> Result<()> {
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(ud(kind, 0));
        // SAFETY: a poll refers to no memory; the fd is borrowed for the loop's lifetime.
        unsafe { self.push(&e) }
    }

    fn arm_timer(&mut self, now: Instant, deadline: Option<Instant>) -> Result<()> {
        let cap = now + self.cfg.max_timer;
        let want = deadline.map_or(cap, |d| d.min(cap));
        if let Some(armed) = self.timer_armed {
            if want + Duration::from_millis(1) >= armed {
                return Ok(());
            }
        }
        let d = want.saturating_duration_since(now);
        self.timer_gen += 1;
        *self.timer_ts = types::Timespec::new()
            .sec(d.as_secs())
            .nsec(d.subsec_nanos());
        let e = opcode::Timeout::new(&*self.timer_ts as *const types::Timespec)
            .build()
            .user_data(ud(K_TIMER, self.timer_gen));
        // SAFETY: the kernel copies the timespec when the SQE is submitted; the boxed
        // timespec is only rewritten after the next submission.
        unsafe { self.push(&e) }?;
        self.timer_armed = Some(want);
        Ok(())
    }

    /// Runs until a termination signal or [`Io::stop`]. Socket and TUN errors are counted;
    /// only a failing io_uring (or a receive failing [`MAX_CONSECUTIVE_ERRORS`] times in a
    /// row) returns an error.
    pub fn run<H: Handler>(&mut self, h: &mut H) -> Result<Exit> {
        self.stop = false;
        self.exit = None;
        if self.started {
            // Receives are still in flight from the previous run; only the signal poll
            // may have been consumed by a signal exit.
            if let (Some(s), false) = (self.fds.signals, self.sig_armed) {
                self.sig_armed = true;
                self.arm_poll(s.as_fd().as_raw_fd(), K_SIG)?;
            }
        } else {
            self.start()?;
        }
        self.started = true;
        self.drive(h)
    }

    fn start(&mut self) -> Result<()> {
        for i in 0..self.cfg.tun_reads {
            self.arm_tun(i)?;
        }
        if self.multi.is_some() {
            self.arm_udp_multi()?;
        } else {
            for j in 0..self.cfg.udp_recvs {
                self.arm_udp(j)?;
            }
        }
        if let Some(fd) = self.fds.ctl_event {
            self.arm_poll(fd.as_raw_fd(), K_CTL)?;
        }
        if let Some(s) = self.fds.signals {
            self.sig_armed = true;
            self.arm_poll(s.as_fd().as_raw_fd(), K_SIG)?;
        }
        Ok(())
    }

    fn drive<H: Handler>(&mut self, h: &mut H) -> Result<Exit> {
        // Start-up batch: lets the handler flush and report its first deadline.
        let now = Instant::now();
        let deadline = h.on_batch_end(&mut Io::new(
            now,
            &self.fds,
            &mut self.stats,
            &mut self.stop,
        ));
        self.arm_timer(now, deadline)?;

        loop {
            if let Some(exit) = self.exit {
                return Ok(exit);
            }
            if self.stop {
                return Ok(Exit::Stopped);
            }
            let waited = if self.stats.batched_wait {
                let args = types::SubmitArgs::new().min_wait_usec(self.cfg.min_wait_us);
                match self
                    .ring
                    .submitter()
                    .submit_with_args(self.cfg.wait_nr as usize, &args)
                {
                    // An older kernel rejects the (formerly reserved) field: wait plainly.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.stats.batched_wait = false;
                        self.ring.submit_and_wait(1)
                    }
                    r => r,
                }
            } else {
                self.ring.submit_and_wait(1)
            };
            match waited {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EBUSY | libc::ETIME)
                    ) => {}
                Err(e) => return Err(IoError::Uring(e)),
            }
            self.cqes.clear();
            self.cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if self.cqes.is_empty() {
                continue;
            }
            let now = Instant::now();
            let cqes = std::mem::take(&mut self.cqes);
            for &(data, res, flags) in &cqes {
                if !io_uring::cqueue::more(flags) {
                    self.inflight -= 1;
                }
                self.complete(h, now, data, res, flags)?;
            }
            self.cqes = cqes;
            let deadline = h.on_batch_end(&mut Io::new(
                now,
                &self.fds,
                &mut self.stats,
                &mut self.stop,
            ));
            self.arm_timer(now, deadline)?;
        }
    }

    /// One completion of the multishot receive: hand the payload to the handler, give the
    /// buffer back, re-arm if the op ended.
    fn complete_multi<H: Handler>(
        &mut self,
        h: &mut H,
        now: Instant,
        res: i32,
        flags: u32,
    ) -> Result<()> {
        let more = io_uring::cqueue::more(flags);
        if !more {
            self.multi_armed = false;
        }
        let bid = io_uring::cqueue::buffer_select(flags);
        if res >= 0 {
            if let (Some(bid), Some((br, _))) = (bid, self.multi.as_mut()) {
                self.multi_worked = true;
                let len = (res as usize).min(br.bufs.buf_size());
                // SAFETY: the completion names buffer `bid`, so the kernel is done writing it
                // and will not pick it again until `provide(bid)` below; no other reference
                // to it exists.
                let buf = unsafe { br.bufs.slice_mut(usize::from(bid), len) };
                match parse_multi(buf) {
                    Some((from, seg, payload)) => {
                        if let Some(e) = self.errors.get_mut(self.cfg.tun_reads) {
                            *e = 0;
                        }
                        self.stats.udp_rx += 1;
                        let mut io = Io::new(now, &self.fds, &mut self.stats, &mut self.stop);
                        h.on_udp(&mut io, from, payload, seg);
                    }
                    None => self.stats.udp_recv_errors += 1,
                }
                br.provide(bid);
            }
        } else if res == -libc::ENOBUFS {
            self.stats.udp_no_bufs += 1;
        } else if res == -libc::EINVAL && !self.multi_worked {
            // The kernel does not know multishot recvmsg: single receives from now on.
            return self.multi_fallback();
        } else if res != -libc::EAGAIN && res != -libc::EINTR {
            self.stats.udp_recv_errors += 1;
            let slot = self.cfg.tun_reads;
            self.slot_error(slot, -res)?;
        }
        if let (Some(bid), true) = (bid, res < 0) {
            if let Some((br, _)) = self.multi.as_mut() {
                br.provide(bid);
            }
        }
        if !more && self.multi.is_some() {
            self.arm_udp_multi()?;
        }
        Ok(())
    }

    fn slot_error(&mut self, slot: usize, e: i32) -> Result<()> {
        self.errors[slot] += 1;
        if self.errors[slot] >= MAX_CONSECUTIVE_ERRORS {
            return Err(IoError::Uring(io::Error::from_raw_os_error(e)));
        }
        Ok(())
    }

    fn complete<H: Handler>(
        &mut self,
        h: &mut H,
        now: Instant,
        data: u64,
        res: i32,
        flags: u32,
    ) -> Result<()> {
        let kind = data >> KIND_SHIFT;
        let idx = (data & ((1 << KIND_SHIFT) - 1)) as usize;
        if res == -libc::ECANCELED {
            return Ok(());
        }
        match kind {
            K_UDPM => self.complete_multi(h, now, res, flags),
            K_TUN => {
                if res > 0 {
                    self.errors[idx] = 0;
                    self.stats.tun_rx += 1;
                    // SAFETY: the read on slot `idx` completed, so the kernel no longer
                    // writes to it; it is re-armed only after this borrow ends.
                    let pkt = unsafe { self.pool.slice_mut(idx, res as usize) };
                    let mut io = Io::new(now, &self.fds, &mut self.stats, &mut self.stop);
                    h.on_tun(&mut io, pkt);
                } else if res < 0 && res != -libc::EAGAIN && res != -libc::EINTR {
                    self.stats.tun_read_errors += 1;
                    self.slot_error(idx, -res)?;
                }
                self.arm_tun(idx)
            }
            K_UDP => {
                let slot = self.cfg.tun_reads + idx;
                if res >= 0 {
                    let m = &self.recv[idx];
                    let from = RawAddr::decode(&m.name, m.hdr.msg_namelen);
                    // SAFETY: the receive completed, so the kernel filled the control
                    // buffer `msg_control` points at (inside this boxed RecvMeta).
                    let seg = unsafe { crate::udp::gro_segment(&m.hdr) }.unwrap_or(0);
                    let len = res as usize;
                    match from {
                        Some(from) if len <= self.cfg.buf_size => {
                            self.errors[slot] = 0;
                            self.stats.udp_rx += 1;
                            // SAFETY: the receive on this slot completed; the slot is
                            // re-armed only after this borrow ends.
                            let dgram = unsafe { self.pool.slice_mut(slot, len) };
                            let mut io = Io::new(now, &self.fds, &mut self.stats, &mut self.stop);
                            h.on_udp(&mut io, from, dgram, seg);
                        }
                        // Truncated (MSG_TRUNC reports the full length) or odd source.
                        _ => self.stats.udp_recv_errors += 1,
                    }
                } else if res != -libc::EAGAIN && res != -libc::EINTR {
                    self.stats.udp_recv_errors += 1;
                    self.slot_error(slot, -res)?;
                }
                self.arm_udp(idx)
            }
            K_CTL => {
                let fd = self
                    .fds
                    .ctl_event
                    .expect("a ctl poll is armed only with a ctl fd");
                let mut io = Io::new(now, &self.fds, &mut self.stats, &mut self.stop);
                h.on_ctl_ready(&mut io);
                self.arm_poll(fd.as_raw_fd(), K_CTL)
            }
            K_SIG => {
                let s = self
                    .fds
                    .signals
                    .expect("a signal poll is armed only with a signalfd");
                match s.read() {
                    Some(sig) => {
                        self.sig_armed = false;
                        self.exit = Some(Exit::Signal(sig));
                        Ok(())
                    }
                    None => self.arm_poll(s.as_fd().as_raw_fd(), K_SIG),
                }
            }
            K_TIMER => {
                if idx as u64 == self.timer_gen {
                    self.timer_armed = None;
                    let mut io = Io::new(now, &self.fds, &mut self.stats, &mut self.stop);
                    h.on_timeout(&mut io);
                }
                Ok(())
            }
            _ => Ok(()), // K_CANCEL and unknown: nothing owned
        }
    }
}

impl Drop for EventLoop<'_> {
    fn drop(&mut self) {
        if self.inflight == 0 {
            return;
        }
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(ud(K_CANCEL, 0));
        // SAFETY: a cancel request refers to no memory.
        let pushed = unsafe { self.push(&e) }.is_ok();
        let ts = types::Timespec::new().nsec(50_000_000);
        let args = types::SubmitArgs::new().timespec(&ts);
        let mut rounds = 0;
        while pushed && self.inflight > 0 && rounds < 100 {
            rounds += 1;
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(_) => break,
            }
            let n = self
                .ring
                .completion()
                .filter(|c| !io_uring::cqueue::more(c.flags()))
                .count();
            self.inflight -= n.min(self.inflight);
        }
        if self.inflight > 0 {
            // The kernel may still write into the buffers: leak them rather than free them.
            let pool = std::mem::replace(
                &mut self.pool,
                BufPool::new(64, 1).expect("a 64-byte allocation succeeds"),
            );
            std::mem::forget(pool);
            let recv = std::mem::take(&mut self.recv);
            std::mem::forget(recv);
            std::mem::forget(self.multi.take());
        } else if self.multi.is_some() {
            let _ = self.ring.submitter().unregister_buf_ring(UDP_BGID);
        }
    }
}

/// Splits a multishot receive buffer (`io_uring_recvmsg_out`, name, control, payload) into
/// the source address, the `UDP_GRO` segment size (0: one datagram) and the payload. None
/// for a truncated payload or name, or an unknown address family.
fn parse_multi(buf: &mut [u8]) -> Option<(SocketAddr, usize, &mut [u8])> {
    if buf.len() < MULTI_PREFIX {
        return None;
    }
    let word = |i: usize| u32::from_ne_bytes(buf[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    let (namelen, controllen, payloadlen, flags) = (word(0), word(1), word(2), word(3));
    let namelen = namelen as usize;
    if namelen > MULTI_NAME_LEN || flags & libc::MSG_TRUNC as u32 != 0 {
        return None;
    }
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut name: libc::sockaddr_storage = unsafe { zeroed() };
    // SAFETY: `namelen <= MULTI_NAME_LEN == size_of::<sockaddr_storage>()` bytes are copied from
    // inside `buf` (checked length) into `name`; the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            buf.as_ptr().add(MULTI_HDR_LEN),
            (&mut name as *mut libc::sockaddr_storage).cast::<u8>(),
            namelen,
        );
    }
    let from = RawAddr::decode(&name, namelen as libc::socklen_t)?;
    let ctrl_at = MULTI_HDR_LEN + MULTI_NAME_LEN;
    let controllen = (controllen as usize).min(MULTI_CTRL_LEN);
    // SAFETY: all-zero is a valid msghdr.
    let mut hdr: libc::msghdr = unsafe { zeroed() };
    hdr.msg_control = buf[ctrl_at..].as_mut_ptr().cast();
    hdr.msg_controllen = controllen as _;
    // SAFETY: the control region is `controllen` readable bytes inside `buf`, filled by the
    // kernel.
    let seg = unsafe { crate::udp::gro_segment(&hdr) }.unwrap_or(0);
    let payloadlen = payloadlen as usize;
    if MULTI_PREFIX + payloadlen > buf.len() {
        return None;
    }
    Some((from, seg, &mut buf[MULTI_PREFIX..MULTI_PREFIX + payloadlen]))
}
