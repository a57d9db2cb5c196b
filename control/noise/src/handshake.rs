//! The WireGuard handshake as a sans-IO state machine over caller-owned [`Peer`] records.
//!
//! ```text
//! initiator                                   responder
//! initiate() ---------- initiation ---------> begin_initiation() -> Identified | Cookie
//!                                             respond(pending, peer)
//! handle_response() <--- response ----------- (keys, initiator: false)
//! (keys, initiator: true)
//! handle_cookie_reply() <- cookie reply ----- (when under load and mac2 is missing)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use rand_core::{CryptoRng, RngCore};
use tm_wire::wg::{self, timers};
use zeroize::Zeroize;

use crate::crypto::{
    aead_open, aead_seal, dh, hash, kdf1, kdf2, kdf3, mac, mac_verify, xaead_open, xaead_seal,
};
use crate::keys::{PrivateKey, PublicKey};
use crate::tai64n::Tai64N;
use crate::Error as HandshakeError;

const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";

/// At most one initiation per peer is accepted per this interval (kernel:
/// `INITIATIONS_PER_SECOND = 20`).
pub const MIN_INITIATION_INTERVAL: Duration = Duration::from_millis(1000 / 20);
/// Lifetime of the responder's cookie secret and of a received cookie.
pub const COOKIE_LIFETIME: Duration = timers::COOKIE_REFRESH_TIME;
/// An initiation in flight older than this no longer accepts a response.
pub const MAX_INITIATION_AGE: Duration = timers::REKEY_ATTEMPT_TIME;

// Initiation layout (offsets into the 148 bytes).
mod init {
    use core::ops::Range;
    pub const SENDER: Range<usize> = 4..8;
    pub const EPHEMERAL: Range<usize> = 8..40;
    pub const STATIC: Range<usize> = 40..88;
    pub const TIMESTAMP: Range<usize> = 88..116;
    pub const MAC1: Range<usize> = 116..132;
    pub const MAC2: Range<usize> = 132..148;
}

// Response layout (offsets into the 92 bytes).
mod resp {
    use core::ops::Range;
    pub const SENDER: Range<usize> = 4..8;
    pub const RECEIVER: Range<usize> = 8..12;
    pub const EPHEMERAL: Range<usize> = 12..44;
    pub const EMPTY: Range<usize> = 44..60;
    pub const MAC1: Range<usize> = 60..76;
    pub const MAC2: Range<usize> = 76..92;
}

// Cookie reply layout (offsets into the 64 bytes).
mod cookie {
    use core::ops::Range;
    pub const RECEIVER: Range<usize> = 4..8;
    pub const NONCE: Range<usize> = 8..32;
    pub const COOKIE: Range<usize> = 32..64;
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn arr32(b: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(b);
    a
}

fn random_secret<R: RngCore + CryptoRng>(rng: &mut R) -> x25519_dalek::StaticSecret {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    let s = x25519_dalek::StaticSecret::from(b);
    b.zeroize();
    s
}

/// Transport keys of one session; the fields of `tm_wire::ipc::CtlMsg::InstallSession`.
/// Zeroized on drop; `Debug` prints only the indices.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Our index: the receiver index of data messages sent to us.
    pub local_index: u32,
    /// The peer's index: written into data messages we send.
    pub remote_index: u32,
    /// Key for data we send.
    pub send_key: [u8; 32],
    /// Key for data we receive.
    pub recv_key: [u8; 32],
    /// Whether we initiated (the responder must not send before it has received data).
    pub initiator: bool,
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.send_key.zeroize();
        self.recv_key.zeroize();
    }
}

impl core::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("initiator", &self.initiator)
            .finish_non_exhaustive()
    }
}

/// Result of [`Local::begin_initiation`].
#[derive(Debug)]
#[must_use]
pub enum InitiationStep {
    /// Under load without a valid mac2: send this cookie reply to the source, drop the message.
    Cookie([u8; wg::COOKIE_REPLY_LEN]),
    /// The initiator's claimed static key is known; continue with [`Local::respond`].
    Identified(PendingInitiation),
}

/// Result of [`Local::handle_response`].
#[derive(Debug)]
#[must_use]
pub enum ResponseStep {
    /// Under load without a valid mac2: send this cookie reply to the source, drop the message.
    Cookie([u8; wg::COOKIE_REPLY_LEN]),
    /// Handshake complete: install these keys (we are the initiator).
    Established(SessionKeys),
}

/// Our static identity plus the responder-side cookie secret.
pub struct Local {
    private: x25519_dalek::StaticSecret,
    public: PublicKey,
    /// `HASH(LABEL_MAC1 || our public)`: key of mac1 on messages sent to us.
    mac1_key: [u8; 32],
    /// `HASH(LABEL_COOKIE || our public)`: key of cookie replies we send.
    cookie_key: [u8; 32],
    /// `HASH(HASH(HASH(CONSTRUCTION) || IDENTIFIER) || our public)`: responder's initial hash.
    responder_h0: [u8; 32],
    cookie_secret: [u8; 32],
    cookie_secret_born: Option<Instant>,
}

impl Drop for Local {
    fn drop(&mut self) {
        self.cookie_secret.zeroize();
    }
}

impl core::fmt::Debug for Local {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Local")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

fn initial_chaining_key() -> [u8; 32] {
    hash(&[CONSTRUCTION])
}

fn initial_hash(responder_public: &PublicKey) -> [u8; 32] {
    let c0 = initial_chaining_key();
    let h = hash(&[&c0, IDENTIFIER]);
    hash(&[&h, responder_public.as_bytes()])
}

/// Initiator state between `initiate` and `handle_response`.
struct InFlight {
    local_index: u32,
    ephemeral: x25519_dalek::StaticSecret,
    c: [u8; 32],
    h: [u8; 32],
    sent_at: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.c.zeroize();
        self.h.zeroize();
    }
}

/// Everything known about one remote static key. The caller owns it and finds it by static
/// key (responder) or by the local index of the handshake in flight (initiator).
pub struct Peer {
    remote: PublicKey,
    psk: [u8; 32],
    /// `DH(s_local, s_remote)`.
    ss: [u8; 32],
    /// `HASH(LABEL_MAC1 || remote)`: mac1 key for messages we send.
    mac1_key: [u8; 32],
    /// `HASH(LABEL_COOKIE || remote)`: key of cookie replies the peer sends us.
    cookie_key: [u8; 32],
    /// Initiator's initial hash for this responder.
    initiator_h0: [u8; 32],
    // Responder side.
    greatest_timestamp: Option<Tai64N>,
    last_initiation_accepted: Option<Instant>,
    // Our outgoing messages (for mac2 and cookie replies).
    cookie: Option<([u8; 16], Instant)>,
    /// mac1 and sender index of the last initiation/response we sent: a cookie reply's AAD.
    last_sent: Option<([u8; 16], u32)>,
    in_flight: Option<InFlight>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.psk.zeroize();
        self.ss.zeroize();
    }
}

impl core::fmt::Debug for Peer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Peer")
            .field("remote", &self.remote)
            .field("greatest_timestamp", &self.greatest_timestamp)
            .field("in_flight", &self.in_flight.as_ref().map(|i| i.local_index))
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// A peer record for `remote` with an optional pre-shared key (zero if none). Fails with
    /// [`HandshakeError::InvalidPoint`] if `remote` is a small-order point.
    pub fn new(
        local: &Local,
        remote: PublicKey,
        psk: Option<[u8; 32]>,
    ) -> Result<Self, HandshakeError> {
        let ss = dh(&local.private, remote.as_bytes())?;
        Ok(Self {
            remote,
            psk: psk.unwrap_or([0; 32]),
            ss,
            mac1_key: hash(&[LABEL_MAC1, remote.as_bytes()]),
            cookie_key: hash(&[LABEL_COOKIE, remote.as_bytes()]),
            initiator_h0: initial_hash(&remote),
            greatest_timestamp: None,
            last_initiation_accepted: None,
            cookie: None,
            last_sent: None,
            in_flight: None,
        })
    }

    /// The peer's static public key.
    pub fn remote_public(&self) -> PublicKey {
        self.remote
    }

    /// Replaces the pre-shared key (zero if `None`).
    pub fn set_preshared_key(&mut self, psk: Option<[u8; 32]>) {
        self.psk.zeroize();
        self.psk = psk.unwrap_or([0; 32]);
    }

    /// Local index of the initiation in flight, if any (for the caller's index map).
    pub fn initiation_in_flight(&self) -> Option<u32> {
        self.in_flight.as_ref().map(|i| i.local_index)
    }

    /// Forgets the initiation in flight (e.g. after REKEY_ATTEMPT_TIME gave up).
    pub fn clear_handshake(&mut self) {
        self.in_flight = None;
    }

    /// Greatest TAI64N timestamp accepted from this peer (persist it across restarts to keep
    /// replay protection).
    pub fn greatest_timestamp(&self) -> Option<Tai64N> {
        self.greatest_timestamp
    }

    /// Restores a persisted greatest timestamp.
    pub fn set_greatest_timestamp(&mut self, ts: Option<Tai64N>) {
        self.greatest_timestamp = ts;
    }

    /// Writes mac1 and mac2 of an outgoing message (`msg.len()` is 148 or 92) and remembers
    /// mac1 and `sender` for a cookie reply.
    fn seal_macs(&mut self, now: Instant, msg: &mut [u8], sender: u32) {
        let n = msg.len();
        let m1 = mac(&self.mac1_key, &[&msg[..n - 32]]);
        msg[n - 32..n - 16].copy_from_slice(&m1);
        let m2 = match &self.cookie {
            Some((c, at)) if now.saturating_duration_since(*at) < COOKIE_LIFETIME => {
                mac(c, &[&msg[..n - 16]])
            }
            _ => [0; 16],
        };
        msg[n - 16..].copy_from_slice(&m2);
        self.last_sent = Some((m1, sender));
    }
}

/// A responder's half-processed initiation: the initiator's static key decrypted, nothing
/// about the peer trusted yet. Feed it to [`Local::respond`] with that key's [`Peer`].
pub struct PendingInitiation {
    remote_static: PublicKey,
    sender_index: u32,
    ephemeral: [u8; 32],
    c: [u8; 32],
    h: [u8; 32],
    encrypted_timestamp: [u8; 28],
}

impl PendingInitiation {
    /// The static key the initiator claims (authenticated only once `respond` succeeds).
    pub fn remote_static(&self) -> PublicKey {
        self.remote_static
    }

    /// The initiator's sender index.
    pub fn sender_index(&self) -> u32 {
        self.sender_index
    }
}

impl Drop for PendingInitiation {
    fn drop(&mut self) {
        self.c.zeroize();
        self.h.zeroize();
    }
}

impl core::fmt::Debug for PendingInitiation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PendingInitiation")
            .field("remote_static", &self.remote_static)
            .field("sender_index", &self.sender_index)
            .finish_non_exhaustive()
    }
}

fn check_type(msg: &[u8], ty: u8) -> Result<(), HandshakeError> {
    match wg::classify(msg) {
        Ok(t) if t == ty => Ok(()),
        _ => Err(HandshakeError::BadLength),
    }
}

impl Local {
    /// Our identity. The cookie secret is drawn on first use.
    pub fn new(private: PrivateKey) -> Self {
        let public = private.public_key();
        Self {
            private: private.to_secret(),
            public,
            mac1_key: hash(&[LABEL_MAC1, public.as_bytes()]),
            cookie_key: hash(&[LABEL_COOKIE, public.as_bytes()]),
            responder_h0: initial_hash(&public),
            cookie_secret: [0; 32],
            cookie_secret_born: None,
        }
    }

    /// Our static public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The cookie for `src`: `MAC(secret, ip bytes || port BE)`, rotating the secret every
    /// two minutes.
    fn cookie_for<R: RngCore + CryptoRng>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        rng: &mut R,
    ) -> [u8; 16] {
        let stale = match self.cookie_secret_born {
            Some(born) => now.saturating_duration_since(born) >= COOKIE_LIFETIME,
            None => true,
        };
        if stale {
            rng.fill_bytes(&mut self.cookie_secret);
            self.cookie_secret_born = Some(now);
        }
        let port = src.port().to_be_bytes();
        match src.ip() {
            IpAddr::V4(ip) => mac(&self.cookie_secret, &[&ip.octets(), &port]),
            IpAddr::V6(ip) => mac(&self.cookie_secret, &[&ip.octets(), &port]),
        }
    }

    /// Checks mac1 (always) and mac2 (when `under_load`) of a 148- or 92-byte message sent to
    /// us. `Ok(Some(reply))` means: answer with this cookie reply instead of processing.
    fn check_macs<R: RngCore + CryptoRng>(
        &mut self,
        now: Instant,
        msg: &[u8],
        sender: u32,
        src: SocketAddr,
        under_load: bool,
        rng: &mut R,
    ) -> Result<Option<[u8; wg::COOKIE_REPLY_LEN]>, HandshakeError> {
        let n = msg.len();
        let (body, macs) = msg.split_at(n - 32);
        if !mac_verify(&self.mac1_key, &[body], &macs[..16]) {
            return Err(HandshakeError::BadMac1);
        }
        if !under_load {
            return Ok(None);
        }
        let cookie = self.cookie_for(now, src, rng);
        if mac_verify(&cookie, &[&msg[..n - 16]], &macs[16..]) {
            return Ok(None);
        }
        let mut reply = [0u8; wg::COOKIE_REPLY_LEN];
        reply[0] = wg::MSG_COOKIE_REPLY;
        reply[cookie::RECEIVER].copy_from_slice(&sender.to_le_bytes());
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        reply[cookie::NONCE].copy_from_slice(&nonce);
        let sealed = xaead_seal(&self.cookie_key, &nonce, &cookie, &macs[..16]);
        reply[cookie::COOKIE].copy_from_slice(&sealed);
        Ok(Some(reply))
    }

    /// Responder step 1: checks mac1 (and mac2 when `under_load`, which may yield a cookie
    /// reply) and decrypts the initiator's static key. Nothing about the peer is trusted
    /// until [`Local::respond`] succeeds.
    pub fn begin_initiation<R: RngCore + CryptoRng>(
        &mut self,
        now: Instant,
        msg: &[u8],
        src: SocketAddr,
        under_load: bool,
        rng: &mut R,
    ) -> Result<InitiationStep, HandshakeError> {
        check_type(msg, wg::MSG_INITIATION)?;
        let sender_index = le_u32(&msg[init::SENDER]);
        if let Some(reply) = self.check_macs(now, msg, sender_index, src, under_load, rng)? {
            return Ok(InitiationStep::Cookie(reply));
        }
        let ephemeral = arr32(&msg[init::EPHEMERAL]);
        let mut c = kdf1(&initial_chaining_key(), &ephemeral);
        let mut h = hash(&[&self.responder_h0, &ephemeral]);
        let mut es = dh(&self.private, &ephemeral)?;
        let (c1, mut k) = kdf2(&c, &es);
        es.zeroize();
        c = c1;
        let mut spub = [0u8; 32];
        let opened = aead_open(&k, 0, &msg[init::STATIC], &h, &mut spub);
        k.zeroize();
        opened?;
        h = hash(&[&h, &msg[init::STATIC]]);
        let mut encrypted_timestamp = [0u8; 28];
        encrypted_timestamp.copy_from_slice(&msg[init::TIMESTAMP]);
        Ok(InitiationStep::Identified(PendingInitiation {
            remote_static: PublicKey(spub),
            sender_index,
            ephemeral,
            c,
            h,
            encrypted_timestamp,
        }))
    }

    /// Responder step 2: with the initiator's peer record, decrypts the timestamp, applies the
    /// replay and flood checks, builds the response (mac1, and mac2 from the peer's last
    /// cookie) and derives the session keys. Replaces any initiation of ours in flight to this
    /// peer, as the kernel does.
    pub fn respond<R: RngCore + CryptoRng>(
        &mut self,
        now: Instant,
        pending: PendingInitiation,
        peer: &mut Peer,
        local_index: u32,
        rng: &mut R,
    ) -> Result<([u8; wg::RESPONSE_LEN], SessionKeys), HandshakeError> {
        if pending.remote_static != peer.remote {
            return Err(HandshakeError::UnknownPeer);
        }
        let (mut c, mut k) = kdf2(&pending.c, &peer.ss);
        let mut ts = [0u8; 12];
        let opened = aead_open(&k, 0, &pending.encrypted_timestamp, &pending.h, &mut ts);
        k.zeroize();
        opened?;
        let ts = Tai64N(ts);
        if peer.greatest_timestamp.is_some_and(|g| ts <= g) {
            return Err(HandshakeError::Replay);
        }
        if peer
            .last_initiation_accepted
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_INITIATION_INTERVAL)
        {
            return Err(HandshakeError::Flood);
        }
        let mut h = hash(&[&pending.h, &pending.encrypted_timestamp]);

        // Build the response.
        let e = random_secret(rng);
        let e_pub = x25519_dalek::PublicKey::from(&e).to_bytes();
        let mut msg = [0u8; wg::RESPONSE_LEN];
        msg[0] = wg::MSG_RESPONSE;
        msg[resp::SENDER].copy_from_slice(&local_index.to_le_bytes());
        msg[resp::RECEIVER].copy_from_slice(&pending.sender_index.to_le_bytes());
        msg[resp::EPHEMERAL].copy_from_slice(&e_pub);
        c = kdf1(&c, &e_pub);
        h = hash(&[&h, &e_pub]);
        let mut ee = dh(&e, &pending.ephemeral)?;
        c = kdf1(&c, &ee);
        ee.zeroize();
        let mut se = dh(&e, peer.remote.as_bytes())?;
        c = kdf1(&c, &se);
        se.zeroize();
        let (c3, mut tau, mut k) = kdf3(&c, &peer.psk);
        c = c3;
        h = hash(&[&h, &tau]);
        tau.zeroize();
        aead_seal(&k, 0, &[], &h, &mut msg[resp::EMPTY]);
        k.zeroize();
        // h is not needed after this point.
        h.zeroize();
        let (recv_key, send_key) = kdf2(&c, &[]);
        c.zeroize();

        peer.greatest_timestamp = Some(ts);
        peer.last_initiation_accepted = Some(now);
        peer.in_flight = None;
        peer.seal_macs(now, &mut msg, local_index);
        debug_assert_eq!(&msg[resp::MAC1], &peer.last_sent.expect("just set").0[..]);
        debug_assert_eq!(resp::MAC2.end, wg::RESPONSE_LEN);
        Ok((
            msg,
            SessionKeys {
                local_index,
                remote_index: pending.sender_index,
                send_key,
                recv_key,
                initiator: false,
            },
        ))
    }

    /// Initiator: builds an initiation to `peer` (TAI64N from `wall`) and stores the
    /// ephemeral state in `peer`, replacing any earlier initiation in flight.
    pub fn initiate<R: RngCore + CryptoRng>(
        &mut self,
        now: Instant,
        wall: SystemTime,
        peer: &mut Peer,
        local_index: u32,
        rng: &mut R,
    ) -> [u8; wg::INITIATION_LEN] {
        let e = random_secret(rng);
        let e_pub = x25519_dalek::PublicKey::from(&e).to_bytes();
        let mut msg = [0u8; wg::INITIATION_LEN];
        msg[0] = wg::MSG_INITIATION;
        msg[init::SENDER].copy_from_slice(&local_index.to_le_bytes());
        msg[init::EPHEMERAL].copy_from_slice(&e_pub);
        let mut c = kdf1(&initial_chaining_key(), &e_pub);
        let mut h = hash(&[&peer.initiator_h0, &e_pub]);
        // The peer's key passed `Peer::new`'s small-order check, so DH is contributory.
        let mut es = dh(&e, peer.remote.as_bytes()).unwrap_or([0; 32]);
        let (c1, mut k) = kdf2(&c, &es);
        es.zeroize();
        c = c1;
        aead_seal(&k, 0, self.public.as_bytes(), &h, &mut msg[init::STATIC]);
        h = hash(&[&h, &msg[init::STATIC]]);
        let (c2, k2) = kdf2(&c, &peer.ss);
        c = c2;
        k = k2;
        let ts = Tai64N::for_initiation(wall);
        aead_seal(&k, 0, ts.as_bytes(), &h, &mut msg[init::TIMESTAMP]);
        k.zeroize();
        h = hash(&[&h, &msg[init::TIMESTAMP]]);
        peer.seal_macs(now, &mut msg, local_index);
        debug_assert_eq!(init::MAC2.end, wg::INITIATION_LEN);
        debug_assert_eq!(&msg[init::MAC1], &peer.last_sent.expect("just set").0[..]);
        peer.in_flight = Some(InFlight {
            local_index,
            ephemeral: e,
            c,
            h,
            sent_at: now,
        });
        msg
    }

    /// Initiator: processes a response for the initiation in flight to `peer` (found by the
    /// caller through `tm_wire::wg::handshake_receiver`). Checks mac1, and mac2 when
    /// `under_load` (which may yield a cookie reply). On failure the initiation stays in
    /// flight, so a forged response cannot cancel the real one.
    pub fn handle_response<R: RngCore + CryptoRng>(
        &mut self,
        now: Instant,
        msg: &[u8],
        src: SocketAddr,
        under_load: bool,
        peer: &mut Peer,
        rng: &mut R,
    ) -> Result<ResponseStep, HandshakeError> {
        check_type(msg, wg::MSG_RESPONSE)?;
        let sender = le_u32(&msg[resp::SENDER]);
        let receiver = le_u32(&msg[resp::RECEIVER]);
        if let Some(reply) = self.check_macs(now, msg, sender, src, under_load, rng)? {
            return Ok(ResponseStep::Cookie(reply));
        }
        let fl = match &peer.in_flight {
            Some(fl) if fl.local_index == receiver => fl,
            _ => return Err(HandshakeError::UnexpectedResponse),
        };
        if now.saturating_duration_since(fl.sent_at) >= MAX_INITIATION_AGE {
            return Err(HandshakeError::Expired);
        }
        let e_r = arr32(&msg[resp::EPHEMERAL]);
        let mut c = kdf1(&fl.c, &e_r);
        let mut h = hash(&[&fl.h, &e_r]);
        let mut ee = dh(&fl.ephemeral, &e_r)?;
        c = kdf1(&c, &ee);
        ee.zeroize();
        let mut se = dh(&self.private, &e_r)?;
        c = kdf1(&c, &se);
        se.zeroize();
        let (c3, mut tau, mut k) = kdf3(&c, &peer.psk);
        c = c3;
        h = hash(&[&h, &tau]);
        tau.zeroize();
        let opened = aead_open(&k, 0, &msg[resp::EMPTY], &h, &mut []);
        k.zeroize();
        h.zeroize();
        if let Err(e) = opened {
            c.zeroize();
            return Err(e);
        }
        let (send_key, recv_key) = kdf2(&c, &[]);
        c.zeroize();
        peer.in_flight = None;
        // A cookie reply can no longer refer to the initiation.
        peer.last_sent = None;
        Ok(ResponseStep::Established(SessionKeys {
            local_index: receiver,
            remote_index: sender,
            send_key,
            recv_key,
            initiator: true,
        }))
    }

    /// A cookie reply answering our last initiation or response to `peer`: stores the cookie
    /// so the next message (the initiation retry) carries a valid mac2.
    pub fn handle_cookie_reply(
        &mut self,
        now: Instant,
        msg: &[u8],
        peer: &mut Peer,
    ) -> Result<(), HandshakeError> {
        check_type(msg, wg::MSG_COOKIE_REPLY)?;
        let receiver = le_u32(&msg[cookie::RECEIVER]);
        let (mac1, sent_index) = match peer.last_sent {
            Some(s) if s.1 == receiver => s,
            _ => return Err(HandshakeError::UnexpectedResponse),
        };
        let c = xaead_open(
            &peer.cookie_key,
            &msg[cookie::NONCE],
            &msg[cookie::COOKIE],
            &mac1,
        )?;
        debug_assert_eq!(sent_index, receiver);
        peer.cookie = Some((c, now));
        // One cookie reply per message sent (kernel: `have_sent_mac1` is cleared).
        peer.last_sent = None;
        Ok(())
    }
}
