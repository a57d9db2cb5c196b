//! Mesh membership: the coordinator role (tm-coord server embedded in this node) and the
//! member role (a node that joined with a token), the netmap feed both turn into peers, the
//! persisted join state, and the coordinator's state store in the object store.
//!
//! What it never does: decide about tunnels. It produces [`wire::Netmap`]s on a channel; the
//! node loop (`node.rs`) diffs them against its peers.

use crate::config::{Cidr, NodeConfig};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tm_coord::{wire, Coordinator, JoinClient, JoinToken, NodeIdentity, StateStore};
use tm_noise::keys::PrivateKey;
use tokio::sync::mpsc;

use crate::failover::{self, Feed, Verdict};
use crate::join_wait::register;

/// File (0600) in `data_dir` that remembers how this node joined.
pub const JOIN_STATE_FILE: &str = "mesh.json";
/// Object key of the coordinator state inside the system bucket.
pub const STATE_OBJECT: &str = "coordinator/state.json";
/// Prefix of the audit-log objects inside the system bucket.
pub const AUDIT_PREFIX: &str = "audit/";
/// Keepalive interval for mesh peers (keeps NAT mappings open).
pub const MESH_KEEPALIVE_SECS: u16 = 25;

/// What a member persists after registering.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinState {
    pub coordinator: String,
    pub token: String,
    pub name: String,
    pub public_key: String,
    pub mesh_ip: Ipv4Addr,
    pub mesh_cidr: String,
    pub identity: NodeIdentity,
    pub s3_access_key: String,
    pub s3_secret: String,
    /// The last netmap seen, so a restart while the coordinator is down keeps the mesh.
    #[serde(default)]
    pub netmap: Option<wire::Netmap>,
    /// Other coordinators given on the command line (`join A:8443,B:8443`), tried when the
    /// one in use fails (besides those the netmap names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_coordinators: Vec<String>,
}

impl JoinState {
    pub fn load(data_dir: &Path) -> Result<Option<Self>> {
        let p = data_dir.join(JOIN_STATE_FILE);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("{} is damaged (delete it to join again)", p.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let p = data_dir.join(JOIN_STATE_FILE);
        let bytes = serde_json::to_vec_pretty(self).expect("join state serializes");
        tm_coord::FileStore::new(p.clone())
            .save(&bytes)
            .with_context(|| format!("writing {}", p.display()))
    }

    pub fn remove(data_dir: &Path) {
        let _ = std::fs::remove_file(data_dir.join(JOIN_STATE_FILE));
    }
}

/// A member's link to the mesh's coordinators: the client of the one it talks to now, and the
/// addresses of the others (from the command line and from netmaps) it moves to when that one
/// fails (the decisions are [`failover::Coordinators`]). Every user of the coordinator API
/// asks [`CoordLink::current`] at each use.
#[derive(Clone)]
pub struct CoordLink {
    cur: Arc<std::sync::Mutex<Arc<JoinClient>>>,
    coords: Arc<std::sync::Mutex<failover::Coordinators>>,
}

impl CoordLink {
    pub fn new(client: JoinClient, more: &[String]) -> CoordLink {
        let coords = failover::Coordinators::new(client.addr(), more);
        CoordLink {
            cur: Arc::new(std::sync::Mutex::new(Arc::new(client))),
            coords: Arc::new(std::sync::Mutex::new(coords)),
        }
    }

    fn coords(&self) -> std::sync::MutexGuard<'_, failover::Coordinators> {
        self.coords.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client of the coordinator in use.
    pub fn current(&self) -> Arc<JoinClient> {
        self.cur.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Its address.
    pub fn addr(&self) -> String {
        self.current().addr().to_owned()
    }

    /// Every address known, in the order they are tried.
    pub fn known(&self) -> Vec<String> {
        self.coords().known()
    }

    /// Learns the coordinators a netmap names ([`failover::Coordinators::learn`]).
    pub fn learn(&self, nm: &wire::Netmap) {
        self.coords().learn(nm);
    }

    /// Moves to the next known address of another coordinator than the one that failed;
    /// returns it, or `None` if there is no other.
    pub fn fail_over(&self) -> Option<String> {
        let mut coords = self.coords();
        let next = coords.fail_over()?;
        let mut cur = self.cur.lock().unwrap_or_else(|p| p.into_inner());
        *cur = Arc::new(cur.for_addr(next.clone()));
        Some(next)
    }
}

/// This node's role in a mesh.
pub enum Role {
    Coordinator(Coordinator),
    Member {
        client: CoordLink,
        /// The IP the coordinator API was reached at (a good WireGuard endpoint guess).
        host_ip: Option<IpAddr>,
    },
}

/// A running mesh membership, handed to the node loop.
pub struct Mesh {
    pub role: Role,
    pub cidr: Cidr,
    pub netmaps: mpsc::Receiver<wire::Netmap>,
    pub reachable: Arc<AtomicBool>,
    /// For members: the saved join state (netmap updates are written back).
    pub saved: Option<JoinState>,
}

impl Mesh {
    pub fn is_coordinator(&self) -> bool {
        matches!(self.role, Role::Coordinator(_))
    }
}

/// The coordinator's state snapshot as an object in `_tunnelmesh` (falls back to the file a
/// storage-less coordinator used before, so enabling storage keeps the mesh).
pub struct ObjectStateStore {
    pub store: tm_storage::Store,
    pub legacy: PathBuf,
}

impl StateStore for ObjectStateStore {
    fn load(&self) -> Result<Option<Vec<u8>>, tm_coord::Error> {
        let e = |m: String| tm_coord::Error::State(m);
        match self
            .store
            .open_object(tm_storage::SYSTEM_BUCKET, STATE_OBJECT)
        {
            Ok(r) => {
                let mut buf = Vec::with_capacity(r.size() as usize);
                std::io::Read::read_to_end(&mut r.reader(), &mut buf)
                    .map_err(|x| e(format!("reading {STATE_OBJECT}: {x}")))?;
                Ok(Some(buf))
            }
            Err(tm_storage::StorageError::NoSuchKey) => {
                tm_coord::FileStore::new(self.legacy.clone()).load()
            }
            Err(x) => Err(e(format!("reading {STATE_OBJECT}: {x}"))),
        }
    }

    fn save(&self, bytes: &[u8]) -> Result<(), tm_coord::Error> {
        let e = |m: String| tm_coord::Error::State(m);
        let meta = tm_storage::ObjectMeta {
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        let mut w = self
            .store
            .begin_put(tm_storage::SYSTEM_BUCKET, STATE_OBJECT, meta)
            .map_err(|x| e(format!("writing {STATE_OBJECT}: {x}")))?;
        w.write_all(bytes)
            .map_err(|x| e(format!("writing {STATE_OBJECT}: {x}")))?;
        // Acknowledged only once chunks are fsynced and the metadata committed.
        w.commit()
            .map_err(|x| e(format!("writing {STATE_OBJECT}: {x}")))?;
        Ok(())
    }

    /// One object per entry, `_tunnelmesh/audit/<nanoseconds>-<random>.json` (keys sort by
    /// time; nothing is ever rewritten).
    fn append_audit(&self, entry: &[u8]) -> Result<(), tm_coord::Error> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut r = [0u8; 4];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut r);
        let key = format!(
            "{AUDIT_PREFIX}{nanos:020}-{:08x}.json",
            u32::from_le_bytes(r)
        );
        let meta = tm_storage::ObjectMeta {
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        let e = |x: tm_storage::StorageError| tm_coord::Error::State(format!("writing {key}: {x}"));
        let mut w = self
            .store
            .begin_put(tm_storage::SYSTEM_BUCKET, &key, meta)
            .map_err(e)?;
        w.write_all(entry).map_err(e)?;
        w.commit().map_err(e)?;
        Ok(())
    }

    fn load_audit(&self) -> Result<Vec<Vec<u8>>, tm_coord::Error> {
        let e = |x: tm_storage::StorageError| {
            tm_coord::Error::State(format!("reading the audit log: {x}"))
        };
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_objects(
                    tm_storage::SYSTEM_BUCKET,
                    AUDIT_PREFIX,
                    after.as_deref(),
                    1000,
                )
                .map_err(e)?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for o in &page {
                let r = self
                    .store
                    .open_object(tm_storage::SYSTEM_BUCKET, &o.key)
                    .map_err(e)?;
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut r.reader(), &mut buf)
                    .map_err(|x| tm_coord::Error::State(format!("reading {}: {x}", o.key)))?;
                out.push(buf);
            }
            if page.len() < 1000 {
                break;
            }
        }
        Ok(out)
    }
}

/// The ports this coordinator node serves to the mesh, from its configuration (what
/// `Node::start` binds): the API (relay included) and mesh DNS for every member, S3 for
/// holders of an S3 grant, NFS, MOUNT (the same port) and the portmapper for holders of an NFS
/// grant. The packet filter opens them by those capabilities.
pub fn service_ports(cfg: &NodeConfig) -> Vec<tm_policy::ServicePort> {
    use tm_policy::{ServiceNeed, ServicePort};
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    let mut v = Vec::new();
    let mut add = |name: &str, protos: &[u8], port: u16, needs: ServiceNeed| {
        for proto in protos {
            v.push(ServicePort {
                name: name.into(),
                proto: *proto,
                port,
                needs,
            });
        }
    };
    if let Some(c) = &cfg.coordinator {
        add("api", &[TCP], c.listen.port(), ServiceNeed::Member);
    }
    if let Some(d) = &cfg.dns {
        // Mesh DNS answers on <mesh IP>:53, and on dns.listen when that is not loopback.
        add("dns", &[UDP, TCP], 53, ServiceNeed::Member);
        if !d.listen.ip().is_loopback() && d.listen.port() != 53 {
            add("dns", &[UDP, TCP], d.listen.port(), ServiceNeed::Member);
        }
    }
    if let Some(s) = &cfg.s3 {
        add(
            "s3",
            &[TCP],
            s.listen.map_or(8080, |l| l.port()),
            ServiceNeed::S3,
        );
        if let Some(n) = &cfg.nfs {
            // MOUNT is served on the NFS port (the portmapper says so).
            add(
                "nfs",
                &[TCP],
                n.listen.map_or(2049, |l| l.port()),
                ServiceNeed::Nfs,
            );
            add(
                "portmap",
                &[UDP, TCP],
                tm_nfs::portmap::PMAP_PORT,
                ServiceNeed::Nfs,
            );
        }
    }
    v.sort();
    v.dedup();
    v
}

/// Opens the coordinator: its CA, token and state (in the object store when there is one).
pub fn open_coordinator(
    cfg: &NodeConfig,
    key: &PrivateKey,
    store: Option<&tm_storage::Store>,
    seed: Option<Vec<tm_coord::tm_cluster::Record>>,
) -> Result<Coordinator> {
    let co = cfg
        .coordinator
        .as_ref()
        .expect("open_coordinator needs coordinator settings");
    let mut cc = tm_coord::CoordinatorConfig::new(cfg.name.clone());
    cc.mesh_cidr = tm_coord::MeshCidr::parse(&cfg.mesh_cidr).context("mesh_cidr")?;
    cc.tls_names = co.tls_names.clone();
    cc.endpoints = if co.endpoints.is_empty() {
        local_ipv4s(Some(&cc.mesh_cidr))
            .into_iter()
            .map(|ip| SocketAddr::new(IpAddr::V4(ip), cfg.listen_port))
            .take(8)
            .collect()
    } else {
        co.endpoints.clone()
    };
    if let Some(d) = &cfg.dns {
        cc.dns_domain = d.domain.clone();
        cc.aliases = d.aliases.clone();
    }
    // Other coordinators reach this one's API over the mesh, at its mesh address.
    cc.api_addr = Some(format!(":{}", co.listen.port()));
    cc.seed_records = seed.unwrap_or_default();
    cc.service_ports = service_ports(cfg);
    let legacy = cfg.data_dir.join("coordinator").join("state.json");
    let st: Arc<dyn StateStore> = match store {
        Some(s) => Arc::new(ObjectStateStore {
            store: s.clone(),
            legacy,
        }),
        None => Arc::new(tm_coord::FileStore::new(legacy)),
    };
    Coordinator::open(&cfg.data_dir, cc, key.clone(), st).context("coordinator")
}

/// A coordinator started with `join HOST:PORT --token T`: registers with that coordinator as
/// another coordinator of its mesh (first start only) and returns the records to start from.
/// `None`: not joining (the first coordinator, or a restart of a joined one).
pub async fn join_as_coordinator(
    cfg: &NodeConfig,
    key: &PrivateKey,
    addr: Option<&str>,
    token: Option<&str>,
) -> Result<Option<Vec<tm_coord::tm_cluster::Record>>> {
    let Some(addr) = addr.filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let co = cfg.coordinator.as_ref().expect("coordinator settings");
    if cfg.data_dir.join("coordinator").join("ca.crt").exists() {
        tracing::info!(
            "{} is already a coordinator's data_dir: starting it (not joining {addr} again)",
            cfg.data_dir.display()
        );
        return Ok(None);
    }
    let Some(token) = token else {
        bail!("--token: required to join {addr} as a coordinator (make one there with `tunnelmesh token create --coordinator`)");
    };
    let tok = JoinToken::parse(token).context("--token")?;
    let mut c = JoinClient::new(addr.to_string(), tok).context("join")?;
    c.join_as_coordinator(Some(format!(":{}", co.listen.port())));
    let endpoints: Vec<SocketAddr> = local_ip_towards(addr)
        .map(|ip| SocketAddr::new(ip, cfg.listen_port))
        .into_iter()
        .collect();
    let reg = register(&mut c, addr, key, &cfg.name, &endpoints)
        .await
        .with_context(|| format!("joining {addr} as a coordinator"))?;
    if tm_coord::MeshCidr::parse(&cfg.mesh_cidr).ok() != Some(reg.mesh_cidr) {
        bail!(
            "mesh_cidr: this mesh uses {}; set `mesh_cidr: {}` in the config",
            reg.mesh_cidr,
            reg.mesh_cidr
        );
    }
    let seed = reg.cluster.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{addr} admitted this node but sent no cluster state (is it an older release?)"
        )
    })?;
    let records =
        tm_coord::install_cluster_seed(&cfg.data_dir, seed, c.identity().expect("registered"))?;
    println!(
        "joined {addr} as coordinator {} ({})",
        cfg.name, reg.mesh_ip
    );
    Ok(Some(records))
}

/// Feeds the coordinator's own netmap (every version) to the node loop.
pub fn coordinator_feed(coord: Coordinator) -> mpsc::Receiver<wire::Netmap> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut w = coord.subscribe();
        loop {
            if tx
                .send(coord.netmap_for(&coord.public_key()))
                .await
                .is_err()
            {
                return;
            }
            if w.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Registers with a coordinator (or reuses the saved identity) and returns the join state.
pub async fn join(
    cfg: &NodeConfig,
    key: &PrivateKey,
    addr: Option<&str>,
    more: &[String],
    token: Option<&str>,
) -> Result<(JoinState, JoinClient)> {
    let saved = JoinState::load(&cfg.data_dir)?;
    let me = key.public_key().to_string();
    if let Some(s) = saved {
        let same_coord = addr.is_none_or(|a| a == s.coordinator);
        if same_coord && s.public_key == me && s.name == cfg.name {
            let tok = JoinToken::parse(&s.token).context("saved join token")?;
            let c = JoinClient::with_identity(s.coordinator.clone(), tok, s.identity.clone())
                .context("saved identity")?;
            return Ok((s, c));
        }
        if addr.is_none() {
            bail!(
                "{} belongs to another key or name: give HOST:PORT --token to join again",
                cfg.data_dir.join(JOIN_STATE_FILE).display()
            );
        }
    }
    let Some(addr) = addr else {
        bail!("this node has not joined a mesh yet: run `tunnelmesh join HOST:PORT --token TOKEN`");
    };
    let Some(token) = token else {
        bail!("--token: required to join {addr} (print it on the coordinator with `tmctl token`)");
    };
    let tok = JoinToken::parse(token).context("--token")?;
    let mut c = JoinClient::new(addr.to_string(), tok).context("join")?;
    let endpoints: Vec<SocketAddr> = local_ip_towards(addr)
        .map(|ip| SocketAddr::new(ip, cfg.listen_port))
        .into_iter()
        .collect();
    let reg = register(&mut c, addr, key, &cfg.name, &endpoints)
        .await
        .with_context(|| format!("joining {addr}"))?;
    let state = JoinState {
        coordinator: addr.to_string(),
        token: token.trim().to_string(),
        name: cfg.name.clone(),
        public_key: me,
        mesh_ip: reg.mesh_ip,
        mesh_cidr: reg.mesh_cidr.to_string(),
        identity: c.identity().expect("registered").clone(),
        s3_access_key: reg.s3_access_key.clone(),
        s3_secret: reg.s3_secret.clone(),
        netmap: Some(reg.netmap.clone()),
        more_coordinators: more.to_vec(),
    };
    state.save(&cfg.data_dir)?;
    Ok((state, c))
}

/// Long-polls a coordinator for netmaps, forever. When it fails, moves to the next known
/// coordinator at once (backing off only after trying them all); a netmap that has seen less
/// than the last one applied (a lagging coordinator) is not applied but asked again, so the
/// member's view never goes back.
pub fn member_feed(
    link: CoordLink,
    first: Option<wire::Netmap>,
    reachable: Arc<AtomicBool>,
) -> mpsc::Receiver<wire::Netmap> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut feed = Feed::default();
        // The last full netmap received: the base of the next delta (`netmap_after`).
        let mut last: Option<wire::Netmap> = first.clone();
        if let Some(nm) = first {
            feed.start(&nm);
            link.learn(&nm);
            if tx.send(nm).await.is_err() {
                return;
            }
        }
        loop {
            let client = link.current();
            let r = client
                .netmap_held(feed.since(), feed.seen(), &mut last)
                .await;
            match r.cloned() {
                Ok(nm) => {
                    if !reachable.swap(true, Ordering::Relaxed) {
                        tracing::info!(coordinator = %client.addr(), "coordinator reachable again");
                    }
                    match feed.on_netmap(Instant::now(), &nm) {
                        Verdict::Behind(at) => {
                            tracing::debug!(coordinator = %client.addr(), "netmap behind the last one applied; asking again");
                            tokio::time::sleep_until(at.into()).await;
                            continue;
                        }
                        Verdict::Unchanged => {}
                        Verdict::Apply => {
                            link.learn(&nm);
                            if tx.send(nm).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Err(e) => {
                    // The next coordinator's tokens are its own: start from a full netmap.
                    last = None;
                    let next = link.fail_over();
                    if e.is_lagging() {
                        // It answers, but has not caught up with what this node applied.
                        tracing::info!(coordinator = %client.addr(), next = ?next, "coordinator behind this node's netmap; trying another");
                    } else if reachable.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            "coordinator {} unreachable: {e}; keeping the current mesh{}",
                            client.addr(),
                            next.as_deref()
                                .map(|n| format!(", trying {n}"))
                                .unwrap_or_default()
                        );
                    } else {
                        tracing::debug!("coordinator {} unreachable: {e}", client.addr());
                    }
                    let at = feed.on_error(Instant::now(), next.is_some(), link.known().len());
                    tokio::time::sleep_until(at.into()).await;
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// The local IPv4 addresses (from `/proc/net/fib_trie`), without loopback and the mesh range.
pub fn local_ipv4s(exclude: Option<&tm_coord::MeshCidr>) -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut out = parse_fib_trie(&text);
    out.retain(|ip| !ip.is_loopback() && !ip.is_unspecified());
    if let Some(c) = exclude {
        out.retain(|ip| !c.contains(*ip));
    }
    out
}

fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if let Ok(ip) = t.parse::<Ipv4Addr>() {
            last = Some(ip);
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(ip) = last {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// The source address this host uses towards `addr` (`HOST:PORT`), without sending anything.
pub fn local_ip_towards(addr: &str) -> Option<IpAddr> {
    let to = addr.to_socket_addrs().ok()?.next()?;
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(to).ok()?;
    Some(s.local_addr().ok()?.ip())
}

/// The IP a `HOST:PORT` resolves to.
pub fn resolve_host(addr: &str) -> Option<IpAddr> {
    Some(addr.to_socket_addrs().ok()?.next()?.ip())
}

/// The DNS zone of a netmap.
pub fn zone_of(nm: &wire::Netmap) -> tm_dns::Zone {
    let mut z = tm_dns::Zone::new(nm.dns.domain.clone());
    for p in &nm.peers {
        z = z.with_peer(p.name.clone(), [IpAddr::V4(p.mesh_ip)]);
    }
    for (a, t) in &nm.dns.aliases {
        z = z.with_alias(a.clone(), t.clone());
    }
    z.with_coordinators(
        nm.peers
            .iter()
            .filter(|p| p.is_coordinator && !p.unreachable)
            .map(|p| IpAddr::V4(p.mesh_ip)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_service_ports_follow_the_configuration() {
        let cfg = NodeConfig::parse(
            "name: hub\ndata_dir: /d\ncoordinator: {enabled: true, listen: \":9443\"}\n\
             s3: {listen: \"100.64.0.1:9000\"}\ndns: {listen: \"0.0.0.0:5353\"}\n",
        )
        .unwrap();
        let got: Vec<(String, u8, u16, tm_policy::ServiceNeed)> = service_ports(&cfg)
            .into_iter()
            .map(|p| (p.name, p.proto, p.port, p.needs))
            .collect();
        use tm_policy::ServiceNeed::*;
        let want = [
            ("api", 6, 9443, Member),
            ("dns", 6, 53, Member),
            ("dns", 6, 5353, Member),
            ("dns", 17, 53, Member),
            ("dns", 17, 5353, Member),
            ("nfs", 6, 2049, Nfs),
            ("portmap", 6, 111, Nfs),
            ("portmap", 17, 111, Nfs),
            ("s3", 6, 9000, S3),
        ];
        for w in want {
            assert!(
                got.contains(&(w.0.to_string(), w.1, w.2, w.3)),
                "{w:?} missing from {got:?}"
            );
        }
        assert_eq!(got.len(), want.len(), "{got:?}");
        // No coordinator, no store: nothing is served.
        let plain = NodeConfig::parse("name: a\ndata_dir: /d\ndns: {enabled: false}\n").unwrap();
        assert!(
            service_ports(&plain).iter().all(|p| p.name != "s3"),
            "{:?}",
            service_ports(&plain)
        );
    }

    #[test]
    fn fib_trie_local_addresses() {
        let t = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     \
                 +-- 192.0.2.0/24 2 0 2\n        |-- 192.0.2.0\n           /24 link UNICAST\n        \
                 |-- 192.0.2.1\n           /32 host LOCAL\n     |-- 127.0.0.1\n        /32 host LOCAL\n\
                 Local:\n        |-- 192.0.2.1\n           /32 host LOCAL\n        |-- 100.64.0.1\n           /32 host LOCAL\n";
        let ips = parse_fib_trie(t);
        assert_eq!(
            ips,
            vec![
                "192.0.2.1".parse::<Ipv4Addr>().unwrap(),
                "127.0.0.1".parse().unwrap(),
                "100.64.0.1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn zone_has_peers_coordinators_and_aliases() {
        let nm: wire::Netmap = serde_json::from_value(serde_json::json!({
            "version": 3,
            "peers": [
                {"name": "alpha", "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                 "mesh_ip": "100.64.0.1", "endpoints": [], "is_coordinator": true},
                {"name": "beta", "public_key": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                 "mesh_ip": "100.64.0.2", "endpoints": [], "is_coordinator": false},
                {"name": "gone", "public_key": "AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                 "mesh_ip": "100.64.0.3", "endpoints": [], "is_coordinator": true,
                 "unreachable": true}
            ],
            "dns": {"domain": "mesh", "aliases": {"db": "beta"}}
        }))
        .unwrap();
        let z = zone_of(&nm);
        // An unreachable coordinator keeps its own name but is not in `coordinator.mesh`.
        assert_eq!(z.records.len(), 3);
        assert_eq!(
            z.coordinators,
            vec!["100.64.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(z.aliases.get("db").map(String::as_str), Some("beta"));
    }

    #[test]
    fn failover_skips_the_failed_coordinators_other_addresses() {
        let nm: wire::Netmap = serde_json::from_value(serde_json::json!({
            "version": 3,
            "peers": [
                {"name": "ca", "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                 "mesh_ip": "100.64.0.1", "endpoints": ["192.0.2.1:51820"], "is_coordinator": true,
                 "api": ":8443"},
                {"name": "cb", "public_key": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                 "mesh_ip": "100.64.0.2", "endpoints": ["192.0.2.2:51820"], "is_coordinator": true,
                 "api": ":8443"},
                {"name": "alpha", "public_key": "AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                 "mesh_ip": "100.64.0.3", "endpoints": ["192.0.2.3:51820"], "is_coordinator": false}
            ],
            "dns": {"domain": "mesh", "aliases": {}}
        }))
        .unwrap();
        let token = JoinToken::new(b"not a real CA", [7u8; 32]);
        let c = JoinClient::new("192.0.2.1:8443", token).unwrap();
        let link = CoordLink::new(c, &[]);
        assert_eq!(link.fail_over(), None, "nothing else known yet");
        link.learn(&nm);
        assert_eq!(
            link.known(),
            [
                "192.0.2.1:8443",
                "100.64.0.1:8443",
                "192.0.2.2:8443",
                "100.64.0.2:8443"
            ]
        );
        // ca failed: its mesh address is skipped, cb is next; then back to ca.
        assert_eq!(link.fail_over().as_deref(), Some("192.0.2.2:8443"));
        assert_eq!(link.addr(), "192.0.2.2:8443");
        assert_eq!(link.fail_over().as_deref(), Some("192.0.2.1:8443"));
    }
}
