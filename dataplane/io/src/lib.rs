//! Dataplane I/O for `tm-dataplane`: the TUN device, the tunnel's UDP socket and the
//! io_uring event loop that moves packets between them and a [`uring::Handler`].
//!
//! What it does:
//! - [`tun::Tun::create`] opens `/dev/net/tun` (`IFF_TUN|IFF_NO_PI`, exclusive, non-persistent:
//!   the device disappears when the fd is closed); [`tun::Tun::create_with`] adds
//!   `IFF_VNET_HDR` / `IFF_MULTI_QUEUE`, [`tun::Tun::negotiate_offload`] sets `TUNSETOFFLOAD`
//!   (checksum, TSO, USO) as far as the kernel accepts, [`tun::Tun::attach_queue`] opens more
//!   queues.
//! - [`netlink`] configures it over a raw `NETLINK_ROUTE` socket (MTU, address, up, routes).
//! - [`udp::bind_dual`] binds the dual-stack UDP socket (`[::]:PORT`, falling back to
//!   `0.0.0.0:PORT`), with v4-mapped addresses converted to plain IPv4 both ways;
//!   [`udp::UdpSock::set_gro`] and [`udp::UdpSock::send_gso`] are the UDP offloads.
//! - [`fds::claim_inherited`] takes ownership of fds inherited from the parent.
//! - [`signals::SignalFd`] blocks SIGTERM/SIGINT and exposes them as a pollable fd.
//! - [`uring::EventLoop`] keeps TUN reads and UDP `recvmsg`s in flight, polls the control
//!   ring's eventfd and the signalfd, arms one timer, and calls the [`uring::Handler`].
//!
//! What it never does: parse or encrypt packets (that is `tm-dp`), touch the shared-memory
//! ring's memory (that is `tm-ring`; the loop only polls its eventfd), or spawn processes.
//!
//! Call order: `Tun::create` -> `netlink::set_mtu` / `add_address` / `set_up` / `add_route`
//! -> `udp::bind_dual` -> `SignalFd::new` (before any thread is spawned) ->
//! `EventLoop::new(LoopConfig, fds)` -> `EventLoop::run(&mut handler)` until a signal or
//! `Io::stop`. Dropping the loop cancels in-flight operations and waits for their
//! completions before the buffers are freed.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod fds;
pub mod netlink;
pub mod signals;
pub mod tun;
pub mod udp;
pub mod uring;

use std::io;

/// Errors of the dataplane I/O layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// The interface name is empty, too long (>= 16 bytes) or contains `/`, NUL or spaces.
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` failed with EBUSY: the device already exists or is in use.
    #[error("TUN device {0:?} already exists or is busy")]
    TunBusy(String),
    /// `TUNSETIFF` failed for another reason.
    #[error("cannot create TUN device {name:?}: {source}")]
    CreateTun {
        /// Requested device name.
        name: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel rejected a netlink request (or the socket failed).
    #[error("netlink {op}: {source}")]
    Netlink {
        /// What was being done (e.g. "add address 100.64.0.1/10").
        op: String,
        /// OS error (the negated `nlmsgerr.error`).
        #[source]
        source: io::Error,
    },
    /// A prefix length is larger than the address family allows.
    #[error("invalid prefix length /{0}")]
    InvalidPrefix(u8),
    /// Creating, configuring or binding the UDP socket failed.
    #[error("UDP socket on port {port}: {source}")]
    Udp {
        /// Requested port.
        port: u16,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// Setting up the signal fd failed.
    #[error("signalfd: {0}")]
    Signal(#[source] io::Error),
    /// Creating or driving the io_uring failed.
    #[error("io_uring: {0}")]
    Uring(#[source] io::Error),
}

/// Result alias of this crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;
