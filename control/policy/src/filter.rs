//! The `ip` part compiled for the dataplane packet filter (issue 16): for one destination node,
//! every source peer maps to a policy class (one per distinct set of allowed ports, so the table
//! grows with tag/group combinations, not with peers); a class holds, per protocol, sorted
//! disjoint port ranges looked up by binary search.
//!
//! The table answers exactly what [`crate::decide()`] answers for `Request::Ip` (a test checks
//! this on every port boundary), so `filter test` and the dataplane cannot disagree.

use crate::caps::AppGrant;
use crate::compile::Artifact;
use crate::decide::{decide, Decision, Request, Target};
use crate::identity::{Identity, NodeKey, ServiceNeed, ServicePort};
use crate::model::{DefaultAction, Effect};
use crate::selector::SourceRef;
use crate::selector::{
    echo_request, has_ports, rule_port, Cidr, IpSpec, PortRange, ProtoSel, SelectorSet, ALL_PORTS,
    ICMP, ICMP6,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Allowed ports of one protocol: sorted, disjoint, non-adjacent ranges.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProtoRanges {
    /// IP protocol number.
    pub proto: u8,
    /// Allowed ports (protocols without ports: `[0-65535]` when allowed).
    pub ranges: Vec<PortRange>,
}

/// What one class of sources may reach on the node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyClass {
    /// Protocols named by some rule, sorted by number.
    pub by_proto: Vec<ProtoRanges>,
    /// Whether every protocol not in `by_proto` is allowed (from `*` entries).
    pub other_protos: bool,
    /// Ports an explicit deny rule covers, per protocol of `by_proto` (so the dataplane can
    /// tell "denied" from "no rule"; never overlaps the allowed ranges).
    #[serde(default)]
    pub denied: Vec<ProtoRanges>,
    /// Whether a deny rule covers every protocol not in `by_proto`.
    #[serde(default)]
    pub other_denied: bool,
}

impl PolicyClass {
    /// Whether a packet of `proto` to `port` passes (`port`: see [`rule_port`]; the ICMP
    /// message type).
    pub fn allows(&self, proto: u8, port: u16) -> bool {
        match self.by_proto.binary_search_by_key(&proto, |p| p.proto) {
            Ok(i) => {
                let port = rule_port(proto, port);
                let r = &self.by_proto[i].ranges;
                // The last range starting at or before `port`.
                let j = r.partition_point(|x| x.first <= port);
                j > 0 && r[j - 1].last >= port
            }
            Err(_) => self.other_protos,
        }
    }

    fn is_empty(&self) -> bool {
        !self.other_protos && self.by_proto.iter().all(|p| p.ranges.is_empty())
    }
}

/// The filter of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterTable {
    /// The node this table protects.
    pub node: NodeKey,
    /// Distinct classes; indices are class ids.
    pub classes: Vec<PolicyClass>,
    /// Inbound from mesh peers: source node -> class. A peer not listed may send nothing.
    pub peers: BTreeMap<NodeKey, u32>,
    /// Inbound from non-node addresses: longest prefix first; the first containing prefix
    /// decides.
    pub addrs: Vec<(Cidr, u32)>,
    /// Outbound: peers this node may exchange anything with, in either direction (it may open
    /// flows to them, or they to it and it answers). Send nothing to other peers.
    pub reachable: BTreeSet<NodeKey>,
}

impl FilterTable {
    /// Whether a packet from mesh peer `src` passes.
    pub fn allows_peer(&self, src: &NodeKey, proto: u8, port: u16) -> bool {
        self.peers
            .get(src)
            .is_some_and(|c| self.classes[*c as usize].allows(proto, port))
    }

    /// Whether a packet from a non-node address passes.
    pub fn allows_addr(&self, src: &IpAddr, proto: u8, port: u16) -> bool {
        self.addrs
            .iter()
            .find(|(c, _)| c.contains(src))
            .is_some_and(|(_, c)| self.classes[*c as usize].allows(proto, port))
    }
}

/// Sorts and merges overlapping or adjacent ranges.
pub fn normalize(mut v: Vec<PortRange>) -> Vec<PortRange> {
    v.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(l) if u32::from(r.first) <= u32::from(l.last) + 1 => l.last = l.last.max(r.last),
            _ => out.push(r),
        }
    }
    out
}

/// `a` minus `b`; both normalized.
pub fn subtract(a: &[PortRange], b: &[PortRange]) -> Vec<PortRange> {
    let mut out = Vec::new();
    for r in a {
        let mut cur = Some((u32::from(r.first), u32::from(r.last)));
        for d in b {
            let Some((f, l)) = cur else { break };
            let (df, dl) = (u32::from(d.first), u32::from(d.last));
            if dl < f || df > l {
                continue;
            }
            if df > f {
                out.push(PortRange {
                    first: f as u16,
                    last: (df - 1) as u16,
                });
            }
            cur = if dl < l { Some((dl + 1, l)) } else { None };
        }
        if let Some((f, l)) = cur {
            out.push(PortRange {
                first: f as u16,
                last: l as u16,
            });
        }
    }
    out
}

fn spec_ranges(specs: &[&IpSpec], proto: Option<u8>) -> Vec<PortRange> {
    let mut v = Vec::new();
    for s in specs {
        match (s.proto, proto) {
            (ProtoSel::Any, _) => v.extend(s.ports.iter().copied()),
            (ProtoSel::Proto(p), Some(q)) if p == q => {
                if has_ports(p) {
                    v.extend(s.ports.iter().copied())
                } else {
                    v.push(ALL_PORTS)
                }
            }
            _ => {}
        }
    }
    normalize(v)
}

/// The class from allow specs, deny specs and whether the default allows everything.
///
/// ICMP echo follows the rules of the destination: when any allow spec applies (the source
/// may reach some port of it), the echo-request type is allowed too, unless a deny spec
/// covers it ([`echo_request`]; `decide` applies the same rule).
fn class(allow: &[&IpSpec], deny: &[&IpSpec], default_all: bool) -> PolicyClass {
    let echo = !default_all && !allow.is_empty();
    let mut protos: BTreeSet<u8> = allow
        .iter()
        .chain(deny)
        .filter_map(|s| match s.proto {
            ProtoSel::Proto(p) => Some(p),
            ProtoSel::Any => None,
        })
        .collect();
    if echo {
        protos.extend([ICMP, ICMP6]);
    }
    let range = |p: Option<u8>| {
        let mut a = if default_all {
            vec![ALL_PORTS]
        } else {
            spec_ranges(allow, p)
        };
        if let Some(t) = p.and_then(echo_request).filter(|_| echo) {
            a = normalize([a, vec![PortRange { first: t, last: t }]].concat());
        }
        subtract(&a, &spec_ranges(deny, p))
    };
    let by_proto = protos
        .iter()
        .map(|p| ProtoRanges {
            proto: *p,
            ranges: range(Some(*p)),
        })
        .collect();
    let denied = protos
        .iter()
        .map(|p| ProtoRanges {
            proto: *p,
            ranges: spec_ranges(deny, Some(*p)),
        })
        .filter(|p| !p.ranges.is_empty())
        .collect();
    let other_protos = range(None) == vec![ALL_PORTS];
    PolicyClass {
        by_proto,
        other_protos,
        denied,
        other_denied: spec_ranges(deny, None) == vec![ALL_PORTS],
    }
}

struct Builder {
    classes: Vec<PolicyClass>,
    index: BTreeMap<PolicyClass, u32>,
}

impl Builder {
    fn id(&mut self, c: PolicyClass) -> u32 {
        if let Some(i) = self.index.get(&c) {
            return *i;
        }
        let i = self.classes.len() as u32;
        self.classes.push(c.clone());
        self.index.insert(c, i);
        i
    }
}

/// Which rules select each node as source and as destination, interned: nodes with the same
/// tags/groups/addresses-in-rules share a signature, and a class is computed once per
/// (source signature, destination signature) pair. Building every node's table is then
/// O(nodes x rules) to match plus O(nodes^2) lookups, not O(nodes^2 x rules).
struct Plan<'a> {
    art: &'a Artifact,
    keys: Vec<&'a NodeKey>,
    src_of: Vec<usize>,
    dst_of: Vec<usize>,
    src_sets: Vec<Vec<usize>>,
    /// Rules selecting the destination, and the service ports it serves.
    dst_sets: Vec<(Vec<usize>, Vec<ServicePort>)>,
    /// (src sig, dst sig) -> class (None: nothing allowed).
    cache: BTreeMap<(usize, usize), Option<PolicyClass>>,
}

fn intern<T: Ord + Clone>(v: T, sets: &mut Vec<T>, index: &mut BTreeMap<T, usize>) -> usize {
    if let Some(i) = index.get(&v) {
        return *i;
    }
    sets.push(v.clone());
    index.insert(v, sets.len() - 1);
    sets.len() - 1
}

impl<'a> Plan<'a> {
    fn new(art: &'a Artifact) -> Self {
        let keys: Vec<&NodeKey> = art.nodes.keys().collect();
        let infos: Vec<_> = art.nodes.values().collect();
        let by_name: BTreeMap<&str, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut by_tag: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, n) in infos.iter().enumerate() {
            for t in &n.tags {
                by_tag.entry(t.as_str()).or_default().push(i);
            }
        }
        // Per node, the rules selecting it, in rule order: found from each rule's selectors
        // through the indexes (cost: the selected nodes, not nodes x rules).
        let add = |lists: &mut Vec<Vec<usize>>, set: &SelectorSet, rule: usize| {
            let mut push = |n: usize| {
                if lists[n].last() != Some(&rule) {
                    lists[n].push(rule);
                }
            };
            if set.all || set.member {
                (0..infos.len()).for_each(&mut push);
                return;
            }
            for n in &set.nodes {
                if let Some(i) = by_name.get(n.as_str()) {
                    push(*i);
                }
            }
            for t in &set.tags {
                for i in by_tag.get(t.as_str()).into_iter().flatten() {
                    push(*i);
                }
            }
            if !set.cidrs.is_empty() {
                for (i, n) in infos.iter().enumerate() {
                    if n.addrs
                        .iter()
                        .any(|a| set.cidrs.iter().any(|c| c.contains(a)))
                    {
                        push(i);
                    }
                }
            }
        };
        let mut src_lists: Vec<Vec<usize>> = vec![Vec::new(); keys.len()];
        let mut dst_lists: Vec<Vec<usize>> = vec![Vec::new(); keys.len()];
        for (i, r) in art.rules.iter().enumerate() {
            if !r.ip.is_empty() {
                add(&mut src_lists, &r.src, i);
                add(&mut dst_lists, &r.dst, i);
            } else if r.effect == Effect::Allow && r.app.iter().any(|a| opens(a).is_some()) {
                // S3/NFS grants open coordinator service ports to their sources; Docker grants
                // the agent port of the nodes their dst selects.
                add(&mut src_lists, &r.src, i);
                if r.app.iter().any(|a| opens(a) == Some(ServiceNeed::Docker)) {
                    add(&mut dst_lists, &r.dst, i);
                }
            }
        }
        let (mut src_sets, mut dst_sets) = (Vec::new(), Vec::new());
        let (mut src_index, mut dst_index) = (BTreeMap::new(), BTreeMap::new());
        let src_of = src_lists
            .into_iter()
            .map(|l| intern(l, &mut src_sets, &mut src_index))
            .collect();
        let dst_of = dst_lists
            .into_iter()
            .zip(&keys)
            .map(|(l, k)| {
                let svc = art.services.get(*k).cloned().unwrap_or_default();
                intern((l, svc), &mut dst_sets, &mut dst_index)
            })
            .collect();
        Plan {
            art,
            keys,
            src_of,
            dst_of,
            src_sets,
            dst_sets,
            cache: BTreeMap::new(),
        }
    }

    /// The class for packets from node index `s` to node index `d`.
    fn class(&mut self, s: usize, d: usize) -> Option<PolicyClass> {
        let key = (self.src_of[s], self.dst_of[d]);
        if let Some(c) = self.cache.get(&key) {
            return c.clone();
        }
        let (mut allow, mut deny) = (Vec::new(), Vec::new());
        // Both lists are sorted by rule index: merge to intersect.
        let (a, (b, services)) = (&self.src_sets[key.0], &self.dst_sets[key.1]);
        let (mut x, mut y) = (0, 0);
        // A Docker grant from this source to this node (opens the node's agent port).
        let mut docker = false;
        while x < a.len() && y < b.len() {
            if a[x] != b[y] {
                if a[x] < b[y] {
                    x += 1;
                } else {
                    y += 1;
                }
                continue;
            }
            let r = &self.art.rules[a[x]];
            x += 1;
            y += 1;
            if r.effect == Effect::Allow
                && r.app.iter().any(|e| opens(e) == Some(ServiceNeed::Docker))
            {
                docker = true;
            }
            if r.ip.is_empty() {
                continue;
            }
            let into = if r.effect == Effect::Allow {
                &mut allow
            } else {
                &mut deny
            };
            into.extend(r.ip.iter());
        }
        // Service ports the source's capabilities open (after deny rules, as in `decide`).
        let default_allow = self.art.default == DefaultAction::Allow;
        let holds = |need: ServiceNeed| {
            need == ServiceNeed::Member
                || default_allow
                || (need == ServiceNeed::Docker && docker)
                || need != ServiceNeed::Docker
                    && a.iter().any(|i| {
                        let r = &self.art.rules[*i];
                        r.effect == Effect::Allow && r.app.iter().any(|e| opens(e) == Some(need))
                    })
        };
        let svc: Vec<IpSpec> = services
            .iter()
            .filter(|p| holds(p.needs))
            .map(|p| IpSpec {
                proto: ProtoSel::Proto(p.proto),
                ports: vec![PortRange {
                    first: p.port,
                    last: p.port,
                }],
                at: SourceRef {
                    file: String::new(),
                    line: 0,
                },
            })
            .collect();
        allow.extend(svc.iter());
        let c = class(&allow, &deny, default_allow);
        let c = (!c.is_empty()).then_some(c);
        self.cache.insert(key, c.clone());
        c
    }

    fn table(&mut self, d: usize) -> FilterTable {
        let mut b = Builder {
            classes: Vec::new(),
            index: BTreeMap::new(),
        };
        let mut peers = BTreeMap::new();
        let mut reachable = BTreeSet::new();
        for s in 0..self.keys.len() {
            if s == d {
                continue;
            }
            if let Some(c) = self.class(s, d) {
                peers.insert(self.keys[s].clone(), b.id(c));
            }
            // Replies to flows the peer may open must leave too: reachable in either direction.
            if self.class(d, s).is_some() || peers.contains_key(self.keys[s]) {
                reachable.insert(self.keys[s].clone());
            }
        }
        let addrs = addr_entries(self.art, &self.dst_sets[self.dst_of[d]].0, &mut b);
        FilterTable {
            node: self.keys[d].clone(),
            classes: b.classes,
            peers,
            addrs,
            reachable,
        }
    }
}

/// The service ports an app grant opens to its sources.
fn opens(a: &crate::caps::AppEntry) -> Option<ServiceNeed> {
    match a.grant {
        AppGrant::S3 { .. } => Some(ServiceNeed::S3),
        AppGrant::Nfs { .. } => Some(ServiceNeed::Nfs),
        AppGrant::Docker { .. } => Some(ServiceNeed::Docker),
        _ => None,
    }
}

/// Non-node sources: every prefix named in a src (and /0 for `*`), longest first.
fn addr_entries(art: &Artifact, to_me: &[usize], b: &mut Builder) -> Vec<(Cidr, u32)> {
    let mut prefixes: BTreeSet<Cidr> = BTreeSet::new();
    for r in art.rules.iter().filter(|r| !r.ip.is_empty()) {
        prefixes.extend(r.src.cidrs.iter().copied());
        if r.src.all {
            for a in ["0.0.0.0/0", "::/0"] {
                prefixes.insert(Cidr::parse(a).expect("a literal prefix"));
            }
        }
    }
    let mut addrs = Vec::new();
    for p in prefixes {
        let (mut allow, mut deny) = (Vec::new(), Vec::new());
        for i in to_me {
            let r = &art.rules[*i];
            // Exact: prefixes nest or are disjoint and every src prefix has its own entry
            // (longer ones first), so a narrower rule is decided by its own entry. The
            // default covers members (nodes) only.
            if r.src.all || r.src.cidrs.iter().any(|c| c.covers(&p)) {
                let into = if r.effect == Effect::Allow {
                    &mut allow
                } else {
                    &mut deny
                };
                into.extend(r.ip.iter());
            }
        }
        // An empty class is stored too: it shadows a shorter prefix.
        addrs.push((p, b.id(class(&allow, &deny, false))));
    }
    addrs.sort_by(|a, b| b.0.len.cmp(&a.0.len).then(a.0.cmp(&b.0)));
    addrs
}

/// `tunnelmesh filter test --src NODE --dst HOST:PORT/PROTO`: the decision (and deciding rule)
/// for a packet from node `src` to `dst` (a node name or an address). The same answer the
/// dataplane's table gives (see the module doc).
pub fn filter_test(art: &Artifact, src: &str, dst: &str) -> Result<Decision, String> {
    let (k, _) = art
        .node_by_name(src)
        .ok_or_else(|| format!("unknown node {src:?}"))?;
    let (host, proto, port) = crate::golden::parse_ip_dst(dst)?;
    let target = match host.parse::<IpAddr>() {
        Ok(a) => Target::Addr(a),
        Err(_) => {
            art.node_by_name(&host)
                .ok_or_else(|| format!("unknown node {host:?}"))?;
            Target::Node(&host)
        }
    };
    Ok(decide(
        art,
        &Identity::Node(k.clone()),
        &Request::Ip {
            dst: target,
            proto,
            port,
        },
    ))
}

impl Artifact {
    /// The packet filter of `node` (a node not in the inventory gets an empty table).
    pub fn filter_for(&self, node: &NodeKey) -> FilterTable {
        let mut plan = Plan::new(self);
        match plan.keys.iter().position(|k| *k == node) {
            Some(d) => plan.table(d),
            None => FilterTable {
                node: node.clone(),
                classes: Vec::new(),
                peers: BTreeMap::new(),
                addrs: Vec::new(),
                reachable: BTreeSet::new(),
            },
        }
    }

    /// Every node's packet filter (what the coordinator ships, one per node's netmap).
    pub fn filter_tables(&self) -> BTreeMap<NodeKey, FilterTable> {
        let mut plan = Plan::new(self);
        (0..plan.keys.len())
            .map(|d| (plan.keys[d].clone(), plan.table(d)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: u16, b: u16) -> PortRange {
        PortRange { first: a, last: b }
    }

    #[test]
    fn range_algebra() {
        assert_eq!(
            normalize(vec![r(5, 9), r(1, 3), r(4, 4), r(20, 30)]),
            vec![r(1, 9), r(20, 30)]
        );
        assert_eq!(
            subtract(&[r(0, 65535)], &[r(22, 22)]),
            vec![r(0, 21), r(23, 65535)]
        );
        assert_eq!(
            subtract(&[r(10, 20)], &[r(0, 10), r(15, 16), r(20, 30)]),
            vec![r(11, 14), r(17, 19)]
        );
        assert_eq!(subtract(&[r(10, 20)], &[r(0, 65535)]), vec![]);
    }

    #[test]
    fn class_lookup_is_binary_search_over_disjoint_ranges() {
        let c = PolicyClass {
            by_proto: vec![ProtoRanges {
                proto: 6,
                ranges: vec![r(22, 22), r(80, 90), r(443, 443)],
            }],
            other_protos: false,
            denied: Vec::new(),
            other_denied: false,
        };
        for (p, ok) in [
            (21, false),
            (22, true),
            (23, false),
            (80, true),
            (85, true),
            (90, true),
            (91, false),
            (443, true),
            (65535, false),
        ] {
            assert_eq!(c.allows(6, p), ok, "{p}");
        }
        assert!(!c.allows(17, 22));
    }
}
