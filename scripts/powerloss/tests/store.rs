//! Power cuts under the object store: a child process writes concurrently (streaming puts,
//! overwrites, inline `put_small`, the file-system view as an NFS server drives it: create,
//! unstable write, commit, chmod; and the coordinator's state snapshot, rewritten in the system
//! bucket as the daemon's `ObjectStateStore` does) on a tm-lazyfs mount and prints each acknowledged
//! write; the power is cut at a seeded random moment (half of the cuts torn), the child is
//! killed, the mount comes back with only what was made durable, and the store is reopened:
//! every acknowledged write is intact, nothing visible is half written, fsck is clean. The
//! same store lives through every round, so recovery also recovers after recoveries.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc;

use common::*;
use tm_storage::{ObjectMeta, Store, StoreConfig};

const ENV: &str = "TM_POWERLOSS_STORE_CHILD";
const CHUNK: u32 = 16 * 1024;

fn open(dir: &Path) -> Store {
    Store::open(StoreConfig {
        data_dir: dir.to_path_buf(),
        max_size: None,
        chunk_size: CHUNK,
        ..StoreConfig::new(dir)
    })
    .expect("open store")
}

fn get(s: &Store, bucket: &str, key: &str) -> Vec<u8> {
    let r = s
        .open_object(bucket, key)
        .unwrap_or_else(|e| panic!("open {bucket}/{key}: {e}"));
    let mut out = Vec::new();
    r.reader()
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("read {bucket}/{key}: {e}"));
    out
}

/// Bodies of streamed objects: 0..~80 KiB, several chunks.
fn body_for(key: &str, version: u64) -> Vec<u8> {
    let seed = key_seed(key, version);
    data(seed, (seed % 9) as usize * 9000 + (seed % 3) as usize)
}

/// Bodies of `put_small` objects (inline).
fn small_for(key: &str) -> Vec<u8> {
    let seed = key_seed(key, 7);
    data(seed, (seed % (tm_storage::INLINE_MAX as u64 + 1)) as usize)
}

/// The writer, in the child process the test below starts (`--include-ignored`).
#[test]
#[ignore = "the child process of power_cut_never_loses_acked_store_writes (which runs it)"]
fn store_child() {
    let Ok(dir) = std::env::var(ENV) else { return };
    let round: u64 = std::env::var("TM_POWERLOSS_ROUND")
        .expect("round")
        .parse()
        .expect("round number");
    let s = open(Path::new(&dir));
    match s.create_bucket("powerloss") {
        Ok(_) | Err(tm_storage::StorageError::BucketExists) => {}
        Err(e) => panic!("create bucket: {e}"),
    }
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let say = |out: &std::sync::Mutex<std::io::Stdout>, line: String| {
        let mut o = out.lock().expect("stdout lock");
        writeln!(o, "{line}").expect("stdout");
        o.flush().expect("flush");
    };
    let mut threads: Vec<_> = (0..3u64)
        .map(|t| {
            let (s, out) = (s.clone(), out.clone());
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let key = format!("r{round}/t{t}/{i:05}");
                    let body = body_for(&key, 0);
                    let mut w = s
                        .begin_put("powerloss", &key, ObjectMeta::default())
                        .expect("begin");
                    for p in body.chunks(5000) {
                        w.write_all(p).expect("write");
                    }
                    w.commit().expect("commit");
                    // an overwritten key: the version (round, i) is in the metadata
                    let ow = format!("ow{t}");
                    let v = round << 32 | i;
                    let mut meta = ObjectMeta::default();
                    meta.user.insert("v".into(), v.to_string());
                    let mut w = s.begin_put("powerloss", &ow, meta).expect("begin");
                    w.write_all(&body_for(&ow, v)).expect("write");
                    w.commit().expect("commit");
                    let sk = format!("s{round}/t{t}/{i:05}");
                    let (tx, rx) = mpsc::channel();
                    s.put_small(
                        "powerloss",
                        &sk,
                        ObjectMeta::default(),
                        small_for(&sk),
                        move |r| {
                            let _ = tx.send(r);
                        },
                    );
                    rx.recv().expect("done").expect("put_small");
                    say(&out, format!("ACK {key} {ow} {v} {sk}"));
                }
            })
        })
        .collect();
    threads.push({
        let (s, out) = (s.clone(), out.clone());
        std::thread::spawn(move || {
            s.ensure_share("plfs").expect("share");
            let fs = tm_storage::FileSystem::new(s).expect("fs");
            let root = fs.share_root("plfs").expect("root").ino;
            for i in 0u64.. {
                let name = format!("r{round}f{i:05}");
                let a = fs
                    .create(
                        root,
                        &name,
                        tm_storage::CreateMode::Guarded,
                        &tm_storage::SetAttrs::default(),
                    )
                    .expect("create");
                let body = body_for(&name, 1);
                for (n, p) in body.chunks(7000).enumerate() {
                    fs.stage(a.ino, n as u64 * 7000, p).expect("stage");
                }
                fs.flush(a.ino).expect("commit");
                let mode = 0o600 | (i as u32 % 8);
                let sa = tm_storage::SetAttrs {
                    mode: Some(mode),
                    ..Default::default()
                };
                fs.setattr(a.ino, &sa).expect("chmod");
                say(&out, format!("FS {name} {} {mode}", a.ino));
            }
        })
    });
    threads.push({
        let (s, out) = (s.clone(), out.clone());
        std::thread::spawn(move || {
            // What the coordinator's state store (control/daemon mesh.rs `ObjectStateStore::save`)
            // does for every state change: one whole snapshot through begin_put → commit.
            for i in 0u64.. {
                let v = round << 32 | i;
                let meta = ObjectMeta {
                    content_type: Some("application/json".into()),
                    ..Default::default()
                };
                let mut w = s
                    .begin_put(tm_storage::SYSTEM_BUCKET, STATE_OBJECT, meta)
                    .expect("begin state");
                w.write_all(&state_for(v)).expect("write state");
                w.commit().expect("commit state");
                say(&out, format!("COORD {v}"));
            }
        })
    });
    for t in threads {
        let _ = t.join();
    }
}

/// Where the coordinator keeps its state (control/daemon mesh.rs `STATE_OBJECT`).
const STATE_OBJECT: &str = "coordinator/state.json";

/// Snapshot number `v` of a coordinator state: JSON naming its version, 2..~70 KiB.
fn state_for(v: u64) -> Vec<u8> {
    let pad = data(v, 2000 + (v % 17) as usize * 4000);
    let hex: String = pad.iter().map(|b| format!("{b:02x}")).collect();
    format!("{{\"version\":{v},\"pad\":\"{hex}\"}}").into_bytes()
}

#[derive(Default)]
struct Acked {
    objects: Vec<String>,
    small: Vec<String>,
    /// Overwritten key → last acknowledged version.
    ow: HashMap<String, u64>,
    /// File name → (inode, mode).
    files: HashMap<String, (u64, u32)>,
    /// Last acknowledged coordinator-state version.
    coord: Option<u64>,
}

impl Acked {
    fn add(&mut self, lines: &[String]) {
        for l in lines {
            let p: Vec<&str> = l.split(' ').collect();
            match p[0] {
                "ACK" => {
                    self.objects.push(p[1].into());
                    let v: u64 = p[3].parse().expect("version");
                    let e = self.ow.entry(p[2].into()).or_default();
                    *e = (*e).max(v);
                    self.small.push(p[4].into());
                }
                "FS" => {
                    let ino = p[2].parse().expect("ino");
                    let mode = p[3].parse().expect("mode");
                    self.files.insert(p[1].into(), (ino, mode));
                }
                "COORD" => {
                    let v: u64 = p[1].parse().expect("version");
                    self.coord = Some(self.coord.map_or(v, |c| c.max(v)));
                }
                _ => unreachable!("filtered"),
            }
        }
    }
}

fn check(s: &Store, acked: &Acked, round: u64) {
    for key in &acked.objects {
        same(
            &get(s, "powerloss", key),
            &body_for(key, 0),
            format!("acked {key} (round {round})"),
        );
    }
    for key in &acked.small {
        same(
            &get(s, "powerloss", key),
            &small_for(key),
            format!("acked small {key} (round {round})"),
        );
    }
    for (key, &v) in &acked.ow {
        let info = s
            .head("powerloss", key)
            .unwrap_or_else(|e| panic!("acked {key} (round {round}): {e}"));
        let got: u64 = info.meta.user["v"].parse().expect("v");
        assert!(
            got >= v,
            "{key} went back to version {got:#x} < {v:#x} (round {round})"
        );
    }
    if let Some(v) = acked.coord {
        let got = get(s, tm_storage::SYSTEM_BUCKET, STATE_OBJECT);
        let text = String::from_utf8_lossy(&got[..got.len().min(40)]).to_string();
        let at: u64 = text
            .strip_prefix("{\"version\":")
            .and_then(|t| t.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!("coordinator state is not a snapshot: {text:?} (round {round})")
            });
        assert!(
            at >= v,
            "coordinator state went back to {at:#x} < {v:#x} (round {round})"
        );
        same(
            &got,
            &state_for(at),
            format!("coordinator state {at:#x} whole (round {round})"),
        );
    }
    let fs = tm_storage::FileSystem::new(s.clone()).expect("fs");
    if !acked.files.is_empty() {
        let root = fs.share_root("plfs").expect("share root").ino;
        for (name, &(ino, mode)) in &acked.files {
            let a = fs
                .lookup(root, name)
                .unwrap_or_else(|e| panic!("acked file {name} (round {round}): {e}"));
            assert_eq!(a.ino, ino, "{name} keeps its inode (round {round})");
            assert_eq!(a.mode, mode, "{name} keeps its mode (round {round})");
            let (got, _) = fs.read(a.ino, 0, 1 << 20).expect("read");
            same(
                &got,
                &body_for(name, 1),
                format!("{name} keeps its bytes (round {round})"),
            );
        }
    }
    // Everything visible is whole, acknowledged or not; overwrites never go back.
    let all = s
        .list_objects("powerloss", "", None, usize::MAX)
        .expect("list");
    for o in &all {
        let body = get(s, "powerloss", &o.key);
        if o.key.starts_with("ow") {
            let v: u64 = o.meta.user["v"].parse().expect("v");
            let last = acked.ow.get(&o.key).copied().unwrap_or(0);
            assert!(
                v >= last,
                "{} went back to version {v:#x} < {last:#x}",
                o.key
            );
            same(
                &body,
                &body_for(&o.key, v),
                format!("{} v{v:#x} (round {round})", o.key),
            );
        } else if o.key.starts_with('s') {
            same(
                &body,
                &small_for(&o.key),
                format!("half-written small {} (round {round})", o.key),
            );
        } else {
            same(
                &body,
                &body_for(&o.key, 0),
                format!("half-written {} (round {round})", o.key),
            );
        }
        assert_eq!(o.etag, md5_hex(&body), "{} etag (round {round})", o.key);
    }
    fsck_clean(s, round);
    assert_eq!(
        s.usage("powerloss").expect("usage").objects,
        all.len() as u64
    );
}

#[test]
#[cfg_attr(
    tm_no_fuse,
    ignore = "needs root and /dev/fuse (mounts a FUSE file system)"
)]
fn power_cut_never_loses_acked_store_writes() {
    let mut rng = tm_powerloss::Rng::new(seed("store"));
    let mnt = tempfile::tempdir().expect("tempdir");
    let mut fs = mount(mnt.path());
    let dir = data_dir(&fs, "data");
    let dirs = dir.to_str().expect("utf-8 path").to_string();
    let mut acked = Acked::default();
    let rounds = rounds(10);
    for round in 0..rounds {
        let r = round.to_string();
        let w = Worker::spawn(
            "store_child",
            &[(ENV, &dirs), ("TM_POWERLOSS_ROUND", &r)],
            &["ACK ", "FS ", "COORD "],
        );
        let mut lines = Vec::new();
        // Later rounds run longer: checkpoints (every 250 ms) and chunk reclaim under way.
        let torn = cut(&mut fs, w, &mut rng, 4, 150 + 60 * (round % 8), &mut lines);
        acked.add(&lines);
        let s = open(&dir);
        check(&s, &acked, round);
        drop(s);
        let st = fs.stats();
        eprintln!(
            "round {round}: cut{} after {} acks; total {} objects, {} files acked; \
             coordinator state {:?}; \
             {} fsyncs, {} dir fsyncs, {} O_DSYNC writes, {} pages and {} entries lost so far",
            if torn { " (torn)" } else { "" },
            lines.len(),
            acked.objects.len() + acked.small.len(),
            acked.files.len(),
            acked
                .coord
                .map(|v| format!("{}.{}", v >> 32, v & 0xffff_ffff)),
            st.fsyncs,
            st.dir_fsyncs,
            st.sync_writes,
            st.lost_pages,
            st.lost_entries,
        );
    }
    let st = fs.stats();
    assert!(
        st.lost_pages + st.lost_entries > 0,
        "the cuts lost nothing: {st:?}"
    );
}
