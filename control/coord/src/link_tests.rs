//! Back-pressure of a link between coordinators, over a real TCP connection: the sending
//! side's queue and writer (`queue_on_link`, `write_loop`) and the receiving side's reader
//! (`read_link`) with its bounded inbox, exactly as `run_link` wires them, with a receiver that
//! does not merge until told to.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tm_cluster::{Msg, Origin, Record, Stamp};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

use super::*;
use crate::relay::{write_loop, RelayHub, RELAY_QUEUE};

/// Size of each test message's value.
const MSG_BYTES: usize = 32 * 1024;
/// Messages the socket buffers and the writer's batch may hold beyond the two queues (64 KiB
/// socket buffers, doubled by the kernel, on both sides: 256 KiB; with slack).
const IN_FLIGHT_MAX: usize = 64;
/// Messages the sender tries to queue while the receiver does not merge: far more than the
/// bounded pipeline holds.
const TRIED: usize = 1_000;

/// A connected loopback pair with small socket buffers (so that what the kernel holds is
/// small next to the queues).
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpSocket::new_v4().expect("socket");
    l.set_recv_buffer_size(64 * 1024).expect("rcvbuf");
    l.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let addr = l.local_addr().expect("addr");
    let l = l.listen(1).expect("listen");
    let c = TcpSocket::new_v4().expect("socket");
    c.set_send_buffer_size(64 * 1024).expect("sndbuf");
    let (client, server) = tokio::join!(c.connect(addr), l.accept());
    (client.expect("connect"), server.expect("accept").0)
}

fn msg(i: usize) -> Msg {
    Msg::Records {
        records: vec![Record {
            key: format!("k/{i}"),
            stamp: Stamp {
                wall_ms: i as u64 + 1,
                logical: 0,
                origin: Origin(1),
            },
            value: Some(serde_json::Value::String("x".repeat(MSG_BYTES))),
        }],
    }
}

/// The index of a received test message.
fn index_of(bytes: &[u8]) -> usize {
    match serde_json::from_slice::<Msg>(bytes).expect("a replication message") {
        Msg::Records { records } => records[0].key["k/".len()..].parse().expect("index"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_stops_the_sender_within_the_bounds_and_nothing_is_lost() {
    let (client, server) = pair().await;
    let (_crd, mut cwr) = client.into_split();
    let (mut srd, _swr) = server.into_split();
    // The sending coordinator: the link's outgoing queue and its writer.
    let (tx, mut rx) = mpsc::channel(RELAY_QUEUE);
    let writer =
        tokio::spawn(async move { write_loop(&mut cwr, &mut rx, Duration::from_secs(20)).await });
    // The receiving coordinator: the link's reader and its inbox, which nobody merges yet.
    let hub = Arc::new(RelayHub::new());
    let (inbox_tx, mut inbox) = mpsc::channel::<Vec<u8>>(CLUSTER_INBOX);
    let h = hub.clone();
    let reader = tokio::spawn(async move {
        read_link(&mut srd, &inbox_tx, &h, PublicKey([9; 32]), |_, _, _| {
            panic!("no relayed frames in this test")
        })
        .await
    });

    // The sender queues until a message finds no room within 1 s: it is stopped (a writer
    // merely slowed by a busy machine would have made room by then).
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..TRIED {
        if queue_on_link(&tx, &msg(i), Duration::from_secs(1)).await {
            accepted.push(i);
        } else {
            refused = Some(i);
            break;
        }
    }
    let refused = refused
        .unwrap_or_else(|| panic!("the sender queued all {TRIED} messages: nothing held it back"));
    // Stopped because the receiver's inbox is full, and at its bound only.
    let t0 = Instant::now();
    while inbox.len() < CLUSTER_INBOX {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "inbox {}",
            inbox.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(inbox.len(), CLUSTER_INBOX, "the inbox never holds more");
    // Everything the sender accepted is in one of the bounded places: its queue, the
    // connection (socket buffers, one write batch, one frame being read), the inbox.
    assert!(
        accepted.len() <= RELAY_QUEUE + IN_FLIGHT_MAX + CLUSTER_INBOX,
        "{} messages accepted while the receiver merged nothing",
        accepted.len()
    );
    assert!(
        accepted.len() >= RELAY_QUEUE + CLUSTER_INBOX,
        "stopped before the queues were full: {}",
        accepted.len()
    );
    // Still stopped a while later (nothing drains by itself).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(inbox.len(), CLUSTER_INBOX);
    assert!(!queue_on_link(&tx, &msg(refused), Duration::from_millis(50)).await);

    // The receiver resumes: every accepted message arrives once, in order; the refused one
    // (which the caller posts instead) never does; later messages flow again.
    let more: Vec<usize> = (TRIED..TRIED + 50).collect();
    let want: Vec<usize> = accepted.iter().chain(more.iter()).copied().collect();
    let n = want.len();
    let consumer = tokio::spawn(async move {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match inbox.recv().await {
                Some(b) => got.push(index_of(&b)),
                None => break,
            }
        }
        got
    });
    for i in &more {
        assert!(
            queue_on_link(&tx, &msg(*i), Duration::from_secs(5)).await,
            "message {i} after the receiver resumed"
        );
    }
    let got = tokio::time::timeout(Duration::from_secs(20), consumer)
        .await
        .expect("everything arrives")
        .expect("consumer");
    assert_eq!(got, want);
    assert_eq!(hub.cluster_on_links.load(Ordering::Relaxed), n as u64);
    writer.abort();
    reader.abort();
}
