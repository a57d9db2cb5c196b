//! Who may mount: loopback plus the configured networks (the mesh CIDR, where cryptokey routing
//! makes the source address an authenticated identity).

use std::net::IpAddr;
use std::str::FromStr;

use crate::NfsError;

/// An IP network, `10.99.0.0/16` or `fd00::/64` (a bare address means a single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let p = u32::from(self.prefix.min(32));
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let p = u32::from(self.prefix.min(128));
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = NfsError;
    fn from_str(s: &str) -> Result<Cidr, NfsError> {
        let bad = || NfsError::BadCidr(s.to_string());
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = canonical(a.trim().parse::<IpAddr>().map_err(|_| bad())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The mount policy: loopback (unless turned off), plus these networks.
#[derive(Clone, Debug)]
pub struct Access {
    /// Allowed networks besides loopback.
    pub allow: Vec<Cidr>,
    /// Whether loopback clients (the coordinator's own host) are allowed.
    pub loopback: bool,
}

impl Default for Access {
    fn default() -> Access {
        Access {
            allow: Vec::new(),
            loopback: true,
        }
    }
}

impl Access {
    /// Whether a client at `ip` may mount and use the shares.
    pub fn allows(&self, ip: IpAddr) -> bool {
        (self.loopback && canonical(ip).is_loopback()) || self.allow.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_mesh_only() {
        let a = Access {
            allow: vec!["10.99.0.0/16".parse().expect("cidr")],
            loopback: true,
        };
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(a.allows(ip("127.0.0.1")));
        assert!(a.allows(ip("127.9.9.9")));
        assert!(a.allows(ip("::1")));
        assert!(a.allows(ip("10.99.3.4")));
        assert!(a.allows(ip("::ffff:10.99.3.4")));
        assert!(!a.allows(ip("10.98.3.4")));
        assert!(!a.allows(ip("192.168.1.1")));
        assert!(!Access::default().allows(ip("10.99.3.4")));
        let strict = Access {
            allow: Vec::new(),
            loopback: false,
        };
        assert!(!strict.allows(ip("127.0.0.1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert_eq!("fd00::1".parse::<Cidr>().expect("host").prefix, 128);
    }
}
