//! The coordinator: persisted membership state, the netmap watch, and the HTTPS server
//! around them (registration: `register.rs`).
//!
//! The `handle_*` methods are the protocol core: they take the time and an RNG and touch no
//! network. [`Coordinator::serve`] is the I/O driver (TLS accept, HTTP parse, dispatch).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rand_core::{CryptoRng, RngCore};
use rustls::pki_types::pem::PemObject as _;
use rustls::ServerConfig;
use serde::{Deserialize, Serialize};
use tm_noise::{PrivateKey, PublicKey};
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::challenge::Challenges;
use crate::index::Index;
use crate::limit::SourceLimiter;
use crate::relay::RelayHub;
use crate::wire::{b64_key, hex, Dns, Netmap, NetmapPeer};
use crate::{Error, JoinToken, MeshCa, MeshCidr, StateStore};

/// Most endpoints a node may declare.
pub const MAX_ENDPOINTS: usize = 16;
/// Names nobody may register: they would impersonate a role in DNS or read like a built-in
/// identity (principals are typed, so such a name would have no powers anyway).
pub const RESERVED_NAMES: &[&str] = &[
    "admin",
    "anonymous",
    "coordinator",
    "local",
    "localhost",
    "mesh",
    "root",
    "system",
    "token",
    "tunnelmesh",
];
/// Format 2 added tokens and node tags; format 1 states are migrated at open.
pub(crate) const STATE_FORMAT: u32 = 2;

/// Coordinator settings (the daemon fills them from its YAML).
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The coordinator node's own name.
    pub name: String,
    /// The mesh prefix (default 100.64.0.0/10).
    pub mesh_cidr: MeshCidr,
    /// Host names / IP addresses clients may dial (server certificate SANs, besides
    /// `coordinator.mesh`).
    pub tls_names: Vec<String>,
    /// The coordinator node's own WireGuard endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// DNS domain (`mesh`).
    pub dns_domain: String,
    /// DNS aliases: alias -> node name.
    pub aliases: BTreeMap<String, String>,
    /// Longest wait of `GET /v1/netmap?since=` (25 s).
    pub long_poll: Duration,
    /// Lifetime of a challenge nonce (60 s).
    pub challenge_ttl: Duration,
    /// Most nonces remembered as used (registrations within one challenge lifetime) and, as
    /// many again, nonces of refused attempts. Issuing a challenge remembers nothing.
    pub max_challenges: usize,
    /// Time allowed for the TLS handshake and reading a whole request (10 s): a client that
    /// trickles its request is dropped after it.
    pub request_timeout: Duration,
    /// Challenges per second one source (IPv4 address or IPv6 /64) may ask for (2), after a
    /// burst of `challenge_burst` (20); more are answered 429.
    pub challenge_rate: f64,
    /// See `challenge_rate`.
    pub challenge_burst: u32,
    /// Most sources whose challenge rate is tracked (4096); beyond, new sources share one
    /// bucket.
    pub rate_sources: usize,
    /// Keepalive interval on idle relay connections (20 s; must stay well below the 75 s
    /// idle timeout).
    pub relay_keepalive: Duration,
    /// Bound of each relay connection's outgoing queue, in frames (256).
    pub relay_queue: usize,
    /// The API address other coordinators dial to replicate with this one (`HOST:PORT`, or
    /// `:PORT` for this coordinator's mesh address); `None`: the mesh address, port 8443.
    pub api_addr: Option<String>,
    /// Interval of anti-entropy rounds with the other coordinators (1 s).
    pub cluster_sync: Duration,
    /// Bound on how far ahead of this coordinator's clock another's stamps may be (60 s).
    pub max_clock_skew: Duration,
    /// Records of an existing mesh to start from when the store is empty (a coordinator that
    /// joins an existing cluster).
    pub seed_records: Vec<tm_cluster::Record>,
    /// The ports this coordinator node serves to the mesh (API, DNS, S3, NFS): its packet
    /// filter opens them by capability (`tm_policy::ServiceNeed`), not by hand rules.
    pub service_ports: Vec<tm_policy::ServicePort>,
}

impl CoordinatorConfig {
    /// Defaults for a coordinator named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            mesh_cidr: MeshCidr::parse(crate::DEFAULT_MESH_CIDR).expect("default CIDR is valid"),
            tls_names: Vec::new(),
            endpoints: Vec::new(),
            dns_domain: "mesh".into(),
            aliases: BTreeMap::new(),
            long_poll: Duration::from_secs(25),
            challenge_ttl: Duration::from_secs(60),
            max_challenges: 4096,
            request_timeout: Duration::from_secs(10),
            challenge_rate: 2.0,
            challenge_burst: 20,
            rate_sources: 4096,
            relay_keepalive: crate::relay::RELAY_KEEPALIVE,
            relay_queue: crate::relay::RELAY_QUEUE,
            api_addr: None,
            cluster_sync: Duration::from_secs(1),
            max_clock_skew: Duration::from_millis(tm_cluster::MAX_SKEW_MS),
            seed_records: Vec::new(),
            service_ports: Vec::new(),
        }
    }
}

/// One node as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    pub(crate) name: String,
    #[serde(with = "b64_key")]
    pub(crate) public_key: PublicKey,
    pub(crate) mesh_ip: Ipv4Addr,
    pub(crate) endpoints: Vec<SocketAddr>,
    pub(crate) is_coordinator: bool,
    /// SHA-256 (hex) of the node's current client certificate: the only mTLS identity map.
    pub(crate) cert_sha256: Option<String>,
    pub(crate) s3_access_key: String,
    pub(crate) s3_secret: String,
    /// The address the coordinator last saw authenticated WireGuard traffic from (NAT
    /// mapping); published first in `endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) observed: Option<SocketAddr>,
    /// Tags (`tag:...`), set by admins or by the token the node joined with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tags: Vec<String>,
    /// For coordinators: the API address other coordinators dial (`HOST:PORT`); `None`: the
    /// mesh address, port 8443.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) api: Option<String>,
    /// Services the node says it runs for other nodes (`docker`; see `node_services.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) services: Vec<String>,
}

impl NodeRecord {
    /// The published endpoints: the observed address first, then the declared ones
    /// without it.
    fn published_endpoints(&self) -> Vec<SocketAddr> {
        self.observed
            .iter()
            .copied()
            .chain(
                self.endpoints
                    .iter()
                    .copied()
                    .filter(|e| Some(*e) != self.observed),
            )
            .collect()
    }
}

/// The whole persisted snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PersistedState {
    pub(crate) format: u32,
    pub(crate) version: u64,
    pub(crate) mesh_cidr: MeshCidr,
    /// By name.
    pub(crate) nodes: BTreeMap<String, NodeRecord>,
    /// Join tokens by id (secrets hashed; see [`crate::token::TokenRecord`]).
    #[serde(default)]
    pub(crate) tokens: BTreeMap<String, crate::token::TokenRecord>,
    /// The policy file, once one was set (`policy.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) policy: Option<crate::policy::StoredPolicy>,
    /// Buckets and shares by name (`storage_records.rs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) buckets: BTreeMap<String, crate::storage_records::BucketSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) shares: BTreeMap<String, crate::storage_records::ShareSpec>,
}

impl PersistedState {
    pub(crate) fn by_key(&self, key: &PublicKey) -> Option<&NodeRecord> {
        self.nodes.values().find(|n| &n.public_key == key)
    }

    pub(crate) fn ip_taken(&self, ip: Ipv4Addr) -> bool {
        self.nodes.values().any(|n| n.mesh_ip == ip)
    }
}

pub(crate) fn index_of(s: &PersistedState) -> Index {
    Index::build(
        s.nodes
            .values()
            .map(|n| (n.name.as_str(), n.public_key, n.cert_sha256.as_deref())),
    )
}

pub(crate) struct Inner {
    pub(crate) state: PersistedState,
    /// The default token's secret (also in `coordinator/join_secret`; the state has its hash).
    pub(crate) default_secret: Zeroizing<[u8; 32]>,
}

pub(crate) struct Shared {
    pub(crate) cfg: CoordinatorConfig,
    pub(crate) node_static: PrivateKey,
    pub(crate) ca: MeshCa,
    /// `data_dir/coordinator`.
    pub(crate) dir: std::path::PathBuf,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) tls: Arc<ServerConfig>,
    /// The published state: held only to read it or swap in a new one, never across I/O.
    pub(crate) inner: Mutex<Inner>,
    /// Write sequencer: held by one state change from reading the state to publishing it,
    /// across the durable write, so changes are persisted and published in order.
    pub(crate) writer: Mutex<()>,
    /// Lookup maps of the published state (relay and client-certificate hot paths).
    pub(crate) index: RwLock<Index>,
    /// The compiled policy of the published state (`policy.rs`).
    pub(crate) policy: RwLock<Arc<tm_policy::Artifact>>,
    /// This coordinator's replica of the records the state is made of (`replicate.rs`).
    pub(crate) replica: Mutex<tm_cluster::Replica>,
    /// Messages for other coordinators, taken by the cluster driver (`cluster.rs`).
    pub(crate) outbox: crate::cluster::Outbox,
    /// Bumped on every publication of a new state (netmap caches key on it).
    pub(crate) epoch: std::sync::atomic::AtomicU64,
    /// The generations of served netmaps and their deltas (`delta.rs`).
    pub(crate) netmap_cache: Mutex<crate::delta::Feed>,
    /// Netmap long polls waiting for a change now.
    pub(crate) long_polls: std::sync::atomic::AtomicUsize,
    /// The last delivery error per other coordinator (`cluster status`).
    pub(crate) cluster_errors: Mutex<BTreeMap<tm_cluster::Origin, String>>,
    /// The other coordinators this one has not heard from lately (`cluster.rs`): marked
    /// `unreachable` in netmaps, so `coordinator.mesh` names only live ones.
    pub(crate) unreachable: Mutex<crate::cluster::Liveness>,
    /// Runs forwarded admin commands (`policy.rs`).
    pub(crate) admin: RwLock<Option<crate::policy::AdminHandler>>,
    /// Bumped after every publication of `policy` (NFS connections re-ask their grants).
    pub(crate) policy_generation: std::sync::atomic::AtomicU64,
    pub(crate) challenges: Mutex<Challenges>,
    pub(crate) limiter: SourceLimiter,
    pub(crate) version: watch::Sender<u64>,
    /// Bumped whenever the replica may have seen more of other coordinators' writes (polls
    /// held for a member's version vector wait on it, `poll.rs`).
    pub(crate) seen: watch::Sender<u64>,
    /// Bumped after a replication message changed records and the replica holding them is in
    /// place (the netmap version is bumped earlier, before the replica is swapped in).
    pub(crate) merged: watch::Sender<u64>,
    pub(crate) relay: RelayHub,
}

/// A coordinator: cheap to clone (shared state).
#[derive(Clone)]
pub struct Coordinator {
    pub(crate) shared: Arc<Shared>,
}

impl core::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Coordinator")
            .field("name", &self.shared.cfg.name)
            .field("ca", &self.shared.ca)
            .finish_non_exhaustive()
    }
}

/// Checks a node name: a lower-case DNS label that is not reserved.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let bad = |why| Err(Error::BadName(name.to_owned(), why));
    if name.is_empty() || name.len() > 63 {
        return bad("must be 1 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only a-z, 0-9 and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must not start or end with '-'");
    }
    if RESERVED_NAMES.contains(&name) {
        return bad("reserved name (it reads like a built-in identity); choose another name");
    }
    Ok(())
}

/// A coordinator API address: `HOST:PORT` with a DNS name or IP address and a port, or `:PORT`
/// (the coordinator's mesh address).
pub(crate) fn validate_api_addr(a: &str) -> Result<(), Error> {
    let bad = || Error::Malformed(format!("api address {a:?} is not HOST:PORT or :PORT"));
    if let Some(p) = a.strip_prefix(':') {
        return p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .map(drop)
            .ok_or_else(bad);
    }
    if a.len() > 260 {
        return Err(bad());
    }
    if a.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(bad)?;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(bad())
    }
}

pub(crate) fn validate_endpoints(eps: &[SocketAddr]) -> Result<(), Error> {
    if eps.len() > MAX_ENDPOINTS {
        return Err(Error::Malformed(format!(
            "at most {MAX_ENDPOINTS} endpoints are allowed"
        )));
    }
    for e in eps {
        if e.port() == 0 || e.ip().is_unspecified() || e.ip().is_multicast() {
            return Err(Error::Malformed(format!("endpoint {e} is not usable")));
        }
    }
    Ok(())
}

pub(crate) fn s3_credentials<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> (String, String) {
    let mut a = [0u8; 10];
    rng.fill_bytes(&mut a);
    let mut s = [0u8; 30];
    rng.fill_bytes(&mut s);
    (
        format!("TM{}", hex(&a).to_uppercase()),
        URL_SAFE_NO_PAD.encode(s),
    )
}

pub(crate) fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("wire types always serialize")
}

pub(crate) fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Malformed(format!("invalid JSON body: {e}")))
}

/// Reads the join token of the coordinator whose data directory is `data_dir` without
/// opening it (for `tmctl token`). Fails if the coordinator was never started there.
pub fn read_token(data_dir: &Path) -> Result<JoinToken, Error> {
    let dir = data_dir.join("coordinator");
    let pem = std::fs::read(dir.join("ca.crt"))
        .map_err(|e| Error::io(format!("read {}", dir.join("ca.crt").display()), e))?;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem)
        .map_err(|e| Error::Cert(format!("CA certificate PEM: {e}")))?;
    let t = std::fs::read_to_string(dir.join("join_secret"))
        .map_err(|e| Error::io(format!("read {}", dir.join("join_secret").display()), e))?;
    let v = Zeroizing::new(
        STANDARD
            .decode(t.trim())
            .map_err(|_| Error::Config("join_secret is not base64".into()))?,
    );
    let secret: [u8; 32] = v
        .as_slice()
        .try_into()
        .map_err(|_| Error::Config("join_secret must be 32 bytes".into()))?;
    Ok(JoinToken::new(der.as_ref(), secret))
}

impl Coordinator {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared
            .inner
            .lock()
            .expect("coordinator state lock poisoned")
    }

    /// The default join token (`tm1_...`): pins this coordinator's CA and carries its secret.
    pub fn token(&self) -> String {
        self.join_token().format()
    }

    /// The parsed default join token.
    pub fn join_token(&self) -> JoinToken {
        let secret = *self.lock().default_secret;
        JoinToken::new(self.shared.ca.ca_der().as_ref(), secret)
    }

    /// The mesh CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        self.shared.ca.ca_pem()
    }

    /// The coordinator node's name.
    pub fn name(&self) -> &str {
        &self.shared.cfg.name
    }

    /// The coordinator node's static public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.node_static.public_key()
    }

    /// The coordinator node's mesh address.
    pub fn mesh_ip(&self) -> Ipv4Addr {
        let g = self.lock();
        g.state
            .nodes
            .get(&self.shared.cfg.name)
            .expect("the coordinator's own record always exists")
            .mesh_ip
    }

    /// The current netmap, without a policy projection (see [`Coordinator::netmap_for`]).
    pub fn netmap(&self) -> Netmap {
        // What was seen, read before the state (never more than the state shows).
        let vv = self.replica().store().version_vector().clone();
        let g = self.lock();
        let mut nm = self.netmap_of(&g.state);
        nm.vv = Some(vv);
        nm
    }

    /// [`Coordinator::netmap_for`] the registered node `name` (a plain netmap if it is gone).
    pub fn netmap_for_name(&self, name: &str) -> Netmap {
        let key = self.lock().state.nodes.get(name).map(|n| n.public_key);
        match key {
            Some(k) => self.netmap_for(&k),
            None => self.netmap(),
        }
    }

    /// The current netmap as the node with `key` receives it: with its projection of the
    /// compiled policy.
    pub fn netmap_for(&self, key: &PublicKey) -> Netmap {
        let mut nm = self.netmap();
        let art = self.policy();
        let mut p = art.project(&crate::policy::node_key(key));
        if !art.has_policy {
            // The same for every node (see `netmap_json_for_name`).
            p.scope = None;
        }
        nm.policy = Some(p);
        nm
    }

    /// Every node's S3 credentials as `(name, access_key, secret)`: the daemon installs them
    /// in the object store so each peer can use the keys it received at registration.
    pub fn s3_credentials(&self) -> Vec<(String, String, String)> {
        let g = self.lock();
        g.state
            .nodes
            .values()
            .map(|n| (n.name.clone(), n.s3_access_key.clone(), n.s3_secret.clone()))
            .collect()
    }

    /// A receiver of netmap versions (changes on every join, leave and endpoint change).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.version.subscribe()
    }

    pub(crate) fn netmap_of(&self, s: &PersistedState) -> Netmap {
        let down = self
            .shared
            .unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .down
            .clone();
        Netmap {
            version: s.version,
            peers: s
                .nodes
                .values()
                .map(|n| NetmapPeer {
                    name: n.name.clone(),
                    public_key: n.public_key,
                    mesh_ip: n.mesh_ip,
                    endpoints: n.published_endpoints(),
                    is_coordinator: n.is_coordinator,
                    tags: n.tags.clone(),
                    api: n.api.clone().filter(|_| n.is_coordinator),
                    unreachable: n.is_coordinator && down.contains(&n.public_key),
                    services: n.services.clone(),
                })
                .collect(),
            dns: Dns {
                domain: self.shared.cfg.dns_domain.clone(),
                aliases: self.shared.cfg.aliases.clone(),
            },
            vv: None,
            policy_hash: Some(self.policy().hash().to_string()),
            policy: None,
            delta: None,
        }
    }

    pub(crate) fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.shared.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a node with `key` is registered (a map lookup; no state lock).
    pub(crate) fn is_member(&self, key: &PublicKey) -> bool {
        self.index().has_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        validate_name("node-1").expect("valid");
        for bad in ["", "-a", "a-", "A", "a.b", "coordinator", &"x".repeat(64)] {
            assert!(
                matches!(validate_name(bad), Err(Error::BadName(..))),
                "{bad}"
            );
        }
    }
}
