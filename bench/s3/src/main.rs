//! `s3bench`: runs S3 scenarios against one target and prints one JSON line per scenario, or
//! renders collected JSON lines as a markdown table (`--table FILE`).
#![forbid(unsafe_code)]

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tm_s3bench::{ensure_bucket, run, table, Params, Scenario, Target};

#[derive(Debug, Parser)]
#[command(about = "S3 load generator (SigV4, hyper, hdrhistogram)")]
struct Opt {
    /// Render the JSON lines in FILE as a markdown table and exit.
    #[arg(long, value_name = "FILE")]
    table: Option<std::path::PathBuf>,
    /// Server URL, e.g. http://127.0.0.1:9000.
    #[arg(long, required_unless_present = "table")]
    target: Option<String>,
    /// Access key.
    #[arg(long, default_value = "")]
    ak: String,
    /// Secret key.
    #[arg(long, default_value = "")]
    sk: String,
    /// Label for this server in the output.
    #[arg(long, default_value = "server")]
    name: String,
    /// Bucket (created if missing).
    #[arg(long, default_value = "bench")]
    bucket: String,
    /// Scenarios to run, in order (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Concurrent connections for the small scenarios.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Seconds per small scenario.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop a small scenario after this many operations.
    #[arg(long)]
    ops: Option<u64>,
    /// Small object size in bytes.
    #[arg(long, default_value_t = 4096)]
    small_size: usize,
    /// Distinct keys read by get-small.
    #[arg(long, default_value_t = 1000)]
    get_keys: u64,
    /// Large object size in MiB.
    #[arg(long, default_value_t = 64)]
    large_mib: usize,
    /// Number of large objects.
    #[arg(long, default_value_t = 8)]
    large_count: usize,
    /// Concurrent connections for the large scenarios.
    #[arg(long, default_value_t = 4)]
    large_conns: usize,
    /// Times get-large reads each large object.
    #[arg(long, default_value_t = 3)]
    large_rounds: usize,
    /// Send `x-amz-checksum-crc32` with every PUT (the server verifies and stores it).
    #[arg(long)]
    checksum: bool,
    /// Append the JSON lines to this file as well.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = Opt::parse();
    if let Some(f) = &o.table {
        let s = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        print!("{}", table(&s)?);
        return Ok(());
    }
    let url = o.target.as_deref().context("--target is required")?;
    let mut target = Target::new(&o.name, url, &o.ak, &o.sk, &o.bucket)?;
    target.checksum = o.checksum;
    let p = Params {
        conns: o.conns,
        duration: Duration::from_secs_f64(o.duration),
        ops: o.ops,
        small_size: o.small_size,
        get_keys: o.get_keys,
        large_size: o.large_mib << 20,
        large_count: o.large_count,
        large_conns: o.large_conns,
        large_rounds: o.large_rounds,
    };
    ensure_bucket(&target).await?;
    let scenarios = if o.scenario.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        o.scenario.clone()
    };
    let mut failed = false;
    for sc in scenarios {
        let r = run(&target, sc, &p).await?;
        if r.errors > 0 {
            failed = true;
            eprintln!(
                "{} {}: {} errors, first: {}",
                r.server,
                sc.name(),
                r.errors,
                r.first_error.as_deref().unwrap_or("?")
            );
        }
        let line = r.to_json().to_string();
        println!("{line}");
        if let Some(f) = &o.out {
            let mut fh = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .with_context(|| format!("open {}", f.display()))?;
            writeln!(fh, "{line}")?;
        }
    }
    if failed {
        anyhow::bail!("some operations failed");
    }
    Ok(())
}
