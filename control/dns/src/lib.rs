//! Mesh DNS: the authoritative server for the mesh zone (`mesh.` by default) that every
//! `tunnelmesh` node embeds, built on hickory-server with our own `RequestHandler`.
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

mod error;
mod forward;
mod handler;
mod server;
mod zone;

pub use error::DnsError;
pub use handler::{Handler, MeshDns, UpdateReport};
pub use server::{serve, DnsServer, DEFAULT_ADDR};
pub use zone::{Answer, Zone, COORDINATOR_LABEL, MAX_ALIAS_CHAIN, TTL};

/// Re-exported so callers can build names and inspect answers without naming the version.
pub use hickory_proto as proto;
