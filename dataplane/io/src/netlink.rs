//! A tiny hand-written rtnetlink client: just enough to configure the TUN device
//! (MTU, link up, addresses, routes). Every request asks for an ACK and waits for it, so
//! errors come back as the kernel's errno.
//!
//! Works in the calling thread's network namespace (the socket is bound to it at creation).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{IoError, Result};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// An open `NETLINK_ROUTE` socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

/// Builds one netlink request in a byte buffer (native endian, 4-byte aligned attributes).
struct Msg(Vec<u8>);

impl Msg {
    fn new(ty: u16, flags: u16, seq: u32) -> Msg {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // port id: kernel fills in
        Msg(b)
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn align(&mut self) {
        while self.0.len() & 3 != 0 {
            self.0.push(0);
        }
    }
    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        self.align();
        let len = u16::try_from(4 + data.len()).expect("attributes here are tiny");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.align();
        self
    }
    fn finish(mut self) -> Vec<u8> {
        self.align();
        let len = u32::try_from(self.0.len()).expect("request is tiny");
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

fn family(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn check_prefix(addr: IpAddr, len: u8) -> Result<()> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(IoError::InvalidPrefix(len));
    }
    Ok(())
}

/// `addr` with all bits past `len` cleared (the kernel rejects routes with host bits).
pub fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len.min(32)))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len.min(128)))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink> {
        let err = |source| IoError::Netlink {
            op: "open socket".into(),
            source,
        };
        // SAFETY: plain socket(2) call, no pointers.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a freshly created fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Netlink {
            fd,
            seq: 1,
            buf: vec![0; 16 * 1024],
        })
    }

    /// Sets the interface MTU.
    pub fn set_mtu(&mut self, ifindex: u32, mtu: u32) -> Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, 0, self.next_seq());
        m.bytes(&ifinfomsg(ifindex, 0, 0))
            .attr(IFLA_MTU, &mtu.to_ne_bytes());
        self.request(m.finish(), || format!("set mtu {mtu}"))
    }

    /// Sets the interface administratively up.
    pub fn set_up(&mut self, ifindex: u32) -> Result<()> {
        let up = libc::IFF_UP as u32;
        let mut m = Msg::new(RTM_NEWLINK, 0, self.next_seq());
        m.bytes(&ifinfomsg(ifindex, up, up));
        self.request(m.finish(), || "set link up".into())
    }

    /// Adds `addr/len` to the interface (IPv6: without duplicate address detection).
    pub fn add_address(&mut self, ifindex: u32, addr: IpAddr, len: u8) -> Result<()> {
        check_prefix(addr, len)?;
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, self.next_seq());
        // struct ifaddrmsg { family, prefixlen, flags, scope, index }
        m.bytes(&[family(addr), len, 0, RT_SCOPE_UNIVERSE]);
        m.bytes(&ifindex.to_ne_bytes());
        let a = addr_bytes(addr);
        m.attr(IFA_LOCAL, &a).attr(IFA_ADDRESS, &a);
        if addr.is_ipv6() {
            m.attr(IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
        }
        self.request(m.finish(), || format!("add address {addr}/{len}"))
    }

    /// Adds a route `dst/len dev IFINDEX` to the main table. Host bits of `dst` are
    /// cleared. Fails with EEXIST if the same route already exists.
    pub fn add_route(&mut self, ifindex: u32, dst: IpAddr, len: u8) -> Result<()> {
        check_prefix(dst, len)?;
        let dst = mask(dst, len);
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, self.next_seq());
        // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type, flags }
        m.bytes(&[
            family(dst),
            len,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_STATIC,
            RT_SCOPE_LINK,
            RTN_UNICAST,
        ]);
        m.bytes(&0u32.to_ne_bytes());
        m.attr(RTA_DST, &addr_bytes(dst))
            .attr(RTA_OIF, &ifindex.to_ne_bytes());
        self.request(m.finish(), || format!("add route {dst}/{len}"))
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `req` and waits for the ACK (or error) carrying its sequence number.
    fn request(&mut self, req: Vec<u8>, op: impl Fn() -> String) -> Result<()> {
        let seq = u32::from_ne_bytes([req[8], req[9], req[10], req[11]]);
        let err = |source| IoError::Netlink { op: op(), source };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut dst: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        dst.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `req` and `dst` are valid for the given lengths during the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&dst as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        loop {
            // SAFETY: `self.buf` is a valid writable buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err(e));
            }
            match parse_ack(&self.buf[..n as usize], seq) {
                Some(0) => return Ok(()),
                Some(errno) => return Err(err(io::Error::from_raw_os_error(errno))),
                None => continue,
            }
        }
    }
}

/// `struct ifinfomsg { family, pad, type, index, flags, change }` for AF_UNSPEC.
fn ifinfomsg(ifindex: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// Looks for the `NLMSG_ERROR` answering `seq` in one received buffer; returns the
/// positive errno (0 = ACK), or `None` if the buffer does not answer `seq`.
fn parse_ack(mut buf: &[u8], seq: u32) -> Option<i32> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let mseq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if mseq == seq {
            if ty == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
                let b = &buf[NLMSG_HDRLEN..NLMSG_HDRLEN + 4];
                let e = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                return Some(e.checked_neg().unwrap_or(libc::EINVAL));
            }
            if ty == NLMSG_DONE {
                return Some(0);
            }
        }
        let adv = (len + 3) & !3;
        buf = buf.get(adv..)?;
    }
    None
}

/// Opens a socket and sets the MTU (see [`Netlink::set_mtu`]).
pub fn set_mtu(ifindex: u32, mtu: u32) -> Result<()> {
    Netlink::open()?.set_mtu(ifindex, mtu)
}

/// Opens a socket and sets the link up (see [`Netlink::set_up`]).
pub fn set_up(ifindex: u32) -> Result<()> {
    Netlink::open()?.set_up(ifindex)
}

/// Opens a socket and adds an address (see [`Netlink::add_address`]).
pub fn add_address(ifindex: u32, addr: IpAddr, len: u8) -> Result<()> {
    Netlink::open()?.add_address(ifindex, addr, len)
}

/// Opens a socket and adds a route (see [`Netlink::add_route`]).
pub fn add_route(ifindex: u32, dst: IpAddr, len: u8) -> Result<()> {
    Netlink::open()?.add_route(ifindex, dst, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let mut m = Msg::new(RTM_NEWLINK, 0, 7);
        m.bytes(&ifinfomsg(3, 1, 1))
            .attr(IFLA_MTU, &1420u32.to_ne_bytes());
        let b = m.finish();
        assert_eq!(b.len(), 16 + 16 + 8);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 40);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), RTM_NEWLINK);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 7);
        assert_eq!(u32::from_ne_bytes(b[20..24].try_into().unwrap()), 3);
        assert_eq!(u16::from_ne_bytes([b[32], b[33]]), 8);
        assert_eq!(u16::from_ne_bytes([b[34], b[35]]), IFLA_MTU);
        assert_eq!(u32::from_ne_bytes(b[36..40].try_into().unwrap()), 1420);
    }

    #[test]
    fn odd_attribute_is_padded() {
        let mut m = Msg::new(1, 0, 1);
        m.attr(9, &[1, 2, 3]).attr(10, &[4]);
        let b = m.finish();
        assert_eq!(b.len(), 16 + 8 + 8);
        assert_eq!(u16::from_ne_bytes([b[16], b[17]]), 7);
        assert_eq!(u16::from_ne_bytes([b[26], b[27]]), 10);
    }

    fn err_msg(seq: u32, errno: i32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&36u32.to_ne_bytes());
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(-errno).to_ne_bytes());
        b.extend_from_slice(&[0; 16]);
        b
    }

    #[test]
    fn ack_parsing() {
        assert_eq!(parse_ack(&err_msg(5, 0), 5), Some(0));
        assert_eq!(parse_ack(&err_msg(5, libc::EEXIST), 5), Some(libc::EEXIST));
        assert_eq!(parse_ack(&err_msg(4, 0), 5), None);
        let mut two = err_msg(4, 1);
        two.extend(err_msg(5, libc::EPERM));
        assert_eq!(parse_ack(&two, 5), Some(libc::EPERM));
        // Truncated / garbage input never panics.
        for cut in 0..two.len() {
            let _ = parse_ack(&two[..cut], 5);
        }
        assert_eq!(parse_ack(&[0xff; 40], 5), None);
    }

    #[test]
    fn masking() {
        let m = |s: &str, l| mask(s.parse().unwrap(), l).to_string();
        assert_eq!(m("10.9.3.4", 16), "10.9.0.0");
        assert_eq!(m("10.9.3.4", 0), "0.0.0.0");
        assert_eq!(m("10.9.3.4", 32), "10.9.3.4");
        assert_eq!(m("fd00:1:2:3::9", 48), "fd00:1:2::");
        assert_eq!(m("fd00::9", 128), "fd00::9");
    }
}
