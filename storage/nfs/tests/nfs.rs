//! NFSv3 contract tests with the `nfs3_client` crate against an in-process server.

mod common;

use std::collections::HashSet;

use common::*;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::xdr_codec::Opaque;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_getattr_setattr_persist_exactly() {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let f = mkfile(&mut c, &root, "a.txt").await;
    write(&mut c, &f, 0, b"hello", stable_how::FILE_SYNC)
        .await
        .expect("write");
    let a = sattr3 {
        mode: Nfs3Option::Some(0),
        uid: Nfs3Option::Some(1234),
        gid: Nfs3Option::Some(5678),
        size: Nfs3Option::None,
        atime: set_atime::SET_TO_CLIENT_TIME(time(1_000_000_000, 123_456_789)),
        mtime: set_mtime::SET_TO_CLIENT_TIME(time(1_100_000_000, 987_654_321)),
    };
    let got = setattr(&mut c, &f, a).await.expect("setattr");
    assert_eq!((got.mode, got.uid, got.gid), (0, 1234, 5678));
    assert_eq!(got.atime, time(1_000_000_000, 123_456_789));
    assert_eq!(got.mtime, time(1_100_000_000, 987_654_321));
    assert_eq!(got.size, 5);
    let (fh2, la) = lookup(&mut c, &root, "a.txt").await.expect("lookup");
    assert_eq!(
        fh2.data.as_ref(),
        f.data.as_ref(),
        "lookup returns the same handle"
    );
    assert_eq!((la.mode, la.fileid), (0, got.fileid));
    // size via setattr: truncate and extend
    let mut s = sattr3 {
        size: Nfs3Option::Some(2),
        ..Default::default()
    };
    assert_eq!(setattr(&mut c, &f, s.clone()).await.expect("trunc").size, 2);
    s.size = Nfs3Option::Some(4);
    setattr(&mut c, &f, s).await.expect("extend");
    assert_eq!(read_all(&mut c, &f).await, b"he\0\0");
    assert!(matches!(
        lookup(&mut c, &root, "nope").await,
        Err(nfsstat3::NFS3ERR_NOENT)
    ));
    // Everything survives a restart, reported exactly.
    drop(c);
    srv.stop().await;
    let srv = start(d.path()).await;
    let mut c = srv.mount("default").await;
    let a2 = getattr(&mut c, &f).await.expect("old handle after restart");
    assert_eq!((a2.mode, a2.uid, a2.gid, a2.size), (0, 1234, 5678, 4));
    assert_eq!(a2.atime, time(1_000_000_000, 123_456_789));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_at_offset_touches_only_covered_chunks_and_beyond_4gib() {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let f = mkfile(&mut c, &root, "big").await;
    let data = pattern(1, 4 * MIB);
    for (i, part) in data.chunks(MIB).enumerate() {
        write(&mut c, &f, (i * MIB) as u64, part, stable_how::UNSTABLE)
            .await
            .expect("write");
    }
    commit(&mut c, &f).await.expect("commit");
    let before = srv
        .store
        .open_object("default", "big")
        .expect("obj")
        .chunk_ids();
    assert_eq!(before.len(), 4);
    write(
        &mut c,
        &f,
        2 * MIB as u64 + 5,
        b"patch",
        stable_how::FILE_SYNC,
    )
    .await
    .expect("write");
    let after = srv
        .store
        .open_object("default", "big")
        .expect("obj")
        .chunk_ids();
    assert_eq!(after.len(), 4);
    let changed: Vec<usize> = (0..4).filter(|i| before[*i] != after[*i]).collect();
    assert_eq!(
        changed,
        [2],
        "only the chunk holding the write is rewritten"
    );
    let mut want = data.clone();
    want[2 * MIB + 5..2 * MIB + 10].copy_from_slice(b"patch");
    assert_eq!(read_all(&mut c, &f).await, want);
    // Offsets past 4 GiB (sparse: zero chunks are shared).
    let g = mkfile(&mut c, &root, "huge").await;
    let off = 5u64 << 30;
    write(&mut c, &g, off, b"tail", stable_how::FILE_SYNC)
        .await
        .expect("write 5 GiB");
    let a = getattr(&mut c, &g).await.expect("attr");
    assert_eq!(a.size, off + 4);
    assert_eq!(
        read(&mut c, &g, off - 2, 10).await.expect("read"),
        (b"\0\0tail".to_vec(), true)
    );
    assert_eq!(
        read(&mut c, &g, 1 << 32, 4).await.expect("read").0,
        [0, 0, 0, 0]
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_modes_mkdir_rmdir_remove_rename_symlink() {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let f = mkfile(&mut c, &root, "f").await;
    write(&mut c, &f, 0, b"abc", stable_how::FILE_SYNC)
        .await
        .expect("w");
    // unchecked on an existing file opens it
    let f2 = create(&mut c, &root, "f", createhow3::UNCHECKED(sattr3::default()))
        .await
        .expect("unchecked");
    assert_eq!(f2.data.as_ref(), f.data.as_ref());
    assert_eq!(read_all(&mut c, &f).await, b"abc");
    assert_eq!(
        create(&mut c, &root, "f", createhow3::GUARDED(sattr3::default())).await,
        Err(nfsstat3::NFS3ERR_EXIST)
    );
    let v = createverf3([1, 2, 3, 4, 5, 6, 7, 8]);
    let e1 = create(&mut c, &root, "x", createhow3::EXCLUSIVE(v))
        .await
        .expect("exclusive");
    let e2 = create(&mut c, &root, "x", createhow3::EXCLUSIVE(v))
        .await
        .expect("retry, same verifier");
    assert_eq!(e1.data.as_ref(), e2.data.as_ref());
    assert_eq!(
        create(
            &mut c,
            &root,
            "x",
            createhow3::EXCLUSIVE(createverf3([9; 8]))
        )
        .await,
        Err(nfsstat3::NFS3ERR_EXIST)
    );
    // mkdir with mode, nested, rmdir rules
    let d1 = mkdir(&mut c, &root, "d1", Some(0o700))
        .await
        .expect("mkdir");
    assert_eq!(getattr(&mut c, &d1).await.expect("a").mode, 0o700);
    assert_eq!(getattr(&mut c, &d1).await.expect("a").type_, ftype3::NF3DIR);
    assert_eq!(
        mkdir(&mut c, &root, "d1", None).await,
        Err(nfsstat3::NFS3ERR_EXIST)
    );
    let d2 = mkdir(&mut c, &d1, "d2", None).await.expect("mkdir");
    let inner = mkfile(&mut c, &d2, "inner").await;
    assert_eq!(
        rmdir(&mut c, &root, "d1").await,
        Err(nfsstat3::NFS3ERR_NOTEMPTY)
    );
    assert_eq!(
        rmdir(&mut c, &root, "f").await,
        Err(nfsstat3::NFS3ERR_NOTDIR)
    );
    assert_eq!(
        remove(&mut c, &root, "d1").await,
        Err(nfsstat3::NFS3ERR_ISDIR)
    );
    // rename within a directory, across directories, over an existing file, a directory
    rename(&mut c, &root, "f", &root, "g")
        .await
        .expect("rename");
    assert!(lookup(&mut c, &root, "f").await.is_err());
    assert_eq!(
        read_all(&mut c, &f).await,
        b"abc",
        "handle follows the rename"
    );
    rename(&mut c, &root, "g", &d2, "g").await.expect("across");
    assert_eq!(getattr(&mut c, &f).await.expect("a").size, 3);
    write(&mut c, &inner, 0, b"old", stable_how::FILE_SYNC)
        .await
        .expect("w");
    rename(&mut c, &d2, "g", &d2, "inner")
        .await
        .expect("over existing");
    assert_eq!(
        getattr(&mut c, &inner).await.err(),
        Some(nfsstat3::NFS3ERR_STALE)
    );
    let inner2 = lookup(&mut c, &d2, "inner").await.expect("l").0;
    assert_eq!(read_all(&mut c, &inner2).await, b"abc");
    rename(&mut c, &root, "d1", &root, "moved")
        .await
        .expect("rename dir");
    assert_eq!(
        getattr(&mut c, &d2)
            .await
            .expect("subdir handle survives")
            .type_,
        ftype3::NF3DIR
    );
    assert_eq!(
        srv.store
            .head("default", "moved/d2/inner")
            .expect("moved object")
            .size,
        3
    );
    // symlink / readlink
    let r = res(c
        .symlink(&SYMLINK3args {
            where_: dirop(&root, "ln"),
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: nfspath3::from(b"moved/d2/inner".to_vec()),
            },
        })
        .await
        .expect("rpc"))
    .expect("symlink");
    let ln = fh_of(&r.obj);
    assert_eq!(getattr(&mut c, &ln).await.expect("a").type_, ftype3::NF3LNK);
    let t = res(c
        .readlink(&READLINK3args {
            symlink: ln.clone(),
        })
        .await
        .expect("rpc"))
    .expect("readlink");
    assert_eq!(t.data.as_ref(), b"moved/d2/inner");
    // remove
    remove(&mut c, &root, "x").await.expect("remove");
    assert_eq!(
        remove(&mut c, &root, "x").await,
        Err(nfsstat3::NFS3ERR_NOENT)
    );
    // rmdir of an emptied directory
    remove(&mut c, &d2, "inner").await.expect("remove");
    let moved = lookup(&mut c, &root, "moved").await.expect("l").0;
    rmdir(&mut c, &moved, "d2").await.expect("rmdir");
    let names: HashSet<String> = list(&mut c, &root).await.into_iter().collect();
    let want: HashSet<String> = [".", "..", "ln", "moved"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, want);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_cookies_survive_concurrent_changes() {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let dir = mkdir(&mut c, &root, "dir", None).await.expect("mkdir");
    for i in 0..60 {
        mkfile(&mut c, &dir, &format!("f{i:03}")).await;
    }
    // first page: starts with . and ..
    let (p1, verf, eof) = readdirplus(&mut c, &dir, 0, cookieverf3::default(), 1200)
        .await
        .expect("page");
    assert!(!eof);
    assert_eq!(p1[0].0, ".");
    assert_eq!(p1[1].0, "..");
    let seen: Vec<String> = p1.iter().map(|e| e.0.clone()).collect();
    let last = p1.last().expect("entries").clone();
    // change the directory between pages: remove the last returned entry and an unseen one,
    // add names before and after the cursor
    remove(&mut c, &dir, &last.0)
        .await
        .expect("remove cursor entry");
    remove(&mut c, &dir, "f059").await.expect("remove unseen");
    mkfile(&mut c, &dir, "a-new").await;
    mkfile(&mut c, &dir, "z-new").await;
    let (mut cookie, mut verf) = (last.1, verf);
    let mut rest = Vec::new();
    loop {
        let (v, nv, eof) = readdirplus(&mut c, &dir, cookie, verf, 1200)
            .await
            .expect("resume after change");
        verf = nv;
        if let Some(l) = v.last() {
            cookie = l.1;
        }
        rest.extend(v.into_iter().map(|e| e.0));
        if eof {
            break;
        }
    }
    let all: Vec<&String> = seen.iter().chain(&rest).collect();
    let uniq: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(uniq.len(), all.len(), "no entry twice");
    for i in 0..59 {
        let n = format!("f{i:03}");
        assert!(uniq.contains(&n), "{n} listed");
    }
    assert!(!uniq.contains(&"f059".to_string()));
    assert!(
        rest.contains(&"z-new".to_string()),
        "entries added after the cursor appear"
    );
    // plain READDIR with its verifier, across a change
    let (r1, v1, _) = readdir(&mut c, &dir, 0, cookieverf3::default(), 400)
        .await
        .expect("readdir");
    assert_eq!(r1[0].0, ".");
    mkfile(&mut c, &dir, "zz-during").await;
    let cookie = r1.last().expect("e").1;
    let (r2, _, _) = readdir(&mut c, &dir, cookie, v1, 100_000)
        .await
        .expect("READDIR cookie after change");
    assert!(r2.iter().any(|e| e.0 == "zz-during"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsstat_fsinfo_pathconf_and_unsupported_procedures() {
    let d = tempfile::tempdir().expect("tmp");
    let store = open_store(d.path(), |_| {}).await;
    store
        .create_share("quota", Some(10_000), false)
        .expect("share");
    let srv = start_with(d.path(), store, |_| {}).await;
    let mut c = srv.mount("quota").await;
    let root = c.root_nfs_fh3();
    let f = mkfile(&mut c, &root, "f").await;
    write(&mut c, &f, 0, &[1u8; 1000], stable_how::FILE_SYNC)
        .await
        .expect("w");
    let st = res(c
        .fsstat(&FSSTAT3args {
            fsroot: root.clone(),
        })
        .await
        .expect("rpc"))
    .expect("fsstat");
    assert_eq!(st.tbytes, 10_000);
    assert_eq!(st.fbytes, 9_000);
    let fi = res(c
        .fsinfo(&FSINFO3args {
            fsroot: root.clone(),
        })
        .await
        .expect("rpc"))
    .expect("fsinfo");
    assert_eq!(fi.maxfilesize, tm_storage::MAX_FILE_SIZE);
    assert!(fi.wtmax >= 64 << 10 && fi.rtmax >= 64 << 10);
    let pc = res(c
        .pathconf(&PATHCONF3args {
            object: root.clone(),
        })
        .await
        .expect("rpc"))
    .expect("pathconf");
    assert!(pc.name_max >= 255);
    let mk = c
        .mknod(&MKNOD3args {
            where_: dirop(&root, "fifo"),
            what: mknoddata3::NF3FIFO(sattr3::default()),
        })
        .await
        .expect("rpc");
    assert_eq!(res(mk).err(), Some(nfsstat3::NFS3ERR_NOTSUPP));
    let ln = c
        .link(&LINK3args {
            file: f.clone(),
            link: dirop(&root, "hard"),
        })
        .await
        .expect("rpc");
    assert_eq!(res(ln).err(), Some(nfsstat3::NFS3ERR_NOTSUPP));
    assert!(
        lookup(&mut c, &root, "hard").await.is_err(),
        "no wrong success"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_is_durable_and_verifier_changes_per_boot() {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let f = mkfile(&mut c, &root, "u").await;
    let w = write(&mut c, &f, 0, b"unstable data", stable_how::UNSTABLE)
        .await
        .expect("w");
    assert_eq!(w.committed, stable_how::UNSTABLE);
    let v = commit(&mut c, &f).await.expect("commit");
    assert_eq!(v.0, w.verf.0, "same boot, same verifier");
    assert_eq!(
        get_object(&srv.store, "default", "u"),
        b"unstable data",
        "visible as an object after COMMIT"
    );
    let w2 = write(&mut c, &f, 0, b"SYNC", stable_how::FILE_SYNC)
        .await
        .expect("w");
    assert_eq!(w2.committed, stable_how::FILE_SYNC);
    assert_eq!(
        get_object(&srv.store, "default", "u"),
        b"SYNCable data",
        "FILE_SYNC is durable at reply"
    );
    drop(c);
    srv.stop().await;
    // reopen the store: the committed bytes are there
    let srv = start(d.path()).await;
    assert_eq!(get_object(&srv.store, "default", "u"), b"SYNCable data");
    let mut c = srv.mount("default").await;
    let v2 = commit(&mut c, &f).await.expect("commit");
    assert_ne!(v2.0, v.0, "a new boot has a new write verifier");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_refused_outside_mesh_allowed_inside() {
    let d = tempfile::tempdir().expect("tmp");
    let store = open_store(d.path(), |_| {}).await;
    // loopback not trusted and not in the allow list: refused at MNT with MNT3ERR_ACCES
    let srv = start_with(d.path(), store.clone(), |c| allow_loopback(c, false)).await;
    let e = mount(srv.addr, "/shares/default")
        .await
        .err()
        .expect("refused");
    assert!(format!("{e:?}").contains("MNT3ERR_ACCES"), "{e:?}");
    // and NFS calls with a guessed handle are refused too
    srv.stop().await;
    // a mesh CIDR that contains the source: allowed
    let srv = start_with(d.path(), store, |c| {
        allow_loopback(c, false);
        c.allow = vec![cidr("127.0.0.0/8")];
    })
    .await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    assert_eq!(
        getattr(&mut c, &root).await.expect("attr").type_,
        ftype3::NF3DIR
    );
    assert!(mount(srv.addr, "/shares/nosuch").await.is_err());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_share_and_quota_store_nothing() {
    let d = tempfile::tempdir().expect("tmp");
    let store = open_store(d.path(), |_| {}).await;
    store.create_share("readonly", None, false).expect("share");
    store
        .create_share("small", Some(4096), false)
        .expect("share");
    let srv = start_with(d.path(), store, |_| {}).await;
    let mut c = srv.mount("readonly").await;
    let root = c.root_nfs_fh3();
    let f = mkfile(&mut c, &root, "f").await;
    srv.store
        .set_share_read_only("readonly", true)
        .expect("readonly");
    assert_eq!(
        create(&mut c, &root, "g", createhow3::GUARDED(sattr3::default())).await,
        Err(nfsstat3::NFS3ERR_ROFS)
    );
    assert_eq!(
        write(&mut c, &f, 0, b"x", stable_how::UNSTABLE).await.err(),
        Some(nfsstat3::NFS3ERR_ROFS)
    );
    assert_eq!(
        mkdir(&mut c, &root, "d", None).await,
        Err(nfsstat3::NFS3ERR_ROFS)
    );
    assert_eq!(
        remove(&mut c, &root, "f").await,
        Err(nfsstat3::NFS3ERR_ROFS)
    );
    assert_eq!(read_all(&mut c, &f).await, b"", "reads still work");
    let mut c = srv.mount("small").await;
    let root = c.root_nfs_fh3();
    let f = mkfile(&mut c, &root, "f").await;
    let used = srv.store.usage("small").expect("usage");
    for stable in [stable_how::UNSTABLE, stable_how::FILE_SYNC] {
        assert_eq!(
            write(&mut c, &f, 0, &[7u8; 8192], stable).await.err(),
            Some(nfsstat3::NFS3ERR_DQUOT)
        );
    }
    commit(&mut c, &f).await.expect("nothing pending");
    assert_eq!(
        srv.store.usage("small").expect("usage"),
        used,
        "nothing stored"
    );
    assert_eq!(getattr(&mut c, &f).await.expect("a").size, 0);
    write(&mut c, &f, 0, &[7u8; 4000], stable_how::FILE_SYNC)
        .await
        .expect("fits");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_session_keeps_handles_valid() {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let dir = mkdir(&mut c, &root, "keep", None).await.expect("mkdir");
    let f = mkfile(&mut c, &dir, "open.txt").await;
    write(&mut c, &f, 0, b"before restart", stable_how::UNSTABLE)
        .await
        .expect("w");
    commit(&mut c, &f).await.expect("commit");
    srv.stop().await;
    // same client connection state (handles) against the restarted server on a new port
    let srv = start(d.path()).await;
    let mut c2 = mount(srv.addr, "/shares/default").await.expect("remount");
    assert_eq!(
        c2.root_nfs_fh3().data.as_ref(),
        root.data.as_ref(),
        "root handle is stable"
    );
    assert_eq!(read_all(&mut c2, &f).await, b"before restart");
    write(&mut c2, &f, 14, b", after", stable_how::FILE_SYNC)
        .await
        .expect("write with old handle");
    assert_eq!(read_all(&mut c2, &f).await, b"before restart, after");
    assert_eq!(
        lookup(&mut c2, &dir, "open.txt")
            .await
            .expect("l")
            .0
            .data
            .as_ref(),
        f.data.as_ref()
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_protocol_same_bytes_both_ways() {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    // S3 -> NFS, with directories from key prefixes
    let body = pattern(7, 3 * MIB + 17);
    put_object(&srv.store, "default", "photos/2024/img.bin", &body);
    let (p, pa) = lookup(&mut c, &root, "photos")
        .await
        .expect("prefix is a directory");
    assert_eq!(pa.type_, ftype3::NF3DIR);
    let (y, _) = lookup(&mut c, &p, "2024").await.expect("nested prefix");
    let (img, ia) = lookup(&mut c, &y, "img.bin")
        .await
        .expect("object is a file");
    assert_eq!(ia.size, body.len() as u64);
    assert_eq!(read_all(&mut c, &img).await, body);
    assert!(list(&mut c, &root).await.contains(&"photos".to_string()));
    // an S3 overwrite is visible at once through the same handle
    put_object(&srv.store, "default", "photos/2024/img.bin", b"replaced");
    assert_eq!(read_all(&mut c, &img).await, b"replaced");
    // NFS -> S3
    let f = mkfile(&mut c, &p, "from-nfs.txt").await;
    let data = pattern(9, MIB + 3);
    write(&mut c, &f, 0, &data, stable_how::UNSTABLE)
        .await
        .expect("w");
    commit(&mut c, &f).await.expect("commit");
    assert_eq!(
        get_object(&srv.store, "default", "photos/from-nfs.txt"),
        data
    );
    mkdir(&mut c, &root, "empty", None).await.expect("mkdir");
    assert!(
        srv.store.head("default", "empty/").is_ok(),
        "directory marker object"
    );
    // deleting over S3 makes the NFS handle stale, not wrong
    srv.store
        .delete_object("default", "photos/from-nfs.txt")
        .expect("delete");
    assert_eq!(
        getattr(&mut c, &f).await.err(),
        Some(nfsstat3::NFS3ERR_STALE)
    );
    srv.stop().await;
}

/// The "same bytes over S3, immediately": an UNSTABLE write that was never COMMITted
/// is already what an S3 GET/HEAD/LIST/COPY of the object (same process, same `Store`, as in
/// the daemon) returns; COMMIT afterwards still makes it durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstable_write_is_visible_over_s3_before_commit() {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let f = mkfile(&mut c, &root, "live.txt").await;
    let w = write(&mut c, &f, 0, b"written over nfs", stable_how::UNSTABLE)
        .await
        .expect("w");
    assert_eq!(w.committed, stable_how::UNSTABLE, "really left unstable");
    assert_eq!(
        get_object(&srv.store, "default", "live.txt"),
        b"written over nfs",
        "S3 GET sees the UNSTABLE write without COMMIT"
    );
    // a second unstable write into the middle and one past the end
    write(&mut c, &f, 8, b"OVER", stable_how::UNSTABLE)
        .await
        .expect("w");
    write(&mut c, &f, 20, b"tail", stable_how::UNSTABLE)
        .await
        .expect("w");
    assert_eq!(
        srv.store.head("default", "live.txt").expect("head").size,
        24
    );
    let listed = srv
        .store
        .list_objects("default", "live", None, 10)
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, 24, "LIST reports the staged size");
    assert_eq!(
        get_object(&srv.store, "default", "live.txt"),
        b"written OVER nfs\0\0\0\0tail"
    );
    write(&mut c, &f, 0, b"W", stable_how::UNSTABLE)
        .await
        .expect("w");
    srv.store
        .copy_object("default", "live.txt", "default", "copy.txt", None)
        .expect("copy");
    assert_eq!(
        get_object(&srv.store, "default", "copy.txt"),
        b"Written OVER nfs\0\0\0\0tail"
    );
    // large unstable write (several chunks) too
    let big = pattern(3, 3 * MIB + 5);
    let g = mkfile(&mut c, &root, "big.bin").await;
    for (i, piece) in big.chunks(256 << 10).enumerate() {
        write(
            &mut c,
            &g,
            (i * (256 << 10)) as u64,
            piece,
            stable_how::UNSTABLE,
        )
        .await
        .expect("w");
    }
    assert_eq!(get_object(&srv.store, "default", "big.bin"), big);
    // COMMIT still answers and the bytes survive a restart
    write(&mut c, &f, 1, b"X", stable_how::UNSTABLE)
        .await
        .expect("w");
    commit(&mut c, &f).await.expect("commit");
    drop(c);
    srv.stop().await;
    let srv = start(d.path()).await;
    assert_eq!(
        get_object(&srv.store, "default", "live.txt"),
        b"WXitten OVER nfs\0\0\0\0tail"
    );
    srv.stop().await;
}

/// 1 GiB written and read back byte for byte (release test runs only: `cargo test --release`).
#[cfg_attr(debug_assertions, ignore = "1 GiB: run with --release")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_file_round_trip() {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let f = mkfile(&mut c, &root, "gig.bin").await;
    let n = 1024;
    let t = std::time::Instant::now();
    for i in 0..n {
        let data = pattern(i, MIB);
        let r = c
            .write(&WRITE3args {
                file: f.clone(),
                offset: i * MIB as u64,
                count: MIB as u32,
                stable: stable_how::UNSTABLE,
                data: Opaque::owned(data),
            })
            .await
            .expect("rpc");
        res(r).expect("write");
    }
    commit(&mut c, &f).await.expect("commit");
    eprintln!("1 GiB written in {:?}", t.elapsed());
    assert_eq!(getattr(&mut c, &f).await.expect("a").size, 1 << 30);
    let t = std::time::Instant::now();
    for i in 0..n {
        let (d, _) = read(&mut c, &f, i * MIB as u64, MIB as u32)
            .await
            .expect("read");
        assert!(d == pattern(i, MIB), "MiB {i} differs");
    }
    eprintln!("1 GiB read in {:?}", t.elapsed());
    srv.stop().await;
}
