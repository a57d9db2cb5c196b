//! Forwarding names outside the mesh zone to the resolvers the system used before the node took
//! over `/etc/resolv.conf` (see [`crate::MeshDns::set_upstreams`]).
//!
//! One query at a time per call: UDP to each upstream in order (2 s each), TCP when the answer
//! is truncated. Only a response with our id and the same question is accepted.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_server::proto::op::{Edns, Message, MessageType, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Time allowed per upstream.
const TIMEOUT: Duration = Duration::from_secs(2);
/// EDNS payload size we advertise upstream (and the largest UDP answer we read).
const PAYLOAD: u16 = 1232;

/// Asks `upstreams` in order; the first usable response wins. `None`: none answered.
pub(crate) async fn forward(upstreams: &[SocketAddr], query: &Query) -> Option<Message> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(query.clone());
    let mut e = Edns::new();
    e.set_max_payload(PAYLOAD);
    m.set_edns(e);
    let bytes = m.to_vec().ok()?;
    let id = m.metadata.id;
    for &up in upstreams {
        let r = match tokio::time::timeout(TIMEOUT, udp(up, &bytes, id, query)).await {
            Ok(Ok(r)) if r.metadata.truncation => {
                tokio::time::timeout(TIMEOUT, tcp(up, &bytes, id, query)).await
            }
            r => r,
        };
        match r {
            Ok(Ok(r)) => return Some(r),
            Ok(Err(e)) => tracing::debug!(upstream = %up, "dns forward: {e}"),
            Err(_) => tracing::debug!(upstream = %up, "dns forward: no answer in {TIMEOUT:?}"),
        }
    }
    None
}

fn matches(r: &Message, id: u16, q: &Query) -> bool {
    r.metadata.id == id
        && r.metadata.message_type == MessageType::Response
        && r.queries.len() == 1
        && r.queries[0].name().to_lowercase() == q.name().to_lowercase()
        && r.queries[0].query_type() == q.query_type()
}

async fn udp(up: SocketAddr, bytes: &[u8], id: u16, q: &Query) -> std::io::Result<Message> {
    let any: SocketAddr = match up {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(any).await?;
    sock.connect(up).await?;
    sock.send(bytes).await?;
    let mut buf = vec![0u8; usize::from(PAYLOAD).max(512) * 4];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Anything else (a stale or spoofed datagram) is skipped until the timeout.
        if let Ok(r) = Message::from_vec(&buf[..n]) {
            if matches(&r, id, q) {
                return Ok(r);
            }
        }
    }
}

async fn tcp(up: SocketAddr, bytes: &[u8], id: u16, q: &Query) -> std::io::Result<Message> {
    let mut s = TcpStream::connect(up).await?;
    let len = u16::try_from(bytes.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await?;
    match Message::from_vec(&buf) {
        Ok(r) if matches(&r, id, q) => Ok(r),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not the answer to our query",
        )),
    }
}
