//! Length checks of every call before it is served or forwarded to the `nfs3_server` library.
//!
//! The library's XDR decoder (`nfs3_types`) allocates what a length field announces before it
//! reads the bytes (`vec![0; len]` for opaques and strings, `Vec::with_capacity(n)` for arrays
//! such as the AUTH_UNIX group list): one call announcing a 4 GiB file handle or 2^32 groups
//! asks the allocator for 4 or 16 GiB, which aborts the node where that much address space or
//! memory is not available. This walker reads the credential and the arguments of each call
//! the library decodes, up to the last variable-length field, and checks every length against
//! the bytes the record actually holds (records are at most `front::MAX_RECORD`), so nothing
//! the library allocates for a call is larger than the call. It also caps the byte counts of
//! READDIR/READDIRPLUS (the size of the reply the library builds) at [`MAX_DIR_REPLY`].
//!
//! A credential that does not fit is answered `MSG_DENIED`/`AUTH_BADCRED`; arguments that do
//! not fit, `GARBAGE_ARGS` (RFC 5531), the answers the library gives to a record that does
//! not decode.

use crate::front::Call;

const PROG_NFS: u32 = 100_003;
const PROG_MOUNT: u32 = 100_005;
const AUTH_UNIX: u32 = 1;
/// RFC 5531: credential and verifier bodies are at most 400 bytes.
const MAX_AUTH_BYTES: usize = 400;
/// RFC 5531 `authsys_parms`: machine name at most 255 bytes, at most 16 groups.
const MAX_MACHINE_NAME: usize = 255;
const MAX_GIDS: usize = 16;
/// Largest READDIR `count` / READDIRPLUS `dircount` and `maxcount` passed to the library (the
/// reply it builds is at most this large); larger requests are lowered to it, which RFC 1813
/// allows (the server may return fewer entries than fit).
pub(crate) const MAX_DIR_REPLY: u32 = 1 << 20;

const GARBAGE_ARGS: u32 = 4;
const MSG_DENIED: u32 = 1;
const AUTH_ERROR: u32 = 1;
const AUTH_BADCRED: u32 = 1;

/// What a call needs before it may be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every length fits.
    Fits,
    /// The credential does not fit: `AUTH_BADCRED`.
    BadCred,
    /// The arguments do not fit: `GARBAGE_ARGS`.
    Garbage,
}

/// The reply refusing `call`, or `None` when it may be served (READDIR counts may have been
/// lowered in `rec`).
pub(crate) fn refusal(rec: &mut [u8], call: &Call) -> Option<Vec<u8>> {
    let words: &[u32] = match check(rec, call) {
        Verdict::Fits => return None,
        Verdict::BadCred => &[call.xid, 1, MSG_DENIED, AUTH_ERROR, AUTH_BADCRED],
        Verdict::Garbage => &[call.xid, 1, 0, 0, 0, GARBAGE_ARGS],
    };
    Some(words.iter().flat_map(|w| w.to_be_bytes()).collect())
}

/// Checks the credential and the arguments of `call` (parsed from `rec` by
/// `front::parse_call`, which already checked that the credential and verifier bodies lie
/// inside the record).
pub(crate) fn check(rec: &mut [u8], call: &Call) -> Verdict {
    if !cred_fits(rec) {
        return Verdict::BadCred;
    }
    let mut r = Reader::new(rec, call.args);
    if args_fit(&mut r, call).is_none() {
        return Verdict::Garbage;
    }
    for at in std::mem::take(&mut r.lower) {
        rec[at..at + 4].copy_from_slice(&MAX_DIR_REPLY.to_be_bytes());
    }
    Verdict::Fits
}

/// The credential (at offset 24: flavor, body) and verifier sizes, and an AUTH_UNIX body.
fn cred_fits(rec: &[u8]) -> bool {
    let mut r = Reader::new(rec, 24);
    let Some(flavor) = r.u32() else { return false };
    let Some(len) = r.u32().map(|l| l as usize) else {
        return false;
    };
    if len > MAX_AUTH_BYTES {
        return false;
    }
    let body_at = r.at;
    let Some(body) = rec.get(body_at..body_at + len) else {
        return false;
    };
    let verf_at = body_at + pad4(len);
    let verf_len = Reader::new(rec, verf_at + 4).u32().unwrap_or(u32::MAX);
    if verf_len as usize > MAX_AUTH_BYTES {
        return false;
    }
    if flavor != AUTH_UNIX {
        return true;
    }
    // authsys_parms: stamp, machinename<255>, uid, gid, gids<16>; inside the body.
    let mut b = Reader::new(body, 4);
    b.opaque(MAX_MACHINE_NAME).is_some()
        && b.skip(8).is_some()
        && b.u32()
            .is_some_and(|n| n as usize <= MAX_GIDS && b.skip(4 * n as usize).is_some())
}

/// Walks the arguments up to their last variable-length field.
fn args_fit(r: &mut Reader<'_>, c: &Call) -> Option<()> {
    match (c.prog, c.vers) {
        (PROG_NFS, 3) => nfs3_args(r, c.proc_),
        (PROG_MOUNT, 3) => match c.proc_ {
            // MNT, UMNT: dirpath<1024>.
            1 | 3 => r.opaque(1024).map(drop),
            _ => Some(()),
        },
        // Fixed-size arguments (portmap, 100000), or calls the library refuses before
        // decoding their arguments (other programs and versions).
        _ => Some(()),
    }
}

fn nfs3_args(r: &mut Reader<'_>, proc_: u32) -> Option<()> {
    const ANY: usize = usize::MAX;
    match proc_ {
        // GETATTR, SETATTR, ACCESS, READLINK, READ, COMMIT, FSSTAT, FSINFO, PATHCONF: the
        // handle first, then fixed-size fields.
        1 | 2 | 4 | 5 | 6 | 18 | 19 | 20 | 21 => r.fh(),
        // LOOKUP, CREATE, MKDIR, REMOVE, RMDIR: diropargs3, then fixed-size fields (sattr3,
        // createhow3) or nothing.
        3 | 8 | 9 | 12 | 13 => r.dirop(),
        // WRITE: fh, offset, count, stable, data.
        7 => {
            r.fh()?;
            r.skip(16)?;
            r.opaque(ANY).map(drop)
        }
        // SYMLINK: where, symlinkdata3 (sattr3, nfspath3).
        10 => {
            r.dirop()?;
            r.sattr3()?;
            r.opaque(ANY).map(drop)
        }
        // MKNOD: where, mknoddata3 (answered NFS3ERR_NOTSUPP by the front).
        11 => r.dirop(),
        // RENAME, LINK (LINK: answered by the front): two handles/dirops.
        14 => {
            r.dirop()?;
            r.dirop()
        }
        15 => {
            r.fh()?;
            r.dirop()
        }
        // READDIR: fh, cookie, cookieverf, count; READDIRPLUS: ..., dircount, maxcount.
        16 | 17 => {
            r.fh()?;
            r.skip(16)?;
            let counts = if proc_ == 16 { 1 } else { 2 };
            for _ in 0..counts {
                let at = r.at;
                if r.u32()? > MAX_DIR_REPLY {
                    r.lower.push(at);
                }
            }
            Some(())
        }
        // NULL takes nothing; the library refuses other procedures before decoding.
        _ => Some(()),
    }
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// A cursor over a record; every read is checked against its end.
struct Reader<'a> {
    rec: &'a [u8],
    at: usize,
    /// Offsets of READDIR counts to lower to [`MAX_DIR_REPLY`].
    lower: Vec<usize>,
}

impl<'a> Reader<'a> {
    fn new(rec: &'a [u8], at: usize) -> Self {
        Reader {
            rec,
            at,
            lower: Vec::new(),
        }
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.rec.get(self.at..self.at.checked_add(4)?)?;
        self.at += 4;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        let end = self.at.checked_add(n)?;
        (end <= self.rec.len()).then(|| self.at = end)
    }

    /// A variable-length opaque or string of at most `max` bytes, all in the record.
    fn opaque(&mut self, max: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        if n > max {
            return None;
        }
        self.skip(pad4(n))?;
        Some(n)
    }

    /// nfs_fh3: opaque<NFS3_FHSIZE = 64>.
    fn fh(&mut self) -> Option<()> {
        self.opaque(64).map(drop)
    }

    /// diropargs3: fh, filename3 (a string; its length fits the record).
    fn dirop(&mut self) -> Option<()> {
        self.fh()?;
        self.opaque(usize::MAX).map(drop)
    }

    /// sattr3: six optional fields (mode, uid, gid: 4 bytes; size: 8; atime, mtime: a
    /// three-way switch, the client's time 8 bytes).
    fn sattr3(&mut self) -> Option<()> {
        for size in [4, 4, 4, 8] {
            match self.u32()? {
                0 => {}
                1 => self.skip(size)?,
                _ => return None,
            }
        }
        for _ in 0..2 {
            match self.u32()? {
                0 | 1 => {}
                2 => self.skip(8)?,
                _ => return None,
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests;
