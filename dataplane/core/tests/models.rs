//! Property tests against simple reference models: the replay window against a set of seen
//! counters with the window bound, and the allowed-IPs trie against a linear scan for the
//! longest matching prefix.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use tm_dp::replay::{ReplayError, ReplayWindow, WINDOW_SIZE};
use tm_dp::route::RouteTable;
use tm_wire::ipc::{PeerId, Prefix};
use tm_wire::wg::timers::REJECT_AFTER_MESSAGES;

/// What the window promises: a counter is accepted at most once, never at or past
/// `REJECT_AFTER_MESSAGES`, never more than `WINDOW_SIZE` behind the newest accepted
/// counter, and always otherwise.
#[derive(Default)]
struct ReplayModel {
    seen: HashSet<u64>,
    next: u64,
}

impl ReplayModel {
    fn check(&self, c: u64) -> Result<(), ReplayError> {
        if c >= REJECT_AFTER_MESSAGES {
            return Err(ReplayError::Exhausted);
        }
        if c + WINDOW_SIZE < self.next || self.seen.contains(&c) {
            return Err(ReplayError::Replayed);
        }
        Ok(())
    }

    fn update(&mut self, c: u64) -> bool {
        if self.check(c).is_err() {
            return false;
        }
        self.seen.insert(c);
        self.next = self.next.max(c + 1);
        true
    }
}

/// How the next counter is chosen relative to the newest accepted one.
#[derive(Debug, Clone)]
enum Step {
    /// `next - 1 - back` (recent past: duplicates and reordering).
    Back(u64),
    /// `next + ahead` (a small or large jump forward).
    Ahead(u64),
    /// An absolute counter (including near `REJECT_AFTER_MESSAGES` and `u64::MAX`).
    Abs(u64),
    /// Check only, no update.
    CheckOnly(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u64..WINDOW_SIZE + 100).prop_map(Step::Back),
        2 => (0u64..64).prop_map(Step::Back),
        3 => (0u64..40).prop_map(Step::Ahead),
        1 => prop_oneof![
            Just(WINDOW_SIZE - 1), Just(WINDOW_SIZE), Just(WINDOW_SIZE + 1),
            Just(1u64 << 37), Just((1u64 << 37) + 5), Just(1u64 << 40),
        ]
        .prop_map(Step::Ahead),
        1 => prop_oneof![
            Just(0u64), Just(REJECT_AFTER_MESSAGES - 1), Just(REJECT_AFTER_MESSAGES),
            Just(u64::MAX), any::<u64>(),
        ]
        .prop_map(Step::Abs),
        1 => (0u64..WINDOW_SIZE + 100).prop_map(Step::CheckOnly),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn replay_window_matches_model(steps in prop::collection::vec(step(), 1..300)) {
        let w = ReplayWindow::new();
        let mut m = ReplayModel::default();
        for s in steps {
            let (c, update) = match s {
                Step::Back(b) => (m.next.saturating_sub(1).saturating_sub(b), true),
                Step::Ahead(a) => (m.next.saturating_add(a), true),
                Step::Abs(c) => (c, true),
                Step::CheckOnly(b) => (m.next.saturating_sub(1).saturating_sub(b), false),
            };
            prop_assert_eq!(w.check(c), m.check(c), "check({}) with next {}", c, m.next);
            if update {
                prop_assert_eq!(w.update(c), m.update(c), "update({}) with next {}", c, m.next);
            }
            prop_assert_eq!(w.greatest(), m.next.checked_sub(1));
        }
    }
}

/// Longest matching prefix by scanning every entry; for a prefix listed twice the later
/// entry wins.
fn scan(entries: &[(Prefix, PeerId)], addr: IpAddr) -> Option<PeerId> {
    let mut best: Option<(u8, PeerId)> = None;
    for (p, peer) in entries {
        let matches = match (p.addr, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let shift = 32 - u32::from(p.len);
                p.len == 0 || (u32::from(n) >> shift) == (u32::from(a) >> shift)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let shift = 128 - u32::from(p.len);
                p.len == 0 || (u128::from(n) >> shift) == (u128::from(a) >> shift)
            }
            _ => false,
        };
        if matches && best.is_none_or(|(len, _)| p.len >= len) {
            best = Some((p.len, *peer));
        }
    }
    best.map(|(_, peer)| peer)
}

/// Addresses from a small space so prefixes overlap and nest often.
fn v4() -> impl Strategy<Value = Ipv4Addr> {
    (
        prop_oneof![Just(10u8), Just(100), Just(192), any::<u8>()],
        any::<[u8; 3]>(),
    )
        .prop_map(|(a, [b, c, d])| Ipv4Addr::new(a, b & 0x0f, c, d))
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    (
        prop_oneof![Just(0xfd00u16), Just(0x2001), any::<u16>()],
        any::<u16>(),
        any::<u128>(),
    )
        .prop_map(|(a, b, rest)| {
            let low = rest & ((1u128 << 96) - 1);
            Ipv6Addr::from((u128::from(a) << 112) | (u128::from(b & 0x00ff) << 96) | low)
        })
}

fn prefix() -> impl Strategy<Value = Prefix> {
    prop_oneof![
        (v4(), 0u8..=32).prop_map(|(a, len)| Prefix {
            addr: IpAddr::V4(a),
            len
        }),
        (v6(), 0u8..=128).prop_map(|(a, len)| Prefix {
            addr: IpAddr::V6(a),
            len
        }),
        (
            v6(),
            prop_oneof![Just(0u8), Just(16), Just(24), Just(64), Just(128)]
        )
            .prop_map(|(a, len)| Prefix {
                addr: IpAddr::V6(a),
                len
            }),
    ]
}

/// An address inside `p` (host bits from `noise`), or anywhere.
fn probe(entries: &[(Prefix, PeerId)], pick: usize, noise: u128) -> IpAddr {
    let Some((p, _)) = entries.get(pick % (entries.len() + 1)) else {
        return if noise & 1 == 0 {
            IpAddr::V4(Ipv4Addr::from(noise as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(noise))
        };
    };
    match p.addr {
        IpAddr::V4(n) => {
            let host = if p.len == 0 {
                u32::MAX
            } else {
                u32::MAX.checked_shr(u32::from(p.len)).unwrap_or(0)
            };
            IpAddr::V4(Ipv4Addr::from(
                (u32::from(n) & !host) | (noise as u32 & host),
            ))
        }
        IpAddr::V6(n) => {
            let host = if p.len == 0 {
                u128::MAX
            } else {
                u128::MAX.checked_shr(u32::from(p.len)).unwrap_or(0)
            };
            IpAddr::V6(Ipv6Addr::from((u128::from(n) & !host) | (noise & host)))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn allowed_ips_trie_matches_linear_scan(
        prefixes in prop::collection::vec((prefix(), 0u32..8), 0..40),
        probes in prop::collection::vec((any::<usize>(), any::<u128>()), 1..64),
    ) {
        let entries: Vec<(Prefix, PeerId)> = prefixes;
        let table = RouteTable::new(&entries).expect("lengths are in range");
        for (pick, noise) in probes {
            let addr = probe(&entries, pick, noise);
            prop_assert_eq!(table.lookup(addr), scan(&entries, addr), "lookup({})", addr);
        }
    }

    #[test]
    fn too_long_prefixes_are_refused(len in 33u8..=255, a in v4()) {
        let entries = [(Prefix { addr: IpAddr::V4(a), len }, 1)];
        prop_assert!(RouteTable::new(&entries).is_err());
    }
}
