//! One coordinator's replica, sans-IO: local writes are stamped and pushed to every other
//! coordinator; every `sync_every` one peer (round robin) is sent the bucket digests and the
//! two exchange the records of the buckets that differ (anti-entropy), which repairs anything
//! a push lost, a partition kept apart, or a restart missed.
//!
//! The driver owns I/O and durability: it persists every record of [`Effects::changed`]
//! before it sends [`Effects::send`] or acknowledges the write to its client, so an
//! acknowledged write survives a crash of the coordinator that took it, and a record is never
//! pushed before it is durable where it was made.

use crate::hlc::{Clock, Origin, SkewError, Stamp};
use crate::store::{BucketDigest, Record, Store, VersionVector, MAX_KEY};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A message between two coordinators' replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// Records just written at the sender.
    Push { records: Vec<Record> },
    /// Anti-entropy: the sender's bucket digests and version vector.
    Digest {
        #[serde(with = "hex_digests")]
        digests: Vec<BucketDigest>,
        vv: VersionVector,
    },
    /// Answer to a digest equal to the answerer's: nothing to repair; its version vector.
    InSync { vv: VersionVector },
    /// Answer to a digest: the answerer's records in the buckets that differ, and a request
    /// for the asker's records there.
    Repair {
        records: Vec<Record>,
        want: Vec<u16>,
    },
    /// The records a `Repair` asked for.
    Records { records: Vec<Record> },
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    /// To this coordinator.
    pub to: Origin,
    /// What.
    pub msg: Msg,
}

/// What the driver must do after a call, in this order: persist `changed`, then send `send`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// Records newly applied here (persist them, then republish the state).
    pub changed: Vec<Record>,
    /// Messages to other coordinators.
    pub send: Vec<Out>,
}

/// A refused message: nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// A stamp too far ahead of our clock.
    #[error(transparent)]
    Skew(#[from] SkewError),
    /// A record that no coordinator would write.
    #[error("malformed record from coordinator {from}: {why}")]
    Malformed {
        /// The sender.
        from: Origin,
        /// What is wrong.
        why: String,
    },
    /// A sender that is not a coordinator of this mesh.
    #[error("coordinator {0} is not a member of this cluster")]
    UnknownPeer(Origin),
}

/// What a replica knows about one other coordinator (for `cluster status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// When a message from it was last accepted (ms).
    pub last_heard_ms: Option<u64>,
    /// When an anti-entropy round with it last found both sides equal or repaired them (ms).
    pub last_sync_ms: Option<u64>,
    /// The last refusal of one of its messages.
    pub last_error: Option<String>,
}

/// One coordinator's replica of the control state.
#[derive(Debug, Clone)]
pub struct Replica {
    clock: Clock,
    store: Store,
    peers: BTreeMap<Origin, PeerStatus>,
    sync_every_ms: u64,
    next_sync_ms: u64,
    turn: usize,
}

impl Replica {
    /// A replica with the records restored from disk (`store`) and the other coordinators.
    pub fn new(clock: Clock, store: Store, peers: &[Origin], sync_every_ms: u64) -> Replica {
        let mut clock = clock;
        clock.restore(store.max_stamp());
        let me = clock.origin();
        Replica {
            clock,
            store,
            peers: peers
                .iter()
                .filter(|p| **p != me)
                .map(|p| (*p, PeerStatus::default()))
                .collect(),
            sync_every_ms,
            next_sync_ms: 0,
            turn: 0,
        }
    }

    /// This coordinator.
    pub fn origin(&self) -> Origin {
        self.clock.origin()
    }

    /// The records.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The other coordinators and what is known of them.
    pub fn peers(&self) -> &BTreeMap<Origin, PeerStatus> {
        &self.peers
    }

    /// Records that a message from `from` was refused (a driver that tried it on a copy of
    /// the replica): shown in its status until the next completed sync with it.
    pub fn note_refused(&mut self, from: Origin, why: String) {
        if let Some(st) = self.peers.get_mut(&from) {
            st.last_error = Some(why);
        }
    }

    /// Replaces the set of other coordinators (membership is itself replicated state: the
    /// driver derives it from the `coordinator/...` records).
    pub fn set_peers(&mut self, peers: &[Origin]) {
        let me = self.origin();
        let mut next = BTreeMap::new();
        for p in peers.iter().filter(|p| **p != me) {
            next.insert(*p, self.peers.remove(p).unwrap_or_default());
        }
        self.peers = next;
    }

    /// A local write (`None`: delete) at physical time `phys_ms`.
    pub fn write(&mut self, phys_ms: u64, key: &str, value: Option<serde_json::Value>) -> Effects {
        self.write_many(phys_ms, vec![(key.to_owned(), value)])
    }

    /// Several local writes that are persisted and pushed together (one state change).
    pub fn write_many(
        &mut self,
        phys_ms: u64,
        writes: Vec<(String, Option<serde_json::Value>)>,
    ) -> Effects {
        let mut changed = Vec::with_capacity(writes.len());
        for (key, value) in writes {
            let r = Record {
                key,
                stamp: self.clock.now(phys_ms),
                value,
            };
            if self.store.apply(r.clone()) {
                changed.push(r);
            }
        }
        let send = if changed.is_empty() {
            Vec::new()
        } else {
            self.peers
                .keys()
                .map(|p| Out {
                    to: *p,
                    msg: Msg::Push {
                        records: changed.clone(),
                    },
                })
                .collect()
        };
        Effects { changed, send }
    }

    /// A message from coordinator `from`. Refused whole (nothing applied) if a record is
    /// malformed or stamped too far in the future.
    pub fn handle(&mut self, phys_ms: u64, from: Origin, msg: Msg) -> Result<Effects, SyncError> {
        let Some(st) = self.peers.get_mut(&from) else {
            return Err(SyncError::UnknownPeer(from));
        };
        let recs: &[Record] = match &msg {
            Msg::Push { records } | Msg::Repair { records, .. } | Msg::Records { records } => {
                records
            }
            Msg::Digest { .. } | Msg::InSync { .. } => &[],
        };
        if let Err(e) = check(&self.clock, phys_ms, from, recs) {
            st.last_error = Some(e.to_string());
            return Err(e);
        }
        st.last_heard_ms = Some(phys_ms);
        let mut fx = Effects::default();
        match msg {
            Msg::Push { records } => self.merge(phys_ms, records, &mut fx),
            Msg::Digest { digests, vv } => {
                let want = self.store.differing(&digests);
                if want.is_empty() {
                    // Same records: what the sender has seen, we have too (and vice versa).
                    self.store.merge_seen(&vv);
                    fx.send.push(Out {
                        to: from,
                        msg: Msg::InSync {
                            vv: self.store.version_vector().clone(),
                        },
                    });
                    self.synced(from, phys_ms);
                } else {
                    fx.send.push(Out {
                        to: from,
                        msg: Msg::Repair {
                            records: self.store.in_buckets(&want),
                            want,
                        },
                    });
                }
            }
            Msg::Repair { records, want } => {
                self.merge(phys_ms, records, &mut fx);
                fx.send.push(Out {
                    to: from,
                    msg: Msg::Records {
                        records: self.store.in_buckets(&want),
                    },
                });
                self.synced(from, phys_ms);
            }
            Msg::InSync { vv } => {
                // Our records then equalled the sender's; ours only grew since.
                self.store.merge_seen(&vv);
                self.synced(from, phys_ms);
            }
            Msg::Records { records } => {
                self.merge(phys_ms, records, &mut fx);
                self.synced(from, phys_ms);
            }
        }
        Ok(fx)
    }

    /// Time passes: starts an anti-entropy round with the next peer when one is due.
    pub fn tick(&mut self, phys_ms: u64) -> Effects {
        let mut fx = Effects::default();
        if phys_ms < self.next_sync_ms || self.peers.is_empty() {
            return fx;
        }
        self.next_sync_ms = phys_ms + self.sync_every_ms;
        let to = *self
            .peers
            .keys()
            .nth(self.turn % self.peers.len())
            .expect("peers is not empty");
        self.turn = self.turn.wrapping_add(1);
        fx.send.push(Out {
            to,
            msg: Msg::Digest {
                digests: self.store.digests().to_vec(),
                vv: self.store.version_vector().clone(),
            },
        });
        fx
    }

    /// When [`Replica::tick`] next has something to do.
    pub fn next_timeout(&self) -> u64 {
        self.next_sync_ms
    }

    /// The largest stamp seen (for the clock of a restarted coordinator).
    pub fn max_stamp(&self) -> Stamp {
        self.store.max_stamp()
    }

    fn merge(&mut self, phys_ms: u64, records: Vec<Record>, fx: &mut Effects) {
        for r in records {
            // Checked in `handle` already: cannot fail.
            let _ = self.clock.observe(phys_ms, r.stamp);
            if self.store.apply(r.clone()) {
                fx.changed.push(r);
            }
        }
    }

    fn synced(&mut self, from: Origin, phys_ms: u64) {
        if let Some(st) = self.peers.get_mut(&from) {
            st.last_sync_ms = Some(phys_ms);
            st.last_error = None;
        }
    }
}

fn check(clock: &Clock, phys_ms: u64, from: Origin, recs: &[Record]) -> Result<(), SyncError> {
    for r in recs {
        if r.key.is_empty() || r.key.len() > MAX_KEY {
            return Err(SyncError::Malformed {
                from,
                why: format!("a key of {} bytes", r.key.len()),
            });
        }
        clock.check(phys_ms, r.stamp)?;
    }
    Ok(())
}

/// Bucket digests on the wire: one hex string (8 KiB for 256 buckets, not a JSON number per byte).
mod hex_digests {
    use crate::store::BucketDigest;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &[BucketDigest], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(d.len() * 32);
        for b in d.iter().flatten() {
            out.push(char::from_digit(u32::from(b >> 4), 16).expect("a nibble"));
            out.push(char::from_digit(u32::from(b & 15), 16).expect("a nibble"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BucketDigest>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = text.as_bytes();
        if bytes.len() % 32 != 0 || bytes.len() > 32 * crate::store::BUCKETS {
            return Err(serde::de::Error::custom("digests: wrong length"));
        }
        let nib = |c: u8| {
            (c as char)
                .to_digit(16)
                .map(|v| v as u8)
                .ok_or_else(|| serde::de::Error::custom("digests: not hex"))
        };
        bytes
            .chunks(32)
            .map(|c| {
                let mut d = [0u8; 16];
                for (i, pair) in c.chunks(2).enumerate() {
                    d[i] = nib(pair[0])? << 4 | nib(pair[1])?;
                }
                Ok(d)
            })
            .collect()
    }
}
