//! Netmap deltas (issue 17's scale): a member that applies the deltas its coordinator sends
//! ends with exactly the netmap a full fetch gives, through joins, tag changes, endpoint and
//! service changes, removals, a rename and a policy change; a base the coordinator cannot make
//! a delta from (unknown, malformed, from another run, too old) gets a full netmap.

use std::net::SocketAddr;
use std::sync::Arc;

use tm_coord::wire::Netmap;
use tm_coord::{apply_delta, Coordinator, CoordinatorConfig, JoinClient, MemStore, StateStore};
use tm_noise::PrivateKey;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod common;
use common::{key, tmpdir};

struct Server {
    coord: Coordinator,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn start(dir: &std::path::Path, store: Arc<dyn StateStore>, hub: PrivateKey) -> Server {
    let mut cfg = CoordinatorConfig::new("hub");
    cfg.tls_names = vec!["127.0.0.1".into()];
    cfg.aliases.insert("files".into(), "hub".into());
    let coord = Coordinator::open(dir, cfg, hub, store).expect("open coordinator");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, rx) = oneshot::channel::<()>();
    let c = coord.clone();
    let task = tokio::spawn(async move {
        c.serve(listener, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    Server {
        coord,
        addr,
        stop,
        task,
    }
}

async fn join(s: &Server, node: &PrivateKey, name: &str) -> JoinClient {
    let mut c = JoinClient::new(s.addr.to_string(), s.coord.join_token()).expect("client");
    c.register(node, name, &[]).await.expect("register");
    c
}

/// Asks for a delta from `held` (which must be answered by one: the version moved), checks it
/// is small, applies it, and checks the result is the full netmap, field by field.
async fn follow(c: &JoinClient, held: &mut Netmap, what: &str) {
    let token = held.delta_token().expect("a token").to_owned();
    let d = c
        .netmap_delta(Some(held.version), Some(&token))
        .await
        .expect("delta poll");
    assert_eq!(d.delta_from(), Some(token.as_str()), "{what}: a delta");
    assert!(
        d.peers.len() <= 2,
        "{what}: only the changed peers, got {:?}",
        d.peers.iter().map(|p| &p.name).collect::<Vec<_>>()
    );
    assert!(apply_delta(held, d), "{what}: applies");
    let full = c.netmap(None).await.expect("full");
    assert_eq!(full.delta_from(), None);
    assert_eq!(held.peers, full.peers, "{what}: peers");
    assert_eq!(held.policy, full.policy, "{what}: policy projection");
    assert_eq!(*held, full, "{what}: everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_deltas_give_the_full_netmap_through_every_kind_of_change() {
    let s = start(&tmpdir("delta"), Arc::new(MemStore::new()), key()).await;
    let (ka, kb, kc) = (key(), key(), key());
    let a = join(&s, &ka, "alpha").await;
    let b = join(&s, &kb, "beta").await;
    let _c = join(&s, &kc, "gamma").await;
    // More peers than changes below: a delta across all of them is still the smaller answer
    // (the coordinator sends a full netmap when more than half of the peers changed).
    for i in 0..8 {
        join(&s, &key(), &format!("extra{i}")).await;
    }

    let mut held = a.netmap(None).await.expect("first");
    assert!(held.delta_token().is_some(), "full netmaps carry a token");
    let first = held.clone();

    join(&s, &key(), "delta").await;
    follow(&a, &mut held, "a join").await;
    s.coord.tag_node("beta", "tag:web", "test").expect("tag");
    follow(&a, &mut held, "a tag").await;
    b.update_endpoints(&["198.51.100.7:51820".parse().expect("addr")])
        .await
        .expect("endpoints");
    follow(&a, &mut held, "endpoints").await;
    b.update_services(&["docker".into()])
        .await
        .expect("services");
    follow(&a, &mut held, "services").await;
    s.coord.remove_node("gamma").expect("remove");
    follow(&a, &mut held, "a removal").await;
    assert!(held.peer("gamma").is_none());
    // The same key comes back under another name: the old name is gone, the new one there.
    join(&s, &kc, "gamma2").await;
    follow(&a, &mut held, "a rename").await;
    assert!(held.peer("gamma2").is_some() && held.peer("gamma").is_none());
    // A policy file: the projection becomes per node (rules for alpha only).
    s.coord
        .set_policy(
            "p.hujson",
            r#"{"tagOwners": {"tag:web": []}, "default": "deny",
                "acls": [{"action": "accept", "src": ["alpha"], "dst": ["tag:web:443"]}]}"#,
            "test",
            1,
        )
        .expect("policy");
    follow(&a, &mut held, "a policy").await;
    assert!(held.policy.as_ref().is_some_and(|p| p.has_policy));
    s.coord
        .untag_node("beta", "tag:web", "test")
        .expect("untag");
    follow(&a, &mut held, "an untag under a policy").await;

    // One delta across every change since the first netmap.
    let mut old = first;
    let d = a
        .netmap_delta(Some(old.version), old.delta_token())
        .await
        .expect("delta");
    assert!(
        d.delta_from().is_some(),
        "a delta across several generations"
    );
    assert!(apply_delta(&mut old, d));
    assert_eq!(old, a.netmap(None).await.expect("full"));

    // `netmap_after` keeps the held netmap full.
    let mut last = Some(held.clone());
    s.coord.tag_node("alpha", "tag:web", "test").expect("tag");
    let got = a
        .netmap_after(Some(held.version), &mut last)
        .await
        .expect("after")
        .clone();
    assert_eq!(got, a.netmap(None).await.expect("full"));
    let _ = s.stop.send(());
    s.task.await.expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_the_coordinator_cannot_use_gets_a_full_netmap() {
    let dir = tmpdir("delta-full");
    let store: Arc<dyn StateStore> = Arc::new(MemStore::new());
    let hub = key();
    let s = start(&dir, store.clone(), hub.clone()).await;
    let ka = key();
    let a = join(&s, &ka, "alpha").await;
    let held = a.netmap(None).await.expect("first");
    let token = held.delta_token().expect("token").to_owned();
    join(&s, &key(), "beta").await;

    let (inst, _) = token.split_once('-').expect("instance-seq");
    for bad in [
        "nonsense".to_owned(),
        format!("{inst}-999999"),
        "0000000000000000-1".to_owned(),
        format!("{inst}-x"),
    ] {
        let nm = a
            .netmap_delta(Some(held.version), Some(&bad))
            .await
            .expect("poll");
        assert_eq!(nm.delta_from(), None, "{bad}: full");
        assert_eq!(nm.peers.len(), 3, "{bad}: every peer");
    }
    // Without `since` the answer is full whatever the base.
    let nm = a.netmap_delta(None, Some(&token)).await.expect("poll");
    assert_eq!(nm.delta_from(), None);

    // Older than the history: full.
    for i in 0..70 {
        if i % 2 == 0 {
            s.coord.tag_node("beta", "tag:t", "test").expect("tag");
        } else {
            s.coord.untag_node("beta", "tag:t", "test").expect("untag");
        }
        a.netmap(None).await.expect("a generation");
    }
    let nm = a
        .netmap_delta(Some(held.version), Some(&token))
        .await
        .expect("poll");
    assert_eq!(nm.delta_from(), None, "too old: full");
    let mut last = Some(held.clone());
    let got = a
        .netmap_after(Some(held.version), &mut last)
        .await
        .expect("after")
        .clone();
    assert_eq!(got, a.netmap(None).await.expect("full"));

    // A restarted coordinator (another process instance) does not know the token: full.
    let recent = a.netmap(None).await.expect("recent");
    let _ = s.stop.send(());
    s.task.await.expect("server");
    let s2 = start(&dir, store, hub).await;
    let a2 = a.for_addr(s2.addr.to_string());
    let nm = a2
        .netmap_delta(Some(recent.version - 1), recent.delta_token())
        .await
        .expect("poll");
    assert_eq!(nm.delta_from(), None, "another instance: full");
    assert_eq!(nm.peers, recent.peers);
    let _ = s2.stop.send(());
    s2.task.await.expect("server");
}
