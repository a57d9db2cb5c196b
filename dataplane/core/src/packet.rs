//! Minimal inner IP header parsing (only what routing needs; no allocation).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const V4_HEADER: usize = 20;
const V6_HEADER: usize = 40;

fn v4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn v6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

/// Destination address of an outbound packet, if it looks like IPv4/IPv6.
pub fn destination(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= V4_HEADER => Some(IpAddr::V4(v4(&pkt[16..20]))),
        6 if pkt.len() >= V6_HEADER => Some(IpAddr::V6(v6(&pkt[24..40]))),
        _ => None,
    }
}

/// Validates a decrypted inner packet: returns its source address and its length
/// according to the IP header (the rest of `plain` is padding).
pub fn inbound(plain: &[u8]) -> Option<(IpAddr, usize)> {
    match plain.first()? >> 4 {
        4 => {
            if plain.len() < V4_HEADER {
                return None;
            }
            let ihl = usize::from(plain[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([plain[2], plain[3]]));
            if ihl < V4_HEADER || total < ihl || total > plain.len() {
                return None;
            }
            Some((IpAddr::V4(v4(&plain[12..16])), total))
        }
        6 => {
            if plain.len() < V6_HEADER {
                return None;
            }
            let total = V6_HEADER + usize::from(u16::from_be_bytes([plain[4], plain[5]]));
            if total > plain.len() {
                return None;
            }
            Some((IpAddr::V6(v6(&plain[8..24])), total))
        }
        _ => None,
    }
}

/// Test helpers: build minimal IPv4/IPv6 packets.
#[cfg(test)]
pub mod build {
    use std::net::IpAddr;

    /// An IP packet from `src` to `dst` carrying `payload` (header checksum left 0).
    pub fn ip(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = (20 + payload.len()) as u16;
                let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
                p[2..4].copy_from_slice(&total.to_be_bytes());
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                p.extend_from_slice(payload);
                p
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut p = vec![0x60, 0, 0, 0];
                p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                p.extend_from_slice(&[17, 64]);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                p.extend_from_slice(payload);
                p
            }
            _ => panic!("mixed families"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let s: IpAddr = "10.0.0.1".parse().unwrap();
        let d: IpAddr = "10.0.0.2".parse().unwrap();
        let mut p = build::ip(s, d, b"hello");
        assert_eq!(destination(&p), Some(d));
        p.extend_from_slice(&[0; 7]); // padding
        assert_eq!(inbound(&p), Some((s, 25)));
        p[3] = 200; // total length beyond buffer
        assert_eq!(inbound(&p), None);
        p[3] = 25;
        p[0] = 0x44; // ihl 16 bytes
        assert_eq!(inbound(&p), None);

        let s6: IpAddr = "fd00::1".parse().unwrap();
        let d6: IpAddr = "fd00::2".parse().unwrap();
        let mut p6 = build::ip(s6, d6, b"hi");
        assert_eq!(destination(&p6), Some(d6));
        assert_eq!(inbound(&p6), Some((s6, 42)));
        p6[5] = 3;
        assert_eq!(inbound(&p6), None);

        for n in 0..40 {
            let _ = inbound(&p6[..n]);
            let _ = destination(&p6[..n]);
        }
        assert_eq!(inbound(&[]), None);
        assert_eq!(destination(&[0x50; 60]), None);
    }
}
