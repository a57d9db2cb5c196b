//! The tunnel's UDP socket: dual-stack bind, large buffers, and the sockaddr conversions
//! (v4-mapped IPv6 <-> plain IPv4) used by the event loop.
//!
//! The socket stays in blocking mode (io_uring `recvmsg` arms its own poll); direct sends use
//! `MSG_DONTWAIT`, so a full send buffer is an `EAGAIN` the caller counts, never a stall.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{IoError, Result};

/// Socket buffer size requested (SO_RCVBUFFORCE/SO_SNDBUFFORCE as root, else capped by
/// `net.core.{r,w}mem_max`).
pub const SOCKET_BUFFER: usize = 8 << 20;

/// The bound tunnel socket.
#[derive(Debug)]
pub struct UdpSock {
    sock: UdpSocket,
    v6: bool,
}

impl UdpSock {
    /// True if the socket is `AF_INET6` (dual-stack); false for the IPv4 fallback.
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// The bound local address (the port is the real one when 0 was requested).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr().map(unmap)
    }

    /// The std socket (for tests and tools; the loop uses the raw fd).
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Sends one datagram without blocking (`MSG_DONTWAIT`). `to` may be IPv4 or IPv6; an
    /// IPv4 destination is v4-mapped on a dual-stack socket.
    pub fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let raw = RawAddr::new(to, self.v6)?;
        // SAFETY: `buf` and `raw.storage` are valid for the lengths passed during the call.
        let n = unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                (&raw.storage as *const libc::sockaddr_storage).cast(),
                raw.len,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsFd for UdpSock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn setsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: `v` is a valid c_int for the duration of the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn new_socket(domain: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call, no pointers.
    let raw = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn bind_fd(fd: BorrowedFd<'_>, addr: SocketAddr, v6: bool) -> io::Result<()> {
    let raw = RawAddr::new(addr, v6)?;
    // SAFETY: `raw.storage` is a valid sockaddr of `raw.len` bytes during the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw.storage as *const libc::sockaddr_storage).cast(),
            raw.len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Best effort: FORCE variants (need CAP_NET_ADMIN) first, then the capped ones.
fn grow_buffers(fd: BorrowedFd<'_>) {
    let size = SOCKET_BUFFER as i32;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, size).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, size);
        }
    }
}

/// Binds UDP `[::]:port` with `IPV6_V6ONLY=0`; if IPv6 is unavailable (socket creation or
/// the dual-stack option fails), binds `0.0.0.0:port` instead. Port 0 picks a free port.
pub fn bind_dual(port: u16) -> Result<UdpSock> {
    let err = |source| IoError::Udp { port, source };
    let (fd, v6) = match new_socket(libc::AF_INET6).and_then(|fd| {
        setsockopt_int(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        Ok(fd)
    }) {
        Ok(fd) => (fd, true),
        Err(_) => (new_socket(libc::AF_INET).map_err(err)?, false),
    };
    grow_buffers(fd.as_fd());
    let addr = if v6 {
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)
    } else {
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
    };
    bind_fd(fd.as_fd(), addr, v6).map_err(err)?;
    Ok(UdpSock {
        sock: UdpSocket::from(fd),
        v6,
    })
}

/// Converts a v4-mapped IPv6 socket address (`::ffff:a.b.c.d`) to plain IPv4.
pub fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

/// A socket address in kernel form.
#[derive(Clone, Copy)]
pub struct RawAddr {
    /// The sockaddr_in or sockaddr_in6.
    pub storage: libc::sockaddr_storage,
    /// Its length.
    pub len: libc::socklen_t,
}

impl RawAddr {
    /// Encodes `a` for a socket of the given family: on an IPv6 socket IPv4 addresses are
    /// v4-mapped; on an IPv4 socket v4-mapped IPv6 addresses are unmapped and other IPv6
    /// addresses fail with `EAFNOSUPPORT`.
    pub fn new(a: SocketAddr, v6_socket: bool) -> io::Result<RawAddr> {
        // SAFETY: sockaddr_storage is plain data; all-zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let a = if v6_socket {
            match a {
                SocketAddr::V4(v4) => {
                    SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
                }
                v6 => v6,
            }
        } else {
            match unmap(a) {
                SocketAddr::V6(_) => return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
                v4 => v4,
            }
        };
        let len = match a {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and suitably aligned for
                // sockaddr_in.
                unsafe {
                    (&mut storage as *mut libc::sockaddr_storage)
                        .cast::<libc::sockaddr_in>()
                        .write(sin)
                };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and suitably aligned for
                // sockaddr_in6.
                unsafe {
                    (&mut storage as *mut libc::sockaddr_storage)
                        .cast::<libc::sockaddr_in6>()
                        .write(sin6)
                };
                size_of::<libc::sockaddr_in6>()
            }
        };
        Ok(RawAddr {
            storage,
            len: len as libc::socklen_t,
        })
    }

    /// Decodes a kernel socket address (v4-mapped IPv6 becomes IPv4). `None` for other
    /// families or short lengths.
    pub fn decode(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
        let len = len as usize;
        match i32::from(storage.ss_family) {
            libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says the storage holds a sockaddr_in, which it can
                // hold with the right alignment.
                let sin = unsafe {
                    &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
                };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe {
                    &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
                };
                let a = SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                );
                Some(unmap(SocketAddr::V6(a)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(a: &str, v6: bool) -> SocketAddr {
        let a: SocketAddr = a.parse().unwrap();
        let r = RawAddr::new(a, v6).unwrap();
        RawAddr::decode(&r.storage, r.len).unwrap()
    }

    #[test]
    fn mapping_both_ways() {
        // IPv4 on a v6 socket is encoded v4-mapped and decoded back to plain IPv4.
        let r = RawAddr::new("192.0.2.1:51820".parse().unwrap(), true).unwrap();
        assert_eq!(i32::from(r.storage.ss_family), libc::AF_INET6);
        assert_eq!(
            roundtrip("192.0.2.1:51820", true).to_string(),
            "192.0.2.1:51820"
        );
        assert_eq!(roundtrip("192.0.2.1:7", false).to_string(), "192.0.2.1:7");
        assert_eq!(
            roundtrip("[2001:db8::1]:9", true).to_string(),
            "[2001:db8::1]:9"
        );
        assert_eq!(
            roundtrip("[::ffff:10.0.0.1]:9", false).to_string(),
            "10.0.0.1:9"
        );
        assert_eq!(
            roundtrip("[::ffff:10.0.0.1]:9", true).to_string(),
            "10.0.0.1:9"
        );
        assert!(RawAddr::new("[2001:db8::1]:9".parse().unwrap(), false).is_err());
    }

    #[test]
    fn decode_rejects_short_and_unknown() {
        let r = RawAddr::new("192.0.2.1:1".parse().unwrap(), false).unwrap();
        assert!(RawAddr::decode(&r.storage, 4).is_none());
        // SAFETY: sockaddr_storage is plain data; all-zero is valid.
        let z: libc::sockaddr_storage = unsafe { zeroed() };
        assert!(RawAddr::decode(&z, 128).is_none());
    }

    #[test]
    fn dual_stack_loopback_echo() {
        let s = bind_dual(0).unwrap();
        let port = s.local_addr().unwrap().port();
        assert_ne!(port, 0);
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(b"hi", ("127.0.0.1", port)).unwrap();
        let mut b = [0u8; 16];
        let (n, from) = s.socket().recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], b"hi");
        let from = unmap(from);
        assert_eq!(from, c.local_addr().unwrap());
        assert_eq!(s.send_to(b"yo", from).unwrap(), 2);
        let (n, _) = c.recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], b"yo");
    }
}
