//! Panic containment for NFS requests: `contained` runs one request future so that a
//! panic in it becomes an internal-error answer for that request only (NFS3ERR_SERVERFAULT). The panic
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

/// NFS requests whose handler panicked since the process started.
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Whether the current thread is polling a NFS request inside `contained` (a panic here
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
                    "NFS request handler panicked; answered SERVERFAULT"
                );
                Poll::Ready(Err(()))
            }
        }
    }
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
