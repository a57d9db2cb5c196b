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

/// `UDP_SEGMENT` (sockopt / cmsg level `SOL_UDP`): GSO segment size of a send.
pub const UDP_SEGMENT: i32 = 103;
/// `UDP_GRO` (sockopt / cmsg level `SOL_UDP`): receive coalesced datagrams.
pub const UDP_GRO: i32 = 104;
/// Most segments one GSO send may carry (the kernel's `UDP_MAX_SEGMENTS` is 64 on older
/// kernels, 128 on newer).
pub const MAX_GSO_SEGMENTS: usize = 64;

impl UdpSock {
    /// Sets both socket buffers to `bytes` (FORCE variants first, as root), e.g. to bound
    /// the queueing delay in front of a slow receiver.
    pub fn set_buffers(&self, bytes: usize) {
        grow_buffers_to(self.sock.as_fd(), bytes);
    }

    /// Turns `UDP_GRO` on: one receive may then return many datagrams of equal size (the
    /// last may be shorter), the size given in a `SOL_UDP/UDP_GRO` control message.
    pub fn set_gro(&self, on: bool) -> io::Result<()> {
        setsockopt_int(self.sock.as_fd(), libc::SOL_UDP, UDP_GRO, i32::from(on))
    }

    /// Sends `buf` as datagrams of `seg` bytes each (the last may be shorter) with one
    /// `sendmsg` and a `UDP_SEGMENT` control message (GSO). With `seg >= buf.len()` it is a
    /// plain send. Nonblocking, like [`Self::send_to`].
    pub fn send_gso(&self, buf: &[u8], seg: usize, to: SocketAddr) -> io::Result<usize> {
        if seg == 0 || seg >= buf.len() {
            return self.send_to(buf, to);
        }
        let raw = RawAddr::new(to, self.v6)?;
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // Room for one cmsg with a u16 payload, 8-byte aligned.
        let mut ctrl = [0u64; 4];
        // SAFETY: msghdr is plain data; all-zero is a valid value.
        let mut hdr: libc::msghdr = unsafe { zeroed() };
        hdr.msg_name = (&raw.storage as *const libc::sockaddr_storage) as *mut libc::c_void;
        hdr.msg_namelen = raw.len;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = ctrl.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        hdr.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
        // SAFETY: the control buffer is 32 bytes, enough for CMSG_SPACE(2) (24 bytes), and
        // `hdr` points at it, so CMSG_FIRSTHDR returns a valid, aligned header in it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
            libc::CMSG_DATA(c).cast::<u16>().write_unaligned(seg as u16);
        }
        // SAFETY: every pointer in `hdr` (name, iovec, buffer, control) is valid for the
        // lengths given during the call.
        let n = unsafe {
            libc::sendmsg(
                self.sock.as_raw_fd(),
                &hdr,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// The `UDP_GRO` segment size in a received control buffer, if any.
///
/// # Safety
/// `hdr.msg_control` / `msg_controllen` must describe a readable buffer filled by the
/// kernel (as after `recvmsg`).
pub unsafe fn gro_segment(hdr: &libc::msghdr) -> Option<usize> {
    if hdr.msg_control.is_null() || hdr.msg_controllen == 0 {
        return None;
    }
    // SAFETY: the caller guarantees the control buffer is valid; the CMSG_* macros stay
    // inside `msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let v = libc::CMSG_DATA(c).cast::<i32>().read_unaligned();
                return usize::try_from(v).ok().filter(|&v| v > 0);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
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
    grow_buffers_to(fd, SOCKET_BUFFER);
}

fn grow_buffers_to(fd: BorrowedFd<'_>, bytes: usize) {
    let size = i32::try_from(bytes).unwrap_or(i32::MAX);
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
    bind_dual_with(port, false)
}

/// [`bind_dual`], optionally with `SO_REUSEPORT` so every worker binds its own socket to
/// the same port (the kernel spreads flows over them by 4-tuple hash).
pub fn bind_dual_with(port: u16, reuse_port: bool) -> Result<UdpSock> {
    let err = |source| IoError::Udp { port, source };
    let (fd, v6) = match new_socket(libc::AF_INET6).and_then(|fd| {
        setsockopt_int(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        Ok(fd)
    }) {
        Ok(fd) => (fd, true),
        Err(_) => (new_socket(libc::AF_INET).map_err(err)?, false),
    };
    if reuse_port {
        setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(err)?;
    }
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

    /// One GSO send of 3 segments arrives as 3 datagrams at a plain socket, and as one
    /// coalesced receive (segment size in the cmsg) at a GRO socket.
    #[test]
    fn gso_send_and_gro_receive_on_loopback() {
        let tx = bind_dual(0).unwrap();
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = vec![0u8; 1000 + 1000 + 300];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i / 1000) as u8 + 1;
        }
        let to = plain.local_addr().unwrap();
        assert_eq!(tx.send_gso(&buf, 1000, to).unwrap(), buf.len());
        let mut b = [0u8; 2048];
        for (want_len, tag) in [(1000, 1u8), (1000, 2), (300, 3)] {
            let (n, _) = plain.recv_from(&mut b).unwrap();
            assert_eq!(n, want_len);
            assert!(b[..n].iter().all(|&x| x == tag));
        }
        let rx = bind_dual(0).unwrap();
        rx.set_gro(true).unwrap();
        let port = rx.local_addr().unwrap().port();
        tx.send_gso(&buf, 1000, ([127, 0, 0, 1], port).into())
            .unwrap();
        let mut big = vec![0u8; 65536];
        let mut ctrl = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: big.as_mut_ptr().cast(),
            iov_len: big.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut hdr: libc::msghdr = unsafe { zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = ctrl.as_mut_ptr().cast();
        hdr.msg_controllen = size_of::<[u64; 8]>() as _;
        // SAFETY: all pointers in `hdr` are valid for their lengths during the call.
        let n = unsafe { libc::recvmsg(rx.socket().as_raw_fd(), &mut hdr, 0) };
        assert_eq!(n as usize, buf.len(), "one coalesced receive");
        // SAFETY: the kernel filled the control buffer described by `hdr`.
        assert_eq!(unsafe { gro_segment(&hdr) }, Some(1000));
        assert_eq!(&big[..buf.len()], &buf[..]);
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
