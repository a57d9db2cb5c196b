//! `tm-s3-server`: serves tm-s3 over a tm-storage store in `--data` with one credential, until
//! SIGINT or SIGTERM. For benchmarks only.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
struct Opt {
    /// Listen address, e.g. 127.0.0.1:9000.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Data directory (created if missing).
    #[arg(long)]
    data: std::path::PathBuf,
    /// Access key.
    #[arg(long)]
    ak: String,
    /// Secret key.
    #[arg(long)]
    sk: String,
    /// Create this bucket with versioning enabled (benchmarks of a versioned bucket).
    #[arg(long)]
    versioned: Option<String>,
    /// Seal every chunk at rest (a random master key for this run): the cost of encryption.
    #[arg(long)]
    encrypt_all: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = Opt::parse();
    let mut cfg = tm_storage::StoreConfig::new(&o.data);
    if o.encrypt_all {
        let mut k = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut k)?;
        cfg.master_key = Some(tm_storage::SecretKey(k));
        cfg.encrypt_all = true;
    }
    let store = tm_storage::Store::open(cfg)
        .with_context(|| format!("open store {}", o.data.display()))?;
    store
        .put_credential(
            &o.ak,
            &o.sk,
            // The store's owner (typed principals: a bare name would have no powers).
            &tm_s3::Principal::Coordinator.credential_string(),
        )
        .context("put credential")?;
    if let Some(b) = &o.versioned {
        match store.create_bucket(b) {
            Ok(()) | Err(tm_storage::StorageError::BucketExists) => {}
            Err(e) => return Err(e).context("create the versioned bucket"),
        }
        store
            .set_versioning(b, tm_storage::Versioning::Enabled)
            .context("enable versioning")?;
    }
    let listener = tokio::net::TcpListener::bind(o.listen)
        .await
        .with_context(|| format!("bind {}", o.listen))?;
    let cfg = tm_s3::S3Config {
        listen: listener.local_addr()?,
        region: tm_s3::DEFAULT_REGION.into(),
        max_body: 5 << 30,
        authority: None,
        replicator: None,
    };
    eprintln!("tm-s3-server listening on http://{}", cfg.listen);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    tm_s3::serve(listener, store, cfg, shutdown).await?;
    Ok(())
}
