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
//! - `GET /v1/netmap?since=V` (mTLS) -> [`wire::Netmap`], long-polls until `version > V`;
//!   with `&base=T` (the delta token of the netmap the caller holds) the answer may be a delta
//!   from it (`delta.from` set), which [`apply_delta`] resolves; with `&vv=...` (the version
//!   vector of the netmap the caller applied last, `poll.rs`) the coordinator first waits
//!   until it has seen as much, or answers 503 `lagging` after the long-poll limit
//! - `POST /v1/endpoints` [`wire::EndpointsUpdate`] (mTLS) -> [`wire::Netmap`]
//! - `POST /v1/services` [`wire::ServicesUpdate`] (mTLS) -> `{}`: the services the caller
//!   runs for others (listed per peer in netmaps)
//! - `DELETE /v1/nodes/self` (mTLS) -> `{}`
//! - `GET /v1/relay` (mTLS, `Connection: Upgrade`, `Upgrade: tm-relay/1`) -> `101`, then
//!   relay frames both ways (see [`relay`]): WireGuard ciphertext only, source keys set by
//!   the server from the client certificate.
//! - `GET /v1/relay` with `Upgrade: tm-coord-link/1` (coordinator certificates only): the
//!   link between two coordinators, for relayed frames and replication (see `link.rs`).
//!
//! Errors are `{"error": "..."}` with 400 (malformed), 401 (no or unknown client
//! certificate), 403 (wrong token, bad proof, replayed or expired challenge, reserved name),
//! 404, 405, 409 (key or name already registered), 413 and 503. A registration presents a
//! token's secret (inside the TLS connection pinned to the mesh CA); the coordinator finds the
//! token by the SHA-256 of the secret and refuses revoked, expired and used single-use ones.
//!
//! Identity administration (tokens, tags, node removal, the audit log): `identity.rs`,
//! [`Coordinator::create_token`], [`Coordinator::rotate_token`], [`Coordinator::tag_node`],
//! [`Coordinator::remove_node_as`], [`Coordinator::audit_log`].
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
//! -> persist [`JoinClient::identity`] -> loop on [`JoinClient::netmap_after`] with the last
//! version and netmap -> [`JoinClient::update_endpoints`] when endpoints change ->
//! [`JoinClient::leave`]. When UDP to a peer fails: [`JoinClient::relay`] (reconnect when
//! it closes). After a restart use [`JoinClient::with_identity`] (or register
//! again: same key and name keep the same address).
#![forbid(unsafe_code)]

pub mod address;
mod ca;
mod challenge;
mod client;
mod cluster;
mod contain;
mod delta;
mod error;
mod http;
mod identity;
mod index;
mod limit;
mod link;
mod node_services;
pub mod objrep;
mod open;
pub mod policy;
mod poll;
pub mod proof;
mod records;
mod register;
pub mod relay;
mod replicate;
mod serve;
mod server;
mod storage_records;
mod store;
pub mod token;
pub mod wire;

#[cfg(test)]
mod bounds_tests;

pub use address::MeshCidr;
pub use ca::{make_csr, MeshCa, NodeIdentity};
pub use client::{build_register_request, JoinClient, CONNECT_TIMEOUT, DEAD_CONNECTION_AFTER};
pub use cluster::install_cluster_seed;
pub use contain::{in_request, panics};
pub use delta::apply_delta;
pub use error::Error;
pub use identity::{now_unix, AuditEntry, NodeCredential, NodeSummary, TokenSpec};
pub use node_services::SERVICES;
pub use policy::{node_key, AdminHandler, PolicyOutcome, StoredPolicy};
pub use relay::{
    LocalRelaySender, RelayConn, RelayReceiver, RelayRoute, RelaySender, RelayStats,
    MAX_RELAY_PAYLOAD,
};
pub use replicate::origin_of;
pub use server::{read_token, validate_name, Coordinator, CoordinatorConfig};
pub use storage_records::{BucketSpec, Desired, ShareSpec, StorageSpec};
pub use store::{FileStore, MemStore, StateStore};
pub use tm_cluster;
pub use token::{JoinToken, TokenRecord, TokenStatus};

/// The TLS server name a client always asks for; every coordinator certificate carries it.
pub const COORDINATOR_SERVER_NAME: &str = "coordinator.mesh";

/// The default mesh CIDR.
pub const DEFAULT_MESH_CIDR: &str = "100.64.0.0/10";

/// The rustls crypto provider used everywhere in this crate (`ring`).
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Entry points for the fuzz targets in `fuzz/` (not a stable API; hidden from the docs).
#[doc(hidden)]
pub mod fuzzing {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use tm_noise::PublicKey;

    use crate::{http, relay, Coordinator, Error};

    /// Polls `f` once with a waker that does nothing: `None` if it would wait (the fuzz
    /// targets only feed in-memory input, so waiting means "needs more than was given").
    fn now_or_never<T>(f: impl Future<Output = T>) -> Option<T> {
        match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    /// Handles one request as a connection without a client certificate would have it
    /// handled (`raw`: the bytes after the TLS handshake): the HTTP status and JSON body of
    /// the answer, or `None` if the handler would wait (a long poll).
    pub fn serve_request(coord: &Coordinator, raw: &[u8]) -> Option<(u16, Vec<u8>)> {
        let mut input = raw;
        let result = now_or_never(async {
            match http::read_request(&mut input).await {
                Ok(req) if req.method == "GET" && req.path == "/v1/relay" => {
                    coord.relay_accept(&req, None).map(|_| Vec::new())
                }
                Ok(req) => coord.dispatch(req, None).await,
                Err(e) => Err(e),
            }
        })?;
        Some(match result {
            Ok(b) => (200, b),
            Err(e) => (e.http_status(), e.to_string().into_bytes()),
        })
    }

    /// Reads a client's response (`upgrade`: a relay upgrade request was sent).
    pub fn read_response(raw: &[u8], upgrade: bool) -> Result<(u16, Vec<u8>), String> {
        let mut input = raw;
        now_or_never(http::read_response(&mut input, upgrade))
            .unwrap_or_else(|| Err(Error::Malformed("waited".into())))
            .map_err(|e| e.to_string())
    }

    /// Reads relay frames from `raw` until the end or the first error (returned too).
    pub fn relay_frames(raw: &[u8]) -> (Vec<(PublicKey, Vec<u8>)>, Option<String>) {
        let mut input = raw;
        let mut frames = Vec::new();
        loop {
            match now_or_never(relay::read_frame(&mut input)) {
                Some(Ok(Some(f))) => frames.push(f),
                Some(Ok(None)) => return (frames, None),
                Some(Err(e)) => return (frames, Some(e.to_string())),
                None => return (frames, Some("waited".into())),
            }
        }
    }

    /// Encodes one relay frame (`None` if the payload is too large).
    pub fn frame_bytes(key: &PublicKey, payload: &[u8]) -> Option<Vec<u8>> {
        relay::frame_bytes(key, payload)
    }
}
