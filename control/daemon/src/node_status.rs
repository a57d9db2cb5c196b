//! `status` and `peers`: the node's state as the local API reports it.

use super::*;

impl Node {
    pub(super) fn status(&self) -> Status {
        let relay = self.relay.as_ref().map(|r| r.stats()).unwrap_or_default();
        let mut c = self.base;
        c.add(&self.latest);
        Status {
            name: self.cfg.name.clone(),
            public_key: self.public.to_string(),
            address: self.cfg.address().to_string(),
            interface: self.cfg.interface.clone(),
            listen_port: self.cfg.listen_port,
            dataplane: DataplaneStatus {
                pid: self.dp.as_ref().and_then(|d| d.pid),
                restarts: self.restarts,
                running: self.dp.is_some(),
                workers: self.dp.as_ref().map_or(0, |d| d.workers),
            },
            counters: Counters {
                rx_datagrams: c.rx,
                tx_datagrams: c.tx,
                drops: DropReason::ALL
                    .iter()
                    .map(|r| (r.name().to_string(), c.drops[*r as usize]))
                    .collect(),
                handshakes_completed: self.handshakes,
                handshake_errors: self.handshake_errors,
                cookie_replies_sent: self.cookies_sent,
            },
            peers: self.peers.len(),
            workers: self
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| WorkerInfo {
                    index: i as u16,
                    tun_rx_packets: w.tun_rx_packets,
                    tun_rx_bytes: w.tun_rx_bytes,
                    tun_tx_packets: w.tun_tx_packets,
                    tun_tx_bytes: w.tun_tx_bytes,
                    udp_rx_packets: w.udp_rx_packets,
                    udp_rx_bytes: w.udp_rx_bytes,
                    udp_tx_packets: w.udp_tx_packets,
                    udp_tx_bytes: w.udp_tx_bytes,
                    punts: w.punts,
                    punt_drops: w.punt_drops,
                    drops: DropReason::ALL
                        .iter()
                        .filter(|r| w.drops[**r as usize] > 0)
                        .map(|r| (r.name().to_string(), w.drops[*r as usize]))
                        .collect(),
                })
                .collect(),
            mesh: self.mesh.as_ref().map(|m| tm_api::MeshStatus {
                role: if m.is_coordinator() {
                    "coordinator".into()
                } else {
                    "member".into()
                },
                coordinator: match &m.role {
                    Role::Member { client, .. } => Some(client.addr()),
                    Role::Coordinator(_) => None,
                },
                netmap_version: self.netmap_version,
                coordinator_reachable: m.reachable.load(Ordering::Relaxed),
                mesh_cidr: m.cidr.to_string(),
                dns: self.dns_addrs.iter().map(|a| a.to_string()).collect(),
                relay_connected: self.relay.as_ref().is_some_and(|r| r.connected()),
                policy: match &m.role {
                    Role::Coordinator(c) => Some(c.policy_status()),
                    Role::Member { .. } => self.policy_hash.clone(),
                },
                relay_sent: relay.to_relay_frames,
                relay_received: relay.from_relay_frames,
                relay_dropped: relay.dropped_disconnected
                    + relay.dropped_full
                    + relay.dropped_other,
            }),
            filter: self.filter.info(),
            services: self.services(),
            coordinators: self.coordinators(),
        }
    }

    pub(super) fn peer_infos(&self) -> Vec<PeerInfo> {
        let now = SystemTime::now();
        self.peers
            .values()
            .map(|p| {
                let mut s = p.stats_base;
                add_stats(&mut s, &p.stats);
                let hs = p
                    .last_handshake
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                PeerInfo {
                    docker: self
                        .docker
                        .as_ref()
                        .is_some_and(|h| h.runs_docker(&p.cfg.name)),
                    name: p.cfg.name.clone(),
                    public_key: p.cfg.public_key.to_string(),
                    mesh_ip: p.cfg.allowed_ips.first().map(|c| c.addr.to_string()),
                    allowed_ips: p.cfg.allowed_ips.iter().map(|c| c.to_string()).collect(),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    path: if self.is_relay(p.endpoint) {
                        "relay".into()
                    } else {
                        "direct".into()
                    },
                    last_handshake_unix: hs,
                    last_handshake_ago_secs: p
                        .last_handshake
                        .and_then(|t| now.duration_since(t).ok())
                        .map(|d| d.as_secs()),
                    rx_bytes: s.rx_bytes,
                    rx_packets: s.rx_packets,
                    tx_bytes: s.tx_bytes,
                    tx_packets: s.tx_packets,
                    sessions_established: p.sessions,
                }
            })
            .collect()
    }
}
