//! Test harness: an in-process S3 server on 127.0.0.1:<ephemeral> over a temp data dir with a
//! random credential, plus helpers to run real clients.
#![allow(dead_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tm_s3::{Authority, BucketSettings, NodeKey, Principal, S3Config, SeedLogin, TokenRefusal};
use tm_storage::{Store, StoreConfig};

pub struct Server {
    pub addr: SocketAddr,
    pub ak: String,
    pub secret: String,
    pub sys_ak: String,
    pub sys_secret: String,
    pub token: String,
    pub authority: Arc<TestAuthority>,
    pub store: Store,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(false)
    }

    /// A server whose store has a random master key (SSE-S3) and, with `encrypt_all`, seals
    /// every chunk.
    pub fn start_with(encrypt_all: bool) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = StoreConfig::new(dir.path().join("data"));
        cfg.max_size = None;
        let mut mk = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut mk))
            .expect("read /dev/urandom");
        cfg.master_key = Some(tm_storage::SecretKey(mk));
        cfg.encrypt_all = encrypt_all;
        let store = Store::open(cfg).expect("open store");
        let ak = format!("AK{}", random_hex(8).to_uppercase());
        let secret = random_hex(20);
        store
            .put_credential(&ak, &secret, &alice().credential_string())
            .expect("cred");
        let sys_ak = format!("SYS{}", random_hex(8).to_uppercase());
        let sys_secret = random_hex(20);
        store
            .put_credential(
                &sys_ak,
                &sys_secret,
                &Principal::Coordinator.credential_string(),
            )
            .expect("cred");
        let token = format!("tm1_{}", random_hex(16));
        let authority = Arc::new(TestAuthority::new(&token));
        let auth = authority.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (atx, arx) = std::sync::mpsc::channel();
        let st = store.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                atx.send(l.local_addr().expect("addr")).expect("send addr");
                let cfg = S3Config {
                    listen: l.local_addr().expect("addr"),
                    region: tm_s3::DEFAULT_REGION.into(),
                    max_body: 5 << 30,
                    authority: Some(auth as Arc<dyn Authority>),
                    replicator: None,
                };
                tm_s3::serve(l, st, cfg, async {
                    let _ = rx.await;
                })
                .await
                .expect("serve");
            });
        });
        let addr = arx.recv().expect("server address");
        Server {
            addr,
            ak,
            secret,
            sys_ak,
            sys_secret,
            token,
            authority,
            store,
            dir,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn work(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    /// Environment for AWS-style clients.
    pub fn aws_env(&self, cmd: &mut Command) {
        let cfgdir = self.work("awscfg");
        // awscli v1 presigns with SigV2 by default; this server speaks SigV4 only.
        std::fs::write(
            cfgdir.join("config"),
            "[default]\nregion = us-east-1\ns3 =\n    signature_version = s3v4\n",
        )
        .expect("aws config");
        cmd.env("AWS_ACCESS_KEY_ID", &self.ak)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", cfgdir.join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", cfgdir.join("credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env("NO_PROXY", "127.0.0.1");
    }
}

/// The node the random credential `ak` belongs to.
pub fn alice() -> Principal {
    Principal::Node {
        key: NodeKey([0xa1; 32]),
        name: "peer-alice".into(),
        tags: vec![],
    }
}

/// The mesh's identities for tests: one default token (`Server::token`, id `tk-default`),
/// node `peer-alice` (mesh address 127.0.0.1, so the seed login works from this host) and node
/// `peer-far` (mesh address 127.0.0.2: its seed login is refused from 127.0.0.1).
#[derive(Debug)]
pub struct TestAuthority {
    /// token text -> (id, revoked)
    tokens: Mutex<HashMap<String, (String, bool)>>,
    default: Mutex<Option<String>>,
    removed: Mutex<bool>,
    /// Every `bucket_changed` call: (bucket, settings, who).
    pub bucket_changes: Mutex<Vec<(String, Option<BucketSettings>, String)>>,
}

impl TestAuthority {
    fn new(token: &str) -> Self {
        let mut m = HashMap::new();
        m.insert(token.to_owned(), ("tk-default".to_owned(), false));
        Self {
            tokens: Mutex::new(m),
            default: Mutex::new(Some(token.to_owned())),
            removed: Mutex::new(false),
            bucket_changes: Mutex::new(Vec::new()),
        }
    }

    /// Revokes a token (and it stops being the default).
    pub fn revoke(&self, token: &str) {
        if let Some(t) = self.tokens.lock().expect("lock").get_mut(token) {
            t.1 = true;
        }
        let mut d = self.default.lock().expect("lock");
        if d.as_deref() == Some(token) {
            *d = None;
        }
    }

    /// Removes node `peer-alice` from the mesh.
    pub fn remove_alice(&self) {
        *self.removed.lock().expect("lock") = true;
    }
}

impl Authority for TestAuthority {
    fn token(&self, token: &str) -> Result<Principal, TokenRefusal> {
        match self.tokens.lock().expect("lock").get(token) {
            None => Err(TokenRefusal::Unknown),
            Some((id, true)) => Err(TokenRefusal::Revoked(id.clone())),
            Some((id, false)) => Ok(Principal::Token {
                id: id.clone(),
                tags: vec![],
            }),
        }
    }

    fn seed_login(&self, name: &str) -> Option<SeedLogin> {
        let (key, ip): (NodeKey, IpAddr) = match name {
            "peer-alice" if !*self.removed.lock().expect("lock") => {
                (NodeKey([0xa1; 32]), "127.0.0.1".parse().expect("ip"))
            }
            "peer-far" => (NodeKey([0xfa; 32]), "127.0.0.2".parse().expect("ip")),
            _ => return None,
        };
        Some(SeedLogin {
            principal: Principal::Node {
                key,
                name: name.into(),
                tags: vec![],
            },
            mesh_ip: ip,
            secret: self.default.lock().expect("lock").clone(),
        })
    }

    fn node(&self, key: &NodeKey) -> Option<Principal> {
        (key.0 == [0xa1; 32] && !*self.removed.lock().expect("lock")).then(alice)
    }

    fn bucket_changed(
        &self,
        bucket: &str,
        now: Option<&BucketSettings>,
        who: &Principal,
    ) -> Result<(), String> {
        self.bucket_changes.lock().expect("lock").push((
            bucket.to_owned(),
            now.cloned(),
            who.to_string(),
        ));
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Panics (fails the test) with install instructions if `tool` is not on PATH.
pub fn require(tool: &str, install: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{tool}` is required for this test but not installed; install it with: {install}"
    );
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    out
}

pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `len` pseudo-random bytes to `path`.
pub fn random_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    std::fs::write(path, v).expect("write file");
}

pub fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::read(a).expect("read a") == std::fs::read(b).expect("read b")
}
