//! Panic containment for NFS requests: `contained` runs one request future so that a
//! panic in it becomes an internal-error answer for that request only (NFS3ERR_SERVERFAULT). The panic
//! is logged with the request kind and counted ([`panics`]). [`in_request`] tells the daemon's
//! panic hook that the panic will be caught (the hook aborts the process for any other panic).

use std::future::Future;

/// This surface for the shared containment (`tm-contain`).
static SURFACE: tm_contain::Surface = tm_contain::Surface::new("nfs", "NFS3ERR_SERVERFAULT");

/// NFS requests whose handler panicked since the process started.
pub fn panics() -> u64 {
    SURFACE.panics()
}

/// Whether the current thread is polling a request inside `contained` (a panic here is caught
/// and answered; the daemon's panic hook must not abort).
pub fn in_request() -> bool {
    tm_contain::in_request()
}

/// Wraps one request future (see the module documentation).
pub(crate) fn contained<F: Future>(kind: String, inner: F) -> tm_contain::Contained<F> {
    tm_contain::contained(&SURFACE, kind, inner)
}

/// Test hook: a fast-path call with this transaction id panics.
#[cfg(test)]
pub(crate) const PANIC_XID: u32 = 0xdead_beef;

/// Panics if a test asked for it (called at the start of each fast-path call).
#[cfg(test)]
pub(crate) fn maybe_panic(xid: u32) {
    if xid == PANIC_XID {
        panic!("injected test panic");
    }
}
