//! Crash safety: a child process (this test binary, re-executed) puts objects in a loop (streaming
//! writer, overwrites, and `put_small` inline objects) and prints
//! each acknowledged key; we SIGKILL it at a random moment, reopen the store, and check that every
//! acknowledged write is there intact, no partial object is visible, and GC removed the orphans.
//! A fifth thread does what an NFS client does through the file-system view (create, unstable
//! write, commit, chmod): every acknowledged file keeps its inode number, bytes and mode.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use tm_storage::ObjectMeta;

const ENV: &str = "TM_STORAGE_CRASH_CHILD";
const CHUNK: u32 = 16 * 1024;

fn body_for(key: &str, version: u64) -> Vec<u8> {
    let seed = key.bytes().fold(version, |a, b| {
        a.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    data(seed, (seed % 9) as usize * 9000 + (seed % 3) as usize)
}

/// Bodies of the objects written with `put_small` (inline, 0..=INLINE_MAX bytes).
fn small_for(key: &str) -> Vec<u8> {
    let seed = key
        .bytes()
        .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
    data(seed, (seed % (tm_storage::INLINE_MAX as u64 + 1)) as usize)
}

/// Not a test on its own: does nothing unless re-executed by `kill9_never_loses_acked_writes`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(ENV) else { return };
    let s = open_cfg(std::path::Path::new(&dir), CHUNK, None);
    let _ = s.create_bucket("crash");
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (s, out) = (s.clone(), out.clone());
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let key = format!("t{t}/{i:06}");
                    let body = body_for(&key, 0);
                    let mut w = s
                        .begin_put("crash", &key, ObjectMeta::default())
                        .expect("begin");
                    for p in body.chunks(5000) {
                        w.write_all(p).expect("write");
                    }
                    w.commit().expect("commit");
                    // an overwritten key: the version is in the metadata
                    let ow = format!("ow{t}");
                    let mut meta = ObjectMeta::default();
                    meta.user.insert("v".into(), i.to_string());
                    let mut w = s.begin_put("crash", &ow, meta).expect("begin");
                    w.write_all(&body_for(&ow, i)).expect("write");
                    w.commit().expect("commit");
                    // a small object through the non-blocking inline path
                    let sk = format!("s{t}/{i:06}");
                    let (tx, rx) = mpsc::channel();
                    s.put_small(
                        "crash",
                        &sk,
                        ObjectMeta::default(),
                        small_for(&sk),
                        move |r| {
                            let _ = tx.send(r);
                        },
                    );
                    rx.recv().expect("done").expect("put_small");
                    let mut o = out.lock().expect("stdout lock");
                    writeln!(o, "ACK {key} {ow} {i} {sk}").expect("stdout");
                    o.flush().expect("flush");
                }
            })
        })
        .collect();
    let fs_thread = {
        let (s, out) = (s.clone(), out.clone());
        std::thread::spawn(move || {
            s.ensure_share("fsc").expect("share");
            let fs = tm_storage::FileSystem::new(s).expect("fs");
            let root = fs.share_root("fsc").expect("root").ino;
            for i in 0u64.. {
                let name = format!("f{i:06}");
                let a = fs
                    .create(
                        root,
                        &name,
                        tm_storage::CreateMode::Guarded,
                        &tm_storage::SetAttrs::default(),
                    )
                    .expect("create");
                fs.stage(a.ino, 0, &small_for(&name)).expect("stage");
                fs.flush(a.ino).expect("commit");
                let mode = 0o600 | (i as u32 % 8);
                let sa = tm_storage::SetAttrs {
                    mode: Some(mode),
                    ..Default::default()
                };
                fs.setattr(a.ino, &sa).expect("chmod");
                let mut o = out.lock().expect("stdout lock");
                writeln!(o, "FS {name} {} {mode}", a.ino).expect("stdout");
                o.flush().expect("flush");
            }
        })
    };
    for t in threads {
        let _ = t.join();
    }
    let _ = fs_thread.join();
}

#[test]
fn kill9_never_loses_acked_writes() {
    let mut seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos() as u64;
    for round in 0..4u64 {
        let d = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(ENV, d.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if (line.starts_with("ACK ") || line.starts_with("FS ")) && tx.send(line).is_err() {
                    break;
                }
            }
        });
        // wait for some acknowledged writes, then a random extra delay
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.len() < 8 && Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                acked.push(l);
            }
        }
        assert!(acked.len() >= 8, "child made no progress");
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Later rounds run long enough for checkpoints (every 250 ms) to be under way.
        std::thread::sleep(Duration::from_millis((seed >> 33) % 400 + 300 * round));
        child.kill().expect("kill -9"); // SIGKILL on Unix
        child.wait().expect("wait");
        reader.join().expect("reader");
        acked.extend(rx.try_iter());

        // plant garbage an interrupted writer could leave: an orphan chunk and a temp file
        let orphan = d.path().join("chunks/ab/ab");
        std::fs::create_dir_all(&orphan).expect("mkdir");
        std::fs::write(orphan.join("ab".repeat(32)), b"orphan").expect("plant");
        std::fs::write(orphan.join("cd".repeat(32)), b"misplaced").expect("plant");
        std::fs::write(orphan.join(format!("{}.tmp1-2", "ab".repeat(32))), b"tmp").expect("plant");

        let s = open_cfg(d.path(), CHUNK, None);
        let (files, acked): (Vec<String>, Vec<String>) =
            acked.into_iter().partition(|l| l.starts_with("FS "));
        let fs = tm_storage::FileSystem::new(s.clone()).expect("fs");
        for line in &files {
            let parts: Vec<&str> = line.split(' ').collect();
            let (name, ino, mode) = (parts[1], parts[2], parts[3]);
            let root = fs.share_root("fsc").expect("root").ino;
            let a = fs.lookup(root, name).expect("acked file exists");
            assert_eq!(
                a.ino.to_string(),
                ino,
                "{name} keeps its inode (round {round})"
            );
            assert_eq!(
                a.mode.to_string(),
                mode,
                "{name} keeps its mode (round {round})"
            );
            let want = small_for(name);
            let (got, _) = fs.read(a.ino, 0, 1 << 20).expect("read");
            assert_eq!(got, want, "{name} keeps its bytes (round {round})");
            assert_eq!(get(&s, "fsc", name), want, "{name} over S3 (round {round})");
        }
        let mut last_ow = std::collections::HashMap::new();
        for line in &acked {
            let parts: Vec<&str> = line.split(' ').collect();
            let (key, ow, v) = (
                parts[1],
                parts[2],
                parts[3].parse::<u64>().expect("version"),
            );
            assert_eq!(
                get(&s, "crash", key),
                body_for(key, 0),
                "acked {key} (round {round})"
            );
            assert_eq!(
                get(&s, "crash", parts[4]),
                small_for(parts[4]),
                "acked small {} (round {round})",
                parts[4]
            );
            last_ow.insert(ow.to_string(), v);
        }
        // every visible object is complete, acked or not
        let all = s.list_objects("crash", "", None, usize::MAX).expect("list");
        assert!(all.len() >= acked.len());
        for o in &all {
            let body = get(&s, "crash", &o.key);
            if o.key.starts_with("ow") {
                let v: u64 = o.meta.user["v"].parse().expect("v");
                assert!(v >= last_ow[&o.key], "{} went back to version {v}", o.key);
                assert_eq!(body, body_for(&o.key, v), "{} v{v}", o.key);
            } else if o.key.starts_with('s') {
                assert_eq!(body, small_for(&o.key), "partial small object {}", o.key);
            } else {
                assert_eq!(body, body_for(&o.key, 0), "partial object {}", o.key);
            }
            assert_eq!(o.etag, md5_hex(&body));
        }
        let r = s.fsck().expect("fsck");
        assert_eq!(r.orphan_chunks, 0, "GC at open removed orphans: {r:?}");
        assert_healthy(&s);
        assert_eq!(
            chunk_files(d.path()) as u64,
            r.chunks_in_backend,
            "no temp files left"
        );
        let u = s.usage("crash").expect("usage");
        assert_eq!(u.objects, all.len() as u64);
        eprintln!(
            "round {round}: {} acked, {} visible, {} files",
            acked.len(),
            all.len(),
            files.len()
        );
    }
}
