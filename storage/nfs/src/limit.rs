//! Bounded concurrency of the RPC front: at most `per_conn` calls of one connection and
//! `server` calls of all connections together are in flight (spawned on the fast path, or
//! forwarded to the library and not yet answered). When a connection has no slot left its
//! reader stops reading: the client sees TCP back-pressure, not an error, and no task or
//! buffer is created for calls it has not been given a slot for. Calls served inline on the
//! reading task (WRITE, GETATTR, LOOKUP, and any call of a client that is not pipelining) need
//! no slot: they are already one at a time per connection.
//!
//! Time: a connection is read with two deadlines (`next_record`): the first byte of a
//! record must come within the idle timeout of the server starting to wait for it, and the
//! rest of the record within the record timeout of its first byte. A client that stalls in
//! the middle of a record (or trickles it) is dropped, and so is one that stays silent longer
//! than a kernel NFS server keeps an idle connection. Waiting for a slot does not count: the
//! server is then not reading. Each reply must be taken by the client within the reply timeout
//! of the server starting to write it (`reply_within`): a client that stops reading its
//! replies (its socket's send buffer full) is disconnected, which frees the calls it holds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default most calls in flight per connection.
pub const MAX_IN_FLIGHT_PER_CONN: usize = 128;
/// Default most calls in flight in the whole server.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Default time a whole RPC record may take from its first byte (a 1 MiB WRITE needs 52 KiB/s).
pub const RECORD_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time a connection may stay silent between records (Linux's nfsd closes idle TCP
/// connections after 6 minutes; clients reconnect when they have something to send).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(360);

/// Default time the client may take to receive one reply once the server writes it (a 1 MiB
/// READ reply needs 35 KiB/s); a client that stops reading is disconnected after it.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes one reply (`write`, the connection's writer already held) within `timeout`. A client
/// that does not take it in time is disconnected: `conn` (a duplicate of the connection's
/// socket) is shut down both ways, which also ends the connection's reader and fails every
/// other reply waiting for the writer, so the connection's tasks, slots and buffers go; the
/// socket is reset when they have (linger 0), dropping the replies queued in the kernel.
pub(crate) async fn reply_within(
    timeout: Duration,
    conn: &std::os::fd::OwnedFd,
    peer: std::net::SocketAddr,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    match tokio::time::timeout(timeout, write).await {
        Ok(r) => r,
        Err(_) => {
            tracing::info!(%peer, "nfs: client took no reply for {timeout:?}; disconnecting it");
            // Reset, not a FIN queued behind replies the client will never take: the
            // kernel drops them when the connection's last descriptor closes.
            let _ = rustix::net::sockopt::set_socket_linger(conn, Some(Duration::ZERO));
            let _ = rustix::net::shutdown(conn, rustix::net::Shutdown::Both);
            Err(std::io::ErrorKind::TimedOut.into())
        }
    }
}

/// The next RPC record of a client connection (`None` at its end), or `TimedOut` when the
/// client is silent for `idle` or takes longer than `record` to send a record it started.
pub(crate) async fn next_record(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    idle: Duration,
    record: Duration,
) -> std::io::Result<Option<Vec<u8>>> {
    let timed_out = |_| std::io::Error::from(std::io::ErrorKind::TimedOut);
    tokio::time::timeout(idle, r.readable())
        .await
        .map_err(timed_out)??;
    tokio::time::timeout(record, crate::front::read_record(r))
        .await
        .map_err(timed_out)?
}

/// The server-wide slots.
pub(crate) struct Slots {
    server: Arc<Semaphore>,
    per_conn: usize,
    in_flight: AtomicUsize,
    high: AtomicUsize,
}

impl Slots {
    pub(crate) fn new(server: usize, per_conn: usize) -> Arc<Self> {
        Arc::new(Self {
            server: Arc::new(Semaphore::new(server.max(1))),
            per_conn: per_conn.max(1),
            in_flight: AtomicUsize::new(0),
            high: AtomicUsize::new(0),
        })
    }

    /// A new connection's slots.
    pub(crate) fn conn(self: &Arc<Self>) -> ConnSlots {
        ConnSlots {
            conn: Arc::new(Semaphore::new(self.per_conn)),
            shared: self.clone(),
        }
    }

    /// The most calls that were ever in flight at once.
    #[cfg(test)]
    pub(crate) fn high_water(&self) -> usize {
        self.high.load(Ordering::SeqCst)
    }
}

/// One connection's slots.
pub(crate) struct ConnSlots {
    conn: Arc<Semaphore>,
    shared: Arc<Slots>,
}

impl ConnSlots {
    /// Waits for a slot of this connection and one of the server.
    pub(crate) async fn acquire(&self) -> Slot {
        let c = self
            .conn
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let s = self
            .shared
            .server
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let n = self.shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.high.fetch_max(n, Ordering::SeqCst);
        Slot {
            _conn: c,
            _server: s,
            shared: self.shared.clone(),
        }
    }
}

/// A call in flight; dropping it frees its slots.
pub(crate) struct Slot {
    _conn: OwnedSemaphorePermit,
    _server: OwnedSemaphorePermit,
    shared: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `NFS3ERR_SERVERFAULT` reply to an NFSv3 call of procedure `proc_` (status and the
/// procedure's failure body: no attributes).
pub(crate) fn serverfault(xid: u32, proc_: u32) -> Vec<u8> {
    const SERVERFAULT: u32 = 10006;
    // post_op_attr (1 word) for LOOKUP/READ/ACCESS/READLINK/READDIR(PLUS)/FSSTAT/FSINFO/
    // PATHCONF, wcc_data (2 words) for SETATTR/WRITE/CREATE/MKDIR/SYMLINK/MKNOD/REMOVE/RMDIR/
    // COMMIT; RENAME and LINK two of them; GETATTR nothing.
    let fail_words = match proc_ {
        1 => 0,
        3 | 4 | 5 | 6 | 16 | 17 | 18 | 19 | 20 => 1,
        14 => 4,
        15 => 3,
        _ => 2,
    };
    let mut v = Vec::with_capacity(40);
    for w in [xid, 1, 0, 0, 0, 0, SERVERFAULT] {
        v.extend_from_slice(&u32::to_be_bytes(w));
    }
    for _ in 0..fail_words {
        v.extend_from_slice(&0u32.to_be_bytes());
    }
    v
}

/// RPC `SYSTEM_ERR` reply to a call (outside NFSv3, e.g. MOUNT, whose procedures have no
/// server-fault status).
pub(crate) fn system_err(xid: u32) -> Vec<u8> {
    const SYSTEM_ERR: u32 = 5;
    let mut v = Vec::with_capacity(24);
    for w in [xid, 1, 0, 0, 0, SYSTEM_ERR] {
        v.extend_from_slice(&u32::to_be_bytes(w));
    }
    v
}

#[cfg(test)]
mod tests;
