//!
//! READ, WRITE, GETATTR and LOOKUP answered by the front itself (same [`crate::vfs::Vfs`] calls the library

use std::io::Cursor;

use nfs3_server::nfs3_types::nfs3::{createhow3, fattr3, nfsstat3, stable_how};
use nfs3_server::nfs3_types::xdr_codec::{Pack, Unpack};
use nfs3_server::vfs::{FileHandleU64, NfsFileSystem, NfsReadFileSystem};
use tm_storage::{CreateMode, Segment, SetAttrs};

use super::rpc::{be32, pad4, Call};
use super::{Front, PROG_NFS};
use crate::vfs::{blocking, fattr, set_attrs};

const GETATTR: u32 = 1;
const LOOKUP: u32 = 3;
const READ: u32 = 6;
const WRITE: u32 = 7;
const CREATE: u32 = 8;
const COMMIT: u32 = 21;

pub(super) fn is_read(c: &Call) -> bool {
    c.prog == PROG_NFS && c.vers == 3 && c.proc_ == READ
}

/// Served in arrival order on its connection: WRITE (order matters) and the metadata
/// reads that answer from memory in microseconds (a spawned task would cost a thread
/// wake-up per call on an idle machine).
pub(super) fn ordered(c: &Call) -> bool {
    matches!(c.proc_, WRITE | GETATTR | LOOKUP)
}

pub(super) fn handles(c: &Call) -> bool {
    c.prog == PROG_NFS
        && c.vers == 3
        && matches!(c.proc_, GETATTR | LOOKUP | READ | WRITE | CREATE | COMMIT)
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut x = [0u8; 8];
    x.copy_from_slice(s);
    Some(u64::from_be_bytes(x))
}

/// `(inode, offset after the handle)`, or the status the library would answer.
fn handle(front: &Front, rec: &[u8], at: usize) -> Result<(u64, usize), nfsstat3> {
    let len = be32(rec, at).ok_or(nfsstat3::NFS3ERR_BADHANDLE)? as usize;
    let data = rec
        .get(at + 4..at + 4 + len)
        .ok_or(nfsstat3::NFS3ERR_BADHANDLE)?;
    if len != 16 {
        return Err(nfsstat3::NFS3ERR_BADHANDLE);
    }
    let mut g = [0u8; 8];
    g.copy_from_slice(&data[..8]);
    let generation = u64::from_le_bytes(g);
    let ours = front.vfs.fs().generation();
    if generation != ours {
        return Err(if generation < ours {
            nfsstat3::NFS3ERR_STALE
        } else {
            nfsstat3::NFS3ERR_BADHANDLE
        });
    }
    let mut i = [0u8; 8];
    i.copy_from_slice(&data[8..16]);
    Ok((u64::from_ne_bytes(i), at + 4 + pad4(len)))
}

fn fh_bytes(front: &Front, ino: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&16u32.to_be_bytes());
    v.extend_from_slice(&front.vfs.fs().generation().to_le_bytes());
    v.extend_from_slice(&ino.to_ne_bytes());
    v
}

fn head(xid: u32, status: nfsstat3) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    for w in [xid, 1, 0, 0, 0, 0, status as u32] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

fn post_op(v: &mut Vec<u8>, a: Option<&fattr3>) {
    match a {
        Some(a) => {
            v.extend_from_slice(&1u32.to_be_bytes());
            let _ = a.pack(v);
        }
        None => v.extend_from_slice(&0u32.to_be_bytes()),
    }
}

fn u32s(v: &mut Vec<u8>, ws: &[u32]) {
    for w in ws {
        v.extend_from_slice(&w.to_be_bytes());
    }
}

/// A reply record.
pub(super) enum Reply {
    /// In byte parts (concatenated).
    Parts(Vec<Vec<u8>>),
    /// A successful READ: `head` up to and including the opaque data length, then the
    /// data `segs` (the XDR pad is added when sending).
    Read { head: Vec<u8>, segs: Vec<Segment> },
}

/// The reply record; READ data as chunk-file segments when `sendfile`.
pub(super) async fn serve(front: &Front, c: &Call, rec: &[u8], sendfile: bool) -> Reply {
    if c.proc_ == READ {
        return read(front, c, rec, sendfile).await;
    }
    Reply::Parts(serve_parts(front, c, rec).await)
}

/// READ's arguments: `(inode, offset, count)`.
fn read_args(front: &Front, c: &Call, rec: &[u8]) -> Result<(u64, u64, u32), nfsstat3> {
    let (ino, at) = handle(front, rec, c.args)?;
    let off = be64(rec, at).ok_or(nfsstat3::NFS3ERR_INVAL)?;
    let count = be32(rec, at + 8).ok_or(nfsstat3::NFS3ERR_INVAL)?;
    Ok((ino, off, count))
}

/// READ: with `sendfile`, the data as chunk-file segments (errors found while collecting
/// them, a missing or short chunk file, are answered with a status before anything is
/// sent); otherwise read into memory.
async fn read(front: &Front, c: &Call, rec: &[u8], sendfile: bool) -> Reply {
    let vfs = &front.vfs;
    let parsed = read_args(front, c, rec);
    let (ino, off, count) = match parsed {
        Ok(x) => x,
        Err(e) => {
            let mut v = head(c.xid, e);
            post_op(&mut v, None);
            return Reply::Parts(vec![v]);
        }
    };
    if !sendfile {
        return copy_reply(vfs, c, ino, vfs.read_with_attr(ino, off, count).await).await;
    }
    match vfs.read_segments_with_attr(ino, off, count).await {
        Ok((segs, n, eof, attr)) => {
            let mut v = head(c.xid, nfsstat3::NFS3_OK);
            post_op(&mut v, Some(&attr));
            let n = u32::try_from(n).expect("READ_CAP bounds the byte count");
            u32s(&mut v, &[n, u32::from(eof), n]);
            Reply::Read { head: v, segs }
        }
        Err(e) => {
            let mut v = head(c.xid, e);
            let h = FileHandleU64::new(ino);
            post_op(&mut v, vfs.getattr(&h).await.ok().as_ref());
            Reply::Parts(vec![v])
        }
    }
}

/// A READ reply with the data in memory.
async fn copy_reply(
    vfs: &crate::vfs::Vfs,
    c: &Call,
    ino: u64,
    r: Result<(Vec<u8>, bool, fattr3), nfsstat3>,
) -> Reply {
    match r {
        Ok((data, eof, attr)) => {
            let mut v = head(c.xid, nfsstat3::NFS3_OK);
            post_op(&mut v, Some(&attr));
            let n = u32::try_from(data.len()).expect("READ_CAP bounds the byte count");
            u32s(&mut v, &[n, u32::from(eof), n]);
            let pad = vec![0u8; pad4(data.len()) - data.len()];
            Reply::Parts(vec![v, data, pad])
        }
        Err(e) => {
            let mut v = head(c.xid, e);
            let h = FileHandleU64::new(ino);
            post_op(&mut v, vfs.getattr(&h).await.ok().as_ref());
            Reply::Parts(vec![v])
        }
    }
}

/// Per-connection state of a sequential reader (READs served in memory, one at a time).
#[derive(Default)]
pub(super) struct Sequential {
    /// Inode and end of the last READ.
    last: Option<(u64, u64)>,
    /// The range to read ahead once the reply is sent.
    next: Option<(u64, u64, u32)>,
    ahead: Option<tm_storage::ReadAhead>,
}

impl Sequential {
    /// Read the next range (after the reply went out, while the client takes it in).
    pub(super) fn read_ahead(&mut self, front: &Front) {
        if let Some((ino, off, count)) = self.next.take() {
            self.ahead = front.vfs.read_ahead(ino, off, count);
        }
    }
}

/// A READ served in memory for a client with nothing else in flight: answered from the
/// range read ahead when it is this one; a second READ continuing the last one schedules
/// the next range to be read ahead.
pub(super) async fn read_in_order(
    front: &Front,
    c: &Call,
    rec: &[u8],
    seq: &mut Sequential,
) -> Reply {
    let vfs = &front.vfs;
    let ahead = seq.ahead.take();
    seq.next = None;
    let parsed = read_args(front, c, rec);
    let Ok((ino, off, count)) = parsed else {
        return read(front, c, rec, false).await;
    };
    let r = vfs.read_with_attr_ahead(ahead, ino, off, count).await;
    if let Ok((data, eof, _)) = &r {
        let end = off + data.len() as u64;
        if seq.last == Some((ino, off)) && !eof && !data.is_empty() {
            seq.next = Some((ino, end, count));
        }
        seq.last = Some((ino, end));
    }
    copy_reply(vfs, c, ino, r).await
}

/// The reply record of the procedures other than READ, in parts.
async fn serve_parts(front: &Front, c: &Call, rec: &[u8]) -> Vec<Vec<u8>> {
    let vfs = &front.vfs;
    match c.proc_ {
        GETATTR => match handle(front, rec, c.args) {
            Ok((ino, _)) => match vfs.getattr(&FileHandleU64::new(ino)).await {
                Ok(a) => {
                    let mut v = head(c.xid, nfsstat3::NFS3_OK);
                    let _ = a.pack(&mut v);
                    vec![v]
                }
                Err(e) => vec![head(c.xid, e)],
            },
            Err(e) => vec![head(c.xid, e)],
        },
        LOOKUP => {
            let parsed = handle(front, rec, c.args).and_then(|(dir, at)| {
                let n = be32(rec, at).ok_or(nfsstat3::NFS3ERR_INVAL)? as usize;
                let name = rec.get(at + 4..at + 4 + n).ok_or(nfsstat3::NFS3ERR_INVAL)?;
                Ok((dir, name.to_vec()))
            });
            let (dir, name) = match parsed {
                Ok(x) => x,
                Err(e) => {
                    let mut v = head(c.xid, e);
                    post_op(&mut v, None);
                    return vec![v];
                }
            };
            let name = match String::from_utf8(name) {
                Ok(n) => n,
                Err(_) => {
                    let mut v = head(c.xid, nfsstat3::NFS3ERR_INVAL);
                    post_op(&mut v, None);
                    return vec![v];
                }
            };
            match vfs.lookup_with_dir(dir, name).await {
                (Ok(a), dir_attr) => {
                    let mut v = head(c.xid, nfsstat3::NFS3_OK);
                    v.extend_from_slice(&fh_bytes(front, a.ino));
                    post_op(&mut v, Some(&fattr(&a)));
                    post_op(&mut v, dir_attr.as_ref());
                    vec![v]
                }
                (Err(e), dir_attr) => {
                    let mut v = head(c.xid, e);
                    post_op(&mut v, dir_attr.as_ref());
                    vec![v]
                }
            }
        }
        CREATE => create(front, c, rec).await,
        COMMIT => commit(front, c, rec).await,
        _ => {
            // WRITE: fh, offset, count, stable, opaque data
            let parsed = handle(front, rec, c.args).and_then(|(ino, at)| {
                let off = be64(rec, at).ok_or(nfsstat3::NFS3ERR_INVAL)?;
                let count = be32(rec, at + 8).ok_or(nfsstat3::NFS3ERR_INVAL)?;
                let stable = match be32(rec, at + 12).ok_or(nfsstat3::NFS3ERR_INVAL)? {
                    0 => stable_how::UNSTABLE,
                    1 => stable_how::DATA_SYNC,
                    _ => stable_how::FILE_SYNC,
                };
                let n = be32(rec, at + 16).ok_or(nfsstat3::NFS3ERR_INVAL)? as usize;
                rec.get(at + 20..at + 20 + n)
                    .ok_or(nfsstat3::NFS3ERR_INVAL)?;
                if n != count as usize {
                    return Err(nfsstat3::NFS3ERR_INVAL);
                }
                Ok((ino, off, count, stable, at + 20))
            });
            match parsed {
                Ok((ino, off, count, stable, at)) => {
                    let data = &rec[at..at + count as usize];
                    let h = FileHandleU64::new(ino);
                    match vfs.write(&h, off, data, stable).await {
                        Ok((attr, committed)) => {
                            let mut v = head(c.xid, nfsstat3::NFS3_OK);
                            post_op_pre_none(&mut v);
                            post_op(&mut v, Some(&attr));
                            u32s(&mut v, &[count, committed as u32]);
                            v.extend_from_slice(&front.verf);
                            vec![v]
                        }
                        Err(e) => {
                            let mut v = head(c.xid, e);
                            u32s(&mut v, &[0, 0]);
                            vec![v]
                        }
                    }
                }
                Err(e) => {
                    let mut v = head(c.xid, e);
                    u32s(&mut v, &[0, 0]);
                    vec![v]
                }
            }
        }
    }
}

/// CREATE (all three modes; GUARDED and EXCLUSIVE are checked atomically by the engine).
/// Durable before the reply: one group-committed metadata transaction.
async fn create(front: &Front, c: &Call, rec: &[u8]) -> Vec<Vec<u8>> {
    let vfs = &front.vfs;
    let parsed = handle(front, rec, c.args).and_then(|(dir, at)| {
        let n = be32(rec, at).ok_or(nfsstat3::NFS3ERR_INVAL)? as usize;
        let name = rec.get(at + 4..at + 4 + n).ok_or(nfsstat3::NFS3ERR_INVAL)?;
        let name = std::str::from_utf8(name)
            .map_err(|_| nfsstat3::NFS3ERR_INVAL)?
            .to_string();
        let tail = rec.get(at + 4 + pad4(n)..).ok_or(nfsstat3::NFS3ERR_INVAL)?;
        let (how, _) =
            createhow3::unpack(&mut Cursor::new(tail)).map_err(|_| nfsstat3::NFS3ERR_INVAL)?;
        let (mode, sa) = match how {
            createhow3::UNCHECKED(a) => (CreateMode::Unchecked, set_attrs(&a)),
            createhow3::GUARDED(a) => (CreateMode::Guarded, set_attrs(&a)),
            createhow3::EXCLUSIVE(v) => (
                CreateMode::Exclusive(u64::from_be_bytes(v.0)),
                SetAttrs::default(),
            ),
        };
        Ok((dir, name, mode, sa))
    });
    let parsed = parsed.map(|(dir, name, mode, mut sa)| {
        crate::perm::own(&mut sa, rec, vfs.fs(), dir);
        (dir, name, mode, sa)
    });
    let (dir, name, mode, sa) = match parsed {
        Ok(x) => x,
        Err(e) => {
            let mut v = head(c.xid, e);
            u32s(&mut v, &[0, 0]);
            return vec![v];
        }
    };
    // One transaction does the checks, the object, the inode and the directory times, on
    // this thread (no hand-off to the blocking pool); an existing name this mode returns,
    // or a size to set, takes the general path.
    let fs = vfs.fs().clone();
    let (name2, sa2) = (name.clone(), sa.clone());
    let quick = crate::vfs::blocking_here(move || fs.create_quick(dir, &name, mode, &sa)).await;
    let r = match quick {
        Ok(Some((a, d))) => Ok((a, Some(fattr(&d)))),
        Ok(None) => {
            let fs = vfs.fs().clone();
            let r = blocking(move || fs.create(dir, &name2, mode, &sa2)).await;
            let d = vfs.getattr(&FileHandleU64::new(dir)).await.ok();
            r.map(|a| (a, d))
        }
        Err(e) => Err(e),
    };
    let dir_attr = match &r {
        Ok((_, d)) => d.clone(),
        Err(_) => vfs.getattr(&FileHandleU64::new(dir)).await.ok(),
    };
    match r {
        Ok((a, _)) => {
            let mut v = head(c.xid, nfsstat3::NFS3_OK);
            v.extend_from_slice(&1u32.to_be_bytes());
            v.extend_from_slice(&fh_bytes(front, a.ino));
            post_op(&mut v, Some(&fattr(&a)));
            post_op_pre_none(&mut v);
            post_op(&mut v, dir_attr.as_ref());
            vec![v]
        }
        Err(e) => {
            let mut v = head(c.xid, e);
            post_op_pre_none(&mut v);
            post_op(&mut v, dir_attr.as_ref());
            vec![v]
        }
    }
}

/// COMMIT: applies the inode's staged writes durably (answered at once when none are).
async fn commit(front: &Front, c: &Call, rec: &[u8]) -> Vec<Vec<u8>> {
    let vfs = &front.vfs;
    let ino = match handle(front, rec, c.args) {
        Ok((ino, _)) => ino,
        Err(e) => {
            let mut v = head(c.xid, e);
            u32s(&mut v, &[0, 0]);
            return vec![v];
        }
    };
    let status = match vfs.flush(ino).await {
        Ok(()) => nfsstat3::NFS3_OK,
        Err(e) => e,
    };
    let attr = vfs.getattr(&FileHandleU64::new(ino)).await.ok();
    let mut v = head(c.xid, status);
    post_op_pre_none(&mut v);
    post_op(&mut v, attr.as_ref());
    if status == nfsstat3::NFS3_OK {
        v.extend_from_slice(&front.verf);
    }
    vec![v]
}

/// `pre_op_attr` absent (allowed by RFC 1813; clients then use the post-op attributes).
fn post_op_pre_none(v: &mut Vec<u8>) {
    v.extend_from_slice(&0u32.to_be_bytes());
}
