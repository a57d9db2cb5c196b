//! The shipped example (`examples/policy.hujson`, with the seed's "untrusted" sentence) loads,
//! compiles and passes its own tests, and means what its comments say.

use tm_policy::{decide, load, Identity, Inventory, NfsOp, NodeKey, Refusal, Request, S3Op, Verb};

fn example() -> Vec<u8> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.hujson");
    std::fs::read(p).expect("examples/policy.hujson is in the repository")
}

fn inventory() -> Inventory {
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
        .with_node(
            "nodekey:web1",
            "web1",
            &["tag:web"],
            &["100.64.0.3".parse().unwrap()],
        )
        .with_token("ci1", &["tag:ci"])
}

#[test]
fn example_loads_against_a_mesh_and_its_tests_pass() {
    let l = load("policy.hujson", &example(), &inventory()).unwrap_or_else(|e| panic!("{e}"));
    assert!(l.hash.0.starts_with("sha256:") && l.hash.0.len() == 71);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    // Offline (no mesh): the file's own tests still pass with synthetic principals...
    let p = tm_policy::parse_policy("policy.hujson", &example()).unwrap();
    assert_eq!(tm_policy::check(&p, &Inventory::default()).unwrap(), vec![]);
    // ...but `policy set` refuses names no node has (typo guard), naming the place.
    let e = load("policy.hujson", &example(), &Inventory::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("policy.hujson:10:19: unknown node or host \"alpha\""),
        "{e}"
    );
}

#[test]
fn seed_example_untrusted_is_read_only_without_nfs() {
    let l = load("policy.hujson", &example(), &inventory()).unwrap();
    let beta = Identity::Node(NodeKey("nodekey:beta".into()));
    let alpha = Identity::Node(NodeKey("nodekey:alpha".into()));
    let put = Request::S3 {
        bucket: "build-artifacts",
        key: "x",
        op: S3Op::Write,
    };
    let get = Request::S3 {
        bucket: "build-artifacts",
        key: "x",
        op: S3Op::Read,
    };
    let mount = Request::Nfs {
        share: "default",
        op: NfsOp::Mount,
    };
    let d = decide(&l.artifact, &beta, &put);
    assert!(!d.allow);
    let rule = d.rule.expect("a deny rule decided");
    // The deny entry for S3 in the file.
    let text = String::from_utf8(example()).unwrap();
    let line = text.lines().nth(rule.line as usize - 1).unwrap();
    assert!(
        line.contains("tunnelmesh.io/cap/s3") && line.contains("\"rw\""),
        "{rule}: {line}"
    );
    assert!(decide(&l.artifact, &beta, &get).allow);
    assert!(!decide(&l.artifact, &beta, &mount).allow);
    assert!(decide(&l.artifact, &alpha, &put).allow);
    assert!(decide(&l.artifact, &alpha, &mount).allow);
    // The CI token: only under ci/ in build-artifacts.
    let ci = Identity::Token(tm_policy::TokenId("ci1".into()));
    assert!(
        decide(
            &l.artifact,
            &ci,
            &Request::S3 {
                bucket: "build-artifacts",
                key: "ci/1.tar",
                op: S3Op::Write
            }
        )
        .allow
    );
    assert!(
        !decide(
            &l.artifact,
            &ci,
            &Request::S3 {
                bucket: "build-artifacts",
                key: "x.tar",
                op: S3Op::Write
            }
        )
        .allow
    );
    assert!(
        !decide(
            &l.artifact,
            &ci,
            &Request::S3 {
                bucket: "other",
                key: "",
                op: S3Op::List
            }
        )
        .allow
    );
    // Docker: ops exec on web nodes; web nodes only helpdesk.
    let web1 = Identity::Node(NodeKey("nodekey:web1".into()));
    assert!(
        decide(
            &l.artifact,
            &alpha,
            &Request::Docker {
                node: "web1",
                container: "x",
                verb: Verb::Exec
            }
        )
        .allow
    );
    assert!(
        !decide(
            &l.artifact,
            &alpha,
            &Request::Docker {
                node: "beta",
                container: "x",
                verb: Verb::List
            }
        )
        .allow
    );
    assert!(
        decide(
            &l.artifact,
            &web1,
            &Request::Docker {
                node: "web1",
                container: "web-2",
                verb: Verb::Logs
            }
        )
        .allow
    );
    assert!(
        !decide(
            &l.artifact,
            &web1,
            &Request::Docker {
                node: "web1",
                container: "web-2",
                verb: Verb::Exec
            }
        )
        .allow
    );
}

#[test]
fn a_failing_test_refuses_the_file_with_the_assertion_and_decision() {
    let text = String::from_utf8(example()).unwrap();
    // Flip one expectation: untrusted PUT now "allow".
    let bad = text.replacen(
        r#""key": "x.tar", "op": "put"}, "expect": "deny""#,
        r#""key": "x.tar", "op": "put"}, "expect": "allow""#,
        1,
    );
    assert_ne!(bad, text);
    match load("policy.hujson", bad.as_bytes(), &inventory()) {
        Err(Refusal::TestsFailed(f)) => {
            assert_eq!(f.len(), 1, "{f:?}");
            let msg = f[0].to_string();
            assert!(msg.starts_with("policy.hujson:"), "{msg}");
            assert!(
                msg.contains("expected allow, got deny (rule policy.hujson:"),
                "{msg}"
            );
            assert!(
                msg.contains("tag:untrusted: tunnelmesh.io/cap/s3 write on build-artifacts/x.tar"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn readme_policy_example_is_valid_and_passes_its_tests() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme
        .find("```hujson\n")
        .expect("README has a hujson example")
        + 10;
    let len = readme[start..].find("```").unwrap();
    let text = &readme[start..start + len];
    let l = load("policy.hujson", text.as_bytes(), &inventory()).unwrap_or_else(|e| panic!("{e}"));
    let beta = Identity::Node(NodeKey("nodekey:beta".into()));
    assert!(
        !decide(
            &l.artifact,
            &beta,
            &Request::S3 {
                bucket: "b",
                key: "k",
                op: S3Op::Write
            }
        )
        .allow
    );
    assert!(
        decide(
            &l.artifact,
            &beta,
            &Request::S3 {
                bucket: "b",
                key: "k",
                op: S3Op::Read
            }
        )
        .allow
    );
    assert!(
        !decide(
            &l.artifact,
            &beta,
            &Request::Nfs {
                share: "default",
                op: NfsOp::Mount
            }
        )
        .allow
    );
}
