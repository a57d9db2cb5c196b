//! The coordinator state as replicated records (issue 17): every entity is one or more
//! per-key last-writer-wins records of `tm_cluster`, so that coordinators without a leader
//! merge each other's changes. Keys (node keys in hex, so that keys split on `/`):
//!
//! - `mesh` -> the mesh prefix (written by the first coordinator);
//! - `node/<key>` -> a node's identity: name, key, mesh address, role, certificate
//!   fingerprint, S3 credentials (rewritten only when it registers again, so its stamp is the
//!   registration's: what the name/address conflict rule orders by);
//! - `ep/<key>` -> its endpoints (declared and observed; changes often, so kept apart);
//! - `tag/<key>/<tag>` -> `true` (one record per tag: concurrent tagging on two
//!   coordinators keeps both tags);
//! - `svc/<key>` -> the services a node runs for others (`["docker"]`; absent: none);
//! - `token/<id>` -> a join token record (secret hashed);
//! - `policy` -> the policy file;
//! - `bucket/<name>`, `share/<name>` -> a bucket's and a file share's settings
//!   (`storage_records.rs`; existence and settings only, not objects);
//! - `audit/<origin>/<time>-<random>` -> one audit entry (written once, never changed; not
//!   part of the derived state: read by [`crate::Coordinator::audit_log`]);
//!   `audit/conflict/<key>/<hash>` -> the entry of a resolved name/address conflict (the same
//!   key on every coordinator that resolves it, so it is recorded once).
//!
//! [`records_of`] and [`materialize`] convert both ways; materializing applies the
//! deterministic conflict rule of `tm_cluster::conflict`, so every coordinator derives the
//! same nodes (unique names and addresses) from the same records.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tm_cluster::{Registration, Store};
use tm_noise::PublicKey;

use crate::server::{NodeRecord, PersistedState, STATE_FORMAT};
use crate::storage_records::{BUCKET_PREFIX, SHARE_PREFIX};
use crate::wire::b64_key;
use crate::{Error, MeshCidr};

/// The identity part of a node record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NodeCore {
    name: String,
    #[serde(with = "b64_key")]
    public_key: PublicKey,
    mesh_ip: Ipv4Addr,
    is_coordinator: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert_sha256: Option<String>,
    s3_access_key: String,
    s3_secret: String,
    /// For coordinators: the API address other coordinators dial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api: Option<String>,
}

/// The endpoints of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NodeEndpoints {
    endpoints: Vec<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    observed: Option<SocketAddr>,
}

/// A node key as it appears in record keys.
pub(crate) fn key_hex(k: &PublicKey) -> String {
    crate::wire::hex(&k.0)
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("state types serialize")
}

/// Every record `s` consists of (live values only).
pub(crate) fn records_of(s: &PersistedState) -> BTreeMap<String, Value> {
    let mut out = state_records(s);
    for n in s.nodes.values() {
        node_records(n, &mut out);
    }
    out
}

/// The records of `s` that are not a node's.
fn state_records(s: &PersistedState) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    out.insert("mesh".to_owned(), Value::String(s.mesh_cidr.to_string()));
    for (id, t) in &s.tokens {
        out.insert(format!("token/{id}"), to_value(t));
    }
    if let Some(p) = &s.policy {
        out.insert("policy".to_owned(), to_value(p));
    }
    for (name, b) in &s.buckets {
        out.insert(format!("{BUCKET_PREFIX}{name}"), to_value(b));
    }
    for (name, sh) in &s.shares {
        out.insert(format!("{SHARE_PREFIX}{name}"), to_value(sh));
    }
    out
}

/// The live records under `prefix`, by the rest of their key (malformed ones skipped).
fn live_map<T: serde::de::DeserializeOwned>(store: &Store, prefix: &str) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    for r in store.live_with_prefix(prefix) {
        match serde_json::from_value(r.value.clone().expect("live")) {
            Ok(v) => {
                out.insert(r.key[prefix.len()..].to_owned(), v);
            }
            Err(e) => tracing::warn!(key = %r.key, "skipping a malformed record: {e}"),
        }
    }
    out
}

/// The records of node `n`, into `out`.
fn node_records(n: &NodeRecord, out: &mut BTreeMap<String, Value>) {
    let k = key_hex(&n.public_key);
    out.insert(
        format!("node/{k}"),
        to_value(&NodeCore {
            name: n.name.clone(),
            public_key: n.public_key,
            mesh_ip: n.mesh_ip,
            is_coordinator: n.is_coordinator,
            cert_sha256: n.cert_sha256.clone(),
            s3_access_key: n.s3_access_key.clone(),
            s3_secret: n.s3_secret.clone(),
            api: n.api.clone(),
        }),
    );
    out.insert(
        format!("ep/{k}"),
        to_value(&NodeEndpoints {
            endpoints: n.endpoints.clone(),
            observed: n.observed,
        }),
    );
    for t in &n.tags {
        out.insert(format!("tag/{k}/{t}"), Value::Bool(true));
    }
    if !n.services.is_empty() {
        out.insert(format!("svc/{k}"), to_value(&n.services));
    }
}

/// The writes that turn `cur` into `next`: `diff(&records_of(cur), &records_of(next))`, made
/// only from the nodes that differ (a join or a tag costs the records of one node, not of
/// every node; node keys are unique in a state, so the other nodes' records are equal).
pub(crate) fn changes(cur: &PersistedState, next: &PersistedState) -> Vec<(String, Option<Value>)> {
    let mut a = state_records(cur);
    let mut b = state_records(next);
    for (name, n) in &cur.nodes {
        if next.nodes.get(name) != Some(n) {
            node_records(n, &mut a);
            if let Some(m) = next.nodes.get(name) {
                node_records(m, &mut b);
            }
        }
    }
    for (name, m) in &next.nodes {
        if !cur.nodes.contains_key(name) {
            node_records(m, &mut b);
        }
    }
    diff(&a, &b)
}

/// The writes that turn `cur` into `next` (`None`: delete).
pub(crate) fn diff(
    cur: &BTreeMap<String, Value>,
    next: &BTreeMap<String, Value>,
) -> Vec<(String, Option<Value>)> {
    let mut w = Vec::new();
    for (k, v) in next {
        if cur.get(k) != Some(v) {
            w.push((k.clone(), Some(v.clone())));
        }
    }
    for k in cur.keys() {
        if !next.contains_key(k) {
            w.push((k.clone(), None));
        }
    }
    w
}

/// A name or address conflict the rule resolved (for the audit log and the logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conflict {
    pub(crate) key: String,
    pub(crate) detail: String,
}

/// The state the records of `store` describe, with `version`. Malformed records (which no
/// coordinator writes) are skipped with a warning rather than stopping the coordinator.
pub(crate) fn materialize(
    store: &Store,
    version: u64,
) -> Result<(PersistedState, Vec<Conflict>), Error> {
    let cidr = match store.value("mesh").and_then(Value::as_str) {
        Some(t) => MeshCidr::parse(t)?,
        None => {
            return Err(Error::State(
                "the replicated state has no mesh prefix".into(),
            ))
        }
    };
    let mut cores: BTreeMap<String, (NodeCore, tm_cluster::Stamp)> = BTreeMap::new();
    for r in store.live_with_prefix("node/") {
        let k = &r.key["node/".len()..];
        match serde_json::from_value::<NodeCore>(r.value.clone().expect("live")) {
            Ok(c) => {
                cores.insert(k.to_owned(), (c, r.stamp));
            }
            Err(e) => tracing::warn!(key = %r.key, "skipping a malformed node record: {e}"),
        }
    }
    let regs: Vec<Registration> = cores
        .iter()
        .map(|(k, (c, stamp))| Registration {
            key: k.clone(),
            name: c.name.clone(),
            addr: c.mesh_ip,
            registered: *stamp,
        })
        .collect();
    let range = tm_cluster::Range {
        base: cidr.network(),
        len: cidr.prefix_len(),
    };
    let mut nodes = BTreeMap::new();
    let mut conflicts = Vec::new();
    for res in tm_cluster::resolve(&regs, range) {
        let (core, _) = &cores[&res.key];
        let ep = store
            .value(&format!("ep/{}", res.key))
            .and_then(|v| serde_json::from_value::<NodeEndpoints>(v.clone()).ok())
            .unwrap_or(NodeEndpoints {
                endpoints: Vec::new(),
                observed: None,
            });
        let tag_prefix = format!("tag/{}/", res.key);
        let tags: Vec<String> = store
            .live_with_prefix(&tag_prefix)
            .map(|r| r.key[tag_prefix.len()..].to_owned())
            .collect();
        if let Some(old) = &res.renamed_from {
            conflicts.push(Conflict {
                key: res.key.clone(),
                detail: format!(
                    "name {old:?} was registered earlier by another node; this one is {:?}",
                    res.name
                ),
            });
        }
        if let Some(old) = res.readdressed_from {
            conflicts.push(Conflict {
                key: res.key.clone(),
                detail: format!(
                    "address {old} was given earlier to another node; this one has {}",
                    res.addr
                ),
            });
        }
        nodes.insert(
            res.name.clone(),
            NodeRecord {
                name: res.name,
                public_key: core.public_key,
                mesh_ip: res.addr,
                endpoints: ep.endpoints,
                is_coordinator: core.is_coordinator,
                cert_sha256: core.cert_sha256.clone(),
                s3_access_key: core.s3_access_key.clone(),
                s3_secret: core.s3_secret.clone(),
                observed: ep.observed,
                tags,
                api: core.api.clone(),
                services: store
                    .value(&format!("svc/{}", res.key))
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default(),
            },
        );
    }
    let mut tokens = BTreeMap::new();
    for r in store.live_with_prefix("token/") {
        match serde_json::from_value(r.value.clone().expect("live")) {
            Ok(t) => {
                tokens.insert(r.key["token/".len()..].to_owned(), t);
            }
            Err(e) => tracing::warn!(key = %r.key, "skipping a malformed token record: {e}"),
        }
    }
    let policy = match store.value("policy") {
        Some(v) => serde_json::from_value(v.clone()).ok(),
        None => None,
    };
    Ok((
        PersistedState {
            format: STATE_FORMAT,
            version,
            mesh_cidr: cidr,
            nodes,
            tokens,
            policy,
            buckets: live_map(store, BUCKET_PREFIX),
            shares: live_map(store, SHARE_PREFIX),
        },
        conflicts,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand_core::{OsRng, RngCore};
    use tm_noise::PrivateKey;

    use super::*;
    use crate::{Coordinator, CoordinatorConfig, MemStore};

    /// `changes` (made from the nodes that differ) writes exactly what the diff of every
    /// record writes, for each kind of change a commit makes.
    #[test]
    fn changes_equal_the_diff_of_all_records() {
        let mut r = [0u8; 8];
        OsRng.fill_bytes(&mut r);
        let dir = std::env::temp_dir().join(format!("tm-coord-records-{}", u64::from_le_bytes(r)));
        let c = Coordinator::open(
            &dir,
            CoordinatorConfig::new("hub"),
            PrivateKey::generate(&mut OsRng),
            Arc::new(MemStore::new()),
        )
        .expect("open");
        let base = c.lock().state.clone();
        let hub = base.nodes.values().next().expect("the hub").clone();
        let node = |name: &str, last: u8| {
            let mut n = hub.clone();
            n.name = name.to_owned();
            n.public_key.0[31] = last;
            n.mesh_ip = Ipv4Addr::new(100, 64, 0, last);
            n.is_coordinator = false;
            n.api = None;
            n
        };
        let mut s0 = base.clone();
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            s0.nodes.insert((*name).to_owned(), node(name, i as u8 + 1));
        }
        type Edit<'a> = Box<dyn Fn(&mut PersistedState) + 'a>;
        let edits: Vec<(&str, Edit)> = vec![
            (
                "join",
                Box::new(|s| {
                    s.nodes.insert("e".into(), node("e", 9));
                }),
            ),
            (
                "leave",
                Box::new(|s| {
                    s.nodes.remove("b");
                }),
            ),
            (
                "tag",
                Box::new(|s| {
                    s.nodes.get_mut("c").expect("c").tags.push("tag:x".into());
                }),
            ),
            (
                "endpoints",
                Box::new(|s| {
                    s.nodes.get_mut("a").expect("a").endpoints =
                        vec!["192.0.2.1:1".parse().expect("ep")];
                }),
            ),
            (
                "services",
                Box::new(|s| {
                    s.nodes.get_mut("d").expect("d").services = vec!["docker".into()];
                }),
            ),
            (
                "rename",
                Box::new(|s| {
                    let mut n = s.nodes.remove("d").expect("d");
                    n.name = "d2".into();
                    s.nodes.insert("d2".into(), n);
                }),
            ),
            (
                "no node",
                Box::new(|s| {
                    s.version += 1;
                }),
            ),
        ];
        for (what, edit) in &edits {
            let mut next = s0.clone();
            edit(&mut next);
            let mut want = diff(&records_of(&s0), &records_of(&next));
            let mut got = changes(&s0, &next);
            want.sort_by(|x, y| x.0.cmp(&y.0));
            got.sort_by(|x, y| x.0.cmp(&y.0));
            assert_eq!(got, want, "{what}");
            assert_eq!(got.is_empty(), *what == "no node", "{what}");
        }
        // Everything at once, including the first nodes of a state.
        let mut all = s0.clone();
        for (_, e) in &edits {
            e(&mut all);
        }
        let mut want = diff(&records_of(&base), &records_of(&all));
        let mut got = changes(&base, &all);
        want.sort_by(|x, y| x.0.cmp(&y.0));
        got.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(got, want);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
