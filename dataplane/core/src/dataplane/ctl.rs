//! Control messages: peers, sessions, timers, the packet filter, counters.

use std::sync::Arc;
use std::time::Instant;

use tm_wire::filter::FilterUpdate;
use tm_wire::ipc::{CtlMsg, DpMsg, PeerId, Prefix};

use super::{Dataplane, Pending};
use crate::filter::{ActiveFilter, FlowTable};
use crate::peer::{Peer, Slot};
use crate::route;
use crate::session::{Role, Session};

impl Dataplane {
    pub(super) fn emit_counters(&mut self, now: Instant) {
        self.events.push_back(DpMsg::Counters {
            drops: self.drops,
            rx_datagrams: self.rx_datagrams,
            tx_datagrams: self.tx_datagrams,
        });
        if self.flows.is_some() || self.filter_bad > 0 {
            let now_s = self.shared.secs(now);
            self.events.push_back(DpMsg::FilterCounters {
                generation: self.filter_generation,
                active: self.filter.is_some(),
                flows: self.flows.as_ref().map_or(0, |f| f.live(now_s) as u64),
                capacity: self.flows.as_ref().map_or(0, |f| f.capacity() as u64),
                evictions: self.flows.as_ref().map_or(0, |f| f.evictions()),
                bad_updates: self.filter_bad,
            });
        }
        for p in self.peers.values() {
            self.events.push_back(DpMsg::PeerCounters {
                peer: p.id,
                stats: Self::stats_of(p, now),
            });
        }
    }

    /// Applies one control-plane message.
    pub fn handle_ctl(&mut self, now: Instant, msg: CtlMsg) {
        self.ctl(now, msg);
        // Sessions, peers and timer settings may have changed: a new bound.
        self.rescan_timers(now);
        self.publish();
    }

    fn ctl(&mut self, now: Instant, msg: CtlMsg) {
        self.dirty |= !matches!(
            msg,
            CtlMsg::SendDatagram { .. } | CtlMsg::RequestCounters | CtlMsg::SetFilter { .. }
        );
        match msg {
            CtlMsg::SetTimers(t) => self.t = t.into(),
            CtlMsg::AddPeer {
                peer,
                public_key,
                allowed_ips,
                endpoint,
                persistent_keepalive,
            } => {
                // Invalid prefixes cannot come through the IPC decoder; skip them if a
                // caller builds one by hand.
                let mut ips: Vec<Prefix> = allowed_ips
                    .into_iter()
                    .filter_map(|p| route::normalize(p).ok())
                    .collect();
                ips.sort_by_key(|p| (p.addr, p.len));
                ips.dedup();
                // A prefix belongs to one peer: the latest to claim it (as in WireGuard).
                for other in self.peers.values_mut().filter(|p| p.id != peer) {
                    other.allowed_ips.retain(|a| !ips.contains(a));
                }
                let p = self.peers.entry(peer).or_insert_with(|| Peer::new(peer));
                p.public_key = public_key;
                p.allowed_ips = ips;
                if endpoint.is_some() {
                    p.endpoint = endpoint;
                }
                if persistent_keepalive == 0 {
                    p.timers.persistent_due = None;
                } else if p.persistent_keepalive == 0 {
                    // Newly enabled: open the NAT mapping right away.
                    p.timers.persistent_due = Some(now);
                }
                p.persistent_keepalive = persistent_keepalive;
                self.rebuild_routes();
            }
            CtlMsg::RemovePeer { peer } => {
                if let Some(mut p) = self.peers.remove(&peer) {
                    p.clear_all(&mut self.by_index);
                    self.rebuild_routes();
                }
            }
            CtlMsg::SetEndpoint { peer, endpoint } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.endpoint = Some(endpoint);
                }
            }
            CtlMsg::InstallSession {
                peer,
                local_index,
                remote_index,
                send_key,
                recv_key,
                initiator,
            } => self.install(
                now,
                peer,
                local_index,
                remote_index,
                &send_key,
                &recv_key,
                initiator,
            ),
            CtlMsg::ClearSessions { peer } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.clear_all(&mut self.by_index);
                    p.timers.keepalive_due = None;
                    p.timers.handshake_due = None;
                }
            }
            CtlMsg::SendDatagram { to, data } => {
                self.transmits.push_back(Pending::Datagram { to, data });
            }
            CtlMsg::RequestCounters => self.emit_counters(now),
            CtlMsg::SetFilter {
                generation,
                total,
                offset,
                data,
            } => match self.reassembly.push(generation, total, offset, &data) {
                FilterUpdate::Partial => {}
                FilterUpdate::Clear { generation } => {
                    self.filter = None;
                    self.filter_generation = generation;
                    self.dirty = true;
                }
                FilterUpdate::Set(spec) => {
                    let cap = self.flow_capacity;
                    let flows = Arc::clone(
                        self.flows
                            .get_or_insert_with(|| Arc::new(FlowTable::new(cap))),
                    );
                    self.filter_generation = spec.generation;
                    self.filter = Some(Arc::new(ActiveFilter { spec: *spec, flows }));
                    self.dirty = true;
                }
                FilterUpdate::Bad => self.filter_bad += 1,
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn install(
        &mut self,
        now: Instant,
        peer: PeerId,
        local_index: u32,
        remote_index: u32,
        send_key: &[u8; 32],
        recv_key: &[u8; 32],
        initiator: bool,
    ) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        // A reused local index evicts whichever session held it.
        if let Some(owner) = self.by_index.get(&local_index).copied() {
            if let Some(o) = self.peers.get_mut(&owner) {
                if let Some(slot) = o.find(local_index) {
                    o.clear(slot, &mut self.by_index);
                }
            }
        }
        let role = if initiator {
            Role::Initiator
        } else {
            Role::Responder
        };
        let s = Arc::new(Session::new(
            now,
            local_index,
            remote_index,
            send_key,
            recv_key,
            role,
        ));
        let p = self.peers.get_mut(&peer).expect("checked above");
        self.by_index.insert(local_index, peer);
        if initiator {
            // WireGuard: an unconfirmed `next` becomes `previous`, else `current` does.
            if p.next.is_some() {
                p.clear(Slot::Previous, &mut self.by_index);
                p.previous = p.next.take();
                p.clear(Slot::Current, &mut self.by_index);
            } else {
                p.clear(Slot::Previous, &mut self.by_index);
                p.previous = p.current.take();
            }
            p.current = Some(s);
            if p.staged.is_empty() {
                if !p.timers.keepalive_queued {
                    p.timers.keepalive_queued = true;
                    self.transmits.push_back(Pending::Keepalive(peer));
                }
            } else if !p.timers.flush_queued {
                p.timers.flush_queued = true;
                self.transmits.push_back(Pending::Flush(peer));
            }
        } else {
            p.clear(Slot::Next, &mut self.by_index);
            p.clear(Slot::Previous, &mut self.by_index);
            p.next = Some(s);
        }
    }
}
