//! The stateful packet filter (issue 16), sans-IO.
//!
//! Where: inbound after decryption and cryptokey routing (the source peer is authenticated),
//! outbound for packets read from the TUN (locally originated), after routing to a peer.
//! What: [`tm_wire::filter::FilterSpec`] (classes of sorted disjoint port ranges per protocol,
//! peer -> class, reachable peers, a generation) plus one [`FlowTable`].
//!
//! Per packet (only with a filter; without one, nothing runs: allow all):
//! 1. Parse the inner packet into a flow key oriented local/remote (inbound: local = dst),
//!    the TCP flags, or an ICMP error's quoted packet. Non-first fragments pass (they carry
//!    no ports and cannot be reassembled without the filtered first fragment).
//! 2. ICMP errors (unreachable, fragmentation needed, packet too big, time exceeded,
//!    parameter problem) that quote a flow this node sent pass: the quoted flow is in the
//!    table, or its destination routes to the sending peer and that peer is reachable.
//! 3. A flow in the table under the current generation passes (a revoked one drops as
//!    `filter_revoked`). Under an older generation it is re-evaluated: a flow the peer opened
//!    by the class's rules, one this node opened by reachability; if no longer allowed the
//!    entry is marked revoked (so the flow stays cut, in both directions, until idle) and the
//!    packet drops as `filter_revoked`.
//! 4. A new flow: inbound, the peer's class decides for (protocol, local port) (ICMP echo and
//!    other portless protocols: port 0); allowed -> admitted. Outbound: the peer must be
//!    reachable; UDP, ICMP and other protocols open a flow with any packet, TCP only with a
//!    SYN without ACK (other TCP packets to a reachable peer pass without opening one, so a
//!    revoked or evicted flow the peer opened is not re-opened by this node's replies).
//!
//! The flow table is shared by all workers (a flow's directions can land on different
//! workers: outbound by TUN queue, inbound by the peer's socket), lock-free: fixed
//! buckets of [`WAYS`] entries (one cache line), each entry two atomics (a keyed 64-bit hash
//! of the flow and a packed value: last seen (s), generation (24 bits), flags). Bounded:
//! a full bucket evicts its least recently seen entry (counted). Idle timeouts: TCP 12 min,
//! UDP 3 min, other 10 min. Races between workers can at worst lose an entry (the flow is
//! then re-evaluated), never pair one flow's key with another's value (the key is re-read
//! after the value).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

use tm_wire::filter::{FilterSpec, Verdict};
use tm_wire::ipc::{DropReason, PeerId};

/// Entries per bucket (4 x 16 bytes = one cache line).
pub const WAYS: usize = 4;
/// Default flow-table size (entries, all workers together): 1 MiB.
pub const DEFAULT_FLOWS: usize = 65_536;

/// Idle timeouts in seconds: TCP, UDP, other (Nebula's).
pub const TCP_IDLE_S: u32 = 12 * 60;
pub const UDP_IDLE_S: u32 = 3 * 60;
pub const OTHER_IDLE_S: u32 = 10 * 60;

const F_LOCAL: u64 = 1;
const F_REVOKED: u64 = 2;
const KIND_SHIFT: u32 = 2;
const GEN_MASK: u64 = 0xff_ffff;

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMP6: u8 = 58;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[derive(Default)]
struct Entry {
    key: AtomicU64,
    val: AtomicU64,
}

#[repr(align(64))]
#[derive(Default)]
struct Bucket([Entry; WAYS]);

/// The bounded, shared flow table.
pub struct FlowTable {
    buckets: Box<[Bucket]>,
    evictions: AtomicU64,
}

fn kind_of(proto: u8) -> u64 {
    match proto {
        TCP => 1,
        UDP => 2,
        _ => 0,
    }
}

fn idle_of(val: u64) -> u32 {
    match (val >> KIND_SHIFT) & 3 {
        1 => TCP_IDLE_S,
        2 => UDP_IDLE_S,
        _ => OTHER_IDLE_S,
    }
}

fn seen(val: u64) -> u32 {
    (val >> 32) as u32
}

fn pack(now_s: u32, generation: u64, flags: u64) -> u64 {
    (u64::from(now_s) << 32) | ((generation & GEN_MASK) << 8) | flags
}

fn live(val: u64, now_s: u32) -> bool {
    now_s.saturating_sub(seen(val)) <= idle_of(val)
}

impl FlowTable {
    /// A table of at least `entries` entries (rounded up to a power of two buckets).
    pub fn new(entries: usize) -> FlowTable {
        let n = entries.div_ceil(WAYS).max(1).next_power_of_two();
        FlowTable {
            buckets: (0..n).map(|_| Bucket::default()).collect(),
            evictions: AtomicU64::new(0),
        }
    }

    /// Capacity in entries.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Live entries were evicted this many times to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Live entries at `now_s` (walks the table: for reports and tests, not per packet).
    pub fn live(&self, now_s: u32) -> usize {
        self.buckets
            .iter()
            .flat_map(|b| b.0.iter())
            .filter(|e| {
                e.key.load(Ordering::Relaxed) != 0 && live(e.val.load(Ordering::Relaxed), now_s)
            })
            .count()
    }

    fn bucket(&self, h: u64) -> &Bucket {
        &self.buckets[(h >> 40) as usize & (self.buckets.len() - 1)]
    }

    /// The live entry of `h` and its value.
    fn get(&self, h: u64, now_s: u32) -> Option<(&Entry, u64)> {
        for e in &self.bucket(h).0 {
            if e.key.load(Ordering::Acquire) != h {
                continue;
            }
            let v = e.val.load(Ordering::Acquire);
            if e.key.load(Ordering::Acquire) != h {
                continue;
            }
            return live(v, now_s).then_some((e, v));
        }
        None
    }

    /// Inserts or replaces the entry of `h`.
    fn put(&self, h: u64, val: u64, now_s: u32) {
        let b = self.bucket(h);
        let mut victim = &b.0[0];
        let mut oldest = u32::MAX;
        for e in &b.0 {
            let k = e.key.load(Ordering::Acquire);
            if k == h {
                e.val.store(val, Ordering::Release);
                return;
            }
            let v = e.val.load(Ordering::Relaxed);
            let age = if k == 0 || !live(v, now_s) {
                // Free: take it.
                0
            } else {
                seen(v)
            };
            if age < oldest {
                oldest = age;
                victim = e;
            }
        }
        if oldest != 0 {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        victim.key.store(0, Ordering::Release);
        victim.val.store(val, Ordering::Release);
        victim.key.store(h, Ordering::Release);
    }
}

/// An installed filter: the compiled rules and the flow table (shared by every generation).
pub struct ActiveFilter {
    pub spec: FilterSpec,
    pub flows: std::sync::Arc<FlowTable>,
}

/// Direction of a packet relative to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From a peer, decrypted.
    In,
    /// From the TUN, to a peer.
    Out,
}

/// A flow oriented local/remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    proto: u8,
    local: IpAddr,
    lport: u16,
    remote: IpAddr,
    rport: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parsed {
    /// A packet of a flow; `syn` = TCP SYN without ACK; `port` = the port the rules see.
    Flow { flow: Flow, syn: bool, port: u16 },
    /// An ICMP error quoting a packet this node sent (oriented as that packet).
    IcmpError(Flow),
    /// A non-first fragment.
    Fragment,
}

fn v4(b: &[u8]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

fn v6(b: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

/// (proto, src, dst, L4 offset, first fragment) of an IP packet, extension headers skipped.
fn ip_header(p: &[u8]) -> Option<(u8, IpAddr, IpAddr, usize, bool)> {
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

fn has_ports(proto: u8) -> bool {
    matches!(proto, TCP | UDP | SCTP)
}

fn is_icmp_error(proto: u8, ty: u8) -> bool {
    match proto {
        ICMP => matches!(ty, 3 | 11 | 12),
        ICMP6 => matches!(ty, 1..=4),
        _ => false,
    }
}

fn is_echo(proto: u8, ty: u8) -> bool {
    match proto {
        ICMP => matches!(ty, 0 | 8),
        ICMP6 => matches!(ty, 128 | 129),
        _ => false,
    }
}

/// (src port, dst port) as the flow key sees them: ports, the echo id, or zeros.
fn ports(proto: u8, l4: &[u8]) -> Option<(u16, u16)> {
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

fn parse(pkt: &[u8], dir: Dir) -> Option<Parsed> {
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
    let port = if has_ports(proto) { lport } else { 0 };
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

fn mix(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31)
}

fn addr_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)) | (1 << 127),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Keyed hash of (peer, flow); never 0.
fn flow_hash(seed: u64, peer: PeerId, f: &Flow) -> u64 {
    let (l, r) = (addr_bits(f.local), addr_bits(f.remote));
    let mut h = mix(
        seed ^ 0x5bd1_e995,
        u64::from(peer) << 8 | u64::from(f.proto),
    );
    h = mix(h, l as u64);
    h = mix(h, (l >> 64) as u64);
    h = mix(h, r as u64);
    h = mix(h, (r >> 64) as u64);
    h = mix(h, u64::from(f.lport) << 16 | u64::from(f.rport));
    // fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h | 1
}

fn verdict_drop(v: Verdict) -> DropReason {
    match v {
        Verdict::Deny => DropReason::FilterDenied,
        _ => DropReason::FilterNoRule,
    }
}

impl ActiveFilter {
    /// Decides one packet from/to `peer` at `now_s` (seconds, from [`crate::Shared`]'s
    /// clock). `routes_to_peer(addr)`: whether `addr` is in `peer`'s allowed IPs.
    pub fn check(
        &self,
        peer: PeerId,
        pkt: &[u8],
        dir: Dir,
        now_s: u32,
        routes_to_peer: impl Fn(IpAddr) -> bool,
    ) -> Result<(), DropReason> {
        let spec = &self.spec;
        let parsed = parse(pkt, dir).ok_or(DropReason::BadInnerPacket)?;
        let (flow, syn, port) = match parsed {
            Parsed::Fragment => return Ok(()),
            Parsed::IcmpError(q) => {
                if dir == Dir::Out {
                    // Our own error about the peer's packet: a reply.
                    return spec
                        .reachable(peer)
                        .then_some(())
                        .ok_or(DropReason::FilterNoRule);
                }
                let h = flow_hash(spec.seed, peer, &q);
                if self.flows.get(h, now_s).is_some()
                    || (routes_to_peer(q.remote) && spec.reachable(peer))
                {
                    return Ok(());
                }
                return Err(DropReason::FilterNoRule);
            }
            Parsed::Flow { flow, syn, port } => (flow, syn, port),
        };
        let h = flow_hash(spec.seed, peer, &flow);
        let gen = spec.generation & GEN_MASK;
        let kind = kind_of(flow.proto) << KIND_SHIFT;
        if let Some((e, v)) = self.flows.get(h, now_s) {
            if (v >> 8) & GEN_MASK == gen {
                if seen(v) != now_s {
                    e.val.store(
                        (v & 0xffff_ffff) | (u64::from(now_s) << 32),
                        Ordering::Relaxed,
                    );
                }
                return if v & F_REVOKED != 0 {
                    Err(DropReason::FilterRevoked)
                } else {
                    Ok(())
                };
            }
            // Admitted under an older generation: re-evaluate.
            let local = v & F_LOCAL != 0;
            let ok = if local {
                spec.reachable(peer)
            } else {
                spec.class_of(peer)
                    .is_some_and(|c| c.verdict(flow.proto, port) == Verdict::Allow)
            };
            let flags = (v & (F_LOCAL | (3 << KIND_SHIFT))) | if ok { 0 } else { F_REVOKED };
            self.flows.put(h, pack(now_s, gen, flags), now_s);
            return if ok {
                Ok(())
            } else {
                Err(DropReason::FilterRevoked)
            };
        }
        match dir {
            Dir::Out => {
                if !spec.reachable(peer) {
                    return Err(DropReason::FilterNoRule);
                }
                if flow.proto != TCP || syn {
                    self.flows.put(h, pack(now_s, gen, kind | F_LOCAL), now_s);
                }
                Ok(())
            }
            Dir::In => {
                let v = spec
                    .class_of(peer)
                    .map_or(Verdict::NoRule, |c| c.verdict(flow.proto, port));
                if v != Verdict::Allow {
                    return Err(verdict_drop(v));
                }
                self.flows.put(h, pack(now_s, gen, kind), now_s);
                Ok(())
            }
        }
    }
}

/// A filter drop as `filter log` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropSample {
    pub reason: DropReason,
    pub dir: Dir,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// Records a filter drop of `peer` for `filter log`: at most one per peer per second (an
/// atomic compare-exchange; the allocation happens only for the sample taken).
pub(crate) fn sample(
    shared: &crate::shared::PeerShared,
    now_s: u32,
    reason: DropReason,
    pkt: &[u8],
    dir: Dir,
) {
    if !matches!(
        reason,
        DropReason::FilterNoRule | DropReason::FilterDenied | DropReason::FilterRevoked
    ) {
        return;
    }
    let last = shared.drop_sampled_s.load(Ordering::Relaxed);
    if last == now_s
        || shared
            .drop_sampled_s
            .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let Some((proto, src, dst, at, first)) = ip_header(pkt) else {
        return;
    };
    let (sport, dport) = if first {
        pkt.get(at..)
            .and_then(|l4| ports(proto, l4))
            .unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    shared
        .drop_sample
        .store(Some(std::sync::Arc::new(DropSample {
            reason,
            dir,
            proto,
            src,
            dst,
            sport,
            dport,
        })));
}

/// Test helpers: TCP/UDP/ICMP packets.
#[cfg(test)]
pub mod build {
    use std::net::IpAddr;

    fn ip(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = crate::packet::build::ip(src, dst, l4);
        match src {
            IpAddr::V4(_) => p[9] = proto,
            IpAddr::V6(_) => p[6] = proto,
        }
        p
    }

    /// A TCP segment with `flags` (0x02 SYN, 0x10 ACK) and a payload.
    pub fn tcp(
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        flags: u8,
        data: &[u8],
    ) -> Vec<u8> {
        let mut l4 = vec![0u8; 20];
        l4[..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4[12] = 5 << 4;
        l4[13] = flags;
        l4.extend_from_slice(data);
        ip(src, dst, 6, &l4)
    }

    /// A UDP datagram.
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, data: &[u8]) -> Vec<u8> {
        let mut l4 = vec![0u8; 8];
        l4[..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        l4.extend_from_slice(data);
        ip(src, dst, 17, &l4)
    }

    /// An ICMP (v4) or ICMPv6 message of `ty`/`code`; `rest` follows the 4-byte header
    /// (echo: id, sequence; errors: 4 unused/MTU bytes then the quoted packet).
    pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8, code: u8, rest: &[u8]) -> Vec<u8> {
        let mut l4 = vec![ty, code, 0, 0];
        l4.extend_from_slice(rest);
        let proto = if src.is_ipv4() { 1 } else { 58 };
        ip(src, dst, proto, &l4)
    }

    /// An echo request/reply with `id`.
    pub fn echo(src: IpAddr, dst: IpAddr, request: bool, id: u16) -> Vec<u8> {
        let ty = match (src.is_ipv4(), request) {
            (true, true) => 8,
            (true, false) => 0,
            (false, true) => 128,
            (false, false) => 129,
        };
        let mut rest = id.to_be_bytes().to_vec();
        rest.extend_from_slice(&[0, 1, b'p', b'i', b'n', b'g']);
        icmp(src, dst, ty, 0, &rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_flows_icmp_errors_and_fragments() {
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let syn = build::tcp(a, 40000, b, 22, 0x02, b"");
        assert_eq!(
            parse(&syn, Dir::Out),
            Some(Parsed::Flow {
                flow: Flow {
                    proto: 6,
                    local: a,
                    lport: 40000,
                    remote: b,
                    rport: 22
                },
                syn: true,
                port: 40000
            })
        );
        let Some(Parsed::Flow { syn, port, .. }) =
            parse(&build::tcp(b, 22, a, 40000, 0x12, b""), Dir::In)
        else {
            panic!()
        };
        assert!(!syn, "SYN-ACK is not a SYN");
        assert_eq!(port, 40000);
        // Fragmentation needed quoting our UDP datagram.
        let quoted = build::udp(a, 5000, b, 53, b"q");
        let mut rest = vec![0, 0, 0x05, 0x00];
        rest.extend_from_slice(&quoted[..28]);
        let e = build::icmp(b, a, 3, 4, &rest);
        assert_eq!(
            parse(&e, Dir::In),
            Some(Parsed::IcmpError(Flow {
                proto: 17,
                local: a,
                lport: 5000,
                remote: b,
                rport: 53
            }))
        );
        let mut frag = build::udp(a, 1, b, 2, b"x");
        frag[7] = 10; // fragment offset 80 bytes
        assert_eq!(parse(&frag, Dir::In), Some(Parsed::Fragment));
        // Echo: the id is the port of the flow; the rules see port 0.
        let Some(Parsed::Flow { flow, port, .. }) = parse(
            &build::echo(ip("fd00::1"), ip("fd00::2"), true, 77),
            Dir::Out,
        ) else {
            panic!()
        };
        assert_eq!((flow.proto, flow.lport, flow.rport, port), (58, 77, 77, 0));
        // Truncated transport headers are refused.
        let t = build::tcp(a, 1, b, 2, 0x02, b"");
        assert_eq!(parse(&t[..30], Dir::In), None);
        for n in 0..t.len() {
            let _ = parse(&t[..n], Dir::In);
        }
    }

    #[test]
    fn table_is_bounded_evicts_the_oldest_and_times_out() {
        let t = FlowTable::new(8); // 2 buckets x 4
        assert_eq!(t.capacity(), 8);
        // Keys landing in bucket 0 (bits 40.. select the bucket).
        let k = |i: u64| (i << 41) | 1;
        for i in 1..=4 {
            t.put(k(i), pack(10 + i as u32, 1, 1 << KIND_SHIFT), 10 + i as u32);
        }
        assert_eq!(t.evictions(), 0);
        t.put(k(9), pack(20, 1, 1 << KIND_SHIFT), 20);
        assert_eq!(t.evictions(), 1);
        assert!(t.get(k(1), 20).is_none(), "the least recently seen went");
        for i in [2, 3, 4, 9] {
            assert!(t.get(k(i), 20).is_some(), "{i}");
        }
        // TCP idles out after 12 min, UDP after 3.
        assert!(t.get(k(9), 20 + TCP_IDLE_S).is_some());
        assert!(t.get(k(9), 21 + TCP_IDLE_S).is_none());
        t.put(k(5), pack(20, 1, 2 << KIND_SHIFT), 20);
        assert_eq!(t.evictions(), 2);
        assert!(t.get(k(5), 20 + UDP_IDLE_S).is_some());
        assert!(t.get(k(5), 21 + UDP_IDLE_S).is_none());
        // Expired entries are reused without counting an eviction.
        t.put(k(6), pack(2000, 1, 0), 2000);
        assert_eq!(t.evictions(), 2);
        assert_eq!(t.live(2000), 1);
    }

    #[test]
    fn flow_table_memory() {
        // Recorded in docs/benchmarks.md: 16 bytes per entry; at most 75% of entries used
        // before evictions start to bite -> 10k flows need ~213 KiB.
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
        let t = FlowTable::new(DEFAULT_FLOWS);
        assert_eq!(t.capacity() * 16, 1 << 20);
    }
}
