//! Cross-process round trip: the test binary re-executes itself as the "dataplane" child,
//! which receives the ring fds on 3, 4, 5 via `pass_fds`, attaches, and echoes every message
//! back until it sees `BYE`.
#![cfg(not(loom))]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::process::{Command, Stdio};

use tm_ring::{attach, create, pass_fds, ChildFds, Consumer, PushError, RingConfig};

const CHILD_ENV: &str = "TM_RING_TEST_CHILD";
const IPC: u32 = 42;
const BYE: &[u8] = b"\xffBYE";

fn wait_readable(fd: BorrowedFd<'_>) {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Generous timeout so a lost wake-up fails instead of hanging.
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, 30_000) };
    assert_eq!(n, 1, "poll timed out or failed");
}

/// Message `seq`: 8-byte sequence number, then a length-varying pattern, then a checksum byte.
fn message(seq: u64, max: usize) -> Vec<u8> {
    let len = ((seq.wrapping_mul(2654435761) >> 7) % (max as u64 + 1)) as usize;
    let mut v: Vec<u8> = seq
        .to_le_bytes()
        .into_iter()
        .chain((0..).map(|i: u64| (seq ^ i.wrapping_mul(31)) as u8))
        .take(len)
        .collect();
    if len > 8 {
        v[len - 1] = v[..len - 1].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    }
    v
}

fn child() {
    // SAFETY: the parent placed exactly these three fds at 3, 4, 5 via `pass_fds`, and
    // nothing else in this process owns them.
    let fds = unsafe { ChildFds::from_raw(3, 4, 5) };
    let mut ep = attach(fds, IPC).expect("attach in child");
    let mut buf = Vec::new();
    loop {
        wait_readable(ep.rx.event_fd());
        ep.rx.clear_event();
        let mut done = false;
        while let Some(()) = ep.rx.try_pop(|m| {
            buf.clear();
            buf.extend_from_slice(m);
        }) {
            loop {
                match ep.tx.try_push(&buf) {
                    Ok(()) => break,
                    Err(PushError::Full) => {
                        ep.tx.notify().expect("notify");
                        std::thread::yield_now();
                    }
                    Err(e) => panic!("child push: {e}"),
                }
            }
            done |= buf == BYE;
        }
        ep.tx.notify().expect("notify");
        if done {
            return;
        }
    }
}

fn drain(rx: &mut Consumer, next: &mut u64, max: usize, saw_bye: &mut bool) {
    rx.clear_event();
    loop {
        let want = message(*next, max);
        let Some(ok) = rx.try_pop(|m| {
            if m == BYE {
                *saw_bye = true;
                true
            } else {
                m == want.as_slice()
            }
        }) else {
            return;
        };
        assert!(ok, "echo of message {next} differs");
        if !*saw_bye {
            *next += 1;
        }
    }
}

#[test]
fn cross_process_echo() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    let cfg = RingConfig {
        slot_size: 512,
        slot_count: 64,
    };
    let max = cfg.max_msg_len();
    let n: u64 = 100_000;
    let (mut ep, fds) = create(cfg, IPC).expect("create");

    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.args([
        "cross_process_echo",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, "1")
    .stdin(Stdio::null());
    pass_fds(
        &mut cmd,
        &[
            (fds.memfd.as_fd(), 3),
            (fds.to_child_event.as_fd(), 4),
            (fds.to_parent_event.as_fd(), 5),
        ],
    );
    let mut child = cmd.spawn().expect("spawn child");
    drop(fds);

    let (mut sent, mut echoed, mut saw_bye) = (0u64, 0u64, false);
    while sent < n {
        match ep.tx.try_push(&message(sent, max)) {
            Ok(()) => sent += 1,
            Err(PushError::Full) => {
                ep.tx.notify().expect("notify");
                // Echoes may be backing up too: wait for the child, then drain.
                wait_readable(ep.rx.event_fd());
                drain(&mut ep.rx, &mut echoed, max, &mut saw_bye);
            }
            Err(e) => panic!("push: {e}"),
        }
    }
    while ep.tx.try_push(BYE).is_err() {
        ep.tx.notify().expect("notify");
        wait_readable(ep.rx.event_fd());
        drain(&mut ep.rx, &mut echoed, max, &mut saw_bye);
    }
    ep.tx.notify().expect("notify");
    while !saw_bye {
        wait_readable(ep.rx.event_fd());
        drain(&mut ep.rx, &mut echoed, max, &mut saw_bye);
    }
    assert_eq!(echoed, n, "every message came back, in order");
    assert!(ep.rx.try_pop(|_| ()).is_none());
    let status = child.wait().expect("wait child");
    assert!(status.success(), "child failed: {status:?}");
}
