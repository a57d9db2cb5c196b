//! JSON types of the coordinator API. Binary fields are standard base64; public keys are
//! WireGuard base64. Request types reject unknown fields (a client cannot smuggle a role).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use tm_noise::PublicKey;

use crate::MeshCidr;

/// Lower-case hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Serde adapter: `[u8; 32]` as standard base64.
pub mod b64_32 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes 32 bytes as base64.
    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    /// Deserializes base64 that must decode to exactly 32 bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = STANDARD
            .decode(s.as_bytes())
            .map_err(|_| serde::de::Error::custom("not valid base64"))?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("must decode to 32 bytes"))
    }
}

/// Serde adapter: [`PublicKey`] as WireGuard base64.
pub mod b64_key {
    use serde::{Deserializer, Serializer};
    use tm_noise::PublicKey;

    /// Serializes a public key as base64.
    pub fn serialize<S: Serializer>(k: &PublicKey, s: S) -> Result<S::Ok, S::Error> {
        super::b64_32::serialize(&k.0, s)
    }

    /// Deserializes a 32-byte base64 public key.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        super::b64_32::deserialize(d).map(PublicKey)
    }
}

/// `GET /v1/challenge` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Single-use nonce, valid for 60 s.
    #[serde(with = "b64_32")]
    pub nonce: [u8; 32],
    /// The coordinator node's X25519 static public key (the proof's DH partner).
    #[serde(with = "b64_key")]
    pub coordinator_static: PublicKey,
}

/// `POST /v1/register` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Requested node name (a DNS label).
    pub name: String,
    /// The node's X25519 static public key.
    #[serde(with = "b64_key")]
    pub public_key: PublicKey,
    /// The nonce of a fresh challenge.
    #[serde(with = "b64_32")]
    pub nonce: [u8; 32],
    /// [`crate::proof::node_proof`].
    #[serde(with = "b64_32")]
    pub proof: [u8; 32],
    /// The secret of the join token. Sent only inside TLS to a coordinator whose certificate
    /// chains to the CA the token pins; the coordinator keeps only its SHA-256.
    #[serde(with = "b64_32")]
    pub token_secret: [u8; 32],
    /// PEM certificate signing request for the node's TLS key (made on the node).
    pub csr: String,
    /// Addresses the node believes it is reachable at.
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    /// The node joins as a coordinator of the mesh (needs a coordinator token).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub coordinator: bool,
    /// For a coordinator: the API address (`HOST:PORT`) the other coordinators dial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
}

/// `POST /v1/register` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The node's mesh address (stable).
    pub mesh_ip: Ipv4Addr,
    /// The mesh prefix.
    pub mesh_cidr: MeshCidr,
    /// PEM client/server certificate for the node, signed by the mesh CA.
    pub node_cert: String,
    /// PEM mesh CA certificate.
    pub ca_cert: String,
    /// S3 access key issued to this node (random).
    pub s3_access_key: String,
    /// S3 secret issued to this node (random).
    pub s3_secret: String,
    /// The current netmap.
    pub netmap: Netmap,
    /// For a coordinator: what it needs to serve the same mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSeed>,
}

/// What a joining coordinator receives (inside TLS pinned by its token): the mesh CA (so that
/// it can admit nodes and sign certificates), the default join secret, and the replicated
/// records to start from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSeed {
    /// PEM mesh CA certificate.
    pub ca_cert_pem: String,
    /// PEM mesh CA private key.
    pub ca_key_pem: String,
    /// The default join token's secret (base64).
    pub join_secret: String,
    /// Every record of the control state.
    pub records: Vec<tm_cluster::Record>,
}

impl std::fmt::Debug for ClusterSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSeed")
            .field("ca_key_pem", &"<redacted>")
            .field("join_secret", &"<redacted>")
            .field("records", &self.records.len())
            .finish_non_exhaustive()
    }
}

/// One peer of the netmap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetmapPeer {
    /// Node name.
    pub name: String,
    /// X25519 static public key.
    #[serde(with = "b64_key")]
    pub public_key: PublicKey,
    /// Mesh address.
    pub mesh_ip: Ipv4Addr,
    /// Known endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Whether this node runs coordinator services (server-side fact).
    pub is_coordinator: bool,
    /// The node's tags (`tag:...`), as the coordinator has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// For coordinators: the API address (`HOST:PORT`, or `:PORT` at its mesh address and at
    /// each endpoint's host) members fail over to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// For coordinators: the coordinator that served this netmap has not heard from this one
    /// lately (it is left out of `coordinator.mesh`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unreachable: bool,
    /// Services the node runs for other nodes (`docker`: its Docker agent answers on the
    /// mesh), as the node itself declared them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

/// DNS data distributed with the netmap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// The mesh domain (`mesh`).
    pub domain: String,
    /// Alias -> node name.
    pub aliases: BTreeMap<String, String>,
}

/// The versioned membership list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Netmap {
    /// Bumped on every join, leave and endpoint change.
    pub version: u64,
    /// All registered nodes, sorted by name.
    pub peers: Vec<NetmapPeer>,
    /// DNS data.
    pub dns: Dns,
    /// What the answering coordinator had seen of each coordinator's writes when it made this
    /// netmap: a member that fails over applies a netmap only if it has seen at least as much
    /// as the last one (its view never goes back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vv: Option<tm_cluster::VersionVector>,
    /// Hash of the compiled policy in force (`sha256:...`); members show it in `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// The receiving node's projection of the compiled policy (`Artifact::project`): what its
    /// packet filter and Docker agent decide from. `None` from coordinators that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<tm_policy::Artifact>,
    /// Netmap deltas: this netmap's token and, in a delta answer, what it applies to and what
    /// is gone. `None` from coordinators that do not send deltas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Box<DeltaInfo>>,
}

impl Netmap {
    /// The peer with this name.
    pub fn peer(&self, name: &str) -> Option<&NetmapPeer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The token that names this netmap for a later delta request (`base=`).
    pub fn delta_token(&self) -> Option<&str> {
        self.delta.as_ref().map(|d| d.token.as_str())
    }

    /// In a delta answer: the token of the netmap it applies to.
    pub fn delta_from(&self) -> Option<&str> {
        self.delta.as_ref().and_then(|d| d.from.as_deref())
    }
}

/// The delta part of a [`Netmap`] (`delta.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaInfo {
    /// Names this netmap for a later `GET /v1/netmap?since=V&base=T` (opaque to members: the
    /// answering coordinator process and its netmap generation).
    pub token: String,
    /// Set only in a delta answer: the token of the netmap it applies to. The netmap's
    /// `peers` then holds only the added and changed peers, `removed` the names that are
    /// gone, and `policy` the receiver's projection with only the inventory entries of
    /// `policy_changed` ([`crate::apply_delta`] resolves it into the full netmap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// In a delta: names of the peers that are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// In a delta: node keys whose entries in the projection's `nodes` and `services` are
    /// replaced by the delta's (absent there: removed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_changed: Vec<tm_policy::NodeKey>,
}

/// One coordinator as `cluster status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPeer {
    /// Node name.
    pub name: String,
    /// Mesh address.
    pub mesh_ip: std::net::Ipv4Addr,
    /// The API address replication dials (`HOST:PORT`).
    pub api: String,
    /// Whether it is the coordinator answering.
    pub this: bool,
    /// When a replication message from it was last accepted (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heard_ms: Option<u64>,
    /// When an anti-entropy round with it last completed (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_ms: Option<u64>,
    /// The last replication error with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/endpoints` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointsUpdate {
    /// The caller's endpoints (replaces the previous list).
    pub endpoints: Vec<SocketAddr>,
}

/// `POST /v1/services` body: the services the caller runs for other nodes (replaces the
/// previous list; see [`crate::SERVICES`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesUpdate {
    /// Service names.
    pub services: Vec<String>,
}

/// Error body of every non-2xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Human-readable reason.
    pub error: String,
}
