//! Byte layout of the shared mapping (ring ABI [`ABI_VERSION`]).
//!
//! ```text
//! offset 0                  header (HEADER_LEN bytes, see `field`)
//! ring_a_off                ring A (control -> dataplane)
//! ring_b_off                ring B (dataplane -> control)
//!
//! ring at offset r:
//!   r + HEAD_OFF            head: u64, written only by the consumer (own 128-byte line)
//!   r + TAIL_OFF            tail: u64, written only by the producer (own 128-byte line)
//!   r + SLOTS_OFF + i * slot_size
//!                           slot i: u32 length (native endian), then the message bytes
//! ```
//!
//! Indices increase monotonically (wrapping at 2^64) and select slot `index & (slot_count - 1)`.
//! All numbers are native-endian: both processes run on the same machine.

use crate::{RingConfig, RingError};

/// Version of this layout. Bump on any change to offsets, header fields or slot format.
pub const ABI_VERSION: u32 = 1;

/// First bytes of every mapping.
pub const MAGIC: u64 = u64::from_le_bytes(*b"TMRING\0\x01");

/// Alignment unit that keeps head and tail off each other's cache lines (128 bytes also
/// defeats the adjacent-line prefetcher).
pub const LINE: usize = 128;

/// Size of the header at offset 0.
pub const HEADER_LEN: usize = LINE;

/// Offset of `head` inside a ring.
pub const HEAD_OFF: usize = 0;
/// Offset of `tail` inside a ring.
pub const TAIL_OFF: usize = LINE;
/// Offset of slot 0 inside a ring.
pub const SLOTS_OFF: usize = 2 * LINE;

/// Bytes at the start of each slot holding the message length.
pub const LEN_PREFIX: usize = 4;

/// Smallest accepted `slot_size`.
pub const MIN_SLOT_SIZE: u32 = 16;
/// Largest accepted `slot_size` (1 MiB).
pub const MAX_SLOT_SIZE: u32 = 1 << 20;
/// Largest accepted `slot_count`.
pub const MAX_SLOT_COUNT: u32 = 1 << 20;
/// Largest accepted mapping (1 GiB).
pub const MAX_TOTAL_LEN: u64 = 1 << 30;

/// Header field offsets.
pub mod field {
    /// `u64` [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// `u32` [`super::ABI_VERSION`].
    pub const ABI: usize = 8;
    /// `u32` message schema version supplied by the creator.
    pub const IPC_VERSION: usize = 12;
    /// `u32` bytes per slot, including the length prefix.
    pub const SLOT_SIZE: usize = 16;
    /// `u32` slots per ring, a power of two.
    pub const SLOT_COUNT: usize = 20;
    /// `u64` offset of ring A.
    pub const RING_A_OFF: usize = 24;
    /// `u64` offset of ring B.
    pub const RING_B_OFF: usize = 32;
    /// `u64` total mapping length.
    pub const TOTAL_LEN: usize = 40;
    /// `u32` set 0 -> 1 (atomically) by the one `attach` a ring allows.
    pub const ATTACHED: usize = 48;
}

/// Where everything lives for one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes per slot, including the length prefix.
    pub slot_size: usize,
    /// Slots per ring (power of two).
    pub slot_count: usize,
    /// Offset of ring A (control -> dataplane).
    pub ring_a_off: usize,
    /// Offset of ring B (dataplane -> control).
    pub ring_b_off: usize,
    /// Total mapping length.
    pub total_len: usize,
}

impl Layout {
    /// Validates `cfg` and computes offsets.
    pub fn new(cfg: RingConfig) -> Result<Self, RingError> {
        let RingConfig {
            slot_size,
            slot_count,
        } = cfg;
        if !(MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&slot_size) || !slot_size.is_multiple_of(8) {
            return Err(RingError::InvalidConfig(
                "slot_size must be a multiple of 8 in 16..=1048576",
            ));
        }
        if !slot_count.is_power_of_two() || !(2..=MAX_SLOT_COUNT).contains(&slot_count) {
            return Err(RingError::InvalidConfig(
                "slot_count must be a power of two in 2..=1048576",
            ));
        }
        let ring_len = SLOTS_OFF as u64 + u64::from(slot_size) * u64::from(slot_count);
        // Round each ring up to a whole line so ring B's head is line-aligned.
        let ring_len = ring_len.div_ceil(LINE as u64) * LINE as u64;
        let total = HEADER_LEN as u64 + 2 * ring_len;
        if total > MAX_TOTAL_LEN {
            return Err(RingError::InvalidConfig("mapping would exceed 1 GiB"));
        }
        let ring_len = ring_len as usize;
        Ok(Self {
            slot_size: slot_size as usize,
            slot_count: slot_count as usize,
            ring_a_off: HEADER_LEN,
            ring_b_off: HEADER_LEN + ring_len,
            total_len: total as usize,
        })
    }
}

/// The header as read from (or written to) a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u64,
    pub abi: u32,
    pub ipc_version: u32,
    pub slot_size: u32,
    pub slot_count: u32,
    pub ring_a_off: u64,
    pub ring_b_off: u64,
    pub total_len: u64,
}

impl Header {
    /// The header `create` writes.
    pub fn new(cfg: RingConfig, layout: &Layout, ipc_version: u32) -> Self {
        Self {
            magic: MAGIC,
            abi: ABI_VERSION,
            ipc_version,
            slot_size: cfg.slot_size,
            slot_count: cfg.slot_count,
            ring_a_off: layout.ring_a_off as u64,
            ring_b_off: layout.ring_b_off as u64,
            total_len: layout.total_len as u64,
        }
    }

    /// Serialises into the first [`HEADER_LEN`] bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[field::MAGIC..field::MAGIC + 8].copy_from_slice(&self.magic.to_ne_bytes());
        b[field::ABI..field::ABI + 4].copy_from_slice(&self.abi.to_ne_bytes());
        b[field::IPC_VERSION..field::IPC_VERSION + 4]
            .copy_from_slice(&self.ipc_version.to_ne_bytes());
        b[field::SLOT_SIZE..field::SLOT_SIZE + 4].copy_from_slice(&self.slot_size.to_ne_bytes());
        b[field::SLOT_COUNT..field::SLOT_COUNT + 4].copy_from_slice(&self.slot_count.to_ne_bytes());
        b[field::RING_A_OFF..field::RING_A_OFF + 8].copy_from_slice(&self.ring_a_off.to_ne_bytes());
        b[field::RING_B_OFF..field::RING_B_OFF + 8].copy_from_slice(&self.ring_b_off.to_ne_bytes());
        b[field::TOTAL_LEN..field::TOTAL_LEN + 8].copy_from_slice(&self.total_len.to_ne_bytes());
        b
    }

    /// Parses the first [`HEADER_LEN`] bytes (no validation).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Self {
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        Self {
            magic: u64_at(field::MAGIC),
            abi: u32_at(field::ABI),
            ipc_version: u32_at(field::IPC_VERSION),
            slot_size: u32_at(field::SLOT_SIZE),
            slot_count: u32_at(field::SLOT_COUNT),
            ring_a_off: u64_at(field::RING_A_OFF),
            ring_b_off: u64_at(field::RING_B_OFF),
            total_len: u64_at(field::TOTAL_LEN),
        }
    }

    /// Checks magic, ABI and IPC version, then that the geometry is exactly what
    /// [`Layout::new`] computes for the recorded sizes and fits a mapping of `file_len`.
    pub fn validate(&self, expected_ipc_version: u32, file_len: u64) -> Result<Layout, RingError> {
        if self.magic != MAGIC {
            return Err(RingError::BadMagic { found: self.magic });
        }
        if self.abi != ABI_VERSION {
            return Err(RingError::AbiMismatch {
                expected: ABI_VERSION,
                found: self.abi,
            });
        }
        if self.ipc_version != expected_ipc_version {
            return Err(RingError::IpcVersionMismatch {
                expected: expected_ipc_version,
                found: self.ipc_version,
            });
        }
        let layout = Layout::new(RingConfig {
            slot_size: self.slot_size,
            slot_count: self.slot_count,
        })
        .map_err(|_| RingError::BadLayout("slot size/count out of range"))?;
        if self.ring_a_off != layout.ring_a_off as u64
            || self.ring_b_off != layout.ring_b_off as u64
            || self.total_len != layout.total_len as u64
        {
            return Err(RingError::BadLayout(
                "ring offsets disagree with slot geometry",
            ));
        }
        if file_len != self.total_len {
            return Err(RingError::BadLayout(
                "memfd length differs from header total_len",
            ));
        }
        Ok(layout)
    }
}
