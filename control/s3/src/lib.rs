//! S3 API for TunnelMesh: an HTTP/1.1 server (hyper + s3s 0.14) over the `tm-storage` engine.
//!
//! What it does:
//! - Serves the S3 REST API both at the root path and under `/s3` (`http://HOST:PORT/s3/...`).
//! - Authenticates every request in its own front layer (`front.rs`) on the ORIGINAL request, before
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

/// Internal response header by which an operation sets a status s3s does not let it set
/// (removed by the front before the answer leaves).
pub(crate) const STATUS_HEADER: &str = "x-tm-internal-status";

mod access;
mod auth;
mod body;
mod checksum;
mod error;
mod front;
mod guard;
mod list;
mod principal;
mod refuse;
mod service;
mod sse;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

pub use access::{decide, identity};
pub use error::Error;
pub use front::{serve_limited, serve_with};
pub use guard::{in_request, panics, Limits};
pub use principal::{Authority, BucketSettings, NodeKey, Principal, SeedLogin, TokenRefusal};

/// The reserved system bucket: only [`Principal::Coordinator`] may read or list it; nobody
/// writes it over S3.
pub const SYSTEM_BUCKET: &str = "_tunnelmesh";

/// The region clients sign for unless configured otherwise.
pub const DEFAULT_REGION: &str = "us-east-1";

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
    /// The region SigV4 credential scopes must name (e.g. [`DEFAULT_REGION`]); the service
    /// must be `s3`. Anything else is refused with `AuthorizationHeaderMalformed`.
    pub region: String,
    /// The object replication driver (a coordinator among others): writes and reads of
    /// replicated buckets go through it; `None` (or a bucket it does not replicate) behaves
    /// as a single store.
    pub replicator: Option<Arc<dyn tm_storage::replication::hook::Replicator>>,
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

/// Entry points for the fuzz targets in `fuzz/` (not a stable API; hidden from the docs).
#[doc(hidden)]
pub mod fuzzing {
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    use std::time::SystemTime;

    use bytes::Bytes;
    use http::{HeaderMap, HeaderName, HeaderValue, Method};

    use crate::auth::{self, ReqView};
    use crate::body;
    use crate::Principal;

    /// Drains an in-memory body stream (it never waits).
    fn drain(mut s: body::BodyStream) -> Result<Vec<u8>, String> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        loop {
            match Pin::as_mut(&mut s).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(b))) => out.extend_from_slice(&b),
                Poll::Ready(Some(Err(e))) => return Err(e.to_string()),
                Poll::Ready(None) => return Ok(out),
                Poll::Pending => return Err("in-memory body stream waited".into()),
            }
        }
    }

    /// Decodes `parts` (the body as it arrived, piece by piece) as aws-chunked, exactly as the
    /// front does; `signed` verifies chunk signatures against a fixed key and seed.
    pub fn aws_chunked(
        parts: Vec<Vec<u8>>,
        signed: bool,
        trailer: bool,
        expected: Option<u64>,
    ) -> Result<Vec<u8>, String> {
        let signer = signed.then(|| {
            let date = "20250101T000000Z";
            let scope = tm_sigv4::Scope::new(date, "us-east-1", "s3");
            let key = tm_sigv4::SigningKey::derive("secret", &scope);
            auth::ChunkSigner::new(key, date, &scope, &"0".repeat(64))
        });
        let input = futures::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from(p))));
        drain(body::aws_chunked(
            Box::pin(input),
            signer,
            trailer,
            expected,
            None,
        ))
    }

    /// Parses the credentials of a request (SigV4 header or presigned query, Basic, Bearer)
    /// and verifies them against the secret `"secret"` for every access key at `now`, as the
    /// front does (Bearer tokens are decided by the coordinator's token table, not here: they
    /// never verify). Headers that are not valid HTTP are left out. Returns the id of the
    /// principal the access key `AK` stands for (`user-AK`).
    pub fn authenticate(
        method: &[u8],
        path: &str,
        query: Option<&str>,
        headers: &[(&[u8], &[u8])],
        now: SystemTime,
    ) -> Result<Option<String>, String> {
        let method = Method::from_bytes(method).map_err(|e| e.to_string())?;
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) {
                map.append(k, v);
            }
        }
        let view = ReqView {
            method: &method,
            path,
            query,
            headers: &map,
        };
        let Some(claim) = auth::parse(&view).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let cred = claim.access_key().map(|ak| {
            let principal = Principal::Token {
                id: format!("user-{ak}"),
                tags: Vec::new(),
            };
            ("secret".to_owned(), principal)
        });
        match auth::verify(&claim, cred, &view, now).map_err(|e| e.to_string())? {
            auth::Verified {
                principal: Principal::Token { id, .. },
                ..
            } => Ok(Some(id)),
            v => Err(format!("unexpected principal {}", v.principal)),
        }
    }
}
