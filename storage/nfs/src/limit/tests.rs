//! In-flight caps and contained panics, with raw RPC calls over loopback.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::{NfsConfig, NfsServer};

const PROG_NFS: u32 = 100_003;

struct Srv {
    addr: SocketAddr,
    high_water: std::sync::Arc<super::Slots>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(per_conn: usize, server: usize) -> Srv {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = tm_storage::Store::open(tm_storage::StoreConfig::new(dir.path().join("data")))
        .expect("store");
    let mut cfg = NfsConfig::new("127.0.0.1:0".parse().expect("addr"), Vec::new());
    cfg.max_in_flight_per_conn = per_conn;
    cfg.max_in_flight = server;
    let srv = NfsServer::bind(store, cfg).await.expect("bind");
    let addr = srv.local_addr().expect("addr");
    let slots = srv.front.slots.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(srv.serve(async {
        let _ = rx.await;
    }));
    Srv {
        addr,
        high_water: slots,
        _dir: dir,
        _stop: tx,
    }
}

/// One call record (record mark included), AUTH_SYS root with an empty machine name.
fn call(xid: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for w in [xid, 0, 2, PROG_NFS, 3, proc_, 1, 20, 0, 0, 0, 0, 0, 0, 0] {
        body.extend_from_slice(&w.to_be_bytes());
    }
    body.extend_from_slice(args);
    let mut rec = (0x8000_0000u32 | body.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(&body);
    rec
}

/// Reads one reply record; returns (xid, accept_stat, first result word).
async fn reply(s: &mut TcpStream) -> (u32, u32, Option<u32>) {
    let mut h = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut h))
        .await
        .expect("a reply within 10 s")
        .expect("read");
    let len = (u32::from_be_bytes(h) & 0x7fff_ffff) as usize;
    let mut b = vec![0u8; len];
    s.read_exact(&mut b).await.expect("read");
    let w = |i: usize| {
        b.get(i * 4..i * 4 + 4)
            .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
    };
    (w(0).expect("xid"), w(5).expect("accept stat"), w(6))
}

/// A file handle of the right shape that names nothing (answered NFS3ERR_STALE/BADHANDLE).
fn bogus_handle() -> Vec<u8> {
    let mut v = 16u32.to_be_bytes().to_vec();
    v.extend_from_slice(&[0xee; 16]);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_stay_within_the_per_connection_cap() {
    let srv = start(4, 64).await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    // 300 NULL calls in one write: forwarded to the library, at most 4 at a time.
    let mut all = Vec::new();
    for xid in 1..=300u32 {
        all.extend_from_slice(&call(xid, 0, &[]));
    }
    s.write_all(&all).await.expect("write");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..300 {
        let (xid, stat, _) = reply(&mut s).await;
        assert_eq!(stat, 0, "SUCCESS");
        assert!(seen.insert(xid), "duplicate reply {xid}");
    }
    assert_eq!(seen.len(), 300, "every call answered");
    let high = srv.high_water.high_water();
    assert!(high <= 4, "{high} calls in flight with a cap of 4");
    // Without the cap this reaches dozens (77 in one run).
    assert!(
        high >= 2,
        "the calls were pipelined through the slots: {high}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pipelining_connections_stay_within_the_server_cap() {
    let srv = start(8, 6).await;
    let mut conns = Vec::new();
    for c in 0..5u32 {
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        let mut all = Vec::new();
        for i in 0..100u32 {
            // READs of a bogus handle: spawned when pipelined, answered with an error.
            let mut args = bogus_handle();
            args.extend_from_slice(&0u64.to_be_bytes());
            args.extend_from_slice(&4096u32.to_be_bytes());
            all.extend_from_slice(&call(c * 1000 + i, 6, &args));
        }
        s.write_all(&all).await.expect("write");
        conns.push(s);
    }
    for s in &mut conns {
        for _ in 0..100 {
            let (_, stat, status) = reply(s).await;
            assert_eq!(stat, 0);
            assert_ne!(status, Some(0), "a bogus handle is an error");
        }
    }
    let high = srv.high_water.high_water();
    assert!(high <= 6, "{high} calls in flight with a server cap of 6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_call_is_answered_serverfault_and_the_next_succeeds() {
    let srv = start(8, 64).await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    let before = crate::panics();
    let x = crate::contain::PANIC_XID;
    s.write_all(&call(x, 1, &bogus_handle()))
        .await
        .expect("write");
    let (xid, stat, status) = reply(&mut s).await;
    assert_eq!((xid, stat), (x, 0));
    assert_eq!(status, Some(10006), "NFS3ERR_SERVERFAULT");
    assert!(crate::panics() > before);
    assert!(!crate::in_request());
    // The same connection keeps working: the next GETATTR gets its real answer.
    s.write_all(&call(8, 1, &bogus_handle()))
        .await
        .expect("write");
    let (xid, stat, status) = reply(&mut s).await;
    assert_eq!((xid, stat), (8, 0));
    let status = status.expect("status");
    assert!(
        status == 70 || status == 10001,
        "STALE or BADHANDLE, got {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_forwarded_call_is_answered_and_the_connection_goes_on() {
    let srv = start(8, 64).await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    let x = crate::contain::PANIC_XID;
    // FSINFO (19) is not served by the front: the library handles it, under the call guard.
    let before = crate::panics();
    s.write_all(&call(x, 19, &bogus_handle()))
        .await
        .expect("write");
    let (xid, stat, status) = reply(&mut s).await;
    assert_eq!((xid, stat), (x, 0));
    assert_eq!(status, Some(10006), "NFS3ERR_SERVERFAULT");
    assert!(crate::panics() > before);
    assert!(!crate::in_request());
    // The same connection keeps working: the next FSINFO gets the library's real answer.
    s.write_all(&call(9, 19, &bogus_handle()))
        .await
        .expect("write");
    let (xid, stat, status) = reply(&mut s).await;
    assert_eq!((xid, stat), (9, 0));
    let status = status.expect("status");
    assert!(
        status == 70 || status == 10001,
        "STALE or BADHANDLE, got {status}"
    );
    // Outside NFSv3 (MOUNT NULL here) a panicking call is answered RPC SYSTEM_ERR.
    let mut mnt = call(x, 0, &[]);
    mnt[16..20].copy_from_slice(&100_005u32.to_be_bytes());
    s.write_all(&mnt).await.expect("write");
    let (xid, stat, _) = reply(&mut s).await;
    assert_eq!((xid, stat), (x, 5), "SYSTEM_ERR");
    assert!(crate::panics() >= before + 2);
    s.write_all(&call(10, 0, &[])).await.expect("write");
    let (xid, stat, _) = reply(&mut s).await;
    assert_eq!((xid, stat), (10, 0), "NFS NULL still answered");
}
