//! The compiler: (policy, inventory) -> [`Artifact`], the one thing every enforcer decides from.
//!
//! The artifact is plain data (serde), shipped in the netmap with its [`PolicyHash`]: the
//! SHA-256 of its compact JSON encoding, which is canonical because every map is a `BTreeMap`,
//! every set a `BTreeSet` and rules keep file order. Recompile on every policy `set` and on every
//! node/tag/token change; a removed node or revoked token is then unknown and denied.

use crate::caps::AppGrant;
use crate::identity::{
    validate_node_name, Inventory, NodeInfo, NodeKey, ServiceNeed, ServicePort, TokenId, TokenInfo,
};
use crate::model::{DefaultAction, Policy, Rule};
use crate::selector::valid_word;
use crate::Error;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The artifact encoding version; bump on any change of meaning.
pub const ARTIFACT_FORMAT: u32 = 1;

/// `sha256:<64 hex digits>` of an artifact's canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PolicyHash(pub String);

impl fmt::Display for PolicyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A compiled policy: rules with their `file:line`, the default, and the inventory they were
/// resolved against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// [`ARTIFACT_FORMAT`].
    pub format: u32,
    /// False for the built-in "no policy" artifact.
    pub has_policy: bool,
    /// What happens when no rule matches.
    pub default: DefaultAction,
    /// Every node.
    pub nodes: BTreeMap<NodeKey, NodeInfo>,
    /// Every live token.
    pub tokens: BTreeMap<TokenId, TokenInfo>,
    /// Rules in file order.
    pub rules: Vec<Rule>,
    /// Declared tags and their owners (for the coordinator's `node tag`).
    pub tag_owners: BTreeMap<String, Vec<String>>,
    /// For a per-node projection: the node it was made for (`None`: the full artifact).
    pub scope: Option<NodeKey>,
    /// Service ports of coordinators (from the inventory), opened by capability in the
    /// packet filter and in `decide` for `Request::Ip`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<NodeKey, Vec<ServicePort>>,
}

fn check_inventory(inv: &Inventory) -> Result<(), Error> {
    let mut names = BTreeSet::new();
    let check_tags = |who: &str, tags: &BTreeSet<String>| {
        for t in tags {
            if !t.strip_prefix("tag:").is_some_and(valid_word) {
                return Err(Error::Inventory(format!("{who} has a malformed tag {t:?}")));
            }
        }
        Ok(())
    };
    for (k, n) in &inv.nodes {
        validate_node_name(&n.name)
            .map_err(|e| Error::Inventory(format!("node {k} has name {:?}: {e}", n.name)))?;
        if !names.insert(n.name.as_str()) {
            return Err(Error::Inventory(format!(
                "two nodes are named {:?}",
                n.name
            )));
        }
        check_tags(&format!("node {}", n.name), &n.tags)?;
    }
    for (id, t) in &inv.tokens {
        check_tags(&format!("token {id}"), &t.tags)?;
    }
    for (k, ports) in &inv.services {
        if let Some(p) = ports.iter().find(|p| !matches!(p.proto, 6 | 17)) {
            return Err(Error::Inventory(format!(
                "node {k} serves {} on protocol {} (only tcp and udp service ports exist)",
                p.name, p.proto
            )));
        }
    }
    Ok(())
}

/// Compiles a checked policy against the inventory.
pub fn compile(policy: &Policy, inv: &Inventory) -> Result<Artifact, Error> {
    check_inventory(inv)?;
    Ok(Artifact {
        format: ARTIFACT_FORMAT,
        has_policy: true,
        default: policy.default,
        nodes: inv.nodes.clone(),
        tokens: inv.tokens.clone(),
        rules: policy.rules.clone(),
        tag_owners: policy.tag_owners.clone(),
        scope: None,
        services: inv.services.clone(),
    })
}

/// Things that are legal but probably mistakes: rules naming nodes that are not in the
/// inventory, inventory tags no policy declares. For `policy check` / `set` to print.
pub fn lint(policy: &Policy, inv: &Inventory) -> Vec<String> {
    let known: BTreeSet<&str> = inv.nodes.values().map(|n| n.name.as_str()).collect();
    let mut out = Vec::new();
    for r in &policy.rules {
        for n in r.src.nodes.iter().chain(r.dst.nodes.iter()) {
            if !known.contains(n.as_str()) {
                out.push(format!(
                    "{}: node {n:?} is not in the mesh (the rule matches nothing for it)",
                    r.at
                ));
            }
        }
    }
    let mut tags: BTreeSet<&str> = BTreeSet::new();
    for t in inv
        .nodes
        .values()
        .flat_map(|n| &n.tags)
        .chain(inv.tokens.values().flat_map(|t| &t.tags))
    {
        if !policy.tag_owners.contains_key(t) && tags.insert(t) {
            out.push(format!(
                "{}: tag {t:?} is in use but not declared in tagOwners",
                policy.file
            ));
        }
    }
    out.dedup();
    out
}

impl Artifact {
    /// The artifact used when no policy file was ever set: default allow (members use S3 and
    /// NFS read-write and reach every port; nobody but local root and the coordinator is admin).
    pub fn no_policy(inv: &Inventory) -> Result<Artifact, Error> {
        check_inventory(inv)?;
        Ok(Artifact {
            format: ARTIFACT_FORMAT,
            has_policy: false,
            default: DefaultAction::Allow,
            nodes: inv.nodes.clone(),
            tokens: inv.tokens.clone(),
            rules: Vec::new(),
            tag_owners: BTreeMap::new(),
            scope: None,
            services: inv.services.clone(),
        })
    }

    /// The canonical encoding (compact JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an artifact has only string keys and no floats")
    }

    /// Decodes an artifact, refusing another format version.
    pub fn from_bytes(b: &[u8]) -> Result<Artifact, Error> {
        let a: Artifact = serde_json::from_slice(b)
            .map_err(|e| Error::Artifact(format!("undecodable artifact: {e}")))?;
        if a.format != ARTIFACT_FORMAT {
            return Err(Error::Artifact(format!(
                "artifact format {} (this build reads {ARTIFACT_FORMAT})",
                a.format
            )));
        }
        Ok(a)
    }

    /// `sha256:` of [`Artifact::to_bytes`].
    pub fn hash(&self) -> PolicyHash {
        let d = Sha256::digest(self.to_bytes());
        let mut s = String::with_capacity(7 + 64);
        s.push_str("sha256:");
        for b in d {
            s.push_str(&format!("{b:02x}"));
        }
        PolicyHash(s)
    }

    /// The identity of the node with this display name (for operator tools such as
    /// `policy explain --src beta`; enforcers build identities from what they authenticated).
    pub fn node_identity(&self, name: &str) -> Option<crate::identity::Identity> {
        self.node_by_name(name)
            .map(|(k, _)| crate::identity::Identity::Node(k.clone()))
    }

    /// The node with this display name.
    pub fn node_by_name(&self, name: &str) -> Option<(&NodeKey, &NodeInfo)> {
        self.nodes.iter().find(|(_, n)| n.name == name)
    }

    /// What one node needs (its packet filter, its Docker agent, `filter test` against it):
    /// rules whose `dst` can select this node (inbound), and the `ip` part of rules whose `src`
    /// can select it (outbound: which peers it may reach at all); Docker grants; S3/NFS grants
    /// only where the packet filter needs them (grants to this node, which open a
    /// coordinator's service ports to it, or every such grant when this node serves those
    /// ports). Admin entries, other nodes' S3/NFS grants and tokens are left out (enforced by
    /// coordinators, which keep the full artifact; a node never sees another's token tags).
    /// This node's packet filter and every decision about it as Docker target or IP
    /// destination are the same as with the full artifact (a test checks the filter on random
    /// policies). The coordinator sends it in each node's netmap.
    pub fn project(&self, node: &NodeKey) -> Artifact {
        let empty = NodeInfo::default();
        let me = self.nodes.get(node).unwrap_or(&empty);
        let serves = |need| {
            self.services
                .get(node)
                .is_some_and(|v| v.iter().any(|p| p.needs == need))
        };
        let (serves_s3, serves_nfs) = (serves(ServiceNeed::S3), serves(ServiceNeed::Nfs));
        let rules = self
            .rules
            .iter()
            .filter_map(|r| {
                let to_me = r.dst.matches(true, Some(&me.name), &me.tags, &me.addrs);
                let from_me = r.src.matches(true, Some(&me.name), &me.tags, &me.addrs);
                if !to_me && !from_me {
                    return None;
                }
                let app = r
                    .app
                    .iter()
                    .filter(|a| match a.grant {
                        // To it: its agent decides them; from it: they open other nodes'
                        // agent ports to it (its outbound filter).
                        AppGrant::Docker { .. } => to_me || from_me,
                        AppGrant::S3 { .. } => from_me || serves_s3,
                        AppGrant::Nfs { .. } => from_me || serves_nfs,
                        AppGrant::Admin => false,
                    })
                    .cloned()
                    .collect();
                let r = Rule { app, ..r.clone() };
                (!r.ip.is_empty() || !r.app.is_empty()).then_some(r)
            })
            .collect();
        Artifact {
            rules,
            tokens: BTreeMap::new(),
            scope: Some(node.clone()),
            ..self.clone()
        }
    }
}
