//! Per-call authorisation by share: MOUNT and every NFS procedure ask the [`Gate`] (on a mesh:
//! the compiled policy, keyed by the member whose mesh address the client connects from) what
//! the client may do on the share the call names, before anything is served or forwarded.
//!
//! Cost: a connection keeps the gate's answers per share and asks again only when
//! [`Gate::generation`] moves (a policy, tag or membership change), so a change reaches
//! established mounts at their next call and an unchanged policy costs one atomic load per
//! call. The share of a file handle comes from the engine once per inode and is cached.
//!
//! Refusals: MOUNT gets `MNT3ERR_ACCES`; an NFS procedure `NFS3ERR_ACCES` with the empty
//! attributes of its failure arm (RFC 1813), so clients report "permission denied".

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::front::{handle_at, Call};

/// What a caller may do on one share, as the gate decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareGrant {
    /// MOUNT (`Err`: the one-line reason).
    pub mount: Result<(), String>,
    /// Reading procedures.
    pub read: Result<(), String>,
    /// Modifying procedures.
    pub write: Result<(), String>,
}

impl ShareGrant {
    /// Everything allowed.
    pub fn all() -> ShareGrant {
        ShareGrant {
            mount: Ok(()),
            read: Ok(()),
            write: Ok(()),
        }
    }
}

/// The authority NFS asks (implemented by the daemon over the coordinator's policy).
pub trait Gate: Send + Sync + std::fmt::Debug {
    /// Changes whenever any answer of [`Gate::grant`] may have changed.
    fn generation(&self) -> u64;
    /// What the client at `client` may do on `share`.
    fn grant(&self, client: IpAddr, share: &str) -> ShareGrant;
}

const PROG_NFS: u32 = 100_003;
const PROG_MOUNT: u32 = 100_005;
const MOUNT_MNT: u32 = 1;
const MNT3ERR_ACCES: u32 = 13;
const NFS3ERR_ACCES: u32 = 13;

/// How an NFS procedure uses its share, and how many empty attribute words its failure arm
/// carries (`post_op_attr` = 1, `wcc_data` = 2).
fn class(proc_: u32) -> Option<(bool, usize)> {
    Some(match proc_ {
        1 => (false, 0),                                      // GETATTR
        3 | 4 | 5 | 6 | 16 | 17 | 18 | 19 | 20 => (false, 1), // LOOKUP ACCESS READLINK READ READDIR(PLUS) FS*
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 13 | 21 => (true, 2), // SETATTR WRITE CREATE MKDIR SYMLINK MKNOD REMOVE RMDIR COMMIT
        14 => (true, 4),                                     // RENAME: two wcc_data
        15 => (true, 3),                                     // LINK: post_op_attr + wcc_data
        _ => return None,
    })
}

/// Empty attribute words of an NFSv3 procedure's failure arm.
pub(crate) fn failure_words(proc_: u32) -> Option<usize> {
    class(proc_).map(|(_, n)| n)
}

fn reply(xid: u32, words: &[u32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + words.len() * 4);
    for w in [xid, 1, 0, 0, 0, 0].iter().chain(words) {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

/// The share a MOUNT path names (`/shares/<name>[/...]`).
fn mount_share(rec: &[u8], call: &Call) -> Option<String> {
    let at = call.args;
    let len = u32::from_be_bytes(rec.get(at..at + 4)?.try_into().ok()?) as usize;
    let path = std::str::from_utf8(rec.get(at + 4..at + 4 + len)?).ok()?;
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    if parts.next()? != crate::EXPORT_ROOT {
        return None;
    }
    parts.next().map(str::to_owned)
}

/// One connection's view of the gate: cached answers per share, valid for one generation.
pub(crate) struct ConnGate {
    client: IpAddr,
    generation: u64,
    grants: HashMap<String, ShareGrant>,
}

/// Inode -> share, shared by all connections (an inode never changes share).
#[derive(Default)]
pub(crate) struct ShareCache(Mutex<HashMap<u64, String>>);

impl ShareCache {
    fn get(&self, ino: u64) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .cloned()
    }

    /// The share of inode `ino` (`None`: stale or unknown).
    pub(crate) async fn share_of(&self, vfs: &crate::Vfs, ino: u64) -> Option<String> {
        if let Some(s) = self.get(ino) {
            return Some(s);
        }
        let fs = vfs.fs().clone();
        let (s, _) = tokio::task::spawn_blocking(move || fs.share_of(ino))
            .await
            .ok()?
            .ok()?;
        self.put(ino, s.clone());
        Some(s)
    }

    fn put(&self, ino: u64, share: String) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= 1 << 16 {
            m.clear();
        }
        m.insert(ino, share);
    }
}

impl ConnGate {
    pub(crate) fn new(client: IpAddr) -> ConnGate {
        ConnGate {
            client,
            generation: u64::MAX,
            grants: HashMap::new(),
        }
    }

    fn grant(&mut self, gate: &dyn Gate, share: &str) -> &ShareGrant {
        let g = gate.generation();
        if g != self.generation {
            self.grants.clear();
            self.generation = g;
        }
        if !self.grants.contains_key(share) {
            let grant = gate.grant(self.client, share);
            self.grants.insert(share.to_owned(), grant);
        }
        &self.grants[share]
    }

    /// `Some(reply)` refuses the call; `None` lets it through. Calls whose share cannot be
    /// told (a stale or foreign handle, NULL, other programs) pass: the server answers them
    /// (stale handles with `NFS3ERR_STALE`), and they touch no share's data.
    pub(crate) async fn check(
        &mut self,
        gate: &dyn Gate,
        shares: &ShareCache,
        vfs: &crate::Vfs,
        call: &Call,
        rec: &[u8],
    ) -> Option<Vec<u8>> {
        if call.proc_ == 0 {
            return None;
        }
        if call.prog == PROG_MOUNT && call.proc_ == MOUNT_MNT {
            let share = mount_share(rec, call)?;
            let client = self.client;
            return match &self.grant(gate, &share).mount {
                Ok(()) => None,
                Err(why) => {
                    tracing::info!(%client, share, "nfs: mount refused: {why}");
                    Some(reply(call.xid, &[MNT3ERR_ACCES]))
                }
            };
        }
        if call.prog != PROG_NFS || call.vers != 3 {
            return None;
        }
        let (write, attrs) = class(call.proc_)?;
        let (ino, _) = handle_at(rec, call.args)?;
        let share = shares.share_of(vfs, ino).await?;
        let client = self.client;
        let g = self.grant(gate, &share);
        let verdict = if write { &g.write } else { &g.read };
        match verdict {
            Ok(()) => None,
            Err(why) => {
                tracing::debug!(%client, share, proc_ = call.proc_, "nfs: refused: {why}");
                let mut words = vec![NFS3ERR_ACCES];
                words.resize(1 + attrs, 0);
                Some(reply(call.xid, &words))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_name_their_share() {
        let mut rec = vec![0u8; 40];
        let path = b"/shares/default/sub";
        rec.extend_from_slice(&(path.len() as u32).to_be_bytes());
        rec.extend_from_slice(path);
        let call = Call {
            xid: 1,
            prog: PROG_MOUNT,
            vers: 3,
            proc_: MOUNT_MNT,
            args: 40,
        };
        assert_eq!(mount_share(&rec, &call).as_deref(), Some("default"));
        rec.truncate(44 + 3);
        assert_eq!(mount_share(&rec, &call), None, "truncated path");
    }

    #[test]
    fn every_nfs3_procedure_has_a_class() {
        for p in 1..=21 {
            assert!(class(p).is_some(), "procedure {p}");
        }
        assert!(class(22).is_none());
        assert_eq!(class(7), Some((true, 2)));
        assert_eq!(class(6), Some((false, 1)));
    }
}
