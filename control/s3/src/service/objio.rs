//! Moving object bytes between s3s bodies and the engine: small bodies in memory, large ones
//! streamed into a `PutWriter` on the blocking pool, reads streamed out of an `ObjectReader`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Result};
use tm_storage::{PutWriter, StorageError, WriteCondition};

use crate::checksum::Outcome;
use tokio::sync::mpsc;

use crate::error::{aws_error, body_error, Error};

use super::READ_PIECE;

/// Channel messages from the request task to the blocking writer.
pub(super) enum Msg {
    Data(Bytes),
    /// Commit, recording the verified checksum (stored form).
    Finish(Option<String>),
}

/// The decoded `Content-MD5` header, if any.
pub(super) fn want_md5(content_md5: Option<&str>) -> S3Result<Option<Vec<u8>>> {
    content_md5
        .map(|m| {
            base64::engine::general_purpose::STANDARD
                .decode(m.trim())
                .map_err(|_| S3Error::new(S3ErrorCode::InvalidDigest))
        })
        .transpose()
}

/// Reads a whole body of exactly `len` (at most `INLINE_MAX`) bytes into memory and checks
/// `Content-MD5`. Any body error (signature, hash, truncation) fails it: nothing is stored.
pub(super) async fn read_small(
    bucket: &str,
    body: Option<StreamingBlob>,
    len: usize,
    content_md5: Option<&str>,
) -> S3Result<Vec<u8>> {
    let want = want_md5(content_md5)?;
    let mut data = Vec::with_capacity(len);
    if let Some(mut body) = body {
        while let Some(item) = body.next().await {
            let b = item.map_err(|e| body_error(&*e, bucket))?;
            if data.len() + b.len() > len {
                return Err(aws_error(Error::IncompleteBody, bucket));
            }
            data.extend_from_slice(&b);
        }
    }
    if data.len() != len {
        return Err(aws_error(Error::IncompleteBody, bucket));
    }
    if let Some(want) = want {
        if Md5::digest(&data).as_slice() != want.as_slice() {
            return Err(S3Error::new(S3ErrorCode::BadDigest));
        }
    }
    Ok(data)
}

/// Streams `body` into a writer opened by `begin` on the blocking pool; commits (if `cond` holds)
/// only when the whole body arrived intact (and matches `content_md5` and its declared checksum,
/// recorded from `sums`). Otherwise the writer is dropped (aborted): nothing is stored and the
/// chunk files it wrote are deleted before this returns.
#[allow(clippy::too_many_arguments)]
pub(super) async fn write_body<T: Send + 'static>(
    bucket: &str,
    begin: impl FnOnce() -> Result<PutWriter, StorageError> + Send + 'static,
    body: Option<StreamingBlob>,
    content_md5: Option<&str>,
    sums: Outcome,
    cond: WriteCondition,
    commit: impl FnOnce(PutWriter) -> Result<T, StorageError> + Send + 'static,
) -> S3Result<T> {
    let want_md5 = want_md5(content_md5)?;
    let (tx, mut rx) = mpsc::channel::<Msg>(8);
    let writer = tokio::task::spawn_blocking(move || -> Result<Option<T>, StorageError> {
        let mut w = begin()?;
        w.set_condition(cond);
        while let Some(m) = rx.blocking_recv() {
            match m {
                Msg::Data(b) => w.write_all(&b)?,
                Msg::Finish(sum) => {
                    w.set_checksum(sum);
                    return commit(w).map(Some);
                }
            }
        }
        Ok(None) // sender gone without Finish: abort
    });
    let mut md5 = want_md5.as_ref().map(|_| Md5::new());
    let mut failure: Option<S3Error> = None;
    if let Some(mut body) = body {
        while let Some(item) = body.next().await {
            match item {
                Ok(b) => {
                    if let Some(h) = md5.as_mut() {
                        h.update(&b);
                    }
                    if tx.send(Msg::Data(b)).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    failure = Some(body_error(&*e, bucket));
                    break;
                }
            }
        }
    }
    if failure.is_none() {
        if let (Some(want), Some(h)) = (want_md5, md5) {
            if h.finalize().as_slice() != want.as_slice() {
                failure = Some(S3Error::new(S3ErrorCode::BadDigest));
            }
        }
    }
    if failure.is_none() {
        // The body ended intact: its checksum (if declared) was verified by the front.
        let _ = tx.send(Msg::Finish(sums.get())).await;
    }
    drop(tx);
    let res = writer.await.map_err(S3Error::internal_error)?;
    match (failure, res) {
        (Some(f), _) => Err(f),
        (None, Ok(Some(info))) => Ok(info),
        (None, Ok(None)) => Err(aws_error(Error::IncompleteBody, bucket)),
        (None, Err(e)) => Err(aws_error(Error::Storage(e), bucket)),
    }
}

/// A `Sync` stream over an mpsc receiver (s3s requires `Sync` bodies).
pub(super) struct RxStream(mpsc::Receiver<Result<Bytes, io::Error>>);

impl Stream for RxStream {
    type Item = Result<Bytes, io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Streams bytes `start..end` of an open object from the blocking pool.
pub(super) fn read_body(reader: tm_storage::ObjectReader, start: u64, end: u64) -> StreamingBlob {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut off = start;
        let mut buf = vec![0u8; READ_PIECE];
        while off < end {
            let want =
                usize::try_from((end - off).min(READ_PIECE as u64)).expect("bounded by READ_PIECE");
            let item = match reader.read_at(off, &mut buf[..want]) {
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "object shrank",
                )),
                Ok(n) => {
                    off += n as u64;
                    Ok(Bytes::copy_from_slice(&buf[..n]))
                }
                Err(e) => Err(io::Error::other(e.to_string())),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                break;
            }
        }
    });
    StreamingBlob::wrap(RxStream(rx))
}

/// Copies bytes `start..end` of `r` into `w` (a copy that cannot share chunks).
pub(super) fn copy_bytes(
    r: &tm_storage::ObjectReader,
    w: &mut PutWriter,
    start: u64,
    end: u64,
) -> Result<(), StorageError> {
    let mut buf = vec![0u8; READ_PIECE];
    let mut off = start;
    while off < end {
        let want =
            usize::try_from((end - off).min(READ_PIECE as u64)).expect("bounded by READ_PIECE");
        let got = r.read_at(off, &mut buf[..want])?;
        if got == 0 {
            return Err(StorageError::Corrupt("copy source shrank".into()));
        }
        w.write_all(&buf[..got])?;
        off += got as u64;
    }
    Ok(())
}
