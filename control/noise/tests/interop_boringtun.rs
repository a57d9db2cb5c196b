//! Interop against boringtun's `noise::Tunn` (an implementation nobody here wrote): our
//! initiator against its responder and vice versa, with and without PSK, cookie replies in
//! both directions, then transport data both ways with the derived keys and ring's
//! ChaCha20-Poly1305 (nonce = 4 zero bytes || counter LE, empty AAD, tm-wire data header).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use rand_core::OsRng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use tm_noise::handshake::{InitiationStep, Local, Peer, ResponseStep, SessionKeys};
use tm_noise::keys::{PrivateKey, PublicKey};
use tm_noise::HandshakeError;
use tm_wire::wg::{self, DataPacket};

const SRC: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 51820);

struct Setup {
    local: Local,
    peer: Peer,
    bt: Tunn,
    bt_public: PublicKey,
}

fn setup(psk_ours: Option<[u8; 32]>, psk_theirs: Option<[u8; 32]>, bt_under_load: bool) -> Setup {
    let ours = PrivateKey::generate(&mut OsRng);
    let our_pub = ours.public_key();
    let bt_secret = x25519::StaticSecret::random_from_rng(OsRng);
    let bt_pub = x25519::PublicKey::from(&bt_secret);
    let bt_public = PublicKey(bt_pub.to_bytes());
    let limiter = bt_under_load.then(|| Arc::new(RateLimiter::new(&bt_pub, 0)));
    let bt = Tunn::new(
        bt_secret,
        x25519::PublicKey::from(our_pub.0),
        psk_theirs,
        None,
        0x42,
        limiter,
    );
    let local = Local::new(ours);
    let peer = Peer::new(&local, bt_public, psk_ours).expect("valid key");
    Setup {
        local,
        peer,
        bt,
        bt_public,
    }
}

fn ipv4_packet(payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).expect("small").to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    p[20..].copy_from_slice(payload);
    p
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn seal_data(keys: &SessionKeys, counter: u64, inner: &[u8]) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &keys.send_key).expect("key"));
    let mut out = vec![0u8; wg::DATA_HEADER_LEN + inner.len() + wg::TAG_LEN];
    wg::write_data_header(&mut out, keys.remote_index, counter);
    let body = &mut out[wg::DATA_HEADER_LEN..wg::DATA_HEADER_LEN + inner.len()];
    body.copy_from_slice(inner);
    let tag = key
        .seal_in_place_separate_tag(nonce(counter), Aad::empty(), body)
        .expect("seal");
    out[wg::DATA_HEADER_LEN + inner.len()..].copy_from_slice(tag.as_ref());
    out
}

fn open_data(keys: &SessionKeys, datagram: &[u8]) -> (u64, Vec<u8>) {
    let pkt = DataPacket::new_checked(datagram).expect("a data message");
    assert_eq!(pkt.receiver(), keys.local_index, "addressed to our index");
    let counter = pkt.counter();
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &keys.recv_key).expect("key"));
    let mut buf = pkt.ciphertext().to_vec();
    let plain = key
        .open_in_place(nonce(counter), Aad::empty(), &mut buf)
        .expect("boringtun's data opens with our recv key");
    (counter, plain.to_vec())
}

/// Our data -> boringtun's tunnel, boringtun's data -> our keys.
fn exchange_data(s: &mut Setup, keys: &SessionKeys, our_counter: u64) {
    let mut buf = vec![0u8; 2048];
    let inner = ipv4_packet(b"hello from tm-noise");
    let dgram = seal_data(keys, our_counter, &inner);
    match s.bt.decapsulate(Some(SRC.ip()), &dgram, &mut buf) {
        TunnResult::WriteToTunnelV4(p, src) => {
            assert_eq!(p, &inner[..]);
            assert_eq!(src, Ipv4Addr::new(10, 0, 0, 1));
        }
        other => panic!("boringtun did not accept our data: {other:?}"),
    }
    let reply = ipv4_packet(b"hello from boringtun");
    let dgram = match s.bt.encapsulate(&reply, &mut buf) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("boringtun did not encapsulate: {other:?}"),
    };
    let (_, plain) = open_data(keys, &dgram);
    assert_eq!(plain, reply);
    // A flipped ciphertext bit must not open.
    let mut bad = dgram.clone();
    bad[wg::DATA_HEADER_LEN] ^= 1;
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &keys.recv_key).expect("key"));
    let c = u64::from_le_bytes(bad[8..16].try_into().expect("8 bytes"));
    assert!(key
        .open_in_place(nonce(c), Aad::empty(), &mut bad[wg::DATA_HEADER_LEN..])
        .is_err());
}

fn we_initiate(psk: Option<[u8; 32]>) {
    let mut s = setup(psk, psk, false);
    let now = Instant::now();
    let init = s
        .local
        .initiate(now, SystemTime::now(), &mut s.peer, 0x1111, &mut OsRng);
    let mut buf = vec![0u8; 2048];
    let resp = match s.bt.decapsulate(Some(SRC.ip()), &init, &mut buf) {
        TunnResult::WriteToNetwork(r) => r.to_vec(),
        other => panic!("boringtun rejected our initiation: {other:?}"),
    };
    assert_eq!(resp.len(), wg::RESPONSE_LEN);
    assert_eq!(wg::handshake_receiver(&resp), Some(0x1111));
    let keys = match s
        .local
        .handle_response(now, &resp, SRC, false, &mut s.peer, &mut OsRng)
        .expect("boringtun's response is valid")
    {
        ResponseStep::Established(k) => k,
        ResponseStep::Cookie(_) => panic!("not under load"),
    };
    assert!(keys.initiator);
    assert_eq!(keys.local_index, 0x1111);
    exchange_data(&mut s, &keys, 0);
}

fn they_initiate(psk: Option<[u8; 32]>) {
    let mut s = setup(psk, psk, false);
    let now = Instant::now();
    let mut buf = vec![0u8; 2048];
    let init = match s.bt.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(i) => i.to_vec(),
        other => panic!("no initiation: {other:?}"),
    };
    let pending = match s
        .local
        .begin_initiation(now, &init, SRC, false, &mut OsRng)
        .expect("boringtun's initiation is valid")
    {
        InitiationStep::Identified(p) => p,
        InitiationStep::Cookie(_) => panic!("not under load"),
    };
    assert_eq!(pending.remote_static(), s.bt_public);
    let (resp, keys) = s
        .local
        .respond(now, pending, &mut s.peer, 0x2222, &mut OsRng)
        .expect("respond");
    assert!(!keys.initiator);
    let keepalive = match s.bt.decapsulate(Some(SRC.ip()), &resp, &mut buf) {
        TunnResult::WriteToNetwork(k) => k.to_vec(),
        other => panic!("boringtun rejected our response: {other:?}"),
    };
    // boringtun confirms with a keepalive: an empty data message under its send key.
    let (counter, plain) = open_data(&keys, &keepalive);
    assert_eq!((counter, plain.len()), (0, 0));
    exchange_data(&mut s, &keys, 0);
}

#[test]
fn our_initiator_boringtun_responder() {
    we_initiate(None);
}

#[test]
fn our_initiator_boringtun_responder_psk() {
    we_initiate(Some([0x5a; 32]));
}

#[test]
fn boringtun_initiator_our_responder() {
    they_initiate(None);
}

#[test]
fn boringtun_initiator_our_responder_psk() {
    they_initiate(Some([0xa5; 32]));
}

#[test]
fn psk_mismatch_with_boringtun_fails() {
    let mut s = setup(Some([1; 32]), Some([2; 32]), false);
    let now = Instant::now();
    let init = s
        .local
        .initiate(now, SystemTime::now(), &mut s.peer, 7, &mut OsRng);
    let mut buf = vec![0u8; 2048];
    let resp = match s.bt.decapsulate(Some(SRC.ip()), &init, &mut buf) {
        TunnResult::WriteToNetwork(r) => r.to_vec(),
        other => panic!("boringtun rejected our initiation: {other:?}"),
    };
    let r = s
        .local
        .handle_response(now, &resp, SRC, false, &mut s.peer, &mut OsRng);
    assert_eq!(r.err(), Some(HandshakeError::Decrypt));
}

#[test]
fn boringtun_cookie_reply_then_mac2_retry() {
    let mut s = setup(None, None, true);
    let now = Instant::now();
    let wall = SystemTime::now();
    let mut buf = vec![0u8; 2048];
    let init = s.local.initiate(now, wall, &mut s.peer, 9, &mut OsRng);
    let reply = match s.bt.decapsulate(Some(SRC.ip()), &init, &mut buf) {
        TunnResult::WriteToNetwork(r) => r.to_vec(),
        other => panic!("expected a cookie reply: {other:?}"),
    };
    assert_eq!(reply.len(), wg::COOKIE_REPLY_LEN);
    assert_eq!(wg::handshake_receiver(&reply), Some(9));
    s.local
        .handle_cookie_reply(now, &reply, &mut s.peer)
        .expect("boringtun's cookie decrypts with mac1 as AAD");
    // Retry: now carries mac2 under boringtun's cookie.
    let later = now + Duration::from_secs(1);
    let init2 = s.local.initiate(
        later,
        wall + Duration::from_secs(1),
        &mut s.peer,
        10,
        &mut OsRng,
    );
    let resp = match s.bt.decapsulate(Some(SRC.ip()), &init2, &mut buf) {
        TunnResult::WriteToNetwork(r) => r.to_vec(),
        other => panic!("boringtun rejected the retry: {other:?}"),
    };
    assert_eq!(
        resp.len(),
        wg::RESPONSE_LEN,
        "a response, not another cookie"
    );
    let keys = match s
        .local
        .handle_response(later, &resp, SRC, false, &mut s.peer, &mut OsRng)
        .expect("valid response")
    {
        ResponseStep::Established(k) => k,
        ResponseStep::Cookie(_) => panic!("not under load"),
    };
    exchange_data(&mut s, &keys, 0);
}

#[test]
fn our_cookie_reply_accepted_by_boringtun() {
    let mut s = setup(None, None, false);
    let now = Instant::now();
    let mut buf = vec![0u8; 2048];
    let init = match s.bt.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(i) => i.to_vec(),
        other => panic!("no initiation: {other:?}"),
    };
    let reply = match s
        .local
        .begin_initiation(now, &init, SRC, true, &mut OsRng)
        .expect("mac1 valid")
    {
        InitiationStep::Cookie(r) => r,
        InitiationStep::Identified(_) => panic!("under load without mac2 must yield a cookie"),
    };
    match s.bt.decapsulate(Some(SRC.ip()), &reply, &mut buf) {
        TunnResult::Done => {}
        other => panic!("boringtun rejected our cookie reply: {other:?}"),
    }
    let init2 = match s.bt.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(i) => i.to_vec(),
        other => panic!("no retry: {other:?}"),
    };
    assert_ne!(&init2[132..148], &[0u8; 16], "boringtun now sends mac2");
    let pending = match s
        .local
        .begin_initiation(now, &init2, SRC, true, &mut OsRng)
        .expect("mac1 valid")
    {
        InitiationStep::Identified(p) => p,
        InitiationStep::Cookie(_) => panic!("boringtun's mac2 under our cookie must pass"),
    };
    let (resp, keys) = s
        .local
        .respond(now, pending, &mut s.peer, 3, &mut OsRng)
        .expect("respond");
    let keepalive = match s.bt.decapsulate(Some(SRC.ip()), &resp, &mut buf) {
        TunnResult::WriteToNetwork(k) => k.to_vec(),
        other => panic!("boringtun rejected our response: {other:?}"),
    };
    assert_eq!(open_data(&keys, &keepalive).1.len(), 0);
}
