//! Selectors (who/which node), CIDRs, protocols and port ranges: the vocabulary of `src`, `dst`
//! and `ip`, parsed from strings and resolved (groups and hosts expanded) into [`SelectorSet`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

/// Where a rule (or a part of one) was written: `file:line`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceRef {
    /// The policy file's name as given to the parser.
    pub file: String,
    /// 1-based line.
    pub line: u32,
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// An IPv4 or IPv6 prefix; host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// The prefix length (0-32 or 0-128).
    pub len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn bits(a: &IpAddr) -> (u128, u8) {
    match a {
        IpAddr::V4(v) => (u128::from(u32::from(*v)) << 96, 32),
        IpAddr::V6(v) => (u128::from(*v), 128),
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::/n` or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
        };
        let c = Cidr { addr, len };
        let (b, _) = bits(&addr);
        if b & !mask(len) != 0 {
            return Err(format!(
                "{s:?} has host bits set (the network is {})",
                c.network()
            ));
        }
        Ok(c)
    }

    fn network(&self) -> Cidr {
        let (b, _) = bits(&self.addr);
        let n = b & mask(self.len);
        let addr = if self.addr.is_ipv4() {
            IpAddr::V4(((n >> 96) as u32).into())
        } else {
            IpAddr::V6(n.into())
        };
        Cidr {
            addr,
            len: self.len,
        }
    }

    /// Whether `ip` is inside this prefix.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let (a, _) = bits(&self.addr);
        let (b, _) = bits(ip);
        let m = mask(self.len);
        a & m == b & m
    }

    /// Whether every address of `other` is inside this prefix.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(&other.addr)
    }

    /// Whether the two prefixes share an address.
    pub fn intersects(&self, other: &Cidr) -> bool {
        self.covers(other) || other.covers(self)
    }
}

/// One parsed `src`/`dst` entry before groups and hosts are expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `*`: everyone (for IP: any source address too).
    All,
    /// `autogroup:member`: every node of the mesh, tagged or not (unlike Tailscale, where
    /// tagged devices are not members). Tokens are not members.
    Member,
    /// A node by its name.
    Node(String),
    /// `group:x`.
    Group(String),
    /// `tag:x`.
    Tag(String),
    /// A name from `hosts`.
    Host(String),
    /// An address or prefix.
    Cidr(Cidr),
}

/// Checks the part after `tag:` / `group:`: a DNS-label-like word.
pub(crate) fn valid_word(w: &str) -> bool {
    !w.is_empty()
        && w.len() <= 63
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Parses one selector; `is_host` says whether a bare word is a `hosts` name.
pub fn parse_selector(s: &str, is_host: &dyn Fn(&str) -> bool) -> Result<Selector, String> {
    if s == "*" {
        return Ok(Selector::All);
    }
    if let Some(a) = s.strip_prefix("autogroup:") {
        return match a {
            "member" => Ok(Selector::Member),
            _ => Err(format!(
                "unknown autogroup {s:?} (supported: autogroup:member)"
            )),
        };
    }
    if let Some(g) = s.strip_prefix("group:") {
        return if valid_word(g) {
            Ok(Selector::Group(s.into()))
        } else {
            Err(format!("{s:?} is not a valid group name"))
        };
    }
    if let Some(t) = s.strip_prefix("tag:") {
        return if valid_word(t) {
            Ok(Selector::Tag(s.into()))
        } else {
            Err(format!("{s:?} is not a valid tag name"))
        };
    }
    if s.contains('/') || s.parse::<IpAddr>().is_ok() {
        return Cidr::parse(s).map(Selector::Cidr);
    }
    if is_host(s) {
        return Ok(Selector::Host(s.into()));
    }
    crate::identity::validate_node_name(s).map_err(|e| {
        format!("{s:?} is not a node name ({e}), group:, tag:, autogroup:member, a host or a CIDR")
    })?;
    Ok(Selector::Node(s.into()))
}

/// A resolved selector list: groups expanded to node names, hosts to prefixes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SelectorSet {
    /// `*` was listed.
    pub all: bool,
    /// `autogroup:member` was listed.
    pub member: bool,
    /// Node names.
    pub nodes: BTreeSet<String>,
    /// Tags (`tag:x`).
    pub tags: BTreeSet<String>,
    /// Prefixes (from CIDRs and hosts), sorted.
    pub cidrs: BTreeSet<Cidr>,
}

impl SelectorSet {
    /// Whether a principal with this name (nodes only), tags and addresses is selected.
    /// `is_member` is true for nodes and tokens (false for a bare address).
    pub fn matches(
        &self,
        is_member: bool,
        name: Option<&str>,
        tags: &BTreeSet<String>,
        addrs: &BTreeSet<IpAddr>,
    ) -> bool {
        self.all
            || (self.member && is_member)
            || name.is_some_and(|n| self.nodes.contains(n))
            || tags.iter().any(|t| self.tags.contains(t))
            || addrs
                .iter()
                .any(|a| self.cidrs.iter().any(|c| c.contains(a)))
    }

    /// Whether only addresses (no identities) are selected.
    pub fn has_addresses(&self) -> bool {
        !self.cidrs.is_empty()
    }
}

/// Protocol numbers by name.
const PROTOCOLS: &[(&str, u8)] = &[
    ("icmp", 1),
    ("igmp", 2),
    ("tcp", 6),
    ("udp", 17),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("sctp", 132),
];

/// TCP.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// SCTP.
pub const SCTP: u8 = 132;

/// ICMP.
pub const ICMP: u8 = 1;
/// ICMPv6.
pub const ICMP6: u8 = 58;

/// Whether the protocol has ports.
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, TCP | UDP | SCTP)
}

/// The number the rules look up for a packet: the destination port for protocols with ports,
/// the message type for ICMP and ICMPv6 (so an echo request can be told from the rest), 0
/// for other portless protocols. A portless `ip` entry (`icmp`) covers every number.
pub fn rule_port(proto: u8, port: u16) -> u16 {
    if has_ports(proto) || matches!(proto, ICMP | ICMP6) {
        port
    } else {
        0
    }
}

/// The echo-request type of an ICMP protocol (8 for ICMP, 128 for ICMPv6). Echo follows the
/// rules of the destination: it is allowed when the source may reach any port of it (an
/// accept rule with `ip` entries, or a capability that opens a service port), unless a deny
/// rule covers it.
pub fn echo_request(proto: u8) -> Option<u16> {
    match proto {
        ICMP => Some(8),
        ICMP6 => Some(128),
        _ => None,
    }
}

/// The protocol number of a name (`tcp`) or a decimal number (`6`).
pub fn parse_proto(s: &str) -> Result<u8, String> {
    if let Some((_, n)) = PROTOCOLS.iter().find(|(n, _)| *n == s) {
        return Ok(*n);
    }
    s.parse::<u8>().map_err(|_| {
        format!(
            "unknown protocol {s:?} (use one of {} or a number 0-255)",
            PROTOCOLS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// The name of a protocol number, for messages.
pub fn proto_name(p: u8) -> String {
    PROTOCOLS
        .iter()
        .find(|(_, n)| *n == p)
        .map(|(s, _)| s.to_string())
        .unwrap_or_else(|| p.to_string())
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (>= first).
    pub last: u16,
}

/// Every port.
pub const ALL_PORTS: PortRange = PortRange {
    first: 0,
    last: 65535,
};

/// Parses `*`, `22`, `80,443`, `8000-8999` (and lists of those).
pub fn parse_ports(s: &str) -> Result<Vec<PortRange>, String> {
    if s == "*" {
        return Ok(vec![ALL_PORTS]);
    }
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port (0-65535)"))
    };
    let mut out = Vec::new();
    for part in s.split(',') {
        let r = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(format!("port range {part:?} is reversed (write {b}-{a})"));
                }
                PortRange { first: a, last: b }
            }
            None => {
                let p = port(part)?;
                PortRange { first: p, last: p }
            }
        };
        out.push(r);
    }
    Ok(out)
}

/// Which protocol an [`IpSpec`] covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ProtoSel {
    /// Every protocol.
    Any,
    /// One protocol number.
    Proto(u8),
}

/// Protocol and ports of one `ip` entry (or of one ACL `dst`), with where it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpSpec {
    /// The protocol.
    pub proto: ProtoSel,
    /// The ports (for protocols without ports: all of them).
    pub ports: Vec<PortRange>,
    /// Where.
    pub at: SourceRef,
}

impl IpSpec {
    /// Whether this entry covers a packet of `proto` to `port` (see [`rule_port`]).
    pub fn matches(&self, proto: u8, port: u16) -> bool {
        let p_ok = match self.proto {
            ProtoSel::Any => true,
            ProtoSel::Proto(p) => p == proto,
        };
        let port = rule_port(proto, port);
        p_ok && self.ports.iter().any(|r| r.first <= port && port <= r.last)
    }
}

/// Parses a grant's `ip` entry: `*`, `tcp:443`, `udp:53`, `icmp`, `icmp:*`, `443` (TCP and
/// UDP), `8000-8999`. Returns one spec per protocol.
pub fn parse_ip_entry(s: &str, at: &SourceRef) -> Result<Vec<IpSpec>, String> {
    if s == "*" {
        return Ok(vec![IpSpec {
            proto: ProtoSel::Any,
            ports: vec![ALL_PORTS],
            at: at.clone(),
        }]);
    }
    let (proto, ports) = match s.split_once(':') {
        Some((p, ports)) => (Some(p), ports),
        None if s
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b',') =>
        {
            (None, s)
        }
        None => (Some(s), "*"),
    };
    proto_ports(proto, ports, at)
}

/// Builds the specs for an optional protocol name and a port list. Without a protocol, ports
/// mean TCP and UDP and `*` means every protocol.
pub fn proto_ports(
    proto: Option<&str>,
    ports: &str,
    at: &SourceRef,
) -> Result<Vec<IpSpec>, String> {
    let ranges = parse_ports(ports)?;
    match proto {
        None | Some("*") if ports == "*" => Ok(vec![IpSpec {
            proto: ProtoSel::Any,
            ports: ranges,
            at: at.clone(),
        }]),
        None | Some("*") => Ok([TCP, UDP]
            .iter()
            .map(|p| IpSpec {
                proto: ProtoSel::Proto(*p),
                ports: ranges.clone(),
                at: at.clone(),
            })
            .collect()),
        Some(p) => {
            let n = parse_proto(p)?;
            if !has_ports(n) && ports != "*" {
                return Err(format!(
                    "protocol {p} has no ports; write {p}:* or just {p}"
                ));
            }
            let ranges = if has_ports(n) {
                ranges
            } else {
                vec![ALL_PORTS]
            };
            Ok(vec![IpSpec {
                proto: ProtoSel::Proto(n),
                ports: ranges,
                at: at.clone(),
            }])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> SourceRef {
        SourceRef {
            file: "f".into(),
            line: 1,
        }
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("100.64.0.0/10").unwrap();
        assert!(c.contains(&"100.100.1.2".parse().unwrap()));
        assert!(!c.contains(&"100.128.0.1".parse().unwrap()));
        assert!(!c.contains(&"::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.1/8").unwrap_err().contains("host bits"));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .covers(&Cidr::parse("fd00:1::/32").unwrap()));
        assert_eq!(Cidr::parse("10.1.2.3").unwrap().len, 32);
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(&"8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn selectors() {
        let no = |_: &str| false;
        assert_eq!(parse_selector("*", &no), Ok(Selector::All));
        assert_eq!(
            parse_selector("autogroup:member", &no),
            Ok(Selector::Member)
        );
        assert!(parse_selector("autogroup:admin", &no)
            .unwrap_err()
            .contains("unknown autogroup"));
        assert_eq!(
            parse_selector("tag:web", &no),
            Ok(Selector::Tag("tag:web".into()))
        );
        assert_eq!(
            parse_selector("beta", &no),
            Ok(Selector::Node("beta".into()))
        );
        assert_eq!(
            parse_selector("db", &|h| h == "db"),
            Ok(Selector::Host("db".into()))
        );
        assert!(parse_selector("Beta!", &no).is_err());
        assert!(matches!(
            parse_selector("10.0.0.0/8", &no),
            Ok(Selector::Cidr(_))
        ));
    }

    #[test]
    fn ports_and_protocols() {
        assert_eq!(parse_ports("80,443").unwrap().len(), 2);
        assert!(parse_ports("90-80").unwrap_err().contains("reversed"));
        assert!(parse_ports("70000").unwrap_err().contains("not a port"));
        assert!(parse_ports("").is_err());
        assert!(parse_proto("tcpx")
            .unwrap_err()
            .contains("unknown protocol"));
        assert_eq!(parse_proto("47"), Ok(47));
        let s = parse_ip_entry("tcp:443", &at()).unwrap();
        assert_eq!(s.len(), 1);
        assert!(s[0].matches(TCP, 443) && !s[0].matches(UDP, 443) && !s[0].matches(TCP, 80));
        assert_eq!(parse_ip_entry("443", &at()).unwrap().len(), 2);
        assert_eq!(parse_ip_entry("8000-8999", &at()).unwrap().len(), 2);
        let icmp = parse_ip_entry("icmp", &at()).unwrap();
        assert!(icmp[0].matches(1, 0));
        assert!(parse_ip_entry("icmp:22", &at())
            .unwrap_err()
            .contains("no ports"));
        assert!(parse_ip_entry("*", &at()).unwrap()[0].matches(47, 0));
        assert!(parse_ip_entry("bogus:22", &at()).is_err());
    }
}
