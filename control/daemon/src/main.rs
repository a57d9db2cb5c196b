//! `tunnelmesh`: the node (tokio control plane) and every operator command.
//!
//! `tunnelmesh up --config FILE` validates the config (nothing is created on error), loads the
//! node key, starts and supervises `tm-dataplane`, serves the control socket, and runs until
//! SIGINT/SIGTERM. `genkey`/`pubkey` behave like `wg genkey`/`wg pubkey`.
#![forbid(unsafe_code)]

mod api;
mod config;
mod dataplane;
mod node;
mod relay;
mod storage;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use config::{KeySource, NodeConfig};
use rand_core::OsRng;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tm_noise::keys::{self, PrivateKey};
use tmctl::{OperatorCommand, Target};

/// TunnelMesh node: encrypted mesh tunnels, storage and identity in one binary.
#[derive(Parser)]
#[command(name = "tunnelmesh", version, about)]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a new base64 private key (like `wg genkey`).
    Genkey,
    /// Read a private key (base64 or OpenSSH ed25519) on stdin, print its public key.
    Pubkey,
    /// Run a node with static peers from a config file, in the foreground.
    Up {
        /// Node configuration (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    #[command(flatten)]
    Op(OperatorCommand),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Genkey => genkey(),
        Cmd::Pubkey => pubkey(),
        Cmd::Up { config } => up(&config),
        Cmd::Op(op) => tmctl::run(&cli.target, &op),
    };
    if let Err(e) = r {
        let msg = format!("{e:#}");
        eprintln!(
            "tunnelmesh: {}",
            msg.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        std::process::exit(1);
    }
}

fn genkey() -> Result<()> {
    println!("{}", PrivateKey::generate(&mut OsRng).to_base64());
    Ok(())
}

fn pubkey() -> Result<()> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    let k = keys::parse_private_key(&s).context("stdin")?;
    println!("{}", k.public_key());
    Ok(())
}

fn up(path: &Path) -> Result<()> {
    let cfg = NodeConfig::load(path)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TUNNELMESH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("data_dir: cannot create {}", cfg.data_dir.display()))?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700)).ok();
    let key = load_key(&cfg)?;
    tracing::info!(name = %cfg.name, public_key = %key.public_key(), "starting node");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let _sock = api::serve(&cfg.data_dir.join(tm_api::SOCKET_NAME), tx)?;
        let st = match &cfg.s3 {
            Some(s3) => Some(storage::Storage::open(&cfg, s3)?),
            None => None,
        };
        let mut node = node::Node::new(cfg, key)?;
        if let Some(st) = st {
            node.set_storage(st);
        }
        node.start().await?;
        node.run(rx).await
    })
}

/// The node's static key: the configured file, else `~/.ssh/id_ed25519`, else a key generated
/// once in `data_dir` (OpenSSH format, so `ssh-keygen -y` can show its public half).
fn load_key(cfg: &NodeConfig) -> Result<PrivateKey> {
    let read = |p: &Path| -> Result<PrivateKey> {
        let t = std::fs::read_to_string(p)
            .with_context(|| format!("private_key_file: cannot read {}", p.display()))?;
        keys::parse_private_key(&t).with_context(|| format!("private_key_file: {}", p.display()))
    };
    match &cfg.key {
        KeySource::File(p) => read(p),
        KeySource::Default => {
            if let Some(home) = std::env::var_os("HOME") {
                let ssh = Path::new(&home).join(".ssh/id_ed25519");
                if ssh.exists() {
                    return read(&ssh);
                }
            }
            let p = cfg.data_dir.join("node_ed25519");
            if !p.exists() {
                let (text, pub_line) = keys::generate_openssh_ed25519(&mut OsRng, &cfg.name);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&p)
                    .with_context(|| format!("creating {}", p.display()))?;
                f.write_all(text.as_bytes())?;
                f.sync_all()?;
                std::fs::write(p.with_extension("pub"), pub_line + "\n")?;
                tracing::info!(path = %p.display(), "generated a node key");
            }
            read(&p)
        }
    }
}
