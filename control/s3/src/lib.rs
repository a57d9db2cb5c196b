//! S3 API for TunnelMesh: an HTTP/1.1 server (hyper + s3s 0.14) over the `tm-storage` engine.
//!
//! What it does:
//! - Serves the S3 REST API both at the root path and under `/s3` (`http://HOST:PORT/s3/...`).
//! - Authenticates every request in its own front layer (`front.rs`) on the ORIGINAL request, before
//!   s3s sees it: AWS SigV4 (header and presigned query, `UNSIGNED-PAYLOAD`, signed payload hashes,
//!   and `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]` / `STREAMING-UNSIGNED-PAYLOAD-TRAILER`
//!   aws-chunked bodies with per-chunk signature verification), HTTP Basic (access key / secret)
//!   and Bearer (the mesh token). Secrets come from the engine's credential table.
//! - Then strips the `/s3` prefix, the `Authorization` header, the presign query parameters and the
//!   aws-chunked framing, puts the authenticated [`Principal`] into the request extensions and hands
//!   the request to s3s, which is configured WITHOUT its own auth. The [`S3`](s3s::S3) impl refuses
//!   any request without a [`Principal`] (AccessDenied).
//! - Enforces the reserved system bucket [`SYSTEM_BUCKET`]: only [`SYSTEM_PRINCIPAL`] may write or
//!   delete in it.
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

mod auth;
mod body;
mod error;
mod front;
mod guard;
mod list;
mod service;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

pub use error::Error;
pub use front::{serve_limited, serve_with};
pub use guard::{in_request, panics, Limits};

/// The reserved system bucket; only [`SYSTEM_PRINCIPAL`] may write or delete in it.
pub const SYSTEM_BUCKET: &str = "_tunnelmesh";
/// The principal name of the coordinator itself.
pub const SYSTEM_PRINCIPAL: &str = "system";
/// The principal name given to requests authenticated with the mesh token (Bearer).
pub const MESH_PRINCIPAL: &str = "mesh";

/// Server configuration.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// Address the daemon binds (informational; `serve` uses the listener it is given).
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes (after aws-chunked decoding), e.g. 5 GiB.
    pub max_body: u64,
    /// Mesh token accepted as `Authorization: Bearer <token>`; `None` disables Bearer auth.
    pub mesh_token: Option<String>,
}

/// The authenticated identity of a request, stored in the request extensions by the front layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal(pub String);

impl Principal {
    /// True for the coordinator itself (may write the system bucket).
    #[must_use]
    pub fn is_system(&self) -> bool {
        self.0 == SYSTEM_PRINCIPAL
    }
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
