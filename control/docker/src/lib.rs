//! `tm-docker`: Docker management through the mesh.
//!
//! Every node runs an agent ([`agent`], feature `agent`, using bollard against the local
//! engine) listening only on its mesh address. A caller is identified by the mesh source
//! address of its connection, which cryptokey routing ties to the peer's key
//! ([`authz::identity_of`]); every call is decided by [`tm_policy::decide()`] on the node's
//! compiled artifact, on the node that owns the container ([`authz`]). The wire protocol
//! ([`proto`]) is one JSON call line, one JSON reply line, then framed streams for `logs`
//! and `exec`. The caller side (`tunnelmesh docker ...`) merges the per-node answers of a
//! fan-out ([`view`]).
//!
//! Sans-IO cores: [`proto`], [`authz`], [`view`] (and [`stats`] with the agent); thin I/O:
//! [`agent`] and the async helpers here.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod authz;
pub mod proto;
pub mod view;

#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "agent")]
pub mod stats;

#[cfg(feature = "agent")]
pub use async_io::{read_frame_async, read_line_async};

#[cfg(feature = "agent")]
mod async_io {
    use crate::proto::{Frame, MAX_LINE};
    use std::io;
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt};

    /// Reads one frame; `Ok(None)` at a clean end of stream.
    pub async fn read_frame_async<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
        let mut h = [0u8; 5];
        match r.read_exact(&mut h[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        r.read_exact(&mut h[1..]).await?;
        let (k, len) =
            Frame::header(h).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut p = vec![0u8; len];
        r.read_exact(&mut p).await?;
        Frame::from_parts(k, p)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Reads one line of at most [`MAX_LINE`] bytes, without its `\n`.
    pub async fn read_line_async<R: tokio::io::AsyncBufRead + Unpin>(
        r: &mut R,
    ) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        (&mut *r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut v)
            .await?;
        if v.last() != Some(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                if v.len() > MAX_LINE {
                    "line too long"
                } else {
                    "the connection closed before a whole line"
                },
            ));
        }
        v.pop();
        Ok(v)
    }
}
