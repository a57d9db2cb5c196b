//! Operator command tree shared by `tmctl` and `tunnelmesh` (which adds the daemon verbs).
//!
//! Every command talks to the local node over its control socket (see `tm_api`): the path comes
//! from `--socket`, else `$TUNNELMESH_SOCKET`, else `<data_dir>/control.sock` of the default data
//! directory. Read commands take `--json`. This crate never touches the network or keys.
#![forbid(unsafe_code)]

mod admin;
mod cluster;
pub mod docker;
mod ping;
pub mod policy;
mod status;
#[cfg(test)]
mod test_cli;

pub use admin::{NodeCommand, TokenCommand};
pub use ping::PingArgs;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;
pub mod discover;

use tm_api::{
    BucketInfo, Command, FilterDecision, FilterInfo, PeerInfo, Request, Response, S3Credentials,
    ShareInfo, Status, API_VERSION,
};

/// Default data directory of a node (also the default place of its control socket).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/tunnelmesh";

/// Where to reach the node.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Control socket of the node [default: $TUNNELMESH_SOCKET, /var/lib/tunnelmesh/control.sock,
    /// else the one running node's]
    #[arg(long, global = true, env = tm_api::SOCKET_ENV)]
    pub socket: Option<PathBuf>,
}

impl Target {
    /// The socket to talk to: `--socket`, else found by [`discover::find_socket`].
    pub fn path(&self) -> Result<PathBuf> {
        match &self.socket {
            Some(s) => Ok(s.clone()),
            None => {
                discover::find_socket(&PathBuf::from(DEFAULT_DATA_DIR).join(tm_api::SOCKET_NAME))
            }
        }
    }
}

/// Operator commands (the same in `tmctl` and `tunnelmesh`).
#[derive(Debug, Clone, Subcommand)]
pub enum OperatorCommand {
    /// Show this node: keys, address, dataplane, counters.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List peers: endpoint, last handshake, traffic.
    Peers {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Manage buckets of this node's object store.
    #[command(subcommand)]
    Bucket(BucketCommand),
    /// S3 access for this node.
    #[command(subcommand)]
    S3(S3Command),
    /// NFS file shares (`/shares/<name>`) backed by the object store.
    #[command(subcommand)]
    Share(ShareCommand),
    /// On a coordinator: print the default join token again, or manage tokens.
    Token {
        #[command(subcommand)]
        cmd: Option<TokenCommand>,
    },
    /// On a coordinator: the mesh's nodes and their tags.
    #[command(subcommand)]
    Node(NodeCommand),
    /// On a coordinator: the audit log of token, tag and node changes.
    Audit {
        #[arg(long)]
        json: bool,
    },
    /// Leave the mesh: deregister this node, forget its identity and stop it.
    Leave,
    /// The packet filter: load a local policy, test a packet against it, show its state.
    #[command(subcommand)]
    Filter(FilterCommand),
    /// On a coordinator: the mesh policy (set, get, check, explain).
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// On a coordinator: the coordinators of the mesh and their replication.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Ping a peer through the tunnel: path (direct or relay), endpoint, round-trip time,
    /// path MTU.
    Ping(PingArgs),
    /// Containers of every node (ps, inspect, start, stop, restart, logs, stats, exec),
    /// decided by the mesh policy on the node that owns them.
    #[command(subcommand)]
    Docker(docker::DockerCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum FilterCommand {
    /// Compile a policy file (HuJSON) against this node's peers and install it (local policy,
    /// until the coordinator pushes one). Refused with file:line on error; nothing changes.
    Load { file: PathBuf },
    /// Remove the local policy: allow all.
    Clear,
    /// Filter state: generation, classes, flows.
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Recent dropped packets (sampled: at most one line per second per peer).
    Log {
        /// Only this peer (by name).
        #[arg(long)]
        peer: Option<String>,
    },
    /// Decision and deciding rule for a packet from node SRC to HOST:PORT/PROTO (the
    /// dataplane's matcher).
    Test {
        #[arg(long)]
        src: String,
        #[arg(long)]
        dst: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum BucketCommand {
    /// Create a bucket.
    Create { name: String },
    /// Delete an empty bucket.
    Delete { name: String },
    /// List buckets with usage and quota.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a bucket's exact usage.
    Usage {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Set or clear a bucket quota.
    #[command(subcommand)]
    Quota(QuotaCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum QuotaCommand {
    /// `quota set NAME 1GB` (units: B, KB, MB, GB, TB; KiB, MiB, GiB, TiB).
    Set {
        name: String,
        #[arg(value_parser = tm_api::parse_size)]
        size: u64,
        /// Set it even below the bucket's current usage (writes that grow it are then refused).
        #[arg(long)]
        force: bool,
    },
    /// Remove the quota of a bucket.
    Clear { name: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum S3Command {
    /// Print this node's S3 access key, secret and endpoint.
    Credentials {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ShareCommand {
    /// `share create NAME [--quota 50GB] [--read-only]` (adopts an existing bucket NAME).
    Create {
        name: String,
        /// Byte quota of the share's bucket (units: B, KB, MB, GB, TB; KiB .. TiB).
        #[arg(long, value_parser = tm_api::parse_size)]
        quota: Option<u64>,
        /// Refuse writes over NFS (NFS3ERR_ROFS).
        #[arg(long)]
        read_only: bool,
    },
    /// List shares with export path, usage and quota.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop exporting a share (its bucket and objects stay reachable over S3).
    Delete { name: String },
    /// `share squash NAME root_squash|all_squash|no_root_squash [--anonuid N] [--anongid N]`:
    /// how NFS maps callers' identities, like exports(5) (default no_root_squash).
    Squash {
        name: String,
        #[arg(value_parser = parse_squash)]
        mode: tm_api::Squash,
        /// The anonymous uid squashed callers get (default 65534).
        #[arg(long)]
        anonuid: Option<u32>,
        /// The anonymous gid squashed callers get (default 65534).
        #[arg(long)]
        anongid: Option<u32>,
    },
}

fn parse_squash(s: &str) -> std::result::Result<tm_api::Squash, String> {
    match s.replace('-', "_").as_str() {
        "root_squash" => Ok(tm_api::Squash::RootSquash),
        "all_squash" => Ok(tm_api::Squash::AllSquash),
        "no_root_squash" => Ok(tm_api::Squash::NoRootSquash),
        _ => Err(format!(
            "'{s}': want root_squash, all_squash or no_root_squash"
        )),
    }
}

/// Sends one request and returns the `data` of a successful response.
pub fn call(target: &Target, command: Command) -> Result<serde_json::Value> {
    call_timeout(target, command, Duration::from_secs(10))
}

/// [`call`], waiting up to `wait` for the answer.
pub fn call_timeout(
    target: &Target,
    command: Command,
    wait: Duration,
) -> Result<serde_json::Value> {
    let path = target.path()?;
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach the node at {} (is `tunnelmesh up` running? use --socket)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(wait))?;
    let mut line = serde_json::to_string(&Request {
        version: API_VERSION,
        command,
    })?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut resp = String::new();
    BufReader::new(&s)
        .read_line(&mut resp)
        .context("reading the node's answer")?;
    let resp: Response =
        serde_json::from_str(&resp).context("the node's answer is not valid JSON")?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "request failed".into()));
    }
    Ok(resp.data.unwrap_or(serde_json::Value::Null))
}

/// Runs an operator command, printing to stdout.
pub fn run(target: &Target, cmd: &OperatorCommand) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        OperatorCommand::Status { json } => {
            let v = call(target, Command::Status)?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                let s: Status = serde_json::from_value(v)?;
                write_status(&mut out, &s)?;
            }
        }
        OperatorCommand::Peers { json } => {
            let v = call(target, Command::Peers)?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                let peers: Vec<PeerInfo> = serde_json::from_value(v)?;
                write_peers(&mut out, &peers)?;
            }
        }
        OperatorCommand::Token { cmd } => admin::token(target, cmd)?,
        OperatorCommand::Node(cmd) => admin::node(target, cmd)?,
        OperatorCommand::Audit { json } => admin::audit(target, *json)?,
        OperatorCommand::Policy(p) => policy::policy(target, p)?,
        OperatorCommand::Cluster(c) => cluster::cluster(target, c)?,
        OperatorCommand::Leave => {
            call(target, Command::Leave)?;
            writeln!(out, "left the mesh; the node is stopping")?;
        }
        OperatorCommand::Filter(f) => filter(target, f, &mut out)?,
        OperatorCommand::Ping(a) => ping::run(target, a, &mut out)?,
        OperatorCommand::Docker(d) => docker::docker(target, d, &mut out)?,
        OperatorCommand::Bucket(b) => match b {
            BucketCommand::Create { name } => {
                call(target, Command::BucketCreate { name: name.clone() })?;
                writeln!(out, "created bucket {name}")?;
            }
            BucketCommand::Delete { name } => {
                call(target, Command::BucketDelete { name: name.clone() })?;
                writeln!(out, "deleted bucket {name}")?;
            }
            BucketCommand::List { json } => {
                let v = call(target, Command::BucketList)?;
                if *json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                } else {
                    let list: Vec<BucketInfo> = serde_json::from_value(v)?;
                    writeln!(
                        out,
                        "{:<32} {:>10} {:>12} {:>12}",
                        "NAME", "OBJECTS", "USED", "QUOTA"
                    )?;
                    for b in list {
                        let q = b.quota_bytes.map_or_else(|| "-".into(), human_bytes);
                        writeln!(
                            out,
                            "{:<32} {:>10} {:>12} {:>12}",
                            b.name,
                            b.objects,
                            human_bytes(b.used_bytes),
                            q
                        )?;
                    }
                }
            }
            BucketCommand::Usage { name, json } => {
                let v = call(target, Command::BucketUsage { name: name.clone() })?;
                if *json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                } else {
                    let b: BucketInfo = serde_json::from_value(v)?;
                    let q = b.quota_bytes.map_or_else(
                        || "none".into(),
                        |q| format!("{} ({q} bytes)", human_bytes(q)),
                    );
                    writeln!(out, "bucket:  {}", b.name)?;
                    writeln!(
                        out,
                        "used:    {} ({} bytes)",
                        human_bytes(b.used_bytes),
                        b.used_bytes
                    )?;
                    writeln!(out, "objects: {}", b.objects)?;
                    writeln!(out, "quota:   {q}")?;
                }
            }
            BucketCommand::Quota(QuotaCommand::Set { name, size, force }) => {
                let v = call(
                    target,
                    Command::BucketQuotaSet {
                        name: name.clone(),
                        bytes: Some(*size),
                        force: *force,
                    },
                )?;
                let b: BucketInfo = serde_json::from_value(v)?;
                writeln!(
                    out,
                    "quota of {name} set to {} ({size} bytes)",
                    human_bytes(*size)
                )?;
                if b.used_bytes > *size {
                    writeln!(
                        out,
                        "bucket {name} is now over quota: it holds {} ({} bytes); writes that \
                         grow it are refused until it shrinks below the quota",
                        human_bytes(b.used_bytes),
                        b.used_bytes
                    )?;
                }
            }
            BucketCommand::Quota(QuotaCommand::Clear { name }) => {
                call(
                    target,
                    Command::BucketQuotaSet {
                        name: name.clone(),
                        bytes: None,
                        force: false,
                    },
                )?;
                writeln!(out, "quota of {name} removed")?;
            }
        },
        OperatorCommand::Share(s) => match s {
            ShareCommand::Create {
                name,
                quota,
                read_only,
            } => {
                let v = call(
                    target,
                    Command::ShareCreate {
                        name: name.clone(),
                        quota_bytes: *quota,
                        read_only: *read_only,
                    },
                )?;
                let s: ShareInfo = serde_json::from_value(v)?;
                writeln!(
                    out,
                    "created share {name}{}: mount -t nfs -o vers=3,nolock coordinator.mesh:{} /mnt",
                    if s.read_only { " (read-only)" } else { "" },
                    s.export
                )?;
            }
            ShareCommand::Squash {
                name,
                mode,
                anonuid,
                anongid,
            } => {
                let v = call(
                    target,
                    Command::ShareSquash {
                        name: name.clone(),
                        squash: *mode,
                        anonuid: *anonuid,
                        anongid: *anongid,
                    },
                )?;
                let s: ShareInfo = serde_json::from_value(v)?;
                writeln!(
                    out,
                    "share {name}: {} (anonuid={}, anongid={})",
                    s.squash.as_str(),
                    s.anonuid,
                    s.anongid
                )?;
            }
            ShareCommand::Delete { name } => {
                call(target, Command::ShareDelete { name: name.clone() })?;
                writeln!(
                    out,
                    "deleted share {name} (bucket {name} and its objects are kept)"
                )?;
            }
            ShareCommand::List { json } => {
                let v = call(target, Command::ShareList)?;
                if *json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                } else {
                    let list: Vec<ShareInfo> = serde_json::from_value(v)?;
                    writeln!(
                        out,
                        "{:<24} {:<32} {:>4} {:>10} {:>12} {:>12}  SQUASH",
                        "NAME", "EXPORT", "MODE", "OBJECTS", "USED", "QUOTA"
                    )?;
                    for s in list {
                        let q = s.quota_bytes.map_or_else(|| "-".into(), human_bytes);
                        writeln!(
                            out,
                            "{:<24} {:<32} {:>4} {:>10} {:>12} {:>12}  {}",
                            s.name,
                            s.export,
                            if s.read_only { "ro" } else { "rw" },
                            s.objects,
                            human_bytes(s.used_bytes),
                            q,
                            s.squash.as_str()
                        )?;
                    }
                }
            }
        },
        OperatorCommand::S3(S3Command::Credentials { json }) => {
            let v = call(target, Command::S3Credentials)?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                let c: S3Credentials = serde_json::from_value(v)?;
                writeln!(out, "endpoint:          {}", c.endpoint)?;
                writeln!(out, "access key id:     {}", c.access_key)?;
                writeln!(out, "secret access key: {}", c.secret_key)?;
            }
        }
    }
    Ok(())
}

fn filter(target: &Target, f: &FilterCommand, out: &mut impl Write) -> Result<()> {
    let show = |out: &mut dyn Write, v: serde_json::Value| -> Result<()> {
        let i: FilterInfo = serde_json::from_value(v)?;
        if !i.active {
            writeln!(out, "no policy: all members allowed")?;
            return Ok(());
        }
        writeln!(
            out,
            "policy {} ({}), generation {}",
            i.hash.as_deref().unwrap_or("-"),
            i.source.as_deref().unwrap_or("-"),
            i.generation
        )?;
        writeln!(
            out,
            "{} classes, {} peers with a class, {} reachable; flows {}/{} ({} evicted)",
            i.classes, i.peers_with_class, i.reachable, i.flows, i.flow_capacity, i.flow_evictions
        )?;
        for w in &i.warnings {
            writeln!(out, "warning: {w}")?;
        }
        Ok(())
    };
    match f {
        FilterCommand::Load { file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| file.display().to_string());
            let v = call(target, Command::FilterLoad { file: name, text })?;
            show(out, v)?;
        }
        FilterCommand::Clear => {
            let v = call(target, Command::FilterClear)?;
            show(out, v)?;
        }
        FilterCommand::Log { peer } => {
            let v = call(target, Command::FilterLog { peer: peer.clone() })?;
            let lines: Vec<String> = serde_json::from_value(v)?;
            for l in lines {
                writeln!(out, "{l}")?;
            }
        }
        FilterCommand::Show { json } => {
            let v = call(target, Command::FilterShow)?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                show(out, v)?;
            }
        }
        FilterCommand::Test { src, dst, json } => {
            let v = call(
                target,
                Command::FilterTest {
                    src: src.clone(),
                    dst: dst.clone(),
                },
            )?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                let d: FilterDecision = serde_json::from_value(v)?;
                let verdict = if d.allow { "accept" } else { "deny" };
                match &d.rule {
                    Some(r) => writeln!(out, "{verdict} ({r}): {}", d.reason)?,
                    None => writeln!(out, "{verdict}: {}", d.reason)?,
                }
            }
        }
    }
    Ok(())
}

fn write_status(out: &mut impl Write, s: &Status) -> Result<()> {
    writeln!(out, "node:        {}", s.name)?;
    writeln!(out, "public key:  {}", s.public_key)?;
    writeln!(out, "address:     {} on {}", s.address, s.interface)?;
    writeln!(out, "listen port: {}", s.listen_port)?;
    let dp = &s.dataplane;
    let pid = dp.pid.map_or_else(|| "-".into(), |p| p.to_string());
    let state = if dp.running { "running" } else { "down" };
    writeln!(
        out,
        "dataplane:   {state} (pid {pid}, {} restarts, {} workers)",
        dp.restarts, dp.workers
    )?;
    writeln!(out, "peers:       {}", s.peers)?;
    if let Some(f) = &s.filter {
        if f.active {
            writeln!(
                out,
                "filter:      generation {}, {} classes, flows {}/{} ({} evicted)",
                f.generation, f.classes, f.flows, f.flow_capacity, f.flow_evictions
            )?;
        } else {
            writeln!(out, "filter:      no policy: all members allowed")?;
        }
    }
    if let Some(m) = &s.mesh {
        let via = m
            .coordinator
            .as_deref()
            .map_or_else(String::new, |c| format!(" of {c}"));
        let reach = if m.coordinator_reachable {
            "reachable"
        } else {
            "unreachable"
        };
        writeln!(
            out,
            "mesh:        {}{via} ({reach}), {}, netmap v{}, relay {}",
            m.role,
            m.mesh_cidr,
            m.netmap_version,
            if m.relay_connected { "up" } else { "down" }
        )?;
        if let Some(p) = &m.policy {
            writeln!(out, "policy:      {p}")?;
        }
    }
    status::write_services(out, s)?;
    let c = &s.counters;
    writeln!(
        out,
        "datagrams:   rx {} tx {}",
        c.rx_datagrams, c.tx_datagrams
    )?;
    writeln!(
        out,
        "handshakes:  {} completed, {} failed",
        c.handshakes_completed, c.handshake_errors
    )?;
    let drops: Vec<String> = c
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    writeln!(
        out,
        "drops:       {}",
        if drops.is_empty() {
            "none".into()
        } else {
            drops.join(" ")
        }
    )?;
    for w in &s.workers {
        let drops: u64 = w.drops.values().sum();
        writeln!(
            out,
            "worker {:<4} tun rx {} pkts {} B, tx {} pkts {} B; udp rx {} dgrams {} B, tx {} dgrams {} B; punts {} (dropped {}); drops {}",
            w.index,
            w.tun_rx_packets,
            w.tun_rx_bytes,
            w.tun_tx_packets,
            w.tun_tx_bytes,
            w.udp_rx_packets,
            w.udp_rx_bytes,
            w.udp_tx_packets,
            w.udp_tx_bytes,
            w.punts,
            w.punt_drops,
            drops
        )?;
    }
    Ok(())
}

fn write_peers(out: &mut impl Write, peers: &[PeerInfo]) -> Result<()> {
    writeln!(
        out,
        "{:<16} {:<16} {:<22} {:<7} {:>10} {:>12} {:>12}",
        "NAME", "MESH IP", "ENDPOINT", "PATH", "HANDSHAKE", "RX", "TX"
    )?;
    for p in peers {
        let hs = p
            .last_handshake_ago_secs
            .map_or_else(|| "never".into(), |s| format!("{s}s ago"));
        writeln!(
            out,
            "{:<16} {:<16} {:<22} {:<7} {:>10} {:>12} {:>12}",
            p.name,
            p.mesh_ip.as_deref().unwrap_or("-"),
            p.endpoint.as_deref().unwrap_or("-"),
            p.path,
            hs,
            human_bytes(p.rx_bytes),
            human_bytes(p.tx_bytes)
        )?;
    }
    Ok(())
}

/// An error and its causes on one line, each cause once: an error whose message already
/// quotes its source (`connect to X: Connection refused`) would otherwise print the source
/// again (`...: Connection refused: Connection refused`), as `{:#}` appends every cause.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        let s = s.trim();
        if s.is_empty() || out.contains(s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(s);
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `1536` -> `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn each_cause_is_printed_once() {
        #[derive(Debug)]
        struct Quoting(std::io::Error);
        impl std::fmt::Display for Quoting {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "connect to 192.0.2.1:8443: {}", self.0)
            }
        }
        impl std::error::Error for Quoting {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::from_raw_os_error(111);
        let e = anyhow::Error::new(Quoting(io)).context("joining 192.0.2.1:8443");
        let line = error_line(&e);
        assert_eq!(line.matches("os error 111").count(), 1, "{line}");
        assert!(
            line.starts_with("joining 192.0.2.1:8443: connect to 192.0.2.1:8443: "),
            "{line}"
        );
        assert_eq!(
            format!("{e:#}").matches("os error 111").count(),
            2,
            "what {{:#}} printed"
        );
        // Distinct causes are all kept, in order.
        let e = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(error_line(&e), "outer: middle: inner");
    }

    #[test]
    fn unreachable_socket_is_a_clear_error() {
        let t = Target {
            socket: Some("/nonexistent/dir/control.sock".into()),
        };
        let e = call(&t, Command::Status).unwrap_err().to_string();
        assert!(
            e.contains("cannot reach the node at /nonexistent/dir/control.sock"),
            "{e}"
        );
    }
}
