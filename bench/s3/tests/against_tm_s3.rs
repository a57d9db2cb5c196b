//! Runs every scenario (tiny sizes) against an in-process tm-s3 server: proves the SigV4 signing
//! is accepted, data round-trips with the expected lengths, and bad credentials are counted.

use std::time::Duration;

use tm_s3bench::{ensure_bucket, run, Params, Scenario, Target};

fn start() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = tm_storage::Store::open(tm_storage::StoreConfig::new(dir.path().join("d")))
        .expect("open store");
    store
        .put_credential(
            "AKBENCH",
            "secretbench",
            &tm_s3::Principal::Coordinator.credential_string(),
        )
        .expect("cred");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (atx, arx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = l.local_addr().expect("addr");
            atx.send(addr).expect("send addr");
            let cfg = tm_s3::S3Config {
                listen: addr,
                region: tm_s3::DEFAULT_REGION.into(),
                max_body: 1 << 30,
                authority: None,
                replicator: None,
            };
            tm_s3::serve(l, store, cfg, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
    });
    (arx.recv().expect("addr"), tx, dir)
}

fn params() -> Params {
    Params {
        conns: 4,
        duration: Duration::from_secs(30),
        ops: Some(200),
        small_size: 4096,
        get_keys: 50,
        large_size: 3 << 20,
        large_count: 3,
        large_conns: 2,
        large_rounds: 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_succeeds_against_tm_s3() {
    let (addr, _stop, _dir) = start();
    let t = Target::new(
        "tm-s3",
        &format!("http://{addr}"),
        "AKBENCH",
        "secretbench",
        "bench",
    )
    .expect("target");
    ensure_bucket(&t).await.expect("bucket");
    ensure_bucket(&t).await.expect("bucket twice is fine");
    let p = params();
    let r = run(&t, Scenario::PutSmall, &p).await.expect("put-small");
    assert_eq!((r.ops, r.errors), (200, 0), "{:?}", r.first_error);
    assert_eq!(r.bytes, 200 * 4096);
    assert_eq!(r.hist.len(), 200);
    let r = run(&t, Scenario::GetSmall, &p).await.expect("get-small");
    assert_eq!((r.ops, r.errors), (200, 0), "{:?}", r.first_error);
    // get-large before put-large: preload uploads the missing objects.
    let r = run(&t, Scenario::GetLarge, &p).await.expect("get-large");
    assert_eq!((r.ops, r.errors), (6, 0), "{:?}", r.first_error);
    assert_eq!(r.bytes, 6 * (3 << 20));
    let r = run(&t, Scenario::PutLarge, &p).await.expect("put-large");
    assert_eq!((r.ops, r.errors), (3, 0), "{:?}", r.first_error);
    let j = r.to_json();
    assert_eq!(j["scenario"], "put-large");
    assert!(j["p99_us"].as_u64().expect("p99") >= j["p50_us"].as_u64().expect("p50"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_counted_as_errors() {
    let (addr, _stop, _dir) = start();
    let good = Target::new(
        "g",
        &format!("http://{addr}"),
        "AKBENCH",
        "secretbench",
        "bench",
    )
    .expect("target");
    ensure_bucket(&good).await.expect("bucket");
    let bad =
        Target::new("b", &format!("http://{addr}"), "AKBENCH", "wrong", "bench").expect("target");
    let mut p = params();
    p.ops = Some(20);
    let r = run(&bad, Scenario::PutSmall, &p).await.expect("runs");
    assert_eq!((r.ops, r.errors), (0, 20));
    assert!(
        r.first_error.as_deref().unwrap_or("").contains("403"),
        "{:?}",
        r.first_error
    );
}
