//! Dataplane micro-benchmarks (no criterion: a plain timing loop keeps the build small).
//!
//! `cargo run --release --bin dp-micro [-- FILTER]` prints, per benchmark, the median of
//! 7 runs: ns per operation and, where it applies, the inner-payload rate in Gbit/s.
//!
//! * `seal_1420`         `Dataplane::handle_tun` of one 1420-byte packet (copy + seal)
//! * `seal_tso_64k`      one 64 KiB TSO super-packet: segment + seal in place (per batch)
//! * `open_1452`         `Dataplane::handle_udp` of one sealed 1452-byte datagram
//! * `open_1452_filter`  the same with a packet filter installed (flow-table hit per datagram)
//! * `gro_64k`           coalescing 47 decrypted segments into one TUN super-packet
//! * `lookup_1k`         allowed-IPs longest-prefix match, 1000 peers (v4)
//! * `ring_64b`          push + pop of one 64-byte message through the shared-memory ring
//! * `filter_hit`        packet filter: one packet of an admitted TCP flow (hash + bucket read)
//! * `filter_new`        packet filter: SYN of a new flow (rule lookup + table insert)
//! * `filter_flows_10k`  not a timing: the flow table's memory (allocated, and resident growth
//!   of this process) once 10,000 distinct flows are admitted
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tm_dp::filter::{ActiveFilter, Dir, FlowTable, DEFAULT_FLOWS};
use tm_dp::offload::{Gro, Segmenter, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4};
use tm_dp::{Dataplane, DpConfig, Inbound, Outbound, RouteTable};
use tm_wire::filter::{FilterClass, FilterSpec, PortRule, ProtoRules, Verdict};
use tm_wire::ipc::{CtlMsg, PeerId, Prefix, Timers};

const MTU: u16 = 1420;

fn pair() -> (Dataplane, Dataplane, Instant) {
    let now = Instant::now();
    let a_ep: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
    let b_ep: SocketAddr = "192.0.2.2:51820".parse().expect("addr");
    let mut a = Dataplane::new(DpConfig { mtu: MTU }, now);
    let mut b = Dataplane::new(DpConfig { mtu: MTU }, now);
    for (dp, peer, ip, ep) in [
        (&mut a, 1, "10.99.0.2", b_ep),
        (&mut b, 2, "10.99.0.1", a_ep),
    ] {
        dp.handle_ctl(now, CtlMsg::SetTimers(Timers::default()));
        dp.handle_ctl(
            now,
            CtlMsg::AddPeer {
                peer,
                public_key: [peer as u8; 32],
                allowed_ips: vec![Prefix {
                    addr: ip.parse().expect("ip"),
                    len: 32,
                }],
                endpoint: Some(ep),
                persistent_keepalive: 0,
            },
        );
    }
    let (k1, k2) = ([1u8; 32], [2u8; 32]);
    a.handle_ctl(
        now,
        CtlMsg::InstallSession {
            peer: 1,
            local_index: 10,
            remote_index: 20,
            send_key: k1,
            recv_key: k2,
            initiator: true,
        },
    );
    b.handle_ctl(
        now,
        CtlMsg::InstallSession {
            peer: 2,
            local_index: 20,
            remote_index: 10,
            send_key: k2,
            recv_key: k1,
            initiator: false,
        },
    );
    (a, b, now)
}

/// IPv4/TCP packet 10.99.0.1 -> 10.99.0.2 with `payload` bytes (checksums not needed here).
fn tcp(payload: usize) -> Vec<u8> {
    let n = 20 + 32 + payload;
    let mut p = vec![0u8; n];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(n as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 99, 0, 1]);
    p[16..20].copy_from_slice(&[10, 99, 0, 2]);
    p[32] = 8 << 4;
    p[33] = 0x10;
    for (i, b) in p[52..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// Runs `f` (which does `ops` operations and moves `bytes` payload bytes) 7 times for at
/// least 200 ms each and prints the median.
fn bench(name: &str, filter: &str, ops: u64, bytes: u64, mut f: impl FnMut()) {
    if !name.contains(filter) {
        return;
    }
    let mut per_op = Vec::new();
    for _ in 0..7 {
        let t0 = Instant::now();
        let mut iters = 0u64;
        while t0.elapsed() < Duration::from_millis(200) {
            f();
            iters += 1;
        }
        per_op.push(t0.elapsed().as_nanos() as f64 / (iters * ops) as f64);
    }
    per_op.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let ns = per_op[3];
    let gbps = if bytes > 0 {
        format!("{:7.2} Gbit/s", bytes as f64 * 8.0 / (ns * ops as f64))
    } else {
        String::new()
    };
    println!("{name:<16} {ns:10.1} ns/op {gbps}");
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let (mut a, mut b, now) = pair();
    let from: SocketAddr = "192.0.2.1:51820".parse().expect("addr");

    // Handshake-free warm-up: the responder session confirms on its first packet.
    let pkt = tcp(1420 - 52);
    let mut out = vec![0u8; 2048];
    let Outbound::Send { len, .. } = a.handle_tun(now, &pkt, &mut out) else {
        panic!("no session");
    };
    assert!(matches!(
        b.handle_udp(now, from, &mut out[..len]),
        Inbound::WriteTun { .. }
    ));

    bench("seal_1420", &filter, 1, 1420, || {
        let r = a.handle_tun(now, black_box(&pkt), &mut out);
        let _ = black_box(r);
    });

    let data = tcp(65_000 - 52);
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 52,
        gso_size: 1368,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut batch = vec![0u8; 2 * 65_536];
    bench("seal_tso_64k", &filter, 1, 65_000, || {
        let mut s = Segmenter::new(&data, h).expect("valid");
        let mut at = 0;
        while let Some(Ok(n)) = s.next_into(&mut batch[at + 16..]) {
            if let Outbound::Send { len, .. } = a.handle_tun_in_place(now, &mut batch[at..], n) {
                at += len;
            }
        }
        black_box(at);
    });

    // Open: pre-seal a pool of datagrams, open each in place once (fresh counters).
    let count = 20_000;
    let mut sealed = vec![0u8; count * 1452];
    for c in sealed.chunks_mut(1452) {
        let Outbound::Send { len, .. } = a.handle_tun(now, &pkt, c) else {
            panic!("seal");
        };
        assert_eq!(len, 1452);
    }
    let mut chunks = sealed.chunks_mut(1452);
    let t0 = Instant::now();
    let mut opened = 0u64;
    for c in &mut chunks {
        if matches!(b.handle_udp(now, from, c), Inbound::WriteTun { .. }) {
            opened += 1;
        }
    }
    if "open_1452".contains(&filter) {
        let ns = t0.elapsed().as_nanos() as f64 / opened as f64;
        println!(
            "{:<16} {ns:10.1} ns/op {:7.2} Gbit/s   ({opened} datagrams, one pass)",
            "open_1452",
            1420.0 * 8.0 / ns
        );
    }

    // The same with a packet filter on b (every TCP port allowed from a: the first datagram
    // admits the flow, every other one is a flow-table hit, as in a long transfer).
    if "open_1452_filter".contains(&filter) {
        let spec = FilterSpec {
            generation: 1,
            seed: 7,
            classes: vec![FilterClass {
                protos: vec![ProtoRules {
                    proto: 6,
                    ranges: vec![PortRule {
                        first: 0,
                        last: 65535,
                        verdict: Verdict::Allow,
                    }],
                }],
                other: Verdict::NoRule,
            }],
            peers: vec![(2, 0)],
            reachable: vec![2],
        };
        for m in tm_wire::filter::chunks(1, Some(&spec)) {
            b.handle_ctl(now, m);
        }
        for c in sealed.chunks_mut(1452) {
            let Outbound::Send { len, .. } = a.handle_tun(now, &pkt, c) else {
                panic!("seal");
            };
            assert_eq!(len, 1452);
        }
        let t0 = Instant::now();
        let mut opened = 0u64;
        for c in sealed.chunks_mut(1452) {
            if matches!(b.handle_udp(now, from, c), Inbound::WriteTun { .. }) {
                opened += 1;
            }
        }
        assert_eq!(
            opened, count as u64,
            "the filter let every datagram through"
        );
        let ns = t0.elapsed().as_nanos() as f64 / opened as f64;
        println!(
            "{:<16} {ns:10.1} ns/op {:7.2} Gbit/s   ({opened} datagrams, one pass, filter on)",
            "open_1452_filter",
            1420.0 * 8.0 / ns
        );
    }

    let mut segs = Vec::new();
    let mut s = Segmenter::new(&data, h).expect("valid");
    let mut buf = vec![0u8; 2048];
    while let Some(Ok(n)) = s.next_into(&mut buf[16..]) {
        segs.push(buf[..16 + n].to_vec());
    }
    let mut gro = Gro::new(true);
    bench("gro_64k", &filter, 1, 65_000, || {
        let mut w = 0usize;
        for sg in segs.iter_mut() {
            let n = sg.len() - 16;
            gro.push(sg, 16, n, &mut |x: &[u8]| w += x.len());
        }
        gro.flush(&mut |x: &[u8]| w += x.len());
        black_box(w);
    });

    let entries: Vec<(Prefix, PeerId)> = (0..1000u32)
        .map(|i| {
            let o = i.to_be_bytes();
            (
                Prefix {
                    addr: IpAddr::V4(Ipv4Addr::new(10, o[2], o[3], 0)),
                    len: 24,
                },
                i,
            )
        })
        .collect();
    let table = RouteTable::new(&entries).expect("valid prefixes");
    let mut i = 0u32;
    bench("lookup_1k", &filter, 1, 0, || {
        i = i.wrapping_add(7919);
        let o = (i % 1000).to_be_bytes();
        black_box(table.lookup(IpAddr::V4(Ipv4Addr::new(10, o[2], o[3], 9))));
    });

    let (mut parent, child_fds) = tm_ring::create(tm_ring::RingConfig::default(), 1).expect("ring");
    let mut child = tm_ring::attach(child_fds, 1).expect("attach");
    let msg = [7u8; 64];
    bench("ring_64b", &filter, 1, 0, || {
        parent.tx.try_push(&msg).expect("room");
        let n = child.rx.try_pop(|m| m.len()).expect("message");
        black_box(n);
    });

    filter_benches(&filter);
}

/// Resident set size of this process in KiB (/proc/self/statm).
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// IPv4/TCP segment 10.200.x.y:sport -> 10.99.0.2:5201 with TCP `flags` (no payload).
fn tcp_flow(i: u32, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    let o = (i / 50_000).to_be_bytes();
    p[12..16].copy_from_slice(&[10, 200, o[2], o[3]]);
    p[16..20].copy_from_slice(&[10, 99, 0, 2]);
    p[20..22].copy_from_slice(&((10_000 + i % 50_000) as u16).to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p
}

fn filter_benches(filter: &str) {
    // One class: TCP 5201-5210 and 7777 allowed, everything else no rule (default deny).
    let spec = FilterSpec {
        generation: 1,
        seed: 0x1234_5678,
        classes: vec![FilterClass {
            protos: vec![ProtoRules {
                proto: 6,
                ranges: vec![
                    PortRule {
                        first: 5201,
                        last: 5210,
                        verdict: Verdict::Allow,
                    },
                    PortRule {
                        first: 7777,
                        last: 7777,
                        verdict: Verdict::Allow,
                    },
                ],
            }],
            other: Verdict::NoRule,
        }],
        peers: vec![(1, 0)],
        reachable: vec![1],
    };
    let all = |_: IpAddr| true;
    if "filter_flows_10k".contains(filter) {
        let before = rss_kib();
        let f = ActiveFilter {
            spec: spec.clone(),
            flows: std::sync::Arc::new(FlowTable::new(DEFAULT_FLOWS)),
        };
        let allocated = rss_kib();
        for i in 0..10_000 {
            f.check(1, &tcp_flow(i, 0x02), Dir::In, 100, all)
                .expect("allowed SYN");
        }
        let after = rss_kib();
        let live = f.flows.live(100);
        assert_eq!(
            live,
            10_000 - f.flows.evictions() as usize,
            "every flow admitted"
        );
        println!(
            "filter_flows_10k flow table {} entries x 16 B = {} KiB, allocated with the filter \
             (process RSS +{} KiB at creation, +{} KiB more after 10,000 flows); \
             10,000 flows: {} live, {} evictions, {} KiB of entries",
            f.flows.capacity(),
            f.flows.capacity() * 16 / 1024,
            allocated.saturating_sub(before),
            after.saturating_sub(allocated),
            live,
            f.flows.evictions(),
            live * 16 / 1024,
        );
    }
    let f = ActiveFilter {
        spec,
        flows: std::sync::Arc::new(FlowTable::new(DEFAULT_FLOWS)),
    };
    let ack = tcp_flow(7, 0x10);
    f.check(1, &tcp_flow(7, 0x02), Dir::In, 100, all)
        .expect("allowed SYN");
    bench("filter_hit", filter, 1, 0, || {
        black_box(f.check(1, black_box(&ack), Dir::In, 100, all)).expect("admitted flow");
    });
    let syns: Vec<Vec<u8>> = (0..4096).map(|i| tcp_flow(100_000 + i, 0x02)).collect();
    let mut i = 0usize;
    let mut now = 100u32;
    bench("filter_new", filter, 1, 0, || {
        i = (i + 1) % syns.len();
        if i == 0 {
            now += 1000; // the 4096 flows are idle-expired and new again
        }
        black_box(f.check(1, black_box(&syns[i]), Dir::In, now, all)).expect("allowed SYN");
    });
}
