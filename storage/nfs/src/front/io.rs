//! Record marking on the socket: reading calls, writing replies (vectored, `sendfile(2)`).

use super::rpc::{pad4, Call};
use super::{fast, MAX_RECORD};
use std::net::SocketAddr;

use tm_storage::Segment;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

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
pub(super) async fn contained(
    call: &Call,
    f: impl std::future::Future<Output = fast::Reply>,
) -> fast::Reply {
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
pub(super) async fn write_record_parts(
    w: &mut OwnedWriteHalf,
    parts: &[&[u8]],
) -> std::io::Result<()> {
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
pub(super) async fn send_reply(
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
pub(super) async fn reply_record(
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
pub(super) async fn write_read_reply(
    s: &TcpStream,
    head: &[u8],
    segs: &[Segment],
) -> std::io::Result<()> {
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
pub(super) async fn send_all(s: &TcpStream, mut b: &[u8], more: bool) -> std::io::Result<()> {
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
pub(super) async fn sendfile_all(
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
pub(super) fn retry(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

pub(super) async fn write_record(
    w: &mut (impl AsyncWriteExt + Unpin),
    rec: &[u8],
) -> std::io::Result<()> {
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
