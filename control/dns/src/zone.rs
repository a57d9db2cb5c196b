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
