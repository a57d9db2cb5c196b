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
use crate::storage::Storage;
use anyhow::Result;
use rand_core::{OsRng, RngCore};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tm_api::{Command, Counters, DataplaneStatus, PeerInfo, Response, Status};
use tm_noise::handshake::{self as hs, InitiationStep, ResponseStep};
use tm_noise::keys::{PrivateKey, PublicKey};
use tm_wire::ipc::{CtlMsg, DpMsg, DropReason, PeerId, PeerStats};
use tm_wire::wg;
use tokio::sync::mpsc;

/// Give up initiating after this long without success (whitepaper REKEY_ATTEMPT_TIME).
const REKEY_ATTEMPT: Duration = Duration::from_secs(90);
/// More handshake datagrams per second than this puts the responder "under load" (cookies).
const UNDER_LOAD_PER_SEC: u32 = 400;
/// How long a status request waits for fresh counters from the dataplane.
const COUNTER_WAIT: Duration = Duration::from_millis(400);

struct Peer {
    cfg: PeerConfig,
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
    peers: Vec<Peer>,
    by_key: HashMap<PublicKey, PeerId>,
    by_index: HashMap<u32, PeerId>,
    dp: Option<Dataplane>,
    restarts: u64,
    restart_at: Option<Instant>,
    backoff: Duration,
    base: DpCounters,
    latest: DpCounters,
    handshakes: u64,
    handshake_errors: u64,
    cookies_sent: u64,
    load_window: (Instant, u32),
    waiting: Vec<(Instant, ApiRequest)>,
    storage: Option<Storage>,
}

enum Event {
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
        let mut peers: Vec<Peer> = Vec::with_capacity(cfg.peers.len());
        for (i, p) in cfg.peers.iter().enumerate() {
            let noise = hs::Peer::new(&local, p.public_key, p.preshared_key)
                .map_err(|e| anyhow::anyhow!("peers[{i}].public_key: {e}"))?;
            peers.push(Peer {
                noise,
                endpoint: p.endpoint,
                cfg: p.clone(),
                last_handshake: None,
                sessions: 0,
                want_until: None,
                last_init_sent: None,
                next_retry: None,
                inflight_index: None,
                installed: VecDeque::new(),
                stats_base: PeerStats::default(),
                stats: PeerStats::default(),
            });
        }
        let by_key = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.cfg.public_key, i as PeerId))
            .collect();
        Ok(Node {
            cfg,
            local,
            public,
            peers,
            by_key,
            by_index: HashMap::new(),
            dp: None,
            restarts: 0,
            restart_at: None,
            backoff: Duration::from_millis(100),
            base: DpCounters::default(),
            latest: DpCounters::default(),
            handshakes: 0,
            handshake_errors: 0,
            cookies_sent: 0,
            load_window: (Instant::now(), 0),
            waiting: Vec::new(),
            storage: None,
        })
    }

    /// Opens the object store (before anything listens); served after `start`.
    pub fn set_storage(&mut self, s: Storage) {
        self.storage = Some(s);
    }

    /// Starts the dataplane; an error here means the node cannot run at all.
    pub async fn start(&mut self) -> Result<()> {
        let dp = Dataplane::spawn(&self.cfg).await?;
        tracing::info!(pid = dp.pid, interface = %self.cfg.interface, "dataplane ready");
        self.dp = Some(dp);
        self.sync_dataplane(false);
        if let Some(s) = &self.storage {
            s.serve().await?;
        }
        Ok(())
    }

    /// Sends timers and every peer to a fresh dataplane; optionally re-handshakes known endpoints.
    fn sync_dataplane(&mut self, rehandshake: bool) {
        let now = Instant::now();
        let Some(dp) = self.dp.as_mut() else { return };
        dp.send(&CtlMsg::SetTimers(self.cfg.timers));
        for (i, p) in self.peers.iter().enumerate() {
            dp.send(&CtlMsg::AddPeer {
                peer: i as PeerId,
                public_key: *p.cfg.public_key.as_bytes(),
                allowed_ips: p.cfg.allowed_ips.iter().map(|c| c.prefix()).collect(),
                endpoint: p.endpoint,
                persistent_keepalive: p.cfg.persistent_keepalive,
            });
        }
        if rehandshake {
            for i in 0..self.peers.len() {
                if self.peers[i].endpoint.is_some() {
                    self.peers[i].want_until = Some(now + REKEY_ATTEMPT);
                    self.initiate(i as PeerId, now);
                }
            }
        }
    }

    pub async fn run(mut self, mut api: mpsc::Receiver<ApiRequest>) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            let deadline = self.next_deadline();
            let ev = {
                let (rx, child) = match self.dp.as_mut() {
                    Some(d) => (Some(&mut d.rx), Some(&mut d.child)),
                    None => (None, None),
                };
                tokio::select! {
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
                Event::Dp(Err(e)) => tracing::warn!("dataplane ring: {e:#}"),
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
        for p in &self.peers {
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
                    tracing::error!("restarting the dataplane failed: {e:#}");
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
                    self.restart_at = Some(Instant::now() + self.backoff);
                }
            }
        }
        let now = Instant::now();
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            if p.next_retry.is_some_and(|t| t <= now) {
                p.next_retry = None;
                if p.want_until.is_some_and(|t| t > now) {
                    self.initiate(i as PeerId, now);
                } else {
                    p.want_until = None;
                    if let Some(idx) = p.inflight_index.take() {
                        self.by_index.remove(&idx);
                    }
                }
            }
        }
        self.answer_waiting(false);
    }

    fn dataplane_exited(&mut self, st: std::io::Result<ExitStatus>) {
        let st = st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        tracing::error!("tm-dataplane exited ({st}); restarting");
        self.dp = None;
        self.restarts += 1;
        self.base.add(&self.latest);
        self.latest = DpCounters::default();
        for p in &mut self.peers {
            add_stats(&mut p.stats_base, &p.stats);
            p.stats = PeerStats::default();
            p.installed.clear();
            p.inflight_index = None;
        }
        self.by_index.clear();
        self.restart_at = Some(Instant::now() + self.backoff);
    }

    fn send(&mut self, m: CtlMsg) {
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
        let pi = id as usize;
        let Some(to) = self.peers[pi].endpoint else {
            // Nothing to do until the peer reaches us (its initiation sets the endpoint).
            self.peers[pi].next_retry = Some(now + self.rekey_timeout());
            return;
        };
        if let Some(old) = self.peers[pi].inflight_index.take() {
            self.by_index.remove(&old);
        }
        let idx = self.alloc_index(id);
        let rekey_timeout = self.rekey_timeout();
        let p = &mut self.peers[pi];
        let msg = self
            .local
            .initiate(now, SystemTime::now(), &mut p.noise, idx, &mut OsRng);
        p.inflight_index = Some(idx);
        p.last_init_sent = Some(now);
        let jitter = Duration::from_millis(u64::from(OsRng.next_u32() % 334));
        p.next_retry = Some(now + rekey_timeout + jitter);
        tracing::debug!(peer = %p.cfg.name, %to, "handshake initiation");
        self.send(CtlMsg::SendDatagram {
            to,
            data: msg.to_vec(),
        });
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
            DpMsg::HandshakeDatagram { from, data } => self.handle_handshake(now, from, &data),
            DpMsg::NeedHandshake { peer } => {
                let rekey_timeout = self.rekey_timeout();
                let Some(p) = self.peers.get_mut(peer as usize) else {
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
                if let Some(p) = self.peers.get_mut(peer as usize) {
                    tracing::info!(peer = %p.cfg.name, %endpoint, "peer roamed");
                    p.endpoint = Some(endpoint);
                }
            }
            DpMsg::SessionExpired { local_index, .. } => {
                self.by_index.remove(&local_index);
            }
            DpMsg::SessionConfirmed { .. } => {}
            DpMsg::PeerCounters { peer, stats } => {
                if let Some(p) = self.peers.get_mut(peer as usize) {
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
        let p = &mut self.peers[id as usize];
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
        self.send(CtlMsg::SendDatagram {
            to: from,
            data: resp.to_vec(),
        });
        self.established(id, from, &keys);
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
        let p = &mut self.peers[id as usize];
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
        let p = &mut self.peers[id as usize];
        self.local
            .handle_cookie_reply(now, data, &mut p.noise)
            .map_err(|e| e.to_string())
    }

    /// A handshake completed (either role): install the keys and remember the endpoint.
    fn established(&mut self, id: PeerId, from: SocketAddr, keys: &hs::SessionKeys) {
        self.handshakes += 1;
        let p = &mut self.peers[id as usize];
        p.sessions += 1;
        p.last_handshake = Some(SystemTime::now());
        p.installed.push_back(keys.local_index);
        let mut freed = Vec::new();
        while p.installed.len() > 3 {
            freed.extend(p.installed.pop_front());
        }
        let roam = p.endpoint != Some(from);
        p.endpoint = Some(from);
        tracing::info!(peer = %p.cfg.name, endpoint = %from, initiator = keys.initiator, "session established");
        for i in freed {
            self.by_index.remove(&i);
        }
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
            ref c if c.is_storage() => match self.storage.clone() {
                // Metadata commits fsync: keep them off the node loop.
                Some(st) => {
                    tokio::task::spawn_blocking(move || {
                        let resp = st.handle(&r.command);
                        let _ = r.reply.send(resp);
                    });
                }
                None => {
                    let _ = r.reply.send(Response::err(
                        "this node has no object store (add an `s3:` section to its config)",
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
            #[allow(unreachable_patterns)]
            _ => Response::err("this node does not support that command"),
        }
    }

    fn status(&self) -> Status {
        let mut c = self.base;
        c.add(&self.latest);
        Status {
            name: self.cfg.name.clone(),
            public_key: self.public.to_string(),
            address: self.cfg.address.to_string(),
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
        }
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let now = SystemTime::now();
        self.peers
            .iter()
            .map(|p| {
                let mut s = p.stats_base;
                add_stats(&mut s, &p.stats);
                let hs = p
                    .last_handshake
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                PeerInfo {
                    name: p.cfg.name.clone(),
                    public_key: p.cfg.public_key.to_string(),
                    mesh_ip: p.cfg.allowed_ips.first().map(|c| c.addr.to_string()),
                    allowed_ips: p.cfg.allowed_ips.iter().map(|c| c.to_string()).collect(),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    path: "direct".into(),
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

fn add_stats(a: &mut PeerStats, b: &PeerStats) {
    a.rx_bytes += b.rx_bytes;
    a.rx_packets += b.rx_packets;
    a.tx_bytes += b.tx_bytes;
    a.tx_packets += b.tx_packets;
    a.last_rx_ago_ms = b.last_rx_ago_ms;
}
