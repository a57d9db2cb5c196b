//! The bounded, lock-free flow table shared by all workers.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

#[derive(Default)]
pub(super) struct Entry {
    pub(super) key: AtomicU64,
    pub(super) val: AtomicU64,
}

#[repr(align(64))]
#[derive(Default)]
pub(super) struct Bucket([Entry; WAYS]);

/// The bounded, shared flow table.
pub struct FlowTable {
    buckets: Box<[Bucket]>,
    evictions: AtomicU64,
}

pub(super) fn kind_of(proto: u8) -> u64 {
    match proto {
        TCP => 1,
        UDP => 2,
        _ => 0,
    }
}

pub(super) fn idle_of(val: u64) -> u32 {
    match (val >> KIND_SHIFT) & 3 {
        1 => TCP_IDLE_S,
        2 => UDP_IDLE_S,
        _ => OTHER_IDLE_S,
    }
}

pub(super) fn seen(val: u64) -> u32 {
    (val >> 32) as u32
}

pub(super) fn pack(now_s: u32, generation: u64, flags: u64) -> u64 {
    (u64::from(now_s) << 32) | ((generation & GEN_MASK) << 8) | flags
}

pub(super) fn live(val: u64, now_s: u32) -> bool {
    now_s.saturating_sub(seen(val)) <= idle_of(val)
}

impl FlowTable {
    /// A table of at least `entries` entries (rounded up to a power of two buckets).
    pub fn new(entries: usize) -> FlowTable {
        let n = entries.div_ceil(WAYS).max(1).next_power_of_two();
        FlowTable {
            buckets: (0..n).map(|_| Bucket::default()).collect(),
            evictions: AtomicU64::new(0),
        }
    }

    /// Capacity in entries.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Live entries were evicted this many times to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Live entries at `now_s` (walks the table: for reports and tests, not per packet).
    pub fn live(&self, now_s: u32) -> usize {
        self.buckets
            .iter()
            .flat_map(|b| b.0.iter())
            .filter(|e| {
                e.key.load(Ordering::Relaxed) != 0 && live(e.val.load(Ordering::Relaxed), now_s)
            })
            .count()
    }

    fn bucket(&self, h: u64) -> &Bucket {
        &self.buckets[(h >> 40) as usize & (self.buckets.len() - 1)]
    }

    /// The live entry of `h` and its value.
    pub(super) fn get(&self, h: u64, now_s: u32) -> Option<(&Entry, u64)> {
        for e in &self.bucket(h).0 {
            if e.key.load(Ordering::Acquire) != h {
                continue;
            }
            let v = e.val.load(Ordering::Acquire);
            if e.key.load(Ordering::Acquire) != h {
                continue;
            }
            return live(v, now_s).then_some((e, v));
        }
        None
    }

    /// Inserts or replaces the entry of `h`.
    pub(super) fn put(&self, h: u64, val: u64, now_s: u32) {
        let b = self.bucket(h);
        let mut victim = &b.0[0];
        let mut oldest = u32::MAX;
        for e in &b.0 {
            let k = e.key.load(Ordering::Acquire);
            if k == h {
                e.val.store(val, Ordering::Release);
                return;
            }
            let v = e.val.load(Ordering::Relaxed);
            let age = if k == 0 || !live(v, now_s) {
                // Free: take it.
                0
            } else {
                seen(v)
            };
            if age < oldest {
                oldest = age;
                victim = e;
            }
        }
        if oldest != 0 {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        victim.key.store(0, Ordering::Release);
        victim.val.store(val, Ordering::Release);
        victim.key.store(h, Ordering::Release);
    }
}
