//! Relay tests: an in-process coordinator on 127.0.0.1:0 with real TLS, registered nodes
//! opening relay connections with their mesh-CA client certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use tm_coord::{
    Coordinator, CoordinatorConfig, Error, JoinClient, MemStore, RelayConn, RelayRoute,
    MAX_RELAY_PAYLOAD,
};
use tm_noise::{PrivateKey, PublicKey};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Generous bound for things that must happen "soon" (never a speed assertion).
const SOON: Duration = Duration::from_secs(10);

fn tmpdir() -> PathBuf {
    let mut r = [0u8; 8];
    OsRng.fill_bytes(&mut r);
    let d = std::env::temp_dir().join(format!(
        "tm-coord-relay-{}-{}",
        std::process::id(),
        u64::from_le_bytes(r)
    ));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

fn key() -> PrivateKey {
    PrivateKey::generate(&mut OsRng)
}

struct Server {
    coord: Coordinator,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Server {
    async fn start_with(tweak: impl FnOnce(&mut CoordinatorConfig)) -> Self {
        let mut cfg = CoordinatorConfig::new("hub");
        cfg.tls_names = vec!["127.0.0.1".into()];
        tweak(&mut cfg);
        let coord =
            Coordinator::open(&tmpdir(), cfg, key(), Arc::new(MemStore::new())).expect("open");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let c = coord.clone();
        tokio::spawn(async move {
            c.serve(listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        Self {
            coord,
            addr,
            _stop: tx,
        }
    }

    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Registers a node; returns its client and key.
    async fn node(&self, name: &str) -> (JoinClient, PublicKey) {
        let k = key();
        let mut c = JoinClient::new(self.addr.to_string(), self.coord.join_token()).expect("c");
        c.register(&k, name, &[]).await.expect("register");
        (c, k.public_key())
    }

    async fn wait_for(&self, what: &str, f: impl Fn(&Coordinator) -> bool) {
        let deadline = tokio::time::Instant::now() + SOON;
        while !f(&self.coord) {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn recv(c: &mut RelayConn) -> (PublicKey, Vec<u8>) {
    tokio::time::timeout(SOON, c.recv())
        .await
        .expect("a frame in time")
        .expect("a frame")
}

/// The connection ends (an error, not a frame) in time.
async fn closed(c: &mut RelayConn) -> Error {
    match tokio::time::timeout(SOON, c.recv()).await {
        Ok(Err(e)) => e,
        Ok(Ok(f)) => panic!("expected the connection to close, got a frame {f:?}"),
        Err(_) => panic!("connection not closed in time"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_frames_both_ways() {
    let s = Server::start().await;
    let (a, ka) = s.node("alpha").await;
    let (b, kb) = s.node("beta").await;
    let mut ca = a.relay().await.expect("alpha relay");
    let mut cb = b.relay().await.expect("beta relay");
    assert!(s.coord.relay_connected(&ka) && s.coord.relay_connected(&kb));

    ca.send(&kb, b"hello beta").await.expect("send");
    assert_eq!(recv(&mut cb).await, (ka, b"hello beta".to_vec()));
    cb.send(&ka, b"hello alpha").await.expect("send");
    assert_eq!(recv(&mut ca).await, (kb, b"hello alpha".to_vec()));
    // Largest allowed payload passes; an empty payload is not a keepalive when keyed.
    let big = vec![0xa5u8; MAX_RELAY_PAYLOAD];
    ca.send(&kb, &big).await.expect("send max");
    assert_eq!(recv(&mut cb).await, (ka, big));
    ca.send(&kb, b"").await.expect("send empty");
    assert_eq!(recv(&mut cb).await, (ka, Vec::new()));

    // Split halves from separate tasks, many frames each way, order kept.
    const N: u32 = 200;
    let (sa, mut ra) = ca.split();
    let (sb, mut rb) = cb.split();
    let ta = tokio::spawn(async move {
        for i in 0..N {
            sa.send(&kb, &i.to_be_bytes()).await.expect("a sends");
        }
        sa
    });
    let tb = tokio::spawn(async move {
        for i in 0..N {
            sb.send(&ka, &(i + 1000).to_be_bytes())
                .await
                .expect("b sends");
        }
        sb
    });
    for i in 0..N {
        let (src, p) = tokio::time::timeout(SOON, rb.recv())
            .await
            .expect("in time")
            .expect("frame");
        assert_eq!((src, p), (ka, i.to_be_bytes().to_vec()));
        let (src, p) = tokio::time::timeout(SOON, ra.recv())
            .await
            .expect("in time")
            .expect("frame");
        assert_eq!((src, p), (kb, (i + 1000).to_be_bytes().to_vec()));
    }
    let _keep = (ta.await.expect("task a"), tb.await.expect("task b"));
    let st = s.coord.relay_stats();
    assert_eq!(st.frames, 4 + 2 * u64::from(N));
    assert_eq!(st.dropped_unknown + st.dropped_offline + st.dropped_full, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_sees_true_source_not_a_claimed_one() {
    let s = Server::start().await;
    let (a, ka) = s.node("alpha").await;
    let (b, kb) = s.node("beta").await;
    let (_c, kc) = s.node("gamma").await;
    let ca = a.relay().await.expect("alpha relay");
    let mut cb = b.relay().await.expect("beta relay");
    // alpha frames a payload that "claims" to come from gamma (as a coordinator->node
    // frame would look) and sends it to beta: beta sees alpha as the source.
    let mut forged = kc.0.to_vec();
    forged.extend_from_slice(b"i am gamma");
    ca.send(&kb, &forged).await.expect("send");
    assert_eq!(recv(&mut cb).await, (ka, forged));
    // A frame keyed with beta's own key sent by beta comes back from beta, not anyone else.
    cb.send(&kb, b"self").await.expect("send");
    assert_eq!(recv(&mut cb).await, (kb, b"self".to_vec()));
    // alpha cannot make a frame appear to beta as coming from gamma by addressing gamma.
    ca.send(&kc, b"to gamma").await.expect("send");
    ca.send(&kb, b"marker").await.expect("send");
    assert_eq!(recv(&mut cb).await, (ka, b"marker".to_vec()));
    s.wait_for("gamma counted offline", |c| {
        c.relay_stats().dropped_offline == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_needs_a_valid_client_certificate() {
    let s = Server::start().await;
    // No client identity at all: refused locally, and the server refuses an anonymous try.
    let anon = JoinClient::new(s.addr.to_string(), s.coord.join_token()).expect("client");
    assert!(matches!(anon.relay().await, Err(Error::NotRegistered)));
    let (st, body) = anon
        .request_raw("GET", "/v1/relay", b"", false)
        .await
        .expect("answer");
    assert_eq!(st, 401, "{}", String::from_utf8_lossy(&body));
    // A certificate of a node that left: refused with 401.
    let (a, _) = s.node("alpha").await;
    a.leave().await.expect("leave");
    match a.relay().await {
        Err(Error::Refused { status: 401, .. }) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    // A valid certificate without the upgrade headers: 400; wrong method: 405.
    let (b, _) = s.node("beta").await;
    let (st, _) = b
        .request_raw("GET", "/v1/relay", b"", true)
        .await
        .expect("answer");
    assert_eq!(st, 400);
    let (st, _) = b
        .request_raw("POST", "/v1/relay", b"", true)
        .await
        .expect("answer");
    assert_eq!(st, 405);
    assert_eq!(s.coord.relay_stats().connections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_to_unknown_or_offline_keys_are_dropped_and_counted() {
    let s = Server::start().await;
    let (a, _) = s.node("alpha").await;
    let (_b, kb) = s.node("beta").await; // registered, never connects
    let ca = a.relay().await.expect("relay");
    let stranger = key().public_key();
    ca.send(&stranger, b"nobody").await.expect("send");
    ca.send(&stranger, b"nobody").await.expect("send");
    ca.send(&kb, b"offline").await.expect("send");
    s.wait_for("drops counted", |c| {
        let st = c.relay_stats();
        st.dropped_unknown == 2 && st.dropped_offline == 1
    })
    .await;
    let st = s.coord.relay_stats();
    assert_eq!(st.frames, 0);
    assert_eq!(st.connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_the_connection() {
    let s = Server::start().await;
    let (a, ka) = s.node("alpha").await;
    let (b, kb) = s.node("beta").await;
    let mut ca = a.relay().await.expect("relay");
    let mut cb = b.relay().await.expect("relay");
    // The client refuses to build one.
    let too_big = vec![1u8; MAX_RELAY_PAYLOAD + 1];
    assert!(matches!(
        ca.send(&kb, &too_big).await,
        Err(Error::RelayFrameTooLarge(n)) if n == MAX_RELAY_PAYLOAD + 1
    ));
    // Forced onto the wire, the server closes the sender's connection.
    ca.sender()
        .send_unchecked(&kb, &too_big)
        .await
        .expect("queued");
    closed(&mut ca).await;
    s.wait_for("alpha unregistered", |c| !c.relay_connected(&ka))
        .await;
    assert_eq!(s.coord.relay_stats().protocol_errors, 1);
    // Nothing reached beta, whose connection is unaffected.
    cb.send(&kb, b"still here").await.expect("send");
    assert_eq!(recv(&mut cb).await, (kb, b"still here".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_node_loses_its_relay_connection() {
    let s = Server::start().await;
    let (a, ka) = s.node("alpha").await;
    let (b, kb) = s.node("beta").await;
    let mut ca = a.relay().await.expect("relay");
    let mut cb = b.relay().await.expect("relay");
    assert!(s.coord.remove_node("beta").expect("removed"));
    closed(&mut cb).await;
    assert!(!s.coord.relay_connected(&kb));
    // beta cannot come back on the relay with its old certificate.
    assert!(matches!(
        b.relay().await,
        Err(Error::Refused { status: 401, .. })
    ));
    // Frames to beta are now to an unknown key.
    ca.send(&kb, b"gone?").await.expect("send");
    s.wait_for("counted unknown", |c| c.relay_stats().dropped_unknown == 1)
        .await;
    // alpha still works (to itself).
    ca.send(&ka, b"ok").await.expect("send");
    assert_eq!(recv(&mut ca).await, (ka, b"ok".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_replaces_the_old_one() {
    let s = Server::start().await;
    let (a, ka) = s.node("alpha").await;
    let (b, _) = s.node("beta").await;
    let mut old = a.relay().await.expect("relay");
    let mut new = a.relay().await.expect("relay again");
    closed(&mut old).await;
    let cb = b.relay().await.expect("relay");
    cb.send(&ka, b"to the new one").await.expect("send");
    assert_eq!(recv(&mut new).await.1, b"to the new one".to_vec());
    assert_eq!(s.coord.relay_stats().connections, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_and_from_the_coordinator_node() {
    let s = Server::start().await;
    let hub = s.coord.public_key();
    let (a, ka) = s.node("alpha").await;
    let mut ca = a.relay().await.expect("relay");
    // Before the coordinator opens its endpoint, frames to it are "offline".
    ca.send(&hub, b"early").await.expect("send");
    s.wait_for("offline counted", |c| c.relay_stats().dropped_offline == 1)
        .await;
    let (tx, mut rx) = s.coord.local_relay();
    assert!(s.coord.relay_connected(&hub));
    ca.send(&hub, b"to hub").await.expect("send");
    let got = tokio::time::timeout(SOON, rx.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(got, (ka, b"to hub".to_vec()));
    assert_eq!(tx.send(&ka, b"from hub".to_vec()), RelayRoute::Delivered);
    assert_eq!(recv(&mut ca).await, (hub, b"from hub".to_vec()));
    assert_eq!(
        tx.send(&key().public_key(), b"x".to_vec()),
        RelayRoute::UnknownDestination
    );
    assert_eq!(
        tx.send(&ka, vec![0; MAX_RELAY_PAYLOAD + 1]),
        RelayRoute::TooLarge
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_instead_of_growing() {
    let s = Server::start_with(|c| c.relay_queue = 4).await;
    let hub = s.coord.public_key();
    let (a, _) = s.node("alpha").await;
    let ca = a.relay().await.expect("relay");
    // The coordinator's local receiver is never read: its queue (4) fills up.
    let (_tx, _rx) = s.coord.local_relay();
    for i in 0u32..20 {
        ca.send(&hub, &i.to_be_bytes()).await.expect("send");
    }
    s.wait_for("20 frames routed", |c| {
        let st = c.relay_stats();
        st.frames + st.dropped_full == 20
    })
    .await;
    let st = s.coord.relay_stats();
    assert_eq!(st.frames, 4);
    assert_eq!(st.dropped_full, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_carry_keepalives() {
    let s = Server::start_with(|c| c.relay_keepalive = Duration::from_millis(50)).await;
    let (a, _) = s.node("alpha").await;
    let (_sa, mut ra) = a.relay().await.expect("relay").split();
    // No data frame arrives, but the receiver counts the server's keepalives meanwhile.
    let deadline = tokio::time::Instant::now() + SOON;
    while ra.keepalives() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no keepalives");
        let r = tokio::time::timeout(Duration::from_millis(200), ra.recv()).await;
        assert!(r.is_err(), "unexpected frame or close: {r:?}");
    }
}
