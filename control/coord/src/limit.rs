//! Per-source rate limit of unauthenticated requests (`GET /v1/challenge`).
//!
//! A token bucket per source: an IPv4 address, or an IPv6 /64 (one host usually owns a whole
//! /64, so per-address buckets would be free to multiply). The table is bounded: when it is full,
//! buckets that have refilled (idle sources) are dropped; if it is still full, every source not
//! in it shares one overflow bucket, so many sources together get no more than one source's
//! rate. Memory is `max_sources` entries at most, whatever the clients do.
//!
//! Challenges themselves cost no memory (see `challenge.rs`), so this bounds CPU (TLS handshakes
//! and MACs), not a table that registrations depend on.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// A source as rate-limited: IPv4 address or IPv6 /64 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => Source::V4(u32::from(a)),
            IpAddr::V6(a) => Source::V6((u128::from(a) >> 64) as u64),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = self.last.max(now);
    }

    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Table {
    buckets: HashMap<Source, Bucket>,
    overflow: Bucket,
}

/// Token buckets per source (see the module documentation).
pub(crate) struct SourceLimiter {
    rate: f64,
    burst: f64,
    max_sources: usize,
    table: Mutex<Table>,
}

impl SourceLimiter {
    /// `rate` requests per second per source, bursts of `burst`, at most `max_sources` tracked.
    pub(crate) fn new(rate: f64, burst: u32, max_sources: usize, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: rate.max(0.0),
            burst,
            max_sources: max_sources.max(1),
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                overflow: Bucket::full(burst, now),
            }),
        }
    }

    /// Whether one more request from `ip` at `now` is allowed (and counts it if so).
    pub(crate) fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        let src = Source::of(ip);
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = t.buckets.get_mut(&src) {
            return b.take(now, rate, burst);
        }
        if t.buckets.len() >= self.max_sources {
            // Forget sources whose bucket has refilled: they behave like new ones anyway.
            t.buckets.retain(|_, b| {
                let mut c = *b;
                c.refill(now, rate, burst);
                c.tokens < burst
            });
        }
        if t.buckets.len() >= self.max_sources {
            return t.overflow.take(now, rate, burst);
        }
        let mut b = Bucket::full(burst, now);
        let ok = b.take(now, rate, burst);
        t.buckets.insert(src, b);
        ok
    }

    /// Sources currently tracked.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .buckets
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn burst_then_rate_per_source() {
        let t0 = Instant::now();
        let l = SourceLimiter::new(2.0, 5, 100, t0);
        let a = v4(0x0a00_0001);
        for i in 0..5 {
            assert!(l.allow(a, t0), "burst request {i}");
        }
        assert!(!l.allow(a, t0), "over the burst");
        // Another source is not affected.
        assert!(l.allow(v4(0x0a00_0002), t0));
        // Two per second refill.
        assert!(l.allow(a, t0 + Duration::from_millis(500)));
        assert!(!l.allow(a, t0 + Duration::from_millis(500)));
        assert!(l.allow(a, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn ipv6_hosts_in_one_slash_64_share_a_bucket() {
        let t0 = Instant::now();
        let l = SourceLimiter::new(1.0, 2, 100, t0);
        let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1));
        let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 9, 9, 9, 9));
        let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert!(l.allow(a, t0));
        assert!(l.allow(b, t0));
        assert!(!l.allow(a, t0));
        assert!(l.allow(other, t0));
        // IPv4-mapped IPv6 is the IPv4 source.
        let m = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert!(l.allow(m, t0));
        assert!(l.allow(v4(0x0a00_0001), t0));
        assert!(!l.allow(m, t0));
    }

    #[test]
    fn table_is_bounded_and_many_sources_share_the_overflow_bucket() {
        let t0 = Instant::now();
        let l = SourceLimiter::new(1.0, 3, 8, t0);
        for i in 0..8 {
            assert!(l.allow(v4(i), t0));
        }
        assert_eq!(l.tracked(), 8);
        // 1000 more sources: together they get the overflow bucket's burst only.
        let allowed = (100..1100).filter(|i| l.allow(v4(*i), t0)).count();
        assert_eq!(allowed, 3);
        assert_eq!(l.tracked(), 8);
        // Once the tracked sources have refilled, new sources get their own buckets again.
        let later = t0 + Duration::from_secs(60);
        assert!(l.allow(v4(5000), later));
        assert!(l.tracked() <= 8);
    }
}
