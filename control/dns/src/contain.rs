//! Panic containment for DNS requests: `contained` runs one request future so that a
//! panic in it becomes an internal-error answer for that request only (SERVFAIL). The panic
//! is logged with the request kind and counted ([`panics`]). [`in_request`] tells the daemon's
//! panic hook that the panic will be caught (the hook aborts the process for any other panic).

use std::future::Future;

/// This surface for the shared containment (`tm-contain`).
static SURFACE: tm_contain::Surface = tm_contain::Surface::new("dns", "SERVFAIL");

/// DNS requests whose handler panicked since the process started.
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

/// Test hook: a request for this query name panics in its handler.
#[cfg(test)]
pub(crate) const PANIC_HOOK: &str = "panic-test-hook.mesh.";

/// Panics if a test asked for it (called at the start of each request's handler).
#[cfg(test)]
pub(crate) fn maybe_panic(what: &str) {
    if what == PANIC_HOOK {
        panic!("injected test panic");
    }
}

/// Test hook: a request whose id is this panics before hickory parses it.
#[cfg(test)]
pub(crate) const PANIC_ID: u16 = 0xdead;

/// Panics if a test asked for it (called on each request's bytes before they are parsed): a
/// request with id [`PANIC_ID`], or a single byte (no readable id) of 0xff.
#[cfg(test)]
pub(crate) fn maybe_panic_raw(raw: &[u8]) {
    if raw.get(..2) == Some(&PANIC_ID.to_be_bytes()[..]) || raw == [0xff] {
        panic!("injected test panic before parsing");
    }
}
