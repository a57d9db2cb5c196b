//! Bounded resources, contained panics and lock scope of the coordinator, against a real server
//! on loopback (and the protocol core for the lock test).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use tm_noise::PrivateKey;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::{
    build_register_request, make_csr, Coordinator, CoordinatorConfig, Error, JoinClient, MemStore,
    StateStore,
};

fn tmpdir() -> std::path::PathBuf {
    let mut r = [0u8; 8];
    OsRng.fill_bytes(&mut r);
    let d = std::env::temp_dir().join(format!(
        "tm-coord-bounds-{}-{}",
        std::process::id(),
        u64::from_le_bytes(r)
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn key() -> PrivateKey {
    PrivateKey::generate(&mut OsRng)
}

async fn serve(
    cfg: CoordinatorConfig,
) -> (Coordinator, SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let coord = Coordinator::open(&tmpdir(), cfg, key(), Arc::new(MemStore::new())).expect("open");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let c = coord.clone();
    tokio::spawn(async move {
        c.serve(l, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    (coord, addr, tx)
}

fn cfg() -> CoordinatorConfig {
    let mut cfg = CoordinatorConfig::new("hub");
    cfg.tls_names = vec!["127.0.0.1".into()];
    cfg
}

fn client(c: &Coordinator, addr: SocketAddr) -> JoinClient {
    JoinClient::new(addr.to_string(), c.join_token()).expect("client")
}

/// Waits until the server closes `s`, sending one byte of `trickle` every `every`; returns
/// the time it took. Fails after `limit`.
async fn closed_after(
    s: &mut TcpStream,
    trickle: &[u8],
    every: Duration,
    limit: Duration,
) -> Duration {
    let t0 = Instant::now();
    let mut i = 0;
    let mut buf = [0u8; 1024];
    loop {
        assert!(
            t0.elapsed() < limit,
            "connection still open after {limit:?}"
        );
        match tokio::time::timeout(every, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => {
                if i < trickle.len() {
                    if s.write_all(&trickle[i..=i]).await.is_err() {
                        return t0.elapsed();
                    }
                    i += 1;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_is_dropped_and_others_are_served() {
    let mut cfg = cfg();
    cfg.request_timeout = Duration::from_secs(1);
    let (coord, addr, _stop) = serve(cfg).await;
    // A TLS record header announcing 512 bytes, then one byte every 200 ms.
    let mut trickle = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    trickle.extend(std::iter::repeat_n(0u8, 512));
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let legit = tokio::spawn({
        let c = client(&coord, addr);
        async move { c.challenge().await }
    });
    let took = closed_after(
        &mut slow,
        &trickle,
        Duration::from_millis(200),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        took >= Duration::from_millis(800),
        "dropped too early: {took:?}"
    );
    let took = closed_after(
        &mut idle,
        b"",
        Duration::from_millis(100),
        Duration::from_secs(5),
    )
    .await;
    assert!(took < Duration::from_secs(5));
    legit
        .await
        .expect("join")
        .expect("a legitimate client is served meanwhile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_are_rate_limited_per_source_but_registration_is_not() {
    let mut cfg = cfg();
    cfg.challenge_rate = 0.001;
    cfg.challenge_burst = 3;
    let (coord, addr, _stop) = serve(cfg).await;
    let c = client(&coord, addr);
    let token = coord.join_token();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(c.challenge().await.expect("within the burst"));
    }
    match c.challenge().await {
        Err(Error::Refused { status: 429, .. }) => {}
        other => panic!("expected 429, got {other:?}"),
    }
    // A token holder with a challenge registers: POST /v1/register is not rate-limited.
    let k = key();
    let (_key, pem, der) = make_csr("alpha").expect("csr");
    let req = build_register_request(&held[0], &k, "alpha", pem, &der, &[], &token).expect("req");
    c.register_request(&req).await.expect("registered");
}

#[test]
fn a_challenge_flood_does_not_block_registration() {
    let mut cfg = cfg();
    cfg.max_challenges = 16;
    let coord = Coordinator::open(&tmpdir(), cfg, key(), Arc::new(MemStore::new())).expect("open");
    let now = Instant::now();
    // Far more challenges than the old 4096-entry (here 16) table held.
    for _ in 0..10_000 {
        coord
            .handle_challenge(now, &mut OsRng)
            .expect("issuing costs nothing");
    }
    // Failed registrations (no join secret) do not fill anything either.
    for _ in 0..100 {
        let ch = coord.handle_challenge(now, &mut OsRng).expect("challenge");
        let mut t = coord.join_token();
        t.secret[0] ^= 1;
        let (_k, pem, der) = make_csr("mallory").expect("csr");
        let req = build_register_request(&ch, &key(), "mallory", pem, &der, &[], &t).expect("req");
        let e = coord
            .handle_register(now, req, &mut OsRng)
            .expect_err("wrong token");
        assert!(matches!(e, Error::WrongToken), "{e:?}");
    }
    let ch = coord.handle_challenge(now, &mut OsRng).expect("challenge");
    let (_k, pem, der) = make_csr("alice").expect("csr");
    let req = build_register_request(&ch, &key(), "alice", pem, &der, &[], &coord.join_token())
        .expect("req");
    coord
        .handle_register(now, req, &mut OsRng)
        .expect("a token holder registers after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_500_and_the_next_request_succeeds() {
    let (coord, addr, _stop) = serve(cfg()).await;
    let c = client(&coord, addr);
    let before = crate::panics();
    let (status, body) = c
        .request_raw("GET", crate::contain::PANIC_HOOK, b"", false)
        .await
        .expect("answered");
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("internal error"));
    assert!(crate::panics() > before);
    assert!(!crate::in_request());
    c.challenge().await.expect("the next request succeeds");
}

/// A store whose `save` blocks until released (a slow disk).
struct SlowStore {
    inner: MemStore,
    entered: AtomicBool,
    waiting: AtomicBool,
    release: Mutex<mpsc::Receiver<()>>,
}

impl StateStore for SlowStore {
    fn load(&self) -> Result<Option<Vec<u8>>, Error> {
        self.inner.load()
    }

    fn save(&self, bytes: &[u8]) -> Result<(), Error> {
        if self.entered.swap(true, Ordering::SeqCst) {
            // Not the first save: wait for the test.
            self.waiting.store(true, Ordering::SeqCst);
            let _ = self
                .release
                .lock()
                .expect("lock")
                .recv_timeout(Duration::from_secs(30));
        }
        self.inner.save(bytes)
    }
}

#[test]
fn no_state_lock_is_held_across_the_durable_write() {
    let (tx, rx) = mpsc::channel();
    let store = Arc::new(SlowStore {
        inner: MemStore::new(),
        entered: AtomicBool::new(false),
        waiting: AtomicBool::new(false),
        release: Mutex::new(rx),
    });
    let coord =
        Coordinator::open(&tmpdir(), cfg(), key(), store.clone()).expect("open (first save)");
    let member = coord.public_key();
    let now = Instant::now();
    let ch = coord.handle_challenge(now, &mut OsRng).expect("challenge");
    let (_k, pem, der) = make_csr("alice").expect("csr");
    let req = build_register_request(&ch, &key(), "alice", pem, &der, &[], &coord.join_token())
        .expect("req");
    let c2 = coord.clone();
    let reg = std::thread::spawn(move || c2.handle_register(now, req, &mut OsRng));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.waiting.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "registration never reached save()"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Registration is now inside save(), blocked. Readers must not wait for it.
    let (done_tx, done_rx) = mpsc::channel();
    let c3 = coord.clone();
    std::thread::spawn(move || {
        let nm = c3.netmap();
        let member = c3.is_member(&member);
        let _ = done_tx.send((nm.peers.len(), member));
    });
    let (peers, is_member) = done_rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("netmap and relay lookups answer while a durable write is in progress");
    assert_eq!(peers, 1, "the unpublished registration is not visible yet");
    assert!(is_member);
    tx.send(()).expect("release");
    reg.join().expect("join").expect("registered");
    assert_eq!(coord.netmap().peers.len(), 2);
}

/// A TLS connection to the coordinator from the local address `src` (loopback has the whole
/// 127/8, so one machine plays several sources).
async fn tls_from(
    src: std::net::IpAddr,
    addr: SocketAddr,
    ca_pem: &str,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject as _;
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::new(src, 0)).ok()?;
    let tcp = sock.connect(addr).await.ok()?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).ok()?)
        .ok()?;
    let cfg = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(crate::COORDINATOR_SERVER_NAME).ok()?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .ok()
}

/// Load test (loopback, bounded in count and time): one source hammers `GET /v1/challenge`
/// and another holds 50 slow-loris connections, while legitimate nodes from a third source
/// register and fetch their netmap. The hammering source gets 429s, the slow connections are
/// dropped, and every legitimate request succeeds promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_nodes_join_while_an_abusive_source_hammers() {
    let mut cfg = cfg();
    cfg.request_timeout = Duration::from_secs(1);
    let (coord, addr, _stop) = serve(cfg).await;
    let ca = coord.ca_pem().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let mut hammer = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (stop, ca) = (stop.clone(), ca.clone());
        hammer.spawn(async move {
            let (mut ok, mut limited) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let src = "127.0.0.2".parse().expect("ip");
                let Some(mut tls) = tls_from(src, addr, &ca).await else {
                    continue;
                };
                match crate::http::roundtrip(&mut tls, "GET", "/v1/challenge", b"").await {
                    Ok((200, _)) => ok += 1,
                    Ok((429, _)) => limited += 1,
                    other => panic!("unexpected answer {other:?}"),
                }
            }
            (ok, limited)
        });
    }
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..50 {
        slow.spawn(async move {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind("127.0.0.3:0".parse().expect("addr"))
                .expect("bind");
            let mut s = sock.connect(addr).await.expect("connect");
            let mut trickle = vec![0x16, 0x03, 0x01, 0x02, 0x00];
            trickle.extend(std::iter::repeat_n(0u8, 512));
            closed_after(
                &mut s,
                &trickle,
                Duration::from_millis(200),
                Duration::from_secs(10),
            )
            .await
        });
    }
    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 0..8 {
        let t = Instant::now();
        let mut c = client(&coord, addr);
        c.register(&key(), &format!("node-{i}"), &[])
            .await
            .expect("a legitimate node registers");
        let nm = c.netmap(None).await.expect("netmap");
        assert!(nm.peers.len() >= i + 2);
        worst = worst.max(t.elapsed());
    }
    let legit = t0.elapsed();
    // Keep hammering a little past the joins, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut limited) = (0, 0);
    while let Some(r) = hammer.join_next().await {
        let (o, l) = r.expect("hammer task");
        ok += o;
        limited += l;
    }
    let mut longest_slow = Duration::ZERO;
    while let Some(r) = slow.join_next().await {
        longest_slow = longest_slow.max(r.expect("slow task"));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    eprintln!(
        "load: 8 joins + netmaps in {legit:?} (worst {worst:?}); hammer: {ok} challenges, {limited} refused 429; slowest slow-loris closed after {longest_slow:?}"
    );
    assert!(
        worst < Duration::from_secs(5),
        "a legitimate join took {worst:?}"
    );
    // Burst 20, then 2/s.
    assert!(
        f64::from(ok) <= 20.0 + 2.0 * elapsed + 2.0,
        "{ok} challenges in {elapsed} s"
    );
    assert!(limited > 0, "the hammering source was never limited");
    assert!(longest_slow < Duration::from_secs(5), "{longest_slow:?}");
}
