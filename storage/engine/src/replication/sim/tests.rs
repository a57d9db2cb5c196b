//! The simulation scenarios: one seed range per scenario, counts printed
//! (`cargo nextest run -p tm-storage sim --no-capture` shows them). Longer runs by hand:
//! `TM_SIM_SEEDS=500 cargo nextest run --cargo-profile ci -p tm-storage sim`.

use super::{check, Kind, Params, World};
use crate::replication::Mode;

fn seeds(default: u64) -> u64 {
    std::env::var("TM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn run(p: Params) -> super::Report {
    let mut w = World::new(p);
    w.run();
    let r = check(&mut w);
    println!("seed {} {:?} rf {}: {r}", p.seed, p.mode, p.rf);
    r
}

fn scenario(mode: Mode, rf: usize, skew_ms: u64, default_seeds: u64) {
    let mut total = 0;
    for seed in 1..=seeds(default_seeds) {
        let p = Params {
            seed,
            mode,
            rf,
            duration_ms: 4_000,
            loss_permille: 50,
            nemesis: true,
            down: None,
            lww_bug: false,
            skew_ms,
            context_read: true,
        };
        let r = run(p);
        assert!(
            r.anomalies.is_empty(),
            "seed {seed}: {r}\n{}",
            r.anomalies.join("\n")
        );
        // The run did something: writes were acknowledged and faults injected.
        assert!(
            r.acked_writes > 50 && r.faults > 5,
            "seed {seed}: too little happened: {r}"
        );
        total += r.ops;
    }
    println!("{mode:?} rf {rf}: {total} operations, anomalies 0");
}

#[test]
fn sim_available_rf2_partitions_and_crashes() {
    scenario(Mode::Available, 2, 0, 6);
}

#[test]
fn sim_available_rf3_partitions_and_crashes() {
    scenario(Mode::Available, 3, 0, 6);
}

#[test]
fn sim_consistent_rf3_partitions_and_crashes() {
    scenario(Mode::Consistent, 3, 0, 6);
}

/// Consistent mode, RF 3, one coordinator of three down the whole time and no other fault:
/// every operation succeeds and read-after-write holds.
#[test]
fn sim_consistent_one_of_three_down() {
    for seed in 1..=seeds(4) {
        for down in 0..3 {
            let p = Params {
                seed,
                mode: Mode::Consistent,
                rf: 3,
                duration_ms: 3_000,
                loss_permille: 0,
                nemesis: false,
                down: Some(down),
                lww_bug: false,
                skew_ms: 0,
                context_read: true,
            };
            let mut w = World::new(p);
            w.run();
            let load: Vec<_> = w.history.clone();
            let r = check(&mut w);
            assert!(
                r.anomalies.is_empty(),
                "seed {seed} down {down}: {r}\n{}",
                r.anomalies.join("\n")
            );
            let gets = load.iter().filter(|o| o.kind == Kind::Get).count();
            assert!(
                load.len() > 100 && gets > 20,
                "seed {seed}: too few operations: {r}"
            );
            for o in &load {
                assert!(
                    o.ok,
                    "seed {seed} down {down}: {:?} failed with one of three down",
                    o.kind
                );
                if o.kind != Kind::Get {
                    let (k, rf) = o.replicas.unwrap();
                    assert!(k >= 2 && rf == 3, "x-tm-replicas {k}/{rf}");
                }
            }
        }
    }
}

/// Available mode, two coordinators' worth of owners (RF 2) and one of three down: writes and
/// reads all continue.
#[test]
fn sim_available_one_down_keeps_writing() {
    for seed in 1..=seeds(4) {
        let p = Params {
            seed,
            mode: Mode::Available,
            rf: 2,
            duration_ms: 3_000,
            loss_permille: 0,
            nemesis: false,
            down: Some(1),
            lww_bug: false,
            skew_ms: 0,
            context_read: true,
        };
        let mut w = World::new(p);
        w.run();
        let load: Vec<_> = w.history.clone();
        let r = check(&mut w);
        assert!(
            r.anomalies.is_empty(),
            "seed {seed}: {r}\n{}",
            r.anomalies.join("\n")
        );
        assert!(
            load.iter().all(|o| o.ok),
            "seed {seed}: an operation failed with one coordinator down"
        );
    }
}

/// The checker can fail: with the last-writer-wins defect planted (losing versions dropped),
/// it reports lost acknowledged writes.
#[test]
fn sim_checker_catches_lww_data_loss() {
    let mut found = 0;
    for seed in 1..=4 {
        let p = Params {
            seed,
            mode: Mode::Available,
            rf: 3,
            duration_ms: 4_000,
            loss_permille: 50,
            nemesis: true,
            down: None,
            lww_bug: true,
            skew_ms: 0,
            context_read: true,
        };
        let r = run(p);
        found += r
            .anomalies
            .iter()
            .filter(|a| a.contains("missing on owner"))
            .count();
    }
    assert!(found > 0, "the planted defect went unnoticed");
}

/// Consistent mode with the coordinators' clocks up to 1 s apart: a write takes its causal
/// context from a read quorum, so it dominates every write acknowledged before it started and
/// the skewed clocks never decide between them.
#[test]
fn sim_consistent_rf3_clock_skew() {
    scenario(Mode::Consistent, 3, 1_000, 6);
}

/// The same without the context read (context from the local replica only): a coordinator
/// whose clock is behind and that missed an acknowledged write makes a concurrent version
/// that loses to it, so its own acknowledged write is undone; the checker must say so.
#[test]
fn sim_checker_catches_skew_without_context_read() {
    let mut found = 0;
    for seed in 1..=40 {
        let p = Params {
            seed,
            mode: Mode::Consistent,
            rf: 3,
            duration_ms: 4_000,
            loss_permille: 50,
            nemesis: true,
            down: None,
            lww_bug: false,
            skew_ms: 1000,
            context_read: false,
        };
        let r = run(p);
        for a in &r.anomalies {
            println!("seed {seed}: {a}");
        }
        found += r.anomalies.len();
    }
    assert!(found > 0, "skew without a context read went unnoticed");
}
