//! A panicking lookup is answered SERVFAIL and the server keeps answering.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

use crate::{DnsServer, MeshDns, Zone};

async fn ask(s: &UdpSocket, id: u16, name: &str) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    s.send(&m.to_vec().expect("encode")).await.expect("send");
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
        .await
        .expect("an answer within 5 s")
        .expect("recv");
    Message::from_vec(&buf[..n]).expect("decode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_lookup_is_servfail_and_the_next_query_is_answered() {
    let zone = Zone::default().with_peer("alpha", ["100.64.0.1".parse().expect("ip")]);
    let dns = Arc::new(MeshDns::new(&zone).expect("zone"));
    let bind: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = DnsServer::bind(dns, &[bind]).await.expect("bind");
    let addr = server.local_addrs()[0];
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    s.connect(addr).await.expect("connect");
    let before = crate::panics();
    let r = ask(&s, 1, crate::contain::PANIC_HOOK).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(crate::panics() > before);
    assert!(!crate::in_request());
    let r = ask(&s, 2, "alpha.mesh.").await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    let _ = tx.send(());
    task.await.expect("join").expect("server stopped cleanly");
}

async fn start() -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), crate::DnsError>>,
) {
    let zone = Zone::default().with_peer("alpha", ["100.64.0.1".parse().expect("ip")]);
    let dns = Arc::new(MeshDns::new(&zone).expect("zone"));
    let bind: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = DnsServer::bind(dns, &[bind]).await.expect("bind");
    let addr = server.local_addrs()[0];
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    (addr, tx, task)
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    m.to_vec().expect("encode")
}

/// A panic before hickory has parsed the request (the whole per-request path is contained):
/// SERVFAIL with the request's id when it is readable, no answer when it is not; both
/// counted, and the next query on the same socket is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_parsing_is_servfail_or_dropped_and_the_server_goes_on() {
    let (addr, tx, task) = start().await;
    let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    s.connect(addr).await.expect("connect");
    let before = crate::panics();
    s.send(&[0xff]).await.expect("send");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while crate::panics() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the 1-byte request's panic was not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let id = crate::contain::PANIC_ID;
    s.send(&query(id, "alpha.mesh.")).await.expect("send");
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
        .await
        .expect("an answer within 5 s")
        .expect("recv");
    // The first datagram back is the SERVFAIL: the 1-byte request got none.
    let r = Message::from_vec(&buf[..n]).expect("decode");
    assert_eq!(r.metadata.id, id);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    assert!(r.metadata.recursion_desired, "RD copied");
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(crate::panics(), before + 2);
    assert!(!crate::in_request());
    let r = ask(&s, 3, "alpha.mesh.").await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    // A request hickory cannot decode is FORMERR (as its own server answered it).
    let mut bad = query(4, "alpha.mesh.");
    bad.truncate(14);
    s.send(&bad).await.expect("send");
    let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
        .await
        .expect("an answer within 5 s")
        .expect("recv");
    let r = Message::from_vec(&buf[..n]).expect("decode");
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (4, ResponseCode::FormErr)
    );
    let _ = tx.send(());
    task.await.expect("join").expect("server stopped cleanly");
}

/// Over TCP: the panicking request is answered SERVFAIL and the same connection answers the
/// next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_over_tcp_is_servfail_and_the_connection_goes_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, tx, task) = start().await;
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let before = crate::panics();
    let mut ask_tcp = async |id: u16| {
        let q = query(id, "alpha.mesh.");
        let mut out = (q.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&q);
        c.write_all(&out).await.expect("send");
        let mut len = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut len))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        let mut b = vec![0u8; usize::from(u16::from_be_bytes(len))];
        c.read_exact(&mut b).await.expect("read");
        Message::from_vec(&b).expect("decode")
    };
    let r = ask_tcp(crate::contain::PANIC_ID).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(crate::panics() > before);
    let r = ask_tcp(9).await;
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (9, ResponseCode::NoError)
    );
    assert_eq!(r.answers.len(), 1);
    let _ = tx.send(());
    task.await.expect("join").expect("server stopped cleanly");
}
