//! The `ip` part compiled for the dataplane packet filter (issue 16): for one destination node,
//! every source peer maps to a policy class (one per distinct set of allowed ports, so the table
//! grows with tag/group combinations, not with peers); a class holds, per protocol, sorted
//! disjoint port ranges looked up by binary search.
//!
//! The table answers exactly what [`crate::decide`] answers for `Request::Ip` (a test checks
//! this on every port boundary), so `filter test` and the dataplane cannot disagree.

use crate::compile::Artifact;
use crate::identity::{NodeInfo, NodeKey};
use crate::model::{DefaultAction, Effect, Rule};
use crate::selector::{has_ports, Cidr, IpSpec, PortRange, ProtoSel, ALL_PORTS};
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
}

impl PolicyClass {
    /// Whether a packet of `proto` to `port` passes (port ignored for portless protocols).
    pub fn allows(&self, proto: u8, port: u16) -> bool {
        match self.by_proto.binary_search_by_key(&proto, |p| p.proto) {
            Ok(i) => {
                let port = if has_ports(proto) { port } else { 0 };
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
    /// Outbound: peers this node may reach on at least one port (send nothing to others).
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
fn class(allow: &[&IpSpec], deny: &[&IpSpec], default_all: bool) -> PolicyClass {
    let protos: BTreeSet<u8> = allow
        .iter()
        .chain(deny)
        .filter_map(|s| match s.proto {
            ProtoSel::Proto(p) => Some(p),
            ProtoSel::Any => None,
        })
        .collect();
    let range = |p: Option<u8>| {
        let a = if default_all {
            vec![ALL_PORTS]
        } else {
            spec_ranges(allow, p)
        };
        subtract(&a, &spec_ranges(deny, p))
    };
    let by_proto = protos
        .into_iter()
        .map(|p| ProtoRanges {
            proto: p,
            ranges: range(Some(p)),
        })
        .collect();
    let other_protos = range(None) == vec![ALL_PORTS];
    PolicyClass {
        by_proto,
        other_protos,
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

fn dst_matches(r: &Rule, n: &NodeInfo) -> bool {
    r.dst.matches(true, Some(&n.name), &n.tags, &n.addrs)
}

fn src_matches(r: &Rule, n: &NodeInfo) -> bool {
    r.src.matches(true, Some(&n.name), &n.tags, &n.addrs)
}

/// The class for packets from a source whose matching rules are `src_rules` (indices) to a
/// destination whose matching rules are `dst_rules`.
fn class_for(
    art: &Artifact,
    src_rules: &[usize],
    dst_rules: &BTreeSet<usize>,
    member: bool,
) -> PolicyClass {
    let mut allow = Vec::new();
    let mut deny = Vec::new();
    for i in src_rules.iter().filter(|i| dst_rules.contains(i)) {
        let r = &art.rules[*i];
        let into = if r.effect == Effect::Allow {
            &mut allow
        } else {
            &mut deny
        };
        into.extend(r.ip.iter());
    }
    class(&allow, &deny, member && art.default == DefaultAction::Allow)
}

impl Artifact {
    /// The packet filter of `node` (a node not in the inventory gets an empty table).
    pub fn filter_for(&self, node: &NodeKey) -> FilterTable {
        let empty = NodeInfo::default();
        let me = self.nodes.get(node).unwrap_or(&empty);
        // Rules selecting each source, computed once; sources with the same matching rules
        // share a class computation.
        let src_sig = |n: &NodeInfo| -> Vec<usize> {
            (0..self.rules.len())
                .filter(|i| !self.rules[*i].ip.is_empty() && src_matches(&self.rules[*i], n))
                .collect()
        };
        let to_me: BTreeSet<usize> = (0..self.rules.len())
            .filter(|i| dst_matches(&self.rules[*i], me))
            .collect();
        let my_sig = src_sig(me);
        let mut b = Builder {
            classes: Vec::new(),
            index: BTreeMap::new(),
        };
        let mut inbound_cache: BTreeMap<Vec<usize>, Option<u32>> = BTreeMap::new();
        let mut peers = BTreeMap::new();
        let mut reachable = BTreeSet::new();
        for (k, n) in &self.nodes {
            if k == node {
                continue;
            }
            let sig = src_sig(n);
            let id = *inbound_cache.entry(sig.clone()).or_insert_with(|| {
                let c = class_for(self, &sig, &to_me, true);
                (!c.is_empty()).then(|| b.id(c))
            });
            if let Some(id) = id {
                peers.insert(k.clone(), id);
            }
            let to_peer: BTreeSet<usize> = (0..self.rules.len())
                .filter(|i| dst_matches(&self.rules[*i], n))
                .collect();
            if !class_for(self, &my_sig, &to_peer, true).is_empty() {
                reachable.insert(k.clone());
            }
        }
        // Non-node sources: every prefix named in a src (and /0 for `*`).
        let mut prefixes: BTreeSet<Cidr> = BTreeSet::new();
        for r in self.rules.iter().filter(|r| !r.ip.is_empty()) {
            prefixes.extend(r.src.cidrs.iter().copied());
            if r.src.all {
                for a in ["0.0.0.0/0", "::/0"] {
                    prefixes.insert(Cidr::parse(a).expect("a literal prefix"));
                }
            }
        }
        let mut addrs = Vec::new();
        for p in prefixes {
            let mut allow = Vec::new();
            let mut deny = Vec::new();
            for i in &to_me {
                let r = &self.rules[*i];
                if r.effect == Effect::Allow
                    && (r.src.all || r.src.cidrs.iter().any(|c| c.covers(&p)))
                {
                    allow.extend(r.ip.iter());
                }
                // Exact: prefixes nest or are disjoint and every src prefix has its own entry
                // (longer ones first), so a narrower deny is decided by its own entry.
                if r.effect == Effect::Deny
                    && (r.src.all || r.src.cidrs.iter().any(|c| c.covers(&p)))
                {
                    deny.extend(r.ip.iter());
                }
            }
            let c = class(&allow, &deny, false);
            let id = if c.is_empty() { None } else { Some(b.id(c)) };
            // An empty class still shadows a shorter prefix: store it too.
            let id = id.unwrap_or_else(|| {
                b.id(PolicyClass {
                    by_proto: Vec::new(),
                    other_protos: false,
                })
            });
            addrs.push((p, id));
        }
        addrs.sort_by(|a, b| b.0.len.cmp(&a.0.len).then(a.0.cmp(&b.0)));
        FilterTable {
            node: node.clone(),
            classes: b.classes,
            peers,
            addrs,
            reachable,
        }
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
