//! Anti-entropy between two owners (the core's `antientropy.rs` over the link): when the link
//! to another coordinator comes up, and every `antientropy_every` while it stays up, this
//! coordinator asks the other for its 256 partition digests over the keys both own, compares
//! them with its own, lists the keys of each differing partition on both sides and, per key,
//! pushes the versions the other lacks and pulls those it lacks. It only ever adds versions.
//! The digests are computed by a scan of the replicated versions (no persisted digest table
//! yet); a partition's listing must fit one message (4 MiB).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Instant;

use tm_storage::replication::antientropy::{self, DigestTable, PARTITIONS};
use tm_storage::replication::local;
use tm_storage::replication::vv::{Dot, VersionSet};
use tm_storage::replication::NodeId;

use super::wire::{Req, Resp};
use super::ObjectReplication;

/// Keys with their versions.
pub(super) type Keys = Vec<(String, String, VersionSet)>;

fn key_bytes(bucket: &str, key: &str) -> Vec<u8> {
    format!("{bucket}/{key}").into_bytes()
}

fn table(keys: &Keys) -> DigestTable {
    let mut t = DigestTable::new();
    let empty = VersionSet::new();
    for (b, k, set) in keys {
        t.update(&key_bytes(b, k), &empty, set);
    }
    t
}

/// The 256 partition digests of `keys`, hex.
pub(super) fn digests(keys: &Keys) -> Vec<String> {
    let t = table(keys);
    (0..PARTITIONS)
        .map(|p| t.get(p).iter().map(|b| format!("{b:02x}")).collect())
        .collect()
}

/// The keys of partition `p` with their version ids.
pub(super) fn listing(keys: &Keys, p: usize) -> Vec<(String, String, Vec<String>)> {
    keys.iter()
        .filter(|(b, k, _)| antientropy::partition(&key_bytes(b, k)) == p)
        .map(|(b, k, set)| {
            (
                b.clone(),
                k.clone(),
                set.dots().map(|d| d.version_id()).collect(),
            )
        })
        .collect()
}

fn parse_digest(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ObjectReplication {
    /// The keys this coordinator holds that it and `peer` both own.
    pub(super) async fn shared_keys(&self, peer: NodeId) -> Result<Keys, String> {
        let me = self.clone();
        let mine = self.inner.me;
        let members = self.placement_members();
        self.blocking(move |s| {
            local::replicated_keys(s, |b, k| {
                let o = me.owners_among(&members, b, k);
                o.contains(&mine) && o.contains(&peer)
            })
        })
        .await
    }

    /// One anti-entropy round with `peer`; returns how many versions moved.
    pub async fn sync_with(&self, peer: NodeId) -> Result<usize, String> {
        let theirs = match self.request(peer, &Req::Digests, &[]).await? {
            (Resp::Digests { parts }, _) if parts.len() == PARTITIONS => parts,
            (r, _) => return Err(format!("unexpected answer {r:?}")),
        };
        let ours = self.shared_keys(peer).await?;
        let table = table(&ours);
        let mut moved = 0;
        for (p, d) in theirs.iter().enumerate() {
            if parse_digest(d).ok_or("a bad digest")? == table.get(p) {
                continue;
            }
            let req = Req::Partition {
                p: u16::try_from(p).expect("256 partitions"),
            };
            let listed = match self.request(peer, &req, &[]).await? {
                (Resp::Keys { keys }, _) => keys,
                (r, _) => return Err(format!("unexpected answer {r:?}")),
            };
            // Per key: their dots, our versions.
            let mut both: BTreeMap<(String, String), (Vec<Dot>, VersionSet)> = BTreeMap::new();
            for (b, k, ids) in listed {
                let dots = ids
                    .iter()
                    .map(|i| Dot::parse_version_id(i).ok_or("a bad version id"))
                    .collect::<Result<Vec<_>, _>>()?;
                both.entry((b, k)).or_default().0 = dots;
            }
            for (b, k, set) in &ours {
                if antientropy::partition(&key_bytes(b, k)) == p {
                    both.entry((b.clone(), k.clone())).or_default().1 = set.clone();
                }
            }
            for ((b, k), (theirs, ours)) in both {
                let x = antientropy::plan(&ours, &theirs);
                for d in x.send {
                    self.push(peer, &b, &k, d).await?;
                    moved += 1;
                }
                for d in x.fetch {
                    self.pull(peer, &b, &k, d).await?;
                    moved += 1;
                }
            }
        }
        let c = &self.inner.counters;
        c.antientropy_rounds.fetch_add(1, Ordering::Relaxed);
        c.antientropy_repaired
            .fetch_add(moved as u64, Ordering::Relaxed);
        Ok(moved)
    }

    /// Runs anti-entropy with each other coordinator when its link comes up and then every
    /// `antientropy_every`.
    pub(super) async fn antientropy(self) {
        let mut last: HashMap<NodeId, Instant> = HashMap::new();
        let mut linked: HashMap<NodeId, bool> = HashMap::new();
        loop {
            tokio::time::sleep(self.inner.cfg.hint_every).await;
            for (id, key) in self.members() {
                if id == self.inner.me {
                    continue;
                }
                let up = self.inner.coord.shared.relay.has_link(&key);
                let was = linked.insert(id, up).unwrap_or(false);
                let due = last
                    .get(&id)
                    .is_none_or(|t| t.elapsed() >= self.inner.cfg.antientropy_every);
                if !up || (was && !due) {
                    continue;
                }
                match self.sync_with(id).await {
                    Ok(n) => {
                        last.insert(id, Instant::now());
                        if n > 0 {
                            tracing::info!(peer = id.0, "anti-entropy: {n} versions repaired");
                        }
                    }
                    Err(e) => {
                        // Try again at the next check.
                        linked.insert(id, false);
                        tracing::debug!(peer = id.0, "anti-entropy: {e}");
                    }
                }
            }
        }
    }
}
