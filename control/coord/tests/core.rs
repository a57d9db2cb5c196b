//! The protocol core without I/O: time and randomness are passed in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use tm_coord::wire::RegisterRequest;
use tm_coord::{
    build_register_request, make_csr, Coordinator, CoordinatorConfig, Error, JoinToken, MemStore,
};
use tm_noise::PrivateKey;

fn open(max_challenges: usize) -> (Coordinator, PrivateKey) {
    let mut r = [0u8; 8];
    OsRng.fill_bytes(&mut r);
    let dir = std::env::temp_dir().join(format!(
        "tm-coord-core-{}-{}",
        std::process::id(),
        u64::from_le_bytes(r)
    ));
    let hub = PrivateKey::generate(&mut OsRng);
    let mut cfg = CoordinatorConfig::new("hub");
    cfg.max_challenges = max_challenges;
    let c = Coordinator::open(&dir, cfg, hub.clone(), Arc::new(MemStore::new())).expect("open");
    (c, hub)
}

fn request(c: &Coordinator, now: Instant, k: &PrivateKey, name: &str) -> RegisterRequest {
    let ch = c.handle_challenge(now, &mut OsRng).expect("challenge");
    let token: JoinToken = c.join_token();
    let (_key, pem, der) = make_csr(name).expect("csr");
    build_register_request(&ch, k, name, pem, &der, &[], &token).expect("request")
}

#[test]
fn challenge_expires_after_ttl() {
    let (c, _) = open(16);
    let t0 = Instant::now();
    let k = PrivateKey::generate(&mut OsRng);
    let req = request(&c, t0, &k, "late");
    let e = c
        .handle_register(t0 + Duration::from_secs(61), req.clone(), &mut OsRng)
        .expect_err("expired");
    assert!(matches!(e, Error::ChallengeUnknown), "{e:?}");
    assert_eq!(e.http_status(), 403);
    // Within the lifetime it works.
    let req = request(&c, t0, &k, "late");
    c.handle_register(t0 + Duration::from_secs(59), req, &mut OsRng)
        .expect("in time");
}

#[test]
fn challenges_cost_nothing_used_nonces_are_bounded_and_purged() {
    let (c, _) = open(3);
    let t0 = Instant::now();
    // Issuing is free: far more challenges than the bound.
    for _ in 0..100 {
        c.handle_challenge(t0, &mut OsRng).expect("room");
    }
    // Nonces of successful registrations are remembered (replay protection), at most 3
    // within one challenge lifetime.
    for i in 0..3 {
        let req = request(&c, t0, &PrivateKey::generate(&mut OsRng), &format!("n{i}"));
        c.handle_register(t0, req, &mut OsRng).expect("room");
    }
    let req = request(&c, t0, &PrivateKey::generate(&mut OsRng), "n3");
    let e = c.handle_register(t0, req, &mut OsRng).expect_err("full");
    assert!(matches!(e, Error::Busy), "{e:?}");
    assert_eq!(e.http_status(), 503);
    // Expired ones are dropped on the next call.
    let later = t0 + Duration::from_secs(61);
    let req = request(&c, later, &PrivateKey::generate(&mut OsRng), "n3");
    c.handle_register(later, req, &mut OsRng).expect("purged");
}

#[test]
fn coordinator_key_cannot_be_registered() {
    let (c, hub) = open(16);
    let now = Instant::now();
    let e = c
        .handle_register(now, request(&c, now, &hub, "hub"), &mut OsRng)
        .expect_err("coordinator key");
    assert!(matches!(e, Error::KeyTaken(_)), "{e:?}");
    let e = c
        .handle_register(now, request(&c, now, &hub, "fake"), &mut OsRng)
        .expect_err("coordinator key, new name");
    assert!(matches!(e, Error::KeyTaken(_)), "{e:?}");
    assert_eq!(c.netmap().peers.len(), 1);
    assert!(c.remove_node("hub").is_err());
    assert!(!c.remove_node("nobody").expect("absent is fine"));
}

#[test]
fn admin_removal_frees_address_and_bumps_version() {
    let (c, _) = open(16);
    let now = Instant::now();
    let k = PrivateKey::generate(&mut OsRng);
    let mut rx = c.subscribe();
    let r = c
        .handle_register(now, request(&c, now, &k, "alpha"), &mut OsRng)
        .expect("register");
    assert!(rx.has_changed().expect("sender alive"));
    let v = *rx.borrow_and_update();
    assert!(c.remove_node("alpha").expect("removed"));
    assert!(*rx.borrow_and_update() > v);
    assert!(c.netmap().peer("alpha").is_none());
    // Re-registering the same key gets the same (hash-derived) address again.
    let r2 = c
        .handle_register(now, request(&c, now, &k, "alpha"), &mut OsRng)
        .expect("register again");
    assert_eq!(r.mesh_ip, r2.mesh_ip);
}

#[test]
fn observed_endpoint_published_first_and_deduplicated() {
    let (c, hub) = open(16);
    let now = Instant::now();
    let k = PrivateKey::generate(&mut OsRng);
    let declared: std::net::SocketAddr = "198.51.100.7:51820".parse().expect("addr");
    let nat: std::net::SocketAddr = "203.0.113.9:40001".parse().expect("addr");
    let ch = c.handle_challenge(now, &mut OsRng).expect("challenge");
    let (_key, pem, der) = make_csr("alpha").expect("csr");
    let req = build_register_request(&ch, &k, "alpha", pem, &der, &[declared], &c.join_token())
        .expect("request");
    c.handle_register(now, req, &mut OsRng).expect("register");
    let mut rx = c.subscribe();
    let v0 = *rx.borrow_and_update();

    // Unknown key, the coordinator's own key, loopback and unspecified: ignored.
    let stranger = PrivateKey::generate(&mut OsRng).public_key();
    assert!(!c.observe_endpoint(&stranger, nat));
    assert!(!c.observe_endpoint(&hub.public_key(), nat));
    assert!(!c.observe_endpoint(&k.public_key(), "127.0.0.1:5000".parse().expect("a")));
    assert!(!c.observe_endpoint(&k.public_key(), "0.0.0.0:5000".parse().expect("a")));
    assert!(!rx.has_changed().expect("alive"));
    assert_eq!(c.netmap().version, v0);

    // A new observation is published first and bumps the version once.
    assert!(c.observe_endpoint(&k.public_key(), nat));
    assert!(rx.has_changed().expect("alive"));
    let v1 = *rx.borrow_and_update();
    assert!(v1 > v0);
    let nm = c.netmap();
    assert_eq!(nm.peer("alpha").expect("alpha").endpoints, [nat, declared]);
    // The same address again (also as IPv4-mapped IPv6) changes nothing.
    assert!(!c.observe_endpoint(&k.public_key(), nat));
    assert!(!c.observe_endpoint(
        &k.public_key(),
        "[::ffff:203.0.113.9]:40001".parse().expect("a")
    ));
    assert!(!rx.has_changed().expect("alive"));
    // Observed equal to a declared endpoint: listed once.
    assert!(c.observe_endpoint(&k.public_key(), declared));
    assert_eq!(
        c.netmap().peer("alpha").expect("alpha").endpoints,
        [declared]
    );
    // Declared endpoints replaced: the observation stays first.
    let other: std::net::SocketAddr = "192.0.2.50:51820".parse().expect("addr");
    c.handle_endpoints("alpha", vec![other]).expect("update");
    assert_eq!(
        c.netmap().peer("alpha").expect("alpha").endpoints,
        [declared, other]
    );
    // Other peers are untouched.
    assert_eq!(c.netmap().peer("hub").expect("hub").endpoints, Vec::new());
}

#[test]
fn service_ports_open_by_capability_in_the_compiled_policy() {
    use tm_policy::{Request, ServiceNeed, ServicePort, Target};
    let mut r = [0u8; 8];
    OsRng.fill_bytes(&mut r);
    let dir = std::env::temp_dir().join(format!("tm-coord-svc-{}", u64::from_le_bytes(r)));
    let hub = PrivateKey::generate(&mut OsRng);
    let mut cfg = CoordinatorConfig::new("hub");
    cfg.service_ports = vec![
        ServicePort {
            name: "s3".into(),
            proto: 6,
            port: 8080,
            needs: ServiceNeed::S3,
        },
        ServicePort {
            name: "api".into(),
            proto: 6,
            port: 8443,
            needs: ServiceNeed::Member,
        },
    ];
    let c = Coordinator::open(&dir, cfg, hub.clone(), Arc::new(MemStore::new())).expect("open");
    let t0 = Instant::now();
    let k = PrivateKey::generate(&mut OsRng);
    c.handle_register(t0, request(&c, t0, &k, "alpha"), &mut OsRng)
        .expect("register");
    let hub_key = tm_coord::node_key(&hub.public_key());
    // The configured two and the Docker agent port (every node has one).
    assert_eq!(c.policy().services[&hub_key].len(), 3, "in the artifact");
    let alpha_key = tm_coord::node_key(&k.public_key());
    assert_eq!(
        c.policy().services[&alpha_key][0].port,
        tm_policy::DOCKER_AGENT_PORT
    );
    let ip = |art: &tm_policy::Artifact, port| {
        tm_policy::decide(
            art,
            &c.identity_of_key(&k.public_key()).unwrap(),
            &Request::Ip {
                dst: Target::Node("hub"),
                proto: 6,
                port,
            },
        )
        .allow
    };
    // A policy without S3 grants: the API port only; with one, S3 too.
    c.set_policy("p.hujson", r#"{"default": "deny"}"#, "root", 1)
        .expect("set");
    assert!(ip(&c.policy(), 8443) && !ip(&c.policy(), 8080));
    c.set_policy(
        "p.hujson",
        r#"{"default": "deny", "grants": [{"src": ["alpha"], "dst": ["*"],
           "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["b"], "access": "ro"}]}}]}"#,
        "root",
        2,
    )
    .expect("set");
    assert!(ip(&c.policy(), 8080));
    let t = c.policy().filter_for(&hub_key);
    assert!(t.allows_peer(&tm_coord::node_key(&k.public_key()), 6, 8080));
    // `policy set` runs the file's tests with the service ports: a test expecting 8080 closed
    // to an S3 holder fails.
    let e = c
        .set_policy(
            "p.hujson",
            r#"{"default": "deny", "grants": [{"src": ["alpha"], "dst": ["*"],
               "app": {"tunnelmesh.io/cap/s3": [{"buckets": ["b"], "access": "ro"}]}}],
               "tests": [{"src": "alpha", "deny": ["hub:8080"]}]}"#,
            "root",
            3,
        )
        .expect_err("test fails");
    assert!(e.to_string().contains("hub:8080"), "{e}");
    // A Docker grant on alpha opens alpha's agent port to hub, nothing else of alpha.
    let to_alpha = |art: &tm_policy::Artifact, port| {
        tm_policy::decide(
            art,
            &tm_policy::Identity::Node(hub_key.clone()),
            &Request::Ip {
                dst: Target::Node("alpha"),
                proto: 6,
                port,
            },
        )
        .allow
    };
    assert!(!to_alpha(&c.policy(), tm_policy::DOCKER_AGENT_PORT));
    c.set_policy(
        "p.hujson",
        r#"{"default": "deny", "grants": [{"src": ["hub"], "dst": ["alpha"],
           "app": {"tunnelmesh.io/cap/docker": [{"containers": ["*"], "verbs": ["viewer"]}]}}]}"#,
        "root",
        4,
    )
    .expect("set");
    assert!(to_alpha(&c.policy(), tm_policy::DOCKER_AGENT_PORT));
    assert!(!to_alpha(&c.policy(), 22));
    let t = c.policy().filter_for(&alpha_key);
    assert!(t.allows_peer(&hub_key, 6, tm_policy::DOCKER_AGENT_PORT));
    assert!(!t.allows_peer(&hub_key, 6, 22));
}
