//! Tests of `storage_sync.rs`: the plan rules, and two coordinators over real TLS, each with
//! its own object store, where bucket and share commands run on A appear on B.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use tm_api::{BucketInfo, Command, ShareInfo, Squash};
use tm_coord::{
    install_cluster_seed, BucketSpec, Coordinator, CoordinatorConfig, Desired, FileStore,
    JoinClient, JoinToken, ShareSpec, StorageSpec, TokenSpec,
};
use tm_noise::PrivateKey;

use super::*;
use crate::storage::Storage;

fn live<T>(spec: T, at: u64) -> Desired<T> {
    Desired {
        spec: Some(spec),
        written_ms: at,
        stamp: format!("s{at}"),
    }
}

fn gone<T>(at: u64) -> Desired<T> {
    Desired {
        spec: None,
        written_ms: at,
        stamp: format!("s{at}"),
    }
}

fn bucket(created_ms: u64, quota: Option<u64>, objects: u64) -> LocalBucket {
    LocalBucket {
        created_ms,
        quota,
        versioning: tm_storage::Versioning::Unversioned,
        objects,
    }
}

#[test]
fn the_plan_creates_sets_and_deletes_but_never_an_object_or_a_newer_bucket() {
    let q = |b| BucketSpec {
        quota_bytes: b,
        ..BucketSpec::default()
    };
    let ro = ShareSpec {
        read_only: true,
        ..ShareSpec::default()
    };
    let mut want = StorageSpec::default();
    want.buckets.insert("new".into(), live(q(Some(5)), 10));
    let versioned = BucketSpec {
        quota_bytes: None,
        versioning: Some("enabled".into()),
    };
    want.buckets.insert("ver".into(), live(versioned, 10));
    want.buckets.insert("same".into(), live(q(None), 10));
    want.buckets.insert("quota".into(), live(q(Some(7)), 10));
    want.buckets.insert("empty".into(), gone(100));
    want.buckets.insert("full".into(), gone(100));
    want.buckets.insert("later".into(), gone(100));
    want.buckets.insert("absent".into(), gone(100));
    want.buckets.insert("default".into(), gone(100));
    want.shares.insert("new".into(), live(ro.clone(), 10));
    want.shares
        .insert("same".into(), live(ShareSpec::default(), 10));
    want.shares.insert("quota".into(), live(ro.clone(), 10));
    want.shares.insert("old".into(), gone(100));
    want.shares
        .insert("empty".into(), live(ShareSpec::default(), 5));
    let mut buckets = BTreeMap::new();
    buckets.insert("same".into(), bucket(1, None, 3));
    buckets.insert("ver".into(), bucket(1, None, 3));
    buckets.insert("quota".into(), bucket(1, Some(1), 3));
    buckets.insert("empty".into(), bucket(100 + CLOCK_SLACK_MS, None, 0));
    buckets.insert("full".into(), bucket(50, None, 2));
    buckets.insert("later".into(), bucket(101 + CLOCK_SLACK_MS, None, 0));
    buckets.insert("default".into(), bucket(1, None, 0));
    buckets.insert("unrecorded".into(), bucket(1, None, 0));
    let mut shares = BTreeMap::new();
    let local = |spec| LocalShare {
        created_ms: 1,
        spec,
    };
    shares.insert("same".into(), local(ShareSpec::default()));
    shares.insert("quota".into(), local(ShareSpec::default()));
    shares.insert("old".into(), local(ShareSpec::default()));
    let got = plan(&want, &buckets, &shares);
    let s = |x: &str| x.to_owned();
    assert_eq!(
        got,
        vec![
            Action::DeleteBucket {
                name: s("empty"),
                stamp: s("s100")
            },
            Action::KeepBucket {
                name: s("full"),
                stamp: s("s100"),
                objects: 2
            },
            Action::CreateBucket {
                name: s("new"),
                quota: Some(5),
                versioning: None
            },
            Action::SetQuota {
                name: s("quota"),
                quota: Some(7)
            },
            Action::SetVersioning {
                name: s("ver"),
                versioning: tm_storage::Versioning::Enabled
            },
            // `empty`'s share is not brought back: its bucket was deleted.
            Action::CreateShare {
                name: s("new"),
                spec: ro.clone()
            },
            Action::DeleteShare { name: s("old") },
            Action::SetShare {
                name: s("quota"),
                spec: ro
            },
        ]
    );
    // Once the store follows, the plan is empty.
    let mut buckets2 = BTreeMap::new();
    buckets2.insert("same".into(), bucket(1, None, 3));
    let mut ver = bucket(1, None, 3);
    ver.versioning = tm_storage::Versioning::Enabled;
    buckets2.insert("ver".into(), ver);
    buckets2.insert("quota".into(), bucket(1, Some(7), 3));
    buckets2.insert("new".into(), bucket(1, Some(5), 0));
    buckets2.insert("full".into(), bucket(50, None, 2));
    let mut shares2 = BTreeMap::new();
    shares2.insert("same".into(), local(ShareSpec::default()));
    shares2.insert(
        "quota".into(),
        local(want.shares["quota"].spec.clone().unwrap()),
    );
    shares2.insert(
        "new".into(),
        local(want.shares["new"].spec.clone().unwrap()),
    );
    let rest = plan(&want, &buckets2, &shares2);
    assert!(
        matches!(&rest[..], [Action::KeepBucket { name, .. }] if name == "full"),
        "{rest:?}"
    );
}

/// Stores a small object (durable when this returns).
fn put(s: &tm_storage::Store, bucket: &str, key: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    s.put_small(
        bucket,
        key,
        tm_storage::ObjectMeta::default(),
        b"meow".to_vec(),
        move |r| {
            let _ = tx.send(r.map(drop));
        },
    );
    rx.recv().expect("put done").expect("put");
}

fn tmpdir(tag: &str) -> PathBuf {
    let mut r = [0u8; 8];
    OsRng.fill_bytes(&mut r);
    let d = std::env::temp_dir().join(format!("tm-sync-{tag}-{}", u64::from_le_bytes(r)));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A coordinator serving on loopback with its replication driver, and its object store.
struct Hub {
    coord: Coordinator,
    storage: Storage,
    addr: std::net::SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Hub {
    async fn open(
        dir: &Path,
        name: &str,
        key: PrivateKey,
        seed: Vec<tm_coord::tm_cluster::Record>,
        l: tokio::net::TcpListener,
    ) -> Hub {
        let addr = l.local_addr().expect("addr");
        let mut cfg = CoordinatorConfig::new(name);
        cfg.tls_names = vec!["127.0.0.1".into()];
        cfg.api_addr = Some(addr.to_string());
        cfg.cluster_sync = Duration::from_millis(100);
        cfg.seed_records = seed;
        let store = Arc::new(FileStore::new(dir.join("state.json")));
        let coord = Coordinator::open(dir, cfg, key, store).expect("open coordinator");
        let c = coord.clone();
        let serve = tokio::spawn(async move {
            c.serve(l, std::future::pending()).await.expect("serve");
        });
        let id = coord.cluster_identity().expect("cluster identity");
        let c = coord.clone();
        let driver =
            tokio::spawn(async move { c.run_cluster(id, Duration::from_millis(100)).await });
        let text = format!(
            "name: {name}\naddress: 100.64.0.1/10\ndata_dir: {d}\ns3: {{data_dir: {d}/s3, master_key_file: {d}/mk}}\n",
            d = dir.display()
        );
        let cfg = crate::config::NodeConfig::parse(&text).expect("node config");
        let storage = Storage::open(&cfg, cfg.s3.as_ref().expect("s3")).expect("store");
        spawn(storage.clone(), coord.clone());
        Hub {
            coord,
            storage,
            addr,
            tasks: vec![serve, driver],
        }
    }

    fn run(&self, cmd: Command) -> tm_api::Response {
        let r = self
            .storage
            .handle_replicated(&self.coord, &cmd, "local root");
        assert!(r.ok, "{cmd:?}: {:?}", r.error);
        r
    }

    fn buckets(&self) -> Vec<(String, Option<u64>)> {
        let r = self.storage.handle(&Command::BucketList);
        let v: Vec<BucketInfo> = serde_json::from_value(r.data.expect("data")).expect("list");
        v.into_iter().map(|b| (b.name, b.quota_bytes)).collect()
    }

    fn shares(&self) -> Vec<(String, bool, Squash, u32)> {
        let r = self.storage.handle(&Command::ShareList);
        let v: Vec<ShareInfo> = serde_json::from_value(r.data.expect("data")).expect("list");
        v.into_iter()
            .map(|s| (s.name, s.read_only, s.squash, s.anonuid))
            .collect()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Materialises `b`'s records now (what `spawn` does on a timer).
async fn reconcile(b: &Hub) {
    let st = b.storage.clone();
    let c = b.coord.clone();
    tokio::task::spawn_blocking(move || st.reconcile(&c))
        .await
        .expect("reconcile");
}

/// Polls `b` (whose records are materialised by `spawn`, as on a coordinator's node) until
/// `f` holds, or panics after 10 s.
async fn until(b: &Hub, what: &str, f: impl Fn(&Hub) -> bool) {
    let t0 = Instant::now();
    loop {
        if f(b) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: not after 10 s: buckets {:?} shares {:?}",
            b.buckets(),
            b.shares()
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_and_shares_made_on_coordinator_a_are_in_bs_object_store() {
    let dir = tmpdir("two");
    let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = Hub::open(
        &dir.join("a"),
        "hub-a",
        PrivateKey::generate(&mut OsRng),
        Vec::new(),
        la,
    )
    .await;
    let (tok, _) = {
        let spec = TokenSpec {
            coordinator: true,
            ..Default::default()
        };
        let (_, t) = a
            .coord
            .create_token(&spec, "local root", tm_coord::now_unix())
            .expect("coordinator token");
        (t, ())
    };
    let kb = PrivateKey::generate(&mut OsRng);
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut jc = JoinClient::new(a.addr.to_string(), JoinToken::parse(&tok).unwrap()).unwrap();
    jc.join_as_coordinator(Some(lb.local_addr().unwrap().to_string()));
    let reg = jc.register(&kb, "hub-b", &[]).await.expect("B registers");
    let bdir = dir.join("b");
    let seed = install_cluster_seed(&bdir, &reg.cluster.expect("seed"), jc.identity().unwrap())
        .expect("seed");
    let b = Hub::open(&bdir, "hub-b", kb, seed, lb).await;

    // On A: a bucket with a quota, a share with squash settings.
    a.run(Command::BucketCreate {
        name: "photos".into(),
    });
    a.run(Command::BucketQuotaSet {
        name: "photos".into(),
        bytes: Some(1 << 20),
        force: false,
    });
    a.run(Command::ShareCreate {
        name: "docs".into(),
        quota_bytes: Some(2 << 20),
        read_only: true,
    });
    a.run(Command::ShareSquash {
        name: "docs".into(),
        squash: Squash::AllSquash,
        anonuid: Some(1000),
        anongid: None,
    });
    until(&b, "B's store has A's bucket and share", |b| {
        b.buckets().contains(&("photos".into(), Some(1 << 20)))
            && b.buckets().contains(&("docs".into(), Some(2 << 20)))
            && b.shares()
                .contains(&("docs".into(), true, Squash::AllSquash, 1000))
    })
    .await;

    // Versioning enabled through S3 on A (the S3 server tells the coordinator, as the
    // daemon's authority does) is enabled on B.
    a.run(Command::BucketCreate { name: "ver".into() });
    a.storage
        .store
        .set_versioning("ver", tm_storage::Versioning::Enabled)
        .expect("versioning on A");
    let settings = tm_s3::BucketSettings {
        quota: None,
        versioning: tm_storage::Versioning::Enabled,
    };
    let auth = crate::identity::MeshAuthority(a.coord.clone());
    tm_s3::Authority::bucket_changed(&auth, "ver", Some(&settings), &tm_s3::Principal::LocalRoot)
        .expect("recorded");
    until(&b, "B's ver is versioned", |b| {
        b.storage.store.versioning("ver").ok() == Some(tm_storage::Versioning::Enabled)
    })
    .await;

    // An object in `photos` on B only (object contents are not replicated here).
    put(&b.storage.store, "photos", "cat.jpg");
    // Deletes on A: the share goes everywhere; the bucket is gone where it is empty and kept,
    // audited once, where it holds objects.
    a.run(Command::ShareDelete {
        name: "docs".into(),
    });
    a.run(Command::BucketDelete {
        name: "photos".into(),
    });
    until(&b, "B follows the deletes", |b| {
        !b.shares().iter().any(|s| s.0 == "docs")
    })
    .await;
    assert!(
        b.buckets().iter().any(|x| x.0 == "photos"),
        "a bucket holding objects is kept: {:?}",
        b.buckets()
    );
    let conflicts = |c: &Coordinator| {
        c.audit_log()
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "storage.conflict" && e.target == "photos")
            .count()
    };
    until(&b, "the conflict is audited once and reaches A", |_| {
        conflicts(&a.coord) == 1
    })
    .await;
    assert_eq!(conflicts(&b.coord), 1);
    assert!(!a.buckets().iter().any(|x| x.0 == "photos"));
    // Emptied on B, the bucket goes at the next materialisation.
    b.storage
        .store
        .delete_object("photos", "cat.jpg")
        .expect("delete the object");
    // (Emptying is no merge: the next periodic materialisation, run here at once.)
    reconcile(&b).await;
    until(&b, "the emptied bucket goes", |b| {
        !b.buckets().iter().any(|x| x.0 == "photos")
    })
    .await;
    // A refuses to delete a bucket that is not empty there, and records nothing.
    a.run(Command::BucketCreate {
        name: "keep".into(),
    });
    put(&a.storage.store, "keep", "k");
    let r = a.storage.handle_replicated(
        &a.coord,
        &Command::BucketDelete {
            name: "keep".into(),
        },
        "local root",
    );
    assert!(
        !r.ok && r.error.as_deref().unwrap().contains("not empty"),
        "{r:?}"
    );
    assert!(a.coord.storage_spec().buckets["keep"].spec.is_some());
    drop(a);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
