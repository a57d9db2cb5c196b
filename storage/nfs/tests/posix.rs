//! POSIX semantics for stock clients: AUTH_SYS identities own what they create (durably),
//! permission bits are enforced for them, per-share squashing, AUTH_NONE and unknown flavours
//! refused, ACCESS answered from the mode bits; the same with libnfs-utils as different uids.

mod common;

use std::process::Command;

use common::raw::*;
use common::*;
use nfs3_client::nfs3_types::nfs3::*;
use tm_storage::Squash;

const U1: u32 = 1000;
const U2: u32 = 2000;

async fn mount_user(srv: &Srv, uid: u32, gid: u32) -> Conn {
    mount_as(srv.addr, "/shares/default", uid, gid, &[])
        .await
        .expect("mount")
}

fn mode(m: u32) -> sattr3 {
    sattr3 {
        mode: Nfs3Option::Some(m),
        ..Default::default()
    }
}

async fn symlink(c: &mut Conn, dir: &nfs_fh3, n: &str, to: &str) -> Result<fattr3, nfsstat3> {
    let r = res(c
        .symlink(&SYMLINK3args {
            where_: dirop(dir, n),
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: nfspath3::from(to.as_bytes().to_vec()),
            },
        })
        .await
        .expect("rpc"))?;
    Ok(attr_of(&r.obj_attributes))
}

async fn access(c: &mut Conn, fh: &nfs_fh3, want: u32) -> u32 {
    res(c
        .access(&ACCESS3args {
            object: fh.clone(),
            access: want,
        })
        .await
        .expect("rpc"))
    .expect("access")
    .access
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_own_what_they_create_and_bits_are_enforced() {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    let mut root = srv.mount("default").await;
    let top = root.root_nfs_fh3();
    // The share root is root's 0755: a user may not create there until root opens a directory.
    let mut u1 = mount_user(&srv, U1, U1).await;
    assert_eq!(
        create(
            &mut u1,
            &top,
            "no",
            createhow3::UNCHECKED(sattr3::default())
        )
        .await,
        Err(nfsstat3::NFS3ERR_ACCES)
    );
    let pub_ = mkdir(&mut root, &top, "pub", Some(0o1777))
        .await
        .expect("mkdir");
    // Files, directories and symlinks are the caller's.
    let f = create(&mut u1, &pub_, "f1", createhow3::UNCHECKED(mode(0o644)))
        .await
        .expect("create as u1");
    let a = getattr(&mut u1, &f).await.expect("attr");
    assert_eq!((a.uid, a.gid, a.mode & 0o7777), (U1, U1, 0o644));
    let sub = mkdir(&mut u1, &pub_, "d1", Some(0o755))
        .await
        .expect("mkdir");
    let a = getattr(&mut u1, &sub).await.expect("attr");
    assert_eq!((a.uid, a.gid), (U1, U1));
    let l = symlink(&mut u1, &pub_, "l1", "f1").await.expect("symlink");
    assert_eq!((l.uid, l.gid), (U1, U1));
    let ex = create(
        &mut u1,
        &pub_,
        "x1",
        createhow3::EXCLUSIVE(createverf3([1, 2, 3, 4, 5, 6, 7, 8])),
    )
    .await
    .expect("exclusive create");
    assert_eq!(getattr(&mut u1, &ex).await.expect("attr").uid, U1);
    write(&mut u1, &f, 0, b"mine", stable_how::FILE_SYNC)
        .await
        .expect("owner writes");
    // Another user: reads a 0644 file, may not write it, chmod it, chown it or delete it
    // (sticky directory), nor create in u1's 0755 directory.
    let mut u2 = mount_user(&srv, U2, U2).await;
    assert_eq!(read(&mut u2, &f, 0, 10).await.expect("read").0, b"mine");
    assert_eq!(
        write(&mut u2, &f, 0, b"hers", stable_how::FILE_SYNC)
            .await
            .err(),
        Some(nfsstat3::NFS3ERR_ACCES)
    );
    assert_eq!(
        setattr(&mut u2, &f, mode(0o666)).await.err(),
        Some(nfsstat3::NFS3ERR_PERM)
    );
    let own = sattr3 {
        uid: Nfs3Option::Some(U2),
        ..Default::default()
    };
    assert_eq!(
        setattr(&mut u1, &f, own).await.err(),
        Some(nfsstat3::NFS3ERR_PERM),
        "only root gives files away"
    );
    assert_eq!(
        remove(&mut u2, &pub_, "f1").await,
        Err(nfsstat3::NFS3ERR_ACCES),
        "sticky directory"
    );
    assert_eq!(
        rename(&mut u2, &pub_, "f1", &pub_, "stolen").await,
        Err(nfsstat3::NFS3ERR_ACCES)
    );
    assert_eq!(
        mkdir(&mut u2, &sub, "x", None).await.err(),
        Some(nfsstat3::NFS3ERR_ACCES)
    );
    // ACCESS tells the client the same: u2 may read but not modify f1; u1 may both.
    assert_eq!(access(&mut u2, &f, 0x3f).await, 0x01);
    assert_eq!(access(&mut u1, &f, 0x3f).await, 0x0d);
    // A private file: nobody else reads it; a private directory: nobody else looks in it.
    setattr(&mut u1, &f, mode(0o600)).await.expect("chmod");
    assert_eq!(
        read(&mut u2, &f, 0, 10).await.err(),
        Some(nfsstat3::NFS3ERR_ACCES)
    );
    setattr(&mut u1, &sub, mode(0o700))
        .await
        .expect("chmod dir");
    create(
        &mut u1,
        &sub,
        "inner",
        createhow3::UNCHECKED(sattr3::default()),
    )
    .await
    .expect("create inner");
    assert_eq!(
        lookup(&mut u2, &sub, "inner").await.err(),
        Some(nfsstat3::NFS3ERR_ACCES)
    );
    // Group bits for a member of the file's group.
    let gid = sattr3 {
        gid: Nfs3Option::Some(500),
        mode: Nfs3Option::Some(0o640),
        ..Default::default()
    };
    setattr(&mut root, &f, gid).await.expect("root chgrp");
    let mut g = mount_as(srv.addr, "/shares/default", U2, U2, &[500])
        .await
        .expect("mount");
    assert_eq!(
        read(&mut g, &f, 0, 10).await.expect("group read").0,
        b"mine"
    );
    // Root may do everything; the owner removes its own file.
    write(&mut root, &f, 0, b"ROOT", stable_how::FILE_SYNC)
        .await
        .expect("root writes");
    remove(&mut u1, &pub_, "l1").await.expect("owner removes");
    // The share's top directory opened by root (`chmod 1777 /mnt/mesh`): users create there.
    setattr(&mut root, &top, mode(0o1777))
        .await
        .expect("chmod the share root");
    let t = create(&mut u1, &top, "at-top", createhow3::UNCHECKED(mode(0o644)))
        .await
        .expect("create at the top after chmod 1777");
    assert_eq!(getattr(&mut u1, &t).await.expect("attr").uid, U1);
    srv.stop().await;
    // Ownership is durable: after a restart the same owners.
    let store = open_store(d.path(), |_| {}).await;
    let srv = start_with(d.path(), store, |_| {}).await;
    let mut c = srv.mount("default").await;
    let top = c.root_nfs_fh3();
    let (p, _) = lookup(&mut c, &top, "pub").await.expect("pub");
    let (_, a) = lookup(&mut c, &p, "f1").await.expect("f1");
    assert_eq!((a.uid, a.gid, a.mode & 0o7777), (U1, 500, 0o640));
    let (_, a) = lookup(&mut c, &p, "d1").await.expect("d1");
    assert_eq!((a.uid, a.mode & 0o7777), (U1, 0o700));
    let a = getattr(&mut c, &top).await.expect("share root");
    assert_eq!(a.mode & 0o7777, 0o1777, "the share root's mode is durable");
    // S3 objects have the documented default owner.
    put_object(&srv.store, "default", "s3/obj", b"x");
    let (s3, a) = lookup(&mut c, &top, "s3").await.expect("s3 dir");
    assert_eq!((a.uid, a.gid, a.mode & 0o7777), (0, 0, 0o755));
    let (_, a) = lookup(&mut c, &s3, "obj").await.expect("s3 obj");
    assert_eq!((a.uid, a.gid, a.mode & 0o7777), (0, 0, 0o644));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_squash_and_all_squash_per_share() {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    let mut root = srv.mount("default").await;
    let top = root.root_nfs_fh3();
    let pub_ = mkdir(&mut root, &top, "pub", Some(0o777))
        .await
        .expect("mkdir");
    let secret = create(
        &mut root,
        &top,
        "secret",
        createhow3::UNCHECKED(mode(0o600)),
    )
    .await
    .expect("create");
    srv.store
        .set_share_squash(
            "default",
            Squash {
                root: true,
                ..Squash::default()
            },
        )
        .expect("root_squash");
    // Share settings are re-read within a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let f = create(&mut root, &pub_, "r", createhow3::UNCHECKED(mode(0o644)))
        .await
        .expect("create as squashed root");
    let a = getattr(&mut root, &f).await.expect("attr");
    assert_eq!((a.uid, a.gid), (65534, 65534), "root became nobody");
    assert_eq!(
        read(&mut root, &secret, 0, 1).await.err(),
        Some(nfsstat3::NFS3ERR_ACCES),
        "squashed root has no bypass"
    );
    let mut u1 = mount_user(&srv, U1, U1).await;
    let g = create(&mut u1, &pub_, "u", createhow3::UNCHECKED(mode(0o644)))
        .await
        .expect("create as u1");
    assert_eq!(getattr(&mut u1, &g).await.expect("attr").uid, U1);
    srv.store
        .set_share_squash(
            "default",
            Squash {
                all: true,
                anonuid: 4000,
                anongid: 4001,
                ..Squash::default()
            },
        )
        .expect("all_squash");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let h = create(&mut u1, &pub_, "all", createhow3::UNCHECKED(mode(0o644)))
        .await
        .expect("create as squashed u1");
    let a = getattr(&mut u1, &h).await.expect("attr");
    assert_eq!((a.uid, a.gid), (4000, 4001));
    assert_eq!(
        write(&mut u1, &g, 0, b"x", stable_how::FILE_SYNC)
            .await
            .err(),
        Some(nfsstat3::NFS3ERR_ACCES),
        "u1's own file is not the anonymous user's"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_none_and_unknown_flavours_get_auth_error() {
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    let mut c = Raw::connect(srv.addr).await;
    let root = c.mount("/shares/default").await;
    let none = words(&[0, 0]);
    // NULL answers any flavour (clients ping with AUTH_NONE).
    let r = c
        .call(&call(2, PROG_NFS, 0, &none, &[]))
        .await
        .expect("NULL");
    assert_eq!(accept_stat(&r), Some(0));
    // GETATTR with AUTH_NONE: MSG_DENIED, AUTH_ERROR, AUTH_TOOWEAK.
    let r = c
        .call(&call(3, PROG_NFS, 1, &none, &opaque(&root)))
        .await
        .expect("reply");
    assert_eq!((word(&r, 0), word(&r, 1)), (3, 1), "a reply to xid 3");
    assert_eq!((word(&r, 2), word(&r, 3), word(&r, 4)), (1, 1, 5));
    // An unknown flavour (RPCSEC_GSS, 6): AUTH_BADCRED.
    let mut gss = words(&[6]);
    gss.extend(opaque(&[0; 8]));
    let r = c
        .call(&call(4, PROG_NFS, 1, &gss, &opaque(&root)))
        .await
        .expect("reply");
    assert_eq!((word(&r, 2), word(&r, 3), word(&r, 4)), (1, 1, 1));
    // AUTH_SYS: served.
    let r = c
        .call(&call(5, PROG_NFS, 1, &auth_unix(0, 0), &opaque(&root)))
        .await
        .expect("reply");
    assert_eq!((accept_stat(&r), word(&r, 6)), (Some(0), 0));
    srv.stop().await;
}

fn libnfs_url(srv: &Srv, path: &str, uid: u32, gid: u32) -> String {
    let p = srv.addr.port();
    format!(
        "nfs://127.0.0.1/shares/default{path}?version=3&nfsport={p}&mountport={p}&uid={uid}&gid={gid}"
    )
}

fn run(args: &[String]) -> (bool, String) {
    let o = Command::new(&args[0])
        .args(&args[1..])
        .output()
        .expect("run libnfs tool");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libnfs_tools_as_different_uids() {
    let have = Command::new("sh")
        .args(["-c", "command -v nfs-cp && command -v nfs-ls"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        have,
        "libnfs-utils missing: run scripts/install-test-deps.sh"
    );
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    let mut root = srv.mount("default").await;
    let top = root.root_nfs_fh3();
    let home = mkdir(&mut root, &top, "home", Some(0o755))
        .await
        .expect("mkdir");
    let own = sattr3 {
        uid: Nfs3Option::Some(U1),
        gid: Nfs3Option::Some(U1),
        ..Default::default()
    };
    setattr(&mut root, &home, own).await.expect("chown home");
    let local = d.path().join("local.txt");
    std::fs::write(&local, b"hello\n").expect("write");
    let (srv2, local2) = (libnfs_url(&srv, "/home/a.txt", U1, U1), local.clone());
    let (ok, out) = tokio::task::spawn_blocking(move || {
        run(&["nfs-cp".into(), local2.display().to_string(), srv2])
    })
    .await
    .expect("join");
    assert!(ok, "nfs-cp as the directory's owner: {out}");
    let (_, a) = lookup(&mut root, &home, "a.txt").await.expect("a.txt");
    assert_eq!((a.uid, a.gid), (U1, U1), "owned by the libnfs caller");
    let (u, l) = (libnfs_url(&srv, "/home/b.txt", U2, U2), local.clone());
    let (ok, out) =
        tokio::task::spawn_blocking(move || run(&["nfs-cp".into(), l.display().to_string(), u]))
            .await
            .expect("join");
    assert!(
        !ok,
        "nfs-cp into another user's 0755 directory succeeded: {out}"
    );
    assert!(
        lookup(&mut root, &home, "b.txt").await.is_err(),
        "no wrong success"
    );
    let u = libnfs_url(&srv, "/home/", U2, U2);
    let (ok, out) = tokio::task::spawn_blocking(move || run(&["nfs-ls".into(), u]))
        .await
        .expect("join");
    assert!(ok && out.contains("a.txt"), "nfs-ls as another user: {out}");
    srv.stop().await;
}
