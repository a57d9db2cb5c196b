//! Power cuts under the NFS server: a child process serves NFSv3 (tm-nfs) on a store on a
//! tm-lazyfs mount; this process is the client, on two connections at once: files written
//! UNSTABLE in pieces then COMMITted, and files written FILE_SYNC piece by piece. The power is
//! cut at a seeded random moment, the server killed, the mount comes back durable-only, and
//! the store is reopened: every COMMIT-acknowledged file and every acknowledged FILE_SYNC
//! write is there; bytes not acknowledged are either the written ones or absent (zeros past a
//! lost write, or a shorter file), never anything else.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};
use tm_storage::{Store, StoreConfig};
use tokio::net::TcpStream;

type Conn = Nfs3Connection<TokioIo<TcpStream>>;

const ENV: &str = "TM_POWERLOSS_NFS_CHILD";
const PIECE: usize = 6000;

fn body_for(name: &str) -> Vec<u8> {
    let seed = key_seed(name, 3);
    data(seed, 1 + (seed % 12) as usize * 5000)
}

/// The server, in the child process the test below starts (`--include-ignored`).
#[test]
#[ignore = "the child process of power_cut_keeps_committed_nfs_writes (which runs it)"]
fn nfs_child() {
    let Ok(dir) = std::env::var(ENV) else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = Store::open(StoreConfig::new(&dir)).expect("open store");
        let cfg = tm_nfs::NfsConfig::new("127.0.0.1:0".parse().expect("addr"), Vec::new());
        let server = tm_nfs::NfsServer::bind(store, cfg).await.expect("bind");
        println!("PORT {}", server.local_addr().expect("addr").port());
        server.serve(std::future::pending()).await.expect("serve");
    });
}

async fn connect(addr: SocketAddr) -> Conn {
    use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
    // AUTH_SYS root: the server refuses AUTH_NONE.
    Nfs3ConnectionBuilder::new(TokioConnector, addr.ip().to_string(), "/shares/default")
        .credential(opaque_auth::auth_unix(&auth_unix::default()))
        .connect_from_privileged_port(false)
        .mount_port(addr.port())
        .nfs3_port(addr.port())
        .mount()
        .await
        .expect("mount")
}

/// What the client was told: file → acknowledged length (whole body for COMMIT files).
type Acks = Arc<Mutex<HashMap<String, usize>>>;

async fn write(c: &mut Conn, fh: &nfs_fh3, off: usize, d: &[u8], stable: stable_how) -> bool {
    let r = c
        .write(&WRITE3args {
            file: fh.clone(),
            offset: off as u64,
            count: d.len() as u32,
            stable,
            data: Opaque::owned(d.to_vec()),
        })
        .await;
    matches!(r, Ok(Nfs3Result::Ok(_)))
}

/// One client: until `stop` or the first failure (the power is gone).
async fn client(addr: SocketAddr, id: usize, round: u64, acks: Acks, stop: Arc<AtomicBool>) {
    let mut c = connect(addr).await;
    let root = c.root_nfs_fh3();
    for i in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let sync = i % 3 == 2;
        let name = format!("r{round}c{id}{}{i:05}", if sync { "s" } else { "u" });
        let r = c
            .create(&CREATE3args {
                where_: diropargs3 {
                    dir: root.clone(),
                    name: filename3(Opaque::owned(name.clone().into_bytes())),
                },
                how: createhow3::GUARDED(sattr3::default()),
            })
            .await;
        let fh = match r {
            Ok(Nfs3Result::Ok(ok)) => match ok.obj {
                post_op_fh3::Some(fh) => fh,
                post_op_fh3::None => panic!("CREATE returned no handle"),
            },
            _ => return,
        };
        let body = body_for(&name);
        for (n, p) in body.chunks(PIECE).enumerate() {
            let how = if sync {
                stable_how::FILE_SYNC
            } else {
                stable_how::UNSTABLE
            };
            if !write(&mut c, &fh, n * PIECE, p, how).await {
                return;
            }
            if sync {
                acks.lock()
                    .expect("acks")
                    .insert(name.clone(), n * PIECE + p.len());
            }
        }
        if !sync {
            let r = c
                .commit(&COMMIT3args {
                    file: fh.clone(),
                    offset: 0,
                    count: 0,
                })
                .await;
            if !matches!(r, Ok(Nfs3Result::Ok(_))) {
                return;
            }
            acks.lock().expect("acks").insert(name.clone(), body.len());
        }
    }
}

fn check(s: &Store, acks: &HashMap<String, usize>, round: u64) -> usize {
    let fs = tm_storage::FileSystem::new(s.clone()).expect("fs");
    let root = fs.share_root(tm_storage::DEFAULT_SHARE).expect("share").ino;
    for (name, &len) in acks {
        let a = fs
            .lookup(root, name)
            .unwrap_or_else(|e| panic!("acknowledged {name} (round {round}): {e}"));
        let (got, _) = fs.read(a.ino, 0, 1 << 20).expect("read");
        let want = &body_for(name)[..len];
        assert!(
            got.len() >= len,
            "{name}: {} bytes, {len} acknowledged (round {round})",
            got.len()
        );
        same(
            &got[..len],
            want,
            format!("{name}: acknowledged bytes (round {round})"),
        );
    }
    let mut n = 0;
    let (entries, eof) = fs.readdir(root, 0, usize::MAX).expect("readdir");
    assert!(eof, "one readdir lists the share");
    for d in entries.iter().filter(|d| d.name != "." && d.name != "..") {
        let e = &d.name;
        let a = fs.lookup(root, e).expect("listed file");
        let (got, _) = fs.read(a.ino, 0, 1 << 20).expect("read");
        let body = body_for(e);
        assert!(
            got.len() <= body.len(),
            "{e} grew past its body (round {round})"
        );
        for (i, (&g, &b)) in got.iter().zip(&body).enumerate() {
            assert!(
                g == b || g == 0,
                "{e}: byte {i} is {g}, written {b} (round {round})"
            );
        }
        n += 1;
    }
    n
}

#[test]
#[cfg_attr(
    tm_no_fuse,
    ignore = "needs root and /dev/fuse (mounts a FUSE file system)"
)]
fn power_cut_keeps_committed_nfs_writes() {
    let mut rng = tm_powerloss::Rng::new(seed("nfs"));
    let mnt = tempfile::tempdir().expect("tempdir");
    let mut fs = mount(mnt.path());
    let dir = data_dir(&fs, "data");
    let dirs = dir.to_str().expect("utf-8 path").to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut all: HashMap<String, usize> = HashMap::new();
    for round in 0..rounds(6) {
        let mut w = Worker::spawn("nfs_child", &[(ENV, &dirs)], &["PORT "]);
        let mut lines = Vec::new();
        w.wait_lines(1, &mut lines, Duration::from_secs(60));
        let port: u16 = lines[0][5..].parse().expect("port");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let acks: Acks = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..2)
            .map(|id| rt.spawn(client(addr, id, round, acks.clone(), stop.clone())))
            .collect();
        // Wait for some acknowledgements (polled with a deadline), then a random delay.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while acks.lock().expect("acks").len() < 4 {
            assert!(std::time::Instant::now() < deadline, "no NFS progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.below(200 + 50 * (round % 6))));
        let torn = rng.coin();
        let mut torn_rng = tm_powerloss::Rng::new(rng.next_u64());
        fs.cut_power(if torn { Some(&mut torn_rng) } else { None });
        w.kill(&mut lines);
        stop.store(true, Ordering::Relaxed);
        // A client whose server vanished may wait (or, nfs3_client on a closed socket, spin)
        // in an RPC: stop them; what they were told before is in `acks`.
        for c in clients {
            c.abort();
            if let Err(e) = rt.block_on(c) {
                assert!(e.is_cancelled(), "client task: {e}");
            }
        }
        fs.remount().expect("remount");
        let acked = acks.lock().expect("acks").clone();
        let n_round = acked.len();
        all.extend(acked);
        let s = Store::open(StoreConfig::new(&dir)).expect("reopen store");
        let visible = check(&s, &all, round);
        fsck_clean(&s, round);
        drop(s);
        eprintln!(
            "round {round}: cut{} after {n_round} acknowledged files; {} acknowledged in all, {visible} visible",
            if torn { " (torn)" } else { "" },
            all.len()
        );
    }
}
