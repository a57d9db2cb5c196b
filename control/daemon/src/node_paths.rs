//! Path decisions of the node loop: which peers go through the relay, probes of the direct
//! path while relayed. The decisions are the sans-IO core's ([`crate::peer_timers`]); this
//! file performs them (the relay's endpoint for a peer, `SetEndpoint`, initiations).

use super::*;

impl Node {
    pub(super) fn is_relay(&self, a: Option<SocketAddr>) -> bool {
        match (a, &self.relay) {
            (Some(a), Some(r)) => r.is_relay_addr(&a).is_some(),
            _ => false,
        }
    }

    /// Path decisions, once per timer tick: a peer that found no session over UDP for
    /// `relay_after` goes through the relay; a relayed peer probes its direct endpoints every
    /// `probe_every` (a handshake answered directly moves it back).
    pub(super) fn paths(&mut self, now: Instant) {
        let timing = self.timing();
        let Some(relay) = self.relay.as_ref() else {
            return;
        };
        if !relay.connected() {
            return;
        }
        let due: Vec<(PeerId, Action)> = self
            .peers
            .iter()
            .filter_map(|(id, p)| {
                let view = PathView {
                    dynamic: p.dynamic,
                    on_relay: p
                        .endpoint
                        .is_some_and(|e| relay.is_relay_addr(&e).is_some()),
                    has_candidates: !p.candidates.is_empty(),
                };
                Some((*id, p.timers.path_due(now, timing, view)?))
            })
            .collect();
        for (id, action) in due {
            match action {
                Action::ToRelay => self.move_to_relay(id, now),
                Action::Probe => {
                    let p = self.peers.get_mut(&id).expect("listed above");
                    p.timers.probed(now);
                    tracing::debug!(peer = %p.cfg.name, "probing the direct path");
                    self.initiate_to(id, now, true);
                }
                Action::Initiate | Action::GiveUp => unreachable!("not a path decision"),
            }
        }
    }

    /// Points the peer at the relay and handshakes through it.
    fn move_to_relay(&mut self, id: PeerId, now: Instant) {
        let relay = self.relay.as_ref().expect("paths checked it");
        let p = self.peers.get_mut(&id).expect("listed by paths");
        let ep = match relay.endpoint_for(p.cfg.public_key) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(peer = %p.cfg.name, "relay endpoint: {e}");
                return;
            }
        };
        tracing::info!(peer = %p.cfg.name, via = %ep, "no UDP path; using the relay");
        p.endpoint = Some(ep);
        p.timers.moved_to_relay(now);
        self.send(CtlMsg::SetEndpoint {
            peer: id,
            endpoint: ep,
        });
        self.initiate(id, now);
    }
}
