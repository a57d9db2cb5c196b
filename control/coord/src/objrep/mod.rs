//! Object replication between coordinators (issue 20): the driver of the sans-IO core in
//! `tm_storage::replication` over the coordinator link (`link.rs`).
//!
//! - Membership: every coordinator recorded in the cluster state (this one included) is a
//!   placement member, `NodeId` = its cluster `Origin` ([`crate::origin_of`]), weight 1 (equal
//!   capacity; weights from capacity are not done yet). The owners of `bucket/key` are its
//!   `min(factor, coordinators)` best HRW scores.
//! - Messages (`wire`) travel on the link to each other coordinator, which only coordinator
//!   certificates can open; without a link a message fails at once (the write round counts
//!   the owner as failed, hinted handoff delivers later).
//! - A write: [`Replicator::plan`] (consistent mode: a read quorum's versions for the context),
//!   the local commit by tm-s3 (`local::commit_put`, hints in its transaction), then
//!   [`Replicator::replicate`] runs a `WriteRound`: it pushes the version to every other owner
//!   (`Store`; the owner answers `NeedChunks` with the chunks it lacks, gets them by content
//!   id, then `Stored`), answers the client at `Ack`/`Fail`, and goes on in the background
//!   until every owner answered (clearing the hints of those that confirmed).
//! - A read ([`Replicator::before_read`]): in available mode an owner holding versions of the
//!   key answers locally; otherwise a `ReadRound` asks the owners' versions, pulls the
//!   versions this store lacks (then the read is local) and repairs owners that lacked some.
//! - Hinted handoff: every `hint_every`, each hint whose owner has a link is pushed and, once
//!   the owner confirmed it durable, removed.

mod antientropy;
mod serve;
mod status;
pub(crate) mod wire;

pub use status::CoordinatorFigures;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tm_cluster::{Clock, Origin, Stamp};
use tm_noise::PublicKey;
use tm_storage::replication::hook::{BoxFuture, Replicator, Unavailable, WritePlan};
use tm_storage::replication::local::{self, Hint, Stamp as LocalStamp};
use tm_storage::replication::placement::{self, Member};
use tm_storage::replication::read::{ReadAction, ReadEvent, ReadRound};
use tm_storage::replication::vv::{Dot, Hlc, Version, VersionSet, VersionVector};
use tm_storage::replication::write::{WriteAction, WriteEvent, WriteRound, WriteState};
use tm_storage::replication::{Mode, NodeId};
use tm_storage::{StorageError, Store, SYSTEM_BUCKET};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::Coordinator;
use wire::{Req, Resp};

/// Replication settings (`s3: {replication: {factor, mode}}`).
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Owners per key (capped at the number of coordinators).
    pub factor: usize,
    /// Consistent or available.
    pub mode: Mode,
    /// How long one write or read waits for owners, and one message for its answer.
    pub timeout: Duration,
    /// How often hinted handoffs are tried.
    pub hint_every: Duration,
    /// Anti-entropy with each other coordinator: when its link comes up, and this often.
    pub antientropy_every: Duration,
}

impl Default for ReplicationConfig {
    /// Two owners per key, available mode.
    fn default() -> Self {
        ReplicationConfig {
            factor: 2,
            mode: Mode::Available,
            timeout: Duration::from_secs(5),
            hint_every: Duration::from_secs(1),
            antientropy_every: Duration::from_secs(60),
        }
    }
}

/// Counters (`cluster status` will show them).
#[derive(Debug, Default)]
pub struct ReplicationCounters {
    /// Versions pushed to an owner and confirmed.
    pub pushed: AtomicU64,
    /// Versions pulled from an owner (failover reads, read repair).
    pub pulled: AtomicU64,
    /// Chunks sent to an owner that lacked them.
    pub chunks_sent: AtomicU64,
    /// Hints delivered and cleared.
    pub hints_delivered: AtomicU64,
    /// Requests from other coordinators answered (successfully or not).
    pub served: AtomicU64,
    /// Anti-entropy rounds completed with another coordinator.
    pub antientropy_rounds: AtomicU64,
    /// Versions anti-entropy sent or fetched.
    pub antientropy_repaired: AtomicU64,
    /// Messages or versions refused (malformed, bad chunk, missing chunk, storage error).
    pub refused: AtomicU64,
}

/// The replication driver of one coordinator (cheap to clone).
#[derive(Clone)]
pub struct ObjectReplication {
    inner: Arc<Inner>,
}

struct Inner {
    coord: Coordinator,
    store: Store,
    cfg: ReplicationConfig,
    me: NodeId,
    clock: Mutex<Clock>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>,
    next_id: AtomicU64,
    counters: ReplicationCounters,
    /// The other coordinators' figures as they last answered (`status.rs`).
    peer_figures: Mutex<HashMap<NodeId, (local::Figures, std::time::Instant)>>,
    /// The background tasks ([`ObjectReplication::shutdown`]).
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl std::fmt::Debug for ObjectReplication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReplication")
            .field("me", &self.inner.me)
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    crate::replicate::now_ms()
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

impl ObjectReplication {
    /// Starts the driver for `coord` over `store`: receives replication messages from the
    /// coordinator links and delivers hints in the background (tasks on the current runtime).
    pub fn start(coord: &Coordinator, store: Store, cfg: ReplicationConfig) -> ObjectReplication {
        let me = NodeId(crate::origin_of(&coord.public_key()).0);
        let (tx, rx) = mpsc::channel(64);
        if coord.shared.relay.objrep.set(tx).is_err() {
            tracing::warn!("object replication was already started for this coordinator");
        }
        let r = ObjectReplication {
            inner: Arc::new(Inner {
                coord: coord.clone(),
                store,
                me,
                clock: Mutex::new(Clock::new(Origin(me.0), tm_cluster::MAX_SKEW_MS)),
                cfg,
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                counters: ReplicationCounters::default(),
                tasks: Mutex::new(Vec::new()),
                peer_figures: Mutex::new(HashMap::new()),
            }),
        };
        let tasks = vec![
            tokio::spawn(r.clone().receive(rx)).abort_handle(),
            tokio::spawn(r.clone().handoff()).abort_handle(),
            tokio::spawn(r.clone().antientropy()).abort_handle(),
            tokio::spawn(r.clone().poll_figures()).abort_handle(),
        ];
        *r.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        r
    }

    /// Stops the background tasks (they hold the store; a restart in-process needs them gone).
    pub fn shutdown(&self) {
        for t in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    /// This coordinator's id in placement and dots.
    pub fn node_id(&self) -> NodeId {
        self.inner.me
    }

    /// The counters.
    pub fn counters(&self) -> &ReplicationCounters {
        &self.inner.counters
    }

    /// Every coordinator (this one included) with its id.
    fn members(&self) -> Vec<(NodeId, PublicKey)> {
        let mut v: Vec<(NodeId, PublicKey)> = self
            .inner
            .coord
            .other_coordinators()
            .into_iter()
            .map(|(k, _)| (NodeId(crate::origin_of(&k).0), k))
            .collect();
        v.push((self.inner.me, self.inner.coord.public_key()));
        v.sort_by_key(|m| m.0);
        v.dedup_by_key(|m| m.0);
        v
    }

    /// The owners of `bucket/key`, best first.
    pub fn owners(&self, bucket: &str, key: &str) -> Vec<NodeId> {
        self.owners_among(&self.placement_members(), bucket, key)
    }

    /// Placement members now (equal weights).
    fn placement_members(&self) -> Vec<Member> {
        self.members()
            .into_iter()
            .map(|(id, _)| Member { id, weight: 1 })
            .collect()
    }

    /// The owners of `bucket/key` among `members`, best first.
    fn owners_among(&self, members: &[Member], bucket: &str, key: &str) -> Vec<NodeId> {
        let rf = self.inner.cfg.factor.clamp(1, members.len().max(1));
        placement::owners(format!("{bucket}/{key}").as_bytes(), rf, members)
    }

    fn key_of(&self, n: NodeId) -> Option<PublicKey> {
        self.members()
            .into_iter()
            .find(|(id, _)| *id == n)
            .map(|(_, k)| k)
    }

    /// The HLC now (observing nothing new).
    fn tick(&self) -> Hlc {
        let s = self
            .inner
            .clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .now(now_ms());
        Hlc {
            wall_ms: s.wall_ms,
            logical: s.logical,
        }
    }

    /// Lets the HLC observe a version's stamp (refused stamps too far ahead are ignored).
    fn observe(&self, v: &Version) {
        let s = Stamp {
            wall_ms: v.clock.wall_ms,
            logical: v.clock.logical,
            origin: Origin(v.dot.node.0),
        };
        let _ = self
            .inner
            .clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(now_ms(), s);
    }

    /// Runs `f` on the store off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, String> {
        let store = self.inner.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r.map_err(err),
            Err(e) => Err(err(e)),
        }
    }

    /// Sends message bytes to coordinator `to` on its link.
    async fn send(&self, to: &PublicKey, id: u64, response: bool, msg: &[u8]) -> bool {
        let Some(tx) = self.inner.coord.shared.relay.link_sender(to) else {
            return false;
        };
        for p in wire::pieces(id, response, msg) {
            let sent = tokio::time::timeout(self.inner.cfg.timeout, tx.send((wire::OBJREP_KEY, p)));
            if !matches!(sent.await, Ok(Ok(()))) {
                return false;
            }
        }
        true
    }

    /// One request to coordinator `to` and its answer.
    async fn request(&self, to: NodeId, req: &Req, raw: &[u8]) -> Result<(Resp, Vec<u8>), String> {
        let key = self.key_of(to).ok_or("not a coordinator")?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let forget = |r: &Self| {
            r.inner
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        };
        if !self.send(&key, id, false, &wire::encode(req, raw)).await {
            forget(self);
            return Err("no link to the coordinator".into());
        }
        match tokio::time::timeout(self.inner.cfg.timeout, rx).await {
            Ok(Ok(bytes)) => {
                let (resp, raw) = wire::decode::<Resp>(&bytes)?;
                match resp {
                    Resp::Err { msg } => Err(msg),
                    r => Ok((r, raw)),
                }
            }
            _ => {
                forget(self);
                Err("no answer in time".into())
            }
        }
    }

    /// The versions of `bucket/key` that `n` holds.
    async fn ask_versions(&self, n: NodeId, bucket: &str, key: &str) -> Result<VersionSet, String> {
        if n == self.inner.me {
            let (b, k) = (bucket.to_owned(), key.to_owned());
            return self.blocking(move |s| local::versions(s, &b, &k)).await;
        }
        let req = Req::Versions {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        };
        match self.request(n, &req, &[]).await? {
            (Resp::Versions { versions }, _) => {
                let mut set = VersionSet::new();
                for w in versions {
                    let v = w.version()?;
                    self.observe(&v);
                    set.insert(v);
                }
                Ok(set)
            }
            (r, _) => Err(format!("unexpected answer {r:?}")),
        }
    }

    /// Pushes the local version `dot` of `bucket/key` to owner `to` until it is durable there,
    /// sending only the chunks it lacks.
    async fn push(&self, to: NodeId, bucket: &str, key: &str, dot: Dot) -> Result<(), String> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let ex = self
            .blocking(move |s| local::export(s, &b, &k, dot))
            .await?
            .ok_or("the version is not stored here")?;
        let (w, raw) = wire::WireExported::of(&ex);
        let req = Req::Store {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            v: Box::new(w),
        };
        for _ in 0..2 {
            match self.request(to, &req, &raw).await? {
                (Resp::Stored, _) => {
                    self.inner.counters.pushed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                (Resp::NeedChunks { ids }, _) => {
                    for id in ids {
                        let cid = tm_storage::ChunkId::from_hex(&id).ok_or("a bad chunk id")?;
                        if !ex.chunks.iter().any(|c| c.id == cid) {
                            return Err("asked for a chunk the version does not name".into());
                        }
                        let bytes = self.blocking(move |s| local::read_chunk(s, &cid)).await?;
                        match self.request(to, &Req::PutChunk { id }, &bytes).await? {
                            (Resp::Ok, _) => {
                                self.inner
                                    .counters
                                    .chunks_sent
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                            (r, _) => return Err(format!("unexpected answer {r:?}")),
                        }
                    }
                }
                (r, _) => return Err(format!("unexpected answer {r:?}")),
            }
        }
        Err("the owner still lacks chunks".into())
    }

    /// Pulls version `dot` of `bucket/key` from `from` into the local store.
    async fn pull(&self, from: NodeId, bucket: &str, key: &str, dot: Dot) -> Result<(), String> {
        let req = Req::Export {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            version_id: dot.version_id(),
        };
        let ex = match self.request(from, &req, &[]).await? {
            (Resp::Exported { v: Some(w) }, raw) => w.exported(raw)?,
            (Resp::Exported { v: None }, _) => return Err("not stored there".into()),
            (r, _) => return Err(format!("unexpected answer {r:?}")),
        };
        if ex.version.dot != dot {
            return Err("another version than asked for".into());
        }
        let chunks = ex.chunks.clone();
        let missing = self
            .blocking(move |s| local::missing_chunks(s, &chunks))
            .await?;
        for id in missing {
            let (resp, bytes) = self
                .request(from, &Req::GetChunk { id: id.to_hex() }, &[])
                .await?;
            if !matches!(resp, Resp::Chunk) {
                return Err(format!("unexpected answer {resp:?}"));
            }
            self.blocking(move |s| local::put_chunk(s, &id, &bytes))
                .await?;
        }
        self.observe(&ex.version);
        let (b, k) = (bucket.to_owned(), key.to_owned());
        self.blocking(move |s| local::apply(s, &b, &k, ex)).await?;
        self.inner.counters.pulled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A read round over the owners of `bucket/key`: the merged versions (at the mode's
    /// quorum), after pulling what this store lacks; owners that lacked versions are repaired
    /// in the background.
    async fn read_round(
        &self,
        bucket: &str,
        key: &str,
        owners: Vec<NodeId>,
    ) -> Result<VersionSet, Unavailable> {
        let cfg = &self.inner.cfg;
        let timeout = cfg.timeout.as_millis() as u64;
        let start = now_ms();
        let mut round = ReadRound::new(owners, cfg.mode, start, timeout);
        let mut events: JoinSet<(NodeId, Result<VersionSet, String>)> = JoinSet::new();
        let mut holders: HashMap<Dot, NodeId> = HashMap::new();
        let mut repairs: Vec<(NodeId, Vec<Version>)> = Vec::new();
        let mut acts = round.start();
        let answer = loop {
            let mut answer = None;
            for a in acts.drain(..) {
                match a {
                    ReadAction::Ask(n) => {
                        let (r, b, k) = (self.clone(), bucket.to_owned(), key.to_owned());
                        events.spawn(async move { (n, r.ask_versions(n, &b, &k).await) });
                    }
                    ReadAction::Answer(set) => answer = Some(Ok(set)),
                    ReadAction::Fail { replies, needed } => {
                        answer = Some(Err(Unavailable(format!(
                            "read quorum out of reach: {replies} of {needed} owners answered"
                        ))))
                    }
                    ReadAction::Repair { to, versions } => repairs.push((to, versions)),
                }
            }
            if let Some(a) = answer {
                break a;
            }
            let deadline = tokio::time::Instant::now()
                + Duration::from_millis(round.deadline_ms().saturating_sub(now_ms()));
            acts = tokio::select! {
                Some(j) = events.join_next() => match j {
                    Ok((n, Ok(set))) => {
                        for d in set.dots() {
                            holders.entry(d).or_insert(n);
                        }
                        round.on_event(ReadEvent::Reply(n, set))
                    }
                    Ok((n, Err(e))) => {
                        tracing::debug!(owner = n.0, "versions of {bucket}/{key}: {e}");
                        round.on_event(ReadEvent::Failed(n))
                    }
                    Err(_) => Vec::new(),
                },
                _ = tokio::time::sleep_until(deadline) => round.on_tick(now_ms()),
            };
        };
        let set = answer?;
        // Pull what this store lacks (then the read is local), from a replica that has it.
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let have = self
            .blocking(move |s| local::versions(s, &b, &k))
            .await
            .map_err(Unavailable)?;
        for v in set.iter().filter(|v| !have.contains(v.dot)) {
            let Some(&from) = holders.get(&v.dot) else {
                continue;
            };
            if from == self.inner.me {
                continue;
            }
            if let Err(e) = self.pull(from, bucket, key, v.dot).await {
                return Err(Unavailable(format!(
                    "fetching {bucket}/{key} from an owner: {e}"
                )));
            }
        }
        // Read repair, in the background (from the local copies now held).
        let repairs: Vec<_> = repairs
            .into_iter()
            .filter(|(to, _)| *to != self.inner.me)
            .collect();
        if !repairs.is_empty() {
            let (r, b, k) = (self.clone(), bucket.to_owned(), key.to_owned());
            tokio::spawn(async move {
                for (to, versions) in repairs {
                    for v in versions {
                        if let Err(e) = r.push(to, &b, &k, v.dot).await {
                            tracing::debug!(owner = to.0, "read repair of {b}/{k}: {e}");
                        }
                    }
                }
            });
        }
        Ok(set)
    }

    /// Hinted handoff: pushes every hint whose owner has a link, clears it when confirmed.
    async fn handoff(self) {
        loop {
            tokio::time::sleep(self.inner.cfg.hint_every).await;
            // Per owner with a link (a coordinator that is down or gone holds no one up; hints
            // for one that left the cluster stay: rebalancing's business).
            let mut hints = Vec::new();
            for (id, key) in self.members() {
                if id == self.inner.me || !self.inner.coord.shared.relay.has_link(&key) {
                    continue;
                }
                if let Ok(h) = self.blocking(move |s| local::hints_for(s, id, 256)).await {
                    hints.extend(h);
                }
            }
            for h in hints {
                match self.push(h.target, &h.bucket, &h.key, h.dot).await {
                    Ok(()) => {
                        let h2 = h.clone();
                        if self
                            .blocking(move |s| local::clear_hint(s, &h2))
                            .await
                            .is_ok()
                        {
                            self.inner
                                .counters
                                .hints_delivered
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => tracing::debug!(
                        owner = h.target.0,
                        "hinted handoff of {}/{}: {e}",
                        h.bucket,
                        h.key
                    ),
                }
            }
        }
    }

    /// Runs one write round for `version` (stored locally, or `None`) and answers through
    /// `answer` at its `Ack`/`Fail`; then follows the late replies.
    async fn write_round(
        self,
        plan: WritePlan,
        version: Option<Version>,
        answer: oneshot::Sender<Result<(usize, usize), Unavailable>>,
    ) {
        let me = self.inner.me;
        let cfg = &self.inner.cfg;
        let mut round = WriteRound::new(
            me,
            plan.owners.clone(),
            plan.mode,
            now_ms(),
            cfg.timeout.as_millis() as u64,
        );
        let mut answer = Some(answer);
        let mut events: JoinSet<WriteEvent> = JoinSet::new();
        let mut queued: Vec<WriteEvent> = Vec::new();
        let mut acts = round.start();
        loop {
            for a in acts.drain(..) {
                match a {
                    WriteAction::StoreLocal { .. } => queued.push(match version {
                        Some(_) => WriteEvent::Durable(me),
                        None => WriteEvent::Failed(me),
                    }),
                    WriteAction::Send { to } => match &version {
                        Some(v) => {
                            let (r, b, k, dot) =
                                (self.clone(), plan.bucket.clone(), plan.key.clone(), v.dot);
                            events.spawn(async move {
                                match r.push(to, &b, &k, dot).await {
                                    Ok(()) => WriteEvent::Durable(to),
                                    Err(e) => {
                                        tracing::debug!(owner = to.0, "replicating {b}/{k}: {e}");
                                        WriteEvent::Failed(to)
                                    }
                                }
                            });
                        }
                        None => queued.push(WriteEvent::Failed(to)),
                    },
                    WriteAction::Ack { replicas, rf } => {
                        if let Some(a) = answer.take() {
                            let _ = a.send(Ok((replicas, rf)));
                        }
                    }
                    WriteAction::Fail { replicas, needed } => {
                        if let Some(a) = answer.take() {
                            let _ = a.send(Err(Unavailable(format!(
                                "write quorum out of reach: {replicas} of {needed} replicas"
                            ))));
                        }
                    }
                    WriteAction::ClearHint(n) | WriteAction::KeepHint(n) => {
                        let Some(v) = &version else { continue };
                        let h = Hint {
                            target: n,
                            bucket: plan.bucket.clone(),
                            key: plan.key.clone(),
                            dot: v.dot,
                        };
                        let clear = matches!(a, WriteAction::ClearHint(_));
                        let r = self
                            .blocking(move |s| {
                                if clear {
                                    local::clear_hint(s, &h)
                                } else {
                                    local::add_hint(s, &h)
                                }
                            })
                            .await;
                        if let Err(e) = r {
                            tracing::warn!("hint record of {}/{}: {e}", plan.bucket, plan.key);
                        }
                    }
                }
            }
            if let Some(ev) = queued.pop() {
                acts = round.on_event(ev);
                continue;
            }
            if round.state() == WriteState::Done {
                break;
            }
            let deadline = tokio::time::Instant::now()
                + Duration::from_millis(round.deadline_ms().saturating_sub(now_ms()));
            acts = tokio::select! {
                Some(j) = events.join_next() => match j {
                    Ok(ev) => round.on_event(ev),
                    Err(_) => Vec::new(),
                },
                _ = tokio::time::sleep_until(deadline) => round.on_tick(now_ms()),
            };
        }
    }
}

impl Replicator for ObjectReplication {
    fn replicated(&self, bucket: &str) -> bool {
        bucket != SYSTEM_BUCKET && !self.inner.coord.other_coordinators().is_empty()
    }

    fn plan(&self, bucket: String, key: String) -> BoxFuture<'_, Result<WritePlan, Unavailable>> {
        Box::pin(async move {
            let owners = self.owners(&bucket, &key);
            let mode = self.inner.cfg.mode;
            let mut context = VersionVector::new();
            if mode == Mode::Consistent {
                context = self
                    .read_round(&bucket, &key, owners.clone())
                    .await?
                    .context();
            }
            let me = self.inner.me;
            let hints = match mode {
                Mode::Available => owners.iter().copied().filter(|&o| o != me).collect(),
                Mode::Consistent => Vec::new(),
            };
            Ok(WritePlan {
                bucket,
                key,
                stamp: LocalStamp {
                    node: me,
                    clock: self.tick(),
                    context,
                    hints,
                },
                mode,
                owners,
            })
        })
    }

    fn replicate(
        &self,
        plan: WritePlan,
        version: Option<Version>,
    ) -> BoxFuture<'_, Result<(usize, usize), Unavailable>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            tokio::spawn(self.clone().write_round(plan, version, tx));
            rx.await
                .unwrap_or_else(|_| Err(Unavailable("the write round stopped".into())))
        })
    }

    fn before_read(&self, bucket: String, key: String) -> BoxFuture<'_, Result<(), Unavailable>> {
        Box::pin(async move {
            let owners = self.owners(&bucket, &key);
            let (b, k) = (bucket.clone(), key.clone());
            let local = self
                .blocking(move |s| local::versions(s, &b, &k))
                .await
                .map_err(Unavailable)?;
            let available = self.inner.cfg.mode == Mode::Available;
            if available && owners.contains(&self.inner.me) && !local.is_empty() {
                return Ok(());
            }
            match self.read_round(&bucket, &key, owners).await {
                Ok(_) => Ok(()),
                // Available mode: what this coordinator holds (possibly stale) rather than nothing.
                Err(_) if available && !local.is_empty() => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}
