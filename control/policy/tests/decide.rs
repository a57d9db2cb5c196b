//! Decisions: typed identities, precedence (deny > allow > default), the default without a
//! policy, the private system bucket, prefixes, explain, the artifact hash and projections.

use tm_policy::{
    compile, decide, explain, parse_policy, Artifact, Identity, Inventory, NfsOp, NodeKey, Request,
    S3Op, Target, TokenId, Verb,
};

fn inv() -> Inventory {
    Inventory::default()
        .with_node(
            "nodekey:alpha",
            "alpha",
            &[],
            &["100.64.0.1".parse().unwrap()],
        )
        .with_node(
            "nodekey:beta",
            "beta",
            &["tag:untrusted"],
            &["100.64.0.2".parse().unwrap()],
        )
        // Names of built-in principals are plain node names with no powers.
        .with_node("nodekey:system", "system", &[], &[])
        .with_node("nodekey:coordinator", "coordinator", &[], &[])
        .with_node("nodekey:root", "root", &[], &[])
        .with_token("tok-ci", &["tag:ci"])
        .with_token("tok-plain", &[])
}

fn node(n: &str) -> Identity {
    Identity::Node(NodeKey(format!("nodekey:{n}")))
}

fn art(src: &str) -> Artifact {
    let p = parse_policy("t.hujson", src.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    compile(&p, &inv()).unwrap()
}

const S3_PUT: Request<'static> = Request::S3 {
    bucket: "data",
    key: "a/b",
    op: S3Op::Write,
};
const S3_GET: Request<'static> = Request::S3 {
    bucket: "data",
    key: "a/b",
    op: S3Op::Read,
};
const SYS_LIST: Request<'static> = Request::S3 {
    bucket: "_tunnelmesh",
    key: "",
    op: S3Op::List,
};
const SYS_GET: Request<'static> = Request::S3 {
    bucket: "_tunnelmesh",
    key: "coordinator/state.json",
    op: S3Op::Read,
};
const MOUNT: Request<'static> = Request::Nfs {
    share: "default",
    op: NfsOp::Mount,
};
const NFS_WRITE: Request<'static> = Request::Nfs {
    share: "default",
    op: NfsOp::Write,
};

#[test]
fn no_policy_members_use_s3_and_nfs_nobody_but_root_is_admin() {
    let a = Artifact::no_policy(&inv()).unwrap();
    for r in [S3_PUT, S3_GET, MOUNT, NFS_WRITE] {
        let d = decide(&a, &node("alpha"), &r);
        assert!(d.allow, "{r}: {d}");
        assert_eq!(d.reason, "no policy: all members allowed");
    }
    for who in ["alpha", "system", "coordinator", "root"] {
        assert!(!decide(&a, &node(who), &Request::Admin).allow, "{who}");
        assert!(
            !decide(&a, &node(who), &SYS_GET).allow,
            "{who} reads the system bucket"
        );
        assert!(
            !decide(&a, &node(who), &SYS_LIST).allow,
            "{who} lists the system bucket"
        );
        // Bucket create/delete on ordinary buckets is part of using S3 without a policy.
        let bucket_admin = Request::S3 {
            bucket: "data",
            key: "",
            op: S3Op::Admin,
        };
        assert!(decide(&a, &node(who), &bucket_admin).allow, "{who}");
    }
    assert_eq!(
        decide(&a, &node("alpha"), &Request::Admin).message(),
        "not allowed: tunnelmesh.io/cap/admin (no rule grants it; the default never does)"
    );
    assert!(decide(&a, &Identity::LocalRoot, &Request::Admin).allow);
    assert!(decide(&a, &Identity::Coordinator, &SYS_GET).allow);
    assert!(decide(&a, &Identity::LocalRoot, &SYS_LIST).allow);
    assert!(!decide(&a, &Identity::Anonymous, &S3_GET).allow);
    // Without a policy file a mesh token works for S3 directly (the seed's Bearer login),
    // but tokens are not members: no NFS, no admin.
    let tok = Identity::Token(TokenId("tok-plain".into()));
    assert!(decide(&a, &tok, &S3_GET).allow);
    assert!(decide(&a, &tok, &S3_PUT).allow);
    assert!(!decide(&a, &tok, &MOUNT).allow);
    assert!(!decide(&a, &tok, &Request::Admin).allow);
    assert!(!decide(&a, &tok, &SYS_GET).allow);
    // Docker is never given by the default.
    assert!(
        !decide(
            &a,
            &node("alpha"),
            &Request::Docker {
                node: "beta",
                container: "c",
                verb: Verb::List
            }
        )
        .allow
    );
}

#[test]
fn removed_nodes_and_revoked_tokens_are_denied() {
    let a = Artifact::no_policy(&inv()).unwrap();
    let d = decide(&a, &Identity::Node(NodeKey("nodekey:gone".into())), &S3_GET);
    assert!(!d.allow && d.reason.contains("not in the mesh"), "{d}");
    let d = decide(&a, &Identity::Token(TokenId("revoked".into())), &S3_GET);
    assert!(!d.allow && d.reason.contains("revoked"), "{d}");
}

#[test]
fn precedence_deny_beats_allow_beats_default() {
    let a = art(r#"{
  "default": "allow",
  "tagOwners": {"tag:untrusted": [], "tag:ci": []},
  "grants": [
    {"src": ["beta"], "dst": ["*"], "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["*"], "access": "rw"}]}},
  ],
  "deny": [
    {"src": ["tag:untrusted"], "dst": ["*"], "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["data"], "access": "rw"}]}},
  ],
}"#);
    // deny (line 8) beats the grant to beta (line 5)
    let d = decide(&a, &node("beta"), &S3_PUT);
    assert_eq!(
        (d.allow, d.rule.as_ref().map(|r| r.to_string())),
        (false, Some("t.hujson:8".into())),
        "{d}"
    );
    // the grant beats the default for beta elsewhere
    let d = decide(
        &a,
        &node("beta"),
        &Request::S3 {
            bucket: "other",
            key: "k",
            op: S3Op::Write,
        },
    );
    assert_eq!((d.allow, d.rule.map(|r| r.line)), (true, Some(5)));
    // a deny at rw leaves reads
    assert!(decide(&a, &node("beta"), &S3_GET).allow);
    // the default decides for alpha, with no rule
    let d = decide(&a, &node("alpha"), &S3_PUT);
    assert!(
        d.allow && d.rule.is_none() && d.reason.contains("default is allow"),
        "{d}"
    );
    // explain lists every match, deny first
    let e = explain(&a, &node("beta"), &S3_PUT);
    let lines: Vec<u32> = e.matched.iter().map(|(_, r)| r.line).collect();
    assert_eq!(lines, vec![8, 5]);
    assert_eq!(e.decision, decide(&a, &node("beta"), &S3_PUT));
}

#[test]
fn default_deny_grants_only_what_is_written() {
    let a = art(r#"{"default": "deny",
  "grants": [{"src": ["alpha"], "dst": ["*"], "app": {"tunnelmesh.io/cap/nfs": [{"shares": ["home-*"], "access": "ro"}]}}]}"#);
    assert!(!decide(&a, &node("alpha"), &S3_GET).allow);
    assert!(!decide(&a, &node("alpha"), &MOUNT).allow);
    assert!(
        decide(
            &a,
            &node("alpha"),
            &Request::Nfs {
                share: "home-a",
                op: NfsOp::Mount
            }
        )
        .allow
    );
    assert!(
        !decide(
            &a,
            &node("alpha"),
            &Request::Nfs {
                share: "home-a",
                op: NfsOp::Write
            }
        )
        .allow
    );
    let d = decide(&a, &node("beta"), &MOUNT);
    assert!(
        d.reason
            .starts_with("not allowed: tunnelmesh.io/cap/nfs mount on share default"),
        "{d}"
    );
}

#[test]
fn node_names_never_alias_builtin_principals() {
    let a = art(r#"{"default": "allow",
  "grants": [{"src": ["coordinator"], "dst": ["*"], "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["data"], "access": "ro"}]}}]}"#);
    // A node named "coordinator" is matched by the selector "coordinator" as a node name only:
    // it gets what is written (plus the default), never the coordinator's powers.
    for who in ["coordinator", "system", "root"] {
        assert!(!decide(&a, &node(who), &SYS_GET).allow, "{who}");
        assert!(!decide(&a, &node(who), &Request::Admin).allow, "{who}");
    }
    assert_ne!(node("coordinator"), Identity::Coordinator);
    assert_ne!(node("root"), Identity::LocalRoot);
}

#[test]
fn system_bucket_needs_the_admin_capability() {
    let a = art(r#"{"default": "allow",
  "grants": [{"src": ["alpha"], "dst": ["*"], "app": {"tunnelmesh.io/cap/admin": [{}], "tunnelmesh.io/cap/s3": [{"buckets": ["*"], "access": "admin"}]}}]}"#);
    let d = decide(&a, &node("alpha"), &SYS_GET);
    assert!(
        d.allow && d.rule.as_ref().is_some_and(|r| r.line == 2),
        "{d}"
    );
    // `*` with access admin does not reach it for others.
    let d = decide(&a, &node("beta"), &SYS_LIST);
    assert!(!d.allow && d.reason.contains("is private"), "{d}");
    assert!(
        !decide(
            &a,
            &node("beta"),
            &Request::Nfs {
                share: "_tunnelmesh",
                op: NfsOp::Mount
            }
        )
        .allow
    );
}

#[test]
fn prefixes_bound_reads_writes_and_listings() {
    let a = art(r#"{"default": "deny",
  "tagOwners": {"tag:ci": []},
  "grants": [{"src": ["tag:ci"], "dst": ["*"], "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["b"], "prefix": "ci/", "access": "rw"}]}},
             {"src": ["alpha"], "dst": ["*"], "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["b"], "access": "ro"}]}}],
  "deny": [{"src": ["alpha"], "dst": ["*"], "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["b"], "prefix": "secret/"}]}}]}"#);
    let ci = Identity::Token(TokenId("tok-ci".into()));
    let s3 = |key: &'static str, op| Request::S3 {
        bucket: "b",
        key,
        op,
    };
    assert!(decide(&a, &ci, &s3("ci/x", S3Op::Write)).allow);
    assert!(!decide(&a, &ci, &s3("other/x", S3Op::Write)).allow);
    assert!(decide(&a, &ci, &s3("ci/", S3Op::List)).allow);
    assert!(
        !decide(&a, &ci, &s3("", S3Op::List)).allow,
        "listing the whole bucket leaves the prefix"
    );
    assert!(!decide(&a, &ci, &s3("", S3Op::Admin)).allow);
    assert!(decide(&a, &node("alpha"), &s3("pub/x", S3Op::Read)).allow);
    assert!(!decide(&a, &node("alpha"), &s3("secret/x", S3Op::Read)).allow);
    assert!(
        !decide(&a, &node("alpha"), &s3("", S3Op::List)).allow,
        "a full listing would show secret/"
    );
    assert!(!decide(&a, &node("alpha"), &s3("sec", S3Op::List)).allow);
    assert!(decide(&a, &node("alpha"), &s3("pub/", S3Op::List)).allow);
}

#[test]
fn docker_verbs_and_targets() {
    let a = art(r#"{"default": "allow",
  "tagOwners": {"tag:untrusted": []},
  "groups": {"group:help": ["alpha"]},
  "grants": [{"src": ["group:help"], "dst": ["tag:untrusted"], "app": {"tunnelmesh.io/cap/docker": [{"containers": ["web*"], "verbs": ["helpdesk"]}]}},
             {"src": ["system"], "dst": ["beta"], "app": {"tunnelmesh.io/cap/docker": [{"containers": ["*"], "verbs": ["operator"]}]}}],
  "deny": [{"src": ["*"], "dst": ["*"], "app": {"tunnelmesh.io/cap/docker": [{"containers": ["web-db"], "verbs": ["logs"]}]}}]}"#);
    let dk = |node, container, verb| Request::Docker {
        node,
        container,
        verb,
    };
    assert!(decide(&a, &node("alpha"), &dk("beta", "web-1", Verb::Logs)).allow);
    assert!(!decide(&a, &node("alpha"), &dk("beta", "web-1", Verb::Restart)).allow);
    assert!(!decide(&a, &node("alpha"), &dk("beta", "db", Verb::List)).allow);
    assert!(
        !decide(&a, &node("alpha"), &dk("alpha", "web-1", Verb::List)).allow,
        "alpha is not tagged untrusted"
    );
    assert!(
        !decide(&a, &node("alpha"), &dk("beta", "web-db", Verb::Logs)).allow,
        "deny wins"
    );
    assert!(decide(&a, &node("system"), &dk("beta", "x", Verb::Restart)).allow);
    assert!(
        !decide(&a, &node("system"), &dk("beta", "x", Verb::Exec)).allow,
        "exec only where named"
    );
    let d = decide(&a, &node("system"), &dk("nowhere", "x", Verb::List));
    assert!(!d.allow && d.reason.contains("unknown node"), "{d}");
}

#[test]
fn ip_rules_and_filter_test() {
    let a = art(r#"{"default": "deny",
  "tagOwners": {"tag:untrusted": []},
  "hosts": {"lan": "100.64.0.0/24"},
  "acls": [{"action": "accept", "src": ["alpha"], "dst": ["beta:22,8000-8100"]},
           {"action": "accept", "src": ["tag:untrusted"], "dst": ["lan:53"], "proto": "udp"}],
  "deny": [{"src": ["*"], "dst": ["*"], "ip": ["tcp:8080"]}]}"#);
    let ip = |dst, proto, port| Request::Ip {
        dst: Target::Node(dst),
        proto,
        port,
    };
    assert!(decide(&a, &node("alpha"), &ip("beta", 6, 22)).allow);
    assert!(decide(&a, &node("alpha"), &ip("beta", 6, 8000)).allow);
    let d = decide(&a, &node("alpha"), &ip("beta", 6, 8080));
    assert!(
        !d.allow && d.rule.as_ref().is_some_and(|r| r.line == 6),
        "{d}"
    );
    assert!(
        decide(&a, &node("alpha"), &ip("beta", 17, 22)).allow,
        "no proto: TCP and UDP"
    );
    assert!(!decide(&a, &node("alpha"), &ip("beta", 132, 22)).allow);
    assert!(!decide(&a, &node("beta"), &ip("alpha", 6, 22)).allow);
    assert!(
        decide(&a, &node("beta"), &ip("alpha", 17, 53)).allow,
        "alpha's address is in lan"
    );
    assert!(
        decide(
            &a,
            &node("beta"),
            &Request::Ip {
                dst: Target::Addr("100.64.0.9".parse().unwrap()),
                proto: 17,
                port: 53
            }
        )
        .allow
    );
    assert!(
        !decide(
            &a,
            &node("beta"),
            &Request::Ip {
                dst: Target::Addr("10.0.0.1".parse().unwrap()),
                proto: 17,
                port: 53
            }
        )
        .allow
    );
}

#[test]
fn hash_is_stable_and_follows_meaning() {
    let src = r#"{"default": "allow", "tagOwners": {"tag:untrusted": []},
      "deny": [{"src": ["tag:untrusted"], "dst": ["*"], "app": {"tunnelmesh.io/cap/nfs": [{"shares": ["*"]}]}}]}"#;
    let a = art(src);
    let b = art(src);
    assert_eq!(a.hash(), b.hash());
    // Same policy, reformatted with comments on the same lines: same hash.
    let c = art(&src.replace(
        "\"default\": \"allow\",",
        "\"default\": /* x */ \"allow\" /* y */,",
    ));
    assert_eq!(a.hash(), c.hash());
    // A tag change in the inventory changes the hash (it changes decisions).
    let p = parse_policy("t.hujson", src.as_bytes()).unwrap();
    let mut i2 = inv();
    i2.nodes
        .get_mut(&NodeKey("nodekey:alpha".into()))
        .unwrap()
        .tags
        .insert("tag:untrusted".into());
    assert_ne!(compile(&p, &i2).unwrap().hash(), a.hash());
    // Round trip through bytes keeps decisions and hash.
    let back = Artifact::from_bytes(&a.to_bytes()).unwrap();
    assert_eq!(back.hash(), a.hash());
    assert_eq!(
        decide(&back, &node("beta"), &MOUNT),
        decide(&a, &node("beta"), &MOUNT)
    );
    assert!(Artifact::from_bytes(b"{}").is_err());
}

#[test]
fn inventory_with_duplicate_or_bad_names_is_refused() {
    let p = parse_policy("t.hujson", br#"{"default": "allow"}"#).unwrap();
    let dup = Inventory::default()
        .with_node("k1", "a", &[], &[])
        .with_node("k2", "a", &[], &[]);
    assert!(compile(&p, &dup)
        .unwrap_err()
        .to_string()
        .contains("two nodes are named \"a\""));
    let bad = Inventory::default().with_node("k1", "tag:x", &[], &[]);
    assert!(compile(&p, &bad).is_err());
    let badtag = Inventory::default().with_node("k1", "a", &["untrusted"], &[]);
    assert!(compile(&p, &badtag)
        .unwrap_err()
        .to_string()
        .contains("malformed tag"));
}

#[test]
fn projection_keeps_docker_and_ip_decisions_for_its_node() {
    let a = art(r#"{"default": "deny",
  "tagOwners": {"tag:untrusted": []},
  "acls": [{"action": "accept", "src": ["alpha"], "dst": ["beta:22", "system:80"]}],
  "grants": [{"src": ["alpha"], "dst": ["beta"], "app": {"tunnelmesh.io/cap/docker": [{"containers": ["*"], "verbs": ["viewer"]}]}},
             {"src": ["alpha"], "dst": ["*"], "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["*"], "access": "rw"}]}}]}"#);
    let beta = a.project(&NodeKey("nodekey:beta".into()));
    assert_eq!(beta.rules.len(), 2, "{:#?}", beta.rules);
    let reqs = [
        Request::Docker {
            node: "beta",
            container: "c",
            verb: Verb::List,
        },
        Request::Docker {
            node: "beta",
            container: "c",
            verb: Verb::Logs,
        },
        Request::Ip {
            dst: Target::Node("beta"),
            proto: 6,
            port: 22,
        },
        Request::Ip {
            dst: Target::Node("beta"),
            proto: 6,
            port: 80,
        },
    ];
    for r in reqs {
        for who in ["alpha", "beta", "system"] {
            assert_eq!(
                decide(&beta, &node(who), &r).allow,
                decide(&a, &node(who), &r).allow,
                "{who} {r}"
            );
        }
    }
    // S3 grants are not shipped to plain nodes.
    assert!(!decide(&beta, &node("alpha"), &S3_PUT).allow);
    assert!(decide(&a, &node("alpha"), &S3_PUT).allow);
    assert_ne!(beta.hash(), a.hash());
}
