//! Power cuts under the S3 server: a child process serves S3 (tm-s3) on a store on a
//! tm-lazyfs mount; this process PUTs objects over HTTP from two threads (new keys and an
//! overwritten key per thread whose body carries its version). The power is cut at a seeded
//! random moment, the server killed, the mount comes back durable-only, and the store is
//! reopened: every object the server answered 200 for is there intact, every visible object is
//! whole, an overwritten key never goes back to an older version than acknowledged.
//!
//! (A test-harness crate: it imports the S3 server, a `control/` crate, as a dev-dependency
//! only; nothing in `storage/` proper does.)

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tm_storage::{Store, StoreConfig};

const ENV: &str = "TM_POWERLOSS_S3_CHILD";
const TOKEN: &str = "powerloss-mesh-token";
const BUCKET: &str = "powerloss";

fn body_for(key: &str, version: u64) -> Vec<u8> {
    let seed = key_seed(key, version);
    let mut b = version.to_le_bytes().to_vec();
    b.extend(data(seed, (seed % 23) as usize * 3000));
    b
}

/// The server, in the child process the test below starts (`--include-ignored`).
#[test]
#[ignore = "the child process of power_cut_keeps_acknowledged_s3_puts (which runs it)"]
fn s3_child() {
    let Ok(dir) = std::env::var(ENV) else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = Store::open(StoreConfig::new(&dir)).expect("open store");
        match store.create_bucket(BUCKET) {
            Ok(_) | Err(tm_storage::StorageError::BucketExists) => {}
            Err(e) => panic!("create bucket: {e}"),
        }
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        println!("PORT {}", addr.port());
        let cfg = tm_s3::S3Config {
            listen: addr,
            region: tm_s3::DEFAULT_REGION.into(),
            max_body: 1 << 30,
            authority: Some(std::sync::Arc::new(OneToken)),
            replicator: None,
        };
        tm_s3::serve(l, store, cfg, std::future::pending())
            .await
            .expect("serve");
    });
}

/// The mesh's identities as the S3 server sees them: one token, no nodes.
#[derive(Debug)]
struct OneToken;

impl tm_s3::Authority for OneToken {
    fn token(&self, token: &str) -> Result<tm_s3::Principal, tm_s3::TokenRefusal> {
        if token == TOKEN {
            Ok(tm_s3::Principal::Token {
                id: "powerloss".into(),
                tags: Vec::new(),
            })
        } else {
            Err(tm_s3::TokenRefusal::Unknown)
        }
    }
    fn seed_login(&self, _name: &str) -> Option<tm_s3::SeedLogin> {
        None
    }
    fn node(&self, _key: &tm_s3::NodeKey) -> Option<tm_s3::Principal> {
        None
    }
}

/// PUT one object; true on 200.
fn put(addr: SocketAddr, key: &str, body: &[u8]) -> bool {
    let go = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        let head = format!(
            "PUT /{BUCKET}/{key} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        Ok(resp.starts_with(b"HTTP/1.1 200"))
    };
    go().unwrap_or(false)
}

/// Acknowledged: new keys, and per overwritten key its last acknowledged version.
#[derive(Default)]
struct Acks {
    keys: Vec<String>,
    ow: HashMap<String, u64>,
}

fn client(addr: SocketAddr, t: u64, round: u64, acks: Arc<Mutex<Acks>>, stop: Arc<AtomicBool>) {
    for i in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = format!("r{round}/t{t}/{i:05}");
        if !put(addr, &key, &body_for(&key, 0)) {
            return;
        }
        acks.lock().expect("acks").keys.push(key);
        let ow = format!("ow{t}");
        let v = round << 32 | (i + 1);
        if !put(addr, &ow, &body_for(&ow, v)) {
            return;
        }
        acks.lock().expect("acks").ow.insert(ow, v);
    }
}

fn get(s: &Store, key: &str) -> Vec<u8> {
    let r = s
        .open_object(BUCKET, key)
        .unwrap_or_else(|e| panic!("open {key}: {e}"));
    let mut out = Vec::new();
    r.reader()
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("read {key}: {e}"));
    out
}

#[test]
#[cfg_attr(
    tm_no_fuse,
    ignore = "needs root and /dev/fuse (mounts a FUSE file system)"
)]
fn power_cut_keeps_acknowledged_s3_puts() {
    let mut rng = tm_powerloss::Rng::new(seed("s3"));
    let mnt = tempfile::tempdir().expect("tempdir");
    let mut fs = mount(mnt.path());
    let dir = data_dir(&fs, "data");
    let dirs = dir.to_str().expect("utf-8 path").to_string();
    let mut keys: Vec<String> = Vec::new();
    let mut ow: HashMap<String, u64> = HashMap::new();
    for round in 0..rounds(6) {
        let mut w = Worker::spawn("s3_child", &[(ENV, &dirs)], &["PORT "]);
        let mut lines = Vec::new();
        w.wait_lines(1, &mut lines, Duration::from_secs(60));
        let port: u16 = lines[0][5..].parse().expect("port");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let acks: Arc<Mutex<Acks>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..2)
            .map(|t| {
                let (acks, stop) = (acks.clone(), stop.clone());
                std::thread::spawn(move || client(addr, t, round, acks, stop))
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while acks.lock().expect("acks").keys.len() < 4 {
            assert!(std::time::Instant::now() < deadline, "no S3 progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.below(200 + 50 * (round % 6))));
        let torn = rng.coin();
        let mut torn_rng = tm_powerloss::Rng::new(rng.next_u64());
        fs.cut_power(if torn { Some(&mut torn_rng) } else { None });
        w.kill(&mut lines);
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().expect("client thread");
        }
        fs.remount().expect("remount");
        let a = std::mem::take(&mut *acks.lock().expect("acks"));
        let n_round = a.keys.len();
        keys.extend(a.keys);
        for (k, v) in a.ow {
            let e = ow.entry(k).or_default();
            *e = (*e).max(v);
        }
        let s = Store::open(StoreConfig::new(&dir)).expect("reopen store");
        for k in &keys {
            same(
                &get(&s, k),
                &body_for(k, 0),
                format!("acknowledged {k} (round {round})"),
            );
        }
        for (k, &v) in &ow {
            let b = get(&s, k);
            let got = u64::from_le_bytes(b[..8].try_into().expect("version bytes"));
            assert!(
                got >= v,
                "{k} went back to {got:#x} < {v:#x} (round {round})"
            );
            same(
                &b,
                &body_for(k, got),
                format!("{k} v{got:#x} whole (round {round})"),
            );
        }
        let all = s.list_objects(BUCKET, "", None, usize::MAX).expect("list");
        for o in &all {
            let b = get(&s, &o.key);
            let v = if o.key.starts_with("ow") {
                u64::from_le_bytes(b[..8].try_into().expect("version bytes"))
            } else {
                0
            };
            same(
                &b,
                &body_for(&o.key, v),
                format!("half-written {} (round {round})", o.key),
            );
            assert_eq!(o.etag, md5_hex(&b), "{} etag (round {round})", o.key);
        }
        fsck_clean(&s, round);
        drop(s);
        eprintln!(
            "round {round}: cut{} after {n_round} acknowledged PUTs; {} in all, {} visible",
            if torn { " (torn)" } else { "" },
            keys.len(),
            all.len()
        );
    }
}
