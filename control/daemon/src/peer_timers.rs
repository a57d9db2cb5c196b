//! Sans-IO core of the node's per-peer handshake and path timers.
//!
//! It decides *when*: when a handshake is retried or given up, when a peer that finds no UDP
//! path goes through the relay (`relay_after`), when a relayed peer probes its direct path again
//! (`probe_every`), whether the dataplane's request for a rekey starts a handshake now, whether
//! a roam to the relay is ignored in favour of a direct path that answered recently. It never
//! reads the clock (every call takes `now`), never draws random numbers (the retry jitter is
//! an argument) and does no I/O: the node loop (`node_paths.rs`, `node_handshake.rs`) reads
//! the clock once per event, asks this core, and performs the [`Action`]s it returns (sending
//! initiations, `SetEndpoint` to the dataplane, the relay's endpoint). Unit tests drive it with
//! a virtual clock (`tests` below).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Give up initiating after this long without success (whitepaper REKEY_ATTEMPT_TIME).
pub const REKEY_ATTEMPT: Duration = Duration::from_secs(90);

/// The timer settings the decisions derive from (the dataplane's `rekey_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Wait this long for a handshake response before retrying (plus jitter).
    pub rekey_timeout: Duration,
}

impl Timing {
    /// A peer without a session over UDP for this long goes through the relay (two full
    /// handshake attempts and a second of slack).
    pub fn relay_after(&self) -> Duration {
        self.rekey_timeout * 2 + Duration::from_secs(1)
    }

    /// A relayed peer probes its direct endpoints this often.
    pub fn probe_every(&self) -> Duration {
        self.rekey_timeout * 4
    }

    /// A roam to the relay within this long of a direct handshake is stray relayed traffic.
    pub fn roam_grace(&self) -> Duration {
        self.probe_every() * 2
    }
}

/// What the node loop must do for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send a handshake initiation (to the endpoint and, while wanted, every candidate).
    Initiate,
    /// Stop trying: the attempt lasted [`REKEY_ATTEMPT`] (forget the in-flight index).
    GiveUp,
    /// Point the peer at the relay (then [`PeerTimers::moved_to_relay`] and initiate).
    ToRelay,
    /// Send an initiation to the direct candidates only (then [`PeerTimers::probed`]).
    Probe,
}

/// What the node's I/O state says about a peer's path, for [`PeerTimers::path_due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathView {
    /// From the netmap (only those use the relay).
    pub dynamic: bool,
    /// Its endpoint is the relay.
    pub on_relay: bool,
    /// It has direct endpoints to probe.
    pub has_candidates: bool,
}

/// The timer state of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerTimers {
    /// Since when we have been trying to establish a session without success.
    pub attempt_since: Option<Instant>,
    /// Last handshake completed over a direct (non-relay) path: endpoint and time.
    pub direct: Option<(SocketAddr, Instant)>,
    /// Last probe of the direct path while on the relay.
    pub last_probe: Option<Instant>,
    /// Keep trying to establish a session until then.
    pub want_until: Option<Instant>,
    /// When the last initiation was sent.
    pub last_init_sent: Option<Instant>,
    /// When the next retry (or the give-up decision) is due.
    pub next_retry: Option<Instant>,
}

impl PeerTimers {
    /// A session is wanted: keep trying for [`REKEY_ATTEMPT`] from `now`.
    pub fn want(&mut self, now: Instant) {
        self.want_until = Some(now + REKEY_ATTEMPT);
    }

    /// A new peer: wanted, and the attempt starts now (its relay clock runs).
    pub fn new_attempt(&mut self, now: Instant) {
        self.attempt_since = Some(now);
        self.want(now);
    }

    /// Whether initiations go to every candidate (a session is being sought).
    pub fn wanted(&self) -> bool {
        self.want_until.is_some()
    }

    /// A retry that is due: [`Action::Initiate`] while the attempt lasts, else
    /// [`Action::GiveUp`] (the attempt is over). `None` if nothing is due.
    pub fn retry_due(&mut self, now: Instant) -> Option<Action> {
        if self.next_retry.is_none_or(|t| t > now) {
            return None;
        }
        self.next_retry = None;
        if self.want_until.is_some_and(|t| t > now) {
            Some(Action::Initiate)
        } else {
            self.want_until = None;
            self.attempt_since = None;
            Some(Action::GiveUp)
        }
    }

    /// The path decision for this peer (only with a connected relay): a peer that found no
    /// session for `relay_after` goes to the relay; a relayed one with direct candidates probes
    /// them every `probe_every`.
    pub fn path_due(&self, now: Instant, t: Timing, view: PathView) -> Option<Action> {
        if !view.dynamic {
            return None;
        }
        if view.on_relay {
            let due = self
                .last_probe
                .is_none_or(|p| now.duration_since(p) >= t.probe_every());
            (view.has_candidates && due).then_some(Action::Probe)
        } else {
            self.attempt_since
                .is_some_and(|s| now.duration_since(s) >= t.relay_after())
                .then_some(Action::ToRelay)
        }
    }

    /// The peer now points at the relay: a fresh attempt there, and the probe clock starts.
    pub fn moved_to_relay(&mut self, now: Instant) {
        self.attempt_since = Some(now);
        self.last_probe = Some(now);
        self.want(now);
    }

    /// A probe of the direct path was sent.
    pub fn probed(&mut self, now: Instant) {
        self.last_probe = Some(now);
    }

    /// An initiation is about to be built (`direct_only`: a probe, which is no attempt).
    pub fn initiating(&mut self, now: Instant, direct_only: bool) {
        if self.want_until.is_some() && self.attempt_since.is_none() && !direct_only {
            self.attempt_since = Some(now);
        }
    }

    /// No address to send to: look again after `rekey_timeout` (the peer may reach us first).
    pub fn nothing_to_send(&mut self, now: Instant, t: Timing) {
        self.next_retry = Some(now + t.rekey_timeout);
    }

    /// An initiation was sent: retry after `rekey_timeout` plus `jitter`.
    pub fn sent_initiation(&mut self, now: Instant, t: Timing, jitter: Duration) {
        self.last_init_sent = Some(now);
        self.next_retry = Some(now + t.rekey_timeout + jitter);
    }

    /// The dataplane asks for a handshake (rekey, or data for a peer without a session):
    /// wanted from now; initiate unless one was sent less than `rekey_timeout` ago and is
    /// still in flight.
    pub fn need_handshake(&mut self, now: Instant, t: Timing, in_flight: bool) -> bool {
        self.want(now);
        let due = self
            .last_init_sent
            .is_none_or(|s| now.duration_since(s) >= t.rekey_timeout);
        due || !in_flight
    }

    /// A handshake completed with `from` (`relayed`: through the relay; `ours`: a response to
    /// our initiation, which ends the attempt and its retries).
    pub fn established(&mut self, now: Instant, from: SocketAddr, relayed: bool, ours: bool) {
        self.attempt_since = None;
        if !relayed {
            self.direct = Some((from, now));
        }
        if ours {
            self.want_until = None;
            self.next_retry = None;
        }
    }

    /// The dataplane saw the peer roam to `to_relay`: `Some(direct)` if the roam is to be
    /// ignored (a direct path answered within `roam_grace`) and the peer kept on `direct`.
    pub fn keep_direct(&self, now: Instant, t: Timing, to_relay: bool) -> Option<SocketAddr> {
        match (to_relay, self.direct) {
            (true, Some((d, at))) if now.duration_since(at) < t.roam_grace() => Some(d),
            _ => None,
        }
    }

    /// When the node loop must next call [`PeerTimers::retry_due`].
    pub fn deadline(&self) -> Option<Instant> {
        self.next_retry
    }
}

#[cfg(test)]
#[path = "peer_timers_tests.rs"]
mod tests;
