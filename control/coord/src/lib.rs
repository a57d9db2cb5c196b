//! Coordinator protocol library: join tokens, the mesh CA, registration with proof of
//! possession of a node's X25519 static key, mesh address allocation, the versioned netmap
//! (long poll), persisted coordinator state, and the HTTPS server and client that speak it.
//!
//! What it does: [`Coordinator`] is the server side (state, CA, token, HTTPS API over rustls
//! with optional mTLS); [`JoinClient`] is the joining node's side (pins the coordinator's CA
//! from the [`JoinToken`], registers, then authenticates with its mesh-CA client
//! certificate). [`address::allocate`], [`proof`] and [`token`] are pure functions shared by
//! both sides; [`wire`] holds the JSON types.
//!
//! What it never does: configure interfaces, talk to the dataplane or run WireGuard
//! handshakes (the daemon turns a [`wire::Netmap`] into peers), trust a role, key or name
//! claimed in a request body (identity is the proof of possession at registration and the
//! verified client certificate afterwards), or trust a coordinator certificate that does not
//! chain to the CA pinned by the token.
//!
//! HTTP API (HTTP/1.1, one request per connection, JSON bodies):
//! - `GET /v1/challenge` -> [`wire::Challenge`] (no client certificate needed)
//! - `POST /v1/register` [`wire::RegisterRequest`] -> [`wire::Registration`]
//! - `GET /v1/netmap?since=V` (mTLS) -> [`wire::Netmap`], long-polls until `version > V`
//! - `POST /v1/endpoints` [`wire::EndpointsUpdate`] (mTLS) -> [`wire::Netmap`]
//! - `DELETE /v1/nodes/self` (mTLS) -> `{}`
//! - `GET /v1/relay` (mTLS, `Connection: Upgrade`, `Upgrade: tm-relay/1`) -> `101`, then
//!   relay frames both ways (see [`relay`]): WireGuard ciphertext only, source keys set by
//!   the server from the client certificate.
//!
//! Errors are `{"error": "..."}` with 400 (malformed), 401 (no or unknown client
//! certificate), 403 (wrong token, bad proof, replayed or expired challenge, reserved name),
//! 404, 405, 409 (key or name already registered), 413 and 503.
//!
//! Call order, coordinator: [`Coordinator::open`] (creates or loads the CA, the join secret
//! and the state from the [`StateStore`]) -> print [`Coordinator::token`] ->
//! [`Coordinator::serve`] on a bound listener. Admin removal: [`Coordinator::remove_node`]
//! (also closes the node's relay connection). The coordinator node's daemon reports
//! authenticated WireGuard source addresses with [`Coordinator::observe_endpoint`] and
//! relays its own traffic through [`Coordinator::local_relay`].
//!
//! Call order, node: [`JoinClient::new`] with `HOST:PORT` and the token ->
//! [`JoinClient::register`] (challenge, CSR, proof; installs the returned client identity)
//! -> persist [`JoinClient::identity`] -> loop on [`JoinClient::netmap`] with the last
//! version -> [`JoinClient::update_endpoints`] when endpoints change ->
//! [`JoinClient::leave`]. When UDP to a peer fails: [`JoinClient::relay`] (reconnect when
//! it closes). After a restart use [`JoinClient::with_identity`] (or register
//! again: same key and name keep the same address).
#![forbid(unsafe_code)]

pub mod address;
mod ca;
mod challenge;
mod client;
mod contain;
mod error;
mod http;
mod index;
mod limit;
pub mod proof;
pub mod relay;
mod server;
mod store;
pub mod token;
pub mod wire;

#[cfg(test)]
mod bounds_tests;

pub use address::MeshCidr;
pub use ca::{make_csr, MeshCa, NodeIdentity};
pub use client::{build_register_request, JoinClient};
pub use contain::{in_request, panics};
pub use error::Error;
pub use relay::{
    LocalRelaySender, RelayConn, RelayReceiver, RelayRoute, RelaySender, RelayStats,
    MAX_RELAY_PAYLOAD,
};
pub use server::{read_token, validate_name, Coordinator, CoordinatorConfig};
pub use store::{FileStore, MemStore, StateStore};
pub use token::JoinToken;

/// The TLS server name a client always asks for; every coordinator certificate carries it.
pub const COORDINATOR_SERVER_NAME: &str = "coordinator.mesh";

/// The default mesh CIDR.
pub const DEFAULT_MESH_CIDR: &str = "100.64.0.0/10";

/// The rustls crypto provider used everywhere in this crate (`ring`).
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
