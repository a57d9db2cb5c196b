//! Unit tests of the in-memory layer (`mem.rs`, `table.rs`).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{Database, TableDefinition};

use super::*;
use crate::db::table::{cmp_of, Iter, TableW};
use crate::db::{ReadTable as _, Schema};

pub(crate) const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

fn mem() -> Mem {
    let db = Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .expect("db");
    let w = db.begin_write().expect("write");
    {
        let mut t = w.open_table(T).expect("table");
        for k in [1u64, 3, 300] {
            t.insert(k, format!("base{k}").as_bytes()).expect("insert");
        }
    }
    w.commit().expect("commit");
    Mem::new(Arc::new(db), 0)
}

fn commit(m: &Mem, seq: u64, f: impl FnOnce(&mut TableW<'_, u64, &'static [u8]>)) {
    let tx = m.begin().expect("begin");
    f(&mut tx.open_table(T).expect("table"));
    let (redo, local) = tx.into_parts();
    assert!(!redo.is_empty());
    m.publish(local, seq);
}

fn entries(it: Iter<'_, u64, &'static [u8]>) -> Vec<(u64, String)> {
    it.map(|e| {
        let (k, v) = e.expect("entry");
        (
            k.value(),
            String::from_utf8(v.value().to_vec()).expect("utf8"),
        )
    })
    .collect()
}

fn all(v: &View) -> Vec<(u64, String)> {
    entries(v.open_table(T).expect("table").iter().expect("iter"))
}

#[test]
fn layer_replaces_hides_and_adds_in_key_order() {
    let m = mem();
    commit(&m, 1, |t| {
        t.insert(3, b"new3".as_slice()).expect("insert");
        t.insert(2, b"new2".as_slice()).expect("insert");
        t.insert(256, b"new256".as_slice()).expect("insert"); // LE bytes sort before 3's
        assert_eq!(
            t.remove(1).expect("remove").expect("had 1").value(),
            b"base1"
        );
        // The transaction reads its own writes.
        assert_eq!(t.get(2).expect("get").expect("2").value(), b"new2");
        assert!(t.get(1).expect("get").is_none());
    });
    let v = m.view().expect("view");
    let got = all(&v);
    let want = [(2, "new2"), (3, "new3"), (256, "new256"), (300, "base300")];
    assert_eq!(got, want.map(|(k, s)| (k, s.to_string())));
    let t = v.open_table(T).expect("table");
    let r: Vec<u64> = t
        .range(3..=256)
        .expect("range")
        .map(|e| e.expect("entry").0.value())
        .collect();
    assert_eq!(r, vec![3, 256]);
    assert!(t.get(1).expect("get").is_none());
    assert_eq!(t.range(5..5).expect("range").count(), 0);
}

#[test]
fn views_keep_their_snapshot_across_commits_and_checkpoints() {
    let m = mem();
    commit(&m, 1, |t| t.insert(7, b"v1".as_slice()).expect("insert"));
    let before = m.view().expect("view");
    commit(&m, 2, |t| {
        t.insert(7, b"v2".as_slice()).expect("insert");
        t.remove(3).expect("remove");
    });
    // Checkpoint: the layer is frozen, commits go on in a new one, the frozen one goes
    // into redb and is dropped.
    let frozen = m.freeze().expect("no checkpoint running");
    assert!(m.freeze().is_none(), "one checkpoint at a time");
    commit(&m, 3, |t| {
        t.insert(8, b"during".as_slice()).expect("insert")
    });
    let during = m.view().expect("view");
    let w = m.db().begin_write().expect("write");
    let mut schema = Schema::default();
    schema.table(T);
    schema.apply(&w, &frozen.latest()).expect("apply");
    w.commit().expect("commit");
    // Base and frozen layer agree until the thaw: a view taken now reads the same.
    let between = m.view().expect("view");
    m.thaw();
    for v in [&during, &between] {
        let t = v.open_table(T).expect("table");
        assert_eq!(t.get(7).expect("get").expect("7").value(), b"v2");
        assert_eq!(t.get(8).expect("get").expect("8").value(), b"during");
        assert!(t.get(3).expect("get").is_none());
        assert_eq!(all(v).len(), 4);
    }
    let after = m.view().expect("view");
    let t = before.open_table(T).expect("table");
    assert_eq!(t.get(7).expect("get").expect("7").value(), b"v1");
    assert_eq!(t.get(3).expect("get").expect("3").value(), b"base3");
    let t = after.open_table(T).expect("table");
    assert_eq!(t.get(7).expect("get").expect("7").value(), b"v2");
    assert!(t.get(3).expect("get").is_none());
    assert_eq!(t.get(8).expect("get").expect("8").value(), b"during");
    assert_eq!(all(&after).len(), 4);
}

#[test]
fn uncommitted_writes_are_invisible_and_dropping_discards_them() {
    let m = mem();
    let tx = m.begin().expect("begin");
    tx.open_table(T)
        .expect("table")
        .insert(9, b"x".as_slice())
        .expect("insert");
    assert!(m
        .view()
        .expect("view")
        .open_table(T)
        .expect("t")
        .get(9)
        .expect("get")
        .is_none());
    drop(tx);
    let tx = m.begin().expect("begin");
    assert!(tx.open_table(T).expect("t").get(9).expect("get").is_none());
}

#[test]
fn byte_ordered_keys_compare_as_bytes_others_as_redb_does() {
    // No UTF-8 validation for `&str` keys (redb's compare checks it on every call).
    assert_eq!(cmp_of::<&str>()(b"\xff", b"a"), Ordering::Greater);
    assert_eq!(cmp_of::<&[u8]>()(b"ab", b"b"), Ordering::Less);
    // u64 keys are little-endian bytes: byte order would put 256 before 3.
    let (a, b) = (256u64.to_le_bytes(), 3u64.to_le_bytes());
    assert_eq!(cmp_of::<u64>()(&a, &b), Ordering::Greater);
}

#[test]
fn redo_records_decode_to_the_writes() {
    let m = mem();
    let tx = m.begin().expect("begin");
    {
        let mut t = tx.open_table(T).expect("table");
        t.insert(5, b"five".as_slice()).expect("insert");
        t.remove(1).expect("remove");
    }
    let (redo, _) = tx.into_parts();
    let w = decode(&redo).expect("decode");
    assert_eq!(
        w,
        vec![
            (
                "t".to_string(),
                5u64.to_le_bytes().to_vec(),
                Some(b"five".to_vec())
            ),
            ("t".to_string(), 1u64.to_le_bytes().to_vec(), None),
        ]
    );
    assert!(decode(&redo[..redo.len() - 1]).is_err());
}

#[test]
fn ranges_merge_base_layer_and_own_writes_like_a_model() {
    let m = mem();
    let mut model: BTreeMap<u64, String> = [1u64, 3, 300].map(|k| (k, format!("base{k}"))).into();
    let mut x = 12345u64;
    let mut rnd = |n: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    let mut ops = Vec::new();
    for _ in 0..3000 {
        ops.push((rnd(4000), rnd(3) == 0));
    }
    let (committed, own) = ops.split_at(2500);
    for (seq, chunk) in committed.chunks(100).enumerate() {
        if seq == 12 {
            // Half the commits in a frozen layer (a checkpoint running), half over it.
            m.freeze().expect("freeze");
        }
        commit(&m, seq as u64 + 1, |t| {
            for &(k, del) in chunk {
                if del {
                    t.remove(k).expect("remove");
                } else {
                    t.insert(k, format!("c{k}").as_bytes()).expect("insert");
                }
            }
        });
    }
    for &(k, del) in committed {
        if del {
            model.remove(&k);
        } else {
            model.insert(k, format!("c{k}"));
        }
    }
    let check = |t: &dyn Fn(u64, u64) -> Vec<(u64, String)>, model: &BTreeMap<u64, String>| {
        for (a, b) in [(0, u64::MAX), (0, 10), (17, 2900), (3999, 4000), (500, 501)] {
            let want: Vec<_> = model.range(a..b).map(|(k, v)| (*k, v.clone())).collect();
            assert_eq!(t(a, b), want, "range {a}..{b}");
        }
    };
    let v = m.view().expect("view");
    let vt = v.open_table(T).expect("table");
    let read = |a: u64, b: u64| entries(vt.range(a..b).expect("range"));
    check(&read, &model);
    let tx = m.begin().expect("begin");
    let mut t = tx.open_table(T).expect("table");
    for &(k, del) in own {
        if del {
            t.remove(k).expect("remove");
            model.remove(&k);
        } else {
            t.insert(k, format!("o{k}").as_bytes()).expect("insert");
            model.insert(k, format!("o{k}"));
        }
    }
    let read = |a: u64, b: u64| entries(t.range(a..b).expect("range"));
    check(&read, &model);
}
