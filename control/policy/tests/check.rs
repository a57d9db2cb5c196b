//! `check`: the file's tests run against the real inventory; failures carry the assertion,
//! the expectation and the decision with its rule; `filter_test` is the CLI matcher.

use tm_policy::{check, filter_test, load, parse_policy, Inventory, Refusal};

const POLICY: &str = r#"{
  "default": "deny",
  "tagOwners": {"tag:untrusted": []},
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["web1:443"]}],
  "grants": [{"src": ["autogroup:member"], "dst": ["*"], "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["*"], "access": "rw"}]}}],
  "deny": [{"src": ["tag:untrusted"], "dst": ["*"], "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["*"], "access": "rw"}]}}],
  "tests": [
    {"src": "beta", "s3": {"bucket": "b", "key": "k", "op": "put"}, "expect": "allow"},
    {"src": "beta", "accept": ["web1:443", "web1:22"], "deny": ["web1:80"]},
  ],
}"#;

fn inv(beta_tags: &[&str]) -> Inventory {
    Inventory::default()
        .with_node("k-beta", "beta", beta_tags, &[])
        .with_node("k-web1", "web1", &[], &["100.64.0.3".parse().unwrap()])
}

#[test]
fn tests_see_the_inventory_and_report_each_failure() {
    let p = parse_policy("p.hujson", POLICY.as_bytes()).unwrap();
    // Untagged beta: the S3 test passes, the IP test fails on web1:22 only.
    let f = check(&p, &inv(&[])).unwrap();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        f[0].to_string(),
        "p.hujson:9: test failed: beta -> web1:22/tcp: expected allow, got deny: not allowed: ip web1:22/tcp (no rule grants it; the default is deny)"
    );
    // Once beta is tagged untrusted, the S3 test fails too, naming the deny rule.
    let f = check(&p, &inv(&["tag:untrusted"])).unwrap();
    assert_eq!(f.len(), 2, "{f:?}");
    let s3 = f[0].to_string();
    assert_eq!(s3, "p.hujson:8: test failed: beta: tunnelmesh.io/cap/s3 write on b/k: expected allow, got deny (rule p.hujson:6): not allowed: tunnelmesh.io/cap/s3 write on b/k");
    assert_eq!(
        f[0].got.message(),
        "not allowed: tunnelmesh.io/cap/s3 write on b/k (rule p.hujson:6)"
    );
    assert_eq!(f[0].got.rule.as_ref().map(|r| r.line), Some(6));
    match load("p.hujson", POLICY.as_bytes(), &inv(&[])) {
        Err(Refusal::TestsFailed(v)) => assert_eq!(v.len(), 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_tests_are_refused_at_parse() {
    for (t, needle) in [
        (r#"{"src": "beta"}"#, "exactly one of"),
        (
            r#"{"src": "beta", "s3": {"bucket": "b", "op": "put"}}"#,
            "missing \"expect\"",
        ),
        (
            r#"{"src": "beta", "s3": {"bucket": "b", "op": "rename"}, "expect": "deny"}"#,
            "s3 op must be",
        ),
        (
            r#"{"src": "beta", "nfs": {"share": "x", "op": "mount"}, "admin": {}, "expect": "deny"}"#,
            "exactly one of",
        ),
        (
            r#"{"src": "beta", "accept": ["web1"]}"#,
            "must be host:port",
        ),
        (
            r#"{"src": "beta", "accept": ["web1:1"], "expect": "allow"}"#,
            "not both",
        ),
        (
            r#"{"src": "Beta!", "admin": {}, "expect": "deny"}"#,
            "must be a node name",
        ),
        (
            r#"{"src": "beta", "docker": {"node": "web1", "container": "c", "verb": "rm"}, "expect": "deny"}"#,
            "unknown docker verb",
        ),
        (
            r#"{"src": "beta", "admin": {}, "expect": "maybe"}"#,
            "expect must be",
        ),
    ] {
        let src = format!("{{\"default\": \"deny\",\n \"tests\": [{t}]}}");
        let e = parse_policy("p.hujson", src.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.hujson:2:"), "{e}");
        assert!(e.contains(needle), "{t}: {e}");
    }
}

#[test]
fn filter_test_is_the_cli_matcher() {
    let l = {
        let p = parse_policy("p.hujson", POLICY.as_bytes()).unwrap();
        tm_policy::compile(&p, &inv(&[])).unwrap()
    };
    let d = filter_test(&l, "beta", "web1:443/tcp").unwrap();
    assert!(
        d.allow && d.rule.as_ref().is_some_and(|r| r.line == 4),
        "{d}"
    );
    assert!(!filter_test(&l, "beta", "web1:22").unwrap().allow);
    assert!(filter_test(&l, "beta", "100.64.0.3:443/udp").unwrap().allow);
    assert!(filter_test(&l, "nobody", "web1:22")
        .unwrap_err()
        .contains("unknown node"));
    assert!(filter_test(&l, "beta", "ghost:22")
        .unwrap_err()
        .contains("unknown node"));
    assert!(filter_test(&l, "beta", "web1:22/quic")
        .unwrap_err()
        .contains("unknown protocol"));
    assert!(filter_test(&l, "beta", "web1").is_err());
}

#[test]
fn policy_set_refuses_unknown_node_names_and_hosts_shadowing_nodes() {
    let inv = inv(&[]);
    let typo = br#"{"default": "deny",
  "acls": [{"action": "accept", "src": ["beta"], "dst": ["web2:443"]}]}"#;
    let e = load("p.hujson", typo, &inv).unwrap_err().to_string();
    assert!(
        e.starts_with("p.hujson:2:58: unknown node or host \"web2\""),
        "{e}"
    );
    let grp = br#"{"default": "deny", "groups": {"group:g": ["beta", "gamma"]}}"#;
    let e = load("p.hujson", grp, &inv).unwrap_err().to_string();
    assert!(
        e.starts_with("p.hujson:1:52: unknown node or host \"gamma\""),
        "{e}"
    );
    let shadow = br#"{"default": "deny", "hosts": {"web1": "10.0.0.1"}}"#;
    let e = load("p.hujson", shadow, &inv).unwrap_err().to_string();
    assert!(
        e.starts_with("p.hujson:1:31: hosts name \"web1\" is also a node's name"),
        "{e}"
    );
    // The same files compile (a removed node never breaks the stored policy).
    let p = parse_policy("p.hujson", typo).unwrap();
    assert!(tm_policy::compile(&p, &inv).is_ok());
    // And node_identity is how operator tools name a principal.
    let a = tm_policy::compile(&p, &inv).unwrap();
    assert_eq!(
        a.node_identity("beta"),
        Some(tm_policy::Identity::Node(tm_policy::NodeKey(
            "k-beta".into()
        )))
    );
    assert_eq!(a.node_identity("nobody"), None);
}
