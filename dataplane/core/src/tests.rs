//! `Pair` harness: two dataplanes wired back to back through an in-memory link, a
//! virtual clock and hand-installed session keys (as the control plane would).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tm_wire::ipc::{CtlMsg, DpMsg, DropReason, PeerId, Prefix, Timers};
use tm_wire::wg::timers::REJECT_AFTER_MESSAGES;

use crate::packet::build;
use crate::{
    Dataplane, DpConfig, FastIn, FastOut, FastPath, Inbound, Outbound, Punt, PuntResult,
    MAX_STAGED, PUNT_QUEUE_LEN,
};

const PEER_B: PeerId = 1; // B as seen from A
const PEER_A: PeerId = 2; // A as seen from B
const MTU: u16 = 1420;
const BUF: usize = 2048;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}
fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}
fn pre(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').expect("slash");
    Prefix {
        addr: ip(a),
        len: l.parse().expect("len"),
    }
}

fn a_addr() -> SocketAddr {
    sa("192.0.2.1:51820")
}
fn b_addr() -> SocketAddr {
    sa("192.0.2.2:51820")
}

struct Pair {
    now: Instant,
    a: Dataplane,
    b: Dataplane,
}

fn add_peer(dp: &mut Dataplane, now: Instant, peer: PeerId, ips: &[&str], ep: SocketAddr, ka: u16) {
    dp.handle_ctl(
        now,
        CtlMsg::AddPeer {
            peer,
            public_key: [peer as u8; 32],
            allowed_ips: ips.iter().map(|s| pre(s)).collect(),
            endpoint: Some(ep),
            persistent_keepalive: ka,
        },
    );
}

impl Pair {
    fn new() -> Self {
        Self::with_workers(1)
    }

    /// Both dataplanes shared with `workers - 1` fast-path workers.
    fn with_workers(workers: usize) -> Self {
        let now = Instant::now();
        let mut a = Dataplane::with_workers(DpConfig { mtu: MTU }, now, workers);
        let mut b = Dataplane::with_workers(DpConfig { mtu: MTU }, now, workers);
        a.handle_ctl(now, CtlMsg::SetTimers(Timers::default()));
        b.handle_ctl(now, CtlMsg::SetTimers(Timers::default()));
        add_peer(
            &mut a,
            now,
            PEER_B,
            &["10.0.0.2/32", "fd00::2/128"],
            b_addr(),
            0,
        );
        add_peer(
            &mut b,
            now,
            PEER_A,
            &["10.0.0.1/32", "fd00::1/128"],
            a_addr(),
            0,
        );
        Self { now, a, b }
    }

    /// A is the initiator, B the responder (keys swapped).
    fn install(&mut self, a_idx: u32, b_idx: u32) {
        let k1 = [a_idx as u8 ^ 0x11; 32];
        let k2 = [b_idx as u8 ^ 0x22; 32];
        self.a.handle_ctl(
            self.now,
            CtlMsg::InstallSession {
                peer: PEER_B,
                local_index: a_idx,
                remote_index: b_idx,
                send_key: k1,
                recv_key: k2,
                initiator: true,
            },
        );
        self.b.handle_ctl(
            self.now,
            CtlMsg::InstallSession {
                peer: PEER_A,
                local_index: b_idx,
                remote_index: a_idx,
                send_key: k2,
                recv_key: k1,
                initiator: false,
            },
        );
    }

    /// Installs and delivers A's confirming keepalive to B.
    fn established() -> Self {
        Self::established_with(1)
    }

    fn established_with(workers: usize) -> Self {
        let mut p = Self::with_workers(workers);
        p.install(100, 200);
        let tx = transmits(&mut p.a, p.now);
        assert_eq!(tx.len(), 1, "initiator sends one keepalive");
        assert_eq!(tx[0].0, b_addr());
        assert_eq!(tx[0].1.len(), 32);
        let mut d = tx[0].1.clone();
        assert_eq!(p.b.handle_udp(p.now, a_addr(), &mut d), Inbound::Consumed);
        assert_eq!(
            events(&mut p.b),
            vec![DpMsg::SessionConfirmed {
                peer: PEER_A,
                local_index: 200
            }]
        );
        p
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }
}

fn events(dp: &mut Dataplane) -> Vec<DpMsg> {
    std::iter::from_fn(|| dp.poll_event()).collect()
}

fn need_handshakes(ev: &[DpMsg]) -> usize {
    ev.iter()
        .filter(|m| matches!(m, DpMsg::NeedHandshake { .. }))
        .count()
}

fn transmits(dp: &mut Dataplane, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = vec![0u8; BUF];
    std::iter::from_fn(|| {
        dp.poll_transmit(now, &mut out)
            .map(|(to, n)| (to, out[..n].to_vec()))
    })
    .collect()
}

/// Seals `pkt` on `dp`, expecting a datagram.
fn seal(dp: &mut Dataplane, now: Instant, pkt: &[u8]) -> (SocketAddr, Vec<u8>) {
    let mut out = vec![0u8; BUF];
    match dp.handle_tun(now, pkt, &mut out) {
        Outbound::Send { to, len } => (to, out[..len].to_vec()),
        o => panic!("expected Send, got {o:?}"),
    }
}

/// Delivers `d`, returning the inner packet if it was written to the TUN.
fn deliver(
    dp: &mut Dataplane,
    now: Instant,
    from: SocketAddr,
    d: &[u8],
) -> Result<Vec<u8>, Inbound> {
    let mut buf = d.to_vec();
    match dp.handle_udp(now, from, &mut buf) {
        Inbound::WriteTun { start, len } => Ok(buf[start..start + len].to_vec()),
        o => Err(o),
    }
}

fn v4(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    build::ip(ip(src), ip(dst), payload)
}

#[test]
fn packets_flow_both_ways_identical_and_padded() {
    let mut p = Pair::established();
    for size in [0usize, 1, 15, 16, 17, 100, 1000, 1379, 1380, 1395, 1400] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        let pkt = v4("10.0.0.1", "10.0.0.2", &payload);
        let (to, d) = seal(&mut p.a, p.now, &pkt);
        assert_eq!(to, b_addr());
        let padded = pkt.len().div_ceil(16) * 16;
        assert_eq!(d.len(), 32 + padded.min(usize::from(MTU)), "size {size}");
        assert_eq!(deliver(&mut p.b, p.now, a_addr(), &d), Ok(pkt.clone()));

        let pkt6 = build::ip(ip("fd00::2"), ip("fd00::1"), &payload);
        let (to, d) = seal(&mut p.b, p.now, &pkt6);
        assert_eq!(to, a_addr());
        assert_eq!(deliver(&mut p.a, p.now, b_addr(), &d), Ok(pkt6));
    }
    // Larger than the MTU: never padded beyond it (here: not padded at all).
    let big = v4("10.0.0.1", "10.0.0.2", &[9u8; 1405]);
    let (_, d) = seal(&mut p.a, p.now, &big);
    assert_eq!(d.len(), big.len() + 32);
    assert_eq!(deliver(&mut p.b, p.now, a_addr(), &d), Ok(big));
    let sa = p.a.peer_stats(p.now, PEER_B).unwrap();
    let sb = p.b.peer_stats(p.now, PEER_A).unwrap();
    assert_eq!(sa.tx_packets, 13); // keepalive + 11 + big
    assert_eq!(sa.tx_packets, sb.rx_packets);
    assert_eq!(sa.tx_bytes, sb.rx_bytes);
    assert_eq!(sa.rx_packets, 11);
    assert_eq!(sa.last_rx_ago_ms, 0);
    assert!(DropReason::ALL
        .iter()
        .all(|r| p.a.drop_count(*r) == 0 && p.b.drop_count(*r) == 0));
}

#[test]
fn replayed_datagram_is_dropped_and_counted() {
    let mut p = Pair::established();
    let pkt = v4("10.0.0.1", "10.0.0.2", b"once");
    let (_, d) = seal(&mut p.a, p.now, &pkt);
    assert_eq!(deliver(&mut p.b, p.now, a_addr(), &d), Ok(pkt));
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &d),
        Err(Inbound::Drop(DropReason::Replay))
    );
    assert_eq!(p.b.drop_count(DropReason::Replay), 1);
}

#[test]
fn tampered_ciphertext_fails_without_moving_window() {
    let mut p = Pair::established();
    let pkt = v4("10.0.0.1", "10.0.0.2", b"payload under test");
    let (_, d) = seal(&mut p.a, p.now, &pkt);
    for i in [16, 20, d.len() - 1] {
        let mut bad = d.clone();
        bad[i] ^= 0x40;
        assert_eq!(
            deliver(&mut p.b, p.now, a_addr(), &bad),
            Err(Inbound::Drop(DropReason::AuthFailed))
        );
    }
    // A forged far-future counter must not advance the window either.
    let mut future = d.clone();
    future[8..16].copy_from_slice(&1_000_000u64.to_le_bytes());
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &future),
        Err(Inbound::Drop(DropReason::AuthFailed))
    );
    assert_eq!(p.b.drop_count(DropReason::AuthFailed), 4);
    // The genuine packet with that counter still passes.
    assert_eq!(deliver(&mut p.b, p.now, a_addr(), &d), Ok(pkt));
    // Forged packets authenticate nothing: no roaming, no stats.
    let before = p.b.peer_stats(p.now, PEER_A).unwrap();
    let mut bad = d.clone();
    bad[30] ^= 1;
    let _ = deliver(&mut p.b, p.now, sa("203.0.113.9:1"), &bad);
    assert_eq!(p.b.endpoint(PEER_A), Some(a_addr()));
    assert_eq!(p.b.peer_stats(p.now, PEER_A).unwrap(), before);
}

#[test]
fn out_of_order_within_window_and_too_old() {
    let mut p = Pair::established();
    let pkts: Vec<_> = (0..8300u32)
        .map(|i| {
            seal(
                &mut p.a,
                p.now,
                &v4("10.0.0.1", "10.0.0.2", &i.to_le_bytes()),
            )
            .1
        })
        .collect();
    // Counter 0 was the keepalive: pkts[i] has counter i + 1.
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &pkts[10]).map(|v| v.len()),
        Ok(24)
    );
    assert!(
        deliver(&mut p.b, p.now, a_addr(), &pkts[3]).is_ok(),
        "older, in window"
    );
    assert!(deliver(&mut p.b, p.now, a_addr(), &pkts[5]).is_ok());
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &pkts[3]),
        Err(Inbound::Drop(DropReason::Replay))
    );
    assert!(deliver(&mut p.b, p.now, a_addr(), &pkts[8299]).is_ok());
    // 8299 - 200 = 8099 behind: still inside the 8128-packet window.
    assert!(deliver(&mut p.b, p.now, a_addr(), &pkts[200]).is_ok());
    // 8299 - 4 = 8295 behind: too old.
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &pkts[4]),
        Err(Inbound::Drop(DropReason::Replay))
    );
    assert_eq!(p.b.drop_count(DropReason::Replay), 2);
}

#[test]
fn inner_source_outside_allowed_ips() {
    let mut p = Pair::established();
    // Routed by destination on A, but B only accepts 10.0.0.1 / fd00::1 from A.
    for pkt in [
        v4("10.0.0.99", "10.0.0.2", b"spoof"),
        build::ip(ip("fd00::99"), ip("fd00::2"), b"spoof"),
        v4("10.0.0.2", "10.0.0.2", b"spoof as B itself"),
    ] {
        let (_, d) = seal(&mut p.a, p.now, &pkt);
        assert_eq!(
            deliver(&mut p.b, p.now, a_addr(), &d),
            Err(Inbound::Drop(DropReason::SourceNotAllowed))
        );
    }
    assert_eq!(p.b.drop_count(DropReason::SourceNotAllowed), 3);
    // A garbage (but authenticated) inner packet.
    let (_, d) = seal(&mut p.a, p.now, &{
        let mut x = v4("10.0.0.1", "10.0.0.2", b"x");
        x[2..4].copy_from_slice(&9000u16.to_be_bytes());
        x
    });
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &d),
        Err(Inbound::Drop(DropReason::BadInnerPacket))
    );
}

#[test]
fn unknown_receiver_truncated_and_random_datagrams() {
    let mut p = Pair::established();
    let (_, d) = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"x"));
    let mut unknown = d.clone();
    unknown[4..8].copy_from_slice(&999u32.to_le_bytes());
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &unknown),
        Err(Inbound::Drop(DropReason::UnknownReceiver))
    );
    for cut in [0, 3, 4, 16, 31] {
        assert_eq!(
            deliver(&mut p.b, p.now, a_addr(), &d[..cut]),
            Err(Inbound::Drop(DropReason::Malformed)),
            "cut {cut}"
        );
    }
    assert_eq!(
        deliver(
            &mut p.b,
            p.now,
            a_addr(),
            &[1u8; 147].map(|_| 0).map(|b| b | 1)
        ),
        Err(Inbound::Drop(DropReason::UnknownType)),
        "reserved bytes non-zero"
    );
    let mut short_init = vec![0u8; 147];
    short_init[0] = 1;
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &short_init),
        Err(Inbound::Drop(DropReason::Malformed))
    );
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &[9, 0, 0, 0, 1, 2, 3]),
        Err(Inbound::Drop(DropReason::UnknownType))
    );
    assert_eq!(p.b.drop_count(DropReason::Malformed), 6);
    assert_eq!(p.b.drop_count(DropReason::UnknownType), 2);
    assert_eq!(p.b.drop_count(DropReason::UnknownReceiver), 1);

    // Random datagrams (types 0-5, random lengths and bytes): no panic, no delivery.
    let mut x: u64 = 0xdead_beef_cafe_f00d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let len = (rnd() % 200) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        if len >= 4 && rnd().is_multiple_of(2) {
            buf[0] = (rnd() % 6) as u8;
            buf[1..4].fill(0);
            if buf[0] == 4 && len >= 8 && rnd().is_multiple_of(2) {
                buf[4..8].copy_from_slice(&200u32.to_le_bytes());
            }
        }
        let mut out = vec![0u8; BUF];
        let _ = p.b.handle_tun(p.now, &buf, &mut out);
        match p.b.handle_udp(p.now, a_addr(), &mut buf) {
            Inbound::WriteTun { .. } => panic!("random datagram delivered"),
            Inbound::Consumed => assert!(matches!(buf[0], 1..=3)),
            Inbound::Drop(_) => {}
        }
    }
    let _ = events(&mut p.b);
    assert_eq!(p.b.endpoint(PEER_A), Some(a_addr()));
}

#[test]
fn staging_then_flush_on_initiator_install() {
    let mut p = Pair::new();
    let mut out = vec![0u8; BUF];
    let n = MAX_STAGED + 3;
    for i in 0..n as u32 {
        let pkt = v4("10.0.0.1", "10.0.0.2", &i.to_le_bytes());
        assert_eq!(p.a.handle_tun(p.now, &pkt, &mut out), Outbound::Queued);
    }
    assert_eq!(p.a.drop_count(DropReason::NoSession), 3, "oldest dropped");
    let ev = events(&mut p.a);
    assert_eq!(
        ev,
        vec![DpMsg::NeedHandshake { peer: PEER_B }],
        "rate-limited"
    );
    assert!(transmits(&mut p.a, p.now).is_empty());

    p.install(100, 200);
    let tx = transmits(&mut p.a, p.now);
    assert_eq!(
        tx.len(),
        MAX_STAGED,
        "staged packets flush, no extra keepalive"
    );
    let mut confirmed = false;
    for (k, (to, d)) in tx.iter().enumerate() {
        assert_eq!(*to, b_addr());
        let inner = deliver(&mut p.b, p.now, a_addr(), d).expect("delivered");
        assert_eq!(
            inner,
            v4("10.0.0.1", "10.0.0.2", &((k + 3) as u32).to_le_bytes())
        );
        confirmed |= events(&mut p.b).contains(&DpMsg::SessionConfirmed {
            peer: PEER_A,
            local_index: 200,
        });
    }
    assert!(confirmed);
    assert!(transmits(&mut p.a, p.now).is_empty());
}

#[test]
fn responder_confirms_on_first_packet_then_flushes() {
    let mut p = Pair::new();
    p.install(100, 200);
    // B is the responder: no current session yet, so it stages.
    let mut out = vec![0u8; BUF];
    let pkt = build::ip(ip("fd00::2"), ip("fd00::1"), b"from responder");
    assert_eq!(p.b.handle_tun(p.now, &pkt, &mut out), Outbound::Queued);
    assert!(transmits(&mut p.b, p.now).is_empty());
    let _ = events(&mut p.b);
    let tx = transmits(&mut p.a, p.now);
    assert_eq!(tx.len(), 1);
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &tx[0].1),
        Err(Inbound::Consumed)
    );
    assert_eq!(
        events(&mut p.b),
        vec![DpMsg::SessionConfirmed {
            peer: PEER_A,
            local_index: 200
        }]
    );
    let tx = transmits(&mut p.b, p.now);
    assert_eq!(tx.len(), 1);
    assert_eq!(deliver(&mut p.a, p.now, b_addr(), &tx[0].1), Ok(pkt));
    // Now current: B sends directly.
    let (_, d) = seal(
        &mut p.b,
        p.now,
        &build::ip(ip("fd00::2"), ip("fd00::1"), b"2"),
    );
    assert!(deliver(&mut p.a, p.now, b_addr(), &d).is_ok());
}

#[test]
fn old_session_still_receives_after_rekey() {
    let mut p = Pair::established();
    let (_, in_flight) = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"old"));
    p.install(101, 201);
    let tx = transmits(&mut p.a, p.now);
    assert_eq!(tx.len(), 1, "keepalive on the new session");
    // Old-session packet still accepted by B (its current, soon previous).
    assert!(deliver(&mut p.b, p.now, a_addr(), &in_flight).is_ok());
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &tx[0].1),
        Err(Inbound::Consumed)
    );
    assert!(events(&mut p.b).contains(&DpMsg::SessionConfirmed {
        peer: PEER_A,
        local_index: 201
    }));
    let (_, d) = seal(&mut p.b, p.now, &v4("10.0.0.2", "10.0.0.1", b"new"));
    assert_eq!(
        &d[4..8],
        &101u32.to_le_bytes(),
        "B sends on the new session"
    );
    assert!(deliver(&mut p.a, p.now, b_addr(), &d).is_ok());
}

#[test]
fn rekey_after_time_asks_for_handshake_as_initiator_only() {
    let mut p = Pair::established();
    let t = Timers::default();
    p.advance(Duration::from_millis(u64::from(t.rekey_after_ms)));
    let _ = events(&mut p.a);
    let _ = events(&mut p.b);
    let (_, d) = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"late"));
    assert_eq!(
        events(&mut p.a),
        vec![DpMsg::NeedHandshake { peer: PEER_B }]
    );
    let _ = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"again"));
    assert!(events(&mut p.a).is_empty(), "rate-limited");
    assert!(deliver(&mut p.b, p.now, a_addr(), &d).is_ok());
    let _ = seal(&mut p.b, p.now, &v4("10.0.0.2", "10.0.0.1", b"resp"));
    assert_eq!(
        need_handshakes(&events(&mut p.b)),
        0,
        "responder never rekeys on time"
    );
    p.advance(Duration::from_millis(u64::from(t.rekey_timeout_ms)));
    let _ = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"later"));
    assert_eq!(need_handshakes(&events(&mut p.a)), 1);
}

#[test]
fn receiving_near_reject_asks_initiator_for_handshake() {
    let mut p = Pair::established();
    let t = Timers::default();
    let limit = t.reject_after_ms - t.keepalive_timeout_ms - t.rekey_timeout_ms;
    p.advance(Duration::from_millis(u64::from(limit) - 1));
    let (_, d) = seal(&mut p.b, p.now, &v4("10.0.0.2", "10.0.0.1", b"x"));
    let _ = events(&mut p.a);
    assert!(deliver(&mut p.a, p.now, b_addr(), &d).is_ok());
    assert!(events(&mut p.a).is_empty());
    p.advance(Duration::from_millis(1));
    let (_, d) = seal(&mut p.b, p.now, &v4("10.0.0.2", "10.0.0.1", b"y"));
    assert!(deliver(&mut p.a, p.now, b_addr(), &d).is_ok());
    assert_eq!(
        events(&mut p.a),
        vec![DpMsg::NeedHandshake { peer: PEER_B }]
    );
}

#[test]
fn rekey_after_messages_and_reject_after_messages() {
    let mut p = Pair::established();
    p.a.set_send_counter(PEER_B, tm_wire::wg::timers::REKEY_AFTER_MESSAGES + 1);
    let _ = events(&mut p.a);
    let _ = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"x"));
    assert_eq!(
        events(&mut p.a),
        vec![DpMsg::NeedHandshake { peer: PEER_B }]
    );
    p.a.set_send_counter(PEER_B, REJECT_AFTER_MESSAGES);
    let mut out = vec![0u8; BUF];
    assert_eq!(
        p.a.handle_tun(p.now, &v4("10.0.0.1", "10.0.0.2", b"x"), &mut out),
        Outbound::Queued,
        "exhausted session stops sending"
    );
}

#[test]
fn sessions_expire_after_reject_after() {
    let mut p = Pair::established();
    let t = Timers::default();
    let (_, old) = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"old"));
    p.advance(Duration::from_millis(u64::from(t.reject_after_ms)));
    // Before the timer runs, the session is already unusable both ways.
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &old),
        Err(Inbound::Drop(DropReason::SessionExpired))
    );
    assert!(p.a.poll_timeout().unwrap() <= p.now);
    p.a.handle_timeout(p.now);
    p.b.handle_timeout(p.now);
    let ea = events(&mut p.a);
    let eb = events(&mut p.b);
    assert!(ea.contains(&DpMsg::SessionExpired {
        peer: PEER_B,
        local_index: 100
    }));
    assert!(eb.contains(&DpMsg::SessionExpired {
        peer: PEER_A,
        local_index: 200
    }));
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &old),
        Err(Inbound::Drop(DropReason::UnknownReceiver))
    );
    // The unanswered "old" packet already asked for a handshake (in `ea`); wait out
    // the rate limit.
    assert_eq!(need_handshakes(&ea), 1);
    p.advance(Duration::from_millis(u64::from(t.rekey_timeout_ms)));
    let mut out = vec![0u8; BUF];
    assert_eq!(
        p.a.handle_tun(p.now, &v4("10.0.0.1", "10.0.0.2", b"new"), &mut out),
        Outbound::Queued
    );
    assert_eq!(
        events(&mut p.a),
        vec![DpMsg::NeedHandshake { peer: PEER_B }]
    );
}

#[test]
fn passive_keepalive_after_receiving_data() {
    let t = Timers::default();
    let ka = Duration::from_millis(u64::from(t.keepalive_timeout_ms));
    let mut p = Pair::established();
    let (_, d) = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"hi"));
    assert!(deliver(&mut p.b, p.now, a_addr(), &d).is_ok());
    assert!(p.b.poll_timeout().unwrap() <= p.now + ka);
    p.advance(ka - Duration::from_millis(1));
    p.b.handle_timeout(p.now);
    assert!(transmits(&mut p.b, p.now).is_empty(), "not yet");
    p.advance(Duration::from_millis(1));
    p.b.handle_timeout(p.now);
    let tx = transmits(&mut p.b, p.now);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].1.len(), 32, "keepalive");
    assert_eq!(
        deliver(&mut p.a, p.now, b_addr(), &tx[0].1),
        Err(Inbound::Consumed)
    );

    // If B answers with data in time, no keepalive.
    let (_, d) = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"hi"));
    assert!(deliver(&mut p.b, p.now, a_addr(), &d).is_ok());
    let _ = seal(&mut p.b, p.now, &v4("10.0.0.2", "10.0.0.1", b"answer"));
    p.advance(ka);
    p.b.handle_timeout(p.now);
    assert!(transmits(&mut p.b, p.now).is_empty());
}

#[test]
fn unanswered_data_asks_for_handshake() {
    let t = Timers::default();
    let wait = Duration::from_millis(u64::from(t.keepalive_timeout_ms + t.rekey_timeout_ms));
    let mut p = Pair::established();
    let _ = events(&mut p.a);
    let _ = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"hello?"));
    p.advance(wait - Duration::from_millis(1));
    p.a.handle_timeout(p.now);
    assert_eq!(need_handshakes(&events(&mut p.a)), 0);
    p.advance(Duration::from_millis(1));
    p.a.handle_timeout(p.now);
    assert_eq!(need_handshakes(&events(&mut p.a)), 1);

    // Answered (even by a keepalive): no request.
    let (_, d) = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"hello?"));
    assert!(deliver(&mut p.b, p.now, a_addr(), &d).is_ok());
    p.advance(Duration::from_millis(u64::from(t.keepalive_timeout_ms)));
    p.b.handle_timeout(p.now);
    for (_, k) in transmits(&mut p.b, p.now) {
        assert_eq!(
            deliver(&mut p.a, p.now, b_addr(), &k),
            Err(Inbound::Consumed)
        );
    }
    p.advance(wait);
    p.a.handle_timeout(p.now);
    assert_eq!(need_handshakes(&events(&mut p.a)), 0);
}

#[test]
fn persistent_keepalive() {
    let mut p = Pair::new();
    add_peer(
        &mut p.a,
        p.now,
        PEER_B,
        &["10.0.0.2/32", "fd00::2/128"],
        b_addr(),
        25,
    );
    // No session: ask for one right away (keeps the NAT mapping once it exists).
    p.a.handle_timeout(p.now);
    assert_eq!(need_handshakes(&events(&mut p.a)), 1);
    p.install(100, 200);
    let tx = transmits(&mut p.a, p.now);
    assert_eq!(tx.len(), 1);
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &tx[0].1),
        Err(Inbound::Consumed)
    );
    for _ in 0..3 {
        p.advance(Duration::from_secs(25));
        assert!(p.a.poll_timeout().unwrap() <= p.now);
        p.a.handle_timeout(p.now);
        let tx = transmits(&mut p.a, p.now);
        assert_eq!(tx.len(), 1, "one keepalive per interval");
        assert_eq!(tx[0].1.len(), 32);
        assert_eq!(
            deliver(&mut p.b, p.now, a_addr(), &tx[0].1),
            Err(Inbound::Consumed)
        );
    }
    // B has persistent keepalive off: it sends nothing on its own.
    p.b.handle_timeout(p.now);
    assert!(transmits(&mut p.b, p.now).is_empty());
}

#[test]
fn roaming_updates_endpoint() {
    let mut p = Pair::established();
    let roamed = sa("198.51.100.7:4000");
    let _ = events(&mut p.b);
    let (_, d) = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"moved"));
    assert!(deliver(&mut p.b, p.now, roamed, &d).is_ok());
    assert_eq!(
        events(&mut p.b),
        vec![DpMsg::EndpointChanged {
            peer: PEER_A,
            endpoint: roamed
        }]
    );
    let (to, _) = seal(&mut p.b, p.now, &v4("10.0.0.2", "10.0.0.1", b"reply"));
    assert_eq!(to, roamed);
    // Same address again: no event.
    let (_, d) = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"again"));
    assert!(deliver(&mut p.b, p.now, roamed, &d).is_ok());
    assert!(events(&mut p.b).is_empty());
}

#[test]
fn handshake_datagrams_pass_through() {
    let mut p = Pair::new();
    let mut init = vec![0u8; 148];
    init[0] = 1;
    init[4] = 0x55;
    assert_eq!(
        deliver(&mut p.b, p.now, a_addr(), &init),
        Err(Inbound::Consumed)
    );
    assert_eq!(
        events(&mut p.b),
        vec![DpMsg::HandshakeDatagram {
            from: a_addr(),
            data: init.clone()
        }]
    );
    p.a.handle_ctl(
        p.now,
        CtlMsg::SendDatagram {
            to: b_addr(),
            data: init.clone(),
        },
    );
    assert_eq!(transmits(&mut p.a, p.now), vec![(b_addr(), init.clone())]);
    // Ring full: handshake floods are bounded.
    for _ in 0..2000 {
        let _ = deliver(&mut p.b, p.now, a_addr(), &init);
    }
    assert_eq!(p.b.drop_count(DropReason::RingFull), 2000 - 1024);
}

#[test]
fn counters_periodic_and_on_request() {
    let mut p = Pair::established();
    let _ = events(&mut p.a);
    let _ = deliver(&mut p.a, p.now, b_addr(), &[9, 9]);
    p.a.handle_ctl(p.now, CtlMsg::RequestCounters);
    let ev = events(&mut p.a);
    let DpMsg::Counters {
        drops,
        rx_datagrams,
        tx_datagrams,
    } = ev[0]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(drops[DropReason::Malformed as usize], 1);
    assert_eq!((rx_datagrams, tx_datagrams), (1, 1));
    assert_eq!(
        ev[1],
        DpMsg::PeerCounters {
            peer: PEER_B,
            stats: p.a.peer_stats(p.now, PEER_B).unwrap()
        }
    );
    assert_eq!(ev.len(), 2);
    p.advance(Duration::from_millis(999));
    p.a.handle_timeout(p.now);
    assert!(events(&mut p.a).is_empty());
    p.advance(Duration::from_millis(1));
    p.a.handle_timeout(p.now);
    let ev = events(&mut p.a);
    assert!(matches!(ev[0], DpMsg::Counters { .. }));
    assert!(matches!(ev[1], DpMsg::PeerCounters { peer: PEER_B, .. }));
    assert!(p.a.poll_timeout().unwrap() <= p.now + Duration::from_secs(1));
}

#[test]
fn routing_no_route_no_endpoint_and_prefix_moves() {
    let mut p = Pair::established();
    let mut out = vec![0u8; BUF];
    assert_eq!(
        p.a.handle_tun(p.now, &v4("10.0.0.1", "10.9.9.9", b"x"), &mut out),
        Outbound::Drop(DropReason::NoRoute)
    );
    assert_eq!(
        p.a.handle_tun(p.now, &[0x45, 0], &mut out),
        Outbound::Drop(DropReason::BadInnerPacket)
    );
    // Peer 3 claims 10.0.0.2/32 from peer B (latest wins) and has no endpoint.
    p.a.handle_ctl(
        p.now,
        CtlMsg::AddPeer {
            peer: 3,
            public_key: [3; 32],
            allowed_ips: vec![pre("10.0.0.2/32"), pre("10.0.0.0/24")],
            endpoint: None,
            persistent_keepalive: 0,
        },
    );
    assert_eq!(p.a.routes().lookup(ip("10.0.0.2")), Some(3));
    assert_eq!(p.a.routes().lookup(ip("fd00::2")), Some(PEER_B));
    assert_eq!(
        p.a.handle_tun(p.now, &v4("10.0.0.1", "10.0.0.2", b"x"), &mut out),
        Outbound::Drop(DropReason::NoEndpoint)
    );
    p.a.handle_ctl(p.now, CtlMsg::RemovePeer { peer: 3 });
    assert_eq!(
        p.a.routes().lookup(ip("10.0.0.2")),
        None,
        "the prefix moved, not copied"
    );
    assert_eq!(
        p.a.handle_tun(p.now, &v4("10.0.0.1", "10.0.0.2", b"x"), &mut out),
        Outbound::Drop(DropReason::NoRoute)
    );
    // Output buffer too small.
    let pkt = build::ip(ip("fd00::1"), ip("fd00::2"), &[0; 100]);
    assert_eq!(
        p.a.handle_tun(p.now, &pkt, &mut out[..100]),
        Outbound::Drop(DropReason::IoError)
    );
    // Removing B drops its sessions: B's datagrams now hit an unknown receiver.
    let (_, d) = seal(&mut p.b, p.now, &v4("10.0.0.2", "10.0.0.1", b"x"));
    p.a.handle_ctl(p.now, CtlMsg::RemovePeer { peer: PEER_B });
    assert_eq!(
        deliver(&mut p.a, p.now, b_addr(), &d),
        Err(Inbound::Drop(DropReason::UnknownReceiver))
    );
}

#[test]
fn clear_sessions_and_replacing_peer_keeps_sessions() {
    let mut p = Pair::established();
    add_peer(
        &mut p.a,
        p.now,
        PEER_B,
        &["10.0.0.2/32", "fd00::2/128"],
        b_addr(),
        0,
    );
    let _ = seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"still"));
    p.a.handle_ctl(p.now, CtlMsg::ClearSessions { peer: PEER_B });
    let mut out = vec![0u8; BUF];
    assert_eq!(
        p.a.handle_tun(p.now, &v4("10.0.0.1", "10.0.0.2", b"x"), &mut out),
        Outbound::Queued
    );
}

#[test]
fn cryptokey_routing_uses_longest_match_across_peers() {
    // A knows B (10.0.0.0/8) and C (10.1.0.0/16, more specific).
    let mut p = Pair::new();
    add_peer(&mut p.a, p.now, PEER_B, &["10.0.0.0/8"], b_addr(), 0);
    add_peer(
        &mut p.a,
        p.now,
        3,
        &["10.1.0.0/16"],
        sa("192.0.2.3:51820"),
        0,
    );
    add_peer(&mut p.b, p.now, PEER_A, &["10.0.0.0/8"], a_addr(), 0);
    assert_eq!(p.a.routes().lookup(ip("10.1.2.3")), Some(3));
    assert_eq!(p.a.routes().lookup(ip("10.2.2.3")), Some(PEER_B));
    p.install(100, 200);
    let _ = transmits(&mut p.a, p.now);
    // B's inner source 10.1.2.3 is inside B's /8, but the longest match belongs to C.
    p.b.handle_ctl(
        p.now,
        CtlMsg::InstallSession {
            peer: PEER_A,
            local_index: 300,
            remote_index: 100,
            send_key: [200u8 ^ 0x22; 32],
            recv_key: [100u8 ^ 0x11; 32],
            initiator: true,
        },
    );
    let _ = transmits(&mut p.b, p.now);
    let (_, d) = seal(&mut p.b, p.now, &v4("10.1.2.3", "10.0.0.1", b"x"));
    assert_eq!(
        deliver(&mut p.a, p.now, b_addr(), &d),
        Err(Inbound::Drop(DropReason::SourceNotAllowed))
    );
    let (_, d) = seal(&mut p.b, p.now, &v4("10.2.2.3", "10.0.0.1", b"x"));
    assert!(deliver(&mut p.a, p.now, b_addr(), &d).is_ok());
}

// ---- fast path (workers 1..N) ----

/// Seals `pkt` on a fast path, as the worker's TUN path does (packet at `buf[16..]`).
fn fp_seal(fp: &mut FastPath, now: Instant, pkt: &[u8]) -> FastOut {
    let mut buf = vec![0u8; BUF];
    buf[16..16 + pkt.len()].copy_from_slice(pkt);
    fp.handle_tun_in_place(now, &mut buf, pkt.len())
}

fn fp_seal_send(fp: &mut FastPath, now: Instant, pkt: &[u8]) -> (SocketAddr, Vec<u8>) {
    let mut buf = vec![0u8; BUF];
    buf[16..16 + pkt.len()].copy_from_slice(pkt);
    match fp.handle_tun_in_place(now, &mut buf, pkt.len()) {
        FastOut::Send { to, len } => (to, buf[..len].to_vec()),
        o => panic!("expected Send, got {o:?}"),
    }
}

fn fp_deliver(
    fp: &mut FastPath,
    now: Instant,
    from: SocketAddr,
    d: &[u8],
) -> Result<Vec<u8>, FastIn> {
    let mut buf = d.to_vec();
    match fp.handle_udp(now, from, &mut buf) {
        FastIn::WriteTun { start, len } => Ok(buf[start..start + len].to_vec()),
        o => Err(o),
    }
}

/// Runs every queued punt through the owner; returns the datagrams it sent and the inner
/// packets it wrote to the TUN.
type Datagrams = Vec<(SocketAddr, Vec<u8>)>;

fn drain_punts(dp: &mut Dataplane, now: Instant) -> (Datagrams, Vec<Vec<u8>>) {
    let (mut sent, mut tun) = (Vec::new(), Vec::new());
    let mut out = vec![0u8; BUF];
    while let Some(mut punt) = dp.poll_punt() {
        match dp.handle_punt(now, &mut punt, &mut out) {
            PuntResult::Tun(Outbound::Send { to, len }) => sent.push((to, out[..len].to_vec())),
            PuntResult::Udp(Inbound::WriteTun { start, len }) => {
                let Punt::Udp { data, .. } = &punt else {
                    panic!("udp result for a tun punt")
                };
                tun.push(data[start..start + len].to_vec());
            }
            _ => {}
        }
    }
    (sent, tun)
}

#[test]
fn fast_path_carries_data_both_ways_and_counts() {
    let mut p = Pair::established_with(2);
    let mut fb = FastPath::new(p.b.shared(), 1);
    let mut fa = FastPath::new(p.a.shared(), 1);
    for i in 0..20u8 {
        let pkt = v4("10.0.0.1", "10.0.0.2", &[i; 300]);
        // A's owner seals, B's worker opens.
        let (_, d) = seal(&mut p.a, p.now, &pkt);
        assert_eq!(fp_deliver(&mut fb, p.now, a_addr(), &d), Ok(pkt.clone()));
        // B's worker seals, A's worker opens.
        let back = v4("10.0.0.2", "10.0.0.1", &[i; 100]);
        let (to, d) = fp_seal_send(&mut fb, p.now, &back);
        assert_eq!(to, a_addr());
        assert_eq!(fp_deliver(&mut fa, p.now, b_addr(), &d), Ok(back.clone()));
        // A replay on the owner of what the worker accepted: one shared window.
        assert_eq!(
            deliver(&mut p.a, p.now, b_addr(), &d),
            Err(Inbound::Drop(DropReason::Replay))
        );
        // And the other way round.
        let (_, d) = fp_seal_send(&mut fb, p.now, &back);
        assert_eq!(deliver(&mut p.a, p.now, b_addr(), &d), Ok(back));
        assert_eq!(
            fp_deliver(&mut fa, p.now, b_addr(), &d),
            Err(FastIn::Drop(DropReason::Replay))
        );
    }
    assert!(!fb.end_batch(), "nothing punted");
    assert!(!fa.end_batch());
    // Per-peer counters: the owner's plus the worker's.
    let sb = p.b.peer_stats(p.now, PEER_A).unwrap();
    assert_eq!(sb.rx_packets, 21, "keepalive (owner) + 20 (worker)");
    assert_eq!(sb.tx_packets, 40);
    let sa = p.a.peer_stats(p.now, PEER_B).unwrap();
    assert_eq!(sa.tx_packets, 21);
    assert_eq!(sa.rx_packets, 40, "20 on the worker, 20 on the owner");
    assert_eq!(sa.tx_bytes, sb.rx_bytes);
    assert_eq!(sb.tx_bytes, sa.rx_bytes);
    let w = p.a.shared().worker_stats(1);
    assert_eq!(w.drops[DropReason::Replay as usize], 20);
    assert_eq!(p.a.shared().worker_datagrams(1), (40, 0));
    assert_eq!(p.b.shared().worker_datagrams(1), (20, 40));
}

#[test]
fn fast_path_punts_the_slow_cases_to_the_owner() {
    let mut p = Pair::with_workers(2);
    let mut fa = FastPath::new(p.a.shared(), 1);
    let mut fb = FastPath::new(p.b.shared(), 1);
    // No session: punted; the owner stages it and asks for a handshake.
    let pkt = v4("10.0.0.1", "10.0.0.2", b"early");
    assert_eq!(fp_seal(&mut fa, p.now, &pkt), FastOut::Punted);
    assert!(fa.end_batch(), "punted: wake the owner");
    let (sent, _) = drain_punts(&mut p.a, p.now);
    assert!(sent.is_empty());
    assert_eq!(need_handshakes(&events(&mut p.a)), 1);
    // Handshake-class datagram: punted, becomes an event on the owner.
    let mut init = vec![0u8; 148];
    init[0] = 1;
    assert_eq!(
        fp_deliver(&mut fb, p.now, a_addr(), &init),
        Err(FastIn::Punted)
    );
    drain_punts(&mut p.b, p.now);
    assert!(events(&mut p.b)
        .iter()
        .any(|m| matches!(m, DpMsg::HandshakeDatagram { .. })));
    // Session installed: A flushes the staged packet; it reaches B's worker under B's
    // `next` session, which only the owner may promote -> punt -> owner confirms.
    p.install(100, 200);
    let tx = transmits(&mut p.a, p.now);
    assert_eq!(tx.len(), 1, "the staged packet");
    assert_eq!(
        fp_deliver(&mut fb, p.now, a_addr(), &tx[0].1),
        Err(FastIn::Punted)
    );
    let (_, tun) = drain_punts(&mut p.b, p.now);
    assert_eq!(tun, vec![pkt]);
    assert!(events(&mut p.b).contains(&DpMsg::SessionConfirmed {
        peer: PEER_A,
        local_index: 200
    }));
    // Now current on B (new snapshot from the next batch on): the worker handles it.
    assert!(fb.end_batch());
    let pkt = v4("10.0.0.1", "10.0.0.2", b"fast");
    let (_, d) = seal(&mut p.a, p.now, &pkt);
    assert_eq!(fp_deliver(&mut fb, p.now, a_addr(), &d), Ok(pkt));
    // From a new address: roaming is the owner's job.
    let pkt = v4("10.0.0.1", "10.0.0.2", b"roamed");
    let (_, d) = seal(&mut p.a, p.now, &pkt);
    let roamed = sa("198.51.100.7:4000");
    assert_eq!(fp_deliver(&mut fb, p.now, roamed, &d), Err(FastIn::Punted));
    let (_, tun) = drain_punts(&mut p.b, p.now);
    assert_eq!(tun, vec![pkt]);
    assert!(events(&mut p.b).contains(&DpMsg::EndpointChanged {
        peer: PEER_A,
        endpoint: roamed
    }));
    // The new snapshot carries the new endpoint: B's worker now sends there.
    fb.end_batch();
    let (to, _) = fp_seal_send(&mut fb, p.now, &v4("10.0.0.2", "10.0.0.1", b"x"));
    assert_eq!(to, roamed);
    // Garbage stays local: counted on the worker, never punted.
    assert_eq!(
        fp_deliver(&mut fb, p.now, a_addr(), &[4, 0, 0]),
        Err(FastIn::Drop(DropReason::Malformed))
    );
    assert_eq!(
        fp_seal(&mut fb, p.now, &v4("10.0.0.2", "10.9.9.9", b"x")),
        FastOut::Drop(DropReason::NoRoute)
    );
    fb.end_batch();
    let w = p.b.shared().worker_stats(1);
    assert_eq!(w.punts, 3);
    assert_eq!(w.punt_drops, 0);
    assert_eq!(w.drops[DropReason::Malformed as usize], 1);
    assert_eq!(w.drops[DropReason::NoRoute as usize], 1);
}

#[test]
fn full_punt_queue_drops_and_counts() {
    let mut p = Pair::with_workers(2);
    let mut fa = FastPath::new(p.a.shared(), 1);
    let pkt = v4("10.0.0.1", "10.0.0.2", b"x");
    for _ in 0..PUNT_QUEUE_LEN + 5 {
        assert_eq!(fp_seal(&mut fa, p.now, &pkt), FastOut::Punted);
    }
    fa.end_batch();
    let w = p.a.shared().worker_stats(1);
    assert_eq!(w.punts, PUNT_QUEUE_LEN as u64 + 5);
    assert_eq!(w.punt_drops, 5);
    let mut n = 0;
    while p.a.poll_punt().is_some() {
        n += 1;
    }
    assert_eq!(n, PUNT_QUEUE_LEN);
}

/// Traffic that only ran on a worker still drives the owner's timers: unanswered data
/// asks for a handshake, received data gets a passive keepalive, and a rekey condition
/// seen by the worker reaches the owner.
#[test]
fn worker_activity_drives_the_owner_timers() {
    let mut p = Pair::established_with(2);
    let mut fa = FastPath::new(p.a.shared(), 1);
    let mut fb = FastPath::new(p.b.shared(), 1);
    let t = Timers::default();
    let _ = events(&mut p.a);
    // A's worker sends, B's worker receives; nothing comes back.
    let pkt = v4("10.0.0.1", "10.0.0.2", b"ping");
    let (_, d) = fp_seal_send(&mut fa, p.now, &pkt);
    assert_eq!(fp_deliver(&mut fb, p.now, a_addr(), &d), Ok(pkt));
    fa.end_batch();
    fb.end_batch();
    p.b.fold_activity(p.now);
    assert_eq!(p.b.peer_stats(p.now, PEER_A).unwrap().last_rx_ago_ms, 0);
    // B: passive keepalive after keepalive_timeout.
    p.advance(Duration::from_millis(u64::from(t.keepalive_timeout_ms)));
    p.b.fold_activity(p.now);
    p.b.handle_timeout(p.now);
    let tx = transmits(&mut p.b, p.now);
    assert_eq!(tx.len(), 1, "passive keepalive");
    assert_eq!(tx[0].1.len(), 32);
    // A: no answer to data -> handshake after keepalive + rekey timeout (the keepalive
    // is not delivered).
    let _ = events(&mut p.a);
    p.a.fold_activity(p.now);
    p.a.handle_timeout(p.now);
    assert_eq!(need_handshakes(&events(&mut p.a)), 0, "not yet");
    p.advance(Duration::from_millis(u64::from(t.rekey_timeout_ms)));
    p.a.fold_activity(p.now);
    p.a.handle_timeout(p.now);
    assert_eq!(
        need_handshakes(&events(&mut p.a)),
        1,
        "handshake on no reply"
    );
    // Rekey-after-time seen by the worker (A is the initiator).
    p.advance(Duration::from_millis(u64::from(t.rekey_after_ms)));
    let _ = fp_seal_send(&mut fa, p.now, &v4("10.0.0.1", "10.0.0.2", b"old"));
    fa.end_batch();
    p.a.fold_activity(p.now);
    assert_eq!(need_handshakes(&events(&mut p.a)), 1, "rekey flag folded");
}

/// The owner and a worker thread receive the same stream of datagrams (every datagram
/// delivered to both, as a duplicate would be) while both also seal on the shared session:
/// every datagram reaches the TUN exactly once, and no two sealed datagrams share a counter.
#[test]
fn owner_and_worker_threads_share_sessions() {
    use std::sync::Arc;
    const N: usize = 3000;
    let mut p = Pair::established_with(2);
    let now = p.now;
    let stream: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..N)
            .map(|i| {
                let pkt = v4("10.0.0.1", "10.0.0.2", &(i as u32).to_le_bytes());
                seal(&mut p.a, now, &pkt).1
            })
            .collect(),
    );
    let mut fb = FastPath::new(p.b.shared(), 1);
    let worker = {
        let stream = Arc::clone(&stream);
        std::thread::spawn(move || {
            let (mut got, mut sent) = (Vec::new(), Vec::new());
            for (i, d) in stream.iter().enumerate() {
                if let Ok(inner) = fp_deliver(&mut fb, now, a_addr(), d) {
                    got.push(inner);
                }
                let (_, out) = fp_seal_send(&mut fb, now, &v4("10.0.0.2", "10.0.0.1", b"w"));
                sent.push(u64::from_le_bytes(out[8..16].try_into().expect("counter")));
                if i % 64 == 0 {
                    fb.end_batch();
                }
            }
            fb.end_batch();
            (got, sent)
        })
    };
    let (mut got, mut sent) = (Vec::new(), Vec::new());
    for d in stream.iter() {
        if let Ok(inner) = deliver(&mut p.b, now, a_addr(), d) {
            got.push(inner);
        }
        let (_, out) = seal(&mut p.b, now, &v4("10.0.0.2", "10.0.0.1", b"o"));
        sent.push(u64::from_le_bytes(out[8..16].try_into().expect("counter")));
    }
    let (wgot, wsent) = worker.join().expect("worker thread");
    got.extend(wgot);
    sent.extend(wsent);
    got.sort();
    let mut want: Vec<Vec<u8>> = (0..N)
        .map(|i| v4("10.0.0.1", "10.0.0.2", &(i as u32).to_le_bytes()))
        .collect();
    want.sort();
    assert_eq!(got, want, "every datagram delivered exactly once");
    sent.sort_unstable();
    sent.dedup();
    assert_eq!(sent.len(), 2 * N, "no send counter used twice");
    let sb = p.b.peer_stats(now, PEER_A).unwrap();
    assert_eq!(sb.rx_packets, N as u64 + 1, "+ the confirming keepalive");
    assert_eq!(sb.tx_packets, 2 * N as u64);
}

#[path = "tests_filter.rs"]
mod filter;

#[path = "tests_timers.rs"]
mod timers;
