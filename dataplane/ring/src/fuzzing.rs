//! Entry points for the fuzz targets in `fuzz/` (not a stable API; hidden from the docs).
//!
//! [`HostileRing`] is a heap-backed mapping (both rings) whose bytes the fuzzer, playing a
//! misbehaving peer process, may overwrite at any moment — indices, slot lengths, message
//! bytes, the header — while our halves keep pushing and popping. Whatever the peer writes,
//! our halves must neither read nor write outside the mapping (ASan checks that), nor hand out
//! a message longer than a slot holds.

use std::sync::Arc;

use crate::layout::{Header, Layout, HEADER_LEN};
use crate::spsc::{self, RawConsumer, RawProducer, Region};
use crate::{PushError, RingConfig, RingError};

/// Both rings of one mapping: our consumer of ring A and producer of ring B, plus the peer's
/// well-behaved halves (peer producer of ring A, peer consumer of ring B).
#[derive(Debug)]
pub struct HostileRing {
    region: Arc<Region>,
    ours_rx: RawConsumer,
    ours_tx: RawProducer,
    peer_tx: RawProducer,
    peer_rx: RawConsumer,
}

impl HostileRing {
    /// A zeroed mapping for `slot_size`/`slot_count` (`None` if the geometry is invalid or
    /// larger than `max_len` bytes).
    pub fn new(slot_size: u32, slot_count: u32, max_len: usize) -> Option<Self> {
        let layout = Layout::new(RingConfig {
            slot_size,
            slot_count,
        })
        .ok()?;
        if layout.total_len > max_len {
            return None;
        }
        let region = Arc::new(Region::heap(&layout));
        let (peer_tx, ours_rx) = spsc::halves(&region, &layout, layout.ring_a_off);
        let (ours_tx, peer_rx) = spsc::halves(&region, &layout, layout.ring_b_off);
        Some(Self {
            region,
            ours_rx,
            ours_tx,
            peer_tx,
            peer_rx,
        })
    }

    /// Bytes of the mapping.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Always false (a mapping holds at least a header).
    pub fn is_empty(&self) -> bool {
        self.region.len() == 0
    }

    /// The peer overwrites `bytes` at `offset` (clamped into the mapping).
    pub fn poke(&mut self, offset: usize, bytes: &[u8]) {
        let len = self.region.len();
        let offset = offset % len;
        let n = bytes.len().min(len - offset);
        // SAFETY: `offset + n <= len`, so the write stays inside the live region, which this
        // value keeps alive. Everything runs on this thread, so no access races the write;
        // the halves only hold raw pointers, never references, into the region.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.region.base().as_ptr().add(offset),
                n,
            );
        }
    }

    /// The peer pushes `msg` to ring A (as a correct peer would).
    pub fn peer_push(&mut self, msg: &[u8]) -> Result<(), PushError> {
        self.peer_tx.try_push(msg)
    }

    /// The peer pops from ring B.
    pub fn peer_pop(&mut self) -> Option<Vec<u8>> {
        self.peer_rx.try_pop(<[u8]>::to_vec)
    }

    /// We pop from ring A.
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        self.ours_rx.try_pop(<[u8]>::to_vec)
    }

    /// Messages waiting for us on ring A.
    pub fn waiting(&mut self) -> usize {
        self.ours_rx.len()
    }

    /// We push `msg` to ring B.
    pub fn push(&mut self, msg: &[u8]) -> Result<(), PushError> {
        self.ours_tx.try_push(msg)
    }

    /// Free slots of ring B as we see them.
    pub fn free_slots(&mut self) -> usize {
        self.ours_tx.free_slots()
    }

    /// Largest message a slot holds.
    pub fn max_msg_len(&self) -> usize {
        self.ours_tx.max_msg_len()
    }

    /// Whether our consumer / producer gave up on a peer-published index or length.
    pub fn broken(&self) -> (bool, bool) {
        (self.ours_rx.is_broken(), self.ours_tx.is_broken())
    }
}

/// What `attach` checks of a mapping's header: the layout it accepts, or why not.
pub fn validate_header(
    raw: &[u8; HEADER_LEN],
    expected_ipc_version: u32,
    file_len: u64,
) -> Result<(usize, usize, usize, usize, usize), RingError> {
    let l = Header::decode(raw).validate(expected_ipc_version, file_len)?;
    Ok((
        l.slot_size,
        l.slot_count,
        l.ring_a_off,
        l.ring_b_off,
        l.total_len,
    ))
}

/// Bytes of the header.
pub const HEADER_BYTES: usize = HEADER_LEN;
