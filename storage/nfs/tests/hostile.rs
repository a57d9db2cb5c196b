//! Hostile clients speaking raw RPC to the server: no reachable internal listener, lengths
//! that announce more than the record holds, sparse files and sizes, stalled records.
//! One binary, as `xdr_lengths_never_allocate_more_than_the_record` lowers the address-space
//! limit of the whole process.

mod common;

use std::collections::HashSet;

use common::raw::*;
use common::*;

/// TCP ports this process listens on (from /proc: its socket inodes, the LISTEN entries).
fn listening_ports() -> HashSet<u16> {
    let mut inodes = HashSet::new();
    for e in std::fs::read_dir("/proc/self/fd").expect("fds").flatten() {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().into_owned();
            if let Some(i) = t.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                inodes.insert(i.to_string());
            }
        }
    }
    let mut ports = HashSet::new();
    for f in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let c: Vec<&str> = line.split_whitespace().collect();
            if c.len() > 9 && c[3] == "0A" && inodes.contains(c[9]) {
                let port = c[1].rsplit(':').next().expect("port");
                ports.insert(u16::from_str_radix(port, 16).expect("hex port"));
            }
        }
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_has_no_listener_of_its_own() {
    let before = listening_ports();
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path()).await;
    // Served through the front: the library answers a forwarded call (FSSTAT).
    let mut c = Raw::connect(srv.addr).await;
    let root = c.mount("/shares/default").await;
    let r = c
        .call(&call(2, PROG_NFS, 18, &auth_unix(0, 0), &opaque(&root)))
        .await
        .expect("FSSTAT reply");
    assert_eq!(
        (accept_stat(&r), word(&r, 6)),
        (Some(0), 0),
        "FSSTAT NFS3_OK"
    );
    let new: HashSet<u16> = listening_ports().difference(&before).copied().collect();
    assert_eq!(
        new,
        HashSet::from([srv.addr.port()]),
        "the only listener the server adds is its own port"
    );
    srv.stop().await;
}

/// Sets this process's address-space limit to `bytes` (so that an allocation the size of a
/// hostile length field fails, and aborts, instead of being overcommitted).
fn limit_address_space(bytes: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let old = getrlimit(Resource::As);
    let max = old.maximum.map_or(bytes, |m| m.min(bytes));
    setrlimit(
        Resource::As,
        Rlimit {
            current: Some(max),
            maximum: old.maximum,
        },
    )
    .expect("setrlimit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdr_lengths_never_allocate_more_than_the_record() {
    // 6 GiB of address space: a 16 GiB group list or a 4 GiB handle cannot be allocated
    // (the allocator aborts the process), a server's own needs can.
    limit_address_space(6 << 30);
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path()).await;
    let mut c = Raw::connect(srv.addr).await;
    let root = c.mount("/shares/default").await;
    let ok = auth_unix(0, 0);
    let huge = 0xffff_fff0u32;
    let with_len = |prefix: &[u8], n: u32| {
        let mut v = prefix.to_vec();
        v.extend(words(&[n]));
        v.extend_from_slice(b"abcd");
        v
    };
    let fh = opaque(&root);
    // (program, procedure, credential, arguments, what the library would allocate)
    type Case = (u32, u32, Vec<u8>, Vec<u8>, &'static str);
    let cases: Vec<Case> = vec![
        (
            PROG_NFS,
            0,
            auth_unix(u32::MAX, 1),
            vec![],
            "16 GiB of groups",
        ),
        (
            PROG_MOUNT,
            0,
            auth_unix(0x4000_0000, 0),
            vec![],
            "4 GiB of groups",
        ),
        (
            PROG_NFS,
            18,
            ok.clone(),
            with_len(&[], huge),
            "a 4 GiB handle",
        ),
        (
            PROG_NFS,
            2,
            ok.clone(),
            with_len(&[], huge),
            "a 4 GiB SETATTR handle",
        ),
        (
            PROG_NFS,
            12,
            ok.clone(),
            with_len(&fh, huge),
            "a 4 GiB name (REMOVE)",
        ),
        (
            PROG_NFS,
            9,
            ok.clone(),
            with_len(&fh, huge),
            "a 4 GiB name (MKDIR)",
        ),
        (
            PROG_NFS,
            14,
            ok.clone(),
            with_len(&fh, huge),
            "a 4 GiB name (RENAME)",
        ),
        (
            PROG_NFS,
            8,
            ok.clone(),
            with_len(&fh, huge),
            "a 4 GiB name (CREATE)",
        ),
        (
            PROG_MOUNT,
            1,
            ok.clone(),
            with_len(&[], huge),
            "a 4 GiB MOUNT path",
        ),
        (
            PROG_MOUNT,
            3,
            ok.clone(),
            with_len(&[], huge),
            "a 4 GiB UMNT path",
        ),
    ];
    for (i, (prog, proc_, cred, args, what)) in cases.into_iter().enumerate() {
        let xid = 100 + i as u32;
        let r = c
            .call(&call(xid, prog, proc_, &cred, &args))
            .await
            .unwrap_or_else(|| panic!("no reply to {what}: the server died"));
        assert_eq!(word(&r, 0), xid);
        let denied_badcred = word(&r, 2) == 1 && word(&r, 3) == 1 && word(&r, 4) == 1;
        let garbage = accept_stat(&r) == Some(4);
        assert!(
            denied_badcred || garbage,
            "{what}: want AUTH_BADCRED or GARBAGE_ARGS, got {r:?}"
        );
    }
    // The same connection still works.
    let r = c
        .call(&call(3, PROG_NFS, 18, &ok, &fh))
        .await
        .expect("FSSTAT reply");
    assert_eq!(
        (accept_stat(&r), word(&r, 6)),
        (Some(0), 0),
        "FSSTAT NFS3_OK"
    );
    srv.stop().await;
}
