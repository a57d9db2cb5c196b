//! Ring core: index math and slot copies over a raw memory region.
//!
//! Nothing here knows about memfds or eventfds, so the protocol runs (and is tested, also
//! under miri) on a heap region.
//!
//! Protocol (one producer, one consumer):
//! 1. producer: if `tail - head == slot_count`, reload `head` (Acquire); still full -> Full.
//! 2. producer: write length + bytes into slot `tail & mask`, then store `tail + 1` (Release).
//! 3. consumer: if `head == cached tail`, reload `tail` (Acquire); still equal -> empty.
//! 4. consumer: read slot `head & mask`, hand it to the caller, then store `head + 1` (Release).
//!
//! A slot is written only while it lies in `[head, head + slot_count)` and beyond `tail`, and
//! read only while in `[head, tail)`; publication order makes every visible slot complete, so a
//! crash of either side never exposes a half-written slot. Indices coming from the other side
//! are checked (`0 <= tail - head <= slot_count`, `len <= slot_size - 4`); a violation marks the
//! half broken instead of reading or writing out of bounds.

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
use std::alloc::{self, Layout as AllocLayout};
use std::ptr::NonNull;
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::layout::{Layout, HEAD_OFF, LEN_PREFIX, LINE, SLOTS_OFF, TAIL_OFF};

/// How a [`Region`] was obtained (decides how it is released).
#[derive(Debug)]
enum RegionKind {
    /// `mmap(MAP_SHARED)` of a memfd.
    Mmap,
    /// `alloc_zeroed` with this layout (tests, miri).
    #[cfg_attr(not(test), allow(dead_code))]
    Heap(AllocLayout),
}

/// Owner of the memory the rings live in; shared by every half via `Arc`.
#[derive(Debug)]
pub(crate) struct Region {
    base: NonNull<u8>,
    len: usize,
    kind: RegionKind,
    /// Under loom: the in-place loom atomics (dropped with the region) and one access
    /// tracker per 8 bytes, so loom checks that slot reads and writes never race.
    #[cfg(loom)]
    shadow: Option<(Vec<*mut AtomicU64>, Vec<loom::cell::UnsafeCell<()>>)>,
}

// SAFETY: `Region` only owns the allocation/mapping; all access through it is raw-pointer
// based and synchronised by the ring protocol, so moving or sharing the owner across threads
// is fine.
unsafe impl Send for Region {}
// SAFETY: see `Send`; `Region` exposes no `&`-methods that access the memory.
unsafe impl Sync for Region {}

impl Region {
    /// A zeroed, line-aligned heap region for `ring`'s geometry (no header contents).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn heap(ring: &Layout) -> Self {
        let len = ring.total_len;
        let layout = AllocLayout::from_size_align(len.max(1), LINE).expect("ring size fits Layout");
        // SAFETY: `layout` has non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        #[cfg(loom)]
        let shadow = {
            assert!(
                std::mem::size_of::<AtomicU64>() <= LINE
                    && std::mem::align_of::<AtomicU64>() <= LINE
            );
            let mut atomics = Vec::new();
            for r in [ring.ring_a_off, ring.ring_b_off] {
                for off in [r + HEAD_OFF, r + TAIL_OFF] {
                    // SAFETY: in bounds and line-aligned; the line is reserved for this index.
                    let a = unsafe { ptr.add(off).cast::<AtomicU64>() };
                    // SAFETY: as above; nothing has been placed there yet.
                    unsafe { a.write(AtomicU64::new(0)) };
                    atomics.push(a);
                }
            }
            let cells = (0..len / 8)
                .map(|_| loom::cell::UnsafeCell::new(()))
                .collect();
            Some((atomics, cells))
        };
        Self {
            base,
            len,
            kind: RegionKind::Heap(layout),
            #[cfg(loom)]
            shadow,
        }
    }

    /// Loom's tracker for the 8 bytes at `p` (`None` outside loom models).
    #[cfg(loom)]
    fn tracker(&self, p: *const u8) -> &loom::cell::UnsafeCell<()> {
        let off = p as usize - self.base.as_ptr() as usize;
        &self
            .shadow
            .as_ref()
            .expect("loom models use heap regions")
            .1[off / 8]
    }

    /// Takes ownership of a mapping returned by `mmap`.
    ///
    /// # Safety
    /// `base..base+len` must be a live `mmap` mapping that nothing else unmaps.
    pub(crate) unsafe fn from_mmap(base: NonNull<u8>, len: usize) -> Self {
        Self {
            base,
            len,
            kind: RegionKind::Mmap,
            #[cfg(loom)]
            shadow: None,
        }
    }

    /// Start of the region.
    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Length of the region.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        match self.kind {
            RegionKind::Mmap => {
                // SAFETY: we own the mapping (`from_mmap` contract) and every ring half holding
                // pointers into it also holds an `Arc<Region>`, so nobody uses it after this.
                unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
            }
            RegionKind::Heap(layout) => {
                #[cfg(loom)]
                if let Some((atomics, _)) = self.shadow.take() {
                    for a in atomics {
                        // SAFETY: written in `heap`, dropped exactly once here.
                        unsafe { a.drop_in_place() };
                    }
                }
                // SAFETY: allocated in `heap` with exactly this layout; last owner.
                unsafe { alloc::dealloc(self.base.as_ptr(), layout) };
            }
        }
    }
}

/// Pointers to one ring inside a region.
#[derive(Debug)]
struct RingPtrs {
    head: NonNull<AtomicU64>,
    tail: NonNull<AtomicU64>,
    slots: NonNull<u8>,
    slot_size: usize,
    count: u64,
    mask: u64,
    /// Keeps the memory alive (and, under loom, holds the slot trackers).
    #[cfg_attr(not(loom), allow(dead_code))]
    region: Arc<Region>,
}

impl RingPtrs {
    /// Ring at `ring_off` of `region`, laid out per `layout`.
    fn new(region: Arc<Region>, layout: &Layout, ring_off: usize) -> Self {
        let ring_len = SLOTS_OFF + layout.slot_size * layout.slot_count;
        assert!(
            ring_off.is_multiple_of(LINE) && ring_off + ring_len <= region.len(),
            "ring lies inside the region (checked by Layout)"
        );
        let base = region.base().as_ptr();
        // SAFETY: `ring_off + ring_len <= region.len()` (asserted), so every offset below stays
        // inside the region; the region is line-aligned, so the indices are 8-aligned.
        let (head, tail, slots) = unsafe {
            let r = base.add(ring_off);
            (
                NonNull::new_unchecked(r.add(HEAD_OFF).cast::<AtomicU64>()),
                NonNull::new_unchecked(r.add(TAIL_OFF).cast::<AtomicU64>()),
                NonNull::new_unchecked(r.add(SLOTS_OFF)),
            )
        };
        Self {
            head,
            tail,
            slots,
            slot_size: layout.slot_size,
            count: layout.slot_count as u64,
            mask: layout.slot_count as u64 - 1,
            region,
        }
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: aligned, in-bounds (see `new`), kept alive by `region`; only ever accessed
        // atomically by both processes.
        unsafe { self.head.as_ref() }
    }

    fn tail(&self) -> &AtomicU64 {
        // SAFETY: as for `head`.
        unsafe { self.tail.as_ref() }
    }

    /// Start of the slot for `index`.
    fn slot(&self, index: u64) -> *mut u8 {
        let i = (index & self.mask) as usize;
        // SAFETY: `i < slot_count`, so the slot lies inside the ring (see `new`).
        unsafe { self.slots.as_ptr().add(i * self.slot_size) }
    }

    fn max_msg_len(&self) -> usize {
        self.slot_size - LEN_PREFIX
    }
}

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// Every slot holds an unconsumed message; retry after the consumer catches up.
    #[error("ring full")]
    Full,
    /// The message does not fit a slot.
    #[error("message of {len} bytes exceeds the slot capacity of {max} bytes")]
    TooLarge {
        /// Length of the rejected message.
        len: usize,
        /// Largest message a slot holds (`slot_size - 4`).
        max: usize,
    },
    /// The consumer published an impossible `head`; the ring is unusable.
    #[error("ring broken: peer published an impossible head index")]
    Broken,
}

/// Producer half of the core.
#[derive(Debug)]
pub(crate) struct RawProducer {
    ring: RingPtrs,
    /// Next index to write; only this half writes `tail`.
    tail: u64,
    /// Last `head` seen.
    head_cache: u64,
    broken: bool,
}

// SAFETY: the producer is the only writer of `tail` and of slots in `[tail, head+count)`;
// moving it to another thread keeps that exclusivity (it is not `Sync`, and not `Clone`).
unsafe impl Send for RawProducer {}

impl RawProducer {
    fn new(ring: RingPtrs) -> Self {
        let tail = ring.tail().load(Ordering::Relaxed);
        let head_cache = ring.head().load(Ordering::Acquire);
        Self {
            ring,
            tail,
            head_cache,
            broken: false,
        }
    }

    pub(crate) fn max_msg_len(&self) -> usize {
        self.ring.max_msg_len()
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Slots free as of the last `head` observed (a lower bound).
    pub(crate) fn free_slots(&mut self) -> usize {
        self.head_cache = self.ring.head().load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(self.head_cache);
        self.ring.count.saturating_sub(used) as usize
    }

    pub(crate) fn try_push(&mut self, msg: &[u8]) -> Result<(), PushError> {
        let max = self.max_msg_len();
        if msg.len() > max {
            return Err(PushError::TooLarge {
                len: msg.len(),
                max,
            });
        }
        if self.broken {
            return Err(PushError::Broken);
        }
        if self.tail.wrapping_sub(self.head_cache) >= self.ring.count {
            // Acquire: the consumer's reads of the slot we are about to reuse happened before.
            self.head_cache = self.ring.head().load(Ordering::Acquire);
            let used = self.tail.wrapping_sub(self.head_cache);
            if used > self.ring.count {
                self.broken = true;
                return Err(PushError::Broken);
            }
            if used == self.ring.count {
                return Err(PushError::Full);
            }
        }
        let slot = self.ring.slot(self.tail);
        let len = u32::try_from(msg.len()).expect("msg.len() <= slot_size <= u32::MAX");
        #[cfg(loom)]
        self.ring.region.tracker(slot).with_mut(|_| ());
        // SAFETY: slot `tail` is outside `[head, tail)`, so the consumer does not read it until
        // we publish `tail + 1` below; the slot has `slot_size >= LEN_PREFIX + msg.len()` bytes
        // and is 8-aligned (slot_size % 8 == 0, slots line-aligned). `msg` cannot overlap the
        // region because we hold the only writable access to this slot.
        unsafe {
            slot.cast::<u32>().write(len);
            std::ptr::copy_nonoverlapping(msg.as_ptr(), slot.add(LEN_PREFIX), msg.len());
        }
        self.tail = self.tail.wrapping_add(1);
        // Release: the slot contents become visible no later than the new tail.
        self.ring.tail().store(self.tail, Ordering::Release);
        Ok(())
    }
}

/// Consumer half of the core.
#[derive(Debug)]
pub(crate) struct RawConsumer {
    ring: RingPtrs,
    /// Next index to read; only this half writes `head`.
    head: u64,
    /// Last `tail` seen.
    tail_cache: u64,
    broken: bool,
}

// SAFETY: the consumer is the only reader of slots in `[head, tail)` and the only writer of
// `head`; moving it to another thread keeps that exclusivity.
unsafe impl Send for RawConsumer {}

impl RawConsumer {
    fn new(ring: RingPtrs) -> Self {
        let head = ring.head().load(Ordering::Relaxed);
        let tail_cache = ring.tail().load(Ordering::Acquire);
        Self {
            ring,
            head,
            tail_cache,
            broken: false,
        }
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Messages waiting (reloads `tail`).
    pub(crate) fn len(&mut self) -> usize {
        if self.broken || !self.refresh() {
            return 0;
        }
        self.tail_cache.wrapping_sub(self.head) as usize
    }

    /// Reloads `tail`; false if the producer published an impossible value (marks broken).
    fn refresh(&mut self) -> bool {
        // Acquire: pairs with the producer's Release store of tail; slot contents visible.
        self.tail_cache = self.ring.tail().load(Ordering::Acquire);
        if self.tail_cache.wrapping_sub(self.head) > self.ring.count {
            self.broken = true;
            return false;
        }
        true
    }

    pub(crate) fn try_pop<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if self.broken {
            return None;
        }
        if self.head == self.tail_cache {
            let sane = self.refresh();
            if !sane || self.head == self.tail_cache {
                return None;
            }
        }
        let slot = self.ring.slot(self.head);
        #[cfg(loom)]
        self.ring.region.tracker(slot).with(|_| ());
        // SAFETY: slot `head` lies in `[head, tail)`: published by the producer with Release,
        // observed with Acquire, and not rewritten until we publish `head + 1`. 8-aligned.
        let len = unsafe { slot.cast::<u32>().read() } as usize;
        if len > self.ring.max_msg_len() {
            self.broken = true;
            return None;
        }
        // SAFETY: as above; `LEN_PREFIX + len <= slot_size` (checked just now).
        let msg = unsafe { std::slice::from_raw_parts(slot.add(LEN_PREFIX), len) };
        let r = f(msg);
        self.head = self.head.wrapping_add(1);
        // Release: our reads of the slot happen before the producer may reuse it.
        self.ring.head().store(self.head, Ordering::Release);
        Some(r)
    }
}

/// Producer/consumer pair for one ring at `ring_off` of `region`.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn halves(
    region: &Arc<Region>,
    layout: &Layout,
    ring_off: usize,
) -> (RawProducer, RawConsumer) {
    (
        producer(region, layout, ring_off),
        consumer(region, layout, ring_off),
    )
}

/// Producer half for the ring at `ring_off`.
pub(crate) fn producer(region: &Arc<Region>, layout: &Layout, ring_off: usize) -> RawProducer {
    RawProducer::new(RingPtrs::new(region.clone(), layout, ring_off))
}

/// Consumer half for the ring at `ring_off`.
pub(crate) fn consumer(region: &Arc<Region>, layout: &Layout, ring_off: usize) -> RawConsumer {
    RawConsumer::new(RingPtrs::new(region.clone(), layout, ring_off))
}

/// A heap-backed ring A pair for tests: no fds, so it runs under miri.
#[cfg(test)]
pub(crate) fn heap_pair(cfg: crate::RingConfig) -> (RawProducer, RawConsumer) {
    let layout = Layout::new(cfg).expect("valid test config");
    let region = Arc::new(Region::heap(&layout));
    halves(&region, &layout, layout.ring_a_off)
}

/// Like [`heap_pair`] but with both indices starting at `start` (to test 2^64 wrap).
#[cfg(all(test, not(loom)))]
pub(crate) fn heap_pair_at(cfg: crate::RingConfig, start: u64) -> (RawProducer, RawConsumer) {
    let layout = Layout::new(cfg).expect("valid test config");
    let region = Arc::new(Region::heap(&layout));
    {
        let ring = RingPtrs::new(region.clone(), &layout, layout.ring_a_off);
        ring.head().store(start, Ordering::Relaxed);
        ring.tail().store(start, Ordering::Relaxed);
    }
    halves(&region, &layout, layout.ring_a_off)
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::RingConfig;

    /// Every interleaving of a 2-slot ring carrying 3 messages (so it wraps and fills):
    /// FIFO order, intact contents, and (via slot trackers) no read/write race on a slot.
    #[test]
    fn publish_protocol() {
        loom::model(|| {
            let (mut p, mut c) = heap_pair(RingConfig {
                slot_size: 16,
                slot_count: 2,
            });
            let t = loom::thread::spawn(move || {
                for i in 0..3u8 {
                    loop {
                        match p.try_push(&[i; 5]) {
                            Ok(()) => break,
                            Err(PushError::Full) => loom::thread::yield_now(),
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
            let mut got = 0u8;
            while got < 3 {
                match c.try_pop(|m| m.to_vec()) {
                    Some(m) => {
                        assert_eq!(m, vec![got; 5]);
                        got += 1;
                    }
                    None => loom::thread::yield_now(),
                }
            }
            t.join().expect("producer");
            assert!(c.try_pop(|_| ()).is_none());
        });
    }
}

#[cfg(all(test, not(loom)))]
pub(crate) mod tests {
    use super::*;
    use crate::RingConfig;

    fn small() -> RingConfig {
        RingConfig {
            slot_size: 64,
            slot_count: 4,
        }
    }

    /// Deterministic message for sequence number `seq` with length in `0..=max`.
    pub(crate) fn gen(seq: u64, max: usize, out: &mut Vec<u8>) {
        let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let len = (next() % (max as u64 + 1)) as usize;
        out.clear();
        out.extend_from_slice(&seq.to_le_bytes());
        while out.len() < len {
            out.extend_from_slice(&next().to_le_bytes());
        }
        out.truncate(len);
        // Trailing checksum byte over the rest, when there is room for one.
        if len > 8 {
            let sum = out[..len - 1].iter().fold(0u8, |a, b| a.wrapping_add(*b));
            out[len - 1] = sum;
        }
    }

    #[test]
    fn push_pop_fifo_and_zero_length() {
        let (mut p, mut c) = heap_pair(small());
        assert_eq!(c.try_pop(|m| m.to_vec()), None);
        p.try_push(b"").unwrap();
        p.try_push(b"hello").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.try_pop(|m| m.to_vec()), Some(vec![]));
        assert_eq!(c.try_pop(|m| m.to_vec()), Some(b"hello".to_vec()));
        assert_eq!(c.try_pop(|m| m.len()), None);
    }

    #[test]
    fn full_then_space_after_pop() {
        let (mut p, mut c) = heap_pair(small());
        for i in 0..4u8 {
            p.try_push(&[i; 3]).unwrap();
        }
        assert_eq!(p.try_push(b"x"), Err(PushError::Full));
        assert_eq!(p.free_slots(), 0);
        assert_eq!(c.try_pop(|m| m.to_vec()), Some(vec![0; 3]));
        p.try_push(b"x").unwrap();
        assert_eq!(p.try_push(b"y"), Err(PushError::Full));
        for want in [vec![1; 3], vec![2; 3], vec![3; 3], b"x".to_vec()] {
            assert_eq!(c.try_pop(|m| m.to_vec()), Some(want));
        }
        assert_eq!(c.try_pop(|m| m.len()), None);
        assert_eq!(p.free_slots(), 4);
    }

    #[test]
    fn too_large_and_exact_fit() {
        let (mut p, mut c) = heap_pair(small());
        assert_eq!(p.max_msg_len(), 60);
        assert_eq!(
            p.try_push(&[0; 61]),
            Err(PushError::TooLarge { len: 61, max: 60 })
        );
        p.try_push(&[7; 60]).unwrap();
        assert_eq!(c.try_pop(|m| m.to_vec()), Some(vec![7; 60]));
    }

    #[test]
    fn indices_wrap_at_u64_max() {
        let (mut p, mut c) = heap_pair_at(small(), u64::MAX - 5);
        let mut buf = Vec::new();
        for seq in 0..40u64 {
            gen(seq, 60, &mut buf);
            p.try_push(&buf).unwrap();
            if seq % 3 == 0 {
                gen(seq + 1000, 60, &mut buf);
                p.try_push(&buf).unwrap();
                assert_eq!(c.try_pop(|m| m.to_vec()), Some(expected(seq)));
                assert_eq!(c.try_pop(|m| m.to_vec()), Some(expected(seq + 1000)));
            } else {
                assert_eq!(c.try_pop(|m| m.to_vec()), Some(expected(seq)));
            }
        }
        fn expected(seq: u64) -> Vec<u8> {
            let mut v = Vec::new();
            gen(seq, 60, &mut v);
            v
        }
    }

    #[test]
    fn corrupt_tail_marks_consumer_broken() {
        let layout = Layout::new(small()).unwrap();
        let region = Arc::new(Region::heap(&layout));
        let (mut p, mut c) = halves(&region, &layout, layout.ring_a_off);
        p.try_push(b"ok").unwrap();
        // A misbehaving producer jumps tail far ahead.
        p.ring.tail().store(1000, Ordering::Release);
        assert_eq!(c.try_pop(|m| m.to_vec()), None);
        assert!(c.is_broken());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn corrupt_length_marks_consumer_broken() {
        let layout = Layout::new(small()).unwrap();
        let region = Arc::new(Region::heap(&layout));
        let (mut p, mut c) = halves(&region, &layout, layout.ring_a_off);
        p.try_push(b"ok").unwrap();
        let slot = p.ring.slot(0);
        // SAFETY: test-only; the consumer is not running concurrently.
        unsafe { slot.cast::<u32>().write(61) };
        assert_eq!(c.try_pop(|m| m.to_vec()), None);
        assert!(c.is_broken());
    }

    #[test]
    fn corrupt_head_marks_producer_broken() {
        let layout = Layout::new(small()).unwrap();
        let region = Arc::new(Region::heap(&layout));
        let (mut p, c) = halves(&region, &layout, layout.ring_a_off);
        for _ in 0..4 {
            p.try_push(b"a").unwrap();
        }
        // Consumer claims to have read more than was written.
        c.ring.head().store(9, Ordering::Release);
        assert_eq!(p.try_push(b"a"), Err(PushError::Broken));
        assert!(p.is_broken());
        assert_eq!(
            p.try_push(&[0; 100]),
            Err(PushError::TooLarge { len: 100, max: 60 })
        );
    }

    #[test]
    fn threaded_stream_with_wraparound() {
        // Miri is slow; the native run moves a million messages.
        let n: u64 = if cfg!(miri) { 2_000 } else { 1_000_000 };
        for cfg in [
            small(),
            RingConfig {
                slot_size: 2048,
                slot_count: 1024,
            },
        ] {
            let (mut p, mut c) = heap_pair(cfg);
            let max = p.max_msg_len();
            let producer = std::thread::spawn(move || {
                let mut buf = Vec::with_capacity(max);
                let mut full = 0u64;
                for seq in 0..n {
                    gen(seq, max, &mut buf);
                    loop {
                        match p.try_push(&buf) {
                            Ok(()) => break,
                            Err(PushError::Full) => {
                                full += 1;
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("push {seq}: {e}"),
                        }
                    }
                }
                full
            });
            let mut want = Vec::with_capacity(max);
            let mut seq = 0;
            let mut zero_len = 0u64;
            while seq < n {
                gen(seq, max, &mut want);
                match c.try_pop(|m| m == want.as_slice()) {
                    Some(true) => {
                        zero_len += u64::from(want.is_empty());
                        seq += 1;
                    }
                    Some(false) => panic!("message {seq} corrupted"),
                    None => std::thread::yield_now(),
                }
            }
            assert_eq!(c.try_pop(|m| m.len()), None);
            assert!(!c.is_broken());
            let _full = producer.join().expect("producer thread");
            if !cfg!(miri) {
                // The generator covers empty messages too (about 1 in max+1).
                assert!(zero_len > 0, "no zero-length messages generated");
            }
        }
    }
}
