//! The per-packet path of the dataplane core allocates nothing (issue 16: "the hot path does no
//! allocation ... per packet"), with the packet filter on: opening sealed datagrams, the
//! inbound filter (new flows admitted, known flows passed), the outbound filter and sealing.
//! A counting global allocator (this test binary only) counts allocations made on this thread
//! while the packets run. It lives here because the dataplane-I/O crate is where unsafe code
//! may live, and a global allocator needs it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Instant;

use tm_dp::{Dataplane, DpConfig, Inbound, Outbound};
use tm_wire::filter::{chunks, FilterClass, FilterSpec, PortRule, ProtoRules, Verdict};
use tm_wire::ipc::{CtlMsg, Prefix, Timers};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: during thread teardown the slots may be gone; nothing to count then.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged;
// the bookkeeping touches only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: `ptr` and `layout` come from this allocator (which is `System`'s).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations(f: impl FnOnce()) -> u64 {
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(Cell::get)
}

const MTU: u16 = 1420;
const A_EP: &str = "192.0.2.1:51820";

/// Two dataplanes with an installed session: a (peer 1 = b), b (peer 2 = a).
fn pair(now: Instant) -> (Dataplane, Dataplane) {
    let ep = |s: &str| s.parse::<SocketAddr>().expect("addr");
    let mut a = Dataplane::new(DpConfig { mtu: MTU }, now);
    let mut b = Dataplane::new(DpConfig { mtu: MTU }, now);
    for (dp, peer, ip, to) in [
        (&mut a, 1, "10.99.0.2", ep("192.0.2.2:51820")),
        (&mut b, 2, "10.99.0.1", ep(A_EP)),
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
                endpoint: Some(to),
                persistent_keepalive: 0,
            },
        );
    }
    let (k1, k2) = ([1u8; 32], [2u8; 32]);
    for (dp, peer, local, remote, send, recv, initiator) in [
        (&mut a, 1, 10, 20, k1, k2, true),
        (&mut b, 2, 20, 10, k2, k1, false),
    ] {
        dp.handle_ctl(
            now,
            CtlMsg::InstallSession {
                peer,
                local_index: local,
                remote_index: remote,
                send_key: send,
                recv_key: recv,
                initiator,
            },
        );
    }
    (a, b)
}

/// IPv4/TCP `src:sport -> dst:dport` with `flags` and 1,000 payload bytes.
fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
    let n = 20 + 20 + 1000;
    let mut p = vec![0u8; n];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(n as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p
}

const A_IP: [u8; 4] = [10, 99, 0, 1];
const B_IP: [u8; 4] = [10, 99, 0, 2];
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

#[test]
fn the_filtered_packet_path_allocates_nothing() {
    let now = Instant::now();
    let (mut a, mut b) = pair(now);
    // b filters: a (peer 2) may open TCP 5201; 22 is denied.
    let spec = FilterSpec {
        generation: 1,
        seed: 7,
        classes: vec![FilterClass {
            protos: vec![ProtoRules {
                proto: 6,
                ranges: vec![
                    PortRule {
                        first: 22,
                        last: 22,
                        verdict: Verdict::Deny,
                    },
                    PortRule {
                        first: 5201,
                        last: 5201,
                        verdict: Verdict::Allow,
                    },
                ],
            }],
            other: Verdict::NoRule,
        }],
        peers: vec![(2, 0)],
        reachable: vec![2],
    };
    for m in chunks(1, Some(&spec)) {
        b.handle_ctl(now, m);
    }
    let from: SocketAddr = A_EP.parse().expect("addr");
    let mut out = vec![0u8; 2048];
    // The session's first datagram confirms it to the control plane (an event, once per
    // handshake, not per packet): deliver one and take the event before counting.
    let Outbound::Send { len, .. } =
        a.handle_tun(now, &tcp(A_IP, 29_999, B_IP, 5201, SYN), &mut out)
    else {
        panic!("a did not seal");
    };
    let mut first = out[..len].to_vec();
    assert!(matches!(
        b.handle_udp(now, from, &mut first),
        Inbound::WriteTun { .. }
    ));
    while b.poll_event().is_some() {}
    // Seal everything on a first (the allocations of building them are not counted): per
    // flow a SYN (a new flow, admitted by the rules) and 9 data segments (a known flow).
    const FLOWS: u16 = 200;
    let mut sealed = Vec::new();
    for f in 0..FLOWS {
        for i in 0..10 {
            let flags = if i == 0 { SYN } else { ACK };
            let pkt = tcp(A_IP, 30_000 + f, B_IP, 5201, flags);
            let Outbound::Send { len, .. } = a.handle_tun(now, &pkt, &mut out) else {
                panic!("a did not seal");
            };
            sealed.push(out[..len].to_vec());
        }
    }
    let replies: Vec<Vec<u8>> = (0..FLOWS)
        .map(|f| tcp(B_IP, 5201, A_IP, 30_000 + f, ACK))
        .collect();
    let (mut opened, mut sent) = (0, 0);
    let n = allocations(|| {
        for (i, d) in sealed.iter_mut().enumerate() {
            match b.handle_udp(now, from, d) {
                Inbound::WriteTun { .. } => opened += 1,
                other => panic!("datagram {i}: {other:?}"),
            }
            if i % 10 == 9 {
                // b answers on the flow: outbound filter (reachable peer) and seal.
                if let Outbound::Send { .. } = b.handle_tun(now, &replies[i / 10], &mut out) {
                    sent += 1;
                }
            }
        }
    });
    assert_eq!(opened, sealed.len(), "every datagram passed the filter");
    assert_eq!(sent, usize::from(FLOWS), "every reply was sealed");
    // Denied packets: dropped and counted; only the `filter log` sample (one per peer per
    // second) allocates.
    let mut denied: Vec<Vec<u8>> = (0..100)
        .map(|i| {
            let pkt = tcp(A_IP, 40_000 + i, B_IP, 22, SYN);
            let Outbound::Send { len, .. } = a.handle_tun(now, &pkt, &mut out) else {
                panic!("a did not seal");
            };
            out[..len].to_vec()
        })
        .collect();
    let dropped = allocations(|| {
        for d in denied.iter_mut() {
            assert!(matches!(b.handle_udp(now, from, d), Inbound::Drop(_)));
        }
    });
    assert!(
        dropped <= 1,
        "{dropped} allocations for 100 denied datagrams"
    );
    assert_eq!(
        n,
        0,
        "{n} allocations for {} datagrams opened and filtered and {sent} sealed",
        sealed.len()
    );
}
