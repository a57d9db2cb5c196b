//! The differential test of issue 13: `control/policy/tests/golden.txt` (one table of policy,
//! principal, surface, operation and expected decision) through every enforcer the coordinator
//! runs, which must answer exactly as `tm_policy::decide` does:
//! - S3: `tm_s3::decide`, the function every S3 operation calls (`access::check`), with the
//!   typed principal the S3 front authenticates (a node by its 32-byte key);
//! - NFS: `policy::nfs_grant`, what the NFS gate answers for a client address (a member by its
//!   mesh address, local root by loopback);
//! - the admin API: `policy::forwarded_decision`, what the coordinator answers a member that
//!   forwards a command over mTLS (`POST /v1/admin`): the admin capability for `node tag`,
//!   `token list`, `share create`, the S3 `admin` level for `bucket create`;
//! - `policy explain` (the admin command), by the names an operator types.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use tm_policy::golden::{parse_golden, GoldenCase, OwnedRequest};
use tm_policy::{Artifact, Identity, Inventory, NfsOp, NodeKey};

/// Golden node keys are `nodekey:NAME`; the S3 front knows nodes by 32-byte keys. Every key is
/// replaced by the base64 of a 32-byte key derived from it (distinct for the table's names),
/// the form both use.
fn real_key(k: &NodeKey) -> ([u8; 32], NodeKey) {
    let mut b = [0u8; 32];
    for (i, x) in k.0.bytes().enumerate() {
        b[i % 32] ^= x.rotate_left(i as u32 / 32);
    }
    (b, NodeKey(tm_s3::NodeKey(b).to_string()))
}

fn remap_inventory(inv: &Inventory) -> Inventory {
    let mut out = inv.clone();
    out.nodes = inv
        .nodes
        .iter()
        .map(|(k, n)| (real_key(k).1, n.clone()))
        .collect();
    out
}

fn remap(who: &Identity) -> Identity {
    match who {
        Identity::Node(k) => Identity::Node(real_key(k).1),
        other => other.clone(),
    }
}

fn s3_principal(who: &Identity, inv: &Inventory) -> tm_s3::Principal {
    match who {
        Identity::LocalRoot => tm_s3::Principal::LocalRoot,
        Identity::Coordinator => tm_s3::Principal::Coordinator,
        Identity::Node(k) => tm_s3::Principal::Node {
            key: tm_s3::NodeKey(real_key(k).0),
            name: inv.nodes.get(k).map(|n| n.name.clone()).unwrap_or_default(),
            tags: Vec::new(),
        },
        Identity::Token(t) => tm_s3::Principal::Token {
            id: t.0.clone(),
            tags: Vec::new(),
        },
        Identity::Anonymous => tm_s3::Principal::Anonymous,
    }
}

/// The address an NFS client of this identity connects from (`None`: it cannot use NFS).
fn nfs_source(who: &Identity, inv: &Inventory) -> Option<IpAddr> {
    match who {
        Identity::LocalRoot => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Identity::Anonymous => Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9))),
        Identity::Node(k) => Some(
            inv.nodes
                .get(k)
                .and_then(|n| n.addrs.iter().next().copied())
                // a removed node: its old address is no member's any more
                .unwrap_or(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10))),
        ),
        Identity::Coordinator | Identity::Token(_) => None,
    }
}

fn explain_src(who: &Identity, inv: &Inventory) -> Option<String> {
    Some(match who {
        Identity::LocalRoot => "root".into(),
        Identity::Coordinator => "coordinator".into(),
        Identity::Anonymous => "anonymous".into(),
        Identity::Token(t) => format!("token:{}", t.0),
        Identity::Node(k) => format!("node:{}", inv.nodes.get(k)?.name),
    })
}

fn words(r: &OwnedRequest) -> Vec<String> {
    let s: Vec<String> = match r {
        OwnedRequest::S3 { bucket, key, op } => {
            let op = format!("{op:?}").to_lowercase();
            let path = if key.is_empty() {
                bucket.clone()
            } else {
                format!("{bucket}/{key}")
            };
            vec!["s3".into(), op, path]
        }
        OwnedRequest::Nfs { share, op } => {
            vec![
                "nfs".into(),
                format!("{op:?}").to_lowercase(),
                share.clone(),
            ]
        }
        OwnedRequest::Admin => vec!["admin".into()],
        OwnedRequest::Docker {
            node,
            container,
            verb,
        } => vec![
            "docker".into(),
            verb.name().into(),
            format!("{node}/{container}"),
        ],
        OwnedRequest::Ip { dst, proto, port } => {
            let p = match proto {
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                1 => "icmp".to_string(),
                n => n.to_string(),
            };
            vec!["ip".into(), format!("{dst}:{port}/{p}")]
        }
    };
    s
}

/// The commands a member may forward that the admin API decides as `req`.
fn admin_commands(req: &OwnedRequest) -> Vec<tm_api::Command> {
    use tm_api::Command;
    match req {
        OwnedRequest::Admin => vec![
            Command::NodeTag {
                name: "beta".into(),
                tag: "tag:x".into(),
            },
            Command::TokenList,
            Command::ShareList,
        ],
        OwnedRequest::S3 {
            bucket,
            key,
            op: tm_policy::S3Op::Admin,
        } if key.is_empty() => vec![Command::BucketCreate {
            name: bucket.clone(),
        }],
        _ => Vec::new(),
    }
}

#[test]
fn every_enforcer_answers_the_golden_table_as_decide_does() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let text = std::fs::read_to_string(format!("{root}/control/policy/tests/golden.txt"))
        .expect("golden.txt");
    let table = parse_golden(&text).expect("golden.txt parses");
    let inv = remap_inventory(&table.inventory);
    let mut arts: BTreeMap<Option<String>, Artifact> = BTreeMap::new();
    let mut bad = Vec::new();
    let (mut s3, mut nfs, mut explained, mut admin) = (0, 0, 0, 0);
    for c in &table.cases {
        let GoldenCase {
            who, req, allow, ..
        } = c;
        let art = arts
            .entry(c.policy.clone())
            .or_insert_with(|| match &c.policy {
                None => Artifact::no_policy(&inv).expect("no policy"),
                Some(p) => {
                    let src = std::fs::read(format!("{root}/{p}")).expect("policy file");
                    let name = p.rsplit('/').next().expect("name");
                    tm_policy::load(name, &src, &inv)
                        .unwrap_or_else(|e| panic!("{p}: {e}"))
                        .artifact
                }
            });
        let who = remap(who);
        let reference = tm_policy::decide(art, &who, &req.as_request());
        if reference.allow != *allow {
            bad.push(format!("golden.txt:{}: decide says {reference}", c.line));
        }
        match req {
            OwnedRequest::S3 { bucket, key, op } => {
                s3 += 1;
                let p = s3_principal(&c.who, &table.inventory);
                let got = tm_s3::decide(Some(art), &p, bucket, key, *op);
                if got.is_ok() != *allow {
                    bad.push(format!("golden.txt:{}: S3 says {got:?}", c.line));
                }
            }
            OwnedRequest::Nfs { share, op } => {
                if let Some(ip) = nfs_source(&who, &inv) {
                    nfs += 1;
                    let g = crate::policy::nfs_grant(art, ip, share);
                    let got = match op {
                        NfsOp::Mount => g.mount,
                        NfsOp::Read => g.read,
                        NfsOp::Write => g.write,
                    };
                    if got.is_ok() != *allow {
                        bad.push(format!("golden.txt:{}: NFS ({ip}) says {got:?}", c.line));
                    }
                }
            }
            _ => {}
        }
        for cmd in admin_commands(req) {
            admin += 1;
            let got = crate::policy::forwarded_decision(art, &who, &cmd);
            if got.is_ok() != *allow {
                bad.push(format!(
                    "golden.txt:{}: admin API ({cmd:?}) says {got:?}",
                    c.line
                ));
            }
        }
        if let Some(src) = explain_src(&who, &inv) {
            explained += 1;
            match crate::policy::explain(art, &src, &words(req)) {
                Ok(e) if (e.decision == "allow") == *allow => {}
                other => bad.push(format!("golden.txt:{}: explain says {other:?}", c.line)),
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} disagreements:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(
        s3 >= 30 && nfs >= 8 && explained >= 80 && admin >= 10,
        "s3 {s3} nfs {nfs} explain {explained} admin {admin}"
    );
}

#[test]
fn explain_names_tags_and_refuses_unknown_nodes() {
    let inv = Inventory::default().with_node("k1", "beta", &[], &[]);
    let src = br#"{"tagOwners": {"tag:untrusted": []}, "default": "allow",
      "deny": [{"src": ["tag:untrusted"], "dst": ["*"], "app": {"tunnelmesh.io/cap/nfs": [{"shares": ["*"]}]}}]}"#;
    let art = tm_policy::load("p.hujson", src, &inv)
        .expect("load")
        .artifact;
    let w = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let e = crate::policy::explain(&art, "tag:untrusted", &w(&["nfs", "mount", "default"]))
        .expect("explain");
    assert_eq!(
        (e.decision.as_str(), e.rule.as_deref()),
        ("deny", Some("p.hujson:2"))
    );
    let e = crate::policy::explain(&art, "beta", &w(&["nfs", "mount", "default"])).expect("beta");
    assert_eq!(e.decision, "allow");
    let e = crate::policy::explain(&art, "nobody", &w(&["admin"])).unwrap_err();
    assert!(e.contains("no node named"), "{e}");
    let e = crate::policy::explain(&art, "beta", &w(&["s3", "fly", "b"])).unwrap_err();
    assert!(e.contains("unknown s3 op"), "{e}");
}
