//! The policy file: HuJSON values checked into a [`Policy`] whose every rule knows its
//! `file:line`. Everything the compiler needs is resolved here (groups flattened, hosts and tags
//! checked), so a file that parses is a file that compiles against any inventory.
//!
//! Top-level fields: `groups`, `tagOwners`, `hosts`, `acls`, `grants`, `deny`, `default`,
//! `tests`. Anything else is refused, naming the field and its place.

use crate::caps::{parse_app, AppEntry, AppGrant, Verb};
use crate::decide::{NfsOp, S3Op};
use crate::hujson::{self, Kind, Member, Pos, Value};
use crate::selector::{
    parse_ip_entry, parse_proto, parse_selector, proto_ports, valid_word, Cidr, IpSpec, Selector,
    SelectorSet, SourceRef,
};
use crate::Error;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What happens when no rule matches. Issue 16: no policy = allow all members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Members may use S3 and NFS read-write and reach every port of every node; nobody gets
    /// admin or Docker from the default.
    Allow,
    /// Only what a rule grants.
    Deny,
}

/// Whether a rule gives or takes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// From `acls` or `grants`.
    Allow,
    /// From `deny`.
    Deny,
}

impl Effect {
    /// Whether this is an allowing rule.
    pub fn is_allow(self) -> bool {
        self == Effect::Allow
    }
}

/// One rule: an ACL line's `dst` entry, a grant, or a deny entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Allow or deny.
    pub effect: Effect,
    /// Where the rule object starts.
    pub at: SourceRef,
    /// Who.
    pub src: SelectorSet,
    /// To which nodes (for IP and Docker; `*` for the mesh-wide services).
    pub dst: SelectorSet,
    /// Protocols and ports.
    pub ip: Vec<IpSpec>,
    /// Application capabilities.
    pub app: Vec<AppEntry>,
}

/// A checked policy file.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The file name used in messages and `SourceRef`s.
    pub file: String,
    /// The default.
    pub default: DefaultAction,
    /// Groups, flattened to node names.
    pub groups: BTreeMap<String, BTreeSet<String>>,
    /// Declared tags and who owns them (owners as written).
    pub tag_owners: BTreeMap<String, Vec<String>>,
    /// Host names and their prefixes.
    pub hosts: BTreeMap<String, Cidr>,
    /// Rules in file order (acls, then grants, then deny).
    pub rules: Vec<Rule>,
    /// The file's tests.
    pub tests: Vec<PolicyTest>,
    /// Every node name written in rules and groups, with its place (see
    /// [`Policy::check_names`]).
    pub node_refs: Vec<(String, Pos)>,
    /// Every `hosts` name with its place.
    pub host_refs: Vec<(String, Pos)>,
}

/// A test from the `tests` list.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyTest {
    /// Where the test object starts.
    pub at: SourceRef,
    /// Who: a node name, or `tag:x` (a node carrying only that tag).
    pub src: String,
    /// What is asserted.
    pub body: TestBody,
}

/// The assertion of a test.
#[derive(Debug, Clone, PartialEq)]
pub enum TestBody {
    /// Tailscale's form: these `host:port` must be accepted, those denied.
    Ip {
        /// Protocol (default TCP).
        proto: u8,
        /// Must pass.
        accept: Vec<IpTestDst>,
        /// Must be dropped.
        deny: Vec<IpTestDst>,
    },
    /// Ours: one application request and the expected outcome.
    App {
        /// The request.
        req: AppTestReq,
        /// `"expect": "allow"` (true) or `"deny"`.
        allow: bool,
    },
}

/// A `host:port` of an IP test.
#[derive(Debug, Clone, PartialEq)]
pub struct IpTestDst {
    /// Node name, `tag:x`, hosts name or address.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Where it was written.
    pub at: SourceRef,
}

/// An application request of a test.
#[derive(Debug, Clone, PartialEq)]
pub enum AppTestReq {
    /// `"s3": {"bucket", "key"?, "op"}`
    S3 {
        /// Bucket.
        bucket: String,
        /// Key (or list prefix).
        key: String,
        /// Operation.
        op: S3Op,
    },
    /// `"nfs": {"share", "op"}`
    Nfs {
        /// Share.
        share: String,
        /// Operation.
        op: NfsOp,
    },
    /// `"docker": {"node", "container", "verb"}`
    Docker {
        /// Node name.
        node: String,
        /// Container name.
        container: String,
        /// Verb.
        verb: Verb,
    },
    /// `"admin": {}`
    Admin,
}

/// Parse helpers that turn every problem into `file:line:col: message`.
pub(crate) struct Doc<'a> {
    pub(crate) file: &'a str,
    /// Node names written in rules and groups, with their places (collected while parsing).
    pub(crate) node_refs: std::cell::RefCell<Vec<(String, Pos)>>,
}

impl Doc<'_> {
    pub(crate) fn err(&self, pos: Pos, msg: impl Into<String>) -> Error {
        Error::Invalid {
            file: self.file.into(),
            line: pos.line,
            col: pos.col,
            msg: msg.into(),
        }
    }

    pub(crate) fn at(&self, pos: Pos) -> SourceRef {
        SourceRef {
            file: self.file.into(),
            line: pos.line,
        }
    }

    /// The members of an object, refusing keys not in `known`.
    pub(crate) fn object<'v>(
        &self,
        v: &'v Value,
        what: &str,
        known: &[&str],
    ) -> Result<&'v [Member], Error> {
        let Kind::Object(m) = &v.kind else {
            return Err(self.err(
                v.pos,
                format!("{what} must be an object, not {}", v.kind_name()),
            ));
        };
        for member in m {
            if !known.contains(&member.key.as_str()) {
                let hint = if known.is_empty() {
                    "it takes no fields".to_string()
                } else {
                    format!("known: {}", known.join(", "))
                };
                return Err(self.err(
                    member.key_pos,
                    format!("unknown field {:?} in {what} ({hint})", member.key),
                ));
            }
        }
        Ok(m)
    }

    pub(crate) fn field<'v>(m: &'v [Member], key: &str) -> Option<&'v Value> {
        m.iter().find(|m| m.key == key).map(|m| &m.value)
    }

    pub(crate) fn need<'v>(
        &self,
        m: &'v [Member],
        key: &str,
        obj: &Value,
    ) -> Result<&'v Value, Error> {
        Doc::field(m, key).ok_or_else(|| self.err(obj.pos, format!("missing \"{key}\"")))
    }

    pub(crate) fn str<'v>(&self, v: &'v Value, what: &str) -> Result<&'v str, Error> {
        match &v.kind {
            Kind::String(s) => Ok(s),
            _ => Err(self.err(
                v.pos,
                format!("{what} must be a string, not {}", v.kind_name()),
            )),
        }
    }

    pub(crate) fn array<'v>(&self, v: &'v Value, what: &str) -> Result<&'v [Value], Error> {
        match &v.kind {
            Kind::Array(a) => Ok(a),
            _ => Err(self.err(
                v.pos,
                format!("{what} must be an array, not {}", v.kind_name()),
            )),
        }
    }

    pub(crate) fn strs<'v>(&self, v: &'v Value, what: &str) -> Result<Vec<(&'v str, Pos)>, Error> {
        self.array(v, what)?
            .iter()
            .map(|i| self.str(i, what).map(|s| (s, i.pos)))
            .collect()
    }
}

const TOP: &[&str] = &[
    "groups",
    "tagOwners",
    "hosts",
    "acls",
    "grants",
    "deny",
    "default",
    "tests",
];

/// Parses and checks a policy file. `file` names it in errors and rule references.
pub fn parse_policy(file: &str, src: &[u8]) -> Result<Policy, Error> {
    let root = hujson::parse_bytes(src).map_err(|e| Error::Syntax {
        file: file.into(),
        line: e.pos.line,
        col: e.pos.col,
        msg: e.msg,
    })?;
    let doc = Doc {
        file,
        node_refs: Default::default(),
    };
    let top = doc.object(&root, "the policy", TOP)?;

    let default = match Doc::field(top, "default") {
        None => {
            return Err(doc.err(
                root.pos,
                "missing \"default\": write \"default\": \"allow\" (members may use everything but admin and Docker) or \"deny\"",
            ))
        }
        Some(v) => match doc.str(v, "default")? {
            "allow" => DefaultAction::Allow,
            "deny" => DefaultAction::Deny,
            s => return Err(doc.err(v.pos, format!("default must be \"allow\" or \"deny\", not {s:?}"))),
        },
    };

    let mut hosts = BTreeMap::new();
    let mut host_refs = Vec::new();
    if let Some(h) = Doc::field(top, "hosts") {
        let Kind::Object(m) = &h.kind else {
            return Err(doc.err(h.pos, "hosts must be an object of name: \"CIDR\""));
        };
        for member in m {
            crate::identity::validate_node_name(&member.key)
                .map_err(|e| doc.err(member.key_pos, format!("host name {:?}: {e}", member.key)))?;
            let c = Cidr::parse(doc.str(&member.value, "a host")?)
                .map_err(|e| doc.err(member.value.pos, e))?;
            hosts.insert(member.key.clone(), c);
            host_refs.push((member.key.clone(), member.key_pos));
        }
    }

    let groups = parse_groups(&doc, Doc::field(top, "groups"))?;

    let mut tag_owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(t) = Doc::field(top, "tagOwners") {
        let Kind::Object(m) = &t.kind else {
            return Err(doc.err(t.pos, "tagOwners must be an object of \"tag:x\": [owners]"));
        };
        for member in m {
            if !member.key.strip_prefix("tag:").is_some_and(valid_word) {
                return Err(doc.err(
                    member.key_pos,
                    format!("{:?} is not a tag (tags look like tag:web)", member.key),
                ));
            }
            tag_owners.insert(member.key.clone(), Vec::new());
        }
        for member in m {
            let mut owners = Vec::new();
            for (o, pos) in doc.strs(&member.value, "tag owners")? {
                let ok = if o.starts_with("group:") {
                    groups.contains_key(o)
                } else if o.starts_with("tag:") {
                    tag_owners.contains_key(o)
                } else {
                    o == "autogroup:member" || crate::identity::validate_node_name(o).is_ok()
                };
                if !ok {
                    return Err(doc.err(pos, format!("unknown tag owner {o:?} (a node name, a defined group:, a declared tag: or autogroup:member)")));
                }
                owners.push(o.to_string());
            }
            tag_owners.insert(member.key.clone(), owners);
        }
    }

    let mut p = Policy {
        file: file.into(),
        default,
        groups,
        tag_owners,
        hosts,
        rules: Vec::new(),
        tests: Vec::new(),
        node_refs: Vec::new(),
        host_refs: Vec::new(),
    };

    if let Some(acls) = Doc::field(top, "acls") {
        for acl in doc.array(acls, "acls")? {
            parse_acl(&doc, &mut p, acl)?;
        }
    }
    for (key, effect) in [("grants", Effect::Allow), ("deny", Effect::Deny)] {
        if let Some(list) = Doc::field(top, key) {
            for g in doc.array(list, key)? {
                let rule = parse_grant(&doc, &p, g, effect, key)?;
                p.rules.push(rule);
            }
        }
    }
    if let Some(tests) = Doc::field(top, "tests") {
        for t in doc.array(tests, "tests")? {
            let test = crate::check::parse_test(&doc, &p, t)?;
            p.tests.push(test);
        }
    }
    p.node_refs = doc.node_refs.take();
    p.host_refs = host_refs;
    Ok(p)
}

impl Policy {
    /// Refuses node names (in rules and groups) that no node of `inv` has: what `policy set`
    /// does against typos (`web2` for `web1`). Recompiling after a node is removed does not
    /// call this, so a removal never breaks the stored policy. Pre-authorize nodes that have
    /// not joined yet with a tag.
    pub fn check_names(&self, inv: &crate::identity::Inventory) -> Result<(), Error> {
        for (h, pos) in &self.host_refs {
            if inv.node_by_name(h).is_some() {
                return Err(Error::Invalid {
                    file: self.file.clone(),
                    line: pos.line,
                    col: pos.col,
                    msg: format!("hosts name {h:?} is also a node's name; rename one of them"),
                });
            }
        }
        for (n, pos) in &self.node_refs {
            if inv.node_by_name(n).is_none() {
                return Err(Error::Invalid {
                    file: self.file.clone(),
                    line: pos.line,
                    col: pos.col,
                    msg: format!("unknown node or host {n:?} (no node has this name and hosts does not define it; pre-authorize nodes that have not joined with a tag)"),
                });
            }
        }
        Ok(())
    }
}

/// Group name -> (its position, its members with theirs).
type RawGroups<'a> = BTreeMap<&'a str, (Pos, Vec<(&'a str, Pos)>)>;

fn parse_groups(
    doc: &Doc<'_>,
    v: Option<&Value>,
) -> Result<BTreeMap<String, BTreeSet<String>>, Error> {
    let Some(v) = v else {
        return Ok(BTreeMap::new());
    };
    let Kind::Object(m) = &v.kind else {
        return Err(doc.err(v.pos, "groups must be an object of \"group:x\": [members]"));
    };
    let mut raw: RawGroups<'_> = BTreeMap::new();
    for member in m {
        if !member.key.strip_prefix("group:").is_some_and(valid_word) {
            return Err(doc.err(
                member.key_pos,
                format!(
                    "{:?} is not a group name (groups look like group:ops)",
                    member.key
                ),
            ));
        }
        raw.insert(
            &member.key,
            (member.key_pos, doc.strs(&member.value, "group members")?),
        );
    }
    for (_, members) in raw.values() {
        for (mname, pos) in members {
            if mname.starts_with("group:") {
                if !raw.contains_key(mname) {
                    return Err(doc.err(*pos, format!("unknown group {mname:?}")));
                }
            } else if let Err(e) = crate::identity::validate_node_name(mname) {
                return Err(doc.err(
                    *pos,
                    format!("group member {mname:?} is neither a node name ({e}) nor a group:"),
                ));
            } else {
                doc.node_refs.borrow_mut().push((mname.to_string(), *pos));
            }
        }
    }
    // Flatten with a depth-first walk; a group met again on the current path is a cycle.
    fn walk<'a>(
        g: &'a str,
        raw: &RawGroups<'a>,
        path: &mut Vec<&'a str>,
        out: &mut BTreeSet<String>,
    ) -> Result<(), (Pos, String)> {
        if let Some(i) = path.iter().position(|p| *p == g) {
            let mut cyc: Vec<&str> = path[i..].to_vec();
            cyc.push(g);
            let pos = raw
                .get(path[i])
                .map(|r| r.0)
                .unwrap_or(Pos { line: 1, col: 1 });
            return Err((pos, format!("groups form a cycle: {}", cyc.join(" -> "))));
        }
        path.push(g);
        if let Some((_, members)) = raw.get(g) {
            for (m, _) in members {
                if m.starts_with("group:") {
                    walk(m, raw, path, out)?;
                } else {
                    out.insert(m.to_string());
                }
            }
        }
        path.pop();
        Ok(())
    }
    let mut flat = BTreeMap::new();
    for g in raw.keys() {
        let mut out = BTreeSet::new();
        walk(g, &raw, &mut Vec::new(), &mut out).map_err(|(pos, msg)| doc.err(pos, msg))?;
        flat.insert(g.to_string(), out);
    }
    Ok(flat)
}

/// Resolves one selector string into `set`. `identity_only` refuses hosts and CIDRs.
fn add_selector(
    doc: &Doc<'_>,
    p: &Policy,
    s: &str,
    pos: Pos,
    identity_only: bool,
    set: &mut SelectorSet,
) -> Result<(), Error> {
    let sel = parse_selector(s, &|h| p.hosts.contains_key(h)).map_err(|e| doc.err(pos, e))?;
    match sel {
        Selector::All => set.all = true,
        Selector::Member => set.member = true,
        Selector::Node(n) => {
            doc.node_refs.borrow_mut().push((n.clone(), pos));
            set.nodes.insert(n);
        }
        Selector::Group(g) => {
            let members = p.groups.get(&g).ok_or_else(|| {
                doc.err(pos, format!("unknown group {g:?} (define it in groups)"))
            })?;
            set.nodes.extend(members.iter().cloned());
        }
        Selector::Tag(t) => {
            if !p.tag_owners.contains_key(&t) {
                return Err(doc.err(pos, format!("unknown tag {t:?} (declare it in tagOwners)")));
            }
            set.tags.insert(t);
        }
        Selector::Host(_) | Selector::Cidr(_) if identity_only => {
            return Err(doc.err(pos, format!("{s:?} is an address; application capabilities need an identity (node, group:, tag:, autogroup:member or *)")));
        }
        Selector::Host(h) => {
            set.cidrs.insert(p.hosts[&h]);
        }
        Selector::Cidr(c) => {
            set.cidrs.insert(c);
        }
    }
    Ok(())
}

fn selectors(
    doc: &Doc<'_>,
    p: &Policy,
    v: &Value,
    what: &str,
    identity_only: bool,
) -> Result<SelectorSet, Error> {
    let items = doc.strs(v, what)?;
    if items.is_empty() {
        return Err(doc.err(v.pos, format!("{what} is empty")));
    }
    let mut set = SelectorSet::default();
    for (s, pos) in items {
        add_selector(doc, p, s, pos, identity_only, &mut set)?;
    }
    Ok(set)
}

fn parse_acl(doc: &Doc<'_>, p: &mut Policy, v: &Value) -> Result<(), Error> {
    let f = doc.object(v, "an acl", &["action", "src", "dst", "proto"])?;
    let action = doc.need(f, "action", v)?;
    if doc.str(action, "action")? != "accept" {
        return Err(doc.err(
            action.pos,
            "action must be \"accept\" (use the deny list to refuse)",
        ));
    }
    let src = selectors(doc, p, doc.need(f, "src", v)?, "src", false)?;
    let proto = match Doc::field(f, "proto") {
        Some(pv) => {
            let s = doc.str(pv, "proto")?;
            parse_proto(s).map_err(|e| doc.err(pv.pos, e))?;
            Some(s)
        }
        None => None,
    };
    let dv = doc.need(f, "dst", v)?;
    let dsts = doc.strs(dv, "dst")?;
    if dsts.is_empty() {
        return Err(doc.err(dv.pos, "dst is empty"));
    }
    for (d, pos) in dsts {
        let Some((host, ports)) = d.rsplit_once(':') else {
            return Err(doc.err(
                pos,
                format!("acl dst {d:?} needs host:ports (e.g. tag:web:80,443 or *:*)"),
            ));
        };
        let mut dst = SelectorSet::default();
        add_selector(doc, p, host, pos, false, &mut dst)?;
        let at = doc.at(pos);
        let ip = proto_ports(proto, ports, &at).map_err(|e| doc.err(pos, e))?;
        p.rules.push(Rule {
            effect: Effect::Allow,
            at,
            src: src.clone(),
            dst,
            ip,
            app: Vec::new(),
        });
    }
    Ok(())
}

fn parse_grant(
    doc: &Doc<'_>,
    p: &Policy,
    v: &Value,
    effect: Effect,
    what: &str,
) -> Result<Rule, Error> {
    let f = doc.object(v, &format!("a {what} entry"), &["src", "dst", "ip", "app"])?;
    let app = match Doc::field(f, "app") {
        Some(a) => parse_app(doc, a, effect == Effect::Deny)?,
        None => Vec::new(),
    };
    let mut ip = Vec::new();
    if let Some(iv) = Doc::field(f, "ip") {
        for (s, pos) in doc.strs(iv, "ip")? {
            ip.extend(parse_ip_entry(s, &doc.at(pos)).map_err(|e| doc.err(pos, e))?);
        }
        if ip.is_empty() {
            return Err(doc.err(iv.pos, "ip is empty"));
        }
    }
    if ip.is_empty() && app.is_empty() {
        return Err(doc.err(v.pos, format!("a {what} entry needs \"ip\" or \"app\"")));
    }
    let has_app = !app.is_empty();
    let src = selectors(doc, p, doc.need(f, "src", v)?, "src", has_app)?;
    let dv = doc.need(f, "dst", v)?;
    let dst = selectors(doc, p, dv, "dst", has_app && ip.is_empty())?;
    for e in &app {
        match e.grant {
            AppGrant::Docker { .. } => {
                if dst.has_addresses() {
                    return Err(doc.err(
                        dv.pos,
                        "docker capabilities need node selectors in dst, not addresses",
                    ));
                }
            }
            _ => {
                let only_star = dst.all
                    && dst.nodes.is_empty()
                    && dst.tags.is_empty()
                    && !dst.member
                    && dst.cidrs.is_empty();
                if !only_star {
                    return Err(doc.err(
                        dv.pos,
                        "S3, NFS and admin are mesh-wide services: their dst must be [\"*\"]",
                    ));
                }
            }
        }
    }
    Ok(Rule {
        effect,
        at: doc.at(v.pos),
        src,
        dst,
        ip,
        app,
    })
}
