//! The one decision function every enforcer calls: S3, NFS, the coordinator API (admin), the
//! Docker agent, `filter test` and `policy explain`.
//!
//! Order (the same for every surface):
//! 1. local root and the coordinator process may do anything; anonymous may do nothing; a node
//!    key or token id the artifact does not know (removed, revoked) may do nothing;
//! 2. the system bucket (`_tunnelmesh`) is reachable only with the admin capability;
//! 3. **deny beats allow beats the default**: the first matching `deny` entry (file order)
//!    refuses; else the first matching `acls`/`grants` entry allows; else the default
//!    (`allow`: S3 read/list/write, NFS and IP for members, i.e. nodes; never admin or
//!    Docker, never tokens: a token has only what its tags are granted). Without any policy
//!    file, S3 is open to members and tokens alike, bucket create/delete included (as before
//!    policies existed); NFS and IP to members; admin and Docker to nobody.

use crate::caps::{Access, AppGrant, Verb, CAP_ADMIN, CAP_DOCKER, CAP_NFS, CAP_S3, SYSTEM_BUCKET};
use crate::compile::Artifact;
use crate::identity::{Identity, NodeKey, ServiceNeed};
use crate::model::{DefaultAction, Effect, Rule};
use crate::selector::{echo_request, proto_name, SourceRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

/// An S3 operation class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum S3Op {
    /// GET/HEAD of an object (needs ro).
    Read,
    /// ListObjects / ListMultipartUploads under a prefix (needs ro).
    List,
    /// PUT/DELETE/COPY/multipart (needs rw).
    Write,
    /// Create/delete bucket, quotas, bucket settings (needs admin).
    Admin,
}

impl S3Op {
    /// Parses `read|get|head`, `list`, `write|put|delete`, `admin`.
    pub fn parse(s: &str) -> Option<S3Op> {
        Some(match s {
            "read" | "get" | "head" => S3Op::Read,
            "list" => S3Op::List,
            "write" | "put" | "delete" => S3Op::Write,
            "admin" => S3Op::Admin,
            _ => return None,
        })
    }

    fn needs(self) -> Access {
        match self {
            S3Op::Read | S3Op::List => Access::Ro,
            S3Op::Write => Access::Rw,
            S3Op::Admin => Access::Admin,
        }
    }

    fn name(self) -> &'static str {
        match self {
            S3Op::Read => "read",
            S3Op::List => "list",
            S3Op::Write => "write",
            S3Op::Admin => "admin",
        }
    }
}

/// An NFS operation class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NfsOp {
    /// MOUNT (needs ro).
    Mount,
    /// Any reading RPC (needs ro).
    Read,
    /// Any modifying RPC (needs rw).
    Write,
}

impl NfsOp {
    /// Parses `mount`, `read`, `write`.
    pub fn parse(s: &str) -> Option<NfsOp> {
        Some(match s {
            "mount" => NfsOp::Mount,
            "read" => NfsOp::Read,
            "write" => NfsOp::Write,
            _ => return None,
        })
    }

    fn needs(self) -> Access {
        match self {
            NfsOp::Mount | NfsOp::Read => Access::Ro,
            NfsOp::Write => Access::Rw,
        }
    }

    fn name(self) -> &'static str {
        match self {
            NfsOp::Mount => "mount",
            NfsOp::Read => "read",
            NfsOp::Write => "write",
        }
    }
}

/// The destination of an IP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A node by name.
    Node(&'a str),
    /// An address (a node's, or any other).
    Addr(IpAddr),
}

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// An S3 operation; `key` is the object key, or the list prefix (may be empty).
    S3 {
        /// Bucket.
        bucket: &'a str,
        /// Key or list prefix.
        key: &'a str,
        /// Operation class.
        op: S3Op,
    },
    /// An NFS operation on a share.
    Nfs {
        /// Share name.
        share: &'a str,
        /// Operation class.
        op: NfsOp,
    },
    /// Any coordinator admin API call (nodes, tags, tokens, policy, audit).
    Admin,
    /// A Docker call on a container of a node.
    Docker {
        /// The node owning the container.
        node: &'a str,
        /// Container name.
        container: &'a str,
        /// Verb.
        verb: Verb,
    },
    /// A packet (or a connection attempt) to `dst` with protocol and port (0 for portless).
    Ip {
        /// Destination.
        dst: Target<'a>,
        /// IP protocol number.
        proto: u8,
        /// Destination port.
        port: u16,
    },
}

impl fmt::Display for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::S3 {
                bucket,
                key: "",
                op,
            } => {
                write!(f, "{CAP_S3} {} on bucket {bucket}", op.name())
            }
            Request::S3 { bucket, key, op } => {
                write!(f, "{CAP_S3} {} on {bucket}/{key}", op.name())
            }
            Request::Nfs { share, op } => write!(f, "{CAP_NFS} {} on share {share}", op.name()),
            Request::Admin => f.write_str(CAP_ADMIN),
            Request::Docker {
                node,
                container,
                verb,
            } => {
                write!(f, "{CAP_DOCKER} {} on {node}/{container}", verb.name())
            }
            Request::Ip { dst, proto, port } => {
                let d = match dst {
                    Target::Node(n) => n.to_string(),
                    Target::Addr(a) => a.to_string(),
                };
                write!(f, "ip {d}:{port}/{}", proto_name(*proto))
            }
        }
    }
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Allowed?
    pub allow: bool,
    /// The deciding rule, when a rule decided (not for built-ins or the default).
    pub rule: Option<SourceRef>,
    /// Why, one line.
    pub reason: String,
}

impl Decision {
    /// The one line an enforcer shows the caller, e.g. `not allowed: tunnelmesh.io/cap/admin
    /// (rule policy.hujson:12)` or `not allowed: tunnelmesh.io/cap/nfs mount on share default
    /// (no rule grants it; the default is deny)`.
    pub fn message(&self) -> String {
        match &self.rule {
            Some(r) => format!("{} (rule {r})", self.reason),
            None => self.reason.clone(),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allow { "allow" } else { "deny" })?;
        match &self.rule {
            Some(r) => write!(f, " (rule {r}): {}", self.reason),
            None => write!(f, ": {}", self.reason),
        }
    }
}

/// A decision and every rule that matched (for `policy explain`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The decision, as [`decide()`] returns it.
    pub decision: Decision,
    /// Every matching rule in evaluation order (deny entries first).
    pub matched: Vec<(Effect, SourceRef)>,
}

/// Who, as the rules see them.
struct Subject<'a> {
    /// A node (member of the mesh); tokens are not members.
    node: bool,
    name: Option<&'a str>,
    tags: &'a BTreeSet<String>,
    addrs: &'a BTreeSet<IpAddr>,
}

/// A node as a destination.
struct Dest<'a> {
    key: Option<&'a NodeKey>,
    member: bool,
    name: Option<&'a str>,
    tags: &'a BTreeSet<String>,
    addrs: BTreeSet<IpAddr>,
}

fn dest<'a>(art: &'a Artifact, t: Target<'a>, empty: &'a BTreeSet<String>) -> Option<Dest<'a>> {
    match t {
        Target::Node(n) => art.node_by_name(n).map(|(k, i)| Dest {
            key: Some(k),
            member: true,
            name: Some(i.name.as_str()),
            tags: &i.tags,
            addrs: i.addrs.clone(),
        }),
        Target::Addr(a) => Some(match art.nodes.iter().find(|(_, i)| i.addrs.contains(&a)) {
            Some((k, i)) => Dest {
                key: Some(k),
                member: true,
                name: Some(i.name.as_str()),
                tags: &i.tags,
                addrs: i.addrs.clone(),
            },
            None => Dest {
                key: None,
                member: false,
                name: None,
                tags: empty,
                addrs: [a].into_iter().collect(),
            },
        }),
    }
}

/// Whether a level rule applies: a grant gives `access` and below; a deny takes `access` and
/// above.
fn level_ok(effect: Effect, access: Access, needs: Access) -> bool {
    match effect {
        Effect::Allow => access >= needs,
        Effect::Deny => needs >= access,
    }
}

fn prefix_ok(effect: Effect, prefix: Option<&str>, op: S3Op, key: &str) -> bool {
    let Some(p) = prefix else { return true };
    match (effect, op) {
        (_, S3Op::Read | S3Op::Write) => key.starts_with(p),
        // A listing must stay inside a granted prefix...
        (Effect::Allow, S3Op::List) => key.starts_with(p),
        // ...and is refused when it could show any key under a denied prefix.
        (Effect::Deny, S3Op::List) => key.starts_with(p) || p.starts_with(key),
        (Effect::Allow, S3Op::Admin) => false,
        (Effect::Deny, S3Op::Admin) => true,
    }
}

/// The specific place that makes `rule` match `req` for `subj`, if it does.
fn rule_match(
    art: &Artifact,
    rule: &Rule,
    subj: &Subject<'_>,
    req: &Request<'_>,
) -> Option<SourceRef> {
    if !rule
        .src
        .matches(subj.node, subj.name, subj.tags, subj.addrs)
    {
        return None;
    }
    let e = rule.effect;
    match *req {
        Request::S3 { bucket, key, op } => rule.app.iter().find_map(|a| match &a.grant {
            AppGrant::S3 {
                buckets,
                prefix,
                access,
            } if buckets.iter().any(|b| b.matches(bucket))
                && level_ok(e, *access, op.needs())
                && prefix_ok(e, prefix.as_deref(), op, key) =>
            {
                Some(a.at.clone())
            }
            _ => None,
        }),
        Request::Nfs { share, op } => rule.app.iter().find_map(|a| match &a.grant {
            AppGrant::Nfs { shares, access }
                if shares.iter().any(|s| s.matches(share)) && level_ok(e, *access, op.needs()) =>
            {
                Some(a.at.clone())
            }
            _ => None,
        }),
        Request::Admin => rule
            .app
            .iter()
            .find(|a| a.grant == AppGrant::Admin)
            .map(|a| a.at.clone()),
        Request::Docker {
            node,
            container,
            verb,
        } => {
            let (_, n) = art.node_by_name(node)?;
            if !rule.dst.matches(true, Some(&n.name), &n.tags, &n.addrs) {
                return None;
            }
            rule.app.iter().find_map(|a| match &a.grant {
                AppGrant::Docker { containers, verbs }
                    if verbs.contains(&verb) && containers.iter().any(|c| c.matches(container)) =>
                {
                    Some(a.at.clone())
                }
                _ => None,
            })
        }
        Request::Ip { dst, proto, port } => {
            let empty = BTreeSet::new();
            let d = dest(art, dst, &empty)?;
            if !rule.dst.matches(d.member, d.name, d.tags, &d.addrs) {
                return None;
            }
            rule.ip
                .iter()
                .find(|s| s.matches(proto, port))
                .map(|s| s.at.clone())
        }
    }
}

fn deny(reason: impl Into<String>) -> Decision {
    Decision {
        allow: false,
        rule: None,
        reason: reason.into(),
    }
}

/// Decides one request. Pure: same artifact, identity and request, same answer.
pub fn decide(art: &Artifact, who: &Identity, req: &Request<'_>) -> Decision {
    explain_inner(art, who, req, false).decision
}

/// Decides and lists every matching rule (`policy explain`).
pub fn explain(art: &Artifact, who: &Identity, req: &Request<'_>) -> Explanation {
    explain_inner(art, who, req, true)
}

fn explain_inner(art: &Artifact, who: &Identity, req: &Request<'_>, all: bool) -> Explanation {
    let done = |decision: Decision| Explanation {
        decision,
        matched: Vec::new(),
    };
    let no_addrs = BTreeSet::new();
    let subj = match who {
        Identity::LocalRoot | Identity::Coordinator => {
            return done(Decision {
                allow: true,
                rule: None,
                reason: format!("{who} may do anything"),
            })
        }
        Identity::Anonymous => return done(deny("anonymous requests are not allowed")),
        Identity::Node(k) => match art.nodes.get(k) {
            Some(n) => Subject {
                node: true,
                name: Some(&n.name),
                tags: &n.tags,
                addrs: &n.addrs,
            },
            None => {
                return done(deny(format!(
                    "{who} is not in the mesh (removed or never joined)"
                )))
            }
        },
        Identity::Token(t) => match art.tokens.get(t) {
            Some(i) => Subject {
                node: false,
                name: None,
                tags: &i.tags,
                addrs: &no_addrs,
            },
            None => return done(deny(format!("{who} is unknown, revoked or expired"))),
        },
    };
    let system = match req {
        Request::S3 { bucket, .. } => *bucket == SYSTEM_BUCKET,
        Request::Nfs { share, .. } => *share == SYSTEM_BUCKET,
        _ => false,
    };
    if system {
        let mut ex = explain_inner(art, who, &Request::Admin, all);
        ex.decision.reason = if ex.decision.allow {
            format!("the system bucket {SYSTEM_BUCKET} is reachable with {CAP_ADMIN}")
        } else {
            format!("the system bucket {SYSTEM_BUCKET} is private (needs {CAP_ADMIN})")
        };
        return ex;
    }
    if let Request::Docker { node, .. } = req {
        if art.node_by_name(node).is_none() {
            return done(deny(format!("unknown node {node:?}")));
        }
    }
    if let Request::Ip {
        dst: Target::Node(n),
        ..
    } = req
    {
        if art.node_by_name(n).is_none() {
            return done(deny(format!("unknown node {n:?}")));
        }
    }

    let mut matched = Vec::new();
    let mut decision = None;
    for effect in [Effect::Deny, Effect::Allow] {
        if effect == Effect::Allow && decision.is_none() {
            decision = service_port(art, &subj, req);
            if decision.is_some() && !all {
                break;
            }
        }
        for rule in art.rules.iter().filter(|r| r.effect == effect) {
            if let Some(at) = rule_match(art, rule, &subj, req) {
                if decision.is_none() {
                    decision = Some(Decision {
                        allow: effect == Effect::Allow,
                        rule: Some(at.clone()),
                        reason: match effect {
                            Effect::Deny => format!("not allowed: {req}"),
                            Effect::Allow => format!("allowed: {req}"),
                        },
                    });
                }
                matched.push((effect, at));
                if !all {
                    break;
                }
            }
        }
        if decision.is_some() && !all {
            break;
        }
    }
    let decision = decision
        .or_else(|| echo_decision(art, &subj, req))
        .unwrap_or_else(|| default_decision(art, req, subj.node));
    Explanation { decision, matched }
}

/// ICMP echo follows the rules of the destination (issue 16): an echo request no rule decided
/// is allowed when the subject may reach some port of the destination (an accept rule from it
/// to the destination with `ip` entries, or a capability that opens one of the destination's
/// service ports). A deny rule covering it has already decided. The packet filter's compiled
/// classes apply the same rule.
fn echo_decision(art: &Artifact, subj: &Subject<'_>, req: &Request<'_>) -> Option<Decision> {
    let Request::Ip { dst, proto, port } = *req else {
        return None;
    };
    if echo_request(proto) != Some(port) {
        return None;
    }
    let empty = BTreeSet::new();
    let to = dest(art, dst, &empty)?;
    let by_rule = art
        .rules
        .iter()
        .filter(|r| r.effect == Effect::Allow && !r.ip.is_empty())
        .find(|r| {
            r.src.matches(subj.node, subj.name, subj.tags, subj.addrs)
                && r.dst.matches(to.member, to.name, to.tags, &to.addrs)
        })
        .map(|r| Some(r.ip[0].at.clone()));
    let rule = by_rule.or_else(|| {
        let ports = art.services.get(to.key?)?;
        ports.iter().find_map(|p| holds(art, subj, p.needs, &to))
    })?;
    Some(Decision {
        allow: true,
        rule,
        reason: format!("allowed: {req} (echo: the source may reach a port of the destination)"),
    })
}

/// Whether `subj` holds any grant of `cap` (an S3 or NFS entry of an accept rule selecting it;
/// for Docker an entry of a rule whose `dst` also selects `to`, the node serving the port; or
/// the default allow, which covers members): the rule that grants it, or `None` with `Some`
/// for the default.
fn holds(
    art: &Artifact,
    subj: &Subject<'_>,
    need: ServiceNeed,
    to: &Dest<'_>,
) -> Option<Option<SourceRef>> {
    let by_rule = art
        .rules
        .iter()
        .filter(|r| r.effect == Effect::Allow)
        .filter(|r| r.src.matches(subj.node, subj.name, subj.tags, subj.addrs))
        .filter(|r| {
            need != ServiceNeed::Docker || r.dst.matches(to.member, to.name, to.tags, &to.addrs)
        })
        .flat_map(|r| r.app.iter())
        .find(|a| {
            matches!(
                (&a.grant, need),
                (AppGrant::S3 { .. }, ServiceNeed::S3)
                    | (AppGrant::Nfs { .. }, ServiceNeed::Nfs)
                    | (AppGrant::Docker { .. }, ServiceNeed::Docker)
            )
        });
    match (by_rule, need) {
        (_, ServiceNeed::Member) => subj.node.then_some(None),
        (Some(a), _) => Some(Some(a.at.clone())),
        (None, _) => (subj.node && art.default == DefaultAction::Allow).then_some(None),
    }
}

/// A coordinator service port (API, DNS, S3, NFS) the subject's capabilities open: checked
/// after the deny rules and before the accept rules (issue 16: service ports are opened by
/// capability, not by hand rules; an explicit deny still closes them).
fn service_port(art: &Artifact, subj: &Subject<'_>, req: &Request<'_>) -> Option<Decision> {
    let Request::Ip { dst, proto, port } = *req else {
        return None;
    };
    let empty = BTreeSet::new();
    let to = dest(art, dst, &empty)?;
    let ports = art.services.get(to.key?)?;
    ports
        .iter()
        .filter(|p| p.proto == proto && p.port == port)
        .find_map(|p| {
            let rule = holds(art, subj, p.needs, &to)?;
            Some(Decision {
                allow: true,
                rule,
                reason: format!(
                    "allowed: {req} (service port {}, open to {})",
                    p.name,
                    p.needs.name()
                ),
            })
        })
}

fn default_decision(art: &Artifact, req: &Request<'_>, member: bool) -> Decision {
    let by_default = match req {
        // No policy file at all: S3 as before there were policies, for members and tokens
        // (the seed's "your mesh token works directly"), bucket create/delete included.
        Request::S3 { .. } if !art.has_policy => true,
        Request::S3 { op, .. } => member && *op != S3Op::Admin,
        Request::Nfs { .. } | Request::Ip { .. } => member,
        Request::Admin | Request::Docker { .. } => false,
    };
    if art.default == DefaultAction::Allow && by_default {
        return Decision {
            allow: true,
            rule: None,
            reason: if art.has_policy {
                format!("{req}: no rule matched; the policy's default is allow")
            } else {
                "no policy: all members allowed".into()
            },
        };
    }
    deny(if art.default == DefaultAction::Allow && !member {
        format!("not allowed: {req} (no rule grants it; the default covers nodes, not tokens)")
    } else if art.default == DefaultAction::Allow {
        format!("not allowed: {req} (no rule grants it; the default never does)")
    } else {
        format!("not allowed: {req} (no rule grants it; the default is deny)")
    })
}
