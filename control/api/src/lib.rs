//! The local control API between `tmctl` (or `tunnelmesh <operator command>`) and a running node.
//!
//! Transport: a unix stream socket at `<data_dir>/control.sock` (mode 0600). The client writes one
//! JSON [`Request`] followed by `\n`; the node answers with one JSON [`Response`] line and closes.
//! [`API_VERSION`] is carried in every request; the node refuses other versions with a clear error.
//! This crate holds only types: no I/O, no secrets.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the request/response schema below.
pub const API_VERSION: u32 = 1;

/// File name of the control socket inside `data_dir`.
pub const SOCKET_NAME: &str = "control.sock";

/// Environment variable that overrides the socket path.
pub const SOCKET_ENV: &str = "TUNNELMESH_SOCKET";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub command: Command,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Command {
    /// Node summary: [`Status`].
    Status,
    /// Every peer: `Vec<`[`PeerInfo`]`>`.
    Peers,
    /// `Vec<`[`BucketInfo`]`>`.
    BucketList,
    BucketCreate {
        name: String,
    },
    BucketDelete {
        name: String,
    },
    /// `bytes: None` removes the quota. A quota below the bucket's usage is refused unless
    /// `force`.
    BucketQuotaSet {
        name: String,
        bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// [`BucketInfo`] with exact usage.
    BucketUsage {
        name: String,
    },
    /// This node's S3 access key and secret: [`S3Credentials`].
    S3Credentials,
    /// `Vec<`[`ShareInfo`]`>`: the NFS file shares.
    ShareList,
    /// Create a file share (a bucket exported over NFS as `/shares/<name>`): [`ShareInfo`].
    /// An existing bucket of that name is adopted; `quota_bytes` replaces its quota.
    ShareCreate {
        name: String,
        #[serde(default)]
        quota_bytes: Option<u64>,
        #[serde(default)]
        read_only: bool,
    },
    /// Stop exporting a share; its bucket and objects stay (S3). `default` cannot be deleted.
    ShareDelete {
        name: String,
    },
    /// How NFS maps callers' AUTH_SYS identities on a share, like exports(5): [`ShareInfo`].
    /// `anonuid`/`anongid` default to 65534 (`nobody`/`nogroup`).
    ShareSquash {
        name: String,
        squash: Squash,
        #[serde(default)]
        anonuid: Option<u32>,
        #[serde(default)]
        anongid: Option<u32>,
    },
    /// On a coordinator: the join token (`tm1_...`) as a JSON string.
    Token,
    /// Leave the mesh: deregister at the coordinator, forget the identity, stop the node.
    Leave,
    /// Packet filter, local policy (until the coordinator pushes one): compile `text` (a
    /// policy file named `file`) against this node's peers and install it: [`FilterInfo`].
    FilterLoad {
        file: String,
        text: String,
    },
    /// Remove the local policy (allow all): [`FilterInfo`].
    FilterClear,
    /// The packet filter's state: [`FilterInfo`].
    FilterShow,
    /// `filter test --src NODE --dst HOST:PORT/PROTO`: [`FilterDecision`].
    FilterTest {
        src: String,
        dst: String,
    },
    /// Recent sampled filter drops (at most one per peer per second), oldest first, optionally
    /// of one peer (by name): `Vec<String>`, one line each.
    FilterLog {
        #[serde(default)]
        peer: Option<String>,
    },
    /// On a coordinator (admin): create a token: [`NewToken`] (its text is shown only here).
    TokenCreate {
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        expires_secs: Option<u64>,
        #[serde(default)]
        reusable: bool,
        /// A token that admits a coordinator (and only coordinators).
        #[serde(default)]
        coordinator: bool,
    },
    /// On a coordinator (admin): the coordinators of the mesh and replication state:
    /// [`ClusterInfo`].
    ClusterStatus,
    /// On a coordinator (admin): `Vec<`[`TokenInfo`]`>` (never secrets).
    TokenList,
    /// On a coordinator (admin): revoke a token by id: [`TokenInfo`].
    TokenRevoke {
        id: String,
    },
    /// On a coordinator (admin): new default token, the old one revoked: [`NewToken`].
    TokenRotate,
    /// On a coordinator (admin): `Vec<`[`NodeInfo`]`>`.
    NodeList,
    /// On a coordinator (admin): add a tag to a node: [`NodeInfo`].
    NodeTag {
        name: String,
        tag: String,
    },
    /// On a coordinator (admin): remove a tag from a node: [`NodeInfo`].
    NodeUntag {
        name: String,
        tag: String,
    },
    /// On a coordinator (admin): remove a node (tunnels and S3 keys stop): [`NodeInfo`].
    NodeRemove {
        name: String,
    },
    /// On a coordinator (admin): `Vec<`[`AuditInfo`]`>`, oldest first.
    Audit,
    /// On a coordinator (admin): validate a policy file, run its tests, and only if all pass
    /// put it in force everywhere: [`PolicyInfo`]. `file` is the file's base name (for
    /// `file:line` in messages), `text` its content.
    PolicySet {
        file: String,
        text: String,
    },
    /// On a coordinator (admin): the policy in force: [`PolicyInfo`] (with its text).
    PolicyGet,
    /// On a coordinator (admin): what `PolicySet` would say; nothing changes: [`PolicyInfo`].
    PolicyCheck {
        file: String,
        text: String,
    },
    /// On a coordinator (admin): the decision and deciding rule for a request by node (or
    /// `tag:x`, `token:ID`) `src`: [`PolicyExplanation`]. `request` is e.g. `["s3", "put",
    /// "bucket/key"]`, `["nfs", "mount", "default"]`, `["admin"]`, `["ip", "web1:22/tcp"]`.
    PolicyExplain {
        src: String,
        request: Vec<String>,
    },
    /// Docker: connect this control connection to node `node`'s Docker agent (the node's own
    /// agent as local root, another node's through the mesh as this node). After an ok
    /// [`Response`] line the connection speaks the agent protocol (`tm_docker::proto`).
    DockerDial {
        node: String,
    },
    /// Docker, member to coordinator only (over `POST /v1/admin`): an audit entry of the
    /// member's agent (start/stop/restart, exec sessions) for the coordinator's audit log.
    /// `target` must be `<member>/<container>`.
    DockerAudit {
        who: String,
        action: String,
        target: String,
        detail: String,
    },
    /// One ICMP echo to a peer (`name`, `name.mesh` or an address it owns) through the
    /// tunnel: [`PingReply`], or an error saying that nothing came back within `timeout_ms`.
    Ping {
        peer: String,
        /// IP packet size (default [`PING_SIZE`]); at most the tunnel MTU.
        #[serde(default)]
        size: Option<u16>,
        timeout_ms: u64,
    },
}

/// Default size of a ping probe: an 84-byte IP packet, as ping(8) sends.
pub const PING_SIZE: u16 = 84;

/// One answered ping probe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PingReply {
    pub peer: String,
    /// The address that answered (the peer's mesh IP).
    pub address: String,
    /// `direct` or `relay`: where the peer's last authenticated packet came from.
    pub path: String,
    /// Direct: the peer's UDP endpoint; relay: the coordinator relaying (`HOST:PORT`, or
    /// `local` on the coordinator itself).
    pub endpoint: Option<String>,
    pub rtt_us: u64,
    /// IP packet size of the probe.
    pub size: u16,
    /// MTU of this node's tunnel interface.
    pub tunnel_mtu: u16,
}

impl Command {
    /// Whether the node's object store answers this command (the node loop hands these to
    /// the storage layer off its own task; every new storage command must be listed here).
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            Command::BucketList
                | Command::BucketCreate { .. }
                | Command::BucketDelete { .. }
                | Command::BucketQuotaSet { .. }
                | Command::BucketUsage { .. }
                | Command::S3Credentials
                | Command::ShareList
                | Command::ShareCreate { .. }
                | Command::ShareDelete { .. }
                | Command::ShareSquash { .. }
        )
    }
}

impl Command {
    /// Whether this is an identity-administration command (answered by a coordinator to local
    /// root; forwarding from members is not implemented yet).
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Command::TokenCreate { .. }
                | Command::ClusterStatus
                | Command::TokenList
                | Command::TokenRevoke { .. }
                | Command::TokenRotate
                | Command::NodeList
                | Command::NodeTag { .. }
                | Command::NodeUntag { .. }
                | Command::NodeRemove { .. }
                | Command::Audit
                | Command::PolicySet { .. }
                | Command::PolicyGet
                | Command::PolicyCheck { .. }
                | Command::PolicyExplain { .. }
        )
    }
}

/// The policy in force, or what `policy check`/`set` found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PolicyInfo {
    /// The file's base name (`None`: no policy file, the built-in default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// `sha256:...` of the compiled artifact (the one in netmaps and the audit log).
    pub hash: String,
    /// One line: `no policy: all members allowed`, or the file, hash and who set it.
    pub status: String,
    /// The file's text (`policy get` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_unix: Option<u64>,
    /// The file's tests that ran (all passed).
    #[serde(default)]
    pub tests: usize,
    /// Legal but suspicious things (undeclared tags in use, ...).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `policy explain`: the decision, the deciding rule and every rule that matched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyExplanation {
    /// `allow` or `deny`.
    pub decision: String,
    /// `file:line` of the deciding rule (none: a built-in or the default decided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The one-line reason, as enforcers show it.
    pub reason: String,
    /// Every matching rule in evaluation order: `deny file:line` / `allow file:line`.
    pub matched: Vec<String>,
    /// The request as understood.
    pub request: String,
    /// The principal as understood.
    pub principal: String,
    /// Hash of the artifact decided from.
    pub hash: String,
}

/// A token as listed (no secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub tags: Vec<String>,
    pub created_unix: u64,
    pub expires_unix: Option<u64>,
    pub reusable: bool,
    /// Single-use tokens: the node that joined with it.
    pub used_by: Option<String>,
    pub created_by: String,
    pub revoked_unix: Option<u64>,
    /// The default token (printed by `tmctl token`, used by the seed's S3 login).
    pub default: bool,
    /// Admits coordinators only.
    #[serde(default)]
    pub coordinator: bool,
}

/// `cluster status`: this coordinator's view of the coordinators of the mesh.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ClusterInfo {
    /// The answering coordinator.
    pub this: String,
    /// Digest of its replicated records (equal on coordinators that hold the same state).
    pub digest: String,
    /// Number of records.
    pub records: usize,
    /// Netmap version on this coordinator.
    pub version: u64,
    /// Every coordinator.
    pub coordinators: Vec<ClusterMember>,
}

/// One coordinator in [`ClusterInfo`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ClusterMember {
    pub name: String,
    pub mesh_ip: String,
    /// The address replication dials.
    pub api: String,
    /// The answering coordinator itself.
    pub this: bool,
    /// Seconds since a replication message from it was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard_secs_ago: Option<u64>,
    /// Seconds since an anti-entropy round with it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_secs_ago: Option<u64>,
    /// The last replication error with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What it stores (object replication), as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<ObjectFigures>,
}

/// A coordinator's object store in [`ClusterMember`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ObjectFigures {
    /// Bytes of every stored version.
    pub bytes: u64,
    /// Stored object versions.
    pub objects: u64,
    /// `s3.max_size` (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// Hinted handoffs it holds: (owner, version) pairs an owner is known to lack.
    pub under_replicated: u64,
    /// Seconds since these figures were reported (0: the answering coordinator's own).
    pub age_secs: u64,
}

/// A newly created token: its text is shown once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NewToken {
    pub token: String,
    pub info: TokenInfo,
}

/// A mesh node as admins see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub public_key: String,
    pub mesh_ip: String,
    pub tags: Vec<String>,
    pub is_coordinator: bool,
    pub endpoints: Vec<String>,
}

/// One audit-log entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditInfo {
    pub unix: u64,
    pub who: String,
    pub action: String,
    pub target: String,
    #[serde(default)]
    pub detail: String,
    /// Hash of the policy artifact in force after the change.
    #[serde(default)]
    pub policy_hash: String,
}

/// Parses a duration like `30s`, `15m`, `24h` or `7d` into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (examples: 30m, 24h, 7d)"))?;
    let mult = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("'{s}': give a unit: s, m, h or d (e.g. 24h)")),
    };
    if n == 0 {
        return Err(format!("'{s}': must be longer than 0"));
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is out of range"))
}

/// `{"ok": true, "data": ...}` or `{"ok": false, "error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok<T: Serialize>(v: &T) -> Self {
        match serde_json::to_value(v) {
            Ok(data) => Self {
                ok: true,
                data: Some(data),
                error: None,
            },
            Err(e) => Self::err(format!("internal: cannot encode response: {e}")),
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            data: None,
            error: Some(msg.into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub public_key: String,
    pub address: String,
    pub interface: String,
    pub listen_port: u16,
    pub dataplane: DataplaneStatus,
    pub counters: Counters,
    pub peers: usize,
    /// Per-worker counters of the running dataplane (index 0 = the owner thread); empty
    /// until its first counters report.
    #[serde(default)]
    pub workers: Vec<WorkerInfo>,
    /// Present on mesh nodes (joined or coordinator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshStatus>,
    /// The packet filter (absent: no policy, allow all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterInfo>,
    /// The services a node can run (S3, NFS, portmapper, DNS, coordinator API), each with
    /// its endpoints or `running: false` and why.
    #[serde(default)]
    pub services: Vec<ServiceInfo>,
    /// The coordinators this node talks to (on a coordinator: itself).
    #[serde(default)]
    pub coordinators: Vec<CoordinatorInfo>,
}

/// One service of a node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceInfo {
    /// `s3`, `nfs`, `portmapper`, `dns`, `coordinator`.
    pub name: String,
    pub running: bool,
    /// Where it listens (URLs for HTTP services, `IP:PORT` otherwise); empty when not running.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Running: what it serves; not running: why (e.g. `no s3: section in the config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A coordinator a node talks to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CoordinatorInfo {
    /// Its node name and mesh IP (from the netmap), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_ip: Option<String>,
    /// Its API (`HOST:PORT`, or the listen address on the coordinator itself).
    pub api: String,
    /// This node is that coordinator.
    pub this_node: bool,
    /// The last exchange with it succeeded.
    pub reachable: bool,
}

/// The packet filter of a node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct FilterInfo {
    /// A policy is loaded (false: allow all).
    pub active: bool,
    /// Where the policy came from (`local FILE`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The policy hash (`sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Generation last sent to the dataplane.
    pub generation: u64,
    /// Policy classes and peers with a class in this node's table.
    pub classes: usize,
    pub peers_with_class: usize,
    /// Peers this node may send to.
    pub reachable: usize,
    /// Live flows / flow-table capacity / evictions (from the dataplane).
    pub flows: u64,
    pub flow_capacity: u64,
    pub flow_evictions: u64,
    /// Compile warnings (lint) of the loaded policy.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Answer of `filter test`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FilterDecision {
    pub allow: bool,
    /// The deciding rule (`file:line`), if a rule decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub reason: String,
}

/// A mesh node's view of its mesh.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeshStatus {
    /// `coordinator` or `member`.
    pub role: String,
    /// `HOST:PORT` of the coordinator API this node follows (members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// Netmap version last applied.
    pub netmap_version: u64,
    /// Whether the last exchange with the coordinator succeeded.
    pub coordinator_reachable: bool,
    pub mesh_cidr: String,
    /// Mesh DNS listen addresses.
    pub dns: Vec<String>,
    /// Whether the relay connection through the coordinator is up.
    pub relay_connected: bool,
    /// The policy in force (coordinator: file and hash, or `no policy: all members allowed`;
    /// member: the hash its coordinator announced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// WireGuard datagrams this node sent / received through the relay, and dropped.
    #[serde(default)]
    pub relay_sent: u64,
    #[serde(default)]
    pub relay_received: u64,
    #[serde(default)]
    pub relay_dropped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataplaneStatus {
    pub pid: Option<u32>,
    pub restarts: u64,
    pub running: bool,
    pub workers: u16,
}

/// Counters of one dataplane worker thread (since the running dataplane started). TUN
/// counts are reads/writes (a super-packet counts once), UDP counts are datagrams.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct WorkerInfo {
    pub index: u16,
    pub tun_rx_packets: u64,
    pub tun_rx_bytes: u64,
    pub tun_tx_packets: u64,
    pub tun_tx_bytes: u64,
    pub udp_rx_packets: u64,
    pub udp_rx_bytes: u64,
    pub udp_tx_packets: u64,
    pub udp_tx_bytes: u64,
    /// Packets handed to worker 0 (slow path) and those dropped because its queue was full.
    pub punts: u64,
    pub punt_drops: u64,
    /// Drop counts by reason (only non-zero reasons).
    pub drops: BTreeMap<String, u64>,
}

/// Cumulative over every dataplane incarnation since the node started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Counters {
    pub rx_datagrams: u64,
    pub tx_datagrams: u64,
    /// Drop counts by reason (`malformed`, `replay`, `source_not_allowed`, ...).
    pub drops: BTreeMap<String, u64>,
    pub handshakes_completed: u64,
    pub handshake_errors: u64,
    pub cookie_replies_sent: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerInfo {
    pub name: String,
    pub public_key: String,
    pub mesh_ip: Option<String>,
    pub allowed_ips: Vec<String>,
    pub endpoint: Option<String>,
    /// `direct` or `relay`.
    pub path: String,
    pub last_handshake_unix: Option<u64>,
    pub last_handshake_ago_secs: Option<u64>,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub sessions_established: u64,
    /// The peer declares a Docker agent on the mesh (its netmap entry lists `docker`).
    #[serde(default)]
    pub docker: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    pub created_unix: u64,
    pub quota_bytes: Option<u64>,
    pub used_bytes: u64,
    pub objects: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key: String,
    pub secret_key: String,
    /// Where this node serves S3 (e.g. `http://127.0.0.1:8080/s3`).
    pub endpoint: String,
}

/// A file share (`share list`): a bucket exported over NFS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShareInfo {
    pub name: String,
    /// NFS export path, `/shares/<name>`.
    pub export: String,
    pub read_only: bool,
    pub quota_bytes: Option<u64>,
    pub used_bytes: u64,
    pub objects: u64,
    pub created_unix: u64,
    /// Identity squashing of NFS callers.
    #[serde(default)]
    pub squash: Squash,
    /// The identity squashed callers get.
    #[serde(default = "nobody")]
    pub anonuid: u32,
    #[serde(default = "nobody")]
    pub anongid: u32,
}

fn nobody() -> u32 {
    65_534
}

/// NFS identity squashing of a share (exports(5) names).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Squash {
    /// Callers keep their uid/gid, root included (the default).
    #[default]
    NoRootSquash,
    /// uid/gid 0 become `anonuid`/`anongid`.
    RootSquash,
    /// Every caller becomes `anonuid`/`anongid`.
    AllSquash,
}

impl Squash {
    /// The exports(5) option name.
    pub fn as_str(self) -> &'static str {
        match self {
            Squash::NoRootSquash => "no_root_squash",
            Squash::RootSquash => "root_squash",
            Squash::AllSquash => "all_squash",
        }
    }
}

/// Parses a size like `1GB`, `500MiB`, `10G` or `123` (bytes). Decimal units are powers of 1000,
/// binary units (`KiB`, `MiB`, `GiB`, `TiB`) powers of 1024; a bare `K/M/G/T` is decimal.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 500MB, 1GB, 2GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "'{s}': unknown unit '{unit}' (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(v.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_form_is_stable() {
        let r = Request {
            version: API_VERSION,
            command: Command::Peers,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"version":1,"cmd":"peers"}"#);
        let back: Request = serde_json::from_str(&s).unwrap();
        assert_eq!(back, r);
        assert!(serde_json::from_str::<Request>(r#"{"version":1,"cmd":"nope"}"#).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("500 MB"), Ok(500_000_000));
        assert_eq!(parse_size("1.5k"), Ok(1500));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("1XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("GB").is_err());
        let r = Request {
            version: API_VERSION,
            command: Command::BucketQuotaSet {
                name: "b".into(),
                bytes: Some(5),
                force: false,
            },
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"version":1,"cmd":"bucket_quota_set","name":"b","bytes":5}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
    }

    #[test]
    fn durations_and_admin_commands() {
        assert_eq!(parse_duration("24h"), Ok(86400));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("7d"), Ok(7 * 86400));
        assert!(parse_duration("24").unwrap_err().contains("unit"));
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("h").is_err());
        let r = Request {
            version: API_VERSION,
            command: Command::NodeTag {
                name: "beta".into(),
                tag: "tag:x".into(),
            },
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"version":1,"cmd":"node_tag","name":"beta","tag":"tag:x"}"#
        );
        assert!(r.command.is_admin() && !r.command.is_storage());
        assert!(!Command::Token.is_admin());
    }

    #[test]
    fn response_shapes() {
        let e = Response::err("boom");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"ok":false,"error":"boom"}"#
        );
        let o = Response::ok(&vec![1, 2]);
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"{"ok":true,"data":[1,2]}"#
        );
    }
}
