//! The compiled packet-filter tables agree with `decide` (what `filter test` runs) on random
//! policies, at every port boundary and for several protocols; classes grow with tag
//! combinations, not with peers.

use proptest::prelude::*;
use tm_policy::{compile, decide, parse_policy, Identity, Inventory, NodeKey, Request, Target};

const SRCS: &[&str] = &[
    "alpha",
    "beta",
    "tag:a",
    "tag:b",
    "group:g",
    "autogroup:member",
    "*",
    "100.64.0.0/30",
    "lan",
];
const DSTS: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "tag:a",
    "tag:b",
    "group:g",
    "*",
    "100.64.0.4/30",
];
const IPS: &[&str] = &[
    "*",
    "tcp:22",
    "tcp:80-90",
    "443",
    "udp:53",
    "icmp",
    "tcp:1000-2000,3000",
    "sctp:*",
    "47",
];
const PROTOS: &[u8] = &[1, 6, 17, 47, 132, 200];
const PORTS: &[u16] = &[
    0, 21, 22, 23, 46, 47, 48, 52, 53, 54, 79, 80, 85, 90, 91, 442, 443, 444, 999, 1000, 1500,
    2000, 2001, 2999, 3000, 3001, 65535,
];

fn inv() -> Inventory {
    let a = |s: &str| s.parse().unwrap();
    Inventory::default()
        .with_node("k-alpha", "alpha", &["tag:a"], &[a("100.64.0.1")])
        .with_node("k-beta", "beta", &["tag:b"], &[a("100.64.0.2")])
        .with_node("k-gamma", "gamma", &["tag:a", "tag:b"], &[a("100.64.0.5")])
        .with_node("k-delta", "delta", &[], &[a("100.64.0.9")])
        .with_node("k-eps", "eps", &["tag:a"], &[a("100.64.0.6")])
}

#[derive(Debug, Clone)]
struct R {
    deny: bool,
    src: Vec<usize>,
    dst: Vec<usize>,
    ip: Vec<usize>,
}

fn rule() -> impl Strategy<Value = R> {
    (
        prop::bool::weighted(0.3),
        prop::collection::vec(0..SRCS.len(), 1..3),
        prop::collection::vec(0..DSTS.len(), 1..3),
        prop::collection::vec(0..IPS.len(), 1..3),
    )
        .prop_map(|(deny, src, dst, ip)| R { deny, src, dst, ip })
}

fn q(v: &[usize], names: &[&str]) -> String {
    v.iter()
        .map(|i| format!("\"{}\"", names[*i]))
        .collect::<Vec<_>>()
        .join(", ")
}

fn policy(default_allow: bool, rules: &[R]) -> String {
    let mut grants = Vec::new();
    let mut deny = Vec::new();
    for r in rules {
        let e = format!(
            "{{\"src\": [{}], \"dst\": [{}], \"ip\": [{}]}}",
            q(&r.src, SRCS),
            q(&r.dst, DSTS),
            q(&r.ip, IPS)
        );
        if r.deny {
            deny.push(e)
        } else {
            grants.push(e)
        }
    }
    format!(
        "{{\"default\": \"{}\", \"tagOwners\": {{\"tag:a\": [], \"tag:b\": []}}, \"groups\": {{\"group:g\": [\"beta\", \"delta\"]}},\n \"hosts\": {{\"lan\": \"100.64.0.0/29\"}},\n \"grants\": [{}],\n \"deny\": [{}]}}",
        if default_allow { "allow" } else { "deny" },
        grants.join(",\n"),
        deny.join(",\n")
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn tables_agree_with_decide(default_allow in any::<bool>(), rules in prop::collection::vec(rule(), 0..8)) {
        let text = policy(default_allow, &rules);
        let p = parse_policy("f.hujson", text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let inv = inv();
        let art = compile(&p, &inv).unwrap();
        let all = art.filter_tables();
        for (dk, dn) in &inv.nodes {
            let table = art.filter_for(dk);
            prop_assert_eq!(&all[dk], &table);
            for (sk, _) in inv.nodes.iter().filter(|(k, _)| *k != dk) {
                let out = art.filter_for(sk);
                prop_assert_eq!(
                    out.reachable.contains(dk),
                    table.peers.contains_key(sk) || out.peers.contains_key(dk),
                    "reachable {} <-> {}", sk, dk
                );
                for proto in PROTOS {
                    for port in PORTS {
                        let req = Request::Ip { dst: Target::Node(&dn.name), proto: *proto, port: *port };
                        let d = decide(&art, &Identity::Node(sk.clone()), &req);
                        prop_assert_eq!(table.allows_peer(sk, *proto, *port), d.allow,
                            "{} -> {} proto {} port {}: decide says {}\n{}", sk, dn.name, proto, port, d, text);
                    }
                }
            }
            // Classes are shared: never more than the peers.
            prop_assert!(table.classes.len() <= inv.nodes.len() + 4);
            // Every class's ranges are sorted and disjoint.
            for c in &table.classes {
                for pr in &c.by_proto {
                    for w in pr.ranges.windows(2) {
                        prop_assert!(u32::from(w[0].last) + 1 < u32::from(w[1].first));
                    }
                }
            }
        }
    }
}

#[test]
fn classes_grow_with_tag_combinations_not_peers() {
    let mut inv = Inventory::default().with_node("k-web", "web", &["tag:web"], &[]);
    for i in 0..300 {
        let tags: &[&str] = match i % 3 {
            0 => &["tag:ops"],
            1 => &["tag:dev"],
            _ => &[],
        };
        inv = inv.with_node(&format!("k{i}"), &format!("n{i}"), tags, &[]);
    }
    let p = parse_policy(
        "c.hujson",
        br#"{"default": "deny", "tagOwners": {"tag:web": [], "tag:ops": [], "tag:dev": []},
        "acls": [{"action": "accept", "src": ["tag:ops"], "dst": ["tag:web:*"]},
                 {"action": "accept", "src": ["tag:dev"], "dst": ["tag:web:80,443"]}]}"#,
    )
    .unwrap();
    let art = compile(&p, &inv).unwrap();
    let t = art.filter_for(&NodeKey("k-web".into()));
    assert_eq!(t.classes.len(), 2, "{:?}", t.classes);
    assert_eq!(t.peers.len(), 200, "untagged peers may send nothing");
    assert!(t.allows_peer(&NodeKey("k0".into()), 6, 22));
    assert!(!t.allows_peer(&NodeKey("k1".into()), 6, 22));
    assert!(t.allows_peer(&NodeKey("k1".into()), 17, 443));
    assert!(!t.allows_peer(&NodeKey("k2".into()), 6, 443));
    // Outbound: an untagged node may not even send to web.
    assert!(!art
        .filter_for(&NodeKey("k2".into()))
        .reachable
        .contains(&NodeKey("k-web".into())));
}

#[test]
fn non_node_sources_use_the_longest_prefix() {
    let p = parse_policy(
        "c.hujson",
        br#"{"default": "allow", "hosts": {"office": "192.0.2.0/24", "printer": "192.0.2.7"},
        "acls": [{"action": "accept", "src": ["office"], "dst": ["*:443"]}],
        "deny": [{"src": ["printer"], "dst": ["*"], "ip": ["*"]}]}"#,
    )
    .unwrap();
    let inv = Inventory::default().with_node("k", "n", &[], &[]);
    let t = compile(&p, &inv).unwrap().filter_for(&NodeKey("k".into()));
    assert!(t.allows_addr(&"192.0.2.1".parse().unwrap(), 6, 443));
    assert!(
        !t.allows_addr(&"192.0.2.1".parse().unwrap(), 6, 22),
        "the default covers members only"
    );
    assert!(!t.allows_addr(&"192.0.2.7".parse().unwrap(), 6, 443));
    assert!(!t.allows_addr(&"198.51.100.1".parse().unwrap(), 6, 443));
}

#[test]
fn thousand_peers_ten_thousand_rules_compile_in_reasonable_time() {
    // Issue 16's scale: 1,000 peers, 10,000 rules (over 20 tags). Every node's table.
    let mut inv = Inventory::default();
    for i in 0..1000 {
        let t1 = format!("tag:t{}", i % 20);
        let t2 = format!("tag:t{}", (i / 20) % 20);
        inv = inv.with_node(&format!("k{i}"), &format!("n{i}"), &[&t1, &t2], &[]);
    }
    let tags: Vec<String> = (0..20).map(|i| format!("\"tag:t{i}\": []")).collect();
    let rules: Vec<String> = (0..10_000)
        .map(|i| {
            format!(
                "{{\"action\": \"accept\", \"src\": [\"tag:t{}\"], \"dst\": [\"tag:t{}:{}\"]}}",
                i % 20,
                (i / 20) % 20,
                1000 + i % 5000
            )
        })
        .collect();
    let text = format!(
        "{{\"default\": \"deny\", \"tagOwners\": {{{}}}, \"acls\": [{}]}}",
        tags.join(","),
        rules.join(",\n")
    );
    let p = parse_policy("big.hujson", text.as_bytes()).unwrap();
    let art = compile(&p, &inv).unwrap();
    let t0 = std::time::Instant::now();
    let one = art.filter_for(&NodeKey("k0".into()));
    let one_took = t0.elapsed();
    assert!(one.classes.len() <= 400, "{}", one.classes.len());
    assert!(!one.peers.is_empty());
    // Generous bound for an unoptimized build on a shared 2-core machine; it measures the
    // complexity (a quadratic-in-rules build would take minutes), not speed.
    assert!(one_took.as_secs() < 20, "one table took {one_took:?}");
    eprintln!(
        "1000 peers x 10000 rules: one table in {one_took:?}, {} classes",
        one.classes.len()
    );
}
