//! Allowed-IPs routing table: longest-prefix match for IPv4 and IPv6.
//!
//! One uncompressed binary trie per family, stored in a `Vec` of nodes addressed by
//! `u32` indices. A lookup walks at most 32 (IPv4) or 128 (IPv6) nodes and never
//! allocates. The table is immutable once built: the dataplane rebuilds it on
//! `AddPeer` / `RemovePeer` and publishes it as an `Arc<RouteTable>` snapshot, so
//! workers can load it once per batch.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tm_wire::ipc::{PeerId, Prefix};

use crate::Error;

/// Index 0 is the root and never a child, so 0 doubles as "no child".
const NO_CHILD: u32 = 0;

#[derive(Debug, Clone, Copy, Default)]
struct Node {
    child: [u32; 2],
    value: Option<PeerId>,
}

#[derive(Debug, Clone)]
struct Trie {
    bits: u8,
    nodes: Vec<Node>,
}

impl Trie {
    fn new(bits: u8) -> Self {
        Self {
            bits,
            nodes: vec![Node::default()],
        }
    }

    /// `key` is left-aligned in a u128 (bit 127 is the first address bit).
    fn insert(&mut self, key: u128, len: u8, value: PeerId) {
        let mut n = 0usize;
        for i in 0..u32::from(len) {
            let bit = ((key >> (127 - i)) & 1) as usize;
            let next = self.nodes[n].child[bit];
            n = if next == NO_CHILD {
                let idx = self.nodes.len();
                self.nodes.push(Node::default());
                self.nodes[n].child[bit] =
                    u32::try_from(idx).expect("trie has fewer than 2^32 nodes");
                idx
            } else {
                next as usize
            };
        }
        self.nodes[n].value = Some(value);
    }

    fn lookup(&self, key: u128) -> Option<PeerId> {
        let mut n = 0usize;
        let mut best = self.nodes[0].value;
        for i in 0..u32::from(self.bits) {
            let bit = ((key >> (127 - i)) & 1) as usize;
            let next = self.nodes[n].child[bit];
            if next == NO_CHILD {
                break;
            }
            n = next as usize;
            if let Some(v) = self.nodes[n].value {
                best = Some(v);
            }
        }
        best
    }
}

/// Immutable allowed-IPs table mapping addresses to the owning peer.
#[derive(Debug, Clone)]
pub struct RouteTable {
    v4: Trie,
    v6: Trie,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self {
            v4: Trie::new(32),
            v6: Trie::new(128),
        }
    }
}

/// Left-aligns an address in a u128.
fn key(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Clears the host bits of `p` (`10.1.2.3/8` -> `10.0.0.0/8`).
pub fn normalize(p: Prefix) -> Result<Prefix, Error> {
    let bits = match p.addr {
        IpAddr::V4(_) => 32u8,
        IpAddr::V6(_) => 128,
    };
    if p.len > bits {
        return Err(Error::PrefixTooLong { len: p.len, bits });
    }
    let mask = if p.len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(p.len))
    };
    let k = key(p.addr) & mask;
    let addr = match p.addr {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((k >> 96) as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(k)),
    };
    Ok(Prefix { addr, len: p.len })
}

impl RouteTable {
    /// Builds a table; for a prefix listed twice the later entry wins. Host bits of
    /// prefixes are ignored.
    pub fn new<'a>(entries: impl IntoIterator<Item = &'a (Prefix, PeerId)>) -> Result<Self, Error> {
        let mut t = Self::default();
        for (p, peer) in entries {
            let p = normalize(*p)?;
            match p.addr {
                IpAddr::V4(_) => t.v4.insert(key(p.addr), p.len, *peer),
                IpAddr::V6(_) => t.v6.insert(key(p.addr), p.len, *peer),
            }
        }
        Ok(t)
    }

    /// Longest-prefix match.
    pub fn lookup(&self, addr: IpAddr) -> Option<PeerId> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    /// Longest-prefix match for an IPv4 address.
    pub fn lookup_v4(&self, a: Ipv4Addr) -> Option<PeerId> {
        self.v4.lookup(u128::from(u32::from(a)) << 96)
    }

    /// Longest-prefix match for an IPv6 address.
    pub fn lookup_v6(&self, a: Ipv6Addr) -> Option<PeerId> {
        self.v6.lookup(u128::from(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        let (a, l) = s.split_once('/').expect("prefix has a slash");
        Prefix {
            addr: a.parse().expect("address"),
            len: l.parse().expect("length"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn overlapping_v4() {
        let t = RouteTable::new(&[
            (p("0.0.0.0/0"), 1),
            (p("10.0.0.0/8"), 2),
            (p("10.1.0.0/16"), 3),
            (p("10.1.2.3/32"), 4),
            (p("10.1.2.99/24"), 5), // host bits ignored
        ])
        .unwrap();
        assert_eq!(t.lookup(ip("8.8.8.8")), Some(1));
        assert_eq!(t.lookup(ip("10.9.9.9")), Some(2));
        assert_eq!(t.lookup(ip("10.1.9.9")), Some(3));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(4));
        assert_eq!(t.lookup(ip("10.1.2.4")), Some(5));
        assert_eq!(t.lookup(ip("255.255.255.255")), Some(1));
        // v6 is a separate family.
        assert_eq!(t.lookup(ip("::1")), None);
    }

    #[test]
    fn overlapping_v6_and_edges() {
        let t = RouteTable::new(&[
            (p("fd00::/8"), 1),
            (p("fd00:1::/32"), 2),
            (p("fd00:1::5/128"), 3),
            (p("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), 4),
        ])
        .unwrap();
        assert_eq!(t.lookup(ip("fd12::1")), Some(1));
        assert_eq!(t.lookup(ip("fd00:1::6")), Some(2));
        assert_eq!(t.lookup(ip("fd00:1::5")), Some(3));
        assert_eq!(
            t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some(4)
        );
        assert_eq!(
            t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")),
            None
        );
        assert_eq!(t.lookup(ip("2001:db8::1")), None);
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
        let t = RouteTable::new(&[(p("::/0"), 9), (p("::/0"), 7)]).unwrap();
        assert_eq!(t.lookup(ip("2001:db8::1")), Some(7), "later duplicate wins");
        assert_eq!(t.lookup(ip("1.2.3.4")), None);
    }

    #[test]
    fn rejects_long_prefixes() {
        assert_eq!(
            RouteTable::new(&[(p("10.0.0.0/33"), 1)]).unwrap_err(),
            Error::PrefixTooLong { len: 33, bits: 32 }
        );
        assert!(RouteTable::new(&[(p("::/129"), 1)]).is_err());
        assert_eq!(normalize(p("10.1.2.3/8")).unwrap(), p("10.0.0.0/8"));
        assert_eq!(normalize(p("fd00::1/0")).unwrap(), p("::/0"));
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn naive(entries: &[(Prefix, PeerId)], a: IpAddr) -> Option<PeerId> {
        let mut best: Option<(u8, PeerId)> = None;
        for (pre, peer) in entries {
            if pre.addr.is_ipv4() != a.is_ipv4() {
                continue;
            }
            let mask = if pre.len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(pre.len))
            };
            if key(pre.addr) & mask == key(a) & mask && best.is_none_or(|(l, _)| pre.len >= l) {
                best = Some((pre.len, *peer));
            }
        }
        best.map(|(_, p)| p)
    }

    #[test]
    fn randomized_against_linear_scan() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..20 {
            let mut entries = Vec::new();
            // Cluster addresses under a few bases so prefixes overlap a lot.
            let base4 = (r.next() as u32) & 0xffff_0000;
            let base6 = u128::from(r.next()) << 64;
            for i in 0..200u32 {
                let v6 = r.next().is_multiple_of(2);
                let addr = if v6 {
                    IpAddr::V6(Ipv6Addr::from(
                        base6 ^ (u128::from(r.next()) >> (r.next() % 64)),
                    ))
                } else {
                    IpAddr::V4(Ipv4Addr::from(
                        base4 ^ ((r.next() as u32) >> (r.next() % 32)),
                    ))
                };
                let max = if v6 { 129 } else { 33 };
                let len = (r.next() % max) as u8;
                let pre = normalize(Prefix { addr, len }).unwrap();
                // Unique prefixes (the dataplane guarantees this), so ties cannot occur.
                if entries.iter().all(|(q, _)| *q != pre) {
                    entries.push((pre, round * 1000 + i));
                }
            }
            let t = RouteTable::new(&entries).unwrap();
            for _ in 0..2000 {
                let a = if r.next().is_multiple_of(2) {
                    IpAddr::V6(Ipv6Addr::from(
                        base6 ^ (u128::from(r.next()) >> (r.next() % 128)),
                    ))
                } else {
                    IpAddr::V4(Ipv4Addr::from(
                        base4 ^ ((r.next() as u32) >> (r.next() % 32)),
                    ))
                };
                assert_eq!(t.lookup(a), naive(&entries, a), "{a}");
            }
            // Every entry's own address matches itself or something longer.
            for (pre, peer) in &entries {
                let got = t.lookup(pre.addr);
                assert!(got.is_some());
                if pre.len == 128 || (pre.len == 32 && pre.addr.is_ipv4()) {
                    assert_eq!(got, Some(*peer));
                }
            }
        }
    }
}
