//! A lagging coordinator holds a netmap poll (issue 17): a member's poll carries the version
//! vector of the netmap it applied last; a coordinator that has not seen as much answers only
//! once it has caught up, or, after its long-poll limit, 503 `lagging` so the member asks
//! another one.

use std::time::{Duration, Instant};

use tm_coord::{JoinClient, JoinToken};

mod common;
use common::{key, tmpdir};
mod pair;
use pair::*;

/// A member registered through `a`, with a client for `a` and one for `b`.
async fn member(a: &Coord, b: &Coord, token: &str) -> (JoinClient, JoinClient) {
    let t = JoinToken::parse(token).expect("token");
    let mut ca = JoinClient::new(a.public.addr.to_string(), t).expect("client");
    ca.register(&key(), "m", &[]).await.expect("m joins via A");
    let cb = ca.for_addr(b.public.addr.to_string());
    (ca, cb)
}

/// Polls until `c` has `n` long polls waiting (or panics after 5 s).
async fn waiting(c: &Coord, n: usize) {
    let t0 = Instant::now();
    while c.coord.long_polls() != n {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{} long polls, want {n}",
            c.coord.long_polls()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_is_held_by_a_lagging_coordinator_until_it_has_caught_up() {
    let dir = tmpdir("held");
    let (mut a, mut b, token) = two(&dir).await;
    let (ca, cb) = member(&a, &b, &token).await;
    converged(&a, &b, "after m joined").await;
    // In sync: a poll with A's vector is answered by B at once.
    let nm = ca.netmap(None).await.expect("netmap from A");
    let mut last = None;
    let t0 = Instant::now();
    let got = cb
        .netmap_held(None, nm.vv.as_ref(), &mut last)
        .await
        .expect("B answers")
        .clone();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(got.vv.as_ref().unwrap().dominates(nm.vv.as_ref().unwrap()));

    // Cut off, B misses a tag set on A; m applied A's netmap with it.
    a.partition().await;
    b.partition().await;
    a.coord
        .tag_node("m", "tag:new", "local root")
        .expect("tag on A");
    let held = ca
        .netmap(None)
        .await
        .expect("netmap from A")
        .vv
        .expect("vv");
    assert!(
        !b.coord.netmap().vv.unwrap().dominates(&held),
        "B is behind"
    );
    let poll = tokio::spawn(async move {
        let mut last = None;
        cb.netmap_held(None, Some(&held), &mut last)
            .await
            .cloned()
            .map(|nm| (nm, held))
    });
    waiting(&b, 1).await;
    // Held while B cannot catch up (it would have answered at once without the vector).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "B answered before catching up");
    a.heal().await;
    b.heal().await;
    let (nm, held) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("answered after the heal")
        .expect("task")
        .expect("B answers once caught up");
    assert!(nm.vv.as_ref().unwrap().dominates(&held), "{:?}", nm.vv);
    assert_eq!(nm.peer("m").expect("m").tags, ["tag:new"]);
    waiting(&b, 0).await;
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_does_not_catch_up_within_the_limit_answers_lagging() {
    let dir = tmpdir("lagging");
    let (mut a, mut b, token) = two_tuned(&dir, |c| {
        c.cluster_sync = Duration::from_millis(100);
        c.long_poll = Duration::from_millis(800);
    })
    .await;
    let (ca, cb) = member(&a, &b, &token).await;
    converged(&a, &b, "after m joined").await;
    a.partition().await;
    b.partition().await;
    a.coord
        .tag_node("m", "tag:new", "local root")
        .expect("tag on A");
    let held = ca
        .netmap(None)
        .await
        .expect("netmap from A")
        .vv
        .expect("vv");
    let t0 = Instant::now();
    let mut last = None;
    let e = cb
        .netmap_held(Some(1), Some(&held), &mut last)
        .await
        .expect_err("B cannot catch up while cut off");
    let took = t0.elapsed();
    assert!(e.is_lagging(), "{e}");
    assert!(e.to_string().contains("ask another coordinator"), "{e}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    // A malformed vector is refused as such.
    let e = cb
        .request_raw("GET", "/v1/netmap?vv=zz-1-1", b"", true)
        .await
        .expect("answer");
    assert_eq!(e.0, 400, "{}", String::from_utf8_lossy(&e.1));
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
