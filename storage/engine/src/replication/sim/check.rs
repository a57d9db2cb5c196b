//! The checker of a simulated history, after heal and quiesce.
//!
//! 1. Owners converge: every owner of a key holds the same versions.
//! 2. Every acknowledged PUT or DELETE is held by every owner of its key (as the current or a
//!    non-current version), a PUT with its exact payload.
//! 3. No acknowledged operation is undone: the current version of a key is never one whose
//!    operation had answered before some acknowledged write of that key started (so an
//!    acknowledged DELETE never comes back, and an acknowledged PUT is never hidden behind an
//!    older one).
//! 4. Consistent mode: read-after-write: a successful read sees every write of its key
//!    acknowledged before it started, and none of them dominates the version it returns.
//! 5. Every coordinator's read of every key, after quiesce, names the same current version.

use super::{Kind, World, N};
use crate::replication::vv::{Causality, Dot, Version};
use crate::replication::Mode;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Counts of a run, and the anomalies found.
#[derive(Debug, Default)]
pub struct Report {
    pub ops: usize,
    pub acked_writes: usize,
    pub failed: usize,
    pub unanswered: usize,
    pub reads_ok: usize,
    pub faults: usize,
    pub dropped: usize,
    pub delivered: usize,
    pub anomalies: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ops {} (acked writes {}, ok reads {}, failed {}, unanswered {}), faults injected {}, \
             messages delivered {} dropped {}, anomalies {}",
            self.ops,
            self.acked_writes,
            self.reads_ok,
            self.failed,
            self.unanswered,
            self.faults,
            self.delivered,
            self.dropped,
            self.anomalies.len()
        )
    }
}

/// Checks the history of a finished run (see the module documentation).
pub fn check(w: &mut World) -> Report {
    let mut r = Report {
        ops: w.history.len(),
        faults: w.faults,
        dropped: w.dropped,
        delivered: w.delivered,
        ..Report::default()
    };
    for o in &w.history {
        match (o.response, o.ok, &o.kind) {
            (None, _, _) => r.unanswered += 1,
            (Some(_), false, _) => r.failed += 1,
            (Some(_), true, Kind::Get) => r.reads_ok += 1,
            (Some(_), true, _) => r.acked_writes += 1,
        }
    }
    let mut all: BTreeMap<Dot, Version> = BTreeMap::new();
    let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
    for n in &w.nodes {
        for (k, s) in &n.store {
            keys.insert(k.clone());
            for v in s.iter() {
                all.insert(v.dot, v.clone());
            }
        }
    }
    let op_of: BTreeMap<Dot, usize> = w
        .history
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.dot.map(|d| (d, i)))
        .collect();

    // 1. Convergence.
    for k in &keys {
        let owners = w.owners(k);
        let sets: Vec<_> = owners
            .iter()
            .map(|o| {
                w.nodes[o.0 as usize - 1]
                    .store
                    .get(k)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        if sets.windows(2).any(|p| p[0] != p[1]) {
            r.anomalies
                .push(format!("owners of {} differ after quiesce", show(k)));
        }
    }

    // 2. Acknowledged writes survive, with their payloads.
    for o in w.history.iter().filter(|o| o.ok && o.kind != Kind::Get) {
        let dot = o.dot.unwrap();
        for owner in w.owners(&o.key) {
            let n = &w.nodes[owner.0 as usize - 1];
            if !n.store.get(&o.key).is_some_and(|s| s.contains(dot)) {
                r.anomalies.push(format!(
                    "acked {:?} of {} ({}) missing on owner {}",
                    o.kind,
                    show(&o.key),
                    dot.version_id(),
                    owner.0
                ));
            } else if let Kind::Put(p) = o.kind {
                if n.payloads.get(&dot) != Some(&p) {
                    r.anomalies.push(format!(
                        "acked PUT {} of {}: wrong payload on owner {}",
                        dot.version_id(),
                        show(&o.key),
                        owner.0
                    ));
                }
            }
        }
    }

    // 3. Nothing acknowledged is undone.
    for k in &keys {
        let owner = w.owners(k)[0];
        let Some(cur) = w.nodes[owner.0 as usize - 1]
            .store
            .get(k)
            .and_then(|s| s.resolve().current)
        else {
            continue;
        };
        // A failed write's outcome is unknown (it may take effect at any later time): only an
        // acknowledged one has answered.
        let answered = op_of
            .get(&cur)
            .filter(|&&i| w.history[i].ok)
            .and_then(|&i| w.history[i].response)
            .unwrap_or(u64::MAX);
        for o in w
            .history
            .iter()
            .filter(|o| o.ok && o.kind != Kind::Get && &o.key == k)
        {
            if o.invoke > answered {
                r.anomalies.push(format!(
                    "{}: current version {} answered at {answered} ms, yet an acked {:?} started at {} ms",
                    show(k),
                    cur.version_id(),
                    o.kind,
                    o.invoke
                ));
            }
        }
    }

    // 4. Read-after-write (consistent mode).
    if w.p.mode == Mode::Consistent {
        for rd in w.history.iter().filter(|o| o.ok && o.kind == Kind::Get) {
            let (seen, cur) = rd.seen.as_ref().unwrap();
            for o in w
                .history
                .iter()
                .filter(|o| o.ok && o.kind != Kind::Get && o.key == rd.key)
            {
                if o.response.unwrap() >= rd.invoke {
                    continue;
                }
                let dot = o.dot.unwrap();
                // The current version must not be one this write overwrote (under skewed
                // clocks a version that overwrote it may rank lower; a concurrent winner of
                // that one may then be current: still not stale).
                let o_v = &all[&dot];
                let rank_ok = cur
                    .and_then(|c| all.get(&c))
                    .is_some_and(|c| o_v.compare(c) != Causality::Dominates);
                if !seen.contains(&dot) || !rank_ok {
                    r.anomalies.push(format!(
                        "read of {} at {} ms missed the {:?} acked at {} ms",
                        show(&rd.key),
                        rd.invoke,
                        o.kind,
                        o.response.unwrap()
                    ));
                }
            }
        }
    }

    // 5. Every coordinator answers the same.
    for k in &keys {
        // None: the read failed (it must not, with everything up).
        let answers: Vec<Option<Option<Dot>>> =
            (0..N).map(|i| w.final_read(i, k).map(|(_, c)| c)).collect();
        if answers.iter().any(|a| a.is_none()) || answers.windows(2).any(|p| p[0] != p[1]) {
            r.anomalies
                .push(format!("coordinators disagree on {}: {answers:?}", show(k)));
        }
    }
    r
}

fn show(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}
