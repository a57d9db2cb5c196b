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
fn outstanding_challenges_are_bounded_and_purged() {
    let (c, _) = open(3);
    let t0 = Instant::now();
    for _ in 0..3 {
        c.handle_challenge(t0, &mut OsRng).expect("room");
    }
    let e = c.handle_challenge(t0, &mut OsRng).expect_err("full");
    assert!(matches!(e, Error::Busy));
    assert_eq!(e.http_status(), 503);
    // Expired ones are dropped on the next call.
    c.handle_challenge(t0 + Duration::from_secs(61), &mut OsRng)
        .expect("purged");
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
