//! The packet filter in the form the dataplane understands (issue 16): plain data, compiled
//! by the control plane from the policy (`tm-policy`'s `FilterTable`), without any policy
//! vocabulary. The dataplane never imports the policy crate; this is the contract.
//!
//! * `classes`: one per distinct set of rules (the table grows with tag/group combinations,
//!   not with peers). Per class, per protocol, sorted disjoint port ranges each with a
//!   [`Verdict`]; a port in no range has no rule ([`Verdict::NoRule`]); protocols not listed
//!   get `other`. ICMP and ICMPv6 use the message type as the port (an echo request is 8 or
//!   128); other portless protocols (GRE, ...) use port 0.
//! * `peers`: inbound, source peer -> class (sorted by peer). A peer not listed may open
//!   nothing to this node.
//! * `reachable`: outbound, the peers this node may exchange anything with (sorted).
//! * `generation`: increases with every change; flows admitted under an older one are
//!   re-evaluated (revocation cuts established flows).
//! * `seed`: keys the dataplane's flow hash (the dataplane has no randomness of its own).
//!
//! Transfer: [`FilterSpec::encode`] gives one blob (size grows with classes x ranges, not
//! peers x rules); [`chunks`] cuts it into `CtlMsg::SetFilter` messages that fit a ring slot,
//! the dataplane reassembles them in order and applies the filter when the last one arrives.
//! An empty blob means "no filter" (allow all, as without a policy).

use crate::ipc::{CtlMsg, DecodeError, PeerId};

/// Bytes of filter blob per `SetFilter` message (a ring slot is 2 KiB; the message header
/// takes 21 bytes and the ring's length prefix a few more).
pub const FILTER_CHUNK: usize = 1900;
/// Largest filter blob the dataplane accepts (64 MiB).
pub const MAX_FILTER_BYTES: u32 = 64 << 20;

/// What the rules say about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Verdict {
    /// No rule allows it (dropped under the default).
    NoRule = 0,
    /// A rule allows it.
    Allow = 1,
    /// An explicit deny rule matches.
    Deny = 2,
}

impl Verdict {
    fn from_u8(v: u8) -> Result<Verdict, DecodeError> {
        match v {
            0 => Ok(Verdict::NoRule),
            1 => Ok(Verdict::Allow),
            2 => Ok(Verdict::Deny),
            _ => Err(DecodeError::Invalid),
        }
    }
}

/// Ports `first..=last` of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRule {
    pub first: u16,
    pub last: u16,
    pub verdict: Verdict,
}

/// The rules of one protocol: sorted, disjoint ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProtoRules {
    pub proto: u8,
    pub ranges: Vec<PortRule>,
}

/// What one class of source peers may reach on this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FilterClass {
    /// Sorted by protocol number.
    pub protos: Vec<ProtoRules>,
    /// Verdict for protocols not in `protos`.
    pub other: Verdict,
}

impl FilterClass {
    /// The verdict for a packet of `proto` to `port` (binary search over protocols, then
    /// over the ranges).
    pub fn verdict(&self, proto: u8, port: u16) -> Verdict {
        match self.protos.binary_search_by_key(&proto, |p| p.proto) {
            Ok(i) => {
                let r = &self.protos[i].ranges;
                let j = r.partition_point(|x| x.first <= port);
                if j > 0 && r[j - 1].last >= port {
                    r[j - 1].verdict
                } else {
                    Verdict::NoRule
                }
            }
            Err(_) => self.other,
        }
    }
}

/// The compiled filter of one node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilterSpec {
    pub generation: u64,
    pub seed: u64,
    pub classes: Vec<FilterClass>,
    /// Inbound: (source peer, class index), sorted by peer.
    pub peers: Vec<(PeerId, u32)>,
    /// Outbound: peers this node may send to, sorted.
    pub reachable: Vec<PeerId>,
}

impl FilterSpec {
    /// The class of inbound traffic from `peer`.
    pub fn class_of(&self, peer: PeerId) -> Option<&FilterClass> {
        let i = self.peers.binary_search_by_key(&peer, |p| p.0).ok()?;
        self.classes.get(self.peers[i].1 as usize)
    }

    /// Whether this node may send to `peer`.
    pub fn reachable(&self, peer: PeerId) -> bool {
        self.reachable.binary_search(&peer).is_ok()
    }

    /// The blob carried by `SetFilter` messages.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.peers.len() * 8 + self.classes.len() * 16);
        b.extend_from_slice(&self.generation.to_le_bytes());
        b.extend_from_slice(&self.seed.to_le_bytes());
        b.extend_from_slice(&(self.classes.len() as u32).to_le_bytes());
        for c in &self.classes {
            b.push(c.other as u8);
            b.extend_from_slice(&(c.protos.len() as u16).to_le_bytes());
            for p in &c.protos {
                b.push(p.proto);
                b.extend_from_slice(&(p.ranges.len() as u32).to_le_bytes());
                for r in &p.ranges {
                    b.extend_from_slice(&r.first.to_le_bytes());
                    b.extend_from_slice(&r.last.to_le_bytes());
                    b.push(r.verdict as u8);
                }
            }
        }
        b.extend_from_slice(&(self.peers.len() as u32).to_le_bytes());
        for (p, c) in &self.peers {
            b.extend_from_slice(&p.to_le_bytes());
            b.extend_from_slice(&c.to_le_bytes());
        }
        b.extend_from_slice(&(self.reachable.len() as u32).to_le_bytes());
        for p in &self.reachable {
            b.extend_from_slice(&p.to_le_bytes());
        }
        b
    }

    /// Decodes and validates a blob: ranges sorted, disjoint and non-empty, protocols sorted
    /// and unique, peers and reachable sorted and unique, class indices in range.
    pub fn decode(buf: &[u8]) -> Result<FilterSpec, DecodeError> {
        let mut r = Rd(buf);
        let generation = r.u64()?;
        let seed = r.u64()?;
        let nc = r.u32()? as usize;
        // Every class takes at least 3 bytes: bound allocations by the input.
        if nc > buf.len() / 3 {
            return Err(DecodeError::Invalid);
        }
        let mut classes = Vec::with_capacity(nc);
        for _ in 0..nc {
            let other = Verdict::from_u8(r.u8()?)?;
            let np = r.u16()? as usize;
            let mut protos: Vec<ProtoRules> = Vec::with_capacity(np.min(256));
            for _ in 0..np {
                let proto = r.u8()?;
                if protos.last().is_some_and(|l| l.proto >= proto) {
                    return Err(DecodeError::Invalid);
                }
                let nr = r.u32()? as usize;
                if nr > r.0.len() / 5 {
                    return Err(DecodeError::Truncated);
                }
                let mut ranges: Vec<PortRule> = Vec::with_capacity(nr);
                for _ in 0..nr {
                    let (first, last) = (r.u16()?, r.u16()?);
                    let verdict = Verdict::from_u8(r.u8()?)?;
                    if first > last || ranges.last().is_some_and(|l| l.last >= first) {
                        return Err(DecodeError::Invalid);
                    }
                    ranges.push(PortRule {
                        first,
                        last,
                        verdict,
                    });
                }
                protos.push(ProtoRules { proto, ranges });
            }
            classes.push(FilterClass { protos, other });
        }
        let np = r.u32()? as usize;
        if np > r.0.len() / 8 {
            return Err(DecodeError::Truncated);
        }
        let mut peers: Vec<(PeerId, u32)> = Vec::with_capacity(np);
        for _ in 0..np {
            let (p, c) = (r.u32()?, r.u32()?);
            if c as usize >= classes.len() || peers.last().is_some_and(|l| l.0 >= p) {
                return Err(DecodeError::Invalid);
            }
            peers.push((p, c));
        }
        let nr = r.u32()? as usize;
        if nr > r.0.len() / 4 {
            return Err(DecodeError::Truncated);
        }
        let mut reachable: Vec<PeerId> = Vec::with_capacity(nr);
        for _ in 0..nr {
            let p = r.u32()?;
            if reachable.last().is_some_and(|l| *l >= p) {
                return Err(DecodeError::Invalid);
            }
            reachable.push(p);
        }
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing);
        }
        Ok(FilterSpec {
            generation,
            seed,
            classes,
            peers,
            reachable,
        })
    }
}

struct Rd<'a>(&'a [u8]);
impl Rd<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        if self.0.len() < N {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(N);
        self.0 = b;
        let mut o = [0u8; N];
        o.copy_from_slice(a);
        Ok(o)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

/// The `SetFilter` messages that carry `spec` (`None`: remove the filter, allow all), in
/// order. `generation` must increase with every call.
pub fn chunks(generation: u64, spec: Option<&FilterSpec>) -> Vec<CtlMsg> {
    let blob = spec.map(FilterSpec::encode).unwrap_or_default();
    let total = u32::try_from(blob.len()).expect("filter blob under 4 GiB");
    if blob.is_empty() {
        return vec![CtlMsg::SetFilter {
            generation,
            total: 0,
            offset: 0,
            data: Vec::new(),
        }];
    }
    blob.chunks(FILTER_CHUNK)
        .enumerate()
        .map(|(i, c)| CtlMsg::SetFilter {
            generation,
            total,
            offset: (i * FILTER_CHUNK) as u32,
            data: c.to_vec(),
        })
        .collect()
}

/// Reassembles `SetFilter` messages (dataplane side). Chunks must arrive in order; a chunk
/// of another generation or at an unexpected offset restarts (or abandons) the transfer.
#[derive(Debug, Default)]
pub struct Reassembly {
    generation: u64,
    total: u32,
    buf: Vec<u8>,
    active: bool,
}

/// Outcome of [`Reassembly::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum FilterUpdate {
    /// More chunks expected.
    Partial,
    /// Complete: remove the filter (allow all).
    Clear { generation: u64 },
    /// Complete: install this filter.
    Set(Box<FilterSpec>),
    /// Out-of-order chunk, oversized or undecodable blob: the transfer was dropped.
    Bad,
}

impl Reassembly {
    /// Feeds one `SetFilter` message.
    pub fn push(&mut self, generation: u64, total: u32, offset: u32, data: &[u8]) -> FilterUpdate {
        if total == 0 {
            self.active = false;
            self.buf = Vec::new();
            return FilterUpdate::Clear { generation };
        }
        if total > MAX_FILTER_BYTES {
            self.active = false;
            return FilterUpdate::Bad;
        }
        if offset == 0 {
            self.generation = generation;
            self.total = total;
            self.buf.clear();
            self.active = true;
        }
        if !self.active
            || generation != self.generation
            || total != self.total
            || offset as usize != self.buf.len()
            || self.buf.len() + data.len() > total as usize
        {
            self.active = false;
            return FilterUpdate::Bad;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() < total as usize {
            return FilterUpdate::Partial;
        }
        self.active = false;
        let r = FilterSpec::decode(&self.buf);
        self.buf = Vec::new();
        match r {
            Ok(s) if s.generation == generation => FilterUpdate::Set(Box::new(s)),
            _ => FilterUpdate::Bad,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(peers: u32, ranges: u16) -> FilterSpec {
        let class = |k: u16| FilterClass {
            protos: vec![
                ProtoRules {
                    proto: 6,
                    ranges: (0..ranges)
                        .map(|i| PortRule {
                            first: 1000 + i * 10 + k,
                            last: 1000 + i * 10 + k + 2,
                            verdict: if i % 7 == 3 {
                                Verdict::Deny
                            } else {
                                Verdict::Allow
                            },
                        })
                        .collect(),
                },
                ProtoRules {
                    proto: 17,
                    ranges: vec![PortRule {
                        first: 53,
                        last: 53,
                        verdict: Verdict::Allow,
                    }],
                },
            ],
            other: Verdict::NoRule,
        };
        FilterSpec {
            generation: 7,
            seed: 99,
            classes: vec![class(0), class(1), class(2)],
            peers: (1..=peers).map(|p| (p, p % 3)).collect(),
            reachable: (1..=peers).filter(|p| p % 5 != 0).collect(),
        }
    }

    #[test]
    fn blob_round_trips_and_rejects_truncation_and_disorder() {
        let s = sample(20, 30);
        let b = s.encode();
        assert_eq!(FilterSpec::decode(&b), Ok(s.clone()));
        for cut in 0..b.len() {
            assert!(FilterSpec::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = s.clone();
        bad.classes[0].protos[0].ranges.swap(0, 1);
        assert_eq!(FilterSpec::decode(&bad.encode()), Err(DecodeError::Invalid));
        let mut bad = s.clone();
        bad.peers[0].1 = 3;
        assert_eq!(FilterSpec::decode(&bad.encode()), Err(DecodeError::Invalid));
        let mut bad = s;
        bad.reachable.swap(0, 1);
        assert_eq!(FilterSpec::decode(&bad.encode()), Err(DecodeError::Invalid));
    }

    #[test]
    fn verdict_is_binary_search_over_ranges() {
        let s = sample(6, 30);
        let c = &s.classes[0];
        assert_eq!(c.verdict(6, 999), Verdict::NoRule);
        assert_eq!(c.verdict(6, 1000), Verdict::Allow);
        assert_eq!(c.verdict(6, 1002), Verdict::Allow);
        assert_eq!(c.verdict(6, 1003), Verdict::NoRule);
        assert_eq!(c.verdict(6, 1030), Verdict::Deny);
        assert_eq!(c.verdict(17, 53), Verdict::Allow);
        assert_eq!(c.verdict(17, 54), Verdict::NoRule);
        assert_eq!(c.verdict(1, 0), Verdict::NoRule);
        assert_eq!(s.class_of(2), Some(&s.classes[2]));
        assert_eq!(s.class_of(99), None);
        assert!(s.reachable(4) && !s.reachable(5));
    }

    #[test]
    fn chunks_fit_a_ring_slot_and_reassemble() {
        let s = sample(1000, 300);
        let msgs = chunks(7, Some(&s));
        assert!(msgs.len() > 1);
        let mut r = Reassembly::default();
        for (i, m) in msgs.iter().enumerate() {
            let mut enc = Vec::new();
            m.encode(&mut enc);
            assert!(enc.len() <= 1950, "{} bytes", enc.len());
            let CtlMsg::SetFilter {
                generation,
                total,
                offset,
                data,
            } = CtlMsg::decode(&enc).unwrap()
            else {
                panic!("not SetFilter")
            };
            let u = r.push(generation, total, offset, &data);
            if i + 1 < msgs.len() {
                assert_eq!(u, FilterUpdate::Partial);
            } else {
                assert_eq!(u, FilterUpdate::Set(Box::new(s.clone())));
            }
        }
        // Out of order: dropped, and a later complete transfer still works.
        let mut r = Reassembly::default();
        let CtlMsg::SetFilter {
            generation,
            total,
            offset,
            data,
        } = &msgs[1]
        else {
            unreachable!()
        };
        assert_eq!(
            r.push(*generation, *total, *offset, data),
            FilterUpdate::Bad
        );
        let last = msgs.len() - 1;
        for (i, m) in msgs.iter().enumerate() {
            let CtlMsg::SetFilter {
                generation,
                total,
                offset,
                data,
            } = m
            else {
                unreachable!()
            };
            let u = r.push(*generation, *total, *offset, data);
            assert_eq!(matches!(u, FilterUpdate::Set(_)), i == last);
        }
        assert_eq!(
            chunks(8, None)
                .into_iter()
                .map(|m| match m {
                    CtlMsg::SetFilter {
                        generation,
                        total,
                        offset,
                        data,
                    } => r.push(generation, total, offset, &data),
                    _ => unreachable!(),
                })
                .collect::<Vec<_>>(),
            vec![FilterUpdate::Clear { generation: 8 }]
        );
    }
}
