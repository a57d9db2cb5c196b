//! Links between coordinators (issue 17): one TLS connection per pair of coordinators that
//! carries both relayed frames (two nodes relaying through different coordinators still
//! reach each other) and replication messages, with back-pressure.
//!
//! The coordinator with the smaller static key dials the other (`GET /v1/relay`,
//! `Upgrade: tm-coord-link/1`, its replication client certificate: a coordinator's; a node
//! certificate is refused with 403); the other dials too only if no link came up for a few
//! checks (one-way reachability). Both sides then use the one connection. Frames are the
//! relay's frames whose payload starts with a 32-byte source key: `u16 length | destination |
//! source | payload`.
//!
//! - A relayed frame names the destination node and the source node. The receiving
//!   coordinator delivers it only to a node connected to it and never forwards it again, so
//!   frames cannot loop. A coordinator with a frame for a registered node not connected to it
//!   sends it to the coordinator that node was last heard through (learned from forwarded
//!   frames, for 30 s), else to every linked coordinator, as a learning bridge does.
//! - A replication message (`tm_cluster::Msg` as JSON, at most 48 KiB of records) has the
//!   destination `ff..ff`; the receiver merges it (durably) and answers on the same link.
//!   Messages wait for room in the link's queue (back-pressure); a coordinator without a link
//!   to another falls back to `POST /v1/cluster`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use tm_cluster::Msg;
use tm_noise::PublicKey;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::http::{self, Request};
use crate::relay::{read_frame_max, write_loop, PeerLink, KEEPALIVE_KEY, KEY_LEN, RELAY_QUEUE};
use crate::{Coordinator, Error, JoinClient, JoinToken, NodeIdentity};

/// The `Upgrade:` protocol token of links between coordinators.
pub const LINK_PROTOCOL: &str = "tm-coord-link/1";
/// How often missing links are dialled again.
pub(crate) const LINK_CHECK: Duration = Duration::from_secs(2);
/// Checks without a link after which the coordinator with the larger key dials too.
const DIAL_ANYWAY_AFTER: u32 = 3;
/// Time allowed to set a link up, and to queue one replication message on it.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// Destination of replication messages on a link.
const CLUSTER_KEY: PublicKey = PublicKey([0xFF; 32]);
/// Most bytes after the destination key in one frame (the u16 length field's range).
const MAX_FRAME_DATA: usize = u16::MAX as usize - KEY_LEN;
/// Replication messages received and not yet merged, per link (then reading stops).
const CLUSTER_INBOX: usize = 16;
/// A link on which nothing arrived (keepalives are sent every 20 s) for this long is closed.
const LINK_IDLE: Duration = Duration::from_secs(75);

/// Whether `req` asks for a link between coordinators.
pub(crate) fn is_link_upgrade(req: &Request) -> bool {
    req.has_token("upgrade", LINK_PROTOCOL)
}

/// Per other coordinator: checks in a row without a link (see [`DIAL_ANYWAY_AFTER`]).
#[derive(Default)]
pub(crate) struct Dialer {
    missing: HashMap<PublicKey, u32>,
    active: HashSet<PublicKey>,
}

impl Coordinator {
    /// Checks the caller of a link upgrade: a client certificate of a coordinator of this
    /// mesh. Returns its name and key.
    pub(crate) fn link_accept(
        &self,
        client: Option<&[u8; 32]>,
    ) -> Result<(String, PublicKey), Error> {
        let (name, _) = self.cert_identity(client)?;
        let key = self.cluster_peer(&name)?;
        Ok((name, key))
    }

    /// Serves a link another coordinator dialled.
    pub(crate) async fn link_session<S>(
        &self,
        mut tls: S,
        extra: Vec<u8>,
        name: String,
        via: PublicKey,
        peer: SocketAddr,
        mut closed: tokio::sync::watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if let Err(e) = http::write_switching(&mut tls, LINK_PROTOCOL).await {
            tracing::debug!(%peer, %name, "coordinator link upgrade failed: {e}");
            return;
        }
        tracing::info!(%peer, %name, "link from coordinator open");
        let (rd, wr) = tokio::io::split(tls);
        let rd = tokio::io::BufReader::new(std::io::Cursor::new(extra).chain(rd));
        let why = tokio::select! {
            why = self.run_link(rd, wr, via) => why,
            _ = closed.wait_for(|c| *c) => "the listener stopped".to_owned(),
        };
        tracing::info!(%peer, %name, "link from coordinator closed: {why}");
    }

    /// Runs one link (either side) until it fails: it is the way to `via` meanwhile.
    async fn run_link<R, W>(&self, mut rd: R, mut wr: W, via: PublicKey) -> String
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let hub = &self.shared.relay;
        let (tx, mut rx) = mpsc::channel(RELAY_QUEUE);
        // Unregistered however this ends (also when the future is dropped).
        let _registered = Registered {
            hub,
            key: via,
            id: hub.add_link(via, tx),
        };
        let (inbox_tx, inbox) = mpsc::channel::<Vec<u8>>(CLUSTER_INBOX);
        let reader = read_link(&mut rd, &inbox_tx, hub, via, |src, dst, payload| {
            hub.route_from_peer(via, src, &dst, payload, |k| self.is_member(k));
        });
        let writer = write_loop(&mut wr, &mut rx, self.shared.cfg.relay_keepalive);
        let why = tokio::select! {
            why = reader => why,
            r = writer => r.err().map_or_else(|| "closed".to_owned(), |e| e.to_string()),
            why = self.cluster_inbox(via, inbox) => why,
        };
        why
    }

    /// Merges the replication messages that arrive on the link from `via`, in order, and
    /// answers each on the link.
    async fn cluster_inbox(&self, via: PublicKey, mut inbox: mpsc::Receiver<Vec<u8>>) -> String {
        while let Some(bytes) = inbox.recv().await {
            let msg: Msg = match serde_json::from_slice(&bytes) {
                Ok(m) => m,
                Err(e) => {
                    self.shared.relay.count_protocol_error();
                    return format!("a replication message is not valid: {e}");
                }
            };
            let me = self.clone();
            // The merge persists (fsync): off the async workers.
            let answers =
                match tokio::task::spawn_blocking(move || me.handle_cluster(&via, msg)).await {
                    Ok(Ok(a)) => a,
                    Ok(Err(e)) => {
                        tracing::debug!("replication message refused: {e}");
                        continue;
                    }
                    Err(_) => continue,
                };
            for a in answers {
                for part in crate::cluster::split(a) {
                    // Without the link the answer is lost: anti-entropy repairs it.
                    let _ = self.send_on_link(&via, &part).await;
                }
            }
        }
        "replication stopped".to_owned()
    }

    /// Queues one replication message to coordinator `to` on its link, waiting for room.
    /// `false` if there is no link, the message is too large for a frame, or it could not be
    /// queued in time (the caller posts it instead).
    pub(crate) async fn send_on_link(&self, to: &PublicKey, msg: &Msg) -> bool {
        let Some(tx) = self.shared.relay.link_sender(to) else {
            return false;
        };
        queue_on_link(&tx, msg, LINK_TIMEOUT).await
    }

    /// Dials the link to every other coordinator that should have one and has none (the one
    /// with the smaller key dials; the other too after a few checks without a link). Each
    /// dial runs as a task in `links` that returns the coordinator's key when the link ends.
    pub(crate) fn start_links(
        &self,
        links: &mut JoinSet<PublicKey>,
        dialer: &mut Dialer,
        token: &JoinToken,
        identity: &NodeIdentity,
    ) {
        while let Some(r) = links.try_join_next() {
            if let Ok(k) = r {
                dialer.active.remove(&k);
            }
        }
        let me = self.public_key();
        for (key, addr) in self.other_coordinators() {
            let missing = dialer.missing.entry(key).or_default();
            if self.shared.relay.has_link(&key) {
                *missing = 0;
                continue;
            }
            *missing += 1;
            if me.0 > key.0 && *missing <= DIAL_ANYWAY_AFTER {
                continue;
            }
            if !dialer.active.insert(key) {
                continue;
            }
            let (c, token, identity) = (self.clone(), token.clone(), identity.clone());
            links.spawn(async move {
                if let Err(e) = c.dial_link(key, &addr, token, identity).await {
                    tracing::debug!("link to coordinator {addr}: {e}");
                }
                key
            });
        }
    }

    /// Dials the link to the coordinator `key` at `addr` and runs it until it fails.
    async fn dial_link(
        &self,
        key: PublicKey,
        addr: &str,
        token: JoinToken,
        identity: NodeIdentity,
    ) -> Result<(), Error> {
        let mut client = JoinClient::with_identity(addr.to_owned(), token, identity)?;
        client.set_timeout(LINK_TIMEOUT);
        let (tls, rest) = client.upgrade_raw(LINK_PROTOCOL).await?;
        tracing::info!("link to coordinator {addr} open");
        let (rd, wr) = tokio::io::split(tls);
        let rd = tokio::io::BufReader::new(std::io::Cursor::new(rest).chain(rd));
        let why = self.run_link(rd, wr, key).await;
        tracing::info!("link to coordinator {addr} closed: {why}");
        Ok(())
    }
}

/// Queues replication message `msg` on a link's outgoing queue `tx` (bounded,
/// [`RELAY_QUEUE`] frames; its writer sends them as fast as the connection takes them),
/// waiting up to `wait` for room. `false` if it is too large for a frame or there was no room
/// in time: then it was not queued, and the caller posts it instead.
pub(crate) async fn queue_on_link(
    tx: &mpsc::Sender<(PublicKey, Vec<u8>)>,
    msg: &Msg,
    wait: Duration,
) -> bool {
    let mut data = vec![0u8; KEY_LEN];
    if serde_json::to_writer(&mut data, msg).is_err() || data.len() > MAX_FRAME_DATA {
        return false;
    }
    matches!(
        tokio::time::timeout(wait, tx.send((CLUSTER_KEY, data))).await,
        Ok(Ok(()))
    )
}

/// Reads a link's frames until it fails; returns why. Replication messages go to `inbox`, a
/// bounded queue ([`CLUSTER_INBOX`] messages not yet merged): while it is full this stops
/// reading, so the connection's buffers fill and the other side's writer, then its queue,
/// then its senders wait (back-pressure; memory stays bounded on both sides). Relayed frames
/// go to `route(source, destination, payload)`.
pub(crate) async fn read_link<R: AsyncRead + Unpin>(
    rd: &mut R,
    inbox: &mpsc::Sender<Vec<u8>>,
    hub: &crate::relay::RelayHub,
    via: PublicKey,
    mut route: impl FnMut(PublicKey, PublicKey, Vec<u8>),
) -> String {
    loop {
        let f = tokio::time::timeout(LINK_IDLE, read_frame_max(rd, MAX_FRAME_DATA)).await;
        let (dst, mut data) = match f {
            Err(_) => return "idle timeout".to_owned(),
            Ok(Ok(None)) => return "closed by the other coordinator".to_owned(),
            Ok(Ok(Some(f))) => f,
            Ok(Err(e)) => {
                hub.count_protocol_error();
                return e.to_string();
            }
        };
        if dst == KEEPALIVE_KEY && data.is_empty() {
            continue;
        }
        if data.len() < KEY_LEN {
            hub.count_protocol_error();
            return format!("a link frame of {} bytes has no source", data.len());
        }
        let payload = data.split_off(KEY_LEN);
        if dst == CLUSTER_KEY {
            hub.cluster_on_links
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Waits while the merges lag: the other side's writes then wait too.
            if inbox.send(payload).await.is_err() {
                return "replication stopped".to_owned();
            }
            continue;
        }
        if dst == crate::objrep::wire::OBJREP_KEY {
            // Object replication (coordinators only: the link's peer `via` is one). Waits
            // while the receiver lags: back-pressure on the other side's sends.
            match hub.objrep.get() {
                Some(tx) => {
                    if tx.send((via, payload)).await.is_err() {
                        return "object replication stopped".to_owned();
                    }
                }
                None => hub.count_protocol_error(),
            }
            continue;
        }
        let src = PublicKey(data.try_into().expect("KEY_LEN bytes"));
        route(src, dst, payload);
    }
}

/// A link's entry in the hub, removed on drop.
struct Registered<'a> {
    hub: &'a crate::relay::RelayHub,
    key: PublicKey,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.hub.remove_link(&self.key, self.id);
    }
}

impl crate::relay::RelayHub {
    /// Adds (or replaces) the link to coordinator `key`; returns its id.
    pub(crate) fn add_link(&self, key: PublicKey, tx: mpsc::Sender<(PublicKey, Vec<u8>)>) -> u64 {
        let id = self.next_id();
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, PeerLink { id, tx });
        id
    }

    /// Removes the link to `key` if it is still the one with `id`.
    pub(crate) fn remove_link(&self, key: &PublicKey, id: u64) {
        let mut g = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if g.get(key).is_some_and(|l| l.id == id) {
            g.remove(key);
        }
    }

    /// The sending side of the link to coordinator `key`, if there is one.
    pub(crate) fn link_sender(
        &self,
        key: &PublicKey,
    ) -> Option<mpsc::Sender<(PublicKey, Vec<u8>)>> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map(|l| l.tx.clone())
    }

    /// Whether there is a live link to coordinator `key`.
    pub(crate) fn has_link(&self, key: &PublicKey) -> bool {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|l| !l.tx.is_closed())
    }
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
