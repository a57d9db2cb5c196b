//! The zone: what the daemon hands us ([`Zone`]) and the compiled, query-ready index
//! ([`Compiled`]) with the sans-IO lookup ([`Compiled::lookup`]).
//!
//! Lookup flow: 1. class and zone check (REFUSED outside) 2. find the node (NXDOMAIN + SOA if
//! absent) 3. aliases: emit CNAME, follow the target (at most [`MAX_ALIAS_CHAIN`] hops, checked
//! at compile time) 4. apex: SOA / NS 5. hosts: A / AAAA, or NODATA + SOA.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::DnsError;

/// TTL of every record we serve, and the SOA minimum (= negative-caching TTL), in seconds.
pub const TTL: u32 = 5;

/// Longest alias chain (alias -> alias -> ... -> host) accepted by [`crate::MeshDns::update`].
pub const MAX_ALIAS_CHAIN: usize = 8;

/// The label under the zone apex that names the coordinators (`coordinator.mesh`).
pub const COORDINATOR_LABEL: &str = "coordinator";

/// The mesh zone as the daemon sees it, built from its netmap.
///
/// Names in `records` and `aliases` are relative to `domain` (`"beta"`), or fully qualified
/// (`"beta.mesh"` / `"beta.mesh."`); they are case-insensitive. `coordinator` and the apex are
/// reserved. Alias targets name another entry of this zone (peer, alias, `coordinator`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The zone apex, `"mesh"` by default.
    pub domain: String,
    /// Peer name -> its mesh addresses (v4 and/or v6).
    pub records: BTreeMap<String, Vec<IpAddr>>,
    /// Alias name -> target name; answered as a CNAME followed by the target's records.
    pub aliases: BTreeMap<String, String>,
    /// Mesh addresses of the coordinators, served as `coordinator.<domain>`.
    pub coordinators: Vec<IpAddr>,
}

impl Default for Zone {
    fn default() -> Self {
        Self::new("mesh")
    }
}

impl Zone {
    /// An empty zone for `domain`.
    pub fn new(domain: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
            records: BTreeMap::new(),
            aliases: BTreeMap::new(),
            coordinators: Vec::new(),
        }
    }

    /// Adds (or replaces) a peer.
    #[must_use]
    pub fn with_peer(
        mut self,
        name: impl Into<String>,
        addrs: impl IntoIterator<Item = IpAddr>,
    ) -> Self {
        self.records
            .insert(name.into(), addrs.into_iter().collect());
        self
    }

    /// Adds (or replaces) an alias.
    #[must_use]
    pub fn with_alias(mut self, name: impl Into<String>, target: impl Into<String>) -> Self {
        self.aliases.insert(name.into(), target.into());
        self
    }

    /// Sets the coordinator addresses.
    #[must_use]
    pub fn with_coordinators(mut self, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        self.coordinators = addrs.into_iter().collect();
        self
    }
}

/// The result of one lookup: what goes into the response message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Response code (NOERROR, NXDOMAIN, REFUSED, ...).
    pub rcode: ResponseCode,
    /// Whether the AA bit is set (every in-zone answer, including NXDOMAIN).
    pub authoritative: bool,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section (the SOA for negative answers).
    pub authorities: Vec<Record>,
    /// Additional section (coordinator addresses for NS queries).
    pub additionals: Vec<Record>,
}

impl Answer {
    fn refused() -> Self {
        Self {
            rcode: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    /// The zone apex: SOA and NS.
    Apex,
    /// A host (peer or `coordinator`) with its addresses, possibly none.
    Host(Vec<IpAddr>),
    /// An alias to another in-zone name (lower-case FQDN).
    Alias(Name),
    /// An empty non-terminal: exists (NODATA), holds nothing.
    Empty,
}

/// A validated, indexed zone, immutable once built; swapped in whole by [`crate::MeshDns`].
#[derive(Debug)]
pub(crate) struct Compiled {
    apex: Name,
    serial: u32,
    /// Keys are lower-case FQDNs.
    nodes: HashMap<Name, Node>,
    soa: Record,
    ns: Record,
    coordinators: Vec<IpAddr>,
    coordinator_name: Name,
}

impl Compiled {
    /// Validates `zone` and builds the index. Bad entries are left out and returned; a bad
    /// domain fails the whole zone.
    pub(crate) fn build(zone: &Zone, serial: u32) -> Result<(Self, Vec<DnsError>), DnsError> {
        let domain = normalize_domain(&zone.domain)?;
        let apex = fqdn(&domain)
            .ok_or_else(|| DnsError::InvalidDomain(zone.domain.clone()))?
            .to_lowercase();
        let coordinator_name = fqdn(&format!("{COORDINATOR_LABEL}.{domain}"))
            .ok_or_else(|| DnsError::InvalidDomain(zone.domain.clone()))?;
        let hostmaster = fqdn(&format!("hostmaster.{domain}"))
            .ok_or_else(|| DnsError::InvalidDomain(zone.domain.clone()))?;

        let mut skipped = Vec::new();
        let mut nodes = HashMap::new();
        nodes.insert(apex.clone(), Node::Apex);
        let coordinators = dedup(&zone.coordinators);
        nodes.insert(coordinator_name.clone(), Node::Host(coordinators.clone()));

        for (raw, addrs) in &zone.records {
            match relative_name(raw, &domain).and_then(|rel| to_fqdn(&rel, &domain, raw)) {
                Ok(name) if nodes.contains_key(&name) => {
                    skipped.push(DnsError::DuplicateName(raw.clone()));
                }
                Ok(name) => {
                    nodes.insert(name, Node::Host(dedup(addrs)));
                }
                Err(e) => skipped.push(e),
            }
        }

        let mut aliases: Vec<(String, Name, Name)> = Vec::new();
        for (raw, raw_target) in &zone.aliases {
            let name = match relative_name(raw, &domain).and_then(|r| to_fqdn(&r, &domain, raw)) {
                Ok(name) => name,
                Err(e) => {
                    skipped.push(e);
                    continue;
                }
            };
            if nodes.contains_key(&name) || aliases.iter().any(|(_, n, _)| *n == name) {
                skipped.push(DnsError::DuplicateName(raw.clone()));
                continue;
            }
            let Some(target) = target_name(raw_target, &domain) else {
                skipped.push(DnsError::DanglingAlias {
                    alias: raw.clone(),
                    target: raw_target.clone(),
                });
                continue;
            };
            aliases.push((raw.clone(), name, target));
        }

        // Drop aliases that dangle, loop or chain too deep until none is left; dropping one can
        // make another dangle, hence the fixpoint.
        loop {
            let mut trial = nodes.clone();
            for (_, name, target) in &aliases {
                trial.insert(name.clone(), Node::Alias(target.clone()));
            }
            add_empty_non_terminals(&mut trial, &apex);
            let before = aliases.len();
            aliases.retain(|(raw, name, target)| match chase(&trial, name) {
                Chase::Ends => true,
                Chase::Dangles => {
                    skipped.push(DnsError::DanglingAlias {
                        alias: raw.clone(),
                        target: target.to_string(),
                    });
                    false
                }
                Chase::TooLong => {
                    skipped.push(DnsError::AliasLoop(raw.clone()));
                    false
                }
            });
            if aliases.len() == before {
                nodes = trial;
                break;
            }
        }

        let soa = Record::from_rdata(
            apex.clone(),
            TTL,
            RData::SOA(SOA::new(
                coordinator_name.clone(),
                hostmaster,
                serial,
                60,
                10,
                3600,
                TTL,
            )),
        );
        let ns = Record::from_rdata(apex.clone(), TTL, RData::NS(NS(coordinator_name.clone())));
        Ok((
            Self {
                apex,
                serial,
                nodes,
                soa,
                ns,
                coordinators,
                coordinator_name,
            },
            skipped,
        ))
    }

    /// The SOA serial of this version of the zone.
    pub(crate) fn serial(&self) -> u32 {
        self.serial
    }

    /// Whether `qname` is the apex or below it.
    pub(crate) fn in_zone(&self, qname: &Name) -> bool {
        let mut key = qname.to_lowercase();
        key.set_fqdn(true);
        self.apex.zone_of(&key)
    }

    /// Answers one question. `qname` keeps the asker's case for the first owner name.
    pub(crate) fn lookup(&self, qname: &Name, qtype: RecordType, qclass: DNSClass) -> Answer {
        let mut ans = Answer::refused();
        if qclass != DNSClass::IN && qclass != DNSClass::ANY {
            return ans;
        }
        let mut key = qname.to_lowercase();
        key.set_fqdn(true);
        if !self.apex.zone_of(&key) || matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            // Not ours, or a zone transfer: we are neither a resolver nor a primary.
            return ans;
        }
        ans.rcode = ResponseCode::NoError;
        ans.authoritative = true;
        let mut owner = qname.clone();
        owner.set_fqdn(true);

        for _ in 0..=MAX_ALIAS_CHAIN {
            match self.nodes.get(&key) {
                None => {
                    ans.rcode = ResponseCode::NXDomain;
                    ans.authorities.push(self.soa.clone());
                    return ans;
                }
                Some(Node::Alias(target)) => {
                    ans.answers.push(Record::from_rdata(
                        owner,
                        TTL,
                        RData::CNAME(CNAME(target.clone())),
                    ));
                    if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
                        return ans;
                    }
                    owner = target.clone();
                    key = target.clone();
                }
                Some(Node::Apex) => {
                    let mut with_owner = |r: &Record| {
                        let mut r = r.clone();
                        r.name = owner.clone();
                        ans.answers.push(r);
                    };
                    match qtype {
                        RecordType::SOA => with_owner(&self.soa),
                        RecordType::NS => with_owner(&self.ns),
                        RecordType::ANY => {
                            with_owner(&self.soa);
                            with_owner(&self.ns);
                        }
                        _ => {}
                    }
                    if ans.answers.is_empty() {
                        ans.authorities.push(self.soa.clone());
                    } else if matches!(qtype, RecordType::NS | RecordType::ANY) {
                        ans.additionals = self
                            .coordinators
                            .iter()
                            .map(|ip| addr_record(self.coordinator_name.clone(), *ip))
                            .collect();
                    }
                    return ans;
                }
                Some(Node::Host(addrs)) => {
                    ans.answers.extend(
                        addrs
                            .iter()
                            .filter(|ip| match qtype {
                                RecordType::A => ip.is_ipv4(),
                                RecordType::AAAA => ip.is_ipv6(),
                                RecordType::ANY => true,
                                _ => false,
                            })
                            .map(|ip| addr_record(owner.clone(), *ip)),
                    );
                    if !ans
                        .answers
                        .iter()
                        .any(|r| r.record_type() != RecordType::CNAME)
                    {
                        ans.authorities.push(self.soa.clone());
                    }
                    return ans;
                }
                Some(Node::Empty) => {
                    ans.authorities.push(self.soa.clone());
                    return ans;
                }
            }
        }
        // Unreachable for compiled zones (chains are checked in `build`); fail loudly anyway.
        ans.rcode = ResponseCode::ServFail;
        ans.answers.clear();
        ans
    }
}

enum Chase {
    Ends,
    Dangles,
    TooLong,
}

fn chase(nodes: &HashMap<Name, Node>, start: &Name) -> Chase {
    let mut cur = start;
    for _ in 0..=MAX_ALIAS_CHAIN {
        match nodes.get(cur) {
            None => return Chase::Dangles,
            Some(Node::Alias(next)) => cur = next,
            Some(_) => return Chase::Ends,
        }
    }
    Chase::TooLong
}

/// Marks every missing ancestor (below the apex) of every node as an empty non-terminal, so
/// `beta.mesh` answers NODATA (not NXDOMAIN) when only `web.beta.mesh` exists.
fn add_empty_non_terminals(nodes: &mut HashMap<Name, Node>, apex: &Name) {
    nodes.retain(|_, n| *n != Node::Empty);
    let names: Vec<Name> = nodes.keys().cloned().collect();
    for name in names {
        let mut parent = name.base_name();
        while parent.num_labels() > apex.num_labels() {
            nodes.entry(parent.clone()).or_insert(Node::Empty);
            parent = parent.base_name();
        }
    }
}

fn addr_record(owner: Name, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner, TTL, rdata)
}

fn dedup(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::with_capacity(addrs.len());
    for a in addrs {
        if !out.contains(a) {
            out.push(*a);
        }
    }
    out
}

/// `"Mesh."` -> `"mesh"`, checked.
fn normalize_domain(raw: &str) -> Result<String, DnsError> {
    let d = raw
        .trim()
        .strip_suffix('.')
        .unwrap_or(raw.trim())
        .to_ascii_lowercase();
    if d.is_empty() || !valid_host(&d) {
        return Err(DnsError::InvalidDomain(raw.to_owned()));
    }
    Ok(d)
}

/// `"Beta"`, `"beta.mesh"`, `"beta.MESH."` -> `"beta"` (for domain `mesh`), checked.
fn relative_name(raw: &str, domain: &str) -> Result<String, DnsError> {
    let t = raw.trim();
    let s = t.strip_suffix('.').unwrap_or(t).to_ascii_lowercase();
    if s == domain {
        return Err(DnsError::ReservedName(raw.to_owned()));
    }
    let rel = s
        .strip_suffix(domain)
        .and_then(|p| p.strip_suffix('.'))
        .unwrap_or(&s)
        .to_owned();
    if rel.is_empty() || !valid_host(&rel) || rel.len() + domain.len() + 1 > 253 {
        return Err(DnsError::InvalidName(raw.to_owned()));
    }
    if rel == COORDINATOR_LABEL {
        return Err(DnsError::ReservedName(raw.to_owned()));
    }
    Ok(rel)
}

/// An alias target: any in-zone name, including `coordinator` and the apex.
fn target_name(raw: &str, domain: &str) -> Option<Name> {
    let t = raw.trim();
    let s = t.strip_suffix('.').unwrap_or(t).to_ascii_lowercase();
    if s == domain {
        return fqdn(domain);
    }
    let rel = s
        .strip_suffix(domain)
        .and_then(|p| p.strip_suffix('.'))
        .unwrap_or(&s);
    if rel.is_empty() || !valid_host(rel) {
        return None;
    }
    fqdn(&format!("{rel}.{domain}"))
}

fn to_fqdn(rel: &str, domain: &str, raw: &str) -> Result<Name, DnsError> {
    fqdn(&format!("{rel}.{domain}")).ok_or_else(|| DnsError::InvalidName(raw.to_owned()))
}

fn fqdn(dotted: &str) -> Option<Name> {
    Name::from_ascii(format!("{dotted}."))
        .ok()
        .map(|n| n.to_lowercase())
}

/// Letters, digits, `-` and `_` (service labels); labels 1..=63 bytes, not starting or ending
/// with `-`; at most 253 bytes.
fn valid_host(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).expect("test name")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    fn build(zone: &Zone) -> (Compiled, Vec<DnsError>) {
        Compiled::build(zone, 7).expect("valid domain")
    }

    fn a(c: &Compiled, name: &str) -> Answer {
        c.lookup(&n(name), RecordType::A, DNSClass::IN)
    }

    fn ips(ans: &Answer) -> Vec<IpAddr> {
        ans.answers
            .iter()
            .filter_map(|r| r.data.ip_addr())
            .collect()
    }

    #[test]
    fn names_are_normalised_and_bad_ones_skipped() {
        let zone = Zone::default()
            .with_peer("Beta.MESH.", [ip("100.64.0.2")])
            .with_peer("beta", [ip("100.64.0.9")])
            .with_peer("coordinator", [ip("100.64.0.3")])
            .with_peer("mesh", [ip("100.64.0.4")])
            .with_peer("bad name", [ip("100.64.0.5")])
            .with_peer("-dash", [ip("100.64.0.6")])
            .with_peer("x".repeat(64), [ip("100.64.0.7")])
            .with_peer("ok-1", [ip("100.64.0.8"), ip("100.64.0.8")]);
        let (c, skipped) = build(&zone);
        // "Beta.MESH." sorts before "beta" and wins; the rest are reported.
        assert_eq!(ips(&a(&c, "beta.mesh.")), vec![ip("100.64.0.2")]);
        assert_eq!(
            ips(&a(&c, "ok-1.mesh.")),
            vec![ip("100.64.0.8")],
            "deduplicated"
        );
        assert_eq!(skipped.len(), 6, "{skipped:?}");
        assert!(skipped
            .iter()
            .any(|e| matches!(e, DnsError::DuplicateName(s) if s == "beta")));
        assert!(skipped
            .iter()
            .any(|e| matches!(e, DnsError::ReservedName(s) if s == "coordinator")));
        assert!(skipped
            .iter()
            .any(|e| matches!(e, DnsError::ReservedName(s) if s == "mesh")));
        assert_eq!(
            skipped
                .iter()
                .filter(|e| matches!(e, DnsError::InvalidName(_)))
                .count(),
            3
        );
        // The coordinator name was not hijacked.
        assert!(ips(&a(&c, "coordinator.mesh.")).is_empty());
    }

    #[test]
    fn invalid_domain_fails_the_zone() {
        for d in ["", ".", "bad domain", "-x"] {
            assert!(
                matches!(
                    Compiled::build(&Zone::new(d), 1),
                    Err(DnsError::InvalidDomain(_))
                ),
                "{d:?}"
            );
        }
    }

    #[test]
    fn custom_domain() {
        let zone = Zone::new("Corp.Internal.").with_peer("db", [ip("10.0.0.1")]);
        let (c, skipped) = build(&zone);
        assert!(skipped.is_empty());
        assert_eq!(ips(&a(&c, "DB.corp.internal.")), vec![ip("10.0.0.1")]);
        assert_eq!(a(&c, "db.mesh.").rcode, ResponseCode::Refused);
        let soa = c.lookup(&n("corp.internal."), RecordType::SOA, DNSClass::IN);
        match &soa.answers[0].data {
            RData::SOA(s) => {
                assert_eq!(s.mname, n("coordinator.corp.internal."));
                assert_eq!(s.serial, 7);
                assert_eq!(s.minimum, TTL);
            }
            other => panic!("not a SOA: {other:?}"),
        }
    }

    #[test]
    fn alias_chains_loops_and_dangling() {
        let zone = Zone::default()
            .with_peer("beta", [ip("100.64.0.2")])
            .with_alias("one", "two.mesh.")
            .with_alias("two", "beta")
            .with_alias("ring-a", "ring-b")
            .with_alias("ring-b", "ring-a")
            .with_alias("gone", "nobody")
            .with_alias("via-gone", "gone")
            .with_alias("out", "example.com.")
            .with_alias("c", "coordinator")
            .with_alias("beta", "two");
        let (c, skipped) = build(&zone);
        // one -> two -> beta: two CNAMEs then the A record, owners follow the chain.
        let ans = a(&c, "one.mesh.");
        assert_eq!(ans.rcode, ResponseCode::NoError);
        let kinds: Vec<_> = ans
            .answers
            .iter()
            .map(|r| (r.name.to_string(), r.record_type()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("one.mesh.".into(), RecordType::CNAME),
                ("two.mesh.".into(), RecordType::CNAME),
                ("beta.mesh.".into(), RecordType::A),
            ]
        );
        for dropped in ["ring-a", "ring-b", "gone", "via-gone", "out"] {
            assert_eq!(
                a(&c, &format!("{dropped}.mesh.")).rcode,
                ResponseCode::NXDomain,
                "{dropped}"
            );
        }
        assert_eq!(
            skipped
                .iter()
                .filter(|e| matches!(e, DnsError::AliasLoop(_)))
                .count(),
            2
        );
        assert_eq!(
            skipped
                .iter()
                .filter(|e| matches!(e, DnsError::DanglingAlias { .. }))
                .count(),
            3
        );
        assert_eq!(
            skipped
                .iter()
                .filter(|e| matches!(e, DnsError::DuplicateName(_)))
                .count(),
            1
        );
        // Alias to the coordinators, and an AAAA through an alias to a v4-only host is NODATA.
        assert_eq!(
            a(&c, "c.mesh.").answers.len(),
            1,
            "CNAME only: no coordinators"
        );
        let aaaa = c.lookup(&n("two.mesh."), RecordType::AAAA, DNSClass::IN);
        assert_eq!(aaaa.rcode, ResponseCode::NoError);
        assert_eq!(aaaa.answers.len(), 1);
        assert_eq!(aaaa.authorities[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn chain_longer_than_the_limit_is_dropped() {
        let mut zone = Zone::default().with_peer("end", [ip("100.64.0.2")]);
        // a0 -> a1 -> ... -> a{MAX} -> end: a0 needs MAX+1 hops.
        for i in 0..=MAX_ALIAS_CHAIN {
            let target = if i == MAX_ALIAS_CHAIN {
                "end".to_owned()
            } else {
                format!("a{}", i + 1)
            };
            zone = zone.with_alias(format!("a{i}"), target);
        }
        let (c, skipped) = build(&zone);
        assert_eq!(a(&c, "a0.mesh.").rcode, ResponseCode::NXDomain);
        assert!(
            matches!(&skipped[..], [DnsError::AliasLoop(s)] if s == "a0"),
            "{skipped:?}"
        );
        let ans = a(&c, "a1.mesh.");
        assert_eq!(ans.answers.len(), MAX_ALIAS_CHAIN + 1, "MAX CNAMEs + the A");
    }

    #[test]
    fn empty_non_terminal_is_nodata() {
        let zone = Zone::default().with_peer("web.beta", [ip("100.64.0.2")]);
        let (c, _) = build(&zone);
        assert_eq!(ips(&a(&c, "web.beta.mesh.")), vec![ip("100.64.0.2")]);
        let ent = a(&c, "beta.mesh.");
        assert_eq!(ent.rcode, ResponseCode::NoError);
        assert!(ent.answers.is_empty());
        assert_eq!(ent.authorities.len(), 1);
        assert_eq!(a(&c, "other.beta.mesh.").rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn first_owner_keeps_the_askers_case() {
        let (c, _) = build(&Zone::default().with_peer("beta", [ip("100.64.0.2")]));
        let ans = a(&c, "BeTa.Mesh.");
        assert!(ans.answers[0].name.eq_case(&n("BeTa.Mesh.")));
        // Relative (non-FQDN) names from an API caller are treated as FQDNs.
        assert_eq!(ips(&a(&c, "beta.mesh")), vec![ip("100.64.0.2")]);
    }

    #[test]
    fn any_query() {
        let zone = Zone::default().with_peer("alpha", [ip("100.64.0.1"), ip("fd7a::1")]);
        let (c, _) = build(&zone);
        let ans = c.lookup(&n("alpha.mesh."), RecordType::ANY, DNSClass::IN);
        assert_eq!(ans.answers.len(), 2);
        let apex = c.lookup(&n("mesh."), RecordType::ANY, DNSClass::ANY);
        let types: Vec<_> = apex.answers.iter().map(Record::record_type).collect();
        assert_eq!(types, vec![RecordType::SOA, RecordType::NS]);
    }
}
