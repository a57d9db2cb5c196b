//! Remote chunk backend: chunks as objects in an existing S3-compatible store (Garage, MinIO,
//! Ceph RGW, AWS S3).
//!
//! What it does: each chunk is one object `<prefix>/<xx>/<chunk id hex>` in one bucket
//! (`xx` = first id byte in hex, so listings can be split later). `put` is a `PutObject` carrying
//! the real payload SHA-256 in `x-amz-content-sha256` and a `Content-MD5`, so the server rejects a
//! body damaged in transit; the chunk is durable when the server answers 2xx. `get`/`read_at` are
//! `GetObject` (with `Range`), `delete` is `DeleteObject`, `exists` is `HeadObject`, `list` is
//! `ListObjectsV2` following continuation tokens. Requests are signed with AWS Signature V4
//! (header auth, `tm_sigv4::Signer`, time passed in) and sent by a small blocking HTTP/1.1 client over
//! `std::net::TcpStream` with a keep-alive connection pool.
//!
//! What it never does: TLS (only `http://` endpoints; `https://` is refused with
//! [`StorageError::Unsupported`] and needs a TLS client later), create the bucket (it must exist;
//! [`S3ChunkStore::new`] checks it with `HeadBucket`), multipart uploads (chunks are at most 1 GiB
//! and usually 1 MiB), or retries beyond one re-send of a request whose pooled keep-alive
//! connection turned out to be closed (every request here is idempotent).
//!
//! Call order: [`RemoteConfig::new`] (adjust fields) → [`S3ChunkStore::new`] → use it as a
//! [`ChunkStore`], or [`crate::Store::open_remote`] for a whole store whose metadata stays in
//! `data_dir` and whose chunks live remotely.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use md5::{Digest, Md5};
use tm_sigv4::{canonical_query, sha256_hex, uri_encode, Signer, EMPTY_SHA256};

use super::{hex, ChunkId, ChunkStore};
use crate::StorageError;

/// Where the remote chunks live and how to authenticate.
#[derive(Clone)]
pub struct RemoteConfig {
    /// `http://host:port` (no path). `https://` is not supported yet.
    pub endpoint: String,
    /// Existing bucket holding the chunks.
    pub bucket: String,
    /// Key prefix (without leading/trailing `/`; may be empty). It must belong to ONE store:
    /// GC deletes every chunk object under it that this store's metadata does not reference.
    pub prefix: String,
    /// SigV4 region (`us-east-1` by default; Garage usually wants `garage`).
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Path-style addressing (`http://host/bucket/key`, default) instead of virtual-hosted style
    /// (`http://bucket.host/key`).
    pub path_style: bool,
    /// Connect/read/write timeout of every request (default 30 s).
    pub timeout: Duration,
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .finish()
    }
}

impl RemoteConfig {
    /// Defaults: prefix `chunks`, region `us-east-1`, path-style, 30 s timeout.
    pub fn new(
        endpoint: impl Into<String>,
        bucket: impl Into<String>,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> RemoteConfig {
        RemoteConfig {
            endpoint: endpoint.into(),
            bucket: bucket.into(),
            prefix: "chunks".into(),
            region: "us-east-1".into(),
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            path_style: true,
            timeout: Duration::from_secs(30),
        }
    }
}

/// [`ChunkStore`] over the S3 REST API. See the module docs.
pub struct S3ChunkStore {
    cfg: RemoteConfig,
    /// `host:port` to connect to.
    addr: String,
    /// `Host` header value.
    host: String,
    /// Path prefix up to and including the bucket (`/bucket` or empty for virtual-hosted).
    base_path: String,
    /// Object key prefix, `prefix/` or empty.
    key_prefix: String,
    signer: Signer,
    pool: Mutex<Vec<BufReader<TcpStream>>>,
    /// The last chunk read whole and checked (see `read_at`).
    last: Mutex<Option<(ChunkId, Arc<Vec<u8>>)>>,
}

/// A parsed HTTP response.
struct Response {
    status: u16,
    body: Vec<u8>,
}

const MAX_IDLE: usize = 8;

impl S3ChunkStore {
    /// Check the configuration and that the bucket exists and accepts our credentials
    /// (`HeadBucket`).
    pub fn new(cfg: RemoteConfig) -> Result<S3ChunkStore, StorageError> {
        let rest = if let Some(r) = cfg.endpoint.strip_prefix("http://") {
            r
        } else if cfg.endpoint.starts_with("https://") {
            return Err(StorageError::Unsupported(
                "https endpoints (the remote backend has no TLS client yet)",
            ));
        } else {
            return Err(StorageError::Unsupported(
                "remote endpoint must be http://host:port",
            ));
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(StorageError::Unsupported(
                "remote endpoint must be http://host:port without a path",
            ));
        }
        if cfg.bucket.is_empty() || cfg.bucket.contains('/') {
            return Err(StorageError::InvalidBucketName);
        }
        let addr = if has_port(authority) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let (host, base_path) = if cfg.path_style {
            (
                authority.to_string(),
                format!("/{}", uri_encode(&cfg.bucket, false)),
            )
        } else {
            (format!("{}.{authority}", cfg.bucket), String::new())
        };
        let prefix = cfg.prefix.trim_matches('/');
        let key_prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let signer = Signer::new(&cfg.access_key, &cfg.secret_key, &cfg.region, "s3");
        let store = S3ChunkStore {
            signer,
            cfg,
            addr,
            host,
            base_path,
            key_prefix,
            pool: Mutex::new(Vec::new()),
            last: Mutex::new(None),
        };
        let path = if store.base_path.is_empty() {
            "/".to_string()
        } else {
            store.base_path.clone()
        };
        let r = store.request("HEAD", &path, &[], &[], &[])?;
        store.check(r, &[200])?;
        Ok(store)
    }

    /// The object key of a chunk (`prefix/xx/hex`).
    pub fn object_key(&self, id: &ChunkId) -> String {
        format!("{}{}/{}", self.key_prefix, hex(&id.0[..1]), id.to_hex())
    }

    fn object_path(&self, id: &ChunkId) -> String {
        format!(
            "{}/{}",
            self.base_path,
            uri_encode(&self.object_key(id), false)
        )
    }

    /// Turn a non-expected status into [`StorageError::Remote`].
    fn check(&self, r: Response, ok: &[u16]) -> Result<Response, StorageError> {
        if ok.contains(&r.status) {
            return Ok(r);
        }
        let text = String::from_utf8_lossy(&r.body);
        let code = xml_tag(&text, "Code")
            .map(|c| xml_unescape(&c))
            .unwrap_or_else(|| status_code_name(r.status).to_string());
        let message = xml_tag(&text, "Message")
            .map(|m| xml_unescape(&m))
            .unwrap_or_default();
        Err(StorageError::Remote {
            status: r.status,
            code,
            message,
        })
    }

    /// Sign and send one request; re-send once on a fresh connection if a pooled one failed.
    fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        extra: &[(&str, String)],
        body: &[u8],
    ) -> Result<Response, StorageError> {
        let payload_hash = if body.is_empty() {
            EMPTY_SHA256.to_string()
        } else {
            sha256_hex(body)
        };
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), self.host.clone()),
            ("x-amz-content-sha256".into(), payload_hash.clone()),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let (auth, _) = self.signer.sign_headers(
            method,
            path,
            query,
            &mut headers,
            &payload_hash,
            SystemTime::now(),
        );
        headers.push(("authorization".into(), auth));
        let qs = canonical_query(query);
        let target = if qs.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{qs}")
        };
        let mut head = format!("{method} {target} HTTP/1.1\r\n");
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "PUT" || method == "POST" {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");

        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(conn) = pooled {
            match self.exchange(conn, method, head.as_bytes(), body) {
                Ok(r) => return Ok(r),
                Err(Exchange::Stale) => {}
                Err(Exchange::Failed(e)) => return Err(e.into()),
            }
        }
        let conn = self.connect()?;
        match self.exchange(conn, method, head.as_bytes(), body) {
            Ok(r) => Ok(r),
            Err(Exchange::Stale) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "remote closed the connection without answering",
            )
            .into()),
            Err(Exchange::Failed(e)) => Err(e.into()),
        }
    }

    fn connect(&self) -> Result<BufReader<TcpStream>, StorageError> {
        use std::net::ToSocketAddrs;
        let mut last = None;
        for a in self.addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, self.cfg.timeout) {
                Ok(s) => {
                    s.set_read_timeout(Some(self.cfg.timeout))?;
                    s.set_write_timeout(Some(self.cfg.timeout))?;
                    s.set_nodelay(true)?;
                    return Ok(BufReader::new(s));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "endpoint resolves to nothing")
            })
            .into())
    }

    fn exchange(
        &self,
        mut conn: BufReader<TcpStream>,
        method: &str,
        head: &[u8],
        body: &[u8],
    ) -> Result<Response, Exchange> {
        let sent = (|| {
            let s = conn.get_mut();
            s.write_all(head)?;
            s.write_all(body)?;
            s.flush()
        })();
        if sent.is_err() {
            return Err(Exchange::Stale);
        }
        let (resp, reusable) = read_response(&mut conn, method == "HEAD")?;
        if reusable {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < MAX_IDLE {
                pool.push(conn);
            }
        }
        Ok(resp)
    }

    fn get_range(&self, id: &ChunkId, range: Option<(u64, u64)>) -> Result<Response, StorageError> {
        let extra: Vec<(&str, String)> = match range {
            Some((a, b)) => vec![("range", format!("bytes={a}-{b}"))],
            None => Vec::new(),
        };
        self.request("GET", &self.object_path(id), &[], &extra, &[])
    }
}

enum Exchange {
    /// Nothing (or only part of a status line) came back: the connection was closed.
    Stale,
    /// The exchange failed after the server started answering.
    Failed(std::io::Error),
}

impl From<std::io::Error> for Exchange {
    fn from(e: std::io::Error) -> Self {
        Exchange::Failed(e)
    }
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("remote HTTP: {msg}"),
    )
}

const MAX_HEADER_LINE: usize = 16 << 10;

fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = Vec::new();
    r.by_ref()
        .take(MAX_HEADER_LINE as u64)
        .read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(if line.is_empty() {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed")
        } else {
            bad("header line too long or truncated")
        });
    }
    String::from_utf8(line)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|_| bad("non-UTF-8 header"))
}

/// What to reserve for a body of declared length `n`: never more than 8 MiB up front, so a
/// response cannot make us allocate what it declares before sending it (found by the
/// `remote_http_response` fuzz target: `Content-Length: 404923801...` reserved 2 GiB).
fn initial_capacity(n: u64) -> usize {
    usize::try_from(n.min(8 << 20)).unwrap_or(0)
}

/// Largest response body accepted (a chunk is at most the store's chunk size, 1 MiB by
/// default; listings of 1000 keys are a few hundred KiB): a larger declared length, or more
/// bytes of a chunked or no_length body, fails the request before it is read.
pub const MAX_BODY: u64 = 64 << 20;
/// Most header lines of one response.
const MAX_HEADERS: usize = 128;
/// Most interim (1xx) responses before the final one.
const MAX_INTERIM: usize = 4;

/// Read one response; returns it and whether the connection may be reused. Interim (1xx)
/// responses before it are skipped, at most [`MAX_INTERIM`] of them.
fn read_response(r: &mut impl BufRead, head_only: bool) -> Result<(Response, bool), Exchange> {
    for _ in 0..=MAX_INTERIM {
        if let Some(resp) = read_one_response(r, head_only)? {
            return Ok(resp);
        }
    }
    Err(bad("too many interim (1xx) responses").into())
}

/// One response, `None` for an interim (1xx) one.
fn read_one_response(
    r: &mut impl BufRead,
    head_only: bool,
) -> Result<Option<(Response, bool)>, Exchange> {
    let status_line = match read_line(r) {
        Ok(l) => l,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            return Err(Exchange::Stale)
        }
        Err(e) => return Err(e.into()),
    };
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1.x response").into());
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    let mut lines = 0;
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        lines += 1;
        if lines > MAX_HEADERS {
            return Err(bad("too many header lines").into());
        }
        let (name, value) = line.split_once(':').ok_or_else(|| bad("bad header"))?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = Some(value.parse().map_err(|_| bad("bad content-length"))?)
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    if (100..200).contains(&status) {
        // 100 Continue (we never send Expect, but tolerate it): the real answer follows.
        return Ok(None);
    }
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 {
        // no body
    } else if chunked {
        loop {
            let line = read_line(r)?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
            if size > MAX_BODY.saturating_sub(body.len() as u64) {
                return Err(bad("response body too large").into());
            }
            if size == 0 {
                // trailers
                while !read_line(r)?.is_empty() {}
                break;
            }
            let start = body.len();
            r.by_ref().take(size).read_to_end(&mut body)?;
            if (body.len() - start) as u64 != size {
                return Err(bad("truncated chunked body").into());
            }
            if !read_line(r)?.is_empty() {
                return Err(bad("missing CRLF after chunk").into());
            }
        }
    } else if let Some(n) = content_length {
        if n > MAX_BODY {
            return Err(bad("response body too large").into());
        }
        body.reserve(initial_capacity(n));
        r.by_ref().take(n).read_to_end(&mut body)?;
        if body.len() as u64 != n {
            return Err(bad("truncated body").into());
        }
    } else {
        r.by_ref().take(MAX_BODY + 1).read_to_end(&mut body)?;
        if body.len() as u64 > MAX_BODY {
            return Err(bad("response body too large").into());
        }
        close = true;
    }
    Ok(Some((Response { status, body }, !close)))
}

impl ChunkStore for S3ChunkStore {
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StorageError> {
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(data));
        let extra = [
            ("content-md5", md5),
            ("content-type", "application/octet-stream".to_string()),
        ];
        let r = self.request("PUT", &self.object_path(id), &[], &extra, data)?;
        self.check(r, &[200, 201, 204])?;
        Ok(())
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, StorageError> {
        let r = self.get_range(id, None)?;
        if r.status == 404 {
            return Err(StorageError::Corrupt(format!("{id:?} missing (remote)")));
        }
        let r = self.check(r, &[200])?;
        if ChunkId::of(&r.body) != *id {
            return Err(StorageError::Corrupt(format!(
                "{id:?} hash mismatch (remote)"
            )));
        }
        Ok(r.body)
    }

    /// The whole chunk is fetched and its hash checked (a range of a chunk cannot be checked
    /// on its own); the last chunk read is kept, so the ranges of a sequential reader cost one
    /// GET per chunk.
    fn read_at(&self, id: &ChunkId, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let cached = {
            let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            last.as_ref()
                .filter(|(i, _)| i == id)
                .map(|(_, d)| d.clone())
        };
        let data = match cached {
            Some(d) => d,
            None => {
                let d = Arc::new(self.get(id)?);
                *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((*id, d.clone()));
                d
            }
        };
        Ok(super::copy_at(&data, offset, buf))
    }

    fn delete(&self, id: &ChunkId) -> Result<(), StorageError> {
        let r = self.request("DELETE", &self.object_path(id), &[], &[], &[])?;
        self.check(r, &[200, 204, 404])?;
        Ok(())
    }

    fn exists(&self, id: &ChunkId) -> Result<bool, StorageError> {
        let r = self.request("HEAD", &self.object_path(id), &[], &[], &[])?;
        Ok(self.check(r, &[200, 404])?.status == 200)
    }

    fn list(&self, f: &mut dyn FnMut(ChunkId)) -> Result<(), StorageError> {
        let path = if self.base_path.is_empty() {
            "/".to_string()
        } else {
            self.base_path.clone()
        };
        let mut token: Option<String> = None;
        loop {
            let mut q: Vec<(&str, &str)> = vec![("list-type", "2"), ("prefix", &self.key_prefix)];
            if let Some(t) = &token {
                q.push(("continuation-token", t));
            }
            let r = self.request("GET", &path, &q, &[], &[])?;
            let r = self.check(r, &[200])?;
            let text = String::from_utf8(r.body).map_err(|_| bad("non-UTF-8 listing"))?;
            for key in xml_tags(&text, "Key") {
                let key = xml_unescape(key);
                if let Some(id) = self.parse_key(&key) {
                    f(id);
                }
            }
            let truncated = xml_tag(&text, "IsTruncated").is_some_and(|t| t.trim() == "true");
            if !truncated {
                return Ok(());
            }
            match xml_tag(&text, "NextContinuationToken") {
                Some(t) if !t.is_empty() && token.as_deref() != Some(&xml_unescape(&t)) => {
                    token = Some(xml_unescape(&t))
                }
                _ => return Err(bad("truncated listing without a new continuation token").into()),
            }
        }
    }
}

impl S3ChunkStore {
    /// The chunk id named by an object key, if the key is exactly where that chunk belongs.
    fn parse_key(&self, key: &str) -> Option<ChunkId> {
        let rest = key.strip_prefix(&self.key_prefix)?;
        let (_, name) = rest.split_once('/')?;
        let id = ChunkId::from_hex(name)?;
        (self.object_key(&id) == key).then_some(id)
    }
}

fn has_port(authority: &str) -> bool {
    if let Some(end) = authority.rfind(']') {
        authority[end..].contains(':')
    } else {
        authority.contains(':')
    }
}

fn status_code_name(status: u16) -> &'static str {
    match status {
        301 | 307 => "PermanentRedirect",
        400 => "BadRequest",
        403 => "AccessDenied",
        404 => "NotFound",
        409 => "Conflict",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        _ => "UnexpectedStatus",
    }
}

/// Text of the first `<tag>...</tag>` (not unescaped).
fn xml_tag(text: &str, tag: &str) -> Option<String> {
    xml_tags(text, tag).next().map(str::to_string)
}

/// Texts of every `<tag>...</tag>` (not unescaped).
fn xml_tags<'a>(text: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut rest = text;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let v = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(v)
    })
}

fn xml_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let ent = &rest[1..end];
        let ch = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Entry point for the fuzz target in `fuzz/` (not a stable API): reads responses from `raw`
/// as the client does on one connection, until it is closed or a response fails. Returns
/// `(status, body length, reusable)` per response, and the error that ended the sequence.
#[doc(hidden)]
pub fn fuzz_read_responses(
    raw: &[u8],
    head_only: bool,
) -> (Vec<(u16, usize, bool)>, Option<String>) {
    let mut r = BufReader::new(raw);
    let mut out = Vec::new();
    loop {
        match read_response(&mut r, head_only) {
            Ok((resp, reuse)) => {
                out.push((resp.status, resp.body.len(), reuse));
                if !reuse {
                    return (out, None);
                }
            }
            Err(Exchange::Stale) => return (out, None),
            Err(Exchange::Failed(e)) => return (out, Some(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Signing itself is tested in tm-sigv4 (AWS vectors) and end to end in tests/remote.rs.

    #[test]
    fn xml_helpers() {
        let x = "<R><KeyCount>2</KeyCount><Contents><Key>a&amp;b</Key></Contents>\
                 <Contents><Key>c</Key></Contents><IsTruncated>false</IsTruncated></R>";
        let keys: Vec<String> = xml_tags(x, "Key").map(xml_unescape).collect();
        assert_eq!(keys, ["a&b", "c"]);
        assert_eq!(xml_tag(x, "IsTruncated").as_deref(), Some("false"));
        assert_eq!(xml_unescape("&lt;&#65;&#x42;&bogus"), "<AB&bogus");
    }

    #[test]
    fn declared_length_is_not_reserved_up_front() {
        assert_eq!(initial_capacity(5), 5);
        assert_eq!(initial_capacity(u64::MAX), 8 << 20);
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 40492380190190536\r\n\r\nabc";
        assert!(matches!(
            read_response(&mut BufReader::new(&raw[..]), false),
            Err(Exchange::Failed(_))
        ));
    }

    #[test]
    fn interim_responses_headers_and_bodies_are_bounded() {
        // A flood of 100 Continue: refused after a few (it recursed once per response, so
        // enough of them overflowed the stack and aborted the process).
        let mut raw = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(200_000);
        raw.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert!(matches!(
            read_response(&mut BufReader::new(&raw[..]), false),
            Err(Exchange::Failed(_))
        ));
        let two = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n\
                    HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let Ok((r, _)) = read_response(&mut BufReader::new(&two[..]), false) else {
            panic!("two interim responses are fine")
        };
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        // Endless header lines.
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        raw.extend(b"X-A: b\r\n".repeat(10_000));
        raw.extend_from_slice(b"\r\n");
        assert!(matches!(
            read_response(&mut BufReader::new(&raw[..]), false),
            Err(Exchange::Failed(_))
        ));
        // Bodies larger than MAX_BODY: declared, chunked, no_length.
        let declared = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\nab",
            MAX_BODY + 1
        );
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\nab",
            MAX_BODY + 1
        );
        for raw in [declared.as_bytes(), chunked.as_bytes()] {
            assert!(matches!(
                read_response(&mut BufReader::new(raw), false),
                Err(Exchange::Failed(_))
            ));
        }
        // A chunk size near u64::MAX after some body (found by fuzzing: the sum overflowed).
        let huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n\
                     ffffffffffffffff\r\nab\r\n0\r\n\r\n";
        assert!(matches!(
            read_response(&mut BufReader::new(&huge[..]), false),
            Err(Exchange::Failed(_))
        ));
        let mut no_length = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        no_length.resize(no_length.len() + MAX_BODY as usize + 1, b'x');
        assert!(matches!(
            read_response(&mut BufReader::new(&no_length[..]), false),
            Err(Exchange::Failed(_))
        ));
    }

    #[test]
    fn http_response_framing() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n\
                    HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope";
        let mut r = BufReader::new(&raw[..]);
        let Ok((a, reuse)) = read_response(&mut r, false) else {
            panic!("chunked response rejected")
        };
        assert_eq!(
            (a.status, a.body.as_slice(), reuse),
            (200, &b"abcde"[..], true)
        );
        let Ok((b, reuse)) = read_response(&mut r, false) else {
            panic!("sized response rejected")
        };
        assert_eq!(
            (b.status, b.body.as_slice(), reuse),
            (404, &b"nope"[..], false)
        );
        assert!(matches!(read_response(&mut r, false), Err(Exchange::Stale)));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert!(matches!(
            read_response(&mut BufReader::new(&short[..]), false),
            Err(Exchange::Failed(_))
        ));
    }
}
