//! A deliberately tiny HTTP/1.1: one request per connection, `Content-Length` bodies only,
//! `Connection: close`. Enough for a JSON API between our own client and server.

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::Error;

/// Largest accepted header block.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Largest accepted request body.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Largest oversized body still read (and dropped) before answering 413.
const MAX_DRAIN: usize = 1024 * 1024;
/// Largest accepted response body (client side).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// A parsed request.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Header fields in order (names as sent).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Bytes after the head of an `Upgrade` request (the new protocol's first bytes).
    pub extra: Vec<u8>,
}

impl Request {
    /// The first header named `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the comma-separated header `name` lists `token` (case-insensitive), as
    /// `Connection: Upgrade` and `Upgrade: tm-relay/1` do.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(token)))
    }
}

fn parse_headers<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Vec<(String, String)>, Error> {
    lines
        .map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| Error::Malformed(format!("bad header line {l:?}")))
        })
        .collect()
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Reads the head (up to and including the blank line); returns (head text, extra bytes).
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    what: &'static str,
) -> Result<(String, Vec<u8>), Error> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            let head = String::from_utf8(buf)
                .map_err(|_| Error::Malformed("HTTP head is not UTF-8".into()))?;
            return Ok((head, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(Error::Malformed("HTTP head too large".into()));
        }
        let n = s.read(&mut chunk).await.map_err(|e| Error::io(what, e))?;
        if n == 0 {
            return Err(Error::Malformed(
                "connection closed before end of head".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub(crate) fn content_length<'a>(lines: impl Iterator<Item = &'a str>) -> Result<usize, Error> {
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| Error::Malformed(format!("bad header line {l:?}")))?;
        if k.trim().eq_ignore_ascii_case("transfer-encoding") {
            return Err(Error::Malformed(
                "transfer-encoding is not supported".into(),
            ));
        }
        if k.trim().eq_ignore_ascii_case("content-length") {
            return v
                .trim()
                .parse()
                .map_err(|_| Error::Malformed("bad content-length".into()));
        }
    }
    Ok(0)
}

pub(crate) async fn read_body<S: AsyncRead + Unpin>(
    s: &mut S,
    mut have: Vec<u8>,
    len: usize,
) -> Result<Vec<u8>, Error> {
    if have.len() > len {
        return Err(Error::Malformed("more data than content-length".into()));
    }
    let start = have.len();
    have.resize(len, 0);
    s.read_exact(&mut have[start..])
        .await
        .map_err(|e| Error::io("read body", e))?;
    Ok(have)
}

/// Reads one request (server side).
pub(crate) async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Result<Request, Error> {
    let (head, rest) = read_head(s, "read request").await?;
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Malformed(format!("bad request line {first:?}")));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Error::Malformed(format!("unsupported version {version:?}")));
    }
    let headers = parse_headers(lines.clone())?;
    let len = content_length(lines)?;
    if len > MAX_BODY {
        // Read and discard a moderately oversized body so the client, still sending it,
        // sees our 413 instead of a reset connection.
        if len <= MAX_DRAIN && rest.len() <= len {
            let mut left = (len - rest.len()) as u64;
            let mut sink = [0u8; 8192];
            while left > 0 {
                let want = sink.len().min(usize::try_from(left).unwrap_or(sink.len()));
                let n = s
                    .read(&mut sink[..want])
                    .await
                    .map_err(|e| Error::io("read request", e))?;
                if n == 0 {
                    break;
                }
                left -= n as u64;
            }
        }
        return Err(Error::TooLarge);
    }
    let upgrade = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("upgrade"));
    let (body, extra) = if upgrade && len == 0 {
        (Vec::new(), rest)
    } else {
        (read_body(s, rest, len).await?, Vec::new())
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body,
        extra,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Writes one response and shuts the stream down (TLS close_notify).
pub(crate) async fn write_response<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    body: &[u8],
) -> Result<(), Error> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let w = async {
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        s.flush().await?;
        s.shutdown().await
    };
    w.await.map_err(|e| Error::io("write response", e))
}

/// Server side: accepts an upgrade to `protocol` (the stream then belongs to it).
pub(crate) async fn write_switching<S: AsyncWrite + Unpin>(
    s: &mut S,
    protocol: &str,
) -> Result<(), Error> {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
    );
    let w = async {
        s.write_all(head.as_bytes()).await?;
        s.flush().await
    };
    w.await.map_err(|e| Error::io("write upgrade response", e))
}

/// Client side: sends an upgrade request for `protocol` and reads the answer head.
/// Returns the status, then (on 101) the bytes already read past the head, or (otherwise)
/// the response body.
pub(crate) async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    target: &str,
    protocol: &str,
) -> Result<(u16, Vec<u8>), Error> {
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n",
        crate::COORDINATOR_SERVER_NAME,
    );
    let w = async {
        s.write_all(head.as_bytes()).await?;
        s.flush().await
    };
    w.await.map_err(|e| Error::io("send upgrade request", e))?;
    read_response(s, true).await
}

/// Client side: sends a request and reads the response status and body.
pub(crate) async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), Error> {
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::COORDINATOR_SERVER_NAME,
        body.len()
    );
    let w = async {
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        s.flush().await
    };
    w.await.map_err(|e| Error::io("send request", e))?;
    read_response(s, false).await
}

/// Reads a response: status and body; with `upgrade`, a `101` returns at once with the bytes
/// already read past its head (the start of the upgraded stream).
pub(crate) async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    upgrade: bool,
) -> Result<(u16, Vec<u8>), Error> {
    let (head, rest) = read_head(s, "read coordinator response")
        .await
        .map_err(|e| match e {
            Error::Malformed(m) => Error::BadResponse(m),
            other => other,
        })?;
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let status: u16 = first
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::BadResponse(format!("bad status line {first:?}")))?;
    if upgrade && status == 101 {
        return Ok((101, rest));
    }
    let len = content_length(lines).map_err(|e| Error::BadResponse(e.to_string()))?;
    if len > MAX_RESPONSE {
        return Err(Error::BadResponse("response too large".into()));
    }
    let body = read_body(s, rest, len).await?;
    Ok((status, body))
}
