//! `poll_timeout` answers from a bound instead of walking every peer (issue 16's cost). The
//! bound must never be later than a real deadline: checked after every step of a long run
//! with traffic, keepalives, persistent keepalives and session expiry, and the run driven
//! the way the I/O loop drives it (`handle_timeout` only when `poll_timeout` has passed)
//! produces exactly what a run calling `handle_timeout` at every step produces.

use super::*;

/// One side's observable output at one step: datagrams sent and events.
type Out = (Vec<(SocketAddr, Vec<u8>)>, Vec<DpMsg>);

/// Runs 400 s of virtual time in 50 ms steps. A has a persistent keepalive toward B; A sends
/// to B every 7 s during the first minute, B answers every other time. `gated`: timers run
/// only when `poll_timeout` says so (as the I/O loop does). Returns both sides' outputs.
fn run(gated: bool) -> Vec<(Out, Out)> {
    let mut p = Pair::established();
    // A persistent keepalive of 3 s on A's side.
    add_peer(&mut p.a, p.now, PEER_B, &["10.0.0.2/32"], b_addr(), 3);
    let step = Duration::from_millis(50);
    let mut log = Vec::new();
    for i in 0..8000u32 {
        p.advance(step);
        let ms = u64::from(i) * 50;
        for dp in [&mut p.a, &mut p.b] {
            assert!(
                dp.timer_bound() <= dp.earliest_deadline(),
                "step {i}: the timer bound is later than a deadline"
            );
            let bound = dp.poll_timeout().unwrap();
            if !gated || bound <= p.now {
                dp.fold_activity(p.now);
                dp.handle_timeout(p.now);
            }
        }
        let mut a_tx = transmits(&mut p.a, p.now);
        let mut b_tx = transmits(&mut p.b, p.now);
        if ms < 60_000 && ms % 7_000 == 0 {
            a_tx.push(seal(&mut p.a, p.now, &v4("10.0.0.1", "10.0.0.2", b"ping")));
            if ms % 14_000 == 0 {
                b_tx.push(seal(&mut p.b, p.now, &v4("10.0.0.2", "10.0.0.1", b"pong")));
            }
        }
        for (_, d) in &a_tx {
            let _ = deliver(&mut p.b, p.now, a_addr(), d);
        }
        for (_, d) in &b_tx {
            let _ = deliver(&mut p.a, p.now, b_addr(), d);
        }
        for dp in [&p.a, &p.b] {
            assert!(dp.timer_bound() <= dp.earliest_deadline(), "step {i}");
        }
        let ea: Vec<DpMsg> = events(&mut p.a)
            .into_iter()
            .filter(|m| !matches!(m, DpMsg::Counters { .. }))
            .collect();
        let eb: Vec<DpMsg> = events(&mut p.b)
            .into_iter()
            .filter(|m| !matches!(m, DpMsg::Counters { .. }))
            .collect();
        log.push(((a_tx, ea), (b_tx, eb)));
    }
    log
}

#[test]
fn bounded_poll_timeout_fires_every_timer_on_time() {
    let every_step = run(false);
    let gated = run(true);
    let count = |l: &[(Out, Out)], f: &dyn Fn(&Out) -> usize| -> usize {
        l.iter().map(|(a, b)| f(a) + f(b)).sum()
    };
    let keepalives = |o: &Out| o.0.iter().filter(|(_, d)| d.len() == 32).count();
    let expiries = |o: &Out| {
        o.1.iter()
            .filter(|m| matches!(m, DpMsg::SessionExpired { .. }))
            .count()
    };
    // The scenario exercises what it claims to.
    assert!(count(&every_step, &keepalives) > 50, "keepalives sent");
    assert!(count(&every_step, &expiries) >= 2, "sessions expired");
    for (i, (x, y)) in every_step.iter().zip(&gated).enumerate() {
        assert_eq!(x, y, "step {i}: gated timers differ");
    }
}

#[test]
fn poll_timeout_does_not_walk_peers() {
    // 1,000 peers: poll_timeout is O(1); the bound is still below every deadline.
    let now = Instant::now();
    let mut dp = Dataplane::new(DpConfig { mtu: MTU }, now);
    dp.handle_ctl(now, CtlMsg::SetTimers(Timers::default()));
    for i in 0..1000u32 {
        let a = format!("10.1.{}.{}/32", i / 250, 1 + i % 250);
        add_peer(&mut dp, now, 10 + i, &[&a], b_addr(), (1 + i % 20) as u16);
    }
    assert!(dp.timer_bound() <= dp.earliest_deadline());
    let t0 = std::time::Instant::now();
    for _ in 0..1_000_000 {
        std::hint::black_box(dp.poll_timeout());
    }
    // A walk of 1,000 peers a million times would take seconds; the bound takes ~1 ms.
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
}
