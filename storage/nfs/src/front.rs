//! The RPC front: the socket clients connect to. It sees each call before `nfs3_server` does.
//!
//! Per connection it knows the client address, so it (1) refuses sources outside the allowed
//! networks: `MNT` gets `MNT3ERR_ACCES`, every other call except NULL `AUTH_TOOWEAK`, and no byte
//! reaches the server; (2) answers `MKNOD`/`LINK` with `NFS3ERR_NOTSUPP` (the library would send
//! `PROC_UNAVAIL`); (3) passes `MKDIR` attributes and the REMOVE/RMDIR distinction to [`Vfs`]
//! (the library's trait drops them); (4) re-bases `READDIR` cookie verifiers on the directory's
//! current state so cookies keep working while the directory changes; (5) puts a per-boot write
//! verifier in WRITE/COMMIT replies (the library would send the handle generation, which we keep
//! across restarts) and real quota/usage figures in FSSTAT replies; (6) serves the hot
//! procedures READ, WRITE, GETATTR and LOOKUP itself through the same [`Vfs`] (no loopback hop,
//! fewer copies; WRITEs in arrival order; READ data goes from the chunk files to the socket by
//! `sendfile(2)` on connections with a large MSS, see [`crate::ReadSend`] and
//! [`write_read_reply`]). Everything else is forwarded byte for byte to the
//! library over an in-process pipe (`upstream.rs`; no socket other processes could reach).

use std::collections::HashMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use nfs3_server::nfs3_types::nfs3::sattr3;
use nfs3_server::nfs3_types::xdr_codec::Unpack;
use nfs3_server::vfs::{FileHandleU64, NfsReadFileSystem};
use tm_storage::Segment;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use crate::access::Access;
use crate::vfs::{set_attrs, Hint, Vfs};
use crate::{ReadSend, SENDFILE_MIN_MSS};

pub(crate) const PROG_NFS: u32 = 100_003;
const PROG_MOUNT: u32 = 100_005;
const MOUNT_MNT: u32 = 1;
const NFS_WRITE: u32 = 7;
const NFS_MKDIR: u32 = 9;
const NFS_SYMLINK: u32 = 10;
const NFS_MKNOD: u32 = 11;
const NFS_RMDIR: u32 = 13;
const NFS_LINK: u32 = 15;
const NFS_READDIR: u32 = 16;
const NFS_FSSTAT: u32 = 18;
const NFS_COMMIT: u32 = 21;
const NFS3ERR_NOTSUPP: u32 = 10004;
const MNT3ERR_ACCES: u32 = 13;
const AUTH_TOOWEAK: u32 = 5;
/// Largest RPC record accepted (a 1 MiB WRITE plus headers).
const MAX_RECORD: usize = (1 << 20) + (64 << 10);

/// Shared by all connections.
pub(crate) struct Front {
    pub access: Access,
    /// The library, served over one in-process pipe per client connection.
    pub upstream: Arc<crate::upstream::Library>,
    pub vfs: Vfs,
    /// Write verifier of this process (random per start).
    pub verf: [u8; 8],
    /// How READ replies carry file data.
    pub read_send: ReadSend,
    /// See [`crate::NfsConfig::busy_poll`].
    pub busy_poll: std::time::Duration,
    /// Calls in flight, per connection and in the server ([`crate::limit`]).
    pub slots: Arc<crate::limit::Slots>,
    /// Who may do what on which share ([`crate::gate`]); `None`: the source check only.
    pub gate: Option<Arc<dyn crate::gate::Gate>>,
    /// Inode -> share, for the gate.
    pub shares: crate::gate::ShareCache,
    /// Share -> identity squashing ([`crate::perm`]).
    pub squash: crate::perm::SquashCache,
    /// See [`crate::NfsConfig::idle_timeout`] and [`crate::NfsConfig::record_timeout`].
    pub idle_timeout: std::time::Duration,
    pub record_timeout: std::time::Duration,
    /// See [`crate::NfsConfig::reply_timeout`] ([`crate::limit::reply_within`]).
    pub reply_timeout: std::time::Duration,
}

#[derive(Clone, Copy)]
enum Patch {
    Verf,
    Fsstat(u64),
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// The parsed header of an RPC call record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Call {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    /// Offset of the procedure arguments.
    pub args: usize,
}

/// Parse an RPC CALL header (None for anything else or a truncated record).
pub(crate) fn parse_call(rec: &[u8]) -> Option<Call> {
    if be32(rec, 4)? != 0 || be32(rec, 8)? != 2 {
        return None;
    }
    let cred_len = be32(rec, 28)? as usize;
    let verf_at = 32usize.checked_add(pad4(cred_len))?;
    let verf_len = be32(rec, verf_at + 4)? as usize;
    let args = (verf_at + 8).checked_add(pad4(verf_len))?;
    if args > rec.len() {
        return None;
    }
    Some(Call {
        xid: be32(rec, 0)?,
        prog: be32(rec, 12)?,
        vers: be32(rec, 16)?,
        proc_: be32(rec, 20)?,
        args,
    })
}

/// `(inode, offset after the handle)` of the nfs_fh3 at `at`.
pub(crate) fn handle_at(rec: &[u8], at: usize) -> Option<(u64, usize)> {
    let len = be32(rec, at)? as usize;
    let data = rec.get(at + 4..at + 4 + len)?;
    if len != 16 {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[8..16]);
    Some((FileHandleU64::from_bytes_ne(b), at + 4 + pad4(len)))
}

trait FromNe {
    fn from_bytes_ne(b: [u8; 8]) -> u64;
}

impl FromNe for FileHandleU64 {
    /// `FileHandleU64` stores the inode in native byte order.
    fn from_bytes_ne(b: [u8; 8]) -> u64 {
        u64::from_ne_bytes(b)
    }
}

/// `(dir inode, name, offset after the name)` of a diropargs3 at `at`.
pub(crate) fn dirop_at(rec: &[u8], at: usize) -> Option<(u64, Vec<u8>, usize)> {
    let (dir, at) = handle_at(rec, at)?;
    let len = be32(rec, at)? as usize;
    let name = rec.get(at + 4..at + 4 + len)?.to_vec();
    Some((dir, name, at + 4 + pad4(len)))
}

fn accepted(xid: u32, body: &[u32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + body.len() * 4);
    for w in [xid, 1, 0, 0, 0, 0].iter().chain(body) {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

fn denied(xid: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    for w in [xid, 1, 1, 1, AUTH_TOOWEAK] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

/// The local answer to a call from a refused source.
pub(crate) fn refuse(call: &Call) -> Vec<u8> {
    match (call.prog, call.proc_) {
        (_, 0) => accepted(call.xid, &[]),
        (PROG_MOUNT, MOUNT_MNT) => accepted(call.xid, &[MNT3ERR_ACCES]),
        _ => denied(call.xid),
    }
}

pub(crate) async fn read_record(
    r: &mut (impl AsyncReadExt + Unpin),
) -> std::io::Result<Option<Vec<u8>>> {
    let mut rec = Vec::new();
    loop {
        let mut h = [0u8; 4];
        match r.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && rec.is_empty() => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
        let h = u32::from_be_bytes(h);
        let len = (h & 0x7fff_ffff) as usize;
        if rec.len() + len > MAX_RECORD {
            return Err(std::io::Error::other("RPC record too large"));
        }
        let start = rec.len();
        rec.reserve_exact(len);
        // Into the spare capacity: no zeroing of large WRITE payloads first.
        let got = (&mut *r).take(len as u64).read_to_end(&mut rec).await?;
        if got != len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        debug_assert_eq!(rec.len(), start + len);
        if h & 0x8000_0000 != 0 {
            return Ok(Some(rec));
        }
    }
}

/// Runs one fast-path call with its panics contained: a panic is logged with the procedure,
/// counted, and answered `NFS3ERR_SERVERFAULT`; the connection and the server go on.
async fn contained(call: &Call, f: impl std::future::Future<Output = fast::Reply>) -> fast::Reply {
    let kind = format!("NFSv3 procedure {}", call.proc_);
    #[cfg(test)]
    let f = async {
        crate::contain::maybe_panic(call.xid);
        f.await
    };
    match crate::contain::contained(kind, f).await {
        Ok(r) => r,
        Err(()) => fast::Reply::Parts(vec![crate::limit::serverfault(call.xid, call.proc_)]),
    }
}

/// Write one record made of several parts with vectored writes (no concatenation).
async fn write_record_parts(w: &mut OwnedWriteHalf, parts: &[&[u8]]) -> std::io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(total).map_err(std::io::Error::other)?;
    let mark = (len | 0x8000_0000).to_be_bytes();
    let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    all.push(&mark);
    all.extend(parts.iter().copied().filter(|p| !p.is_empty()));
    let (mut idx, mut off) = (0usize, 0usize);
    while idx < all.len() {
        let slices: Vec<std::io::IoSlice<'_>> =
            std::iter::once(std::io::IoSlice::new(&all[idx][off..]))
                .chain(all[idx + 1..].iter().map(|p| std::io::IoSlice::new(p)))
                .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && idx < all.len() {
            let rem = all[idx].len() - off;
            if n >= rem {
                n -= rem;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Send one fast-path reply while holding the connection's writer (replies of concurrent
/// calls never interleave). A READ reply whose data cannot all be sent after its record mark
/// went out (a chunk file shorter than announced, or a socket error) closes the connection:
/// the client then reconnects and retries instead of parsing a malformed record.
async fn send_reply(
    cw: &tokio::sync::Mutex<OwnedWriteHalf>,
    reply: fast::Reply,
    peer: SocketAddr,
    deadline: &Deadline,
) -> std::io::Result<()> {
    let mut w = cw.lock().await;
    let (t, conn) = (deadline.0, &deadline.1);
    crate::limit::reply_within(t, conn, peer, async move { match reply {
        fast::Reply::Parts(parts) => {
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            write_record_parts(&mut w, &refs).await
        }
        fast::Reply::Read { head, segs } => {
            let r = write_read_reply(w.as_ref(), &head, &segs).await;
            if let Err(e) = &r {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    tracing::error!(%peer, "nfs: READ reply cut short ({e}); closing the connection");
                } else {
                    tracing::debug!(%peer, "nfs: READ reply failed: {e}");
                }
                let _ = rustix::net::shutdown(w.as_ref(), rustix::net::Shutdown::Both);
            }
            r
        }
    }})
    .await
}

/// A connection's reply timeout and a duplicate of its socket ([`crate::limit::reply_within`]).
type Deadline = (std::time::Duration, std::os::fd::OwnedFd);

/// Writes one reply record under the connection's writer, within the reply timeout.
async fn reply_record(
    cw: &tokio::sync::Mutex<OwnedWriteHalf>,
    rec: &[u8],
    peer: SocketAddr,
    deadline: &Deadline,
) -> std::io::Result<()> {
    let mut w = cw.lock().await;
    crate::limit::reply_within(deadline.0, &deadline.1, peer, write_record(&mut *w, rec)).await
}

/// Write a READ reply record: record mark and `head` (everything up to and including the
/// opaque length) with `MSG_MORE`, each segment (bytes with `send`, chunk files with
/// `sendfile(2)`: no copy through user space), then the XDR pad. The socket is corked while a
/// chunk file segment is followed by more bytes (`sendfile` pushes at its end otherwise).
async fn write_read_reply(s: &TcpStream, head: &[u8], segs: &[Segment]) -> std::io::Result<()> {
    let data: usize = segs.iter().map(Segment::len).sum();
    let pad = pad4(data) - data;
    let total = head.len() + data + pad;
    let len = u32::try_from(total)
        .ok()
        .filter(|l| *l < 0x8000_0000)
        .ok_or_else(|| std::io::Error::other("READ reply too large"))?;
    let mut first = Vec::with_capacity(4 + head.len());
    first.extend_from_slice(&(len | 0x8000_0000).to_be_bytes());
    first.extend_from_slice(head);
    let cork = segs
        .iter()
        .enumerate()
        .any(|(i, sg)| matches!(sg, Segment::File { .. }) && (i + 1 < segs.len() || pad > 0));
    if cork {
        rustix::net::sockopt::set_tcp_cork(s, true)?;
    }
    send_all(s, &first, data > 0).await?;
    for (i, sg) in segs.iter().enumerate() {
        let more = i + 1 < segs.len() || pad > 0;
        match sg {
            Segment::Bytes(b) => send_all(s, b, more).await?,
            Segment::File { file, offset, len } => sendfile_all(s, file, *offset, *len).await?,
        }
    }
    if pad > 0 {
        send_all(s, &[0u8; 3][..pad], false).await?;
    }
    if cork {
        rustix::net::sockopt::set_tcp_cork(s, false)?;
    }
    Ok(())
}

/// `send` all of `b` on the non-blocking socket (`MSG_MORE` when more of the record follows).
async fn send_all(s: &TcpStream, mut b: &[u8], more: bool) -> std::io::Result<()> {
    let mut flags = rustix::net::SendFlags::NOSIGNAL;
    if more {
        flags |= rustix::net::SendFlags::MORE;
    }
    while !b.is_empty() {
        s.writable().await?;
        let r = s.try_io(Interest::WRITABLE, || {
            rustix::net::send(s, b, flags).map_err(std::io::Error::from)
        });
        match r {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => b = &b[n..],
            Err(e) if retry(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `sendfile` bytes `offset..offset + len` of `file` to the non-blocking socket; a file that
/// ends early is `UnexpectedEof`.
async fn sendfile_all(
    s: &TcpStream,
    file: &std::fs::File,
    mut offset: u64,
    mut len: usize,
) -> std::io::Result<()> {
    while len > 0 {
        s.writable().await?;
        let r = s.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(s, file, Some(&mut offset), len).map_err(std::io::Error::from)
        });
        match r {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "chunk file shorter than its segment",
                ))
            }
            Ok(n) => len -= n.min(len),
            Err(e) if retry(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether a socket call should simply be tried again (after the next readiness).
fn retry(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

async fn write_record(w: &mut (impl AsyncWriteExt + Unpin), rec: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(rec.len()).map_err(std::io::Error::other)?;
    let hdr = (len | 0x8000_0000).to_be_bytes();
    if rec.len() > 64 << 10 {
        // Large (READ replies, WRITE calls): no copy, two writes.
        w.write_all(&hdr).await?;
        return w.write_all(rec).await;
    }
    let mut out = Vec::with_capacity(rec.len() + 4);
    out.extend_from_slice(&hdr);
    out.extend_from_slice(rec);
    w.write_all(&out).await
}

/// Offset of the procedure result in an accepted, successful reply.
fn reply_result(rec: &[u8]) -> Option<usize> {
    if be32(rec, 4)? != 1 || be32(rec, 8)? != 0 {
        return None;
    }
    let vlen = be32(rec, 16)? as usize;
    let at = 20 + pad4(vlen);
    if be32(rec, at)? != 0 {
        return None;
    }
    Some(at + 4)
}

impl Front {
    /// Whether the client already sent more (a pipelining client): its slow calls are then
    /// spawned so that the following ones are read meanwhile.
    fn more_waiting(r: &tokio::net::tcp::OwnedReadHalf) -> bool {
        let mut b = [0u8; 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        matches!(rustix::net::recv(r.as_ref(), &mut b, flags), Ok((n, _)) if n > 0)
    }

    /// Serve one client connection until it closes.
    pub(crate) async fn connection(self: Arc<Self>, client: TcpStream, peer: SocketAddr) {
        let _ = client.set_nodelay(true);
        let sendfile = match self.read_send {
            ReadSend::Copy => false,
            ReadSend::Sendfile => true,
            ReadSend::Auto => socket2::SockRef::from(&client)
                .tcp_mss()
                .is_ok_and(|m| m >= SENDFILE_MIN_MSS),
        };
        let allowed = self.access.allows(peer.ip());
        if !allowed {
            tracing::info!(%peer, "nfs: refusing a client outside the mesh");
        }
        let deadline = match std::os::fd::AsFd::as_fd(&client).try_clone_to_owned() {
            Ok(fd) => Arc::new((self.reply_timeout, fd)),
            Err(e) => {
                tracing::warn!(%peer, "nfs: dropping a connection: {e}");
                return;
            }
        };
        let (mut cr, cw) = client.into_split();
        let cw = Arc::new(tokio::sync::Mutex::new(cw));
        let pending: Arc<Mutex<HashMap<u32, Patch>>> = Arc::default();
        // Slots of calls forwarded to the library, freed when their reply comes back.
        let slots = self.slots.conn();
        let forwarded: Arc<Mutex<HashMap<u32, crate::limit::Slot>>> = Arc::default();
        let mut up_w = None;
        let mut pump = None;
        if allowed {
            let (mut ur, uw) = crate::upstream::connect(&self.upstream, peer);
            up_w = Some(uw);
            let (cw, pending, me) = (cw.clone(), pending.clone(), self.clone());
            let forwarded = forwarded.clone();
            let deadline = deadline.clone();
            pump = Some(tokio::spawn(async move {
                while let Ok(Some(mut rec)) = read_record(&mut ur).await {
                    let xid = be32(&rec, 0);
                    let patch = xid.and_then(|xid| {
                        pending
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&xid)
                    });
                    let slot = xid.and_then(|xid| {
                        forwarded
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&xid)
                    });
                    if let Some(p) = patch {
                        me.patch_reply(&mut rec, p);
                    }
                    if reply_record(&cw, &rec, peer, &deadline).await.is_err() {
                        break;
                    }
                    drop(slot);
                }
                let _ = cw.lock().await.shutdown().await;
            }));
        }
        let mut seq = fast::Sequential::default();
        let mut conn_gate = crate::gate::ConnGate::new(peer.ip());
        // Busy polling (`NfsConfig::busy_poll`): when the last reply was sent and how soon
        // the client's next call followed it.
        let mut sent_at: Option<std::time::Instant> = None;
        let mut last_gap = std::time::Duration::MAX;
        let (idle, record) = (self.idle_timeout, self.record_timeout);
        while let Ok(Some(mut rec)) = crate::limit::next_record(&mut cr, idle, record).await {
            if let Some(t) = sent_at.take() {
                last_gap = t.elapsed();
            }
            let Some(call) = parse_call(&rec) else {
                break;
            };
            if let Some(reply) = crate::xdr_check::refusal(&mut rec, &call) {
                if reply_record(&cw, &reply, peer, &deadline).await.is_err() {
                    break;
                }
                continue;
            }
            if let (Some(g), true) = (&self.gate, up_w.is_some()) {
                let refusal = conn_gate
                    .check(g.as_ref(), &self.shares, &self.vfs, &call, &rec)
                    .await;
                if let Some(reply) = refusal {
                    if reply_record(&cw, &reply, peer, &deadline).await.is_err() {
                        break;
                    }
                    continue;
                }
            }
            if up_w.is_some() {
                if let Some(reply) = crate::perm::check(&self, &call, &mut rec).await {
                    if write_record(&mut *cw.lock().await, &reply).await.is_err() {
                        break;
                    }
                    continue;
                }
            }
            if up_w.is_some() && fast::handles(&call) {
                // Hot procedures are served here without the library hop. WRITEs run in
                // arrival order (overlapping writes must land in order; appending to the
                // buffer is quick, and a full buffer applies back-pressure to this client), as
                // do GETATTR and LOOKUP (quick); READ, CREATE and COMMIT run concurrently.
                if fast::ordered(&call) || !Self::more_waiting(&cr) {
                    // Also READ, CREATE and COMMIT when the client has sent nothing else: a
                    // spawned task would cost a thread wake-up per call on an idle machine,
                    // and there is nothing to overlap it with.
                    let reply = if !sendfile && fast::is_read(&call) {
                        contained(&call, fast::read_in_order(&self, &call, &rec, &mut seq)).await
                    } else {
                        contained(&call, fast::serve(&self, &call, &rec, sendfile)).await
                    };
                    if send_reply(&cw, reply, peer, &deadline).await.is_err() {
                        break;
                    }
                    seq.read_ahead(&self);
                    if last_gap < self.busy_poll {
                        // A client in a tight loop: its next call is due within the budget,
                        // sooner than a sleeping thread would wake for it.
                        let t = std::time::Instant::now();
                        while t.elapsed() < self.busy_poll && !Self::more_waiting(&cr) {
                            std::hint::spin_loop();
                        }
                    }
                    sent_at = Some(std::time::Instant::now());
                } else {
                    // Waiting for a slot stops reading this client (back-pressure).
                    let slot = slots.acquire().await;
                    let (me, cw, deadline) = (self.clone(), cw.clone(), deadline.clone());
                    tokio::spawn(async move {
                        let reply = contained(&call, fast::serve(&me, &call, &rec, sendfile)).await;
                        let _ = send_reply(&cw, reply, peer, &deadline).await;
                        drop(slot);
                    });
                }
                continue;
            }
            let local = match &mut up_w {
                None => Some(refuse(&call)),
                Some(_) => self.inspect(&call, &mut rec, &pending).await,
            };
            let r = match (local, &mut up_w) {
                (Some(reply), _) => reply_record(&cw, &reply, peer, &deadline).await,
                (None, Some(uw)) => {
                    let slot = slots.acquire().await;
                    forwarded
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(call.xid, slot);
                    write_record(uw, &rec).await
                }
                (None, None) => Ok(()),
            };
            if r.is_err() {
                break;
            }
        }
        if let Some(mut uw) = up_w {
            let _ = uw.shutdown().await;
        }
        if let Some(p) = pump {
            let _ = p.await;
        }
    }

    /// Look at an allowed call; `Some(reply)` answers it here instead of forwarding.
    async fn inspect(
        &self,
        call: &Call,
        rec: &mut [u8],
        pending: &Mutex<HashMap<u32, Patch>>,
    ) -> Option<Vec<u8>> {
        if call.prog != PROG_NFS || call.vers != 3 {
            return None;
        }
        let remember = |p: Patch| {
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(call.xid, p);
        };
        match call.proc_ {
            NFS_MKNOD => Some(accepted(call.xid, &[NFS3ERR_NOTSUPP, 0, 0])),
            NFS_LINK => Some(accepted(call.xid, &[NFS3ERR_NOTSUPP, 0, 0, 0])),
            NFS_WRITE | NFS_COMMIT => {
                remember(Patch::Verf);
                None
            }
            NFS_FSSTAT => {
                if let Some((ino, _)) = handle_at(rec, call.args) {
                    remember(Patch::Fsstat(ino));
                }
                None
            }
            NFS_MKDIR => {
                if let Some((dir, name, at)) = dirop_at(rec, call.args) {
                    let mut c = Cursor::new(&rec[at..]);
                    if let Ok((sa, _)) = sattr3::unpack(&mut c) {
                        let mut sa = set_attrs(&sa);
                        crate::perm::own(&mut sa, rec, self.vfs.fs(), dir);
                        self.vfs.hint(dir, name, Hint::Mkdir(sa));
                    }
                }
                None
            }
            NFS_SYMLINK => {
                if let Some((dir, name, _)) = dirop_at(rec, call.args) {
                    let mut sa = tm_storage::SetAttrs::default();
                    crate::perm::own(&mut sa, rec, self.vfs.fs(), dir);
                    self.vfs.hint(dir, name, Hint::Owner(sa.uid, sa.gid));
                }
                None
            }
            NFS_RMDIR => {
                if let Some((dir, name, _)) = dirop_at(rec, call.args) {
                    self.vfs.hint(dir, name, Hint::Rmdir);
                }
                None
            }
            NFS_READDIR => {
                let (dir, at) = handle_at(rec, call.args)?;
                let cookie_at = at;
                let verf_at = at + 8;
                let cookie = rec.get(cookie_at..cookie_at + 8)?;
                let verf = rec.get(verf_at..verf_at + 8)?;
                if cookie.iter().any(|b| *b != 0) && verf.iter().any(|b| *b != 0) {
                    if let Ok(a) = self.vfs.getattr(&FileHandleU64::new(dir)).await {
                        let v = (u64::from(a.mtime.seconds) << 32) | u64::from(a.mtime.nseconds);
                        rec[verf_at..verf_at + 8].copy_from_slice(&v.to_be_bytes());
                    }
                }
                None
            }
            _ => None,
        }
    }

    fn patch_reply(&self, rec: &mut [u8], p: Patch) {
        let Some(res) = reply_result(rec) else {
            return;
        };
        if be32(rec, res) != Some(0) {
            return;
        }
        let n = rec.len();
        match p {
            Patch::Verf if n >= res + 12 => rec[n - 8..].copy_from_slice(&self.verf),
            Patch::Fsstat(ino) if n >= res + 4 + 4 + 52 => {
                let Ok(st) = self.vfs.fs().fsstat(ino) else {
                    return;
                };
                let files_total = st.files + (1 << 32);
                let words = [
                    st.total_bytes,
                    st.free_bytes,
                    st.free_bytes,
                    files_total,
                    1 << 32,
                    1 << 32,
                ];
                let mut at = n - 52;
                for w in words {
                    rec[at..at + 8].copy_from_slice(&w.to_be_bytes());
                    at += 8;
                }
                rec[n - 4..].copy_from_slice(&0u32.to_be_bytes());
            }
            _ => {}
        }
    }
}

/// READ, WRITE, GETATTR and LOOKUP answered by the front itself (same [`Vfs`] calls the library
/// would make; fewer copies and no loopback hop).
mod fast {
    use std::io::Cursor;

    use nfs3_server::nfs3_types::nfs3::{createhow3, fattr3, nfsstat3, stable_how};
    use nfs3_server::nfs3_types::xdr_codec::{Pack, Unpack};
    use nfs3_server::vfs::{FileHandleU64, NfsFileSystem, NfsReadFileSystem};
    use tm_storage::{CreateMode, Segment, SetAttrs};

    use super::{be32, pad4, Call, Front, PROG_NFS};
    use crate::vfs::{blocking, fattr, set_attrs};

    const GETATTR: u32 = 1;
    const LOOKUP: u32 = 3;
    const READ: u32 = 6;
    const WRITE: u32 = 7;
    const CREATE: u32 = 8;
    const COMMIT: u32 = 21;

    pub(super) fn is_read(c: &Call) -> bool {
        c.prog == PROG_NFS && c.vers == 3 && c.proc_ == READ
    }

    /// Served in arrival order on its connection: WRITE (order matters) and the metadata
    /// reads that answer from memory in microseconds (a spawned task would cost a thread
    /// wake-up per call on an idle machine).
    pub(super) fn ordered(c: &Call) -> bool {
        matches!(c.proc_, WRITE | GETATTR | LOOKUP)
    }

    pub(super) fn handles(c: &Call) -> bool {
        c.prog == PROG_NFS
            && c.vers == 3
            && matches!(c.proc_, GETATTR | LOOKUP | READ | WRITE | CREATE | COMMIT)
    }

    fn be64(b: &[u8], at: usize) -> Option<u64> {
        let s = b.get(at..at.checked_add(8)?)?;
        let mut x = [0u8; 8];
        x.copy_from_slice(s);
        Some(u64::from_be_bytes(x))
    }

    /// `(inode, offset after the handle)`, or the status the library would answer.
    fn handle(front: &Front, rec: &[u8], at: usize) -> Result<(u64, usize), nfsstat3> {
        let len = be32(rec, at).ok_or(nfsstat3::NFS3ERR_BADHANDLE)? as usize;
        let data = rec
            .get(at + 4..at + 4 + len)
            .ok_or(nfsstat3::NFS3ERR_BADHANDLE)?;
        if len != 16 {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        }
        let mut g = [0u8; 8];
        g.copy_from_slice(&data[..8]);
        let generation = u64::from_le_bytes(g);
        let ours = front.vfs.fs().generation();
        if generation != ours {
            return Err(if generation < ours {
                nfsstat3::NFS3ERR_STALE
            } else {
                nfsstat3::NFS3ERR_BADHANDLE
            });
        }
        let mut i = [0u8; 8];
        i.copy_from_slice(&data[8..16]);
        Ok((u64::from_ne_bytes(i), at + 4 + pad4(len)))
    }

    fn fh_bytes(front: &Front, ino: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(20);
        v.extend_from_slice(&16u32.to_be_bytes());
        v.extend_from_slice(&front.vfs.fs().generation().to_le_bytes());
        v.extend_from_slice(&ino.to_ne_bytes());
        v
    }

    fn head(xid: u32, status: nfsstat3) -> Vec<u8> {
        let mut v = Vec::with_capacity(256);
        for w in [xid, 1, 0, 0, 0, 0, status as u32] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v
    }

    fn post_op(v: &mut Vec<u8>, a: Option<&fattr3>) {
        match a {
            Some(a) => {
                v.extend_from_slice(&1u32.to_be_bytes());
                let _ = a.pack(v);
            }
            None => v.extend_from_slice(&0u32.to_be_bytes()),
        }
    }

    fn u32s(v: &mut Vec<u8>, ws: &[u32]) {
        for w in ws {
            v.extend_from_slice(&w.to_be_bytes());
        }
    }

    /// A reply record.
    pub(super) enum Reply {
        /// In byte parts (concatenated).
        Parts(Vec<Vec<u8>>),
        /// A successful READ: `head` up to and including the opaque data length, then the
        /// data `segs` (the XDR pad is added when sending).
        Read { head: Vec<u8>, segs: Vec<Segment> },
    }

    /// The reply record; READ data as chunk-file segments when `sendfile`.
    pub(super) async fn serve(front: &Front, c: &Call, rec: &[u8], sendfile: bool) -> Reply {
        if c.proc_ == READ {
            return read(front, c, rec, sendfile).await;
        }
        Reply::Parts(serve_parts(front, c, rec).await)
    }

    /// READ's arguments: `(inode, offset, count)`.
    fn read_args(front: &Front, c: &Call, rec: &[u8]) -> Result<(u64, u64, u32), nfsstat3> {
        let (ino, at) = handle(front, rec, c.args)?;
        let off = be64(rec, at).ok_or(nfsstat3::NFS3ERR_INVAL)?;
        let count = be32(rec, at + 8).ok_or(nfsstat3::NFS3ERR_INVAL)?;
        Ok((ino, off, count))
    }

    /// READ: with `sendfile`, the data as chunk-file segments (errors found while collecting
    /// them, a missing or short chunk file, are answered with a status before anything is
    /// sent); otherwise read into memory.
    async fn read(front: &Front, c: &Call, rec: &[u8], sendfile: bool) -> Reply {
        let vfs = &front.vfs;
        let parsed = read_args(front, c, rec);
        let (ino, off, count) = match parsed {
            Ok(x) => x,
            Err(e) => {
                let mut v = head(c.xid, e);
                post_op(&mut v, None);
                return Reply::Parts(vec![v]);
            }
        };
        if !sendfile {
            return copy_reply(vfs, c, ino, vfs.read_with_attr(ino, off, count).await).await;
        }
        match vfs.read_segments_with_attr(ino, off, count).await {
            Ok((segs, n, eof, attr)) => {
                let mut v = head(c.xid, nfsstat3::NFS3_OK);
                post_op(&mut v, Some(&attr));
                let n = u32::try_from(n).expect("READ_CAP bounds the byte count");
                u32s(&mut v, &[n, u32::from(eof), n]);
                Reply::Read { head: v, segs }
            }
            Err(e) => {
                let mut v = head(c.xid, e);
                let h = FileHandleU64::new(ino);
                post_op(&mut v, vfs.getattr(&h).await.ok().as_ref());
                Reply::Parts(vec![v])
            }
        }
    }

    /// A READ reply with the data in memory.
    async fn copy_reply(
        vfs: &crate::vfs::Vfs,
        c: &Call,
        ino: u64,
        r: Result<(Vec<u8>, bool, fattr3), nfsstat3>,
    ) -> Reply {
        match r {
            Ok((data, eof, attr)) => {
                let mut v = head(c.xid, nfsstat3::NFS3_OK);
                post_op(&mut v, Some(&attr));
                let n = u32::try_from(data.len()).expect("READ_CAP bounds the byte count");
                u32s(&mut v, &[n, u32::from(eof), n]);
                let pad = vec![0u8; pad4(data.len()) - data.len()];
                Reply::Parts(vec![v, data, pad])
            }
            Err(e) => {
                let mut v = head(c.xid, e);
                let h = FileHandleU64::new(ino);
                post_op(&mut v, vfs.getattr(&h).await.ok().as_ref());
                Reply::Parts(vec![v])
            }
        }
    }

    /// Per-connection state of a sequential reader (READs served in memory, one at a time).
    #[derive(Default)]
    pub(super) struct Sequential {
        /// Inode and end of the last READ.
        last: Option<(u64, u64)>,
        /// The range to read ahead once the reply is sent.
        next: Option<(u64, u64, u32)>,
        ahead: Option<tm_storage::ReadAhead>,
    }

    impl Sequential {
        /// Read the next range (after the reply went out, while the client takes it in).
        pub(super) fn read_ahead(&mut self, front: &Front) {
            if let Some((ino, off, count)) = self.next.take() {
                self.ahead = front.vfs.read_ahead(ino, off, count);
            }
        }
    }

    /// A READ served in memory for a client with nothing else in flight: answered from the
    /// range read ahead when it is this one; a second READ continuing the last one schedules
    /// the next range to be read ahead.
    pub(super) async fn read_in_order(
        front: &Front,
        c: &Call,
        rec: &[u8],
        seq: &mut Sequential,
    ) -> Reply {
        let vfs = &front.vfs;
        let ahead = seq.ahead.take();
        seq.next = None;
        let parsed = read_args(front, c, rec);
        let Ok((ino, off, count)) = parsed else {
            return read(front, c, rec, false).await;
        };
        let r = vfs.read_with_attr_ahead(ahead, ino, off, count).await;
        if let Ok((data, eof, _)) = &r {
            let end = off + data.len() as u64;
            if seq.last == Some((ino, off)) && !eof && !data.is_empty() {
                seq.next = Some((ino, end, count));
            }
            seq.last = Some((ino, end));
        }
        copy_reply(vfs, c, ino, r).await
    }

    /// The reply record of the procedures other than READ, in parts.
    async fn serve_parts(front: &Front, c: &Call, rec: &[u8]) -> Vec<Vec<u8>> {
        let vfs = &front.vfs;
        match c.proc_ {
            GETATTR => match handle(front, rec, c.args) {
                Ok((ino, _)) => match vfs.getattr(&FileHandleU64::new(ino)).await {
                    Ok(a) => {
                        let mut v = head(c.xid, nfsstat3::NFS3_OK);
                        let _ = a.pack(&mut v);
                        vec![v]
                    }
                    Err(e) => vec![head(c.xid, e)],
                },
                Err(e) => vec![head(c.xid, e)],
            },
            LOOKUP => {
                let parsed = handle(front, rec, c.args).and_then(|(dir, at)| {
                    let n = be32(rec, at).ok_or(nfsstat3::NFS3ERR_INVAL)? as usize;
                    let name = rec.get(at + 4..at + 4 + n).ok_or(nfsstat3::NFS3ERR_INVAL)?;
                    Ok((dir, name.to_vec()))
                });
                let (dir, name) = match parsed {
                    Ok(x) => x,
                    Err(e) => {
                        let mut v = head(c.xid, e);
                        post_op(&mut v, None);
                        return vec![v];
                    }
                };
                let name = match String::from_utf8(name) {
                    Ok(n) => n,
                    Err(_) => {
                        let mut v = head(c.xid, nfsstat3::NFS3ERR_INVAL);
                        post_op(&mut v, None);
                        return vec![v];
                    }
                };
                match vfs.lookup_with_dir(dir, name).await {
                    (Ok(a), dir_attr) => {
                        let mut v = head(c.xid, nfsstat3::NFS3_OK);
                        v.extend_from_slice(&fh_bytes(front, a.ino));
                        post_op(&mut v, Some(&fattr(&a)));
                        post_op(&mut v, dir_attr.as_ref());
                        vec![v]
                    }
                    (Err(e), dir_attr) => {
                        let mut v = head(c.xid, e);
                        post_op(&mut v, dir_attr.as_ref());
                        vec![v]
                    }
                }
            }
            CREATE => create(front, c, rec).await,
            COMMIT => commit(front, c, rec).await,
            _ => {
                // WRITE: fh, offset, count, stable, opaque data
                let parsed = handle(front, rec, c.args).and_then(|(ino, at)| {
                    let off = be64(rec, at).ok_or(nfsstat3::NFS3ERR_INVAL)?;
                    let count = be32(rec, at + 8).ok_or(nfsstat3::NFS3ERR_INVAL)?;
                    let stable = match be32(rec, at + 12).ok_or(nfsstat3::NFS3ERR_INVAL)? {
                        0 => stable_how::UNSTABLE,
                        1 => stable_how::DATA_SYNC,
                        _ => stable_how::FILE_SYNC,
                    };
                    let n = be32(rec, at + 16).ok_or(nfsstat3::NFS3ERR_INVAL)? as usize;
                    rec.get(at + 20..at + 20 + n)
                        .ok_or(nfsstat3::NFS3ERR_INVAL)?;
                    if n != count as usize {
                        return Err(nfsstat3::NFS3ERR_INVAL);
                    }
                    Ok((ino, off, count, stable, at + 20))
                });
                match parsed {
                    Ok((ino, off, count, stable, at)) => {
                        let data = &rec[at..at + count as usize];
                        let h = FileHandleU64::new(ino);
                        match vfs.write(&h, off, data, stable).await {
                            Ok((attr, committed)) => {
                                let mut v = head(c.xid, nfsstat3::NFS3_OK);
                                post_op_pre_none(&mut v);
                                post_op(&mut v, Some(&attr));
                                u32s(&mut v, &[count, committed as u32]);
                                v.extend_from_slice(&front.verf);
                                vec![v]
                            }
                            Err(e) => {
                                let mut v = head(c.xid, e);
                                u32s(&mut v, &[0, 0]);
                                vec![v]
                            }
                        }
                    }
                    Err(e) => {
                        let mut v = head(c.xid, e);
                        u32s(&mut v, &[0, 0]);
                        vec![v]
                    }
                }
            }
        }
    }

    /// CREATE (all three modes; GUARDED and EXCLUSIVE are checked atomically by the engine).
    /// Durable before the reply: one group-committed metadata transaction.
    async fn create(front: &Front, c: &Call, rec: &[u8]) -> Vec<Vec<u8>> {
        let vfs = &front.vfs;
        let parsed = handle(front, rec, c.args).and_then(|(dir, at)| {
            let n = be32(rec, at).ok_or(nfsstat3::NFS3ERR_INVAL)? as usize;
            let name = rec.get(at + 4..at + 4 + n).ok_or(nfsstat3::NFS3ERR_INVAL)?;
            let name = std::str::from_utf8(name)
                .map_err(|_| nfsstat3::NFS3ERR_INVAL)?
                .to_string();
            let tail = rec.get(at + 4 + pad4(n)..).ok_or(nfsstat3::NFS3ERR_INVAL)?;
            let (how, _) =
                createhow3::unpack(&mut Cursor::new(tail)).map_err(|_| nfsstat3::NFS3ERR_INVAL)?;
            let (mode, sa) = match how {
                createhow3::UNCHECKED(a) => (CreateMode::Unchecked, set_attrs(&a)),
                createhow3::GUARDED(a) => (CreateMode::Guarded, set_attrs(&a)),
                createhow3::EXCLUSIVE(v) => (
                    CreateMode::Exclusive(u64::from_be_bytes(v.0)),
                    SetAttrs::default(),
                ),
            };
            Ok((dir, name, mode, sa))
        });
        let parsed = parsed.map(|(dir, name, mode, mut sa)| {
            crate::perm::own(&mut sa, rec, vfs.fs(), dir);
            (dir, name, mode, sa)
        });
        let (dir, name, mode, sa) = match parsed {
            Ok(x) => x,
            Err(e) => {
                let mut v = head(c.xid, e);
                u32s(&mut v, &[0, 0]);
                return vec![v];
            }
        };
        // One transaction does the checks, the object, the inode and the directory times, on
        // this thread (no hand-off to the blocking pool); an existing name this mode returns,
        // or a size to set, takes the general path.
        let fs = vfs.fs().clone();
        let (name2, sa2) = (name.clone(), sa.clone());
        let quick = crate::vfs::blocking_here(move || fs.create_quick(dir, &name, mode, &sa)).await;
        let r = match quick {
            Ok(Some((a, d))) => Ok((a, Some(fattr(&d)))),
            Ok(None) => {
                let fs = vfs.fs().clone();
                let r = blocking(move || fs.create(dir, &name2, mode, &sa2)).await;
                let d = vfs.getattr(&FileHandleU64::new(dir)).await.ok();
                r.map(|a| (a, d))
            }
            Err(e) => Err(e),
        };
        let dir_attr = match &r {
            Ok((_, d)) => d.clone(),
            Err(_) => vfs.getattr(&FileHandleU64::new(dir)).await.ok(),
        };
        match r {
            Ok((a, _)) => {
                let mut v = head(c.xid, nfsstat3::NFS3_OK);
                v.extend_from_slice(&1u32.to_be_bytes());
                v.extend_from_slice(&fh_bytes(front, a.ino));
                post_op(&mut v, Some(&fattr(&a)));
                post_op_pre_none(&mut v);
                post_op(&mut v, dir_attr.as_ref());
                vec![v]
            }
            Err(e) => {
                let mut v = head(c.xid, e);
                post_op_pre_none(&mut v);
                post_op(&mut v, dir_attr.as_ref());
                vec![v]
            }
        }
    }

    /// COMMIT: applies the inode's staged writes durably (answered at once when none are).
    async fn commit(front: &Front, c: &Call, rec: &[u8]) -> Vec<Vec<u8>> {
        let vfs = &front.vfs;
        let ino = match handle(front, rec, c.args) {
            Ok((ino, _)) => ino,
            Err(e) => {
                let mut v = head(c.xid, e);
                u32s(&mut v, &[0, 0]);
                return vec![v];
            }
        };
        let status = match vfs.flush(ino).await {
            Ok(()) => nfsstat3::NFS3_OK,
            Err(e) => e,
        };
        let attr = vfs.getattr(&FileHandleU64::new(ino)).await.ok();
        let mut v = head(c.xid, status);
        post_op_pre_none(&mut v);
        post_op(&mut v, attr.as_ref());
        if status == nfsstat3::NFS3_OK {
            v.extend_from_slice(&front.verf);
        }
        vec![v]
    }

    /// `pre_op_attr` absent (allowed by RFC 1813; clients then use the post-op attributes).
    fn post_op_pre_none(v: &mut Vec<u8>) {
        v.extend_from_slice(&0u32.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(prog: u32, proc_: u32, cred_len: u32) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [7u32, 0, 2, prog, 3, proc_, 1, cred_len] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend(std::iter::repeat_n(0u8, pad4(cred_len as usize)));
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        v.extend_from_slice(&[1, 2, 3, 4]);
        v
    }

    #[test]
    fn parses_call_header_and_refuses_mount() {
        let rec = call(PROG_MOUNT, MOUNT_MNT, 5);
        let c = parse_call(&rec).expect("call");
        assert_eq!((c.xid, c.prog, c.proc_), (7, PROG_MOUNT, MOUNT_MNT));
        assert_eq!(&rec[c.args..], &[1, 2, 3, 4]);
        let r = refuse(&c);
        assert_eq!(be32(&r, 0), Some(7));
        assert_eq!(
            reply_result(&r).and_then(|at| be32(&r, at)),
            Some(MNT3ERR_ACCES)
        );
        let n = refuse(&parse_call(&call(PROG_NFS, 1, 0)).expect("call"));
        assert_eq!(be32(&n, 8), Some(1), "NFS calls from outside are denied");
        assert!(parse_call(&rec[..30]).is_none());
    }
}
