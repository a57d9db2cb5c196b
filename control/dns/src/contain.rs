//! Panic containment for DNS requests: `contained` runs one request future so that a
//! panic in it becomes an internal-error answer for that request only (SERVFAIL). The panic
//! is logged with the request kind and counted ([`panics`]). [`in_request`] tells the daemon's
//! panic hook that the panic will be caught (the hook aborts the process for any other panic).

use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

static PANICS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// DNS requests whose handler panicked since the process started.
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Whether the current thread is polling a DNS request inside `contained` (a panic here
/// is caught and answered; the daemon's panic hook must not abort).
pub fn in_request() -> bool {
    DEPTH.with(Cell::get) > 0
}

struct Depth;

impl Depth {
    fn enter() -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        Depth
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// A future that turns a panic of `inner` into `Err(())`, after logging it with `kind` and
/// counting it.
pub(crate) struct Contained<F> {
    inner: Pin<Box<F>>,
    kind: String,
}

/// Wraps one request future (see the module documentation).
pub(crate) fn contained<F: Future>(kind: String, inner: F) -> Contained<F> {
    Contained {
        inner: Box::pin(inner),
        kind,
    }
}

impl<F: Future> Future for Contained<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let r = {
            let _d = Depth::enter();
            let inner = self.inner.as_mut();
            catch_unwind(AssertUnwindSafe(move || inner.poll(cx)))
        };
        match r {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => {
                PANICS.fetch_add(1, Ordering::Relaxed);
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(
                    kind = %self.kind,
                    panic = %msg,
                    "DNS request handler panicked; answered SERVFAIL"
                );
                Poll::Ready(Err(()))
            }
        }
    }
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
