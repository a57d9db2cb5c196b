//! Resource bounds and panic containment of the S3 front.
//!
//! - [`Limits`]: how long a client may take to send a request head (also the keep-alive idle
//!   limit between requests: hyper's header-read timer runs while it waits for the next head),
//!   and the slowest request body accepted (a body that stalls, or trickles in below
//!   `min_body_rate` once `body_grace` of waiting has passed, fails with `RequestTimeout`).
//! - `contained`: runs one request future so that a panic in it (ours, s3s' or the engine's)
//!   becomes a `500 InternalError` for that request only; it is logged with the request kind and
//!   counted ([`panics`]). [`in_request`] tells the daemon's panic hook that the panic will be
//!   caught (the hook aborts the process for any other panic).

use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::body::{BodyStream, StdError};
use crate::error::Error;

/// Time and rate bounds of one S3 connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest time to receive a complete request head, counted from when the server starts
    /// waiting for it (so also the longest idle time of a keep-alive connection).
    pub header_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_idle: Duration,
    /// Waiting time for a body after which its average rate is checked.
    pub body_grace: Duration,
    /// Slowest accepted body, in bytes per second of waiting (after `body_grace`).
    pub min_body_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(20),
            body_idle: Duration::from_secs(30),
            body_grace: Duration::from_secs(20),
            min_body_rate: 1024,
        }
    }
}

/// Fails the body with `RequestTimeout` if one wait for more data exceeds `body_idle`, or if
/// after `body_grace` of accumulated waiting the body arrived slower than `min_body_rate`.
/// Only time spent waiting on the client counts (not time the consumer takes).
pub(crate) fn paced(inner: BodyStream, l: Limits) -> BodyStream {
    let st = (inner, Duration::ZERO, 0u64, false);
    Box::pin(futures::stream::unfold(
        st,
        move |(mut inner, mut waited, mut got, done)| async move {
            if done {
                return None;
            }
            let t0 = Instant::now();
            let next = tokio::time::timeout(l.body_idle, inner.next()).await;
            waited += t0.elapsed();
            let slow = |got: u64, waited: Duration| {
                waited >= l.body_grace
                    && u128::from(got) * 1000 < u128::from(l.min_body_rate) * waited.as_millis()
            };
            match next {
                Err(_) => Some((Err(timeout()), (inner, waited, got, true))),
                Ok(Some(Ok(b))) => {
                    got += b.len() as u64;
                    if slow(got, waited) {
                        return Some((Err(timeout()), (inner, waited, got, true)));
                    }
                    Some((Ok(b), (inner, waited, got, false)))
                }
                Ok(Some(Err(e))) => Some((Err(e), (inner, waited, got, true))),
                Ok(None) => None,
            }
        },
    ))
}

fn timeout() -> StdError {
    Box::new(Error::RequestTimeout)
}

/// This surface for the shared containment (`tm-contain`).
static SURFACE: tm_contain::Surface = tm_contain::Surface::new("s3", "500 InternalError");

/// Requests whose handler panicked since the process started.
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

/// Test hook: a request for this path panics in its handler.
#[cfg(test)]
pub(crate) const PANIC_PATH: &str = "/panic-test-hook";

/// Panics if a test asked for it (called at the start of each request's handler).
#[cfg(test)]
pub(crate) fn maybe_panic(path: &str) {
    if path == PANIC_PATH {
        panic!("injected test panic");
    }
}

#[cfg(test)]
mod tests;
