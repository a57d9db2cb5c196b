//! The node's object store and S3 endpoint (when the config has an `s3:` section).
//!
//! The store is opened before anything listens; S3 is served once the dataplane has configured
//! the mesh address (the default listen address is `<mesh IP>:8080`). This node's own S3
//! credential is random, created once and kept in `<data_dir>/s3-credentials.json` (mode 0600)
//! and in the store's credential table; `tmctl s3 credentials` prints it.

use crate::config::{NodeConfig, S3Settings};
use anyhow::{Context, Result};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::UNIX_EPOCH;
use tm_api::{BucketInfo, Command, Response, S3Credentials, ShareInfo, Squash};
use tm_storage::{Store, StoreConfig};

#[derive(Clone)]
pub struct Storage {
    pub store: Store,
    pub settings: S3Settings,
    pub creds: S3Credentials,
    /// Where S3, NFS and the portmapper listen, once they do (`tmctl status`).
    pub endpoints: std::sync::Arc<std::sync::Mutex<Endpoints>>,
    /// Serialises replicated bucket/share commands and their materialisation
    /// (`storage_sync.rs`).
    pub(crate) sync: std::sync::Arc<std::sync::Mutex<()>>,
    /// The object replication driver, once started on a coordinator (`cluster status`).
    pub objrep: std::sync::Arc<std::sync::OnceLock<tm_coord::objrep::ObjectReplication>>,
}

/// The listeners of the store's services.
#[derive(Default, Clone, Debug)]
pub struct Endpoints {
    pub s3: Option<std::net::SocketAddr>,
    pub nfs: Option<std::net::SocketAddr>,
    /// `Err`: why it does not run (port 111 taken).
    pub portmap: Option<Result<std::net::SocketAddr, String>>,
}

#[derive(Serialize, Deserialize)]
struct SavedCreds {
    access_key: String,
    secret_key: String,
}

/// The node's master key: 32 random bytes in `path` (mode 0600), created on first use. It
/// wraps the data keys of SSE-S3 objects and seals chunks with `s3.encrypt_at_rest`; losing
/// it loses those objects.
fn load_or_create_master_key(path: &Path) -> Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(b) => b.try_into().map_err(|b: Vec<u8>| {
            anyhow::anyhow!(
                "s3.master_key_file: {} holds {} bytes, expected 32",
                path.display(),
                b.len()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut k = [0u8; 32];
            OsRng.fill_bytes(&mut k);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("s3.master_key_file: creating {}", dir.display()))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("s3.master_key_file: creating {}", path.display()))?;
            f.write_all(&k)?;
            f.sync_all()?;
            Ok(k)
        }
        Err(e) => Err(e).with_context(|| format!("s3.master_key_file: reading {}", path.display())),
    }
}

fn random_string(alphabet: &[u8], n: usize) -> String {
    let mut b = vec![0u8; n];
    OsRng.fill_bytes(&mut b);
    b.iter()
        .map(|x| alphabet[*x as usize % alphabet.len()] as char)
        .collect()
}

impl Storage {
    pub fn open(cfg: &NodeConfig, settings: &S3Settings) -> Result<Self> {
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!("s3.data_dir: cannot create {}", settings.data_dir.display())
        })?;
        let mut sc = StoreConfig::new(&settings.data_dir);
        sc.max_size = settings.max_size;
        sc.master_key = Some(tm_storage::SecretKey(load_or_create_master_key(
            &settings.master_key_file,
        )?));
        sc.encrypt_all = settings.encrypt_at_rest;
        let store = Store::open(sc).with_context(|| {
            format!(
                "opening the object store in {}",
                settings.data_dir.display()
            )
        })?;
        // A coordinator always exports the `default` share (and its bucket exists for S3).
        store
            .ensure_share(tm_storage::DEFAULT_SHARE)
            .context("creating the default file share")?;
        let saved = load_or_create_creds(&cfg.data_dir.join("s3-credentials.json"))?;
        // The store owner's own key: the only principal that may use the system bucket.
        store
            .put_credential(
                &saved.access_key,
                &saved.secret_key,
                &tm_s3::Principal::Coordinator.credential_string(),
            )
            .context("storing this node's S3 credential")?;
        let creds = S3Credentials {
            access_key: saved.access_key,
            secret_key: saved.secret_key,
            endpoint: match settings.listen {
                Some(l) => format!("http://{l}/s3"),
                None => "http://coordinator.mesh:8080/s3".into(),
            },
        };
        Ok(Storage {
            store,
            settings: settings.clone(),
            creds,
            endpoints: Default::default(),
            sync: Default::default(),
            objrep: Default::default(),
        })
    }

    /// Binds the S3 listener (default `<mesh IP>:8080`) and serves it in the background.
    /// `authority` (on a coordinator) answers tokens (Bearer, Basic), node identities and the
    /// seed login.
    pub async fn serve(
        &self,
        mesh_ip: std::net::IpAddr,
        authority: Option<std::sync::Arc<dyn tm_s3::Authority>>,
        replicator: Option<std::sync::Arc<dyn tm_storage::replication::hook::Replicator>>,
    ) -> Result<()> {
        let listen = self
            .settings
            .listen
            .unwrap_or_else(|| std::net::SocketAddr::new(mesh_ip, 8080));
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("s3.listen: cannot bind {listen}"))?;
        let cfg = tm_s3::S3Config {
            listen,
            max_body: 5 << 30,
            authority,
            region: self.settings.region.clone(),
            replicator,
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = tm_s3::serve(l, store, cfg, std::future::pending()).await {
                tracing::error!("S3 server stopped: {e}");
            }
        });
        tracing::info!(%listen, "S3 endpoint at http://{listen}/s3");
        self.set_endpoint(|e| e.s3 = Some(listen));
        Ok(())
    }

    /// Starts object replication with the other coordinators of `coord` (`s3.replication`;
    /// idle while this is the only coordinator). Needs the tokio runtime.
    pub fn replication(
        &self,
        coord: &tm_coord::Coordinator,
    ) -> std::sync::Arc<dyn tm_storage::replication::hook::Replicator> {
        let r = &self.settings.replication;
        let cfg = tm_coord::objrep::ReplicationConfig {
            factor: r.factor,
            mode: r.mode,
            ..Default::default()
        };
        let r = tm_coord::objrep::ObjectReplication::start(coord, self.store.clone(), cfg);
        let _ = self.objrep.set(r.clone());
        std::sync::Arc::new(r)
    }

    /// Makes the store's credentials exactly this node's own key plus the S3 credentials the
    /// coordinator issued at registration, each acting as that node (by its key): keys of
    /// nodes that left are revoked (blocking: call from `spawn_blocking`).
    pub fn install_credentials(&self, creds: &[tm_coord::NodeCredential]) {
        match self.store.list_credentials() {
            Ok(all) => {
                for (ak, principal) in all {
                    let current =
                        ak == self.creds.access_key || creds.iter().any(|c| c.access_key == ak);
                    if !current {
                        match self.store.delete_credential(&ak) {
                            Ok(_) => {
                                tracing::info!(node = %principal, "revoked the S3 key of a departed node")
                            }
                            Err(e) => tracing::warn!(node = %principal, "revoking an S3 key: {e}"),
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("listing S3 credentials: {e}"),
        }
        for c in creds {
            let principal = tm_s3::Principal::Node {
                key: tm_s3::NodeKey(c.public_key.0),
                name: c.name.clone(),
                tags: Vec::new(),
            }
            .credential_string();
            match self.store.credential(&c.access_key) {
                Ok(Some((s, p))) if s == c.secret && p == principal => continue,
                _ => {}
            }
            if let Err(e) = self
                .store
                .put_credential(&c.access_key, &c.secret, &principal)
            {
                tracing::warn!(node = %c.name, "installing S3 credentials: {e}");
            }
        }
    }

    /// Binds the NFSv3 server (mount protocol on the same port) on `addr` (default
    /// `<mesh IP>:2049`) and serves `/shares/<name>` in the background. Loopback and sources in
    /// `mesh_cidrs` (cryptokey-routed) may connect; others get `MNT3ERR_ACCES`. On a coordinator
    /// `gate` (the policy) decides MOUNT and every call by the member's share grant. NFS and S3 serve
    /// the same `Store` (one process): UNSTABLE NFS writes are staged in that store, which
    /// applies them before any S3 read of the object, so S3 sees every acknowledged write.
    pub async fn serve_nfs(
        &self,
        addr: std::net::SocketAddr,
        mesh_cidrs: &[String],
        gate: Option<std::sync::Arc<dyn tm_nfs::Gate>>,
    ) -> Result<std::net::SocketAddr> {
        let allow = mesh_cidrs
            .iter()
            .map(|c| c.parse::<tm_nfs::Cidr>())
            .collect::<Result<Vec<_>, _>>()
            .context("nfs: mesh CIDR")?;
        let mut cfg = tm_nfs::NfsConfig::new(addr, allow.clone());
        cfg.gate = gate;
        let server = tm_nfs::NfsServer::bind(self.store.clone(), cfg)
            .await
            .with_context(|| format!("nfs.listen: cannot serve NFS on {addr}"))?;
        let local = server.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = server.serve(std::future::pending()).await {
                tracing::error!("NFS server stopped: {e}");
            }
        });
        let pm = crate::portmap::start(local, &allow).await;
        self.set_endpoint(|e| {
            e.nfs = Some(local);
            e.portmap = Some(pm);
        });
        tracing::info!(listen = %local, "NFSv3 shares at {local}:/shares/<name>");
        Ok(local)
    }

    fn set_endpoint(&self, f: impl FnOnce(&mut Endpoints)) {
        f(&mut self.endpoints.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Runs a storage command (blocking: call from `spawn_blocking`).
    pub fn handle(&self, c: &Command) -> Response {
        let s = &self.store;
        let r: Result<Response, tm_storage::FsError> = (|| {
            Ok(match c {
                Command::BucketList => {
                    let mut out = Vec::new();
                    for b in s.list_buckets()? {
                        out.push(self.info(&b.name)?);
                    }
                    Response::ok(&out)
                }
                Command::BucketCreate { name } => {
                    s.create_bucket(name)?;
                    Response::ok(&self.info(name)?)
                }
                Command::BucketDelete { name } => {
                    s.delete_bucket(name)?;
                    Response::ok(&())
                }
                Command::BucketQuotaSet { name, bytes, force } => {
                    match s.set_quota_checked(name, *bytes, *force)? {
                        (true, _) => Response::ok(&self.info(name)?),
                        (false, used) => Response::err(below_usage(name, bytes.unwrap_or(0), used)),
                    }
                }
                Command::BucketUsage { name } => Response::ok(&self.info(name)?),
                Command::S3Credentials => Response::ok(&self.creds),
                Command::ShareList => {
                    let list: Vec<ShareInfo> = s.list_shares()?.iter().map(share_info).collect();
                    Response::ok(&list)
                }
                Command::ShareCreate {
                    name,
                    quota_bytes,
                    read_only,
                } => match (quota_bytes, s.usage(name)) {
                    // Adopting a bucket that already holds more than the quota.
                    (Some(q), Ok(used)) if used.bytes > *q => {
                        Response::err(below_usage(name, *q, used))
                    }
                    _ => Response::ok(&share_info(&s.create_share(
                        name,
                        *quota_bytes,
                        *read_only,
                    )?)),
                },
                Command::ShareDelete { name } => {
                    s.delete_share(name)?;
                    Response::ok(&())
                }
                Command::ShareSquash {
                    name,
                    squash,
                    anonuid,
                    anongid,
                } => {
                    let d = tm_storage::Squash::default();
                    s.set_share_squash(
                        name,
                        tm_storage::Squash {
                            root: *squash == Squash::RootSquash,
                            all: *squash == Squash::AllSquash,
                            anonuid: anonuid.unwrap_or(d.anonuid),
                            anongid: anongid.unwrap_or(d.anongid),
                        },
                    )?;
                    Response::ok(&share_info(&s.share(name)?))
                }
                _ => Response::err("not a storage command"),
            })
        })();
        r.unwrap_or_else(|e| Response::err(describe(c, &e)))
    }

    fn info(&self, name: &str) -> Result<BucketInfo, tm_storage::StorageError> {
        let b = self.store.bucket(name)?;
        let u = self.store.usage(name)?;
        Ok(BucketInfo {
            name: b.name,
            created_unix: b
                .created
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            quota_bytes: b.quota,
            used_bytes: u.bytes,
            objects: u.objects,
        })
    }
}

fn share_info(s: &tm_storage::ShareInfo) -> ShareInfo {
    ShareInfo {
        name: s.name.clone(),
        export: format!("/shares/{}", s.name),
        read_only: s.read_only,
        squash: match (s.squash.all, s.squash.root) {
            (true, _) => Squash::AllSquash,
            (false, true) => Squash::RootSquash,
            (false, false) => Squash::NoRootSquash,
        },
        anonuid: s.squash.anonuid,
        anongid: s.squash.anongid,
        quota_bytes: s.quota,
        used_bytes: s.used_bytes,
        objects: s.objects,
        created_unix: s
            .created
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

fn describe(c: &Command, e: &tm_storage::FsError) -> String {
    let name = match c {
        Command::BucketCreate { name }
        | Command::BucketDelete { name }
        | Command::BucketQuotaSet { name, .. }
        | Command::BucketUsage { name }
        | Command::ShareCreate { name, .. }
        | Command::ShareSquash { name, .. }
        | Command::ShareDelete { name } => name.as_str(),
        _ => "",
    };
    use tm_storage::{FsError as F, StorageError as E};
    match e {
        F::Storage(E::NoSuchBucket) => format!("bucket '{name}' does not exist"),
        F::Storage(E::BucketExists) => format!("bucket '{name}' already exists"),
        F::Storage(E::BucketNotEmpty) => format!("bucket '{name}' is not empty (delete its objects first)"),
        F::Storage(E::InvalidBucketName) => format!("'{name}' is not a valid bucket name (3-63 of a-z, 0-9, '-', '.', starting and ending with a letter or digit)"),
        F::Storage(E::ReservedBucket) => format!("'{name}' is reserved for the coordinator"),
        F::NoSuchShare => format!("share '{name}' does not exist"),
        F::Exists => format!("share '{name}' already exists"),
        other => format!("{other}"),
    }
}

/// The refusal of a quota below a bucket's usage.
fn below_usage(name: &str, quota: u64, used: tm_storage::Usage) -> String {
    use tmctl::human_bytes as h;
    format!(
        "quota {} ({quota} bytes) is below the usage of bucket '{name}': {} ({} bytes in {} \
         objects); delete objects first, or set it anyway with `bucket quota set {name} SIZE \
         --force` (writes that grow the bucket are then refused)",
        h(quota),
        h(used.bytes),
        used.bytes,
        used.objects
    )
}

fn load_or_create_creds(path: &Path) -> Result<SavedCreds> {
    if let Ok(t) = std::fs::read_to_string(path) {
        return serde_json::from_str(&t).with_context(|| {
            format!(
                "{} is corrupt (delete it to issue a new S3 credential)",
                path.display()
            )
        });
    }
    let c = SavedCreds {
        access_key: format!(
            "TM{}",
            random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 18)
        ),
        secret_key: random_string(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            40,
        ),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(serde_json::to_string(&c)?.as_bytes())?;
    f.sync_all()?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::load_or_create_master_key;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn master_key_is_created_once_0600_and_checked() {
        let dir = std::env::temp_dir().join(format!("tm-mk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = dir.join("sub").join("s3-master.key");
        let k = load_or_create_master_key(&p).expect("create");
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            load_or_create_master_key(&p).expect("reload"),
            k,
            "same key"
        );
        assert_ne!(k, [0u8; 32]);
        std::fs::write(&p, b"short").expect("write");
        let e = load_or_create_master_key(&p).unwrap_err().to_string();
        assert!(e.contains("holds 5 bytes, expected 32"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
