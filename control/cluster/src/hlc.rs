//! Hybrid logical clock (Kulkarni et al.): stamps that follow physical time closely, never go
//! backwards on one coordinator, and order every write after everything its coordinator had
//! seen when it was made. A stamp is unique mesh-wide: `(wall_ms, logical, origin)`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A coordinator's identity in stamps and version vectors (derived from its static key by the
/// driver; unique per coordinator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Origin(pub u64);

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One HLC timestamp. Ordered by wall time, then the logical counter, then the origin (which
/// makes stamps of different coordinators distinct, so LWW never ties).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch (the largest physical time seen).
    pub wall_ms: u64,
    /// Events within the same `wall_ms`.
    pub logical: u32,
    /// The coordinator that made the stamp.
    pub origin: Origin,
}

impl Stamp {
    /// The smallest stamp (before every write).
    pub const ZERO: Stamp = Stamp {
        wall_ms: 0,
        logical: 0,
        origin: Origin(0),
    };
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.wall_ms, self.logical, self.origin)
    }
}

/// A remote stamp too far ahead of our physical clock: refused, so that one coordinator with a
/// wrong clock cannot make its writes win every conflict for as long as its clock is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("coordinator {origin}'s clock is {ahead_ms} ms ahead of ours (at most {max_ms} ms is accepted): fix the time on one of them (NTP)")]
pub struct SkewError {
    /// Whose stamp.
    pub origin: Origin,
    /// How far ahead of our physical time it was.
    pub ahead_ms: u64,
    /// The configured bound.
    pub max_ms: u64,
}

/// One coordinator's clock.
#[derive(Debug, Clone)]
pub struct Clock {
    origin: Origin,
    wall_ms: u64,
    logical: u32,
    max_skew_ms: u64,
}

/// Default bound on how far a remote stamp may be ahead of our physical time.
pub const MAX_SKEW_MS: u64 = 60_000;

impl Clock {
    /// A clock for `origin` that refuses stamps more than `max_skew_ms` ahead.
    pub fn new(origin: Origin, max_skew_ms: u64) -> Clock {
        Clock {
            origin,
            wall_ms: 0,
            logical: 0,
            max_skew_ms,
        }
    }

    /// This clock's origin.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The stamp of a local event at physical time `phys_ms`: greater than every stamp made or
    /// observed before.
    pub fn now(&mut self, phys_ms: u64) -> Stamp {
        if phys_ms > self.wall_ms {
            self.wall_ms = phys_ms;
            self.logical = 0;
        } else {
            self.bump();
        }
        self.stamp()
    }

    /// Takes in a stamp received from another coordinator (so that our next stamp is later),
    /// unless it is too far ahead of `phys_ms`.
    pub fn observe(&mut self, phys_ms: u64, remote: Stamp) -> Result<(), SkewError> {
        self.check(phys_ms, remote)?;
        if remote.wall_ms > self.wall_ms {
            self.wall_ms = remote.wall_ms;
            self.logical = remote.logical;
        } else if remote.wall_ms == self.wall_ms && remote.logical > self.logical {
            self.logical = remote.logical;
        }
        Ok(())
    }

    /// Whether `remote` is acceptable at `phys_ms` (without observing it).
    pub fn check(&self, phys_ms: u64, remote: Stamp) -> Result<(), SkewError> {
        let ahead_ms = remote.wall_ms.saturating_sub(phys_ms);
        if ahead_ms > self.max_skew_ms {
            return Err(SkewError {
                origin: remote.origin,
                ahead_ms,
                max_ms: self.max_skew_ms,
            });
        }
        Ok(())
    }

    /// Restores the clock after a restart from the largest stamp it had persisted.
    pub fn restore(&mut self, last: Stamp) {
        if (last.wall_ms, last.logical) > (self.wall_ms, self.logical) {
            self.wall_ms = last.wall_ms;
            self.logical = last.logical;
        }
    }

    fn bump(&mut self) {
        match self.logical.checked_add(1) {
            Some(l) => self.logical = l,
            // 4 billion events in one millisecond: borrow the next millisecond.
            None => {
                self.wall_ms += 1;
                self.logical = 0;
            }
        }
    }

    fn stamp(&self) -> Stamp {
        Stamp {
            wall_ms: self.wall_ms,
            logical: self.logical,
            origin: self.origin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_never_go_back_and_follow_what_was_seen() {
        let mut a = Clock::new(Origin(1), MAX_SKEW_MS);
        let s1 = a.now(1000);
        let s2 = a.now(1000);
        let s3 = a.now(900); // the physical clock stepped back
        assert!(s1 < s2 && s2 < s3, "{s1} {s2} {s3}");
        let remote = Stamp {
            wall_ms: 5000,
            logical: 7,
            origin: Origin(2),
        };
        a.observe(1000, remote).unwrap();
        let s4 = a.now(1000);
        assert!(s4 > remote, "{s4} after {remote}");
        assert_eq!((s4.wall_ms, s4.logical), (5000, 8));
    }

    #[test]
    fn a_stamp_far_ahead_is_refused_and_not_taken_in() {
        let mut a = Clock::new(Origin(1), 60_000);
        let ahead = Stamp {
            wall_ms: 1_000 + 600_000,
            logical: 0,
            origin: Origin(9),
        };
        let e = a.observe(1_000, ahead).unwrap_err();
        assert_eq!(e.ahead_ms, 600_000);
        assert!(e.to_string().contains("600000 ms ahead"), "{e}");
        assert_eq!(
            a.now(1_000).wall_ms,
            1_000,
            "the refused stamp moved nothing"
        );
    }

    #[test]
    fn restore_continues_after_the_last_persisted_stamp() {
        let mut a = Clock::new(Origin(1), MAX_SKEW_MS);
        let last = a.now(2000);
        let mut b = Clock::new(Origin(1), MAX_SKEW_MS);
        b.restore(last);
        assert!(b.now(1500) > last);
    }
}
