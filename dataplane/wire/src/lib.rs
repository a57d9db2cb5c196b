//! Wire formats shared by the dataplane and the control plane.
//!
//! - [`wg`]: WireGuard v1 message types, sizes and the transport-data header view.
//! - [`filter`]: the packet filter as the dataplane understands it (compiled by the control
//!   plane), carried in `SetFilter` chunks.
//! - [`ipc`]: the control <-> dataplane message schema carried over the shared-memory ring.
//!
//! This crate does no I/O and holds no secrets beyond what a caller puts in a message.
//! After `new_checked`, no accessor panics.
#![forbid(unsafe_code)]

pub mod filter;
pub mod ipc;
pub mod wg;
