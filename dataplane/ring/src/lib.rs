//! Shared-memory SPSC rings between the control plane and the dataplane (memfd + eventfd).
//!
//! One memfd mapping holds a header (magic, ring [`ABI_VERSION`], the caller's IPC schema
//! version, slot geometry) and two single-producer/single-consumer rings of fixed slots:
//! ring A control -> dataplane, ring B dataplane -> control. Two eventfds carry wake-ups,
//! one per direction.
//!
//! What it does: moves opaque byte messages (up to `slot_size - 4` bytes) between exactly
//! two processes, and helps the control plane hand the fds to the dataplane child
//! ([`pass_fds`]).
//! What it never does: encode or interpret messages (that is `tm-wire::ipc`), block, spawn
//! threads, or allocate on the push/pop path. A half never blocks: `try_push` returns
//! [`PushError::Full`], `try_pop` returns `None`.
//!
//! Call order:
//! 1. control: [`create`] -> (`Endpoint`, [`ChildFds`]); [`pass_fds`] onto e.g. 3,4,5 of a
//!    `Command`; spawn; drop the `ChildFds`.
//! 2. dataplane: [`ChildFds::from_raw`]`(3, 4, 5)`, then [`attach`] (validates magic, ABI,
//!    IPC version, geometry; at most one attach per ring).
//! 3. either side, sending: [`Producer::try_push`] a batch, then [`Producer::notify`].
//! 4. either side, receiving: wait until [`Consumer::event_fd`] is readable (tokio
//!    `AsyncFd`, io_uring poll, `poll(2)`), then [`Consumer::clear_event`] *before* draining
//!    with [`Consumer::try_pop`] until `None` — clearing after draining can lose a wake-up.
//!
//! A dataplane restart needs a fresh [`create`]: a ring is attached once.
//!
//! The slice `try_pop` hands out points into the shared mapping; the peer is trusted not to
//! write published slots (it is our own binary), but indices and lengths it publishes are
//! bounds-checked: a violation marks that half broken ([`Consumer::is_broken`],
//! [`PushError::Broken`]) instead of touching memory outside the ring.

#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(not(loom))]
#[doc(hidden)]
pub mod fuzzing;
mod layout;
mod spsc;
mod sys;

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

pub use crate::layout::ABI_VERSION;
pub use crate::spsc::PushError;

use crate::layout::{Header, Layout, HEADER_LEN, MAX_TOTAL_LEN};
use crate::spsc::{RawConsumer, RawProducer, Region};

/// Errors from setting up or attaching a ring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The requested [`RingConfig`] is out of range.
    #[error("invalid ring config: {0}")]
    InvalidConfig(&'static str),
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// The failing call.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The mapping does not start with the ring magic (wrong fd, or not a tm-ring memfd).
    #[error("bad ring magic {found:#018x}")]
    BadMagic {
        /// The first 8 bytes found.
        found: u64,
    },
    /// The ring layout version differs between the two binaries.
    #[error("ring ABI version mismatch: expected {expected}, found {found}")]
    AbiMismatch {
        /// Our [`ABI_VERSION`].
        expected: u32,
        /// The creator's.
        found: u32,
    },
    /// The message schema version differs between the two binaries.
    #[error("IPC schema version mismatch: expected {expected}, found {found}")]
    IpcVersionMismatch {
        /// The version the attaching side speaks.
        expected: u32,
        /// The version the creator wrote.
        found: u32,
    },
    /// The header geometry is inconsistent or disagrees with the memfd size.
    #[error("bad ring layout: {0}")]
    BadLayout(&'static str),
    /// The fd is not a memfd sealed against shrinking (a peer could truncate it under us).
    #[error("ring memfd is not sealed against shrinking")]
    NotSealed,
    /// The ring was already attached once; a second consumer would break SPSC.
    #[error("ring already attached")]
    AlreadyAttached,
}

/// Ring geometry, identical for both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Bytes per slot including the 4-byte length prefix; a multiple of 8 in 16..=1 MiB.
    pub slot_size: u32,
    /// Slots per ring; a power of two in 2..=2^20.
    pub slot_count: u32,
}

impl Default for RingConfig {
    /// 2048-byte slots (messages up to 2044 bytes) x 1024 per direction (~4 MiB total).
    fn default() -> Self {
        Self {
            slot_size: 2048,
            slot_count: 1024,
        }
    }
}

impl RingConfig {
    /// Largest message a slot holds (`slot_size - 4`).
    pub fn max_msg_len(&self) -> usize {
        (self.slot_size as usize).saturating_sub(layout::LEN_PREFIX)
    }
}

/// The three fds the dataplane child needs, in `--ring-fds M,A,B` order.
#[derive(Debug)]
pub struct ChildFds {
    /// The sealed memfd holding header and both rings.
    pub memfd: OwnedFd,
    /// Eventfd the control plane signals after pushing to ring A.
    pub to_child_event: OwnedFd,
    /// Eventfd the dataplane signals after pushing to ring B.
    pub to_parent_event: OwnedFd,
}

impl ChildFds {
    /// Takes ownership of inherited fds (memfd, to-child eventfd, to-parent eventfd).
    ///
    /// # Safety
    /// Each fd must be open, owned by nobody else in this process, and not closed elsewhere
    /// (IO safety). [`attach`] then checks that `memfd` really is a sealed ring memfd.
    pub unsafe fn from_raw(memfd: RawFd, a: RawFd, b: RawFd) -> Self {
        // SAFETY: ownership of the three fds is transferred to us by the caller's contract.
        unsafe {
            Self {
                memfd: OwnedFd::from_raw_fd(memfd),
                to_child_event: OwnedFd::from_raw_fd(a),
                to_parent_event: OwnedFd::from_raw_fd(b),
            }
        }
    }

    /// `[memfd, to_child_event, to_parent_event]` as raw numbers.
    pub fn raw(&self) -> [RawFd; 3] {
        [
            self.memfd.as_raw_fd(),
            self.to_child_event.as_raw_fd(),
            self.to_parent_event.as_raw_fd(),
        ]
    }
}

/// One side's halves: `tx` pushes into the peer's inbound ring, `rx` pops from ours.
///
/// Each half is `Send` (movable to its own thread) but not `Sync`.
#[derive(Debug)]
pub struct Endpoint {
    /// Sending half.
    pub tx: Producer,
    /// Receiving half.
    pub rx: Consumer,
}

/// Sending half of one ring. Call order: `try_push`* then `notify`.
#[derive(Debug)]
pub struct Producer {
    raw: RawProducer,
    event: OwnedFd,
    /// Something was pushed since the last successful `notify`.
    pending: Cell<bool>,
}

impl Producer {
    /// Copies `msg` into the next free slot and publishes it. Does not wake the consumer.
    pub fn try_push(&mut self, msg: &[u8]) -> Result<(), PushError> {
        self.raw.try_push(msg)?;
        self.pending.set(true);
        Ok(())
    }

    /// Wakes the consumer (adds 1 to its eventfd) — call after a batch of pushes. A no-op
    /// if nothing was pushed since the last successful `notify`.
    pub fn notify(&self) -> io::Result<()> {
        if !self.pending.replace(false) {
            return Ok(());
        }
        sys::eventfd_signal(self.event.as_fd()).inspect_err(|_| self.pending.set(true))
    }

    /// Largest message accepted (`slot_size - 4`).
    pub fn max_msg_len(&self) -> usize {
        self.raw.max_msg_len()
    }

    /// Free slots right now (reloads the consumer's index; a lower bound).
    pub fn free_slots(&mut self) -> usize {
        self.raw.free_slots()
    }

    /// True once the consumer published an impossible index; every push then fails.
    pub fn is_broken(&self) -> bool {
        self.raw.is_broken()
    }
}

/// Receiving half of one ring. Call order: wait for `event_fd`, `clear_event`, `try_pop`
/// until `None`.
#[derive(Debug)]
pub struct Consumer {
    raw: RawConsumer,
    event: OwnedFd,
}

impl Consumer {
    /// Hands the oldest message to `f` and frees its slot after `f` returns (zero-copy: the
    /// slice points into shared memory). `None` if the ring is empty or broken.
    pub fn try_pop<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.raw.try_pop(f)
    }

    /// Readable once the producer notified; level-triggered until [`Self::clear_event`].
    pub fn event_fd(&self) -> BorrowedFd<'_> {
        self.event.as_fd()
    }

    /// Resets the eventfd counter (non-blocking; a no-op if not signalled).
    pub fn clear_event(&self) {
        sys::eventfd_drain(self.event.as_fd());
    }

    /// Messages waiting right now.
    pub fn len(&mut self) -> usize {
        self.raw.len()
    }

    /// True if no message is waiting right now.
    pub fn is_empty(&mut self) -> bool {
        self.raw.len() == 0
    }

    /// True once the producer published an impossible index or length; `try_pop` then
    /// always returns `None` and the peer should be restarted.
    pub fn is_broken(&self) -> bool {
        self.raw.is_broken()
    }
}

impl AsFd for Consumer {
    /// The event fd, so `tokio::io::unix::AsyncFd<Consumer>` works directly.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.event_fd()
    }
}

impl AsRawFd for Consumer {
    fn as_raw_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

fn attached_flag(region: &Region) -> &AtomicU32 {
    // SAFETY: offset 48 (`field::ATTACHED`) lies inside the 128-byte header, is 4-aligned (region is line
    // aligned), and both processes only access it atomically; `region` outlives the borrow.
    unsafe {
        &*region
            .base()
            .as_ptr()
            .add(layout::field::ATTACHED)
            .cast::<AtomicU32>()
    }
}

/// Control side: creates the sealed memfd, maps and initialises it, creates the two
/// eventfds (`EFD_NONBLOCK | EFD_CLOEXEC`). Returns the control [`Endpoint`] (tx = ring A,
/// rx = ring B) and the fds to hand to the child. All fds are close-on-exec; use
/// [`pass_fds`] to pass them.
pub fn create(cfg: RingConfig, ipc_version: u32) -> Result<(Endpoint, ChildFds), RingError> {
    let layout = Layout::new(cfg)?;
    let memfd = sys::sealed_memfd(layout.total_len)?;
    let base = sys::map_shared(memfd.as_fd(), layout.total_len)?;
    // SAFETY: `base` is the live mapping just created, of `total_len` bytes, owned by us.
    let region = Arc::new(unsafe { Region::from_mmap(base, layout.total_len) });
    let header = Header::new(cfg, &layout, ipc_version).encode();
    // SAFETY: the mapping is at least HEADER_LEN bytes and nobody else can see it yet (the fd
    // has not been shared), so a plain copy cannot race.
    unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), base.as_ptr(), HEADER_LEN) };

    let to_child = sys::eventfd()?;
    let to_parent = sys::eventfd()?;
    let dup = |fd: &OwnedFd| {
        fd.try_clone().map_err(|source| RingError::Io {
            op: "dup eventfd",
            source,
        })
    };
    let endpoint = Endpoint {
        tx: Producer {
            raw: spsc::producer(&region, &layout, layout.ring_a_off),
            event: dup(&to_child)?,
            pending: Cell::new(false),
        },
        rx: Consumer {
            raw: spsc::consumer(&region, &layout, layout.ring_b_off),
            event: dup(&to_parent)?,
        },
    };
    Ok((
        endpoint,
        ChildFds {
            memfd,
            to_child_event: to_child,
            to_parent_event: to_parent,
        },
    ))
}

/// Dataplane side: maps the inherited memfd, validates magic / ABI / IPC version / geometry
/// (specific [`RingError`] per mismatch), marks the ring attached, closes the memfd (the
/// mapping stays) and sets close-on-exec on the eventfds. Returns the dataplane
/// [`Endpoint`] (tx = ring B, rx = ring A).
pub fn attach(fds: ChildFds, expected_ipc_version: u32) -> Result<Endpoint, RingError> {
    let ChildFds {
        memfd,
        to_child_event,
        to_parent_event,
    } = fds;
    let seals = sys::seals(memfd.as_fd()).map_err(|_| RingError::NotSealed)?;
    if seals & libc::F_SEAL_SHRINK == 0 {
        return Err(RingError::NotSealed);
    }
    let file_len = sys::file_len(memfd.as_fd())?;
    if file_len < HEADER_LEN as u64 {
        return Err(RingError::BadLayout("memfd smaller than the header"));
    }
    if file_len > MAX_TOTAL_LEN {
        return Err(RingError::BadLayout("memfd larger than the 1 GiB limit"));
    }
    let len = file_len as usize;
    let base = sys::map_shared(memfd.as_fd(), len)?;
    // SAFETY: `base` is the live mapping just created, of `len` bytes, owned by us.
    let region = Arc::new(unsafe { Region::from_mmap(base, len) });
    drop(memfd);

    let mut raw = [0u8; HEADER_LEN];
    // SAFETY: the mapping has at least HEADER_LEN bytes; the creator wrote the header before
    // handing out the fd and never writes the immutable fields again.
    unsafe { std::ptr::copy_nonoverlapping(base.as_ptr(), raw.as_mut_ptr(), HEADER_LEN) };
    let layout = Header::decode(&raw).validate(expected_ipc_version, file_len)?;
    if attached_flag(&region)
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(RingError::AlreadyAttached);
    }
    sys::set_cloexec(to_child_event.as_raw_fd())?;
    sys::set_cloexec(to_parent_event.as_raw_fd())?;
    Ok(Endpoint {
        tx: Producer {
            raw: spsc::producer(&region, &layout, layout.ring_b_off),
            event: to_parent_event,
            pending: Cell::new(false),
        },
        rx: Consumer {
            raw: spsc::consumer(&region, &layout, layout.ring_a_off),
            event: to_child_event,
        },
    })
}

/// Configures `cmd` so the child gets each `(fd, target)` dup2'ed onto `target` (without
/// close-on-exec) and `PR_SET_PDEATHSIG(SIGTERM)`.
///
/// The fds must stay open until `cmd.spawn()` returns (drop the [`ChildFds`] afterwards).
/// Overlapping sources and targets are handled (all sources are first duplicated above
/// every target). If the parent died before `prctl` ran, spawning fails.
///
/// Caveat: Linux delivers the death signal when the *thread* that forked exits, not the
/// process. Spawn from a long-lived thread (the main thread or a dedicated one), not from
/// e.g. tokio's blocking pool, or the child gets SIGTERM when that thread retires.
pub fn pass_fds(cmd: &mut std::process::Command, fds: &[(BorrowedFd<'_>, RawFd)]) {
    let pairs: Vec<(RawFd, RawFd)> = fds.iter().map(|(fd, t)| (fd.as_raw_fd(), *t)).collect();
    let floor = pairs.iter().map(|p| p.1).max().unwrap_or(2).max(2) + 1;
    let mut tmp: Vec<RawFd> = vec![-1; pairs.len()];
    let parent = std::process::id() as libc::pid_t;
    let hook = move || -> io::Result<()> {
        // Runs in the forked child: only async-signal-safe calls, no allocation.
        for (slot, (src, _)) in tmp.iter_mut().zip(pairs.iter()) {
            // SAFETY: duplicating an fd inherited from the parent; no memory is touched.
            let d = unsafe { libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, floor) };
            if d < 0 {
                return Err(io::Error::last_os_error());
            }
            *slot = d;
        }
        for (d, (_, target)) in tmp.iter().zip(pairs.iter()) {
            // SAFETY: `d` is a valid fd (above); dup2 clears FD_CLOEXEC on `target`.
            if unsafe { libc::dup2(*d, *target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory is touched.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook performs only async-signal-safe system calls (fcntl, dup2, prctl,
    // getppid) on captured, pre-allocated data and does not allocate or take locks.
    unsafe { cmd.pre_exec(hook) };
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::spsc::tests::gen;

    fn small() -> RingConfig {
        RingConfig {
            slot_size: 256,
            slot_count: 8,
        }
    }

    /// Overwrites header bytes through the memfd (shared with any mapping).
    fn poke(fds: &ChildFds, off: usize, bytes: &[u8]) {
        // SAFETY: pwrite from a valid buffer to an open fd.
        let n = unsafe {
            libc::pwrite(
                fds.memfd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                off as libc::off_t,
            )
        };
        assert_eq!(n, bytes.len() as isize);
    }

    fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        assert!(n >= 0, "poll: {}", io::Error::last_os_error());
        n == 1 && p.revents & libc::POLLIN != 0
    }

    #[test]
    fn halves_are_send() {
        fn send<T: Send>() {}
        send::<Producer>();
        send::<Consumer>();
        send::<Endpoint>();
    }

    #[test]
    fn config_validation() {
        for (slot_size, slot_count) in [(2048, 1000), (2048, 1), (12, 8), (100, 8), (1 << 21, 8)] {
            let err = create(
                RingConfig {
                    slot_size,
                    slot_count,
                },
                1,
            )
            .unwrap_err();
            assert!(matches!(err, RingError::InvalidConfig(_)), "{err}");
        }
        assert_eq!(RingConfig::default().max_msg_len(), 2044);
    }

    #[test]
    fn in_process_round_trip_both_directions() {
        let (mut ctl, fds) = create(RingConfig::default(), 7).unwrap();
        let mut dp = attach(fds, 7).unwrap();
        ctl.tx.try_push(b"to dataplane").unwrap();
        dp.tx.try_push(b"to control").unwrap();
        dp.tx.try_push(&[]).unwrap();
        assert_eq!(
            dp.rx.try_pop(|m| m.to_vec()),
            Some(b"to dataplane".to_vec())
        );
        assert_eq!(dp.rx.try_pop(|m| m.len()), None);
        assert_eq!(ctl.rx.len(), 2);
        assert_eq!(ctl.rx.try_pop(|m| m.to_vec()), Some(b"to control".to_vec()));
        assert_eq!(ctl.rx.try_pop(|m| m.to_vec()), Some(Vec::new()));
        assert!(ctl.rx.is_empty());
        assert_eq!(
            ctl.tx.try_push(&[0; 2045]),
            Err(PushError::TooLarge {
                len: 2045,
                max: 2044
            })
        );
    }

    #[test]
    fn full_and_recovery_over_memfd() {
        let (mut ctl, fds) = create(small(), 1).unwrap();
        let mut dp = attach(fds, 1).unwrap();
        for i in 0..8u8 {
            ctl.tx.try_push(&[i]).unwrap();
        }
        assert_eq!(ctl.tx.try_push(&[9]), Err(PushError::Full));
        assert_eq!(ctl.tx.free_slots(), 0);
        assert_eq!(dp.rx.try_pop(|m| m[0]), Some(0));
        ctl.tx.try_push(&[8]).unwrap();
        let got: Vec<u8> = std::iter::from_fn(|| dp.rx.try_pop(|m| m[0])).collect();
        assert_eq!(got, (1..=8).collect::<Vec<u8>>());
    }

    #[test]
    fn attach_rejects_bad_magic() {
        let (_ctl, fds) = create(small(), 1).unwrap();
        poke(&fds, layout::field::MAGIC, b"NOTARING");
        let err = attach(fds, 1).unwrap_err();
        assert!(
            matches!(err, RingError::BadMagic { found } if found == u64::from_ne_bytes(*b"NOTARING")),
            "{err}"
        );
    }

    #[test]
    fn attach_rejects_abi_mismatch() {
        let (_ctl, fds) = create(small(), 1).unwrap();
        poke(&fds, layout::field::ABI, &(ABI_VERSION + 1).to_ne_bytes());
        let err = attach(fds, 1).unwrap_err();
        assert!(
            matches!(err, RingError::AbiMismatch { expected, found }
                if expected == ABI_VERSION && found == ABI_VERSION + 1),
            "{err}"
        );
    }

    #[test]
    fn attach_rejects_ipc_version_mismatch() {
        let (_ctl, fds) = create(small(), 3).unwrap();
        let err = attach(fds, 4).unwrap_err();
        assert!(
            matches!(
                err,
                RingError::IpcVersionMismatch {
                    expected: 4,
                    found: 3
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn attach_rejects_inconsistent_geometry() {
        // slot_count no longer a power of two.
        let (_ctl, fds) = create(small(), 1).unwrap();
        poke(&fds, layout::field::SLOT_COUNT, &6u32.to_ne_bytes());
        assert!(matches!(attach(fds, 1), Err(RingError::BadLayout(_))));
        // Geometry claims more slots than the memfd holds.
        let (_ctl, fds) = create(small(), 1).unwrap();
        poke(&fds, layout::field::SLOT_COUNT, &16u32.to_ne_bytes());
        assert!(matches!(attach(fds, 1), Err(RingError::BadLayout(_))));
        // Offsets disagree with the geometry.
        let (_ctl, fds) = create(small(), 1).unwrap();
        poke(&fds, layout::field::RING_B_OFF, &64u64.to_ne_bytes());
        assert!(matches!(attach(fds, 1), Err(RingError::BadLayout(_))));
    }

    #[test]
    fn attach_rejects_unsealed_and_second_attach() {
        let (_ctl, fds) = create(small(), 1).unwrap();
        let ev = || fds.to_child_event.try_clone().unwrap();
        // An eventfd is not a memfd at all.
        let bogus = ChildFds {
            memfd: ev(),
            to_child_event: ev(),
            to_parent_event: ev(),
        };
        assert!(matches!(attach(bogus, 1), Err(RingError::NotSealed)));
        let again = ChildFds {
            memfd: fds.memfd.try_clone().unwrap(),
            to_child_event: ev(),
            to_parent_event: ev(),
        };
        let _dp = attach(fds, 1).unwrap();
        assert!(matches!(attach(again, 1), Err(RingError::AlreadyAttached)));
    }

    #[test]
    fn eventfd_wakes_poller_and_notify_coalesces() {
        let (mut ctl, fds) = create(small(), 1).unwrap();
        let mut dp = attach(fds, 1).unwrap();
        // Not signalled yet.
        assert!(!poll_readable(dp.rx.event_fd(), 0));
        // Nothing pushed: notify is a no-op.
        ctl.tx.notify().unwrap();
        assert!(!poll_readable(dp.rx.event_fd(), 0));

        let waiter = std::thread::spawn(move || {
            // Generous timeout only so a bug fails the test instead of hanging it.
            let woke = poll_readable(dp.rx.event_fd(), 30_000);
            dp.rx.clear_event();
            let msg = dp.rx.try_pop(|m| m.to_vec());
            (woke, msg, dp)
        });
        ctl.tx.try_push(b"wake").unwrap();
        ctl.tx.notify().unwrap();
        ctl.tx.notify().unwrap(); // coalesced: nothing new was pushed
        let (woke, msg, dp) = waiter.join().unwrap();
        assert!(woke, "poller timed out");
        assert_eq!(msg, Some(b"wake".to_vec()));
        // The second notify did not re-signal, and clear_event reset the counter.
        assert!(!poll_readable(dp.rx.event_fd(), 0));

        // Several notifies after several pushes collapse into one readable counter.
        ctl.tx.try_push(b"a").unwrap();
        ctl.tx.notify().unwrap();
        ctl.tx.try_push(b"b").unwrap();
        ctl.tx.notify().unwrap();
        assert_eq!(sys::eventfd_drain(dp.rx.event_fd()), 2);
        assert!(!poll_readable(dp.rx.event_fd(), 0));
    }

    #[test]
    fn threaded_over_memfd_both_directions() {
        let n: u64 = 200_000;
        let (ctl, fds) = create(small(), 1).unwrap();
        let dp = attach(fds, 1).unwrap();
        let max = small().max_msg_len();
        let send = |mut tx: Producer, salt: u64| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                for seq in 0..n {
                    gen(seq ^ salt, max, &mut buf);
                    while let Err(e) = tx.try_push(&buf) {
                        assert_eq!(e, PushError::Full);
                        tx.notify().unwrap();
                        std::thread::yield_now();
                    }
                    tx.notify().unwrap();
                }
            })
        };
        let recv = |mut rx: Consumer, salt: u64| {
            std::thread::spawn(move || {
                let mut want = Vec::new();
                let mut seq = 0;
                while seq < n {
                    if !poll_readable(rx.event_fd(), 30_000) {
                        panic!("no wake-up at message {seq}");
                    }
                    rx.clear_event();
                    while seq < n {
                        gen(seq ^ salt, max, &mut want);
                        match rx.try_pop(|m| m == want.as_slice()) {
                            Some(true) => seq += 1,
                            Some(false) => panic!("message {seq} corrupted"),
                            None => break,
                        }
                    }
                }
                assert!(rx.try_pop(|_| ()).is_none());
            })
        };
        let threads = [
            send(ctl.tx, 1 << 40),
            recv(dp.rx, 1 << 40),
            send(dp.tx, 1 << 41),
            recv(ctl.rx, 1 << 41),
        ];
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn pass_fds_handles_overlapping_targets() {
        let (_ctl, fds) = create(small(), 1).unwrap();
        let [m, a, b] = fds.raw();
        // Ask for a rotation among the fds' own numbers, the worst case for naive dup2.
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(format!(
            "readlink /proc/self/fd/{m} /proc/self/fd/{a} /proc/self/fd/{b}"
        ));
        pass_fds(
            &mut cmd,
            &[
                (fds.memfd.as_fd(), a),
                (fds.to_child_event.as_fd(), b),
                (fds.to_parent_event.as_fd(), m),
            ],
        );
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("eventfd"), "{text}"); // fd m <- to_parent_event
        assert!(lines[1].contains("memfd:tm-ring"), "{text}"); // fd a <- memfd
        assert!(lines[2].contains("eventfd"), "{text}"); // fd b <- to_child_event
    }

    #[test]
    fn pass_fds_sets_parent_death_signal() {
        // The death signal fires when the forking *thread* exits: fork from a short-lived
        // thread and the child must die of SIGTERM instead of sleeping 60 s.
        let child = std::thread::spawn(|| {
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("60");
            pass_fds(&mut cmd, &[]);
            cmd.spawn().unwrap()
        })
        .join()
        .unwrap();
        let mut child = child;
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    }
}
