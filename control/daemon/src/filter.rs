//! The packet filter, control side: turn this node's `tm_policy::FilterTable` into the
//! dataplane's plain form (`tm_wire::filter::FilterSpec`, peers by `PeerId`) and send it as
//! `SetFilter` chunks whenever the policy or the peer set changes.
//!
//! Where the compiled policy comes from: the coordinator's, as this node's projection carried
//! by every netmap ([`LocalFilter::set_artifact`]); on a node without a coordinator policy, a
//! **local** policy (`tunnelmesh filter load FILE`, for static `peers:` setups), compiled with
//! tm-policy against this node and its peers. From the artifact on both take the same path.

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

/// The local policy and what was last sent to the dataplane.
pub struct LocalFilter {
    /// (file name, text) of the loaded policy.
    policy: Option<(String, String)>,
    artifact: Option<Artifact>,
    /// `artifact` came from the coordinator's netmap (not `filter load`).
    pushed: bool,
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
            artifact: None,
            pushed: false,
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
    /// changes and the error is one line per problem (file:line).
    pub fn load(&mut self, file: &str, text: &str, members: &[Member]) -> Result<(), String> {
        if self.pushed {
            return Err("the coordinator's policy is in force here; change it with `tunnelmesh policy set FILE`".into());
        }
        let inv = Self::inventory(members);
        let l = tm_policy::load(file, text.as_bytes(), &inv).map_err(|e| e.to_string())?;
        self.policy = Some((file.to_string(), text.to_string()));
        self.artifact = Some(l.artifact);
        self.inv = Some(inv);
        self.warnings = l.warnings;
        Ok(())
    }

    /// Removes the local policy (allow all); refused while the coordinator's is in force.
    pub fn clear(&mut self) -> Result<(), String> {
        if self.pushed {
            return Err("the coordinator's policy is in force here; change it with `tunnelmesh policy set FILE`".into());
        }
        self.policy = None;
        self.artifact = None;
        self.warnings.clear();
        self.inv = None;
        Ok(())
    }

    /// The artifact a netmap carried (this node's projection of the coordinator's policy).
    /// A real policy replaces any local one; the "no policy" artifact removes a pushed policy
    /// but leaves a local one (static-peer setups) alone. Returns whether anything changed.
    #[cfg_attr(not(test), allow(dead_code))] // wired with the capability-opened ports
    pub fn set_artifact(&mut self, a: Option<Artifact>) -> bool {
        match a {
            Some(a) if a.has_policy => {
                if self.pushed && self.artifact.as_ref() == Some(&a) {
                    return false;
                }
                self.policy = None;
                self.inv = None;
                self.warnings.clear();
                self.artifact = Some(a);
                self.pushed = true;
                true
            }
            _ if self.pushed => {
                self.artifact = None;
                self.pushed = false;
                true
            }
            _ => false,
        }
    }

    /// Recompiles the local policy against the current members (names may have come or gone).
    fn recompile(&mut self, members: &[Member]) {
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
            source: if self.pushed {
                Some("coordinator".to_string())
            } else {
                self.policy.as_ref().map(|(f, _)| format!("local {f}"))
            },
            hash: self.artifact.as_ref().map(|a| a.hash().0),
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
        ] {
            let v = s
                .class_of(peer)
                .map_or(Verdict::NoRule, |c| c.verdict(proto, port));
            let pname = if proto == 6 { "tcp" } else { "udp" };
            let d = f.test(src, &format!("me:{port}/{pname}")).unwrap();
            assert_eq!(v == Verdict::Allow, d.allow, "{src} {proto}/{port}: {d:?}");
        }
        assert_eq!(s.class_of(2).unwrap().verdict(6, 22), Verdict::Deny);
        assert_eq!(s.class_of(3).unwrap().verdict(6, 22), Verdict::NoRule);
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
