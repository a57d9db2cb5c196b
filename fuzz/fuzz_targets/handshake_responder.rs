//! The WireGuard handshake responder (and the initiator's handling of what comes back).
//!
//! Input: a flag byte, then bytes that either form a whole message (raw mode) or are XORed
//! onto a genuine initiation from a known peer (mutate mode). With the "fix mac1" flag the
//! harness recomputes mac1 so the fuzzer gets past the first check into the Noise
//! processing. Properties: nothing panics; an unmodified initiation is accepted and its
//! response establishes the same keys on the initiator; the same initiation is never
//! accepted twice; one modified in a field the handshake authenticates is never accepted; the tail of the input, fed to the
//! initiator as a response and as a cookie reply, never establishes a session.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use blake2::digest::{consts::U16, FixedOutput, Mac as _};
use blake2::{Blake2s256, Blake2sMac, Digest};
use libfuzzer_sys::fuzz_target;
use rand_core::{CryptoRng, RngCore};
use tm_noise::handshake::{InitiationStep, Local, Peer, ResponseStep};
use tm_noise::keys::PrivateKey;

/// Deterministic RNG (splitmix64) so every run of an input behaves the same.
struct Rng(u64);
impl RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        for c in d.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(d);
        Ok(())
    }
}
impl CryptoRng for Rng {}

/// Recomputes mac1 of a 148- or 92-byte message for the receiver with public key `to`.
fn fix_mac1(msg: &mut [u8], to: &[u8; 32]) {
    let n = msg.len();
    if n < 32 {
        return;
    }
    let key = Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(to)
        .finalize();
    let mut m =
        <Blake2sMac<U16> as blake2::digest::KeyInit>::new_from_slice(&key).expect("32-byte key");
    m.update(&msg[..n - 32]);
    let tag = m.finalize_fixed();
    msg[n - 32..n - 16].copy_from_slice(&tag);
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let under_load = flags & 1 != 0;
    let psk = (flags & 2 != 0).then_some([7u8; 32]);
    let fix = flags & 4 != 0;
    let mutate = flags & 8 != 0;
    let mut rng = Rng(u64::from(flags));
    let now = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let src: SocketAddr = "192.0.2.1:51820".parse().expect("addr");

    let a_key = PrivateKey::from_bytes([0x11; 32]);
    let b_key = PrivateKey::from_bytes([0x22; 32]);
    let mut a = Local::new(a_key);
    let mut b = Local::new(b_key);
    let (a_pub, b_pub) = (a.public_key(), b.public_key());
    let mut b_at_a = Peer::new(&a, b_pub, psk).expect("valid key");
    let mut a_at_b = Peer::new(&b, a_pub, psk).expect("valid key");

    let init = a.initiate(now, wall, &mut b_at_a, 1, &mut rng);
    let (msg, tail): (Vec<u8>, &[u8]) = if mutate {
        let n = rest.len().min(init.len());
        let mut m = init.to_vec();
        for (x, y) in m.iter_mut().zip(&rest[..n]) {
            *x ^= y;
        }
        (m, &rest[n..])
    } else {
        let n = rest.len().min(200);
        (rest[..n].to_vec(), &rest[n..])
    };
    let mut msg = msg;
    if fix {
        fix_mac1(&mut msg, b_pub.as_bytes());
    }
    let genuine = msg[..] == init[..];
    // What the Noise handshake authenticates: everything but the sender index (bytes 4..8)
    // and the MACs, which anyone who knows the responder's public key can recompute.
    let authentic = msg.len() == init.len() && msg[..4] == init[..4] && msg[8..116] == init[8..116];
    let acceptable = authentic && (fix || msg[..132] == init[..132]);
    let same_sender = msg.get(4..8) == init.get(4..8);

    match b.begin_initiation(now, &msg, src, under_load, &mut rng) {
        Ok(InitiationStep::Cookie(reply)) => {
            assert!(under_load, "cookie reply while not under load");
            // The genuine initiator accepts the cookie for its genuine initiation only.
            let r = a.handle_cookie_reply(now, &reply, &mut b_at_a);
            if genuine {
                r.expect("cookie reply to our initiation");
            }
        }
        Ok(InitiationStep::Identified(pending)) => {
            let replay = b.begin_initiation(now, &msg, src, false, &mut rng);
            match b.respond(now, pending, &mut a_at_b, 2, &mut rng) {
                Ok((resp, keys)) => {
                    assert!(authentic, "a modified initiation was accepted");
                    match a.handle_response(now, &resp, src, false, &mut b_at_a, &mut rng) {
                        Ok(ResponseStep::Established(mine)) => {
                            assert!(same_sender, "response to another index accepted");
                            assert_eq!(mine.send_key, keys.recv_key);
                            assert_eq!(mine.recv_key, keys.send_key);
                        }
                        other => assert!(!same_sender, "genuine response refused: {other:?}"),
                    }
                    // The same initiation again (later, so not a flood) is a replay.
                    if let Ok(InitiationStep::Identified(p)) = replay {
                        let later = now + Duration::from_secs(1);
                        let again = b.respond(later, p, &mut a_at_b, 3, &mut rng);
                        assert!(again.is_err(), "replayed initiation accepted");
                    }
                }
                Err(e) => assert!(!acceptable, "acceptable initiation refused: {e}"),
            }
        }
        Err(e) => assert!(!acceptable, "acceptable initiation refused: {e}"),
    }

    // Whatever is left, as a response and as a cookie reply to the initiator.
    for len in [92usize, 64] {
        let mut m = tail.iter().copied().take(len).collect::<Vec<u8>>();
        if m.len() < len {
            continue;
        }
        m[0] = if len == 92 { 2 } else { 3 };
        m[1..4].fill(0);
        if fix && len == 92 {
            fix_mac1(&mut m, a_pub.as_bytes());
        }
        if len == 92 {
            let r = a.handle_response(now, &m, src, under_load, &mut b_at_a, &mut rng);
            assert!(
                !matches!(r, Ok(ResponseStep::Established(_))),
                "forged response established a session"
            );
        } else {
            let _ = a.handle_cookie_reply(now, &m, &mut b_at_a);
        }
    }
});
