//! The per-share gate (the policy on a mesh) decides MOUNT and every call, and a change of its
//! answers reaches an established mount at its next call.

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use nfs3_client::nfs3_types::nfs3::*;
use tm_nfs::{Gate, ShareGrant};

/// A gate an operator flips: writes and mounts of share `default`, by generation.
#[derive(Debug, Default)]
struct Flip {
    generation: AtomicU64,
    no_write: AtomicBool,
    no_mount: AtomicBool,
    asked: AtomicU64,
}

impl Flip {
    fn set(&self, no_write: bool, no_mount: bool) {
        self.no_write.store(no_write, Ordering::SeqCst);
        self.no_mount.store(no_mount, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Gate for Flip {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn grant(&self, client: IpAddr, share: &str) -> ShareGrant {
        assert!(
            client.is_loopback(),
            "the client address is passed: {client}"
        );
        self.asked.fetch_add(1, Ordering::SeqCst);
        let no = |b: &AtomicBool| {
            if b.load(Ordering::SeqCst) {
                Err(format!("not allowed on share {share}"))
            } else {
                Ok(())
            }
        };
        ShareGrant {
            mount: no(&self.no_mount),
            read: no(&self.no_mount),
            write: no(&self.no_write),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_reach_established_mounts_at_the_next_call() {
    let d = tempfile::tempdir().expect("tmp");
    let store = open_store(d.path(), |_| {}).await;
    let gate = Arc::new(Flip::default());
    let g = gate.clone();
    let srv = start_with(d.path(), store, move |c| {
        c.gate = Some(g.clone() as Arc<dyn Gate>);
    })
    .await;
    let mut c = srv.mount("default").await;
    let root = c.root_nfs_fh3();
    let f = mkfile(&mut c, &root, "a.txt").await;
    write(&mut c, &f, 0, b"before", stable_how::FILE_SYNC)
        .await
        .expect("write allowed");
    let asked = gate.asked.load(Ordering::SeqCst);
    for _ in 0..20 {
        getattr(&mut c, &f).await.expect("getattr");
    }
    assert_eq!(
        gate.asked.load(Ordering::SeqCst),
        asked,
        "an unchanged policy is not asked again per call"
    );

    // Writes taken away (`node tag beta tag:untrusted`): the mounted client's next write,
    // create and remove get NFS3ERR_ACCES; reads go on.
    gate.set(true, false);
    assert_eq!(
        write(&mut c, &f, 0, b"after", stable_how::UNSTABLE)
            .await
            .unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );
    let e = create(
        &mut c,
        &root,
        "b.txt",
        createhow3::UNCHECKED(sattr3::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(e, nfsstat3::NFS3ERR_ACCES);
    assert_eq!(
        remove(&mut c, &root, "a.txt").await.unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );
    assert_eq!(read_all(&mut c, &f).await, b"before", "reads still work");
    assert!(list(&mut c, &root).await.contains(&"a.txt".to_string()));
    assert_eq!(
        get_object(&srv.store, "default", "a.txt"),
        b"before",
        "nothing refused was stored"
    );

    // Everything taken away: a new MOUNT is refused, and the mounted client's reads too.
    gate.set(true, true);
    let e = mount(srv.addr, "/shares/default")
        .await
        .err()
        .expect("refused");
    assert!(format!("{e:?}").contains("MNT3ERR_ACCES"), "{e:?}");
    assert_eq!(
        getattr(&mut c, &f).await.unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );

    // Given back (`node untag`): the same mount writes again.
    gate.set(false, false);
    write(&mut c, &f, 0, b"again!", stable_how::FILE_SYNC)
        .await
        .expect("write allowed again");
    assert_eq!(read_all(&mut c, &f).await, b"again!");
    let mut c2 = srv.mount("default").await;
    getattr(&mut c2, &f).await.expect("a new mount works again");
    srv.stop().await;
}
