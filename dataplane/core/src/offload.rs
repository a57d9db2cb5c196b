//! TUN offloads in userspace: the `virtio_net_hdr` that precedes every packet on an
//! `IFF_VNET_HDR` TUN, segmentation of TSO/USO super-packets (outbound, just before
//! encryption), completion of partial checksums, and TCP coalescing of inbound segments
//! into super-packets for the TUN write (userspace GRO).
//!
//! Everything here works on caller-owned buffers: no allocation after construction, no I/O.
//!
//! Outbound call order: [`VnetHdr::decode`] the first [`VNET_HDR_LEN`] bytes of a TUN read,
//! then [`Segmenter::new`] on the packet after it and [`Segmenter::next_into`] until `None`
//! (each call writes one wire-MTU IP packet with correct lengths and checksums).
//!
//! Inbound call order: [`Gro::push`] each decrypted inner packet in arrival order, then
//! [`Gro::flush`] at the end of the receive batch. Both hand finished TUN writes (vnet
//! header included) to the `emit` closure. Order is preserved: a packet that cannot join the
//! pending super-packet first flushes it.

use std::fmt;

/// Bytes of `struct virtio_net_hdr` (the TUN default header size).
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN` flag bit of `gso_type`.
pub const GSO_ECN: u8 = 0x80;
/// Largest IP packet a TUN write or read may carry.
pub const MAX_SUPER: usize = 65_535;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// `struct virtio_net_hdr` (little-endian fields, as TUN uses on little-endian hosts and with
/// `TUNSETVNETLE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` or 0.
    pub flags: u8,
    /// `GSO_*`, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers to replicate per segment (a hint; recomputed here).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (the L4 header).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header from the first 10 bytes (`None` if shorter).
    pub fn decode(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Writes the header into the first 10 bytes of `b` (which must be that long).
    pub fn encode(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// Why a TUN super-packet could not be segmented (counted as a bad inner packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// Headers truncated, inconsistent with the vnet header, or an unknown GSO type.
    Malformed,
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed offload packet")
    }
}

// ---------------------------------------------------------------- checksums

/// Ones-complement sum of `b` (big-endian 16-bit words, odd tail padded) added to `acc`,
/// not folded.
///
/// The sum is byte-order independent (RFC 1071 section 2(B)): `b` is summed as native
/// little-endian 32-bit words into four independent u64 accumulators (no carries to handle
/// below 2^32 words, and the loop vectorizes), folded to 16 bits and byte-swapped into
/// network order once at the end.
pub fn csum_add(acc: u64, b: &[u8]) -> u64 {
    let word = |c: &[u8]| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    let mut lanes = [0u64; 4];
    let mut chunks = b.chunks_exact(16);
    for c in &mut chunks {
        lanes[0] += word(&c[0..4]);
        lanes[1] += word(&c[4..8]);
        lanes[2] += word(&c[8..12]);
        lanes[3] += word(&c[12..16]);
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 16];
    tail[..rest.len()].copy_from_slice(rest);
    for (lane, c) in lanes.iter_mut().zip(tail.chunks_exact(4)) {
        *lane += word(c);
    }
    let le = lanes.iter().fold(0u64, |a, &l| {
        let (s, carry) = a.overflowing_add(l);
        s + u64::from(carry)
    });
    let be = csum_fold(le).swap_bytes();
    let (s, carry) = acc.overflowing_add(u64::from(be));
    s + u64::from(carry)
}

/// Folds a sum from [`csum_add`] to 16 bits (not complemented).
pub fn csum_fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// Pseudo-header sum for `proto` over an IPv4 or IPv6 header at the start of `ip`.
fn pseudo(ip: &[u8], v6: bool, proto: u8, l4_len: usize) -> u64 {
    let addrs = if v6 { &ip[8..40] } else { &ip[12..20] };
    csum_add(u64::from(proto) + l4_len as u64, addrs)
}

/// Recomputes the IPv4 header checksum of `ip[..ihl]`.
fn ipv4_fix_csum(ip: &mut [u8], ihl: usize) {
    ip[10] = 0;
    ip[11] = 0;
    let c = !csum_fold(csum_add(0, &ip[..ihl]));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Full L4 checksum of `pkt[l4..]` (field at `l4 + field` zeroed first) with the pseudo
/// header; UDP's 0 becomes 0xffff.
fn l4_fix_csum(pkt: &mut [u8], v6: bool, l4: usize, proto: u8) {
    let field = l4 + if proto == PROTO_TCP { 16 } else { 6 };
    pkt[field] = 0;
    pkt[field + 1] = 0;
    let l4_len = pkt.len() - l4;
    let mut c = !csum_fold(csum_add(pseudo(pkt, v6, proto, l4_len), &pkt[l4..]));
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Completes a partial checksum (`F_NEEDS_CSUM` on a non-GSO packet) in place: the field
/// already holds the pseudo-header sum; the checksum covers `pkt[start..]`.
pub fn complete_csum(pkt: &mut [u8], h: &VnetHdr) -> Result<(), OffloadError> {
    if h.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(h.csum_start);
    let field = start + usize::from(h.csum_offset);
    if field + 2 > pkt.len() {
        return Err(OffloadError::Malformed);
    }
    let c = !csum_fold(csum_add(0, &pkt[start..]));
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

// ---------------------------------------------------------------- segmentation

/// Header geometry of an IPv4/IPv6 + TCP/UDP packet.
#[derive(Debug, Clone, Copy)]
struct L4 {
    v6: bool,
    /// IP header length (L4 offset).
    ip_len: usize,
    proto: u8,
    /// IP + L4 header length.
    hdr_len: usize,
}

fn parse_l4(pkt: &[u8]) -> Option<L4> {
    let v = pkt.first()? >> 4;
    let (v6, ip_len, proto) = match v {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            // Fragments are never offloaded.
            let frag = u16::from_be_bytes([*pkt.get(6)?, *pkt.get(7)?]) & 0x3fff;
            if ihl < 20 || frag != 0 {
                return None;
            }
            (false, ihl, *pkt.get(9)?)
        }
        6 => (true, 40, *pkt.get(6)?),
        _ => return None,
    };
    let l4_hdr = match proto {
        PROTO_TCP => usize::from(pkt.get(ip_len + 12)? >> 4) * 4,
        PROTO_UDP => 8,
        _ => return None,
    };
    if (proto == PROTO_TCP && l4_hdr < 20) || pkt.len() < ip_len + l4_hdr {
        return None;
    }
    Some(L4 {
        v6,
        ip_len,
        proto,
        hdr_len: ip_len + l4_hdr,
    })
}

/// Splits one TUN super-packet (TSO or USO) into wire-MTU IP packets; a non-GSO packet
/// comes out once, its partial checksum completed.
#[derive(Debug)]
pub struct Segmenter<'a> {
    pkt: &'a [u8],
    l4: Option<L4>,
    gso_size: usize,
    /// Next payload offset into `pkt`.
    off: usize,
    /// Segment index.
    idx: u32,
    done: bool,
    hdr: VnetHdr,
}

impl<'a> Segmenter<'a> {
    /// Validates the headers of `pkt` (the bytes after the vnet header) against `h`.
    pub fn new(pkt: &'a [u8], h: VnetHdr) -> Result<Segmenter<'a>, OffloadError> {
        let gso = h.gso_type & !GSO_ECN;
        if gso == GSO_NONE {
            return Ok(Segmenter {
                pkt,
                l4: None,
                gso_size: 0,
                off: 0,
                idx: 0,
                done: false,
                hdr: h,
            });
        }
        let l4 = parse_l4(pkt).ok_or(OffloadError::Malformed)?;
        let want = match gso {
            GSO_TCPV4 => (false, PROTO_TCP),
            GSO_TCPV6 => (true, PROTO_TCP),
            GSO_UDP_L4 => (l4.v6, PROTO_UDP),
            _ => return Err(OffloadError::Malformed),
        };
        if (l4.v6, l4.proto) != want || h.gso_size == 0 {
            return Err(OffloadError::Malformed);
        }
        Ok(Segmenter {
            pkt,
            l4: Some(l4),
            gso_size: usize::from(h.gso_size),
            off: l4.hdr_len,
            idx: 0,
            done: false,
            hdr: h,
        })
    }

    /// Upper bound of the length of any segment (for buffer checks).
    pub fn max_segment_len(&self) -> usize {
        match self.l4 {
            None => self.pkt.len(),
            Some(l4) => l4.hdr_len + self.gso_size,
        }
    }

    /// True if this is a GSO super-packet (more than one segment possible).
    pub fn is_gso(&self) -> bool {
        self.l4.is_some()
    }

    /// Writes the next segment to `out[..n]` and returns `n`; `None` when done.
    /// `out` must hold [`Self::max_segment_len`] bytes (else `Malformed`).
    pub fn next_into(&mut self, out: &mut [u8]) -> Option<Result<usize, OffloadError>> {
        if self.done {
            return None;
        }
        let Some(l4) = self.l4 else {
            self.done = true;
            let n = self.pkt.len();
            let Some(dst) = out.get_mut(..n) else {
                return Some(Err(OffloadError::Malformed));
            };
            dst.copy_from_slice(self.pkt);
            return Some(complete_csum(dst, &self.hdr).map(|()| n));
        };
        let remaining = self.pkt.len() - self.off;
        let chunk = remaining.min(self.gso_size);
        let last = self.off + chunk >= self.pkt.len();
        let n = l4.hdr_len + chunk;
        let Some(seg) = out.get_mut(..n) else {
            self.done = true;
            return Some(Err(OffloadError::Malformed));
        };
        seg[..l4.hdr_len].copy_from_slice(&self.pkt[..l4.hdr_len]);
        seg[l4.hdr_len..].copy_from_slice(&self.pkt[self.off..self.off + chunk]);
        // IP header.
        if l4.v6 {
            let pl = (n - 40) as u16;
            seg[4..6].copy_from_slice(&pl.to_be_bytes());
        } else {
            seg[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            let id = u16::from_be_bytes([seg[4], seg[5]]).wrapping_add(self.idx as u16);
            seg[4..6].copy_from_slice(&id.to_be_bytes());
            ipv4_fix_csum(seg, l4.ip_len);
        }
        let t = l4.ip_len;
        if l4.proto == PROTO_TCP {
            let seq = u32::from_be_bytes([seg[t + 4], seg[t + 5], seg[t + 6], seg[t + 7]])
                .wrapping_add((self.off - l4.hdr_len) as u32);
            seg[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
            // FIN and PSH only on the last segment, CWR only on the first.
            if !last {
                seg[t + 13] &= !(0x01 | 0x08);
            }
            if self.idx > 0 {
                seg[t + 13] &= !0x80;
            }
        } else {
            seg[t + 4..t + 6].copy_from_slice(&((n - t) as u16).to_be_bytes());
        }
        l4_fix_csum(seg, l4.v6, t, l4.proto);
        self.off += chunk;
        self.idx += 1;
        self.done = last;
        Some(Ok(n))
    }
}

// ---------------------------------------------------------------- coalescing (GRO)

/// Identity of the TCP flow being coalesced plus what every joining segment must match.
#[derive(Debug, Clone, Copy)]
struct Flow {
    l4: L4,
    /// Sequence number the next segment must start at.
    next_seq: u32,
    /// Payload bytes of the first segment (every segment but the last must be this long).
    seg: usize,
    segs: usize,
    /// The last segment added was shorter than `seg` (or had PSH): nothing may follow.
    closed: bool,
}

/// Userspace GRO: coalesces consecutive in-order TCP segments of one flow into one
/// super-packet written with a `GSO_TCPV4/6` vnet header; everything else is written as is
/// (zero vnet header).
pub struct Gro {
    /// `[vnet hdr][IP hdr][TCP hdr][payload...]`.
    buf: Box<[u8]>,
    len: usize,
    flow: Option<Flow>,
    max_segs: usize,
    enabled: bool,
    /// Super-packets written that carried more than one segment.
    pub coalesced: u64,
}

impl fmt::Debug for Gro {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gro")
            .field("len", &self.len)
            .field("flow", &self.flow)
            .finish_non_exhaustive()
    }
}

/// TCP flags that end coalescing (anything but ACK and PSH).
const TCP_NO_MERGE: u8 = 0x01 | 0x02 | 0x04 | 0x20 | 0x40 | 0x80;

impl Gro {
    /// A coalescer; with `enabled == false` every packet is written on its own (for a TUN
    /// without TSO offload).
    pub fn new(enabled: bool) -> Gro {
        Gro {
            buf: vec![0u8; VNET_HDR_LEN + MAX_SUPER].into_boxed_slice(),
            len: 0,
            flow: None,
            max_segs: 64,
            enabled,
            coalesced: 0,
        }
    }

    /// Adds one decrypted inner IP packet (`pkt`, already trimmed to its IP length).
    /// `pkt` must be preceded in its buffer by at least [`VNET_HDR_LEN`] spare bytes
    /// (`buf[start - 10..start]`), used for a zero vnet header when it is written alone.
    /// Finished writes go to `emit` (vnet header included).
    pub fn push(&mut self, buf: &mut [u8], start: usize, len: usize, emit: &mut impl FnMut(&[u8])) {
        let pkt = &buf[start..start + len];
        if self.enabled {
            if self.try_append(pkt) {
                return;
            }
            self.flush(emit);
            if self.try_start(pkt) {
                return;
            }
        }
        let hdr_at = start - VNET_HDR_LEN;
        VnetHdr::default().encode(&mut buf[hdr_at..start]);
        emit(&buf[hdr_at..start + len]);
    }

    /// Writes the pending super-packet, if any.
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        let Some(f) = self.flow.take() else {
            return;
        };
        let total = self.len - VNET_HDR_LEN;
        let ip = &mut self.buf[VNET_HDR_LEN..self.len];
        let l4 = f.l4;
        if f.segs == 1 {
            // Unchanged single packet: checksums are the sender's.
            VnetHdr::default().encode(&mut self.buf[..VNET_HDR_LEN]);
        } else {
            self.coalesced += 1;
            if l4.v6 {
                ip[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            } else {
                ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                ipv4_fix_csum(ip, l4.ip_len);
            }
            let t = l4.ip_len;
            let p = csum_fold(pseudo(ip, l4.v6, PROTO_TCP, total - t));
            ip[t + 16..t + 18].copy_from_slice(&p.to_be_bytes());
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if l4.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                hdr_len: l4.hdr_len as u16,
                gso_size: f.seg as u16,
                csum_start: t as u16,
                csum_offset: 16,
            }
            .encode(&mut self.buf[..VNET_HDR_LEN]);
        }
        emit(&self.buf[..self.len]);
        self.len = 0;
    }

    fn try_start(&mut self, pkt: &[u8]) -> bool {
        let Some(l4) = parse_l4(pkt) else {
            return false;
        };
        let t = l4.ip_len;
        if l4.proto != PROTO_TCP || pkt[t + 13] & TCP_NO_MERGE != 0 {
            return false;
        }
        // IPv4 options make merged headers ambiguous; IPv6 must have no extension headers
        // (parse_l4 already required next header = TCP).
        if !l4.v6 && l4.ip_len != 20 {
            return false;
        }
        let payload = pkt.len() - l4.hdr_len;
        if payload == 0 {
            return false;
        }
        let seq = u32::from_be_bytes([pkt[t + 4], pkt[t + 5], pkt[t + 6], pkt[t + 7]]);
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()].copy_from_slice(pkt);
        self.len = VNET_HDR_LEN + pkt.len();
        self.flow = Some(Flow {
            l4,
            next_seq: seq.wrapping_add(payload as u32),
            seg: payload,
            segs: 1,
            closed: pkt[t + 13] & 0x08 != 0,
        });
        true
    }

    fn try_append(&mut self, pkt: &[u8]) -> bool {
        let Some(f) = self.flow.as_mut() else {
            return false;
        };
        let l4 = f.l4;
        let h = l4.hdr_len;
        let t = l4.ip_len;
        if f.closed || f.segs >= self.max_segs || pkt.len() <= h {
            return false;
        }
        let payload = pkt.len() - h;
        if payload > f.seg || self.len + payload > self.buf.len() {
            return false;
        }
        let head = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + h];
        // Same version, TOS/traffic class, addresses, TTL/hop limit, protocol, ports, ACK,
        // window, header lengths and options; only length, id, checksums, seq and PSH differ.
        let same = if l4.v6 {
            pkt[0..4] == head[0..4] && pkt[6..40] == head[6..40]
        } else {
            pkt[0] == head[0]
                && pkt[1] == head[1]
                && pkt[6..10] == head[6..10]
                && pkt[12..20] == head[12..20]
        };
        if !same
            || pkt[t..t + 4] != head[t..t + 4]
            || pkt[t + 8..t + 12] != head[t + 8..t + 12]
            || pkt[t + 12] != head[t + 12]
            || pkt[t + 13] & !0x08 != head[t + 13] & !0x08
            || pkt[t + 14..t + 16] != head[t + 14..t + 16]
            || pkt[t + 20..h] != head[t + 20..h]
        {
            return false;
        }
        let seq = u32::from_be_bytes([pkt[t + 4], pkt[t + 5], pkt[t + 6], pkt[t + 7]]);
        if seq != f.next_seq {
            return false;
        }
        self.buf[self.len..self.len + payload].copy_from_slice(&pkt[h..]);
        self.len += payload;
        f.next_seq = seq.wrapping_add(payload as u32);
        f.segs += 1;
        let psh = pkt[t + 13] & 0x08 != 0;
        if psh {
            self.buf[VNET_HDR_LEN + t + 13] |= 0x08;
        }
        f.closed = psh || payload < f.seg;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 (or IPv6) + TCP packet with timestamps-sized options and `payload`.
    fn tcp_pkt(v6: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let ip_len = if v6 { 40 } else { 20 };
        let tcp_len = 32;
        let n = ip_len + tcp_len + payload.len();
        let mut p = vec![0u8; n];
        if v6 {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&((n - 40) as u16).to_be_bytes());
            p[6] = PROTO_TCP;
            p[7] = 64;
            p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            p[6] = 0x40; // DF
            p[8] = 64;
            p[9] = PROTO_TCP;
            p[12..16].copy_from_slice(&[10, 99, 0, 1]);
            p[16..20].copy_from_slice(&[10, 99, 0, 2]);
            ipv4_fix_csum(&mut p, 20);
        }
        let t = ip_len;
        p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        p[t + 8..t + 12].copy_from_slice(&7u32.to_be_bytes());
        p[t + 12] = 8 << 4;
        p[t + 13] = flags;
        p[t + 14..t + 16].copy_from_slice(&512u16.to_be_bytes());
        p[t + 20..t + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 8]);
        p[t + 32..].copy_from_slice(payload);
        l4_fix_csum(&mut p, v6, t, PROTO_TCP);
        p
    }

    fn csum_ok(pkt: &[u8]) -> bool {
        let l4 = parse_l4(pkt).expect("tcp/udp packet");
        if !l4.v6 && csum_fold(csum_add(0, &pkt[..l4.ip_len])) != 0xffff {
            return false;
        }
        let len = pkt.len() - l4.ip_len;
        csum_fold(csum_add(
            pseudo(pkt, l4.v6, l4.proto, len),
            &pkt[l4.ip_len..],
        )) == 0xffff
    }

    fn seq_of(pkt: &[u8]) -> u32 {
        let t = parse_l4(pkt).expect("tcp").ip_len;
        u32::from_be_bytes(pkt[t + 4..t + 8].try_into().expect("4 bytes"))
    }

    fn payload_of(pkt: &[u8]) -> &[u8] {
        &pkt[parse_l4(pkt).expect("tcp").hdr_len..]
    }

    fn segment_all(pkt: &[u8], h: VnetHdr) -> Vec<Vec<u8>> {
        let mut s = Segmenter::new(pkt, h).expect("valid super-packet");
        let mut out = vec![0u8; s.max_segment_len()];
        let mut segs = Vec::new();
        while let Some(r) = s.next_into(&mut out) {
            let n = r.expect("segment fits");
            segs.push(out[..n].to_vec());
        }
        segs
    }

    /// Plain RFC 1071 loop over big-endian 16-bit words, for comparison.
    fn csum_reference(b: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for c in b.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn checksum_matches_the_reference_loop() {
        // Every length 0..=200 and some large ones, bytes from a simple generator, and a
        // non-zero starting accumulator split across two calls (as header + payload).
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let lens = (0..=200).chain([1419, 1420, 1448, 9000, 65_535, 70_000]);
        for len in lens {
            let b = &data[..len];
            assert_eq!(csum_fold(csum_add(0, b)), csum_reference(b), "len {len}");
            let split = (len / 2) & !1;
            let two = csum_add(csum_add(0x1234, &b[..split]), &b[split..]);
            let mut want = u64::from(csum_reference(b)) + 0x1234;
            while want > 0xffff {
                want = (want & 0xffff) + (want >> 16);
            }
            assert_eq!(csum_fold(two), want as u16, "split len {len}");
        }
        // All-ones data: the sum of many 0xffff words stays 0xffff.
        assert_eq!(csum_fold(csum_add(0, &[0xff; 4096])), 0xffff);
    }

    #[test]
    fn checksum_known_answer() {
        // RFC 1071 example words 0001 f203 f4f5 f6f7 -> sum ddf2.
        assert_eq!(
            csum_fold(csum_add(0, &[0, 1, 0xf2, 3, 0xf4, 0xf5, 0xf6, 0xf7])),
            0xddf2
        );
        // Odd length: trailing byte is the high half of a word.
        assert_eq!(csum_fold(csum_add(0, &[0xab])), 0xab00);
        // A well-known IPv4 header (checksum b861).
        let h = [
            0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8,
            0, 0xc7,
        ];
        let mut z = h;
        ipv4_fix_csum(&mut z, 20);
        assert_eq!(z, h);
    }

    #[test]
    fn tso_segments_have_lengths_seqs_flags_and_checksums() {
        for v6 in [false, true] {
            let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
            let mut sup = tcp_pkt(v6, 1000, 0x18 | 0x01 | 0x80, &data); // ACK PSH FIN CWR
                                                                        // The kernel leaves a partial checksum; ours recomputes from scratch.
            let ip = if v6 { 40 } else { 20 };
            sup[ip + 16] = 0x55;
            let h = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                hdr_len: (ip + 32) as u16,
                gso_size: 1368,
                csum_start: ip as u16,
                csum_offset: 16,
            };
            let segs = segment_all(&sup, h);
            assert_eq!(segs.len(), 4, "5000 = 3 x 1368 + 896");
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                assert!(csum_ok(s), "segment {i} checksums (v6 {v6})");
                assert_eq!(seq_of(s), 1000 + 1368 * i as u32);
                let last = i == segs.len() - 1;
                let fl = s[ip + 13];
                assert_eq!(fl & 0x01 != 0, last, "FIN only last");
                assert_eq!(fl & 0x08 != 0, last, "PSH only last");
                assert_eq!(fl & 0x80 != 0, i == 0, "CWR only first");
                assert_eq!(s.len(), ip + 32 + if last { 896 } else { 1368 });
                if v6 {
                    assert_eq!(usize::from(u16::from_be_bytes([s[4], s[5]])), s.len() - 40);
                } else {
                    assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
                    assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + i as u16);
                }
                joined.extend_from_slice(payload_of(s));
            }
            assert_eq!(joined, data);
        }
    }

    #[test]
    fn uso_segments_get_own_udp_headers() {
        let data: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let mut p = vec![0u8; 28 + data.len()];
        p[0] = 0x45;
        let plen = p.len() as u16;
        p[2..4].copy_from_slice(&plen.to_be_bytes());
        p[8] = 64;
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&[10, 99, 0, 1]);
        p[16..20].copy_from_slice(&[10, 99, 0, 2]);
        p[20..22].copy_from_slice(&1111u16.to_be_bytes());
        p[22..24].copy_from_slice(&2222u16.to_be_bytes());
        p[28..].copy_from_slice(&data);
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 28,
            gso_size: 1000,
            csum_start: 20,
            csum_offset: 6,
        };
        let segs = segment_all(&p, h);
        assert_eq!(
            segs.iter().map(Vec::len).collect::<Vec<_>>(),
            [1028, 1028, 528]
        );
        for s in &segs {
            assert!(csum_ok(s));
            assert_eq!(
                usize::from(u16::from_be_bytes([s[24], s[25]])),
                s.len() - 20
            );
        }
        let joined: Vec<u8> = segs.iter().flat_map(|s| s[28..].to_vec()).collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn partial_checksum_is_completed_and_bad_headers_refused() {
        let good = tcp_pkt(false, 1, 0x10, b"hello world");
        let mut p = good.clone();
        // Partial: pseudo-header sum only, as the kernel leaves it.
        let ps = csum_fold(pseudo(&p, false, PROTO_TCP, p.len() - 20));
        p[36..38].copy_from_slice(&ps.to_be_bytes());
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let segs = segment_all(&p, h);
        assert_eq!(segs, vec![good.clone()]);
        // GSO type that does not match the packet, zero gso_size, truncated header.
        let bad = VnetHdr {
            gso_type: GSO_TCPV6,
            gso_size: 100,
            ..VnetHdr::default()
        };
        assert!(Segmenter::new(&good, bad).is_err());
        let zero = VnetHdr {
            gso_type: GSO_TCPV4,
            ..VnetHdr::default()
        };
        assert!(Segmenter::new(&good, zero).is_err());
        let tso = VnetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 100,
            ..VnetHdr::default()
        };
        assert!(Segmenter::new(&good[..30], tso).is_err());
        let mut enc = [0u8; 10];
        h.encode(&mut enc);
        assert_eq!(VnetHdr::decode(&enc), Some(h));
        assert_eq!(VnetHdr::decode(&enc[..9]), None);
    }

    /// Runs `pkts` through a Gro the way the glue does (16 bytes of room in front).
    fn gro_all(g: &mut Gro, pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for p in pkts {
            let mut buf = vec![0u8; 16 + p.len()];
            buf[16..].copy_from_slice(p);
            g.push(&mut buf, 16, p.len(), &mut |w: &[u8]| out.push(w.to_vec()));
        }
        g.flush(&mut |w: &[u8]| out.push(w.to_vec()));
        out
    }

    /// Expands TUN writes back into plain IP packets, as the kernel would.
    fn expand(writes: &[Vec<u8>]) -> Vec<Vec<u8>> {
        writes
            .iter()
            .flat_map(|w| {
                let h = VnetHdr::decode(w).expect("vnet header");
                segment_all(&w[VNET_HDR_LEN..], h)
            })
            .collect()
    }

    #[test]
    fn gro_coalesces_one_flow_and_round_trips() {
        for v6 in [false, true] {
            let data: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
            let ip = if v6 { 40 } else { 20 };
            let sup = tcp_pkt(v6, 77, 0x18, &data);
            let h = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                hdr_len: (ip + 32) as u16,
                gso_size: 1368,
                csum_start: ip as u16,
                csum_offset: 16,
            };
            let segs = segment_all(&sup, h);
            let mut g = Gro::new(true);
            let writes = gro_all(&mut g, &segs);
            assert_eq!(writes.len(), 1, "one super-packet (v6 {v6})");
            let wh = VnetHdr::decode(&writes[0]).expect("hdr");
            assert_eq!(wh.gso_type, h.gso_type);
            assert_eq!(wh.gso_size, 1368);
            assert_eq!(wh.flags, F_NEEDS_CSUM);
            assert_eq!(writes[0].len(), VNET_HDR_LEN + sup.len());
            // Re-segmenting gives back exactly the wire segments (checksums included),
            // except IPv4 ids, which the sender numbered the same way.
            assert_eq!(expand(&writes), segs);
        }
    }

    #[test]
    fn gro_keeps_order_and_never_merges_across_gaps() {
        let seg = |i: u32, flags: u8| tcp_pkt(false, 1 + 100 * i, flags, &[i as u8; 100]);
        // 0 1 2 | 4 (gap: 3 is late) | 3 | 5 6 | SYN-less RST ends | 7 (different flow? no:
        // after RST) ...
        let mut other = seg(9, 0x10);
        other[20..22].copy_from_slice(&40001u16.to_be_bytes()); // another flow
        l4_fix_csum(&mut other, false, 20, PROTO_TCP);
        let input = vec![
            seg(0, 0x10),
            seg(1, 0x10),
            seg(2, 0x10),
            seg(4, 0x10),
            seg(3, 0x10),
            other.clone(),
            seg(5, 0x10),
            seg(6, 0x18), // PSH closes
            seg(7, 0x10),
            seg(8, 0x14), // RST never merges
        ];
        let mut g = Gro::new(true);
        let writes = gro_all(&mut g, &input);
        let out = expand(&writes);
        // Exactly the input, in the input order.
        assert_eq!(out.len(), input.len());
        for (a, b) in out.iter().zip(&input) {
            assert_eq!(seq_of(a), seq_of(b));
            assert_eq!(payload_of(a), payload_of(b));
            assert!(csum_ok(a));
        }
        // 0-2 merged, 4, 3, other, 5-6 merged, 7, 8.
        assert_eq!(writes.len(), 7);
        // Disabled: every packet alone, zero vnet header, bytes unchanged.
        let mut off = Gro::new(false);
        let w = gro_all(&mut off, &input);
        assert_eq!(w.len(), input.len());
        for (a, b) in w.iter().zip(&input) {
            assert_eq!(&a[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
            assert_eq!(&a[VNET_HDR_LEN..], &b[..]);
        }
    }
}
