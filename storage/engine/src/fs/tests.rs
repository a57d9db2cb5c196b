//! Unit tests of the file-system view.

use super::*;
use crate::object::types::{ObjectMeta, StoreConfig};

fn fs() -> (tempfile::TempDir, FileSystem) {
    let d = tempfile::tempdir().expect("tempdir");
    let mut c = StoreConfig::new(d.path());
    c.chunk_size = 64;
    let s = Store::open(c).expect("open");
    s.ensure_share("default").expect("share");
    (d, FileSystem::new(s).expect("fs"))
}

/// [`fs`] with an empty file `name` in the default share's root: (dir, fs, root, file).
fn fs_with_file(name: &str) -> (tempfile::TempDir, FileSystem, u64, FileAttr) {
    let (d, fs) = fs();
    let root = fs.share_root("default").expect("root").ino;
    let f = fs
        .create(root, name, CreateMode::Unchecked, &SetAttrs::default())
        .expect("create");
    (d, fs, root, f)
}

#[test]
fn create_write_read_rename_remove() {
    let (_d, fs) = fs();
    let root = fs.share_root("default").expect("root").ino;
    let f = fs
        .create(root, "a.txt", CreateMode::Guarded, &SetAttrs::default())
        .expect("create");
    assert_eq!(f.size, 0);
    let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    fs.write(f.ino, &[(0, &data)]).expect("write");
    fs.write(f.ino, &[(100, b"XYZ")]).expect("write at");
    let (got, eof) = fs.read(f.ino, 0, 1000).expect("read");
    assert!(eof);
    let mut want = data.clone();
    want[100..103].copy_from_slice(b"XYZ");
    assert_eq!(got, want);
    assert_eq!(
        fs.store()
            .open_object("default", "a.txt")
            .expect("obj")
            .size(),
        300
    );
    let sub = fs.mkdir(root, "sub", &SetAttrs::default()).expect("mkdir");
    fs.rename(root, "a.txt", sub.ino, "b.txt").expect("rename");
    assert_eq!(fs.getattr(f.ino).expect("same inode").size, 300);
    assert!(fs.store().head("default", "sub/b.txt").is_ok());
    assert!(matches!(
        fs.rmdir(root, "sub"),
        Err(FsError::DirectoryNotEmpty)
    ));
    fs.remove(sub.ino, "b.txt").expect("remove");
    assert!(matches!(fs.getattr(f.ino), Err(FsError::Stale)));
    fs.rmdir(root, "sub").expect("rmdir");
    let (ents, eof) = fs.readdir(root, 0, 100).expect("readdir");
    assert!(eof);
    assert_eq!(
        ents.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        [".", ".."]
    );
    assert_eq!(fs.store().fsck().expect("fsck").bad_refcounts, 0);
}

#[test]
fn cached_readers_follow_every_change() {
    let (_d, fs, root, f) = fs_with_file("c");
    fs.write(f.ino, &[(0, b"first version")]).expect("write");
    let (got, _, a) = fs.read_with_attr(f.ino, 0, 100).expect("read");
    assert_eq!(got, b"first version");
    // Replaced over S3: the next read sees the new bytes and size.
    let mut w = fs
        .store()
        .begin_put("default", "c", ObjectMeta::default())
        .expect("put");
    w.write_all(&[7u8; 150]).expect("body");
    w.commit().expect("commit");
    let (got, _, b) = fs.read_with_attr(f.ino, 0, 1000).expect("read");
    assert_eq!(got, vec![7u8; 150]);
    assert_eq!(b.size, 150);
    // A chmod shows in the attributes a READ returns.
    fs.setattr(
        f.ino,
        &SetAttrs {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .expect("chmod");
    let (_, _, c) = fs.read_with_attr(f.ino, 0, 10).expect("read");
    assert_eq!(c.mode, 0o600);
    assert_ne!(a.mode, 0o600);
    // A staged (unstable) write shows before it is committed.
    fs.stage(f.ino, 0, b"ZZ").expect("stage");
    let (got, _, _) = fs.read_with_attr(f.ino, 0, 4).expect("read");
    assert_eq!(got, b"ZZ\x07\x07");
    // Removed: the handle is stale, not served from the cache.
    fs.remove(root, "c").expect("remove");
    assert!(matches!(
        fs.read_with_attr(f.ino, 0, 4),
        Err(FsError::Stale)
    ));
}

#[test]
fn read_ahead_is_used_only_while_current() {
    let (_d, fs, _, f) = fs_with_file("ra");
    fs.write(f.ino, &[(0, b"0123456789")]).expect("write");
    let read = |ahead| fs.read_with_attr_ahead(ahead, f.ino, 4, 4).expect("read").0;
    // Current: the bytes read ahead; beyond the end: nothing to read ahead.
    assert_eq!(read(fs.read_ahead(f.ino, 4, 4)), b"4567");
    assert!(fs.read_ahead(f.ino, 10, 4).is_none());
    // Another range than the one asked for: read afresh.
    assert_eq!(read(fs.read_ahead(f.ino, 0, 4)), b"4567");
    // Replaced over S3 after the read-ahead: the new bytes.
    let ahead = fs.read_ahead(f.ino, 4, 4);
    let mut w = fs
        .store()
        .begin_put("default", "ra", ObjectMeta::default())
        .expect("put");
    w.write_all(b"abcdefghij").expect("body");
    w.commit().expect("commit");
    assert_eq!(read(ahead), b"efgh");
    // Written over NFS (staged, not committed) after the read-ahead: the new bytes.
    let ahead = fs.read_ahead(f.ino, 4, 4);
    fs.stage(f.ino, 5, b"XY").expect("stage");
    assert_eq!(read(ahead), b"eXYh");
    fs.stage(f.ino, 0, b"Q").expect("stage");
    assert!(
        fs.read_ahead(f.ino, 4, 4).is_none(),
        "nothing ahead while staged"
    );
}

#[test]
fn staged_writes_are_seen_by_store_reads_and_follow_renames() {
    let (_d, fs, root, f) = fs_with_file("s");
    // 200 bytes over 64-byte chunks, in pieces that cross chunk boundaries
    let data: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
    for (i, piece) in data.chunks(30).enumerate() {
        fs.stage(f.ino, (i * 30) as u64, piece).expect("stage");
    }
    assert!(fs.is_staged(f.ino));
    assert_eq!(fs.getattr(f.ino).expect("attr").size, 200, "size overlay");
    let s = fs.store().clone();
    assert_eq!(s.head("default", "s").expect("head").size, 200);
    let o = s.open_object("default", "s").expect("open");
    let mut got = vec![0u8; 200];
    assert_eq!(o.read_at(0, &mut got).expect("read"), 200);
    assert_eq!(got, data, "an S3 read applies the staged writes first");
    assert!(!fs.is_staged(f.ino), "applied and forgotten");
    // staged, then renamed: the bytes go with the file
    fs.stage(f.ino, 0, b"AB").expect("stage");
    fs.rename(root, "s", root, "t").expect("rename");
    let o = s.open_object("default", "t").expect("open");
    let mut two = [0u8; 2];
    o.read_at(0, &mut two).expect("read");
    assert_eq!(&two, b"AB");
    // staged, then removed: nothing is applied to a later file of that name
    fs.stage(f.ino, 0, b"zz").expect("stage");
    fs.remove(root, "t").expect("remove");
    assert!(!fs.is_staged(f.ino));
    assert_eq!(fs.staged_bytes(), 0);
    assert_eq!(fs.store().fsck().expect("fsck").bad_refcounts, 0);
}

#[test]
fn edit_touches_only_covered_chunks() {
    let (_d, fs, _, f) = fs_with_file("f");
    let data = vec![7u8; 64 * 10];
    fs.write(f.ino, &[(0, &data)]).expect("write");
    let before = fs
        .store()
        .open_object("default", "f")
        .expect("o")
        .manifest()
        .to_vec();
    fs.write(f.ino, &[(64 * 4 + 3, b"hi")]).expect("write");
    let after = fs
        .store()
        .open_object("default", "f")
        .expect("o")
        .manifest()
        .to_vec();
    assert_eq!(before.len(), after.len());
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(changed, 1);
    fs.setattr(
        f.ino,
        &SetAttrs {
            size: Some(64 * 3 + 1),
            ..Default::default()
        },
    )
    .expect("truncate");
    assert_eq!(fs.getattr(f.ino).expect("attr").size, 64 * 3 + 1);
    let (got, _) = fs.read(f.ino, 64 * 3, 10).expect("read");
    assert_eq!(got, [7u8]);
}
