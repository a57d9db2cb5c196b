//! Typed identities over real clients (awscli, curl): the system bucket is private, a legacy
//! credential named `system` has no powers, the seed login works only from the node's mesh
//! address, tokens stop working once revoked, a removed node's key stops at once.
mod common;

use common::*;
use std::process::Command;

const INSTALL: &str = "pip install awscli";

fn aws(s: &Server, ak: &str, secret: &str) -> Command {
    let mut c = Command::new("aws");
    s.aws_env(&mut c);
    c.env("AWS_ACCESS_KEY_ID", ak)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .arg("--endpoint-url")
        .arg(s.url());
    c
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn curl(args: &[&str]) -> String {
    ok(Command::new("curl").arg("-s").args(args))
}

/// Fails on the old code: principals were names, and `is_system` compared the name `system`.
#[test]
fn a_credential_named_system_has_no_powers() {
    require("aws", INSTALL);
    let s = Server::start();
    let (ak, sk) = ("AKSYSTEMNAME0001", "secret-of-a-node-named-system");
    s.store.put_credential(ak, sk, "system").expect("cred");
    let w = s.work("sys");
    let f = w.join("f");
    random_file(&f, 64, 9);
    let out = run(aws(&s, ak, sk).args([
        "s3",
        "cp",
        f.to_str().expect("p"),
        "s3://_tunnelmesh/coordinator/state.json",
    ]));
    assert!(!out.status.success(), "a node named system wrote the state");
    assert!(stderr(&out).contains("AccessDenied"), "{}", stderr(&out));
    let out = run(aws(&s, ak, sk).args(["s3", "ls", "s3://_tunnelmesh/"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("AccessDenied"), "{}", stderr(&out));
}

/// Fails on the old code: every principal could read the system bucket.
#[test]
fn members_cannot_read_the_system_bucket() {
    require("aws", INSTALL);
    let s = Server::start();
    s.store.create_bucket("_tunnelmesh").ok();
    let w = s.work("st");
    let mut wr = s
        .store
        .begin_put("_tunnelmesh", "coordinator/state.json", Default::default())
        .expect("begin");
    wr.write_all(b"{\"nodes\":{\"beta\":{\"s3_secret\":\"SECRET\"}}}")
        .expect("write");
    wr.commit().expect("commit");
    // the coordinator's own key reads it
    let own = w.join("own");
    ok(aws(&s, &s.sys_ak, &s.sys_secret).args([
        "s3",
        "cp",
        "s3://_tunnelmesh/coordinator/state.json",
        own.to_str().expect("p"),
    ]));
    assert!(std::fs::read_to_string(&own)
        .expect("read")
        .contains("SECRET"));
    let back = w.join("back");
    for args in [
        vec![
            "s3",
            "cp",
            "s3://_tunnelmesh/coordinator/state.json",
            back.to_str().expect("p"),
        ],
        vec!["s3", "ls", "s3://_tunnelmesh/"],
        vec![
            "s3api",
            "head-object",
            "--bucket",
            "_tunnelmesh",
            "--key",
            "coordinator/state.json",
        ],
    ] {
        let out = run(aws(&s, &s.ak, &s.secret).args(&args));
        assert!(!out.status.success(), "{args:?} succeeded for a member");
        let e = stderr(&out);
        assert!(
            e.contains("AccessDenied") || e.contains("403"),
            "{args:?}: {e}"
        );
    }
    assert!(!back.exists());
    // copying it into a bucket of one's own is refused too
    ok(aws(&s, &s.ak, &s.secret).args(["s3", "mb", "s3://mine"]));
    let out = run(aws(&s, &s.ak, &s.secret).args([
        "s3",
        "cp",
        "s3://_tunnelmesh/coordinator/state.json",
        "s3://mine/stolen",
    ]));
    assert!(!out.status.success());
    assert!(s.store.head("mine", "stolen").is_err());
    // Bearer with the mesh token cannot read it either
    let body = curl(&[
        "-H",
        &format!("Authorization: Bearer {}", s.token),
        &format!("{}/_tunnelmesh/coordinator/state.json", s.url()),
    ]);
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    assert!(!body.contains("SECRET"));
    // and the bucket is not even listed for members
    let ls = ok(aws(&s, &s.ak, &s.secret).args(["s3", "ls"]));
    assert!(!ls.contains("_tunnelmesh"), "{ls}");
    let ls = ok(aws(&s, &s.sys_ak, &s.sys_secret).args(["s3", "ls"]));
    assert!(ls.contains("_tunnelmesh"), "{ls}");
}

/// The seed's instructions: access key = peer name, secret = mesh token. Accepted only from
/// that peer's mesh address (here node `peer-alice` is at 127.0.0.1, `peer-far` at 127.0.0.2).
#[test]
fn seed_login_only_from_the_peers_address() {
    require("aws", INSTALL);
    let s = Server::start();
    ok(aws(&s, "peer-alice", &s.token).args(["s3", "mb", "s3://seed-b"]));
    let ls = ok(aws(&s, "peer-alice", &s.token).args(["s3", "ls"]));
    assert!(ls.contains("seed-b"), "{ls}");
    let out = run(aws(&s, "peer-far", &s.token).args(["s3", "ls"]));
    assert!(!out.status.success(), "seed login from another address");
    assert!(stderr(&out).contains("AccessDenied"), "{}", stderr(&out));
    let out = run(aws(&s, "peer-alice", "tm1_wrong").args(["s3", "ls"]));
    assert!(
        stderr(&out).contains("SignatureDoesNotMatch"),
        "{}",
        stderr(&out)
    );
    let out = run(aws(&s, "no-such-peer", &s.token).args(["s3", "ls"]));
    assert!(
        stderr(&out).contains("InvalidAccessKeyId"),
        "{}",
        stderr(&out)
    );
    // Basic: the same rule
    let url = format!("{}/seed-b", s.url());
    let body = curl(&["-u", &format!("peer-far:{}", s.token), &url]);
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    let body = curl(&["-u", &format!("peer-alice:{}", s.token), &url]);
    assert!(body.contains("ListBucketResult"), "{body}");
    // the seed login can never reach the system bucket
    let out = run(aws(&s, "peer-alice", &s.token).args(["s3", "ls", "s3://_tunnelmesh/"]));
    assert!(stderr(&out).contains("AccessDenied"), "{}", stderr(&out));
    // revoking the default token ends the seed login
    s.authority.revoke(&s.token.clone());
    let out = run(aws(&s, "peer-alice", &s.token).args(["s3", "ls"]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("InvalidAccessKeyId"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn revoked_tokens_and_removed_nodes_stop_at_once() {
    require("curl", "apt-get install -y curl");
    let s = Server::start();
    s.store.create_bucket("tok-b").expect("bucket");
    let url = format!("{}/tok-b", s.url());
    let bearer = format!("Authorization: Bearer {}", s.token);
    assert!(curl(&["-H", &bearer, &url]).contains("ListBucketResult"));
    // Basic with a token (any user name) acts as the token
    let basic = format!("ci:{}", s.token);
    assert!(curl(&["-u", &basic, &url]).contains("ListBucketResult"));
    s.authority.revoke(&s.token.clone());
    let body = curl(&["-H", &bearer, &url]);
    assert!(
        body.contains("<Code>AccessDenied</Code>") && body.contains("revoked"),
        "{body}"
    );
    let body = curl(&["-u", &basic, &url]);
    assert!(
        body.contains("<Code>AccessDenied</Code>") && body.contains("revoked"),
        "{body}"
    );
    // a member's own key works until the node is removed
    let me = format!("{}:{}", s.ak, s.secret);
    assert!(curl(&["-u", &me, &url]).contains("ListBucketResult"));
    s.authority.remove_alice();
    let body = curl(&["-u", &me, &url]);
    assert!(body.contains("<Code>InvalidAccessKeyId</Code>"), "{body}");
}

/// Buckets are replicated control state on a mesh's coordinators: every bucket change made
/// through S3 (create, versioning, delete) reaches the authority with the bucket's settings
/// and the caller, before the answer.
#[test]
fn bucket_changes_through_s3_are_told_to_the_authority() {
    require("aws", INSTALL);
    let s = Server::start();
    let a = |args: &[&str]| ok(aws(&s, &s.ak, &s.secret).args(args));
    a(&["s3api", "create-bucket", "--bucket", "told"]);
    a(&[
        "s3api",
        "put-bucket-versioning",
        "--bucket",
        "told",
        "--versioning-configuration",
        "Status=Enabled",
    ]);
    // Refused changes are not told.
    let out = run(aws(&s, &s.ak, &s.secret).args(["s3api", "create-bucket", "--bucket", "-bad"]));
    assert!(!out.status.success());
    a(&["s3api", "delete-bucket", "--bucket", "told"]);
    let settings = |v| {
        Some(tm_s3::BucketSettings {
            quota: None,
            versioning: v,
        })
    };
    let who = alice().to_string();
    assert_eq!(
        *s.authority.bucket_changes.lock().expect("lock"),
        vec![
            (
                "told".to_owned(),
                settings(tm_storage::Versioning::Unversioned),
                who.clone()
            ),
            (
                "told".to_owned(),
                settings(tm_storage::Versioning::Enabled),
                who.clone()
            ),
            ("told".to_owned(), None, who),
        ]
    );
}
