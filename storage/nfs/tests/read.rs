//! READ served from chunk files (`sendfile`, and the copying path): exact bytes at unaligned offsets across chunk
//! boundaries, inline small files, EOF, staged writes, many concurrent READs on one
//! connection, and corrupt (short) chunk files.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use nfs3_client::nfs3_types::nfs3::*;
use tm_nfs::ReadSend;
use tm_storage::{ChunkStore, FsChunkStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server whose READ replies go out by `mode`.
async fn start_mode(dir: &std::path::Path, mode: ReadSend) -> Srv {
    let store = open_store(dir, |_| {}).await;
    start_with(dir, store, |c| c.read_send = mode).await
}

/// `data` written as one file (FILE_SYNC, 1 MiB calls).
async fn file_with(c: &mut Conn, root: &nfs_fh3, n: &str, data: &[u8]) -> nfs_fh3 {
    let f = mkfile(c, root, n).await;
    for (i, part) in data.chunks(MIB).enumerate() {
        write(c, &f, (i * MIB) as u64, part, stable_how::FILE_SYNC)
            .await
            .expect("write");
    }
    f
}

/// What a READ of `count` at `off` must return: `(bytes, eof)`.
fn expect(data: &[u8], off: u64, count: u32) -> (Vec<u8>, bool) {
    let s = (off as usize).min(data.len());
    let e = (s + count as usize).min(data.len());
    (data[s..e].to_vec(), e == data.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaligned_reads_across_chunks_inline_files_and_eof() {
    for mode in [ReadSend::Sendfile, ReadSend::Copy, ReadSend::Auto] {
        unaligned_reads(mode).await;
    }
}

async fn unaligned_reads(mode: ReadSend) {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start_mode(d.path(), mode).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let data = pattern(11, 3 * MIB + 12_345);
    let f = file_with(&mut c, &root, "multi", &data).await;
    assert!(
        srv.store
            .open_object("default", "multi")
            .expect("obj")
            .chunk_ids()
            .len()
            >= 4
    );
    let m = MIB as u64;
    let size = data.len() as u64;
    let cases: [(u64, u32); 14] = [
        (0, 1 << 20),
        (1, 1 << 20),
        (m - 3, 10),
        (m - 1, 2),
        (m / 2 + 7, (1 << 20) - 5),
        (2 * m - 100, 1 << 20),
        (2 * m + 1, 1),
        (3 * m - 1, 1 << 20),
        (m, 5),
        (size - 3, 3),
        (size - 2, 100),
        (size, 10),
        (size + 4096, 10),
        (7, 0),
    ];
    for (off, count) in cases {
        let got = read(&mut c, &f, off, count).await.expect("read");
        assert_eq!(got, expect(&data, off, count), "READ {off}+{count}");
    }
    // A count above the 1 MiB cap gets at most the cap.
    let (big, eof) = read(&mut c, &f, 3, 4 << 20).await.expect("read");
    assert_eq!((big.as_slice(), eof), (&data[3..3 + MIB], false));
    assert_eq!(read_all(&mut c, &f).await, data);

    // Inline (small) file: odd lengths exercise the XDR pad.
    let small = pattern(12, 1001);
    let g = file_with(&mut c, &root, "small", &small).await;
    for (off, count) in [(0, 1001), (3, 7), (1000, 5), (999, 1), (1001, 4), (5000, 1)] {
        let got = read(&mut c, &g, off, count).await.expect("read small");
        assert_eq!(got, expect(&small, off, count), "small READ {off}+{count}");
    }
    // Empty file.
    let e = mkfile(&mut c, &root, "empty").await;
    assert_eq!(
        read(&mut c, &e, 0, 100).await.expect("read"),
        (Vec::new(), true)
    );
    // Directories are not readable.
    assert_eq!(
        read(&mut c, &root, 0, 10).await,
        Err(nfsstat3::NFS3ERR_ISDIR)
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_after_unstable_write_without_commit_sees_new_bytes() {
    for mode in [ReadSend::Sendfile, ReadSend::Copy] {
        read_after_unstable_write(mode).await;
    }
}

async fn read_after_unstable_write(mode: ReadSend) {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start_mode(d.path(), mode).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let mut data = pattern(21, 2 * MIB + 77);
    let f = file_with(&mut c, &root, "f", &data).await;
    // Read first (caches the reader and its open chunk files), then patch across a boundary.
    assert_eq!(
        read(&mut c, &f, MIB as u64 - 10, 20).await.expect("read").0,
        &data[MIB - 10..MIB + 10]
    );
    let patch = pattern(22, 40);
    let w = write(&mut c, &f, MIB as u64 - 20, &patch, stable_how::UNSTABLE)
        .await
        .expect("write");
    assert_eq!(w.committed, stable_how::UNSTABLE);
    data[MIB - 20..MIB + 20].copy_from_slice(&patch);
    let got = read(&mut c, &f, MIB as u64 - 30, 60).await.expect("read");
    assert_eq!(got, expect(&data, MIB as u64 - 30, 60));
    // Growing the file with an unstable write: the new tail and the size are read back.
    let tail = pattern(23, 1000);
    let end = data.len() as u64;
    write(&mut c, &f, end + 100, &tail, stable_how::UNSTABLE)
        .await
        .expect("write");
    data.extend_from_slice(&[0u8; 100]);
    data.extend_from_slice(&tail);
    let got = read(&mut c, &f, end - 5, 1 << 20).await.expect("read");
    assert_eq!(got, expect(&data, end - 5, 1 << 20));
    assert!(got.1, "eof at the new end");
    assert_eq!(read_all(&mut c, &f).await, data);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_never_return_bytes_read_ahead_before_a_change() {
    // Copy mode, one READ at a time: from the second sequential READ on, the server reads the
    // next range ahead after each reply.
    let d = tempfile::tempdir().expect("tmp");
    let srv = start_mode(d.path(), ReadSend::Copy).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let mut data = pattern(31, 6 * MIB);
    let f = file_with(&mut c, &root, "seq", &data).await;
    let m = MIB as u64;
    let count = 1 << 20;
    for i in 0..2 {
        let got = read(&mut c, &f, i * m, count).await.expect("read");
        assert!(got == expect(&data, i * m, count), "range {i}");
    }
    // Range 2 was read ahead; replaced over S3 before the client asks for it.
    data = pattern(32, 6 * MIB);
    put_object(&srv.store, "default", "seq", &data);
    let got = read(&mut c, &f, 2 * m, count).await.expect("read");
    assert!(
        got == expect(&data, 2 * m, count),
        "range 2 after the S3 replace"
    );
    // Range 3 was read ahead; an unstable write over NFS changes it.
    let patch = pattern(33, 100);
    write(&mut c, &f, 3 * m + 10, &patch, stable_how::UNSTABLE)
        .await
        .expect("write");
    data[3 * MIB + 10..3 * MIB + 110].copy_from_slice(&patch);
    let got = read(&mut c, &f, 3 * m, count).await.expect("read");
    assert!(
        got == expect(&data, 3 * m, count),
        "range 3 after the NFS write"
    );
    // Unchanged ranges read ahead, a skip backwards, and the end.
    for off in [4 * m, 5 * m, m, 2 * m, 5 * m + 7] {
        let got = read(&mut c, &f, off, count).await.expect("read");
        assert!(got == expect(&data, off, count), "at {off}");
    }
    srv.stop().await;
}

/// One READ call record (AUTH_SYS root, empty machine name) for file handle `fh`.
fn read_call(xid: u32, fh: &[u8], off: u64, count: u32) -> Vec<u8> {
    let mut v = Vec::new();
    let cred = [1, 20, 0, 0, 0, 0, 0];
    let head = [xid, 0, 2, 100_003, 3, 6];
    for w in head.iter().chain(&cred).chain(&[0, 0, fh.len() as u32]) {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(fh);
    v.resize(v.len() + (4 - fh.len() % 4) % 4, 0);
    v.extend_from_slice(&off.to_be_bytes());
    v.extend_from_slice(&count.to_be_bytes());
    let mut rec = ((v.len() as u32) | 0x8000_0000).to_be_bytes().to_vec();
    rec.extend_from_slice(&v);
    rec
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// `(xid, data, eof)` of a successful READ reply record (panics on anything else).
fn parse_read_reply(rec: &[u8]) -> (u32, Vec<u8>, bool) {
    let xid = be32(rec, 0);
    assert_eq!(be32(rec, 4), 1, "a reply");
    assert_eq!(be32(rec, 8), 0, "accepted");
    let vlen = be32(rec, 16) as usize;
    let mut at = 20 + vlen.div_ceil(4) * 4;
    assert_eq!(be32(rec, at), 0, "SUCCESS");
    assert_eq!(be32(rec, at + 4), 0, "NFS3_OK");
    at += 8;
    assert_eq!(be32(rec, at), 1, "post-op attributes present");
    at += 4 + 84;
    let count = be32(rec, at) as usize;
    let eof = be32(rec, at + 4) != 0;
    let n = be32(rec, at + 8) as usize;
    assert_eq!(count, n);
    at += 12;
    assert_eq!(
        rec.len(),
        at + n.div_ceil(4) * 4,
        "record length matches the data"
    );
    assert!(rec[at + n..].iter().all(|b| *b == 0), "zero pad");
    (xid, rec[at..at + n].to_vec(), eof)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_reads_on_one_connection_do_not_interleave() {
    for mode in [ReadSend::Sendfile, ReadSend::Copy] {
        concurrent_reads(mode).await;
    }
}

async fn concurrent_reads(mode: ReadSend) {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start_mode(d.path(), mode).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let data = pattern(31, 4 * MIB + 3);
    let f = file_with(&mut c, &root, "conc", &data).await;
    let small = pattern(32, 513);
    let g = file_with(&mut c, &root, "tiny", &small).await;
    let s = TcpStream::connect(srv.addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    // 96 READs sent back to back before any reply is read: the server runs them
    // concurrently and replies in whatever order they finish.
    let mut want: HashMap<u32, (Vec<u8>, bool)> = HashMap::new();
    let mut calls = Vec::new();
    for i in 0..96u32 {
        let xid = 1000 + i;
        let (fh, body) = if i % 8 == 7 {
            (&g, &small)
        } else {
            (&f, &data)
        };
        let off = (u64::from(i) * 333_331) % (body.len() as u64 + 10);
        let count = [1 << 20, 1, 4095, 777_777, 65_537][i as usize % 5];
        want.insert(xid, expect(body, off, count));
        calls.extend_from_slice(&read_call(xid, fh.data.as_ref(), off, count));
    }
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&calls).await.expect("send calls");
        w
    });
    let mut order = Vec::new();
    while order.len() < 96 {
        let rec = read_half_record(&mut r).await.expect("reply record");
        let (xid, bytes, eof) = parse_read_reply(&rec);
        let w = want.remove(&xid).expect("a reply per call, once");
        assert_eq!((bytes, eof), w, "reply to xid {xid}");
        order.push(xid);
    }
    order.sort_unstable();
    assert_eq!(order, (1000..1096).collect::<Vec<_>>());
    drop(writer.await.expect("writer"));
    srv.stop().await;
}

async fn read_half_record(s: &mut tokio::net::tcp::OwnedReadHalf) -> std::io::Result<Vec<u8>> {
    let mut rec = Vec::new();
    loop {
        let mut h = [0u8; 4];
        s.read_exact(&mut h).await?;
        let h = u32::from_be_bytes(h);
        let at = rec.len();
        rec.resize(at + (h & 0x7fff_ffff) as usize, 0);
        s.read_exact(&mut rec[at..]).await?;
        if h & 0x8000_0000 != 0 {
            return Ok(rec);
        }
    }
}

/// The on-disk path of chunk `i` of `share/key`.
fn chunk_path(srv: &Srv, key: &str, i: usize) -> std::path::PathBuf {
    let id = srv
        .store
        .open_object("default", key)
        .expect("obj")
        .chunk_ids()[i];
    let cs = FsChunkStore::open(srv.dir.join("chunks")).expect("chunk store");
    assert!(cs.exists(&id).expect("exists"));
    cs.path(&id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_chunk_file_is_an_io_error_or_closes_the_connection() {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start_mode(d.path(), ReadSend::Sendfile).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let data = pattern(41, 2 * MIB);
    let f = file_with(&mut c, &root, "a", &data).await;
    let g = file_with(&mut c, &root, "b", &pattern(42, 2 * MIB)).await;
    // Before anything is sent: a chunk file found short when opened is NFS3ERR_IO.
    let cut = |p: std::path::PathBuf| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .expect("open chunk")
            .set_len(1000)
            .expect("truncate")
    };
    cut(chunk_path(&srv, "a", 1));
    assert_eq!(
        read(&mut c, &f, 0, 10).await.expect("intact chunk").0,
        &data[..10]
    );
    assert_eq!(
        read(&mut c, &f, MIB as u64, 4096).await,
        Err(nfsstat3::NFS3ERR_IO)
    );
    // After the record mark went out (the file was already open and checked when it was cut
    // short): the connection is closed instead of sending a malformed record.
    assert_eq!(
        read(&mut c, &g, MIB as u64, 10)
            .await
            .expect("read")
            .0
            .len(),
        10
    );
    cut(chunk_path(&srv, "b", 1));
    // (A raw connection: `nfs3_client` spins on a closed socket instead of failing.)
    let addr: SocketAddr = srv.addr;
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    w.write_all(&read_call(7, g.data.as_ref(), MIB as u64 + 20, 4096))
        .await
        .expect("send");
    let got = tokio::time::timeout(Duration::from_secs(30), read_half_record(&mut r))
        .await
        .expect("the server closes the connection (no hang)");
    assert!(
        got.is_err(),
        "the connection is closed, not answered with a record: {got:?}"
    );
    // The old connection still gets answers for intact data, and new ones are served.
    assert_eq!(read(&mut c, &g, 0, 10).await.expect("read").0.len(), 10);
    // The server keeps serving other connections.
    let mut c2 = mount(addr, "/shares/default").await.expect("remount");
    assert_eq!(read(&mut c2, &f, 5, 5).await.expect("read").0, &data[5..10]);
    srv.stop().await;
}
