//! State changes, local and replicated (issue 17). Every change goes through one of two doors,
//! both serialised by the write sequencer:
//!
//! - [`Coordinator::commit`]: a local change (registration, tag, token, policy ...) is applied
//!   to a copy of the state, turned into record writes (`records::diff`), stamped by this
//!   coordinator's replica, persisted (state and records in one atomic snapshot), published,
//!   and only then pushed to the other coordinators and acknowledged;
//! - [`Coordinator::handle_cluster`]: a message from another coordinator is merged into a copy
//!   of the replica; if records changed, the state is re-derived from the records
//!   (`records::materialize`, which resolves name/address conflicts), persisted, published.
//!
//! Nothing is published or pushed before it is durable here, and on an error nothing changes.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tm_cluster::{Msg, Origin, Record, Replica};
use tm_noise::PublicKey;

use crate::records::{changes, materialize};
use crate::server::{index_of, json, PersistedState};
use crate::{Coordinator, Error};

/// Records of audit entries (see `records.rs`).
pub(crate) const AUDIT_PREFIX: &str = "audit/";

/// The record key of the audit entry of a resolved conflict: the same on every coordinator.
fn conflict_audit_key(c: &crate::records::Conflict) -> String {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(c.detail.as_bytes());
    format!(
        "{AUDIT_PREFIX}conflict/{}/{}",
        c.key,
        crate::wire::hex(&h[..8])
    )
}

/// The origin (in stamps and version vectors) of the coordinator with static key `k`.
pub fn origin_of(k: &PublicKey) -> Origin {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k.0[..8]);
    Origin(u64::from_le_bytes(b))
}

/// Milliseconds since the Unix epoch (physical time for the hybrid clock).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What is saved: the derived state (readable by older builds and by people) and the records
/// it was derived from, with their stamps (the source of truth).
#[derive(Serialize)]
pub(crate) struct SnapshotRef<'a> {
    #[serde(flatten)]
    pub(crate) state: &'a PersistedState,
    pub(crate) records: Vec<&'a Record>,
}

/// A loaded snapshot (`records` is empty in states written before replication).
#[derive(Deserialize)]
pub(crate) struct Snapshot {
    #[serde(flatten)]
    pub(crate) state: PersistedState,
    #[serde(default)]
    pub(crate) records: Vec<Record>,
}

/// The bytes of a snapshot of `state` and `rep`'s records. Audit records are not in it: each
/// is appended to the store's audit log once ([`persist_audit`]), so the snapshot rewritten on
/// every change does not grow with the log.
pub(crate) fn snapshot_bytes(state: &PersistedState, rep: &Replica) -> Vec<u8> {
    json(&SnapshotRef {
        state,
        records: rep
            .store()
            .records()
            .filter(|r| !r.key.starts_with(AUDIT_PREFIX))
            .collect(),
    })
}

/// Appends the audit records among `records` to the store's audit log, durably.
pub(crate) fn persist_audit<'a>(
    store: &dyn crate::StateStore,
    records: impl IntoIterator<Item = &'a Record>,
) -> Result<(), Error> {
    for r in records {
        if r.key.starts_with(AUDIT_PREFIX) {
            store.append_audit(&json(r))?;
        }
    }
    Ok(())
}

impl Coordinator {
    pub(crate) fn replica(&self) -> std::sync::MutexGuard<'_, Replica> {
        self.shared
            .replica
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` to a copy of the state; `f` returns its result and whether the netmap
    /// version is bumped. If the state changed, records the change in the replica, persists
    /// state and records, publishes, then pushes the new records to the other coordinators.
    /// On an error (of `f` or of the store) nothing changes. Changes are serialised by the
    /// write sequencer; the state lock is held only to copy and to swap, never during the
    /// durable write, so readers (netmap, relay, certificate lookups) never wait for an fsync.
    pub(crate) fn commit<T>(
        &self,
        f: impl FnOnce(&mut PersistedState) -> Result<(T, bool), Error>,
    ) -> Result<T, Error> {
        self.commit_with(f, Vec::new())
    }

    /// [`Coordinator::commit`] that also writes `extra` records that are not derived from the
    /// state (the default join secret), in the same durable write and the same push.
    pub(crate) fn commit_with<T>(
        &self,
        f: impl FnOnce(&mut PersistedState) -> Result<(T, bool), Error>,
        extra: Vec<(String, Option<serde_json::Value>)>,
    ) -> Result<T, Error> {
        let _seq = self.shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = self.lock().state.clone();
        let (out, bump) = f(&mut next)?;
        let mut writes = {
            // Only this writer changes the state (`_seq`): what the lock holds is `cur`.
            let g = self.lock();
            if next == g.state {
                return Ok(out);
            }
            changes(&g.state, &next)
        };
        if bump {
            next.version += 1;
        }
        writes.extend(extra);
        let mut rep = self.replica().clone();
        let fx = rep.write_many(now_ms(), writes);
        self.shared.store.save(&snapshot_bytes(&next, &rep))?;
        self.publish(next, bump, &mut rep);
        *self.replica() = rep;
        self.shared.outbox.send(fx.send);
        Ok(out)
    }

    /// Writes audit records (not part of the derived state): appended to the store's audit
    /// log durably, then pushed to the other coordinators.
    pub(crate) fn write_records(
        &self,
        writes: Vec<(String, Option<serde_json::Value>)>,
    ) -> Result<(), Error> {
        let _seq = self.shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut rep = self.replica().clone();
        let fx = rep.write_many(now_ms(), writes);
        persist_audit(self.shared.store.as_ref(), &fx.changed)?;
        *self.replica() = rep;
        self.shared.outbox.send(fx.send);
        Ok(())
    }

    /// Publishes a new netmap version without a change of records: what the netmap shows
    /// beside the state changed (a coordinator's reachability).
    pub(crate) fn bump_netmap(&self) -> Result<(), Error> {
        self.commit(|s| {
            s.version += 1;
            Ok(((), false))
        })?;
        let v = self.lock().state.version;
        self.shared.version.send_replace(v);
        Ok(())
    }

    /// Swaps in a new durable state: indexes, policy, long polls; `rep` (swapped in by the
    /// caller) learns the coordinator set.
    fn publish(&self, next: PersistedState, bump: bool, rep: &mut Replica) {
        let index = index_of(&next);
        let version = next.version;
        self.publish_policy(&next);
        rep.set_peers(&self.peer_origins(&next));
        self.lock().state = next;
        *self.shared.index.write().unwrap_or_else(|p| p.into_inner()) = index;
        self.shared
            .epoch
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        if bump {
            self.shared.version.send_replace(version);
        }
    }

    /// The other coordinators of `s`.
    pub(crate) fn peer_origins(&self, s: &PersistedState) -> Vec<Origin> {
        let me = self.public_key();
        s.nodes
            .values()
            .filter(|n| n.is_coordinator && n.public_key != me)
            .map(|n| origin_of(&n.public_key))
            .collect()
    }

    /// A replication message from the coordinator with static key `from` (authenticated by
    /// its client certificate; the caller checked it is a coordinator). Returns the messages
    /// to answer it with.
    pub fn handle_cluster(&self, from: &PublicKey, msg: Msg) -> Result<Vec<Msg>, Error> {
        let _seq = self.shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        let origin = origin_of(from);
        if matches!(msg, Msg::Digest { .. } | Msg::InSync { .. }) {
            // No records: nothing to persist or roll back, so no copy of the replica (these
            // come every `cluster_sync` from every peer).
            let fx = self
                .replica()
                .handle(now_ms(), origin, msg)
                .map_err(|e| Error::ClusterRefused(e.to_string()))?;
            self.shared.seen.send_modify(|n| *n += 1);
            return Ok(fx
                .send
                .into_iter()
                .filter(|o| o.to == origin)
                .map(|o| o.msg)
                .collect());
        }
        let mut rep = self.replica().clone();
        let fx = match rep.handle(now_ms(), origin, msg) {
            Ok(fx) => fx,
            Err(e) => {
                tracing::warn!("replication message from coordinator {origin} refused: {e}");
                self.replica().note_refused(origin, e.to_string());
                return Err(Error::ClusterRefused(e.to_string()));
            }
        };
        let mut send = fx.send;
        let state_changed = fx.changed.iter().any(|r| !r.key.starts_with(AUDIT_PREFIX));
        if state_changed {
            let version = self.lock().state.version + 1;
            let (next, conflicts) = materialize(rep.store(), version)?;
            let mut entries = Vec::new();
            for c in &conflicts {
                tracing::warn!(node = %c.key, "name/address conflict resolved: {}", c.detail);
                let key = conflict_audit_key(c);
                if rep.store().value(&key).is_none() {
                    let name = next
                        .nodes
                        .values()
                        .find(|n| crate::records::key_hex(&n.public_key) == c.key)
                        .map_or_else(|| c.key.clone(), |n| n.name.clone());
                    let e =
                        self.audit_entry("cluster", "conflict.resolve", &name, c.detail.clone());
                    entries.push((key, Some(serde_json::to_value(e).expect("serializes"))));
                }
            }
            persist_audit(self.shared.store.as_ref(), &fx.changed)?;
            if !entries.is_empty() {
                let more = rep.write_many(now_ms(), entries);
                persist_audit(self.shared.store.as_ref(), &more.changed)?;
                send.extend(more.send);
            }
            self.shared.store.save(&snapshot_bytes(&next, &rep))?;
            self.publish(next, true, &mut rep);
            self.adopt_default_secret(&rep);
        } else {
            // Audit entries only: appended, no new state or netmap.
            persist_audit(self.shared.store.as_ref(), &fx.changed)?;
        }
        *self.replica() = rep;
        self.shared.seen.send_modify(|n| *n += 1);
        if state_changed {
            self.shared.merged.send_modify(|n| *n += 1);
        }
        let (back, others): (Vec<_>, Vec<_>) = send.into_iter().partition(|o| o.to == origin);
        self.shared.outbox.send(others);
        Ok(back.into_iter().map(|o| o.msg).collect())
    }
}
