//! Slow clients and panicking handlers against a real server on loopback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::*;
use crate::S3Config;

const TOKEN: &str = "guard-test-token";

/// The mesh's identities as this server sees them: the one token [`TOKEN`].
#[derive(Debug)]
struct OneToken;

impl crate::Authority for OneToken {
    fn token(&self, token: &str) -> Result<crate::Principal, crate::TokenRefusal> {
        if token == TOKEN {
            Ok(crate::Principal::Token {
                id: "guard".into(),
                tags: Vec::new(),
            })
        } else {
            Err(crate::TokenRefusal::Unknown)
        }
    }
    fn seed_login(&self, _name: &str) -> Option<crate::SeedLogin> {
        None
    }
    fn node(&self, _key: &crate::NodeKey) -> Option<crate::Principal> {
        None
    }
}

struct Srv {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(limits: Limits) -> Srv {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = tm_storage::StoreConfig::new(dir.path().join("data"));
    cfg.max_size = None;
    let store = tm_storage::Store::open(cfg).expect("open store");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = S3Config {
        listen: addr,
        region: crate::DEFAULT_REGION.into(),
        max_body: 1 << 20,
        authority: Some(std::sync::Arc::new(OneToken)),
        replicator: None,
    };
    tokio::spawn(crate::serve_limited(
        l,
        store,
        cfg,
        limits,
        async {
            let _ = rx.await;
        },
        std::time::SystemTime::now,
    ));
    Srv {
        addr,
        _dir: dir,
        _stop: tx,
    }
}

/// Sends `req` and reads the whole answer (the requests say `Connection: close`).
async fn exchange(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answer within 10 s")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: s3\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
}

/// A legitimate request: listing buckets with the mesh token answers 200.
async fn legit_ok(addr: SocketAddr) {
    let r = exchange(addr, &get("/")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

/// Waits until the server closes `s` (read returns 0 or an error), writing `trickle` bytes one at
/// a time every `every` meanwhile; returns how long it took. Fails after `limit`.
async fn closed_after(
    s: &mut TcpStream,
    trickle: &[u8],
    every: Duration,
    limit: Duration,
) -> Duration {
    let t0 = Instant::now();
    let mut i = 0;
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            t0.elapsed() < limit,
            "connection still open after {limit:?}"
        );
        match tokio::time::timeout(every, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => continue, // an error answer: the close follows
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

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(1),
        body_idle: Duration::from_secs(2),
        body_grace: Duration::from_secs(1),
        min_body_rate: 1024,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_head_is_dropped_after_the_header_timeout() {
    let srv = start(limits()).await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    let trickle =
        b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let took = closed_after(
        &mut s,
        trickle,
        Duration::from_millis(200),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
    // Meanwhile and afterwards the server serves others.
    legit_ok(srv.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed() {
    let srv = start(limits()).await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    let took = closed_after(
        &mut s,
        b"",
        Duration::from_millis(100),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
    // An idle keep-alive connection after a request is closed as well.
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    s.write_all(get("/").replace("Connection: close\r\n", "").as_bytes())
        .await
        .expect("write");
    closed_after(
        &mut s,
        b"",
        Duration::from_millis(100),
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_body_is_refused_with_request_timeout() {
    let srv = start(limits()).await;
    let put = |len: usize| {
        format!(
            "PUT /bkt-{}/k HTTP/1.1\r\nHost: s3\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
            std::process::id()
        )
    };
    // The bucket exists, so the only reason to refuse is the pace.
    let r = exchange(
        srv.addr,
        &format!(
            "PUT /bkt-{}/ HTTP/1.1\r\nHost: s3\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            std::process::id()
        ),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    s.write_all(put(100).as_bytes()).await.expect("write");
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // One byte every 200 ms: far below 1 KiB/s.
    loop {
        assert!(t0.elapsed() < Duration::from_secs(6), "not refused in time");
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {
                let _ = s.write_all(b"x").await;
            }
        }
    }
    let r = String::from_utf8_lossy(&got);
    assert!(r.contains("RequestTimeout"), "{r}");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    // A normal upload still works.
    let r = exchange(srv.addr, &format!("{}{}", put(5), "hello")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_500_and_the_next_request_succeeds() {
    let srv = start(Limits::default()).await;
    let before = panics();
    let r = exchange(srv.addr, &get(PANIC_PATH)).await;
    assert!(r.starts_with("HTTP/1.1 500"), "{r}");
    assert!(r.contains("<Code>InternalError</Code>"), "{r}");
    assert!(panics() > before);
    assert!(!in_request());
    legit_ok(srv.addr).await;
}

/// Load test (loopback, bounded in count and time): while an abusive client holds 100
/// slow-loris connections, trickles bodies and hammers the server with unauthenticated
/// requests, a legitimate client's 40 PUT/GET round trips all succeed, and every abusive
/// connection is closed within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_clients_are_served_while_an_abusive_one_hammers() {
    let srv = start(limits()).await;
    let addr = srv.addr;
    let bucket = format!("load-{}", std::process::id());
    let r = exchange(
        addr,
        &format!("PUT /{bucket}/ HTTP/1.1\r\nHost: s3\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut abuse = tokio::task::JoinSet::new();
    // 100 slow-loris connections: a header byte every 200 ms.
    for _ in 0..100 {
        abuse.spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return Duration::ZERO;
            };
            let _ = s.write_all(b"GET / HTTP/1.1\r\n").await;
            closed_after(
                &mut s,
                &[b'x'; 200],
                Duration::from_millis(200),
                Duration::from_secs(10),
            )
            .await
        });
    }
    // 4 hammering loops of anonymous requests on new connections.
    for _ in 0..4 {
        let stop = stop.clone();
        abuse.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = exchange(
                    addr,
                    "GET / HTTP/1.1\r\nHost: s3\r\nConnection: close\r\n\r\n",
                )
                .await;
                assert!(r.contains("AccessDenied"), "{r}");
            }
            Duration::ZERO
        });
    }
    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 0..40 {
        let t = Instant::now();
        let body = format!("object {i}");
        let put = format!(
            "PUT /{bucket}/k{i} HTTP/1.1\r\nHost: s3\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let r = exchange(addr, &put).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = exchange(addr, &get(&format!("/{bucket}/k{i}"))).await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with(&body), "{r}");
        worst = worst.max(t.elapsed());
    }
    let legit = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut longest_slow = Duration::ZERO;
    while let Some(r) = abuse.join_next().await {
        longest_slow = longest_slow.max(r.expect("abusive task"));
    }
    eprintln!(
        "load: 40 legitimate PUT+GET in {legit:?} (worst pair {worst:?}); slowest abusive connection closed after {longest_slow:?}"
    );
    assert!(
        worst < Duration::from_secs(5),
        "a legitimate round trip took {worst:?}"
    );
    assert!(longest_slow < Duration::from_secs(5), "{longest_slow:?}");
}
