//! Encryption at rest: SSE-S3 and SSE-C objects, and the option that seals every chunk. Each
//! test reads every file the store wrote (chunk files and the metadata database) and looks
//! for the plaintext.

use std::path::Path;

use tm_storage::{
    customer_key_md5, EncryptionKey, ObjectMeta, SecretKey, StorageError, Store, StoreConfig,
};

const CHUNK: u32 = 64 * 1024;

/// A body of `n` bytes made of a recognisable marker (so any 32-byte window of it is findable).
fn body(marker: &str, n: usize) -> Vec<u8> {
    marker.bytes().cycle().take(n).collect()
}

fn open(dir: &Path, key: Option<[u8; 32]>, all: bool) -> Store {
    let mut c = StoreConfig::new(dir);
    c.chunk_size = CHUNK;
    c.master_key = key.map(SecretKey);
    c.encrypt_all = all;
    let s = Store::open(c).expect("open store");
    if s.bucket("bkt").is_err() {
        s.create_bucket("bkt").expect("bucket");
    }
    s
}

/// Files under `dir` (recursively) holding `needle`.
fn files_with(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                if b.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    hits
}

fn chunk_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.join("chunks")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                n += 1;
            }
        }
    }
    n
}

fn put(s: &Store, key: &str, data: &[u8], enc: Option<&EncryptionKey>) {
    let mut w = s
        .begin_put("bkt", key, ObjectMeta::default())
        .expect("begin");
    if let Some(k) = enc {
        w.encrypt(k).expect("encrypt");
    }
    w.write_all(data).expect("write");
    w.commit().expect("commit");
}

fn read(s: &Store, key: &str, enc: Option<&EncryptionKey>) -> Result<Vec<u8>, StorageError> {
    let r = s.open_object("bkt", key)?;
    r.unlock(enc)?;
    let mut out = vec![0u8; r.size() as usize];
    let n = r.read_at(0, &mut out)?;
    assert_eq!(n, out.len());
    // The other read paths give the same bytes.
    assert_eq!(r.read_vec(0, out.len())?, out);
    let mut seq = Vec::new();
    std::io::Read::read_to_end(&mut r.reader(), &mut seq).expect("sequential read");
    assert_eq!(seq, out);
    Ok(out)
}

const MASTER: [u8; 32] = [7u8; 32];

#[test]
fn sse_s3_chunks_hold_no_plaintext_and_equal_bodies_share_nothing() {
    let d = tempfile::tempdir().expect("tmp");
    let s = open(d.path(), Some(MASTER), false);
    let big = body("SSE-S3-PLAINTEXT-MARKER-0123456789abcdef.", 300_000);
    let small = body("SSE-S3-SMALL-MARKER-0123456789abcdefghij.", 2_000);
    put(&s, "big", &big, Some(&EncryptionKey::Managed));
    put(&s, "big2", &big, Some(&EncryptionKey::Managed));
    put(&s, "small", &small, Some(&EncryptionKey::Managed));
    // Same body unencrypted: its chunks are files with the plaintext (the control).
    put(
        &s,
        "plain",
        &body("PLAIN-CONTROL-MARKER-0123456789abcdefghij.", 200_000),
        None,
    );
    assert_eq!(read(&s, "big", None).unwrap(), big);
    assert_eq!(read(&s, "small", None).unwrap(), small);
    let a = s.open_object("bkt", "big").unwrap().chunk_ids();
    let b = s.open_object("bkt", "big2").unwrap().chunk_ids();
    assert_eq!(a.len(), 5);
    assert!(
        a.iter().all(|x| !b.contains(x)),
        "equal plaintexts share no chunk"
    );
    assert!(s.head("bkt", "big").unwrap().meta.sse.is_some());
    drop(s);
    assert!(files_with(d.path(), &big[..32]).is_empty());
    assert!(files_with(d.path(), &small[..32]).is_empty());
    assert!(!files_with(d.path(), b"PLAIN-CONTROL-MARKER-0123456789a").is_empty());
    // Reopened with the master key: readable. Without it: refused, not garbage.
    let s = open(d.path(), Some(MASTER), false);
    assert_eq!(read(&s, "big", None).unwrap(), big);
    drop(s);
    let s = open(d.path(), None, false);
    assert!(matches!(
        read(&s, "big", None),
        Err(StorageError::NoMasterKey)
    ));
    let s2 = open(tempfile::tempdir().unwrap().path(), None, false);
    let mut w = s2.begin_put("bkt", "k", ObjectMeta::default()).unwrap();
    assert!(matches!(
        w.encrypt(&EncryptionKey::Managed),
        Err(StorageError::NoMasterKey)
    ));
}

#[test]
fn sse_c_needs_its_key_which_is_never_stored() {
    let d = tempfile::tempdir().expect("tmp");
    let s = open(d.path(), Some(MASTER), false);
    let key = [0x5au8; 32];
    let ck = EncryptionKey::Customer(SecretKey(key));
    let wrong = EncryptionKey::Customer(SecretKey([0x5bu8; 32]));
    let data = body("SSE-C-PLAINTEXT-MARKER-0123456789abcdefgh.", 200_000);
    put(&s, "c", &data, Some(&ck));
    let info = s.head("bkt", "c").unwrap();
    let sse = info.meta.sse.clone().expect("sse");
    assert_eq!(
        sse.customer_key_md5.as_deref(),
        Some(customer_key_md5(&SecretKey(key)).as_str())
    );
    assert!(matches!(
        read(&s, "c", None),
        Err(StorageError::KeyRequired)
    ));
    assert!(matches!(
        read(&s, "c", Some(&wrong)),
        Err(StorageError::KeyMismatch)
    ));
    // Reading without unlocking fails too (no silent garbage).
    let r = s.open_object("bkt", "c").unwrap();
    assert!(matches!(
        r.read_at(0, &mut [0u8; 10]),
        Err(StorageError::KeyRequired)
    ));
    assert_eq!(read(&s, "c", Some(&ck)).unwrap(), data);
    // A customer key for an object that has none is refused.
    put(&s, "p", b"plain", None);
    assert!(matches!(
        read(&s, "p", Some(&ck)),
        Err(StorageError::NotCustomerEncrypted)
    ));
    // A copy shares the chunks and the wrapped key: the same customer key opens it.
    s.copy_object("bkt", "c", "bkt", "c2", None).unwrap();
    assert_eq!(read(&s, "c2", Some(&ck)).unwrap(), data);
    assert!(matches!(
        read(&s, "c2", None),
        Err(StorageError::KeyRequired)
    ));
    // In-place edits of an SSE-C object need its key.
    assert!(matches!(
        s.write_at("bkt", "c", 5, b"x"),
        Err(StorageError::KeyRequired)
    ));
    // Multipart: the upload's data key, opened by each part's customer key.
    let meta = ObjectMeta {
        sse: Some(s.new_encryption(&ck).unwrap()),
        ..Default::default()
    };
    let id = s.create_multipart("bkt", "m", meta).unwrap();
    let mut w = s.begin_part("bkt", "m", &id, 1).unwrap();
    assert!(matches!(w.write_all(b"x"), Err(StorageError::KeyRequired)));
    let mut w = s.begin_part("bkt", "m", &id, 1).unwrap();
    assert!(matches!(w.encrypt(&wrong), Err(StorageError::KeyMismatch)));
    let mut etags = Vec::new();
    for n in 1..=2u32 {
        let mut w = s.begin_part("bkt", "m", &id, n).unwrap();
        w.encrypt(&ck).unwrap();
        let part = if n == 1 { &data[..] } else { &data[..1000] };
        w.write_all(part).unwrap();
        etags.push((n, w.commit().unwrap().etag));
    }
    // Parts of 200 kB are below S3's 5 MiB minimum: only one full part here.
    let info = s.complete_multipart("bkt", "m", &id, &etags[..1]).unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(read(&s, "m", Some(&ck)).unwrap(), data);
    assert!(matches!(
        read(&s, "m", None),
        Err(StorageError::KeyRequired)
    ));
    drop(s);
    assert!(files_with(d.path(), &data[..32]).is_empty());
    assert!(
        files_with(d.path(), &key).is_empty(),
        "the key is never stored"
    );
}

#[test]
fn encrypt_all_seals_every_chunk_and_edits() {
    let d = tempfile::tempdir().expect("tmp");
    let s = open(d.path(), Some(MASTER), true);
    let big = body("ENCRYPT-ALL-MARKER-0123456789abcdefghijkl.", 300_000);
    let small = body("ENCRYPT-ALL-SMALL-0123456789abcdefghijklm.", 3_000);
    put(&s, "big", &big, None);
    let (tx, rx) = std::sync::mpsc::channel();
    s.put_small(
        "bkt",
        "small",
        ObjectMeta::default(),
        small.clone(),
        move |r| {
            tx.send(r.map(|_| ())).unwrap();
        },
    );
    rx.recv().unwrap().expect("put_small");
    put(&s, "big2", &big, None);
    // An in-place edit seals its new chunks too.
    let patch = body("ENCRYPT-ALL-PATCH-0123456789abcdefghijklm.", 70_000);
    s.write_at("bkt", "big", 100_000, &patch).unwrap();
    let mut want = big.clone();
    want[100_000..170_000].copy_from_slice(&patch);
    assert_eq!(read(&s, "big", None).unwrap(), want);
    assert_eq!(read(&s, "small", None).unwrap(), small);
    let a = s.open_object("bkt", "big2").unwrap().chunk_ids();
    let b = s.open_object("bkt", "big").unwrap().chunk_ids();
    assert!(
        a.iter().all(|x| !b.contains(x)),
        "no dedup of sealed chunks"
    );
    assert!(chunk_files(d.path()) >= 10);
    assert_eq!(s.fsck().unwrap().missing_chunks, 0);
    drop(s);
    for m in [&big[..32], &small[..32], &patch[..32]] {
        assert!(files_with(d.path(), m).is_empty());
    }
    // Reopened without the option (same master key): old chunks still read.
    let s = open(d.path(), Some(MASTER), false);
    assert_eq!(read(&s, "big", None).unwrap(), want);
    // encrypt_all without a master key is refused at open.
    let mut c = StoreConfig::new(tempfile::tempdir().unwrap().path());
    c.encrypt_all = true;
    assert!(matches!(Store::open(c), Err(StorageError::NoMasterKey)));
}
