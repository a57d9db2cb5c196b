//! Relays between coordinators (issue 17): two nodes that relay through different
//! coordinators still reach each other.
//!
//! Each coordinator keeps one outgoing link to every other coordinator: `GET /v1/relay` with
//! `Upgrade: tm-relay-peer/1` and its replication client certificate (a coordinator's; a
//! node certificate is refused with 403). On a link, frames are the relay's frames whose
//! payload starts with the 32-byte source key: `u16 length | destination | source |
//! payload`. The receiving coordinator delivers a frame only to a node connected to it and
//! never forwards it again, so frames cannot loop.
//!
//! A coordinator that has a frame for a registered node not connected to it sends it to the
//! coordinator that node was last heard through (learned from the source keys of forwarded
//! frames, for 30 s), else to every linked coordinator, as a learning bridge floods unknown
//! destinations. Links are dialled again every few seconds while they are down.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tm_noise::PublicKey;
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::http::{self, Request};
use crate::relay::{
    read_frame_max, write_loop, PeerLink, KEEPALIVE_KEY, KEY_LEN, MAX_RELAY_PAYLOAD,
    RELAY_IDLE_TIMEOUT,
};
use crate::wire::hex;
use crate::{Coordinator, Error, JoinClient, JoinToken, NodeIdentity};

/// The `Upgrade:` protocol token of links between coordinators.
pub const PEER_RELAY_PROTOCOL: &str = "tm-relay-peer/1";
/// How often missing links are dialled again.
pub(crate) const LINK_CHECK: Duration = Duration::from_secs(2);
/// Time allowed to set a link up.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `req` asks for a link between coordinators.
pub(crate) fn is_peer_upgrade(req: &Request) -> bool {
    req.header("upgrade").is_some_and(|v| {
        v.split(',')
            .any(|x| x.trim().eq_ignore_ascii_case(PEER_RELAY_PROTOCOL))
    })
}

impl Coordinator {
    /// Checks the caller of a link upgrade: a client certificate of a coordinator of this
    /// mesh. Returns its name and key.
    pub(crate) fn relay_peer_accept(
        &self,
        client: Option<&[u8; 32]>,
    ) -> Result<(String, PublicKey), Error> {
        let fp = client.ok_or(Error::ClientCertRequired)?;
        let (name, _) = self
            .index()
            .by_cert(&hex(fp))
            .cloned()
            .ok_or(Error::UnknownClient)?;
        let key = self.cluster_peer(&name)?;
        Ok((name, key))
    }

    /// Runs one incoming link from the coordinator `via`: delivers its frames to nodes
    /// connected here and answers only keepalives.
    pub(crate) async fn relay_peer_session<S>(
        &self,
        mut tls: S,
        extra: Vec<u8>,
        name: String,
        via: PublicKey,
        peer: SocketAddr,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        if let Err(e) = http::write_switching(&mut tls, PEER_RELAY_PROTOCOL).await {
            tracing::debug!(%peer, %name, "coordinator link upgrade failed: {e}");
            return;
        }
        tracing::info!(%peer, %name, "relay link from coordinator open");
        let hub = &self.shared.relay;
        let (rd, mut wr) = tokio::io::split(tls);
        let mut rd = tokio::io::BufReader::new(std::io::Cursor::new(extra).chain(rd));
        let reader = async {
            loop {
                let f = tokio::time::timeout(
                    RELAY_IDLE_TIMEOUT,
                    read_frame_max(&mut rd, MAX_RELAY_PAYLOAD + KEY_LEN),
                )
                .await;
                let (dst, mut data) = match f {
                    Err(_) => return "idle timeout".to_owned(),
                    Ok(Ok(None)) => return "closed by the coordinator".to_owned(),
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
                    return format!("a forwarded frame of {} bytes has no source", data.len());
                }
                let payload = data.split_off(KEY_LEN);
                let src = PublicKey(data.try_into().expect("KEY_LEN bytes"));
                hub.route_from_peer(via, src, &dst, payload, |k| self.is_member(k));
            }
        };
        // Nothing is sent back on an incoming link but keepalives.
        let (_keep, mut none) = mpsc::channel(1);
        let writer = write_loop(&mut wr, &mut none, self.shared.cfg.relay_keepalive);
        let why = tokio::select! {
            why = reader => why,
            r = writer => r.err().map_or_else(|| "closed".to_owned(), |e| e.to_string()),
        };
        tracing::info!(%peer, %name, "relay link from coordinator closed: {why}");
    }

    /// Dials a link to every other coordinator that has none (and is not being dialled):
    /// each link runs as a task in `links` that returns the coordinator's key when the link
    /// ends.
    pub(crate) fn start_relay_links(
        &self,
        links: &mut JoinSet<PublicKey>,
        active: &mut HashSet<PublicKey>,
        token: &JoinToken,
        identity: &NodeIdentity,
    ) {
        while let Some(r) = links.try_join_next() {
            if let Ok(k) = r {
                active.remove(&k);
            }
        }
        for (key, addr) in self.other_coordinators() {
            if !active.insert(key) {
                continue;
            }
            let (c, token, identity) = (self.clone(), token.clone(), identity.clone());
            links.spawn(async move {
                if let Err(e) = c.relay_link(key, &addr, token, identity).await {
                    tracing::debug!("relay link to coordinator {addr}: {e}");
                }
                key
            });
        }
    }

    /// One outgoing link to the coordinator `key` at `addr`, until it fails.
    async fn relay_link(
        &self,
        key: PublicKey,
        addr: &str,
        token: JoinToken,
        identity: NodeIdentity,
    ) -> Result<(), Error> {
        let mut client = JoinClient::with_identity(addr.to_owned(), token, identity)?;
        client.set_timeout(LINK_TIMEOUT);
        let (tx, mut rx) = client.upgrade_relay(PEER_RELAY_PROTOCOL).await?.split();
        let hub = &self.shared.relay;
        let id = hub.add_link(key, tx.tx.clone());
        drop(tx);
        tracing::info!("relay link to coordinator {addr} open");
        // The other side sends keepalives only; the link is over when they stop.
        let e = loop {
            if let Err(e) = rx.recv().await {
                break e;
            }
        };
        hub.remove_link(&key, id);
        tracing::info!("relay link to coordinator {addr} closed: {e}");
        Ok(())
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
}
