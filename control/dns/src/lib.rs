//! Mesh DNS: the authoritative server for the mesh zone (`mesh.` by default) that every
//! `tunnelmesh` node embeds, built on hickory (its parser, responses and `RequestHandler`) with
//! our own socket loops (`listen.rs`), so that a panic anywhere in a request is contained.
//!
//! It does: `<peer>.mesh` A/AAAA, `coordinator.mesh` (all coordinators), aliases (CNAME plus
//! the target's records in the same answer), SOA and NS at the apex (NS = `coordinator.mesh`),
//! NXDOMAIN / NODATA with the SOA in the authority section, all with a TTL of 5 s (also the SOA
//! minimum, so negative answers are cached 5 s too). Names are case-insensitive.
//!
//! It never recurses; it forwards names outside the zone only to the resolvers given with
//! [`MeshDns::set_upstreams`] (what the node does when it manages `/etc/resolv.conf`), else
//! they get REFUSED. It never transfers zones
//! (AXFR/IXFR are REFUSED), accepts updates (NOTIMP for every opcode but QUERY), or touches
//! the netmap itself: the daemon builds a [`Zone`] and pushes it.
//!
//! Call order:
//! 1. `let dns = Arc::new(MeshDns::new(&zone)?)`
//! 2. `tokio::spawn(serve(dns.clone(), &["127.0.0.53:5353".parse()?, mesh_ip_53], shutdown))`
//!    (or [`DnsServer::bind`] + [`DnsServer::run`] to learn the ports first)
//! 3. `dns.update(&new_zone)?` on every netmap change; it is atomic and lock-free for readers.
//!
//! [`MeshDns::lookup`] is the sans-IO core (question in, [`Answer`] out); the handler and
//! server around it only do framing.
#![forbid(unsafe_code)]

mod contain;
mod error;
mod forward;
mod handler;
mod listen;
mod question;
mod server;
mod zone;

pub use contain::{in_request, panics};
pub use error::DnsError;
pub use handler::{Handler, MeshDns, UpdateReport};
pub use server::{serve, DnsServer, DEFAULT_ADDR};
pub use zone::{Answer, Zone, COORDINATOR_LABEL, MAX_ALIAS_CHAIN, TTL};

/// Re-exported so callers can build names and inspect answers without naming the version.
pub use hickory_proto as proto;

/// Entry points for the fuzz targets in `fuzz/` (not a stable API; hidden from the docs).
#[doc(hidden)]
pub mod fuzzing {
    use std::future::Future;
    use std::net::SocketAddr;
    use std::pin::pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    use hickory_server::net::runtime::TokioTime;
    use hickory_server::net::xfer::Protocol;
    use hickory_server::net::NetError;
    use hickory_server::proto::rr::Record;
    use hickory_server::proto::serialize::binary::BinEncoder;
    use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
    use hickory_server::zone_handler::MessageResponse;

    use crate::{Handler, MeshDns};

    /// Keeps the encoded response instead of sending it (also the handler's tests' response
    /// handle).
    #[derive(Clone, Default)]
    pub(crate) struct Capture(pub(crate) Arc<Mutex<Vec<u8>>>);

    #[async_trait::async_trait]
    impl ResponseHandler for Capture {
        async fn send_response<'a>(
            &mut self,
            response: MessageResponse<
                '_,
                'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
            >,
        ) -> Result<ResponseInfo, NetError> {
            let mut buf = Vec::new();
            let info = response
                .destructive_emit(&mut BinEncoder::new(&mut buf))
                .map_err(|e| NetError::from(e.to_string()))?;
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = buf;
            Ok(info)
        }
    }

    /// Answers the datagram `raw` the way the server does: `None` if hickory cannot decode
    /// it (the server answers FORMERR itself, without our handler), else the encoded
    /// response our handler produced.
    pub fn answer(dns: &Arc<MeshDns>, raw: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let src: SocketAddr = ([127, 0, 0, 1], 5300).into();
        let proto = if tcp { Protocol::Tcp } else { Protocol::Udp };
        let req = Request::from_bytes(raw.to_vec(), src, proto).ok()?;
        let cap = Capture::default();
        let handler = Handler(dns.clone());
        let fut = handler.handle_request::<_, TokioTime>(&req, cap.clone());
        match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(_) => {}
            Poll::Pending => panic!("the handler waited on an in-memory response handle"),
        }
        let out = cap.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(out)
    }
}
#[cfg(test)]
mod contain_tests;
