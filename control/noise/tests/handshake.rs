//! In-memory handshakes between two `Local`s with a virtual clock.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand_core::OsRng;
use tm_noise::handshake::{
    InitiationStep, Local, Peer, PendingInitiation, ResponseStep, SessionKeys,
};
use tm_noise::keys::PrivateKey;
use tm_noise::HandshakeError;
use tm_wire::wg;

const A_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 40000);

struct Pair {
    a: Local,
    b: Local,
    /// A's record of B.
    a_b: Peer,
    /// B's record of A.
    b_a: Peer,
    now: Instant,
    wall: SystemTime,
}

impl Pair {
    fn new(psk_a: Option<[u8; 32]>, psk_b: Option<[u8; 32]>) -> Self {
        let a = Local::new(PrivateKey::generate(&mut OsRng));
        let b = Local::new(PrivateKey::generate(&mut OsRng));
        let a_b = Peer::new(&a, b.public_key(), psk_a).expect("valid");
        let b_a = Peer::new(&b, a.public_key(), psk_b).expect("valid");
        Self {
            a,
            b,
            a_b,
            b_a,
            now: Instant::now(),
            wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.wall += d;
    }

    fn a_initiates(&mut self, idx: u32) -> [u8; 148] {
        self.a
            .initiate(self.now, self.wall, &mut self.a_b, idx, &mut OsRng)
    }

    fn b_begins(&mut self, msg: &[u8], under_load: bool) -> Result<InitiationStep, HandshakeError> {
        self.b
            .begin_initiation(self.now, msg, A_ADDR, under_load, &mut OsRng)
    }

    fn b_pending(&mut self, msg: &[u8]) -> PendingInitiation {
        match self.b_begins(msg, false).expect("valid initiation") {
            InitiationStep::Identified(p) => p,
            InitiationStep::Cookie(_) => panic!("not under load"),
        }
    }

    fn b_responds(
        &mut self,
        msg: &[u8],
        idx: u32,
    ) -> Result<([u8; 92], SessionKeys), HandshakeError> {
        let p = self.b_pending(msg);
        assert_eq!(p.remote_static(), self.a.public_key());
        self.b.respond(self.now, p, &mut self.b_a, idx, &mut OsRng)
    }

    fn a_handles(&mut self, resp: &[u8]) -> Result<ResponseStep, HandshakeError> {
        self.a
            .handle_response(self.now, resp, A_ADDR, false, &mut self.a_b, &mut OsRng)
    }

    fn full(&mut self, ia: u32, ib: u32) -> (SessionKeys, SessionKeys) {
        let init = self.a_initiates(ia);
        let (resp, kb) = self.b_responds(&init, ib).expect("respond");
        match self.a_handles(&resp).expect("response") {
            ResponseStep::Established(ka) => (ka, kb),
            ResponseStep::Cookie(_) => panic!("not under load"),
        }
    }
}

fn assert_matching(ka: &SessionKeys, kb: &SessionKeys) {
    assert!(ka.initiator && !kb.initiator);
    assert_eq!(ka.send_key, kb.recv_key);
    assert_eq!(ka.recv_key, kb.send_key);
    assert_ne!(ka.send_key, ka.recv_key);
    assert_eq!(ka.local_index, kb.remote_index);
    assert_eq!(ka.remote_index, kb.local_index);
}

#[test]
fn handshake_both_directions_with_and_without_psk() {
    for psk in [None, Some([0x33; 32])] {
        let mut p = Pair::new(psk, psk);
        let (ka, kb) = p.full(1, 2);
        assert_matching(&ka, &kb);
        assert_eq!((ka.local_index, ka.remote_index), (1, 2));

        // Reverse: B initiates to A.
        p.advance(Duration::from_secs(1));
        let init = p.b.initiate(p.now, p.wall, &mut p.b_a, 20, &mut OsRng);
        let pend = match p
            .a
            .begin_initiation(p.now, &init, A_ADDR, false, &mut OsRng)
            .expect("valid")
        {
            InitiationStep::Identified(x) => x,
            InitiationStep::Cookie(_) => panic!("not under load"),
        };
        assert_eq!(pend.remote_static(), p.b.public_key());
        let (resp, ka2) =
            p.a.respond(p.now, pend, &mut p.a_b, 10, &mut OsRng)
                .expect("ok");
        let kb2 = match p
            .b
            .handle_response(p.now, &resp, A_ADDR, false, &mut p.b_a, &mut OsRng)
            .expect("ok")
        {
            ResponseStep::Established(k) => k,
            ResponseStep::Cookie(_) => panic!("not under load"),
        };
        assert_matching(&kb2, &ka2);
        assert_ne!(ka2.send_key, ka.send_key, "fresh keys per handshake");
    }
}

#[test]
fn psk_mismatch_fails() {
    let mut p1 = Pair::new(Some([7; 32]), Some([8; 32]));
    let init = p1.a_initiates(1);
    // The responder cannot tell (the PSK enters only the response).
    let (resp, _) = p1.b_responds(&init, 2).expect("responder accepts");
    assert_eq!(p1.a_handles(&resp).err(), Some(HandshakeError::Decrypt));
    // The failure leaves the initiation in flight.
    assert_eq!(p1.a_b.initiation_in_flight(), Some(1));
}

#[test]
fn replayed_initiation_rejected() {
    let mut p = Pair::new(None, None);
    let init = p.a_initiates(1);
    p.b_responds(&init, 2).expect("first accepted");
    p.advance(Duration::from_secs(5));
    assert_eq!(p.b_responds(&init, 3).err(), Some(HandshakeError::Replay));
    // An initiation with an equal timestamp (same wall clock) is a replay too.
    let mut q = Pair::new(None, None);
    let i1 = q.a_initiates(1);
    q.b_responds(&i1, 2).expect("accepted");
    q.now += Duration::from_secs(1); // monotonic clock moves, wall clock does not
    let i2 = q.a_initiates(3);
    assert_eq!(q.b_responds(&i2, 4).err(), Some(HandshakeError::Replay));
    // A newer one is fine.
    q.wall += Duration::from_secs(1);
    let i3 = q.a_initiates(5);
    q.b_responds(&i3, 6).expect("newer timestamp accepted");
}

#[test]
fn flood_rejected_then_allowed_after_50ms() {
    let mut p = Pair::new(None, None);
    let i1 = p.a_initiates(1);
    p.b_responds(&i1, 2).expect("accepted");
    p.now += Duration::from_millis(10);
    p.wall += Duration::from_millis(100); // strictly newer timestamp, yet too soon
    let i2 = p.a_initiates(3);
    assert_eq!(p.b_responds(&i2, 4).err(), Some(HandshakeError::Flood));
    p.now += Duration::from_millis(45);
    assert!(
        p.b_responds(&i2, 5).is_ok(),
        "55 ms after the last accepted one"
    );
}

#[test]
fn mac1_tampering_rejected() {
    let mut p = Pair::new(None, None);
    let init = p.a_initiates(1);
    for pos in [0x08usize, 50, 100, 116, 131] {
        let mut bad = init;
        bad[pos] ^= 0x01;
        assert_eq!(
            p.b_begins(&bad, false).err(),
            Some(HandshakeError::BadMac1),
            "byte {pos}"
        );
    }
    // mac2 is not checked when not under load.
    let mut m2 = init;
    m2[140] ^= 1;
    assert!(p.b_begins(&m2, false).is_ok());
    // A message for someone else fails mac1.
    let c = Local::new(PrivateKey::generate(&mut OsRng));
    let mut a_c = Peer::new(&p.a, c.public_key(), None).expect("valid");
    let to_c = p.a.initiate(p.now, p.wall, &mut a_c, 9, &mut OsRng);
    assert_eq!(
        p.b_begins(&to_c, false).err(),
        Some(HandshakeError::BadMac1)
    );

    // Response mac1 too.
    let (resp, _) = p.b_responds(&init, 2).expect("ok");
    let mut bad = resp;
    bad[70] ^= 0x80;
    assert_eq!(p.a_handles(&bad).err(), Some(HandshakeError::BadMac1));
    assert!(matches!(
        p.a_handles(&resp),
        Ok(ResponseStep::Established(_))
    ));
}

#[test]
fn bad_lengths_and_types() {
    let mut p = Pair::new(None, None);
    let init = p.a_initiates(1);
    assert_eq!(
        p.b_begins(&init[..147], false).err(),
        Some(HandshakeError::BadLength)
    );
    let mut wrong_type = init;
    wrong_type[0] = 2;
    assert_eq!(
        p.b_begins(&wrong_type, false).err(),
        Some(HandshakeError::BadLength)
    );
    let mut reserved = init;
    reserved[3] = 1;
    assert_eq!(
        p.b_begins(&reserved, false).err(),
        Some(HandshakeError::BadLength)
    );
    assert_eq!(p.a_handles(&init).err(), Some(HandshakeError::BadLength));
    assert_eq!(
        p.a.handle_cookie_reply(p.now, &[3u8; 64], &mut p.a_b).err(),
        Some(HandshakeError::BadLength)
    );
}

#[test]
fn under_load_cookie_then_retry_with_mac2() {
    let mut p = Pair::new(None, None);
    let init = p.a_initiates(1);
    let reply = match p.b_begins(&init, true).expect("mac1 ok") {
        InitiationStep::Cookie(r) => r,
        InitiationStep::Identified(_) => panic!("no mac2 under load must give a cookie"),
    };
    assert_eq!(wg::classify(&reply), Ok(wg::MSG_COOKIE_REPLY));
    assert_eq!(wg::handshake_receiver(&reply), Some(1));

    // Tampered cookie reply fails; it does not consume our last mac1.
    let mut bad = reply;
    bad[40] ^= 1;
    assert_eq!(
        p.a.handle_cookie_reply(p.now, &bad, &mut p.a_b).err(),
        Some(HandshakeError::Decrypt)
    );
    // Wrong receiver index.
    let mut wrong = reply;
    wrong[4] ^= 1;
    assert_eq!(
        p.a.handle_cookie_reply(p.now, &wrong, &mut p.a_b).err(),
        Some(HandshakeError::UnexpectedResponse)
    );
    p.a.handle_cookie_reply(p.now, &reply, &mut p.a_b)
        .expect("genuine cookie");
    // A second copy of the same reply is unexpected now.
    assert_eq!(
        p.a.handle_cookie_reply(p.now, &reply, &mut p.a_b).err(),
        Some(HandshakeError::UnexpectedResponse)
    );

    p.advance(Duration::from_secs(1));
    let retry = p.a_initiates(2);
    assert_ne!(&retry[132..], &[0u8; 16]);
    let pending = match p.b_begins(&retry, true).expect("mac1 ok") {
        InitiationStep::Identified(x) => x,
        InitiationStep::Cookie(_) => panic!("valid mac2 must pass under load"),
    };
    let (resp, kb) =
        p.b.respond(p.now, pending, &mut p.b_a, 7, &mut OsRng)
            .expect("accepted");
    let ka = match p.a_handles(&resp).expect("ok") {
        ResponseStep::Established(k) => k,
        ResponseStep::Cookie(_) => panic!("not under load"),
    };
    assert_matching(&ka, &kb);

    // The cookie is bound to the source address: another port gets a cookie reply.
    p.advance(Duration::from_secs(1));
    let again = p.a_initiates(3);
    let other = SocketAddr::new(A_ADDR.ip(), A_ADDR.port() + 1);
    assert!(matches!(
        p.b.begin_initiation(p.now, &again, other, true, &mut OsRng),
        Ok(InitiationStep::Cookie(_))
    ));

    // After 120 s the initiator drops the cookie (mac2 zero) and the responder has rotated
    // its secret: a cookie reply again.
    p.advance(Duration::from_secs(121));
    let late = p.a_initiates(4);
    assert_eq!(&late[132..], &[0u8; 16]);
    assert!(matches!(
        p.b_begins(&late, true),
        Ok(InitiationStep::Cookie(_))
    ));
}

#[test]
fn initiator_under_load_answers_response_with_cookie() {
    let mut p = Pair::new(None, None);
    let init = p.a_initiates(1);
    let (resp, _) = p.b_responds(&init, 2).expect("ok");
    let reply = match p
        .a
        .handle_response(p.now, &resp, A_ADDR, true, &mut p.a_b, &mut OsRng)
        .expect("mac1 ok")
    {
        ResponseStep::Cookie(r) => r,
        ResponseStep::Established(_) => panic!("under load without mac2"),
    };
    assert_eq!(
        wg::handshake_receiver(&reply),
        Some(2),
        "addressed to the responder's index"
    );
    p.b.handle_cookie_reply(p.now, &reply, &mut p.b_a)
        .expect("responder stores the cookie for its response");
    // The initiation is still in flight; the same response is accepted when not under load.
    assert!(matches!(
        p.a_handles(&resp),
        Ok(ResponseStep::Established(_))
    ));
}

#[test]
fn unexpected_and_expired_responses() {
    let mut p = Pair::new(None, None);
    let init = p.a_initiates(1);
    let (resp, _) = p.b_responds(&init, 2).expect("ok");
    // Another initiation replaced the first one: the response is for an old index.
    let _second = p.a_initiates(5);
    assert_eq!(
        p.a_handles(&resp).err(),
        Some(HandshakeError::UnexpectedResponse)
    );

    let mut q = Pair::new(None, None);
    let init = q.a_initiates(1);
    let (resp, _) = q.b_responds(&init, 2).expect("ok");
    assert!(q.a_handles(&resp).is_ok());
    assert_eq!(
        q.a_handles(&resp).err(),
        Some(HandshakeError::UnexpectedResponse),
        "a response is consumed once"
    );

    let mut r = Pair::new(None, None);
    let init = r.a_initiates(1);
    let (resp, _) = r.b_responds(&init, 2).expect("ok");
    r.now += Duration::from_secs(91);
    assert_eq!(r.a_handles(&resp).err(), Some(HandshakeError::Expired));
}

#[test]
fn wrong_peer_record_is_unknown_peer() {
    let mut p = Pair::new(None, None);
    let c = Local::new(PrivateKey::generate(&mut OsRng));
    let mut b_c = Peer::new(&p.b, c.public_key(), None).expect("valid");
    let init = p.a_initiates(1);
    let pending = p.b_pending(&init);
    assert_eq!(
        p.b.respond(p.now, pending, &mut b_c, 2, &mut OsRng).err(),
        Some(HandshakeError::UnknownPeer)
    );
}

#[test]
fn forged_response_keeps_initiation_in_flight() {
    let mut p = Pair::new(None, None);
    let init = p.a_initiates(1);
    let (resp, _) = p.b_responds(&init, 2).expect("ok");
    // An attacker who knows only B's public key can compute mac1 but not the AEAD.
    let mut forged = resp;
    forged[44] ^= 1; // the encrypted-empty field
    let mac1_key = {
        use blake2::Digest;
        let mut h = blake2::Blake2s256::new();
        h.update(b"mac1----");
        h.update(p.a.public_key().as_bytes());
        h.finalize()
    };
    let m1 = {
        use blake2::digest::{KeyInit, Mac};
        let mut m =
            <blake2::Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(&mac1_key)
                .expect("key");
        m.update(&forged[..60]);
        m.finalize().into_bytes()
    };
    forged[60..76].copy_from_slice(&m1);
    assert_eq!(p.a_handles(&forged).err(), Some(HandshakeError::Decrypt));
    assert!(matches!(
        p.a_handles(&resp),
        Ok(ResponseStep::Established(_))
    ));
}

#[test]
fn small_order_peer_key_rejected() {
    let a = Local::new(PrivateKey::generate(&mut OsRng));
    let zero = tm_noise::keys::PublicKey([0; 32]);
    assert_eq!(
        Peer::new(&a, zero, None).err(),
        Some(HandshakeError::InvalidPoint)
    );
}

#[test]
fn session_keys_debug_hides_keys() {
    let mut p = Pair::new(None, None);
    let (ka, _) = p.full(1, 2);
    let s = format!("{ka:?}");
    assert!(s.contains("local_index: 1"));
    assert!(!s.contains("send_key") && !s.contains("recv_key"), "{s}");
}

/// Random bodies with a correct mac1 (what an attacker who knows our public key can send)
/// are rejected with an error, never a panic.
#[test]
fn random_messages_with_valid_mac1_are_errors() {
    use blake2::digest::{consts::U16, Digest, KeyInit, Mac};
    use rand_core::RngCore;
    let mut p = Pair::new(None, None);
    let key_for = |public: &tm_noise::keys::PublicKey| {
        let mut h = blake2::Blake2s256::new();
        h.update(b"mac1----");
        h.update(public.as_bytes());
        h.finalize()
    };
    let b_key = key_for(&p.b.public_key());
    let a_key = key_for(&p.a.public_key());
    let fix_mac1 = |key: &[u8], msg: &mut [u8]| {
        let n = msg.len();
        let mut m = <blake2::Blake2sMac<U16> as KeyInit>::new_from_slice(key).expect("key");
        m.update(&msg[..n - 32]);
        let tag = m.finalize().into_bytes();
        msg[n - 32..n - 16].copy_from_slice(&tag);
    };
    let _ = p.a_initiates(1);
    for _ in 0..500 {
        let mut init = [0u8; 148];
        OsRng.fill_bytes(&mut init);
        init[..4].copy_from_slice(&[1, 0, 0, 0]);
        fix_mac1(&b_key, &mut init);
        assert!(matches!(
            p.b_begins(&init, false),
            Err(HandshakeError::Decrypt | HandshakeError::InvalidPoint)
        ));
        let mut resp = [0u8; 92];
        OsRng.fill_bytes(&mut resp);
        resp[..4].copy_from_slice(&[2, 0, 0, 0]);
        resp[8..12].copy_from_slice(&1u32.to_le_bytes());
        fix_mac1(&a_key, &mut resp);
        assert!(matches!(
            p.a_handles(&resp),
            Err(HandshakeError::Decrypt | HandshakeError::InvalidPoint)
        ));
    }
    assert_eq!(
        p.a_b.initiation_in_flight(),
        Some(1),
        "garbage never cancels the handshake"
    );
}
