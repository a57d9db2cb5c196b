//! Engine API tests: round trips, ranges, GC, dedup, listing, multipart, quotas, concurrency,
//! persistence, names, NFS-style edits.

mod common;

use std::io::Read;

use common::*;
use md5::{Digest, Md5};
use tm_storage::{ObjectMeta, StorageError, Store, MIN_PART_SIZE, SYSTEM_BUCKET};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn round_trip_across_chunk_boundaries() {
    let d = tmp();
    let s = open(d.path());
    s.create_bucket("bkt1").unwrap();
    let cs = CS as usize;
    for (i, len) in [0, 1, cs - 1, cs, cs + 1, 5 * cs + 7, 3 * cs]
        .into_iter()
        .enumerate()
    {
        let body = data(i as u64, len);
        for piece in [1000, cs, 7 * cs] {
            let key = format!("obj-{len}-{piece}");
            let info = put(&s, "bkt1", &key, &body, piece);
            assert_eq!(info.size, len as u64);
            assert_eq!(info.etag, md5_hex(&body), "etag of {len} bytes");
            assert_eq!(s.head("bkt1", &key).unwrap(), info);
            assert_eq!(get(&s, "bkt1", &key), body, "{key}");
        }
    }
    assert_healthy(&s);
    let u = s.usage("bkt1").unwrap();
    assert_eq!(u.objects, 21);
}

#[test]
fn default_chunk_size_round_trip() {
    let d = tmp();
    let s = open_cfg(d.path(), 0, None);
    s.create_bucket("big").unwrap();
    let mb = 1 << 20;
    for len in [mb - 1, mb, mb + 1, 3 * mb + 5] {
        let body = data(len as u64, len);
        put(&s, "big", "k", &body, 64 * 1024);
        assert_eq!(get(&s, "big", "k"), body);
    }
    assert_healthy(&s);
}

#[test]
fn ranges_and_read_at() {
    let d = tmp();
    let s = open(d.path());
    s.create_bucket("bkt1").unwrap();
    let cs = CS as u64;
    let body = data(9, (4 * cs + 100) as usize);
    put(&s, "bkt1", "k", &body, 333);
    let r = s.open_object("bkt1", "k").unwrap();
    let n = body.len() as u64;
    for (a, b) in [
        (0, 1),
        (0, n),
        (cs - 1, cs + 1),
        (cs, 2 * cs),
        (5, 3 * cs + 17),
        (n - 1, n),
        (n, n),
        (10, n + 50),
        (n + 5, n + 10),
    ] {
        let mut out = Vec::new();
        r.range(a, b).read_to_end(&mut out).unwrap();
        let (ea, eb) = (a.min(n) as usize, b.min(n) as usize);
        let ea = ea.min(eb);
        assert_eq!(out, &body[ea..eb], "range {a}..{b}");
        let mut buf = vec![0u8; (b - a) as usize];
        let got = r.read_at(a, &mut buf).unwrap();
        assert_eq!(&buf[..got], &body[ea..eb], "read_at {a}..{b}");
    }
}

#[test]
fn overwrite_frees_old_chunks_after_gc() {
    let d = tmp();
    let s = open(d.path());
    s.create_bucket("bkt1").unwrap();
    put(&s, "bkt1", "k", &data(1, 10 * CS as usize), 4096);
    assert_eq!(chunk_files(d.path()), 10);
    put(&s, "bkt1", "k", &data(2, 3 * CS as usize), 4096);
    let st = s.gc().unwrap();
    assert_eq!(st.chunks_deleted + chunk_files(d.path()) as u64 - 3, 10);
    assert_eq!(chunk_files(d.path()), 3);
    assert_eq!(get(&s, "bkt1", "k"), data(2, 3 * CS as usize));
    s.delete_object("bkt1", "k").unwrap();
    s.delete_object("bkt1", "k").unwrap(); // idempotent
    s.gc().unwrap();
    assert_eq!(chunk_files(d.path()), 0);
    assert_healthy(&s);
}

#[test]
fn background_reclaim_frees_without_gc() {
    let d = tmp();
    let s = open(d.path());
    s.create_bucket("bkt1").unwrap();
    put(&s, "bkt1", "k", &data(1, 4 * CS as usize), 4096);
    s.delete_object("bkt1", "k").unwrap();
    s.reclaim().unwrap();
    assert_eq!(chunk_files(d.path()), 0);
}

#[test]
fn reader_keeps_its_version_through_overwrite_delete_and_gc() {
    let d = tmp();
    let s = open(d.path());
    s.create_bucket("bkt1").unwrap();
    let v1 = data(1, 5 * CS as usize + 3);
    put(&s, "bkt1", "k", &v1, 4096);
    let r = s.open_object("bkt1", "k").unwrap();
    put(&s, "bkt1", "k", &data(2, 100), 4096);
    s.delete_object("bkt1", "k").unwrap();
    s.gc().unwrap();
    s.reclaim().unwrap();
    let mut out = Vec::new();
    r.reader().read_to_end(&mut out).unwrap();
    assert_eq!(out, v1);
    drop(out);
    drop(r);
    s.reclaim().unwrap();
    assert_eq!(
        chunk_files(d.path()),
        0,
        "chunks freed once the reader is gone"
    );
}

#[test]
fn copy_shares_chunks_and_dedup() {
    let d = tmp();
    let s = open(d.path());
    s.create_bucket("bkt1").unwrap();
    s.create_bucket("bkt2").unwrap();
    let body = data(3, 6 * CS as usize);
    let a = put(&s, "bkt1", "a", &body, 5000);
    assert_eq!(chunk_files(d.path()), 6);
    // dedup: identical content stores no new chunk
    put(&s, "bkt1", "same", &body, 777);
    assert_eq!(chunk_files(d.path()), 6);
    let mut meta = ObjectMeta {
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    meta.user.insert("k".into(), "v".into());
    let c = s
        .copy_object("bkt1", "a", "bkt2", "c", Some(meta.clone()))
        .unwrap();
    assert_eq!(c.etag, a.etag);
    assert_eq!(s.head("bkt2", "c").unwrap().meta, meta);
    let kept = s.copy_object("bkt1", "a", "bkt2", "d", None).unwrap();
    assert_eq!(kept.meta, ObjectMeta::default());
    assert_eq!(chunk_files(d.path()), 6);
    s.delete_object("bkt1", "a").unwrap();
    s.delete_object("bkt1", "same").unwrap();
    s.gc().unwrap();
    assert_eq!(get(&s, "bkt2", "c"), body);
    assert_eq!(chunk_files(d.path()), 6);
    assert!(matches!(
        s.copy_object("bkt1", "nope", "bkt2", "x", None),
        Err(StorageError::NoSuchKey)
    ));
    assert_eq!(s.usage("bkt2").unwrap().bytes, 2 * body.len() as u64);
    assert_healthy(&s);
}

#[test]
fn list_ordering_prefix_start_after() {
    let d = tmp();
    let s = open(d.path());
    s.create_bucket("abb").unwrap();
    s.create_bucket("abb-c").unwrap();
    s.create_bucket("abb.c").unwrap();
    let keys = ["z", "a/2", "a/10", "a/1", "b", "a", "é", "a/1/x", "A"];
    for k in keys {
        put(&s, "abb", k, k.as_bytes(), 10);
    }
    put(&s, "abb-c", "a/zz", b"x", 1);
    put(&s, "abb.c", "a/zz", b"x", 1);
    let names = |v: Vec<tm_storage::ObjectInfo>| v.into_iter().map(|o| o.key).collect::<Vec<_>>();
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort();
    assert_eq!(
        names(s.list_objects("abb", "", None, 1000).unwrap()),
        sorted
    );
    assert_eq!(
        names(s.list_objects("abb", "a/", None, 1000).unwrap()),
        ["a/1", "a/1/x", "a/10", "a/2"]
    );
    assert_eq!(
        names(s.list_objects("abb", "a/", Some("a/1/x"), 1000).unwrap()),
        ["a/10", "a/2"]
    );
    assert_eq!(
        names(s.list_objects("abb", "a/", Some("a"), 2).unwrap()),
        ["a/1", "a/1/x"]
    );
    assert_eq!(
        names(s.list_objects("abb", "", Some("b"), 1000).unwrap()),
        ["z", "é"]
    );
    assert_eq!(
        names(s.list_objects("abb", "", Some("zzz"), 1000).unwrap()),
        ["é"]
    );
    assert_eq!(
        names(s.list_objects("abb", "qqq", None, 1000).unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(s.list_objects("abb", "", None, 0).unwrap().len(), 0);
    assert!(matches!(
        s.list_objects("nope", "", None, 10),
        Err(StorageError::NoSuchBucket)
    ));
}

fn put_part(s: &Store, b: &str, k: &str, id: &str, n: u32, body: &[u8]) -> String {
    let mut w = s.begin_part(b, k, id, n).unwrap();
    for p in body.chunks(100_000) {
        w.write_all(p).unwrap();
    }
    w.commit().unwrap().etag
}

#[test]
fn multipart_etag_and_errors() {
    let d = tmp();
    let s = open_cfg(d.path(), 1 << 20, None);
    s.create_bucket("mpu").unwrap();
    let meta = ObjectMeta {
        content_type: Some("application/x-test".into()),
        ..Default::default()
    };
    let id = s.create_multipart("mpu", "big", meta.clone()).unwrap();
    let p1 = data(11, MIN_PART_SIZE as usize + 3);
    let p2 = data(12, MIN_PART_SIZE as usize);
    let p3 = data(13, 1234);
    // upload out of order, re-upload part 2
    let e3 = put_part(&s, "mpu", "big", &id, 3, &p3);
    let _ = put_part(&s, "mpu", "big", &id, 2, &data(99, 10));
    let e2 = put_part(&s, "mpu", "big", &id, 2, &p2);
    let e1 = put_part(&s, "mpu", "big", &id, 1, &p1);
    assert_eq!(e1, md5_hex(&p1));
    let parts = s.list_parts("mpu", "big", &id).unwrap();
    assert_eq!(
        parts.iter().map(|p| (p.number, p.size)).collect::<Vec<_>>(),
        [(1, p1.len() as u64), (2, p2.len() as u64), (3, 1234)]
    );
    assert_eq!(s.list_uploads("mpu", "b").unwrap()[0].upload_id, id);
    assert!(s.list_uploads("mpu", "x").unwrap().is_empty());
    // error cases
    let q = |e: &str| format!("\"{e}\"");
    assert!(matches!(
        s.complete_multipart("mpu", "big", &id, &[(2, e2.clone()), (1, e1.clone())]),
        Err(StorageError::InvalidPartOrder)
    ));
    assert!(matches!(
        s.complete_multipart("mpu", "big", &id, &[]),
        Err(StorageError::InvalidPartOrder)
    ));
    assert!(matches!(
        s.complete_multipart("mpu", "big", &id, &[(1, e2.clone())]),
        Err(StorageError::InvalidPart)
    ));
    assert!(matches!(
        s.complete_multipart("mpu", "big", &id, &[(4, e2.clone())]),
        Err(StorageError::InvalidPart)
    ));
    assert!(matches!(
        s.complete_multipart("mpu", "big", &id, &[(3, e3.clone()), (4, e3.clone())]),
        Err(StorageError::InvalidPart)
    ));
    assert!(matches!(
        s.complete_multipart("mpu", "big", "nope", &[(1, e1.clone())]),
        Err(StorageError::NoSuchUpload)
    ));
    assert!(matches!(
        s.complete_multipart("mpu", "other", &id, &[(1, e1.clone())]),
        Err(StorageError::NoSuchUpload)
    ));
    assert!(matches!(
        s.begin_part("mpu", "big", &id, 0),
        Err(StorageError::InvalidPartNumber)
    ));
    // nothing visible yet
    assert!(matches!(s.head("mpu", "big"), Err(StorageError::NoSuchKey)));
    let info = s
        .complete_multipart(
            "mpu",
            "big",
            &id,
            &[(1, q(&e1)), (2, e2.clone()), (3, e3.clone())],
        )
        .unwrap();
    let mut h = Md5::new();
    for p in [&p1, &p2, &p3] {
        h.update(Md5::digest(p));
    }
    assert_eq!(info.etag, format!("{}-3", hex(&h.finalize())));
    // The upload's metadata, plus the part sizes (for partNumber reads).
    let sizes = vec![p1.len() as u64, p2.len() as u64, p3.len() as u64];
    assert_eq!(info.meta.part_sizes, sizes);
    assert_eq!(
        info.meta,
        ObjectMeta {
            part_sizes: sizes.clone(),
            ..meta.clone()
        }
    );
    let whole: Vec<u8> = [p1.clone(), p2.clone(), p3.clone()].concat();
    assert_eq!(info.size, whole.len() as u64);
    assert_eq!(get(&s, "mpu", "big"), whole);
    assert!(matches!(
        s.list_parts("mpu", "big", &id),
        Err(StorageError::NoSuchUpload)
    ));
    assert!(s.list_uploads("mpu", "").unwrap().is_empty());
    assert_eq!(s.usage("mpu").unwrap().bytes, whole.len() as u64);

    // too small a non-last part
    let id2 = s
        .create_multipart("mpu", "small", ObjectMeta::default())
        .unwrap();
    let a = put_part(&s, "mpu", "small", &id2, 1, &data(1, 100));
    let b = put_part(&s, "mpu", "small", &id2, 2, &data(2, 100));
    assert!(matches!(
        s.complete_multipart("mpu", "small", &id2, &[(1, a.clone()), (2, b)]),
        Err(StorageError::EntityTooSmall)
    ));
    // a single small part is fine; unlisted part 2 is dropped
    s.complete_multipart("mpu", "small", &id2, &[(1, a)])
        .unwrap();
    assert_eq!(get(&s, "mpu", "small"), data(1, 100));

    // abort frees the parts' chunks
    let id3 = s
        .create_multipart("mpu", "gone", ObjectMeta::default())
        .unwrap();
    put_part(&s, "mpu", "gone", &id3, 1, &data(77, 3 << 20));
    s.abort_multipart("mpu", "gone", &id3).unwrap();
    assert!(matches!(
        s.abort_multipart("mpu", "gone", &id3),
        Err(StorageError::NoSuchUpload)
    ));
    assert!(matches!(
        s.begin_part("mpu", "gone", &id3, 1),
        Err(StorageError::NoSuchUpload)
    ));
    s.gc().unwrap();
    let r = s.fsck().unwrap();
    assert_eq!(r.orphan_chunks, 0);
    assert_eq!(chunk_files(d.path()) as u64, r.chunks_in_backend);
    assert_healthy(&s);
}

#[test]
fn quotas_bucket_and_global() {
    let d = tmp();
    let s = open_cfg(d.path(), CS, Some(50_000));
    s.create_bucket("qqq").unwrap();
    s.create_bucket("rrr").unwrap();
    s.set_quota("qqq", Some(10_000)).unwrap();
    assert_eq!(s.bucket("qqq").unwrap().quota, Some(10_000));
    put(&s, "qqq", "a", &data(1, 6000), 1000);
    // early refusal while streaming
    let mut w = s.begin_put("qqq", "b", ObjectMeta::default()).unwrap();
    w.write_all(&data(2, 3000)).unwrap();
    assert!(matches!(
        w.write_all(&data(3, 3000)),
        Err(StorageError::QuotaExceeded)
    ));
    drop(w);
    assert!(matches!(s.head("qqq", "b"), Err(StorageError::NoSuchKey)));
    assert_eq!(
        s.usage("qqq").unwrap(),
        tm_storage::Usage {
            bytes: 6000,
            objects: 1
        }
    );
    // overwrite within quota is fine (old size is released)
    put(&s, "qqq", "a", &data(4, 9000), 1000);
    assert_eq!(s.usage("qqq").unwrap().bytes, 9000);
    put(&s, "qqq", "tiny", &data(5, 1000), 1000);
    assert_eq!(
        s.usage("qqq").unwrap(),
        tm_storage::Usage {
            bytes: 10_000,
            objects: 2
        }
    );
    // copy into a full bucket refused, nothing stored
    assert!(matches!(
        s.copy_object("qqq", "tiny", "qqq", "tiny2", None),
        Err(StorageError::QuotaExceeded)
    ));
    assert!(matches!(
        s.head("qqq", "tiny2"),
        Err(StorageError::NoSuchKey)
    ));
    // a quota below usage is refused by the checked setter (nothing changes) unless forced
    let used = s.usage("qqq").unwrap();
    assert!(used.bytes > 5000);
    assert_eq!(
        s.set_quota_checked("qqq", Some(5000), false).unwrap(),
        (false, used)
    );
    assert_eq!(s.bucket("qqq").unwrap().quota, Some(10_000));
    assert_eq!(
        s.set_quota_checked("qqq", Some(used.bytes), false).unwrap(),
        (true, used)
    );
    assert_eq!(
        s.set_quota_checked("qqq", None, false).unwrap(),
        (true, used)
    );
    assert_eq!(s.bucket("qqq").unwrap().quota, None);
    assert!(matches!(
        s.set_quota_checked("nope", Some(1), true),
        Err(StorageError::NoSuchBucket)
    ));
    // lowering the quota below usage: shrinking overwrite still allowed, growth refused
    assert_eq!(
        s.set_quota_checked("qqq", Some(5000), true).unwrap(),
        (true, used)
    );
    put(&s, "qqq", "a", &data(6, 100), 1000);
    assert_eq!(s.usage("qqq").unwrap().bytes, 1100);
    s.set_quota("qqq", None).unwrap();
    // global max_size
    put(&s, "rrr", "x", &data(7, 40_000), 4096);
    assert_eq!(s.total_usage().unwrap().bytes, 41_100);
    let mut w = s.begin_put("rrr", "y", ObjectMeta::default()).unwrap();
    assert!(matches!(
        w.write_all(&data(8, 9000)),
        Err(StorageError::QuotaExceeded)
    ));
    drop(w);
    // multipart complete over the limit: refused, nothing stored
    let id = s
        .create_multipart("rrr", "m", ObjectMeta::default())
        .unwrap();
    let e = put_part(&s, "rrr", "m", &id, 1, &data(9, 8000));
    let mut w = s.begin_put("rrr", "z", ObjectMeta::default()).unwrap();
    w.write_all(&data(10, 5000)).unwrap();
    w.commit().unwrap(); // total now 46_100: the part (8000) no longer fits
    assert!(matches!(
        s.complete_multipart("rrr", "m", &id, &[(1, e)]),
        Err(StorageError::QuotaExceeded)
    ));
    assert!(matches!(s.head("rrr", "m"), Err(StorageError::NoSuchKey)));
    assert_eq!(
        s.total_usage().unwrap(),
        tm_storage::Usage {
            bytes: 46_100,
            objects: 4
        }
    );
    s.delete_object("rrr", "x").unwrap();
    assert_eq!(
        s.total_usage().unwrap(),
        tm_storage::Usage {
            bytes: 6_100,
            objects: 3
        }
    );
    assert_eq!(
        s.usage("rrr").unwrap(),
        tm_storage::Usage {
            bytes: 5000,
            objects: 1
        }
    );
    s.abort_multipart("rrr", "m", &id).unwrap();
    s.gc().unwrap();
    assert_eq!(s.fsck().unwrap().orphan_chunks, 0);
    assert_healthy(&s);
}

#[test]
fn concurrent_puts() {
    let d = tmp();
    let s = open(d.path());
    s.create_bucket("ccc").unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..40u64 {
                    let body = data(t * 1000 + i, ((t * 7 + i * 13) % 5) as usize * 3000 + 1);
                    put(&s, "ccc", &format!("t{t}/{i}"), &body, 2000);
                    // a shared key overwritten by everybody
                    put(&s, "ccc", "shared", &body, 2000);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut bytes = 0;
    for t in 0..8u64 {
        for i in 0..40u64 {
            let body = data(t * 1000 + i, ((t * 7 + i * 13) % 5) as usize * 3000 + 1);
            assert_eq!(get(&s, "ccc", &format!("t{t}/{i}")), body);
            bytes += body.len() as u64;
        }
    }
    bytes += s.head("ccc", "shared").unwrap().size;
    assert_eq!(
        s.usage("ccc").unwrap(),
        tm_storage::Usage {
            bytes,
            objects: 321
        }
    );
    let cs = s.commit_stats();
    assert!(
        cs.operations >= 640 && cs.transactions <= cs.operations,
        "{cs:?}"
    );
    eprintln!("group commit: {cs:?}");
    s.gc().unwrap();
    assert_healthy(&s);
    assert_eq!(s.fsck().unwrap().orphan_chunks, 0);
}

#[test]
fn persisted_across_reopen() {
    let d = tmp();
    {
        let s = open(d.path());
        s.create_bucket("ppp").unwrap();
        s.set_quota("ppp", Some(1 << 30)).unwrap();
        put(&s, "ppp", "k", &data(5, 3 * CS as usize + 1), 999);
        s.put_credential("AKIA1", "secret1", "peer-a").unwrap();
        s.create_multipart("ppp", "up", ObjectMeta::default())
            .unwrap();
    }
    let s = open(d.path());
    assert_eq!(get(&s, "ppp", "k"), data(5, 3 * CS as usize + 1));
    assert_eq!(s.bucket("ppp").unwrap().quota, Some(1 << 30));
    assert_eq!(
        s.credential("AKIA1").unwrap(),
        Some(("secret1".into(), "peer-a".into()))
    );
    assert_eq!(s.credential("nope").unwrap(), None);
    assert_eq!(s.list_uploads("ppp", "").unwrap().len(), 1);
    assert_eq!(s.usage("ppp").unwrap().objects, 1);
    assert_healthy(&s);
}

#[test]
fn names_rejected_and_system_bucket() {
    let d = tmp();
    let s = open(d.path());
    for bad in [
        "ab",
        "Abc",
        "a_b",
        "-abc",
        "abc-",
        ".abc",
        "a..b",
        "a.-b",
        "192.168.1.1",
        "xn--abc",
        &"a".repeat(64),
        "abc/d",
        "ab c",
        "_tunnelmeshx",
    ] {
        assert!(
            matches!(s.create_bucket(bad), Err(StorageError::InvalidBucketName)),
            "{bad}"
        );
    }
    for good in ["abc", "a-b.c", "1.2.3", &"a".repeat(63)] {
        s.create_bucket(good).unwrap();
    }
    assert!(matches!(
        s.create_bucket("abc"),
        Err(StorageError::BucketExists)
    ));
    assert!(matches!(
        s.create_bucket(SYSTEM_BUCKET),
        Err(StorageError::BucketExists)
    ));
    assert!(matches!(
        s.delete_bucket(SYSTEM_BUCKET),
        Err(StorageError::ReservedBucket)
    ));
    assert!(s
        .list_buckets()
        .unwrap()
        .iter()
        .any(|b| b.name == SYSTEM_BUCKET));
    put(&s, SYSTEM_BUCKET, "peers/x", b"hello", 3);
    assert!(matches!(
        s.begin_put("abc", "", ObjectMeta::default()),
        Err(StorageError::InvalidKey)
    ));
    assert!(matches!(
        s.begin_put("abc", &"k".repeat(1025), ObjectMeta::default()),
        Err(StorageError::InvalidKey)
    ));
    put(&s, "abc", &"k".repeat(1024), b"x", 1);
    assert!(matches!(
        s.begin_put("nope", "k", ObjectMeta::default()),
        Err(StorageError::NoSuchBucket)
    ));
    assert!(matches!(
        s.delete_bucket("abc"),
        Err(StorageError::BucketNotEmpty)
    ));
    assert!(matches!(
        s.delete_bucket("nope"),
        Err(StorageError::NoSuchBucket)
    ));
    s.delete_object("abc", &"k".repeat(1024)).unwrap();
    s.create_multipart("abc", "pending", ObjectMeta::default())
        .unwrap();
    s.delete_bucket("abc").unwrap();
    assert!(matches!(s.bucket("abc"), Err(StorageError::NoSuchBucket)));
    assert!(matches!(
        s.head("abc", "x"),
        Err(StorageError::NoSuchBucket)
    ));
}

#[test]
fn write_at_and_truncate_match_a_model() {
    let d = tmp();
    let s = open(d.path());
    s.create_bucket("nfs").unwrap();
    let cs = CS as u64;
    let mut model: Vec<u8> = Vec::new();
    let mut rng = 12345u64;
    let mut next = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    for step in 0..60u64 {
        let op = next(10);
        if op < 7 {
            let off = next(model.len() as u64 + 2 * cs);
            let len = 1 + next(3 * cs) as usize;
            let buf = data(step, len);
            let end = off as usize + len;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&buf);
            let info = s.write_at("nfs", "f", off, &buf).unwrap();
            assert_eq!(info.size, model.len() as u64);
        } else {
            let t = next(model.len() as u64 + 2 * cs);
            model.resize(t as usize, 0);
            assert_eq!(s.truncate("nfs", "f", t).unwrap().size, t);
        }
        assert_eq!(get(&s, "nfs", "f"), model, "step {step}");
    }
    // a small write in the middle rewrites only the one chunk it touches
    let body = data(1, 10 * cs as usize);
    put(&s, "nfs", "g", &body, 4096);
    s.gc().unwrap();
    let before = chunk_files(d.path());
    let e0 = s.head("nfs", "g").unwrap().etag;
    let info = s.write_at("nfs", "g", 4 * cs + 10, b"hello").unwrap();
    assert_ne!(info.etag, e0);
    assert_eq!(chunk_files(d.path()), before + 1);
    s.gc().unwrap();
    assert_eq!(chunk_files(d.path()), before);
    let mut m = body.clone();
    m[(4 * cs + 10) as usize..(4 * cs + 15) as usize].copy_from_slice(b"hello");
    assert_eq!(get(&s, "nfs", "g"), m);
    assert_eq!(
        s.usage("nfs").unwrap().bytes,
        model.len() as u64 + m.len() as u64
    );
    assert_healthy(&s);
}

#[test]
fn memory_backend_and_send_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    fn assert_send<T: Send + 'static>() {}
    assert_send_sync::<Store>();
    assert_send_sync::<tm_storage::ObjectReader>();
    assert_send::<tm_storage::PutWriter>();
    assert_send::<tm_storage::RangeReader>();
    let d = tmp();
    let mem = std::sync::Arc::new(tm_storage::MemChunkStore::new());
    let cfg = tm_storage::StoreConfig {
        chunk_size: 1000,
        ..tm_storage::StoreConfig::new(d.path())
    };
    let s = Store::open_with(cfg, mem.clone()).unwrap();
    s.create_bucket("mem").unwrap();
    let body = data(4, 4321);
    put(&s, "mem", "k", &body, 300);
    assert_eq!(get(&s, "mem", "k"), body);
    let mut n = 0;
    tm_storage::ChunkStore::list(&*mem, &mut |_| n += 1).unwrap();
    assert_eq!(n, 5);
    s.delete_object("mem", "k").unwrap();
    s.gc().unwrap();
    let mut n = 0;
    tm_storage::ChunkStore::list(&*mem, &mut |_| n += 1).unwrap();
    assert_eq!(n, 0);
}

#[test]
fn small_objects_are_inline_and_refcounted() {
    let d = tmp();
    {
        let s = open_cfg(d.path(), 1 << 20, None);
        s.create_bucket("inl").unwrap();
        let body = data(8, tm_storage::INLINE_MAX);
        put(&s, "inl", "a", &body, 1000);
        assert_eq!(chunk_files(d.path()), 0, "inline: no chunk file");
        s.copy_object("inl", "a", "inl", "b", None).unwrap();
        s.delete_object("inl", "a").unwrap();
        assert_eq!(get(&s, "inl", "b"), body);
        put(&s, "inl", "big", &data(8, tm_storage::INLINE_MAX + 1), 1000);
        assert_eq!(chunk_files(d.path()), 1);
        assert_healthy(&s);
    }
    let s = open_cfg(d.path(), 1 << 20, None);
    assert_eq!(get(&s, "inl", "b"), data(8, tm_storage::INLINE_MAX));
    let r = s.open_object("inl", "b").unwrap();
    s.delete_object("inl", "b").unwrap();
    let mut buf = [0u8; 10];
    assert_eq!(r.read_at(5, &mut buf).unwrap(), 10);
    assert_eq!(&buf, &data(8, tm_storage::INLINE_MAX)[5..15]);
    assert_healthy(&s);
}

#[test]
fn second_open_of_a_data_dir_is_refused_and_data_survives_reopen() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = open_cfg(d.path(), 1 << 20, None);
    s.create_bucket("keep").expect("bucket");
    let err = tm_storage::Store::open(tm_storage::StoreConfig::new(d.path()))
        .expect_err("second open of the same data dir");
    assert!(err.to_string().contains("already open"), "{err}");
    drop(s);
    let s = open_cfg(d.path(), 1 << 20, None);
    assert!(s
        .list_buckets()
        .expect("list")
        .iter()
        .any(|b| b.name == "keep"));
}
