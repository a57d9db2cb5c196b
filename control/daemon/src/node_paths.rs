//! Path decisions of the node loop: which peers go through the relay, probes of the direct
//! path while relayed.

use super::*;

impl Node {
    pub(super) fn is_relay(&self, a: Option<SocketAddr>) -> bool {
        match (a, &self.relay) {
            (Some(a), Some(r)) => r.is_relay_addr(&a).is_some(),
            _ => false,
        }
    }

    pub(super) fn relay_after(&self) -> Duration {
        self.rekey_timeout() * 2 + Duration::from_secs(1)
    }

    pub(super) fn probe_every(&self) -> Duration {
        self.rekey_timeout() * 4
    }

    /// Path decisions, once per timer tick: a peer that found no session over UDP for
    /// `relay_after` goes through the relay; a relayed peer probes its direct endpoints every
    /// `probe_every` (a handshake answered directly moves it back).
    pub(super) fn paths(&mut self, now: Instant) {
        let (after, every) = (self.relay_after(), self.probe_every());
        let Some(relay) = self.relay.as_ref() else {
            return;
        };
        if !relay.connected() {
            return;
        }
        let mut to_relay = Vec::new();
        let mut probe = Vec::new();
        for (id, p) in &self.peers {
            if !p.dynamic {
                continue;
            }
            let on_relay = p
                .endpoint
                .is_some_and(|e| relay.is_relay_addr(&e).is_some());
            if on_relay {
                if !p.candidates.is_empty()
                    && p.last_probe.is_none_or(|t| now.duration_since(t) >= every)
                {
                    probe.push(*id);
                }
            } else if p
                .attempt_since
                .is_some_and(|t| now.duration_since(t) >= after)
            {
                to_relay.push(*id);
            }
        }
        for id in to_relay {
            let relay = self.relay.as_ref().expect("checked above");
            let p = self.peers.get_mut(&id).expect("listed above");
            let ep = match relay.endpoint_for(p.cfg.public_key) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(peer = %p.cfg.name, "relay endpoint: {e}");
                    continue;
                }
            };
            tracing::info!(peer = %p.cfg.name, via = %ep, "no UDP path; using the relay");
            p.endpoint = Some(ep);
            p.attempt_since = Some(now);
            p.last_probe = Some(now);
            p.want_until = Some(now + REKEY_ATTEMPT);
            self.send(CtlMsg::SetEndpoint {
                peer: id,
                endpoint: ep,
            });
            self.initiate(id, now);
        }
        for id in probe {
            let p = self.peers.get_mut(&id).expect("listed above");
            p.last_probe = Some(now);
            tracing::debug!(peer = %p.cfg.name, "probing the direct path");
            self.initiate_to(id, now, true);
        }
    }
}
