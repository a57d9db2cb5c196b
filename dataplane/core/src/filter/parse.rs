//! Reading a packet into its flow key: the general parse and the IPv4 TCP/UDP fast path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

/// A flow oriented local/remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flow {
    pub(super) proto: u8,
    pub(super) local: IpAddr,
    pub(super) lport: u16,
    pub(super) remote: IpAddr,
    pub(super) rport: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Parsed {
    /// A packet of a flow; `syn` = TCP SYN without ACK; `port` = the port the rules see.
    Flow { flow: Flow, syn: bool, port: u16 },
    /// An ICMP error quoting a packet this node sent (oriented as that packet).
    IcmpError(Flow),
    /// A non-first fragment.
    Fragment,
}

pub(super) fn v4(b: &[u8]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

pub(super) fn v6(b: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

/// (proto, src, dst, L4 offset, first fragment) of an IP packet, extension headers skipped.
pub(super) fn ip_header(p: &[u8]) -> Option<(u8, IpAddr, IpAddr, usize, bool)> {
    match p.first()? >> 4 {
        4 => {
            if p.len() < 20 {
                return None;
            }
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag_off = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            (ihl >= 20 && p.len() >= ihl)
                .then(|| (p[9], v4(&p[12..]), v4(&p[16..]), ihl, frag_off == 0))
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let (src, dst) = (v6(&p[8..]), v6(&p[24..]));
            let mut next = p[6];
            let mut at = 40;
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 => {
                        let h = p.get(at..at + 2)?;
                        next = h[0];
                        at += (usize::from(h[1]) + 1) * 8;
                    }
                    44 => {
                        let h = p.get(at..at + 8)?;
                        next = h[0];
                        at += 8;
                        if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                            return Some((next, src, dst, at, false));
                        }
                    }
                    _ => return Some((next, src, dst, at, true)),
                }
            }
            None
        }
        _ => None,
    }
}

pub(super) fn has_ports(proto: u8) -> bool {
    matches!(proto, TCP | UDP | SCTP)
}

pub(super) fn is_icmp_error(proto: u8, ty: u8) -> bool {
    match proto {
        ICMP => matches!(ty, 3 | 11 | 12),
        ICMP6 => matches!(ty, 1..=4),
        _ => false,
    }
}

pub(super) fn is_echo(proto: u8, ty: u8) -> bool {
    match proto {
        ICMP => matches!(ty, 0 | 8),
        ICMP6 => matches!(ty, 128 | 129),
        _ => false,
    }
}

/// (src port, dst port) as the flow key sees them: ports, the echo id, or zeros.
pub(super) fn ports(proto: u8, l4: &[u8]) -> Option<(u16, u16)> {
    if has_ports(proto) {
        let b = l4.get(..4)?;
        return Some((
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        ));
    }
    if matches!(proto, ICMP | ICMP6) {
        let b = l4.get(..8)?;
        if is_echo(proto, b[0]) {
            let id = u16::from_be_bytes([b[4], b[5]]);
            return Some((id, id));
        }
    }
    Some((0, 0))
}

pub(super) fn parse(pkt: &[u8], dir: Dir) -> Option<Parsed> {
    let (proto, src, dst, at, first) = ip_header(pkt)?;
    if !first {
        return Some(Parsed::Fragment);
    }
    let l4 = pkt.get(at..)?;
    if matches!(proto, ICMP | ICMP6) && is_icmp_error(proto, *l4.first()?) {
        // The quoted packet: its header and at least 8 bytes of its transport header.
        let q = l4.get(8..)?;
        let (qp, qsrc, qdst, qat, qfirst) = ip_header(q)?;
        let (sp, dp) = if qfirst {
            ports(qp, q.get(qat..)?).unwrap_or((0, 0))
        } else {
            (0, 0)
        };
        return Some(Parsed::IcmpError(Flow {
            proto: qp,
            local: qsrc,
            lport: sp,
            remote: qdst,
            rport: dp,
        }));
    }
    let (sp, dp) = ports(proto, l4)?;
    let syn = proto == TCP && {
        let f = *l4.get(13)?;
        f & TCP_SYN != 0 && f & TCP_ACK == 0
    };
    let (local, lport, remote, rport) = match dir {
        Dir::In => (dst, dp, src, sp),
        Dir::Out => (src, sp, dst, dp),
    };
    // The number the rules look up: the local port, the ICMP message type (echo requests
    // follow the destination's rules, other types need an ICMP rule), or 0.
    let port = if has_ports(proto) {
        lport
    } else if matches!(proto, ICMP | ICMP6) {
        u16::from(l4[0])
    } else {
        0
    };
    Some(Parsed::Flow {
        flow: Flow {
            proto,
            local,
            lport,
            remote,
            rport,
        },
        syn,
        port,
    })
}

pub(super) fn mix(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31)
}

pub(super) fn addr_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)) | (1 << 127),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Keyed hash of (peer, flow); never 0.
pub(super) fn flow_hash(seed: u64, peer: PeerId, f: &Flow) -> u64 {
    let ports = u64::from(f.lport) << 16 | u64::from(f.rport);
    key_hash(
        seed,
        peer,
        f.proto,
        addr_bits(f.local),
        addr_bits(f.remote),
        ports,
    )
}

/// [`flow_hash`] of its parts (addresses as [`addr_bits`] gives them).
#[inline]
pub(super) fn key_hash(seed: u64, peer: PeerId, proto: u8, l: u128, r: u128, ports: u64) -> u64 {
    let mut h = mix(seed ^ 0x5bd1_e995, u64::from(peer) << 8 | u64::from(proto));
    h = mix(h, l as u64);
    h = mix(h, (l >> 64) as u64);
    h = mix(h, r as u64);
    h = mix(h, (r >> 64) as u64);
    h = mix(h, ports);
    // fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h | 1
}

/// The common packet read in one pass, without building addresses: IPv4 without options, not a
/// fragment, UDP or TCP other than a SYN without ACK. Gives (flow hash, protocol, the port the
/// rules see); None: [`parse()`] decides. Same hash and decision as the general path (tested).
#[inline]
pub(super) fn fast_v4(seed: u64, peer: PeerId, pkt: &[u8], dir: Dir) -> Option<(u64, u8, u16)> {
    let p = pkt.get(..24)?;
    if p[0] != 0x45 || u16::from_be_bytes([p[6], p[7]]) & 0x1fff != 0 {
        return None;
    }
    let proto = p[9];
    match proto {
        UDP => {}
        TCP => {
            let f = *pkt.get(33)?;
            if f & TCP_SYN != 0 && f & TCP_ACK == 0 {
                return None;
            }
        }
        _ => return None,
    }
    let src = u32::from_be_bytes([p[12], p[13], p[14], p[15]]);
    let dst = u32::from_be_bytes([p[16], p[17], p[18], p[19]]);
    let sport = u16::from_be_bytes([p[20], p[21]]);
    let dport = u16::from_be_bytes([p[22], p[23]]);
    let (l, lport, r, rport) = match dir {
        Dir::In => (dst, dport, src, sport),
        Dir::Out => (src, sport, dst, dport),
    };
    let bits = |a: u32| u128::from(a) | (1 << 127);
    let ports = u64::from(lport) << 16 | u64::from(rport);
    let h = key_hash(seed, peer, proto, bits(l), bits(r), ports);
    Some((h, proto, lport))
}
