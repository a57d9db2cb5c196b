//! Two coordinators of one mesh over real TLS (issue 17): a coordinator joins with a
//! coordinator token and receives the CA and the records; both admit nodes, each sees the
//! other's joins and tags; a coordinator restarted after missing changes catches up; a
//! partition during which both sides admit a node called `web` heals into unique names and
//! addresses; members cannot speak the replication API; token kinds are enforced.

use std::time::{Duration, Instant};

use tm_coord::{Error, JoinClient, JoinToken};
use tm_noise::PrivateKey;
use tokio::net::TcpListener;

mod common;
use common::{key, tmpdir};
mod pair;
use pair::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_coordinator_admits_and_both_converge_then_a_restart_catches_up() {
    let dir = tmpdir("two");
    let (a, b, token) = two(&dir).await;
    assert_eq!(b.coord.token(), token, "B serves the mesh's default token");
    converged(&a, &b, "after B joined").await;
    // Members join through either coordinator, with the same token.
    a.join(&token, "alpha", &key()).await.expect("alpha via A");
    b.join(&token, "beta", &key()).await.expect("beta via B");
    converged(&a, &b, "after two joins").await;
    let names: Vec<String> = a.names().into_iter().map(|n| n.0).collect();
    assert_eq!(names, ["alpha", "beta", "hub-a", "hub-b"]);
    // A tag set on B is in A's decisions and netmaps.
    b.coord
        .tag_node("beta", "tag:web", "local root")
        .expect("tag on B");
    converged(&a, &b, "after a tag").await;
    let beta = a.coord.node_by_name("beta").expect("beta on A");
    assert_eq!(beta.tags, ["tag:web"]);
    // The audit entry written on B is in A's audit log too.
    assert_eq!(
        actions(&a, "beta"),
        ["node.tag"],
        "{:?}",
        a.coord.audit_log()
    );
    assert!(a.coord.netmap().peer("beta").expect("in A's netmap").tags == ["tag:web"]);
    let status = a.coord.cluster_status();
    assert_eq!(status.len(), 2);
    assert!(
        status
            .iter()
            .any(|p| p.name == "hub-b" && p.last_sync_ms.is_some() && p.error.is_none()),
        "{status:?}"
    );

    // A stops; B admits a node and untags beta; A restarts from its own disk and catches up.
    let adir = dir.join("a");
    let akey_cfg = config("hub-a", a.cluster_addr);
    let a_addr = a.cluster_addr;
    let a_static = a.key.clone();
    a.stop().await;
    b.join(&token, "gamma", &key())
        .await
        .expect("gamma via B while A is down");
    b.coord
        .untag_node("beta", "tag:web", "local root")
        .expect("untag on B");
    let a = Coord::open(
        &adir,
        akey_cfg,
        a_static,
        TcpListener::bind(a_addr).await.unwrap(),
    )
    .await;
    converged(&a, &b, "after A's restart").await;
    // A's audit log survived its restart and caught up with what B audited meanwhile.
    assert_eq!(actions(&a, "beta"), ["node.tag", "node.untag"]);
    assert_eq!(a.coord.audit_log().unwrap(), b.coord.audit_log().unwrap());
    assert!(a.coord.node_by_name("gamma").is_some());
    assert!(a.coord.node_by_name("beta").unwrap().tags.is_empty());
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_into_unique_names_and_addresses() {
    let dir = tmpdir("part");
    let (mut a, mut b, token) = two(&dir).await;
    converged(&a, &b, "before the partition").await;
    a.partition().await;
    b.partition().await;
    let (k1, k2) = (key(), key());
    let r1 = a.join(&token, "web", &k1).await.expect("web via A");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r2 = b.join(&token, "web", &k2).await.expect("another web via B");
    assert_ne!(
        a.coord.state_digest(),
        b.coord.state_digest(),
        "the sides diverged"
    );
    a.heal().await;
    b.heal().await;
    converged(&a, &b, "after the heal").await;
    // The earlier registration keeps the name; the other is renamed; addresses are unique.
    let first = a.coord.node_by_key(&k1.public_key()).expect("first web");
    let second = a.coord.node_by_key(&k2.public_key()).expect("second web");
    assert_eq!(first.name, "web");
    assert_eq!(second.name, "web-2");
    let ips: std::collections::BTreeSet<_> = a.names().into_iter().map(|n| n.1).collect();
    assert_eq!(
        ips.len(),
        a.names().len(),
        "addresses unique: {:?}",
        a.names()
    );
    let _ = (r1, r2);
    // The rename is in the audit log once, on both coordinators (each resolved it).
    for c in [&a, &b] {
        let log = c.coord.audit_log().unwrap();
        let renames: Vec<_> = log
            .iter()
            .filter(|e| e.action == "conflict.resolve" && e.target == "web-2")
            .collect();
        assert_eq!(renames.len(), 1, "{log:?}");
        assert!(renames[0].detail.contains("registered earlier"), "{log:?}");
    }
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_cannot_replicate_and_token_kinds_are_enforced() {
    let dir = tmpdir("kinds");
    let (a, b, token) = two(&dir).await;
    // A member's certificate on the replication API: refused.
    let k = key();
    let t = JoinToken::parse(&token).unwrap();
    let mut m = JoinClient::new(a.public.addr.to_string(), t.clone()).unwrap();
    m.register(&k, "mallory", &[])
        .await
        .expect("mallory joins as a member");
    let e = m
        .cluster(&tm_coord::tm_cluster::Msg::Push { records: vec![] })
        .await
        .expect_err("a member cannot replicate");
    match e {
        Error::Refused { status, message } => {
            assert_eq!(status, 403, "{message}");
            assert!(message.contains("not a coordinator"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // The member token cannot admit a coordinator ...
    let mut c = JoinClient::new(a.public.addr.to_string(), t).unwrap();
    c.join_as_coordinator(None);
    let e = c
        .register(&key(), "hub-x", &[])
        .await
        .expect_err("member token as coordinator");
    assert!(e.to_string().contains("token create --coordinator"), "{e}");
    // ... and a coordinator token cannot admit a member.
    let ct = coordinator_token(&a.coord);
    let e = a
        .join(&ct, "eve", &key())
        .await
        .expect_err("coordinator token as member");
    assert!(e.to_string().contains("admits coordinators only"), "{e}");
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opens `node`'s relay connection to `c` (the node registers there first).
async fn relayed(c: &Coord, token: &str, name: &str, k: &PrivateKey) -> tm_coord::RelayConn {
    let t = JoinToken::parse(token).expect("token text");
    let mut j = JoinClient::new(c.public.addr.to_string(), t).expect("client");
    j.register(k, name, &[]).await.expect("register");
    j.relay().await.expect("relay connection")
}

/// Receives the next frame within 10 s.
async fn next_frame(r: &mut tm_coord::RelayConn) -> (tm_noise::PublicKey, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(10), r.recv())
        .await
        .expect("a frame within 10 s")
        .expect("frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_relayed_through_different_coordinators_reach_each_other() {
    let dir = tmpdir("relay2");
    let (a, b, token) = two(&dir).await;
    let (kx, ky) = (key(), key());
    let mut x = relayed(&a, &token, "xray", &kx).await;
    let mut y = relayed(&b, &token, "yank", &ky).await;
    converged(&a, &b, "after the joins").await;
    // The links between the coordinators come up within a few seconds; until then frames
    // to a node on the other coordinator are dropped as offline, as UDP would lose them.
    let t0 = Instant::now();
    loop {
        x.send(&ky.public_key(), b"hello from x").await.unwrap();
        if let Ok(Ok((src, p))) = tokio::time::timeout(Duration::from_millis(200), y.recv()).await {
            assert_eq!(
                src,
                kx.public_key(),
                "the source is x, set by A from its certificate"
            );
            assert_eq!(p, b"hello from x");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no frame crossed the coordinators in 10 s: A {:?} B {:?}",
            a.coord.relay_stats(),
            b.coord.relay_stats()
        );
    }
    // Answers cross the other way as well.
    for i in 0..20u8 {
        y.send(&kx.public_key(), &[i; 100]).await.unwrap();
        let (src, p) = next_frame(&mut x).await;
        assert_eq!((src, p), (ky.public_key(), vec![i; 100]));
    }
    let (sa, sb) = (a.coord.relay_stats(), b.coord.relay_stats());
    assert_eq!(sa.peer_links, 1, "{sa:?}");
    assert_eq!(sb.peer_links, 1, "{sb:?}");
    // With the link up, replication goes over it: no more requests per message.
    let posts = (sa.cluster_posts, sb.cluster_posts);
    for i in 0..10 {
        a.coord
            .tag_node("yank", &format!("tag:t{i}"), "local root")
            .expect("tag on A");
    }
    converged(&a, &b, "after ten tags over the link").await;
    let (sa, sb) = (a.coord.relay_stats(), b.coord.relay_stats());
    assert_eq!(
        (sa.cluster_posts, sb.cluster_posts),
        posts,
        "A {sa:?} B {sb:?}"
    );
    assert!(sb.cluster_on_links >= 10, "{sb:?}");
    assert!(
        sb.forwarded >= 20 && sa.from_peers >= 20,
        "A {sa:?} B {sb:?}"
    );
    // A frame to a registered node connected nowhere is dropped where it arrives, once.
    let kz = key();
    a.join(&token, "zulu", &kz).await.expect("zulu joins");
    converged(&a, &b, "after zulu").await;
    let before = b.coord.relay_stats().dropped_offline;
    x.send(&kz.public_key(), b"nobody home").await.unwrap();
    let t0 = Instant::now();
    while b.coord.relay_stats().dropped_offline == before {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{:?}",
            b.coord.relay_stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        a.coord.relay_stats().from_peers,
        sa.from_peers,
        "B did not send it back to A"
    );
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_certificate_cannot_open_a_link_between_coordinators() {
    let dir = tmpdir("relaylink");
    let (a, b, token) = two(&dir).await;
    let t = JoinToken::parse(&token).unwrap();
    let mut m = JoinClient::new(a.public.addr.to_string(), t).unwrap();
    m.register(&key(), "mallory", &[])
        .await
        .expect("member joins");
    let e = m
        .relay_with_protocol("tm-coord-link/1")
        .await
        .expect_err("a member cannot speak for a coordinator");
    match e {
        Error::Refused { status, message } => {
            assert_eq!(status, 403, "{message}");
            assert!(message.contains("not a coordinator"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until `c` has completed an anti-entropy round with the coordinator `name` (it has
/// heard from it), or 10 s pass.
async fn synced(c: &Coord, name: &str) {
    let t0 = Instant::now();
    loop {
        let st = c.coord.cluster_status();
        if st
            .iter()
            .any(|p| p.name == name && p.last_sync_ms.is_some())
        {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no sync with {name}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `c`'s netmap marks the coordinator `name` unreachable.
fn unreachable(c: &Coord, name: &str) -> bool {
    c.coord
        .netmap()
        .peer(name)
        .expect("the coordinator is in the netmap")
        .unreachable
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_not_heard_from_is_marked_unreachable_until_it_is_back() {
    let dir = tmpdir("live");
    let (mut a, mut b, _) = two(&dir).await;
    converged(&a, &b, "after B joined").await;
    assert!(!unreachable(&a, "hub-b") && !unreachable(&b, "hub-a"));
    let mut versions = a.coord.subscribe();
    let v0 = *versions.borrow_and_update();
    synced(&a, "hub-b").await;
    a.partition().await;
    b.partition().await;
    // The window: 5 s plus two anti-entropy rounds (100 ms here) per coordinator.
    let t0 = Instant::now();
    while !unreachable(&a, "hub-b") {
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "hub-b not marked unreachable on A after 8 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not too eager: marked only once hub-b has been silent for the 5 s grace at least.
    let heard = a
        .coord
        .cluster_status()
        .into_iter()
        .find(|p| p.name == "hub-b")
        .and_then(|p| p.last_heard_ms)
        .expect("hub-b was heard before the partition");
    let silent_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - heard;
    assert!(
        silent_ms >= 5_000,
        "marked after {silent_ms} ms of silence: too eager"
    );
    assert!(
        *versions.borrow_and_update() > v0,
        "members' long polls wake for it"
    );
    assert!(
        !unreachable(&a, "hub-a"),
        "a coordinator always reaches itself"
    );
    a.heal().await;
    b.heal().await;
    let t0 = Instant::now();
    while unreachable(&a, "hub-b") || unreachable(&b, "hub-a") {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still unreachable after the heal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_default_token_is_served_by_every_coordinator_and_survives_their_restart() {
    let dir = tmpdir("rotate");
    let (a, b, old) = two(&dir).await;
    converged(&a, &b, "after B joined").await;
    let (_, new) = a
        .coord
        .rotate_token("local root", tm_coord::now_unix())
        .expect("rotate on A");
    assert_ne!(new, old);
    converged(&a, &b, "after the rotation").await;
    let t0 = Instant::now();
    while b.coord.token() != new {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "B still serves the old token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A node joins B with the new default token; the old one is refused there.
    b.join(&new, "nova", &key()).await.expect("new token on B");
    let e = b
        .join(&old, "olds", &key())
        .await
        .expect_err("old token on B");
    assert!(e.to_string().contains("revoked"), "{e}");
    // B restarts from its disk: its join_secret file and state agree (no "does not match").
    let (bdir, b_addr, b_key) = (dir.join("b"), b.cluster_addr, b.key.clone());
    b.stop().await;
    let b = Coord::open(
        &bdir,
        config("hub-b", b_addr),
        b_key,
        TcpListener::bind(b_addr).await.unwrap(),
    )
    .await;
    assert_eq!(b.coord.token(), new, "after B's restart");
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_a_clock_ten_minutes_ahead_are_refused_with_a_clear_message() {
    let dir = tmpdir("skew");
    // No anti-entropy during the test: a completed sync would clear the status it checks.
    let (a, b, _) = two_with(&dir, Duration::from_secs(3600)).await;
    converged(&a, &b, "after B joined").await;
    // The first rounds (each way) happen at once; after them, none for an hour.
    synced(&a, "hub-b").await;
    synced(&b, "hub-a").await;
    let before = a.coord.state_digest();
    // B's own replication identity, as B's driver sends with, but a record stamped by a clock
    // ten minutes ahead (what a coordinator with a wrong clock would push).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let rec = tm_coord::tm_cluster::Record {
        key: "policy".into(),
        stamp: tm_coord::tm_cluster::Stamp {
            wall_ms: now_ms + 10 * 60 * 1000,
            logical: 0,
            origin: tm_coord::origin_of(&b.key.public_key()),
        },
        value: Some(serde_json::json!(null)),
    };
    let t = JoinToken::parse(&a.coord.token()).unwrap();
    let id = b.coord.cluster_identity().expect("B's identity");
    let c = JoinClient::with_identity(a.cluster_addr.to_string(), t, id).unwrap();
    let e = c
        .cluster(&tm_coord::tm_cluster::Msg::Push { records: vec![rec] })
        .await
        .expect_err("a stamp ten minutes ahead is refused");
    match e {
        Error::Refused { status, message } => {
            assert_eq!(status, 403, "{message}");
            assert!(
                message.contains("ms ahead of ours") && message.contains("NTP"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.coord.state_digest(), before, "nothing of it applied");
    let st = a.coord.cluster_status();
    let hb = st.iter().find(|p| p.name == "hub-b").expect("hub-b listed");
    assert!(
        hb.error.as_deref().is_some_and(|e| e.contains("ahead")),
        "cluster status shows why: {st:?}"
    );
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_declares_only_its_own_known_services_and_every_coordinator_lists_them() {
    let dir = tmpdir("svc");
    let (a, b, token) = two(&dir).await;
    let t = JoinToken::parse(&token).unwrap();
    let mut m = JoinClient::new(a.public.addr.to_string(), t.clone()).unwrap();
    m.register(&key(), "dock", &[]).await.expect("dock joins");
    b.join(&token, "plain", &key()).await.expect("plain joins");
    // Unknown names are refused and change nothing.
    let e = m
        .update_services(&["docker".into(), "ftp".into()])
        .await
        .expect_err("an unknown service");
    match e {
        Error::Refused { status, message } => {
            assert_eq!(status, 400, "{message}");
            assert!(message.contains("unknown service \"ftp\""), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(a.coord.netmap().peer("dock").unwrap().services.is_empty());
    // The caller's certificate decides whose record changes: its own, on every coordinator.
    m.update_services(&["docker".into()])
        .await
        .expect("declare docker");
    converged(&a, &b, "after the declaration").await;
    for c in [&a, &b] {
        let nm = c.coord.netmap();
        assert_eq!(nm.peer("dock").unwrap().services, ["docker"]);
        assert!(nm.peer("plain").unwrap().services.is_empty());
    }
    // Without a registered identity there is no call at all.
    let anon = JoinClient::new(a.public.addr.to_string(), t).unwrap();
    assert!(anon.update_services(&["docker".into()]).await.is_err());
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_of_another_mesh_can_neither_replicate_nor_link() {
    let dir = tmpdir("othermesh");
    let (a, b, _) = two(&dir.join("one")).await;
    let (y, z, _) = two(&dir.join("other")).await;
    // A coordinator identity of the other mesh: valid there, signed by its own CA.
    let ct = coordinator_token(&y.coord);
    let mut jc =
        JoinClient::new(y.public.addr.to_string(), JoinToken::parse(&ct).unwrap()).unwrap();
    jc.join_as_coordinator(None);
    jc.register(&key(), "hub-x", &[])
        .await
        .expect("hub-x is a coordinator of the other mesh");
    let before = a.coord.nodes();
    let foreign = JoinClient::with_identity(
        a.public.addr.to_string(),
        a.coord.join_token(),
        jc.identity().expect("identity").clone(),
    )
    .expect("client");
    let refused = |e: Error, what: &str| match e {
        Error::Refused { status, message } => {
            assert!(status == 401 || status == 403, "{what}: {status} {message}")
        }
        // TLS-level rejection: the server's verifier refuses the chain.
        e => {
            eprintln!("{what} from another mesh refused: {e}");
            assert!(
                matches!(e, Error::Io { .. } | Error::Tls(_) | Error::BadResponse(_)),
                "{what}: {e:?}"
            )
        }
    };
    let push = tm_coord::tm_cluster::Msg::Push { records: vec![] };
    refused(
        foreign
            .cluster(&push)
            .await
            .expect_err("replication from another mesh"),
        "replication",
    );
    refused(
        foreign
            .relay_with_protocol("tm-coord-link/1")
            .await
            .expect_err("a link from another mesh"),
        "link",
    );
    assert_eq!(a.coord.nodes(), before, "nothing changed");
    for c in [a, b, y, z] {
        c.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
