//! Request-body adapters applied by the front layer after authentication: a size limit, SHA-256
//! verification of signed payloads, and the aws-chunked decoder (with chunk and trailer signature
//! verification). Each adapter ends its stream with an [`Error`] item on failure, so whatever
//! consumes the body (an engine `PutWriter`) aborts and stores nothing.

use std::pin::Pin;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::auth::{ct_eq, ChunkSigner};
use crate::checksum::Trailers;
use crate::error::Error;

/// Boxed error as used by s3s bodies.
pub(crate) type StdError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// A boxed body stream.
pub(crate) type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, StdError>> + Send>>;

/// Largest aws-chunked chunk we buffer (clients use 8 KiB .. 1 MiB).
const MAX_CHUNK: usize = 16 << 20;
/// Longest chunk header or trailer line.
const MAX_LINE: usize = 4096;
/// Longest chunk extension (after `;`): `chunk-signature=` and 64 hex digits is 80 bytes.
pub(crate) const MAX_CHUNK_EXT: usize = 256;
/// Largest trailer section (all trailing header lines after the final chunk): AWS SDKs send one
/// checksum and the trailer signature, well under 1 KiB.
pub(crate) const MAX_TRAILER: usize = 8 * 1024;
/// Most trailing header lines.
pub(crate) const MAX_TRAILER_LINES: usize = 16;

fn err(e: Error) -> StdError {
    Box::new(e)
}

/// Fails the stream with `EntityTooLarge` once more than `max` bytes went through.
pub(crate) fn limited(inner: BodyStream, max: u64) -> BodyStream {
    let st = (inner, 0u64, false);
    Box::pin(futures::stream::unfold(
        st,
        move |(mut inner, mut n, done)| async move {
            if done {
                return None;
            }
            match inner.next().await {
                Some(Ok(b)) => {
                    n = n.saturating_add(b.len() as u64);
                    if n > max {
                        return Some((Err(err(Error::EntityTooLarge)), (inner, n, true)));
                    }
                    Some((Ok(b), (inner, n, false)))
                }
                Some(Err(e)) => Some((Err(e), (inner, n, true))),
                None => None,
            }
        },
    ))
}

/// Passes the body through and fails at the end if it does not hash to `expected` (hex).
pub(crate) fn sha256_verified(inner: BodyStream, expected: String) -> BodyStream {
    let st = (inner, Sha256::new(), false);
    Box::pin(futures::stream::unfold(
        st,
        move |(mut inner, mut h, done)| {
            let expected = expected.clone();
            async move {
                if done {
                    return None;
                }
                match inner.next().await {
                    Some(Ok(b)) => {
                        h.update(&b);
                        Some((Ok(b), (inner, h, false)))
                    }
                    Some(Err(e)) => Some((Err(e), (inner, h, true))),
                    None => {
                        let got = hex::encode(h.finalize_reset());
                        if ct_eq(got.as_bytes(), expected.as_bytes()) {
                            None
                        } else {
                            Some((Err(err(Error::ContentSha256Mismatch)), (inner, h, true)))
                        }
                    }
                }
            }
        },
    ))
}

/// aws-chunked decoder state.
struct Dechunk {
    inner: BodyStream,
    buf: BytesMut,
    signer: Option<ChunkSigner>,
    trailer: bool,
    expected: Option<u64>,
    total: u64,
    done: bool,
    /// Where the trailing headers go (for checksum verification).
    sink: Option<Trailers>,
}

impl Dechunk {
    /// Reads more input; `Ok(false)` at end of input.
    async fn fill(&mut self) -> Result<bool, StdError> {
        match self.inner.next().await {
            Some(Ok(b)) => {
                self.buf.extend_from_slice(&b);
                Ok(true)
            }
            Some(Err(e)) => Err(e),
            None => Ok(false),
        }
    }

    /// Takes one CRLF-terminated line (without the CRLF).
    async fn line(&mut self) -> Result<Option<Bytes>, StdError> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(pos).freeze();
                self.buf.advance(2);
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_LINE {
                return Err(err(Error::InvalidChunk(
                    "chunk header line too long".into(),
                )));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    async fn need(&mut self, n: usize) -> Result<(), StdError> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(err(Error::IncompleteBody));
            }
        }
        Ok(())
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StdError> {
        let Some(line) = self.line().await? else {
            return Err(err(Error::IncompleteBody));
        };
        let line = std::str::from_utf8(&line)
            .map_err(|_| err(Error::InvalidChunk("non-UTF-8 chunk header".into())))?;
        let (size_hex, ext) = line.split_once(';').unwrap_or((line, ""));
        if ext.len() > MAX_CHUNK_EXT {
            return Err(err(Error::InvalidChunk(format!(
                "chunk extension longer than {MAX_CHUNK_EXT} bytes"
            ))));
        }
        let size = usize::from_str_radix(size_hex.trim(), 16)
            .map_err(|_| err(Error::InvalidChunk(format!("bad chunk size {size_hex:?}"))))?;
        if size > MAX_CHUNK {
            return Err(err(Error::InvalidChunk("chunk too large".into())));
        }
        let sig = ext.trim().strip_prefix("chunk-signature=").map(str::trim);
        let data = if size > 0 || !self.trailer {
            self.need(size + 2).await?;
            let data = self.buf.split_to(size).freeze();
            if &self.buf[..2] != b"\r\n" {
                return Err(err(Error::InvalidChunk("missing CRLF after chunk".into())));
            }
            self.buf.advance(2);
            data
        } else {
            Bytes::new()
        };
        if let Some(signer) = self.signer.as_mut() {
            let got = sig.ok_or_else(|| err(Error::SignatureDoesNotMatch))?;
            if !signer.verify_chunk(&data, got) {
                return Err(err(Error::SignatureDoesNotMatch));
            }
        }
        if size > 0 {
            self.total += size as u64;
            return Ok(Some(data));
        }
        if self.trailer {
            self.read_trailer().await?;
        }
        if let Some(exp) = self.expected {
            if exp != self.total {
                return Err(err(Error::IncompleteBody));
            }
        }
        Ok(None)
    }

    async fn read_trailer(&mut self) -> Result<(), StdError> {
        let mut canonical = Vec::new();
        let mut trailer_sig = None;
        let (mut bytes, mut lines) = (0usize, 0usize);
        loop {
            let Some(line) = self.line().await? else {
                break; // lenient: some clients omit the final empty line
            };
            if line.is_empty() {
                break;
            }
            bytes += line.len() + 2;
            lines += 1;
            if bytes > MAX_TRAILER || lines > MAX_TRAILER_LINES {
                return Err(err(Error::MalformedTrailer(format!(
                    "trailer larger than {MAX_TRAILER} bytes or {MAX_TRAILER_LINES} lines"
                ))));
            }
            let text = std::str::from_utf8(&line)
                .map_err(|_| err(Error::InvalidChunk("non-UTF-8 trailer".into())))?;
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| err(Error::MalformedTrailer("bad trailer line".into())))?;
            let name = name.trim().to_ascii_lowercase();
            if name == "x-amz-trailer-signature" {
                trailer_sig = Some(value.trim().to_owned());
            } else {
                if let Some(sink) = &self.sink {
                    sink.push(name.clone(), value.trim().to_owned());
                }
                canonical.extend_from_slice(name.as_bytes());
                canonical.push(b':');
                canonical.extend_from_slice(value.trim().as_bytes());
                canonical.push(b'\n');
            }
        }
        if let Some(signer) = self.signer.as_ref() {
            let got = trailer_sig.ok_or_else(|| err(Error::SignatureDoesNotMatch))?;
            let want = signer.trailer_signature(&canonical);
            if !ct_eq(want.as_bytes(), got.as_bytes()) {
                return Err(err(Error::SignatureDoesNotMatch));
            }
        }
        Ok(())
    }
}

/// Decodes an aws-chunked body. `signer`: verify chunk signatures (signed streaming);
/// `trailer`: trailing headers follow the final chunk (stored into `sink`, if given, once their
/// signature verified); `expected`: `x-amz-decoded-content-length`.
pub(crate) fn aws_chunked(
    inner: BodyStream,
    signer: Option<ChunkSigner>,
    trailer: bool,
    expected: Option<u64>,
    sink: Option<Trailers>,
) -> BodyStream {
    let d = Dechunk {
        inner,
        buf: BytesMut::new(),
        signer,
        trailer,
        expected,
        total: 0,
        done: false,
        sink,
    };
    Box::pin(futures::stream::unfold(d, |mut d| async move {
        if d.done {
            return None;
        }
        match d.next_chunk().await {
            Ok(Some(b)) => Some((Ok(b), d)),
            Ok(None) => None,
            Err(e) => {
                d.done = true;
                Some((Err(e), d))
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(parts: Vec<&'static [u8]>) -> BodyStream {
        Box::pin(futures::stream::iter(
            parts.into_iter().map(|p| Ok(Bytes::from_static(p))),
        ))
    }

    async fn collect(mut s: BodyStream) -> Result<Vec<u8>, StdError> {
        let mut out = Vec::new();
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b?);
        }
        Ok(out)
    }

    fn kind(e: &StdError) -> String {
        e.downcast_ref::<Error>()
            .map(|e| format!("{e:?}"))
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn unsigned_chunked_with_trailer_split_anywhere() {
        let s = input(vec![
            b"5\r\nhel",
            b"lo\r\n3\r",
            b"\n wo\r\n0\r\nx-amz-checksum-crc32:AAAA\r\n\r\n",
        ]);
        let out = collect(aws_chunked(s, None, true, Some(8), None))
            .await
            .expect("ok");
        assert_eq!(out, b"hello wo");
    }

    #[tokio::test]
    async fn truncated_is_incomplete() {
        let s = input(vec![b"5\r\nhel"]);
        let e = collect(aws_chunked(s, None, false, None, None))
            .await
            .unwrap_err();
        assert!(kind(&e).contains("IncompleteBody"), "{e}");
        let s = input(vec![b"3\r\nabc\r\n"]);
        let e = collect(aws_chunked(s, None, false, None, None))
            .await
            .unwrap_err();
        assert!(kind(&e).contains("IncompleteBody"), "{e}");
        let s = input(vec![b"3\r\nabc\r\n0\r\n\r\n"]);
        let e = collect(aws_chunked(s, None, false, Some(4), None))
            .await
            .unwrap_err();
        assert!(kind(&e).contains("IncompleteBody"), "{e}");
    }

    #[tokio::test]
    async fn bad_size_is_invalid_chunk() {
        let s = input(vec![b"zz\r\nabc\r\n"]);
        let e = collect(aws_chunked(s, None, false, None, None))
            .await
            .unwrap_err();
        assert!(kind(&e).contains("InvalidChunk"), "{e}");
    }

    #[tokio::test]
    async fn long_chunk_extension_is_refused() {
        let ext = format!("3;{}\r\nabc\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_EXT + 1));
        let s: BodyStream = Box::pin(futures::stream::iter([Ok(Bytes::from(ext))]));
        let e = collect(aws_chunked(s, None, false, None, None))
            .await
            .unwrap_err();
        assert!(kind(&e).contains("InvalidChunk"), "{e}");
        // At the limit it is accepted (an unsigned body ignores unknown extensions).
        let ok = format!("3;{}\r\nabc\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_EXT));
        let s: BodyStream = Box::pin(futures::stream::iter([Ok(Bytes::from(ok))]));
        assert_eq!(
            collect(aws_chunked(s, None, false, None, None))
                .await
                .expect("ok"),
            b"abc"
        );
    }

    #[tokio::test]
    async fn oversized_trailer_is_refused() {
        // Many short trailer lines (each under the line limit) used to be accepted without
        // bound; now the section is capped in bytes and in lines.
        let mut body = b"3\r\nabc\r\n0\r\n".to_vec();
        for i in 0..MAX_TRAILER_LINES + 1 {
            body.extend_from_slice(format!("x-amz-meta-{i}:v\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        let s: BodyStream = Box::pin(futures::stream::iter([Ok(Bytes::from(body))]));
        let e = collect(aws_chunked(s, None, true, None, None))
            .await
            .unwrap_err();
        assert!(kind(&e).contains("MalformedTrailer"), "{e}");

        let mut body = b"3\r\nabc\r\n0\r\n".to_vec();
        for _ in 0..3 {
            body.extend_from_slice(format!("x-big:{}\r\n", "v".repeat(MAX_LINE - 8)).as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        let s: BodyStream = Box::pin(futures::stream::iter([Ok(Bytes::from(body))]));
        let e = collect(aws_chunked(s, None, true, None, None))
            .await
            .unwrap_err();
        assert!(kind(&e).contains("MalformedTrailer"), "{e}");

        // Trailer arriving in a stream that never ends: refused once the cap is passed,
        // not buffered forever.
        let head = futures::stream::iter([Ok(Bytes::from_static(b"3\r\nabc\r\n0\r\n"))]);
        let endless = futures::stream::repeat_with(|| Ok(Bytes::from_static(b"a:b\r\n")));
        let s: BodyStream = Box::pin(head.chain(endless));
        let e = collect(aws_chunked(s, None, true, None, None))
            .await
            .unwrap_err();
        assert!(kind(&e).contains("MalformedTrailer"), "{e}");
    }

    #[tokio::test]
    async fn sha256_checked_at_end() {
        let good = hex::encode(Sha256::digest(b"abc"));
        let out = collect(sha256_verified(input(vec![b"a", b"bc"]), good.clone())).await;
        assert_eq!(out.expect("ok"), b"abc");
        let e = collect(sha256_verified(input(vec![b"abd"]), good))
            .await
            .unwrap_err();
        assert!(kind(&e).contains("ContentSha256Mismatch"));
    }

    #[tokio::test]
    async fn limit_enforced() {
        assert!(collect(limited(input(vec![b"abc"]), 3)).await.is_ok());
        let e = collect(limited(input(vec![b"ab", b"cd"]), 3))
            .await
            .unwrap_err();
        assert!(kind(&e).contains("EntityTooLarge"));
    }
}
