//! Registration challenges that cost the coordinator no memory until a registration uses them.
//!
//! A nonce is `issued (8 bytes, ms since this coordinator started) || random (8) || tag (16)`
//! where `tag = SHA-256(key || issued || random)[..16]` under a random per-process key. The
//! coordinator keeps nothing per issued challenge, so unauthenticated `GET /v1/challenge`
//! cannot fill a table that joins depend on. What it keeps is the set of nonces already
//! presented in a registration (replay protection), until they expire:
//! - `used`: nonces of registrations that proved the join secret. Only token holders add to
//!   it; when it is full (`max` entries within one challenge lifetime) registrations get `Busy`.
//! - `failed`: nonces presented with a wrong join-secret MAC. Anyone can add to it, so it is
//!   bounded and evicts its oldest entry when full: an evicted nonce allows one more attempt,
//!   which still needs the join secret to succeed.
//!
//! A restart changes the key, so challenges issued before it are unknown afterwards (a client
//! asks for a new one).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::Error;

/// Issues and checks challenges (see the module documentation).
pub(crate) struct Challenges {
    key: [u8; 32],
    base: Instant,
    ttl: Duration,
    max: usize,
    used: HashMap<[u8; 32], Instant>,
    failed: HashMap<[u8; 32], Instant>,
    failed_order: VecDeque<[u8; 32]>,
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Challenges {
    /// Challenges valid for `ttl`; at most `max` remembered nonces of each kind.
    pub(crate) fn new(ttl: Duration, max: usize, base: Instant) -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self {
            key,
            base,
            ttl,
            max: max.max(1),
            used: HashMap::new(),
            failed: HashMap::new(),
            failed_order: VecDeque::new(),
        }
    }

    fn tag(&self, head: &[u8]) -> [u8; 16] {
        let d = Sha256::new()
            .chain_update(self.key)
            .chain_update(head)
            .finalize();
        let mut t = [0u8; 16];
        t.copy_from_slice(&d[..16]);
        t
    }

    /// A new nonce issued at `now`.
    pub(crate) fn issue<R: RngCore + CryptoRng + ?Sized>(
        &self,
        now: Instant,
        rng: &mut R,
    ) -> [u8; 32] {
        let ms =
            u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX);
        let mut n = [0u8; 32];
        n[..8].copy_from_slice(&ms.to_be_bytes());
        rng.fill_bytes(&mut n[8..16]);
        let tag = self.tag(&n[..16]);
        n[16..].copy_from_slice(&tag);
        n
    }

    /// When `nonce` was issued, if this coordinator issued it.
    fn issued(&self, nonce: &[u8; 32]) -> Option<Instant> {
        if !ct_eq(&self.tag(&nonce[..16]), &nonce[16..]) {
            return None;
        }
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&nonce[..8]);
        self.base
            .checked_add(Duration::from_millis(u64::from_be_bytes(ms)))
    }

    fn purge(&mut self, now: Instant) {
        let ttl = self.ttl;
        // Keyed by issue time: past the lifetime they are refused as expired anyway.
        self.used
            .retain(|_, issued| now.saturating_duration_since(*issued) < ttl);
        while let Some(n) = self.failed_order.front() {
            match self.failed.get(n) {
                Some(issued) if now.saturating_duration_since(*issued) < ttl => break,
                _ => {
                    let n = *n;
                    self.failed.remove(&n);
                    self.failed_order.pop_front();
                }
            }
        }
    }

    /// Checks a presented nonce and consumes it. `token_ok` is the join-secret check: the nonce
    /// goes to `used` if it passes, to `failed` if not (its error is returned). Either way a
    /// second presentation is `ChallengeUsed` (while remembered).
    pub(crate) fn consume(
        &mut self,
        now: Instant,
        nonce: &[u8; 32],
        token_ok: impl FnOnce() -> Result<(), Error>,
    ) -> Result<(), Error> {
        let issued = self.issued(nonce).ok_or(Error::ChallengeUnknown)?;
        if issued > now || now.saturating_duration_since(issued) >= self.ttl {
            return Err(Error::ChallengeUnknown);
        }
        self.purge(now);
        if self.used.contains_key(nonce) || self.failed.contains_key(nonce) {
            return Err(Error::ChallengeUsed);
        }
        if let Err(e) = token_ok() {
            if self.failed.len() >= self.max {
                if let Some(old) = self.failed_order.pop_front() {
                    self.failed.remove(&old);
                }
            }
            self.failed.insert(*nonce, issued);
            self.failed_order.push_back(*nonce);
            return Err(e);
        }
        if self.used.len() >= self.max {
            return Err(Error::Busy);
        }
        self.used.insert(*nonce, issued);
        Ok(())
    }

    /// Remembered nonces (used, failed).
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> (usize, usize) {
        (self.used.len(), self.failed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad() -> Result<(), Error> {
        Err(Error::WrongToken)
    }

    #[test]
    fn issued_nonces_verify_forged_ones_do_not() {
        let t0 = Instant::now();
        let mut c = Challenges::new(Duration::from_secs(60), 4, t0);
        let n = c.issue(t0, &mut OsRng);
        let mut forged = n;
        forged[3] ^= 1; // another issue time, same tag
        assert!(matches!(
            c.consume(t0, &forged, || Ok(())),
            Err(Error::ChallengeUnknown)
        ));
        assert!(matches!(
            c.consume(t0, &[7; 32], || Ok(())),
            Err(Error::ChallengeUnknown)
        ));
        c.consume(t0 + Duration::from_secs(1), &n, || Ok(()))
            .expect("valid");
        assert!(matches!(
            c.consume(t0 + Duration::from_secs(2), &n, || Ok(())),
            Err(Error::ChallengeUsed)
        ));
        // Another coordinator (key) does not accept it.
        let mut other = Challenges::new(Duration::from_secs(60), 4, t0);
        assert!(matches!(
            other.consume(t0, &n, || Ok(())),
            Err(Error::ChallengeUnknown)
        ));
    }

    #[test]
    fn expiry_and_purge() {
        let t0 = Instant::now();
        let mut c = Challenges::new(Duration::from_secs(60), 4, t0);
        let n = c.issue(t0, &mut OsRng);
        assert!(matches!(
            c.consume(t0 + Duration::from_secs(60), &n, || Ok(())),
            Err(Error::ChallengeUnknown)
        ));
        let n = c.issue(t0, &mut OsRng);
        c.consume(t0, &n, || Ok(())).expect("ok");
        let m = c.issue(t0 + Duration::from_secs(61), &mut OsRng);
        c.consume(t0 + Duration::from_secs(61), &m, || Ok(()))
            .expect("ok");
        assert_eq!(c.remembered(), (1, 0), "the expired nonce was forgotten");
    }

    #[test]
    fn issuing_costs_nothing_and_failed_attempts_cannot_starve_token_holders() {
        let t0 = Instant::now();
        let mut c = Challenges::new(Duration::from_secs(60), 8, t0);
        // A flood of challenges: nothing is remembered.
        for _ in 0..100_000 {
            c.issue(t0, &mut OsRng);
        }
        assert_eq!(c.remembered(), (0, 0));
        // A flood of registrations without the join secret: bounded, oldest evicted.
        for _ in 0..1000 {
            let n = c.issue(t0, &mut OsRng);
            assert!(matches!(c.consume(t0, &n, bad), Err(Error::WrongToken)));
        }
        assert_eq!(c.remembered(), (0, 8));
        // A token holder still registers.
        let n = c.issue(t0, &mut OsRng);
        c.consume(t0, &n, || Ok(()))
            .expect("token holder is not starved");
        // A failed nonce stays consumed while remembered.
        let n = c.issue(t0, &mut OsRng);
        assert!(c.consume(t0, &n, bad).is_err());
        assert!(matches!(
            c.consume(t0, &n, || Ok(())),
            Err(Error::ChallengeUsed)
        ));
    }
}
