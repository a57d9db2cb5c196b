//! The policy file's `tests`, run by [`check()`] on every `policy set` / `policy check`.
//!
//! Two forms:
//! ```text
//! {"src": "beta", "proto": "tcp", "accept": ["web1:443"], "deny": ["web1:22"]}   // Tailscale's
//! {"src": "tag:untrusted", "s3": {"bucket": "b", "key": "k", "op": "write"}, "expect": "deny"}
//! {"src": "beta", "nfs": {"share": "default", "op": "mount"}, "expect": "deny"}
//! {"src": "alpha", "docker": {"node": "web1", "container": "web", "verb": "exec"}, "expect": "allow"}
//! {"src": "alpha", "admin": {}, "expect": "allow"}
//! ```
//! `src` is a node name (with its tags from the inventory; a name not in the inventory is tested
//! as an untagged node) or `tag:x` (a node carrying only that tag). Hosts in `accept`/`deny` are
//! node names, `tag:x`, hosts names or addresses.

use crate::caps::Verb;
use crate::compile::{compile, Artifact};
use crate::decide::{decide, Decision, NfsOp, Request, S3Op, Target};
use crate::hujson::Value;
use crate::identity::{validate_node_name, Identity, Inventory, NodeInfo, NodeKey};
use crate::model::{AppTestReq, Doc, IpTestDst, Policy, PolicyTest, TestBody};
use crate::selector::{parse_proto, proto_name, SourceRef, TCP};
use crate::Error;
use std::fmt;
use std::net::IpAddr;

/// A failed assertion: what was asserted, what was expected and what the policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFailure {
    /// Where the assertion is written.
    pub at: SourceRef,
    /// The assertion, e.g. `beta: s3 write on build-artifacts/x`.
    pub assertion: String,
    /// The expected outcome (allow = true).
    pub expected: bool,
    /// What the policy decided.
    pub got: Decision,
}

impl fmt::Display for TestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = if self.expected { "allow" } else { "deny" };
        write!(
            f,
            "{}: test failed: {}: expected {e}, got {}",
            self.at, self.assertion, self.got
        )
    }
}

fn test_src(doc: &Doc<'_>, p: &Policy, v: &Value) -> Result<String, Error> {
    let s = doc.str(v, "src")?;
    if s.starts_with("tag:") {
        if !p.tag_owners.contains_key(s) {
            return Err(doc.err(
                v.pos,
                format!("unknown tag {s:?} (declare it in tagOwners)"),
            ));
        }
    } else if let Err(e) = validate_node_name(s) {
        return Err(doc.err(
            v.pos,
            format!("test src {s:?} must be a node name ({e}) or tag:x"),
        ));
    }
    Ok(s.to_string())
}

fn host_ok(p: &Policy, h: &str) -> bool {
    (h.starts_with("tag:") && p.tag_owners.contains_key(h))
        || p.hosts.contains_key(h)
        || h.parse::<IpAddr>().is_ok()
        || validate_node_name(h).is_ok()
}

pub(crate) fn parse_test(doc: &Doc<'_>, p: &Policy, v: &Value) -> Result<PolicyTest, Error> {
    let f = doc.object(
        v,
        "a test",
        &[
            "src", "proto", "accept", "deny", "s3", "nfs", "docker", "admin", "expect",
        ],
    )?;
    let src = test_src(doc, p, doc.need(f, "src", v)?)?;
    let at = doc.at(v.pos);
    let app_keys = ["s3", "nfs", "docker", "admin"];
    let apps: Vec<&str> = app_keys
        .iter()
        .copied()
        .filter(|k| Doc::field(f, k).is_some())
        .collect();
    let is_ip = Doc::field(f, "accept").is_some() || Doc::field(f, "deny").is_some();
    if is_ip {
        if !apps.is_empty() || Doc::field(f, "expect").is_some() {
            return Err(doc.err(v.pos, "a test is either {src, proto?, accept, deny} or {src, s3|nfs|docker|admin, expect}, not both"));
        }
        let proto = match Doc::field(f, "proto") {
            Some(pv) => parse_proto(doc.str(pv, "proto")?).map_err(|e| doc.err(pv.pos, e))?,
            None => TCP,
        };
        let mut lists = [Vec::new(), Vec::new()];
        for (i, key) in ["accept", "deny"].iter().enumerate() {
            if let Some(lv) = Doc::field(f, key) {
                for (s, pos) in doc.strs(lv, key)? {
                    let (host, port) = s
                        .rsplit_once(':')
                        .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h, p)))
                        .ok_or_else(|| {
                            doc.err(pos, format!("{s:?} must be host:port (one port)"))
                        })?;
                    if !host_ok(p, host) {
                        return Err(doc.err(pos, format!("unknown host {host:?} (a node name, a declared tag:, a hosts name or an address)")));
                    }
                    lists[i].push(IpTestDst {
                        host: host.into(),
                        port,
                        at: doc.at(pos),
                    });
                }
            }
        }
        let [accept, deny] = lists;
        return Ok(PolicyTest {
            at,
            src,
            body: TestBody::Ip {
                proto,
                accept,
                deny,
            },
        });
    }
    if apps.len() != 1 {
        return Err(doc.err(
            v.pos,
            "a test needs accept/deny (ip) or exactly one of s3, nfs, docker, admin with expect",
        ));
    }
    if Doc::field(f, "proto").is_some() {
        return Err(doc.err(v.pos, "proto is for ip tests (accept/deny)"));
    }
    let ev = doc.need(f, "expect", v)?;
    let allow = match doc.str(ev, "expect")? {
        "allow" => true,
        "deny" => false,
        s => {
            return Err(doc.err(
                ev.pos,
                format!("expect must be \"allow\" or \"deny\", not {s:?}"),
            ))
        }
    };
    let rv = Doc::field(f, apps[0]).expect("present: found above");
    let req = match apps[0] {
        "s3" => {
            let m = doc.object(rv, "an s3 test", &["bucket", "key", "op"])?;
            let ov = doc.need(m, "op", rv)?;
            let op = S3Op::parse(doc.str(ov, "op")?).ok_or_else(|| {
                doc.err(
                    ov.pos,
                    "s3 op must be read, list, write or admin (or get, head, put, delete)",
                )
            })?;
            AppTestReq::S3 {
                bucket: doc.str(doc.need(m, "bucket", rv)?, "bucket")?.into(),
                key: match Doc::field(m, "key") {
                    Some(k) => doc.str(k, "key")?.into(),
                    None => String::new(),
                },
                op,
            }
        }
        "nfs" => {
            let m = doc.object(rv, "an nfs test", &["share", "op"])?;
            let ov = doc.need(m, "op", rv)?;
            let op = NfsOp::parse(doc.str(ov, "op")?)
                .ok_or_else(|| doc.err(ov.pos, "nfs op must be mount, read or write"))?;
            AppTestReq::Nfs {
                share: doc.str(doc.need(m, "share", rv)?, "share")?.into(),
                op,
            }
        }
        "docker" => {
            let m = doc.object(rv, "a docker test", &["node", "container", "verb"])?;
            let vv = doc.need(m, "verb", rv)?;
            let verb = Verb::parse(doc.str(vv, "verb")?).ok_or_else(|| {
                doc.err(
                    vv.pos,
                    "unknown docker verb (list, inspect, stats, logs, start, stop, restart, exec)",
                )
            })?;
            let nv = doc.need(m, "node", rv)?;
            let node = doc.str(nv, "node")?;
            if !(node.starts_with("tag:") && p.tag_owners.contains_key(node))
                && validate_node_name(node).is_err()
            {
                return Err(doc.err(
                    nv.pos,
                    format!("unknown node {node:?} (a node name or a declared tag:)"),
                ));
            }
            AppTestReq::Docker {
                node: node.into(),
                container: doc.str(doc.need(m, "container", rv)?, "container")?.into(),
                verb,
            }
        }
        _ => {
            doc.object(rv, "an admin test", &[])?;
            AppTestReq::Admin
        }
    };
    Ok(PolicyTest {
        at,
        src,
        body: TestBody::App { req, allow },
    })
}

/// Makes sure a node called `name` (or a node carrying tag `name`, when it is `tag:x`) exists in
/// the test artifact and returns its key.
fn ensure_node(art: &mut Artifact, name: &str) -> NodeKey {
    if let Some((k, _)) = art.node_by_name(name) {
        return k.clone();
    }
    let key = NodeKey(format!("policy-test:{name}"));
    let mut info = NodeInfo {
        // `tag:x` can never be a real node's name (no ':' in names), so no rule selects it by
        // name, and `node_by_name` still finds it.
        name: name.to_string(),
        ..NodeInfo::default()
    };
    if name.starts_with("tag:") {
        info.tags.insert(name.to_string());
    }
    art.nodes.insert(key.clone(), info);
    key
}

/// Runs the policy's tests against the inventory. An empty list means the file may be set; any
/// failure refuses the whole file.
pub fn check(policy: &Policy, inv: &Inventory) -> Result<Vec<TestFailure>, Error> {
    let mut art = compile(policy, inv)?;
    // Add every test principal and host first, so all tests see the same artifact.
    for t in &policy.tests {
        ensure_node(&mut art, &t.src);
        match &t.body {
            TestBody::Ip { accept, deny, .. } => {
                for d in accept.iter().chain(deny) {
                    if !policy.hosts.contains_key(&d.host) && d.host.parse::<IpAddr>().is_err() {
                        ensure_node(&mut art, &d.host);
                    }
                }
            }
            TestBody::App {
                req: AppTestReq::Docker { node, .. },
                ..
            } => {
                ensure_node(&mut art, node);
            }
            TestBody::App { .. } => {}
        }
    }
    let mut failures = Vec::new();
    for t in &policy.tests {
        let who = Identity::Node(ensure_node(&mut art, &t.src));
        match &t.body {
            TestBody::Ip {
                proto,
                accept,
                deny,
            } => {
                for (list, expected) in [(accept, true), (deny, false)] {
                    for d in list {
                        let dst = if let Some(c) = policy.hosts.get(&d.host) {
                            Target::Addr(c.addr)
                        } else if let Ok(a) = d.host.parse::<IpAddr>() {
                            Target::Addr(a)
                        } else {
                            Target::Node(&d.host)
                        };
                        let got = decide(
                            &art,
                            &who,
                            &Request::Ip {
                                dst,
                                proto: *proto,
                                port: d.port,
                            },
                        );
                        if got.allow != expected {
                            failures.push(TestFailure {
                                at: d.at.clone(),
                                assertion: format!(
                                    "{} -> {}:{}/{}",
                                    t.src,
                                    d.host,
                                    d.port,
                                    proto_name(*proto)
                                ),
                                expected,
                                got,
                            });
                        }
                    }
                }
            }
            TestBody::App { req, allow } => {
                let r = match req {
                    AppTestReq::S3 { bucket, key, op } => Request::S3 {
                        bucket,
                        key,
                        op: *op,
                    },
                    AppTestReq::Nfs { share, op } => Request::Nfs { share, op: *op },
                    AppTestReq::Docker {
                        node,
                        container,
                        verb,
                    } => Request::Docker {
                        node,
                        container,
                        verb: *verb,
                    },
                    AppTestReq::Admin => Request::Admin,
                };
                let got = decide(&art, &who, &r);
                if got.allow != *allow {
                    failures.push(TestFailure {
                        at: t.at.clone(),
                        assertion: format!("{}: {r}", t.src),
                        expected: *allow,
                        got,
                    });
                }
            }
        }
    }
    Ok(failures)
}
