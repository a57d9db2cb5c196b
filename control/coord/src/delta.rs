//! Netmap deltas (issue 17's scale): a member that long-polls with the delta token (`delta.token`) of the
//! last netmap it holds (`GET /v1/netmap?since=V&base=T`) receives only the peers and policy
//! inventory entries that changed since, and resolves them into the full netmap
//! ([`apply_delta`]) before anything else sees it.
//!
//! The coordinator numbers the netmaps it serves in generations (a new one whenever the state
//! epoch or the compiled policy changed since the last one served) and remembers, for the last
//! [`HISTORY`] generations, which peer names and which node keys of the policy projection
//! differ from the generation before (found by comparing the contents, not by tracking
//! writes, so anything that changes a served netmap is in some step). A delta from generation
//! `b` carries every entry named by the steps after `b` as it is now (or as removed) plus the
//! netmap's small fields in full, so applying it to what generation `b` served gives exactly
//! what the current generation serves. A token of another coordinator or of an earlier run
//! (the instance differs), or older than the history, gets a full netmap.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tm_policy::{Artifact, NodeKey};

use crate::wire::{DeltaInfo, Netmap, NetmapPeer};

/// Generations whose changes are remembered (members further behind get a full netmap).
pub(crate) const HISTORY: usize = 64;

/// What differs between one generation and the one before; `None`: more than half of the
/// entries (a delta spanning it would not be smaller than a full netmap).
struct Step {
    seq: u64,
    peers: Option<Vec<String>>,
    keys: Option<Vec<NodeKey>>,
}

/// One generation of served netmaps.
pub(crate) struct Generation {
    /// Its number (in the delta token (`delta.token`)).
    pub(crate) seq: u64,
    /// The state epoch it was made at.
    pub(crate) epoch: u64,
    /// The compiled policy it was made from (its projections are served from this one).
    pub(crate) art: Arc<Artifact>,
    /// The full netmap without `policy`, peers sorted by name.
    pub(crate) netmap: Netmap,
    /// The full netmap's JSON without its closing brace.
    pub(crate) open: Arc<Vec<u8>>,
    /// The policy projection's JSON when it is the same for every node (no policy file).
    pub(crate) shared_policy: Option<Arc<Vec<u8>>>,
}

/// A delta from one base generation to the current one, shared by every member at that base.
pub(crate) struct Delta {
    /// The delta's JSON without `policy` and without its closing brace.
    pub(crate) open: Arc<Vec<u8>>,
    /// Policy inventory entries that changed (present now).
    nodes: Vec<NodeKey>,
    /// The policy part when it is the same for every node.
    pub(crate) shared_policy: Option<Arc<Vec<u8>>>,
}

impl Delta {
    /// The policy part for node `me`: its projection (rules) of `art` with only the changed
    /// inventory entries.
    pub(crate) fn policy_for(&self, art: &Artifact, me: &NodeKey) -> Artifact {
        project_part(art, me, &self.nodes)
    }
}

/// The netmap generations of one coordinator process.
pub(crate) struct Feed {
    /// Random per process: tokens of another coordinator or an earlier run never match.
    instance: u64,
    current: Option<Arc<Generation>>,
    history: VecDeque<Step>,
    /// Deltas to the current generation, by base generation.
    deltas: HashMap<u64, Arc<Delta>>,
}

impl Feed {
    pub(crate) fn new(instance: u64) -> Feed {
        Feed {
            instance,
            current: None,
            history: VecDeque::new(),
            deltas: HashMap::new(),
        }
    }

    /// The current generation if it was made at `epoch` from `art`.
    pub(crate) fn current(&self, epoch: u64, art: &Arc<Artifact>) -> Option<Arc<Generation>> {
        self.current
            .as_ref()
            .filter(|g| g.epoch == epoch && Arc::ptr_eq(&g.art, art))
            .cloned()
    }

    /// Makes a new current generation from `netmap` (without `policy`) and `art`, remembering
    /// what changed since the previous one.
    pub(crate) fn advance(
        &mut self,
        epoch: u64,
        art: Arc<Artifact>,
        mut netmap: Netmap,
    ) -> Arc<Generation> {
        netmap.peers.sort_by(|a, b| a.name.cmp(&b.name));
        netmap.policy = None;
        let seq = self.current.as_ref().map_or(1, |g| g.seq + 1);
        netmap.delta = Some(Box::new(DeltaInfo {
            token: format!("{:016x}-{seq}", self.instance),
            from: None,
            removed: Vec::new(),
            policy_changed: Vec::new(),
        }));
        if let Some(prev) = &self.current {
            let peers = diff_peers(&prev.netmap.peers, &netmap.peers);
            let keys = diff_keys(&prev.art, &art);
            let half = |n: usize| n.max(1).div_ceil(2);
            self.history.push_back(Step {
                seq,
                peers: (peers.len() <= half(netmap.peers.len())).then_some(peers),
                keys: (keys.len() <= half(art.nodes.len())).then_some(keys),
            });
            while self.history.len() > HISTORY {
                self.history.pop_front();
            }
        }
        let mut open = crate::server::json(&netmap);
        open.pop(); // the closing brace
        let shared_policy = (!art.has_policy).then(|| {
            let mut p = art.project(&NodeKey(String::new()));
            p.scope = None;
            Arc::new(crate::server::json(&p))
        });
        let g = Arc::new(Generation {
            seq,
            epoch,
            art,
            netmap,
            open: Arc::new(open),
            shared_policy,
        });
        self.current = Some(g.clone());
        self.deltas.clear();
        g
    }

    /// The delta from the generation named by `token` to the current one, if this feed can
    /// make it (same instance, within the history, not too large).
    pub(crate) fn delta(&mut self, token: &str) -> Option<Arc<Delta>> {
        let cur = self.current.clone()?;
        let (inst, seq) = token.split_once('-')?;
        if u64::from_str_radix(inst, 16).ok()? != self.instance {
            return None;
        }
        let base: u64 = seq.parse().ok()?;
        if base > cur.seq {
            return None;
        }
        if let Some(d) = self.deltas.get(&base) {
            return Some(d.clone());
        }
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        if base < cur.seq {
            // Every step after `base` must still be remembered.
            let first = self.history.front()?.seq;
            if first > base + 1 {
                return None;
            }
            for s in self.history.iter().filter(|s| s.seq > base) {
                names.extend(s.peers.as_ref()?.iter().cloned());
                keys.extend(s.keys.as_ref()?.iter().cloned());
            }
        }
        if names.len() > cur.netmap.peers.len().max(1).div_ceil(2) {
            return None;
        }
        let peers = &cur.netmap.peers;
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for n in names {
            match peers.binary_search_by(|p| p.name.as_str().cmp(&n)) {
                Ok(i) => changed.push(peers[i].clone()),
                Err(_) => removed.push(n),
            }
        }
        let d = Netmap {
            version: cur.netmap.version,
            peers: changed,
            dns: cur.netmap.dns.clone(),
            vv: cur.netmap.vv.clone(),
            policy_hash: cur.netmap.policy_hash.clone(),
            policy: None,
            delta: Some(Box::new(DeltaInfo {
                token: cur.netmap.delta_token().unwrap_or_default().to_owned(),
                from: Some(token.to_owned()),
                removed,
                policy_changed: keys.iter().cloned().collect(),
            })),
        };
        let mut open = crate::server::json(&d);
        open.pop();
        let nodes: Vec<NodeKey> = keys.into_iter().collect();
        let shared_policy = (!cur.art.has_policy).then(|| {
            let mut p = project_part(&cur.art, &NodeKey(String::new()), &nodes);
            p.scope = None;
            Arc::new(crate::server::json(&p))
        });
        let d = Arc::new(Delta {
            open: Arc::new(open),
            nodes,
            shared_policy,
        });
        self.deltas.insert(base, d.clone());
        Some(d)
    }
}

/// Names of the peers that differ between two name-sorted lists (added, changed, removed).
fn diff_peers(old: &[NetmapPeer], new: &[NetmapPeer]) -> Vec<String> {
    let a: BTreeMap<&str, &NetmapPeer> = old.iter().map(|p| (p.name.as_str(), p)).collect();
    let b: BTreeMap<&str, &NetmapPeer> = new.iter().map(|p| (p.name.as_str(), p)).collect();
    diff_maps(&a, &b)
        .into_iter()
        .map(|s| s.to_owned())
        .collect()
}

/// Node keys whose inventory entry (`nodes` or `services`) differs between two artifacts.
fn diff_keys(old: &Artifact, new: &Artifact) -> Vec<NodeKey> {
    let mut k: BTreeSet<NodeKey> = diff_maps(&old.nodes, &new.nodes).into_iter().collect();
    k.extend(diff_maps(&old.services, &new.services));
    k.into_iter().collect()
}

fn diff_maps<K: Ord + Clone, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> Vec<K> {
    let mut out: Vec<K> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    out
}

/// `art.project(me)` with only the inventory entries (`nodes`, `services`) of `keys`, without
/// copying the whole inventory.
fn project_part(art: &Artifact, me: &NodeKey, keys: &[NodeKey]) -> Artifact {
    let mini = Artifact {
        format: art.format,
        has_policy: art.has_policy,
        default: art.default,
        nodes: art
            .nodes
            .get(me)
            .map(|n| (me.clone(), n.clone()))
            .into_iter()
            .collect(),
        tokens: BTreeMap::new(),
        rules: art.rules.clone(),
        tag_owners: art.tag_owners.clone(),
        scope: art.scope.clone(),
        services: art
            .services
            .get(me)
            .map(|s| (me.clone(), s.clone()))
            .into_iter()
            .collect(),
    };
    let mut p = mini.project(me);
    p.nodes = keys
        .iter()
        .filter_map(|k| art.nodes.get(k).map(|n| (k.clone(), n.clone())))
        .collect();
    p.services = keys
        .iter()
        .filter_map(|k| art.services.get(k).map(|s| (k.clone(), s.clone())))
        .collect();
    p
}

/// Applies a delta answer `d` to the full netmap `base` the member holds (the one whose
/// delta token (`delta.token`) the delta names), in place: `base` becomes the full netmap the coordinator
/// would have sent. Returns false, leaving `base` as it was, if `d` does not apply to it (the
/// member then asks for a full netmap). A full answer (no `delta.from`) replaces `base`.
pub fn apply_delta(base: &mut Netmap, mut d: Netmap) -> bool {
    let Some(info) = d.delta.take_if(|i| i.from.is_some()) else {
        *base = d;
        return true;
    };
    if base.delta_token() != info.from.as_deref()
        || (d.policy.is_some() && base.policy.is_none())
        || !base.peers.windows(2).all(|w| w[0].name < w[1].name)
    {
        return false;
    }
    let find = |peers: &[NetmapPeer], n: &str| peers.binary_search_by(|p| p.name.as_str().cmp(n));
    for n in &info.removed {
        if let Ok(i) = find(&base.peers, n) {
            base.peers.remove(i);
        }
    }
    for p in d.peers {
        match find(&base.peers, &p.name) {
            Ok(i) => base.peers[i] = p,
            Err(i) => base.peers.insert(i, p),
        }
    }
    base.policy = match (base.policy.take(), d.policy) {
        (Some(mut b), Some(mut p)) => {
            for k in &info.policy_changed {
                b.nodes.remove(k);
                b.services.remove(k);
            }
            b.nodes.append(&mut p.nodes);
            b.services.append(&mut p.services);
            p.nodes = std::mem::take(&mut b.nodes);
            p.services = std::mem::take(&mut b.services);
            Some(p)
        }
        _ => None,
    };
    base.version = d.version;
    base.dns = d.dns;
    base.vv = d.vv;
    base.policy_hash = d.policy_hash;
    base.delta = Some(Box::new(DeltaInfo {
        token: info.token,
        from: None,
        removed: Vec::new(),
        policy_changed: Vec::new(),
    }));
    true
}
