//! Transport-data sessions: ChaCha20-Poly1305 (ring) with WireGuard's nonce
//! (4 zero bytes || counter u64 little-endian) and empty AAD, plus per-session
//! counters and the replay window. A session is shared between workers (`Arc<Session>`):
//! the send counter is an `AtomicU64` (`fetch_add`) and the replay window is lock-free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use tm_wire::wg::{self, timers::REJECT_AFTER_MESSAGES, DATA_HEADER_LEN, TAG_LEN};

use tm_wire::ipc::DropReason;

use crate::replay::{ReplayError, ReplayWindow};

/// WireGuard's AEAD nonce for `counter`.
pub fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// Which end of the handshake installed the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We sent the initiation: usable at once, we drive rekeying.
    Initiator,
    /// We answered: becomes current on the first authenticated packet.
    Responder,
}

/// One set of session keys.
pub struct Session {
    pub local_index: u32,
    pub remote_index: u32,
    pub role: Role,
    pub created: Instant,
    send_key: LessSafeKey,
    recv_key: LessSafeKey,
    /// Next counter to send.
    send_counter: AtomicU64,
    pub replay: ReplayWindow,
}

impl Session {
    /// Builds a session from installed keys.
    pub fn new(
        now: Instant,
        local_index: u32,
        remote_index: u32,
        send_key: &[u8; 32],
        recv_key: &[u8; 32],
        role: Role,
    ) -> Self {
        let key = |k: &[u8; 32]| {
            LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, k).expect("32-byte ChaCha20-Poly1305 key"),
            )
        };
        Self {
            local_index,
            remote_index,
            role,
            created: now,
            send_key: key(send_key),
            recv_key: key(recv_key),
            send_counter: AtomicU64::new(0),
            replay: ReplayWindow::new(),
        }
    }

    /// Can this session still send?
    pub fn can_send(&self) -> bool {
        self.send_counter() < REJECT_AFTER_MESSAGES
    }

    /// The next counter to send (a snapshot: other workers may be sending).
    pub fn send_counter(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// Sets the next counter to send (tests).
    #[cfg(test)]
    pub fn set_send_counter(&self, v: u64) {
        self.send_counter.store(v, Ordering::Relaxed);
    }

    /// Seals `out[16..16 + padded_len]` (plaintext already in place) into a data
    /// message: takes a counter (`fetch_add`), writes the header, encrypts in place and
    /// appends the tag. Returns the datagram length, or `None` (nothing written) if the
    /// counter reached `REJECT_AFTER_MESSAGES`. Caller checks that `out` is long enough.
    pub fn seal(&self, out: &mut [u8], padded_len: usize) -> Option<usize> {
        let counter = self.send_counter.fetch_add(1, Ordering::Relaxed);
        if counter >= REJECT_AFTER_MESSAGES {
            // Keep it saturated so the counter can never wrap back into the valid range.
            self.send_counter
                .store(REJECT_AFTER_MESSAGES, Ordering::Relaxed);
            return None;
        }
        wg::write_data_header(out, self.remote_index, counter);
        let end = DATA_HEADER_LEN + padded_len;
        let tag = self
            .send_key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes(counter)),
                Aad::empty(),
                &mut out[DATA_HEADER_LEN..end],
            )
            .expect("payload is below ChaCha20-Poly1305's 256 GiB limit");
        out[end..end + TAG_LEN].copy_from_slice(tag.as_ref());
        Some(end + TAG_LEN)
    }

    /// Opens `ct` (ciphertext || tag) in place; returns the plaintext length.
    /// Does not touch the replay window.
    pub fn open(&self, counter: u64, ct: &mut [u8]) -> Option<usize> {
        self.recv_key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce_bytes(counter)),
                Aad::empty(),
                ct,
            )
            .ok()
            .map(|p| p.len())
    }

    /// The receive path of one data message: replay check, open the ciphertext after the
    /// data header of `dgram` in place, then claim `counter` in the replay window. Exactly
    /// once across threads: the claim fails (Replay) if another worker claimed the counter
    /// after our check. Returns the plaintext length. Expiry is the caller's check.
    pub fn open_once(&self, counter: u64, dgram: &mut [u8]) -> Result<usize, DropReason> {
        self.replay.check(counter).map_err(|e| match e {
            ReplayError::Replayed => DropReason::Replay,
            ReplayError::Exhausted => DropReason::SessionExpired,
        })?;
        let plain_len = self
            .open(counter, &mut dgram[DATA_HEADER_LEN..])
            .ok_or(DropReason::AuthFailed)?;
        if !self.replay.update(counter) {
            return Err(DropReason::Replay);
        }
        Ok(plain_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// RFC 8439 section 2.8.2 through ring: proves ring's nonce is 32-bit constant ||
    /// 64-bit IV with the IV bytes in order, i.e. that `nonce_bytes` (constant 0,
    /// counter little-endian) is WireGuard's layout.
    #[test]
    fn rfc8439_aead_known_answer() {
        let key: Vec<u8> = (0x80u8..=0x9f).collect();
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let aad = hex("50515253c0c1c2c3c4c5c6c7");
        let nonce = hex("070000004041424344454647");
        let expect_ct = hex(
            "d31a8d34648e60db7b86afbc53ef7ec2 a4aded51296e08fea9e2b5a736ee62d6
             3dbea45e8ca9671282fafb69da92728b 1a71de0a9e060b2905d6a5b67ecd3b36
             92ddbd7f2d778b8c9803aee328091b58 fab324e4fad675945585808b4831d7bc
             3ff4def08e4b7a9de576d26586cec64b 6116",
        );
        let expect_tag = hex("1ae10b594f09e26a7e902ecbd0600691");
        let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
        let mut buf = pt.to_vec();
        let n: [u8; 12] = nonce.clone().try_into().unwrap();
        let tag = k
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(&aad[..]),
                &mut buf,
            )
            .unwrap();
        assert_eq!(buf, expect_ct);
        assert_eq!(tag.as_ref(), &expect_tag[..]);
        // The RFC's IV 40..47 read as a little-endian counter, with constant 0.
        let counter = u64::from_le_bytes(nonce[4..].try_into().unwrap());
        assert_eq!(counter, 0x4746_4544_4342_4140);
        assert_eq!(&nonce_bytes(counter)[..4], &[0, 0, 0, 0]);
        assert_eq!(nonce_bytes(counter)[4..], nonce[4..]);
    }

    /// Session framing: header, ciphertext, tag; opening with the peer's mirror
    /// session restores the plaintext; the ciphertext equals a direct ring seal
    /// with nonce 0^4 || le64(counter) and empty AAD.
    #[test]
    fn seal_open_framing() {
        let now = Instant::now();
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        let a = Session::new(now, 10, 20, &ka, &kb, Role::Initiator);
        let b = Session::new(now, 20, 10, &kb, &ka, Role::Responder);
        a.set_send_counter(0x0102_0304_0506_0708);
        let mut out = vec![0u8; 16 + 32 + 16];
        out[16..16 + 32].copy_from_slice(&[0xab; 32]);
        let n = a.seal(&mut out, 32).expect("below the limit");
        assert_eq!(n, 64);
        assert_eq!(&out[..4], &[4, 0, 0, 0]);
        assert_eq!(&out[4..8], &20u32.to_le_bytes());
        assert_eq!(&out[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        let direct = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &ka).unwrap());
        let mut want = vec![0xab; 32];
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
        let tag = direct
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut want,
            )
            .unwrap();
        want.extend_from_slice(tag.as_ref());
        assert_eq!(&out[16..n], &want[..]);
        let ct = &mut out[16..n];
        assert_eq!(b.open(0x0102_0304_0506_0708, ct), Some(32));
        assert_eq!(&out[16..48], &[0xab; 32]);
        assert_eq!(a.send_counter(), 0x0102_0304_0506_0709);
    }

    /// At `REJECT_AFTER_MESSAGES` sealing refuses and writes nothing, also under a race.
    #[test]
    fn seal_refuses_at_reject_after_messages() {
        let now = Instant::now();
        let a = Session::new(now, 1, 2, &[1; 32], &[2; 32], Role::Initiator);
        a.set_send_counter(REJECT_AFTER_MESSAGES - 1);
        let mut out = vec![0u8; 64];
        assert!(a.seal(&mut out, 16).is_some());
        let mut out = vec![0u8; 64];
        assert_eq!(a.seal(&mut out, 16), None);
        assert_eq!(a.seal(&mut out, 16), None);
        assert!(out.iter().all(|&b| b == 0));
        assert!(!a.can_send());
        // Two threads share the last 1000 counters: each is used exactly once.
        let s = std::sync::Arc::new(Session::new(now, 1, 2, &[1; 32], &[2; 32], Role::Initiator));
        s.set_send_counter(REJECT_AFTER_MESSAGES - 1000);
        let run = || {
            let s = std::sync::Arc::clone(&s);
            std::thread::spawn(move || {
                let mut out = vec![0u8; 64];
                let mut used = Vec::new();
                while s.seal(&mut out, 16).is_some() {
                    used.push(u64::from_le_bytes(out[8..16].try_into().expect("8 bytes")));
                }
                used
            })
        };
        let (t1, t2) = (run(), run());
        let mut all = t1.join().expect("t1");
        all.extend(t2.join().expect("t2"));
        all.sort_unstable();
        let want: Vec<u64> = (REJECT_AFTER_MESSAGES - 1000..REJECT_AFTER_MESSAGES).collect();
        assert_eq!(all, want);
    }
}
