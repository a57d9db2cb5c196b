//! The `nfs3_server` library behind the front: served over one in-process pipe per client
//! connection (`NFSStreamServer`, our patch of the library, see
//! `vendor/nfs3_server/PATCHED.md`). Nothing listens on a socket for it, so no other local
//! process can reach the library without going through the front's access check and limits.
//! Each call the library handles runs under [`call_guard`]: a panic in it is contained to that
//! call (logged with the procedure, counted with the front's, answered `NFS3ERR_SERVERFAULT`
//! or, outside NFSv3, RPC `SYSTEM_ERR`), and the connection goes on.

use std::net::SocketAddr;
use std::sync::Arc;

use nfs3_server::tcp::{CallGuard, NFSStreamServer};
use tokio::io::DuplexStream;

use crate::vfs::Vfs;

/// The library.
pub(crate) type Library = NFSStreamServer<Vfs>;

/// Buffer of each direction of a pipe (forwarded calls are metadata calls: small).
const PIPE: usize = 256 << 10;

/// New pipes to the library for the client `peer` (its retransmission cache key): the front
/// reads replies from the first and writes calls to the second. The library serves them until
/// the front drops its write end (dropping the front's ends also ends a call in progress: the
/// library's replies then have nowhere to go and its connection task stops).
pub(crate) fn connect(lib: &Arc<Library>, peer: SocketAddr) -> (DuplexStream, DuplexStream) {
    // One pipe per direction, so that dropping the front's write end is an end of file for the
    // library even while the front's reader still waits for replies.
    let (calls_w, calls_r) = tokio::io::duplex(PIPE);
    let (replies_r, replies_w) = tokio::io::duplex(PIPE);
    let lib = lib.clone();
    tokio::spawn(async move {
        let io = tokio::io::join(calls_r, replies_w);
        if let Err(e) = lib.serve(io, peer.to_string()).await {
            tracing::debug!(%peer, "nfs: library connection ended: {e}");
        }
    });
    (replies_r, calls_w)
}

/// Runs each of the library's calls with its panics contained (see the module documentation).
pub(crate) fn call_guard() -> CallGuard {
    Arc::new(|head: &[u8], work| {
        let word = |at: usize| {
            head.get(at..at + 4)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let (xid, prog, vers, proc_) = (word(0), word(12), word(16), word(20));
        let nfs3 = prog == crate::front::PROG_NFS && vers == 3;
        let kind = if nfs3 {
            format!("NFSv3 procedure {proc_} (library)")
        } else {
            format!("RPC program {prog} v{vers} procedure {proc_} (library)")
        };
        #[cfg(test)]
        let work = async move {
            crate::contain::maybe_panic(xid);
            work.await
        };
        Box::pin(async move {
            match crate::contain::contained(kind, work).await {
                Ok(()) => None,
                Err(()) if nfs3 => Some(crate::limit::serverfault(xid, proc_)),
                Err(()) => Some(crate::limit::system_err(xid)),
            }
        })
    })
}
