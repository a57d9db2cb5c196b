//! Sans-IO dataplane core of TunnelMesh: the WireGuard transport-data path.
//!
//! **Does:** allowed-IPs routing (longest prefix match, v4 + v6), sealing and opening
//! transport-data messages (ChaCha20-Poly1305 via `ring`, nonce = 4 zero bytes ||
//! counter LE, empty AAD), the replay window (8192-bit bitmap ring, updated only after
//! the tag verified), cryptokey routing of inner source addresses, session slots
//! (previous / current / next), staging while no session exists, the WireGuard timers
//! (rekey, reject, passive and persistent keepalive), roaming, drop and traffic
//! counters. Per-peer byte counters count whole datagram bytes (UDP payload of
//! authenticated type-4 messages, keepalives included), not inner bytes.
//!
//! **Never does:** I/O, threads, clocks or randomness (`now` is passed in), Noise
//! handshakes (the control plane runs them and installs session keys), logging per
//! packet, panicking on any input, allocating per data packet (only staging and
//! handshake forwarding allocate).
//!
//! **Call order** (driver, e.g. `tm-dp-io`):
//! 1. [`Dataplane::new`], then feed every decoded `CtlMsg` to [`Dataplane::handle_ctl`]
//!    (`SetTimers`, `AddPeer`..., later `InstallSession` / `SendDatagram`).
//! 2. For each TUN packet: [`Dataplane::handle_tun`] -> send `out[..len]` on `Send`
//!    (or, packet already at `buf[16..]`, [`Dataplane::handle_tun_in_place`]; with a
//!    vnet-header TUN first split super-packets with [`offload::Segmenter`]).
//! 3. For each UDP datagram: [`Dataplane::handle_udp`] -> write
//!    `dgram[start..start + len]` to the TUN on `WriteTun` (with a vnet-header TUN through
//!    [`offload::Gro`], which coalesces TCP segments; flush it at the end of each batch).
//! 4. When [`Dataplane::poll_timeout`]'s instant passes: [`Dataplane::handle_timeout`].
//! 5. After any of the above, drain [`Dataplane::poll_transmit`] (send each) and
//!    [`Dataplane::poll_event`] (encode into the ring) until they return `None`.
//!
//! **Several workers** (thread per core): the owner (worker 0) builds the dataplane with
//! [`Dataplane::with_workers`] and runs the steps above; it publishes an immutable
//! [`Snapshot`] of peers and sessions (shared `Arc<Session>`s: atomic send counter,
//! lock-free replay window) whenever they change. Workers 1..N each run a [`FastPath`]
//! on [`Dataplane::shared`] (the common case only; the rest is punted, a copy, through a
//! bounded per-worker queue) and call [`FastPath::end_batch`] after each batch (wake the
//! owner when it returns true). The owner drains [`Dataplane::poll_punt`] into
//! [`Dataplane::handle_punt`] and calls [`Dataplane::fold_activity`] before its timers.
#![forbid(unsafe_code)]

mod dataplane;
mod error;
mod fastpath;
pub mod filter;
pub mod offload;
mod packet;
mod peer;
pub mod replay;
pub mod route;
mod session;
mod shared;

pub use dataplane::{Dataplane, DpConfig, Inbound, Outbound, PuntResult};
pub use error::Error;
pub use fastpath::{FastIn, FastOut, FastPath};
pub use peer::MAX_STAGED;
pub use route::RouteTable;
pub use shared::{Punt, Shared, Snapshot, MAX_WORKERS, PUNT_QUEUE_LEN};

#[cfg(test)]
mod tests;
