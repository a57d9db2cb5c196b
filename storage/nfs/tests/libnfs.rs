//! Interop with libnfs-utils (`nfs-cp`, `nfs-cat`, `nfs-ls`: a client nobody here wrote).
//! Skipped (with a message) when the tools are not installed; scripts/install-test-deps.sh
//! installs them.

mod common;

use std::process::Command;

use common::*;

fn have_tools() -> bool {
    ["nfs-cp", "nfs-cat", "nfs-ls"].iter().all(|t| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn url(srv: &Srv, path: &str) -> String {
    let p = srv.addr.port();
    format!("nfs://127.0.0.1/shares/default{path}?version=3&nfsport={p}&mountport={p}")
}

async fn run(args: Vec<String>) -> (bool, Vec<u8>, String) {
    tokio::task::spawn_blocking(move || {
        let o = Command::new(&args[0])
            .args(&args[1..])
            .output()
            .expect("run libnfs tool");
        (
            o.status.success(),
            o.stdout,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nfs_cp_cat_ls_against_the_store() {
    assert!(
        have_tools(),
        "libnfs-utils (nfs-cp, nfs-cat, nfs-ls) missing: run scripts/install-test-deps.sh \
         (the README's test command does)"
    );
    let d = tempfile::tempdir().expect("tmp");
    let srv = start(d.path()).await;
    // nfs-cp a local file in: the object has the same bytes
    let local = d.path().join("local.bin");
    let body: Vec<u8> = (0..(3 << 20) + 4321u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&local, &body).expect("write local");
    let (ok, _, err) = run(vec![
        "nfs-cp".into(),
        local.display().to_string(),
        url(&srv, "/copied.bin"),
    ])
    .await;
    assert!(ok, "nfs-cp to the share failed: {err}");
    assert!(
        get_object(&srv.store, "default", "copied.bin") == body,
        "object bytes differ from what nfs-cp wrote"
    );
    // nfs-cat it back
    let (ok, out, err) = run(vec!["nfs-cat".into(), url(&srv, "/copied.bin")]).await;
    assert!(ok, "nfs-cat failed: {err}");
    assert!(out == body, "nfs-cat bytes differ");
    // an S3 object under a prefix: nfs-cat and nfs-ls see it
    put_object(&srv.store, "default", "docs/readme.txt", b"put over S3\n");
    let (ok, out, err) = run(vec!["nfs-cat".into(), url(&srv, "/docs/readme.txt")]).await;
    assert!(ok, "nfs-cat of an S3 object failed: {err}");
    assert_eq!(out, b"put over S3\n");
    let (ok, out, err) = run(vec!["nfs-ls".into(), url(&srv, "/")]).await;
    assert!(ok, "nfs-ls failed: {err}");
    let listing = String::from_utf8_lossy(&out);
    assert!(listing.contains("copied.bin"), "{listing}");
    assert!(listing.contains("docs"), "{listing}");
    // nfs-cp out of the share to a local file
    let back = d.path().join("back.bin");
    let (ok, _, err) = run(vec![
        "nfs-cp".into(),
        url(&srv, "/copied.bin"),
        back.display().to_string(),
    ])
    .await;
    assert!(ok, "nfs-cp from the share failed: {err}");
    assert!(std::fs::read(&back).expect("read back") == body);
    srv.stop().await;
}
