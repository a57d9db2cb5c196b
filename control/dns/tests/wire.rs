//! Raw wire tests: hickory-proto built (and deliberately broken) messages sent over UDP and
//! TCP to the in-process server.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::*;
use tm_dns::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use tm_dns::proto::rr::{DNSClass, Name, RecordType};

fn query(id: u16, name: &str, rtype: RecordType) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii(name).expect("test name"),
        rtype,
    ));
    m
}

fn udp_client(server: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.connect(server).expect("connect");
    s
}

/// Sends raw bytes and returns the raw reply.
fn udp_raw(s: &UdpSocket, bytes: &[u8]) -> Vec<u8> {
    s.send(bytes).expect("send");
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).expect("a reply within 5 s");
    buf[..n].to_vec()
}

fn udp_msg(s: &UdpSocket, m: &Message) -> Message {
    let reply = udp_raw(s, &m.to_vec().expect("encode"));
    Message::from_vec(&reply).expect("server reply decodes")
}

fn tcp_msg(server: SocketAddr, m: &Message) -> Message {
    let mut s = TcpStream::connect(server).expect("tcp connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let bytes = m.to_vec().expect("encode");
    let len = u16::try_from(bytes.len()).expect("small message");
    s.write_all(&len.to_be_bytes()).expect("write len");
    s.write_all(&bytes).expect("write msg");
    let mut len = [0u8; 2];
    s.read_exact(&mut len).expect("reply length");
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).expect("reply body");
    Message::from_vec(&buf).expect("server reply decodes")
}

#[test]
fn well_formed_query_over_udp_and_tcp() {
    let fx = Fixture::start(test_zone());
    let s = udp_client(fx.addr);
    for r in [
        udp_msg(&s, &query(0x1234, "alpha.mesh.", RecordType::A)),
        tcp_msg(fx.addr, &query(0x1234, "alpha.mesh.", RecordType::A)),
    ] {
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(r.queries.len(), 1, "question echoed");
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data.ip_addr(), Some(ip(ALPHA4)));
        assert_eq!(r.answers[0].ttl, 5);
    }
}

#[test]
fn malformed_packet_is_formerr() {
    let fx = Fixture::start(test_zone());
    let s = udp_client(fx.addr);
    // Header: id 0xbeef, RD, QDCOUNT=1; then a question whose name claims a 63-byte label but
    // the packet ends after 3 bytes.
    let mut pkt = vec![0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    pkt.extend_from_slice(&[63, b'a', b'b', b'c']);
    let reply = udp_raw(&s, &pkt);
    assert!(reply.len() >= 12, "reply has a header: {reply:?}");
    assert_eq!(&reply[..2], &[0xbe, 0xef], "id echoed");
    assert_ne!(reply[2] & 0x80, 0, "QR set");
    assert_eq!(reply[3] & 0x0f, 1, "RCODE = FORMERR");

    // A compression pointer that points at itself.
    let mut pkt = vec![0x00, 0x07, 0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    pkt.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let reply = udp_raw(&s, &pkt);
    assert_eq!(&reply[..2], &[0x00, 0x07]);
    assert_eq!(reply[3] & 0x0f, 1, "RCODE = FORMERR");
}

#[test]
fn runt_and_response_packets_get_no_reply() {
    let fx = Fixture::start(test_zone());
    let s = udp_client(fx.addr);
    // Shorter than a header: dropped.
    s.send(&[0xde, 0xad, 0x01]).expect("send runt");
    // A response (QR=1) is never answered (no reflection).
    let mut resp = query(0x0bad, "beta.mesh.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    s.send(&resp.to_vec().expect("encode"))
        .expect("send response");
    // The first reply we get is for the good query that follows, not for the two above.
    let r = udp_msg(&s, &query(0x600d, "beta.mesh.", RecordType::A));
    assert_eq!(r.metadata.id, 0x600d);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
}

#[test]
fn opcodes_other_than_query_are_notimp() {
    let fx = Fixture::start(test_zone());
    let s = udp_client(fx.addr);
    for (id, op) in [
        (1, OpCode::Notify),
        (2, OpCode::Update),
        (3, OpCode::Status),
    ] {
        let mut m = query(id, "mesh.", RecordType::SOA);
        m.metadata.op_code = op;
        let r = udp_msg(&s, &m);
        assert_eq!(r.metadata.id, id);
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp, "{op:?}");
        assert!(r.answers.is_empty());
    }
}

#[test]
fn question_count_other_than_one_is_formerr() {
    let fx = Fixture::start(test_zone());
    let s = udp_client(fx.addr);
    let mut two = query(9, "alpha.mesh.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("beta.mesh.").expect("name"),
        RecordType::A,
    ));
    let r = udp_msg(&s, &two);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert!(r.answers.is_empty());

    let none = Message::new(10, MessageType::Query, OpCode::Query);
    let r = udp_msg(&s, &none);
    assert_eq!(r.metadata.id, 10);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
}

#[test]
fn transfers_and_other_classes_are_refused() {
    let fx = Fixture::start(test_zone());
    let r = tcp_msg(fx.addr, &query(1, "mesh.", RecordType::AXFR));
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(r.answers.is_empty());

    let s = udp_client(fx.addr);
    let mut chaos = Message::new(2, MessageType::Query, OpCode::Query);
    let mut q = Query::query(
        Name::from_ascii("version.bind.").expect("name"),
        RecordType::TXT,
    );
    q.set_query_class(DNSClass::CH);
    chaos.add_query(q);
    let r = udp_msg(&s, &chaos);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    // 60 coordinators do not fit in 512 bytes without EDNS.
    let coords: Vec<_> = (1..=60u8).map(|i| ip(&format!("100.64.1.{i}"))).collect();
    let fx = Fixture::start(test_zone().with_coordinators(coords));
    let s = udp_client(fx.addr);
    let r = udp_msg(&s, &query(5, "coordinator.mesh.", RecordType::A));
    assert!(r.metadata.truncation, "TC set over UDP");
    assert!(r.answers.len() < 60);
    let r = tcp_msg(fx.addr, &query(6, "coordinator.mesh.", RecordType::A));
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 60);
}
