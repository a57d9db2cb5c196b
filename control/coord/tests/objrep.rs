//! Object replication between coordinators (issue 20), end to end in one process: two real
//! coordinators (mTLS link between them), each with its own object store and S3 server
//! (tm-s3 with the replication driver), spoken to over HTTP by a small S3 client (Basic auth).
//!
//! - a PUT through A is read through B with the exact bytes (`x-tm-replicas` 1/2 in available
//!   mode: acknowledged once durable on A with its hint);
//! - with B stopped, a PUT through A is acknowledged 1/2 with a hint; B restarted from its disk
//!   gets it by hinted handoff (its own store holds it, A's hint is gone);
//! - consistent mode: 2/2 while both are up, 503 once B is down (never a wrong success);
//! - a partition with one write on each side: after the heal both versions are listed on both,
//!   and both serve the same current version;
//! - a version whose hint was lost reaches the owner that lacked it by anti-entropy when the
//!   link between the two comes back;
//! - a member's certificate cannot open the link that carries replication messages, and a
//!   relayed frame addressed to the replication destination reaches no driver.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tm_coord::objrep::{ObjectReplication, ReplicationConfig};
use tm_coord::{
    install_cluster_seed, Coordinator, CoordinatorConfig, Error, FileStore, JoinClient, JoinToken,
    TokenSpec,
};
use tm_noise::{PrivateKey, PublicKey};
use tm_storage::replication::local;
use tm_storage::replication::Mode;
use tm_storage::{Store, StoreConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

mod common;
use common::{key, tmpdir};

const AK: &str = "replication-test-key";
const SK: &str = "replication-test-secret";

/// A task serving until stopped.
struct Serving {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
    }
}

fn serve_coord(coord: &Coordinator, l: TcpListener) -> Serving {
    let (tx, rx) = oneshot::channel::<()>();
    let c = coord.clone();
    let task = tokio::spawn(async move {
        c.serve(l, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    Serving {
        stop: Some(tx),
        task,
    }
}

/// One coordinator with its store, replication driver and S3 server.
struct Node {
    coord: Coordinator,
    store: Store,
    repl: ObjectReplication,
    public: SocketAddr,
    public_srv: Serving,
    cluster: Option<Serving>,
    cluster_addr: SocketAddr,
    driver: tokio::task::JoinHandle<()>,
    s3: SocketAddr,
    s3_srv: Serving,
    key: PrivateKey,
    dir: PathBuf,
    cfg: CoordinatorConfig,
    rcfg: ReplicationConfig,
}

fn config(name: &str) -> CoordinatorConfig {
    let mut cfg = CoordinatorConfig::new(name);
    cfg.tls_names = vec!["127.0.0.1".into()];
    cfg.cluster_sync = Duration::from_millis(100);
    cfg
}

fn rconfig(mode: Mode) -> ReplicationConfig {
    ReplicationConfig {
        factor: 2,
        mode,
        timeout: Duration::from_secs(2),
        hint_every: Duration::from_millis(100),
        antientropy_every: Duration::from_secs(60),
    }
}

/// Opens the store, retrying while a stopped node's tasks still hold the previous one.
async fn open_store(dir: &Path) -> Store {
    let t0 = Instant::now();
    loop {
        match Store::open(StoreConfig::new(dir.join("store"))) {
            Ok(s) => return s,
            Err(e) if t0.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("open the store: {e}"),
        }
    }
}

impl Node {
    async fn open(
        dir: &Path,
        mut cfg: CoordinatorConfig,
        hub: PrivateKey,
        cl: TcpListener,
        rcfg: ReplicationConfig,
    ) -> Node {
        let cluster_addr = cl.local_addr().expect("addr");
        cfg.api_addr = Some(cluster_addr.to_string());
        let state = Arc::new(FileStore::new(dir.join("state.json")));
        let coord =
            Coordinator::open(dir, cfg.clone(), hub.clone(), state).expect("open coordinator");
        let pl = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let public = pl.local_addr().expect("addr");
        let public_srv = serve_coord(&coord, pl);
        let cluster = Some(serve_coord(&coord, cl));
        let id = coord.cluster_identity().expect("cluster identity");
        let c = coord.clone();
        let every = cfg.cluster_sync;
        let driver = tokio::spawn(async move { c.run_cluster(id, every).await });
        let store = open_store(dir).await;
        store
            .put_credential(AK, SK, &tm_s3::Principal::Coordinator.credential_string())
            .expect("credential");
        let repl = ObjectReplication::start(&coord, store.clone(), rcfg.clone());
        let sl = TcpListener::bind("127.0.0.1:0").await.expect("bind s3");
        let s3 = sl.local_addr().expect("addr");
        let s3cfg = tm_s3::S3Config {
            listen: s3,
            max_body: 1 << 30,
            authority: None,
            region: tm_s3::DEFAULT_REGION.into(),
            replicator: Some(Arc::new(repl.clone())),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let st = store.clone();
        let task = tokio::spawn(async move {
            tm_s3::serve(sl, st, s3cfg, async {
                let _ = rx.await;
            })
            .await
            .expect("s3 serve");
        });
        Node {
            coord,
            store,
            repl,
            public,
            public_srv,
            cluster,
            cluster_addr,
            driver,
            s3,
            s3_srv: Serving {
                stop: Some(tx),
                task,
            },
            key: hub,
            dir: dir.to_owned(),
            cfg,
            rcfg,
        }
    }

    /// Stops everything (as a crash would, but letting the store close).
    async fn stop(
        mut self,
    ) -> (
        PathBuf,
        CoordinatorConfig,
        PrivateKey,
        SocketAddr,
        ReplicationConfig,
    ) {
        self.repl.shutdown();
        self.driver.abort();
        self.s3_srv.stop().await;
        if let Some(c) = self.cluster.take() {
            c.stop().await;
        }
        self.public_srv.stop().await;
        (self.dir, self.cfg, self.key, self.cluster_addr, self.rcfg)
    }

    async fn restart(
        (dir, cfg, key, addr, rcfg): (
            PathBuf,
            CoordinatorConfig,
            PrivateKey,
            SocketAddr,
            ReplicationConfig,
        ),
    ) -> Node {
        let cl = TcpListener::bind(addr)
            .await
            .expect("rebind the cluster port");
        Node::open(&dir, cfg, key, cl, rcfg).await
    }

    async fn partition(&mut self) {
        if let Some(c) = self.cluster.take() {
            c.stop().await;
        }
    }

    async fn heal(&mut self) {
        let l = TcpListener::bind(self.cluster_addr).await.expect("rebind");
        self.cluster = Some(serve_coord(&self.coord, l));
    }
}

/// Coordinator B joins A's mesh; both replicate objects with `mode`.
async fn two(dir: &Path, mode: Mode) -> (Node, Node, String) {
    let a = Node::open(
        &dir.join("a"),
        config("hub-a"),
        key(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        rconfig(mode),
    )
    .await;
    let spec = TokenSpec {
        coordinator: true,
        ..Default::default()
    };
    let (_, ctoken) = a
        .coord
        .create_token(&spec, "local root", tm_coord::now_unix())
        .expect("coordinator token");
    let kb = key();
    let cl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut jc = JoinClient::new(a.public.to_string(), JoinToken::parse(&ctoken).unwrap()).unwrap();
    jc.join_as_coordinator(Some(cl.local_addr().unwrap().to_string()));
    let reg = jc.register(&kb, "hub-b", &[]).await.expect("B registers");
    let seed = reg.cluster.expect("cluster seed");
    let bdir = dir.join("b");
    let mut cfg = config("hub-b");
    cfg.seed_records = install_cluster_seed(&bdir, &seed, jc.identity().expect("identity"))
        .expect("install the seed");
    let b = Node::open(&bdir, cfg, kb, cl, rconfig(mode)).await;
    let token = a.coord.token();
    (a, b, token)
}

/// An HTTP answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn replicas(&self) -> Option<&str> {
        self.headers.get("x-tm-replicas").map(String::as_str)
    }
}

/// One S3 request (HTTP Basic auth with the coordinator's key).
async fn s3(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Answer {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{AK}:{SK}"));
    let mut c = TcpStream::connect(addr).await.expect("connect s3");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.expect("write");
    c.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).await.expect("read");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let n = usize::from_str_radix(
            String::from_utf8_lossy(&b[..nl])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("hex size");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}

fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Polls `f` every 50 ms until it holds, or panics after `secs` seconds.
async fn until(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !f().await {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until A's pushes reach B (the link is up): writes `warm` until one is confirmed.
async fn linked(a: &Node) {
    let before = a
        .repl
        .counters()
        .pushed
        .load(std::sync::atomic::Ordering::Relaxed);
    until("a push from A confirmed by B", 20, async || {
        let r = s3(a.s3, "PUT", "/bkt/warm", b"warm").await;
        assert!(r.status == 200 || r.status == 503, "{}", r.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.repl
            .counters()
            .pushed
            .load(std::sync::atomic::Ordering::Relaxed)
            > before
    })
    .await;
}

fn local_versions(n: &Node, key: &str) -> usize {
    local::versions(&n.store, "bkt", key)
        .expect("versions")
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn available_put_reads_anywhere_and_a_down_owner_catches_up_by_hinted_handoff() {
    let dir = tmpdir("objrep-avail");
    let (a, b, _) = two(&dir, Mode::Available).await;
    assert_eq!(s3(a.s3, "PUT", "/bkt", b"").await.status, 200);
    linked(&a).await;
    // Three chunks and a bit, and a small (inline) object.
    let big = payload(1, 3 * 1024 * 1024 + 1234);
    let put = s3(a.s3, "PUT", "/bkt/big", &big).await;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(
        put.replicas(),
        Some("1/2"),
        "available: acknowledged with A's copy and its hint"
    );
    let small = s3(a.s3, "PUT", "/bkt/small", b"hello from a").await;
    assert_eq!(small.status, 200);
    let got = s3(b.s3, "GET", "/bkt/big", b"").await;
    assert_eq!(got.status, 200);
    assert!(
        got.body == big,
        "B serves the exact bytes ({} bytes)",
        got.body.len()
    );
    assert_eq!(
        s3(b.s3, "GET", "/bkt/small", b"").await.body,
        b"hello from a"
    );
    assert_eq!(
        got.headers.get("x-amz-version-id"),
        put.headers.get("x-amz-version-id"),
        "the version id (the dot) is the same on both"
    );
    // B goes down: A acknowledges with its own copy and a hint for B.
    let saved = b.stop().await;
    let later = payload(2, 100_000);
    let r = s3(a.s3, "PUT", "/bkt/later", &later).await;
    assert_eq!((r.status, r.replicas()), (200, Some("1/2")));
    let hints = local::hints(&a.store, 100).expect("hints");
    assert!(
        hints.iter().any(|h| h.key == "later"),
        "A keeps a hint for B: {hints:?}"
    );
    let under = |n: &Node| {
        let key = n.coord.public_key();
        n.repl
            .figures()
            .into_iter()
            .find(|f| f.key == key)
            .expect("own figures")
            .figures
            .under_replicated
    };
    assert!(under(&a) >= 1, "cluster status counts A's hint");
    let d = s3(a.s3, "DELETE", "/bkt/small", b"").await;
    assert_eq!((d.status, d.replicas()), (204, Some("1/2")));
    assert_eq!(
        d.headers.get("x-amz-delete-marker").map(String::as_str),
        Some("true")
    );
    // B restarts from its disk; the hints bring it the write and the delete marker.
    let b = Node::restart(saved).await;
    until(
        "B holds the version written while it was down",
        20,
        async || local_versions(&b, "later") == 1 && local_versions(&b, "small") == 2,
    )
    .await;
    until("A's hints are cleared", 10, async || {
        local::hints(&a.store, 100)
            .expect("hints")
            .iter()
            .all(|h| h.key != "later" && h.key != "small")
    })
    .await;
    assert_eq!(
        under(&a),
        0,
        "nothing under-replicated once the hints are delivered"
    );
    until("A's cluster status shows B's store", 10, async || {
        let bk = b.coord.public_key();
        a.repl
            .figures()
            .iter()
            .any(|f| f.key == bk && f.figures.objects >= 3 && f.figures.bytes > big.len() as u64)
    })
    .await;
    // A's hints were delivered (B may hold the versions by anti-entropy first: a hint's push
    // then finds them stored, and is cleared all the same).
    assert_eq!(s3(b.s3, "GET", "/bkt/later", b"").await.body, later);
    assert_eq!(s3(b.s3, "GET", "/bkt/small", b"").await.status, 404);
    let _ = a.stop().await;
    let _ = b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_writes_need_their_quorum_and_fail_with_503_without_it() {
    let dir = tmpdir("objrep-cons");
    let (a, b, _) = two(&dir, Mode::Consistent).await;
    assert_eq!(s3(a.s3, "PUT", "/bkt", b"").await.status, 200);
    assert_eq!(s3(b.s3, "PUT", "/bkt", b"").await.status, 200);
    linked(&a).await;
    let body = payload(3, 2 * 1024 * 1024);
    let r = s3(b.s3, "PUT", "/bkt/k", &body).await;
    assert_eq!(
        (r.status, r.replicas()),
        (200, Some("2/2")),
        "W = 2 of RF 2"
    );
    // Both hold it durably before the answer: A serves it from its own store.
    assert_eq!(local_versions(&a, "k"), 1);
    assert_eq!(s3(a.s3, "GET", "/bkt/k", b"").await.body, body);
    let _ = b.stop().await;
    let r = s3(a.s3, "PUT", "/bkt/k", b"never acknowledged").await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("ServiceUnavailable"));
    let r = s3(a.s3, "DELETE", "/bkt/k", b"").await;
    assert_eq!(r.status, 503);
    let _ = a.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_in_a_partition_are_both_kept_and_resolved_alike() {
    let dir = tmpdir("objrep-part");
    let (mut a, mut b, _) = two(&dir, Mode::Available).await;
    assert_eq!(s3(a.s3, "PUT", "/bkt", b"").await.status, 200);
    assert_eq!(s3(b.s3, "PUT", "/bkt", b"").await.status, 200);
    linked(&a).await;
    a.partition().await;
    b.partition().await;
    let ra = s3(a.s3, "PUT", "/bkt/k", b"written on a").await;
    let rb = s3(b.s3, "PUT", "/bkt/k", b"written on b").await;
    assert_eq!((ra.status, ra.replicas()), (200, Some("1/2")));
    assert_eq!((rb.status, rb.replicas()), (200, Some("1/2")));
    assert_ne!(
        ra.headers["x-amz-version-id"],
        rb.headers["x-amz-version-id"]
    );
    a.heal().await;
    b.heal().await;
    until("both versions on both coordinators", 30, async || {
        local_versions(&a, "k") == 2 && local_versions(&b, "k") == 2
    })
    .await;
    let ga = s3(a.s3, "GET", "/bkt/k", b"").await;
    let gb = s3(b.s3, "GET", "/bkt/k", b"").await;
    assert_eq!(ga.body, gb.body, "the same current version on both");
    assert_eq!(
        ga.headers["x-amz-version-id"],
        gb.headers["x-amz-version-id"]
    );
    for n in [&a, &b] {
        let l = s3(n.s3, "GET", "/bkt?versions&prefix=k", b"").await;
        assert_eq!(l.status, 200);
        let xml = String::from_utf8_lossy(&l.body).to_string();
        for v in [
            &ra.headers["x-amz-version-id"],
            &rb.headers["x-amz-version-id"],
        ] {
            assert!(xml.contains(v.as_str()), "{v} listed: {xml}");
        }
        assert_eq!(xml.matches("<IsLatest>true</IsLatest>").count(), 1, "{xml}");
    }
    let _ = a.stop().await;
    let _ = b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_on_reconnect_repairs_what_no_hint_covers() {
    let dir = tmpdir("objrep-ae");
    let (a, b, _) = two(&dir, Mode::Available).await;
    assert_eq!(s3(a.s3, "PUT", "/bkt", b"").await.status, 200);
    linked(&a).await;
    until("A's warm-up hints delivered", 10, async || {
        local::hints(&a.store, 10).expect("hints").is_empty()
    })
    .await;
    let delivered = |n: &Node| {
        n.repl
            .counters()
            .hints_delivered
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let a_delivered = delivered(&a);
    let saved = b.stop().await;
    let body = payload(4, 1_500_000);
    let r = s3(a.s3, "PUT", "/bkt/lost-hint", &body).await;
    assert_eq!((r.status, r.replicas()), (200, Some("1/2")));
    // The hint is lost (as if its record were gone): only anti-entropy can bring it to B.
    for h in local::hints(&a.store, 10).expect("hints") {
        local::clear_hint(&a.store, &h).expect("clear");
    }
    let b = Node::restart(saved).await;
    until("B holds the version by anti-entropy", 20, async || {
        local_versions(&b, "lost-hint") == 1
    })
    .await;
    let repaired = |n: &Node| {
        n.repl
            .counters()
            .antientropy_repaired
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert!(repaired(&a) + repaired(&b) >= 1);
    assert_eq!(
        (delivered(&a), delivered(&b)),
        (a_delivered, 0),
        "no hint was delivered after the restart"
    );
    // Nothing differs any more: a round moves nothing.
    assert_eq!(a.repl.sync_with(b.repl.node_id()).await, Ok(0));
    assert_eq!(b.repl.sync_with(a.repl.node_id()).await, Ok(0));
    let r = local::export(
        &b.store,
        "bkt",
        "lost-hint",
        local::versions(&b.store, "bkt", "lost-hint")
            .unwrap()
            .iter()
            .next()
            .unwrap()
            .dot,
    );
    assert_eq!(r.expect("export").expect("stored").size, body.len() as u64);
    let _ = a.stop().await;
    let _ = b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_speak_object_replication() {
    let dir = tmpdir("objrep-member");
    let (a, b, token) = two(&dir, Mode::Available).await;
    assert_eq!(s3(a.s3, "PUT", "/bkt", b"").await.status, 200);
    linked(&a).await;
    let mut m = JoinClient::new(a.public.to_string(), JoinToken::parse(&token).unwrap()).unwrap();
    m.register(&key(), "mallory", &[])
        .await
        .expect("member joins");
    // The link that carries replication messages takes coordinator certificates only.
    match m.relay_with_protocol("tm-coord-link/1").await {
        Err(Error::Refused { status, .. }) => assert_eq!(status, 403),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a member opened a coordinator link"),
    }
    // Over its own relay connection, a frame to the replication destination (a Store request
    // piece) is routed as a frame to an unknown node: dropped, never seen by a driver.
    until("A's warm-up hints delivered", 10, async || {
        local::hints(&a.store, 10).expect("hints").is_empty()
    })
    .await;
    let served = |n: &Node| {
        n.repl
            .counters()
            .served
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = (served(&a), served(&b));
    let relay = m.relay().await.expect("relay");
    let mut dst = [0xFF; 32];
    dst[31] = 0xFE;
    let mut frame = 1u64.to_be_bytes().to_vec();
    frame.push(1);
    frame.extend_from_slice(br#"{"t":"versions","bucket":"bkt","key":"warm"}"#);
    relay.send(&PublicKey(dst), &frame).await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (served(&a), served(&b)),
        before,
        "no driver saw the member's frame"
    );
    let _ = a.stop().await;
    let _ = b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
