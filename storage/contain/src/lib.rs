//! Panic containment for request handlers, shared by every surface that serves requests (S3,
//! NFS, the coordinator API, DNS). A leaf crate under `storage/` so that both `storage/` and
//! `control/` crates may use it.
//!
//! [`contained`] runs one request future so that a panic in it becomes `Err(())` for that
//! request only; the surface answers it with its internal error (S3 `500 InternalError`, HTTP
//! 500, DNS SERVFAIL, NFS `NFS3ERR_SERVERFAULT`). The panic is logged with the surface, the
//! request kind and what the surface answered, and counted per surface ([`Surface::panics`]).
//! [`in_request`] tells the daemon's panic hook that the panic on this thread will be caught
//! (the hook aborts the process for any other panic).

#![forbid(unsafe_code)]

use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether the current thread is polling a request inside [`contained`] (a panic here is
/// caught and answered; a panic hook must not abort).
pub fn in_request() -> bool {
    DEPTH.with(Cell::get) > 0
}

/// One request-serving surface: its name, the internal error it answers a panic with, and the
/// number of its requests that panicked. Meant to be a `static` of the serving crate.
#[derive(Debug)]
pub struct Surface {
    name: &'static str,
    answer: &'static str,
    panics: AtomicU64,
}

impl Surface {
    /// A surface named `name` (e.g. `"s3"`) that answers a panic with `answer` (e.g. `"500"`).
    pub const fn new(name: &'static str, answer: &'static str) -> Self {
        Surface {
            name,
            answer,
            panics: AtomicU64::new(0),
        }
    }

    /// Requests of this surface whose handler panicked since the process started.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }
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

/// A future that turns a panic of its request future into `Err(())` (see [`contained`]).
pub struct Contained<F> {
    inner: Pin<Box<F>>,
    surface: &'static Surface,
    kind: String,
}

/// Wraps one request future of `surface`; `kind` names the request in the log (e.g.
/// `PUT /bucket/key`).
pub fn contained<F: Future>(surface: &'static Surface, kind: String, inner: F) -> Contained<F> {
    Contained {
        inner: Box::pin(inner),
        surface,
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
                self.surface.panics.fetch_add(1, Ordering::Relaxed);
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(
                    surface = self.surface.name,
                    kind = %self.kind,
                    panic = %msg,
                    "request handler panicked; answered {}",
                    self.surface.answer
                );
                Poll::Ready(Err(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    static TEST: Surface = Surface::new("test", "an internal error");

    fn poll_once<F: Future>(f: F) -> Poll<F::Output> {
        let mut f = Box::pin(f);
        f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_panic_is_counted_and_becomes_err_and_the_next_request_is_served() {
        let before = TEST.panics();
        let r = poll_once(contained(&TEST, "boom".into(), async {
            assert!(in_request(), "inside a contained request");
            panic!("injected");
        }));
        assert_eq!(r, Poll::Ready(Err(())));
        assert_eq!(TEST.panics(), before + 1);
        assert!(!in_request(), "outside any request again");
        let ok = poll_once(contained(&TEST, "fine".into(), async { 7 }));
        assert_eq!(ok, Poll::Ready(Ok(7)));
        assert_eq!(TEST.panics(), before + 1);
    }
}
