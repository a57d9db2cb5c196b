//! Shared pieces of the power-loss tests: deterministic data, the seed and round count, a child
//! process whose acknowledgements are read from its stdout, and the mount.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use tm_powerloss::{LazyFs, Rng};

/// Deterministic pseudo-random bytes.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn key_seed(key: &str, v: u64) -> u64 {
    key.bytes()
        .fold(v, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)))
}

/// `got == want`, reported as lengths and the first differing offset (not two byte dumps).
#[track_caller]
pub fn same(got: &[u8], want: &[u8], what: impl std::fmt::Display) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes, expected {}; first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

pub fn md5_hex(b: &[u8]) -> String {
    Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// The seed of this run (`TM_POWERLOSS_SEED` to replay one), printed so a failure can be
/// replayed.
pub fn seed(test: &str) -> u64 {
    let s = match std::env::var("TM_POWERLOSS_SEED") {
        Ok(v) => v.parse().expect("TM_POWERLOSS_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64,
    };
    eprintln!("{test}: seed {s} (replay with TM_POWERLOSS_SEED={s})");
    s
}

/// Rounds (power cuts) per test: `TM_POWERLOSS_ROUNDS`, else `default`.
pub fn rounds(default: u64) -> u64 {
    std::env::var("TM_POWERLOSS_ROUNDS")
        .map(|v| v.parse().expect("TM_POWERLOSS_ROUNDS is a number"))
        .unwrap_or(default)
}

/// Fails (never passes silently) when FUSE cannot be mounted here; the tests are
/// `#[cfg_attr(tm_no_fuse, ignore = ..)]` where the build saw no root or no /dev/fuse.
pub fn mount(dir: &Path) -> LazyFs {
    if let Some(why) = tm_powerloss::unavailable() {
        panic!("power-loss test cannot run: {why} (it is ignored when built without root)");
    }
    LazyFs::mount(dir).expect("mount tm-lazyfs")
}

/// A directory `name` under the mount point, made durable (created, then the mount's root
/// fsynced): where a store lives.
pub fn data_dir(fs: &LazyFs, name: &str) -> std::path::PathBuf {
    let d = fs.mountpoint().join(name);
    std::fs::create_dir(&d).expect("mkdir data dir");
    std::fs::File::open(fs.mountpoint())
        .and_then(|f| f.sync_all())
        .expect("fsync mount root");
    d
}

/// A child process running `test` of this test binary (with `env` set), and its
/// acknowledgement lines (those starting with one of `prefixes`).
pub struct Worker {
    child: Child,
    pub lines: mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    pub fn spawn(test: &str, env: &[(&str, &str)], prefixes: &'static [&'static str]) -> Worker {
        let mut cmd = Command::new(std::env::current_exe().expect("exe"));
        cmd.args([
            test,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints "test NAME ... " without a newline before the output.
                let Some(at) = prefixes.iter().find_map(|p| line.find(p)) else {
                    continue;
                };
                if tx.send(line[at..].to_string()).is_err() {
                    break;
                }
            }
        });
        Worker {
            child,
            lines: rx,
            reader: Some(reader),
        }
    }

    /// Wait (with a deadline) for `n` lines.
    pub fn wait_lines(&mut self, n: usize, out: &mut Vec<String>, limit: Duration) {
        let deadline = Instant::now() + limit;
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "child made no progress: {} of {n} lines",
                out.len()
            );
            if let Ok(l) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                out.push(l);
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                out.extend(self.lines.try_iter());
                assert!(
                    out.len() >= n,
                    "child exited early ({st}) after {} lines",
                    out.len()
                );
            }
        }
    }

    /// SIGKILL (the power is gone) and collect every line it printed.
    pub fn kill(mut self, out: &mut Vec<String>) {
        let _ = self.child.kill();
        self.child.wait().expect("wait child");
        if let Some(r) = self.reader.take() {
            r.join().expect("reader");
        }
        out.extend(self.lines.try_iter());
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A failed test must not leave a writer holding the mount.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cut the power at a seeded random moment (after `min_lines` acknowledgements and a delay
/// below `max_delay_ms`), half of the cuts torn; kill the worker; remount.
pub fn cut(
    fs: &mut LazyFs,
    w: Worker,
    rng: &mut Rng,
    min_lines: usize,
    max_delay_ms: u64,
    out: &mut Vec<String>,
) -> bool {
    let mut w = w;
    w.wait_lines(min_lines, out, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(rng.below(max_delay_ms)));
    let torn = rng.coin();
    let mut torn_rng = Rng::new(rng.next_u64());
    fs.cut_power(if torn { Some(&mut torn_rng) } else { None });
    w.kill(out);
    fs.remount().expect("remount");
    torn
}

/// The store's consistency check after a recovery finds nothing wrong (no missing or orphan
/// chunk, refcounts, sizes and usage exact).
pub fn fsck_clean(s: &tm_storage::Store, round: u64) {
    let r = s.fsck().expect("fsck");
    assert_eq!(
        (
            r.missing_chunks,
            r.bad_refcounts,
            r.bad_sizes,
            r.bad_usage,
            r.orphan_chunks
        ),
        (0, 0, 0, 0, 0),
        "fsck after recovery (round {round}): {r:?}"
    );
}
