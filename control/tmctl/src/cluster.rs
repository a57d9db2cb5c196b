//! `tunnelmesh cluster status`: the coordinators of the mesh as the local coordinator sees
//! them (replication reachability, last sync, state digest).

use std::io::Write;

use anyhow::Result;
use clap::Subcommand;
use tm_api::{ClusterInfo, Command};

use crate::{call, Target};

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Coordinators, reachability, last sync, the state digest (equal on coordinators that
    /// hold the same state).
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub fn cluster(target: &Target, cmd: &ClusterCommand) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        ClusterCommand::Status { json } => {
            let v = call(target, Command::ClusterStatus)?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                return Ok(());
            }
            let c: ClusterInfo = serde_json::from_value(v)?;
            write_status(&mut out, &c)?;
        }
    }
    Ok(())
}

fn write_status(out: &mut impl Write, c: &ClusterInfo) -> Result<()> {
    writeln!(
        out,
        "state on {}: {} records, digest {}, netmap version {}",
        c.this, c.records, c.digest, c.version
    )?;
    writeln!(
        out,
        "{:<20} {:<16} {:<22} {:<10} {:<10} {:<9} {:<10} {:<10} STATUS",
        "COORDINATOR", "MESH IP", "API", "HEARD", "SYNCED", "OBJECTS", "BYTES", "UNDER-REPL"
    )?;
    let ago = |s: Option<u64>| s.map_or_else(|| "never".to_string(), |s| format!("{s}s ago"));
    for m in &c.coordinators {
        let status = if m.this {
            "this coordinator".to_string()
        } else {
            match &m.error {
                Some(e) => format!("error: {e}"),
                None if m.synced_secs_ago.is_some() => "in sync".to_string(),
                None => "not synced yet".to_string(),
            }
        };
        let (heard, synced) = if m.this {
            ("-".to_string(), "-".to_string())
        } else {
            (ago(m.heard_secs_ago), ago(m.synced_secs_ago))
        };
        let (objects, bytes, under) = match &m.objects {
            Some(f) => (
                f.objects.to_string(),
                f.bytes.to_string(),
                f.under_replicated.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        writeln!(
            out,
            "{:<20} {:<16} {:<22} {:<10} {:<10} {objects:<9} {bytes:<10} {under:<10} {status}",
            m.name, m.mesh_ip, m.api, heard, synced
        )?;
    }
    Ok(())
}
