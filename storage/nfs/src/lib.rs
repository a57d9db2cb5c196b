//! NFSv3 file shares on the object store: `/shares/<name>` over TCP, mount protocol on the same
//! port, the same bytes as the S3 view of the share's bucket.
//!
//! What it does: serves the file-system view of [`tm_storage`] ([`tm_storage::FileSystem`]:
//! persistent inodes, attributes, directories as key prefixes, in-place chunk-local writes) with
//! the `nfs3_server` crate behind an RPC front (`front.rs`) that enforces who may mount.
//!
//! Why `nfs3_server` (0.11, the maintained fork of `nfsserve` 0.11): `nfsserve` puts the process
//! start time in every file handle (a static, not settable), so every restart makes all client
//! handles `ESTALE` — the upstream stale-mount bug — and uses the fileid as directory cookie
//! with no say for the file system. `nfs3_server` lets us choose the handle bytes, set the
//! handle generation (we use a random number persisted once per store) and choose cookies.
//! Neither library shows the client address to the MNT handler; the front wraps the listener
//! for that (and fixes a few answers, see `front.rs`).
//!
//! What it never does: talk to anything but its listener (the library is served over
//! in-process pipes, `upstream.rs`); accept clients outside loopback and the configured mesh networks; create shares
//! other than `default` (operators do that through the engine).
//!
//! Call order: [`NfsServer::bind`] (opens/creates the `default` share, binds the listener) →
//! [`NfsServer::local_addr`] → [`NfsServer::serve`] (until the shutdown future completes; then
//! flushes buffered writes). Clients mount `<addr>:/shares/<name>` with `vers=3,tcp,nolock` and
//! `port=`/`mountport=` both set to the listen port.
#![forbid(unsafe_code)]

pub mod access;
mod contain;
mod front;
pub mod gate;
pub mod limit;
mod perm;
pub mod portmap;
mod upstream;
pub mod vfs;
mod xdr_check;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nfs3_server::tcp::NFSStreamServer;
use tm_storage::{FileSystem, FsError, Store, DEFAULT_SHARE};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use access::{Access, Cidr};
pub use contain::{in_request, panics};
pub use gate::{Gate, ShareGrant};
pub use vfs::Vfs;

/// Default NFS port.
pub const DEFAULT_PORT: u16 = 2049;
/// Export prefix: shares are mounted as `/shares/<name>`.
pub const EXPORT_ROOT: &str = "shares";
/// Buffered writes older than this are flushed in the background.
const IDLE_FLUSH: Duration = Duration::from_secs(1);

/// Everything that can go wrong starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Socket I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The object store refused or failed.
    #[error("storage: {0}")]
    Storage(#[from] FsError),
    /// A network in the allow list does not parse.
    #[error("not a network (want ADDR/PREFIX): {0}")]
    BadCidr(String),
    /// Not one of `copy`, `sendfile`, `auto`.
    #[error("READ send mode must be copy, sendfile or auto: {0}")]
    BadReadSend(String),
    /// A blocking task could not be joined.
    #[error("internal task failed")]
    Join,
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct NfsConfig {
    /// Where clients connect (NFS and MOUNT on the same port).
    pub listen: SocketAddr,
    /// Who may mount besides loopback (the mesh CIDR).
    pub allow: Vec<Cidr>,
    /// Whether loopback clients may mount (true in production: the coordinator's own host).
    pub allow_loopback: bool,
    /// How READ replies carry file data (default [`ReadSend::Auto`]).
    pub read_send: ReadSend,
    /// After replying to a client that sent its previous call within this long of the reply
    /// before, watch its socket for this long before going to sleep (default
    /// [`BUSY_POLL`]; zero: never).
    pub busy_poll: std::time::Duration,
    /// Most calls of one connection in flight at once (spawned or forwarded, not yet
    /// answered); beyond it the connection is not read (back-pressure). Default
    /// [`limit::MAX_IN_FLIGHT_PER_CONN`].
    pub max_in_flight_per_conn: usize,
    /// Most calls of all connections in flight at once. Default [`limit::MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// Who may mount, read and write which share (on a mesh: the policy); `None`: every
    /// client the source check admits may do everything.
    pub gate: Option<Arc<dyn gate::Gate>>,
    /// A client that sends nothing for this long is disconnected. Default
    /// [`limit::IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// A client that takes longer than this to send one RPC record (from its first byte) is
    /// disconnected. Default [`limit::RECORD_TIMEOUT`].
    pub record_timeout: Duration,
    /// A client that takes longer than this to receive one reply (it stopped reading) is
    /// disconnected. Default [`limit::REPLY_TIMEOUT`].
    pub reply_timeout: Duration,
}

/// Default [`NfsConfig::busy_poll`]. A client in a tight loop (libnfs on the same host, a
/// fast LAN) sends its next call some 20-60 us after a reply; waking a sleeping thread costs
/// about as much on a VM. Watching the socket that long instead doubled the stat rate of
/// `bench/nfs/run.sh` (7493-8444 vs 2861-4921 ops/s, 3 rounds each) and left the other
/// figures alone. It costs at most this much CPU per call, and only while the client keeps
/// answering this fast (a remote client's round trip is longer, which turns it off).
pub const BUSY_POLL: std::time::Duration = std::time::Duration::from_micros(60);

/// How READ replies carry file data to the socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadSend {
    /// Read the chunk bytes into memory and write them (`read` + `writev`).
    Copy,
    /// `sendfile(2)` from the chunk files to the socket (no copy through user space).
    Sendfile,
    /// `sendfile` on connections whose TCP MSS is at least [`SENDFILE_MIN_MSS`] (loopback,
    /// jumbo-frame links), copy otherwise. Measured with 1 MiB sequential READs: sendfile
    /// about doubled throughput over loopback, was even over a 64 KiB-MTU veth, and was slower
    /// than copying over a 1500-MTU veth (bench/nfs/run.sh's setup).
    #[default]
    Auto,
}

/// Smallest TCP MSS for which [`ReadSend::Auto`] uses `sendfile`.
pub const SENDFILE_MIN_MSS: u32 = 16 << 10;

impl std::str::FromStr for ReadSend {
    type Err = NfsError;

    fn from_str(s: &str) -> Result<ReadSend, NfsError> {
        match s {
            "copy" => Ok(ReadSend::Copy),
            "sendfile" => Ok(ReadSend::Sendfile),
            "auto" => Ok(ReadSend::Auto),
            _ => Err(NfsError::BadReadSend(s.to_string())),
        }
    }
}

impl NfsConfig {
    /// Listen on `listen`, allow loopback and the networks in `allow`.
    pub fn new(listen: SocketAddr, allow: Vec<Cidr>) -> NfsConfig {
        NfsConfig {
            listen,
            allow,
            allow_loopback: true,
            read_send: ReadSend::Auto,
            busy_poll: BUSY_POLL,
            max_in_flight_per_conn: limit::MAX_IN_FLIGHT_PER_CONN,
            max_in_flight: limit::MAX_IN_FLIGHT,
            gate: None,
            idle_timeout: limit::IDLE_TIMEOUT,
            record_timeout: limit::RECORD_TIMEOUT,
            reply_timeout: limit::REPLY_TIMEOUT,
        }
    }
}

/// A bound NFS server.
pub struct NfsServer {
    listener: TcpListener,
    front: Arc<front::Front>,
    vfs: Vfs,
}

impl std::fmt::Debug for NfsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NfsServer")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

fn random_verf() -> [u8; 8] {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = t.to_le_bytes();
    }
    b
}

impl NfsServer {
    /// Ensure the `default` share exists, open the file-system view and bind `cfg.listen`.
    pub async fn bind(store: Store, cfg: NfsConfig) -> Result<NfsServer, NfsError> {
        let vfs = tokio::task::spawn_blocking(move || -> Result<Vfs, FsError> {
            store.ensure_share(DEFAULT_SHARE)?;
            Vfs::new(FileSystem::new(store)?)
        })
        .await
        .map_err(|_| NfsError::Join)??;
        let generation = vfs.fs().generation();
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| NfsError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let port = listener.local_addr()?.port();
        let upstream = Arc::new(
            NFSStreamServer::new(vfs.clone(), generation, EXPORT_ROOT, port)
                .with_call_guard(upstream::call_guard()),
        );
        let front = Arc::new(front::Front {
            access: Access {
                allow: cfg.allow,
                loopback: cfg.allow_loopback,
            },
            upstream,
            vfs: vfs.clone(),
            verf: random_verf(),
            read_send: cfg.read_send,
            busy_poll: cfg.busy_poll,
            slots: limit::Slots::new(cfg.max_in_flight, cfg.max_in_flight_per_conn),
            gate: cfg.gate,
            shares: gate::ShareCache::default(),
            squash: perm::SquashCache::default(),
            idle_timeout: cfg.idle_timeout,
            record_timeout: cfg.record_timeout,
            reply_timeout: cfg.reply_timeout,
        });
        Ok(NfsServer {
            listener,
            front,
            vfs,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, NfsError> {
        Ok(self.listener.local_addr()?)
    }

    /// The file-system view being served.
    pub fn vfs(&self) -> &Vfs {
        &self.vfs
    }

    /// Serve until `shutdown` completes; then close every connection and flush buffered writes.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), NfsError> {
        let NfsServer {
            listener,
            front,
            vfs,
        } = self;
        let flusher = {
            let vfs = vfs.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    vfs.flush_idle(IDLE_FLUSH).await;
                }
            })
        };
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                r = listener.accept() => match r {
                    Ok((sock, peer)) => {
                        conns.spawn(front.clone().connection(sock, peer));
                    }
                    Err(e) => {
                        tracing::warn!("nfs: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        };
        conns.abort_all();
        while conns.join_next().await.is_some() {}
        flusher.abort();
        let _ = flusher.await;
        vfs.flush_idle(Duration::ZERO).await;
        result
    }
}

/// Entry points for the fuzz targets in `fuzz/` (not a stable API; hidden from the docs).
#[doc(hidden)]
pub mod fuzzing {
    use std::future::Future;
    use std::io::Cursor;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use nfs3_server::nfs3_types::nfs3::{createhow3, sattr3};
    use nfs3_server::nfs3_types::xdr_codec::Unpack;

    use crate::front;

    /// What the front makes of one call record.
    #[derive(Debug, Default)]
    pub struct Parsed {
        /// `(xid, prog, vers, proc, args offset)` of an RPC call.
        pub call: Option<(u32, u32, u32, u32, usize)>,
        /// The answer to a refused source.
        pub refusal: Option<Vec<u8>>,
        /// The file handle (inode) at the arguments, and the offset after it.
        pub handle: Option<(u64, usize)>,
        /// A diropargs3 at the arguments: `(dir inode, name length, offset after)`.
        pub dirop: Option<(u64, usize, usize)>,
        /// Whether sattr3 (MKDIR) and createhow3 (CREATE) decode after the dirop.
        pub sattr: bool,
        pub createhow: bool,
    }

    /// Splits `raw` into RPC records (record marking, as read from the socket) and parses
    /// each the way the front does before serving or forwarding it. Stops at the first
    /// framing error (returned).
    pub fn records(raw: &[u8]) -> (Vec<Parsed>, Option<String>) {
        let mut input = raw;
        let mut out = Vec::new();
        loop {
            let next = {
                let fut = front::read_record(&mut input);
                match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
                    Poll::Ready(r) => r,
                    Poll::Pending => return (out, Some("waited".into())),
                }
            };
            match next {
                Ok(Some(rec)) => out.push(call(&rec)),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }

    /// Parses one record (without its record mark).
    pub fn call(rec: &[u8]) -> Parsed {
        let mut p = Parsed::default();
        let Some(c) = front::parse_call(rec) else {
            return p;
        };
        assert!(c.args <= rec.len());
        p.call = Some((c.xid, c.prog, c.vers, c.proc_, c.args));
        p.refusal = Some(front::refuse(&c));
        p.handle = front::handle_at(rec, c.args);
        if let Some((dir, name, at)) = front::dirop_at(rec, c.args) {
            p.dirop = Some((dir, name.len(), at));
            if let Some(tail) = rec.get(at..) {
                p.sattr = sattr3::unpack(&mut Cursor::new(tail)).is_ok();
                p.createhow = createhow3::unpack(&mut Cursor::new(tail)).is_ok();
            }
        }
        p
    }
}
