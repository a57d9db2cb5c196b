//! Many coordinators in one process on a virtual clock: messages are delayed, reordered and
//! lost, the cluster is partitioned while both sides take writes (including nodes with the
//! same name and address), then healed. After anti-entropy every replica must hold the same
//! records, every key must hold the latest write made to it anywhere (nothing acknowledged is
//! lost except by being overwritten by a later write), and the resolved view of node names and
//! addresses must be the same everywhere and unique.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::Ipv4Addr;

use serde_json::json;
use tm_cluster::{
    resolve, Clock, Msg, Origin, Range, Record, Registration, Replica, Stamp, SyncError,
};

/// xorshift64*: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

const RANGE: Range = Range {
    base: Ipv4Addr::new(100, 64, 0, 0),
    len: 24,
};

/// A message in flight: (deliver at, sequence, from, to, JSON text).
type InFlight = Reverse<(u64, u64, usize, usize, String)>;

struct Sim {
    rng: Rng,
    now: u64,
    nodes: Vec<Replica>,
    /// Per coordinator: its physical clock's offset from true time (ms).
    offset: Vec<u64>,
    queue: BinaryHeap<InFlight>,
    seq: u64,
    /// Which side of a partition each coordinator is on (None: no partition).
    side: Option<Vec<u8>>,
    loss_pct: u64,
    /// Every write made: key -> (stamp, value).
    writes: Vec<Record>,
    refused: Vec<SyncError>,
}

impl Sim {
    fn new(seed: u64, n: usize, sync_every_ms: u64) -> Sim {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let origins: Vec<Origin> = (1..=n as u64).map(Origin).collect();
        let offset = (0..n).map(|_| rng.below(2_000)).collect();
        let nodes = origins
            .iter()
            .map(|o| {
                Replica::new(
                    Clock::new(*o, 60_000),
                    Default::default(),
                    &origins,
                    sync_every_ms,
                )
            })
            .collect();
        Sim {
            rng,
            now: 1_000_000,
            nodes,
            offset,
            queue: BinaryHeap::new(),
            seq: 0,
            side: None,
            loss_pct: 10,
            writes: Vec::new(),
            refused: Vec::new(),
        }
    }

    fn phys(&self, i: usize) -> u64 {
        self.now + self.offset[i]
    }

    fn send(&mut self, from: usize, fx: tm_cluster::Effects) {
        for out in fx.send {
            let to = (out.to.0 - 1) as usize;
            let cut = self.side.as_ref().is_some_and(|s| s[from] != s[to]);
            if cut || self.rng.chance(self.loss_pct) {
                continue;
            }
            let at = self.now + 1 + self.rng.below(40);
            self.seq += 1;
            // Through the wire format, as the transport will carry it.
            let text = serde_json::to_string(&out.msg).unwrap();
            self.queue.push(Reverse((at, self.seq, from, to, text)));
        }
    }

    fn write(&mut self, i: usize, key: String, value: Option<serde_json::Value>) {
        let p = self.phys(i);
        let fx = self.nodes[i].write(p, &key, value);
        assert_eq!(fx.changed.len(), 1, "a local write always applies");
        self.writes.push(fx.changed[0].clone());
        self.send(i, fx);
    }

    /// Runs until `until`, with a random write every ~`write_every` ms if `writes`.
    fn run(&mut self, until: u64, write_every: Option<u64>) {
        let mut next_write = self.now;
        let mut node_no = self.writes.len();
        while self.now < until {
            self.now += 1;
            while let Some(Reverse((at, ..))) = self.queue.peek() {
                if *at > self.now {
                    break;
                }
                let Reverse((_, _, from, to, text)) = self.queue.pop().unwrap();
                let msg: Msg = serde_json::from_str(&text).unwrap();
                let p = self.phys(to);
                match self.nodes[to].handle(p, Origin(from as u64 + 1), msg) {
                    Ok(fx) => self.send(to, fx),
                    Err(e) => self.refused.push(e),
                }
            }
            for i in 0..self.nodes.len() {
                let p = self.phys(i);
                let fx = self.nodes[i].tick(p);
                self.send(i, fx);
            }
            if let Some(every) = write_every {
                if self.now >= next_write {
                    next_write = self.now + 1 + self.rng.below(2 * every);
                    let i = self.rng.below(self.nodes.len() as u64) as usize;
                    match self.rng.below(4) {
                        0 => {
                            // A node registration: few names and addresses, so they collide.
                            node_no += 1;
                            let name = ["web", "db", "api"][self.rng.below(3) as usize];
                            let ip = 1 + self.rng.below(4);
                            self.write(
                                i,
                                format!("node/key{node_no}"),
                                Some(json!({"name": name, "addr": format!("100.64.0.{ip}")})),
                            );
                        }
                        1 => {
                            let k = self.rng.below(8);
                            self.write(i, format!("token/t{k}"), None);
                        }
                        _ => {
                            let k = self.rng.below(8);
                            let v = self.rng.next();
                            self.write(i, format!("token/t{k}"), Some(json!(v)));
                        }
                    }
                }
            }
        }
    }

    fn view(r: &Replica) -> Vec<tm_cluster::Resolved> {
        let regs: Vec<Registration> = r
            .store()
            .live_with_prefix("node/")
            .map(|rec| {
                let v = rec.value.as_ref().unwrap();
                Registration {
                    key: rec.key.clone(),
                    name: v["name"].as_str().unwrap().to_owned(),
                    addr: v["addr"].as_str().unwrap().parse().unwrap(),
                    registered: rec.stamp,
                }
            })
            .collect();
        resolve(&regs, RANGE)
    }

    fn check_converged(&self, what: &str) {
        let first = self.nodes[0].store();
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            assert_eq!(
                n.store().root(),
                first.root(),
                "{what}: coordinator {i}'s digest"
            );
            assert!(n.store() == first, "{what}: coordinator {i}'s records");
            assert_eq!(n.store().version_vector(), first.version_vector());
        }
        // The latest write to each key is what every replica holds.
        let mut latest: BTreeMap<&str, &Record> = BTreeMap::new();
        for w in &self.writes {
            let e = latest.entry(&w.key).or_insert(w);
            if w.stamp > e.stamp {
                *e = w;
            }
        }
        assert_eq!(
            first.len(),
            latest.len(),
            "{what}: a key is missing or extra"
        );
        for (k, w) in latest {
            assert_eq!(first.get(k), Some(w), "{what}: {k} is not its latest write");
        }
        let view = Self::view(&self.nodes[0]);
        for n in &self.nodes[1..] {
            assert_eq!(Self::view(n), view, "{what}: views differ");
        }
        let names: BTreeSet<_> = view.iter().map(|r| &r.name).collect();
        let addrs: BTreeSet<_> = view.iter().map(|r| r.addr).collect();
        assert_eq!(names.len(), view.len(), "{what}: names not unique");
        assert_eq!(addrs.len(), view.len(), "{what}: addresses not unique");
    }
}

#[test]
fn lossy_reordering_network_converges_after_the_writes_stop() {
    for seed in 0..40 {
        let mut s = Sim::new(seed, 3 + (seed % 3) as usize, 50);
        s.run(1_005_000, Some(20));
        s.run(1_010_000, None);
        s.check_converged(&format!("seed {seed}"));
        assert!(s.refused.is_empty(), "seed {seed}: {:?}", s.refused);
    }
}

#[test]
fn partitioned_sides_take_conflicting_writes_and_converge_after_the_heal() {
    let mut renamed = 0;
    for seed in 100..130 {
        let n = 2 + (seed % 4) as usize;
        let mut s = Sim::new(seed, n, 50);
        s.run(1_001_000, Some(20));
        // Split: the first half against the rest.
        s.side = Some((0..n).map(|i| u8::from(i >= n / 2)).collect());
        s.run(1_006_000, Some(10));
        // The sides really diverged.
        assert_ne!(
            s.nodes[0].store().root(),
            s.nodes[n - 1].store().root(),
            "seed {seed}: the partition did not separate anything"
        );
        s.side = None;
        s.run(1_016_000, None);
        s.check_converged(&format!("seed {seed}"));
        renamed += Sim::view(&s.nodes[0])
            .iter()
            .filter(|r| r.renamed_from.is_some())
            .count();
    }
    assert!(renamed > 0, "the workload never made a name conflict");
}

#[test]
fn a_coordinator_with_a_clock_ten_minutes_ahead_is_refused_and_corrupts_nothing() {
    let mut s = Sim::new(7, 3, 50);
    s.loss_pct = 0;
    s.offset[2] = 600_000;
    s.write(0, "token/a".into(), Some(json!(1)));
    s.write(2, "token/a".into(), Some(json!("from the future")));
    s.run(1_002_000, None);
    // Coordinators 0 and 1 refused everything of 2 and still agree with each other.
    assert!(!s.refused.is_empty());
    let skew = s
        .refused
        .iter()
        .find_map(|e| match e {
            SyncError::Skew(k) => Some(k.to_string()),
            _ => None,
        })
        .expect("a skew refusal");
    assert!(skew.contains("600") && skew.contains("NTP"), "{skew}");
    for i in 0..2 {
        let r = s.nodes[i].store().get("token/a").unwrap();
        assert_eq!(r.value, Some(json!(1)), "coordinator {i}");
        assert!(s.nodes[i].peers()[&Origin(3)].last_error.is_some());
    }
    assert_eq!(s.nodes[0].store().root(), s.nodes[1].store().root());
    // Coordinator 2 may take the others' records (they are behind it, not ahead).
    let ahead: Stamp = s.nodes[2].store().get("token/a").unwrap().stamp;
    assert_eq!(ahead.origin, Origin(3));
}

#[test]
fn unknown_senders_and_malformed_records_are_refused_whole() {
    let mut r = Replica::new(
        Clock::new(Origin(1), 60_000),
        Default::default(),
        &[Origin(1), Origin(2)],
        50,
    );
    let good = Record {
        key: "token/x".into(),
        stamp: Stamp {
            wall_ms: 10,
            logical: 0,
            origin: Origin(2),
        },
        value: Some(json!(1)),
    };
    let bad = Record {
        key: "k".repeat(600),
        ..good.clone()
    };
    let e = r
        .handle(
            10,
            Origin(9),
            Msg::Push {
                records: vec![good.clone()],
            },
        )
        .unwrap_err();
    assert_eq!(e, SyncError::UnknownPeer(Origin(9)));
    let e = r
        .handle(
            10,
            Origin(2),
            Msg::Push {
                records: vec![good.clone(), bad],
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("600 bytes"), "{e}");
    assert!(
        r.store().is_empty(),
        "nothing of a refused message is applied"
    );
    let fx = r
        .handle(
            10,
            Origin(2),
            Msg::Push {
                records: vec![good],
            },
        )
        .unwrap();
    assert_eq!(fx.changed.len(), 1);
}
