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

use crate::peer_timers::{Action, PathView, PeerTimers, Timing};

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
    /// Handshake and path timers (the sans-IO core decides on them).
    timers: PeerTimers,
    noise: hs::Peer,
    endpoint: Option<SocketAddr>,
    last_handshake: Option<SystemTime>,
    sessions: u64,
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
            timers: PeerTimers::default(),
            noise,
            last_handshake: None,
            sessions: 0,
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

    /// Starts the dataplane, then the services bound to the mesh address (S3, DNS, the
    /// coordinator API); an error here means the node cannot run at all.
    pub async fn start(&mut self) -> Result<()> {
        let dp = Dataplane::spawn(&self.cfg).await?;
        tracing::info!(pid = dp.pid, interface = %self.cfg.interface, "dataplane ready");
        self.dp = Some(dp);
        self.sync_dataplane(Instant::now(), false);
        let mesh_ip = self.cfg.address().addr;
        if let Some(s) = &self.storage {
            let coord = match self.mesh.as_ref().map(|m| &m.role) {
                Some(Role::Coordinator(c)) => Some(c.clone()),
                _ => None,
            };
            let replicator = coord.as_ref().map(|c| s.replication(c));
            s.serve(
                mesh_ip,
                coord.as_ref().map(crate::identity::authority),
                replicator,
            )
            .await?;
            if let Some(c) = &coord {
                c.set_admin_handler(crate::identity::admin_handler(c, Some(s.clone())));
                // Buckets and shares changed on other coordinators (`storage_sync.rs`).
                crate::storage_sync::spawn(s.clone(), c.clone());
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

    /// Sends timers and every peer to a fresh dataplane; optionally re-handshakes known endpoints.
    fn sync_dataplane(&mut self, now: Instant, rehandshake: bool) {
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
                    p.timers.want(now);
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
                Event::Netmap(nm) => self.apply_netmap(Instant::now(), nm),
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
                    let now = Instant::now();
                    let mut counters = false;
                    for m in msgs {
                        counters |= matches!(m, DpMsg::Counters { .. });
                        self.handle_dp(now, m);
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
            at(p.timers.deadline());
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
                    self.sync_dataplane(Instant::now(), true);
                }
                Err(e) => {
                    tracing::error!("restarting the dataplane failed: {}", tmctl::error_line(&e));
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
                    self.restart_at = Some(Instant::now() + self.backoff);
                }
            }
        }
        self.tick(Instant::now());
    }

    /// Time passes (no I/O but ring messages): handshake retries and give-ups, path
    /// decisions, pings and status requests due at `now`.
    fn tick(&mut self, now: Instant) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for i in ids {
            let p = self.peers.get_mut(&i).expect("listed above");
            match p.timers.retry_due(now) {
                Some(Action::Initiate) => self.initiate(i, now),
                Some(Action::GiveUp) => {
                    if let Some(idx) = p.inflight_index.take() {
                        self.by_index.remove(&idx);
                    }
                }
                _ => {}
            }
        }
        self.paths(now);
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

#[path = "node_api.rs"]
mod node_api;
#[path = "node_docker.rs"]
mod node_docker;
#[path = "node_filter.rs"]
mod node_filter;
#[path = "node_handshake.rs"]
mod node_handshake;
#[path = "node_netmap.rs"]
mod node_netmap;
#[path = "node_paths.rs"]
mod node_paths;
#[path = "node_status.rs"]
mod node_status;
#[cfg(test)]
#[path = "node_tests.rs"]
mod node_tests;
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
