//! The RPC front: the socket clients connect to. It sees each call before `nfs3_server` does.
//!
//! Per connection it knows the client address, so it (1) refuses sources outside the allowed
//! networks: `MNT` gets `MNT3ERR_ACCES`, every other call except NULL `AUTH_TOOWEAK`, and no byte
//! reaches the server; (2) answers `MKNOD`/`LINK` with `NFS3ERR_NOTSUPP` (the library would send
//! `PROC_UNAVAIL`); (3) passes `MKDIR` attributes and the REMOVE/RMDIR distinction to [`Vfs`]
//! (the library's trait drops them); (4) re-bases `READDIR` cookie verifiers on the directory's
//! current state so cookies keep working while the directory changes; (5) puts a per-boot write
//! verifier in WRITE/COMMIT replies (the library would send the handle generation, which we keep
//! across restarts) and real quota/usage figures in FSSTAT replies; (6) serves the hot
//! procedures READ, WRITE, GETATTR and LOOKUP itself through the same [`Vfs`] (no loopback hop,
//! fewer copies; WRITEs in arrival order; READ data goes from the chunk files to the socket by
//! `sendfile(2)` on connections with a large MSS, see [`crate::ReadSend`] and
//! [`io::write_read_reply`]). Everything else is forwarded byte for byte to the
//! library over an in-process pipe (`upstream.rs`; no socket other processes could reach).

mod fast;
mod io;
mod rpc;

use std::collections::HashMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use nfs3_server::nfs3_types::nfs3::sattr3;
use nfs3_server::nfs3_types::xdr_codec::Unpack;
use nfs3_server::vfs::{FileHandleU64, NfsReadFileSystem};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::access::Access;
use crate::vfs::{set_attrs, Hint, Vfs};
use crate::{ReadSend, SENDFILE_MIN_MSS};

pub(crate) use io::read_record;
use io::*;
use rpc::*;
pub(crate) use rpc::{dirop_at, handle_at, parse_call, refuse, Call};

pub(crate) const PROG_NFS: u32 = 100_003;
const PROG_MOUNT: u32 = 100_005;
const MOUNT_MNT: u32 = 1;
const NFS_WRITE: u32 = 7;
const NFS_MKDIR: u32 = 9;
const NFS_SYMLINK: u32 = 10;
const NFS_MKNOD: u32 = 11;
const NFS_RMDIR: u32 = 13;
const NFS_LINK: u32 = 15;
const NFS_READDIR: u32 = 16;
const NFS_FSSTAT: u32 = 18;
const NFS_COMMIT: u32 = 21;
const NFS3ERR_NOTSUPP: u32 = 10004;
const MNT3ERR_ACCES: u32 = 13;
const AUTH_TOOWEAK: u32 = 5;
/// Largest RPC record accepted (a 1 MiB WRITE plus headers).
const MAX_RECORD: usize = (1 << 20) + (64 << 10);

/// Shared by all connections.
pub(crate) struct Front {
    pub access: Access,
    /// The library, served over one in-process pipe per client connection.
    pub upstream: Arc<crate::upstream::Library>,
    pub vfs: Vfs,
    /// Write verifier of this process (random per start).
    pub verf: [u8; 8],
    /// How READ replies carry file data.
    pub read_send: ReadSend,
    /// See [`crate::NfsConfig::busy_poll`].
    pub busy_poll: std::time::Duration,
    /// Calls in flight, per connection and in the server ([`crate::limit`]).
    pub slots: Arc<crate::limit::Slots>,
    /// Who may do what on which share ([`crate::gate`]); `None`: the source check only.
    pub gate: Option<Arc<dyn crate::gate::Gate>>,
    /// Inode -> share, for the gate.
    pub shares: crate::gate::ShareCache,
    /// Share -> identity squashing ([`crate::perm`]).
    pub squash: crate::perm::SquashCache,
    /// See [`crate::NfsConfig::idle_timeout`] and [`crate::NfsConfig::record_timeout`].
    pub idle_timeout: std::time::Duration,
    pub record_timeout: std::time::Duration,
    /// See [`crate::NfsConfig::reply_timeout`] ([`crate::limit::reply_within`]).
    pub reply_timeout: std::time::Duration,
}

#[derive(Clone, Copy)]
enum Patch {
    Verf,
    Fsstat(u64),
}

impl Front {
    /// Whether the client already sent more (a pipelining client): its slow calls are then
    /// spawned so that the following ones are read meanwhile.
    fn more_waiting(r: &tokio::net::tcp::OwnedReadHalf) -> bool {
        let mut b = [0u8; 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        matches!(rustix::net::recv(r.as_ref(), &mut b, flags), Ok((n, _)) if n > 0)
    }

    /// Serve one client connection until it closes.
    pub(crate) async fn connection(self: Arc<Self>, client: TcpStream, peer: SocketAddr) {
        let _ = client.set_nodelay(true);
        let sendfile = match self.read_send {
            ReadSend::Copy => false,
            ReadSend::Sendfile => true,
            ReadSend::Auto => socket2::SockRef::from(&client)
                .tcp_mss()
                .is_ok_and(|m| m >= SENDFILE_MIN_MSS),
        };
        let allowed = self.access.allows(peer.ip());
        if !allowed {
            tracing::info!(%peer, "nfs: refusing a client outside the mesh");
        }
        let deadline = match std::os::fd::AsFd::as_fd(&client).try_clone_to_owned() {
            Ok(fd) => Arc::new((self.reply_timeout, fd)),
            Err(e) => {
                tracing::warn!(%peer, "nfs: dropping a connection: {e}");
                return;
            }
        };
        let (mut cr, cw) = client.into_split();
        let cw = Arc::new(tokio::sync::Mutex::new(cw));
        let pending: Arc<Mutex<HashMap<u32, Patch>>> = Arc::default();
        // Slots of calls forwarded to the library, freed when their reply comes back.
        let slots = self.slots.conn();
        let forwarded: Arc<Mutex<HashMap<u32, crate::limit::Slot>>> = Arc::default();
        let mut up_w = None;
        let mut pump = None;
        if allowed {
            let (mut ur, uw) = crate::upstream::connect(&self.upstream, peer);
            up_w = Some(uw);
            let (cw, pending, me) = (cw.clone(), pending.clone(), self.clone());
            let forwarded = forwarded.clone();
            let deadline = deadline.clone();
            pump = Some(tokio::spawn(async move {
                while let Ok(Some(mut rec)) = read_record(&mut ur).await {
                    let xid = be32(&rec, 0);
                    let patch = xid.and_then(|xid| {
                        pending
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&xid)
                    });
                    let slot = xid.and_then(|xid| {
                        forwarded
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&xid)
                    });
                    if let Some(p) = patch {
                        me.patch_reply(&mut rec, p);
                    }
                    if reply_record(&cw, &rec, peer, &deadline).await.is_err() {
                        break;
                    }
                    drop(slot);
                }
                let _ = cw.lock().await.shutdown().await;
            }));
        }
        let mut seq = fast::Sequential::default();
        let mut conn_gate = crate::gate::ConnGate::new(peer.ip());
        // Busy polling (`NfsConfig::busy_poll`): when the last reply was sent and how soon
        // the client's next call followed it.
        let mut sent_at: Option<std::time::Instant> = None;
        let mut last_gap = std::time::Duration::MAX;
        let (idle, record) = (self.idle_timeout, self.record_timeout);
        while let Ok(Some(mut rec)) = crate::limit::next_record(&mut cr, idle, record).await {
            if let Some(t) = sent_at.take() {
                last_gap = t.elapsed();
            }
            let Some(call) = parse_call(&rec) else {
                break;
            };
            if let Some(reply) = crate::xdr_check::refusal(&mut rec, &call) {
                if reply_record(&cw, &reply, peer, &deadline).await.is_err() {
                    break;
                }
                continue;
            }
            if let (Some(g), true) = (&self.gate, up_w.is_some()) {
                let refusal = conn_gate
                    .check(g.as_ref(), &self.shares, &self.vfs, &call, &rec)
                    .await;
                if let Some(reply) = refusal {
                    if reply_record(&cw, &reply, peer, &deadline).await.is_err() {
                        break;
                    }
                    continue;
                }
            }
            if up_w.is_some() {
                if let Some(reply) = crate::perm::check(&self, &call, &mut rec).await {
                    if write_record(&mut *cw.lock().await, &reply).await.is_err() {
                        break;
                    }
                    continue;
                }
            }
            if up_w.is_some() && fast::handles(&call) {
                // Hot procedures are served here without the library hop. WRITEs run in
                // arrival order (overlapping writes must land in order; appending to the
                // buffer is quick, and a full buffer applies back-pressure to this client), as
                // do GETATTR and LOOKUP (quick); READ, CREATE and COMMIT run concurrently.
                if fast::ordered(&call) || !Self::more_waiting(&cr) {
                    // Also READ, CREATE and COMMIT when the client has sent nothing else: a
                    // spawned task would cost a thread wake-up per call on an idle machine,
                    // and there is nothing to overlap it with.
                    let reply = if !sendfile && fast::is_read(&call) {
                        contained(&call, fast::read_in_order(&self, &call, &rec, &mut seq)).await
                    } else {
                        contained(&call, fast::serve(&self, &call, &rec, sendfile)).await
                    };
                    if send_reply(&cw, reply, peer, &deadline).await.is_err() {
                        break;
                    }
                    seq.read_ahead(&self);
                    if last_gap < self.busy_poll {
                        // A client in a tight loop: its next call is due within the budget,
                        // sooner than a sleeping thread would wake for it.
                        let t = std::time::Instant::now();
                        while t.elapsed() < self.busy_poll && !Self::more_waiting(&cr) {
                            std::hint::spin_loop();
                        }
                    }
                    sent_at = Some(std::time::Instant::now());
                } else {
                    // Waiting for a slot stops reading this client (back-pressure).
                    let slot = slots.acquire().await;
                    let (me, cw, deadline) = (self.clone(), cw.clone(), deadline.clone());
                    tokio::spawn(async move {
                        let reply = contained(&call, fast::serve(&me, &call, &rec, sendfile)).await;
                        let _ = send_reply(&cw, reply, peer, &deadline).await;
                        drop(slot);
                    });
                }
                continue;
            }
            let local = match &mut up_w {
                None => Some(refuse(&call)),
                Some(_) => self.inspect(&call, &mut rec, &pending).await,
            };
            let r = match (local, &mut up_w) {
                (Some(reply), _) => reply_record(&cw, &reply, peer, &deadline).await,
                (None, Some(uw)) => {
                    let slot = slots.acquire().await;
                    forwarded
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(call.xid, slot);
                    write_record(uw, &rec).await
                }
                (None, None) => Ok(()),
            };
            if r.is_err() {
                break;
            }
        }
        if let Some(mut uw) = up_w {
            let _ = uw.shutdown().await;
        }
        if let Some(p) = pump {
            let _ = p.await;
        }
    }

    /// Look at an allowed call; `Some(reply)` answers it here instead of forwarding.
    async fn inspect(
        &self,
        call: &Call,
        rec: &mut [u8],
        pending: &Mutex<HashMap<u32, Patch>>,
    ) -> Option<Vec<u8>> {
        if call.prog != PROG_NFS || call.vers != 3 {
            return None;
        }
        let remember = |p: Patch| {
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(call.xid, p);
        };
        match call.proc_ {
            NFS_MKNOD => Some(accepted(call.xid, &[NFS3ERR_NOTSUPP, 0, 0])),
            NFS_LINK => Some(accepted(call.xid, &[NFS3ERR_NOTSUPP, 0, 0, 0])),
            NFS_WRITE | NFS_COMMIT => {
                remember(Patch::Verf);
                None
            }
            NFS_FSSTAT => {
                if let Some((ino, _)) = handle_at(rec, call.args) {
                    remember(Patch::Fsstat(ino));
                }
                None
            }
            NFS_MKDIR => {
                if let Some((dir, name, at)) = dirop_at(rec, call.args) {
                    let mut c = Cursor::new(&rec[at..]);
                    if let Ok((sa, _)) = sattr3::unpack(&mut c) {
                        let mut sa = set_attrs(&sa);
                        crate::perm::own(&mut sa, rec, self.vfs.fs(), dir);
                        self.vfs.hint(dir, name, Hint::Mkdir(sa));
                    }
                }
                None
            }
            NFS_SYMLINK => {
                if let Some((dir, name, _)) = dirop_at(rec, call.args) {
                    let mut sa = tm_storage::SetAttrs::default();
                    crate::perm::own(&mut sa, rec, self.vfs.fs(), dir);
                    self.vfs.hint(dir, name, Hint::Owner(sa.uid, sa.gid));
                }
                None
            }
            NFS_RMDIR => {
                if let Some((dir, name, _)) = dirop_at(rec, call.args) {
                    self.vfs.hint(dir, name, Hint::Rmdir);
                }
                None
            }
            NFS_READDIR => {
                let (dir, at) = handle_at(rec, call.args)?;
                let cookie_at = at;
                let verf_at = at + 8;
                let cookie = rec.get(cookie_at..cookie_at + 8)?;
                let verf = rec.get(verf_at..verf_at + 8)?;
                if cookie.iter().any(|b| *b != 0) && verf.iter().any(|b| *b != 0) {
                    if let Ok(a) = self.vfs.getattr(&FileHandleU64::new(dir)).await {
                        let v = (u64::from(a.mtime.seconds) << 32) | u64::from(a.mtime.nseconds);
                        rec[verf_at..verf_at + 8].copy_from_slice(&v.to_be_bytes());
                    }
                }
                None
            }
            _ => None,
        }
    }

    fn patch_reply(&self, rec: &mut [u8], p: Patch) {
        let Some(res) = reply_result(rec) else {
            return;
        };
        if be32(rec, res) != Some(0) {
            return;
        }
        let n = rec.len();
        match p {
            Patch::Verf if n >= res + 12 => rec[n - 8..].copy_from_slice(&self.verf),
            Patch::Fsstat(ino) if n >= res + 4 + 4 + 52 => {
                let Ok(st) = self.vfs.fs().fsstat(ino) else {
                    return;
                };
                let files_total = st.files + (1 << 32);
                let words = [
                    st.total_bytes,
                    st.free_bytes,
                    st.free_bytes,
                    files_total,
                    1 << 32,
                    1 << 32,
                ];
                let mut at = n - 52;
                for w in words {
                    rec[at..at + 8].copy_from_slice(&w.to_be_bytes());
                    at += 8;
                }
                rec[n - 4..].copy_from_slice(&0u32.to_be_bytes());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(prog: u32, proc_: u32, cred_len: u32) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [7u32, 0, 2, prog, 3, proc_, 1, cred_len] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend(std::iter::repeat_n(0u8, pad4(cred_len as usize)));
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        v.extend_from_slice(&[1, 2, 3, 4]);
        v
    }

    #[test]
    fn parses_call_header_and_refuses_mount() {
        let rec = call(PROG_MOUNT, MOUNT_MNT, 5);
        let c = parse_call(&rec).expect("call");
        assert_eq!((c.xid, c.prog, c.proc_), (7, PROG_MOUNT, MOUNT_MNT));
        assert_eq!(&rec[c.args..], &[1, 2, 3, 4]);
        let r = refuse(&c);
        assert_eq!(be32(&r, 0), Some(7));
        assert_eq!(
            reply_result(&r).and_then(|at| be32(&r, at)),
            Some(MNT3ERR_ACCES)
        );
        let n = refuse(&parse_call(&call(PROG_NFS, 1, 0)).expect("call"));
        assert_eq!(be32(&n, 8), Some(1), "NFS calls from outside are denied");
        assert!(parse_call(&rec[..30]).is_none());
    }
}
