//! Thin, checked wrappers over the Linux calls the ring needs (memfd, eventfd, mmap, seals).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use crate::RingError;

fn io_err(op: &'static str) -> RingError {
    RingError::Io {
        op,
        source: io::Error::last_os_error(),
    }
}

/// Checks a `-1`-on-error return value.
fn cvt(ret: libc::c_int, op: &'static str) -> Result<libc::c_int, RingError> {
    if ret < 0 {
        Err(io_err(op))
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a freshly returned fd.
fn owned(fd: libc::c_int, op: &'static str) -> Result<OwnedFd, RingError> {
    let fd = cvt(fd, op)?;
    // SAFETY: `fd` was just returned by the kernel to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A sealable, close-on-exec memfd of `len` bytes, sealed against shrinking, growing and
/// further sealing.
pub(crate) fn sealed_memfd(len: usize) -> Result<OwnedFd, RingError> {
    let name = c"tm-ring";
    // SAFETY: `name` is a valid NUL-terminated string; flags are valid.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    let fd = owned(fd, "memfd_create")?;
    let len = libc::off_t::try_from(len).map_err(|_| RingError::InvalidConfig("ring too large"))?;
    // SAFETY: `fd` is a valid open memfd.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }, "ftruncate")?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: `fd` is a valid memfd created with MFD_ALLOW_SEALING.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    cvt(ret, "F_ADD_SEALS")?;
    Ok(fd)
}

/// Seals currently on `fd` (fails for files that are not memfds).
pub(crate) fn seals(fd: BorrowedFd<'_>) -> Result<libc::c_int, RingError> {
    // SAFETY: F_GET_SEALS takes no argument and only reads fd state.
    cvt(
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) },
        "F_GET_SEALS",
    )
}

/// Size of the file behind `fd`.
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> Result<u64, RingError> {
    // SAFETY: `stat` is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is a valid out-pointer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, "fstat")?;
    u64::try_from(st.st_size).map_err(|_| RingError::BadLayout("negative file size"))
}

/// `mmap(MAP_SHARED, PROT_READ|PROT_WRITE)` of the first `len` bytes of `fd`.
pub(crate) fn map_shared(fd: BorrowedFd<'_>, len: usize) -> Result<NonNull<u8>, RingError> {
    // SAFETY: a fresh mapping chosen by the kernel (addr = NULL) aliases no Rust object.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io_err("mmap"));
    }
    Ok(NonNull::new(p.cast::<u8>()).expect("mmap never returns NULL on success"))
}

/// A non-blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> Result<OwnedFd, RingError> {
    // SAFETY: plain syscall with valid flags.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    owned(fd, "eventfd")
}

/// Adds 1 to an eventfd counter. A saturated counter (EAGAIN) already means "readable".
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: u64 = 1;
    loop {
        // SAFETY: writes 8 bytes from a valid `u64`.
        let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n == 8 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(()),
            _ => return Err(e),
        }
    }
}

/// Reads and resets an eventfd counter; returns 0 if it was not signalled.
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) -> u64 {
    let mut v: u64 = 0;
    loop {
        // SAFETY: reads 8 bytes into a valid `u64`.
        let n = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        if n == 8 {
            return v;
        }
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // WouldBlock (not signalled) or an fd that is not an eventfd: nothing to clear.
        return 0;
    }
}

/// Sets FD_CLOEXEC on an inherited fd.
pub(crate) fn set_cloexec(fd: RawFd) -> Result<(), RingError> {
    // SAFETY: F_GETFD/F_SETFD only touch fd flags.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) }, "F_GETFD")?;
    // SAFETY: as above.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    cvt(ret, "F_SETFD")?;
    Ok(())
}
