//! Netmap application: a netmap from the coordinators turned into peers, DNS, credentials
//! and the packet filter's policy.

use super::*;

impl Node {
    /// Turns a netmap into peers: adds newcomers (and handshakes with them at once, which
    /// opens NAT mappings on both sides), removes departed ones, refreshes endpoints, DNS and,
    /// on a coordinator, the S3 credentials of every node.
    pub(super) fn apply_netmap(&mut self, now: Instant, nm: wire::Netmap) {
        let Some(mesh) = self.mesh.as_mut() else {
            return;
        };
        self.netmap_version = nm.version;
        let pushed = nm.policy.clone();
        self.policy_hash = nm
            .policy_hash
            .as_ref()
            .map(|h| format!("{h} (from the coordinator)"));
        let (host_ip, is_coord) = match &mesh.role {
            Role::Member { host_ip, .. } => (*host_ip, false),
            Role::Coordinator(_) => (None, true),
        };
        let addr = match self.cfg.address().addr {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        if let Some(line) = crate::renamed::follow(
            &nm,
            &self.public,
            &mut self.cfg.name,
            addr,
            &mut self.readdressed,
            mesh.saved.as_mut(),
        ) {
            tracing::warn!("{line}");
        }
        if let Some(saved) = mesh.saved.as_mut() {
            // Small and rare: saved in place, so a leave can never be overtaken by it.
            saved.netmap = Some(nm.clone());
            if let Err(e) = saved.save(&self.cfg.data_dir) {
                tracing::warn!("saving the netmap: {}", tmctl::error_line(&e));
            }
        }
        let cidr = mesh.cidr;
        let mut wanted: HashMap<PublicKey, &wire::NetmapPeer> = HashMap::new();
        for p in &nm.peers {
            if p.public_key != self.public {
                wanted.insert(p.public_key, p);
            }
        }
        // Departed (or changed identity/address): remove.
        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.dynamic)
            .filter(|(_, p)| match wanted.get(&p.cfg.public_key) {
                None => true,
                Some(w) => {
                    w.name != p.cfg.name
                        || p.cfg.allowed_ips.first().map(|c| c.addr) != Some(w.mesh_ip.into())
                }
            })
            .map(|(i, _)| *i)
            .collect();
        for id in gone {
            self.remove_peer(id);
        }
        for (key, w) in wanted {
            let mut cands: Vec<SocketAddr> = Vec::new();
            if w.is_coordinator {
                // The address we reached its API at, with its WireGuard port.
                if let (Some(ip), Some(e)) = (host_ip, w.endpoints.first()) {
                    cands.push(SocketAddr::new(ip, e.port()));
                }
            }
            for e in &w.endpoints {
                let bad = e.ip().is_loopback()
                    || e.ip().is_unspecified()
                    || e.port() == 0
                    || cidr.contains(e.ip());
                if !bad && !cands.contains(e) {
                    cands.push(*e);
                }
            }
            if let Some(&id) = self.by_key.get(&key) {
                let p = self.peers.get_mut(&id).expect("by_key points at peers");
                if !p.dynamic {
                    continue;
                }
                let changed = p.candidates != cands;
                p.candidates = cands;
                p.is_coordinator = w.is_coordinator;
                let stale = p
                    .last_handshake
                    .is_none_or(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(180));
                if changed && stale {
                    p.timers.want(now);
                    self.initiate(id, now);
                }
                continue;
            }
            let Ok(noise) = hs::Peer::new(&self.local, key, None) else {
                tracing::warn!(peer = %w.name, "netmap peer with an unusable key ignored");
                continue;
            };
            let id = self.next_id;
            self.next_id += 1;
            let cfg = PeerConfig {
                name: w.name.clone(),
                public_key: key,
                endpoint: None,
                allowed_ips: vec![crate::config::Cidr {
                    addr: w.mesh_ip.into(),
                    len: 32,
                }],
                preshared_key: None,
                persistent_keepalive: mesh::MESH_KEEPALIVE_SECS,
            };
            tracing::info!(peer = %w.name, mesh_ip = %w.mesh_ip, endpoints = ?cands, "mesh peer added");
            self.send(CtlMsg::AddPeer {
                peer: id,
                public_key: *key.as_bytes(),
                allowed_ips: cfg.allowed_ips.iter().map(|c| c.prefix()).collect(),
                endpoint: None,
                persistent_keepalive: cfg.persistent_keepalive,
            });
            let mut p = Peer::new(cfg, noise, true);
            p.is_coordinator = w.is_coordinator;
            p.candidates = cands;
            p.timers.new_attempt(now);
            self.peers.insert(id, p);
            self.by_key.insert(key, id);
            self.initiate(id, now);
        }
        if let Some(dns) = &self.dns {
            if let Err(e) = dns.update(&mesh::zone_of(&nm)) {
                tracing::warn!("mesh DNS update: {e}");
            }
        }
        if is_coord {
            if let (Some(st), Some(Role::Coordinator(c))) =
                (self.storage.clone(), self.mesh.as_ref().map(|m| &m.role))
            {
                let creds = c.node_credentials();
                tokio::task::spawn_blocking(move || st.install_credentials(&creds));
            }
        }
        if let Some(a) = pushed {
            // The packet filter enforces it from here on (the coordinator's service ports
            // are opened by capability in the projection; `refresh_filter` below sends it).
            self.filter.set_artifact(Some(a.clone()));
            self.policy_tx.send_if_modified(|cur| {
                if cur.as_deref() == Some(&a) {
                    return false;
                }
                *cur = Some(std::sync::Arc::new(a));
                true
            });
        }
        self.docker_netmap(&nm);
        self.refresh_filter(false);
    }

    /// This node's view of the policy (its projection, from the last netmap), for the
    /// enforcers that run on every node (the Docker agent).
    pub fn node_policy(&self) -> crate::policy::NodePolicy {
        crate::policy::NodePolicy(self.policy_tx.subscribe())
    }

    /// On a coordinator: an authenticated packet from `key` came from `from` — publish it as
    /// that node's observed (NAT-mapped) endpoint.
    pub(super) fn observe(&self, key: &PublicKey, from: SocketAddr) {
        if let Some(Role::Coordinator(c)) = self.mesh.as_ref().map(|m| &m.role) {
            if !from.ip().to_canonical().is_loopback() {
                c.observe_endpoint(key, from);
            }
        }
    }

    pub(super) fn remove_peer(&mut self, id: PeerId) {
        let Some(p) = self.peers.remove(&id) else {
            return;
        };
        tracing::info!(peer = %p.cfg.name, "mesh peer removed");
        self.by_key.remove(&p.cfg.public_key);
        if let Some(r) = &self.relay {
            r.remove(&p.cfg.public_key);
        }
        self.by_index.retain(|_, v| *v != id);
        self.send(CtlMsg::RemovePeer { peer: id });
    }
}
