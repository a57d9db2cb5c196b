//! Sans-IO WireGuard v1 handshake (`Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`, byte-for-byte as
//! the whitepaper, the kernel and wireguard-go) and static-key handling.
//!
//! What it does: builds and checks handshake initiations (148 B), responses (92 B) and cookie
//! replies (64 B) including mac1/mac2, TAI64N replay and per-peer flood protection, and derives
//! the transport keys handed to the dataplane ([`handshake::SessionKeys`], the fields of
//! `tm_wire::ipc::CtlMsg::InstallSession`). [`keys`] parses WireGuard base64 keys and OpenSSH
//! ed25519 keys (mapped to X25519) and writes new OpenSSH identities.
//!
//! What it never does: I/O, clocks or randomness of its own (`now: Instant`, the wall clock
//! for TAI64N and an RNG are passed in), peer lookup (the caller maps static keys and receiver
//! indices to its [`handshake::Peer`] records), index allocation, retransmission timers or
//! transport-data encryption (the dataplane does that with the derived keys).
//!
//! Call order:
//! 1. `Local::new(private)`; one `Peer::new(&local, remote_public, psk)` per configured peer.
//! 2. Initiator: `local.initiate(now, wall, &mut peer, idx, rng)` -> send the 148 bytes.
//!    On a type-2 datagram find the peer by `tm_wire::wg::handshake_receiver` and call
//!    `local.handle_response(..)` -> `Established(keys)` (install, `initiator: true`) or
//!    `Cookie(reply)` (send it back: we are under load). On a type-3 datagram call
//!    `local.handle_cookie_reply(..)`; the next `initiate` (retry) then carries a valid mac2.
//! 3. Responder: on a type-1 datagram call `local.begin_initiation(..)` -> `Cookie(reply)`
//!    (send it back) or `Identified(pending)`; look up the peer by
//!    `pending.remote_static()` and call `local.respond(now, pending, &mut peer, idx, rng)` ->
//!    send the 92-byte response and install the keys (`initiator: false`).
#![forbid(unsafe_code)]

mod crypto;
pub mod handshake;
pub mod keys;
pub mod tai64n;

/// Everything that can go wrong in this crate: key parsing and handshake processing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A handshake datagram has the wrong type, length or non-zero reserved bytes.
    #[error("handshake message has the wrong type or length")]
    BadLength,
    /// mac1 does not match: not addressed to our static key (always rejected).
    #[error("invalid mac1")]
    BadMac1,
    /// mac2 is missing or wrong while under load; answer with a cookie reply.
    #[error("invalid mac2 (a cookie is needed)")]
    BadMac2,
    /// An AEAD (handshake field or cookie) did not authenticate.
    #[error("decryption failed")]
    Decrypt,
    /// A Diffie-Hellman result was all zero (small-order public key).
    #[error("small-order public key in handshake")]
    InvalidPoint,
    /// The `Peer` passed does not belong to the static key the message carries.
    #[error("unknown peer (static key mismatch)")]
    UnknownPeer,
    /// The initiation's TAI64N timestamp is not newer than the greatest accepted one.
    #[error("replayed initiation timestamp")]
    Replay,
    /// An initiation from this peer was accepted less than 50 ms ago.
    #[error("initiation flood (more than 20 per second)")]
    Flood,
    /// A response or cookie reply that answers no message we have in flight.
    #[error("unexpected response (no handshake in flight or wrong index)")]
    UnexpectedResponse,
    /// The handshake in flight is older than REKEY_ATTEMPT_TIME.
    #[error("handshake state expired")]
    Expired,
    /// Text that should be base64 is not.
    #[error("{0} is not valid base64")]
    InvalidBase64(&'static str),
    /// A base64 key decodes to the wrong number of bytes.
    #[error("{what} must be {expected} bytes, got {got}")]
    WrongKeyLength {
        /// Which key.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Decoded length.
        got: usize,
    },
    /// An OpenSSH private key is passphrase-protected (cipher named).
    #[error("OpenSSH private key is encrypted (cipher {0}); decrypt it with `ssh-keygen -p -N ''` or use an unencrypted key")]
    EncryptedKey(String),
    /// A key of a type that cannot be used as an X25519 key (e.g. RSA, ECDSA).
    #[error("unsupported key type: {0}")]
    UnsupportedKeyType(String),
    /// An OpenSSH key file or public key line is structurally broken.
    #[error("malformed OpenSSH key: {0}")]
    MalformedSsh(&'static str),
    /// An ed25519 public key is not a usable curve point.
    #[error("invalid ed25519 public key: {0}")]
    InvalidPublicKey(&'static str),
}

/// Errors of [`keys`] parsing (same type as [`Error`]).
pub type KeyError = Error;
/// Errors of [`handshake`] processing (same type as [`Error`]).
pub type HandshakeError = Error;

pub use handshake::{InitiationStep, Local, Peer, PendingInitiation, ResponseStep, SessionKeys};
pub use keys::{PrivateKey, PublicKey};
pub use tai64n::Tai64N;
