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

const NFS3ERR_FBIG: u32 = 27;

/// A fresh transaction id (the library drops a repeated one as a retransmission).
fn xid() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1000);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// CREATE `name` (UNCHECKED, no attributes) in `dir` over raw RPC: the new handle.
async fn raw_create(c: &mut Raw, dir: &[u8], name: &str) -> Vec<u8> {
    let mut a = opaque(dir);
    a.extend(opaque(name.as_bytes()));
    a.extend(words(&[0, 0, 0, 0, 0, 0, 0]));
    let r = c
        .call(&call(xid(), PROG_NFS, 8, &auth_unix(0, 0), &a))
        .await
        .expect("CREATE reply");
    assert_eq!((accept_stat(&r), word(&r, 6), word(&r, 7)), (Some(0), 0, 1));
    let n = word(&r, 8) as usize;
    r[36..36 + n].to_vec()
}

/// SETATTR of the size over raw RPC: the NFS status.
async fn raw_truncate(c: &mut Raw, fh: &[u8], size: u64) -> u32 {
    let mut a = opaque(fh);
    a.extend(words(&[
        0,
        0,
        0,
        1,
        (size >> 32) as u32,
        size as u32,
        0,
        0,
        0,
    ]));
    let r = c
        .call(&call(xid(), PROG_NFS, 2, &auth_unix(0, 0), &a))
        .await
        .expect("SETATTR reply");
    assert_eq!(accept_stat(&r), Some(0));
    word(&r, 6)
}

/// WRITE of `data` at `offset` over raw RPC (`stable`: 0 UNSTABLE, 2 FILE_SYNC): the status.
async fn raw_write(c: &mut Raw, fh: &[u8], offset: u64, stable: u32, data: &[u8]) -> u32 {
    let mut a = opaque(fh);
    a.extend(words(&[
        (offset >> 32) as u32,
        offset as u32,
        data.len() as u32,
        stable,
    ]));
    a.extend(opaque(data));
    let r = c
        .call(&call(xid(), PROG_NFS, 7, &auth_unix(0, 0), &a))
        .await
        .expect("WRITE reply");
    assert_eq!(accept_stat(&r), Some(0));
    word(&r, 6)
}

/// GETATTR over raw RPC: the size.
async fn raw_size(c: &mut Raw, fh: &[u8]) -> u64 {
    let r = c
        .call(&call(xid(), PROG_NFS, 1, &auth_unix(0, 0), &opaque(fh)))
        .await
        .expect("GETATTR reply");
    assert_eq!((accept_stat(&r), word(&r, 6)), (Some(0), 0));
    // fattr3: type, mode, nlink, uid, gid, size (words 7..=11, size at 12-13).
    (u64::from(word(&r, 12)) << 32) | u64::from(word(&r, 13))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_beyond_the_maximum_are_fbig_and_cost_nothing() {
    let max = tm_storage::MAX_FILE_SIZE;
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path()).await;
    let mut c = Raw::connect(srv.addr).await;
    let root = c.mount("/shares/default").await;
    let f = raw_create(&mut c, &root, "sparse").await;
    let tib16 = 16u64 << 40;
    let t = std::time::Instant::now();
    assert_eq!(
        raw_truncate(&mut c, &f, tib16).await,
        NFS3ERR_FBIG,
        "16 TiB"
    );
    assert_eq!(raw_truncate(&mut c, &f, max + 1).await, NFS3ERR_FBIG);
    assert_eq!(
        raw_write(&mut c, &f, tib16, 0, b"x").await,
        NFS3ERR_FBIG,
        "UNSTABLE"
    );
    assert_eq!(
        raw_write(&mut c, &f, max, 2, b"x").await,
        NFS3ERR_FBIG,
        "FILE_SYNC"
    );
    assert_eq!(
        raw_write(&mut c, &f, u64::MAX - 1, 0, b"xy").await,
        NFS3ERR_FBIG
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "refusals are immediate"
    );
    // Nothing was stored; a write ending at the maximum is fine.
    assert_eq!(raw_size(&mut c, &f).await, 0);
    assert_eq!(raw_write(&mut c, &f, max - 1, 2, b"z").await, 0);
    assert_eq!(raw_size(&mut c, &f).await, max);
    // CREATE with a size beyond the maximum.
    let mut a = opaque(&root);
    a.extend(opaque(b"big"));
    a.extend(words(&[0, 0, 0, 0, 1, (tib16 >> 32) as u32, 0, 0, 0]));
    let r = c
        .call(&call(xid(), PROG_NFS, 8, &auth_unix(0, 0), &a))
        .await
        .expect("CREATE reply");
    assert_eq!(word(&r, 6), NFS3ERR_FBIG, "CREATE with a 16 TiB size");
    srv.stop().await;
}

/// Whether the server closes `s` within `within` (reads until end of file or an error).
async fn closed_within(s: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 512];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickled_records_and_idle_clients_are_dropped() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), |_| {}).await;
    let srv = start_with(dir.path(), store, |c| {
        c.record_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(3);
    })
    .await;
    let bound = Duration::from_secs(3);
    // Half a record mark.
    let mut a = Raw::connect(srv.addr).await;
    a.s.write_all(&[0x80, 0]).await.expect("send");
    // A record announcing 1000 bytes, 40 of them sent (a mounted client's call started).
    let mut b = Raw::connect(srv.addr).await;
    let root = b.mount("/shares/default").await;
    let full = call(xid(), PROG_NFS, 18, &auth_unix(0, 0), &opaque(&root));
    let mut part = (1000u32 | 0x8000_0000).to_be_bytes().to_vec();
    part.extend_from_slice(&full[..40]);
    b.s.write_all(&part).await.expect("send");
    let t = Instant::now();
    assert!(closed_within(&mut a.s, bound).await, "half a record mark");
    assert!(closed_within(&mut b.s, bound).await, "a partial record");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    // A record trickled a byte every 100 ms (would take 10 s).
    let mut c = Raw::connect(srv.addr).await;
    let mut rec = (full.len() as u32 | 0x8000_0000).to_be_bytes().to_vec();
    rec.extend_from_slice(&full);
    let t = Instant::now();
    let mut sent = 0;
    for byte in rec.iter().take(100) {
        if c.s.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sent < 100,
        "the server read a trickled record for {:?}",
        t.elapsed()
    );
    assert!(closed_within(&mut c.s, bound).await, "a trickled record");
    // A silent client is dropped after the idle timeout; one that keeps calling is not.
    let mut idle = Raw::connect(srv.addr).await;
    let mut busy = Raw::connect(srv.addr).await;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        let r = busy
            .call(&call(xid(), PROG_NFS, 18, &auth_unix(0, 0), &opaque(&root)))
            .await
            .expect("a client that keeps calling is served");
        assert_eq!(word(&r, 6), 0);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(closed_within(&mut idle.s, bound).await, "an idle client");
    srv.stop().await;
}

const ESTABLISHED: u8 = 1;

/// TCP state (as /proc/net/tcp numbers it) of this process's connection from local port
/// `local` to port `remote`.
fn tcp_state(local: u16, remote: u16) -> Option<u8> {
    for f in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = std::fs::read_to_string(f).ok()?;
        for line in text.lines().skip(1) {
            let c: Vec<&str> = line.split_whitespace().collect();
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
            if c.len() > 3 && port(c[1]) == Some(local) && port(c[2]) == Some(remote) {
                return u8::from_str_radix(c[3], 16).ok();
            }
        }
    }
    None
}

/// READ of `count` bytes at 0 of `fh` (call record without record mark).
fn read_call(fh: &[u8], count: u32) -> Vec<u8> {
    let mut a = opaque(fh);
    a.extend(words(&[0, 0, count]));
    call(xid(), PROG_NFS, 6, &auth_unix(0, 0), &a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_replies_is_dropped() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), |_| {}).await;
    let srv = start_with(dir.path(), store, |c| {
        c.reply_timeout = Duration::from_secs(1);
    })
    .await;
    let mut c = Raw::connect(srv.addr).await;
    let root = c.mount("/shares/default").await;
    let f = raw_create(&mut c, &root, "big").await;
    assert_eq!(raw_write(&mut c, &f, 0, 2, &[0x61; 1 << 20]).await, 0);
    // 300 READs of 1 MiB each (300 MiB of replies, far beyond the socket buffers), never read.
    let t = Instant::now();
    let mut sent = 0;
    for _ in 0..300 {
        match tokio::time::timeout(Duration::from_secs(5), c.send(&read_call(&f, 1 << 20))).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    assert!(sent >= 20, "only {sent} calls sent");
    // Meanwhile the server serves other clients.
    let mut other = Raw::connect(srv.addr).await;
    let r = other
        .call(&call(xid(), PROG_NFS, 18, &auth_unix(0, 0), &opaque(&root)))
        .await
        .expect("FSSTAT reply");
    assert_eq!(
        (accept_stat(&r), word(&r, 6)),
        (Some(0), 0),
        "FSSTAT NFS3_OK"
    );
    // The server ends the stuck connection (our socket sees its FIN while we still read
    // nothing); unpatched it stays established, the server blocked on the reply forever.
    let local = c.s.local_addr().expect("local").port();
    let deadline = Instant::now() + Duration::from_secs(15);
    while tcp_state(local, srv.addr.port()) == Some(ESTABLISHED) {
        assert!(
            Instant::now() < deadline,
            "the server kept a client that reads no replies ({sent} calls sent)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "not before the reply timeout: {:?}",
        t.elapsed()
    );
    assert!(closed_within(&mut c.s, Duration::from_secs(10)).await);
    // And it still serves READs.
    let r = other.call(&read_call(&f, 4096)).await.expect("READ reply");
    assert_eq!((accept_stat(&r), word(&r, 6)), (Some(0), 0), "READ NFS3_OK");
    srv.stop().await;
}
