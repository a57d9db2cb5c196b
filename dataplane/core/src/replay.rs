//! Sliding replay window over 64-bit counters (RFC 6479 style bitmap ring, as in the
//! Linux WireGuard module): 8192 bits, of which the newest 8128 counters are always
//! tracked.
//!
//! Split in two so the window moves only after authentication:
//! 1. [`ReplayWindow::check`] (read-only) before opening the packet,
//! 2. [`ReplayWindow::update`] once the AEAD tag verified.

use tm_wire::wg::timers::REJECT_AFTER_MESSAGES;

const WORD_BITS: u64 = 64;
const TOTAL_BITS: u64 = 8192;
const WORDS: usize = (TOTAL_BITS / WORD_BITS) as usize;
/// Counters at most this far behind the newest one are still tracked.
pub const WINDOW_SIZE: u64 = TOTAL_BITS - WORD_BITS;

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// Seen before, or older than the window.
    Replayed,
    /// At or beyond `REJECT_AFTER_MESSAGES`.
    Exhausted,
}

/// Receive-side replay state of one session.
#[derive(Clone)]
pub struct ReplayWindow {
    /// One more than the greatest counter accepted so far (0 = none yet).
    next: u64,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self {
            next: 0,
            bitmap: [0; WORDS],
        }
    }

    /// Would `counter` be accepted? Does not change the window.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(ReplayError::Exhausted);
        }
        // Work with counter + 1 so that `next == 0` means "nothing seen".
        let c = counter + 1;
        if c > self.next {
            return Ok(());
        }
        if c + WINDOW_SIZE < self.next {
            return Err(ReplayError::Replayed);
        }
        if self.bitmap[Self::word(c)] & Self::bit(c) != 0 {
            return Err(ReplayError::Replayed);
        }
        Ok(())
    }

    /// Records `counter` as received. Call only after [`Self::check`] passed and the
    /// packet authenticated; returns false (and changes nothing) if it would not pass.
    pub fn update(&mut self, counter: u64) -> bool {
        if self.check(counter).is_err() {
            return false;
        }
        let c = counter + 1;
        if c > self.next {
            let index = c / WORD_BITS;
            let current = self.next / WORD_BITS;
            let top = (index - current).min(WORDS as u64);
            for i in 1..=top {
                self.bitmap[((current + i) % WORDS as u64) as usize] = 0;
            }
            self.next = c;
        }
        self.bitmap[Self::word(c)] |= Self::bit(c);
        true
    }

    /// Greatest counter accepted so far.
    pub fn greatest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    fn word(c: u64) -> usize {
        ((c / WORD_BITS) % WORDS as u64) as usize
    }

    fn bit(c: u64) -> u64 {
        1 << (c % WORD_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(w: &mut ReplayWindow, c: u64) -> bool {
        w.check(c).is_ok() && w.update(c)
    }

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::new();
        for c in 0..20_000 {
            assert!(accept(&mut w, c), "{c}");
            assert_eq!(w.check(c), Err(ReplayError::Replayed));
        }
        assert_eq!(w.greatest(), Some(19_999));
    }

    #[test]
    fn out_of_order_within_window_and_too_old() {
        let mut w = ReplayWindow::new();
        assert!(accept(&mut w, 10_000));
        // Everything in [10_000 - WINDOW_SIZE + 1, 10_000) is still acceptable once.
        let oldest = 10_000 - WINDOW_SIZE + 1;
        assert!(accept(&mut w, oldest));
        assert!(!accept(&mut w, oldest));
        assert!(accept(&mut w, 9_999));
        assert!(accept(&mut w, 5_000));
        assert!(!accept(&mut w, 5_000));
        // Too old.
        assert_eq!(w.check(oldest - 2), Err(ReplayError::Replayed));
        assert_eq!(w.check(0), Err(ReplayError::Replayed));
        // Jump far ahead: the old bits must not leak into the new range.
        assert!(accept(&mut w, 10_000 + 3 * TOTAL_BITS));
        assert!(accept(&mut w, 10_000 + 3 * TOTAL_BITS - 1));
        assert!(accept(&mut w, 10_000 + 2 * TOTAL_BITS + 100));
    }

    #[test]
    fn check_does_not_move_window() {
        let mut w = ReplayWindow::new();
        assert!(accept(&mut w, 5));
        assert!(w.check(100_000).is_ok());
        assert_eq!(w.greatest(), Some(5));
        assert!(accept(&mut w, 4));
    }

    #[test]
    fn reject_after_messages() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(REJECT_AFTER_MESSAGES), Err(ReplayError::Exhausted));
        assert_eq!(w.check(u64::MAX), Err(ReplayError::Exhausted));
        assert!(!w.update(u64::MAX));
        assert!(accept(&mut w, REJECT_AFTER_MESSAGES - 1));
        assert_eq!(
            w.check(REJECT_AFTER_MESSAGES - 1),
            Err(ReplayError::Replayed)
        );
    }

    /// Compare against a naive set-based model on a pseudo-random walk.
    #[test]
    fn matches_naive_model() {
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut greatest: Option<u64> = None;
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut base = 0u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let delta = x % 20_000;
            base += x % 3;
            let c = (base + delta).saturating_sub(10_000);
            let expect = match greatest {
                None => true,
                Some(g) if c > g => true,
                Some(g) => g - c < WINDOW_SIZE && !seen.contains(&c),
            };
            let got = accept(&mut w, c);
            // The bitmap may remember slightly more than WINDOW_SIZE; never less.
            if let Some(g) = greatest {
                if c <= g && g - c >= WINDOW_SIZE && g - c < TOTAL_BITS - 1 {
                    assert!(!got || !seen.contains(&c), "{c} replayed");
                    if got {
                        seen.insert(c);
                    }
                    continue;
                }
            }
            assert_eq!(got, expect, "counter {c} greatest {greatest:?}");
            if got {
                seen.insert(c);
                greatest = Some(greatest.map_or(c, |g| g.max(c)));
            }
        }
    }
}
