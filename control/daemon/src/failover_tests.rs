//! The failover cores on a virtual clock (`t0 + offset`, never a sleep).

use super::*;
use tm_coord::tm_cluster::{Origin, Stamp};

/// The coordinator client's connect timeout: a poll to an address that swallows packets
/// fails after this long.
use tm_coord::CONNECT_TIMEOUT;

/// A version vector from `(origin, wall_ms)` pairs.
pub(super) fn vv(stamps: &[(u64, u64)]) -> VersionVector {
    let mut v = VersionVector::default();
    for (o, ms) in stamps {
        v.observe(Stamp {
            wall_ms: *ms,
            logical: 0,
            origin: Origin(*o),
        });
    }
    v
}

/// A netmap naming coordinators `(name, mesh IP, endpoint host, api)`.
pub(super) fn netmap(
    version: u64,
    v: Option<VersionVector>,
    coords: &[(&str, &str, &str, &str)],
) -> wire::Netmap {
    let peers: Vec<serde_json::Value> = coords
        .iter()
        .map(|(name, ip, host, api)| {
            let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
            serde_json::json!({"name": name, "public_key": key, "mesh_ip": ip,
                "endpoints": [format!("{host}:51820")], "is_coordinator": true, "api": api})
        })
        .collect();
    let mut nm: wire::Netmap = serde_json::from_value(serde_json::json!({
        "version": version, "peers": peers, "dns": {"domain": "mesh", "aliases": {}}
    }))
    .expect("netmap");
    nm.vv = v;
    nm
}

fn two_coordinators() -> wire::Netmap {
    netmap(
        7,
        Some(vv(&[(1, 100), (2, 100)])),
        &[
            ("ca", "100.64.0.1", "192.0.2.1", ":8443"),
            ("cb", "100.64.0.2", "192.0.2.2", ":8443"),
        ],
    )
}

/// A member polls coordinator `ca` (reached at its endpoint) when `ca` dies (its address
/// swallows packets). The connect times out after 3 s; the member skips `ca`'s mesh address
/// (as dead as the first) and `cb` answers at once (`since` dropped): applied within 5 s.
/// Without the skip it would try `ca`'s second address and take 6 s.
#[test]
fn a_dead_coordinator_is_left_for_another_within_5_s() {
    let t0 = Instant::now();
    let mut coords = Coordinators::new("192.0.2.1:8443", &[]);
    let mut feed = Feed::default();
    let first = two_coordinators();
    feed.start(&first);
    coords.learn(&first);
    assert_eq!(feed.since(), Some(7), "a long poll from the version held");
    let dead = coords.current().to_owned();
    // The poll to the dead coordinator: its connect gives up after CONNECT_TIMEOUT.
    let mut now = t0 + CONNECT_TIMEOUT;
    let next = coords.fail_over();
    assert_eq!(next.as_deref(), Some("192.0.2.2:8443"));
    assert_ne!(coords.current(), dead);
    let at = feed.on_error(now, next.is_some(), coords.known().len());
    assert_eq!(at, now, "another coordinator is tried at once");
    assert_eq!(feed.since(), None, "asked without since: answered at once");
    now = at + Duration::from_millis(20);
    let from_b = netmap(3, Some(vv(&[(1, 100), (2, 100)])), &[]);
    assert_eq!(feed.on_netmap(now, &from_b), Verdict::Apply);
    assert!(now - t0 >= CONNECT_TIMEOUT && now - t0 <= Duration::from_secs(5));
    assert_eq!(
        feed.since(),
        Some(3),
        "long polls on cb's version from here"
    );
}

/// Every coordinator dead: one round over all of them, then a backoff doubling from 250 ms to
/// 5 s between rounds (never a tight loop, never more than 5 s + a connect timeout away).
#[test]
fn with_every_coordinator_dead_rounds_back_off_up_to_5_s() {
    let t0 = Instant::now();
    let mut coords = Coordinators::new("192.0.2.1:8443", &["192.0.2.2:8443".into()]);
    let mut feed = Feed::default();
    let mut now = t0;
    let mut waits = Vec::new();
    let mut tried = Vec::new();
    for _ in 0..16 {
        tried.push(coords.current().to_owned());
        now += CONNECT_TIMEOUT;
        let next = coords.fail_over();
        let at = feed.on_error(now, next.is_some(), coords.known().len());
        waits.push(at - now);
        now = at;
    }
    let ms = Duration::from_millis;
    assert_eq!(
        &waits[..12],
        &[
            ms(0),
            ms(250),
            ms(0),
            ms(500),
            ms(0),
            ms(1000),
            ms(0),
            ms(2000),
            ms(0),
            ms(4000),
            ms(0),
            ms(5000)
        ]
    );
    assert!(waits.iter().all(|w| *w <= BACKOFF_MAX));
    // Alternating between the two.
    assert!(tried.windows(2).all(|w| w[0] != w[1]), "{tried:?}");
    // An answer resets the backoff.
    assert_eq!(feed.on_netmap(now, &two_coordinators()), Verdict::Apply);
    let next = coords.fail_over();
    feed.on_error(now, next.is_some(), 2);
    assert_eq!(feed.on_error(now, true, 2), now + ms(250));
    // A single known coordinator: every error waits.
    let mut alone = Coordinators::new("192.0.2.1:8443", &[]);
    let mut f = Feed::default();
    assert_eq!(alone.fail_over(), None);
    assert_eq!(f.on_error(now, false, 1), now + ms(250));
}

/// A netmap whose version vector does not dominate the last applied one (a coordinator that
/// lags, or one that saw other writes but not all of ours) is never applied, whatever its
/// version number; it is asked again 250 ms later without `since`.
#[test]
fn a_netmap_whose_vector_does_not_dominate_is_never_applied() {
    let t0 = Instant::now();
    let mut feed = Feed::default();
    feed.start(&netmap(50, Some(vv(&[(1, 500), (2, 300)])), &[]));
    // The coordinator in use dies; the member moves on.
    feed.on_error(t0, true, 2);
    let lagging = netmap(999, Some(vv(&[(1, 500), (2, 299)])), &[]);
    assert_eq!(
        feed.on_netmap(t0, &lagging),
        Verdict::Behind(t0 + BEHIND_RETRY)
    );
    assert_eq!(feed.since(), None);
    let concurrent = netmap(1000, Some(vv(&[(1, 400), (2, 900)])), &[]);
    assert_eq!(
        feed.on_netmap(t0, &concurrent),
        Verdict::Behind(t0 + BEHIND_RETRY)
    );
    let missing_origin = netmap(1001, Some(vv(&[(2, 900)])), &[]);
    assert!(matches!(
        feed.on_netmap(t0, &missing_origin),
        Verdict::Behind(_)
    ));
    assert_eq!(feed.seen(), Some(&vv(&[(1, 500), (2, 300)])), "unchanged");
    // Caught up (equal counts as dominating): applied, even with a smaller version number
    // (versions are per coordinator).
    let caught_up = netmap(4, Some(vv(&[(1, 500), (2, 300)])), &[]);
    assert_eq!(feed.on_netmap(t0, &caught_up), Verdict::Apply);
    assert_eq!(feed.on_netmap(t0, &caught_up), Verdict::Unchanged);
    let ahead = netmap(5, Some(vv(&[(1, 500), (2, 301), (3, 1)])), &[]);
    assert_eq!(feed.on_netmap(t0, &ahead), Verdict::Apply);
    assert_eq!(feed.seen(), Some(&vv(&[(1, 500), (2, 301), (3, 1)])));
    // Now the old caught-up one is behind.
    assert!(matches!(feed.on_netmap(t0, &caught_up), Verdict::Behind(_)));
}

#[test]
fn the_coordinator_list_is_learned_from_netmaps() {
    let mut coords = Coordinators::new("192.0.2.1:8443", &["192.0.2.1:8443".into()]);
    assert_eq!(coords.known(), ["192.0.2.1:8443"], "duplicates dropped");
    assert_eq!(coords.fail_over(), None, "nothing else known yet");
    let nm = netmap(
        1,
        None,
        &[
            ("ca", "100.64.0.1", "192.0.2.1", ":8443"),
            ("cb", "100.64.0.2", "192.0.2.2", "cb.example.net:9443"),
            ("cc", "100.64.0.3", "192.0.2.3", ":8443"),
        ],
    );
    coords.learn(&nm);
    coords.learn(&nm);
    assert_eq!(
        coords.known(),
        [
            "192.0.2.1:8443",
            "100.64.0.1:8443",
            "cb.example.net:9443",
            "192.0.2.3:8443",
            "100.64.0.3:8443"
        ]
    );
    // ca fails: cb next (ca's mesh address skipped); cb fails: cc; cc fails: back to ca.
    assert_eq!(coords.fail_over().as_deref(), Some("cb.example.net:9443"));
    assert_eq!(coords.fail_over().as_deref(), Some("192.0.2.3:8443"));
    assert_eq!(coords.fail_over().as_deref(), Some("192.0.2.1:8443"));
    // Bounded.
    let many: Vec<(String, String, String)> = (0..40)
        .map(|i| {
            (
                format!("c{i}"),
                format!("100.64.1.{i}"),
                format!("198.51.100.{i}"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str, &str, &str)> = many
        .iter()
        .map(|(n, ip, h)| (n.as_str(), ip.as_str(), h.as_str(), ":8443"))
        .collect();
    coords.learn(&netmap(2, None, &refs));
    assert_eq!(coords.known().len(), MAX_COORDINATORS);
}
