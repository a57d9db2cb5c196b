//! `node.yaml`: parsing and validation. Every error names the field it is about, on one line,
//! and is found before anything is created (no TUN device, no socket, no process).

use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use tm_noise::keys::{self, PublicKey};
use tm_wire::ipc::{Prefix, Timers};

/// A configuration problem: `field: message`.
#[derive(Debug)]
pub struct ConfigError {
    pub field: String,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "{}: {}", self.field, self.msg)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(field: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        msg: one_line(&msg.into()),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    private_key_file: Option<PathBuf>,
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    listen_port: Option<u16>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    mtu: Option<u16>,
    #[serde(default)]
    workers: Option<u32>,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    testing: Option<RawTesting>,
    #[serde(default)]
    s3: Option<RawS3>,
    #[serde(default)]
    coordinator: Option<RawCoordinator>,
    #[serde(default)]
    mesh_cidr: Option<String>,
    #[serde(default)]
    dns: Option<RawDns>,
    #[serde(default)]
    nfs: Option<RawNfs>,
    #[serde(default)]
    docker: Option<RawDocker>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    socket: Option<PathBuf>,
}

/// The engine socket used when `docker.socket` is not set.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The Docker agent (`docker: {enabled, socket}`): on by default when the engine's socket
/// exists.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// The engine's unix socket.
    pub socket: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNfs {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    listen: Option<String>,
}

/// NFSv3 shares (on nodes with an object store).
#[derive(Debug, Clone)]
pub struct NfsSettings {
    /// `None`: `<mesh IP>:2049`.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordinator {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    listen: Option<String>,
    /// Public `HOST:PORT` WireGuard endpoints of this coordinator, if it is behind a
    /// port forward (default: every local address with `listen_port`).
    #[serde(default)]
    endpoints: Vec<String>,
    /// Extra host names / IPs for the TLS certificate (besides `coordinator.mesh`).
    #[serde(default)]
    tls_names: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    aliases: std::collections::BTreeMap<String, String>,
    /// Point the system resolver at the mesh DNS while the node runs (see `sysdns`).
    #[serde(default = "yes")]
    manage_system: bool,
}

/// Coordinator services of this node.
#[derive(Debug, Clone)]
pub struct CoordSettings {
    pub listen: SocketAddr,
    pub endpoints: Vec<SocketAddr>,
    pub tls_names: Vec<String>,
}

/// Mesh DNS served by this node.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    pub listen: SocketAddr,
    pub domain: String,
    pub aliases: std::collections::BTreeMap<String, String>,
    /// `.mesh` for every program: systemd-resolved link DNS or a resolv.conf block.
    pub manage_system: bool,
}

/// Default local DNS address (`dig @127.0.0.53 -p 5353 NAME.mesh`).
pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.53:5353";
/// Default coordinator API port.
pub const DEFAULT_COORDINATOR_PORT: u16 = 8443;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    max_size: Option<String>,
    /// Region in SigV4 credential scopes (default `us-east-1`).
    #[serde(default)]
    region: Option<String>,
    /// Seal every chunk at rest with the node's master key (default false).
    #[serde(default)]
    encrypt_at_rest: bool,
    /// The master key file (32 random bytes, created 0600 if missing; default
    /// `<data_dir>/s3-master.key`, outside `s3.data_dir`).
    #[serde(default)]
    master_key_file: Option<PathBuf>,
    /// Object replication across coordinators (`{factor, mode}`).
    #[serde(default)]
    replication: Option<RawReplication>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    #[serde(default)]
    factor: Option<usize>,
    #[serde(default)]
    mode: Option<String>,
}

/// Object replication across coordinators (`s3.replication`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationSettings {
    /// Owners per object (capped at the number of coordinators; default 2).
    pub factor: usize,
    /// `available` (default) or `consistent`.
    pub mode: tm_storage::replication::Mode,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        ReplicationSettings {
            factor: 2,
            mode: tm_storage::replication::Mode::Available,
        }
    }
}

fn replication_settings(r: Option<RawReplication>) -> Result<ReplicationSettings, ConfigError> {
    let mut out = ReplicationSettings::default();
    let Some(r) = r else { return Ok(out) };
    if let Some(f) = r.factor {
        if !(1..=16).contains(&f) {
            return Err(err(
                "s3.replication.factor",
                format!("{f} is not a replication factor (1 to 16)"),
            ));
        }
        out.factor = f;
    }
    out.mode = match r.mode.as_deref().map(str::trim) {
        None | Some("") | Some("available") => tm_storage::replication::Mode::Available,
        Some("consistent") => tm_storage::replication::Mode::Consistent,
        Some(m) => {
            return Err(err(
                "s3.replication.mode",
                format!("{m:?} is not a mode (available or consistent)"),
            ))
        }
    };
    Ok(out)
}

/// The object store and its S3 endpoint.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `None`: `<mesh IP>:8080`, known once the node has its address.
    pub listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub max_size: Option<u64>,
    /// Region clients must sign for (`s3.region`, default `us-east-1`).
    pub region: String,
    /// Seal every chunk at rest (`s3.encrypt_at_rest`).
    pub encrypt_at_rest: bool,
    /// The master key (SSE-S3 data keys, sealed chunks): `s3.master_key_file`.
    pub master_key_file: PathBuf,
    /// Object replication across coordinators (`s3.replication`).
    pub replication: ReplicationSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    public_key: String,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    allowed_ips: Vec<String>,
    #[serde(default)]
    preshared_key: Option<String>,
    #[serde(default)]
    persistent_keepalive: Option<u16>,
}

/// Test-only overrides (milliseconds). Never needed in production.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawTesting {
    rekey_after_ms: Option<u32>,
    reject_after_ms: Option<u32>,
    rekey_timeout_ms: Option<u32>,
    keepalive_timeout_ms: Option<u32>,
    /// Answer every handshake without a valid mac2 with a cookie reply (exercises the
    /// under-load path).
    #[serde(default)]
    force_cookie: bool,
}

/// An IP network: address and prefix length (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("invalid CIDR '{s}': bad address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("invalid CIDR '{s}': prefix length must be 0-{max}"))?,
            None => max,
        };
        Ok(Self { addr, len })
    }
    /// The network with host bits cleared.
    pub fn network(self) -> Self {
        Self {
            addr: mask(self.addr, self.len),
            len: self.len,
        }
    }
    pub fn contains(self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == mask(self.addr, self.len)
    }
    pub fn overlaps(self, o: Cidr) -> bool {
        self.addr.is_ipv4() == o.addr.is_ipv4() && {
            let l = self.len.min(o.len);
            mask(self.addr, l) == mask(o.addr, l)
        }
    }
    /// True when every address of `o` is inside `self`.
    pub fn covers(self, o: Cidr) -> bool {
        self.len <= o.len && self.contains(o.addr)
    }
    pub fn prefix(self) -> Prefix {
        Prefix {
            addr: self.addr,
            len: self.len,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub name: String,
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Cidr>,
    pub preshared_key: Option<[u8; 32]>,
    pub persistent_keepalive: u16,
}

/// Where the node's static key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    /// `~/.ssh/id_ed25519` if present, else a key generated once in `data_dir`.
    Default,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub key: KeySource,
    pub interface: String,
    pub listen_port: u16,
    /// The node's own address with the mesh prefix length (e.g. 100.64.0.1/10). In a mesh the
    /// coordinator assigns it (set before the dataplane starts).
    pub address: Option<Cidr>,
    pub mtu: u16,
    /// Dataplane worker threads (`workers:`); `None`: `$TM_DP_WORKERS`, else one per core.
    pub workers: Option<u16>,
    pub peers: Vec<PeerConfig>,
    pub timers: Timers,
    pub force_cookie: bool,
    pub s3: Option<S3Settings>,
    /// Coordinator services (`coordinator: {enabled: true}`).
    pub coordinator: Option<CoordSettings>,
    /// The mesh prefix a coordinator allocates from.
    pub mesh_cidr: String,
    /// `None` when `dns: {enabled: false}`.
    pub dns: Option<DnsSettings>,
    /// NFS shares: on by default wherever there is an object store.
    pub nfs: Option<NfsSettings>,
    /// The Docker agent (mesh nodes only).
    pub docker: Option<DockerSettings>,
}

pub const DEFAULT_INTERFACE: &str = "tunnelmesh0";

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read config {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            serde_yaml::from_str(text).map_err(|e| err("", format!("config: {e}")))?;
        let name = match raw.name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => default_name(),
        };
        validate_name("name", &name)?;
        let interface = raw.interface.unwrap_or_else(|| DEFAULT_INTERFACE.into());
        if interface.is_empty()
            || interface.len() > 15
            || !interface
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(err(
                "interface",
                format!(
                    "'{interface}' is not a valid interface name (1-15 of a-z, 0-9, '-', '_', '.')"
                ),
            ));
        }
        let address = match raw.address.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => Some(Cidr::parse(a).map_err(|m| err("address", m))?),
        };
        let mtu = raw.mtu.unwrap_or(1420);
        if !(576..=9000).contains(&mtu) {
            return Err(err("mtu", format!("{mtu} is out of range (576-9000)")));
        }
        let workers = match raw.workers {
            None => None,
            Some(n @ 1..=64) => Some(n as u16),
            Some(n) => {
                return Err(err(
                    "workers",
                    format!("{n} is out of range (1-64 dataplane threads)"),
                ))
            }
        };
        if address.is_some_and(|a| a.addr.is_ipv6()) && mtu < 1280 {
            return Err(err("mtu", "an IPv6 address needs mtu >= 1280"));
        }
        let key = match raw.private_key_file {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    err(
                        "private_key_file",
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                keys::parse_private_key(&text)
                    .map_err(|e| err("private_key_file", format!("{}: {e}", p.display())))?;
                KeySource::File(p)
            }
            None => KeySource::Default,
        };
        let mut peers: Vec<PeerConfig> = Vec::with_capacity(raw.peers.len());
        for (i, p) in raw.peers.into_iter().enumerate() {
            let f = |k: &str| format!("peers[{i}].{k}");
            let name = p.name.trim().to_string();
            validate_name(&f("name"), &name)?;
            if let Some(o) = peers.iter().find(|o| o.name == name) {
                return Err(err(
                    f("name"),
                    format!("'{}' is used by another peer", o.name),
                ));
            }
            let public_key = keys::parse_public_key(&p.public_key)
                .map_err(|e| err(f("public_key"), e.to_string()))?;
            if let Some(o) = peers.iter().find(|o| o.public_key == public_key) {
                return Err(err(
                    f("public_key"),
                    format!("same key as peer '{}'", o.name),
                ));
            }
            let endpoint = match p.endpoint.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(e) => Some(resolve_endpoint(e).map_err(|m| err(f("endpoint"), m))?),
            };
            let mut allowed_ips = Vec::new();
            for (j, a) in p.allowed_ips.iter().enumerate() {
                let c = Cidr::parse(a)
                    .map_err(|m| err(format!("peers[{i}].allowed_ips[{j}]"), m))?
                    .network();
                for o in &peers {
                    if let Some(x) = o.allowed_ips.iter().find(|x| x.overlaps(c)) {
                        return Err(err(
                            format!("peers[{i}].allowed_ips[{j}]"),
                            format!("{c} overlaps {x} of peer '{}'", o.name),
                        ));
                    }
                }
                if allowed_ips.iter().any(|x: &Cidr| x.overlaps(c)) {
                    return Err(err(
                        format!("peers[{i}].allowed_ips[{j}]"),
                        format!("{c} overlaps another entry of this peer"),
                    ));
                }
                allowed_ips.push(c);
            }
            let preshared_key = match &p.preshared_key {
                Some(k) => Some(
                    keys::parse_preshared_key(k)
                        .map_err(|e| err(f("preshared_key"), e.to_string()))?,
                ),
                None => None,
            };
            peers.push(PeerConfig {
                name,
                public_key,
                endpoint,
                allowed_ips,
                preshared_key,
                persistent_keepalive: p.persistent_keepalive.unwrap_or(0),
            });
        }
        let t = raw.testing.unwrap_or_default();
        let d = Timers::default();
        let timers = Timers {
            rekey_after_ms: t.rekey_after_ms.unwrap_or(d.rekey_after_ms),
            reject_after_ms: t.reject_after_ms.unwrap_or(d.reject_after_ms),
            rekey_timeout_ms: t.rekey_timeout_ms.unwrap_or(d.rekey_timeout_ms),
            keepalive_timeout_ms: t.keepalive_timeout_ms.unwrap_or(d.keepalive_timeout_ms),
        };
        if timers.rekey_after_ms >= timers.reject_after_ms
            || timers.rekey_timeout_ms == 0
            || timers.keepalive_timeout_ms == 0
        {
            return Err(err(
                "testing",
                "need 0 < rekey_after_ms < reject_after_ms and non-zero timeouts",
            ));
        }
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(tmctl::DEFAULT_DATA_DIR));
        let coordinator = match raw.coordinator {
            Some(c) if c.enabled => {
                let listen = match c.listen.as_deref().map(str::trim) {
                    None | Some("") => SocketAddr::from(([0, 0, 0, 0], DEFAULT_COORDINATOR_PORT)),
                    Some(l) => parse_listen(l).map_err(|m| err("coordinator.listen", m))?,
                };
                let mut endpoints = Vec::new();
                for (i, e) in c.endpoints.iter().enumerate() {
                    endpoints.push(
                        resolve_endpoint(e.trim())
                            .map_err(|m| err(format!("coordinator.endpoints[{i}]"), m))?,
                    );
                }
                Some(CoordSettings {
                    listen,
                    endpoints,
                    tls_names: c.tls_names,
                })
            }
            _ => None,
        };
        let mesh_cidr = raw
            .mesh_cidr
            .map(|m| m.trim().to_string())
            .unwrap_or_else(|| tm_coord::DEFAULT_MESH_CIDR.to_string());
        tm_coord::MeshCidr::parse(&mesh_cidr).map_err(|e| err("mesh_cidr", e.to_string()))?;
        let dns = match raw.dns {
            Some(d) if !d.enabled => None,
            d => {
                let d = d.unwrap_or(RawDns {
                    enabled: true,
                    listen: None,
                    domain: None,
                    aliases: Default::default(),
                    manage_system: true,
                });
                let listen = d.listen.as_deref().map(str::trim).unwrap_or("");
                let listen = if listen.is_empty() {
                    DEFAULT_DNS_LISTEN
                } else {
                    listen
                };
                let listen = parse_listen(listen).map_err(|m| err("dns.listen", m))?;
                let domain = d.domain.unwrap_or_else(|| "mesh".into());
                validate_name("dns.domain", &domain)?;
                for (a, t) in &d.aliases {
                    validate_name(&format!("dns.aliases.{a}"), a)?;
                    validate_name(&format!("dns.aliases.{a}"), t)?;
                }
                Some(DnsSettings {
                    listen,
                    domain,
                    aliases: d.aliases,
                    manage_system: d.manage_system,
                })
            }
        };
        // A coordinator keeps the mesh's storage: S3 is on unless switched off.
        let raw_s3 = match raw.s3 {
            Some(r) if !r.enabled => None,
            Some(r) => Some(r),
            None if coordinator.is_some() => Some(RawS3 {
                enabled: true,
                listen: None,
                data_dir: None,
                max_size: None,
                region: None,
                encrypt_at_rest: false,
                master_key_file: None,
                replication: None,
            }),
            None => None,
        };
        let s3 = match raw_s3 {
            None => None,
            Some(r) => {
                let listen = match r.listen.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(l) => Some(parse_listen(l).map_err(|m| err("s3.listen", m))?),
                };
                let max_size = match r.max_size {
                    None => None,
                    Some(m) => Some(tm_api::parse_size(&m).map_err(|e| err("s3.max_size", e))?),
                };
                let region = match r.region.as_deref().map(str::trim) {
                    None | Some("") => tm_s3::DEFAULT_REGION.to_owned(),
                    Some(g)
                        if g.len() <= 32
                            && g.bytes().all(|b| {
                                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
                            }) =>
                    {
                        g.to_owned()
                    }
                    Some(g) => {
                        return Err(err(
                            "s3.region",
                            format!("{g:?} is not a region name (like us-east-1)"),
                        ))
                    }
                };
                let replication = replication_settings(r.replication)?;
                Some(S3Settings {
                    replication,
                    listen,
                    data_dir: r.data_dir.unwrap_or_else(|| data_dir.join("s3")),
                    max_size,
                    region,
                    encrypt_at_rest: r.encrypt_at_rest,
                    master_key_file: r
                        .master_key_file
                        .unwrap_or_else(|| data_dir.join("s3-master.key")),
                })
            }
        };
        let nfs = match raw.nfs {
            Some(n) if !n.enabled => None,
            _ if s3.is_none() => None,
            n => {
                let listen = match n.and_then(|n| n.listen) {
                    None => None,
                    Some(l) if l.trim().is_empty() => None,
                    Some(l) => Some(parse_listen(l.trim()).map_err(|m| err("nfs.listen", m))?),
                };
                Some(NfsSettings { listen })
            }
        };
        let docker = match raw.docker {
            Some(RawDocker {
                enabled: Some(false),
                ..
            }) => None,
            d => {
                let explicit = d.as_ref().and_then(|d| d.enabled) == Some(true);
                let socket = d
                    .and_then(|d| d.socket)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_SOCKET));
                if !socket.is_absolute() {
                    return Err(err("docker.socket", "must be an absolute path"));
                }
                (explicit || socket.exists()).then_some(DockerSettings { socket })
            }
        };
        Ok(NodeConfig {
            nfs,
            docker,
            name,
            data_dir,
            key,
            interface,
            listen_port: raw.listen_port.unwrap_or(51820),
            address,
            mtu,
            workers,
            peers,
            timers,
            force_cookie: t.force_cookie,
            s3,
            coordinator,
            mesh_cidr,
            dns,
        })
    }

    /// The node's address; set in static configs and after joining a mesh.
    pub fn address(&self) -> Cidr {
        self.address
            .expect("the node address is known before the dataplane starts")
    }

    /// Allowed IPs outside the interface's own subnet need a route through the TUN.
    pub fn routes(&self) -> Vec<Cidr> {
        let own = self.address().network();
        let mut r: Vec<Cidr> = self
            .peers
            .iter()
            .flat_map(|p| p.allowed_ips.iter().copied())
            .filter(|c| !own.covers(*c))
            .collect();
        r.sort_by_key(|c| (c.addr, c.len));
        r.dedup();
        r
    }
}

/// `IP:PORT`, or `:PORT` for every address.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Some(p) = s.strip_prefix(':') {
        return p
            .parse::<u16>()
            .map(|p| SocketAddr::from(([0, 0, 0, 0], p)))
            .map_err(|_| format!("'{s}' is not an IP:PORT or :PORT address"));
    }
    s.parse()
        .map_err(|_| format!("'{s}' is not an IP:PORT or :PORT address"))
}

/// The host name as a DNS label (lower case, invalid characters become '-').
pub fn default_name() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let h = h
        .trim()
        .split('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut n: String = h
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    n.truncate(63);
    let n = n.trim_matches('-').to_string();
    if n.is_empty() {
        "node".into()
    } else {
        n
    }
}

pub(crate) fn validate_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(err(field, format!("'{name}' is not a valid name (1-63 letters, digits, inner '-': it becomes a DNS label)")))
    }
}

fn resolve_endpoint(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(format!("'{s}' needs a port (HOST:PORT)"));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{s}': {e}"))?
        .next()
        .ok_or_else(|| format!("'{s}' resolves to no address"))
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
