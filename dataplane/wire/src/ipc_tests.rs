use super::*;

fn ctl_samples() -> Vec<CtlMsg> {
    vec![
        CtlMsg::SetTimers(Timers::default()),
        CtlMsg::AddPeer {
            peer: 7,
            public_key: [3; 32],
            allowed_ips: vec![
                Prefix {
                    addr: "100.64.0.2".parse().unwrap(),
                    len: 32,
                },
                Prefix {
                    addr: "fd00::".parse().unwrap(),
                    len: 64,
                },
            ],
            endpoint: Some("192.0.2.2:51820".parse().unwrap()),
            persistent_keepalive: 25,
        },
        CtlMsg::AddPeer {
            peer: 1,
            public_key: [0; 32],
            allowed_ips: vec![],
            endpoint: None,
            persistent_keepalive: 0,
        },
        CtlMsg::RemovePeer { peer: 9 },
        CtlMsg::SetEndpoint {
            peer: 1,
            endpoint: "[2001:db8::1]:9".parse().unwrap(),
        },
        CtlMsg::InstallSession {
            peer: 1,
            local_index: 2,
            remote_index: 3,
            send_key: [4; 32],
            recv_key: [5; 32],
            initiator: true,
        },
        CtlMsg::ClearSessions { peer: 4 },
        CtlMsg::SendDatagram {
            to: "192.0.2.1:1".parse().unwrap(),
            data: vec![1; 148],
        },
        CtlMsg::RequestCounters,
        CtlMsg::SetFilter {
            generation: 3,
            total: 10,
            offset: 4,
            data: vec![9; 6],
        },
    ]
}

fn dp_samples() -> Vec<DpMsg> {
    vec![
        DpMsg::Ready {
            workers: 2,
            listen_port: 51820,
        },
        DpMsg::HandshakeDatagram {
            from: "192.0.2.1:5".parse().unwrap(),
            data: vec![2; 92],
        },
        DpMsg::NeedHandshake { peer: 3 },
        DpMsg::EndpointChanged {
            peer: 3,
            endpoint: "192.0.2.9:7".parse().unwrap(),
        },
        DpMsg::SessionExpired {
            peer: 3,
            local_index: 11,
        },
        DpMsg::SessionConfirmed {
            peer: 3,
            local_index: 12,
        },
        DpMsg::PeerCounters {
            peer: 1,
            stats: PeerStats {
                rx_bytes: 1,
                rx_packets: 2,
                tx_bytes: 3,
                tx_packets: 4,
                last_rx_ago_ms: u64::MAX,
            },
        },
        DpMsg::Counters {
            drops: [7; DropReason::COUNT],
            rx_datagrams: 5,
            tx_datagrams: 6,
        },
        DpMsg::WorkerCounters {
            worker: 1,
            stats: WorkerStats::from_scalars(
                [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                std::array::from_fn(|i| 100 + i as u64),
            ),
        },
        DpMsg::FilterCounters {
            generation: 4,
            active: true,
            flows: 10,
            capacity: 65536,
            evictions: 2,
            bad_updates: 1,
        },
        DpMsg::FilterDrop {
            peer: 2,
            reason: DropReason::FilterDenied,
            inbound: true,
            proto: 6,
            src: "100.64.0.2".parse().unwrap(),
            dst: "100.64.0.3".parse().unwrap(),
            sport: 40000,
            dport: 22,
        },
    ]
}

#[test]
fn roundtrip_and_truncation() {
    for m in ctl_samples() {
        let mut b = Vec::new();
        m.encode(&mut b);
        assert_eq!(CtlMsg::decode(&b), Ok(m.clone()));
        for cut in 0..b.len() {
            assert!(CtlMsg::decode(&b[..cut]).is_err(), "{m:?} cut at {cut}");
        }
        b.push(0);
        assert_eq!(CtlMsg::decode(&b), Err(DecodeError::Trailing));
    }
    for m in dp_samples() {
        let mut b = Vec::new();
        m.encode(&mut b);
        assert_eq!(DpMsg::decode(&b), Ok(m.clone()));
        for cut in 0..b.len() {
            assert!(DpMsg::decode(&b[..cut]).is_err(), "{m:?} cut at {cut}");
        }
    }
}

#[test]
fn rejects_bad_prefix_and_tags() {
    assert_eq!(CtlMsg::decode(&[0xee]), Err(DecodeError::Invalid));
    assert_eq!(DpMsg::decode(&[0]), Err(DecodeError::Invalid));
    let mut b = Vec::new();
    CtlMsg::AddPeer {
        peer: 1,
        public_key: [0; 32],
        allowed_ips: vec![Prefix {
            addr: "10.0.0.0".parse().unwrap(),
            len: 33,
        }],
        endpoint: None,
        persistent_keepalive: 0,
    }
    .encode(&mut b);
    assert_eq!(CtlMsg::decode(&b), Err(DecodeError::Invalid));
}

#[test]
fn drop_reason_names_are_unique_and_indexed() {
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
        assert_eq!(drop_reason(i as u8), Some(*r));
    }
    let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), DropReason::COUNT);
}
