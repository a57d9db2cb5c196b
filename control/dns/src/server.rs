//! Sockets: one UDP socket and one TCP listener per address, served by our loops
//! (`listen.rs`), which contain panics in hickory's parsing too.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};

use crate::handler::{Handler, MeshDns};
use crate::DnsError;

/// Where a node serves the mesh zone locally: `127.0.0.53:5353` (the mesh IP, port 53, is
/// the other usual listen address).
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 53), 5353));

/// Attempts at finding a port free for both UDP and TCP when asked for port 0.
const PORT_ZERO_ATTEMPTS: usize = 16;

/// A bound, not yet running DNS server.
///
/// Call order: [`DnsServer::bind`], optionally [`DnsServer::local_addrs`], then
/// [`DnsServer::run`] until the shutdown future completes.
pub struct DnsServer {
    dns: Arc<MeshDns>,
    sockets: Vec<(UdpSocket, TcpListener)>,
    local_addrs: Vec<SocketAddr>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Binds UDP and TCP on each address (same port for both; port 0 picks one free for both).
    /// Must be called inside a tokio runtime.
    pub async fn bind(dns: Arc<MeshDns>, addrs: &[SocketAddr]) -> Result<Self, DnsError> {
        if addrs.is_empty() {
            return Err(DnsError::NoAddresses);
        }
        let mut sockets = Vec::with_capacity(addrs.len());
        let mut local_addrs = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let (udp, tcp, local) = bind_pair(*addr).await?;
            sockets.push((udp, tcp));
            local_addrs.push(local);
        }
        Ok(Self {
            dns,
            sockets,
            local_addrs,
        })
    }

    /// The bound addresses (UDP and TCP share each), in the order given to `bind`.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Serves until `shutdown` completes, then stops all listeners and connections.
    /// Returns an error if a listener dies before that.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), DnsError> {
        let handler = Handler(self.dns);
        let mut listeners = tokio::task::JoinSet::new();
        for (udp, tcp) in self.sockets {
            listeners.spawn(crate::listen::udp(udp, handler.clone()));
            listeners.spawn(crate::listen::tcp(tcp, handler.clone()));
        }
        let r = tokio::select! {
            r = listeners.join_next() => Err(DnsError::Server(match r {
                Some(Ok(e)) => format!("a listener stopped: {e}"),
                Some(Err(e)) => format!("a listener stopped: {e}"),
                None => "no listeners".into(),
            })),
            () = shutdown => Ok(()),
        };
        // Dropping a listener's task drops its requests and connections too.
        listeners.shutdown().await;
        r
    }
}

/// Binds and serves UDP + TCP on every address in `addrs` until `shutdown` completes.
///
/// Typical addresses: `127.0.0.53:5353` and `<mesh ip>:53`.
pub async fn serve(
    dns: Arc<MeshDns>,
    addrs: &[SocketAddr],
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    DnsServer::bind(dns, addrs).await?.run(shutdown).await
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsError> {
    let bind_err = |source: io::Error| DnsError::Bind { addr, source };
    let attempts = if addr.port() == 0 {
        PORT_ZERO_ATTEMPTS
    } else {
        1
    };
    let mut last = None;
    for _ in 0..attempts {
        let tcp = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local = tcp.local_addr().map_err(bind_err)?;
        match UdpSocket::bind(local).await {
            Ok(udp) => return Ok((udp, tcp, local)),
            Err(e) => last = Some(e),
        }
    }
    Err(bind_err(last.unwrap_or_else(|| {
        io::Error::from(io::ErrorKind::AddrInUse)
    })))
}
