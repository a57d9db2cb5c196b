use super::*;
use crate::front::parse_call;

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// A call with an AUTH_UNIX credential (`gids` groups, announcing `gid_count`) and `args`.
fn call(prog: u32, proc_: u32, gid_count: u32, gids: usize, args: &[u8]) -> Vec<u8> {
    let mut body = words(&[0, 4]);
    body.extend_from_slice(b"host");
    body.extend(words(&[1000, 1000, gid_count]));
    body.extend(std::iter::repeat_n(0u8, 4 * gids));
    let mut v = words(&[9, 0, 2, prog, 3, proc_, AUTH_UNIX, body.len() as u32]);
    v.extend(body);
    v.extend(words(&[0, 0]));
    v.extend_from_slice(args);
    v
}

fn fh() -> Vec<u8> {
    let mut v = words(&[16]);
    v.extend([7u8; 16]);
    v
}

fn verdict(mut rec: Vec<u8>) -> Verdict {
    let c = parse_call(&rec).expect("call");
    check(&mut rec, &c)
}

#[test]
fn credential_lengths() {
    assert_eq!(verdict(call(PROG_NFS, 0, 2, 2, &[])), Verdict::Fits);
    assert_eq!(verdict(call(PROG_NFS, 0, 17, 17, &[])), Verdict::BadCred);
    assert_eq!(
        verdict(call(PROG_NFS, 0, u32::MAX, 2, &[])),
        Verdict::BadCred
    );
    assert_eq!(verdict(call(PROG_NFS, 0, 3, 2, &[])), Verdict::BadCred);
    // Machine name longer than its body.
    let mut rec = call(PROG_NFS, 0, 0, 0, &[]);
    rec[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(verdict(rec), Verdict::BadCred);
}

#[test]
fn argument_lengths() {
    let dirop = |name_len: u32, name: &[u8]| {
        let mut a = fh();
        a.extend(words(&[name_len]));
        a.extend_from_slice(name);
        a
    };
    // REMOVE, MKDIR, RENAME with fitting and oversized names.
    assert_eq!(
        verdict(call(PROG_NFS, 12, 0, 0, &dirop(4, b"abcd"))),
        Verdict::Fits
    );
    assert_eq!(
        verdict(call(PROG_NFS, 12, 0, 0, &dirop(u32::MAX, b"abcd"))),
        Verdict::Garbage
    );
    assert_eq!(
        verdict(call(PROG_NFS, 9, 0, 0, &dirop(5, b"abcd"))),
        Verdict::Garbage
    );
    let mut two = dirop(4, b"abcd");
    two.extend(dirop(0xffff_fff0, b""));
    assert_eq!(verdict(call(PROG_NFS, 14, 0, 0, &two)), Verdict::Garbage);
    // Handles over 64 bytes or past the end.
    assert_eq!(
        verdict(call(PROG_NFS, 18, 0, 0, &words(&[65]))),
        Verdict::Garbage
    );
    assert_eq!(
        verdict(call(PROG_NFS, 2, 0, 0, &words(&[u32::MAX]))),
        Verdict::Garbage
    );
    // SYMLINK: the target path after sattr3.
    let mut sym = dirop(4, b"link");
    sym.extend(words(&[1, 0o777, 0, 0, 0, 2, 1, 2, 0]));
    let mut ok = sym.clone();
    ok.extend(words(&[4]));
    ok.extend_from_slice(b"targ");
    assert_eq!(verdict(call(PROG_NFS, 10, 0, 0, &ok)), Verdict::Fits);
    sym.extend(words(&[0x8000_0000]));
    assert_eq!(verdict(call(PROG_NFS, 10, 0, 0, &sym)), Verdict::Garbage);
    // MNT dirpath.
    let mut mnt = words(&[15]);
    mnt.extend_from_slice(b"/shares/default\0");
    assert_eq!(verdict(call(PROG_MOUNT, 1, 0, 0, &mnt)), Verdict::Fits);
    assert_eq!(
        verdict(call(PROG_MOUNT, 1, 0, 0, &words(&[u32::MAX]))),
        Verdict::Garbage
    );
    // WRITE data longer than the record.
    let mut w = fh();
    w.extend(words(&[0, 0, 4, 0, 8]));
    w.extend_from_slice(b"abcd");
    assert_eq!(verdict(call(PROG_NFS, 7, 0, 0, &w)), Verdict::Garbage);
}

#[test]
fn readdir_counts_are_lowered() {
    let mut a = fh();
    a.extend(words(&[0, 0, 0, 0, u32::MAX, 4096]));
    let mut rec = call(PROG_NFS, 17, 0, 0, &a);
    let c = parse_call(&rec).expect("call");
    assert!(refusal(&mut rec, &c).is_none());
    let n = rec.len();
    assert_eq!(&rec[n - 8..], &words(&[MAX_DIR_REPLY, 4096])[..]);
    let r = refusal(&mut call(PROG_NFS, 16, 0, 0, &fh()), &c).expect("refused");
    assert_eq!(r, words(&[9, 1, 0, 0, 0, GARBAGE_ARGS]));
}
