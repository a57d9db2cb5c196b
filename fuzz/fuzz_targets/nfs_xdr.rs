//! NFS/MOUNT RPC requests through the front's parser: record marking as read from the
//! socket, the call header, the answer to a refused source, and the argument parsers the
//! front applies before serving or forwarding (file handle, diropargs3, sattr3, createhow3).
//! Nothing panics; every offset it reports lies inside the record.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As a record stream, and as one record body (the fuzzer rarely gets marks right).
    let (records, _err) = tm_nfs::fuzzing::records(data);
    for p in &records {
        check(p, usize::MAX);
    }
    let p = tm_nfs::fuzzing::call(data);
    check(&p, data.len());
});

fn check(p: &tm_nfs::fuzzing::Parsed, len: usize) {
    let Some((xid, _prog, _vers, _proc, args)) = p.call else {
        assert!(p.refusal.is_none() && p.handle.is_none());
        return;
    };
    assert!(args <= len);
    let refusal = p.refusal.as_ref().expect("a call gets a refusal");
    assert_eq!(&refusal[..4], &xid.to_be_bytes(), "refusal for another xid");
    if let Some((_, after)) = p.handle {
        assert!(after <= len.saturating_add(3), "handle past the record");
    }
    if let Some((_, name_len, after)) = p.dirop {
        assert!(name_len <= len && after <= len.saturating_add(3));
    }
}
