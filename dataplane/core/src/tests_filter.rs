//! The packet filter on the `Pair` harness (virtual clock): B carries the filter, A is the
//! peer. Rules and drop reasons, classes, generations (revocation), replies to flows B
//! opened (UDP/DNS too), ICMP errors, echo, idle timeouts, table bounds, the fast path.

use super::*;
use crate::filter::build::{echo, icmp, tcp, udp};
use crate::filter::{TCP_IDLE_S, UDP_IDLE_S};
use tm_wire::filter::{chunks, FilterClass, FilterSpec, PortRule, ProtoRules, Verdict};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn a_ip() -> IpAddr {
    ip("10.0.0.1")
}
fn b_ip() -> IpAddr {
    ip("10.0.0.2")
}

fn rule(first: u16, last: u16, verdict: Verdict) -> PortRule {
    PortRule {
        first,
        last,
        verdict,
    }
}

/// Class 0: TCP 80 and 443 allowed, 22 denied, UDP 53 allowed. Class 1: ICMP allowed.
fn spec(generation: u64, a_class: Option<u32>) -> FilterSpec {
    FilterSpec {
        generation,
        seed: 42,
        classes: vec![
            FilterClass {
                protos: vec![
                    ProtoRules {
                        proto: 6,
                        ranges: vec![
                            rule(22, 22, Verdict::Deny),
                            rule(80, 80, Verdict::Allow),
                            rule(443, 443, Verdict::Allow),
                        ],
                    },
                    ProtoRules {
                        proto: 17,
                        ranges: vec![rule(53, 53, Verdict::Allow)],
                    },
                ],
                other: Verdict::NoRule,
            },
            FilterClass {
                protos: vec![ProtoRules {
                    proto: 1,
                    ranges: vec![rule(0, 65535, Verdict::Allow)],
                }],
                other: Verdict::NoRule,
            },
        ],
        peers: a_class.map(|c| vec![(PEER_A, c)]).unwrap_or_default(),
        reachable: vec![PEER_A],
    }
}

fn set_filter(dp: &mut Dataplane, now: Instant, generation: u64, s: Option<&FilterSpec>) {
    for m in chunks(generation, s) {
        dp.handle_ctl(now, m);
    }
}

/// A -> B: `pkt` sealed on A, delivered to B.
fn a_to_b(p: &mut Pair, pkt: &[u8]) -> Result<Vec<u8>, Inbound> {
    let (_, d) = seal(&mut p.a, p.now, pkt);
    deliver(&mut p.b, p.now, a_addr(), &d)
}

/// B -> A: `pkt` through B's outbound filter; Ok if A got it.
fn b_to_a(p: &mut Pair, pkt: &[u8]) -> Result<Vec<u8>, Outbound> {
    let mut out = vec![0u8; BUF];
    match p.b.handle_tun(p.now, pkt, &mut out) {
        Outbound::Send { len, .. } => {
            Ok(deliver(&mut p.a, p.now, b_addr(), &out[..len]).expect("A accepts"))
        }
        o => Err(o),
    }
}

fn denied(r: DropReason) -> Result<Vec<u8>, Inbound> {
    Err(Inbound::Drop(r))
}

#[test]
fn no_filter_allows_all_and_clearing_restores_it() {
    let mut p = Pair::established();
    let syn = tcp(a_ip(), 40000, b_ip(), 22, SYN, b"");
    assert_eq!(a_to_b(&mut p, &syn), Ok(syn.clone()));
    set_filter(&mut p.b, p.now, 1, Some(&spec(1, Some(0))));
    assert_eq!(p.b.filter_generation(), Some(1));
    assert_eq!(
        a_to_b(&mut p, &tcp(a_ip(), 40001, b_ip(), 22, SYN, b"")),
        denied(DropReason::FilterDenied)
    );
    set_filter(&mut p.b, p.now, 2, None);
    assert_eq!(p.b.filter_generation(), None);
    let syn = tcp(a_ip(), 40002, b_ip(), 22, SYN, b"");
    assert_eq!(a_to_b(&mut p, &syn), Ok(syn.clone()));
}

#[test]
fn rules_decide_new_flows_with_reasons_and_admitted_flows_pass() {
    let mut p = Pair::established();
    set_filter(&mut p.b, p.now, 1, Some(&spec(1, Some(0))));
    // Allowed port: the SYN is admitted, the reply leaves, the rest of the flow passes.
    let syn = tcp(a_ip(), 40000, b_ip(), 80, SYN, b"");
    assert_eq!(a_to_b(&mut p, &syn), Ok(syn.clone()));
    let synack = tcp(b_ip(), 80, a_ip(), 40000, SYN | ACK, b"");
    assert_eq!(b_to_a(&mut p, &synack), Ok(synack.clone()));
    for i in 0..5u8 {
        let d = tcp(a_ip(), 40000, b_ip(), 80, ACK, &[i; 100]);
        assert_eq!(a_to_b(&mut p, &d), Ok(d.clone()));
    }
    // Explicit deny vs no rule vs another protocol.
    assert_eq!(
        a_to_b(&mut p, &tcp(a_ip(), 40001, b_ip(), 22, SYN, b"")),
        denied(DropReason::FilterDenied)
    );
    assert_eq!(
        a_to_b(&mut p, &tcp(a_ip(), 40002, b_ip(), 8080, SYN, b"")),
        denied(DropReason::FilterNoRule)
    );
    assert_eq!(
        a_to_b(&mut p, &udp(a_ip(), 40003, b_ip(), 80, b"x")),
        denied(DropReason::FilterNoRule)
    );
    let q = udp(a_ip(), 40004, b_ip(), 53, b"query");
    assert_eq!(a_to_b(&mut p, &q), Ok(q.clone()));
    // A non-SYN segment to a denied port is no way around the rules.
    assert_eq!(
        a_to_b(&mut p, &tcp(a_ip(), 40005, b_ip(), 22, ACK, b"x")),
        denied(DropReason::FilterDenied)
    );
    assert_eq!(p.b.drop_count(DropReason::FilterDenied), 2);
    assert_eq!(p.b.drop_count(DropReason::FilterNoRule), 2);
    // A peer without a class may open nothing.
    set_filter(&mut p.b, p.now, 2, Some(&spec(2, None)));
    assert_eq!(
        a_to_b(&mut p, &tcp(a_ip(), 40006, b_ip(), 443, SYN, b"")),
        denied(DropReason::FilterNoRule)
    );
    // The counters reach the control plane under their names.
    p.b.handle_ctl(p.now, CtlMsg::RequestCounters);
    let ev = events(&mut p.b);
    let drops = ev
        .iter()
        .find_map(|m| match m {
            DpMsg::Counters { drops, .. } => Some(*drops),
            _ => None,
        })
        .expect("counters");
    assert_eq!(drops[DropReason::FilterNoRule as usize], 3);
    assert_eq!(DropReason::FilterRevoked.name(), "filter_revoked");
    assert!(ev.iter().any(|m| matches!(
        m,
        DpMsg::FilterCounters {
            generation: 2,
            active: true,
            ..
        }
    )));
}

#[test]
fn replies_to_flows_this_node_opened_pass_under_default_deny() {
    let mut p = Pair::established();
    // A may open nothing on B; B may reach A.
    set_filter(&mut p.b, p.now, 1, Some(&spec(1, None)));
    // DNS: B asks A, A's answer comes back.
    let q = udp(b_ip(), 5353, a_ip(), 53, b"query");
    assert_eq!(b_to_a(&mut p, &q), Ok(q.clone()));
    let ans = udp(a_ip(), 53, b_ip(), 5353, b"answer");
    assert_eq!(a_to_b(&mut p, &ans), Ok(ans.clone()));
    // Not to another port, not from another source port.
    assert_eq!(
        a_to_b(&mut p, &udp(a_ip(), 53, b_ip(), 5354, b"x")),
        denied(DropReason::FilterNoRule)
    );
    assert_eq!(
        a_to_b(&mut p, &udp(a_ip(), 54, b_ip(), 5353, b"x")),
        denied(DropReason::FilterNoRule)
    );
    // TCP: B's SYN opens the flow, A's SYN-ACK and data come back.
    let syn = tcp(b_ip(), 41000, a_ip(), 22, SYN, b"");
    assert_eq!(b_to_a(&mut p, &syn), Ok(syn.clone()));
    let synack = tcp(a_ip(), 22, b_ip(), 41000, SYN | ACK, b"");
    assert_eq!(a_to_b(&mut p, &synack), Ok(synack.clone()));
    // An outbound non-SYN segment opens nothing: A's packets on that tuple stay out.
    let stray = tcp(b_ip(), 41001, a_ip(), 22, ACK, b"x");
    assert_eq!(b_to_a(&mut p, &stray), Ok(stray.clone()));
    assert_eq!(
        a_to_b(&mut p, &tcp(a_ip(), 22, b_ip(), 41001, ACK, b"y")),
        denied(DropReason::FilterNoRule)
    );
    // Echo: B pings A and gets the reply; A's ping to B is not allowed by class... none.
    let req = echo(b_ip(), a_ip(), true, 9);
    assert_eq!(b_to_a(&mut p, &req), Ok(req.clone()));
    let rep = echo(a_ip(), b_ip(), false, 9);
    assert_eq!(a_to_b(&mut p, &rep), Ok(rep.clone()));
    assert_eq!(
        a_to_b(&mut p, &echo(a_ip(), b_ip(), true, 10)),
        denied(DropReason::FilterNoRule)
    );
    // Idle timeout: UDP flows last 3 minutes without packets.
    p.advance(Duration::from_secs(u64::from(UDP_IDLE_S) - 5));
    assert_eq!(a_to_b(&mut p, &ans), Ok(ans.clone()), "still open");
    p.advance(Duration::from_secs(u64::from(UDP_IDLE_S) + 2));
    // (sessions would have expired: renew them on the virtual clock)
    p.install(300, 400);
    let _ = transmits(&mut p.a, p.now);
    assert_eq!(a_to_b(&mut p, &ans), denied(DropReason::FilterNoRule));
}

#[test]
fn tcp_flows_idle_out_after_twelve_minutes() {
    let mut p = Pair::established();
    set_filter(&mut p.b, p.now, 1, Some(&spec(1, None)));
    let syn = tcp(b_ip(), 41000, a_ip(), 22, SYN, b"");
    assert_eq!(b_to_a(&mut p, &syn), Ok(syn.clone()));
    let now = p.now;
    let t = p.b.flow_table().expect("table");
    let secs = p.b.shared().secs(now);
    assert_eq!(t.live(secs), 1);
    assert_eq!(t.live(secs + TCP_IDLE_S), 1);
    assert_eq!(t.live(secs + TCP_IDLE_S + 1), 0);
}

#[test]
fn a_new_generation_reevaluates_and_revocation_cuts_established_flows() {
    let mut p = Pair::established();
    set_filter(&mut p.b, p.now, 1, Some(&spec(1, Some(0))));
    let syn = tcp(a_ip(), 40000, b_ip(), 443, SYN, b"");
    assert_eq!(a_to_b(&mut p, &syn), Ok(syn.clone()));
    let d = tcp(a_ip(), 40000, b_ip(), 443, ACK, b"data");
    assert_eq!(a_to_b(&mut p, &d), Ok(d.clone()));
    // A flow B opened to A.
    let q = udp(b_ip(), 5353, a_ip(), 53, b"q");
    assert_eq!(b_to_a(&mut p, &q), Ok(q.clone()));
    // Generation 2 keeps A's class: the flow goes on.
    set_filter(&mut p.b, p.now, 2, Some(&spec(2, Some(0))));
    assert_eq!(a_to_b(&mut p, &d), Ok(d.clone()));
    // Generation 3 moves A to a class without TCP 443: the established stream is cut,
    // in both directions, and counted as revoked.
    set_filter(&mut p.b, p.now, 3, Some(&spec(3, Some(1))));
    assert_eq!(a_to_b(&mut p, &d), denied(DropReason::FilterRevoked));
    let reply = tcp(b_ip(), 443, a_ip(), 40000, ACK, b"reply");
    assert_eq!(
        b_to_a(&mut p, &reply),
        Err(Outbound::Drop(DropReason::FilterRevoked))
    );
    assert_eq!(a_to_b(&mut p, &d), denied(DropReason::FilterRevoked));
    assert_eq!(p.b.drop_count(DropReason::FilterRevoked), 3);
    // B's own flow to A is still allowed (A stays reachable).
    let ans = udp(a_ip(), 53, b_ip(), 5353, b"a");
    assert_eq!(a_to_b(&mut p, &ans), Ok(ans.clone()));
    // Generation 4 gives 443 back: the flow is re-evaluated and passes again.
    set_filter(&mut p.b, p.now, 4, Some(&spec(4, Some(0))));
    assert_eq!(a_to_b(&mut p, &d), Ok(d.clone()));
    // Generation 5 makes A unreachable: B's own flow is cut too, and B sends nothing new.
    let mut s = spec(5, None);
    s.reachable.clear();
    set_filter(&mut p.b, p.now, 5, Some(&s));
    assert_eq!(a_to_b(&mut p, &ans), denied(DropReason::FilterRevoked));
    assert_eq!(
        b_to_a(&mut p, &udp(b_ip(), 6000, a_ip(), 53, b"q")),
        Err(Outbound::Drop(DropReason::FilterNoRule))
    );
}

#[test]
fn icmp_errors_quoting_our_flows_always_pass() {
    let mut p = Pair::established();
    set_filter(&mut p.b, p.now, 1, Some(&spec(1, None)));
    // B sends a large datagram; a router behind A answers "fragmentation needed" (v4) and
    // the peer itself "port unreachable".
    let big = udp(b_ip(), 7000, a_ip(), 9999, &[0; 1200]);
    assert_eq!(b_to_a(&mut p, &big), Ok(big.clone()));
    let mut rest = vec![0, 0, 0x05, 0x00];
    rest.extend_from_slice(&big[..28]);
    let frag_needed = icmp(a_ip(), b_ip(), 3, 4, &rest);
    assert_eq!(a_to_b(&mut p, &frag_needed), Ok(frag_needed.clone()));
    let unreachable = icmp(a_ip(), b_ip(), 3, 3, &rest);
    assert_eq!(a_to_b(&mut p, &unreachable), Ok(unreachable.clone()));
    let exceeded = icmp(a_ip(), b_ip(), 11, 0, &rest);
    assert_eq!(a_to_b(&mut p, &exceeded), Ok(exceeded.clone()));
    // Even for a flow not in the table (e.g. evicted) whose destination is A's.
    let other = tcp(b_ip(), 7001, a_ip(), 22, ACK, b"");
    let mut rest2 = vec![0, 0, 0x05, 0x00];
    rest2.extend_from_slice(&other[..28]);
    let e2 = icmp(a_ip(), b_ip(), 3, 4, &rest2);
    assert_eq!(a_to_b(&mut p, &e2), Ok(e2.clone()));
    // An "error" quoting a packet to somewhere A does not route is not ours: dropped.
    let foreign = udp(b_ip(), 7000, ip("198.51.100.7"), 53, b"x");
    let mut rest3 = vec![0, 0, 0, 0];
    rest3.extend_from_slice(&foreign[..28]);
    assert_eq!(
        a_to_b(&mut p, &icmp(a_ip(), b_ip(), 3, 1, &rest3)),
        denied(DropReason::FilterNoRule)
    );
    // ICMPv6 packet too big, over IPv6.
    let (a6, b6) = (ip("fd00::1"), ip("fd00::2"));
    let big6 = udp(b6, 7000, a6, 9999, &[0; 1300]);
    assert_eq!(b_to_a(&mut p, &big6), Ok(big6.clone()));
    let mut rest6 = 1280u32.to_be_bytes().to_vec();
    rest6.extend_from_slice(&big6[..48]);
    let ptb = icmp(a6, b6, 2, 0, &rest6);
    assert_eq!(a_to_b(&mut p, &ptb), Ok(ptb.clone()));
    // Echo to B follows B's rules: class 1 allows ICMP.
    set_filter(&mut p.b, p.now, 2, Some(&spec(2, Some(1))));
    let ping = echo(a_ip(), b_ip(), true, 5);
    assert_eq!(a_to_b(&mut p, &ping), Ok(ping.clone()));
    let pong = echo(b_ip(), a_ip(), false, 5);
    assert_eq!(b_to_a(&mut p, &pong), Ok(pong.clone()));
}

#[test]
fn flow_table_is_bounded_and_counts_evictions() {
    let mut p = Pair::established();
    p.b.set_flow_capacity(8);
    set_filter(&mut p.b, p.now, 1, Some(&spec(1, None)));
    for port in 0..200u16 {
        let q = udp(b_ip(), 10_000 + port, a_ip(), 53, b"q");
        assert_eq!(b_to_a(&mut p, &q), Ok(q.clone()));
    }
    let t = p.b.flow_table().expect("table");
    assert_eq!(t.capacity(), 8);
    let secs = p.b.shared().secs(p.now);
    assert!(t.live(secs) <= 8);
    assert!(t.evictions() >= 192, "{}", t.evictions());
    // The newest flow survived.
    let ans = udp(a_ip(), 53, b_ip(), 10_199, b"a");
    assert_eq!(a_to_b(&mut p, &ans), Ok(ans.clone()));
    p.b.handle_ctl(p.now, CtlMsg::RequestCounters);
    assert!(events(&mut p.b).iter().any(|m| matches!(
        m,
        DpMsg::FilterCounters { capacity: 8, evictions, .. } if *evictions >= 192
    )));
}

#[test]
fn bad_filter_transfers_are_counted_and_change_nothing() {
    let mut p = Pair::established();
    set_filter(&mut p.b, p.now, 1, Some(&spec(1, Some(0))));
    // A blob that does not decode.
    p.b.handle_ctl(
        p.now,
        CtlMsg::SetFilter {
            generation: 2,
            total: 3,
            offset: 0,
            data: vec![1, 2, 3],
        },
    );
    assert_eq!(p.b.filter_generation(), Some(1));
    p.b.handle_ctl(p.now, CtlMsg::RequestCounters);
    assert!(events(&mut p.b).iter().any(|m| matches!(
        m,
        DpMsg::FilterCounters {
            generation: 1,
            bad_updates: 1,
            ..
        }
    )));
}

#[test]
fn fast_path_filters_and_shares_the_flow_table_with_the_owner() {
    let mut p = Pair::established_with(2);
    let mut fb = FastPath::new(p.b.shared(), 1);
    set_filter(&mut p.b, p.now, 1, Some(&spec(1, Some(0))));
    // Inbound on B's worker: denied and allowed.
    let (_, d) = seal(&mut p.a, p.now, &tcp(a_ip(), 40000, b_ip(), 22, SYN, b""));
    assert_eq!(
        fp_deliver(&mut fb, p.now, a_addr(), &d),
        Err(FastIn::Drop(DropReason::FilterDenied))
    );
    let syn = tcp(a_ip(), 40001, b_ip(), 80, SYN, b"");
    let (_, d) = seal(&mut p.a, p.now, &syn);
    assert_eq!(fp_deliver(&mut fb, p.now, a_addr(), &d), Ok(syn));
    // B opens a UDP flow on its worker; the answer arrives on the owner.
    set_filter(&mut p.b, p.now, 2, Some(&spec(2, None)));
    let _ = fb.end_batch();
    let q = udp(b_ip(), 5353, a_ip(), 53, b"q");
    let (_, d) = fp_seal_send(&mut fb, p.now, &q);
    assert_eq!(deliver(&mut p.a, p.now, b_addr(), &d), Ok(q));
    let ans = udp(a_ip(), 53, b_ip(), 5353, b"a");
    assert_eq!(a_to_b(&mut p, &ans), Ok(ans.clone()));
    // Revocation seen by the worker.
    let mut s = spec(3, None);
    s.reachable.clear();
    set_filter(&mut p.b, p.now, 3, Some(&s));
    // (a worker loads the snapshot once per batch)
    let _ = fb.end_batch();
    let (_, d) = seal(&mut p.a, p.now, &ans);
    assert_eq!(
        fp_deliver(&mut fb, p.now, a_addr(), &d),
        Err(FastIn::Drop(DropReason::FilterRevoked))
    );
    assert_eq!(
        fp_seal(&mut fb, p.now, &udp(b_ip(), 5353, a_ip(), 53, b"q")),
        FastOut::Drop(DropReason::FilterRevoked)
    );
    assert!(!fb.end_batch());
    let w = p.b.shared().worker_stats(1);
    assert_eq!(w.drops[DropReason::FilterDenied as usize], 1);
    assert_eq!(w.drops[DropReason::FilterRevoked as usize], 2);
}

#[test]
fn drops_are_sampled_once_per_second_per_peer_for_filter_log() {
    let mut p = Pair::established();
    set_filter(&mut p.b, p.now, 1, Some(&spec(1, Some(0))));
    for port in 0..20u16 {
        let _ = a_to_b(&mut p, &tcp(a_ip(), 40000 + port, b_ip(), 22, SYN, b""));
    }
    p.b.handle_timeout(p.now);
    let drops: Vec<DpMsg> = events(&mut p.b)
        .into_iter()
        .filter(|m| matches!(m, DpMsg::FilterDrop { .. }))
        .collect();
    assert_eq!(
        drops,
        vec![DpMsg::FilterDrop {
            peer: PEER_A,
            reason: DropReason::FilterDenied,
            inbound: true,
            proto: 6,
            src: a_ip(),
            dst: b_ip(),
            sport: 40000,
            dport: 22,
        }],
        "one sample for 20 drops within a second"
    );
    assert_eq!(p.b.drop_count(DropReason::FilterDenied), 20);
    // The next second: the next drop is sampled (an outbound one here).
    p.advance(Duration::from_millis(1000));
    let mut s = spec(2, Some(0));
    s.reachable.clear();
    set_filter(&mut p.b, p.now, 2, Some(&s));
    assert_eq!(
        b_to_a(&mut p, &udp(b_ip(), 6000, a_ip(), 53, b"q")),
        Err(Outbound::Drop(DropReason::FilterNoRule))
    );
    p.b.handle_timeout(p.now);
    assert!(events(&mut p.b).iter().any(|m| matches!(
        m,
        DpMsg::FilterDrop {
            inbound: false,
            reason: DropReason::FilterNoRule,
            dport: 53,
            ..
        }
    )));
}

/// ICMP classes see the message type as the port: a class allowing only echo requests (8),
/// what the policy compiles for "echo follows the destination's rules", admits a ping and its
/// flow, but not other ICMP types nor an unsolicited echo reply.
#[test]
fn echo_requests_are_looked_up_by_their_type() {
    let mut p = Pair::established();
    let mut s = spec(1, Some(0));
    s.classes[0].protos.insert(
        0,
        ProtoRules {
            proto: 1,
            ranges: vec![rule(8, 8, Verdict::Allow)],
        },
    );
    set_filter(&mut p.b, p.now, 1, Some(&s));
    let ping = echo(a_ip(), b_ip(), true, 5);
    assert_eq!(a_to_b(&mut p, &ping), Ok(ping.clone()));
    let pong = echo(b_ip(), a_ip(), false, 5);
    assert_eq!(b_to_a(&mut p, &pong), Ok(pong.clone()));
    assert_eq!(
        a_to_b(&mut p, &ping),
        Ok(ping.clone()),
        "the flow stays open"
    );
    // An echo reply B never asked for, and a timestamp request: no rule.
    assert_eq!(
        a_to_b(&mut p, &echo(a_ip(), b_ip(), false, 6)),
        denied(DropReason::FilterNoRule)
    );
    let ts = icmp(a_ip(), b_ip(), 13, 0, &[0, 9, 0, 1, 0, 0, 0, 0]);
    assert_eq!(a_to_b(&mut p, &ts), denied(DropReason::FilterNoRule));
}

/// The flow table gives every worker tens of thousands of entries: 65,536 up to two workers,
/// 32,768 per worker above.
#[test]
fn flow_table_grows_with_the_workers() {
    for (workers, want) in [(1, 65_536), (2, 65_536), (4, 131_072), (8, 262_144)] {
        let now = Instant::now();
        let mut dp = Dataplane::with_workers(DpConfig { mtu: 1420 }, now, workers);
        set_filter(&mut dp, now, 1, Some(&spec(1, None)));
        let cap = dp.flow_table().expect("a table with the filter").capacity();
        assert_eq!(cap, want, "{workers} workers");
        assert!(
            cap / workers >= 30_000,
            "{workers} workers: {} per worker",
            cap / workers
        );
    }
}
