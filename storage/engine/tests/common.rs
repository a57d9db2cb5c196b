//! Shared test helpers.
#![allow(dead_code)]

use std::path::Path;

use md5::{Digest, Md5};
use tm_storage::{ObjectMeta, Store, StoreConfig};

pub const CS: u32 = 4096;

pub fn open(dir: &Path) -> Store {
    open_cfg(dir, CS, None)
}

pub fn open_cfg(dir: &Path, chunk_size: u32, max_size: Option<u64>) -> Store {
    Store::open(StoreConfig {
        data_dir: dir.to_path_buf(),
        max_size,
        chunk_size,
        ..StoreConfig::new(dir)
    })
    .expect("open store")
}

/// Deterministic pseudo-random bytes.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn md5_hex(b: &[u8]) -> String {
    hex(&Md5::digest(b))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Put `body` in pieces of `piece` bytes.
pub fn put(
    store: &Store,
    bucket: &str,
    key: &str,
    body: &[u8],
    piece: usize,
) -> tm_storage::ObjectInfo {
    let mut w = store
        .begin_put(bucket, key, ObjectMeta::default())
        .expect("begin_put");
    for p in body.chunks(piece.max(1)) {
        w.write_all(p).expect("write");
    }
    w.commit().expect("commit")
}

pub fn get(store: &Store, bucket: &str, key: &str) -> Vec<u8> {
    use std::io::Read;
    let r = store.open_object(bucket, key).expect("open_object");
    let mut out = Vec::new();
    r.reader().read_to_end(&mut out).expect("read");
    out
}

/// Number of chunk files on disk.
pub fn chunk_files(dir: &Path) -> usize {
    let mut n = 0;
    for xx in std::fs::read_dir(dir.join("chunks")).expect("chunks dir") {
        let xx = xx.expect("entry").path();
        if !xx.is_dir() {
            continue;
        }
        for yy in std::fs::read_dir(xx).expect("xx") {
            let yy = yy.expect("entry").path();
            n += std::fs::read_dir(yy).expect("yy").count();
        }
    }
    n
}

pub fn assert_healthy(store: &Store) {
    let r = store.fsck().expect("fsck");
    assert_eq!(
        (r.missing_chunks, r.bad_refcounts, r.bad_sizes, r.bad_usage),
        (0, 0, 0, 0),
        "fsck: {r:?}"
    );
}
