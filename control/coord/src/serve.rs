//! The coordinator's HTTPS API: request dispatch, the TLS connection driver and the accept
//! loop ([`Coordinator::serve`]). The protocol core (`handle_*`) is in `server.rs` and
//! `register.rs`, the netmap long poll in `poll.rs`; this file is the I/O around them.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::OsRng;
use sha2::{Digest, Sha256};
use tm_noise::PublicKey;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::http::{self, Request};
use crate::poll::{parse_since, parse_vv};
use crate::relay::{
    read_frame, write_loop, LocalRelaySender, RelayRoute, RelayStats, KEEPALIVE_KEY,
    RELAY_IDLE_TIMEOUT, RELAY_PROTOCOL,
};
use crate::server::{json, parse_json};
use crate::wire::{EndpointsUpdate, ErrorBody, RegisterRequest};
use crate::{Coordinator, Error};

impl Coordinator {
    pub(crate) async fn dispatch(
        &self,
        req: Request,
        client: Option<[u8; 32]>,
    ) -> Result<Vec<u8>, Error> {
        let path = req.path.as_str();
        #[cfg(test)]
        crate::contain::maybe_panic(path);
        match (req.method.as_str(), path) {
            ("GET", "/v1/challenge") => {
                Ok(json(&self.handle_challenge(Instant::now(), &mut OsRng)?))
            }
            ("POST", "/v1/register") => {
                let r: RegisterRequest = parse_json(&req.body)?;
                Ok(json(&self.handle_register(
                    Instant::now(),
                    r,
                    &mut OsRng,
                )?))
            }
            ("GET", "/v1/netmap") => {
                let name = self.caller(client.as_ref())?;
                let since = parse_since(&req.query)?;
                let base = req.query.split('&').find_map(|kv| kv.strip_prefix("base="));
                let held = parse_vv(&req.query)?;
                self.netmap_wait(&name, since, base, held.as_ref()).await
            }
            ("POST", "/v1/endpoints") => {
                let name = self.caller(client.as_ref())?;
                let u: EndpointsUpdate = parse_json(&req.body)?;
                Ok(json(&self.handle_endpoints(&name, u.endpoints)?))
            }
            ("POST", "/v1/services") => {
                let name = self.caller(client.as_ref())?;
                let u: crate::wire::ServicesUpdate = parse_json(&req.body)?;
                self.set_services(&name, u.services)?;
                Ok(b"{}".to_vec())
            }
            ("POST", "/v1/cluster") => {
                let name = self.caller(client.as_ref())?;
                let key = self.cluster_peer(&name)?;
                let msg: tm_cluster::Msg = parse_json(&req.body)?;
                self.shared
                    .relay
                    .cluster_posts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let me = self.clone();
                // The merge persists (fsync): off the async workers.
                let answers = tokio::task::spawn_blocking(move || me.handle_cluster(&key, msg))
                    .await
                    .map_err(|_| Error::Internal)??;
                Ok(json(&answers))
            }
            ("POST", "/v1/admin") => {
                let name = self.caller(client.as_ref())?;
                self.handle_admin(&name, req.body).await
            }
            ("DELETE", "/v1/nodes/self") => {
                let name = self.caller(client.as_ref())?;
                self.remove_node(&name)?;
                Ok(b"{}".to_vec())
            }
            (
                _,
                "/v1/challenge" | "/v1/register" | "/v1/netmap" | "/v1/endpoints" | "/v1/services"
                | "/v1/nodes/self" | "/v1/relay" | "/v1/admin",
            ) => Err(Error::MethodNotAllowed),
            _ => Err(Error::NotFound(path.to_owned())),
        }
    }

    async fn connection(
        &self,
        acceptor: TlsAcceptor,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        closed: tokio::sync::watch::Receiver<bool>,
    ) {
        let head = async {
            let mut tls = acceptor
                .accept(tcp)
                .await
                .map_err(|e| Error::Tls(format!("handshake: {e}")))?;
            let fp: Option<[u8; 32]> = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Sha256::digest(c.as_ref()).into());
            let req = http::read_request(&mut tls).await;
            Ok::<_, Error>((tls, fp, req))
        };
        let (mut tls, fp, req) =
            match tokio::time::timeout(self.shared.cfg.request_timeout, head).await {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "connection failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "request timed out");
                    return;
                }
            };
        let result = match req {
            Ok(req)
                if req.method == "GET"
                    && req.path == "/v1/relay"
                    && crate::link::is_link_upgrade(&req) =>
            {
                match self.link_accept(fp.as_ref()) {
                    Ok((name, key)) => {
                        self.link_session(tls, req.extra, name, key, peer, closed)
                            .await;
                        return;
                    }
                    Err(e) => Err(e),
                }
            }
            Ok(req) if req.method == "GET" && req.path == "/v1/relay" => {
                match self.relay_accept(&req, fp.as_ref()) {
                    Ok((name, key)) => {
                        self.relay_session(tls, req.extra, name, key, peer).await;
                        return;
                    }
                    Err(e) => Err(e),
                }
            }
            Ok(req)
                if req.path == "/v1/challenge"
                    && !self.shared.limiter.allow(peer.ip(), Instant::now()) =>
            {
                Err(Error::RateLimited)
            }
            Ok(req) => {
                let kind = format!("{} {}", req.method, req.path);
                crate::contain::contained(kind, self.dispatch(req, fp))
                    .await
                    .unwrap_or(Err(Error::Internal))
            }
            Err(e) => Err(e),
        };
        let (status, body) = match result {
            Ok(b) => (200, b),
            Err(e) => {
                let status = e.http_status();
                if status >= 500 && !matches!(e, Error::Lagging(_)) {
                    tracing::warn!(%peer, "request failed: {e}");
                } else {
                    tracing::debug!(%peer, "request refused: {e}");
                }
                (
                    status,
                    json(&ErrorBody {
                        error: e.to_string(),
                    }),
                )
            }
        };
        if let Err(e) = http::write_response(&mut tls, status, &body).await {
            tracing::debug!(%peer, "write failed: {e}");
        }
    }

    /// Checks a relay upgrade request: the caller's identity (client certificate only) and
    /// the upgrade headers. Returns the caller's name and key.
    pub(crate) fn relay_accept(
        &self,
        req: &Request,
        client: Option<&[u8; 32]>,
    ) -> Result<(String, PublicKey), Error> {
        let (name, key) = self.cert_identity(client)?;
        if !req.has_token("connection", "upgrade") || !req.has_token("upgrade", RELAY_PROTOCOL) {
            return Err(Error::Malformed(format!(
                "/v1/relay needs Connection: Upgrade and Upgrade: {RELAY_PROTOCOL}"
            )));
        }
        Ok((name, key))
    }

    /// Runs one upgraded relay connection until it fails, idles out, is replaced by a newer
    /// connection of the same node, or the node is removed.
    async fn relay_session(
        &self,
        mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        extra: Vec<u8>,
        name: String,
        key: PublicKey,
        peer: SocketAddr,
    ) {
        let _ = tls.get_ref().0.set_nodelay(true);
        // Register before answering 101, so frames to this node sent once it is connected
        // are never dropped as offline.
        let hub = &self.shared.relay;
        let mut reg = hub.register(key, self.shared.cfg.relay_queue);
        // The node may have been removed between the identity check and registering.
        if !self.is_member(&key) {
            hub.unregister(&key, reg.id);
            let body = json(&ErrorBody {
                error: Error::UnknownClient.to_string(),
            });
            let _ = http::write_response(&mut tls, 401, &body).await;
            return;
        }
        if let Err(e) = http::write_switching(&mut tls, RELAY_PROTOCOL).await {
            tracing::debug!(%peer, %name, "relay upgrade failed: {e}");
            hub.unregister(&key, reg.id);
            return;
        }
        tracing::info!(%peer, %name, "relay connection open");
        let (rd, mut wr) = tokio::io::split(tls);
        let mut rd = tokio::io::BufReader::new(std::io::Cursor::new(extra).chain(rd));
        let keepalive = self.shared.cfg.relay_keepalive;
        let reader = async {
            loop {
                let f = tokio::time::timeout(RELAY_IDLE_TIMEOUT, read_frame(&mut rd)).await;
                let (dst, payload) = match f {
                    Err(_) => return "idle timeout".to_owned(),
                    Ok(Ok(None)) => return "closed by the node".to_owned(),
                    Ok(Ok(Some(f))) => f,
                    Ok(Err(e @ (Error::RelayFrameTooLarge(_) | Error::RelayProtocol(_)))) => {
                        hub.count_protocol_error();
                        tracing::warn!(
                            %peer, %name,
                            "closing relay connection: {e}"
                        );
                        return e.to_string();
                    }
                    Ok(Err(e)) => return e.to_string(),
                };
                if dst == KEEPALIVE_KEY && payload.is_empty() {
                    continue;
                }
                hub.route(key, &dst, payload, |k| self.is_member(k));
            }
        };
        let writer = write_loop(&mut wr, &mut reg.rx, keepalive);
        let why = tokio::select! {
            why = reader => why,
            r = writer => match r {
                Ok(()) => "replaced or removed".to_owned(),
                Err(e) => e.to_string(),
            },
            _ = &mut reg.closed => "replaced or removed".to_owned(),
        };
        hub.unregister(&key, reg.id);
        tracing::info!(%peer, %name, "relay connection closed: {why}");
    }

    /// The coordinator node's own relay endpoint: the sender relays frames with this
    /// node's key as their source; the receiver yields `(source key, payload)` of frames
    /// sent to this node. Calling it again replaces (and closes) the previous endpoint.
    pub fn local_relay(&self) -> (LocalRelaySender, mpsc::Receiver<(PublicKey, Vec<u8>)>) {
        let reg = self
            .shared
            .relay
            .register(self.public_key(), self.shared.cfg.relay_queue);
        // The local endpoint has no session to end: the close signal is unused.
        drop(reg.closed);
        (
            LocalRelaySender {
                coord: self.clone(),
            },
            reg.rx,
        )
    }

    pub(crate) fn relay_from_local(&self, dst: &PublicKey, payload: Vec<u8>) -> RelayRoute {
        self.shared
            .relay
            .route(self.public_key(), dst, payload, |k| self.is_member(k))
    }

    /// Relay counters.
    pub fn relay_stats(&self) -> RelayStats {
        self.shared.relay.stats()
    }

    /// Whether the node with `key` has a live relay connection (or, for the coordinator's
    /// key, a local endpoint).
    pub fn relay_connected(&self, key: &PublicKey) -> bool {
        self.shared.relay.is_connected(key)
    }

    /// Serves the HTTPS API on `listener` until `shutdown` completes. Each connection runs in
    /// its own task (requests in flight, such as long polls, finish on their own).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let acceptor = TlsAcceptor::from(self.shared.tls.clone());
        tokio::pin!(shutdown);
        // Links from other coordinators accepted here end with the listener (requests in
        // flight finish on their own).
        let (closing, closed) = tokio::sync::watch::channel(false);
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    let _ = closing.send(true);
                    return Ok(());
                }
                r = listener.accept() => match r {
                    Ok((tcp, peer)) => {
                        let me = self.clone();
                        let acc = acceptor.clone();
                        let closed = closed.clone();
                        tokio::spawn(async move { me.connection(acc, tcp, peer, closed).await });
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }
}
