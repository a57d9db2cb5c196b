//! A join's registration with a coordinator, bounded in time and never silent: what it waits
//! for is said after 1 s (within 2 s of the command starting), and it gives up with a one-line
//! error.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use tm_coord::{wire, JoinClient};
use tm_noise::keys::PrivateKey;

/// How long a join waits in silence before it says what it is waiting for.
const JOIN_NOTICE: Duration = Duration::from_secs(1);
/// How long a registration (TCP connect, TLS, challenge and register requests) may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `c.register(..)` within [`JOIN_TIMEOUT`], saying on stderr what it waits for once
/// [`JOIN_NOTICE`] has passed without an answer.
pub async fn register(
    c: &mut JoinClient,
    addr: &str,
    key: &PrivateKey,
    name: &str,
    endpoints: &[SocketAddr],
) -> Result<wire::Registration> {
    let register = tokio::time::timeout(JOIN_TIMEOUT, c.register(key, name, endpoints));
    tokio::pin!(register);
    let r = tokio::select! {
        r = &mut register => r,
        () = tokio::time::sleep(JOIN_NOTICE) => {
            eprintln!(
                "tunnelmesh: waiting for the coordinator at {addr} to answer (gives up after {} s)",
                JOIN_TIMEOUT.as_secs()
            );
            register.await
        }
    };
    match r {
        Ok(r) => Ok(r?),
        Err(_) => bail!(
            "the coordinator did not answer within {} s (is {addr} its address, and is \
             it running?)",
            JOIN_TIMEOUT.as_secs()
        ),
    }
}
