//! Typed identities and the inventory the compiler resolves them against.
//!
//! An enforcer authenticates a request (control socket, the coordinator's own process, a node's
//! Noise key or per-node S3 key, a Bearer token) and builds an [`Identity`]. Nodes and tokens
//! are named by their key/id, never by their display name: a node called `coordinator` or
//! `root` is `Identity::Node(..)` like any other and gets no powers from its name. Names and
//! tags come from the [`Inventory`] the artifact was compiled with, so a removed node or a
//! revoked token is simply unknown to the next artifact and is denied.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// A node's stable identifier: the text form of its public key (e.g. `nodekey:<base64>`).
/// Opaque to the policy; compared only for equality.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeKey(pub String);

/// A token's identifier (not its secret).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenId(pub String);

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is asking. Built by the enforcer from what it authenticated, never from a claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The local control socket (uid 0 on this machine): may do anything.
    LocalRoot,
    /// The coordinator process itself (its own state in the system bucket): may do anything.
    Coordinator,
    /// A mesh node, authenticated by its key (Noise static key, mTLS certificate, or its own
    /// S3 key).
    Node(NodeKey),
    /// A token presented as Bearer/Basic credential.
    Token(TokenId),
    /// Nothing authenticated.
    Anonymous,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::LocalRoot => f.write_str("local root"),
            Identity::Coordinator => f.write_str("the coordinator"),
            Identity::Node(k) => write!(f, "node {k}"),
            Identity::Token(t) => write!(f, "token {t}"),
            Identity::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// What the compiler knows about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeInfo {
    /// Display name (a DNS label, unique in the mesh).
    pub name: String,
    /// Tags, each `tag:x`.
    pub tags: BTreeSet<String>,
    /// Mesh addresses (for CIDR selectors and `filter test` by address).
    pub addrs: BTreeSet<IpAddr>,
}

/// What the compiler knows about one token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TokenInfo {
    /// Tags, each `tag:x`.
    pub tags: BTreeSet<String>,
}

/// Who a coordinator service port is open to, in the packet filter (issue 16: service ports are
/// opened by the policy's application capabilities, not by hand rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceNeed {
    /// Every mesh node (the coordinator API and relay, mesh DNS).
    Member,
    /// Nodes the policy gives any `tunnelmesh.io/cap/s3` grant (S3).
    S3,
    /// Nodes the policy gives any `tunnelmesh.io/cap/nfs` grant (NFS, MOUNT, portmapper).
    Nfs,
    /// Nodes the policy gives a `tunnelmesh.io/cap/docker` grant on the node that serves the
    /// port (its Docker agent).
    Docker,
}

impl ServiceNeed {
    /// How `filter test` and `policy explain` name it.
    pub fn name(self) -> &'static str {
        match self {
            ServiceNeed::Member => "every member",
            ServiceNeed::S3 => crate::caps::CAP_S3,
            ServiceNeed::Nfs => crate::caps::CAP_NFS,
            ServiceNeed::Docker => crate::caps::CAP_DOCKER,
        }
    }
}

/// The TCP port of every node's Docker agent (issue 21): open to the sources a
/// `tunnelmesh.io/cap/docker` grant on that node names.
pub const DOCKER_AGENT_PORT: u16 = 8375;

/// One port a node serves to the mesh (a coordinator's API, DNS, S3, NFS), as the node that
/// serves it configured it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// What it is (`api`, `dns`, `s3`, `nfs`, `portmap`), for messages.
    pub name: String,
    /// IP protocol number (6 or 17).
    pub proto: u8,
    /// The port.
    pub port: u16,
    /// Who may reach it.
    pub needs: ServiceNeed,
}

/// The nodes and tokens a policy is compiled against (from the replicated control state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Inventory {
    /// Every node, by key.
    pub nodes: BTreeMap<NodeKey, NodeInfo>,
    /// Every live (unrevoked, unexpired) token, by id.
    pub tokens: BTreeMap<TokenId, TokenInfo>,
    /// Service ports of nodes that serve the mesh (coordinators), opened in their packet
    /// filter by capability ([`ServiceNeed`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<NodeKey, Vec<ServicePort>>,
}

impl Inventory {
    /// Adds a node (builder style, for tests and tools).
    pub fn with_node(mut self, key: &str, name: &str, tags: &[&str], addrs: &[IpAddr]) -> Self {
        self.nodes.insert(
            NodeKey(key.into()),
            NodeInfo {
                name: name.into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                addrs: addrs.iter().copied().collect(),
            },
        );
        self
    }

    /// Adds a token (builder style).
    pub fn with_token(mut self, id: &str, tags: &[&str]) -> Self {
        self.tokens.insert(
            TokenId(id.into()),
            TokenInfo {
                tags: tags.iter().map(|t| t.to_string()).collect(),
            },
        );
        self
    }

    /// Adds service ports of a node (builder style).
    pub fn with_services(mut self, key: &str, ports: &[(&str, u8, u16, ServiceNeed)]) -> Self {
        self.services.insert(
            NodeKey(key.into()),
            ports
                .iter()
                .map(|(name, proto, port, needs)| ServicePort {
                    name: name.to_string(),
                    proto: *proto,
                    port: *port,
                    needs: *needs,
                })
                .collect(),
        );
        self
    }

    /// The key of the node with this display name.
    pub fn node_by_name(&self, name: &str) -> Option<(&NodeKey, &NodeInfo)> {
        self.nodes.iter().find(|(_, n)| n.name == name)
    }
}

/// Checks a node name as the policy language sees it: a lower-case DNS label (1-63 of a-z, 0-9,
/// '-', not starting or ending with '-'). Such a name can never look like a built-in selector
/// (`*`, `tag:`, `group:`, `autogroup:`), so a node can never alias one; and no name gives
/// powers (there is no name-based principal at all).
pub fn validate_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("a node name is 1 to 63 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("a node name has only a-z, 0-9 and '-'".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("a node name does not start or end with '-'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_look_like_selectors() {
        for bad in [
            "*",
            "tag:x",
            "group:x",
            "autogroup:member",
            "",
            "-a",
            "A",
            "a_b",
        ] {
            assert!(validate_node_name(bad).is_err(), "{bad}");
        }
        for ok in ["system", "coordinator", "admin", "root", "web-1"] {
            assert!(validate_node_name(ok).is_ok(), "{ok}");
        }
    }
}
