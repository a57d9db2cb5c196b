//! The HTTP front layer: accepts connections, authenticates each ORIGINAL request, rewrites it for
//! s3s (strips `/s3`, credentials and aws-chunked framing, inserts the [`crate::Principal`]), and answers
//! authentication failures as S3 error XML.
//!
//! Flow per request: 1. size checks 2. parse claim 3. look up secret (in memory, else on the
//! blocking pool)
//! 4. verify 5. rewrite URI/headers, wrap body 6. s3s.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{BodyDataStream, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use s3s::service::{S3Service, S3ServiceBuilder};
use tm_storage::Store;

use crate::auth::{self, BodyMode, ReqView};
use crate::body::{self, BodyStream, StdError};
use crate::error::{aws_error, Error};
use crate::guard::{self, Limits};
use crate::service::TmS3;
use crate::S3Config;
use crate::{checksum, refuse};

/// Largest accepted request header section (all names and values), in bytes.
const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Largest accepted total size of `x-amz-meta-*` headers (as S3).
const MAX_USER_META_BYTES: usize = 2 * 1024;
/// How long shutdown waits for in-flight connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

struct Front {
    s3: S3Service,
    store: Store,
    cfg: S3Config,
    limits: Limits,
    now: fn() -> SystemTime,
}

/// Like [`crate::serve`], with an injected clock (tests use it to check skew handling).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    store: Store,
    cfg: S3Config,
    shutdown: impl Future<Output = ()>,
    now: fn() -> SystemTime,
) -> io::Result<()> {
    serve_limited(listener, store, cfg, Limits::default(), shutdown, now).await
}

/// Like [`serve_with`], with explicit time and rate bounds (tests use short ones).
pub async fn serve_limited(
    listener: tokio::net::TcpListener,
    store: Store,
    cfg: S3Config,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    now: fn() -> SystemTime,
) -> io::Result<()> {
    let mut b = S3ServiceBuilder::new(
        TmS3::new(store.clone(), cfg.region.clone(), cfg.authority.clone())
            .with_replicator(cfg.replicator.clone()),
    );
    b.set_validation(crate::service::Names);
    let front = Arc::new(Front {
        s3: b.build(),
        store,
        cfg,
        limits,
        now,
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            res = listener.accept() => {
                let (stream, remote) = match res {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "s3 accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let f = front.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let f = f.clone();
                    let path = req.uri().path().to_owned();
                    let kind = format!("{} {path}", req.method());
                    async move {
                        let r = guard::contained(kind, f.handle(req, remote.ip())).await;
                        Ok::<_, Infallible>(r.unwrap_or_else(|()| error_response(Error::Internal, &path)))
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .max_buf_size(128 * 1024)
                    .timer(TokioTimer::new())
                    .header_read_timeout(front.limits.header_timeout)
                    .serve_connection(TokioIo::new(stream), svc);
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        tracing::debug!(error = %e, "s3 connection ended with error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    Ok(())
}

fn error_response(err: Error, path: &str) -> Response<s3s::Body> {
    let e = aws_error(err, path);
    match e.to_http_response() {
        Ok(r) => r,
        Err(_) => {
            let mut r = Response::new(s3s::Body::from("internal error".to_owned()));
            *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

/// A request id: unique per process run (time-seeded counter), 16 hex digits as AWS.
fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:016X}",
        seed.rotate_left(17) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    )
}

/// Largest error body rewritten to carry the request id.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Adds `x-amz-request-id` to every answer and `<RequestId>` to error bodies that lack one.
async fn with_request_id(r: Response<s3s::Body>, id: &str) -> Response<s3s::Body> {
    use http_body_util::BodyExt as _;
    let (mut parts, body) = r.into_parts();
    if let Ok(v) = HeaderValue::from_str(id) {
        parts.headers.insert("x-amz-request-id", v);
    }
    // An operation's own status where s3s has no field for it (HEAD by partNumber: 206).
    if let Some(s) = parts.headers.remove(crate::STATUS_HEADER) {
        if let Some(st) = s
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|n| http::StatusCode::from_u16(n).ok())
        {
            parts.status = st;
        }
    }
    if parts.status.as_u16() < 400 {
        return Response::from_parts(parts, body);
    }
    let bytes = match http_body_util::Limited::new(body, MAX_ERROR_BODY)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if !text.contains("<RequestId>") {
        if let Some(at) = text.rfind("</Error>") {
            text.insert_str(at, &format!("<RequestId>{id}</RequestId>"));
        }
    }
    parts.headers.remove("content-length");
    parts
        .headers
        .insert("content-length", HeaderValue::from(text.len()));
    Response::from_parts(parts, s3s::Body::from(text))
}

fn header_u64(h: &http::HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Removes the `/s3` mount prefix. A bucket can never be named `s3` (names have >= 3 chars).
fn strip_prefix(path: &str) -> &str {
    match path.strip_prefix("/s3") {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    }
}

/// The query without presign parameters (kept raw).
fn strip_presign(query: &str) -> String {
    query
        .split('&')
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(k, _)| k);
            !auth::PRESIGN_PARAMS.contains(&name)
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Front {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        remote: IpAddr,
    ) -> Response<s3s::Body> {
        #[cfg(test)]
        guard::maybe_panic(req.uri().path());
        let path = req.uri().path().to_owned();
        let id = request_id();
        let r = match self.prepare(req, remote).await {
            Ok(req) => match self.s3.call(req).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = ?e, "s3s failed");
                    let mut r = Response::new(s3s::Body::from("internal error".to_owned()));
                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    r
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, %path, "s3 request refused");
                error_response(e, &path)
            }
        };
        with_request_id(r, &id).await
    }

    async fn prepare(
        &self,
        req: Request<Incoming>,
        remote: IpAddr,
    ) -> Result<Request<s3s::Body>, Error> {
        let (mut parts, incoming) = req.into_parts();

        // 1. size checks
        let header_bytes: usize = parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes > MAX_HEADER_BYTES {
            return Err(Error::HeadersTooLarge);
        }
        let meta_bytes: usize = parts
            .headers
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-amz-meta-"))
            .map(|(k, v)| k.as_str().len() - "x-amz-meta-".len() + v.len())
            .sum();
        if meta_bytes > MAX_USER_META_BYTES {
            return Err(Error::HeadersTooLarge);
        }
        let max = self.cfg.max_body;
        let declared = header_u64(&parts.headers, "x-amz-decoded-content-length")
            .or_else(|| header_u64(&parts.headers, "content-length"));
        if declared.is_some_and(|n| n > max) {
            return Err(Error::EntityTooLarge);
        }

        // Browser POST uploads (a form with a presigned policy, no credentials in the headers)
        // are not implemented: say so, rather than "authentication required".
        if parts.method == http::Method::POST
            && parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.trim_start()
                        .to_ascii_lowercase()
                        .starts_with("multipart/form-data")
                })
        {
            return Err(Error::NotImplemented(
                "Browser POST uploads (POST policy forms) are not implemented".into(),
            ));
        }

        // 2.-4. authenticate the original request
        let view = ReqView {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
        };
        let claim = auth::parse(&view)?.ok_or(Error::MissingAuth)?;
        auth::check_scope(&claim, &self.cfg.region)?;
        let cached = claim
            .access_key()
            .and_then(|ak| self.store.cached_credential(ak));
        let cred = match claim.access_key() {
            Some(_) if cached.is_some() => cached,
            Some(ak) => {
                let store = self.store.clone();
                let ak = ak.to_owned();
                tokio::task::spawn_blocking(move || store.credential(&ak))
                    .await
                    .map_err(|e| {
                        Error::Storage(tm_storage::StorageError::Io(io::Error::other(e)))
                    })??
            }
            None => None,
        };
        let verified = crate::principal::authenticate(
            &claim,
            cred,
            self.cfg.authority.as_deref(),
            remote,
            &view,
            (self.now)(),
        )?;

        // 5. refuse what we do not implement (never a wrong success); rewrite for s3s
        let path = strip_prefix(parts.uri.path()).to_owned();
        refuse::check(&parts.method, &path, parts.uri.query(), &parts.headers)?;
        // CompleteMultipartUpload's x-amz-checksum-* is the whole object's (checked there), not
        // its XML body's.
        let completes = parts.method == http::Method::POST
            && parts
                .uri
                .query()
                .is_some_and(|q| q.split('&').any(|p| p.starts_with("uploadId=")));
        let declared = if completes {
            None
        } else {
            checksum::declared(&parts.headers)?
        };
        let query = parts
            .uri
            .query()
            .map(strip_presign)
            .filter(|q| !q.is_empty());
        let pq = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        parts.uri = Uri::builder()
            .path_and_query(pq)
            .build()
            .map_err(|_| Error::MalformedAuth("bad request URI".into()))?;

        let chunked_encoding = parts
            .headers
            .get_all("content-encoding")
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.contains("aws-chunked")));
        let decoded_len = header_u64(&parts.headers, "x-amz-decoded-content-length");
        let raw: BodyStream = guard::paced(
            Box::pin(BodyDataStream::new(incoming).map_err(|e| -> StdError { Box::new(e) })),
            self.limits,
        );
        let trailers = checksum::Trailers::default();
        let sink = Some(trailers.clone());
        let stream = match verified.body {
            BodyMode::Plain if chunked_encoding => {
                body::aws_chunked(raw, None, false, decoded_len, sink)
            }
            BodyMode::Plain => raw,
            BodyMode::Sha256(h) => body::sha256_verified(raw, h),
            BodyMode::Chunked { signer, trailer } => {
                body::aws_chunked(raw, signer, trailer, decoded_len, sink)
            }
        };
        let outcome = checksum::Outcome::default();
        let stream = match declared {
            Some(d) => checksum::verified(stream, d, trailers, outcome.clone()),
            None => stream,
        };
        let is_chunked = chunked_encoding
            || matches!(parts.headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok()),
                        Some(v) if v.starts_with("STREAMING-"));
        let stream = body::limited(stream, max);

        let h = &mut parts.headers;
        h.remove("authorization");
        h.remove("x-amz-content-sha256");
        h.remove("x-amz-trailer");
        if is_chunked {
            h.remove("transfer-encoding");
            match decoded_len {
                Some(n) => {
                    h.insert("content-length", HeaderValue::from(n));
                }
                None => {
                    h.remove("content-length");
                }
            }
            h.remove("x-amz-decoded-content-length");
            let rest: Vec<String> = h
                .get_all("content-encoding")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|v| !v.is_empty() && *v != "aws-chunked")
                .map(str::to_owned)
                .collect();
            h.remove("content-encoding");
            if !rest.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&rest.join(",")) {
                    h.insert("content-encoding", v);
                }
            }
        }
        parts.extensions.insert(verified.principal);
        parts.extensions.insert(outcome);
        parts.extensions.insert(crate::access::PolicySnapshot(
            self.cfg.authority.as_ref().and_then(|a| a.policy()),
        ));
        let body =
            s3s::Body::http_body_unsync(StreamBody::new(stream.map_ok(Frame::<Bytes>::data)));
        Ok(Request::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_presign_stripping() {
        assert_eq!(strip_prefix("/s3"), "/");
        assert_eq!(strip_prefix("/s3/"), "/");
        assert_eq!(strip_prefix("/s3/b/k"), "/b/k");
        assert_eq!(strip_prefix("/s3bucket/k"), "/s3bucket/k");
        assert_eq!(strip_prefix("/b/k"), "/b/k");
        assert_eq!(
            strip_presign("X-Amz-Algorithm=A&uploads&X-Amz-Signature=x&list-type=2"),
            "uploads&list-type=2"
        );
    }
}
