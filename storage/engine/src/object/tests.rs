//! Unit tests of the object layer over the metadata database.

use super::meta::CHUNK_DATA;
use super::types::StoreConfig;
use super::Store;
use crate::db::ReadTable as _;

fn key(i: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&i.to_be_bytes());
    k
}

fn get(s: &Store, i: u32) -> Option<Vec<u8>> {
    let v = s.view().expect("view");
    let t = v.open_table(CHUNK_DATA).expect("table");
    let r = t
        .get(key(i).as_slice())
        .expect("get")
        .map(|g| g.value().to_vec());
    r
}

#[test]
fn background_checkpoints_and_an_oversized_batch_survive_reopen() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = StoreConfig::new(d.path());
    let big = vec![7u8; crate::db::wal::RECORD_MAX + 1000];
    {
        let s = Store::open(cfg.clone()).expect("open");
        // ~1 MiB of records: several background checkpoints, both halves of the log.
        for i in 0..3000u32 {
            s.txn(move |tx, _| {
                let mut t = tx.open_table(CHUNK_DATA)?;
                t.insert(key(i).as_slice(), vec![i as u8; 300].as_slice())?;
                if i % 3 == 0 && i > 0 {
                    t.remove(key(i - 1).as_slice())?;
                }
                Ok(())
            })
            .expect("commit");
        }
        // One batch larger than a log record: committed by a blocking checkpoint.
        let b = big.clone();
        s.txn(move |tx, _| {
            tx.open_table(CHUNK_DATA)?
                .insert(key(u32::MAX).as_slice(), b.as_slice())?;
            Ok(())
        })
        .expect("oversized commit");
        assert_eq!(get(&s, u32::MAX).as_deref(), Some(big.as_slice()));
        assert_eq!(get(&s, 2999), Some(vec![2999u32 as u8; 300]));
    }
    let s = Store::open(cfg).expect("reopen");
    for i in 0..3000u32 {
        let want = (i % 3 != 2 || i == 2999).then(|| vec![i as u8; 300]);
        assert_eq!(get(&s, i), want, "key {i} after reopen");
    }
    assert_eq!(get(&s, u32::MAX).as_deref(), Some(big.as_slice()));
}
