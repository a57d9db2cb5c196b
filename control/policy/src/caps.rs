//! Application capabilities: what a grant's `app` (or a deny's `app`) gives or takes away.
//!
//! ```text
//! "tunnelmesh.io/cap/s3":     [{"buckets": ["logs", "ci-*"], "prefix": "team/", "access": "ro|rw|admin"}]
//! "tunnelmesh.io/cap/nfs":    [{"shares": ["default"], "access": "ro|rw"}]
//! "tunnelmesh.io/cap/docker": [{"containers": ["*"], "verbs": ["operator", "logs"]}]
//! "tunnelmesh.io/cap/admin":  [{}]
//! ```
//! Access levels are ordered ro < rw < admin. In a grant, the level is what is given (and
//! everything below it). In a `deny`, `access` is the lowest level taken away (`rw` takes
//! writes and admin but leaves reads); without `access` a deny takes everything.

use crate::hujson::{Kind, Value};
use crate::model::Doc;
use crate::selector::SourceRef;
use crate::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The S3 capability name.
pub const CAP_S3: &str = "tunnelmesh.io/cap/s3";
/// The NFS capability name.
pub const CAP_NFS: &str = "tunnelmesh.io/cap/nfs";
/// The Docker capability name.
pub const CAP_DOCKER: &str = "tunnelmesh.io/cap/docker";
/// The admin capability name (coordinator API: nodes, tags, tokens, policy, system bucket).
pub const CAP_ADMIN: &str = "tunnelmesh.io/cap/admin";
/// The bucket holding the coordinators' own state; private (see [`crate::decide()`]).
pub const SYSTEM_BUCKET: &str = "_tunnelmesh";

/// An access level; ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read and list.
    Ro,
    /// Read, list and write.
    Rw,
    /// Everything, including bucket administration.
    Admin,
}

/// A name pattern: `*`, an exact name, or `prefix*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Pattern {
    /// `*`
    Any,
    /// An exact name.
    Exact(String),
    /// `prefix*`
    Prefix(String),
}

impl Pattern {
    /// Parses a pattern; `*` only alone or at the end.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        if s.is_empty() {
            return Err("an empty name".into());
        }
        if s == "*" {
            return Ok(Pattern::Any);
        }
        match s.find('*') {
            None => Ok(Pattern::Exact(s.into())),
            Some(i) if i == s.len() - 1 => Ok(Pattern::Prefix(s[..i].into())),
            Some(_) => Err(format!("{s:?}: '*' may only stand alone or at the end")),
        }
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => e == name,
            Pattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

/// A Docker verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// List containers.
    List,
    /// Inspect a container.
    Inspect,
    /// One-shot stats.
    Stats,
    /// Read logs.
    Logs,
    /// Start.
    Start,
    /// Stop.
    Stop,
    /// Restart.
    Restart,
    /// Exec a command (only where a grant names it).
    Exec,
}

const VERBS: &[(&str, Verb)] = &[
    ("list", Verb::List),
    ("inspect", Verb::Inspect),
    ("stats", Verb::Stats),
    ("logs", Verb::Logs),
    ("start", Verb::Start),
    ("stop", Verb::Stop),
    ("restart", Verb::Restart),
    ("exec", Verb::Exec),
];

impl Verb {
    /// Parses a verb name.
    pub fn parse(s: &str) -> Option<Verb> {
        VERBS.iter().find(|(n, _)| *n == s).map(|(_, v)| *v)
    }

    /// The verb's name.
    pub fn name(self) -> &'static str {
        VERBS
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// The built-in verb sets: viewer (list, inspect, stats), helpdesk (+ logs), operator (+ start,
/// stop, restart), admin (+ exec).
pub fn verb_set(name: &str) -> Option<&'static [Verb]> {
    use Verb::*;
    const VIEWER: &[Verb] = &[List, Inspect, Stats];
    const HELPDESK: &[Verb] = &[List, Inspect, Stats, Logs];
    const OPERATOR: &[Verb] = &[List, Inspect, Stats, Logs, Start, Stop, Restart];
    const ADMIN: &[Verb] = &[List, Inspect, Stats, Logs, Start, Stop, Restart, Exec];
    match name {
        "viewer" => Some(VIEWER),
        "helpdesk" => Some(HELPDESK),
        "operator" => Some(OPERATOR),
        "admin" => Some(ADMIN),
        _ => None,
    }
}

/// One capability entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppGrant {
    /// Buckets (and optionally only keys under a prefix) at a level.
    S3 {
        /// Bucket patterns.
        buckets: Vec<Pattern>,
        /// Only keys starting with this.
        prefix: Option<String>,
        /// The level (grant: given; deny: lowest taken).
        access: Access,
    },
    /// NFS shares at a level.
    Nfs {
        /// Share patterns.
        shares: Vec<Pattern>,
        /// The level.
        access: Access,
    },
    /// Docker verbs on containers of the rule's `dst` nodes.
    Docker {
        /// Container name patterns.
        containers: Vec<Pattern>,
        /// The verbs.
        verbs: BTreeSet<Verb>,
    },
    /// The admin capability.
    Admin,
}

/// A capability entry and where it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppEntry {
    /// What.
    pub grant: AppGrant,
    /// Where.
    pub at: SourceRef,
}

fn patterns(doc: &Doc<'_>, v: &Value, what: &str) -> Result<Vec<Pattern>, Error> {
    let items = doc.strs(v, what)?;
    if items.is_empty() {
        return Err(doc.err(v.pos, format!("{what} is empty (use [\"*\"] for all)")));
    }
    items
        .into_iter()
        .map(|(s, pos)| Pattern::parse(s).map_err(|e| doc.err(pos, e)))
        .collect()
}

fn access(
    doc: &Doc<'_>,
    v: Option<&Value>,
    item: &Value,
    deny: bool,
    allowed: &[Access],
) -> Result<Access, Error> {
    let Some(v) = v else {
        return if deny {
            Ok(Access::Ro)
        } else {
            Err(doc.err(item.pos, "missing \"access\" (ro, rw or admin)"))
        };
    };
    let s = doc.str(v, "access")?;
    let a = match s {
        "ro" => Access::Ro,
        "rw" => Access::Rw,
        "admin" => Access::Admin,
        _ => return Err(doc.err(v.pos, format!("unknown access {s:?} (use ro, rw or admin)"))),
    };
    if !allowed.contains(&a) {
        return Err(doc.err(
            v.pos,
            format!("access {s:?} does not exist here (use ro or rw)"),
        ));
    }
    Ok(a)
}

/// Parses an `app` object: capability name -> list of entries. `deny` selects the deny meaning
/// of `access` (optional, lowest level taken away).
pub(crate) fn parse_app(doc: &Doc<'_>, v: &Value, deny: bool) -> Result<Vec<AppEntry>, Error> {
    let Kind::Object(caps) = &v.kind else {
        return Err(doc.err(
            v.pos,
            format!("app must be an object, not {}", v.kind_name()),
        ));
    };
    let mut out = Vec::new();
    for cap in caps {
        let items = doc.array(&cap.value, &cap.key)?;
        if !matches!(cap.key.as_str(), CAP_S3 | CAP_NFS | CAP_DOCKER | CAP_ADMIN) {
            return Err(doc.err(
                cap.key_pos,
                format!(
                    "capability {:?} does not exist (known: {CAP_S3}, {CAP_NFS}, {CAP_DOCKER}, {CAP_ADMIN})",
                    cap.key
                ),
            ));
        }
        if items.is_empty() {
            return Err(doc.err(cap.value.pos, format!("{} lists no entries", cap.key)));
        }
        for item in items {
            let at = doc.at(item.pos);
            let grant = match cap.key.as_str() {
                CAP_S3 => {
                    let f = doc.object(item, CAP_S3, &["buckets", "prefix", "access"])?;
                    let bv = doc.need(f, "buckets", item)?;
                    let buckets = patterns(doc, bv, "buckets")?;
                    for (b, pos) in doc.strs(bv, "buckets")? {
                        if b != "*" && Pattern::parse(b).is_ok_and(|p| p.matches(SYSTEM_BUCKET)) {
                            return Err(doc.err(pos, format!(
                                "the system bucket {SYSTEM_BUCKET} cannot be granted by {CAP_S3}; it is reached only through {CAP_ADMIN}"
                            )));
                        }
                    }
                    let prefix = match Doc::field(f, "prefix") {
                        Some(p) => Some(doc.str(p, "prefix")?.to_string()),
                        None => None,
                    };
                    let access = access(
                        doc,
                        Doc::field(f, "access"),
                        item,
                        deny,
                        &[Access::Ro, Access::Rw, Access::Admin],
                    )?;
                    if access == Access::Admin && prefix.is_some() && !deny {
                        return Err(doc.err(
                            item.pos,
                            "access admin is for whole buckets; drop the prefix",
                        ));
                    }
                    AppGrant::S3 {
                        buckets,
                        prefix,
                        access,
                    }
                }
                CAP_NFS => {
                    let f = doc.object(item, CAP_NFS, &["shares", "access"])?;
                    let shares = patterns(doc, doc.need(f, "shares", item)?, "shares")?;
                    let access = access(
                        doc,
                        Doc::field(f, "access"),
                        item,
                        deny,
                        &[Access::Ro, Access::Rw],
                    )?;
                    AppGrant::Nfs { shares, access }
                }
                CAP_DOCKER => {
                    let f = doc.object(item, CAP_DOCKER, &["containers", "verbs"])?;
                    let containers = patterns(doc, doc.need(f, "containers", item)?, "containers")?;
                    let vv = doc.need(f, "verbs", item)?;
                    let mut verbs = BTreeSet::new();
                    for (s, pos) in doc.strs(vv, "verbs")? {
                        if let Some(set) = verb_set(s) {
                            verbs.extend(set.iter().copied());
                        } else if let Some(v) = Verb::parse(s) {
                            verbs.insert(v);
                        } else {
                            return Err(doc.err(pos, format!(
                                "unknown docker verb {s:?} (verbs: list, inspect, stats, logs, start, stop, restart, exec; sets: viewer, helpdesk, operator, admin)"
                            )));
                        }
                    }
                    if verbs.is_empty() {
                        return Err(doc.err(vv.pos, "verbs is empty"));
                    }
                    AppGrant::Docker { containers, verbs }
                }
                _ => {
                    doc.object(item, CAP_ADMIN, &[])?;
                    AppGrant::Admin
                }
            };
            out.push(AppEntry { grant, at });
        }
    }
    if out.is_empty() {
        return Err(doc.err(v.pos, "app lists no capability"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(Pattern::parse("*").unwrap().matches("x"));
        assert!(Pattern::parse("ci-*").unwrap().matches("ci-1"));
        assert!(!Pattern::parse("ci-*").unwrap().matches("c"));
        assert!(Pattern::parse("a*b").is_err());
        assert!(Pattern::parse("").is_err());
    }

    #[test]
    fn verb_sets_nest() {
        let v = verb_set("viewer").unwrap();
        let h = verb_set("helpdesk").unwrap();
        let o = verb_set("operator").unwrap();
        let a = verb_set("admin").unwrap();
        assert!(v.iter().all(|x| h.contains(x)) && h.contains(&Verb::Logs));
        assert!(h.iter().all(|x| o.contains(x)) && o.contains(&Verb::Restart));
        assert!(!o.contains(&Verb::Exec) && a.contains(&Verb::Exec));
        assert_eq!(Verb::parse("exec"), Some(Verb::Exec));
        assert_eq!(Verb::Exec.name(), "exec");
    }
}
