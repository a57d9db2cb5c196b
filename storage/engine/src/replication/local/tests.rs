//! Stamped versions in one store, and versions moved between two stores: concurrent writes
//! both kept with the same current version everywhere; chunks checked by content.

use super::*;
use crate::object::types::StoreConfig;

fn store(d: &std::path::Path) -> Store {
    let s = Store::open(StoreConfig::new(d)).expect("open");
    s.create_bucket("bk1").expect("bucket");
    s
}

fn stamp(node: u64, wall_ms: u64, hints: Vec<NodeId>) -> Stamp {
    Stamp {
        node: NodeId(node),
        clock: Hlc {
            wall_ms,
            logical: 0,
        },
        context: VersionVector::new(),
        hints,
    }
}

fn put(s: &Store, key: &str, body: &[u8], st: Stamp) -> Version {
    let mut w = s
        .begin_put("bk1", key, ObjectMeta::default())
        .expect("begin");
    w.write_all(body).expect("write");
    commit_put(w, st).expect("commit").1
}

fn read(s: &Store, key: &str) -> Vec<u8> {
    let r = s.open_object("bk1", key).expect("open");
    r.read_vec(0, r.size() as usize).expect("read")
}

/// Copies every version of `key` from `a` to `b`, chunks first (only those `b` lacks).
fn sync(a: &Store, b: &Store, key: &str) -> usize {
    let mut moved = 0;
    for v in versions(a, "bk1", key).expect("versions").iter() {
        let ex = export(a, "bk1", key, v.dot)
            .expect("export")
            .expect("stored");
        for id in missing_chunks(b, &ex.chunks).expect("missing") {
            put_chunk(b, &id, &read_chunk(a, &id).expect("chunk")).expect("put chunk");
            moved += 1;
        }
        apply(b, "bk1", key, ex).expect("apply");
    }
    moved
}

#[test]
fn concurrent_versions_are_kept_and_resolved_alike_on_both_stores() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (store(da.path()), store(db.path()));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    // Concurrent: neither saw the other; b's clock is later, so b's wins everywhere.
    let va = put(&a, "k", &big, stamp(1, 1000, vec![NodeId(2)]));
    let vb = put(&b, "k", b"small from b", stamp(2, 2000, vec![]));
    assert_eq!(va.dot.counter, 1);
    assert_eq!(
        hints(&a, 10).unwrap().len(),
        1,
        "the hint is written with the version"
    );
    assert_eq!(hints_for(&a, NodeId(2), 10).unwrap()[0].dot, va.dot);
    assert!(hints_for(&a, NodeId(3), 10).unwrap().is_empty());
    assert_eq!(
        sync(&a, &b, "k"),
        3,
        "three 1 MiB chunks moved (one partial)"
    );
    assert_eq!(sync(&b, &a, "k"), 0, "an inline version moves no chunk");
    assert_eq!(sync(&a, &b, "k"), 0, "nothing moves twice");
    for s in [&a, &b] {
        assert_eq!(read(s, "k"), b"small from b");
        let vs = s.list_versions("bk1", "", None, 10).unwrap();
        let ids: Vec<_> = vs.iter().map(|e| e.version_id.clone().unwrap()).collect();
        assert_eq!(ids, vec![vb.dot.version_id(), va.dot.version_id()]);
        let r = s.open_version("bk1", "k", &va.dot.version_id()).unwrap();
        assert_eq!(r.read_vec(0, big.len()).unwrap(), big);
    }
    // A later write on a (having seen both) dominates; a delete marker then hides the key.
    let vc = put(&a, "k", b"third", stamp(1, 500, vec![]));
    assert!(vc.vv.contains(vb.dot) && vc.vv.contains(va.dot));
    sync(&a, &b, "k");
    assert_eq!(
        read(&b, "k"),
        b"third",
        "dominating wins despite the older clock"
    );
    let d = commit_delete(&b, "bk1", "k", stamp(2, 600, vec![])).unwrap();
    sync(&b, &a, "k");
    assert!(matches!(
        a.open_object("bk1", "k"),
        Err(StorageError::NoSuchKey)
    ));
    assert_eq!(
        a.latest_delete_marker("bk1", "k").unwrap(),
        Some(Some(d.dot.version_id()))
    );
    assert_eq!(a.list_versions("bk1", "", None, 10).unwrap().len(), 4);
    let f = a.fsck().unwrap();
    assert_eq!(
        (f.missing_chunks, f.bad_refcounts, f.bad_sizes, f.bad_usage),
        (0, 0, 0, 0),
        "{f:?}"
    );
    let h = hints(&a, 10).unwrap();
    clear_hint(&a, &h[0]).unwrap();
    assert!(hints(&a, 10).unwrap().is_empty());
}

#[test]
fn bad_chunks_and_manifests_are_refused() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (store(da.path()), store(db.path()));
    let v = put(&a, "k", &vec![9u8; 100_000], stamp(1, 1, vec![]));
    let ex = export(&a, "bk1", "k", v.dot).unwrap().unwrap();
    let id = ex.chunks[0].id;
    assert!(matches!(
        put_chunk(&b, &id, b"not the bytes"),
        Err(StorageError::Corrupt(_))
    ));
    match apply(&b, "bk1", "k", ex.clone()) {
        Err(StorageError::Corrupt(m)) => assert!(m.contains("missing chunk"), "{m}"),
        r => panic!("a manifest naming a missing chunk: {r:?}"),
    }
    assert!(
        versions(&b, "bk1", "k").unwrap().is_empty(),
        "nothing stored"
    );
    let mut lying = ex;
    lying.size += 1;
    assert!(matches!(
        apply(&b, "bk1", "k", lying),
        Err(StorageError::Corrupt(_))
    ));
}
