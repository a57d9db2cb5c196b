//! Names and mesh addresses must be unique, but two coordinators on the two sides of a
//! partition can each admit a node called `web`, or give two nodes the same address. After the
//! heal both registrations are in every replica; this module turns them into a unique view by
//! one documented rule, the same on every coordinator (a pure function of the records):
//!
//! - registrations are ordered by the stamp of their registration record (earlier first; the
//!   stamp's origin breaks ties between coordinators), then by node key;
//! - the earliest keeps its name and address;
//! - a later one with a taken name gets `name-2`, `name-3`, ... (the first not taken by any
//!   registration); with a taken address, the first free address of the mesh range starting
//!   from a position derived from its key.
//!
//! Nothing is rewritten in the records: every coordinator computes the same view, so the
//! renamed node's netmap, certificate map and DNS name follow at once, and an audit entry is
//! written under a key derived from the conflict (so two coordinators recording it write the
//! same key).

use crate::hlc::Stamp;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// One node registration as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The node's key (its identity; unique by construction of the record keys).
    pub key: String,
    /// The name it asked for.
    pub name: String,
    /// The address it was given.
    pub addr: Ipv4Addr,
    /// The stamp of its registration.
    pub registered: Stamp,
}

/// A registration after conflict resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The node's key.
    pub key: String,
    /// Its name in the mesh.
    pub name: String,
    /// Its address in the mesh.
    pub addr: Ipv4Addr,
    /// The name it registered with, if it lost it.
    pub renamed_from: Option<String>,
    /// The address it was given, if it lost it.
    pub readdressed_from: Option<Ipv4Addr>,
}

/// The usable host addresses of a mesh range (`base/len`, without the network and broadcast
/// addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Network address.
    pub base: Ipv4Addr,
    /// Prefix length (at most 30).
    pub len: u8,
}

impl Range {
    fn hosts(&self) -> u64 {
        (1u64 << (32 - u32::from(self.len.min(30)))) - 2
    }

    fn nth(&self, i: u64) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base).wrapping_add(1 + i as u32))
    }
}

fn key_position(key: &str, n: u64) -> u64 {
    // FNV-1a: stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % n
}

/// The unique view of `regs` (see the module doc), in the order of `regs` sorted by
/// registration. Addresses outside `range` are kept as they are unless they collide.
pub fn resolve(regs: &[Registration], range: Range) -> Vec<Resolved> {
    let mut order: Vec<&Registration> = regs.iter().collect();
    order.sort_by(|a, b| a.registered.cmp(&b.registered).then(a.key.cmp(&b.key)));
    let asked: BTreeSet<&str> = regs.iter().map(|r| r.name.as_str()).collect();
    let asked_addrs: BTreeSet<Ipv4Addr> = regs.iter().map(|r| r.addr).collect();
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut addrs: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut out = Vec::with_capacity(order.len());
    for r in order {
        let (name, renamed_from) = if names.contains(&r.name) {
            let mut i = 2u64;
            let name = loop {
                let c = format!("{}-{i}", r.name);
                if !names.contains(&c) && !asked.contains(c.as_str()) {
                    break c;
                }
                i += 1;
            };
            (name, Some(r.name.clone()))
        } else {
            (r.name.clone(), None)
        };
        names.insert(name.clone());
        let (addr, readdressed_from) = if addrs.contains(&r.addr) {
            let n = range.hosts();
            let start = key_position(&r.key, n);
            let free = (0..n)
                .map(|i| range.nth((start + i) % n))
                .find(|a| !addrs.contains(a) && !asked_addrs.contains(a));
            match free {
                Some(a) => (a, Some(r.addr)),
                // The range is full: keep the collision visible rather than invent an address.
                None => (r.addr, None),
            }
        } else {
            (r.addr, None)
        };
        addrs.insert(addr);
        out.push(Resolved {
            key: r.key.clone(),
            name,
            addr,
            renamed_from,
            readdressed_from,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Origin;

    fn reg(key: &str, name: &str, addr: [u8; 4], wall: u64, o: u64) -> Registration {
        Registration {
            key: key.into(),
            name: name.into(),
            addr: Ipv4Addr::from(addr),
            registered: Stamp {
                wall_ms: wall,
                logical: 0,
                origin: Origin(o),
            },
        }
    }

    const R: Range = Range {
        base: Ipv4Addr::new(100, 64, 0, 0),
        len: 24,
    };

    #[test]
    fn the_earlier_registration_keeps_name_and_address() {
        let regs = vec![
            reg("k-late", "web", [100, 64, 0, 5], 2000, 2),
            reg("k-early", "web", [100, 64, 0, 5], 1000, 1),
            reg("k-other", "web-2", [100, 64, 0, 6], 500, 1),
        ];
        let a = resolve(&regs, R);
        let mut rev = regs.clone();
        rev.reverse();
        assert_eq!(a, resolve(&rev, R), "independent of the input order");
        let early = a.iter().find(|r| r.key == "k-early").unwrap();
        assert_eq!(
            (early.name.as_str(), early.renamed_from.as_ref()),
            ("web", None)
        );
        let late = a.iter().find(|r| r.key == "k-late").unwrap();
        assert_eq!(late.name, "web-3", "web-2 belongs to another node");
        assert_eq!(late.renamed_from.as_deref(), Some("web"));
        assert_ne!(late.addr, early.addr);
        assert_eq!(late.readdressed_from, Some(Ipv4Addr::new(100, 64, 0, 5)));
        let names: BTreeSet<_> = a.iter().map(|r| &r.name).collect();
        let addrs: BTreeSet<_> = a.iter().map(|r| r.addr).collect();
        assert_eq!((names.len(), addrs.len()), (3, 3));
    }

    #[test]
    fn equal_wall_times_are_ordered_by_origin() {
        let regs = vec![
            reg("b", "x", [100, 64, 0, 9], 1000, 2),
            reg("a", "x", [100, 64, 0, 9], 1000, 1),
        ];
        let v = resolve(&regs, R);
        assert_eq!(v[0].key, "a");
        assert_eq!(v[1].name, "x-2");
    }
}
