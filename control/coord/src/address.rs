//! Mesh address allocation: SHA-256 of the public key picks a host offset inside the mesh
//! CIDR; on collision (or the network / broadcast address) probe linearly, wrapping. The
//! caller persists the result with the node record, so an address never moves once given.

use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};
use tm_noise::PublicKey;

use crate::Error;

/// An IPv4 mesh prefix (`100.64.0.0/10`). Serialized as its text form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MeshCidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl MeshCidr {
    /// A prefix from an address (host bits are cleared) and a length between 8 and 30.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, Error> {
        let text = format!("{addr}/{prefix_len}");
        if !(8..=30).contains(&prefix_len) {
            return Err(Error::BadCidr(
                text,
                "prefix length must be between 8 and 30",
            ));
        }
        let mask = u32::MAX << (32 - prefix_len);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix_len,
        })
    }

    /// Parses `a.b.c.d/len`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let (a, l) = text
            .split_once('/')
            .ok_or_else(|| Error::BadCidr(text.to_owned(), "expected address/length"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| Error::BadCidr(text.to_owned(), "not an IPv4 address"))?;
        let len: u8 = l
            .parse()
            .map_err(|_| Error::BadCidr(text.to_owned(), "bad prefix length"))?;
        Self::new(addr, len)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn size(&self) -> u64 {
        1u64 << (32 - self.prefix_len)
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix_len);
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// Whether `ip` is a usable host address (inside, not network, not broadcast).
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        let off = u64::from(u32::from(ip).wrapping_sub(u32::from(self.network)));
        self.contains(ip) && off != 0 && off != self.size() - 1
    }
}

impl core::fmt::Display for MeshCidr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl core::str::FromStr for MeshCidr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl serde::Serialize for MeshCidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MeshCidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The address `key` would get in an empty mesh (before probing).
pub fn preferred(cidr: MeshCidr, key: &PublicKey) -> Ipv4Addr {
    let h = Sha256::new()
        .chain_update(b"tunnelmesh address v1")
        .chain_update(key.as_bytes())
        .finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    let off = u64::from_be_bytes(b) % cidr.size();
    Ipv4Addr::from(u32::from(cidr.network).wrapping_add(off as u32))
}

/// Allocates an address for `key`: the hashed offset, then the next ones (wrapping), skipping
/// the network and broadcast addresses and every address for which `is_taken` is true.
pub fn allocate(
    cidr: MeshCidr,
    key: &PublicKey,
    is_taken: impl Fn(Ipv4Addr) -> bool,
) -> Result<Ipv4Addr, Error> {
    let size = cidr.size();
    let base = u64::from(u32::from(preferred(cidr, key)) - u32::from(cidr.network));
    for i in 0..size {
        let off = (base + i) % size;
        let ip = Ipv4Addr::from(u32::from(cidr.network) + off as u32);
        if cidr.is_host(ip) && !is_taken(ip) {
            return Ok(ip);
        }
    }
    Err(Error::AddressPoolExhausted(cidr.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn parse_and_contains() {
        let c = MeshCidr::parse("100.64.1.2/10").expect("valid");
        assert_eq!(c.to_string(), "100.64.0.0/10");
        assert!(c.contains("100.127.255.255".parse().expect("ip")));
        assert!(!c.contains("100.128.0.0".parse().expect("ip")));
        assert!(!c.is_host("100.64.0.0".parse().expect("ip")));
        assert!(!c.is_host("100.127.255.255".parse().expect("ip")));
        assert!(MeshCidr::parse("10.0.0.0/31").is_err());
        assert!(MeshCidr::parse("10.0.0.0").is_err());
        assert!(MeshCidr::parse("::1/64").is_err());
    }

    #[test]
    fn small_pool_probes_and_exhausts() {
        // /30: two hosts.
        let c = MeshCidr::parse("10.9.0.0/30").expect("valid");
        let mut taken = HashSet::new();
        for i in 0..2u8 {
            let ip = allocate(c, &PublicKey([i; 32]), |ip| taken.contains(&ip)).expect("room");
            assert!(c.is_host(ip));
            assert!(taken.insert(ip));
        }
        assert!(matches!(
            allocate(c, &PublicKey([9; 32]), |ip| taken.contains(&ip)),
            Err(Error::AddressPoolExhausted(_))
        ));
    }

    #[test]
    fn collision_moves_to_next_free() {
        let c = MeshCidr::parse("10.0.0.0/24").expect("valid");
        let k = PublicKey([3; 32]);
        let first = allocate(c, &k, |_| false).expect("room");
        let second = allocate(c, &k, |ip| ip == first).expect("room");
        assert_ne!(first, second);
        assert!(c.is_host(second));
    }
}
