//! `tunnelmesh`: the node (tokio control plane) and every operator command.
//!
//! `tunnelmesh join [--config FILE]` starts a coordinator (embedded defaults: coordinator API on
//! :8443, object store, mesh DNS) and prints its join token; `tunnelmesh join HOST:PORT --token
//! TOKEN` joins that mesh (the key comes from `~/.ssh/id_ed25519` or is generated in data_dir).
//! `tunnelmesh up --config FILE` runs a node with static peers. Each validates the config
//! first (nothing is created on error), loads the node key, starts and supervises
//! `tm-dataplane`, serves the control socket, and runs until SIGINT/SIGTERM.
//! `genkey`/`pubkey` behave like `wg genkey`/`wg pubkey`.
#![forbid(unsafe_code)]

mod api;
mod config;
mod dataplane;
mod docker;
mod failover;
mod filter;
mod gen;
mod identity;
mod join_wait;
mod mesh;
mod node;
mod peer_timers;
mod policy;
mod portmap;
mod relay;
mod renamed;
mod storage;
mod storage_sync;
mod sysdns;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use config::{KeySource, NodeConfig};
use rand_core::OsRng;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
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
    /// Join a mesh (HOST:PORT --token TOKEN), or start a coordinator (no HOST:PORT).
    Join {
        /// The coordinator to join; omit to run this node as a coordinator.
        coordinator: Option<String>,
        /// Join token printed by the coordinator (`tmctl token` prints it again).
        #[arg(long)]
        token: Option<String>,
        /// This node's name in the mesh (default: config `name`, else the host name).
        #[arg(long)]
        name: Option<String>,
        /// Node configuration (YAML); optional.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    #[command(flatten)]
    Op(OperatorCommand),
    /// Shell completions and man pages (used by scripts/install.sh).
    #[command(hide = true)]
    Gen {
        #[command(subcommand)]
        what: gen::Gen,
    },
}

fn main() {
    // A panic while serving one request (S3, NFS fast path, coordinator API, DNS) is caught
    // at that request's task boundary, logged with the request kind, counted and answered with
    // an internal error: the node goes on. Any other panic ends the node (it is supervised like
    // a daemon), as `panic = "abort"` would; the release profile unwinds so that the requests'
    // `catch_unwind` works (and tests share its build).
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if !panic_is_contained() {
            std::process::abort();
        }
    }));
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Genkey => genkey(),
        Cmd::Pubkey => pubkey(),
        Cmd::Up { config } => up(&config),
        Cmd::Join {
            coordinator,
            token,
            name,
            config,
        } => join(coordinator, token, name, config),
        Cmd::Op(op) => tmctl::run(&cli.target, &op),
        Cmd::Gen { what } => gen::run(what),
    };
    if let Err(e) = r {
        eprintln!("tunnelmesh: {}", tmctl::error_line(&e));
        std::process::exit(1);
    }
}

/// Whether the current thread is serving a request whose panics are caught and answered.
fn panic_is_contained() -> bool {
    tm_s3::in_request() || tm_nfs::in_request() || tm_coord::in_request() || tm_dns::in_request()
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
    if cfg.coordinator.is_some() {
        return run(cfg, None, None);
    }
    if cfg.address.is_none() {
        anyhow::bail!(
            "address: required for `tunnelmesh up` with static peers (to be assigned one by a \
             coordinator, use `tunnelmesh join`)"
        );
    }
    run(cfg, None, None)
}

fn join(
    coordinator: Option<String>,
    token: Option<String>,
    name: Option<String>,
    config: Option<PathBuf>,
) -> Result<()> {
    let mut cfg = match &config {
        Some(p) => NodeConfig::load(p)?,
        None if coordinator.is_none() => NodeConfig::parse("coordinator: {enabled: true}\n")?,
        None => NodeConfig::parse("{}\n")?,
    };
    if let Some(n) = name {
        config::validate_name("--name", n.trim())?;
        cfg.name = n.trim().to_string();
    }
    if cfg.address.is_some() {
        anyhow::bail!(
            "address: a mesh node gets its address from the coordinator; remove `address` \
             (or run static peers with `tunnelmesh up`)"
        );
    }
    if let Some(t) = &token {
        // Check the token before anything else happens.
        tm_coord::JoinToken::parse(t).context("--token")?;
    }
    match coordinator {
        Some(addr) => {
            // With coordinator settings: this node joins the mesh at `addr` as another
            // coordinator (with a `token create --coordinator` token).
            // `A:8443,B:8443`: several coordinators of one mesh (joined at the first, the
            // others are where it fails over to).
            let addrs: Vec<String> = addr
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| {
                    if a.contains(':') {
                        a.to_string()
                    } else {
                        format!("{a}:{}", config::DEFAULT_COORDINATOR_PORT)
                    }
                })
                .collect();
            if addrs.is_empty() {
                anyhow::bail!("coordinator: give HOST:PORT (or several, separated by commas)");
            }
            run(cfg, Some(addrs.join(",")), token)
        }
        None if cfg.coordinator.is_none() => {
            if mesh::JoinState::load(&cfg.data_dir)?.is_some() {
                // Rejoin the saved mesh.
                return run(cfg, Some(String::new()), None);
            }
            anyhow::bail!(
                "coordinator: this config does not enable coordinator services; to join a mesh \
                 run `tunnelmesh join HOST:PORT --token TOKEN`"
            )
        }
        None => {
            if token.is_some() {
                anyhow::bail!("--token: only used with HOST:PORT (joining a coordinator)");
            }
            run(cfg, None, None)
        }
    }
}

/// Runs a node: static (no coordinator settings, `join_addr` None), a coordinator, or a
/// member of the mesh at `join_addr` (empty: the one saved in data_dir).
fn run(mut cfg: NodeConfig, join_addr: Option<String>, token: Option<String>) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TUNNELMESH_LOG")
                .unwrap_or_else(|_| "info,hickory_server=warn,nfs3_server=warn".into()),
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
        let st = match &cfg.s3 {
            Some(s3) => Some(storage::Storage::open(&cfg, s3)?),
            None => None,
        };
        let mesh = if cfg.coordinator.is_some() {
            let seed =
                mesh::join_as_coordinator(&cfg, &key, join_addr.as_deref(), token.as_deref())
                    .await?;
            let coord = mesh::open_coordinator(&cfg, &key, st.as_ref().map(|s| &s.store), seed)?;
            let co = cfg.coordinator.clone().expect("checked");
            let cidr = config::Cidr::parse(&cfg.mesh_cidr).map_err(anyhow::Error::msg)?;
            cfg.address = Some(config::Cidr {
                addr: coord.mesh_ip().into(),
                len: cidr.len,
            });
            let listener = tokio::net::TcpListener::bind(co.listen)
                .await
                .with_context(|| format!("coordinator.listen: cannot bind {}", co.listen))?;
            let token = coord.token();
            println!(
                "coordinator {} at {} (mesh {})",
                cfg.name, co.listen, cfg.mesh_cidr
            );
            println!("join token: {token}");
            println!(
                "join another machine: tunnelmesh join <this host>:{} --token {token}",
                co.listen.port()
            );
            let server = coord.clone();
            tokio::spawn(async move {
                if let Err(e) = server.serve(listener, std::future::pending()).await {
                    tracing::error!("coordinator API stopped: {e}");
                }
            });
            // Replication with the other coordinators (idle while there are none).
            let id = coord
                .cluster_identity()
                .context("the coordinator's replication identity")?;
            let cluster = coord.clone();
            tokio::spawn(async move {
                cluster
                    .run_cluster(id, std::time::Duration::from_secs(1))
                    .await
            });
            Some(mesh::Mesh {
                netmaps: mesh::coordinator_feed(coord.clone()),
                role: mesh::Role::Coordinator(coord),
                cidr: cidr.network(),
                reachable: Arc::new(AtomicBool::new(true)),
                saved: None,
            })
        } else if let Some(addr) = join_addr {
            let mut addrs = addr.split(',').filter(|a| !a.is_empty()).map(str::to_owned);
            let first = addrs.next();
            let more: Vec<String> = addrs.collect();
            let (state, client) =
                mesh::join(&cfg, &key, first.as_deref(), &more, token.as_deref()).await?;
            let cidr = config::Cidr::parse(&state.mesh_cidr).map_err(anyhow::Error::msg)?;
            cfg.address = Some(config::Cidr {
                addr: state.mesh_ip.into(),
                len: cidr.len,
            });
            println!(
                "joined {} as {} ({})",
                state.coordinator, state.name, state.mesh_ip
            );
            let link = mesh::CoordLink::new(client, &state.more_coordinators);
            let reachable = Arc::new(AtomicBool::new(true));
            Some(mesh::Mesh {
                netmaps: mesh::member_feed(link.clone(), state.netmap.clone(), reachable.clone()),
                role: mesh::Role::Member {
                    client: link,
                    host_ip: mesh::resolve_host(&state.coordinator),
                },
                cidr: cidr.network(),
                reachable,
                saved: Some(state),
            })
        } else {
            None
        };
        let listen_port = cfg.listen_port;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // The name the mesh knows this node by (a member's is the one it joined as).
        let mesh_name = mesh
            .as_ref()
            .and_then(|m| m.saved.as_ref())
            .map_or_else(|| cfg.name.clone(), |s| s.name.clone());
        let hub = docker::DockerHub::new(&mesh_name);
        let _sock = api::serve(&cfg.data_dir.join(tm_api::SOCKET_NAME), tx, hub.clone())?;
        let _registered = tmctl::discover::register(&cfg.data_dir.join(tm_api::SOCKET_NAME));
        let mut node = node::Node::new(cfg, key)?;
        node.set_docker(hub);
        if let Some(st) = st {
            node.set_storage(st);
        }
        if let Some(m) = mesh {
            let relay = match &m.role {
                mesh::Role::Coordinator(c) => relay::RelayBridge::spawn_local(c, listen_port),
                mesh::Role::Member { client, .. } => {
                    relay::RelayBridge::spawn(client.clone(), listen_port)
                }
            };
            node.set_relay(relay);
            node.set_mesh(m);
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
