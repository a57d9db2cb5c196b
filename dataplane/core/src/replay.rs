//! Lock-free sliding replay window over 64-bit counters, shared by every worker that
//! receives for one session.
//!
//! Layout: 256 `AtomicU64` words, each `(tag << 32) | bitmap`, where `bitmap` holds one bit
//! per counter of one 32-counter block and `tag` is bits 8..40 of that block's number (its
//! low 8 bits are the word's index: word `i` holds blocks `i, i + 256, i + 512, ...`). A
//! word's block only ever grows; a zero word is block `i` with nothing seen.
//! An `AtomicU64` (`fetch_max`) keeps one more than the greatest accepted counter, for the
//! "too old" bound: the newest [`WINDOW_SIZE`] counters are always tracked.
//!
//! Split in two so the window moves only after authentication:
//! 1. [`ReplayWindow::check`] (read-only) before opening the packet,
//! 2. [`ReplayWindow::update`] once the AEAD tag verified: the atomic *claim* (one CAS on the
//!    counter's word). It fails if the counter was claimed in the meantime (by another worker)
//!    or fell out of the window, so every counter is accepted at most once across threads.
//!
//! A word's full block is recovered from its index, its tag and the newest accepted block (no
//! word ever holds a block newer than that), so counters may jump far ahead. The one blind
//! spot: a jump of an exact multiple of 2^45 counters lands on a block whose word, if not
//! rewritten since, still carries the tag of the older block, so its counters already seen
//! there are refused once (a sender cannot get there: sessions rekey long before).

use std::sync::atomic::{AtomicU64, Ordering};

use tm_wire::wg::timers::REJECT_AFTER_MESSAGES;

const WORD_BITS: u64 = 32;
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

/// Receive-side replay state of one session (shared: every method takes `&self`).
pub struct ReplayWindow {
    /// One more than the greatest counter accepted so far (0 = none yet).
    next: AtomicU64,
    words: [AtomicU64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("greatest", &self.greatest())
            .finish_non_exhaustive()
    }
}

/// Word index, block and bit of `counter`.
fn locate(counter: u64) -> (usize, u64, u64) {
    let block = counter / WORD_BITS;
    (
        (block % WORDS as u64) as usize,
        block,
        1u64 << (counter % WORD_BITS),
    )
}

/// The tag stored for `block`: bits 8..40 of the block number (bits 0..8 are the word index).
fn tag_of(block: u64) -> u64 {
    (block >> 8) & 0xffff_ffff
}

/// The block word `i` holds, given its tag: the greatest block <= `hi` (the newest accepted
/// block; no word holds a newer one) that maps to word `i` and has that tag. `None` when no
/// block <= `hi` fits, i.e. the word was never written (a zero word of index > `hi`).
fn full_block(tag: u32, i: usize, hi: u64) -> Option<u64> {
    let hq = hi >> 8;
    let mut q = (hq & !0xffff_ffff) | u64::from(tag);
    if q > hq {
        q = q.checked_sub(1 << 32)?;
    }
    let b = (q << 8) | i as u64;
    if b <= hi {
        return Some(b);
    }
    // Same tag, same word, but above `hi`: the one before it with that tag.
    Some((q.checked_sub(1 << 32)? << 8) | i as u64)
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self {
            next: AtomicU64::new(0),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Bounds shared by `check` and `update`: exhausted, or older than the window.
    fn bounds(&self, counter: u64) -> Result<(), ReplayError> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(ReplayError::Exhausted);
        }
        if counter + WINDOW_SIZE < self.next.load(Ordering::Acquire) {
            return Err(ReplayError::Replayed);
        }
        Ok(())
    }

    /// Would `counter` be accepted? Does not change the window.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        self.bounds(counter)?;
        let (i, block, bit) = locate(counter);
        let w = self.words[i].load(Ordering::Acquire);
        let next = self.next.load(Ordering::Acquire);
        if next == 0 || counter >= next {
            return Ok(());
        }
        match full_block((w >> 32) as u32, i, (next - 1) / WORD_BITS) {
            Some(wblock) if wblock > block || (wblock == block && w & bit != 0) => {
                Err(ReplayError::Replayed)
            }
            _ => Ok(()),
        }
    }

    /// Claims `counter` as received. Call only after [`Self::check`] passed and the packet
    /// authenticated; returns false (and claims nothing) if it would not pass, including
    /// when another thread claimed it first.
    ///
    /// `next` is raised before the word's CAS, so a reader that sees a word also sees a
    /// `next` at least as new, which is what `full_block` needs. Raising it for a counter
    /// that then loses the CAS changes nothing: that counter (or a newer one in its word)
    /// was accepted already.
    pub fn update(&self, counter: u64) -> bool {
        if self.bounds(counter).is_err() {
            return false;
        }
        let (i, block, bit) = locate(counter);
        self.next.fetch_max(counter + 1, Ordering::AcqRel);
        let word = &self.words[i];
        let mut cur = word.load(Ordering::Acquire);
        loop {
            let hi = (self.next.load(Ordering::Acquire) - 1) / WORD_BITS;
            let new = match full_block((cur >> 32) as u32, i, hi) {
                Some(wblock) if wblock == block => {
                    if cur & bit != 0 {
                        return false;
                    }
                    cur | bit
                }
                Some(wblock) if wblock > block => return false,
                _ => (tag_of(block) << 32) | bit,
            };
            match word.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Greatest counter accepted so far.
    pub fn greatest(&self) -> Option<u64> {
        self.next.load(Ordering::Acquire).checked_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(w: &ReplayWindow, c: u64) -> bool {
        w.check(c).is_ok() && w.update(c)
    }

    /// Found by the property test (tests/models.rs): after a jump to 2^37, a counter just
    /// below it whose word was never written was refused as replayed (the zero word's tag
    /// was read as block 2^32, newer than the counter's block).
    #[test]
    fn far_jump_keeps_the_window_below_it() {
        let w = ReplayWindow::new();
        assert!(accept(&w, 1 << 37));
        assert_eq!(w.check((1 << 37) - 1), Ok(()));
        assert!(accept(&w, (1 << 37) - 1));
        assert!(!accept(&w, (1 << 37) - 1));
        // The oldest counter still in the window, and the first one out of it.
        assert!(accept(&w, (1 << 37) + 1 - WINDOW_SIZE));
        assert_eq!(w.check((1 << 37) - WINDOW_SIZE), Err(ReplayError::Replayed));
        // And across a 2^32-block (2^37-counter) jump from a counter seen in the same word.
        let w = ReplayWindow::new();
        assert!(accept(&w, 5));
        assert!(accept(&w, 5 + (1 << 37)));
        assert!(accept(&w, 5 + (2 << 37)));
        assert_eq!(w.check(6 + (2 << 37)), Ok(()));
    }

    #[test]
    fn in_order_and_duplicates() {
        let w = ReplayWindow::new();
        for c in 0..20_000 {
            assert!(accept(&w, c), "{c}");
            assert_eq!(w.check(c), Err(ReplayError::Replayed));
        }
        assert_eq!(w.greatest(), Some(19_999));
    }

    #[test]
    fn out_of_order_within_window_and_too_old() {
        let w = ReplayWindow::new();
        assert!(accept(&w, 10_000));
        // Everything in [10_000 - WINDOW_SIZE + 1, 10_000) is still acceptable once.
        let oldest = 10_000 - WINDOW_SIZE + 1;
        assert!(accept(&w, oldest));
        assert!(!accept(&w, oldest));
        assert!(accept(&w, 9_999));
        assert!(accept(&w, 5_000));
        assert!(!accept(&w, 5_000));
        // Too old.
        assert_eq!(w.check(oldest - 2), Err(ReplayError::Replayed));
        assert_eq!(w.check(0), Err(ReplayError::Replayed));
        // Jump far ahead: the old bits must not leak into the new range.
        assert!(accept(&w, 10_000 + 3 * TOTAL_BITS));
        assert!(accept(&w, 10_000 + 3 * TOTAL_BITS - 1));
        assert!(accept(&w, 10_000 + 2 * TOTAL_BITS + 100));
    }

    #[test]
    fn check_does_not_move_window() {
        let w = ReplayWindow::new();
        assert!(accept(&w, 5));
        assert!(w.check(100_000).is_ok());
        assert_eq!(w.greatest(), Some(5));
        assert!(accept(&w, 4));
    }

    #[test]
    fn reject_after_messages() {
        let w = ReplayWindow::new();
        assert_eq!(w.check(REJECT_AFTER_MESSAGES), Err(ReplayError::Exhausted));
        assert_eq!(w.check(u64::MAX), Err(ReplayError::Exhausted));
        assert!(!w.update(u64::MAX));
        assert!(accept(&w, REJECT_AFTER_MESSAGES - 1));
        assert_eq!(
            w.check(REJECT_AFTER_MESSAGES - 1),
            Err(ReplayError::Replayed)
        );
    }

    /// Compare against a naive set-based model on a pseudo-random walk.
    #[test]
    fn matches_naive_model() {
        let w = ReplayWindow::new();
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
            let got = accept(&w, c);
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

    /// Two threads race over the same counters (one in order, one in reverse blocks);
    /// every counter is accepted exactly once.
    #[test]
    fn racing_threads_accept_each_counter_once() {
        use std::sync::atomic::AtomicU8;
        use std::sync::Arc;
        const N: u64 = 200_000;
        let w = Arc::new(ReplayWindow::new());
        let hits: Arc<Vec<AtomicU8>> = Arc::new((0..N).map(|_| AtomicU8::new(0)).collect());
        let run = |order: Vec<u64>| {
            let (w, hits) = (Arc::clone(&w), Arc::clone(&hits));
            std::thread::spawn(move || {
                for c in order {
                    if w.check(c).is_ok() && w.update(c) {
                        hits[c as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        // Thread 1: in order. Thread 2: the same counters, each block of 64 reversed, so
        // the two collide inside blocks and on word replacement.
        let t1 = run((0..N).collect());
        let t2 = run((0..N / 64)
            .flat_map(|b| (b * 64..(b + 1) * 64).rev())
            .collect());
        t1.join().expect("thread 1");
        t2.join().expect("thread 2");
        for (c, h) in hits.iter().enumerate() {
            assert_eq!(h.load(Ordering::Relaxed), 1, "counter {c}");
        }
        assert_eq!(w.greatest(), Some(N - 1));
    }

    /// `update` is the claim: a second update of an authenticated counter fails even
    /// when both callers passed `check` first.
    #[test]
    fn update_is_the_claim() {
        let w = ReplayWindow::new();
        assert!(w.check(7).is_ok());
        assert!(w.check(7).is_ok());
        assert!(w.update(7));
        assert!(!w.update(7));
        // A word replaced by a newer block rejects the older block's counters.
        assert!(w.update(7 + TOTAL_BITS));
        assert!(!w.update(8));
        assert_eq!(w.check(8), Err(ReplayError::Replayed));
    }
}
