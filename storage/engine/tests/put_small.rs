//! `Store::put_small` (non-blocking inline puts through the group committer) and the credential
//! cache.

mod common;

use std::sync::mpsc;

use common::*;
use tm_storage::{ObjectInfo, ObjectMeta, StorageError, Store, INLINE_MAX};

fn put_small(s: &Store, b: &str, k: &str, body: &[u8]) -> Result<ObjectInfo, StorageError> {
    let (tx, rx) = mpsc::channel();
    s.put_small(b, k, ObjectMeta::default(), body.to_vec(), move |r| {
        tx.send(r).expect("receiver alive");
    });
    rx.recv().expect("done called exactly once")
}

#[test]
fn round_trip_etag_usage_and_no_chunk_file() {
    let d = tempfile::tempdir().expect("tempdir");
    {
        let s = open_cfg(d.path(), 1 << 20, None);
        s.create_bucket("sml").unwrap();
        let body = data(3, INLINE_MAX);
        let info = put_small(&s, "sml", "a/b", &body).unwrap();
        assert_eq!(info.etag, md5_hex(&body));
        assert_eq!(info.size, INLINE_MAX as u64);
        let empty = put_small(&s, "sml", "empty", b"").unwrap();
        assert_eq!(empty.etag, md5_hex(b""));
        assert_eq!(get(&s, "sml", "a/b"), body);
        assert_eq!(get(&s, "sml", "empty"), b"");
        assert_eq!(
            chunk_files(d.path()),
            0,
            "inline objects write no chunk file"
        );
        assert_eq!(s.usage("sml").unwrap().bytes, INLINE_MAX as u64);
        assert_eq!(s.usage("sml").unwrap().objects, 2);
        // overwrite with put_small, then with the streaming writer: usage stays exact
        put_small(&s, "sml", "a/b", &data(4, 100)).unwrap();
        assert_eq!(s.usage("sml").unwrap().bytes, 100);
        put(&s, "sml", "a/b", &data(5, 200), 1000);
        assert_eq!(s.usage("sml").unwrap().bytes, 200);
        put_small(&s, "sml", "a/b", &data(6, 300)).unwrap();
        assert_eq!(get(&s, "sml", "a/b"), data(6, 300));
        assert_healthy(&s);
    }
    // durable: visible after reopen
    let s = open_cfg(d.path(), 1 << 20, None);
    assert_eq!(get(&s, "sml", "a/b"), data(6, 300));
    assert_healthy(&s);
}

#[test]
fn refusals_store_nothing() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = open_cfg(d.path(), 1 << 20, Some(10_000));
    s.create_bucket("sml").unwrap();
    s.set_quota("sml", Some(5000)).unwrap();
    assert!(matches!(
        put_small(&s, "nobucket", "k", b"x"),
        Err(StorageError::NoSuchBucket)
    ));
    assert!(matches!(
        put_small(&s, "sml", "", b"x"),
        Err(StorageError::InvalidKey)
    ));
    assert!(matches!(
        put_small(&s, "sml", "big", &data(1, INLINE_MAX + 1)),
        Err(StorageError::Unsupported(_))
    ));
    put_small(&s, "sml", "a", &data(2, 4000)).unwrap();
    assert!(matches!(
        put_small(&s, "sml", "b", &data(3, 1001)),
        Err(StorageError::QuotaExceeded)
    ));
    assert!(matches!(s.head("sml", "b"), Err(StorageError::NoSuchKey)));
    assert_eq!(s.usage("sml").unwrap().bytes, 4000);
    assert_eq!(s.usage("sml").unwrap().objects, 1);
    // exactly filling the quota is fine
    put_small(&s, "sml", "b", &data(3, 1000)).unwrap();
    assert_eq!(s.usage("sml").unwrap().bytes, 5000);
    assert_healthy(&s);
}

#[test]
fn concurrent_small_puts_are_group_committed() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = open_cfg(d.path(), 1 << 20, None);
    s.create_bucket("sml").unwrap();
    let before = s.commit_stats();
    let n = 400;
    let (tx, rx) = mpsc::channel();
    // Submit everything before waiting: put_small never blocks, so the committer sees a queue.
    for i in 0..n {
        let tx = tx.clone();
        s.put_small(
            "sml",
            &format!("k{i}"),
            ObjectMeta::default(),
            data(i, 512),
            move |r| tx.send((i, r)).expect("receiver alive"),
        );
    }
    drop(tx);
    let mut done = 0;
    for (i, r) in rx {
        assert_eq!(r.unwrap().etag, md5_hex(&data(i, 512)));
        done += 1;
    }
    assert_eq!(done, n);
    let after = s.commit_stats();
    let txns = after.transactions - before.transactions;
    assert_eq!(after.operations - before.operations, n);
    assert!(
        txns < n / 4,
        "{txns} transactions for {n} queued puts: not batched"
    );
    for i in (0..n).step_by(37) {
        assert_eq!(get(&s, "sml", &format!("k{i}")), data(i, 512));
    }
    assert_eq!(s.usage("sml").unwrap().objects, n);
    assert_healthy(&s);
}

#[test]
fn credential_cache_follows_replacement() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = open(d.path());
    assert_eq!(s.cached_credential("AK"), None);
    assert_eq!(s.credential("AK").unwrap(), None);
    s.put_credential("AK", "one", "alice").unwrap();
    assert_eq!(
        s.credential("AK").unwrap(),
        Some(("one".into(), "alice".into()))
    );
    assert_eq!(
        s.cached_credential("AK"),
        Some(("one".into(), "alice".into()))
    );
    s.put_credential("AK", "two", "bob").unwrap();
    assert_eq!(
        s.cached_credential("AK"),
        Some(("two".into(), "bob".into()))
    );
    assert_eq!(
        s.credential("AK").unwrap(),
        Some(("two".into(), "bob".into()))
    );
    drop(s);
    // a fresh store starts with an empty cache and reads the table
    let s = open(d.path());
    assert_eq!(s.cached_credential("AK"), None);
    assert_eq!(
        s.credential("AK").unwrap(),
        Some(("two".into(), "bob".into()))
    );
    assert_eq!(
        s.cached_credential("AK"),
        Some(("two".into(), "bob".into()))
    );
}

#[test]
fn an_inline_copy_never_keeps_a_chunk_file_of_the_same_bytes() {
    // A small object stored inline and the tail chunk of a large one with the same bytes: the
    // aborted large write must leave no file behind (the inline copy is not that file), and a
    // committed one's file goes when that object goes, while the inline object stays readable.
    let d = tempfile::tempdir().expect("tempdir");
    let s = open_cfg(d.path(), 1 << 16, None);
    s.create_bucket("sml").unwrap();
    put_small(&s, "sml", "tiny", b"z").unwrap();
    let mut body = data(9, 2 << 16);
    body.push(b'z');
    {
        let mut w = s
            .begin_put("sml", "big", ObjectMeta::default())
            .expect("begin_put");
        w.write_all(&body).unwrap();
        w.set_condition(tm_storage::WriteCondition::IfMatch("not-there".into()));
        assert!(w.commit().is_err(), "the condition fails");
    }
    s.reclaim().unwrap();
    assert_eq!(chunk_files(d.path()), 0, "the aborted write left files");
    put(&s, "sml", "big", &body, 7000);
    assert_eq!(chunk_files(d.path()), 3);
    s.delete_object("sml", "big").unwrap();
    s.reclaim().unwrap();
    assert_eq!(chunk_files(d.path()), 0, "the deleted object left files");
    assert_eq!(get(&s, "sml", "tiny"), b"z");
    assert_healthy(&s);
}
