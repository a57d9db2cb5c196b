//! TUN device creation (`/dev/net/tun`, `TUNSETIFF`).
//!
//! The device is created with `IFF_TUN_EXCL` (fails if a device of that name exists) and is
//! never made persistent, so the kernel removes it when the last fd closes. The fd is
//! blocking on purpose: io_uring reads arm a poll internally, and direct `write(2)` to a TUN
//! never blocks (the packet is queued to the stack).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{IoError, Result};

/// `TUN_F_USO4` (kernel 6.2+).
pub const TUN_F_USO4: u32 = 0x20;
/// `TUN_F_USO6` (kernel 6.2+).
pub const TUN_F_USO6: u32 = 0x40;
/// Every offload the dataplane can segment: checksum, TSO4/6 (+ECN), USO4/6.
pub const OFFLOAD_ALL: u32 = libc::TUN_F_CSUM
    | libc::TUN_F_TSO4
    | libc::TUN_F_TSO6
    | libc::TUN_F_TSO_ECN
    | TUN_F_USO4
    | TUN_F_USO6;

/// How to open the TUN queue. Offloads (`vnet_hdr`) and `multi_queue` are for the
/// thread-per-core dataplane; the default is plain `IFF_TUN|IFF_NO_PI`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunOptions {
    /// `IFF_MULTI_QUEUE`: one queue (fd) per worker.
    pub multi_queue: bool,
    /// `IFF_VNET_HDR`: every packet is preceded by a `virtio_net_hdr` (offloads).
    pub vnet_hdr: bool,
}

/// An open, non-persistent TUN device (one queue).
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    ifindex: u32,
}

/// `struct ifreq` as far as `TUNSETIFF` uses it.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if bad {
        return Err(IoError::InvalidName(name.to_owned()));
    }
    Ok(())
}

impl Tun {
    /// Creates the TUN device `name` with `IFF_TUN|IFF_NO_PI` (see [`Tun::create_with`]).
    pub fn create(name: &str) -> Result<Tun> {
        Self::create_with(name, TunOptions::default())
    }

    /// Creates the TUN device `name` in the calling thread's network namespace.
    /// Fails with [`IoError::TunBusy`] if a device of that name already exists.
    pub fn create_with(name: &str, opts: TunOptions) -> Result<Tun> {
        Self::open(name, opts, true)
    }

    /// Opens one more queue of this multi-queue device (same flags, no `IFF_TUN_EXCL`).
    pub fn attach_queue(&self, opts: TunOptions) -> Result<Tun> {
        Self::open(&self.name, opts, false)
    }

    /// `TUNSETOFFLOAD` with `TUN_F_*` flags (`libc::TUN_F_CSUM | TUN_F_TSO4 | ...`): the
    /// kernel may then hand this queue super-packets and partial checksums (vnet header
    /// required). Fails with `EINVAL` when the kernel does not know a flag.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes an unsigned long by value; no memory is passed.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Sets the best offload set the kernel accepts, trying `wanted` first, then without
    /// USO, then checksum + TSO only, then nothing. Returns the flags in effect.
    pub fn negotiate_offload(&self, wanted: u32) -> u32 {
        let uso = TUN_F_USO4 | TUN_F_USO6;
        let tso = libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
        for f in [wanted, wanted & !uso, wanted & (libc::TUN_F_CSUM | tso), 0] {
            if self.set_offload(f).is_ok() {
                return f;
            }
        }
        0
    }

    fn open(name: &str, opts: TunOptions, exclusive: bool) -> Result<Tun> {
        validate_name(name)?;
        // SAFETY: the path is a NUL-terminated literal; open has no memory-safety
        // preconditions otherwise.
        let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(IoError::OpenTun(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a freshly opened fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
        if exclusive {
            flags |= libc::IFF_TUN_EXCL;
        }
        if opts.multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        if opts.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes); `req` is a
        // properly sized, initialised repr(C) ifreq that outlives the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EBUSY) | Some(libc::EEXIST) => IoError::TunBusy(name.to_owned()),
                _ => IoError::CreateTun {
                    name: name.to_owned(),
                    source: e,
                },
            });
        }
        let ifindex = ifindex(name).map_err(|source| IoError::CreateTun {
            name: name.to_owned(),
            source,
        })?;
        Ok(Tun {
            fd,
            name: name.to_owned(),
            ifindex,
        })
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index (for netlink).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Writes one IP packet to the device (direct syscall; never blocks for long).
    pub fn write(&self, pkt: &[u8]) -> io::Result<usize> {
        write_fd(self.fd.as_fd(), pkt)
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `write(2)` on a borrowed fd.
pub(crate) fn write_fd(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid readable slice for its whole length during the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `if_nametoindex(3)`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout_matches_kernel() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn name_validation() {
        assert!(validate_name("tm0").is_ok());
        assert!(validate_name("a23456789012345").is_ok());
        for bad in ["", "a234567890123456", "a/b", "a b", ".", "..", "a:1"] {
            assert!(
                matches!(validate_name(bad), Err(IoError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }
}
