//! Real `aws` CLI against the in-process server (root and `/s3` endpoint forms).
mod common;

use common::*;
use std::process::Command;

const INSTALL: &str = "pip install awscli";

fn aws(s: &Server, endpoint: &str) -> Command {
    let mut c = Command::new("aws");
    s.aws_env(&mut c);
    c.arg("--endpoint-url").arg(endpoint);
    c
}

#[test]
fn awscli_round_trips() {
    require("aws", INSTALL);
    require("curl", "apt-get install -y curl");
    let s = Server::start();
    for (i, ep) in [s.url(), format!("{}/s3", s.url())].into_iter().enumerate() {
        let bucket = format!("cli-bucket-{i}");
        ok(aws(&s, &ep).args(["s3", "mb", &format!("s3://{bucket}")]));
        let ls = ok(aws(&s, &ep).args(["s3", "ls"]));
        assert!(ls.contains(&bucket), "ls: {ls}");

        // 100 MiB multipart upload and download, byte for byte.
        let w = s.work(&format!("w{i}"));
        let big = w.join("big.bin");
        random_file(&big, 100 << 20, 7 + i as u64);
        ok(aws(&s, &ep).args([
            "s3",
            "cp",
            big.to_str().expect("path"),
            &format!("s3://{bucket}/dir/big.bin"),
        ]));
        let back = w.join("big.back");
        ok(aws(&s, &ep).args([
            "s3",
            "cp",
            &format!("s3://{bucket}/dir/big.bin"),
            back.to_str().expect("path"),
        ]));
        assert!(same_file(&big, &back), "100 MiB round trip differs");
        let head = ok(aws(&s, &ep).args([
            "s3api",
            "head-object",
            "--bucket",
            &bucket,
            "--key",
            "dir/big.bin",
        ]));
        assert!(
            head.contains("-13\\\"") || head.contains("-13\""),
            "multipart etag expected: {head}"
        );
        std::fs::remove_file(&back).expect("rm");
        std::fs::remove_file(&big).expect("rm");

        // sync a small tree up and down
        let src = w.join("src");
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        for (n, p) in ["a.txt", "b.txt", "sub/c.txt"].iter().enumerate() {
            random_file(&src.join(p), 1000 * (n + 1), n as u64 + 1);
        }
        ok(aws(&s, &ep).args([
            "s3",
            "sync",
            src.to_str().expect("p"),
            &format!("s3://{bucket}/tree"),
        ]));
        let dst = w.join("dst");
        ok(aws(&s, &ep).args([
            "s3",
            "sync",
            &format!("s3://{bucket}/tree"),
            dst.to_str().expect("p"),
        ]));
        for p in ["a.txt", "b.txt", "sub/c.txt"] {
            assert!(same_file(&src.join(p), &dst.join(p)), "sync differs at {p}");
        }
        let rec =
            ok(aws(&s, &ep).args(["s3", "ls", "--recursive", &format!("s3://{bucket}/tree/")]));
        assert_eq!(rec.lines().count(), 3, "{rec}");

        // presign + curl
        let url = ok(aws(&s, &ep).args([
            "s3",
            "presign",
            &format!("s3://{bucket}/tree/a.txt"),
            "--expires-in",
            "300",
        ]));
        let got = w.join("presigned.txt");
        let code = ok(Command::new("curl").args([
            "-s",
            "-o",
            got.to_str().expect("p"),
            "-w",
            "%{http_code}",
            url.trim(),
        ]));
        assert_eq!(
            code,
            "200",
            "{url}: {}",
            std::fs::read_to_string(&got).unwrap_or_default()
        );
        assert!(same_file(&src.join("a.txt"), &got));
        // a tampered presigned URL is refused
        let bad = url.trim().replace("a.txt", "b.txt");
        let body = ok(Command::new("curl").args(["-s", &bad]));
        assert!(body.contains("SignatureDoesNotMatch"), "{body}");

        // rm, rb
        ok(aws(&s, &ep).args(["s3", "rm", "--recursive", &format!("s3://{bucket}/")]));
        let rec = ok(aws(&s, &ep).args(["s3", "ls", "--recursive", &format!("s3://{bucket}/")]));
        assert!(rec.trim().is_empty(), "{rec}");
        ok(aws(&s, &ep).args(["s3", "rb", &format!("s3://{bucket}")]));
    }
}

#[test]
fn awscli_wrong_secret_and_system_bucket() {
    require("aws", INSTALL);
    let s = Server::start();
    let mut c = aws(&s, &s.url());
    c.env("AWS_SECRET_ACCESS_KEY", "wrong").args(["s3", "ls"]);
    let out = run(&mut c);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SignatureDoesNotMatch"));

    let w = s.work("sys");
    let f = w.join("f");
    random_file(&f, 100, 1);
    let out =
        run(aws(&s, &s.url()).args(["s3", "cp", f.to_str().expect("p"), "s3://_tunnelmesh/x"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AccessDenied"),
        "{out:?}"
    );
    // nobody writes it over S3, not even the coordinator's own key (it writes the store
    // directly); the coordinator's key may read it
    let sys = |s: &Server| {
        let mut c = aws(s, &s.url());
        c.env("AWS_ACCESS_KEY_ID", &s.sys_ak)
            .env("AWS_SECRET_ACCESS_KEY", &s.sys_secret);
        c
    };
    let out = run(sys(&s).args(["s3", "cp", f.to_str().expect("p"), "s3://_tunnelmesh/x"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AccessDenied"),
        "{out:?}"
    );
    s.store.create_bucket("_tunnelmesh").ok();
    let data = std::fs::read(&f).expect("read");
    let mut wr = s
        .store
        .begin_put("_tunnelmesh", "x", Default::default())
        .expect("begin");
    wr.write_all(&data).expect("write");
    wr.commit().expect("commit");
    let back = w.join("back");
    ok(sys(&s).args(["s3", "cp", "s3://_tunnelmesh/x", back.to_str().expect("p")]));
    assert!(same_file(&f, &back));
    // peers can NOT read it (it holds every node's S3 secret): this used to succeed
    let out =
        run(aws(&s, &s.url()).args(["s3", "cp", "s3://_tunnelmesh/x", back.to_str().expect("p")]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AccessDenied")
            || String::from_utf8_lossy(&out.stderr).contains("403"),
        "{out:?}"
    );
}

/// `aws s3 cp` with its default checksum behaviour (CRC32, in a header or per part): uploads
/// unmodified, the checksum is verified and stored (head-object --checksum-mode ENABLED shows it:
/// the full-object CRC32 of a single PUT, the composite `-N` of a multipart one), and a download
/// with response checksum validation succeeds.
#[test]
fn awscli_default_checksums() {
    require("aws", INSTALL);
    let s = Server::start();
    let ep = s.url();
    ok(aws(&s, &ep).args(["s3", "mb", "s3://cli-sums"]));
    let w = s.work("sums");
    for (name, size, multipart) in [
        ("small.bin", 300_000usize, false),
        ("big.bin", 20 << 20, true),
    ] {
        let f = w.join(name);
        random_file(&f, size, size as u64);
        ok(aws(&s, &ep).args([
            "s3",
            "cp",
            f.to_str().expect("p"),
            &format!("s3://cli-sums/{name}"),
        ]));
        let head = ok(aws(&s, &ep).args([
            "s3api",
            "head-object",
            "--bucket",
            "cli-sums",
            "--key",
            name,
            "--checksum-mode",
            "ENABLED",
        ]));
        assert!(head.contains("\"ChecksumCRC32\""), "{name}: {head}");
        let composite = head.contains("\"ChecksumType\": \"COMPOSITE\"");
        assert_eq!(composite, multipart, "{name}: {head}");
        let back = w.join(format!("{name}.back"));
        ok(aws(&s, &ep).args([
            "s3",
            "cp",
            &format!("s3://cli-sums/{name}"),
            back.to_str().expect("p"),
        ]));
        assert!(same_file(&f, &back), "{name} differs");
    }
    // A wrong checksum is refused and nothing is stored.
    let f = w.join("small.bin");
    let out = run(aws(&s, &ep).args([
        "s3api",
        "put-object",
        "--bucket",
        "cli-sums",
        "--key",
        "bad.bin",
        "--body",
        f.to_str().expect("p"),
        "--checksum-crc32",
        "AAAAAA==",
    ]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BadDigest"), "{err}");
    assert!(s.store.head("cli-sums", "bad.bin").is_err());
}

/// Encryption at rest with `aws s3 cp`: `--sse AES256` (SSE-S3) and `--sse-c` (a customer key
/// file) on a 20 MiB multipart upload and download; the object without its key is refused.
#[test]
fn awscli_sse() {
    require("aws", INSTALL);
    let s = Server::start();
    let ep = s.url();
    ok(aws(&s, &ep).args(["s3", "mb", "s3://cli-sse"]));
    let w = s.work("sse");
    let big = w.join("big.bin");
    random_file(&big, 20 << 20, 99);
    let key = w.join("key.bin");
    random_file(&key, 32, 5);
    let keyarg = format!("fileb://{}", key.display());
    let p = |x: &std::path::Path| x.to_str().expect("path").to_owned();
    ok(aws(&s, &ep).args([
        "s3",
        "cp",
        &p(&big),
        "s3://cli-sse/s3.bin",
        "--sse",
        "AES256",
    ]));
    let head = ok(aws(&s, &ep).args([
        "s3api",
        "head-object",
        "--bucket",
        "cli-sse",
        "--key",
        "s3.bin",
    ]));
    assert!(
        head.contains("\"ServerSideEncryption\": \"AES256\""),
        "{head}"
    );
    ok(aws(&s, &ep).args([
        "s3",
        "cp",
        &p(&big),
        "s3://cli-sse/c.bin",
        "--sse-c",
        "AES256",
        "--sse-c-key",
        &keyarg,
    ]));
    let back = w.join("back.bin");
    // Without the key: refused (400), nothing written.
    let r = run(aws(&s, &ep).args(["s3", "cp", "s3://cli-sse/c.bin", &p(&back)]));
    assert!(
        !r.status.success(),
        "GET of an SSE-C object without its key"
    );
    assert!(!back.exists());
    ok(aws(&s, &ep).args([
        "s3",
        "cp",
        "s3://cli-sse/c.bin",
        &p(&back),
        "--sse-c",
        "AES256",
        "--sse-c-key",
        &keyarg,
    ]));
    assert!(same_file(&big, &back), "SSE-C round trip differs");
    std::fs::remove_file(&back).expect("rm");
    ok(aws(&s, &ep).args(["s3", "cp", "s3://cli-sse/s3.bin", &p(&back)]));
    assert!(same_file(&big, &back), "SSE-S3 round trip differs");
}
