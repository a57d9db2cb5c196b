//! Control <-> dataplane messages carried in the slots of the shared-memory ring.
//!
//! Encoding: `tag: u8` then fields little-endian; addresses as `family u8 (4|6)`, the
//! address bytes and a `u16` port; byte strings as `u16 len` + bytes. [`IPC_VERSION`]
//! changes whenever a message changes shape; the ring header carries it, and both
//! processes refuse to talk across versions.
//!
//! Call order (control side): `SetTimers`, then `AddPeer` for every peer, then
//! `InstallSession` / `SendDatagram` as handshakes progress. After a dataplane restart
//! the control plane replays the same sequence.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Bumped on any change to the messages below.
pub const IPC_VERSION: u32 = 3;

/// Peer identifier assigned by the control plane (dense, small; never reused while the
/// dataplane runs).
pub type PeerId = u32;

/// An IP prefix (allowed IP / route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

/// Protocol timers the dataplane enforces. Tests shorten `rekey_after`/`reject_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub rekey_after_ms: u32,
    pub reject_after_ms: u32,
    pub rekey_timeout_ms: u32,
    pub keepalive_timeout_ms: u32,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            rekey_after_ms: 120_000,
            reject_after_ms: 180_000,
            rekey_timeout_ms: 5_000,
            keepalive_timeout_ms: 10_000,
        }
    }
}

/// Control -> dataplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlMsg {
    SetTimers(Timers),
    /// Adds or replaces a peer (replacing keeps its sessions).
    AddPeer {
        peer: PeerId,
        public_key: [u8; 32],
        allowed_ips: Vec<Prefix>,
        endpoint: Option<SocketAddr>,
        /// Seconds; 0 = off.
        persistent_keepalive: u16,
    },
    RemovePeer {
        peer: PeerId,
    },
    SetEndpoint {
        peer: PeerId,
        endpoint: SocketAddr,
    },
    /// Session keys from a completed handshake. The initiator's session is usable at
    /// once; the responder's becomes current on the first authenticated packet under it.
    InstallSession {
        peer: PeerId,
        local_index: u32,
        remote_index: u32,
        send_key: [u8; 32],
        recv_key: [u8; 32],
        initiator: bool,
    },
    /// Drops every session of a peer (e.g. the peer was reconfigured).
    ClearSessions {
        peer: PeerId,
    },
    /// Sends a handshake (or cookie) datagram from the tunnel's UDP socket.
    SendDatagram {
        to: SocketAddr,
        data: Vec<u8>,
    },
    /// Asks for a `Counters` + `PeerCounters` report now.
    RequestCounters,
    /// One chunk of the packet filter's blob ([`crate::filter`]): `data` is
    /// `blob[offset..offset + data.len()]` of a `total`-byte blob of `generation`; chunks come
    /// in order; `total == 0` removes the filter (allow all). See [`crate::filter::chunks`].
    SetFilter {
        generation: u64,
        total: u32,
        offset: u32,
        data: Vec<u8>,
    },
}

/// Reasons the dataplane dropped a packet; the index is the counter slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Datagram shorter than its type requires, or wrong fixed length.
    Malformed = 0,
    /// Unknown message type / non-zero reserved bytes.
    UnknownType = 1,
    /// No session for the receiver index.
    UnknownReceiver = 2,
    /// AEAD open failed.
    AuthFailed = 3,
    /// Counter already seen or too old for the window.
    Replay = 4,
    /// Session older than reject-after-time or past reject-after-messages.
    SessionExpired = 5,
    /// Inner source address not in the sending peer's allowed IPs (cryptokey routing).
    SourceNotAllowed = 6,
    /// Inner packet is not a well-formed IPv4/IPv6 packet.
    BadInnerPacket = 7,
    /// Outbound: no peer's allowed IPs contain the destination.
    NoRoute = 8,
    /// Outbound: peer has no session and its staging queue is full.
    NoSession = 9,
    /// Outbound: peer has no known endpoint.
    NoEndpoint = 10,
    /// Rejected by the packet filter.
    Filtered = 11,
    /// Socket / TUN write failed.
    IoError = 12,
    /// Handshake message could not be forwarded to the control plane (ring full).
    RingFull = 13,
    /// Packet filter: no rule allows it (the policy's default).
    FilterNoRule = 14,
    /// Packet filter: an explicit deny rule matches.
    FilterDenied = 15,
    /// Packet filter: the packet's flow was admitted under an older policy generation and the
    /// current one no longer allows it.
    FilterRevoked = 16,
}

impl DropReason {
    pub const COUNT: usize = 17;
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::Malformed,
        Self::UnknownType,
        Self::UnknownReceiver,
        Self::AuthFailed,
        Self::Replay,
        Self::SessionExpired,
        Self::SourceNotAllowed,
        Self::BadInnerPacket,
        Self::NoRoute,
        Self::NoSession,
        Self::NoEndpoint,
        Self::Filtered,
        Self::IoError,
        Self::RingFull,
        Self::FilterNoRule,
        Self::FilterDenied,
        Self::FilterRevoked,
    ];
    /// Stable snake_case name, used as the key in `tmctl status --json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownType => "unknown_type",
            Self::UnknownReceiver => "unknown_receiver",
            Self::AuthFailed => "auth_failed",
            Self::Replay => "replay",
            Self::SessionExpired => "session_expired",
            Self::SourceNotAllowed => "source_not_allowed",
            Self::BadInnerPacket => "bad_inner_packet",
            Self::NoRoute => "no_route",
            Self::NoSession => "no_session",
            Self::NoEndpoint => "no_endpoint",
            Self::Filtered => "filtered",
            Self::IoError => "io_error",
            Self::RingFull => "ring_full",
            Self::FilterNoRule => "filter_no_rule",
            Self::FilterDenied => "filter_denied",
            Self::FilterRevoked => "filter_revoked",
        }
    }
    fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }
}

/// Per-peer traffic counters (cumulative since the dataplane started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// Milliseconds since the last authenticated packet from the peer (u64::MAX = never).
    pub last_rx_ago_ms: u64,
}

/// Counters of one dataplane worker (thread), cumulative since the dataplane started.
/// TUN counts are reads/writes (a super-packet counts once), UDP counts are datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerStats {
    pub tun_rx_packets: u64,
    pub tun_rx_bytes: u64,
    pub tun_tx_packets: u64,
    pub tun_tx_bytes: u64,
    pub udp_rx_packets: u64,
    pub udp_rx_bytes: u64,
    pub udp_tx_packets: u64,
    pub udp_tx_bytes: u64,
    /// Packets handed to worker 0 (slow path: handshakes, no session, roaming...).
    pub punts: u64,
    /// Punts dropped because worker 0's queue was full.
    pub punt_drops: u64,
    /// Drops by [`DropReason`] seen on this worker.
    pub drops: [u64; DropReason::COUNT],
}

impl WorkerStats {
    /// Number of scalar (non-drop) fields.
    pub const SCALARS: usize = 10;

    /// The scalar fields in declaration order.
    pub fn scalars(&self) -> [u64; Self::SCALARS] {
        [
            self.tun_rx_packets,
            self.tun_rx_bytes,
            self.tun_tx_packets,
            self.tun_tx_bytes,
            self.udp_rx_packets,
            self.udp_rx_bytes,
            self.udp_tx_packets,
            self.udp_tx_bytes,
            self.punts,
            self.punt_drops,
        ]
    }

    /// Builds from [`Self::scalars`] order plus the drops.
    pub fn from_scalars(v: [u64; Self::SCALARS], drops: [u64; DropReason::COUNT]) -> Self {
        Self {
            tun_rx_packets: v[0],
            tun_rx_bytes: v[1],
            tun_tx_packets: v[2],
            tun_tx_bytes: v[3],
            udp_rx_packets: v[4],
            udp_rx_bytes: v[5],
            udp_tx_packets: v[6],
            udp_tx_bytes: v[7],
            punts: v[8],
            punt_drops: v[9],
            drops,
        }
    }
}

/// Dataplane -> control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpMsg {
    /// First message after start: the dataplane attached to the ring and configured its
    /// devices.
    Ready {
        workers: u16,
        listen_port: u16,
    },
    /// A handshake-class datagram (types 1-3) arrived.
    HandshakeDatagram {
        from: SocketAddr,
        data: Vec<u8>,
    },
    /// The peer needs a (new) handshake: no usable session for queued traffic, rekey
    /// time/messages reached as initiator, or sent data went unanswered.
    NeedHandshake {
        peer: PeerId,
    },
    /// An authenticated packet came from a new source address (roaming).
    EndpointChanged {
        peer: PeerId,
        endpoint: SocketAddr,
    },
    /// A session aged out (reject-after-time) and was dropped.
    SessionExpired {
        peer: PeerId,
        local_index: u32,
    },
    /// The first packet under a responder session arrived: the session is now current.
    SessionConfirmed {
        peer: PeerId,
        local_index: u32,
    },
    PeerCounters {
        peer: PeerId,
        stats: PeerStats,
    },
    /// Global drop counters, indexed by [`DropReason`] (summed over every worker).
    Counters {
        drops: [u64; DropReason::COUNT],
        rx_datagrams: u64,
        tx_datagrams: u64,
    },
    /// Counters of worker `worker` (0 = the owner thread); sent right after `Counters`,
    /// one per running worker.
    WorkerCounters {
        worker: u16,
        stats: WorkerStats,
    },
    /// Packet-filter state, sent with `Counters` once a filter was ever installed.
    FilterCounters {
        /// Generation of the last filter update applied.
        generation: u64,
        /// A filter is installed (false: allow all).
        active: bool,
        /// Live flow-table entries.
        flows: u64,
        /// Flow-table capacity (entries).
        capacity: u64,
        /// Live entries evicted to make room.
        evictions: u64,
        /// `SetFilter` transfers dropped (out of order or undecodable).
        bad_updates: u64,
    },
    /// A sampled packet-filter drop (at most one per peer per second): what `filter log`
    /// shows. Addresses and ports as in the packet (`inbound`: from the peer).
    FilterDrop {
        peer: PeerId,
        reason: DropReason,
        inbound: bool,
        proto: u8,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
    },
}

/// A message did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Ran out of bytes.
    #[error("truncated IPC message")]
    Truncated,
    /// Unknown tag or field value.
    #[error("invalid IPC message")]
    Invalid,
    /// Bytes left over after the message.
    #[error("trailing bytes in IPC message")]
    Trailing,
}

struct W<'a>(&'a mut Vec<u8>);
impl W<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn key(&mut self, k: &[u8; 32]) {
        self.0.extend_from_slice(k);
    }
    fn ip(&mut self, ip: &IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                self.u8(4);
                self.0.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
                self.0.extend_from_slice(&a.octets());
            }
        }
    }
    fn addr(&mut self, a: &SocketAddr) {
        self.ip(&a.ip());
        self.u16(a.port());
    }
    fn bytes(&mut self, b: &[u8]) {
        let n = u16::try_from(b.len()).expect("IPC byte strings are shorter than 64 KiB");
        self.u16(n);
        self.0.extend_from_slice(b);
    }
}

struct R<'a>(&'a [u8]);
impl R<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn key(&mut self) -> Result<[u8; 32], DecodeError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid),
        }
    }
    fn ip(&mut self) -> Result<IpAddr, DecodeError> {
        match self.u8()? {
            4 => {
                let mut a = [0u8; 4];
                a.copy_from_slice(self.take(4)?);
                Ok(IpAddr::V4(Ipv4Addr::from(a)))
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(self.take(16)?);
                Ok(IpAddr::V6(Ipv6Addr::from(a)))
            }
            _ => Err(DecodeError::Invalid),
        }
    }
    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = self.ip()?;
        Ok(SocketAddr::new(ip, self.u16()?))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u16()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn finish(self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing)
        }
    }
}

impl CtlMsg {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = W(out);
        match self {
            CtlMsg::SetTimers(t) => {
                w.u8(1);
                w.u32(t.rekey_after_ms);
                w.u32(t.reject_after_ms);
                w.u32(t.rekey_timeout_ms);
                w.u32(t.keepalive_timeout_ms);
            }
            CtlMsg::AddPeer {
                peer,
                public_key,
                allowed_ips,
                endpoint,
                persistent_keepalive,
            } => {
                w.u8(2);
                w.u32(*peer);
                w.key(public_key);
                let n = u16::try_from(allowed_ips.len()).expect("fewer than 65536 allowed IPs");
                w.u16(n);
                for p in allowed_ips {
                    w.ip(&p.addr);
                    w.u8(p.len);
                }
                match endpoint {
                    Some(e) => {
                        w.u8(1);
                        w.addr(e);
                    }
                    None => w.u8(0),
                }
                w.u16(*persistent_keepalive);
            }
            CtlMsg::RemovePeer { peer } => {
                w.u8(3);
                w.u32(*peer);
            }
            CtlMsg::SetEndpoint { peer, endpoint } => {
                w.u8(4);
                w.u32(*peer);
                w.addr(endpoint);
            }
            CtlMsg::InstallSession {
                peer,
                local_index,
                remote_index,
                send_key,
                recv_key,
                initiator,
            } => {
                w.u8(5);
                w.u32(*peer);
                w.u32(*local_index);
                w.u32(*remote_index);
                w.key(send_key);
                w.key(recv_key);
                w.u8(u8::from(*initiator));
            }
            CtlMsg::ClearSessions { peer } => {
                w.u8(6);
                w.u32(*peer);
            }
            CtlMsg::SendDatagram { to, data } => {
                w.u8(7);
                w.addr(to);
                w.bytes(data);
            }
            CtlMsg::RequestCounters => w.u8(8),
            CtlMsg::SetFilter {
                generation,
                total,
                offset,
                data,
            } => {
                w.u8(9);
                w.u64(*generation);
                w.u32(*total);
                w.u32(*offset);
                w.bytes(data);
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = R(buf);
        let m = match r.u8()? {
            1 => CtlMsg::SetTimers(Timers {
                rekey_after_ms: r.u32()?,
                reject_after_ms: r.u32()?,
                rekey_timeout_ms: r.u32()?,
                keepalive_timeout_ms: r.u32()?,
            }),
            2 => {
                let peer = r.u32()?;
                let public_key = r.key()?;
                let n = r.u16()? as usize;
                let mut allowed_ips = Vec::with_capacity(n.min(256));
                for _ in 0..n {
                    let addr = r.ip()?;
                    let len = r.u8()?;
                    let max = if addr.is_ipv4() { 32 } else { 128 };
                    if len > max {
                        return Err(DecodeError::Invalid);
                    }
                    allowed_ips.push(Prefix { addr, len });
                }
                let endpoint = if r.bool()? { Some(r.addr()?) } else { None };
                let persistent_keepalive = r.u16()?;
                CtlMsg::AddPeer {
                    peer,
                    public_key,
                    allowed_ips,
                    endpoint,
                    persistent_keepalive,
                }
            }
            3 => CtlMsg::RemovePeer { peer: r.u32()? },
            4 => CtlMsg::SetEndpoint {
                peer: r.u32()?,
                endpoint: r.addr()?,
            },
            5 => CtlMsg::InstallSession {
                peer: r.u32()?,
                local_index: r.u32()?,
                remote_index: r.u32()?,
                send_key: r.key()?,
                recv_key: r.key()?,
                initiator: r.bool()?,
            },
            6 => CtlMsg::ClearSessions { peer: r.u32()? },
            7 => CtlMsg::SendDatagram {
                to: r.addr()?,
                data: r.bytes()?,
            },
            8 => CtlMsg::RequestCounters,
            9 => CtlMsg::SetFilter {
                generation: r.u64()?,
                total: r.u32()?,
                offset: r.u32()?,
                data: r.bytes()?,
            },
            _ => return Err(DecodeError::Invalid),
        };
        r.finish()?;
        Ok(m)
    }
}

impl DpMsg {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = W(out);
        match self {
            DpMsg::Ready {
                workers,
                listen_port,
            } => {
                w.u8(1);
                w.u16(*workers);
                w.u16(*listen_port);
            }
            DpMsg::HandshakeDatagram { from, data } => {
                w.u8(2);
                w.addr(from);
                w.bytes(data);
            }
            DpMsg::NeedHandshake { peer } => {
                w.u8(3);
                w.u32(*peer);
            }
            DpMsg::EndpointChanged { peer, endpoint } => {
                w.u8(4);
                w.u32(*peer);
                w.addr(endpoint);
            }
            DpMsg::SessionExpired { peer, local_index } => {
                w.u8(5);
                w.u32(*peer);
                w.u32(*local_index);
            }
            DpMsg::SessionConfirmed { peer, local_index } => {
                w.u8(6);
                w.u32(*peer);
                w.u32(*local_index);
            }
            DpMsg::PeerCounters { peer, stats } => {
                w.u8(7);
                w.u32(*peer);
                w.u64(stats.rx_bytes);
                w.u64(stats.rx_packets);
                w.u64(stats.tx_bytes);
                w.u64(stats.tx_packets);
                w.u64(stats.last_rx_ago_ms);
            }
            DpMsg::Counters {
                drops,
                rx_datagrams,
                tx_datagrams,
            } => {
                w.u8(8);
                w.u8(DropReason::COUNT as u8);
                for d in drops {
                    w.u64(*d);
                }
                w.u64(*rx_datagrams);
                w.u64(*tx_datagrams);
            }
            DpMsg::WorkerCounters { worker, stats } => {
                w.u8(9);
                w.u16(*worker);
                for v in stats.scalars() {
                    w.u64(v);
                }
                w.u8(DropReason::COUNT as u8);
                for d in &stats.drops {
                    w.u64(*d);
                }
            }
            DpMsg::FilterCounters {
                generation,
                active,
                flows,
                capacity,
                evictions,
                bad_updates,
            } => {
                w.u8(10);
                w.u64(*generation);
                w.u8(u8::from(*active));
                w.u64(*flows);
                w.u64(*capacity);
                w.u64(*evictions);
                w.u64(*bad_updates);
            }
            DpMsg::FilterDrop {
                peer,
                reason,
                inbound,
                proto,
                src,
                dst,
                sport,
                dport,
            } => {
                w.u8(11);
                w.u32(*peer);
                w.u8(*reason as u8);
                w.u8(u8::from(*inbound));
                w.u8(*proto);
                w.ip(src);
                w.ip(dst);
                w.u16(*sport);
                w.u16(*dport);
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = R(buf);
        let m = match r.u8()? {
            1 => DpMsg::Ready {
                workers: r.u16()?,
                listen_port: r.u16()?,
            },
            2 => DpMsg::HandshakeDatagram {
                from: r.addr()?,
                data: r.bytes()?,
            },
            3 => DpMsg::NeedHandshake { peer: r.u32()? },
            4 => DpMsg::EndpointChanged {
                peer: r.u32()?,
                endpoint: r.addr()?,
            },
            5 => DpMsg::SessionExpired {
                peer: r.u32()?,
                local_index: r.u32()?,
            },
            6 => DpMsg::SessionConfirmed {
                peer: r.u32()?,
                local_index: r.u32()?,
            },
            7 => DpMsg::PeerCounters {
                peer: r.u32()?,
                stats: PeerStats {
                    rx_bytes: r.u64()?,
                    rx_packets: r.u64()?,
                    tx_bytes: r.u64()?,
                    tx_packets: r.u64()?,
                    last_rx_ago_ms: r.u64()?,
                },
            },
            8 => {
                if r.u8()? as usize != DropReason::COUNT {
                    return Err(DecodeError::Invalid);
                }
                let mut drops = [0u64; DropReason::COUNT];
                for d in &mut drops {
                    *d = r.u64()?;
                }
                DpMsg::Counters {
                    drops,
                    rx_datagrams: r.u64()?,
                    tx_datagrams: r.u64()?,
                }
            }
            9 => {
                let worker = r.u16()?;
                let mut v = [0u64; WorkerStats::SCALARS];
                for x in &mut v {
                    *x = r.u64()?;
                }
                if r.u8()? as usize != DropReason::COUNT {
                    return Err(DecodeError::Invalid);
                }
                let mut drops = [0u64; DropReason::COUNT];
                for d in &mut drops {
                    *d = r.u64()?;
                }
                DpMsg::WorkerCounters {
                    worker,
                    stats: WorkerStats::from_scalars(v, drops),
                }
            }
            10 => DpMsg::FilterCounters {
                generation: r.u64()?,
                active: r.bool()?,
                flows: r.u64()?,
                capacity: r.u64()?,
                evictions: r.u64()?,
                bad_updates: r.u64()?,
            },
            11 => DpMsg::FilterDrop {
                peer: r.u32()?,
                reason: DropReason::from_u8(r.u8()?).ok_or(DecodeError::Invalid)?,
                inbound: r.bool()?,
                proto: r.u8()?,
                src: r.ip()?,
                dst: r.ip()?,
                sport: r.u16()?,
                dport: r.u16()?,
            },
            _ => return Err(DecodeError::Invalid),
        };
        r.finish()?;
        Ok(m)
    }
}

/// Decodes a drop-reason index (for tools reading raw counters).
pub fn drop_reason(i: u8) -> Option<DropReason> {
    DropReason::from_u8(i)
}

#[cfg(test)]
#[path = "ipc_tests.rs"]
mod tests;
