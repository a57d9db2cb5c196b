//! Opening a coordinator: the CA and server certificate, the join secret, the state from the
//! store (migrating older formats: a state without records becomes records stamped now), the
//! coordinator's own node record, and the replica the state is derived from.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use rand_core::OsRng;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tm_noise::PrivateKey;
use tokio::sync::watch;

use crate::challenge::Challenges;
use crate::limit::SourceLimiter;
use crate::relay::RelayHub;
use crate::{address, Error, MeshCa, StateStore};

use crate::server::{
    index_of, s3_credentials, validate_api_addr, validate_endpoints, Inner, NodeRecord,
    PersistedState, Shared, STATE_FORMAT,
};
use crate::{validate_name, Coordinator, CoordinatorConfig};

impl Coordinator {
    /// Opens (or initialises) a coordinator: CA, server certificate and join secret under
    /// `data_dir/coordinator/`, membership from `store`. The coordinator node itself is
    /// registered (first, `is_coordinator = true`) with `node_static`'s public key.
    pub fn open(
        data_dir: &Path,
        cfg: CoordinatorConfig,
        node_static: PrivateKey,
        store: Arc<dyn StateStore>,
    ) -> Result<Self, Error> {
        validate_name(&cfg.name)?;
        validate_endpoints(&cfg.endpoints)?;
        if let Some(a) = &cfg.api_addr {
            validate_api_addr(a)?;
        }
        let dir = data_dir.join("coordinator");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let ca = MeshCa::load_or_create(&dir, &cfg.tls_names)?;

        let stored = store.load()?;
        let fresh = stored.is_none();
        let mut records = Vec::new();
        let mut state = match stored {
            Some(b) => {
                let snap: crate::replicate::Snapshot = serde_json::from_slice(&b)
                    .map_err(|e| Error::State(format!("cannot parse state: {e}")))?;
                records = snap.records;
                let mut s = snap.state;
                if s.format == 1 {
                    s.format = STATE_FORMAT; // tokens and tags start empty (migrated below)
                }
                if s.format != STATE_FORMAT {
                    return Err(Error::State(format!("unknown state format {}", s.format)));
                }
                if s.mesh_cidr != cfg.mesh_cidr {
                    return Err(Error::Config(format!(
                        "mesh_cidr changed from {} to {}; addresses are persisted, keep the old one",
                        s.mesh_cidr, cfg.mesh_cidr
                    )));
                }
                s
            }
            None => PersistedState {
                format: STATE_FORMAT,
                version: 0,
                mesh_cidr: cfg.mesh_cidr,
                nodes: BTreeMap::new(),
                tokens: BTreeMap::new(),
                policy: None,
                buckets: BTreeMap::new(),
                shares: BTreeMap::new(),
            },
        };
        if fresh && !cfg.seed_records.is_empty() {
            records = cfg.seed_records.clone();
            // The seed's audit records are kept as every audit record is: appended.
            crate::replicate::persist_audit(store.as_ref(), &records)?;
        } else {
            // Audit records live in the audit log, not in the snapshot.
            for raw in store.load_audit()? {
                if let Ok(r) = serde_json::from_slice::<tm_cluster::Record>(&raw) {
                    records.push(r);
                }
            }
        }
        // The records (with their stamps) are the source of truth; a state saved before
        // replication has none and becomes records below.
        let me = node_static.public_key();
        let mut rstore = tm_cluster::Store::new();
        for r in records {
            rstore.apply(r);
        }
        if !rstore.is_empty() {
            state = crate::records::materialize(&rstore, state.version)?.0;
            if state.mesh_cidr != cfg.mesh_cidr {
                return Err(Error::Config(format!(
                    "mesh_cidr is {} in this mesh, not {}",
                    state.mesh_cidr, cfg.mesh_cidr
                )));
            }
        }
        let base_records = if rstore.is_empty() {
            BTreeMap::new()
        } else {
            crate::records::records_of(&state)
        };
        let tokens_before = state.tokens.clone();
        // A default secret rotated elsewhere and merged, but not yet written to the file
        // before a stop: the records have it.
        if let Some(s) = crate::identity::replicated_default_secret(&rstore, &state) {
            crate::store::write_atomic(
                &dir.join("join_secret"),
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &s[..])
                    .as_bytes(),
                0o600,
            )?;
        }
        let join_secret = crate::identity::open_default_secret(&dir, &mut state, fresh)?;

        // The coordinator's own record.
        let before = state.clone();
        match state.by_key(&me).map(|n| n.name.clone()) {
            Some(name) if name != cfg.name => {
                return Err(Error::Config(format!(
                    "this coordinator's key is registered as {name:?}, not {:?}",
                    cfg.name
                )))
            }
            Some(_) => {
                let rec = state.nodes.get_mut(&cfg.name).expect("found by key above");
                rec.is_coordinator = true;
                rec.endpoints = cfg.endpoints.clone();
                rec.api = cfg.api_addr.clone();
            }
            None => {
                if state.nodes.contains_key(&cfg.name) {
                    return Err(Error::Config(format!(
                        "name {:?} is registered with another key",
                        cfg.name
                    )));
                }
                let ip = address::allocate(cfg.mesh_cidr, &me, |ip| state.ip_taken(ip))?;
                let (ak, sk) = s3_credentials(&mut OsRng);
                state.nodes.insert(
                    cfg.name.clone(),
                    NodeRecord {
                        name: cfg.name.clone(),
                        public_key: me,
                        mesh_ip: ip,
                        endpoints: cfg.endpoints.clone(),
                        is_coordinator: true,
                        cert_sha256: None,
                        s3_access_key: ak,
                        s3_secret: sk,
                        observed: None,
                        tags: Vec::new(),
                        api: cfg.api_addr.clone(),
                        services: Vec::new(),
                    },
                );
            }
        }
        let nodes_changed = fresh || state.nodes != before.nodes;
        if nodes_changed {
            state.version += 1;
        }
        let mut replica = tm_cluster::Replica::new(
            tm_cluster::Clock::new(
                crate::replicate::origin_of(&me),
                cfg.max_clock_skew.as_millis() as u64,
            ),
            rstore,
            &[],
            cfg.cluster_sync.as_millis() as u64,
        );
        let writes = crate::records::diff(&base_records, &crate::records::records_of(&state));
        if nodes_changed || state.tokens != tokens_before || !writes.is_empty() {
            replica.write_many(crate::replicate::now_ms(), writes);
            store.save(&crate::replicate::snapshot_bytes(&state, &replica))?;
        }

        let provider = crate::provider();
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.ca_der().clone())
            .map_err(|e| Error::Tls(format!("CA as trust anchor: {e}")))?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
        let tls = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(ca.server_chain(), ca.server_key())
            .map_err(|e| Error::Tls(format!("server certificate: {e}")))?;

        let peers: Vec<tm_cluster::Origin> = state
            .nodes
            .values()
            .filter(|n| n.is_coordinator && n.public_key != me)
            .map(|n| crate::replicate::origin_of(&n.public_key))
            .collect();
        replica.set_peers(&peers);
        let (version, _) = watch::channel(state.version);
        let index = RwLock::new(index_of(&state));
        let policy = crate::policy::compile_state(&state, &cfg.service_ports).map_err(|e| {
            Error::State(format!(
                "the stored policy does not compile ({e}); fix the state's policy or restore a backup"
            ))
        })?;
        let now = Instant::now();
        let challenges = Mutex::new(Challenges::new(cfg.challenge_ttl, cfg.max_challenges, now));
        let limiter = SourceLimiter::new(
            cfg.challenge_rate,
            cfg.challenge_burst,
            cfg.rate_sources,
            now,
        );
        Ok(Self {
            shared: Arc::new(Shared {
                cfg,
                node_static,
                ca,
                dir,
                store,
                tls: Arc::new(tls),
                inner: Mutex::new(Inner {
                    state,
                    default_secret: join_secret,
                }),
                writer: Mutex::new(()),
                index,
                policy: RwLock::new(Arc::new(policy)),
                replica: Mutex::new(replica),
                outbox: crate::cluster::Outbox::new(),
                cluster_errors: Mutex::new(BTreeMap::new()),
                unreachable: Mutex::new(crate::cluster::Liveness::new()),
                epoch: std::sync::atomic::AtomicU64::new(0),
                netmap_cache: Mutex::new(crate::delta::Feed::new(rand_core::RngCore::next_u64(
                    &mut OsRng,
                ))),
                long_polls: std::sync::atomic::AtomicUsize::new(0),
                policy_generation: std::sync::atomic::AtomicU64::new(0),
                admin: RwLock::new(None),
                challenges,
                limiter,
                version,
                seen: watch::channel(0).0,
                merged: watch::channel(0).0,
                relay: RelayHub::new(),
            }),
        })
    }
}
