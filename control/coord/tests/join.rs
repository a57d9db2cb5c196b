//! End-to-end tests: an in-process coordinator on 127.0.0.1:0 with real TLS, and join
//! clients.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use tm_coord::wire::{Netmap, RegisterRequest};
use tm_coord::{
    address, build_register_request, make_csr, Coordinator, CoordinatorConfig, Error, FileStore,
    JoinClient, JoinToken, MemStore, MeshCidr, StateStore,
};
use tm_noise::{PrivateKey, PublicKey};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod common;
use common::{key, tmpdir};

struct Server {
    coord: Coordinator,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(dir: &std::path::Path, store: Arc<dyn StateStore>, hub: PrivateKey) -> Self {
        let mut cfg = CoordinatorConfig::new("hub");
        cfg.tls_names = vec!["127.0.0.1".into(), "localhost".into()];
        cfg.endpoints = vec!["192.0.2.1:51820".parse().expect("addr")];
        cfg.aliases.insert("files".into(), "hub".into());
        let coord = Coordinator::open(dir, cfg, hub, store).expect("open coordinator");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let c = coord.clone();
        let task = tokio::spawn(async move {
            c.serve(listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        Self {
            coord,
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn start_mem() -> Self {
        Self::start(&tmpdir("mem"), Arc::new(MemStore::new()), key()).await
    }

    fn client(&self) -> JoinClient {
        JoinClient::new(self.addr.to_string(), self.coord.join_token()).expect("client")
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("server task");
    }
}

fn refused(r: Result<impl std::fmt::Debug, Error>, status: u16, needle: &str) {
    match r {
        Err(Error::Refused { status: s, message }) => {
            assert_eq!(s, status, "message: {message}");
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
        other => panic!("expected refusal {status} {needle:?}, got {other:?}"),
    }
}

fn names(n: &Netmap) -> Vec<&str> {
    n.peers.iter().map(|p| p.name.as_str()).collect()
}

async fn prepared(
    c: &JoinClient,
    k: &PrivateKey,
    name: &str,
    token: &JoinToken,
) -> RegisterRequest {
    let ch = c.challenge().await.expect("challenge");
    let (_key, pem, der) = make_csr(name).expect("csr");
    build_register_request(&ch, k, name, pem, &der, &[], token).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_two_nodes() {
    let s = Server::start_mem().await;
    let cidr = MeshCidr::parse(tm_coord::DEFAULT_MESH_CIDR).expect("cidr");
    let (ka, kb) = (key(), key());
    let mut a = s.client();
    let ra = a
        .register(&ka, "alpha", &["198.51.100.7:51820".parse().expect("ep")])
        .await
        .expect("alpha registers");
    assert!(cidr.is_host(ra.mesh_ip));
    assert_eq!(ra.mesh_cidr, cidr);
    assert!(ra.node_cert.contains("BEGIN CERTIFICATE"));
    assert_eq!(names(&ra.netmap), ["alpha", "hub"]);
    let mut b = s.client();
    let rb = b.register(&kb, "beta", &[]).await.expect("beta registers");
    assert_ne!(ra.mesh_ip, rb.mesh_ip);
    assert_ne!(ra.s3_secret, rb.s3_secret);
    assert_ne!(ra.s3_access_key, rb.s3_access_key);

    // alpha sees both nodes (and the coordinator) over mTLS.
    let nm = a.netmap(None).await.expect("netmap");
    assert_eq!(names(&nm), ["alpha", "beta", "hub"]);
    let pa = nm.peer("alpha").expect("alpha");
    assert_eq!(pa.public_key, ka.public_key());
    assert_eq!(pa.mesh_ip, ra.mesh_ip);
    assert_eq!(
        pa.endpoints,
        ["198.51.100.7:51820".parse::<SocketAddr>().expect("ep")]
    );
    assert!(!pa.is_coordinator);
    assert!(!nm.peer("beta").expect("beta").is_coordinator);
    let hub = nm.peer("hub").expect("hub");
    assert!(hub.is_coordinator);
    assert_eq!(hub.public_key, s.coord.public_key());
    assert_eq!(hub.mesh_ip, s.coord.mesh_ip());
    assert_eq!(nm.dns.domain, "mesh");
    assert_eq!(nm.dns.aliases.get("files").map(String::as_str), Some("hub"));
    // The same netmap as the coordinator's API gives (which carries no delta token).
    assert!(nm.delta_token().is_some());
    assert_eq!(
        Netmap {
            delta: None,
            ..nm.clone()
        },
        s.coord.netmap_for(&ka.public_key())
    );

    // Endpoint update from beta's mTLS identity.
    let ep: SocketAddr = "203.0.113.5:4000".parse().expect("ep");
    let after = b.update_endpoints(&[ep]).await.expect("endpoints");
    assert!(after.version > nm.version);
    assert_eq!(after.peer("beta").expect("beta").endpoints, [ep]);
    let bad: SocketAddr = "0.0.0.0:1".parse().expect("ep");
    refused(b.update_endpoints(&[bad]).await, 400, "not usable");

    // Idempotent re-join: same key and name -> same address, no netmap change.
    let mut a2 = s.client();
    let ra2 = a2.register(&ka, "alpha", &[]).await.expect("re-join");
    assert_eq!(ra2.mesh_ip, ra.mesh_ip);
    assert_eq!(ra2.s3_access_key, ra.s3_access_key);
    assert_eq!(ra2.netmap.version, after.version);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_and_name_conflicts_and_roles() {
    let s = Server::start_mem().await;
    let token = s.coord.join_token();
    let ka = key();
    let mut a = s.client();
    a.register(&ka, "alpha", &[]).await.expect("alpha");

    // Someone else claims alpha's public key without its private key: proof fails.
    let c = s.client();
    let intruder = key();
    let mut req = prepared(&c, &intruder, "other", &token).await;
    req.public_key = ka.public_key();
    refused(
        c.register_request(&req).await,
        403,
        "proof of key possession",
    );

    // alpha's key under a new name: refused (no renames).
    let mut c2 = s.client();
    refused(
        c2.register(&ka, "alpha2", &[]).await,
        409,
        "renaming is not supported",
    );
    // A new key wanting alpha's name: refused.
    refused(
        c2.register(&key(), "alpha", &[]).await,
        409,
        "already registered with another key",
    );
    // Reserved and invalid names.
    refused(
        c2.register(&key(), "coordinator", &[]).await,
        400,
        "reserved",
    );
    refused(
        c2.register(&key(), "Bad_Name", &[]).await,
        400,
        "invalid node name",
    );
    // Nobody can take the coordinator's name.
    refused(
        c2.register(&key(), "hub", &[]).await,
        409,
        "already registered",
    );
    // A role cannot be smuggled in the body.
    let req = prepared(&c, &key(), "sneaky", &token).await;
    let mut v = serde_json::to_value(&req).expect("json");
    v["is_coordinator"] = serde_json::Value::Bool(true);
    let (status, body) = c
        .request_raw("POST", "/v1/register", v.to_string().as_bytes(), false)
        .await
        .expect("raw");
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("unknown field"));
    let nm = s.coord.netmap();
    assert_eq!(names(&nm), ["alpha", "hub"]);
    assert_eq!(nm.peers.iter().filter(|p| p.is_coordinator).count(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_replay_bad_proof_malformed() {
    let s = Server::start_mem().await;
    let token = s.coord.join_token();

    // Wrong join secret, right CA pin.
    let mut wrong = token.clone();
    wrong.secret[0] ^= 1;
    let mut c = JoinClient::new(s.addr.to_string(), wrong).expect("client");
    refused(
        c.register(&key(), "alpha", &[]).await,
        403,
        "wrong join token",
    );

    // Replay: the same registration twice.
    let c = s.client();
    let k = key();
    let req = prepared(&c, &k, "alpha", &token).await;
    c.register_request(&req).await.expect("first use");
    refused(
        c.register_request(&req).await,
        403,
        "challenge already used",
    );
    // A nonce the server never issued.
    let mut forged = req.clone();
    forged.nonce = [7; 32];
    refused(
        c.register_request(&forged).await,
        403,
        "unknown or expired challenge",
    );
    // A failed attempt also consumes the nonce.
    let mut bad = prepared(&c, &key(), "gamma", &token).await;
    bad.token_secret[0] ^= 1;
    refused(c.register_request(&bad).await, 403, "wrong join token");
    bad.token_secret[0] ^= 1;
    refused(
        c.register_request(&bad).await,
        403,
        "challenge already used",
    );

    // Proof made with another private key (claims kd's public key).
    let kd = key();
    let mut req = prepared(&c, &key(), "delta", &token).await;
    req.public_key = kd.public_key();
    refused(
        c.register_request(&req).await,
        403,
        "proof of key possession does not verify",
    );
    // Proof over another CSR than the one sent.
    let mut req = prepared(&c, &kd, "delta", &token).await;
    let (_k, other_pem, _d) = make_csr("delta").expect("csr");
    req.csr = other_pem;
    refused(
        c.register_request(&req).await,
        403,
        "proof of key possession",
    );

    // Malformed requests.
    let (status, body) = c
        .request_raw("POST", "/v1/register", b"{\"name\": 12", false)
        .await
        .expect("raw");
    assert_eq!(status, 400);
    let msg = String::from_utf8_lossy(&body);
    assert!(
        msg.contains("malformed request: invalid JSON body"),
        "{msg}"
    );
    let (status, body) = c
        .request_raw(
            "POST",
            "/v1/register",
            br#"{"name":"x","public_key":"AAAA"}"#,
            false,
        )
        .await
        .expect("raw");
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("32 bytes"));
    let mut req = prepared(&c, &key(), "eps", &token).await;
    req.csr = "not a csr".into();
    refused(c.register_request(&req).await, 400, "csr");
    let (status, _) = c
        .request_raw("GET", "/v1/nope", b"", false)
        .await
        .expect("raw");
    assert_eq!(status, 404);
    let (status, _) = c
        .request_raw("PUT", "/v1/challenge", b"", false)
        .await
        .expect("raw");
    assert_eq!(status, 405);
    let big = vec![b'x'; 100 * 1024];
    let (status, _) = c
        .request_raw("POST", "/v1/register", &big, false)
        .await
        .expect("raw");
    assert_eq!(status, 413);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_pinned_to_other_ca_fails_tls() {
    let s = Server::start_mem().await;
    let other = Server::start_mem().await;
    // Right secret, other coordinator's CA.
    let mut t = s.coord.join_token();
    t.ca_sha256 = other.coord.join_token().ca_sha256;
    let c = JoinClient::new(s.addr.to_string(), t).expect("client");
    let e = c.challenge().await.expect_err("must fail");
    assert!(matches!(e, Error::CoordinatorCertMismatch), "{e:?}");
    assert_eq!(
        e.to_string(),
        "coordinator certificate does not match the join token"
    );
    // And a token for s works against s.
    s.client().challenge().await.expect("pinned CA matches");
    s.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_and_mapped() {
    let s = Server::start_mem().await;
    let other = Server::start_mem().await;
    let mut a = s.client();
    a.register(&key(), "alpha", &[]).await.expect("alpha");

    // No client certificate.
    let anon = s.client();
    assert!(matches!(anon.netmap(None).await, Err(Error::NotRegistered)));
    let (status, body) = anon
        .request_raw("GET", "/v1/netmap", b"", false)
        .await
        .expect("raw");
    assert_eq!(status, 401);
    assert!(String::from_utf8_lossy(&body).contains("client certificate required"));
    let (status, _) = anon
        .request_raw("DELETE", "/v1/nodes/self", b"", false)
        .await
        .expect("raw");
    assert_eq!(status, 401);
    let (status, _) = anon
        .request_raw("POST", "/v1/endpoints", br#"{"endpoints":[]}"#, false)
        .await
        .expect("raw");
    assert_eq!(status, 401);

    // A certificate from another mesh CA (valid there) is refused here.
    let mut o = other.client();
    o.register(&key(), "alpha", &[])
        .await
        .expect("registered at other");
    let foreign = JoinClient::with_identity(
        s.addr.to_string(),
        s.coord.join_token(),
        o.identity().expect("identity").clone(),
    )
    .expect("client");
    match foreign.netmap(None).await {
        Ok(n) => panic!("foreign certificate accepted: {n:?}"),
        Err(Error::Refused { status, .. }) => assert_eq!(status, 401),
        // TLS-level rejection: the server's verifier refuses the chain.
        Err(e) => {
            eprintln!("foreign certificate refused: {e}");
            assert!(
                matches!(e, Error::Io { .. } | Error::Tls(_) | Error::BadResponse(_)),
                "{e:?}"
            );
        }
    }

    // After leaving, the old certificate no longer maps to a node.
    a.leave().await.expect("leave");
    refused(
        a.netmap(None).await,
        401,
        "does not belong to a registered node",
    );
    assert_eq!(names(&s.coord.netmap()), ["hub"]);
    s.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_join_and_leave() {
    let s = Server::start_mem().await;
    let mut a = s.client();
    let ra = a.register(&key(), "alpha", &[]).await.expect("alpha");
    let v0 = ra.netmap.version;
    let a = Arc::new(a);

    // Nothing changes: the poll is still waiting after 300 ms.
    let a1 = a.clone();
    let poll = tokio::spawn(async move { a1.netmap(Some(v0)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "long poll returned without a change");
    let mut b = s.client();
    b.register(&key(), "beta", &[]).await.expect("beta");
    let nm = tokio::time::timeout(Duration::from_secs(1), poll)
        .await
        .expect("long poll woke within 1 s of the join")
        .expect("task")
        .expect("netmap");
    assert!(nm.version > v0);
    assert!(nm.peer("beta").is_some());

    // Several pollers all wake on a leave.
    let v1 = nm.version;
    let mut polls = Vec::new();
    for _ in 0..3 {
        let a1 = a.clone();
        polls.push(tokio::spawn(async move { a1.netmap(Some(v1)).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.leave().await.expect("leave");
    for p in polls {
        let nm = tokio::time::timeout(Duration::from_secs(1), p)
            .await
            .expect("long poll woke within 1 s of the leave")
            .expect("task")
            .expect("netmap");
        assert!(nm.version > v1);
        assert!(nm.peer("beta").is_none());
    }
    // An old version answers at once.
    let nm = tokio::time::timeout(Duration::from_secs(1), a.netmap(Some(0)))
        .await
        .expect("immediate")
        .expect("netmap");
    assert_eq!(names(&nm), ["alpha", "hub"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart() {
    let dir = tmpdir("restart");
    let store_path = dir.join("state.json");
    let hub = key();
    let ka = key();
    let s = Server::start(&dir, Arc::new(FileStore::new(&store_path)), hub.clone()).await;
    let token = s.coord.token();
    let hub_ip = s.coord.mesh_ip();
    let mut a = s.client();
    let ra = a.register(&ka, "alpha", &[]).await.expect("alpha");
    let identity = a.identity().expect("identity").clone();
    let version = s.coord.netmap().version;
    s.stop().await;

    let s = Server::start(&dir, Arc::new(FileStore::new(&store_path)), hub).await;
    assert_eq!(s.coord.token(), token, "CA and join secret persisted");
    assert_eq!(
        tm_coord::read_token(&dir).expect("read_token").format(),
        token
    );
    assert_eq!(s.coord.mesh_ip(), hub_ip);
    assert_eq!(
        s.coord.netmap().version,
        version,
        "reopening changes nothing"
    );
    // The persisted identity still authenticates (CA reloaded, certificate map persisted).
    let a_old = JoinClient::with_identity(
        s.addr.to_string(),
        JoinToken::parse(&token).expect("token"),
        identity,
    )
    .expect("client");
    let nm = a_old.netmap(None).await.expect("netmap with old identity");
    assert_eq!(nm.peer("alpha").expect("alpha").mesh_ip, ra.mesh_ip);
    // Re-join after the restart keeps the address; the new certificate works.
    let mut a2 = JoinClient::new(s.addr.to_string(), JoinToken::parse(&token).expect("token"))
        .expect("client");
    let ra2 = a2.register(&ka, "alpha", &[]).await.expect("re-join");
    assert_eq!(ra2.mesh_ip, ra.mesh_ip);
    a2.netmap(None).await.expect("new identity");
    // A new node does not get alpha's or the hub's address.
    let mut b = s.client();
    let rb = b.register(&key(), "beta", &[]).await.expect("beta");
    assert!(rb.mesh_ip != ra.mesh_ip && rb.mesh_ip != hub_ip);

    // Key files are private.
    use std::os::unix::fs::PermissionsExt as _;
    for f in [
        "coordinator/ca.key",
        "coordinator/server.key",
        "coordinator/join_secret",
        "state.json",
    ] {
        let mode = std::fs::metadata(dir.join(f))
            .expect(f)
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} must not be readable by others");
    }
    // Changing the CIDR of a persisted mesh is refused.
    let mut cfg = CoordinatorConfig::new("hub");
    cfg.mesh_cidr = MeshCidr::parse("10.0.0.0/8").expect("cidr");
    let e = Coordinator::open(&dir, cfg, key(), Arc::new(FileStore::new(&store_path)))
        .expect_err("cidr change refused");
    assert!(e.to_string().contains("mesh_cidr changed"), "{e}");
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn addresses_unique_inside_and_probed() {
    for (cidr, n) in [("100.64.0.0/10", 500usize), ("10.7.0.0/22", 500)] {
        let cidr = MeshCidr::parse(cidr).expect("cidr");
        let mut taken: HashSet<Ipv4Addr> = HashSet::new();
        let mut moved = 0;
        for _ in 0..n {
            let mut b = [0u8; 32];
            OsRng.fill_bytes(&mut b);
            let k = PublicKey(b);
            let ip = address::allocate(cidr, &k, |ip| taken.contains(&ip)).expect("room");
            assert!(cidr.is_host(ip), "{ip} outside {cidr} or reserved");
            if ip != address::preferred(cidr, &k) {
                moved += 1;
            }
            assert!(taken.insert(ip), "duplicate {ip}");
            // Deterministic: the same key and the same taken set give the same answer.
            let again =
                address::allocate(cidr, &k, |x| x != ip && taken.contains(&x)).expect("room");
            assert_eq!(again, ip);
        }
        if cidr.prefix_len() == 22 {
            assert!(
                moved > 0,
                "500 keys in 1022 hosts must collide (birthday bound)"
            );
        }
    }
}
