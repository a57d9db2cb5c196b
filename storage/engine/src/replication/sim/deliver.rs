//! Message handling of the simulated coordinators: stores, replies, hinted handoff and
//! anti-entropy exchanges.

use super::{Key, Msg, World};
use crate::replication::antientropy::{differing_partitions, partition, plan};
use crate::replication::read::ReadEvent;
use crate::replication::vv::{Dot, Version};
use crate::replication::write::WriteEvent;
use crate::replication::NodeId;
use std::collections::{BTreeMap, BTreeSet};

impl World {
    pub(super) fn handoff(&mut self, i: usize) {
        let hints: Vec<(NodeId, Key, Dot)> = self.nodes[i].hints.iter().cloned().collect();
        for (to, key, dot) in hints {
            let n = &self.nodes[i];
            let Some(v) = n.store.get(&key).and_then(|s| s.get(dot)).cloned() else {
                continue; // (the LWW defect may have dropped it)
            };
            let payload = n.payloads.get(&dot).copied();
            self.send(
                i,
                Self::idx(to),
                Msg::Store {
                    round: None,
                    handoff: true,
                    key,
                    v,
                    payload,
                },
            );
        }
    }

    pub(super) fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        let bug = self.p.lww_bug;
        let from_id = self.nodes[from].id;
        match msg {
            Msg::Store {
                round,
                handoff,
                key,
                v,
                payload,
            } => {
                let dot = v.dot;
                self.nodes[to].apply(&key, v, payload, bug);
                if let Some(round) = round {
                    self.send(to, from, Msg::Stored { round });
                }
                if handoff {
                    self.send(to, from, Msg::HintDone { key, dot });
                }
            }
            Msg::Stored { round } => {
                if let Some(w) = self.nodes[to].writes.get_mut(&round) {
                    let acts = w.round.on_event(WriteEvent::Durable(from_id));
                    self.write_actions(to, round, acts);
                }
            }
            Msg::HintDone { key, dot } => {
                self.nodes[to].hints.remove(&(from_id, key, dot));
            }
            Msg::Get { round, key } => {
                let n = &self.nodes[to];
                let set = n.store.get(&key).cloned().unwrap_or_default();
                let payloads = set
                    .dots()
                    .filter_map(|d| n.payloads.get(&d).map(|p| (d, *p)))
                    .collect();
                self.send(
                    to,
                    from,
                    Msg::Versions {
                        round,
                        set,
                        payloads,
                    },
                );
            }
            Msg::Versions {
                round,
                set,
                payloads,
            } => {
                if let Some(r) = self.nodes[to].reads.get_mut(&round) {
                    r.payloads.extend(payloads);
                    let acts = r.round.on_event(ReadEvent::Reply(from_id, set));
                    self.read_actions(to, round, acts);
                }
            }
            Msg::AeDigests { table } => {
                let parts = differing_partitions(&self.nodes[to].digests, &table);
                let entries = self.nodes[to]
                    .store
                    .iter()
                    .filter(|(k, _)| parts.contains(&partition(k)))
                    .map(|(k, s)| (k.clone(), s.dots().collect()))
                    .collect();
                if !parts.is_empty() {
                    self.send(to, from, Msg::AeKeys { parts, entries });
                }
            }
            Msg::AeKeys { parts, entries } => {
                // `to` started the exchange; `from` listed its keys of the differing partitions.
                let theirs: BTreeMap<Key, Vec<Dot>> = entries.into_iter().collect();
                let mut keys: BTreeSet<Key> = theirs.keys().cloned().collect();
                keys.extend(
                    self.nodes[to]
                        .store
                        .keys()
                        .filter(|k| parts.contains(&partition(k)))
                        .cloned(),
                );
                let (me, peer) = (self.nodes[to].id, from_id);
                for key in keys {
                    let owners = self.owners(&key);
                    let ours = self.nodes[to].store.get(&key).cloned().unwrap_or_default();
                    let x = plan(&ours, theirs.get(&key).map_or(&[][..], |d| &d[..]));
                    if owners.contains(&peer) {
                        for d in x.send {
                            let v = ours.get(d).unwrap().clone();
                            let payload = self.nodes[to].payloads.get(&d).copied();
                            self.send(
                                to,
                                from,
                                Msg::Store {
                                    round: None,
                                    handoff: false,
                                    key: key.clone(),
                                    v,
                                    payload,
                                },
                            );
                        }
                    }
                    if owners.contains(&me) && !x.fetch.is_empty() {
                        self.send(to, from, Msg::Fetch { key, dots: x.fetch });
                    }
                }
            }
            Msg::Fetch { key, dots } => {
                let n = &self.nodes[to];
                let Some(set) = n.store.get(&key) else { return };
                let out: Vec<(Version, Option<u64>)> = dots
                    .iter()
                    .filter_map(|d| set.get(*d).map(|v| (v.clone(), n.payloads.get(d).copied())))
                    .collect();
                for (v, payload) in out {
                    self.send(
                        to,
                        from,
                        Msg::Store {
                            round: None,
                            handoff: false,
                            key: key.clone(),
                            v,
                            payload,
                        },
                    );
                }
            }
        }
    }
}
