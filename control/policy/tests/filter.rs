//! The compiled packet-filter tables agree with `decide` (what `filter test` runs) on random
//! policies, at every port boundary and for several protocols; classes grow with tag
//! combinations, not with peers.

use proptest::prelude::*;
use tm_policy::{
    compile, decide, parse_policy, FilterTable, Identity, Inventory, NodeKey, PolicyClass, Request,
    ServiceNeed, Target,
};

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
const PROTOS: &[u8] = &[1, 6, 17, 47, 58, 132, 200];
const PORTS: &[u16] = &[
    0, 3, 7, 8, 9, 21, 22, 23, 46, 47, 48, 52, 53, 54, 127, 128, 129, 79, 80, 85, 90, 91, 442, 443,
    444, 999, 1000, 1500, 2000, 2001, 2999, 3000, 3001, 65535, 111, 2049, 8080, 8443, 8375,
];

fn inv() -> Inventory {
    let a = |s: &str| s.parse().unwrap();
    Inventory::default()
        .with_node("k-alpha", "alpha", &["tag:a"], &[a("100.64.0.1")])
        .with_node("k-beta", "beta", &["tag:b"], &[a("100.64.0.2")])
        .with_node("k-gamma", "gamma", &["tag:a", "tag:b"], &[a("100.64.0.5")])
        .with_node("k-delta", "delta", &[], &[a("100.64.0.9")])
        .with_node("k-eps", "eps", &["tag:a"], &[a("100.64.0.6")])
        // gamma is a coordinator: its service ports open by capability.
        .with_services(
            "k-gamma",
            &[
                ("api", 6, 8443, ServiceNeed::Member),
                ("dns", 17, 53, ServiceNeed::Member),
                ("s3", 6, 8080, ServiceNeed::S3),
                ("nfs", 6, 2049, ServiceNeed::Nfs),
                ("portmap", 17, 111, ServiceNeed::Nfs),
            ],
        )
        // beta and eps run a Docker agent: its port opens to Docker grants on them.
        .with_services("k-beta", &[("docker", 6, 8375, ServiceNeed::Docker)])
        .with_services("k-eps", &[("docker", 6, 8375, ServiceNeed::Docker)])
}

/// peer -> its class, resolved (tables of the same meaning compare equal even if their
/// class numbering differs).
fn resolved(t: &FilterTable) -> Vec<(NodeKey, PolicyClass)> {
    t.peers
        .iter()
        .map(|(k, c)| (k.clone(), t.classes[*c as usize].clone()))
        .collect()
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

/// An S3 (0), NFS (1) or Docker (2, to the nodes `dst` names) grant to some sources.
fn app_grant(kind: u8, src: &[usize], dst: &[usize]) -> String {
    let (cap, dst) = match kind {
        0 => (
            "\"tunnelmesh.io/cap/s3\": [{\"buckets\": [\"*\"], \"access\": \"ro\"}]",
            "\"*\"".to_string(),
        ),
        1 => (
            "\"tunnelmesh.io/cap/nfs\": [{\"shares\": [\"*\"], \"access\": \"ro\"}]",
            "\"*\"".to_string(),
        ),
        _ => (
            "\"tunnelmesh.io/cap/docker\": [{\"containers\": [\"*\"], \"verbs\": [\"viewer\"]}]",
            q(dst, SRCS),
        ),
    };
    format!(
        "{{\"src\": [{}], \"dst\": [{dst}], \"app\": {{{cap}}}}}",
        q(src, SRCS)
    )
}

type App = (u8, Vec<usize>, Vec<usize>);

fn policy(default_allow: bool, rules: &[R], apps: &[App]) -> String {
    let mut grants: Vec<String> = apps.iter().map(|(n, s, d)| app_grant(*n, s, d)).collect();
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
    fn tables_agree_with_decide(
        default_allow in any::<bool>(),
        rules in prop::collection::vec(rule(), 0..8),
        apps in prop::collection::vec((0..3u8, prop::collection::vec(0..7usize, 1..3), prop::collection::vec(0..7usize, 1..3)), 0..3),
    ) {
        let text = policy(default_allow, &rules, &apps);
        let p = parse_policy("f.hujson", text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let inv = inv();
        let art = compile(&p, &inv).unwrap();
        let all = art.filter_tables();
        for (dk, dn) in &inv.nodes {
            let table = art.filter_for(dk);
            prop_assert_eq!(&all[dk], &table);
            // The node's projection (what its netmap carries) gives it the same filter,
            // inbound and outbound, and the same `filter test` answers about it.
            let proj = art.project(dk);
            let mine = proj.filter_for(dk);
            prop_assert_eq!(resolved(&mine), resolved(&table), "projection inbound\n{}", text);
            prop_assert_eq!(&mine.reachable, &table.reachable, "projection outbound\n{}", text);
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
                        let dp = decide(&proj, &Identity::Node(sk.clone()), &req);
                        prop_assert_eq!(dp.allow, d.allow, "projected decide {} -> {}", sk, dn.name);
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

#[test]
fn coordinator_service_ports_open_by_capability() {
    let a = |s: &str| s.parse().unwrap();
    let inv = Inventory::default()
        .with_node("k-coord", "coord", &[], &[a("100.64.0.1")])
        .with_node("k-alpha", "alpha", &[], &[a("100.64.0.2")])
        .with_node("k-beta", "beta", &[], &[a("100.64.0.3")])
        .with_node("k-gamma", "gamma", &[], &[a("100.64.0.4")])
        .with_services(
            "k-coord",
            &[
                ("api", 6, 8443, ServiceNeed::Member),
                ("dns", 17, 53, ServiceNeed::Member),
                ("s3", 6, 8080, ServiceNeed::S3),
                ("nfs", 6, 2049, ServiceNeed::Nfs),
                ("portmap", 6, 111, ServiceNeed::Nfs),
            ],
        );
    let p = parse_policy(
        "svc.hujson",
        br#"{"default": "deny",
        "grants": [
          {"src": ["alpha"], "dst": ["*"], "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["b"], "prefix": "x/", "access": "ro"}]}},
          {"src": ["beta"], "dst": ["*"], "app": {"tunnelmesh.io/cap/nfs": [{"shares": ["*"], "access": "rw"}]}},
        ],
        "deny": [{"src": ["gamma"], "dst": ["coord"], "ip": ["udp:53"]}]}"#,
    )
    .unwrap();
    let art = compile(&p, &inv).unwrap();
    let coord = NodeKey("k-coord".into());
    let t = art.filter_for(&coord);
    let k = |n: &str| NodeKey(format!("k-{n}"));
    for (src, proto, port, want) in [
        ("alpha", 6, 8080, true),
        ("alpha", 6, 8443, true),
        ("alpha", 17, 53, true),
        ("alpha", 6, 2049, false),
        ("alpha", 6, 111, false),
        ("alpha", 6, 22, false),
        ("alpha", 17, 8080, false),
        ("beta", 6, 8080, false),
        ("beta", 6, 2049, true),
        ("beta", 6, 111, true),
        ("beta", 6, 8443, true),
        ("gamma", 6, 8443, true),
        ("gamma", 6, 8080, false),
        ("gamma", 17, 53, false),
    ] {
        assert_eq!(
            t.allows_peer(&k(src), proto, port),
            want,
            "{src} -> coord {proto}/{port}"
        );
        let d = decide(
            &art,
            &Identity::Node(k(src)),
            &Request::Ip {
                dst: Target::Node("coord"),
                proto,
                port,
            },
        );
        assert_eq!(d.allow, want, "{src} -> coord {proto}/{port}: {d}");
        // The same from the coordinator's and the source's projections.
        assert_eq!(art.project(&coord).filter_for(&coord), t);
    }
    // `filter test` names the capability and the granting rule.
    let d = tm_policy::filter_test(&art, "alpha", "coord:8080/tcp").unwrap();
    assert!(d.allow);
    assert_eq!(d.rule.unwrap().line, 3, "{}", d.reason);
    assert!(
        d.reason
            .contains("service port s3, open to tunnelmesh.io/cap/s3"),
        "{}",
        d.reason
    );
    // Outbound: every member may send to the coordinator (its API); not to each other.
    let alpha = art.project(&k("alpha")).filter_for(&k("alpha"));
    assert_eq!(alpha.reachable.iter().collect::<Vec<_>>(), vec![&coord]);
    // Without a service port in the inventory, nothing opens by itself.
    let bare = compile(
        &p,
        &Inventory {
            services: Default::default(),
            ..inv
        },
    )
    .unwrap();
    assert!(!bare.filter_for(&coord).allows_peer(&k("alpha"), 6, 8080));
}

/// ICMP echo follows the rules of the destination: allowed when the source may reach any
/// port of it, unless a deny rule covers ICMP; other ICMP types need an `icmp` rule. The
/// compiled table, `decide` and `filter test` agree.
#[test]
fn echo_follows_the_destinations_rules() {
    let a = |s: &str| s.parse().unwrap();
    let inv = Inventory::default()
        .with_node(
            "k-web",
            "web",
            &["tag:web"],
            &[a("100.64.0.1"), a("fd7a::1")],
        )
        .with_node("k-alpha", "alpha", &[], &[a("100.64.0.2")])
        .with_node("k-beta", "beta", &[], &[a("100.64.0.3")])
        .with_node("k-gamma", "gamma", &[], &[a("100.64.0.4")])
        .with_node("k-delta", "delta", &[], &[a("100.64.0.5")]);
    let p = parse_policy(
        "echo.hujson",
        br#"{"default": "deny", "tagOwners": {"tag:web": []},
        "grants": [
          {"src": ["alpha", "beta", "delta"], "dst": ["tag:web"], "ip": ["tcp:443"]},
          {"src": ["delta"], "dst": ["web"], "ip": ["icmp"]},
        ],
        "deny": [{"src": ["beta"], "dst": ["web"], "ip": ["icmp"]}]}"#,
    )
    .unwrap();
    let art = compile(&p, &inv).unwrap();
    let web = NodeKey("k-web".into());
    let t = art.filter_for(&web);
    let k = |n: &str| NodeKey(format!("k-{n}"));
    for (src, proto, ty, want) in [
        ("alpha", 1, 8, true),     // echo request: tcp:443 is open to alpha
        ("alpha", 58, 128, true),  // ICMPv6 echo request
        ("alpha", 1, 13, false),   // timestamp: not an echo, no icmp rule
        ("alpha", 1, 0, false),    // an unsolicited echo reply
        ("alpha", 58, 129, false), // likewise for ICMPv6
        ("beta", 1, 8, false),     // denied explicitly
        ("beta", 58, 128, true),   // the deny names icmp (v4) only
        ("gamma", 1, 8, false),    // no port of web is open to gamma
        ("delta", 1, 13, true),    // an icmp rule allows every type
        ("delta", 1, 8, true),
    ] {
        assert_eq!(
            t.allows_peer(&k(src), proto, ty),
            want,
            "{src} -> web {proto}/{ty}"
        );
        let d = decide(
            &art,
            &Identity::Node(k(src)),
            &Request::Ip {
                dst: Target::Node("web"),
                proto,
                port: ty,
            },
        );
        assert_eq!(d.allow, want, "{src} -> web {proto}/{ty}: {d}");
    }
    // `filter test` reads `HOST/icmp` as an echo request and names the rule that opened it.
    let d = tm_policy::filter_test(&art, "alpha", "web/icmp").unwrap();
    assert!(d.allow, "{}", d.reason);
    assert_eq!(d.rule.as_ref().unwrap().line, 3, "{}", d.reason);
    assert!(d.reason.contains("echo"), "{}", d.reason);
    let d = tm_policy::filter_test(&art, "alpha", "fd7a::1/ipv6-icmp").unwrap();
    assert!(d.allow, "{}", d.reason);
    let d = tm_policy::filter_test(&art, "beta", "web/icmp").unwrap();
    assert!(!d.allow);
    assert_eq!(d.rule.unwrap().line, 6);
    assert!(
        !tm_policy::filter_test(&art, "gamma", "web/icmp")
            .unwrap()
            .allow
    );
    assert!(
        !tm_policy::filter_test(&art, "alpha", "web:13/icmp")
            .unwrap()
            .allow
    );
    assert!(tm_policy::filter_test(&art, "alpha", "web/tcp").is_err());
}
