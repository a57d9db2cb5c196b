//! POSIX semantics for stock clients: who the caller is (AUTH_SYS), what it may do (permission
//! bits), and who owns what it creates.
//!
//! Every NFS call other than NULL must carry an AUTH_SYS credential: `AUTH_NONE` is answered
//! `MSG_DENIED`/`AUTH_ERROR`/`AUTH_TOOWEAK` and any other flavour `AUTH_BADCRED` (RFC 5531; what
//! Linux knfsd answers). The MOUNT program takes any flavour (its handles are of no use without
//! AUTH_SYS). Then, per call:
//!
//! 1. **Squashing** (per share, like exports(5)): `root_squash` maps uid/gid 0, `all_squash`
//!    every uid/gid, to the share's `anonuid`/`anongid`. The credential is rewritten in place in
//!    the call record, so everything after (the library, the owner of new files) sees only the
//!    squashed identity. Share settings are read at most once a second per share.
//! 2. **Permission bits** of the object(s) the call touches, for that identity, as a local
//!    file system would check them: search (x) on a LOOKUP's directory, write and search on the
//!    directories of CREATE/MKDIR/SYMLINK/REMOVE/RMDIR/RENAME (and the sticky bit), read on
//!    READDIR(PLUS), read or write on READ/WRITE (the owner always may, as knfsd allows, so a
//!    file opened before a `chmod` stays usable), ownership for SETATTR of mode, times and group
//!    (`chown` to another user: root only). Refusals: `NFS3ERR_ACCES` for bits, `NFS3ERR_PERM`
//!    for ownership. uid 0 (unless squashed) may do everything. ACCESS is answered here from
//!    the same rules.
//! 3. **Ownership**: CREATE, MKDIR and SYMLINK make the object the caller's (uid, and gid or the
//!    directory's gid when the directory is setgid); root's explicit uid/gid in the call's
//!    attributes are kept. Stored in the inode (durable); objects written over S3 have uid 0,
//!    gid 0, mode 0644 (directories 0755) until changed over NFS.
//!
//! The check and the operation are separate steps (as in any NFS server that checks before it
//! calls the file system); a concurrent `chmod` between them is not serialised.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nfs3_server::nfs3_types::nfs3::{sattr3, set_atime, set_mtime, Nfs3Option};
use nfs3_server::nfs3_types::xdr_codec::{Pack, Unpack};
use tm_storage::{FileAttr, FileKind, FileSystem, SetAttrs, Squash};

use crate::front::{dirop_at, handle_at, Call, Front};
use crate::vfs::fattr;

const PROG_NFS: u32 = 100_003;
const AUTH_NONE: u32 = 0;
const AUTH_SYS: u32 = 1;
const AUTH_BADCRED: u32 = 1;
const AUTH_TOOWEAK: u32 = 5;
const NFS3ERR_PERM: u32 = 1;
const NFS3ERR_ACCES: u32 = 13;

const SETATTR: u32 = 2;
const LOOKUP: u32 = 3;
const ACCESS: u32 = 4;
const READ: u32 = 6;
const WRITE: u32 = 7;
const CREATE: u32 = 8;
const MKDIR: u32 = 9;
const SYMLINK: u32 = 10;
const REMOVE: u32 = 12;
const RMDIR: u32 = 13;
const RENAME: u32 = 14;
const READDIR: u32 = 16;
const READDIRPLUS: u32 = 17;

const R: u32 = 4;
const W: u32 = 2;
const X: u32 = 1;

/// How long a share's squash setting is used before it is read again.
const SQUASH_TTL: Duration = Duration::from_secs(1);

/// An AUTH_SYS identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cred {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

impl Cred {
    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.gids.contains(&gid)
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Offsets of uid, gid and the group list (count word) of the AUTH_SYS body in a call record.
fn sys_offsets(rec: &[u8]) -> Option<(usize, usize, usize)> {
    // 24: flavor, 28: body length, 32: stamp, 36: machine name.
    let n = be32(rec, 36)? as usize;
    let uid_at = 40usize.checked_add((n + 3) & !3)?;
    be32(rec, uid_at + 8)?;
    Some((uid_at, uid_at + 4, uid_at + 8))
}

/// The caller's AUTH_SYS identity, or the `auth_stat` refusing the call.
pub(crate) fn cred(rec: &[u8]) -> Result<Cred, u32> {
    match be32(rec, 24) {
        Some(AUTH_SYS) => {}
        Some(AUTH_NONE) => return Err(AUTH_TOOWEAK),
        _ => return Err(AUTH_BADCRED),
    }
    let (u, g, l) = sys_offsets(rec).ok_or(AUTH_BADCRED)?;
    let count = be32(rec, l).ok_or(AUTH_BADCRED)? as usize;
    let gids = (0..count.min(16))
        .map(|i| be32(rec, l + 4 + 4 * i).ok_or(AUTH_BADCRED))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Cred {
        uid: be32(rec, u).ok_or(AUTH_BADCRED)?,
        gid: be32(rec, g).ok_or(AUTH_BADCRED)?,
        gids,
    })
}

/// Apply `sq` to the credential in `rec` (in place) and return the resulting identity.
fn squash(rec: &mut [u8], c: Cred, sq: &Squash) -> Cred {
    let Some((u, g, l)) = sys_offsets(rec) else {
        return c;
    };
    let map_u = |x: u32| {
        if sq.all || (sq.root && x == 0) {
            sq.anonuid
        } else {
            x
        }
    };
    let map_g = |x: u32| {
        if sq.all || (sq.root && x == 0) {
            sq.anongid
        } else {
            x
        }
    };
    let out = Cred {
        uid: map_u(c.uid),
        gid: map_g(c.gid),
        gids: c.gids.iter().map(|x| map_g(*x)).collect(),
    };
    rec[u..u + 4].copy_from_slice(&out.uid.to_be_bytes());
    rec[g..g + 4].copy_from_slice(&out.gid.to_be_bytes());
    for (i, x) in out.gids.iter().enumerate() {
        let at = l + 4 + 4 * i;
        rec[at..at + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// Whether `c` has all of `want` (rwx bits) on `a` by its mode. Root has everything, except
/// execute on a file with no execute bit.
fn allowed(a: &FileAttr, c: &Cred, want: u32) -> bool {
    if c.uid == 0 {
        return want & X == 0 || a.kind == FileKind::Directory || a.mode & 0o111 != 0;
    }
    let bits = if a.uid == c.uid {
        a.mode >> 6
    } else if c.in_group(a.gid) {
        a.mode >> 3
    } else {
        a.mode
    } & 7;
    bits & want == want
}

fn owns(a: &FileAttr, c: &Cred) -> bool {
    c.uid == 0 || a.uid == c.uid
}

/// Squash settings per share, re-read after [`SQUASH_TTL`].
#[derive(Default)]
pub(crate) struct SquashCache(Mutex<HashMap<String, (Squash, Instant)>>);

impl SquashCache {
    fn get(&self, fs: &FileSystem, share: &str) -> Squash {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, t)) = m.get(share) {
            if t.elapsed() < SQUASH_TTL {
                return *s;
            }
        }
        let s = fs
            .store()
            .share(share)
            .map(|i| i.squash)
            .unwrap_or_default();
        if m.len() > 4096 {
            m.clear();
        }
        m.insert(share.to_owned(), (s, Instant::now()));
        s
    }
}

fn words(xid: u32, ws: &[u32]) -> Vec<u8> {
    [xid, 1]
        .iter()
        .chain(ws)
        .flat_map(|w| w.to_be_bytes())
        .collect()
}

/// `MSG_DENIED`, `AUTH_ERROR` with `stat`.
fn auth_error(xid: u32, stat: u32) -> Vec<u8> {
    words(xid, &[1, 1, stat])
}

/// An accepted reply with NFS status `st` and the empty failure arm of `proc_`.
fn status(xid: u32, proc_: u32, st: u32) -> Vec<u8> {
    let empty = crate::gate::failure_words(proc_).unwrap_or(0);
    let mut ws = vec![0, 0, 0, 0, st];
    ws.resize(5 + empty, 0);
    words(xid, &ws)
}

/// Checks an NFS call against the caller's identity (after squashing it in `rec`): `Some(reply)`
/// answers the call here (a refusal, or ACCESS), `None` lets it through. Calls whose object
/// cannot be resolved (bad or stale handles) pass: the server answers them.
pub(crate) async fn check(front: &Front, call: &Call, rec: &mut [u8]) -> Option<Vec<u8>> {
    if call.prog != PROG_NFS || call.proc_ == 0 {
        return None;
    }
    let c = match cred(rec) {
        Ok(c) => c,
        Err(stat) => return Some(auth_error(call.xid, stat)),
    };
    if call.vers != 3 || !matches!(call.proc_, SETATTR..=RENAME | READDIR | READDIRPLUS) {
        // GETATTR, READLINK, FSSTAT, FSINFO, PATHCONF and COMMIT use no identity; LINK and
        // MKNOD are not supported.
        return None;
    }
    let (ino, at) = handle_at(rec, call.args)?;
    let fs = front.vfs.fs();
    let share = front.shares.share_of(&front.vfs, ino).await?;
    let c = squash(rec, c, &front.squash.get(fs, &share));
    let refuse = |st| Some(status(call.xid, call.proc_, st));
    let attr = |ino: u64| fs.getattr(ino).ok();
    match call.proc_ {
        ACCESS => {
            let want = be32(rec, at)?;
            let a = attr(ino)?;
            let ro = fs.share_of(ino).map(|(_, ro)| ro).unwrap_or(false);
            let got = access_bits(&a, &c, want, ro);
            let mut v = words(call.xid, &[0, 0, 0, 0, 0, 1]);
            let _ = fattr(&a).pack(&mut v);
            v.extend_from_slice(&got.to_be_bytes());
            Some(v)
        }
        _ if c.uid == 0 => None,
        LOOKUP => (!allowed(&attr(ino)?, &c, X)).then(|| refuse(NFS3ERR_ACCES))?,
        READDIR | READDIRPLUS => (!allowed(&attr(ino)?, &c, R)).then(|| refuse(NFS3ERR_ACCES))?,
        READ => {
            let a = attr(ino)?;
            (!(owns(&a, &c) || allowed(&a, &c, R))).then(|| refuse(NFS3ERR_ACCES))?
        }
        WRITE => {
            let a = attr(ino)?;
            (!(owns(&a, &c) || allowed(&a, &c, W))).then(|| refuse(NFS3ERR_ACCES))?
        }
        CREATE | MKDIR | SYMLINK => {
            (!allowed(&attr(ino)?, &c, W | X)).then(|| refuse(NFS3ERR_ACCES))?
        }
        REMOVE | RMDIR => {
            let (dir, name, _) = dirop_at(rec, call.args)?;
            may_unlink(fs, &c, dir, &name).err().and_then(refuse)
        }
        RENAME => {
            let (from, name, next) = dirop_at(rec, call.args)?;
            let (to, to_name, _) = dirop_at(rec, next)?;
            may_unlink(fs, &c, from, &name)
                .and_then(|()| may_replace(fs, &c, to, &to_name))
                .err()
                .and_then(refuse)
        }
        SETATTR => {
            let (sa, _) = sattr3::unpack(&mut Cursor::new(rec.get(at..)?)).ok()?;
            may_setattr(&attr(ino)?, &c, &sa).err().and_then(refuse)
        }
        _ => None,
    }
}

/// Write and search on `dir`, and the sticky bit's rule for the entry `name`.
fn may_unlink(fs: &FileSystem, c: &Cred, dir: u64, name: &[u8]) -> Result<(), u32> {
    let Ok(d) = fs.getattr(dir) else {
        return Ok(());
    };
    if !allowed(&d, c, W | X) {
        return Err(NFS3ERR_ACCES);
    }
    if d.mode & 0o1000 != 0 && d.uid != c.uid {
        let owner = std::str::from_utf8(name)
            .ok()
            .and_then(|n| fs.lookup_existing(dir, n).ok().flatten())
            .map_or(0, |a| a.uid);
        if owner != c.uid {
            return Err(NFS3ERR_ACCES);
        }
    }
    Ok(())
}

/// A RENAME's target directory: write and search; an existing target under the sticky bit
/// must be the caller's.
fn may_replace(fs: &FileSystem, c: &Cred, dir: u64, name: &[u8]) -> Result<(), u32> {
    let Ok(d) = fs.getattr(dir) else {
        return Ok(());
    };
    if !allowed(&d, c, W | X) {
        return Err(NFS3ERR_ACCES);
    }
    if d.mode & 0o1000 != 0 && d.uid != c.uid {
        let target = std::str::from_utf8(name)
            .ok()
            .and_then(|n| fs.lookup_existing(dir, n).ok().flatten());
        if target.is_some_and(|a| a.uid != c.uid) {
            return Err(NFS3ERR_ACCES);
        }
    }
    Ok(())
}

/// SETATTR as chmod/chown/truncate/utimes would allow it (the caller is not root).
fn may_setattr(a: &FileAttr, c: &Cred, sa: &sattr3) -> Result<(), u32> {
    let owner = a.uid == c.uid;
    if matches!(sa.mode, Nfs3Option::Some(_)) && !owner {
        return Err(NFS3ERR_PERM);
    }
    if let Nfs3Option::Some(u) = sa.uid {
        if u != a.uid || !owner {
            return Err(NFS3ERR_PERM);
        }
    }
    if let Nfs3Option::Some(g) = sa.gid {
        if !owner || (g != a.gid && !c.in_group(g)) {
            return Err(NFS3ERR_PERM);
        }
    }
    if matches!(sa.size, Nfs3Option::Some(_)) && !owner && !allowed(a, c, W) {
        return Err(NFS3ERR_ACCES);
    }
    let client_time = matches!(sa.atime, set_atime::SET_TO_CLIENT_TIME(_))
        || matches!(sa.mtime, set_mtime::SET_TO_CLIENT_TIME(_));
    let server_time = matches!(sa.atime, set_atime::SET_TO_SERVER_TIME)
        || matches!(sa.mtime, set_mtime::SET_TO_SERVER_TIME);
    if client_time && !owner {
        return Err(NFS3ERR_PERM);
    }
    if server_time && !owner && !allowed(a, c, W) {
        return Err(NFS3ERR_ACCES);
    }
    Ok(())
}

/// ACCESS3 bits granted of `want` (RFC 1813: READ 1, LOOKUP 2, MODIFY 4, EXTEND 8, DELETE
/// 0x10, EXECUTE 0x20).
fn access_bits(a: &FileAttr, c: &Cred, want: u32, read_only: bool) -> u32 {
    let dir = a.kind == FileKind::Directory;
    let mut got = 0;
    if allowed(a, c, R) {
        got |= 0x01;
    }
    if dir && allowed(a, c, X) {
        got |= 0x02;
    }
    if !read_only && allowed(a, c, W) {
        got |= 0x04 | 0x08;
        if dir {
            got |= 0x10;
        }
    }
    if !dir && allowed(a, c, X) {
        got |= 0x20;
    }
    got & want
}

/// Sets the owner of an object the call in `rec` creates in `dir`: the caller's uid and gid
/// (the directory's gid when it is setgid); root's explicit values in `sa` are kept.
pub(crate) fn own(sa: &mut SetAttrs, rec: &[u8], fs: &FileSystem, dir: u64) {
    let Ok(c) = cred(rec) else { return };
    if c.uid != 0 || sa.uid.is_none() {
        sa.uid = Some(c.uid);
    }
    if c.uid != 0 || sa.gid.is_none() {
        let parent = fs.getattr(dir).ok().filter(|d| d.mode & 0o2000 != 0);
        sa.gid = Some(parent.map_or(c.gid, |d| d.gid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mode: u32, uid: u32, gid: u32) -> FileAttr {
        FileAttr {
            ino: 5,
            kind: FileKind::File,
            mode,
            uid,
            gid,
            size: 0,
            nlink: 1,
            atime: std::time::SystemTime::UNIX_EPOCH,
            mtime: std::time::SystemTime::UNIX_EPOCH,
            ctime: std::time::SystemTime::UNIX_EPOCH,
            fsid: 1,
        }
    }

    fn who(uid: u32, gid: u32, gids: &[u32]) -> Cred {
        Cred {
            uid,
            gid,
            gids: gids.to_vec(),
        }
    }

    #[test]
    fn owner_group_other_and_root() {
        let f = file(0o640, 1000, 100);
        assert!(allowed(&f, &who(1000, 1, &[]), R | W));
        assert!(allowed(&f, &who(2000, 100, &[]), R));
        assert!(!allowed(&f, &who(2000, 100, &[]), W));
        assert!(
            allowed(&f, &who(2000, 5, &[7, 100]), R),
            "supplementary group"
        );
        assert!(!allowed(&f, &who(2000, 5, &[]), R), "other: nothing");
        assert!(allowed(&f, &who(0, 0, &[]), R | W), "root bypass");
        assert!(
            !allowed(&f, &who(0, 0, &[]), X),
            "root: no x without an x bit"
        );
        // The owner's bits apply to the owner even when the group's are wider.
        let g = file(0o070, 1000, 100);
        assert!(!allowed(&g, &who(1000, 100, &[]), R));
    }

    #[test]
    fn setattr_rules() {
        let f = file(0o644, 1000, 100);
        let sa = sattr3 {
            mode: Nfs3Option::Some(0o600),
            ..Default::default()
        };
        assert_eq!(may_setattr(&f, &who(1000, 1, &[]), &sa), Ok(()));
        assert_eq!(may_setattr(&f, &who(2000, 1, &[]), &sa), Err(NFS3ERR_PERM));
        let sa = sattr3 {
            uid: Nfs3Option::Some(2000),
            ..Default::default()
        };
        assert_eq!(
            may_setattr(&f, &who(1000, 1, &[]), &sa),
            Err(NFS3ERR_PERM),
            "chown: root only"
        );
        let sa = sattr3 {
            gid: Nfs3Option::Some(7),
            ..Default::default()
        };
        assert_eq!(may_setattr(&f, &who(1000, 1, &[7]), &sa), Ok(()));
        assert_eq!(may_setattr(&f, &who(1000, 1, &[]), &sa), Err(NFS3ERR_PERM));
        let sa = sattr3 {
            size: Nfs3Option::Some(0),
            ..Default::default()
        };
        assert_eq!(may_setattr(&f, &who(2000, 1, &[]), &sa), Err(NFS3ERR_ACCES));
    }

    #[test]
    fn access_bits_by_kind() {
        let f = file(0o644, 1000, 100);
        assert_eq!(access_bits(&f, &who(1000, 1, &[]), 0x3f, false), 0x0d);
        assert_eq!(access_bits(&f, &who(1000, 1, &[]), 0x3f, true), 0x01);
        assert_eq!(access_bits(&f, &who(2000, 1, &[]), 0x3f, false), 0x01);
        let mut d = file(0o755, 0, 0);
        d.kind = FileKind::Directory;
        assert_eq!(access_bits(&d, &who(2000, 1, &[]), 0x3f, false), 0x03);
        assert_eq!(access_bits(&d, &who(0, 0, &[]), 0x3f, false), 0x1f);
    }

    fn sys_call(uid: u32, gid: u32, gids: &[u32]) -> Vec<u8> {
        let mut v: Vec<u8> = [1u32, 0, 2, PROG_NFS, 3, 1, AUTH_SYS, 0, 0, 3]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        v.extend_from_slice(b"abc\0");
        for w in [uid, gid, gids.len() as u32].iter().chain(gids) {
            v.extend_from_slice(&w.to_be_bytes());
        }
        let body = (v.len() - 32) as u32;
        v[28..32].copy_from_slice(&body.to_be_bytes());
        v
    }

    #[test]
    fn credentials_and_squashing() {
        let mut rec = sys_call(0, 0, &[0, 10]);
        assert_eq!(cred(&rec), Ok(who(0, 0, &[0, 10])));
        let root = Squash {
            root: true,
            ..Squash::default()
        };
        let c0 = cred(&rec).expect("cred");
        let c = squash(&mut rec, c0, &root);
        assert_eq!(c, who(65534, 65534, &[65534, 10]));
        assert_eq!(cred(&rec), Ok(c), "rewritten in place");
        let mut rec = sys_call(1000, 100, &[]);
        let c0 = cred(&rec).expect("cred");
        let c = squash(&mut rec, c0, &root);
        assert_eq!(c.uid, 1000, "root_squash leaves users alone");
        let all = Squash {
            all: true,
            anonuid: 7,
            anongid: 8,
            ..Squash::default()
        };
        assert_eq!(squash(&mut rec, c, &all), who(7, 8, &[]));
        let mut none = sys_call(0, 0, &[]);
        none[24..28].copy_from_slice(&AUTH_NONE.to_be_bytes());
        assert_eq!(cred(&none), Err(AUTH_TOOWEAK));
        none[24..28].copy_from_slice(&6u32.to_be_bytes());
        assert_eq!(cred(&none), Err(AUTH_BADCRED), "RPCSEC_GSS is not offered");
    }
}
