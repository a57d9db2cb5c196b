//! Sockets: one UDP socket and one TCP listener per address, run by hickory's `Server`.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};

use crate::handler::{Handler, MeshDns};
use crate::DnsError;

/// Where a node serves the mesh zone locally: `127.0.0.53:5353` (the mesh IP, port 53, is
/// the other usual listen address).
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 53), 5353));

/// An idle TCP connection is closed after this long.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Attempts at finding a port free for both UDP and TCP when asked for port 0.
const PORT_ZERO_ATTEMPTS: usize = 16;

/// A bound, not yet running DNS server.
///
/// Call order: [`DnsServer::bind`], optionally [`DnsServer::local_addrs`], then
/// [`DnsServer::run`] until the shutdown future completes.
pub struct DnsServer {
    server: hickory_server::Server<Handler>,
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
        let mut server = hickory_server::Server::new(Handler(dns));
        let mut local_addrs = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let (udp, tcp, local) = bind_pair(*addr).await?;
            server.register_socket(udp);
            server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
            local_addrs.push(local);
        }
        Ok(Self {
            server,
            local_addrs,
        })
    }

    /// The bound addresses (UDP and TCP share each), in the order given to `bind`.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Serves until `shutdown` completes, then stops all listeners and connections.
    /// Returns an error if a listener dies before that.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DnsError> {
        let token = self.server.shutdown_token().clone();
        let done = self.server.block_until_done();
        tokio::pin!(done);
        tokio::select! {
            r = &mut done => {
                r.map_err(|e| DnsError::Server(e.to_string()))?;
                return Err(DnsError::Server("all listeners stopped".into()));
            }
            () = shutdown => {}
        }
        token.cancel();
        done.await.map_err(|e| DnsError::Server(e.to_string()))
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
