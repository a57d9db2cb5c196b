//! Taking ownership of file descriptors inherited from the parent process (the ring's
//! memfd and eventfds passed as `--ring-fds`), so the binary needs no `unsafe`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

static CLAIMED: AtomicBool = AtomicBool::new(false);

/// Claims inherited fds: each must be >= 3, open, and listed once. They are marked
/// close-on-exec and returned as owned fds.
///
/// Call it once, at the start of `main`, before anything else opens or closes fds: at that
/// point an inherited fd number is owned by nobody else in the process, which is what makes
/// this safe. A second call fails with `EALREADY`.
pub fn claim_inherited(fds: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    for (i, &fd) in fds.iter().enumerate() {
        if fd < 3 || fds[..i].contains(&fd) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {fd} is not a distinct inherited fd (must be >= 3)"),
            ));
        }
        // SAFETY: F_GETFD only queries the descriptor flags; no memory is touched.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("fd {fd}: {e}")));
        }
    }
    if CLAIMED.swap(true, Ordering::SeqCst) {
        return Err(io::Error::from_raw_os_error(libc::EALREADY));
    }
    Ok(fds
        .iter()
        .map(|&fd| {
            // SAFETY: F_SETFD on an fd checked open above; no memory is touched.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            // SAFETY: the fd is open (checked above), distinct, and by this function's
            // once-at-startup contract not owned by anything else in the process.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_std_streams_duplicates_and_closed() {
        assert!(claim_inherited(&[1]).is_err());
        assert!(claim_inherited(&[7, 7]).is_err());
        // A number far above anything open in the test process.
        assert!(claim_inherited(&[1_000_000]).is_err());
        assert!(!CLAIMED.load(Ordering::SeqCst));
    }
}
