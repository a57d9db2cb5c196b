//! Sans-IO core of a member's coordinator failover: which coordinator to ask next, when to
//! wait before asking again, and whether a netmap is applied.
//!
//! [`Coordinators`] is the list of coordinator API addresses a member knows (the command line,
//! then each netmap's coordinators) and the one in use; [`Feed`] is the netmap long poll's
//! state (what to ask, what was applied, how long to back off). Neither does I/O nor reads the
//! clock: `mesh.rs` (`CoordLink`, `member_feed`) owns the clients and the sockets, asks these
//! cores at each answer or error, and sleeps until the instants they return. The unit tests
//! below and the one-process simulation (`failover_sim.rs`: coordinators on the real tm-cluster
//! replicas, members on these cores, a virtual clock, partitions) drive them without a network.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tm_coord::tm_cluster::VersionVector;
use tm_coord::wire;

/// A netmap behind the last one applied is asked for again after this long.
pub const BEHIND_RETRY: Duration = Duration::from_millis(250);
/// First wait after every known coordinator failed in a row; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest wait between rounds over every known coordinator.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most coordinator addresses a member keeps to fail over to.
pub const MAX_COORDINATORS: usize = 32;

/// The coordinator addresses a member knows, in the order they are tried, and the one in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinators {
    /// (which coordinator, address): `None` for addresses from the command line not yet seen
    /// in a netmap.
    known: Vec<(Option<String>, String)>,
    cur: usize,
}

impl Coordinators {
    /// Starts with `first` in use, then `more` (the command line's other addresses).
    pub fn new(first: &str, more: &[String]) -> Coordinators {
        let mut known = vec![(None, first.to_owned())];
        for a in more {
            if !known.iter().any(|(_, k)| k == a) {
                known.push((None, a.clone()));
            }
        }
        Coordinators { known, cur: 0 }
    }

    /// The address in use (`CoordLink` keeps its client).
    #[cfg(test)]
    pub fn current(&self) -> &str {
        &self.known[self.cur].1
    }

    /// Every address known, in the order they are tried.
    pub fn known(&self) -> Vec<String> {
        self.known.iter().map(|(_, a)| a.clone()).collect()
    }

    /// Learns the coordinators a netmap names: `api` `HOST:PORT` as is, `:PORT` at each of the
    /// coordinator's endpoint hosts and at its mesh address.
    pub fn learn(&mut self, nm: &wire::Netmap) {
        for p in nm.peers.iter().filter(|p| p.is_coordinator) {
            let Some(api) = p.api.as_deref() else {
                continue;
            };
            let addrs: Vec<String> = match api.strip_prefix(':') {
                Some(port) => p
                    .endpoints
                    .iter()
                    .map(|e| e.ip())
                    .chain(std::iter::once(IpAddr::V4(p.mesh_ip)))
                    .map(|ip| SocketAddr::new(ip, port.parse().unwrap_or(0)).to_string())
                    .collect(),
                None => vec![api.to_owned()],
            };
            for a in addrs {
                if let Some(e) = self.known.iter_mut().find(|(_, k)| *k == a) {
                    e.0 = Some(p.name.clone());
                } else if self.known.len() < MAX_COORDINATORS {
                    self.known.push((Some(p.name.clone()), a));
                }
            }
        }
    }

    /// The coordinator in use failed: moves to the next known address (in order, wrapping)
    /// that belongs to another coordinator (its other addresses are as dead as the one
    /// tried); returns it, or `None` if there is no other.
    pub fn fail_over(&mut self) -> Option<String> {
        let n = self.known.len();
        if n < 2 {
            return None;
        }
        let failed = self.known[self.cur].0.clone();
        let next = (1..n)
            .map(|d| (self.cur + d) % n)
            .find(|i| failed.is_none() || self.known[*i].0 != failed)?;
        self.cur = next;
        Some(self.known[next].1.clone())
    }
}

/// What to do with a netmap a coordinator answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// New: apply it (and learn its coordinators).
    Apply,
    /// The version already applied: nothing to do, poll again.
    Unchanged,
    /// It has seen less than the last one applied (a lagging coordinator): not applied; ask
    /// again (without `since`) at this instant.
    Behind(Instant),
}

/// The member's netmap long poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    /// Version of the last netmap applied from the coordinator in use (versions are per
    /// coordinator: forgotten on an error).
    version: Option<u64>,
    /// Version vector of the last netmap applied: nothing behind it is ever applied.
    seen: Option<VersionVector>,
    /// Ask without `since` (answered at once) next: after an error or a netmap behind.
    resync: bool,
    failed_in_a_row: usize,
    backoff: Duration,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            version: None,
            seen: None,
            resync: false,
            failed_in_a_row: 0,
            backoff: BACKOFF_MIN,
        }
    }
}

impl Feed {
    /// Starts from a netmap already applied (the one saved at join or by the last run).
    pub fn start(&mut self, nm: &wire::Netmap) {
        self.version = Some(nm.version);
        self.seen = nm.vv.clone();
    }

    /// The `since` of the next poll: `None` asks for the current netmap at once.
    pub fn since(&self) -> Option<u64> {
        if self.resync {
            None
        } else {
            self.version
        }
    }

    /// The version vector of the last netmap applied: sent with every poll, so that a
    /// coordinator that has not seen as much holds the poll until it has.
    pub fn seen(&self) -> Option<&VersionVector> {
        self.seen.as_ref()
    }

    /// A coordinator answered `nm` at `now`.
    pub fn on_netmap(&mut self, now: Instant, nm: &wire::Netmap) -> Verdict {
        self.failed_in_a_row = 0;
        self.backoff = BACKOFF_MIN;
        let behind = match (&self.seen, &nm.vv) {
            (Some(s), Some(v)) => !v.dominates(s),
            _ => false,
        };
        if behind {
            self.resync = true;
            return Verdict::Behind(now + BEHIND_RETRY);
        }
        self.resync = false;
        if Some(nm.version) == self.version {
            return Verdict::Unchanged;
        }
        self.version = Some(nm.version);
        if let Some(v) = &nm.vv {
            self.seen = Some(v.clone());
        }
        Verdict::Apply
    }

    /// The poll failed at `now` (connect timeout, refused, reset, bad answer); `moved`: the
    /// [`Coordinators`] had another one to move to; `known`: how many addresses it knows.
    /// Returns when to poll next: at once while untried coordinators remain, else after a
    /// backoff that doubles up to [`BACKOFF_MAX`].
    pub fn on_error(&mut self, now: Instant, moved: bool, known: usize) -> Instant {
        self.resync = true;
        // Versions are per coordinator: the next one's first answer is applied (if it has
        // seen at least as much).
        self.version = None;
        self.failed_in_a_row += 1;
        if !moved || self.failed_in_a_row >= known {
            let wait = self.backoff;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            self.failed_in_a_row = 0;
            now + wait
        } else {
            now
        }
    }
}

#[cfg(test)]
#[path = "failover_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "failover_sim.rs"]
mod sim;
