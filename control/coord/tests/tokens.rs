//! Identity on the coordinator over real TLS: reserved names, tokens (single-use, tagged,
//! expired, revoked, rotated), the upgrade of a mesh from before tokens, tags, node removal
//! and the audit log.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tm_coord::{
    Coordinator, CoordinatorConfig, Error, FileStore, JoinClient, JoinToken, MemStore, StateStore,
    TokenSpec,
};
use tm_noise::PrivateKey;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

mod common;
use common::{key, tmpdir};

struct Server {
    coord: Coordinator,
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(dir: &Path, store: Arc<dyn StateStore>, hub: PrivateKey) -> Self {
        let mut cfg = CoordinatorConfig::new("hub");
        cfg.tls_names = vec!["127.0.0.1".into()];
        let coord = Coordinator::open(dir, cfg, hub, store).expect("open coordinator");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let c = coord.clone();
        let task = tokio::spawn(async move {
            c.serve(listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        Self {
            coord,
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn start_mem() -> Self {
        Self::start(&tmpdir("tok"), Arc::new(MemStore::new()), key()).await
    }

    async fn join(&self, token: &str, name: &str) -> Result<tm_coord::wire::Registration, Error> {
        self.join_with(token, name, &key()).await
    }

    async fn join_with(
        &self,
        token: &str,
        name: &str,
        k: &PrivateKey,
    ) -> Result<tm_coord::wire::Registration, Error> {
        let t = JoinToken::parse(token).expect("token text");
        let mut c = JoinClient::new(self.addr.to_string(), t).expect("client");
        c.register(k, name, &[]).await
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("server task");
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, Error>, status: u16, needle: &str) {
    match r {
        Err(Error::Refused { status: s, message }) => {
            assert_eq!(s, status, "message: {message}");
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
        other => panic!("expected refusal {status} {needle:?}, got {other:?}"),
    }
}

const ROOT: &str = "local root";

/// Fails on the old code: `system` (and admin, root) were ordinary names that a node could take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_identity_names_are_refused_at_join() {
    let s = Server::start_mem().await;
    let t = s.coord.token();
    for name in [
        "system",
        "admin",
        "root",
        "coordinator",
        "anonymous",
        "token",
    ] {
        refused(s.join(&t, name).await, 400, "reserved name");
    }
    s.join(&t, "systems").await.expect("an ordinary name");
    assert_eq!(s.coord.nodes().len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_use_tagged_token_and_revocation() {
    let s = Server::start_mem().await;
    let now = tm_coord::now_unix();
    let spec = TokenSpec {
        tags: vec!["tag:ci".into(), "tag:build".into()],
        ..TokenSpec::default()
    };
    let (rec, text) = s.coord.create_token(&spec, ROOT, now).expect("create");
    assert!(!rec.reusable && !rec.default);
    assert_eq!(rec.tags, ["tag:build", "tag:ci"]);
    // the state never holds the secret
    let secret = JoinToken::parse(&text).expect("parse").secret;
    let listed = serde_json::to_string(&s.coord.tokens()).expect("json");
    assert!(!listed.contains(&tm_coord::wire::hex(&secret)));
    assert!(!listed.contains(&text[4..]));

    let kb = key();
    let r = s
        .join_with(&text, "builder", &kb)
        .await
        .expect("first join");
    let nm = r.netmap;
    assert_eq!(
        nm.peer("builder").expect("peer").tags,
        ["tag:build", "tag:ci"]
    );
    assert_eq!(
        s.coord.node_by_name("builder").expect("node").tags,
        ["tag:build", "tag:ci"]
    );
    // the same node may register again; another node may not
    s.join_with(&text, "builder", &kb)
        .await
        .expect("same node again");
    refused(s.join(&text, "other").await, 403, "single-use");
    // a tagged token acts as itself for other services until revoked
    let checked = s
        .coord
        .check_token(&text, now)
        .expect_err("used single-use token");
    assert!(checked.to_string().contains("single-use"), "{checked}");

    let (r2, t2) = s
        .coord
        .create_token(
            &TokenSpec {
                reusable: true,
                ..TokenSpec::default()
            },
            ROOT,
            now,
        )
        .expect("create");
    s.join(&t2, "r1").await.expect("reusable 1");
    s.join(&t2, "r2").await.expect("reusable 2");
    assert_eq!(s.coord.check_token(&t2, now).expect("valid").id, r2.id);
    s.coord.revoke_token(&r2.id, ROOT, now).expect("revoke");
    refused(s.join(&t2, "r3").await, 403, "revoked");
    assert!(s.coord.check_token(&t2, now).is_err());
    // revoking twice, unknown ids and the default token are refused with a reason
    assert!(s.coord.revoke_token(&r2.id, ROOT, now).is_err());
    let e = s
        .coord
        .revoke_token("tk000000000000", ROOT, now)
        .unwrap_err();
    assert!(matches!(e, Error::NoSuchToken(_)), "{e}");
    let default = s
        .coord
        .tokens()
        .into_iter()
        .find(|t| t.default)
        .expect("default");
    let e = s.coord.revoke_token(&default.id, ROOT, now).unwrap_err();
    assert!(e.to_string().contains("token rotate"), "{e}");
    // bad tags
    let e = s
        .coord
        .create_token(
            &TokenSpec {
                tags: vec!["ci".into()],
                ..TokenSpec::default()
            },
            ROOT,
            now,
        )
        .unwrap_err();
    assert!(matches!(e, Error::BadTag(..)), "{e}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refused() {
    let s = Server::start_mem().await;
    let long_ago = tm_coord::now_unix() - 7200;
    let (_, text) = s
        .coord
        .create_token(
            &TokenSpec {
                expires_in: Some(Duration::from_secs(3600)),
                reusable: true,
                ..TokenSpec::default()
            },
            ROOT,
            long_ago,
        )
        .expect("create");
    refused(s.join(&text, "late").await, 403, "expired");
    let (_, fresh) = s
        .coord
        .create_token(
            &TokenSpec {
                expires_in: Some(Duration::from_secs(3600)),
                ..TokenSpec::default()
            },
            ROOT,
            tm_coord::now_unix(),
        )
        .expect("create");
    s.join(&fresh, "early").await.expect("within its lifetime");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_replaces_the_default_token_across_restarts() {
    let dir = tmpdir("rot");
    let store = dir.join("state.json");
    let hub = key();
    let s = Server::start(&dir, Arc::new(FileStore::new(&store)), hub.clone()).await;
    let old = s.coord.token();
    s.join(&old, "alpha").await.expect("old token works");
    let (rec, new) = s
        .coord
        .rotate_token(ROOT, tm_coord::now_unix())
        .expect("rotate");
    assert!(rec.default);
    assert_ne!(old, new);
    assert_eq!(s.coord.token(), new);
    refused(s.join(&old, "beta").await, 403, "revoked");
    assert!(s.coord.check_token(&old, tm_coord::now_unix()).is_err());
    s.join(&new, "beta").await.expect("new token works");
    s.stop().await;

    let s = Server::start(&dir, Arc::new(FileStore::new(&store)), hub.clone()).await;
    assert_eq!(s.coord.token(), new, "the new default survives a restart");
    assert_eq!(tm_coord::read_token(&dir).expect("read").format(), new);
    refused(s.join(&old, "gamma").await, 403, "revoked");
    let defaults: Vec<_> = s.coord.tokens().into_iter().filter(|t| t.default).collect();
    assert_eq!(defaults.len(), 1);
    // an interrupted rotation (secret written, state never committed) is discarded
    let stray = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    std::fs::write(dir.join("coordinator/join_secret.next"), stray).expect("write");
    s.stop().await;
    let s = Server::start(&dir, Arc::new(FileStore::new(&store)), hub).await;
    assert_eq!(s.coord.token(), new);
    assert!(!dir.join("coordinator/join_secret.next").exists());
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A mesh from before tokens: its state has no tokens, its join secret becomes the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_keeps_the_existing_join_token() {
    let dir = tmpdir("upg");
    let store = dir.join("state.json");
    let hub = key();
    let s = Server::start(&dir, Arc::new(FileStore::new(&store)), hub.clone()).await;
    let token = s.coord.token();
    s.join(&token, "alpha").await.expect("alpha");
    s.stop().await;
    // Rewrite the state as the release before tokens wrote it: format 1, no tokens, no tags,
    // no replicated records.
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&store).expect("read")).expect("json");
    v["format"] = 1.into();
    v.as_object_mut().expect("object").remove("tokens");
    v.as_object_mut().expect("object").remove("records");
    std::fs::write(&store, serde_json::to_vec(&v).expect("json")).expect("write");

    let s = Server::start(&dir, Arc::new(FileStore::new(&store)), hub).await;
    assert_eq!(s.coord.token(), token);
    let toks = s.coord.tokens();
    assert_eq!(toks.len(), 1);
    assert!(toks[0].default && toks[0].created_by == "upgrade");
    s.join(&token, "beta")
        .await
        .expect("the old token still joins");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&store).expect("read")).expect("json");
    assert_eq!(saved["format"], 2);
    let secret = JoinToken::parse(&token).expect("parse").secret;
    let text = String::from_utf8(std::fs::read(&store).expect("read")).expect("utf8");
    assert!(
        !text.contains(&tm_coord::wire::hex(&secret)),
        "secret stored in the state"
    );
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_removal_and_audit_log() {
    let s = Server::start_mem().await;
    let t = s.coord.token();
    s.join(&t, "beta").await.expect("beta");
    let v0 = s.coord.netmap().version;
    let n = s
        .coord
        .tag_node("beta", "tag:untrusted", ROOT)
        .expect("tag");
    assert_eq!(n.tags, ["tag:untrusted"]);
    assert!(
        s.coord.netmap().version > v0,
        "a tag change is a netmap change"
    );
    assert_eq!(
        s.coord.netmap().peer("beta").expect("beta").tags,
        ["tag:untrusted"]
    );
    assert!(s.coord.tag_node("beta", "tag:untrusted", ROOT).is_err());
    assert!(matches!(
        s.coord.tag_node("nobody", "tag:x", ROOT),
        Err(Error::NoSuchNode(_))
    ));
    assert!(matches!(
        s.coord.tag_node("beta", "untrusted", ROOT),
        Err(Error::BadTag(..))
    ));
    s.coord
        .untag_node("beta", "tag:untrusted", ROOT)
        .expect("untag");
    assert!(s.coord.node_by_name("beta").expect("beta").tags.is_empty());
    assert!(s.coord.remove_node_as("hub", ROOT).is_err());
    let gone = s.coord.remove_node_as("beta", ROOT).expect("remove");
    assert_eq!(gone.name, "beta");
    assert!(s.coord.netmap().peer("beta").is_none());
    let (rec, _) = s
        .coord
        .create_token(&TokenSpec::default(), ROOT, tm_coord::now_unix())
        .expect("token");
    s.coord
        .revoke_token(&rec.id, ROOT, tm_coord::now_unix())
        .expect("revoke");
    s.coord
        .rotate_token(ROOT, tm_coord::now_unix())
        .expect("rotate");
    let log = s.coord.audit_log().expect("audit");
    let actions: Vec<(&str, &str)> = log
        .iter()
        .map(|e| (e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        &actions[..5],
        [
            ("node.tag", "beta"),
            ("node.untag", "beta"),
            ("node.remove", "beta"),
            ("token.create", rec.id.as_str()),
            ("token.revoke", rec.id.as_str()),
        ]
    );
    assert_eq!(actions[5].0, "token.rotate");
    assert!(log.iter().all(|e| e.who == ROOT && e.unix > 0));
    assert_eq!(log[0].detail, "tag:untrusted");
    s.stop().await;
}

// --- the policy ---------------------------------------------------------------------------

const UNTRUSTED: &str = r#"{
  // the seed's sentence
  "tagOwners": {"tag:untrusted": []},
  "default": "allow",
  "deny": [
    {"src": ["tag:untrusted"], "dst": ["*"], "app": {
      "tunnelmesh.io/cap/s3": [{"buckets": ["*"], "access": "rw"}],
      "tunnelmesh.io/cap/nfs": [{"shares": ["*"]}],
    }},
  ],
  "tests": [
    {"src": "tag:untrusted", "s3": {"bucket": "b", "key": "k", "op": "put"}, "expect": "deny"},
  ],
}"#;

fn s3_put(c: &Coordinator, who: &tm_policy::Identity) -> tm_policy::Decision {
    tm_policy::decide(
        &c.policy(),
        who,
        &tm_policy::Request::S3 {
            bucket: "b",
            key: "k",
            op: tm_policy::S3Op::Write,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_set_refuses_bad_files_and_keeps_the_one_in_force() {
    let s = Server::start_mem().await;
    let none = s.coord.policy().hash();
    assert_eq!(s.coord.policy_status(), "no policy: all members allowed");
    let err = |text: &str| match s.coord.set_policy("p.hujson", text, ROOT, 1) {
        Err(Error::PolicyRefused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let m = err("{\n  \"default\": \"allow\",\n  \"grants\": [,\n}");
    assert!(m.starts_with("p.hujson:3:"), "{m}");
    let m = err(
        r#"{"default": "allow", "tagOwners": {}, "deny": [{"src": ["tag:nope"], "dst": ["*"], "ip": ["*"]}]}"#,
    );
    assert!(m.contains("p.hujson:1:") && m.contains("tag:nope"), "{m}");
    let failing = UNTRUSTED.replace(r#""expect": "deny""#, r#""expect": "allow""#);
    let m = err(&failing);
    assert!(
        m.contains("test failed") && m.contains("expected allow, got deny"),
        "{m}"
    );
    let m = err(&format!(
        "{{\"default\": \"allow\"}}{}",
        " ".repeat(10 << 20)
    ));
    assert!(m.contains("at most"), "{m}");
    assert_eq!(s.coord.policy().hash(), none, "nothing changed");
    assert!(s.coord.policy_file().is_none());
    let out = s
        .coord
        .set_policy("p.hujson", UNTRUSTED, ROOT, 1)
        .expect("a good file");
    assert_eq!(out.tests, 1);
    assert_eq!(out.hash, s.coord.policy().hash().to_string());
    assert_ne!(s.coord.policy().hash(), none);
    assert!(s.coord.policy_status().starts_with("p.hujson (sha256:"));
    // check changes nothing
    let g = s.coord.policy_generation();
    s.coord
        .check_policy("q.hujson", r#"{"default": "deny"}"#)
        .expect("check");
    assert_eq!(s.coord.policy_generation(), g);
    assert_eq!(s.coord.policy_file().expect("set").file, "p.hujson");
    s.stop().await;
}

/// Tags, removal and the policy take effect in the next decision (the artifact is recompiled
/// with every change), and the netmap announces the policy's hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_and_removal_change_decisions_at_once() {
    let s = Server::start_mem().await;
    let t = s.coord.token();
    let beta = key();
    s.join_with(&t, "beta", &beta).await.expect("join");
    let who = s
        .coord
        .identity_of_key(&beta.public_key())
        .expect("beta is a member");
    assert!(s3_put(&s.coord, &who).allow, "no policy: members write");
    s.coord
        .set_policy("p.hujson", UNTRUSTED, ROOT, 1)
        .expect("set");
    assert!(s3_put(&s.coord, &who).allow, "beta is not tagged yet");
    let out = s
        .coord
        .tag_node("beta", "tag:nope", ROOT)
        .expect_err("undeclared tag");
    assert!(out.to_string().contains("tagOwners"), "{out}");
    let g = s.coord.policy_generation();
    s.coord
        .tag_node("beta", "tag:untrusted", ROOT)
        .expect("tag");
    assert!(s.coord.policy_generation() > g);
    let d = s3_put(&s.coord, &who);
    assert!(!d.allow, "{d}");
    assert!(d.message().contains("(rule p.hujson:7)"), "{}", d.message());
    assert_eq!(
        s.coord.netmap().policy_hash,
        Some(s.coord.policy().hash().to_string())
    );
    s.coord
        .untag_node("beta", "tag:untrusted", ROOT)
        .expect("untag");
    assert!(s3_put(&s.coord, &who).allow);
    s.coord.remove_node_as("beta", ROOT).expect("remove");
    let d = s3_put(&s.coord, &who);
    assert!(!d.allow && d.reason.contains("not in the mesh"), "{d}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_survives_restart_and_is_audited_with_its_hash() {
    let dir = tmpdir("pol");
    let store = dir.join("state.json");
    let hub = key();
    let s = Server::start(&dir, Arc::new(FileStore::new(&store)), hub.clone()).await;
    let out = s
        .coord
        .set_policy("p.hujson", UNTRUSTED, ROOT, 1)
        .expect("set");
    s.stop().await;
    let s = Server::start(&dir, Arc::new(FileStore::new(&store)), hub).await;
    assert_eq!(s.coord.policy().hash().to_string(), out.hash);
    let p = s.coord.policy_file().expect("stored");
    assert_eq!((p.file.as_str(), p.text.as_str()), ("p.hujson", UNTRUSTED));
    let audit = s.coord.audit_log().expect("audit");
    let e = audit
        .iter()
        .find(|e| e.action == "policy.set")
        .expect("policy.set audited");
    assert_eq!((e.who.as_str(), e.target.as_str()), (ROOT, "p.hujson"));
    assert_eq!(e.policy_hash, out.hash);
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stored policy whose own tests fail against a later mesh (a tag changed) is still in force
/// after a restart (with a loud warning in the log), not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_policy_with_failing_tests_is_still_loaded_at_start() {
    let dir = tmpdir("polfail");
    let store = dir.join("state.json");
    let hub = key();
    let s = Server::start(&dir, Arc::new(FileStore::new(&store)), hub.clone()).await;
    let beta = key();
    s.join_with(&s.coord.token(), "beta", &beta)
        .await
        .expect("join");
    let text = UNTRUSTED.replace(
        r#"  "tests": ["#,
        r#"  "tests": [
    {"src": "beta", "s3": {"bucket": "b", "key": "k", "op": "put"}, "expect": "allow"},"#,
    );
    s.coord
        .set_policy("p.hujson", &text, ROOT, 1)
        .expect("set while beta is untagged");
    s.coord
        .tag_node("beta", "tag:untrusted", ROOT)
        .expect("tag: the file's beta test now fails");
    let hash = s.coord.policy().hash();
    s.stop().await;
    let s = Server::start(&dir, Arc::new(FileStore::new(&store)), hub).await;
    assert!(s.coord.policy().has_policy, "the stored policy is in force");
    assert_eq!(s.coord.policy().hash(), hash);
    let who = s.coord.identity_of_key(&beta.public_key()).expect("member");
    assert!(!s3_put(&s.coord, &who).allow, "and enforced");
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every node receives its own projection of the policy in its netmap (registration answer,
/// long poll): what its packet filter needs both ways (the same table as from the full
/// policy), only its own S3 grants, no tokens; a tag change is in the next netmap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_netmap_carries_the_nodes_projection_of_the_policy() {
    let s = Server::start_mem().await;
    let t = s.coord.token();
    let (beta, gamma) = (key(), key());
    let reg = s.join_with(&t, "beta", &beta).await.expect("join beta");
    let none = reg
        .netmap
        .policy
        .expect("a projection even without a policy file");
    assert!(!none.has_policy);
    s.join_with(&t, "gamma", &gamma).await.expect("join gamma");
    const P: &str = r#"{
  "tagOwners": {"tag:web": []},
  "default": "deny",
  "acls": [{"action": "accept", "src": ["gamma"], "dst": ["tag:web:443"]},
           {"action": "accept", "src": ["*"], "dst": ["gamma:22"]}],
  "grants": [{"src": ["*"], "dst": ["*"], "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["*"], "access": "rw"}]}}],
}"#;
    s.coord.set_policy("p.hujson", P, ROOT, 1).expect("set");
    s.coord
        .create_token(
            &TokenSpec {
                tags: vec!["tag:web".into()],
                ..Default::default()
            },
            ROOT,
            1,
        )
        .expect("tagged token");
    let for_beta = s
        .coord
        .netmap_for(&beta.public_key())
        .policy
        .expect("projection");
    let for_gamma = s
        .coord
        .netmap_for(&gamma.public_key())
        .policy
        .expect("projection");
    assert!(for_beta.has_policy && for_beta.tokens.is_empty() && for_gamma.tokens.is_empty());
    // beta is not tagged yet: no rule lets anyone reach it; as a source it keeps what it may
    // reach (gamma:22) and its own S3 grant (which opens a coordinator's S3 port to it).
    let (kb, kg) = (
        tm_coord::node_key(&beta.public_key()),
        tm_coord::node_key(&gamma.public_key()),
    );
    let fb = for_beta.filter_for(&kb);
    assert!(fb.peers.is_empty(), "{fb:?}");
    assert_eq!(fb.reachable.iter().collect::<Vec<_>>(), [&kg]);
    assert_eq!(
        fb,
        s.coord.policy().filter_for(&kb),
        "the same filter as the full policy"
    );
    assert!(for_beta
        .rules
        .iter()
        .filter(|r| !r.ip.is_empty())
        .all(|r| !r
            .dst
            .matches(true, Some("beta"), &Default::default(), &Default::default())));
    assert_eq!(for_gamma.filter_for(&kg), s.coord.policy().filter_for(&kg));
    // Only S3 grants (to themselves) stay; no admin, no Docker for others.
    for r in for_beta.rules.iter().chain(&for_gamma.rules) {
        assert!(r
            .app
            .iter()
            .all(|a| matches!(a.grant, tm_policy::caps::AppGrant::S3 { .. })));
    }
    let ip = |a: &tm_policy::Artifact, src: &str, dst: &str| {
        tm_policy::filter_test(a, src, dst)
            .expect("filter test")
            .allow
    };
    assert!(ip(&for_gamma, "beta", "gamma:22") && !ip(&for_gamma, "beta", "gamma:23"));
    let v = s.coord.netmap().version;
    s.coord.tag_node("beta", "tag:web", ROOT).expect("tag");
    let nm = s.coord.netmap_for(&beta.public_key());
    assert!(nm.version > v, "a tag change wakes the long polls");
    let for_beta = nm.policy.expect("projection");
    assert_eq!(
        for_beta.filter_for(&kb),
        s.coord.policy().filter_for(&kb),
        "{:#?}",
        for_beta.rules
    );
    assert!(ip(&for_beta, "gamma", "beta:443") && !ip(&for_beta, "gamma", "beta:80"));
    s.stop().await;
}
