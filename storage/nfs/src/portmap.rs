//! A read-only portmapper (RPC program 100000): what stock NFS clients ask on port 111 before
//! they talk to MOUNT and NFS. `mount -t nfs -o vers=3 host:/shares/x` and libnfs URLs without
//! `nfsport=`/`mountport=` need it.
//!
//! Versions and procedures: v2 (RFC 1833 "portmap") NULL, SET/UNSET (always refused: the table
//! is fixed), GETPORT, DUMP; v3/v4 ("rpcbind") NULL, SET/UNSET (refused), GETADDR, DUMP,
//! GETTIME and v4 GETVERSADDR. CALLIT (an amplifier) and the rest answer PROC_UNAVAIL.
//! Over UDP and TCP (record marking). Only clients the NFS access list admits get answers.
//!
//! Input is untrusted: the XDR reader checks every length against the bytes received, opaque and
//! string lengths are bounded, a TCP record may not exceed [`MAX_RECORD`] and connections are
//! capped at [`MAX_CONNS`] with an idle timeout. [`Portmap::handle`] is the sans-IO core
//! (call bytes in, reply bytes out); [`Portmap::bind`] and [`PortmapServer::run`] own the sockets.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::access::Access;
use crate::NfsError;

/// The portmapper's RPC program number.
pub const PMAP_PROG: u32 = 100_000;
/// The MOUNT program.
pub const MOUNT_PROG: u32 = 100_005;
/// The NFS program.
pub const NFS_PROG: u32 = 100_003;
/// The portmapper's well-known port.
pub const PMAP_PORT: u16 = 111;
/// Largest TCP record (all fragments) accepted; real calls are a few hundred bytes.
pub const MAX_RECORD: usize = 8 << 10;
/// Concurrent TCP connections served; more wait in the kernel's accept queue.
pub const MAX_CONNS: usize = 64;
/// An idle TCP connection is closed after this long.
const IDLE: Duration = Duration::from_secs(30);
/// RFC 5531: credentials and verifiers are at most 400 bytes.
const MAX_AUTH: usize = 400;
/// netid, uaddr and owner strings in rpcbind calls.
const MAX_STRING: usize = 255;

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

// accept_stat
const SUCCESS: u32 = 0;
const PROG_UNAVAIL: u32 = 1;
const PROG_MISMATCH: u32 = 2;
const PROC_UNAVAIL: u32 = 3;
const GARBAGE_ARGS: u32 = 4;

/// One registered service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// RPC program number.
    pub prog: u32,
    /// Program version.
    pub vers: u32,
    /// IP protocol: 6 (TCP) or 17 (UDP).
    pub prot: u32,
    /// Port.
    pub port: u16,
}

/// The fixed table and who may ask.
#[derive(Clone, Debug)]
pub struct Portmap {
    mappings: Vec<Mapping>,
    access: Access,
}

/// A bound portmapper: [`PortmapServer::local_addrs`], then [`PortmapServer::run`].
pub struct PortmapServer {
    pm: Arc<Portmap>,
    socks: Vec<(SocketAddr, UdpSocket, TcpListener)>,
}

impl std::fmt::Debug for PortmapServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortmapServer")
            .field("addrs", &self.local_addrs())
            .finish_non_exhaustive()
    }
}

impl PortmapServer {
    /// The bound addresses (UDP and TCP share each).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.socks.iter().map(|s| s.0).collect()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut tasks = JoinSet::new();
        let conns = Arc::new(Semaphore::new(MAX_CONNS));
        for (_, udp, tcp) in self.socks {
            tasks.spawn(self.pm.clone().udp_loop(udp));
            tasks.spawn(self.pm.clone().tcp_loop(tcp, conns.clone()));
        }
        shutdown.await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Why a call could not be decoded.
#[derive(Debug, PartialEq, Eq)]
struct Short;

/// A bounds-checked XDR reader over received bytes.
struct Xdr<'a> {
    buf: &'a [u8],
}

impl<'a> Xdr<'a> {
    fn u32(&mut self) -> Result<u32, Short> {
        let (head, rest) = self.buf.split_first_chunk::<4>().ok_or(Short)?;
        self.buf = rest;
        Ok(u32::from_be_bytes(*head))
    }

    /// Variable-length opaque of at most `max` bytes (padded to 4 on the wire).
    fn opaque(&mut self, max: usize) -> Result<&'a [u8], Short> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(Short);
        }
        let padded = len.checked_add(3).ok_or(Short)? & !3;
        if padded > self.buf.len() {
            return Err(Short);
        }
        let (data, rest) = self.buf.split_at(padded);
        self.buf = rest;
        Ok(&data[..len])
    }

    fn string(&mut self, max: usize) -> Result<&'a str, Short> {
        std::str::from_utf8(self.opaque(max)?).map_err(|_| Short)
    }
}

/// An XDR writer.
#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn string(&mut self, s: &str) -> &mut Self {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
        self.0.resize(self.0.len() + (4 - s.len() % 4) % 4, 0);
        self
    }
}

/// The universal address (RFC 5665) of `ip:port`: `h1.h2.h3.h4.p1.p2` or `v6addr.p1.p2`.
pub fn uaddr(ip: IpAddr, port: u16) -> String {
    format!("{ip}.{}.{}", port >> 8, port & 0xff)
}

fn netid(prot: u32, v6: bool) -> &'static str {
    match (prot, v6) {
        (IPPROTO_TCP, false) => "tcp",
        (IPPROTO_TCP, true) => "tcp6",
        (_, false) => "udp",
        (_, true) => "udp6",
    }
}

fn prot_of_netid(n: &str) -> Option<u32> {
    match n {
        "tcp" | "tcp6" => Some(IPPROTO_TCP),
        "udp" | "udp6" => Some(IPPROTO_UDP),
        _ => None,
    }
}

impl Portmap {
    /// The table stock NFSv3 clients need: the portmapper itself (v2-v4, TCP and UDP on
    /// `pmap_port`) and MOUNT v3 and NFS v3 over TCP on `nfs_port`.
    pub fn for_nfs(nfs_port: u16, pmap_port: u16, access: Access) -> Portmap {
        let mut mappings = Vec::new();
        for vers in [4, 3, 2] {
            for prot in [IPPROTO_TCP, IPPROTO_UDP] {
                mappings.push(Mapping {
                    prog: PMAP_PROG,
                    vers,
                    prot,
                    port: pmap_port,
                });
            }
        }
        for prog in [MOUNT_PROG, NFS_PROG] {
            mappings.push(Mapping {
                prog,
                vers: 3,
                prot: IPPROTO_TCP,
                port: nfs_port,
            });
        }
        Portmap { mappings, access }
    }

    /// The registered services.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// Answers one call received on `local` (the address the client reached, for universal
    /// addresses). `None`: not a decodable call (no reply is possible or due).
    pub fn handle(&self, call: &[u8], local: IpAddr) -> Option<Vec<u8>> {
        let mut x = Xdr { buf: call };
        let xid = x.u32().ok()?;
        if x.u32().ok()? != 0 {
            return None; // a REPLY, not a CALL: never answer
        }
        let mut out = Out::default();
        out.u32(xid).u32(1); // REPLY
        let rpcvers = x.u32().ok()?;
        if rpcvers != 2 {
            out.u32(1).u32(0).u32(2).u32(2); // MSG_DENIED, RPC_MISMATCH 2..2
            return Some(out.0);
        }
        let (prog, vers, proc_) = (x.u32().ok()?, x.u32().ok()?, x.u32().ok()?);
        let _cred_flavor = x.u32().ok()?;
        x.opaque(MAX_AUTH).ok()?;
        let _verf_flavor = x.u32().ok()?;
        x.opaque(MAX_AUTH).ok()?;
        out.u32(0).u32(0).u32(0); // MSG_ACCEPTED, verifier AUTH_NONE with no body
        if prog != PMAP_PROG {
            out.u32(PROG_UNAVAIL);
            return Some(out.0);
        }
        if !(2..=4).contains(&vers) {
            out.u32(PROG_MISMATCH).u32(2).u32(4);
            return Some(out.0);
        }
        let head = out.0.len();
        out.u32(SUCCESS);
        let r = if vers == 2 {
            self.v2(proc_, &mut x, &mut out)
        } else {
            self.v34(vers, proc_, &mut x, &mut out, local)
        };
        match r {
            Ok(true) => {}
            Ok(false) => {
                out.0.truncate(head);
                out.u32(PROC_UNAVAIL);
            }
            Err(Short) => {
                out.0.truncate(head);
                out.u32(GARBAGE_ARGS);
            }
        }
        Some(out.0)
    }

    /// Portmap v2. `Ok(false)`: no such procedure.
    fn v2(&self, proc_: u32, x: &mut Xdr<'_>, out: &mut Out) -> Result<bool, Short> {
        match proc_ {
            0 => {}
            1 | 2 => {
                // SET/UNSET: read the mapping, refuse (the table is fixed).
                for _ in 0..4 {
                    x.u32()?;
                }
                out.u32(0);
            }
            3 => {
                let (prog, vers, prot, _port) = (x.u32()?, x.u32()?, x.u32()?, x.u32()?);
                let port = self.lookup(prog, vers, prot, false).map_or(0, |m| m.port);
                out.u32(u32::from(port));
            }
            4 => {
                for m in &self.mappings {
                    out.u32(1)
                        .u32(m.prog)
                        .u32(m.vers)
                        .u32(m.prot)
                        .u32(u32::from(m.port));
                }
                out.u32(0);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// rpcbind v3 and v4.
    fn v34(
        &self,
        vers: u32,
        proc_: u32,
        x: &mut Xdr<'_>,
        out: &mut Out,
        local: IpAddr,
    ) -> Result<bool, Short> {
        let v6 = local.is_ipv6();
        match proc_ {
            0 => {}
            1 | 2 => {
                read_rpcb(x)?;
                out.u32(0);
            }
            // GETADDR; v4 GETVERSADDR (9) wants the exact version.
            3 | 9 if proc_ == 3 || vers == 4 => {
                let (prog, pvers, netid_) = read_rpcb(x)?;
                let addr = prot_of_netid(netid_)
                    .and_then(|prot| self.lookup(prog, pvers, prot, proc_ == 9))
                    .map_or_else(String::new, |m| uaddr(local, m.port));
                out.string(&addr);
            }
            4 => {
                for m in &self.mappings {
                    out.u32(1).u32(m.prog).u32(m.vers);
                    out.string(netid(m.prot, v6))
                        .string(&uaddr(local, m.port))
                        .string("superuser");
                }
                out.u32(0);
            }
            6 => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                out.u32(now as u32);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The mapping for `prog`/`vers`/`prot`; like rpcbind, another version of the same program
    /// answers when the exact one is not registered (the service then says PROG_MISMATCH with
    /// the versions it has), unless `exact`.
    fn lookup(&self, prog: u32, vers: u32, prot: u32, exact: bool) -> Option<&Mapping> {
        let same = |m: &&Mapping| m.prog == prog && m.prot == prot;
        let mut it = self.mappings.iter().filter(same);
        it.clone()
            .find(|m| m.vers == vers)
            .or_else(|| if exact { None } else { it.next() })
    }

    /// Binds UDP and TCP (the same port; port 0 picks one) on every address in `addrs`.
    pub async fn bind(self, addrs: &[SocketAddr]) -> Result<PortmapServer, NfsError> {
        let mut socks = Vec::new();
        for &addr in addrs {
            let bind = |source| NfsError::Bind { addr, source };
            let udp = UdpSocket::bind(addr).await.map_err(bind)?;
            let local = udp.local_addr().map_err(bind)?;
            let tcp = TcpListener::bind(local).await.map_err(bind)?;
            socks.push((local, udp, tcp));
        }
        Ok(PortmapServer {
            pm: Arc::new(self),
            socks,
        })
    }

    async fn udp_loop(self: Arc<Self>, sock: UdpSocket) {
        let local = match sock.local_addr() {
            Ok(a) => a.ip(),
            Err(_) => return,
        };
        let mut buf = vec![0u8; 9000];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("portmap: udp receive: {e}");
                    continue;
                }
            };
            if !self.access.allows(peer.ip()) {
                continue;
            }
            if let Some(reply) = self.handle(&buf[..n], local) {
                let _ = sock.send_to(&reply, peer).await;
            }
        }
    }

    async fn tcp_loop(self: Arc<Self>, listener: TcpListener, conns: Arc<Semaphore>) {
        let mut running = JoinSet::new();
        loop {
            let Ok(permit) = conns.clone().acquire_owned().await else {
                return;
            };
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((sock, peer)) if self.access.allows(peer.ip()) => {
                        let me = self.clone();
                        running.spawn(async move {
                            let _permit = permit;
                            if let Err(e) = me.connection(sock).await {
                                tracing::debug!(%peer, "portmap: connection closed: {e}");
                            }
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("portmap: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
    }

    async fn connection(&self, mut sock: TcpStream) -> std::io::Result<()> {
        let local = sock.local_addr()?.ip();
        loop {
            let record = match tokio::time::timeout(IDLE, read_record(&mut sock)).await {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            };
            let Some(record) = record else { return Ok(()) };
            let Some(reply) = self.handle(&record, local) else {
                return Ok(());
            };
            let mut framed = Vec::with_capacity(reply.len() + 4);
            framed.extend_from_slice(&(0x8000_0000 | reply.len() as u32).to_be_bytes());
            framed.extend_from_slice(&reply);
            sock.write_all(&framed).await?;
        }
    }
}

/// The prog, vers and netid of an `rpcb` argument (the address and owner are read and ignored).
fn read_rpcb<'a>(x: &mut Xdr<'a>) -> Result<(u32, u32, &'a str), Short> {
    let (prog, vers) = (x.u32()?, x.u32()?);
    let netid_ = x.string(MAX_STRING)?;
    x.string(MAX_STRING)?;
    x.string(MAX_STRING)?;
    Ok((prog, vers, netid_))
}

/// One RPC record (all its fragments), at most [`MAX_RECORD`] bytes. `None`: clean EOF.
async fn read_record(sock: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut record = Vec::new();
    loop {
        let mut mark = [0u8; 4];
        match sock.read_exact(&mut mark).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && record.is_empty() => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let mark = u32::from_be_bytes(mark);
        let len = (mark & 0x7fff_ffff) as usize;
        if record.len() + len > MAX_RECORD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("record over {MAX_RECORD} bytes"),
            ));
        }
        let start = record.len();
        record.resize(start + len, 0);
        sock.read_exact(&mut record[start..]).await?;
        if mark & 0x8000_0000 != 0 {
            return Ok(Some(record));
        }
    }
}

#[cfg(test)]
#[path = "portmap_tests.rs"]
mod tests;
