//! One process, one virtual clock: N coordinators, each the real tm-cluster replica
//! (`Replica`: pushes, anti-entropy, version vectors), and M members, each the real failover
//! cores ([`Coordinators`], [`Feed`]) with the netmap long poll `member_feed` runs around them.
//! Faked, because it cannot run in-process on a virtual clock: the coordinators' HTTPS API
//! (a poll is answered after 10 ms; a poll carrying a version vector the coordinator has not
//! seen is held until it has, or fails `lagging` after the 25 s long-poll limit; with `since`,
//! when the coordinator's version differs or after that limit) and the network (coordinator messages take 5-24 ms; a
//! partition drops them, makes new connects time out after `CONNECT_TIMEOUT` and an open
//! poll fail once TCP keepalive gives up, `DEAD_CONNECTION_AFTER` after the cut, as a
//! blackhole route does).
//!
//! Checked: every netmap a member applies has a version vector that dominates the one before
//! (its view never goes back), also when it fails over to a coordinator that has not yet seen
//! writes it applied (whose poll is held: no member is ever offered a netmap behind its own,
//! so the member-side check is never needed, and it applies at once when the coordinator
//! catches up); a member's coordinator partitioned away is left; a member connecting to a
//! dead coordinator moves to another within 5 s; after the heal every coordinator and every
//! member converge on the same records.

use super::*;
use tm_coord::tm_cluster::{Clock, Effects, Msg, Origin, Replica, Store};
use tm_coord::{CONNECT_TIMEOUT, DEAD_CONNECTION_AFTER};

const STEP_MS: u64 = 5;
const RTT_MS: u64 = 10;
const LONG_POLL_MS: u64 = 25_000;
/// An open connection to a coordinator that stopped answering fails this long after the cut
/// (TCP keepalive, `tm_coord::DEAD_CONNECTION_AFTER`).
const DEAD_MS: u64 = DEAD_CONNECTION_AFTER.as_millis() as u64;
const CONNECT_MS: u64 = CONNECT_TIMEOUT.as_millis() as u64;
/// Physical time (ms) of the virtual clock's zero.
const EPOCH_MS: u64 = 1_000_000;

fn addr_of(j: usize) -> String {
    format!("192.0.2.{}:8443", j + 1)
}

/// Which coordinator an address (endpoint host or mesh address) belongs to.
fn coord_of(addr: &str) -> usize {
    let host = addr.split(':').next().unwrap();
    let last: usize = host.rsplit('.').next().unwrap().parse().unwrap();
    last - 1
}

enum Poll {
    /// Poll again at this time (ms).
    Idle(u64),
    Open {
        to: usize,
        since: Option<u64>,
        /// The vector the poll carries (the member's last applied).
        held: Option<VersionVector>,
        started: u64,
        /// `Some(t)`: the connect failed or the answer was lost; the client errors at `t`.
        fails_at: Option<u64>,
    },
}

struct Member {
    coords: Coordinators,
    feed: Feed,
    poll: Poll,
    /// Every netmap applied: (ms, version, vector, node records).
    applied: Vec<(u64, u64, VersionVector, Vec<String>)>,
    /// Every failed poll: (ms, coordinator).
    failures: Vec<(u64, usize)>,
    /// Netmaps answered that were behind the last one applied (`Verdict::Behind`).
    behind: usize,
}

struct Sim {
    now: u64,
    t0: Instant,
    coords: Vec<Replica>,
    members: Vec<Member>,
    /// (deliver at, from, to, message).
    wire: Vec<(u64, usize, usize, Msg)>,
    /// Partition side of each coordinator and member (`None`: no partition).
    coord_side: Vec<u8>,
    member_side: Vec<u8>,
    seq: u64,
    /// Polls answered `lagging` (held to the limit).
    lagging: usize,
}

impl Sim {
    fn new(n: usize, m: usize) -> Sim {
        let origins: Vec<Origin> = (1..=n as u64).map(Origin).collect();
        let mut s = Sim {
            now: 0,
            t0: Instant::now(),
            coords: origins
                .iter()
                .map(|o| Replica::new(Clock::new(*o, 60_000), Store::new(), &origins, 1_000))
                .collect(),
            members: Vec::new(),
            wire: Vec::new(),
            coord_side: vec![0; n],
            member_side: vec![0; m],
            seq: 0,
            lagging: 0,
        };
        for j in 0..n {
            let v = serde_json::json!({"coordinator": true});
            s.write(j, &format!("node/c{j}"), v);
        }
        s.run_until(3_000, false);
        // Member k registers at coordinator k % n and starts from the netmap it answered.
        for k in 0..m {
            let j = k % n;
            s.write(
                j,
                &format!("node/m{k}"),
                serde_json::json!({"coordinator": false}),
            );
            let nm = s.netmap(j);
            let mut coords = Coordinators::new(&addr_of(j), &[]);
            let mut feed = Feed::default();
            feed.start(&nm);
            coords.learn(&nm);
            let recs = names(&nm);
            s.members.push(Member {
                coords,
                feed,
                poll: Poll::Idle(s.now),
                applied: vec![(s.now, nm.version, nm.vv.clone().unwrap(), recs)],
                failures: Vec::new(),
                behind: 0,
            });
        }
        s
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn reachable(&self, member: usize, coord: usize) -> bool {
        self.member_side[member] == self.coord_side[coord]
    }

    fn write(&mut self, j: usize, key: &str, value: serde_json::Value) {
        let fx = self.coords[j].write(EPOCH_MS + self.now, key, Some(value));
        self.send(j, fx);
    }

    fn send(&mut self, from: usize, fx: Effects) {
        for out in fx.send {
            let to = (out.to.0 - 1) as usize;
            self.seq += 1;
            let at = self.now + 5 + self.seq % 20;
            self.wire.push((at, from, to, out.msg));
        }
    }

    /// Coordinator `j`'s netmap: every live `node/` record (and, as DNS aliases, every `ep/`
    /// record), its vector, and a version that grows with it.
    fn netmap(&self, j: usize) -> wire::Netmap {
        let store = self.coords[j].store();
        let v = store.version_vector().clone();
        let peers: Vec<serde_json::Value> = store
            .live_with_prefix("node/")
            .map(|r| {
                let name = r.key.trim_start_matches("node/");
                let coord = r.value.as_ref().unwrap()["coordinator"] == true;
                let (ip, host) = match name.strip_prefix('c') {
                    Some(i) if coord => {
                        let i: usize = i.parse().unwrap();
                        (format!("100.64.0.{}", i + 1), format!("192.0.2.{}", i + 1))
                    }
                    _ => ("100.64.1.1".to_owned(), "198.51.100.1".to_owned()),
                };
                serde_json::json!({"name": name,
                    "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                    "mesh_ip": ip, "endpoints": [format!("{host}:51820")],
                    "is_coordinator": coord, "api": if coord { Some(":8443") } else { None }})
            })
            .collect();
        let mut nm: wire::Netmap = serde_json::from_value(serde_json::json!({
            "version": v.sum(), "peers": peers,
            "dns": {"domain": "mesh", "aliases": {}}
        }))
        .unwrap();
        nm.dns.aliases = store
            .live_with_prefix("ep/")
            .map(|r| (r.key.clone(), r.value.as_ref().unwrap().to_string()))
            .collect();
        nm.vv = Some(v);
        nm
    }

    fn step_coordinators(&mut self) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire)
            .into_iter()
            .partition(|(at, ..)| *at <= self.now);
        self.wire = later;
        for (_, from, to, msg) in due {
            if self.coord_side[from] != self.coord_side[to] {
                continue;
            }
            let fx = self.coords[to]
                .handle(EPOCH_MS + self.now, Origin(from as u64 + 1), msg)
                .expect("same clock: never refused");
            self.send(to, fx);
        }
        for j in 0..self.coords.len() {
            let fx = self.coords[j].tick(EPOCH_MS + self.now);
            self.send(j, fx);
        }
    }

    fn step_member(&mut self, k: usize) {
        let now = self.now;
        match self.members[k].poll {
            Poll::Idle(at) if at <= now => {
                let to = coord_of(self.members[k].coords.current());
                let since = self.members[k].feed.since();
                let held = self.members[k].feed.seen().cloned();
                let fails_at = (!self.reachable(k, to)).then_some(now + CONNECT_MS);
                self.members[k].poll = Poll::Open {
                    to,
                    since,
                    held,
                    started: now,
                    fails_at,
                };
            }
            Poll::Idle(_) => {}
            Poll::Open {
                to,
                since,
                ref held,
                started,
                fails_at,
            } => {
                if let Some(t) = fails_at {
                    if now >= t {
                        self.fail(k, to);
                    }
                    return;
                }
                if !self.reachable(k, to) {
                    // The connection is up but the answer will never come: keepalive probes
                    // go unanswered from now on.
                    self.members[k].poll = Poll::Open {
                        to,
                        since,
                        held: held.clone(),
                        started,
                        fails_at: Some(now + DEAD_MS),
                    };
                    return;
                }
                if now < started + RTT_MS {
                    return;
                }
                let lagging = held
                    .as_ref()
                    .is_some_and(|h| !self.coords[to].store().version_vector().dominates(h));
                if lagging {
                    // Held until it catches up; after the limit, 503 `lagging`: the member
                    // tries another coordinator (the same path as any failed poll).
                    if now >= started + LONG_POLL_MS {
                        self.lagging += 1;
                        self.fail(k, to);
                    }
                    return;
                }
                let version = self.coords[to].store().version_vector().sum();
                let answer = match since {
                    None => true,
                    Some(v) => version != v || now >= started + LONG_POLL_MS,
                };
                if answer {
                    let nm = self.netmap(to);
                    self.answer(k, nm);
                }
            }
        }
    }

    fn fail(&mut self, k: usize, to: usize) {
        let now = self.now;
        let at = self.at(now);
        let m = &mut self.members[k];
        m.failures.push((now, to));
        let next = m.coords.fail_over();
        let again = m.feed.on_error(at, next.is_some(), m.coords.known().len());
        m.poll = Poll::Idle((again - self.t0).as_millis() as u64);
    }

    fn answer(&mut self, k: usize, nm: wire::Netmap) {
        let now = self.now;
        let at = self.at(now);
        let m = &mut self.members[k];
        match m.feed.on_netmap(at, &nm) {
            Verdict::Behind(again) => {
                m.behind += 1;
                m.poll = Poll::Idle((again - self.t0).as_millis() as u64);
            }
            Verdict::Unchanged => m.poll = Poll::Idle(now),
            Verdict::Apply => {
                let v = nm.vv.clone().unwrap();
                let (_, last_version, last, _) = m.applied.last().unwrap();
                assert!(
                    v.dominates(last),
                    "member m{k} at {now} ms applied {v:?} after {last:?}"
                );
                assert!(
                    nm.version >= *last_version,
                    "member m{k}: version went back"
                );
                m.coords.learn(&nm);
                m.applied.push((now, nm.version, v, names(&nm)));
                m.poll = Poll::Idle(now);
            }
        }
    }

    /// Runs to `until` ms; with `writes`, every 250 ms one member (in turn) updates its
    /// endpoint at the coordinator it polls, if it reaches it.
    fn run_until(&mut self, until: u64, writes: bool) {
        while self.now < until {
            self.now += STEP_MS;
            self.step_coordinators();
            for k in 0..self.members.len() {
                self.step_member(k);
            }
            if writes && self.now.is_multiple_of(250) && !self.members.is_empty() {
                let k = (self.now / 250) as usize % self.members.len();
                let j = coord_of(self.members[k].coords.current());
                if self.reachable(k, j) {
                    self.write(j, &format!("ep/m{k}"), serde_json::json!(self.now));
                }
            }
        }
    }

    /// The coordinator each member polls now.
    fn polling(&self, k: usize) -> usize {
        coord_of(self.members[k].coords.current())
    }
}

/// The records a netmap shows (nodes and endpoint updates), to compare views.
fn names(nm: &wire::Netmap) -> Vec<String> {
    let mut v: Vec<String> = nm.peers.iter().map(|p| p.name.clone()).collect();
    v.extend(nm.dns.aliases.iter().map(|(k, x)| format!("{k}={x}")));
    v
}

#[test]
fn partitions_failover_and_heal_on_a_virtual_clock() {
    let (n, m) = (3, 6);
    let mut s = Sim::new(n, m);
    s.run_until(20_000, true);
    for (k, mem) in s.members.iter().enumerate() {
        // Each learned every coordinator (two addresses each) from its netmaps.
        assert_eq!(
            mem.coords.known().len(),
            2 * n,
            "m{k}: {:?}",
            mem.coords.known()
        );
        assert!(mem.failures.is_empty(), "m{k} failed with no partition");
        assert_eq!(s.polling(k), k % n);
    }

    // A quiet moment first (no write in flight), so what follows does not depend on a push
    // lost at the cut.
    s.run_until(s.now + 2_000, false);
    // 1. c0 and m0 are cut off from the rest: m3 (which polls c0) fails over when its open
    //    poll times out; m0 keeps c0 and keeps writing there (c1, c2 do not see it).
    s.coord_side = vec![1, 0, 0];
    s.member_side = vec![1, 0, 0, 0, 0, 0];
    let cut = s.now;
    s.run_until(70_000, true);
    let moved = s.members[3].failures.first().expect("m3 failed over").0;
    assert!(moved <= cut + DEAD_MS + STEP_MS, "{moved}");
    assert_ne!(s.polling(3), 0);
    assert!(
        s.members[3].applied.last().unwrap().0 > moved,
        "m3 follows c1/c2"
    );
    let follows = s.members[3]
        .applied
        .iter()
        .find(|a| a.0 > cut)
        .expect("applied")
        .0;
    assert!(
        follows - cut <= 5_000,
        "m3 follows after {} ms",
        follows - cut
    );
    assert!(s.members[0].failures.is_empty(), "m0 still reaches c0");
    let m0_last = s.members[0].applied.last().unwrap().2.clone();
    let c1_vv = s.coords[1].store().version_vector().clone();
    assert!(
        !c1_vv.dominates(&m0_last),
        "c0 took writes c1 has not seen (the test needs them)"
    );

    // 2. m0 loses c0 too: it fails over to c1/c2, which are behind what it applied: they hold
    //    its polls (answering `lagging` after the limit), so it applies nothing (its view
    //    never goes back) until the heal.
    s.member_side[0] = 0;
    let lost = s.now;
    s.run_until(120_000, true);
    let m0 = &s.members[0];
    assert!(m0.failures.iter().any(|(t, c)| *t > lost && *c == 0));
    assert_ne!(s.polling(0), 0);
    assert_eq!(
        m0.applied.last().unwrap().2,
        m0_last,
        "m0 applied a netmap that had not seen its last one"
    );
    assert!(s.lagging >= 1, "no poll of m0 was held to the limit");

    // 3. Heal: c0's writes reach c1 and c2, and m0 moves on.
    s.coord_side = vec![0; n];
    let healed = s.now;
    s.run_until(140_000, true);
    let m0 = &s.members[0];
    let (t, ..) = m0
        .applied
        .iter()
        .find(|a| a.0 > healed)
        .expect("m0 applies again");
    // Its held poll is answered as soon as its coordinator catches up (anti-entropy every
    // second), not at the next retry.
    assert!(
        *t - healed <= 3_000,
        "m0 applied {} ms after the heal",
        *t - healed
    );
    assert!(m0.applied.last().unwrap().2.dominates(&m0_last));

    s.run_until(s.now + 2_000, false);
    // 4. c2's host disappears (blackholed) and m2, which joined at c2, restarts: its first
    //    connect times out after 3 s and it is following another coordinator within 5 s.
    s.coord_side[2] = 1;
    let restart = s.now;
    let saved = {
        let m2 = &s.members[2];
        let mut f = Feed::default();
        let last = m2.applied.last().unwrap();
        f.start(&netmap_like(last.1, &last.2));
        f
    };
    let mut fresh = Coordinators::new(&addr_of(2), &[]);
    fresh.learn(&s.netmap(2));
    s.members[2].coords = fresh;
    s.members[2].feed = saved;
    s.members[2].poll = Poll::Idle(restart);
    s.run_until(restart + 6_000, true);
    let m2 = &s.members[2];
    let failed = m2.failures.iter().find(|(t, _)| *t >= restart).unwrap().0;
    assert_eq!(failed, restart + STEP_MS + CONNECT_MS, "connect timeout");
    let back = m2
        .applied
        .iter()
        .find(|a| a.0 > restart)
        .expect("applied")
        .0;
    assert!(back - restart <= 5_000, "moved after {} ms", back - restart);
    assert_ne!(s.polling(2), 2);
    // m5 (open poll at c2) leaves once keepalive gives up, plus a connect.
    s.run_until(restart + DEAD_MS + CONNECT_MS + 1_000, true);
    assert_ne!(s.polling(5), 2, "m5 left the dead c2");

    // 5. Everything heals; writes stop; everyone converges on the same records.
    s.coord_side = vec![0; n];
    let end = s.now + 20_000;
    s.run_until(end, false);
    let want = s.coords[0].store().version_vector().clone();
    for j in 1..n {
        assert_eq!(s.coords[j].store().version_vector(), &want, "c{j}");
        assert_eq!(s.coords[j].store().root(), s.coords[0].store().root());
    }
    let want_view = names(&s.netmap(0));
    assert!(want_view.iter().any(|x| x.starts_with("ep/m0=")));
    for (k, mem) in s.members.iter().enumerate() {
        let (_, _, v, view) = mem.applied.last().unwrap();
        assert_eq!(v, &want, "m{k} converged");
        assert_eq!(view, &want_view, "m{k} sees every record");
        // Never backwards, over the whole run; never even offered a netmap behind.
        for w in mem.applied.windows(2) {
            assert!(w[1].2.dominates(&w[0].2), "m{k}");
        }
        assert_eq!(mem.behind, 0, "m{k} was answered a netmap behind its own");
    }
}

/// A netmap with only a version and a vector (what a restarted member's feed starts from).
fn netmap_like(version: u64, v: &VersionVector) -> wire::Netmap {
    super::tests::netmap(version, Some(v.clone()), &[])
}
