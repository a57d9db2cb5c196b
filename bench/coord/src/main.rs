//! Coordinator load generator (issue 17's scale measurement): N simulated members register with
//! one or two in-process coordinators over real TLS on loopback (joins per second), then
//! long-poll their netmaps like real nodes. A change is then made on the first coordinator (a
//! tag) and the time until each member's long poll returns a netmap with it is recorded:
//! p50/p99/max fan-out latency. With two coordinators, half the members poll the second one, so
//! the figure includes replication.
//!
//!   cargo run --release --manifest-path bench/coord/Cargo.toml -- --members 1000 --coordinators 2

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use rand_core::{OsRng, RngCore};
use tm_coord::{
    install_cluster_seed, Coordinator, CoordinatorConfig, JoinClient, JoinToken, MemStore,
    TokenSpec,
};
use tm_noise::PrivateKey;
use tokio::net::TcpListener;

#[derive(Parser)]
struct Args {
    /// Simulated members.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Coordinators (1 or 2).
    #[arg(long, default_value_t = 1)]
    coordinators: usize,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Changes whose fan-out is measured.
    #[arg(long, default_value_t = 3)]
    changes: usize,
    /// Members ask for full netmaps (no `base=`, as members did before netmap deltas).
    #[arg(long)]
    full: bool,
}

fn tmpdir(tag: &str) -> PathBuf {
    let mut r = [0u8; 8];
    OsRng.fill_bytes(&mut r);
    let d = std::env::temp_dir().join(format!("tm-coordbench-{tag}-{}", u64::from_le_bytes(r)));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

struct Coord {
    coord: Coordinator,
    public: SocketAddr,
}

async fn start(
    dir: &std::path::Path,
    mut cfg: CoordinatorConfig,
    key: PrivateKey,
) -> Result<Coord> {
    let cl = TcpListener::bind("127.0.0.1:0").await?;
    cfg.api_addr = Some(cl.local_addr()?.to_string());
    cfg.tls_names = vec!["127.0.0.1".into()];
    cfg.cluster_sync = Duration::from_millis(200);
    // Far above any long poll of the run: members only return on changes.
    cfg.long_poll = Duration::from_secs(600);
    // Every simulated member comes from 127.0.0.1: no per-source challenge limit.
    cfg.challenge_rate = 1e9;
    cfg.challenge_burst = u32::MAX;
    cfg.max_challenges = 1 << 20;
    let coord = Coordinator::open(dir, cfg, key, Arc::new(MemStore::new()))?;
    let pl = TcpListener::bind("127.0.0.1:0").await?;
    let public = pl.local_addr()?;
    for l in [cl, pl] {
        let c = coord.clone();
        tokio::spawn(async move { c.serve(l, std::future::pending()).await });
    }
    let id = coord.cluster_identity()?;
    let c = coord.clone();
    tokio::spawn(async move { c.run_cluster(id, Duration::from_millis(200)).await });
    Ok(Coord { coord, public })
}

fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// What one run measured.
#[derive(Debug)]
struct Report {
    joins_per_sec: f64,
    fanout: hdrhistogram::Histogram<u64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = Args::parse();
    raise_fd_limit();
    run(&a).await.map(drop)
}

async fn run(a: &Args) -> Result<Report> {
    let dir = tmpdir("run");
    let first = start(
        &dir.join("a"),
        CoordinatorConfig::new("hub-a"),
        PrivateKey::generate(&mut OsRng),
    )
    .await?;
    let token = first.coord.token();
    let mut coords = vec![first.public];
    let mut second = None;
    if a.coordinators >= 2 {
        let (_, ct) = first.coord.create_token(
            &TokenSpec {
                coordinator: true,
                ..Default::default()
            },
            "bench",
            tm_coord::now_unix(),
        )?;
        let kb = PrivateKey::generate(&mut OsRng);
        let mut jc = JoinClient::new(first.public.to_string(), JoinToken::parse(&ct)?)?;
        jc.join_as_coordinator(None);
        let reg = jc.register(&kb, "hub-b", &[]).await?;
        let bdir = dir.join("b");
        let mut cfg = CoordinatorConfig::new("hub-b");
        cfg.seed_records = install_cluster_seed(
            &bdir,
            reg.cluster.as_ref().context("seed")?,
            jc.identity().context("id")?,
        )?;
        let b = start(&bdir, cfg, kb).await?;
        coords.push(b.public);
        second = Some(b);
    }

    // Joins.
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency));
    let mut tasks = Vec::new();
    for i in 0..a.members {
        let addr = coords[i % coords.len()];
        let token = token.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.expect("semaphore");
            let mut c = JoinClient::new(addr.to_string(), JoinToken::parse(&token)?)?;
            c.set_timeout(Duration::from_secs(900));
            c.register(&PrivateKey::generate(&mut OsRng), &format!("m{i}"), &[])
                .await?;
            anyhow::Ok(c)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await??);
    }
    let join_secs = t0.elapsed().as_secs_f64();
    println!(
        "members {} coordinators {}: {} joins in {:.2} s = {:.0} joins/s",
        a.members,
        coords.len(),
        a.members,
        join_secs,
        a.members as f64 / join_secs
    );
    // Wait until every coordinator knows every member (replication of the joins).
    let want = a.members + coords.len();
    let t1 = Instant::now();
    loop {
        let ok = first.coord.nodes().len() == want
            && second
                .as_ref()
                .is_none_or(|b| b.coord.nodes().len() == want);
        if ok {
            break;
        }
        anyhow::ensure!(
            t1.elapsed() < Duration::from_secs(600),
            "coordinators did not converge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Fan-out: every member long-polls; a change is made; time until each sees it.
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for round in 0..a.changes {
        let base = futures_versions(&clients).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let full = a.full;
        for (c, last) in clients.iter().zip(base) {
            let c = c.clone();
            let tx = tx.clone();
            let retries = retries.clone();
            tokio::spawn(async move {
                let tag = format!("tag:r{round}");
                let (mut since, mut base) = last;
                let mut tries = 0;
                loop {
                    // A simulated member does not resolve deltas into its full netmap (a real
                    // one does, on its own CPU, in place: `apply_delta`): the change it waits
                    // for is in the delta's peers.
                    match c
                        .netmap_delta(Some(since), base.as_deref().filter(|_| !full))
                        .await
                    {
                        Ok(nm) => {
                            since = nm.version;
                            base = nm.delta_token().map(str::to_owned);
                            if nm
                                .peers
                                .iter()
                                .any(|p| p.name == "m0" && p.tags.contains(&tag))
                            {
                                let _ = tx.send(Ok(Instant::now()));
                                return;
                            }
                        }
                        // As a real member: try again (a coordinator busy with a thousand
                        // reconnects may not accept within the connect timeout).
                        Err(e) => {
                            retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if tries == 20 {
                                let _ = tx.send(Err(e.to_string()));
                                return;
                            }
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        drop(tx);
        // Let every poll reach its coordinator before the change (a member still connecting
        // is not yet waiting for it).
        let t2 = Instant::now();
        while first.coord.long_polls() + second.as_ref().map_or(0, |b| b.coord.long_polls())
            < a.members
        {
            anyhow::ensure!(
                t2.elapsed() < Duration::from_secs(300),
                "polls did not arrive"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let tag = format!("tag:r{round}");
        let changed = Instant::now();
        first.coord.tag_node("m0", &tag, "bench")?;
        let mut seen = 0;
        while let Some(r) = rx.recv().await {
            let at = r.map_err(anyhow::Error::msg)?;
            hist.record(at.duration_since(changed).as_micros() as u64)?;
            seen += 1;
        }
        anyhow::ensure!(seen == a.members, "only {seen} members saw change {round}");
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "fan-out of {} changes to {} members: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} polls retried)",
        a.changes,
        a.members,
        ms(0.5),
        ms(0.99),
        hist.max() as f64 / 1000.0,
        retries.load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Report {
        joins_per_sec: a.members as f64 / join_secs,
        fanout: hist,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The load generator itself works: members join both coordinators and every one of them
    /// sees each change (a smoke run; the figures come from `--release` runs by hand).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_run_sees_every_change_on_both_coordinators() {
        let r = run(&Args {
            members: 6,
            coordinators: 2,
            concurrency: 4,
            changes: 2,
            full: false,
        })
        .await
        .expect("run");
        assert!(r.joins_per_sec > 0.0);
        assert_eq!(r.fanout.len(), 12, "6 members x 2 changes");
    }
}

/// Each member's current netmap version and delta token (an immediate poll; members of the
/// same coordinator share them, so one poll per coordinator).
async fn futures_versions(clients: &[JoinClient]) -> Result<Vec<(u64, Option<String>)>> {
    let mut by_addr = std::collections::BTreeMap::new();
    let mut out = Vec::with_capacity(clients.len());
    for c in clients {
        if !by_addr.contains_key(c.addr()) {
            let nm = c.netmap(None).await?;
            by_addr.insert(
                c.addr().to_owned(),
                (nm.version, nm.delta_token().map(str::to_owned)),
            );
        }
        out.push(by_addr[c.addr()].clone());
    }
    Ok(out)
}
