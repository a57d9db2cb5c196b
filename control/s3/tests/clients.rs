//! boto3 (every operation), rclone, s3cmd and curl (Basic / Bearer) against the in-process server.
mod common;

use common::*;
use std::process::Command;

#[test]
fn boto3_all_operations() {
    require("python3", "apt-get install -y python3");
    let probe = run(Command::new("python3").args(["-c", "import boto3"]));
    assert!(
        probe.status.success(),
        "boto3 is required; install it with: pip install boto3"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/boto3_all.py");
    for prefix in ["", "/s3"] {
        // the script uses fixed bucket names: a fresh server per endpoint form
        let s2 = Server::start();
        s2.store.create_bucket("quota-b").expect("bucket");
        s2.store.set_quota("quota-b", Some(1 << 20)).expect("quota");
        let ep = format!("{}{prefix}", s2.url());
        let out = ok(Command::new("python3")
            .arg(script)
            .env("S3_ENDPOINT", &ep)
            .env("S3_AK", &s2.ak)
            .env("S3_SECRET", &s2.secret)
            .env("S3_QUOTA_BUCKET", "quota-b"));
        assert!(out.contains("all operations OK"), "{out}");
        assert_eq!(s2.store.usage("quota-b").expect("usage").objects, 1);
    }
}

/// Issue 18: leaked chunks, refusals, signing scope, checksums, conditional writes (a race of
/// 16 clients), wrong codes and fields; `boto3_round2.py` says what each section checks.
#[test]
fn boto3_round2() {
    require("python3", "apt-get install -y python3");
    let probe = run(Command::new("python3").args(["-c", "import boto3"]));
    assert!(
        probe.status.success(),
        "boto3 is required; install it with: pip install boto3"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/boto3_round2.py");
    let s = Server::start();
    s.store.create_bucket("quota-r2").expect("bucket");
    s.store.set_quota("quota-r2", Some(1 << 20)).expect("quota");
    s.store.create_bucket("quota-ver").expect("bucket");
    s.store
        .set_quota("quota-ver", Some(1 << 20))
        .expect("quota");
    let out = ok(Command::new("python3")
        .arg(script)
        .env("S3_ENDPOINT", s.url())
        .env("S3_AK", &s.ak)
        .env("S3_SECRET", &s.secret)
        .env("S3_DATA_DIR", s.dir.path().join("data"))
        .env("S3_QUOTA_BUCKET", "quota-r2")
        .env("S3_QUOTA_VERSIONED", "quota-ver"));
    assert!(out.contains("round2: all OK"), "{out}");
    let report = s.store.fsck().expect("fsck");
    assert_eq!(report.orphan_chunks, 0, "{report:?}");
    assert_eq!(report.missing_chunks, 0, "{report:?}");
    assert_eq!(report.bad_refcounts, 0, "{report:?}");
    assert_eq!(report.bad_usage, 0, "{report:?}");
    let u = s.store.usage("quota-ver").expect("usage");
    assert_eq!(
        (u.objects, u.bytes),
        (1, 600_000),
        "every stored version counts"
    );
}

/// Issue 18, encryption at rest: SSE-S3 and SSE-C through boto3 (put, get, head, copy,
/// multipart, errors), the data directory read back for plaintext; then a store that seals
/// every chunk, with plain objects (`boto3_sse.py` says what each section checks).
#[test]
fn boto3_sse() {
    require("python3", "apt-get install -y python3");
    let probe = run(Command::new("python3").args(["-c", "import boto3"]));
    assert!(
        probe.status.success(),
        "boto3 is required; install it with: pip install boto3"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/boto3_sse.py");
    for all in [false, true] {
        let s = Server::start_with(all);
        let out = ok(Command::new("python3")
            .arg(script)
            .env("S3_ENDPOINT", s.url())
            .env("S3_AK", &s.ak)
            .env("S3_SECRET", &s.secret)
            .env("S3_DATA_DIR", s.dir.path().join("data"))
            .env("S3_ENCRYPT_ALL", if all { "1" } else { "0" }));
        let want = if all {
            "sse: encrypt-all OK"
        } else {
            "sse: all OK"
        };
        assert!(out.contains(want), "{out}");
        let report = s.store.fsck().expect("fsck");
        assert_eq!(report.missing_chunks, 0, "{report:?}");
        assert_eq!(report.bad_refcounts, 0, "{report:?}");
        assert_eq!(report.bad_usage, 0, "{report:?}");
    }
}

/// Issue 18, the rest: GET/HEAD by partNumber, object and bucket tagging (per version,
/// limits), ListBuckets pagination (`boto3_round3.py` says what each section checks).
#[test]
fn boto3_round3() {
    require("python3", "apt-get install -y python3");
    let probe = run(Command::new("python3").args(["-c", "import boto3"]));
    assert!(
        probe.status.success(),
        "boto3 is required; install it with: pip install boto3"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/boto3_round3.py");
    let s = Server::start();
    let out = ok(Command::new("python3")
        .arg(script)
        .env("S3_ENDPOINT", s.url())
        .env("S3_AK", &s.ak)
        .env("S3_SECRET", &s.secret));
    assert!(out.contains("round3: all OK"), "{out}");
    // Tags are in the engine's records (reopen: storage/engine/tests/tags.rs).
    let info = s.store.head("round3", "src").expect("head");
    assert_eq!(info.meta.tags, vec![("c".to_owned(), "3".to_owned())]);
    assert_eq!(
        s.store.bucket_tags("round3").expect("tags"),
        Vec::<(String, String)>::new()
    );
}

#[test]
fn curl_basic_and_bearer() {
    require("curl", "apt-get install -y curl");
    let s = Server::start();
    s.store.create_bucket("curl-b").expect("bucket");
    let w = s.work("curl");
    let f = w.join("f");
    random_file(&f, 70_000, 3);
    let basic = format!("{}:{}", s.ak, s.secret);
    for base in [s.url(), format!("{}/s3", s.url())] {
        let url = format!("{base}/curl-b/obj");
        let code = ok(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            &basic,
            "-T",
            f.to_str().expect("p"),
            &url,
        ]));
        assert_eq!(code, "200");
        let back = w.join("back");
        let code = ok(Command::new("curl").args([
            "-s",
            "-o",
            back.to_str().expect("p"),
            "-w",
            "%{http_code}",
            "-H",
            &format!("Authorization: Bearer {}", s.token),
            &url,
        ]));
        assert_eq!(code, "200");
        assert!(same_file(&f, &back));
    }
    let body = ok(Command::new("curl").args([
        "-s",
        "-u",
        &format!("{}:wrong", s.ak),
        &format!("{}/curl-b/obj", s.url()),
    ]));
    assert!(
        body.contains("<Code>AccessDenied</Code>") && body.contains("wrong secret for access key"),
        "Basic with a wrong secret: {body}"
    );
    let body =
        ok(Command::new("curl").args(["-s", "-u", "NOPE:x", &format!("{}/curl-b/obj", s.url())]));
    assert!(body.contains("<Code>InvalidAccessKeyId</Code>"), "{body}");
    let body = ok(Command::new("curl").args([
        "-s",
        "-H",
        "Authorization: Bearer wrong",
        &format!("{}/curl-b/obj", s.url()),
    ]));
    assert!(
        body.contains("<Code>AccessDenied</Code>") && body.contains("not valid"),
        "Bearer with an unknown token: {body}"
    );
    let body = ok(Command::new("curl").args(["-s", &format!("{}/curl-b/obj", s.url())]));
    assert!(
        body.contains("<Code>AccessDenied</Code>"),
        "anonymous: {body}"
    );
    // truncated upload: nothing stored
    let out = ok(Command::new("sh").arg("-c").arg(format!(
        "printf 'PUT /curl-b/trunc HTTP/1.1\\r\\nHost: {}\\r\\nAuthorization: Bearer {}\\r\\nContent-Length: 1000\\r\\n\\r\\nonly-a-little' | timeout 3 curl -s --max-time 2 telnet://{} ; true",
        s.addr, s.token, s.addr)));
    let _ = out;
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        s.store.head("curl-b", "trunc").is_err(),
        "truncated upload must store nothing"
    );
    // oversized declared body
    let body = ok(Command::new("curl").args([
        "-s",
        "-X",
        "PUT",
        "-H",
        &format!("Authorization: Bearer {}", s.token),
        "-H",
        "Content-Length: 6000000000",
        &format!("{}/curl-b/huge", s.url()),
    ]));
    assert!(body.contains("EntityTooLarge"), "{body}");
}

#[test]
fn rclone_round_trip() {
    require("rclone", "apt-get install -y rclone");
    let s = Server::start();
    let w = s.work("rclone");
    let conf = w.join("rclone.conf");
    std::fs::write(&conf, format!(
        "[tm]\ntype = s3\nprovider = Other\naccess_key_id = {}\nsecret_access_key = {}\nendpoint = {}/s3\nregion = us-east-1\nforce_path_style = true\n",
        s.ak, s.secret, s.url())).expect("conf");
    let src = w.join("src");
    std::fs::create_dir_all(src.join("d")).expect("mkdir");
    random_file(&src.join("one.bin"), 3 << 20, 11);
    random_file(&src.join("d/two.bin"), 12345, 12);
    let rc = |args: &[&str]| {
        let mut c = Command::new("rclone");
        // rclone refuses a custom CA bundle on plain-HTTP transports
        c.env_remove("AWS_CA_BUNDLE")
            .arg("--config")
            .arg(&conf)
            .args(args);
        ok(&mut c)
    };
    rc(&["mkdir", "tm:rclone-b"]);
    rc(&["copy", src.to_str().expect("p"), "tm:rclone-b/x"]);
    let ls = rc(&["lsf", "-R", "tm:rclone-b/x"]);
    assert!(ls.contains("one.bin") && ls.contains("d/two.bin"), "{ls}");
    let dst = w.join("dst");
    rc(&["copy", "tm:rclone-b/x", dst.to_str().expect("p")]);
    assert!(same_file(&src.join("one.bin"), &dst.join("one.bin")));
    assert!(same_file(&src.join("d/two.bin"), &dst.join("d/two.bin")));
    rc(&["check", src.to_str().expect("p"), "tm:rclone-b/x"]);
    rc(&["purge", "tm:rclone-b"]);
    assert!(s.store.bucket("rclone-b").is_err());
}

#[test]
fn s3cmd_round_trip() {
    require("s3cmd", "pip install s3cmd");
    let s = Server::start();
    let w = s.work("s3cmd");
    let conf = w.join("s3cfg");
    std::fs::write(&conf, format!(
        "[default]\naccess_key = {}\nsecret_key = {}\nhost_base = {}\nhost_bucket = {}\nuse_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n",
        s.ak, s.secret, s.addr, s.addr)).expect("conf");
    let f = w.join("f.bin");
    random_file(&f, 20 << 20, 5); // > 15 MiB: s3cmd uses multipart
    let c = |args: &[&str]| {
        let mut c = Command::new("s3cmd");
        c.arg("-c").arg(&conf).args(args);
        ok(&mut c)
    };
    c(&["mb", "s3://s3cmd-b"]);
    c(&["put", f.to_str().expect("p"), "s3://s3cmd-b/f.bin"]);
    let ls = c(&["ls", "s3://s3cmd-b"]);
    assert!(ls.contains("f.bin"), "{ls}");
    let back = w.join("back.bin");
    c(&["get", "s3://s3cmd-b/f.bin", back.to_str().expect("p")]);
    assert!(same_file(&f, &back));
    c(&["del", "s3://s3cmd-b/f.bin"]);
    c(&["rb", "s3://s3cmd-b"]);
    assert!(s.store.bucket("s3cmd-b").is_err());
}
