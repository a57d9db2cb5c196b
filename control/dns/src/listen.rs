//! The sockets' loops: our own, not hickory's `Server`, so that the whole per-request path,
//! hickory's parsing of the request included, runs under panic containment (`contain.rs`).
//! A panic anywhere in it is logged, counted and answered SERVFAIL when the request's id is
//! readable (else the request is dropped); the socket, the connection and the node go on.
//!
//! UDP: one task per datagram. TCP: one task per connection, its requests one at a time
//! (two-byte length prefix), closed when idle for [`TCP_IDLE_TIMEOUT`] or when a read or
//! write takes that long. Both are owned by their listener's task, so stopping the listeners
//! stops every request and connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::{BufDnsStreamHandle, Protocol};
use hickory_server::proto::op::{Header, MessageType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use crate::handler::Handler;

/// An idle TCP connection is closed after this long (also the bound on one read or write).
pub(crate) const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest datagram read (a UDP payload can be no larger).
const MAX_DATAGRAM: usize = 65_535;
const FORMERR: u8 = 1;
const SERVFAIL: u8 = 2;

/// Serves datagrams on `sock` until it fails; returns the error.
pub(crate) async fn udp(sock: UdpSocket, handler: Handler) -> io::Error {
    let sock = Arc::new(sock);
    let mut requests = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) if transient(&e) => continue,
            Err(e) => return e,
        };
        while requests.try_join_next().is_some() {}
        if src.port() == 0 {
            continue;
        }
        let raw = buf[..n].to_vec();
        let (sock, handler) = (sock.clone(), handler.clone());
        requests.spawn(async move {
            if let Some(reply) = answer(&handler, raw, src, Protocol::Udp).await {
                let _ = sock.send_to(&reply, src).await;
            }
        });
    }
}

/// Accepts connections on `listener` until it fails; returns the error.
pub(crate) async fn tcp(listener: TcpListener, handler: Handler) -> io::Error {
    let mut conns = JoinSet::new();
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(x) => x,
            Err(e) if transient(&e) => {
                // Out of descriptors or a connection reset before it was accepted: not the
                // listener's end; do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => return e,
        };
        while conns.try_join_next().is_some() {}
        conns.spawn(connection(stream, src, handler.clone()));
    }
}

fn transient(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::NotConnected | io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
    ) && e.raw_os_error() != Some(9) // EBADF
}

/// Serves one TCP connection's requests in turn.
async fn connection(mut s: TcpStream, src: SocketAddr, handler: Handler) {
    let t = TCP_IDLE_TIMEOUT;
    loop {
        let mut len = [0u8; 2];
        if !matches!(
            tokio::time::timeout(t, s.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let mut raw = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if !matches!(
            tokio::time::timeout(t, s.read_exact(&mut raw)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(reply) = answer(&handler, raw, src, Protocol::Tcp).await else {
            continue;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            continue;
        };
        let mut out = n.to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if !matches!(tokio::time::timeout(t, s.write_all(&out)).await, Ok(Ok(()))) {
            return;
        }
    }
}

/// The answer to the request `raw` (what hickory's server would send: FORMERR for a request
/// it cannot decode, nothing for one without a header or for a response), computed with its
/// panics contained: a panic is answered SERVFAIL when the request's id is readable, else the
/// request gets no answer.
pub(crate) async fn answer(
    handler: &Handler,
    raw: Vec<u8>,
    src: SocketAddr,
    protocol: Protocol,
) -> Option<Vec<u8>> {
    let id = raw.get(..2).map(|b| [b[0], b[1]]);
    let flags = raw.get(2).copied().unwrap_or(0);
    let kind = format!("DNS request over {protocol} ({} bytes)", raw.len());
    match crate::contain::contained(kind, parse_and_answer(handler, raw, src, protocol)).await {
        Ok(reply) => reply,
        Err(()) => id.map(|id| error_header(id, flags, SERVFAIL)),
    }
}

async fn parse_and_answer(
    handler: &Handler,
    raw: Vec<u8>,
    src: SocketAddr,
    protocol: Protocol,
) -> Option<Vec<u8>> {
    #[cfg(test)]
    crate::contain::maybe_panic_raw(&raw);
    let header = Header::read(&mut BinDecoder::new(&raw)).ok()?;
    if header.metadata.message_type == MessageType::Response {
        // Not answered: no reflection.
        return None;
    }
    let (id, flags) = ([raw[0], raw[1]], raw[2]);
    let Ok(request) = Request::from_bytes(raw, src, protocol) else {
        return Some(error_header(id, flags, FORMERR));
    };
    let (stream, replies) = BufDnsStreamHandle::new(src);
    handler
        .handle_request::<_, TokioTime>(&request, ResponseHandle::new(src, stream, protocol))
        .await;
    // Every sender is gone with the handler's call: the reply is queued, or there is none.
    let mut replies = Box::pin(replies);
    std::future::poll_fn(|cx| {
        Pin::as_mut(&mut replies)
            .poll_peek(cx)
            .map(|m| m.map(|m| m.bytes().to_vec()))
    })
    .await
}

/// A reply of only a header: `id`, the request's opcode and RD bit from `flags` (its third
/// byte), the response bit and `rcode`.
fn error_header(id: [u8; 2], flags: u8, rcode: u8) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[..2].copy_from_slice(&id);
    h[2] = 0x80 | (flags & 0x79);
    h[3] = rcode;
    h
}
