//! The packet filter, control side: turn this node's `tm_policy::FilterTable` into the
//! dataplane's plain form (`tm_wire::filter::FilterSpec`, peers by `PeerId`) and send it as
//! `SetFilter` chunks whenever the policy or the peer set changes.
//!
//! Where the compiled policy comes from: the coordinator's, pushed in the netmap as this
//! node's projection ([`LocalFilter::set_artifact`]); or, on a mesh without a policy (or
//! without a coordinator), a **local** policy (`tunnelmesh filter load FILE`), compiled with
//! tm-policy against this node and its peers (names from the config's `peers:` and the
//! netmap; no tags). A pushed policy replaces a local one.
//!
//! Stock WireGuard peers (the config's `peers:`) are principals too: peers the pushed
//! artifact does not know are added to this node's copy of it by name, with their
//! single-address `allowed_ips`, so rules select them by `*`, `autogroup:member` or (the
//! coordinator refuses unknown node names) a `hosts` entry naming their address, and
//! `filter test --src NAME` answers for them. A stock peer whose name or key a mesh node has
//! is left out (it may then send nothing).

use std::collections::BTreeMap;
use std::net::IpAddr;

use tm_api::{FilterDecision, FilterInfo};
use tm_noise::keys::PublicKey;
use tm_policy::{Artifact, FilterTable, Inventory, NodeKey, PolicyClass};
use tm_wire::filter::{FilterClass, FilterSpec, PortRule, ProtoRules, Verdict};
use tm_wire::ipc::{CtlMsg, PeerId};

/// The policy identity of a node: its public key's text form.
pub fn node_key(pk: &PublicKey) -> NodeKey {
    NodeKey(pk.to_string())
}

/// One principal the filter knows: a peer (dataplane id) or this node (None).
pub struct Member {
    pub id: Option<PeerId>,
    pub key: PublicKey,
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

/// The converted classes: policy ranges become verdict ranges.
pub fn wire_class(c: &PolicyClass) -> FilterClass {
    let protos = c
        .by_proto
        .iter()
        .map(|p| {
            let mut ranges: Vec<PortRule> = p
                .ranges
                .iter()
                .map(|r| PortRule {
                    first: r.first,
                    last: r.last,
                    verdict: Verdict::Allow,
                })
                .collect();
            if let Some(d) = c.denied.iter().find(|d| d.proto == p.proto) {
                ranges.extend(d.ranges.iter().map(|r| PortRule {
                    first: r.first,
                    last: r.last,
                    verdict: Verdict::Deny,
                }));
            }
            ranges.sort_by_key(|r| r.first);
            // Allowed ranges exclude denied ones already; keep the list strictly disjoint
            // even if a future compiler does not.
            let mut out: Vec<PortRule> = Vec::with_capacity(ranges.len());
            for r in ranges {
                match out.last() {
                    Some(l) if l.last >= r.first => {
                        if r.last > l.last {
                            out.push(PortRule {
                                first: l.last + 1,
                                ..r
                            });
                        }
                    }
                    _ => out.push(r),
                }
            }
            ProtoRules {
                proto: p.proto,
                ranges: out,
            }
        })
        .collect();
    FilterClass {
        protos,
        other: if c.other_protos {
            Verdict::Allow
        } else if c.other_denied {
            Verdict::Deny
        } else {
            Verdict::NoRule
        },
    }
}

/// This node's table in the dataplane's form (peers the table names but the dataplane does
/// not know are left out).
pub fn wire_spec(
    t: &FilterTable,
    ids: &BTreeMap<NodeKey, PeerId>,
    generation: u64,
    seed: u64,
) -> FilterSpec {
    let mut peers: Vec<(PeerId, u32)> = t
        .peers
        .iter()
        .filter_map(|(k, c)| ids.get(k).map(|id| (*id, *c)))
        .collect();
    peers.sort_unstable();
    let mut reachable: Vec<PeerId> = t
        .reachable
        .iter()
        .filter_map(|k| ids.get(k))
        .copied()
        .collect();
    reachable.sort_unstable();
    FilterSpec {
        generation,
        seed,
        classes: t.classes.iter().map(wire_class).collect(),
        peers,
        reachable,
    }
}

/// The policy (pushed or local) and what was last sent to the dataplane.
pub struct LocalFilter {
    /// (file name, text) of the loaded policy.
    policy: Option<(String, String)>,
    /// The coordinator's artifact for this node (takes precedence over `policy`).
    pushed: Option<Artifact>,
    /// The artifact in force: the pushed one with this node's stock peers added, or the
    /// compiled local policy.
    artifact: Option<Artifact>,
    warnings: Vec<String>,
    generation: u64,
    seed: u64,
    /// The spec last sent (generation 0 in it, for comparison).
    sent: Option<FilterSpec>,
    /// From the dataplane's `FilterCounters`.
    pub flows: (u64, u64, u64),
    /// The inventory the artifact was compiled against (recompile only when it changes).
    inv: Option<Inventory>,
    /// Recent sampled drops: (peer name, line), oldest first, at most [`LOG_LINES`].
    pub log: std::collections::VecDeque<(String, String)>,
}

/// Sampled drop lines kept for `filter log`.
pub const LOG_LINES: usize = 512;

impl LocalFilter {
    pub fn new(seed: u64) -> LocalFilter {
        LocalFilter {
            policy: None,
            pushed: None,
            artifact: None,
            warnings: Vec::new(),
            generation: 0,
            seed,
            sent: None,
            flows: (0, 0, 0),
            log: std::collections::VecDeque::new(),
            inv: None,
        }
    }

    fn inventory(members: &[Member]) -> Inventory {
        let mut inv = Inventory::default();
        for m in members {
            let k = node_key(&m.key);
            inv = inv.with_node(&k.0, &m.name, &[], &m.addrs);
        }
        inv
    }

    /// Compiles `text` against `members`; on success it becomes the policy. On error nothing
    /// changes and the error is one line per problem (file:line). Refused while the
    /// coordinator pushes a policy (that one is in force).
    pub fn load(&mut self, file: &str, text: &str, members: &[Member]) -> Result<(), String> {
        if self.pushed.is_some() {
            return Err("the mesh policy (set on the coordinator with `tunnelmesh policy set`) is in force; a local policy cannot replace it".into());
        }
        let inv = Self::inventory(members);
        let l = tm_policy::load(file, text.as_bytes(), &inv).map_err(|e| e.to_string())?;
        self.policy = Some((file.to_string(), text.to_string()));
        self.artifact = Some(l.artifact);
        self.inv = Some(inv);
        self.warnings = l.warnings;
        Ok(())
    }

    /// Removes the local policy (allow all, unless the coordinator pushes one).
    pub fn clear(&mut self) -> Result<(), String> {
        if self.pushed.is_some() {
            return Err("the mesh policy (set on the coordinator) is in force; change it there with `tunnelmesh policy set`".into());
        }
        self.policy = None;
        self.artifact = None;
        self.warnings.clear();
        self.inv = None;
        Ok(())
    }

    /// The artifact a netmap carried (this node's projection of the coordinator's policy).
    /// A real policy replaces any local one; the "no policy" artifact (or none) removes a
    /// pushed policy (allow all). This node's stock peers are added at the next
    /// [`LocalFilter::update`]. Returns whether anything changed.
    pub fn set_artifact(&mut self, a: Option<Artifact>) -> bool {
        match a {
            Some(a) if a.has_policy => {
                if self.pushed.as_ref() == Some(&a) {
                    return false;
                }
                self.policy = None;
                self.inv = None;
                self.warnings.clear();
                self.artifact = Some(a.clone());
                self.pushed = Some(a);
                true
            }
            _ if self.pushed.is_some() => {
                self.artifact = None;
                self.pushed = None;
                true
            }
            _ => false,
        }
    }

    /// The pushed artifact with this node's stock WireGuard peers added (see the module doc).
    fn with_stock_peers(a: &Artifact, members: &[Member]) -> Artifact {
        let mut a = a.clone();
        for m in members {
            let k = node_key(&m.key);
            if a.nodes.contains_key(&k) || a.node_by_name(&m.name).is_some() {
                continue;
            }
            if tm_policy::validate_node_name(&m.name).is_err() {
                continue;
            }
            a.nodes.insert(
                k,
                tm_policy::NodeInfo {
                    name: m.name.clone(),
                    tags: Default::default(),
                    addrs: m.addrs.iter().copied().collect(),
                },
            );
        }
        a
    }

    /// Recompiles the local policy against the current members (names may have come or gone),
    /// or refreshes the pushed artifact's stock peers.
    fn recompile(&mut self, members: &[Member]) {
        if let Some(p) = &self.pushed {
            self.artifact = Some(Self::with_stock_peers(p, members));
            return;
        }
        let Some((file, text)) = self.policy.clone() else {
            return;
        };
        let inv = Self::inventory(members);
        if self.inv.as_ref() == Some(&inv) {
            return;
        }
        match tm_policy::parse_policy(&file, text.as_bytes())
            .and_then(|p| tm_policy::compile(&p, &inv))
        {
            Ok(a) => {
                self.artifact = Some(a);
                self.inv = Some(inv);
            }
            Err(e) => tracing::warn!("local policy no longer compiles, keeping the last one: {e}"),
        }
    }

    /// The messages that bring the dataplane up to date (none if nothing changed), with
    /// `force` after a dataplane restart.
    pub fn update(&mut self, me: &PublicKey, members: &[Member], force: bool) -> Vec<CtlMsg> {
        self.recompile(members);
        let spec = self.artifact.as_ref().map(|a| {
            let t = a.filter_for(&node_key(me));
            let ids: BTreeMap<NodeKey, PeerId> = members
                .iter()
                .filter_map(|m| m.id.map(|id| (node_key(&m.key), id)))
                .collect();
            wire_spec(&t, &ids, 0, self.seed)
        });
        // Unchanged, or no filter for a fresh dataplane (which has none): nothing to send.
        if spec == self.sent && (!force || spec.is_none()) {
            return Vec::new();
        }
        self.generation += 1;
        self.sent = spec.clone();
        let spec = spec.map(|mut s| {
            s.generation = self.generation;
            s
        });
        tm_wire::filter::chunks(self.generation, spec.as_ref())
    }

    pub fn info(&self) -> Option<FilterInfo> {
        if self.artifact.is_none() && self.generation == 0 {
            return None;
        }
        let s = self.sent.as_ref();
        Some(FilterInfo {
            active: self.artifact.is_some(),
            source: match (&self.pushed, &self.policy) {
                (Some(_), _) => Some("coordinator".into()),
                (None, Some((f, _))) => Some(format!("local {f}")),
                (None, None) => None,
            },
            hash: self
                .pushed
                .as_ref()
                .or(self.artifact.as_ref())
                .map(|a| a.hash().0),
            generation: self.generation,
            classes: s.map_or(0, |s| s.classes.len()),
            peers_with_class: s.map_or(0, |s| s.peers.len()),
            reachable: s.map_or(0, |s| s.reachable.len()),
            flows: self.flows.0,
            flow_capacity: self.flows.1,
            flow_evictions: self.flows.2,
            warnings: self.warnings.clone(),
        })
    }

    /// `filter test`: tm-policy's matcher on the same artifact the table came from.
    pub fn test(&self, src: &str, dst: &str) -> Result<FilterDecision, String> {
        let Some(a) = &self.artifact else {
            return Ok(FilterDecision {
                allow: true,
                rule: None,
                reason: "no policy: all members allowed".into(),
            });
        };
        let d = tm_policy::filter_test(a, src, dst)?;
        Ok(FilterDecision {
            allow: d.allow,
            rule: d.rule.map(|r| r.to_string()),
            reason: d.reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tm_wire::filter::FILTER_CHUNK;

    fn key(i: u8) -> PublicKey {
        PublicKey([i; 32])
    }

    fn members() -> Vec<Member> {
        ["me", "alpha", "beta", "web1"]
            .iter()
            .enumerate()
            .map(|(i, n)| Member {
                id: (i > 0).then_some(i as PeerId),
                key: key(i as u8 + 1),
                name: n.to_string(),
                addrs: vec![format!("100.64.0.{}", i + 1).parse().unwrap()],
            })
            .collect()
    }

    const POLICY: &str = r#"{
      "groups": {"group:ops": ["alpha"]},
      "acls": [
        {"action": "accept", "src": ["group:ops"], "dst": ["*:*"]},
        {"action": "accept", "src": ["autogroup:member"], "dst": ["me:80,443"]},
      ],
      "deny": [{"src": ["beta"], "dst": ["me"], "ip": ["tcp:22"]}],
      "default": "deny",
    }"#;

    #[test]
    fn table_converts_to_the_dataplane_form_and_agrees_with_filter_test() {
        let ms = members();
        let mut f = LocalFilter::new(7);
        f.load("p.hujson", POLICY, &ms).unwrap();
        let msgs = f.update(&key(1), &ms, false);
        assert_eq!(msgs.len(), 1);
        let CtlMsg::SetFilter {
            data, generation, ..
        } = &msgs[0]
        else {
            panic!()
        };
        assert_eq!(*generation, 1);
        let s = FilterSpec::decode(data).unwrap();
        assert_eq!(s.seed, 7);
        // alpha (1): everything; beta (2): 80/443, 22 denied explicitly; web1 (3): 80/443.
        for (peer, proto, port, src) in [
            (1, 6, 22, "alpha"),
            (1, 17, 5000, "alpha"),
            (2, 6, 22, "beta"),
            (2, 6, 443, "beta"),
            (2, 6, 8080, "beta"),
            (3, 6, 80, "web1"),
            (3, 17, 53, "web1"),
            // ICMP: the port is the message type. Echo requests (8) follow my rules: beta
            // and web1 may reach ports of mine, so they may ping; other types need a rule.
            (1, 1, 13, "alpha"),
            (2, 1, 8, "beta"),
            (2, 1, 13, "beta"),
            (2, 1, 0, "beta"),
            (3, 58, 128, "web1"),
        ] {
            let v = s
                .class_of(peer)
                .map_or(Verdict::NoRule, |c| c.verdict(proto, port));
            let pname = match proto {
                6 => "tcp",
                17 => "udp",
                1 => "icmp",
                _ => "ipv6-icmp",
            };
            let d = f.test(src, &format!("me:{port}/{pname}")).unwrap();
            assert_eq!(v == Verdict::Allow, d.allow, "{src} {proto}/{port}: {d:?}");
        }
        assert_eq!(s.class_of(2).unwrap().verdict(6, 22), Verdict::Deny);
        assert_eq!(s.class_of(3).unwrap().verdict(6, 22), Verdict::NoRule);
        assert_eq!(s.class_of(2).unwrap().verdict(1, 8), Verdict::Allow);
        assert_eq!(s.class_of(2).unwrap().verdict(1, 13), Verdict::NoRule);
        assert!(f.test("beta", "me/icmp").unwrap().allow);
        assert_eq!(s.reachable, vec![1, 2, 3]);
        // Nothing changed: nothing sent. Cleared: one empty chunk.
        assert!(f.update(&key(1), &ms, false).is_empty());
        assert_eq!(
            f.update(&key(1), &ms, true).len(),
            1,
            "forced after a restart"
        );
        f.clear().unwrap();
        let m = f.update(&key(1), &ms, false);
        assert!(matches!(
            &m[..],
            [CtlMsg::SetFilter {
                total: 0,
                generation: 3,
                ..
            }]
        ));
        assert!(!f.info().unwrap().active);
    }

    #[test]
    fn pushed_projection_filters_both_ways_and_names_stock_peers() {
        // The coordinator's mesh: me, alpha, beta (a coordinator serving S3). web1 is not a
        // mesh node here: it plays a stock WireGuard peer from this node's `peers:`.
        let mut ms = members();
        let ip = |i: u8| -> IpAddr { format!("100.64.0.{i}").parse().unwrap() };
        let inv = Inventory::default()
            .with_node(&node_key(&key(1)).0, "me", &[], &[ip(1)])
            .with_node(&node_key(&key(2)).0, "alpha", &[], &[ip(2)])
            .with_node(&node_key(&key(3)).0, "beta", &[], &[ip(3)])
            .with_services(
                &node_key(&key(3)).0,
                &[("s3", 6, 8080, tm_policy::ServiceNeed::S3)],
            );
        let text = r#"{
          "hosts": {"phone": "100.64.0.4"},
          "grants": [
            {"src": ["alpha"], "dst": ["me"], "ip": ["tcp:22"]},
            {"src": ["phone"], "dst": ["me"], "ip": ["tcp:80"]},
            {"src": ["me"], "dst": ["*"], "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["*"], "access": "ro"}]}},
          ],
          "default": "deny",
        }"#;
        let full = tm_policy::load("mesh.hujson", text.as_bytes(), &inv)
            .unwrap()
            .artifact;
        let mut f = LocalFilter::new(3);
        f.set_artifact(Some(full.project(&node_key(&key(1)))));
        let msgs = f.update(&key(1), &ms, false);
        let CtlMsg::SetFilter { data, .. } = &msgs[0] else {
            panic!()
        };
        let s = FilterSpec::decode(data).unwrap();
        // Inbound: alpha 22 only; the stock peer web1 (id 3, at 100.64.0.4) port 80 by its
        // hosts name; beta nothing.
        let v = |id, port| {
            s.class_of(id)
                .map_or(Verdict::NoRule, |c| c.verdict(6, port))
        };
        assert_eq!(v(1, 22), Verdict::Allow);
        assert_eq!(v(1, 80), Verdict::NoRule);
        assert_eq!(v(3, 80), Verdict::Allow);
        assert_eq!(v(2, 22), Verdict::NoRule);
        // Outbound: this node may reach alpha and web1 (they may open flows to it: it
        // answers) and beta (its S3 port, by this node's S3 grant), not more.
        assert_eq!(s.reachable, vec![1, 2, 3]);
        assert!(f.test("web1", "me:80/tcp").unwrap().allow, "by name");
        assert!(!f.test("web1", "me:22/tcp").unwrap().allow);
        assert!(f.test("me", "beta:8080/tcp").unwrap().allow);
        assert_eq!(f.info().unwrap().source.as_deref(), Some("coordinator"));
        // While the mesh policy is in force a local one cannot replace it.
        assert!(f.load("p.hujson", POLICY, &ms).is_err());
        assert!(f.clear().is_err());
        // A stock peer named like a mesh node is not merged: it may send nothing.
        ms[3].name = "alpha".into();
        let msgs = f.update(&key(1), &ms, false);
        let CtlMsg::SetFilter { data, .. } = &msgs[0] else {
            panic!()
        };
        let s = FilterSpec::decode(data).unwrap();
        assert!(s.class_of(3).is_none());
        assert_eq!(s.reachable, vec![1, 2]);
        // The coordinator drops its policy: allow all (no filter).
        f.set_artifact(None);
        let m = f.update(&key(1), &ms, false);
        assert!(matches!(&m[..], [CtlMsg::SetFilter { total: 0, .. }]));
        assert!(!f.info().unwrap().active);
    }

    #[test]
    fn the_coordinators_policy_replaces_the_local_one_and_no_policy_removes_only_its_own() {
        let ms = members();
        let inv = LocalFilter::inventory(&ms);
        let pushed = tm_policy::load("c.hujson", POLICY.as_bytes(), &inv)
            .unwrap()
            .artifact
            .project(&node_key(&key(1)));
        let none = Artifact::no_policy(&inv).unwrap();
        let mut f = LocalFilter::new(7);
        // A coordinator without a policy leaves a local one alone.
        f.load("local.hujson", POLICY, &ms).unwrap();
        assert!(!f.set_artifact(Some(none.clone())));
        assert_eq!(
            f.info().unwrap().source.as_deref(),
            Some("local local.hujson")
        );
        // Its policy replaces the local one; the same artifact again changes nothing.
        assert!(f.set_artifact(Some(pushed.clone())));
        assert!(!f.set_artifact(Some(pushed.clone())));
        assert_eq!(f.info().unwrap().source.as_deref(), Some("coordinator"));
        assert_eq!(f.update(&key(1), &ms, false).len(), 1);
        assert!(f.test("beta", "me:22").is_ok_and(|d| !d.allow));
        // While it is in force, local changes are refused and change nothing.
        assert!(f
            .load("l2.hujson", "{}", &ms)
            .unwrap_err()
            .contains("policy set"));
        assert!(f.clear().is_err());
        assert!(f.test("beta", "me:22").is_ok_and(|d| !d.allow));
        // The coordinator's policy removed: allow all again.
        assert!(f.set_artifact(Some(none)));
        assert!(f.test("beta", "me:22").unwrap().allow);
        let m = f.update(&key(1), &ms, false);
        assert!(
            matches!(&m[..], [CtlMsg::SetFilter { total: 0, .. }]),
            "{m:?}"
        );
    }

    #[test]
    fn bad_policies_are_refused_with_their_place_and_change_nothing() {
        let ms = members();
        let mut f = LocalFilter::new(1);
        f.load("p.hujson", POLICY, &ms).unwrap();
        let e = f
            .load("bad.hujson", "{\"acls\": [{\"action\": \"accept\", \"src\": [\"nobody\"], \"dst\": [\"me:99999\"]}]}", &ms)
            .unwrap_err();
        assert!(e.starts_with("bad.hujson:1:"), "{e}");
        assert_eq!(f.info().unwrap().source.as_deref(), Some("local p.hujson"));
    }

    #[test]
    fn big_policy_fits_in_few_ring_slots() {
        // Issue 16's scale: 1,000 peers, 10,000 rules over 20 tags' worth of names.
        let mut ms = vec![Member {
            id: None,
            key: key(0),
            name: "n0".into(),
            addrs: vec![],
        }];
        for i in 1..1000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            k[31] = 1;
            ms.push(Member {
                id: Some(i),
                key: PublicKey(k),
                name: format!("n{i}"),
                addrs: vec![],
            });
        }
        let groups: Vec<String> = (0..20)
            .map(|g| {
                let names: Vec<String> = (0..1000)
                    .filter(|i| i % 20 == g)
                    .map(|i| format!("\"n{i}\""))
                    .collect();
                format!("\"group:g{g}\": [{}]", names.join(","))
            })
            .collect();
        let rules: Vec<String> = (0..10_000)
            .map(|i| {
                format!(
                    "{{\"action\": \"accept\", \"src\": [\"group:g{}\"], \"dst\": [\"n0:{}\"]}}",
                    i % 20,
                    1000 + i % 5000
                )
            })
            .collect();
        let text = format!(
            "{{\"default\": \"deny\", \"groups\": {{{}}}, \"acls\": [{}]}}",
            groups.join(","),
            rules.join(",\n")
        );
        let mut f = LocalFilter::new(1);
        f.load("big.hujson", &text, &ms).unwrap();
        let msgs = f.update(&key(0), &ms, false);
        let bytes: usize = msgs
            .iter()
            .map(|m| match m {
                CtlMsg::SetFilter { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        let s = f.info().unwrap();
        eprintln!(
            "1000 peers x 10000 rules: {} classes, blob {bytes} bytes in {} SetFilter messages",
            s.classes,
            msgs.len()
        );
        assert_eq!(s.peers_with_class, 999);
        assert!(msgs.len() * FILTER_CHUNK >= bytes);
        assert!(bytes < 1 << 20, "{bytes}");
    }
}
