//! The coordinator-to-coordinator transport (issue 17): replication messages of
//! `tm_cluster` over `POST /v1/cluster` with mutual TLS. The server side accepts a message
//! only from a client certificate that belongs to a node recorded as a coordinator (a node
//! certificate is refused), and answers with the messages the replica wants to send back
//! (a digest is answered by the records that differ, those by the records asked for).
//! The client side, [`Coordinator::run_cluster`], pushes every committed change to every other
//! coordinator and runs anti-entropy with one of them per interval.
//!
//! Messages over the request bound are cut into pushes (records merge the same way whichever
//! message carries them). A push that cannot be delivered is dropped: the next anti-entropy
//! round with that coordinator repairs it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tm_cluster::{Msg, Origin, Out, Record};
use tm_noise::PublicKey;
use tokio::sync::mpsc;

use crate::replicate::{now_ms, origin_of};
use crate::{Coordinator, Error, JoinClient, JoinToken, NodeIdentity};

/// Most bytes of records per request (the server reads bodies up to 64 KiB).
const MAX_BATCH_BYTES: usize = 48 * 1024;
/// Pushes waiting for delivery; beyond, new ones are dropped (anti-entropy repairs them).
const OUTBOX: usize = 4096;
/// Time allowed for one delivery (connect, request, answer).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// The API port coordinators listen on when their record names no address.
const DEFAULT_API_PORT: u16 = 8443;

/// A coordinator not heard from for this long, plus two anti-entropy rounds per coordinator,
/// is marked unreachable in netmaps.
const LIVE_GRACE_MS: u64 = 5_000;

/// Which other coordinators this one has not heard from lately.
#[derive(Debug)]
pub(crate) struct Liveness {
    pub(crate) down: std::collections::BTreeSet<PublicKey>,
    /// When this coordinator started watching (a coordinator never heard from is down only
    /// once the window has passed since then).
    since_ms: u64,
}

impl Liveness {
    pub(crate) fn new() -> Liveness {
        Liveness {
            down: Default::default(),
            since_ms: now_ms(),
        }
    }
}

/// Messages for other coordinators, queued by state changes.
pub(crate) struct Outbox {
    tx: mpsc::Sender<Out>,
    rx: Mutex<Option<mpsc::Receiver<Out>>>,
}

impl Outbox {
    pub(crate) fn new() -> Outbox {
        let (tx, rx) = mpsc::channel(OUTBOX);
        Outbox {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    pub(crate) fn send(&self, outs: Vec<Out>) {
        for o in outs {
            if self.tx.try_send(o).is_err() {
                tracing::debug!("replication outbox full: a push is left to anti-entropy");
            }
        }
    }

    fn take(&self) -> Option<mpsc::Receiver<Out>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Prepares `data_dir` for a coordinator that joined an existing mesh: writes the mesh CA, the
/// default join secret and its registration identity (its replication client certificate)
/// under `data_dir/coordinator/` and returns the records to open it with
/// ([`crate::CoordinatorConfig::seed_records`]).
pub fn install_cluster_seed(
    data_dir: &std::path::Path,
    seed: &crate::wire::ClusterSeed,
    identity: &NodeIdentity,
) -> Result<Vec<Record>, Error> {
    let dir = data_dir.join("coordinator");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let crt = dir.join("ca.crt");
    if crt.exists() {
        let have = std::fs::read_to_string(&crt)
            .map_err(|e| Error::io(format!("read {}", crt.display()), e))?;
        if have.trim() != seed.ca_cert_pem.trim() {
            return Err(Error::Config(format!(
                "{} holds the CA of another mesh; use an empty data_dir to join this one",
                dir.display()
            )));
        }
    }
    crate::store::write_atomic(&dir.join("ca.key"), seed.ca_key_pem.as_bytes(), 0o600)?;
    crate::store::write_atomic(&crt, seed.ca_cert_pem.as_bytes(), 0o644)?;
    crate::store::write_atomic(&dir.join("join_secret"), seed.join_secret.as_bytes(), 0o600)?;
    // The certificate it registered with is the one the other coordinators know it by.
    crate::store::write_atomic(&dir.join("cluster.key"), identity.key_pem.as_bytes(), 0o600)?;
    crate::store::write_atomic(
        &dir.join("cluster.crt"),
        identity.cert_pem.as_bytes(),
        0o644,
    )?;
    Ok(seed.records.clone())
}

/// The address replication dials for coordinator `n`: its record's `api` (`HOST:PORT`, or
/// `:PORT` at its mesh address), else its mesh address and the default port.
fn dial_address(n: &crate::server::NodeRecord) -> String {
    match n.api.as_deref() {
        None => format!("{}:{DEFAULT_API_PORT}", n.mesh_ip),
        Some(p) if p.starts_with(':') => format!("{}{p}", n.mesh_ip),
        Some(a) => a.to_owned(),
    }
}

/// Cuts `msg` into messages whose records fit the request bound (`Repair` keeps its `want`
/// on the last piece).
pub(crate) fn split(msg: Msg) -> Vec<Msg> {
    fn batches(records: Vec<Record>) -> Vec<Vec<Record>> {
        let mut out = vec![Vec::new()];
        let mut size = 0;
        for r in records {
            let n = serde_json::to_vec(&r).map_or(0, |v| v.len()) + 1;
            if size + n > MAX_BATCH_BYTES && !out.last().expect("one batch").is_empty() {
                out.push(Vec::new());
                size = 0;
            }
            size += n;
            out.last_mut().expect("one batch").push(r);
        }
        out
    }
    match msg {
        Msg::Push { records } => batches(records)
            .into_iter()
            .map(|records| Msg::Push { records })
            .collect(),
        Msg::Records { records } => {
            let mut b = batches(records);
            let last = b.pop().expect("one batch");
            let mut out: Vec<Msg> = b.into_iter().map(|records| Msg::Push { records }).collect();
            out.push(Msg::Records { records: last });
            out
        }
        Msg::Repair { records, want } => {
            let mut b = batches(records);
            let last = b.pop().expect("one batch");
            let mut out: Vec<Msg> = b.into_iter().map(|records| Msg::Push { records }).collect();
            out.push(Msg::Repair {
                records: last,
                want,
            });
            out
        }
        m => vec![m],
    }
}

impl Coordinator {
    /// The static key of the registered coordinator `name` (not this one): the only callers
    /// `POST /v1/cluster` accepts.
    pub(crate) fn cluster_peer(&self, name: &str) -> Result<PublicKey, Error> {
        let g = self.lock();
        match g.state.nodes.get(name) {
            Some(n) if n.is_coordinator && n.public_key != self.public_key() => Ok(n.public_key),
            _ => Err(Error::NotAllowed(format!(
                "{name} is not a coordinator of this mesh: only coordinators replicate"
            ))),
        }
    }

    /// Where to reach the coordinator with `origin`: its static key and API address.
    fn peer_address(&self, origin: Origin) -> Option<(PublicKey, String)> {
        let g = self.lock();
        g.state
            .nodes
            .values()
            .find(|n| n.is_coordinator && origin_of(&n.public_key) == origin)
            .map(|n| (n.public_key, dial_address(n)))
    }

    /// The other coordinators: static key and API address of each.
    pub(crate) fn other_coordinators(&self) -> Vec<(PublicKey, String)> {
        let me = self.public_key();
        let g = self.lock();
        g.state
            .nodes
            .values()
            .filter(|n| n.is_coordinator && n.public_key != me)
            .map(|n| (n.public_key, dial_address(n)))
            .collect()
    }

    /// Replicates with the other coordinators until the task is dropped: pushes committed
    /// changes as they come and starts an anti-entropy round every `every` (with one peer at a
    /// time). `identity` is this coordinator's mTLS client identity ([`Coordinator::cluster_identity`]).
    /// Messages go over the link to each other coordinator (`link.rs`, kept up here too) or,
    /// without one, as `POST /v1/cluster`.
    /// Returns at once if it is already running.
    pub async fn run_cluster(&self, identity: NodeIdentity, every: Duration) {
        let Some(mut rx) = self.shared.outbox.take() else {
            return;
        };
        let token = JoinToken::new(self.shared.ca.ca_der().as_ref(), [0u8; 32]);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut link_tick = tokio::time::interval(crate::link::LINK_CHECK);
        link_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Dropping the set (this task ends or is aborted) closes every link.
        let mut links = tokio::task::JoinSet::new();
        let mut dialer = crate::link::Dialer::default();
        loop {
            let outs = tokio::select! {
                _ = link_tick.tick() => {
                    self.start_links(&mut links, &mut dialer, &token, &identity);
                    continue;
                }
                _ = tick.tick() => {
                    let fx = self.replica().tick(now_ms());
                    self.update_liveness(every);
                    fx.send
                }
                o = rx.recv() => match o {
                    Some(o) => vec![o],
                    None => return,
                },
            };
            for o in outs {
                let c = self.clone();
                let (token, identity) = (token.clone(), identity.clone());
                tokio::spawn(async move {
                    if let Err(e) =
                        tokio::time::timeout(DELIVERY_TIMEOUT * 4, c.deliver(o, token, identity))
                            .await
                    {
                        tracing::debug!("replication round timed out: {e}");
                    }
                });
            }
        }
    }

    /// Marks the other coordinators not heard from within the window unreachable; when that
    /// set changes, publishes a new netmap version (members' DNS follows).
    fn update_liveness(&self, every: Duration) {
        let now = now_ms();
        let others = self.other_coordinators();
        let n = others.len() as u64 + 1;
        let window = LIVE_GRACE_MS + 2 * n * u64::try_from(every.as_millis()).unwrap_or(1000);
        let since = self
            .shared
            .unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since_ms;
        let down: std::collections::BTreeSet<PublicKey> = {
            let rep = self.replica();
            others
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| {
                    let heard = rep
                        .peers()
                        .get(&origin_of(k))
                        .and_then(|s| s.last_heard_ms)
                        .unwrap_or(since);
                    now.saturating_sub(heard) > window
                })
                .collect()
        };
        {
            let mut g = self
                .shared
                .unreachable
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if g.down == down {
                return;
            }
            tracing::info!(
                "coordinators unreachable from here: {}",
                if down.is_empty() {
                    "none".to_owned()
                } else {
                    down.iter()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
            g.down = down;
        }
        if let Err(e) = self.bump_netmap() {
            tracing::warn!("publishing coordinator reachability: {e}");
        }
    }

    /// Sends `out` (and follows up the answers) to its coordinator.
    async fn deliver(&self, out: Out, token: JoinToken, identity: NodeIdentity) {
        let Some((key, addr)) = self.peer_address(out.to) else {
            return;
        };
        let mut queue: Vec<Msg> = split(out.msg);
        queue.reverse();
        // Over the link when there is one: the answers come back on it.
        while let Some(m) = queue.pop() {
            if !self.send_on_link(&key, &m).await {
                queue.push(m);
                break;
            }
        }
        if queue.is_empty() {
            self.note_peer_error(out.to, String::new());
            return;
        }
        let mut client = match JoinClient::with_identity(addr.clone(), token, identity) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("replication client for {addr}: {e}");
                return;
            }
        };
        client.set_timeout(DELIVERY_TIMEOUT);
        while let Some(m) = queue.pop() {
            let answers = match client.cluster(&m).await {
                Ok(a) => a,
                Err(e) => {
                    self.note_peer_error(out.to, format!("{addr}: {e}"));
                    return;
                }
            };
            self.note_peer_error(out.to, String::new());
            for a in answers {
                match self.handle_cluster(&key, a) {
                    Ok(replies) => {
                        for r in replies.into_iter().rev() {
                            let mut parts = split(r);
                            parts.reverse();
                            queue.extend(parts);
                        }
                    }
                    Err(e) => {
                        self.note_peer_error(out.to, e.to_string());
                        return;
                    }
                }
            }
        }
    }

    fn note_peer_error(&self, origin: Origin, e: String) {
        let mut m = self
            .shared
            .cluster_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if e.is_empty() {
            m.remove(&origin);
        } else {
            if m.get(&origin) != Some(&e) {
                tracing::warn!("replication with coordinator {origin}: {e}");
            }
            m.insert(origin, e);
        }
    }

    /// What a coordinator that joins this mesh receives with its registration.
    pub(crate) fn cluster_seed(&self) -> crate::wire::ClusterSeed {
        use base64::Engine as _;
        let secret = *self.lock().default_secret;
        crate::wire::ClusterSeed {
            ca_cert_pem: self.shared.ca.ca_pem().to_owned(),
            ca_key_pem: self.shared.ca.ca_key_pem(),
            join_secret: base64::engine::general_purpose::STANDARD.encode(secret),
            records: self.replica().store().records().cloned().collect(),
        }
    }

    /// This coordinator's mTLS client identity for replication: a certificate of the mesh CA
    /// for its own key, whose fingerprint is in its node record (kept in
    /// `data_dir/coordinator/cluster.{crt,key}`; issued again if missing or no longer the
    /// recorded one).
    pub fn cluster_identity(&self) -> Result<NodeIdentity, Error> {
        let dir = &self.shared.dir;
        let (crt, key) = (dir.join("cluster.crt"), dir.join("cluster.key"));
        let name = self.shared.cfg.name.clone();
        let recorded = self
            .lock()
            .state
            .nodes
            .get(&name)
            .and_then(|n| n.cert_sha256.clone());
        if let (Ok(cert_pem), Ok(key_pem)) =
            (std::fs::read_to_string(&crt), std::fs::read_to_string(&key))
        {
            use rustls::pki_types::pem::PemObject as _;
            let fp = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .ok()
                .map(|d| {
                    use sha2::Digest as _;
                    crate::wire::hex(&sha2::Sha256::digest(d.as_ref()))
                });
            if fp.is_some() && fp == recorded {
                return Ok(NodeIdentity {
                    key_pem,
                    cert_pem,
                    ca_pem: self.shared.ca.ca_pem().to_owned(),
                });
            }
        }
        let (key_pem, _, csr_der) = crate::make_csr(&name)?;
        let (cert_pem, fp) = self
            .shared
            .ca
            .sign_node(&csr_der, &name, &self.public_key())?;
        crate::store::write_atomic(&key, key_pem.as_bytes(), 0o600)?;
        crate::store::write_atomic(&crt, cert_pem.as_bytes(), 0o644)?;
        let fp = crate::wire::hex(&fp);
        self.commit(|s| {
            let n = s
                .nodes
                .get_mut(&name)
                .ok_or_else(|| Error::State("the coordinator's own record is gone".into()))?;
            n.cert_sha256 = Some(fp);
            Ok(((), false))
        })?;
        Ok(NodeIdentity {
            key_pem,
            cert_pem,
            ca_pem: self.shared.ca.ca_pem().to_owned(),
        })
    }

    /// The other coordinators as `cluster status` shows them.
    pub fn cluster_status(&self) -> Vec<crate::wire::ClusterPeer> {
        let errors: BTreeMap<Origin, String> = self
            .shared
            .cluster_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let rep = self.replica();
        let g = self.lock();
        let mut out: Vec<crate::wire::ClusterPeer> = g
            .state
            .nodes
            .values()
            .filter(|n| n.is_coordinator)
            .map(|n| {
                let o = origin_of(&n.public_key);
                let st = rep.peers().get(&o);
                crate::wire::ClusterPeer {
                    name: n.name.clone(),
                    mesh_ip: n.mesh_ip,
                    api: dial_address(n),
                    this: n.public_key == self.public_key(),
                    last_heard_ms: st.and_then(|s| s.last_heard_ms),
                    last_sync_ms: st.and_then(|s| s.last_sync_ms),
                    error: errors
                        .get(&o)
                        .cloned()
                        .or_else(|| st.and_then(|s| s.last_error.clone())),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The digest of the replicated records (equal on two coordinators that hold the same
    /// state) and their number.
    pub fn state_digest(&self) -> (String, usize) {
        let rep = self.replica();
        (crate::wire::hex(&rep.store().root()), rep.store().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tm_cluster::{Origin, Stamp};

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                key: format!("node/{i:064}"),
                stamp: Stamp {
                    wall_ms: i as u64,
                    logical: 0,
                    origin: Origin(1),
                },
                value: Some(serde_json::json!({"pad": "x".repeat(200)})),
            })
            .collect()
    }

    fn size(m: &Msg) -> usize {
        serde_json::to_vec(m).unwrap().len()
    }

    #[test]
    fn big_messages_are_cut_under_the_request_bound_and_keep_their_meaning() {
        let rs = records(2000);
        let parts = split(Msg::Repair {
            records: rs.clone(),
            want: vec![3, 7],
        });
        assert!(parts.len() > 2, "{} parts", parts.len());
        assert!(parts.iter().all(|m| size(m) < crate::http::MAX_BODY));
        let (last, pushes) = parts.split_last().unwrap();
        assert!(pushes.iter().all(|m| matches!(m, Msg::Push { .. })));
        let Msg::Repair { want, .. } = last else {
            panic!("the last piece carries the request: {last:?}")
        };
        assert_eq!(want, &[3, 7]);
        let all: Vec<Record> = parts
            .into_iter()
            .flat_map(|m| match m {
                Msg::Push { records } | Msg::Repair { records, .. } => records,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(all, rs, "every record once, in order");
        let parts = split(Msg::Records {
            records: records(3),
        });
        assert!(matches!(&parts[..], [Msg::Records { records }] if records.len() == 3));
    }
}
