//! The coordinators' shared control state, without a leader (issue 17), as sans-IO parts the
//! coordinator drives:
//!
//! - [`hlc`]: hybrid logical clock stamps, with a bound on how far ahead of our clock another
//!   coordinator's stamps may be;
//! - [`store`]: per-key last-writer-wins records with tombstones, bucket digests for
//!   anti-entropy, version vectors;
//! - [`sync`]: one coordinator's replica: push on write, periodic digest exchange with one
//!   peer at a time, refusal of skewed or malformed messages; the driver persists what
//!   changed before it sends or acknowledges;
//! - [`conflict`]: the deterministic rule that makes names and addresses unique after two
//!   sides of a partition admitted conflicting nodes.
//!
//! `tests/sim.rs` runs many coordinators in one process on a virtual clock with message loss,
//! reordering and partitions, and checks that they converge to the same records and view and
//! that no write is lost except by being overwritten by a later one.

#![forbid(unsafe_code)]

pub mod conflict;
pub mod hlc;
pub mod store;
pub mod sync;

pub use conflict::{resolve, Range, Registration, Resolved};
pub use hlc::{Clock, Origin, SkewError, Stamp, MAX_SKEW_MS};
pub use store::{Record, Store, VersionVector, BUCKETS};
pub use sync::{Effects, Msg, Out, PeerStatus, Replica, SyncError};
