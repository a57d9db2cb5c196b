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
