//! The handshake driver: messages from the dataplane, Noise handshakes in both roles, session
//! installation.

use super::*;

impl Node {
    pub(super) fn alloc_index(&mut self, peer: PeerId) -> u32 {
        loop {
            let i = OsRng.next_u32();
            if i != 0 && !self.by_index.contains_key(&i) {
                self.by_index.insert(i, peer);
                return i;
            }
        }
    }

    /// Sends a handshake initiation to the peer's endpoint and schedules a retry.
    pub(super) fn initiate(&mut self, id: PeerId, now: Instant) {
        self.initiate_to(id, now, false);
    }

    /// `direct_only`: to the direct candidates only (a probe while on the relay).
    pub(super) fn initiate_to(&mut self, id: PeerId, now: Instant, direct_only: bool) {
        let timing = self.timing();
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.timers.initiating(now, direct_only);
        // The known endpoint, plus every candidate while no session exists (hole punching:
        // both sides initiate towards every address they know; the responder rejects the
        // duplicates as replays of the same timestamp).
        let mut targets: Vec<SocketAddr> = if direct_only {
            Vec::new()
        } else {
            p.endpoint.into_iter().collect()
        };
        if direct_only || p.last_handshake.is_none() || p.timers.wanted() {
            for c in &p.candidates {
                if !targets.contains(c) && targets.len() < 8 {
                    targets.push(*c);
                }
            }
        }
        if targets.is_empty() {
            // Nothing to do until the peer reaches us (its initiation sets the endpoint).
            p.timers.nothing_to_send(now, timing);
            return;
        }
        if let Some(old) = p.inflight_index.take() {
            self.by_index.remove(&old);
        }
        let idx = self.alloc_index(id);
        let p = self.peers.get_mut(&id).expect("checked above");
        let msg = self
            .local
            .initiate(now, SystemTime::now(), &mut p.noise, idx, &mut OsRng);
        p.inflight_index = Some(idx);
        let jitter = Duration::from_millis(u64::from(OsRng.next_u32() % 334));
        p.timers.sent_initiation(now, timing, jitter);
        tracing::debug!(peer = %p.cfg.name, ?targets, "handshake initiation");
        for to in targets {
            self.send(CtlMsg::SendDatagram {
                to,
                data: msg.to_vec(),
            });
        }
    }

    /// The timer settings of the path/handshake core.
    pub(super) fn timing(&self) -> Timing {
        Timing {
            rekey_timeout: Duration::from_millis(u64::from(self.cfg.timers.rekey_timeout_ms)),
        }
    }

    pub(super) fn under_load(&mut self, now: Instant) -> bool {
        if self.cfg.force_cookie {
            return true;
        }
        let (start, n) = &mut self.load_window;
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *n = 0;
        }
        *n += 1;
        *n > UNDER_LOAD_PER_SEC
    }

    pub(super) fn handle_dp(&mut self, now: Instant, m: DpMsg) {
        match m {
            DpMsg::Ready { .. } => {}
            DpMsg::HandshakeDatagram { from, data } => {
                self.handle_handshake(now, canonical(from), &data)
            }
            DpMsg::NeedHandshake { peer } => {
                let timing = self.timing();
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                let in_flight = p.inflight_index.is_some();
                if p.timers.need_handshake(now, timing, in_flight) {
                    self.initiate(peer, now);
                }
            }
            DpMsg::EndpointChanged { peer, endpoint } => {
                let endpoint = canonical(endpoint);
                let to_relay = self.is_relay(Some(endpoint));
                let timing = self.timing();
                if let Some(p) = self.peers.get_mut(&peer) {
                    // Prefer a direct path that answered recently over stray relayed packets
                    // still in flight from before the peer switched.
                    if let Some(d) = p.timers.keep_direct(now, timing, to_relay) {
                        tracing::debug!(peer = %p.cfg.name, "ignoring roam to the relay");
                        self.send(CtlMsg::SetEndpoint { peer, endpoint: d });
                        return;
                    }
                    tracing::info!(peer = %p.cfg.name, %endpoint, "peer roamed");
                    p.endpoint = Some(endpoint);
                    let key = p.cfg.public_key;
                    self.observe(&key, endpoint);
                }
            }
            DpMsg::SessionExpired { local_index, .. } => {
                self.by_index.remove(&local_index);
            }
            DpMsg::SessionConfirmed { .. } => {}
            DpMsg::PeerCounters { peer, stats } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.stats = stats;
                }
            }
            DpMsg::Counters {
                drops,
                rx_datagrams,
                tx_datagrams,
            } => {
                self.latest = DpCounters {
                    drops,
                    rx: rx_datagrams,
                    tx: tx_datagrams,
                };
            }
            m @ DpMsg::FilterDrop { .. } => self.filter_drop(m),
            DpMsg::FilterCounters {
                flows,
                capacity,
                evictions,
                ..
            } => self.filter.flows = (flows, capacity, evictions),
            DpMsg::WorkerCounters { worker, stats } => {
                let i = usize::from(worker);
                // Bounded by the dataplane's own limit (64 workers); ignore nonsense.
                if i < 256 {
                    if self.workers.len() <= i {
                        self.workers.resize(i + 1, Default::default());
                    }
                    self.workers[i] = stats;
                }
            }
        }
    }

    pub(super) fn handle_handshake(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let under_load = self.under_load(now);
        let r = match wg::classify(data) {
            Ok(wg::MSG_INITIATION) => self.on_initiation(now, from, data, under_load),
            Ok(wg::MSG_RESPONSE) => self.on_response(now, from, data, under_load),
            Ok(wg::MSG_COOKIE_REPLY) => self.on_cookie(now, data),
            _ => Err("not a handshake message".to_string()),
        };
        if let Err(e) = r {
            self.handshake_errors += 1;
            tracing::debug!(%from, "handshake message rejected: {e}");
        }
    }

    pub(super) fn on_initiation(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        under_load: bool,
    ) -> Result<(), String> {
        let pending = match self
            .local
            .begin_initiation(now, data, from, under_load, &mut OsRng)
            .map_err(|e| e.to_string())?
        {
            InitiationStep::Cookie(reply) => {
                self.cookies_sent += 1;
                self.send(CtlMsg::SendDatagram {
                    to: from,
                    data: reply.to_vec(),
                });
                return Ok(());
            }
            InitiationStep::Identified(p) => p,
        };
        let id = *self
            .by_key
            .get(&pending.remote_static())
            .ok_or("initiation from an unknown key")?;
        let idx = self.alloc_index(id);
        let p = self.peers.get_mut(&id).expect("indexed peers exist");
        let (resp, keys) = match self
            .local
            .respond(now, pending, &mut p.noise, idx, &mut OsRng)
        {
            Ok(r) => r,
            Err(e) => {
                self.by_index.remove(&idx);
                return Err(e.to_string());
            }
        };
        // Install first: the initiator's first packet (its keepalive) follows our response
        // within a round trip, and the dataplane must know the session by then. The ring is
        // in order, so the install is applied before the response is sent.
        self.established(now, id, from, &keys, false);
        self.send(CtlMsg::SendDatagram {
            to: from,
            data: resp.to_vec(),
        });
        Ok(())
    }

    pub(super) fn on_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        under_load: bool,
    ) -> Result<(), String> {
        let idx = wg::handshake_receiver(data).ok_or("bad response")?;
        let id = *self
            .by_index
            .get(&idx)
            .ok_or("response to an unknown index")?;
        let p = self.peers.get_mut(&id).expect("indexed peers exist");
        if p.inflight_index != Some(idx) {
            return Err("response to a handshake not in flight".into());
        }
        match self
            .local
            .handle_response(now, data, from, under_load, &mut p.noise, &mut OsRng)
            .map_err(|e| e.to_string())?
        {
            ResponseStep::Cookie(reply) => {
                self.cookies_sent += 1;
                self.send(CtlMsg::SendDatagram {
                    to: from,
                    data: reply.to_vec(),
                });
            }
            ResponseStep::Established(keys) => {
                p.inflight_index = None;
                self.established(now, id, from, &keys, true);
            }
        }
        Ok(())
    }

    pub(super) fn on_cookie(&mut self, now: Instant, data: &[u8]) -> Result<(), String> {
        let idx = wg::handshake_receiver(data).ok_or("bad cookie reply")?;
        let id = *self
            .by_index
            .get(&idx)
            .ok_or("cookie reply for an unknown index")?;
        let p = self.peers.get_mut(&id).expect("indexed peers exist");
        self.local
            .handle_cookie_reply(now, data, &mut p.noise)
            .map_err(|e| e.to_string())
    }

    /// A handshake completed (either role; `ours`: the response to our initiation): install
    /// the keys and remember the endpoint.
    pub(super) fn established(
        &mut self,
        now: Instant,
        id: PeerId,
        from: SocketAddr,
        keys: &hs::SessionKeys,
        ours: bool,
    ) {
        self.handshakes += 1;
        let p = self.peers.get_mut(&id).expect("indexed peers exist");
        p.sessions += 1;
        p.last_handshake = Some(SystemTime::now());
        p.installed.push_back(keys.local_index);
        let mut freed = Vec::new();
        while p.installed.len() > 3 {
            freed.extend(p.installed.pop_front());
        }
        let roam = p.endpoint != Some(from);
        p.endpoint = Some(from);
        let key = p.cfg.public_key;
        let relayed = self
            .relay
            .as_ref()
            .is_some_and(|r| r.is_relay_addr(&from).is_some());
        let p = self.peers.get_mut(&id).expect("indexed peers exist");
        p.timers.established(now, from, relayed, ours);
        tracing::info!(peer = %p.cfg.name, endpoint = %from, initiator = keys.initiator, "session established");
        for i in freed {
            self.by_index.remove(&i);
        }
        self.observe(&key, from);
        if roam {
            self.send(CtlMsg::SetEndpoint {
                peer: id,
                endpoint: from,
            });
        }
        self.send(CtlMsg::InstallSession {
            peer: id,
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            send_key: keys.send_key,
            recv_key: keys.recv_key,
            initiator: keys.initiator,
        });
    }
}
