//! `tmctl ping PEER`: one ICMP echo request to the peer's mesh address, sent by the kernel
//! through our TUN device, so it takes exactly the path the node's traffic takes (sealed by the
//! dataplane, direct UDP or the relay) and needs nothing of the peer but an IP stack: a stock
//! WireGuard peer answers too. The echo runs on a blocking thread (a raw ICMP socket, which
//! the daemon may open as root); the node loop polls the outcome on its timer and then reads
//! the path from the peer's endpoint, which only authenticated packets update (a handshake or
//! the dataplane's `EndpointChanged` after a decrypted packet): the reply's own path.
//! A child module of `node` (it reads the peer table).

use super::*;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
/// IPv4 header (no options) plus ICMP echo header.
const HEADERS: usize = 20 + 8;

/// A probe in flight: answered by [`Node::poll_pings`].
pub(super) struct Pending {
    done: oneshot::Receiver<Result<Duration, Option<String>>>,
    reply: oneshot::Sender<Response>,
    peer: PeerId,
    address: Ipv4Addr,
    size: u16,
    timeout: Duration,
}

impl Node {
    /// Starts a `Command::Ping`; refusals (unknown peer, bad size) are answered at once.
    pub(super) fn ping(&mut self, r: ApiRequest) {
        let ApiRequest { command, reply } = r;
        let Command::Ping {
            peer,
            size,
            timeout_ms,
        } = command
        else {
            let _ = reply.send(Response::err("internal: not a ping"));
            return;
        };
        let timeout = Duration::from_millis(timeout_ms.clamp(1, 60_000));
        let (id, address, size) = match self.resolve_ping(&peer, size) {
            Ok(t) => t,
            Err(e) => {
                let _ = reply.send(Response::err(e));
                return;
            }
        };
        let source = match self.cfg.address().addr {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => {
                let _ = reply.send(Response::err("ping: this node has no IPv4 address"));
                return;
            }
        };
        let (tx, done) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(echo(source, address, size, timeout));
        });
        self.pings.push(Pending {
            done,
            reply,
            peer: id,
            address,
            size,
            timeout,
        });
    }

    /// The peer and address a ping names: a peer name (`beta`, `beta.mesh`) or an address in
    /// a peer's allowed IPs.
    fn resolve_ping(
        &self,
        what: &str,
        size: Option<u16>,
    ) -> Result<(PeerId, Ipv4Addr, u16), String> {
        let mtu = self.cfg.mtu;
        let size = size.unwrap_or(tm_api::PING_SIZE);
        if usize::from(size) < HEADERS || size > mtu {
            return Err(format!(
                "ping: size {size} is out of range ({HEADERS}..={mtu}, the tunnel MTU)"
            ));
        }
        let what = what.trim().trim_end_matches('.');
        if let Ok(ip) = what.parse::<IpAddr>() {
            let IpAddr::V4(v4) = ip else {
                return Err(format!("ping: {ip}: only IPv4 addresses can be pinged"));
            };
            if ip == self.cfg.address().addr {
                return Err(format!("ping: {ip} is this node's own address"));
            }
            return self
                .peers
                .iter()
                .find(|(_, p)| p.cfg.allowed_ips.iter().any(|c| c.contains(ip)))
                .map(|(id, _)| (*id, v4, size))
                .ok_or_else(|| {
                    format!("ping: no peer owns {ip} (not in any peer's allowed IPs; `tmctl peers` lists them)")
                });
        }
        let domain = self.cfg.dns.as_ref().map_or("mesh", |d| d.domain.as_str());
        let name = what
            .strip_suffix(domain)
            .and_then(|n| n.strip_suffix('.'))
            .unwrap_or(what);
        if name == self.cfg.name {
            return Err(format!("ping: {name} is this node"));
        }
        let Some((id, p)) = self.peers.iter().find(|(_, p)| p.cfg.name == name) else {
            return Err(format!(
                "ping: no peer named '{name}' (not a member of this mesh; `tmctl peers` lists them)"
            ));
        };
        let address = p
            .cfg
            .allowed_ips
            .iter()
            .find_map(|c| match c.addr {
                IpAddr::V4(a) if c.len == 32 => Some(a),
                _ => None,
            })
            .ok_or_else(|| {
                format!(
                    "ping: peer {name} has no single IPv4 address (give one of its allowed IPs)"
                )
            })?;
        Ok((*id, address, size))
    }

    /// Answers the pings whose echo has finished (called on every timer tick).
    pub(super) fn poll_pings(&mut self) {
        let mut i = 0;
        while i < self.pings.len() {
            let outcome = match self.pings[i].done.try_recv() {
                Ok(r) => r,
                Err(oneshot::error::TryRecvError::Empty) => {
                    i += 1;
                    continue;
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    Err(Some("ping: the probe task failed".into()))
                }
            };
            let p = self.pings.swap_remove(i);
            let resp = self.ping_answer(&p, outcome);
            let _ = p.reply.send(resp);
        }
    }

    fn ping_answer(&self, p: &Pending, outcome: Result<Duration, Option<String>>) -> Response {
        let Some(peer) = self.peers.get(&p.peer) else {
            return Response::err(format!("ping: {} left the mesh meanwhile", p.address));
        };
        let name = &peer.cfg.name;
        let rtt = match outcome {
            Ok(rtt) => rtt,
            Err(Some(e)) => return Response::err(e),
            Err(None) => {
                let hs = match peer.last_handshake.and_then(|t| t.elapsed().ok()) {
                    Some(d) => format!("last handshake {}s ago", d.as_secs()),
                    None => "no handshake with it has completed".into(),
                };
                return Response::err(format!(
                    "no reply from {name} ({}) within {}; {hs}",
                    p.address,
                    secs(p.timeout)
                ));
            }
        };
        let relayed = self.is_relay(peer.endpoint);
        let endpoint = if relayed {
            Some(match self.mesh.as_ref().map(|m| &m.role) {
                Some(Role::Member { client, .. }) => client.addr(),
                _ => "local".to_string(),
            })
        } else {
            peer.endpoint.map(|e| e.to_string())
        };
        Response::ok(&tm_api::PingReply {
            peer: name.clone(),
            address: p.address.to_string(),
            path: if relayed { "relay" } else { "direct" }.into(),
            endpoint,
            rtt_us: u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX),
            size: p.size,
            tunnel_mtu: self.cfg.mtu,
        })
    }
}

/// Sends one echo request of `size` bytes (IP packet) from `source` to `to` and waits for its
/// reply: the round-trip time; `Err(None)`: no reply in time.
fn echo(
    source: Ipv4Addr,
    to: Ipv4Addr,
    size: u16,
    timeout: Duration,
) -> Result<Duration, Option<String>> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .map_err(|e| Some(format!("ping: cannot open an ICMP socket: {e}")))?;
    sock.bind(&SockAddr::from(SocketAddr::new(source.into(), 0)))
        .map_err(|e| Some(format!("ping: cannot use source address {source}: {e}")))?;
    let ident = (OsRng.next_u32() & 0xffff) as u16;
    let seq = (OsRng.next_u32() & 0xffff) as u16;
    let mut token = [0u8; 8];
    OsRng.fill_bytes(&mut token);
    let packet = echo_request(ident, seq, &token, usize::from(size) - 20);
    let start = Instant::now();
    sock.send_to(&packet, &SockAddr::from(SocketAddr::new(to.into(), 0)))
        .map_err(|e| Some(format!("ping: sending to {to}: {e}")))?;
    let deadline = start + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(None);
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| Some(format!("ping: {e}")))?;
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(Some(format!("ping: receiving: {e}"))),
        };
        if is_our_reply(&buf[..n], to, ident, seq, &token) {
            return Ok(start.elapsed());
        }
    }
}

/// An ICMP echo request of `len` bytes (header + payload; payload starts with `token`).
fn echo_request(ident: u16, seq: u16, token: &[u8; 8], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(8 + token.len())];
    p[0] = ICMP_ECHO_REQUEST;
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(token);
    for (i, b) in p[16..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// Whether a raw-socket datagram (IPv4 header included) is the echo reply to our request.
fn is_our_reply(d: &[u8], from: Ipv4Addr, ident: u16, seq: u16, token: &[u8; 8]) -> bool {
    if d.len() < 20 || d[0] >> 4 != 4 || d[9] != 1 {
        return false;
    }
    let ihl = usize::from(d[0] & 0x0f) * 4;
    if ihl < 20 || d.len() < ihl + 16 || d[12..16] != from.octets() {
        return false;
    }
    let icmp = &d[ihl..];
    icmp[0] == ICMP_ECHO_REPLY
        && icmp[4..6] == ident.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
        && icmp[8..16] == token[..]
}

/// The Internet checksum (RFC 1071).
fn checksum(d: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in d.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero_and_reply_matching() {
        let token = [1, 2, 3, 4, 5, 6, 7, 8];
        let req = echo_request(0x1234, 7, &token, 64);
        assert_eq!(req.len(), 64);
        assert_eq!(checksum(&req), 0, "a correct checksum sums to zero");
        // The peer's reply: an IPv4 header from the peer, then the echo with type 0.
        let from = Ipv4Addr::new(100, 64, 0, 2);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&from.octets());
        ip.extend_from_slice(&[100, 64, 0, 1]);
        let mut reply = req.clone();
        reply[0] = ICMP_ECHO_REPLY;
        let d = [ip.clone(), reply.clone()].concat();
        assert!(is_our_reply(&d, from, 0x1234, 7, &token));
        assert!(
            !is_our_reply(&d, Ipv4Addr::new(100, 64, 0, 3), 0x1234, 7, &token),
            "other source"
        );
        assert!(!is_our_reply(&d, from, 0x1234, 8, &token), "other sequence");
        assert!(!is_our_reply(&d, from, 0x1234, 7, &[0; 8]), "other token");
        let d = [ip, req].concat();
        assert!(
            !is_our_reply(&d, from, 0x1234, 7, &token),
            "a request is not a reply"
        );
        assert!(
            !is_our_reply(&d[..30], from, 0x1234, 7, &token),
            "truncated"
        );
    }

    /// Peer names, `.mesh` names and addresses resolve; anything else is one clear line.
    #[test]
    fn ping_targets() {
        let (node, _, _) = super::super::tests::pair();
        assert_eq!(
            node.resolve_ping("b", None).unwrap().1,
            Ipv4Addr::new(100, 64, 0, 2)
        );
        assert_eq!(
            node.resolve_ping("b.mesh", None).unwrap().2,
            tm_api::PING_SIZE
        );
        assert_eq!(node.resolve_ping("100.64.0.2", Some(1420)).unwrap().2, 1420);
        let e = node.resolve_ping("zeta", None).unwrap_err();
        assert!(
            e.contains("no peer named 'zeta'") && !e.contains('\n'),
            "{e}"
        );
        assert!(node
            .resolve_ping("a", None)
            .unwrap_err()
            .contains("is this node"));
        assert!(node
            .resolve_ping("100.64.0.9", None)
            .unwrap_err()
            .contains("no peer owns"));
        assert!(node
            .resolve_ping("b", Some(1421))
            .unwrap_err()
            .contains("out of range"));
    }
}
