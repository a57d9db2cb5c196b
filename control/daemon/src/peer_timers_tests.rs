//! The path/handshake timer core on a virtual clock: `base + offset`, advanced by the test,
//! never by sleeping.

use super::*;

const T: Timing = Timing {
    rekey_timeout: Duration::from_secs(5),
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn direct() -> SocketAddr {
    "192.0.2.7:51820".parse().unwrap()
}

fn relayed() -> SocketAddr {
    "127.0.0.1:40001".parse().unwrap()
}

const MESH: PathView = PathView {
    dynamic: true,
    on_relay: false,
    has_candidates: true,
};

#[test]
fn a_peer_without_a_session_goes_to_the_relay_after_relay_after_not_before() {
    let t0 = Instant::now();
    let mut p = PeerTimers::default();
    p.new_attempt(t0);
    assert_eq!(T.relay_after(), Duration::from_secs(11));
    assert_eq!(p.path_due(t0 + T.relay_after() - ms(1), T, MESH), None);
    assert_eq!(
        p.path_due(t0 + T.relay_after(), T, MESH),
        Some(Action::ToRelay)
    );
    // Configured peers never use the relay.
    let fixed = PathView {
        dynamic: false,
        ..MESH
    };
    assert_eq!(p.path_due(t0 + Duration::from_secs(60), T, fixed), None);
    // A session (even one the peer started) ends the attempt: no relay.
    p.established(t0 + ms(300), direct(), false, false);
    assert_eq!(p.path_due(t0 + Duration::from_secs(60), T, MESH), None);
}

#[test]
fn a_relayed_peer_probes_its_direct_path_every_probe_every() {
    let t0 = Instant::now();
    let mut p = PeerTimers::default();
    p.moved_to_relay(t0);
    let relayed_view = PathView {
        on_relay: true,
        ..MESH
    };
    let mut probes = Vec::new();
    let mut off = Duration::ZERO;
    while off <= Duration::from_secs(100) {
        let now = t0 + off;
        if let Some(a) = p.path_due(now, T, relayed_view) {
            assert_eq!(a, Action::Probe);
            p.probed(now);
            probes.push(off);
        }
        off += ms(100);
    }
    let every = T.probe_every();
    assert_eq!(every, Duration::from_secs(20));
    let want: Vec<Duration> = (1..=5).map(|i| every * i).collect();
    assert_eq!(probes, want);
    // Without direct candidates there is nothing to probe.
    let none = PathView {
        has_candidates: false,
        ..relayed_view
    };
    assert_eq!(p.path_due(t0 + Duration::from_secs(500), T, none), None);
}

#[test]
fn retries_every_rekey_timeout_plus_jitter_then_gives_up_after_rekey_attempt() {
    let t0 = Instant::now();
    let mut p = PeerTimers::default();
    p.new_attempt(t0);
    p.initiating(t0, false);
    p.sent_initiation(t0, T, ms(0));
    let mut sent = vec![t0];
    let mut now;
    let mut jitter = 0u64;
    let gave_up_at = loop {
        now = p
            .deadline()
            .expect("a retry is always scheduled while trying");
        // Nothing fires before its deadline.
        assert_eq!(p.clone().retry_due(now - ms(1)), None);
        match p.retry_due(now) {
            Some(Action::Initiate) => {
                p.initiating(now, false);
                jitter = (jitter + 111) % 334;
                p.sent_initiation(now, T, ms(jitter));
                sent.push(now);
            }
            Some(Action::GiveUp) => break now,
            other => panic!("unexpected {other:?}"),
        }
        assert!(sent.len() < 100, "never gave up");
    };
    for w in sent.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= T.rekey_timeout && gap < T.rekey_timeout + ms(334),
            "{gap:?}"
        );
    }
    assert!(sent.iter().all(|s| *s < t0 + REKEY_ATTEMPT));
    assert!(gave_up_at >= t0 + REKEY_ATTEMPT);
    assert!(gave_up_at < t0 + REKEY_ATTEMPT + T.rekey_timeout + ms(334));
    // 90 s at one initiation every ~5 s.
    assert!(
        (16..=19).contains(&sent.len()),
        "{} initiations",
        sent.len()
    );
    // Given up: no more timers, and the relay clock stopped.
    assert_eq!(p.deadline(), None);
    assert!(!p.wanted());
    assert_eq!(p.path_due(now + Duration::from_secs(30), T, MESH), None);
}

#[test]
fn our_initiation_answered_ends_the_attempt_the_peers_does_not_stop_our_retries() {
    let t0 = Instant::now();
    let mut p = PeerTimers::default();
    p.new_attempt(t0);
    p.sent_initiation(t0, T, ms(10));
    // The peer's initiation answered by us: our own retry still stands (its keys are in
    // place, but our in-flight handshake is not answered).
    p.established(t0 + ms(20), direct(), false, false);
    assert_eq!(p.deadline(), Some(t0 + T.rekey_timeout + ms(10)));
    assert_eq!(p.direct, Some((direct(), t0 + ms(20))));
    // Our initiation answered through the relay: no retries, and no direct path recorded.
    let mut q = PeerTimers::default();
    q.new_attempt(t0);
    q.sent_initiation(t0, T, ms(10));
    q.established(t0 + ms(40), relayed(), true, true);
    assert_eq!(q.deadline(), None);
    assert!(!q.wanted());
    assert_eq!(q.direct, None);
}

#[test]
fn rekey_requests_start_one_handshake_per_rekey_timeout() {
    let t0 = Instant::now();
    let mut p = PeerTimers::default();
    assert!(p.need_handshake(t0, T, false), "first request initiates");
    p.sent_initiation(t0, T, ms(0));
    assert!(p.wanted());
    assert!(!p.need_handshake(t0 + ms(100), T, true), "one is in flight");
    assert!(
        p.need_handshake(t0 + ms(100), T, false),
        "nothing in flight (dataplane restarted): initiate"
    );
    assert!(p.need_handshake(t0 + T.rekey_timeout, T, true));
    // Each request extends the attempt.
    p.need_handshake(t0 + Duration::from_secs(50), T, true);
    assert_eq!(
        p.want_until,
        Some(t0 + Duration::from_secs(50) + REKEY_ATTEMPT)
    );
}

#[test]
fn a_roam_to_the_relay_right_after_a_direct_handshake_is_ignored() {
    let t0 = Instant::now();
    let mut p = PeerTimers::default();
    assert_eq!(p.keep_direct(t0, T, true), None, "no direct path known");
    p.established(t0, direct(), false, true);
    assert_eq!(p.keep_direct(t0 + ms(500), T, true), Some(direct()));
    assert_eq!(p.keep_direct(t0 + ms(500), T, false), None, "a direct roam");
    assert_eq!(
        p.keep_direct(t0 + T.roam_grace() - ms(1), T, true),
        Some(direct())
    );
    assert_eq!(p.keep_direct(t0 + T.roam_grace(), T, true), None);
}

/// One peer driven the way the node loop drives it (a tick at most every second, at each
/// retry deadline and at each delivery), over a simulated path: the direct path is dead until
/// `heal`, the relay always works. Returns the time it went to the relay and the time it came
/// back to a direct session.
fn drive(heal: Duration, until: Duration) -> (Option<Duration>, Option<Duration>, u32) {
    let t0 = Instant::now();
    let mut p = PeerTimers::default();
    let mut on_relay = false;
    let mut to_relay_at = None;
    let mut back_at = None;
    let mut relay_moves = 0;
    // In-flight handshake: (arrives at, answered from the relay).
    let mut inflight: Option<(Instant, bool)>;
    let send = |now: Instant, probe: bool, on_relay: bool| -> Option<(Instant, bool)> {
        let via_relay = on_relay && !probe;
        if via_relay {
            Some((now + ms(60), true))
        } else if now - t0 >= heal {
            Some((now + ms(20), false))
        } else {
            None
        }
    };
    p.new_attempt(t0);
    p.initiating(t0, false);
    p.sent_initiation(t0, T, ms(0));
    inflight = send(t0, false, on_relay);
    let mut now = t0;
    while now - t0 < until {
        let mut next = now + Duration::from_secs(1);
        for d in [p.deadline(), inflight.map(|i| i.0)].into_iter().flatten() {
            next = next.min(d);
        }
        now = next.max(now);
        if let Some((at, via_relay)) = inflight {
            if at <= now {
                inflight = None;
                p.established(
                    now,
                    if via_relay { relayed() } else { direct() },
                    via_relay,
                    true,
                );
                if on_relay && !via_relay {
                    on_relay = false;
                    back_at.get_or_insert(now - t0);
                }
            }
        }
        if p.retry_due(now) == Some(Action::Initiate) {
            p.initiating(now, false);
            p.sent_initiation(now, T, ms(50));
            inflight = inflight.or(send(now, false, on_relay));
        }
        let view = PathView { on_relay, ..MESH };
        match p.path_due(now, T, view) {
            Some(Action::ToRelay) => {
                on_relay = true;
                relay_moves += 1;
                to_relay_at.get_or_insert(now - t0);
                p.moved_to_relay(now);
                p.initiating(now, false);
                p.sent_initiation(now, T, ms(50));
                inflight = send(now, false, on_relay);
            }
            Some(Action::Probe) => {
                p.probed(now);
                p.sent_initiation(now, T, ms(50));
                inflight = inflight.or(send(now, true, on_relay));
            }
            _ => {}
        }
    }
    (to_relay_at, back_at, relay_moves)
}

#[test]
fn simulated_dead_direct_path_goes_to_the_relay_and_back_once_it_heals() {
    let heal = Duration::from_secs(60);
    let (to_relay, back, moves) = drive(heal, Duration::from_secs(150));
    let to_relay = to_relay.expect("went to the relay");
    // Decided at the first tick at or after relay_after (ticks are at most 1 s apart).
    assert!(to_relay >= T.relay_after() && to_relay <= T.relay_after() + Duration::from_secs(1));
    let back = back.expect("came back to the direct path");
    assert!(back >= heal, "{back:?}");
    assert!(
        back <= heal + T.probe_every() + Duration::from_secs(1),
        "{back:?}"
    );
    assert_eq!(
        moves, 1,
        "a peer with a session does not go back to the relay"
    );
}

#[test]
fn simulated_working_direct_path_never_uses_the_relay() {
    let (to_relay, back, moves) = drive(Duration::ZERO, Duration::from_secs(150));
    assert_eq!((to_relay, back, moves), (None, None, 0));
}
