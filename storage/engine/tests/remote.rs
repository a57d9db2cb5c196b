//! Remote (S3-compatible) chunk backend against a reference server nobody here wrote: `s3s-fs`
//! 0.14 from crates.io on loopback.
//!
//! Needs the server binary: `S3S_FS_BIN=/path/to/s3s-fs` or `s3s-fs` on PATH. Install with
//! `cargo install s3s-fs@0.14.1 --features binary --root /work/tools`
//! (then `S3S_FS_BIN=/work/tools/bin/s3s-fs`). Tests FAIL (not skip) when it is missing.
#![cfg(feature = "remote")]

mod common;

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_healthy, data, get, md5_hex, put};
use tm_storage::{
    ChunkId, ChunkStore, ObjectMeta, RemoteConfig, S3ChunkStore, StorageError, Store, StoreConfig,
    MIN_PART_SIZE,
};

const AK: &str = "tmtestaccess";
const SK: &str = "tmtestsecret/with+odd=chars";
const BUCKET: &str = "tm-chunks";
const INSTALL: &str = "cargo install s3s-fs@0.14.1 --features binary --root /work/tools \
                       (then export S3S_FS_BIN=/work/tools/bin/s3s-fs)";

/// A running s3s-fs; killed on drop.
struct Server {
    child: Child,
    root: tempfile::TempDir,
    endpoint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "S3S_FS_BIN={} does not exist; install: {INSTALL}",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("s3s-fs");
        if p.is_file() {
            return p;
        }
    }
    panic!("s3s-fs not found (set S3S_FS_BIN or put it on PATH); install: {INSTALL}");
}

fn start() -> Server {
    let bin = server_bin();
    let root = tempfile::tempdir().expect("tempdir");
    // s3s-fs: a bucket is a directory under the root.
    std::fs::create_dir(root.path().join(BUCKET)).expect("bucket dir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", AK, "--secret-key", SK])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn s3s-fs");
    let mut server = Server {
        child,
        root,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    // Readiness, not a speed assertion: generous deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        if let Ok(Some(st)) = server.child.try_wait() {
            panic!("s3s-fs exited early: {st}");
        }
        assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remote_cfg(srv: &Server, prefix: &str) -> RemoteConfig {
    let mut c = RemoteConfig::new(&srv.endpoint, BUCKET, AK, SK);
    c.prefix = prefix.to_string();
    c
}

fn listed(cs: &dyn ChunkStore) -> BTreeSet<ChunkId> {
    let mut out = BTreeSet::new();
    cs.list(&mut |id| {
        assert!(out.insert(id), "{id:?} listed twice");
    })
    .expect("list");
    out
}

/// Chunk-named files under `dir` on the server's disk (s3s-fs keeps other bookkeeping files).
fn files_under(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.map(|e| e.expect("entry").path())
        .map(|p| {
            if p.is_dir() {
                files_under(&p)
            } else {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                usize::from(ChunkId::from_hex(name).is_some())
            }
        })
        .sum()
}

#[test]
fn chunk_store_contract() {
    let srv = start();
    let cs = S3ChunkStore::new(remote_cfg(&srv, "tm/chunks")).expect("connect");
    let bodies: Vec<Vec<u8>> = vec![data(1, 1), data(2, 4096), data(3, 1 << 20), data(4, 77_777)];
    let ids: Vec<ChunkId> = bodies.iter().map(|b| ChunkId::of(b)).collect();
    for (id, b) in ids.iter().zip(&bodies) {
        assert!(!cs.exists(id).unwrap());
        cs.put(id, b).unwrap();
        cs.put(id, b).unwrap(); // idempotent
        assert!(cs.exists(id).unwrap());
    }
    // Object layout: prefix/xx/hex, really on the server's disk.
    let key = cs.object_key(&ids[1]);
    assert_eq!(
        key,
        format!("tm/chunks/{}/{}", &ids[1].to_hex()[..2], ids[1].to_hex())
    );
    assert_eq!(
        std::fs::read(srv.root.path().join(BUCKET).join(&key)).unwrap(),
        bodies[1]
    );
    for (id, b) in ids.iter().zip(&bodies) {
        assert_eq!(&cs.get(id).unwrap(), b);
    }
    // read_at: inside, across the end, at the end, past the end, empty buffer.
    let big = &bodies[2];
    let id = &ids[2];
    let mut buf = vec![0u8; 1000];
    assert_eq!(cs.read_at(id, 12_345, &mut buf).unwrap(), 1000);
    assert_eq!(&buf[..], &big[12_345..13_345]);
    let n = cs.read_at(id, big.len() as u64 - 10, &mut buf).unwrap();
    assert_eq!((n, &buf[..n]), (10, &big[big.len() - 10..]));
    assert_eq!(cs.read_at(id, big.len() as u64, &mut buf).unwrap(), 0);
    assert_eq!(
        cs.read_at(id, big.len() as u64 + 5000, &mut buf).unwrap(),
        0
    );
    assert_eq!(cs.read_at(id, 0, &mut []).unwrap(), 0);
    let mut one = [0u8; 1];
    assert_eq!(cs.read_at(&ids[0], 0, &mut one).unwrap(), 1);
    assert_eq!(one[0], bodies[0][0]);

    // list sees exactly our chunks, not foreign objects in the bucket or misplaced names.
    let foreign = srv.root.path().join(BUCKET).join("other");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join(ids[3].to_hex()), b"x").unwrap();
    let wrong_xx = srv.root.path().join(BUCKET).join("tm/chunks/zz");
    std::fs::create_dir_all(&wrong_xx).unwrap();
    std::fs::write(wrong_xx.join(ids[3].to_hex()), b"x").unwrap();
    assert_eq!(listed(&cs), ids.iter().copied().collect());

    // delete: gone, repeatable; get of a missing chunk is Corrupt (as the other backends).
    cs.delete(&ids[1]).unwrap();
    cs.delete(&ids[1]).unwrap();
    assert!(!cs.exists(&ids[1]).unwrap());
    assert!(matches!(cs.get(&ids[1]), Err(StorageError::Corrupt(_))));
    assert!(matches!(
        cs.read_at(&ids[1], 0, &mut buf),
        Err(StorageError::Corrupt(_))
    ));
    assert!(!listed(&cs).contains(&ids[1]));
    assert_eq!(cs.cleanup_temp().unwrap(), 0);

    // A body damaged on the server is caught by the hash check.
    std::fs::write(
        srv.root.path().join(BUCKET).join(cs.object_key(&ids[3])),
        b"evil",
    )
    .unwrap();
    assert!(matches!(cs.get(&ids[3]), Err(StorageError::Corrupt(_))));
    // ... and so is a damaged range: ranges are read from the checked whole chunk. The
    // damage keeps the length and touches only bytes outside the range asked for.
    let id = &ids[2];
    let mut whole = cs.get(id).unwrap();
    let path = srv.root.path().join(BUCKET).join(cs.object_key(id));
    let n = whole.len();
    whole[n - 1] ^= 0xff;
    std::fs::write(&path, &whole).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(cs.read_at(id, 0, &mut buf), Err(StorageError::Corrupt(_))),
        "a range of a damaged chunk must not be served"
    );
}

#[test]
fn list_follows_continuation_tokens() {
    let srv = start();
    let cs = S3ChunkStore::new(remote_cfg(&srv, "")).expect("connect");
    // s3s-fs pages at 1000 keys: 1100 chunks need two pages.
    let ids: BTreeSet<ChunkId> = (0..1100u64)
        .map(|i| {
            let b = i.to_le_bytes();
            let id = ChunkId::of(&b);
            cs.put(&id, &b).unwrap();
            id
        })
        .collect();
    assert_eq!(listed(&cs), ids);
}

#[test]
fn wrong_secret_missing_bucket_and_bad_endpoint_are_clear_errors() {
    let srv = start();
    let mut c = remote_cfg(&srv, "p");
    c.secret_key = "not-the-secret".into();
    let e = S3ChunkStore::new(c).err().expect("wrong secret must fail");
    match &e {
        StorageError::Remote { status, code, .. } => {
            assert_eq!(*status, 403, "{e}");
            assert!(!code.is_empty());
        }
        other => panic!("expected Remote error, got {other:?}"),
    }
    assert!(e.is_failure());
    let shown = e.to_string();
    assert!(shown.contains("403"), "{shown}");

    // An unknown access key is refused too.
    let mut c = remote_cfg(&srv, "p");
    c.access_key = "nobody".into();
    let e = S3ChunkStore::new(c).err().expect("unknown key must fail");
    assert!(matches!(e, StorageError::Remote { status: 403, .. }), "{e}");

    let mut c = remote_cfg(&srv, "p");
    c.bucket = "no-such-bucket".into();
    let e = S3ChunkStore::new(c)
        .err()
        .expect("missing bucket must fail");
    assert!(matches!(e, StorageError::Remote { status: 404, .. }), "{e}");

    let mut c = remote_cfg(&srv, "p");
    c.endpoint = "https://127.0.0.1:1".into();
    assert!(matches!(
        S3ChunkStore::new(c),
        Err(StorageError::Unsupported(_))
    ));

    // Nothing listening: an I/O error, not a hang or a panic.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut c = remote_cfg(&srv, "p");
    c.endpoint = format!("http://127.0.0.1:{port}");
    assert!(matches!(S3ChunkStore::new(c), Err(StorageError::Io(_))));
}

const CS: u32 = 32 * 1024; // above INLINE_MAX, so every full chunk goes to the remote store

fn open_remote(dir: &Path, srv: &Server) -> Store {
    let cfg = StoreConfig {
        data_dir: dir.to_path_buf(),
        max_size: None,
        chunk_size: CS,
        ..StoreConfig::new(dir)
    };
    Store::open_remote(cfg, remote_cfg(srv, "store1")).expect("open_remote")
}

#[test]
fn whole_store_on_remote_backend() {
    let srv = start();
    let meta_dir = tempfile::tempdir().unwrap();
    let chunk_dir = srv.root.path().join(BUCKET).join("store1");
    let probe = S3ChunkStore::new(remote_cfg(&srv, "store1")).unwrap();
    let s = open_remote(meta_dir.path(), &srv);
    s.create_bucket("photos").unwrap();

    // Across chunk boundaries, odd write pieces.
    let body = data(7, 10 * CS as usize + 123);
    let info = put(&s, "photos", "a.bin", &body, 5000);
    assert_eq!(info.etag, md5_hex(&body));
    assert_eq!(get(&s, "photos", "a.bin"), body);
    // 11 chunk objects (only single-chunk objects are kept inline in the metadata).
    assert_eq!(listed(&probe).len(), 11);
    assert_eq!(files_under(&chunk_dir), 11);
    let r = s.open_object("photos", "a.bin").unwrap();
    for (a, b) in [
        (0u64, 1u64),
        (CS as u64 - 3, CS as u64 + 3),
        (3 * CS as u64 + 7, 9 * CS as u64),
    ] {
        let mut buf = vec![0u8; (b - a) as usize];
        let n = r.read_at(a, &mut buf).unwrap();
        assert_eq!(&buf[..n], &body[a as usize..b as usize], "read_at {a}..{b}");
    }
    drop(r);

    // Dedup: same content under another key adds no remote objects.
    put(&s, "photos", "copy.bin", &body, 1 << 20);
    assert_eq!(listed(&probe).len(), 11);

    // Overwrite both keys, then gc + reclaim delete the old remote chunk objects.
    let body2 = data(8, 3 * CS as usize);
    put(&s, "photos", "a.bin", &body2, 4096);
    put(&s, "photos", "copy.bin", &body2, 4096);
    s.gc().unwrap();
    s.reclaim().unwrap();
    let want: BTreeSet<ChunkId> = body2.chunks(CS as usize).map(ChunkId::of).collect();
    assert_eq!(listed(&probe), want);
    assert_eq!(files_under(&chunk_dir), 3);
    assert_eq!(get(&s, "photos", "a.bin"), body2);

    // Multipart: 5 MiB + 3 and a small last part.
    let upload = s
        .create_multipart("photos", "mp.bin", ObjectMeta::default())
        .unwrap();
    let p1 = data(11, MIN_PART_SIZE as usize + 3);
    let p2 = data(12, 40_000);
    let mut etags = Vec::new();
    for (n, p) in [(1u32, &p1), (2, &p2)] {
        let mut w = s.begin_part("photos", "mp.bin", &upload, n).unwrap();
        w.write_all(p).unwrap();
        etags.push((n, w.commit().unwrap().etag));
    }
    let done = s
        .complete_multipart("photos", "mp.bin", &upload, &etags)
        .unwrap();
    assert!(done.etag.ends_with("-2"), "{}", done.etag);
    let mut whole = p1.clone();
    whole.extend_from_slice(&p2);
    assert_eq!(get(&s, "photos", "mp.bin"), whole);
    assert_healthy(&s);
    let remote_before = listed(&probe);

    // Reopen (metadata from data_dir, chunks from the server): everything still there, and the
    // open-time GC deletes nothing that is referenced.
    drop(s);
    let s = open_remote(meta_dir.path(), &srv);
    assert_eq!(get(&s, "photos", "a.bin"), body2);
    assert_eq!(get(&s, "photos", "mp.bin"), whole);
    assert_eq!(listed(&probe), remote_before);
    let fsck = s.fsck().unwrap();
    assert_eq!(fsck.orphan_chunks, 0);
    assert_eq!(fsck.chunks_in_backend, remote_before.len() as u64);
    assert_healthy(&s);

    // Delete everything: remote prefix empties.
    for k in ["a.bin", "copy.bin", "mp.bin"] {
        s.delete_object("photos", k).unwrap();
    }
    s.gc().unwrap();
    s.reclaim().unwrap();
    assert!(listed(&probe).is_empty());
    assert_eq!(files_under(&chunk_dir), 0);
}
