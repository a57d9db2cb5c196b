//! S3 API for TunnelMesh: an HTTP/1.1 server (hyper + s3s 0.14) over the `tm-storage` engine.
//!
//! What it does:
//! - Serves the S3 REST API both at the root path and under `/s3` (`http://HOST:PORT/s3/...`).
//! - Authenticates every request in its own front layer ([`front`]) on the ORIGINAL request, before
//!   s3s sees it: AWS SigV4 (header and presigned query, `UNSIGNED-PAYLOAD`, signed payload hashes,
//!   and `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]` / `STREAMING-UNSIGNED-PAYLOAD-TRAILER`
//!   aws-chunked bodies with per-chunk signature verification), HTTP Basic (access key / secret)
//!   and Bearer (a mesh token). Secrets come from the engine's credential table; tokens, node
//!   identities and the seed login (access key = node name, secret = the mesh's default token,
//!   accepted only from that node's mesh address) come from the [`Authority`].
//! - Then strips the `/s3` prefix, the `Authorization` header, the presign query parameters and the
//!   aws-chunked framing, puts the authenticated [`Principal`] into the request extensions and hands
//!   the request to s3s, which is configured WITHOUT its own auth. The [`S3`](s3s::S3) impl refuses
//!   any request without a [`Principal`] (AccessDenied).
//! - Principals are typed ([`Principal`]): node names never alias a built-in principal. The
//!   reserved system bucket [`SYSTEM_BUCKET`] is readable only by [`Principal::Coordinator`]
//!   and written by nobody over S3; everyone else gets AccessDenied, also as a copy source.
//!
//! What it never does: derive secrets from public data, accept anonymous requests, buffer whole
//! object bodies in memory (bodies stream into the engine's `PutWriter` on a blocking thread;
//! only bodies of at most `tm_storage::INLINE_MAX` bytes are collected and handed to
//! `Store::put_small`, which needs no blocking thread), or answer success for an operation it does
//! not implement (s3s answers `NotImplemented`). SigV4 itself lives in `tm-sigv4`.
//!
//! Call order: open a `tm_storage::Store`, bind a `tokio::net::TcpListener`, then
//! `serve(listener, store, S3Config { .. }, shutdown).await`; it returns after `shutdown` resolves
//! and in-flight connections finished.
#![forbid(unsafe_code)]

mod access;
mod auth;
mod body;
mod error;
mod front;
mod list;
mod principal;
mod service;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

pub use error::Error;
pub use front::serve_with;
pub use principal::{Authority, NodeKey, Principal, SeedLogin, TokenRefusal};

/// The reserved system bucket: only [`Principal::Coordinator`] may read or list it; nobody
/// writes it over S3.
pub const SYSTEM_BUCKET: &str = "_tunnelmesh";

/// Server configuration.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// Address the daemon binds (informational; `serve` uses the listener it is given).
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes (after aws-chunked decoding), e.g. 5 GiB.
    pub max_body: u64,
    /// The mesh's identities (tokens, nodes, the seed login); `None` disables Bearer, token
    /// and seed-login authentication (only the credential table is used).
    pub authority: Option<Arc<dyn Authority>>,
}

/// Serves the S3 API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: tm_storage::Store,
    cfg: S3Config,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    front::serve_with(listener, store, cfg, shutdown, std::time::SystemTime::now).await
}
