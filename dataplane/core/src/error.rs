//! The crate's error type (configuration errors only: packet-path failures are
//! [`tm_wire::ipc::DropReason`]s, counted and never logged per packet).

/// Errors from building dataplane state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A prefix length exceeds the address width (32 for IPv4, 128 for IPv6).
    #[error("prefix length {len} is longer than the address ({bits} bits)")]
    PrefixTooLong {
        /// The offending prefix length.
        len: u8,
        /// Width of the address family.
        bits: u8,
    },
}
