//! The node loop's driver on a virtual clock: a mesh member without a dataplane (every ring
//! message is recorded in `Node::sent`), fed a netmap and ticked at `t0 + offset`.

use super::*;
use crate::config::Cidr;
use crate::mesh::CoordLink;
use std::sync::atomic::AtomicBool;
use tm_coord::{JoinClient, JoinToken};

const B_ENDPOINT: &str = "192.0.2.2:51820";

/// A member `a` and the netmap that introduces `b` (with `b`'s handshake state towards `a`).
fn member() -> (Node, wire::Netmap, hs::Local, hs::Peer) {
    let a = PrivateKey::generate(&mut OsRng);
    let b = PrivateKey::generate(&mut OsRng);
    let yaml = "name: a\naddress: 100.64.0.1/10\ndata_dir: /tmp/unused\n";
    let a_public = a.public_key();
    let mut node = Node::new(NodeConfig::parse(yaml).expect("config"), a).expect("node");
    let token = JoinToken::new(b"not a real CA", [7u8; 32]);
    let client = JoinClient::new("192.0.2.1:8443", token).expect("client");
    let (_tx, netmaps) = mpsc::channel(1);
    node.set_mesh(Mesh {
        role: Role::Member {
            client: CoordLink::new(client, &[]),
            host_ip: None,
        },
        cidr: Cidr::parse("100.64.0.0/10").expect("cidr"),
        netmaps,
        reachable: Arc::new(AtomicBool::new(true)),
        saved: None,
    });
    let nm: wire::Netmap = serde_json::from_value(serde_json::json!({
        "version": 1,
        "peers": [
            {"name": "a", "public_key": a_public.to_string(), "mesh_ip": "100.64.0.1",
             "endpoints": [], "is_coordinator": false},
            {"name": "b", "public_key": b.public_key().to_string(), "mesh_ip": "100.64.0.2",
             "endpoints": [B_ENDPOINT], "is_coordinator": false}
        ],
        "dns": {"domain": "mesh", "aliases": {}}
    }))
    .expect("netmap");
    let b = hs::Local::new(b);
    let b_to_a = hs::Peer::new(&b, a_public, None).expect("peer");
    (node, nm, b, b_to_a)
}

/// The initiations sent to `b` so far.
fn initiations(node: &Node) -> Vec<Vec<u8>> {
    let to: SocketAddr = B_ENDPOINT.parse().unwrap();
    node.sent
        .iter()
        .filter_map(|m| match m {
            CtlMsg::SendDatagram { to: t, data } if *t == to => Some(data.clone()),
            _ => None,
        })
        .collect()
}

/// A netmap peer is handshaken at once, retried every `rekey_timeout` plus jitter while no
/// answer comes, and given up after 90 s; a later rekey request from the dataplane starts again,
/// and once `b` answers nothing more is sent.
#[test]
fn a_netmap_peer_is_handshaken_retried_and_given_up_on_a_virtual_clock() {
    let (mut node, nm, mut b, mut b_to_a) = member();
    let t0 = Instant::now();
    node.apply_netmap(t0, nm);
    let id = *node.by_key.values().next().expect("b was added");
    assert!(
        node.sent
            .iter()
            .any(|m| matches!(m, CtlMsg::AddPeer { peer, .. } if *peer == id)),
        "AddPeer for b"
    );
    assert_eq!(initiations(&node).len(), 1, "an initiation at once");
    let timing = node.timing();
    assert_eq!(timing.rekey_timeout, Duration::from_secs(5));
    // Tick every 100 ms of virtual time for 120 s.
    let mut at = vec![Duration::ZERO];
    let mut off = Duration::ZERO;
    while off < Duration::from_secs(120) {
        off += Duration::from_millis(100);
        let before = initiations(&node).len();
        node.tick(t0 + off);
        let after = initiations(&node).len();
        assert!(after - before <= 1, "one initiation per retry");
        if after > before {
            at.push(off);
        }
    }
    for w in at.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= timing.rekey_timeout && gap <= timing.rekey_timeout + Duration::from_millis(434),
            "retry after {gap:?}"
        );
    }
    assert!(
        *at.last().unwrap() < crate::peer_timers::REKEY_ATTEMPT,
        "initiated after giving up: {at:?}"
    );
    assert!((16..=19).contains(&at.len()), "{} initiations", at.len());
    let given_up = node.peers[&id].inflight_index;
    assert_eq!(given_up, None, "the in-flight index is forgotten");

    // The dataplane asks for a handshake (traffic for b): one initiation at once, not two.
    let t1 = t0 + Duration::from_secs(200);
    node.handle_dp(t1, DpMsg::NeedHandshake { peer: id });
    node.handle_dp(
        t1 + Duration::from_millis(50),
        DpMsg::NeedHandshake { peer: id },
    );
    let sent = initiations(&node);
    assert_eq!(sent.len(), at.len() + 1);

    // b answers it: the session is installed and the retries stop.
    let from: SocketAddr = B_ENDPOINT.parse().unwrap();
    let init = sent.last().unwrap();
    let pending = match b
        .begin_initiation(t1, init, from, false, &mut OsRng)
        .expect("b accepts the initiation")
    {
        InitiationStep::Identified(p) => p,
        InitiationStep::Cookie(_) => panic!("no cookie expected"),
    };
    let (resp, _) = b
        .respond(t1, pending, &mut b_to_a, 9, &mut OsRng)
        .expect("b responds");
    node.handle_handshake(t1 + Duration::from_millis(20), from, &resp);
    assert_eq!(node.handshake_errors, 0);
    assert!(node
        .sent
        .iter()
        .any(|m| matches!(m, CtlMsg::InstallSession { initiator: true, peer, .. } if *peer == id)));
    let n = initiations(&node).len();
    for s in 1..=60 {
        node.tick(t1 + Duration::from_secs(s));
    }
    assert_eq!(initiations(&node).len(), n, "no retry after the answer");
}
