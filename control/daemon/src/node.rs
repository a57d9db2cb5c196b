//! The running node: one tokio task owning all control-plane state.
//!
//! Flow: (1) start `tm-dataplane`, send timers and peers; (2) loop over events: messages from the
//! dataplane (handshake datagrams, NeedHandshake, counters, roaming), dataplane exit (restart with
//! backoff, then fresh handshakes: a new dataplane never reuses old session keys, since its nonce
//! counters would restart at zero), local API requests, timers (handshake retries with jitter);
//! (3) on SIGINT/SIGTERM stop the dataplane (its TUN disappears with it) and remove the socket.

use crate::api::ApiRequest;
use crate::config::{NodeConfig, PeerConfig};
use crate::dataplane::Dataplane;
use crate::mesh::{self, Mesh, Role};
use crate::relay::RelayBridge;
use crate::storage::Storage;
use anyhow::Result;
use rand_core::{OsRng, RngCore};
use std::collections::BTreeMap;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tm_api::{Command, Counters, DataplaneStatus, PeerInfo, Response, Status, WorkerInfo};
use tm_coord::wire;
use tm_dns::MeshDns;
use tm_noise::handshake::{self as hs, InitiationStep, ResponseStep};
use tm_noise::keys::{PrivateKey, PublicKey};
use tm_wire::ipc::{CtlMsg, DpMsg, DropReason, PeerId, PeerStats};
use tm_wire::wg;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

/// Give up initiating after this long without success (whitepaper REKEY_ATTEMPT_TIME).
const REKEY_ATTEMPT: Duration = Duration::from_secs(90);
/// More handshake datagrams per second than this puts the responder "under load" (cookies).
const UNDER_LOAD_PER_SEC: u32 = 400;
/// How long a status request waits for fresh counters from the dataplane.
const COUNTER_WAIT: Duration = Duration::from_millis(400);

struct Peer {
    cfg: PeerConfig,
    /// From the netmap (removed when it leaves it) rather than from the config file.
    dynamic: bool,
    is_coordinator: bool,
    /// Endpoints to try while no session exists (the netmap's, observed first).
    candidates: Vec<SocketAddr>,
    /// Since when we have been trying to establish a session without success.
    attempt_since: Option<Instant>,
    /// Last handshake completed over a direct (non-relay) path: endpoint and time.
    direct: Option<(SocketAddr, Instant)>,
    /// Last probe of the direct path while on the relay.
    last_probe: Option<Instant>,
    noise: hs::Peer,
    endpoint: Option<SocketAddr>,
    last_handshake: Option<SystemTime>,
    sessions: u64,
    /// Keep trying to establish a session until then.
    want_until: Option<Instant>,
    last_init_sent: Option<Instant>,
    next_retry: Option<Instant>,
    inflight_index: Option<u32>,
    installed: VecDeque<u32>,
    stats_base: PeerStats,
    stats: PeerStats,
}

impl Peer {
    /// A peer with no session yet.
    fn new(cfg: PeerConfig, noise: hs::Peer, dynamic: bool) -> Self {
        Peer {
            endpoint: cfg.endpoint,
            cfg,
            dynamic,
            is_coordinator: false,
            candidates: Vec::new(),
            attempt_since: None,
            direct: None,
            last_probe: None,
            noise,
            last_handshake: None,
            sessions: 0,
            want_until: None,
            last_init_sent: None,
            next_retry: None,
            inflight_index: None,
            installed: VecDeque::new(),
            stats_base: PeerStats::default(),
            stats: PeerStats::default(),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct DpCounters {
    drops: [u64; DropReason::COUNT],
    rx: u64,
    tx: u64,
}

impl DpCounters {
    fn add(&mut self, o: &DpCounters) {
        for (a, b) in self.drops.iter_mut().zip(o.drops) {
            *a += b;
        }
        self.rx += o.rx;
        self.tx += o.tx;
    }
}

pub struct Node {
    cfg: NodeConfig,
    local: hs::Local,
    public: PublicKey,
    peers: BTreeMap<PeerId, Peer>,
    next_id: PeerId,
    by_key: HashMap<PublicKey, PeerId>,
    by_index: HashMap<u32, PeerId>,
    dp: Option<Dataplane>,
    restarts: u64,
    restart_at: Option<Instant>,
    backoff: Duration,
    base: DpCounters,
    latest: DpCounters,
    /// Latest per-worker counters of the running dataplane (index = worker).
    workers: Vec<tm_wire::ipc::WorkerStats>,
    handshakes: u64,
    handshake_errors: u64,
    cookies_sent: u64,
    load_window: (Instant, u32),
    waiting: Vec<(Instant, ApiRequest)>,
    storage: Option<Storage>,
    mesh: Option<Mesh>,
    relay: Option<RelayBridge>,
    dns: Option<Arc<MeshDns>>,
    dns_addrs: Vec<SocketAddr>,
    /// System resolver settings made for the mesh DNS; undone when the node is dropped.
    sysdns: Option<crate::sysdns::SystemDns>,
    netmap_version: u64,
    /// A new mesh address the coordinators gave this node, once reported (`renamed.rs`).
    readdressed: Option<Ipv4Addr>,
    /// The policy hash of the last netmap (members' `status`).
    policy_hash: Option<String>,
    /// The packet filter (the coordinator's policy, or a local one).
    filter: crate::filter::LocalFilter,
    /// This node's projection of the policy, as the last netmap carried it.
    policy_tx: tokio::sync::watch::Sender<Option<std::sync::Arc<tm_policy::Artifact>>>,
    /// A pending `Leave`: its reply is sent once the coordinator has answered.
    leaving: Option<(oneshot::Receiver<Result<(), String>>, ApiRequest)>,
    pings: Vec<ping::Pending>,
    /// The Docker agent and the control socket's dials (mesh nodes).
    docker: Option<Arc<crate::docker::DockerHub>>,
    stop: bool,
    /// Every message handed to the dataplane, in order (unit tests of the handshake driver).
    #[cfg(test)]
    sent: Vec<CtlMsg>,
}

enum Event {
    Netmap(wire::Netmap),
    Left(Result<Result<(), String>, oneshot::error::RecvError>),
    Signal,
    Api(ApiRequest),
    Dp(Result<Vec<DpMsg>>),
    DpExit(std::io::Result<ExitStatus>),
    Timer,
}

impl Node {
    pub fn new(cfg: NodeConfig, key: PrivateKey) -> Result<Self> {
        let public = key.public_key();
        let local = hs::Local::new(key);
        let mut peers = BTreeMap::new();
        for (i, p) in cfg.peers.iter().enumerate() {
            let noise = hs::Peer::new(&local, p.public_key, p.preshared_key)
                .map_err(|e| anyhow::anyhow!("peers[{i}].public_key: {e}"))?;
            peers.insert(i as PeerId, Peer::new(p.clone(), noise, false));
        }
        let by_key = peers.iter().map(|(i, p)| (p.cfg.public_key, *i)).collect();
        let next_id = peers.len() as PeerId;
        Ok(Node {
            cfg,
            local,
            public,
            peers,
            next_id,
            by_key,
            by_index: HashMap::new(),
            dp: None,
            restarts: 0,
            restart_at: None,
            backoff: Duration::from_millis(100),
            base: DpCounters::default(),
            latest: DpCounters::default(),
            workers: Vec::new(),
            handshakes: 0,
            handshake_errors: 0,
            cookies_sent: 0,
            load_window: (Instant::now(), 0),
            waiting: Vec::new(),
            storage: None,
            mesh: None,
            relay: None,
            dns: None,
            dns_addrs: Vec::new(),
            sysdns: None,
            netmap_version: 0,
            readdressed: None,
            policy_hash: None,
            filter: crate::filter::LocalFilter::new(OsRng.next_u64()),
            policy_tx: tokio::sync::watch::Sender::new(None),
            leaving: None,
            pings: Vec::new(),
            docker: None,
            stop: false,
            #[cfg(test)]
            sent: Vec::new(),
        })
    }

    /// The Docker hub shared with the control socket; its agent starts in `start`.
    pub fn set_docker(&mut self, hub: Arc<crate::docker::DockerHub>) {
        self.docker = Some(hub);
    }

    /// Opens the object store (before anything listens); served after `start`.
    pub fn set_storage(&mut self, s: Storage) {
        self.storage = Some(s);
    }

    /// Makes this node a mesh member or coordinator (before `start`).
    pub fn set_mesh(&mut self, m: Mesh) {
        self.mesh = Some(m);
    }

    /// The relay used for peers that UDP cannot reach.
    pub fn set_relay(&mut self, r: RelayBridge) {
        self.relay = Some(r);
    }

    fn is_relay(&self, a: Option<SocketAddr>) -> bool {
        match (a, &self.relay) {
            (Some(a), Some(r)) => r.is_relay_addr(&a).is_some(),
            _ => false,
        }
    }

    fn relay_after(&self) -> Duration {
        self.rekey_timeout() * 2 + Duration::from_secs(1)
    }

    fn probe_every(&self) -> Duration {
        self.rekey_timeout() * 4
    }

    /// Path decisions, once per timer tick: a peer that found no session over UDP for
    /// `relay_after` goes through the relay; a relayed peer probes its direct endpoints every
    /// `probe_every` (a handshake answered directly moves it back).
    fn paths(&mut self, now: Instant) {
        let (after, every) = (self.relay_after(), self.probe_every());
        let Some(relay) = self.relay.as_ref() else {
            return;
        };
        if !relay.connected() {
            return;
        }
        let mut to_relay = Vec::new();
        let mut probe = Vec::new();
        for (id, p) in &self.peers {
            if !p.dynamic {
                continue;
            }
            let on_relay = p
                .endpoint
                .is_some_and(|e| relay.is_relay_addr(&e).is_some());
            if on_relay {
                if !p.candidates.is_empty()
                    && p.last_probe.is_none_or(|t| now.duration_since(t) >= every)
                {
                    probe.push(*id);
                }
            } else if p
                .attempt_since
                .is_some_and(|t| now.duration_since(t) >= after)
            {
                to_relay.push(*id);
            }
        }
        for id in to_relay {
            let relay = self.relay.as_ref().expect("checked above");
            let p = self.peers.get_mut(&id).expect("listed above");
            let ep = match relay.endpoint_for(p.cfg.public_key) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(peer = %p.cfg.name, "relay endpoint: {e}");
                    continue;
                }
            };
            tracing::info!(peer = %p.cfg.name, via = %ep, "no UDP path; using the relay");
            p.endpoint = Some(ep);
            p.attempt_since = Some(now);
            p.last_probe = Some(now);
            p.want_until = Some(now + REKEY_ATTEMPT);
            self.send(CtlMsg::SetEndpoint {
                peer: id,
                endpoint: ep,
            });
            self.initiate(id, now);
        }
        for id in probe {
            let p = self.peers.get_mut(&id).expect("listed above");
            p.last_probe = Some(now);
            tracing::debug!(peer = %p.cfg.name, "probing the direct path");
            self.initiate_to(id, now, true);
        }
    }

    /// Starts the dataplane, then the services bound to the mesh address (S3, DNS, the
    /// coordinator API); an error here means the node cannot run at all.
    pub async fn start(&mut self) -> Result<()> {
        let dp = Dataplane::spawn(&self.cfg).await?;
        tracing::info!(pid = dp.pid, interface = %self.cfg.interface, "dataplane ready");
        self.dp = Some(dp);
        self.sync_dataplane(false);
        let mesh_ip = self.cfg.address().addr;
        if let Some(s) = &self.storage {
            let coord = match self.mesh.as_ref().map(|m| &m.role) {
                Some(Role::Coordinator(c)) => Some(c.clone()),
                _ => None,
            };
            s.serve(mesh_ip, coord.as_ref().map(crate::identity::authority))
                .await?;
            if let Some(c) = &coord {
                c.set_admin_handler(crate::identity::admin_handler(c, Some(s.clone())));
            }
            if let Some(n) = &self.cfg.nfs {
                let addr = n.listen.unwrap_or_else(|| SocketAddr::new(mesh_ip, 2049));
                let cidrs: Vec<String> = match &self.mesh {
                    Some(m) => vec![m.cidr.to_string()],
                    None => vec![self.cfg.address().network().to_string()],
                };
                let gate = coord.map(|c| {
                    std::sync::Arc::new(crate::policy::MeshGate(c))
                        as std::sync::Arc<dyn tm_nfs::Gate>
                });
                s.serve_nfs(addr, &cidrs, gate).await?;
            }
        }
        if let (Some(d), Some(_)) = (&self.cfg.dns, &self.mesh) {
            let dns = Arc::new(MeshDns::new(&tm_dns::Zone::new(d.domain.clone()))?);
            let mut addrs = vec![d.listen];
            let on_mesh = SocketAddr::new(mesh_ip, 53);
            if !addrs.contains(&on_mesh) {
                addrs.push(on_mesh);
            }
            let server = tm_dns::DnsServer::bind(dns.clone(), &addrs)
                .await
                .map_err(|e| anyhow::anyhow!("dns.listen: {e}"))?;
            self.dns_addrs = server.local_addrs().to_vec();
            tracing::info!(addrs = ?self.dns_addrs, "mesh DNS serving");
            tokio::spawn(async move {
                if let Err(e) = server.run(std::future::pending()).await {
                    tracing::error!("mesh DNS stopped: {e}");
                }
            });
            if d.manage_system {
                self.sysdns = crate::sysdns::manage(&self.cfg, mesh_ip, &d.domain, &dns);
            }
            self.dns = Some(dns);
        }
        self.start_docker()
    }

    /// Turns a netmap into peers: adds newcomers (and handshakes with them at once, which
    /// opens NAT mappings on both sides), removes departed ones, refreshes endpoints, DNS and,
    /// on a coordinator, the S3 credentials of every node.
    fn apply_netmap(&mut self, nm: wire::Netmap) {
        let now = Instant::now();
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
                    p.want_until = Some(now + REKEY_ATTEMPT);
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
            p.attempt_since = Some(now);
            p.want_until = Some(now + REKEY_ATTEMPT);
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
    fn observe(&self, key: &PublicKey, from: SocketAddr) {
        if let Some(Role::Coordinator(c)) = self.mesh.as_ref().map(|m| &m.role) {
            if !from.ip().to_canonical().is_loopback() {
                c.observe_endpoint(key, from);
            }
        }
    }

    fn remove_peer(&mut self, id: PeerId) {
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

    /// Sends timers and every peer to a fresh dataplane; optionally re-handshakes known endpoints.
    fn sync_dataplane(&mut self, rehandshake: bool) {
        let now = Instant::now();
        let Some(dp) = self.dp.as_mut() else { return };
        dp.send(&CtlMsg::SetTimers(self.cfg.timers));
        for (i, p) in &self.peers {
            dp.send(&CtlMsg::AddPeer {
                peer: *i,
                public_key: *p.cfg.public_key.as_bytes(),
                allowed_ips: p.cfg.allowed_ips.iter().map(|c| c.prefix()).collect(),
                endpoint: p.endpoint,
                persistent_keepalive: p.cfg.persistent_keepalive,
            });
        }
        if rehandshake {
            let ids: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(_, p)| p.endpoint.is_some() || !p.candidates.is_empty())
                .map(|(i, _)| *i)
                .collect();
            for i in ids {
                if let Some(p) = self.peers.get_mut(&i) {
                    p.want_until = Some(now + REKEY_ATTEMPT);
                }
                self.initiate(i, now);
            }
        }
        self.refresh_filter(true);
    }

    pub async fn run(mut self, mut api: mpsc::Receiver<ApiRequest>) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            let deadline = self.next_deadline();
            if self.stop {
                break;
            }
            let ev = {
                let (rx, child) = match self.dp.as_mut() {
                    Some(d) => (Some(&mut d.rx), Some(&mut d.child)),
                    None => (None, None),
                };
                let netmaps = self.mesh.as_mut().map(|m| &mut m.netmaps);
                let leaving = self.leaving.as_mut().map(|l| &mut l.0);
                tokio::select! {
                    Some(nm) = async { match netmaps { Some(n) => n.recv().await, None => std::future::pending().await } } => Event::Netmap(nm),
                    r = async { match leaving { Some(l) => l.await, None => std::future::pending().await } } => Event::Left(r),
                    _ = term.recv() => Event::Signal,
                    _ = int.recv() => Event::Signal,
                    Some(r) = api.recv() => Event::Api(r),
                    r = async { match rx { Some(rx) => rx.recv().await, None => std::future::pending().await } } => Event::Dp(r),
                    r = async { match child { Some(c) => c.wait().await, None => std::future::pending().await } } => Event::DpExit(r),
                    _ = tokio::time::sleep_until(deadline.into()) => Event::Timer,
                }
            };
            match ev {
                Event::Signal => break,
                Event::Netmap(nm) => self.apply_netmap(nm),
                Event::Left(r) => {
                    let (_, req) = self.leaving.take().expect("a leave was pending");
                    let r = r.unwrap_or_else(|_| Err("leave task failed".into()));
                    match r {
                        Ok(()) => {
                            if let Some(m) = self.mesh.as_mut() {
                                m.saved = None;
                            }
                            mesh::JoinState::remove(&self.cfg.data_dir);
                            let _ = req.reply.send(Response::ok(&"left"));
                            self.stop = true;
                        }
                        Err(e) => {
                            let _ = req.reply.send(Response::err(format!("leave: {e}")));
                        }
                    }
                }
                Event::Api(r) => self.handle_api(r),
                Event::Dp(Ok(msgs)) => {
                    let mut counters = false;
                    for m in msgs {
                        counters |= matches!(m, DpMsg::Counters { .. });
                        self.handle_dp(m);
                    }
                    if counters {
                        self.answer_waiting(true);
                    }
                }
                Event::Dp(Err(e)) => tracing::warn!("dataplane ring: {}", tmctl::error_line(&e)),
                Event::DpExit(st) => self.dataplane_exited(st),
                Event::Timer => self.on_timer().await,
            }
            if let Some(dp) = self.dp.as_mut() {
                dp.flush();
            }
        }
        tracing::info!("shutting down");
        if let Some(dp) = self.dp.take() {
            dp.stop().await;
        }
        Ok(())
    }

    fn next_deadline(&self) -> Instant {
        let mut d = Instant::now() + Duration::from_secs(1);
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                d = d.min(t);
            }
        };
        at(self.restart_at);
        for p in self.peers.values() {
            at(p.next_retry);
        }
        for (t, _) in &self.waiting {
            at(Some(*t));
        }
        if self.dp.is_some() {
            // Keep flushing a ring backlog promptly.
            at(Some(Instant::now() + Duration::from_millis(20)));
        }
        d
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            match Dataplane::spawn(&self.cfg).await {
                Ok(dp) => {
                    tracing::info!(
                        pid = dp.pid,
                        restarts = self.restarts,
                        "dataplane restarted"
                    );
                    self.dp = Some(dp);
                    self.backoff = Duration::from_millis(100);
                    self.sync_dataplane(true);
                }
                Err(e) => {
                    tracing::error!("restarting the dataplane failed: {}", tmctl::error_line(&e));
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
                    self.restart_at = Some(Instant::now() + self.backoff);
                }
            }
        }
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.next_retry.is_some_and(|t| t <= now))
            .map(|(i, _)| *i)
            .collect();
        for i in due {
            let p = self.peers.get_mut(&i).expect("listed above");
            {
                p.next_retry = None;
                if p.want_until.is_some_and(|t| t > now) {
                    self.initiate(i, now);
                } else {
                    p.want_until = None;
                    p.attempt_since = None;
                    if let Some(idx) = p.inflight_index.take() {
                        self.by_index.remove(&idx);
                    }
                }
            }
        }
        self.paths(Instant::now());
        self.poll_pings();
        self.answer_waiting(false);
    }

    fn dataplane_exited(&mut self, st: std::io::Result<ExitStatus>) {
        let st = st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        tracing::error!("tm-dataplane exited ({st}); restarting");
        self.dp = None;
        self.restarts += 1;
        self.base.add(&self.latest);
        self.latest = DpCounters::default();
        self.workers.clear();
        for p in self.peers.values_mut() {
            add_stats(&mut p.stats_base, &p.stats);
            p.stats = PeerStats::default();
            p.installed.clear();
            p.inflight_index = None;
        }
        self.by_index.clear();
        self.restart_at = Some(Instant::now() + self.backoff);
    }

    fn send(&mut self, m: CtlMsg) {
        #[cfg(test)]
        self.sent.push(m.clone());
        if let Some(dp) = self.dp.as_mut() {
            dp.send(&m);
        }
    }

    fn alloc_index(&mut self, peer: PeerId) -> u32 {
        loop {
            let i = OsRng.next_u32();
            if i != 0 && !self.by_index.contains_key(&i) {
                self.by_index.insert(i, peer);
                return i;
            }
        }
    }

    /// Sends a handshake initiation to the peer's endpoint and schedules a retry.
    fn initiate(&mut self, id: PeerId, now: Instant) {
        self.initiate_to(id, now, false);
    }

    /// `direct_only`: to the direct candidates only (a probe while on the relay).
    fn initiate_to(&mut self, id: PeerId, now: Instant, direct_only: bool) {
        let rekey_timeout = self.rekey_timeout();
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.want_until.is_some() && p.attempt_since.is_none() && !direct_only {
            p.attempt_since = Some(now);
        }
        // The known endpoint, plus every candidate while no session exists (hole punching:
        // both sides initiate towards every address they know; the responder rejects the
        // duplicates as replays of the same timestamp).
        let mut targets: Vec<SocketAddr> = if direct_only {
            Vec::new()
        } else {
            p.endpoint.into_iter().collect()
        };
        if direct_only || p.last_handshake.is_none() || p.want_until.is_some() {
            for c in &p.candidates {
                if !targets.contains(c) && targets.len() < 8 {
                    targets.push(*c);
                }
            }
        }
        if targets.is_empty() {
            // Nothing to do until the peer reaches us (its initiation sets the endpoint).
            p.next_retry = Some(now + rekey_timeout);
            return;
        }
        if let Some(old) = p.inflight_index.take() {
            self.by_index.remove(&old);
        }
        let idx = self.alloc_index(id);
        let p = self.peers.get_mut(&id).expect("checked above");
        let msg = self
            .local
            .initiate(now, SystemTime::now(), &mut p.noise, idx, &mut OsRng);
        p.inflight_index = Some(idx);
        p.last_init_sent = Some(now);
        let jitter = Duration::from_millis(u64::from(OsRng.next_u32() % 334));
        p.next_retry = Some(now + rekey_timeout + jitter);
        tracing::debug!(peer = %p.cfg.name, ?targets, "handshake initiation");
        for to in targets {
            self.send(CtlMsg::SendDatagram {
                to,
                data: msg.to_vec(),
            });
        }
    }

    fn rekey_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.cfg.timers.rekey_timeout_ms))
    }

    fn under_load(&mut self, now: Instant) -> bool {
        if self.cfg.force_cookie {
            return true;
        }
        let (start, n) = &mut self.load_window;
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *n = 0;
        }
        *n += 1;
        *n > UNDER_LOAD_PER_SEC
    }

    fn handle_dp(&mut self, m: DpMsg) {
        let now = Instant::now();
        match m {
            DpMsg::Ready { .. } => {}
            DpMsg::HandshakeDatagram { from, data } => {
                self.handle_handshake(now, canonical(from), &data)
            }
            DpMsg::NeedHandshake { peer } => {
                let rekey_timeout = self.rekey_timeout();
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                p.want_until = Some(now + REKEY_ATTEMPT);
                let due = p
                    .last_init_sent
                    .is_none_or(|t| now.duration_since(t) >= rekey_timeout);
                if due || p.inflight_index.is_none() {
                    self.initiate(peer, now);
                }
            }
            DpMsg::EndpointChanged { peer, endpoint } => {
                let endpoint = canonical(endpoint);
                let to_relay = self.is_relay(Some(endpoint));
                let grace = self.probe_every() * 2;
                if let Some(p) = self.peers.get_mut(&peer) {
                    // Prefer a direct path that answered recently over stray relayed packets
                    // still in flight from before the peer switched.
                    if let (true, Some((d, at))) = (to_relay, p.direct) {
                        if now.duration_since(at) < grace {
                            tracing::debug!(peer = %p.cfg.name, "ignoring roam to the relay");
                            self.send(CtlMsg::SetEndpoint { peer, endpoint: d });
                            return;
                        }
                    }
                    tracing::info!(peer = %p.cfg.name, %endpoint, "peer roamed");
                    p.endpoint = Some(endpoint);
                    let key = p.cfg.public_key;
                    self.observe(&key, endpoint);
                }
            }
            DpMsg::SessionExpired { local_index, .. } => {
                self.by_index.remove(&local_index);
            }
            DpMsg::SessionConfirmed { .. } => {}
            DpMsg::PeerCounters { peer, stats } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.stats = stats;
                }
            }
            DpMsg::Counters {
                drops,
                rx_datagrams,
                tx_datagrams,
            } => {
                self.latest = DpCounters {
                    drops,
                    rx: rx_datagrams,
                    tx: tx_datagrams,
                };
            }
            m @ DpMsg::FilterDrop { .. } => self.filter_drop(m),
            DpMsg::FilterCounters {
                flows,
                capacity,
                evictions,
                ..
            } => self.filter.flows = (flows, capacity, evictions),
            DpMsg::WorkerCounters { worker, stats } => {
                let i = usize::from(worker);
                // Bounded by the dataplane's own limit (64 workers); ignore nonsense.
                if i < 256 {
                    if self.workers.len() <= i {
                        self.workers.resize(i + 1, Default::default());
                    }
                    self.workers[i] = stats;
                }
            }
        }
    }

    fn handle_handshake(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let under_load = self.under_load(now);
        let r = match wg::classify(data) {
            Ok(wg::MSG_INITIATION) => self.on_initiation(now, from, data, under_load),
            Ok(wg::MSG_RESPONSE) => self.on_response(now, from, data, under_load),
            Ok(wg::MSG_COOKIE_REPLY) => self.on_cookie(now, data),
            _ => Err("not a handshake message".to_string()),
        };
        if let Err(e) = r {
            self.handshake_errors += 1;
            tracing::debug!(%from, "handshake message rejected: {e}");
        }
    }

    fn on_initiation(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        under_load: bool,
    ) -> Result<(), String> {
        let pending = match self
            .local
            .begin_initiation(now, data, from, under_load, &mut OsRng)
            .map_err(|e| e.to_string())?
        {
            InitiationStep::Cookie(reply) => {
                self.cookies_sent += 1;
                self.send(CtlMsg::SendDatagram {
                    to: from,
                    data: reply.to_vec(),
                });
                return Ok(());
            }
            InitiationStep::Identified(p) => p,
        };
        let id = *self
            .by_key
            .get(&pending.remote_static())
            .ok_or("initiation from an unknown key")?;
        let idx = self.alloc_index(id);
        let p = self.peers.get_mut(&id).expect("indexed peers exist");
        let (resp, keys) = match self
            .local
            .respond(now, pending, &mut p.noise, idx, &mut OsRng)
        {
            Ok(r) => r,
            Err(e) => {
                self.by_index.remove(&idx);
                return Err(e.to_string());
            }
        };
        // Install first: the initiator's first packet (its keepalive) follows our response
        // within a round trip, and the dataplane must know the session by then. The ring is
        // in order, so the install is applied before the response is sent.
        self.established(id, from, &keys);
        self.send(CtlMsg::SendDatagram {
            to: from,
            data: resp.to_vec(),
        });
        Ok(())
    }

    fn on_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        under_load: bool,
    ) -> Result<(), String> {
        let idx = wg::handshake_receiver(data).ok_or("bad response")?;
        let id = *self
            .by_index
            .get(&idx)
            .ok_or("response to an unknown index")?;
        let p = self.peers.get_mut(&id).expect("indexed peers exist");
        if p.inflight_index != Some(idx) {
            return Err("response to a handshake not in flight".into());
        }
        match self
            .local
            .handle_response(now, data, from, under_load, &mut p.noise, &mut OsRng)
            .map_err(|e| e.to_string())?
        {
            ResponseStep::Cookie(reply) => {
                self.cookies_sent += 1;
                self.send(CtlMsg::SendDatagram {
                    to: from,
                    data: reply.to_vec(),
                });
            }
            ResponseStep::Established(keys) => {
                p.inflight_index = None;
                p.want_until = None;
                p.next_retry = None;
                self.established(id, from, &keys);
            }
        }
        Ok(())
    }

    fn on_cookie(&mut self, now: Instant, data: &[u8]) -> Result<(), String> {
        let idx = wg::handshake_receiver(data).ok_or("bad cookie reply")?;
        let id = *self
            .by_index
            .get(&idx)
            .ok_or("cookie reply for an unknown index")?;
        let p = self.peers.get_mut(&id).expect("indexed peers exist");
        self.local
            .handle_cookie_reply(now, data, &mut p.noise)
            .map_err(|e| e.to_string())
    }

    /// A handshake completed (either role): install the keys and remember the endpoint.
    fn established(&mut self, id: PeerId, from: SocketAddr, keys: &hs::SessionKeys) {
        self.handshakes += 1;
        let p = self.peers.get_mut(&id).expect("indexed peers exist");
        p.sessions += 1;
        p.last_handshake = Some(SystemTime::now());
        p.installed.push_back(keys.local_index);
        let mut freed = Vec::new();
        while p.installed.len() > 3 {
            freed.extend(p.installed.pop_front());
        }
        let roam = p.endpoint != Some(from);
        p.endpoint = Some(from);
        p.attempt_since = None;
        let key = p.cfg.public_key;
        let relayed = self
            .relay
            .as_ref()
            .is_some_and(|r| r.is_relay_addr(&from).is_some());
        let p = self.peers.get_mut(&id).expect("indexed peers exist");
        if !relayed {
            p.direct = Some((from, Instant::now()));
        }
        tracing::info!(peer = %p.cfg.name, endpoint = %from, initiator = keys.initiator, "session established");
        for i in freed {
            self.by_index.remove(&i);
        }
        self.observe(&key, from);
        if roam {
            self.send(CtlMsg::SetEndpoint {
                peer: id,
                endpoint: from,
            });
        }
        self.send(CtlMsg::InstallSession {
            peer: id,
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            send_key: keys.send_key,
            recv_key: keys.recv_key,
            initiator: keys.initiator,
        });
    }

    fn handle_api(&mut self, r: ApiRequest) {
        match r.command {
            ref c if c.is_storage() => {
                match self.storage.clone() {
                    // Metadata commits fsync: keep them off the node loop.
                    Some(st) => {
                        tokio::task::spawn_blocking(move || {
                            let resp = st.handle(&r.command);
                            let _ = r.reply.send(resp);
                        });
                    }
                    None => {
                        // A member uses the coordinator's store with the keys issued at join, and
                        // forwards bucket and share commands to it (authorised there).
                        let saved = self.mesh.as_ref().and_then(|m| m.saved.as_ref());
                        let client = match self.mesh.as_ref().map(|m| &m.role) {
                            Some(Role::Member { client, .. }) => Some(client.current()),
                            _ => None,
                        };
                        let resp = match (&r.command, saved, client) {
                        (Command::S3Credentials, Some(j), _) => Response::ok(&tm_api::S3Credentials {
                            access_key: j.s3_access_key.clone(),
                            secret_key: j.s3_secret.clone(),
                            endpoint: "http://coordinator.mesh:8080/s3".into(),
                        }),
                        (c, _, Some(client)) if crate::policy::forwarded_needs(c).is_some() => {
                            tokio::spawn(async move {
                                let resp = crate::policy::forward_admin(&client, &r.command).await;
                                let _ = r.reply.send(resp);
                            });
                            return;
                        }
                        _ => Response::err(
                            "this node has no object store (add an `s3:` section to its config)",
                        ),
                    };
                        let _ = r.reply.send(resp);
                    }
                }
            }
            Command::Leave => self.leave(r),
            Command::Ping { .. } => self.ping(r),
            Command::FilterLoad { .. }
            | Command::FilterLog { .. }
            | Command::FilterClear
            | Command::FilterShow
            | Command::FilterTest { .. } => {
                let resp = self.filter_api(&r.command);
                let _ = r.reply.send(resp);
            }
            ref c if c.is_admin() => match self.mesh.as_ref().map(|m| &m.role) {
                Some(Role::Coordinator(co)) => {
                    let (co, st) = (co.clone(), self.storage.clone());
                    tokio::task::spawn_blocking(move || {
                        let resp = crate::identity::handle(&co, st.as_ref(), &r.command);
                        let _ = r.reply.send(resp);
                    });
                }
                Some(Role::Member { client, .. }) => {
                    let client = client.current();
                    tokio::spawn(async move {
                        let resp = crate::policy::forward_admin(&client, &r.command).await;
                        let _ = r.reply.send(resp);
                    });
                }
                None => {
                    let _ = r.reply.send(Response::err(
                        "admin commands need a mesh: this node is not in one",
                    ));
                }
            },
            Command::Status | Command::Peers if self.dp.is_some() => {
                // Answer once fresh counters arrive (or after a short wait).
                self.send(CtlMsg::RequestCounters);
                self.waiting.push((Instant::now() + COUNTER_WAIT, r));
            }
            _ => {
                let resp = self.respond(&r.command);
                let _ = r.reply.send(resp);
            }
        }
    }

    fn leave(&mut self, r: ApiRequest) {
        let client = match self.mesh.as_ref().map(|m| &m.role) {
            Some(Role::Member { client, .. }) => client.current(),
            Some(Role::Coordinator(_)) => {
                let _ = r.reply.send(Response::err(
                    "a coordinator cannot leave its own mesh (stop it instead)",
                ));
                return;
            }
            None => {
                let _ = r.reply.send(Response::err("this node is not in a mesh"));
                return;
            }
        };
        if self.leaving.is_some() {
            let _ = r.reply.send(Response::err("already leaving"));
            return;
        }
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(client.leave().await.map_err(|e| e.to_string()));
        });
        self.leaving = Some((rx, r));
    }

    fn answer_waiting(&mut self, all: bool) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.waiting.len() {
            if all || self.waiting[i].0 <= now {
                let (_, r) = self.waiting.swap_remove(i);
                let resp = self.respond(&r.command);
                let _ = r.reply.send(resp);
            } else {
                i += 1;
            }
        }
    }

    fn respond(&self, c: &Command) -> Response {
        match c {
            Command::Status => Response::ok(&self.status()),
            Command::Peers => Response::ok(&self.peer_infos()),
            Command::Token => match self.mesh.as_ref().map(|m| &m.role) {
                Some(Role::Coordinator(c)) => Response::ok(&c.token()),
                _ => Response::err("this node is not a coordinator (run `tmctl token` on one)"),
            },
            #[allow(unreachable_patterns)]
            _ => Response::err("this node does not support that command"),
        }
    }

    fn status(&self) -> Status {
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

    fn peer_infos(&self) -> Vec<PeerInfo> {
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

/// IPv4-mapped IPv6 (as a dual-stack socket reports IPv4 senders) as plain IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn add_stats(a: &mut PeerStats, b: &PeerStats) {
    a.rx_bytes += b.rx_bytes;
    a.rx_packets += b.rx_packets;
    a.tx_bytes += b.tx_bytes;
    a.tx_packets += b.tx_packets;
    a.last_rx_ago_ms = b.last_rx_ago_ms;
}

#[path = "node_docker.rs"]
mod node_docker;
#[path = "node_filter.rs"]
mod node_filter;
#[path = "ping.rs"]
mod ping;
#[path = "services.rs"]
mod services;

#[cfg(test)]
mod tests {
    use super::*;

    /// A node `a` with one configured peer `b`, and `b`'s handshake state towards `a`.
    pub(super) fn pair() -> (Node, hs::Local, hs::Peer) {
        let a = PrivateKey::generate(&mut OsRng);
        let b = PrivateKey::generate(&mut OsRng);
        let yaml = format!(
            "name: a\naddress: 100.64.0.1/10\ndata_dir: /tmp/unused\npeers:\n  - name: b\n    \
             public_key: \"{}\"\n    allowed_ips: [100.64.0.2/32]\n",
            b.public_key()
        );
        let a_public = a.public_key();
        let node = Node::new(NodeConfig::parse(&yaml).expect("config"), a).expect("node");
        let b = hs::Local::new(b);
        let b_to_a = hs::Peer::new(&b, a_public, None).expect("peer");
        (node, b, b_to_a)
    }

    /// The initiator sends its first packet (a keepalive, if nothing is queued) as soon as the
    /// response arrives; a responder whose dataplane learnt the session only after sending the
    /// response dropped it, and the peer then sat on a dead session until WireGuard's 15 s
    /// fallback (a restarted peer looked unreachable).
    #[test]
    fn responder_installs_its_session_before_sending_the_response() {
        let (mut node, mut b, mut b_to_a) = pair();
        let now = Instant::now();
        let from: SocketAddr = "192.0.2.2:51820".parse().unwrap();
        let init = b.initiate(now, SystemTime::now(), &mut b_to_a, 7, &mut OsRng);
        node.handle_handshake(now, from, &init);
        assert_eq!(node.handshake_errors, 0);
        let install = node
            .sent
            .iter()
            .position(|m| {
                matches!(
                    m,
                    CtlMsg::InstallSession {
                        initiator: false,
                        ..
                    }
                )
            })
            .expect("a responder session is installed");
        let reply = node
            .sent
            .iter()
            .position(|m| matches!(m, CtlMsg::SendDatagram { .. }))
            .expect("a response is sent");
        assert!(install < reply, "install at {install}, response at {reply}");
        // And the response really completes the handshake into the installed session.
        let (
            CtlMsg::InstallSession {
                local_index,
                remote_index,
                send_key,
                recv_key,
                ..
            },
            CtlMsg::SendDatagram { to, data },
        ) = (&node.sent[install], &node.sent[reply])
        else {
            unreachable!("matched above")
        };
        assert_eq!(*to, from);
        match b
            .handle_response(now, data, *to, false, &mut b_to_a, &mut OsRng)
            .expect("b accepts the response")
        {
            ResponseStep::Established(k) => {
                assert_eq!((k.local_index, k.remote_index), (7, *local_index));
                assert_eq!(*remote_index, 7);
                assert_eq!((k.send_key, k.recv_key), (*recv_key, *send_key));
            }
            ResponseStep::Cookie(_) => panic!("no cookie expected"),
        }
    }
}
