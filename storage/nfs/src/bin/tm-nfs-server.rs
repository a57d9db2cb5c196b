//! Stand-alone NFSv3 server over an object store directory (tests, benchmarks, debugging; the
//! node serves NFS itself with its `nfs:` config).
//!
//! `tm-nfs-server --data DIR [--listen ADDR:PORT] [--allow CIDR]... [--no-loopback]
//!  [--share NAME[:ro][:QUOTA_BYTES]]... [--read-send copy|sendfile|auto] [--busy-poll-us N]
//!  [--portmap]` — serves
//! `/shares/<name>` (and with `--portmap` the portmapper on port 111 of the listen address)
//! until SIGINT/SIGTERM, then flushes buffered writes and exits 0.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use tm_nfs::portmap::PMAP_PORT;
use tm_nfs::{Cidr, NfsConfig, NfsServer, ReadSend};
use tm_storage::{Store, StoreConfig};

fn usage() -> ! {
    eprintln!(
        "usage: tm-nfs-server --data DIR [--listen ADDR:PORT] [--allow CIDR]... [--no-loopback] \
         [--share NAME[:ro][:QUOTA_BYTES]]... [--read-send copy|sendfile|auto] [--busy-poll-us N] [--portmap]"
    );
    std::process::exit(2)
}

fn main() {
    let mut data: Option<PathBuf> = None;
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], tm_nfs::DEFAULT_PORT));
    let mut allow: Vec<Cidr> = Vec::new();
    let mut loopback = true;
    let mut shares: Vec<String> = Vec::new();
    let mut read_send = ReadSend::Auto;
    let mut busy_poll = tm_nfs::BUSY_POLL;
    let mut portmap = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--data" => data = Some(PathBuf::from(val())),
            "--listen" => listen = val().parse().unwrap_or_else(|_| usage()),
            "--allow" => allow.push(val().parse().unwrap_or_else(|e| {
                eprintln!("{e}");
                usage()
            })),
            "--no-loopback" => loopback = false,
            "--portmap" => portmap = true,
            "--share" => shares.push(val()),
            "--read-send" => read_send = val().parse().unwrap_or_else(|_| usage()),
            "--busy-poll-us" => {
                busy_poll =
                    std::time::Duration::from_micros(val().parse().unwrap_or_else(|_| usage()))
            }
            _ => usage(),
        }
    }
    let data = data.unwrap_or_else(|| usage());
    let store = match Store::open(StoreConfig::new(&data)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "tm-nfs-server: opening the store in {}: {e}",
                data.display()
            );
            std::process::exit(1)
        }
    };
    for s in &shares {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        let mut ro = false;
        let mut quota = None;
        for p in parts {
            match p {
                "ro" => ro = true,
                q => quota = Some(q.parse::<u64>().unwrap_or_else(|_| usage())),
            }
        }
        match store.create_share(name, quota, ro) {
            Ok(_) | Err(tm_storage::FsError::Exists) => {}
            Err(e) => {
                eprintln!("tm-nfs-server: share {name}: {e}");
                std::process::exit(1)
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = rt.block_on(async move {
        if portmap {
            let access = tm_nfs::Access {
                allow: allow.clone(),
                loopback,
            };
            let pm = tm_nfs::portmap::Portmap::for_nfs(listen.port(), PMAP_PORT, access)
                .bind(&[SocketAddr::new(listen.ip(), PMAP_PORT)])
                .await?;
            eprintln!("tm-nfs-server: portmapper on {:?}", pm.local_addrs());
            tokio::spawn(pm.run(std::future::pending()));
        }
        let mut cfg = NfsConfig::new(listen, allow);
        cfg.allow_loopback = loopback;
        cfg.read_send = read_send;
        cfg.busy_poll = busy_poll;
        let server = NfsServer::bind(store, cfg).await?;
        eprintln!("tm-nfs-server: listening on {}", server.local_addr()?);
        server
            .serve(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            })
            .await
    });
    if let Err(e) = r {
        eprintln!("tm-nfs-server: {e}");
        std::process::exit(1);
    }
}
