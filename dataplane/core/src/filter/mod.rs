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
//! 4. A new flow: inbound, the peer's class decides for (protocol, local port) (ICMP: the
//!    message type, so an echo request follows the destination's rules as the policy compiles
//!    them; other portless protocols: port 0); allowed -> admitted. Outbound: the peer must be
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

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use tm_wire::filter::{FilterSpec, Verdict};
use tm_wire::ipc::{DropReason, PeerId};

/// Entries per bucket (4 x 16 bytes = one cache line).
pub const WAYS: usize = 4;
/// Smallest default flow-table size (entries, all workers together): 1 MiB.
pub const DEFAULT_FLOWS: usize = 65_536;
/// Default flow-table entries per worker: the table is the larger of [`DEFAULT_FLOWS`] and
/// this many per worker (so every worker has tens of thousands).
pub const FLOWS_PER_WORKER: usize = 32_768;

/// The default flow-table size for `workers` workers.
pub fn default_flows(workers: usize) -> usize {
    DEFAULT_FLOWS.max(FLOWS_PER_WORKER * workers)
}

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

mod parse;
mod table;

use parse::*;
pub use table::FlowTable;
use table::*;

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
        let (h, proto, syn, port) = match fast_v4(spec.seed, peer, pkt, dir) {
            Some((h, proto, port)) => (h, proto, false, port),
            None => match self.slow_key(peer, pkt, dir, now_s, &routes_to_peer)? {
                Some(k) => k,
                None => return Ok(()),
            },
        };
        self.decide(peer, h, proto, syn, port, dir, now_s)
    }

    /// The general parse: every IP packet; fragments and ICMP errors are decided here
    /// (`Ok(None)`: pass). `Ok(Some)`: the flow key (hash, protocol, SYN without ACK, rule
    /// port) for [`ActiveFilter::decide`].
    #[inline(never)]
    fn slow_key(
        &self,
        peer: PeerId,
        pkt: &[u8],
        dir: Dir,
        now_s: u32,
        routes_to_peer: &impl Fn(IpAddr) -> bool,
    ) -> Result<Option<(u64, u8, bool, u16)>, DropReason> {
        let spec = &self.spec;
        let parsed = parse(pkt, dir).ok_or(DropReason::BadInnerPacket)?;
        let (flow, syn, port) = match parsed {
            Parsed::Fragment => return Ok(None),
            Parsed::IcmpError(q) => {
                if dir == Dir::Out {
                    // Our own error about the peer's packet: a reply.
                    return spec
                        .reachable(peer)
                        .then_some(None)
                        .ok_or(DropReason::FilterNoRule);
                }
                let h = flow_hash(spec.seed, peer, &q);
                if self.flows.get(h, now_s).is_some()
                    || (routes_to_peer(q.remote) && spec.reachable(peer))
                {
                    return Ok(None);
                }
                return Err(DropReason::FilterNoRule);
            }
            Parsed::Flow { flow, syn, port } => (flow, syn, port),
        };
        Ok(Some((
            flow_hash(spec.seed, peer, &flow),
            flow.proto,
            syn,
            port,
        )))
    }

    /// Steps 3 and 4 for a flow key.
    #[allow(clippy::too_many_arguments)] // the flow key's parts, passed in registers
    #[inline]
    fn decide(
        &self,
        peer: PeerId,
        h: u64,
        proto: u8,
        syn: bool,
        port: u16,
        dir: Dir,
        now_s: u32,
    ) -> Result<(), DropReason> {
        let spec = &self.spec;
        let gen = spec.generation & GEN_MASK;
        let kind = kind_of(proto) << KIND_SHIFT;
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
                    .is_some_and(|c| c.verdict(proto, port) == Verdict::Allow)
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
                if proto != TCP || syn {
                    self.flows.put(h, pack(now_s, gen, kind | F_LOCAL), now_s);
                }
                Ok(())
            }
            Dir::In => {
                let v = spec
                    .class_of(peer)
                    .map_or(Verdict::NoRule, |c| c.verdict(proto, port));
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
    fn fast_path_gives_the_general_paths_key_or_defers_to_it() {
        let (a, b) = (ip("10.0.0.1"), ip("192.168.7.9"));
        let (x, y) = (ip("fd00::1"), ip("fd00::2"));
        let mut cases = vec![
            (build::tcp(a, 40000, b, 22, 0x10, b"data"), true),
            (build::tcp(b, 22, a, 40000, 0x12, b""), true), // SYN-ACK: not a SYN
            (build::tcp(a, 40000, b, 22, 0x02, b""), false), // SYN: general path
            (build::udp(a, 5353, b, 53, b"q"), true),
            (build::udp(x, 5353, y, 53, b"q"), false), // IPv6
            (build::echo(a, b, true, 7), false),       // ICMP
        ];
        let mut opts = build::udp(a, 1, b, 2, b"");
        opts[0] = 0x46; // IPv4 with options
        opts.splice(20..20, [1, 1, 1, 0]);
        cases.push((opts, false));
        let mut frag = build::tcp(a, 1, b, 2, 0x10, b"");
        frag[7] = 1; // offset 8 bytes: not first
        cases.push((frag, false));
        let mut first = build::udp(a, 1, b, 2, b"");
        first[6] = 0x20; // more fragments, offset 0: first fragment, has ports
        cases.push((first, true));
        cases.push((build::tcp(a, 1, b, 2, 0x10, b"")[..33].to_vec(), false)); // no flags
        for dir in [Dir::In, Dir::Out] {
            for (i, (pkt, fast)) in cases.iter().enumerate() {
                let got = fast_v4(99, 5, pkt, dir);
                assert_eq!(got.is_some(), *fast, "case {i} {dir:?}");
                let Some((h, proto, port)) = got else {
                    continue;
                };
                let Some(Parsed::Flow { flow, syn, port: p }) = parse(pkt, dir) else {
                    panic!("case {i}: the general path has no flow")
                };
                assert_eq!((h, proto, port), (flow_hash(99, 5, &flow), flow.proto, p));
                assert!(!syn, "case {i}");
            }
        }
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
        // Echo: the id is the port of the flow; the rules see the message type.
        let Some(Parsed::Flow { flow, port, .. }) = parse(
            &build::echo(ip("fd00::1"), ip("fd00::2"), true, 77),
            Dir::Out,
        ) else {
            panic!()
        };
        assert_eq!(
            (flow.proto, flow.lport, flow.rport, port),
            (58, 77, 77, 128)
        );
        let Some(Parsed::Flow { port, .. }) = parse(&build::echo(a, b, false, 77), Dir::In) else {
            panic!()
        };
        assert_eq!(port, 0, "an echo reply is type 0");
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
        // Other protocols (ICMP, GRE, ...) idle out after 10 min.
        assert!(t.get(k(6), 2000 + OTHER_IDLE_S).is_some());
        assert!(t.get(k(6), 2001 + OTHER_IDLE_S).is_none());
        assert_eq!((TCP_IDLE_S, UDP_IDLE_S, OTHER_IDLE_S), (720, 180, 600));
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
