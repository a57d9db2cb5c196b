//! Two coordinators of one mesh over real TLS, for the integration tests (each test binary
//! that includes this module uses a part of it).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tm_coord::{
    install_cluster_seed, Coordinator, CoordinatorConfig, Error, FileStore, JoinClient, JoinToken,
    TokenSpec,
};
use tm_noise::PrivateKey;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::common::key;

/// A listener serving `coord` until stopped.
pub struct Listener {
    pub addr: SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Listener {
    pub async fn start(coord: &Coordinator, addr: &str) -> Listener {
        let l = TcpListener::bind(addr).await.expect("bind");
        Self::serve(coord, l)
    }

    pub fn serve(coord: &Coordinator, l: TcpListener) -> Listener {
        let addr = l.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let c = coord.clone();
        let task = tokio::spawn(async move {
            c.serve(l, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        Listener {
            addr,
            stop: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("server task");
    }
}

/// A coordinator with a public listener (members) and a cluster listener (the address other
/// coordinators dial; stopping it partitions this coordinator from the others).
pub struct Coord {
    pub coord: Coordinator,
    pub public: Listener,
    pub cluster: Option<Listener>,
    pub cluster_addr: SocketAddr,
    pub driver: tokio::task::JoinHandle<()>,
    pub key: PrivateKey,
}

pub fn config(name: &str, cluster_addr: SocketAddr) -> CoordinatorConfig {
    let mut cfg = CoordinatorConfig::new(name);
    cfg.tls_names = vec!["127.0.0.1".into()];
    cfg.api_addr = Some(cluster_addr.to_string());
    cfg.cluster_sync = Duration::from_millis(100);
    cfg
}

impl Coord {
    pub async fn open(
        dir: &Path,
        mut cfg: CoordinatorConfig,
        hub: PrivateKey,
        cl: TcpListener,
    ) -> Coord {
        let cluster_addr = cl.local_addr().expect("addr");
        cfg.api_addr = Some(cluster_addr.to_string());
        let every = cfg.cluster_sync;
        let store = Arc::new(FileStore::new(dir.join("state.json")));
        let coord = Coordinator::open(dir, cfg, hub.clone(), store).expect("open coordinator");
        let public = Listener::start(&coord, "127.0.0.1:0").await;
        let cluster = Some(Listener::serve(&coord, cl));
        let id = coord.cluster_identity().expect("cluster identity");
        let c = coord.clone();
        let driver = tokio::spawn(async move { c.run_cluster(id, every).await });
        Coord {
            coord,
            public,
            cluster,
            cluster_addr,
            driver,
            key: hub,
        }
    }

    pub async fn partition(&mut self) {
        if let Some(l) = self.cluster.take() {
            l.stop().await;
        }
    }

    pub async fn heal(&mut self) {
        let l = TcpListener::bind(self.cluster_addr)
            .await
            .expect("rebind the cluster port");
        self.cluster = Some(Listener::serve(&self.coord, l));
    }

    pub async fn stop(mut self) {
        self.driver.abort();
        self.partition().await;
        self.public.stop().await;
    }

    pub async fn join(
        &self,
        token: &str,
        name: &str,
        k: &PrivateKey,
    ) -> Result<tm_coord::wire::Registration, Error> {
        let t = JoinToken::parse(token).expect("token text");
        let mut c = JoinClient::new(self.public.addr.to_string(), t).expect("client");
        c.register(k, name, &[]).await
    }

    pub fn names(&self) -> Vec<(String, std::net::Ipv4Addr, Vec<String>)> {
        let mut v: Vec<_> = self
            .coord
            .nodes()
            .into_iter()
            .map(|n| (n.name, n.mesh_ip, n.tags))
            .collect();
        v.sort();
        v
    }
}

/// Polls until `a` and `b` hold the same records (or 10 s pass).
pub async fn converged(a: &Coord, b: &Coord, what: &str) {
    let t0 = Instant::now();
    loop {
        if a.coord.state_digest() == b.coord.state_digest() && a.names() == b.names() {
            return;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            panic!(
                "{what}: not converged after 10 s:\n a {:?} {:?}\n b {:?} {:?}\n a sees {:?}\n b sees {:?}",
                a.coord.state_digest(),
                a.names(),
                b.coord.state_digest(),
                b.names(),
                a.coord.cluster_status(),
                b.coord.cluster_status()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The audit actions on `target` in `c`'s audit log, oldest first.
pub fn actions(c: &Coord, target: &str) -> Vec<String> {
    c.coord
        .audit_log()
        .expect("audit log")
        .into_iter()
        .filter(|e| e.target == target)
        .map(|e| e.action)
        .collect()
}

/// A token that admits a coordinator, created on `c` by its local root.
pub fn coordinator_token(c: &Coordinator) -> String {
    let spec = TokenSpec {
        coordinator: true,
        ..Default::default()
    };
    c.create_token(&spec, "local root", tm_coord::now_unix())
        .expect("coordinator token")
        .1
}

/// Coordinator B joins A's mesh with a coordinator token.
pub async fn two(dir: &Path) -> (Coord, Coord, String) {
    two_with(dir, Duration::from_millis(100)).await
}

/// [`two`] with anti-entropy every `sync`.
pub async fn two_with(dir: &Path, sync: Duration) -> (Coord, Coord, String) {
    two_tuned(dir, |c| c.cluster_sync = sync).await
}

/// [`two`] with both configurations changed by `tune`.
pub async fn two_tuned(
    dir: &Path,
    tune: impl Fn(&mut CoordinatorConfig),
) -> (Coord, Coord, String) {
    let config = |name: &str, addr: SocketAddr| {
        let mut c = config(name, addr);
        tune(&mut c);
        c
    };
    let a = Coord::open(
        &dir.join("a"),
        config("hub-a", "127.0.0.1:0".parse().unwrap()),
        key(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await;
    let member_token = a.coord.token();
    let ctoken = coordinator_token(&a.coord);
    let kb = key();
    let cl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_api = cl.local_addr().unwrap();
    let t = JoinToken::parse(&ctoken).unwrap();
    let mut jc = JoinClient::new(a.public.addr.to_string(), t).unwrap();
    jc.join_as_coordinator(Some(b_api.to_string()));
    let reg = jc
        .register(&kb, "hub-b", &[])
        .await
        .expect("B registers as a coordinator");
    let seed = reg.cluster.expect("a coordinator gets the cluster seed");
    let bdir = dir.join("b");
    let mut cfg = config("hub-b", b_api);
    cfg.seed_records =
        install_cluster_seed(&bdir, &seed, jc.identity().expect("registered identity"))
            .expect("install the seed");
    let b = Coord::open(&bdir, cfg, kb, cl).await;
    (a, b, member_token)
}
