//! The crate's one error type.

use std::io;
use std::net::SocketAddr;

/// Everything that can go wrong in `tm-dns`.
///
/// Zone problems ([`DnsError::InvalidName`] and friends) are reported per entry by
/// [`crate::MeshDns::update`]: the offending entry is left out and the rest of the zone is served.
/// Only [`DnsError::InvalidDomain`] rejects a whole zone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The zone's domain (e.g. `mesh`) is not a valid, non-root DNS name.
    #[error("invalid zone domain {0:?}")]
    InvalidDomain(String),
    /// A peer or alias name is not a valid host name inside the zone
    /// (letters, digits, `-` and `_`, 1..=63 bytes per label, 253 in total).
    #[error("invalid name {0:?}")]
    InvalidName(String),
    /// A peer or alias tried to take a name the zone reserves (the apex or `coordinator`).
    #[error("name {0:?} is reserved")]
    ReservedName(String),
    /// Two entries map to the same (case-folded) name; the later one is dropped.
    #[error("duplicate name {0:?}")]
    DuplicateName(String),
    /// An alias points at a name that does not exist in the zone (or lies outside it).
    #[error("alias {alias:?} points at unknown name {target:?}")]
    DanglingAlias {
        /// The alias that was dropped.
        alias: String,
        /// The target it named.
        target: String,
    },
    /// An alias chain loops or is longer than [`crate::MAX_ALIAS_CHAIN`].
    #[error("alias {0:?} loops or chains too deep")]
    AliasLoop(String),
    /// [`crate::serve`] was given no address to listen on.
    #[error("no listen address")]
    NoAddresses,
    /// Binding a UDP socket or TCP listener failed.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The hickory server stopped with an error (a listener died).
    #[error("dns server: {0}")]
    Server(String),
}
