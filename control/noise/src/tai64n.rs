//! TAI64N timestamps as WireGuard sends them in the initiation (12 bytes: big-endian
//! seconds + `2^62 + 10`, then big-endian nanoseconds), ordered as the responder compares them.

use std::time::{SystemTime, UNIX_EPOCH};

/// The TAI64 label for the Unix epoch, as the kernel and wireguard-go use it (`2^62 + 10`).
const TAI64_BASE: u64 = (1 << 62) + 10;

/// Granularity the sender rounds nanoseconds down to (kernel: the largest power of two not
/// above `1 s / INITIATIONS_PER_SECOND`), so timestamps do not leak fine-grained clock state.
const WHITENING_NANOS: u32 = 1 << 25;

/// A 12-byte TAI64N label. `Ord` on the bytes is chronological order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tai64N(pub [u8; 12]);

impl Tai64N {
    /// The exact label for `t` (times before 1970 saturate to the epoch).
    pub fn from_system_time(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self::from_parts(d.as_secs(), d.subsec_nanos())
    }

    /// The label an initiator sends: like [`Tai64N::from_system_time`] with the nanoseconds
    /// rounded down to 2^25 ns (about 34 ms), below the 50 ms flood limit.
    pub fn for_initiation(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self::from_parts(d.as_secs(), d.subsec_nanos() & !(WHITENING_NANOS - 1))
    }

    fn from_parts(unix_secs: u64, nanos: u32) -> Self {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&TAI64_BASE.saturating_add(unix_secs).to_be_bytes());
        b[8..].copy_from_slice(&nanos.to_be_bytes());
        Self(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl From<SystemTime> for Tai64N {
    fn from(t: SystemTime) -> Self {
        Self::from_system_time(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn layout_and_order() {
        let t = UNIX_EPOCH + Duration::new(1, 5);
        let ts = Tai64N::from(t);
        assert_eq!(
            ts.0,
            [0x40, 0, 0, 0, 0, 0, 0, 0x0b, 0, 0, 0, 5],
            "secs + 2^62 + 10, BE nanos"
        );
        let later = Tai64N::from(t + Duration::from_nanos(1));
        let much_later = Tai64N::from(t + Duration::from_secs(256));
        assert!(later > ts);
        assert!(much_later > later);
        // Nanos must not overflow into the ordering: 0.999999999 s < 1.0 s.
        let a = Tai64N::from(UNIX_EPOCH + Duration::new(1, 999_999_999));
        let b = Tai64N::from(UNIX_EPOCH + Duration::new(2, 0));
        assert!(a < b);
    }

    #[test]
    fn initiation_rounds_down() {
        let t = UNIX_EPOCH + Duration::new(100, (1 << 25) + 12345);
        assert_eq!(
            Tai64N::for_initiation(t),
            Tai64N::from(UNIX_EPOCH + Duration::new(100, 1 << 25))
        );
        let before_epoch = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(Tai64N::from(before_epoch), Tai64N::from(UNIX_EPOCH));
    }
}
