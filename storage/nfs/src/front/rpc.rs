//! RPC record parsing and the replies the front makes itself (ONC RPC, RFC 5531).

use super::{AUTH_TOOWEAK, MNT3ERR_ACCES, MOUNT_MNT, PROG_MOUNT};

use nfs3_server::vfs::FileHandleU64;

pub(super) fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

pub(super) fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// The parsed header of an RPC call record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Call {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    /// Offset of the procedure arguments.
    pub args: usize,
}

/// Parse an RPC CALL header (None for anything else or a truncated record).
pub(crate) fn parse_call(rec: &[u8]) -> Option<Call> {
    if be32(rec, 4)? != 0 || be32(rec, 8)? != 2 {
        return None;
    }
    let cred_len = be32(rec, 28)? as usize;
    let verf_at = 32usize.checked_add(pad4(cred_len))?;
    let verf_len = be32(rec, verf_at + 4)? as usize;
    let args = (verf_at + 8).checked_add(pad4(verf_len))?;
    if args > rec.len() {
        return None;
    }
    Some(Call {
        xid: be32(rec, 0)?,
        prog: be32(rec, 12)?,
        vers: be32(rec, 16)?,
        proc_: be32(rec, 20)?,
        args,
    })
}

/// `(inode, offset after the handle)` of the nfs_fh3 at `at`.
pub(crate) fn handle_at(rec: &[u8], at: usize) -> Option<(u64, usize)> {
    let len = be32(rec, at)? as usize;
    let data = rec.get(at + 4..at + 4 + len)?;
    if len != 16 {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[8..16]);
    Some((FileHandleU64::from_bytes_ne(b), at + 4 + pad4(len)))
}

trait FromNe {
    fn from_bytes_ne(b: [u8; 8]) -> u64;
}

impl FromNe for FileHandleU64 {
    /// `FileHandleU64` stores the inode in native byte order.
    fn from_bytes_ne(b: [u8; 8]) -> u64 {
        u64::from_ne_bytes(b)
    }
}

/// `(dir inode, name, offset after the name)` of a diropargs3 at `at`.
pub(crate) fn dirop_at(rec: &[u8], at: usize) -> Option<(u64, Vec<u8>, usize)> {
    let (dir, at) = handle_at(rec, at)?;
    let len = be32(rec, at)? as usize;
    let name = rec.get(at + 4..at + 4 + len)?.to_vec();
    Some((dir, name, at + 4 + pad4(len)))
}

pub(super) fn accepted(xid: u32, body: &[u32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + body.len() * 4);
    for w in [xid, 1, 0, 0, 0, 0].iter().chain(body) {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

pub(super) fn denied(xid: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    for w in [xid, 1, 1, 1, AUTH_TOOWEAK] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

/// The local answer to a call from a refused source.
pub(crate) fn refuse(call: &Call) -> Vec<u8> {
    match (call.prog, call.proc_) {
        (_, 0) => accepted(call.xid, &[]),
        (PROG_MOUNT, MOUNT_MNT) => accepted(call.xid, &[MNT3ERR_ACCES]),
        _ => denied(call.xid),
    }
}
/// Offset of the procedure result in an accepted, successful reply.
pub(super) fn reply_result(rec: &[u8]) -> Option<usize> {
    if be32(rec, 4)? != 1 || be32(rec, 8)? != 0 {
        return None;
    }
    let vlen = be32(rec, 16)? as usize;
    let at = 20 + pad4(vlen);
    if be32(rec, at)? != 0 {
        return None;
    }
    Some(at + 4)
}
