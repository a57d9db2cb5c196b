//! Termination signals as a pollable fd (`signalfd(2)`), so the io_uring loop can wait for
//! SIGTERM/SIGINT like for any other event.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{IoError, Result};

/// A nonblocking signalfd for a set of signals, which are blocked in the calling thread
/// (and so in every thread it spawns afterwards). Create it before spawning threads.
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks `signals` in the calling thread and returns a signalfd that reports them.
    pub fn new(signals: &[i32]) -> Result<SignalFd> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it below.
        let mut set: libc::sigset_t = unsafe { zeroed() };
        // SAFETY: `set` is a valid sigset_t.
        unsafe { libc::sigemptyset(&mut set) };
        for &s in signals {
            // SAFETY: `set` is a valid, initialised sigset_t.
            if unsafe { libc::sigaddset(&mut set, s) } < 0 {
                return Err(IoError::Signal(io::Error::last_os_error()));
            }
        }
        // SAFETY: `set` is initialised; the old mask is not requested (null).
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(IoError::Signal(io::Error::from_raw_os_error(rc)));
        }
        // SAFETY: `set` is initialised; -1 asks for a new fd.
        let raw = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if raw < 0 {
            return Err(IoError::Signal(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a freshly created fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(SignalFd { fd })
    }

    /// Reads one pending signal number, if any (nonblocking).
    pub fn read(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data; all-zero is valid.
        let mut info: libc::signalfd_siginfo = unsafe { zeroed() };
        // SAFETY: `info` is valid for writes of its full size during the call.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size_of::<libc::signalfd_siginfo>(),
            )
        };
        (n == size_of::<libc::signalfd_siginfo>() as isize).then_some(info.ssi_signo as i32)
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
