//! The golden decision table: one file of (policy, principal, surface, operation, expected
//! decision) that every enforcer must answer identically (issue 13's differential test).
//! `tests/golden.txt` runs through [`crate::decide()`] here; the S3, NFS, admin-API, Docker and
//! packet-filter enforcers run the same file through their real request paths.
//!
//! Format, one item per line (`#` starts a comment):
//! ```text
//! node beta tag:untrusted addr=100.64.0.2     # inventory: key "nodekey:beta"
//! token ci tag:ci                              # inventory: token id "ci"
//! policy examples/policy.hujson                # relative to the workspace root; `none` = no policy
//! node:beta    s3 write build-artifacts/x.tar  deny @41
//! node:alpha   nfs mount default               allow
//! root         admin                           allow @-
//! token:ci     docker logs web1/web            allow
//! node:alpha   ip web1:22/tcp                  deny
//! ```
//! Principals: `root`, `coordinator`, `anonymous`, `node:NAME` (key `nodekey:NAME`, which may
//! be absent from the inventory: a removed node), `token:ID`. The optional `@LINE` checks the
//! deciding rule's line; `@-` checks that no rule decided (built-in or default).

use crate::caps::Verb;
use crate::decide::{NfsOp, Request, S3Op, Target};
use crate::identity::{Identity, Inventory, NodeKey, TokenId};
use crate::selector::parse_proto;
use std::net::IpAddr;

/// A request that owns its strings (tables, CLIs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedRequest {
    /// See [`Request::S3`].
    S3 {
        /// Bucket.
        bucket: String,
        /// Key or prefix.
        key: String,
        /// Operation.
        op: S3Op,
    },
    /// See [`Request::Nfs`].
    Nfs {
        /// Share.
        share: String,
        /// Operation.
        op: NfsOp,
    },
    /// See [`Request::Admin`].
    Admin,
    /// See [`Request::Docker`].
    Docker {
        /// Node name.
        node: String,
        /// Container.
        container: String,
        /// Verb.
        verb: Verb,
    },
    /// See [`Request::Ip`]; `dst` is a node name or an address.
    Ip {
        /// Node name or address.
        dst: String,
        /// Protocol.
        proto: u8,
        /// Port.
        port: u16,
    },
}

impl OwnedRequest {
    /// The borrowed form [`crate::decide()`] takes.
    pub fn as_request(&self) -> Request<'_> {
        match self {
            OwnedRequest::S3 { bucket, key, op } => Request::S3 {
                bucket,
                key,
                op: *op,
            },
            OwnedRequest::Nfs { share, op } => Request::Nfs { share, op: *op },
            OwnedRequest::Admin => Request::Admin,
            OwnedRequest::Docker {
                node,
                container,
                verb,
            } => Request::Docker {
                node,
                container,
                verb: *verb,
            },
            OwnedRequest::Ip { dst, proto, port } => Request::Ip {
                dst: match dst.parse::<IpAddr>() {
                    Ok(a) => Target::Addr(a),
                    Err(_) => Target::Node(dst),
                },
                proto: *proto,
                port: *port,
            },
        }
    }

    /// Parses `s3 OP BUCKET[/KEY]`, `nfs OP SHARE`, `admin`, `docker VERB NODE/CONTAINER`,
    /// `ip HOST:PORT/PROTO` (words already split).
    pub fn parse(words: &[&str]) -> Result<OwnedRequest, String> {
        match words {
            ["s3", op, path] => {
                let op = S3Op::parse(op).ok_or_else(|| format!("unknown s3 op {op:?}"))?;
                let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
                Ok(OwnedRequest::S3 {
                    bucket: bucket.into(),
                    key: key.into(),
                    op,
                })
            }
            ["nfs", op, share] => Ok(OwnedRequest::Nfs {
                share: share.to_string(),
                op: NfsOp::parse(op).ok_or_else(|| format!("unknown nfs op {op:?}"))?,
            }),
            ["admin"] => Ok(OwnedRequest::Admin),
            ["docker", verb, path] => {
                let (node, container) = path
                    .split_once('/')
                    .ok_or_else(|| format!("{path:?} must be NODE/CONTAINER"))?;
                Ok(OwnedRequest::Docker {
                    node: node.into(),
                    container: container.into(),
                    verb: Verb::parse(verb)
                        .ok_or_else(|| format!("unknown docker verb {verb:?}"))?,
                })
            }
            ["ip", dst] => {
                let (dst, proto, port) = parse_ip_dst(dst)?;
                Ok(OwnedRequest::Ip { dst, proto, port })
            }
            _ => Err(format!("cannot read request {:?}", words.join(" "))),
        }
    }
}

/// Parses `filter test --dst` syntax: `HOST:PORT/PROTO` (`/tcp` when omitted).
///
/// For ICMP and ICMPv6 the number is the message type, and `HOST/icmp` (no number) means an
/// echo request (type 8, or 128 for ICMPv6), what `ping` sends.
pub fn parse_ip_dst(s: &str) -> Result<(String, u8, u16), String> {
    let (hp, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let proto = parse_proto(proto)?;
    let echo = crate::selector::echo_request(proto);
    if let (Some(echo), Ok(_)) = (echo, hp.parse::<std::net::IpAddr>()) {
        // A bare address (IPv6 literals have colons of their own).
        return Ok((hp.to_string(), proto, echo));
    }
    let (host, port) = match (hp.rsplit_once(':'), echo) {
        (Some((h, p)), _) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, p),
        (_, Some(echo)) => return Ok((hp.to_string(), proto, echo)),
        _ => {
            return Err(format!(
                "{s:?} must be HOST:PORT/PROTO (or HOST/icmp for an echo)"
            ))
        }
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{port:?} is not a port"))?;
    Ok((host.to_string(), proto, port))
}

/// Parses a principal: `root`, `coordinator`, `anonymous`, `node:NAME`, `token:ID`.
pub fn parse_principal(s: &str) -> Result<Identity, String> {
    Ok(match s {
        "root" => Identity::LocalRoot,
        "coordinator" => Identity::Coordinator,
        "anonymous" => Identity::Anonymous,
        _ => match s.split_once(':') {
            Some(("node", n)) => Identity::Node(NodeKey(format!("nodekey:{n}"))),
            Some(("token", t)) => Identity::Token(TokenId(t.into())),
            _ => return Err(format!("unknown principal {s:?}")),
        },
    })
}

/// One case of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenCase {
    /// Line in the table file.
    pub line: u32,
    /// The policy file in force (`None`: no policy).
    pub policy: Option<String>,
    /// Who.
    pub who: Identity,
    /// What.
    pub req: OwnedRequest,
    /// Expected outcome.
    pub allow: bool,
    /// Expected deciding rule line: `Some(Some(n))` = line n, `Some(None)` = no rule.
    pub rule_line: Option<Option<u32>>,
}

/// The parsed table: the inventory and the cases.
#[derive(Debug, Clone, Default)]
pub struct GoldenTable {
    /// Nodes and tokens declared by `node` / `token` lines.
    pub inventory: Inventory,
    /// Cases in order.
    pub cases: Vec<GoldenCase>,
}

/// Parses a table; errors are `line N: message`.
pub fn parse_golden(text: &str) -> Result<GoldenTable, String> {
    let mut t = GoldenTable::default();
    let mut policy: Option<String> = None;
    let mut have_policy = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i as u32 + 1;
        let content = raw.split('#').next().unwrap_or("");
        let words: Vec<&str> = content.split_whitespace().collect();
        let err = |m: String| format!("line {line}: {m}");
        match words.as_slice() {
            [] => {}
            ["node", name, rest @ ..] => {
                let mut tags = Vec::new();
                let mut addrs = Vec::new();
                for w in rest {
                    if let Some(a) = w.strip_prefix("addr=") {
                        addrs.push(
                            a.parse::<IpAddr>()
                                .map_err(|_| err(format!("bad address {a:?}")))?,
                        );
                    } else {
                        tags.push(*w);
                    }
                }
                t.inventory = std::mem::take(&mut t.inventory).with_node(
                    &format!("nodekey:{name}"),
                    name,
                    &tags,
                    &addrs,
                );
            }
            ["token", id, tags @ ..] => {
                t.inventory = std::mem::take(&mut t.inventory).with_token(id, tags);
            }
            ["policy", p] => {
                policy = (*p != "none").then(|| p.to_string());
                have_policy = true;
            }
            [who, rest @ ..] => {
                if !have_policy {
                    return Err(err("a case before any `policy` line".into()));
                }
                let mut rest = rest.to_vec();
                let rule_line = match rest.last() {
                    Some(w) if w.starts_with('@') => {
                        let w = rest.pop().unwrap_or_default();
                        Some(match &w[1..] {
                            "-" => None,
                            n => Some(
                                n.parse::<u32>()
                                    .map_err(|_| err(format!("bad rule line {w:?}")))?,
                            ),
                        })
                    }
                    _ => None,
                };
                let allow = match rest.pop() {
                    Some("allow") => true,
                    Some("deny") => false,
                    _ => {
                        return Err(err(
                            "a case ends with allow or deny (and maybe @LINE)".into()
                        ))
                    }
                };
                t.cases.push(GoldenCase {
                    line,
                    policy: policy.clone(),
                    who: parse_principal(who).map_err(err)?,
                    req: OwnedRequest::parse(&rest).map_err(err)?,
                    allow,
                    rule_line,
                });
            }
        }
    }
    Ok(t)
}
