//! Relay bridge: WireGuard ciphertext for peers that cannot be reached over UDP goes
//! through the coordinator's TLS relay (`tm_coord::relay`), and the dataplane never knows.
//!
//! Every relayed peer gets its own loopback UDP socket (`127.0.0.1:0`). The node tells the
//! dataplane that this peer's endpoint is that loopback address, so whatever the dataplane
//! sends there is ciphertext for that peer: the bridge wraps it in a relay frame addressed
//! to the peer's key. A frame from the relay with source key K is sent from K's loopback
//! socket to `127.0.0.1:<dataplane port>`, so the dataplane sees K's packets arrive from
//! K's loopback address (roaming stays consistent; an unknown K gets a socket on demand,
//! so a peer that relays first is answered through the relay).
//!
//! What it never does: decrypt or parse WireGuard (payloads are opaque), accept datagrams
//! on a loopback socket from anything but the dataplane's port, or buffer without bound
//! (a full relay queue or a lost connection drops the datagram and counts it, as UDP would).
//!
//! Call order: [`RelayBridge::spawn`] (a member, with its link to the coordinators) or
//! [`RelayBridge::spawn_local`] (the coordinator node) -> [`RelayBridge::endpoint_for`]
//! for each peer that should go through the relay (give the returned address to the
//! dataplane as the peer's endpoint) -> [`RelayBridge::is_relay_addr`] to tell relayed
//! endpoints apart (e.g. `path: relay` in `tmctl peers`, and never report them to
//! `Coordinator::observe_endpoint`) -> [`RelayBridge::remove`] when the peer goes direct
//! again or leaves. The TLS variant reconnects by itself (jittered backoff, at most 10 s).
//! Dropping the bridge stops its tasks and closes its sockets.
// The node loop wires the bridge in; until then parts of it are unused in the binary.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use tm_coord::{
    Coordinator, LocalRelaySender, RelayConn, RelayRoute, RelaySender, MAX_RELAY_PAYLOAD,
};
use tm_noise::PublicKey;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Most relayed peers (loopback sockets) at once; frames from further keys are dropped.
pub const MAX_RELAY_PEERS: usize = 4096;
/// First reconnect delay; doubles per failed attempt up to [`RECONNECT_MAX`].
const RECONNECT_BASE: Duration = Duration::from_millis(250);
/// Longest reconnect delay.
pub const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);

/// Bridge counters (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Datagrams from the dataplane sent on the relay.
    pub to_relay_frames: u64,
    /// Their bytes.
    pub to_relay_bytes: u64,
    /// Frames from the relay handed to the dataplane.
    pub from_relay_frames: u64,
    /// Their bytes.
    pub from_relay_bytes: u64,
    /// Datagrams dropped because the relay was not connected.
    pub dropped_disconnected: u64,
    /// Datagrams dropped because the relay queue was full (or the coordinator dropped them:
    /// local variant).
    pub dropped_full: u64,
    /// Datagrams dropped for anything else: not from the dataplane's port, larger than a
    /// relay frame, too many peers, or a failed loopback send.
    pub dropped_other: u64,
    /// Successful relay connections (1 + reconnects; the local variant counts 1).
    pub connects: u64,
}

#[derive(Default)]
struct Counters {
    to_relay_frames: AtomicU64,
    to_relay_bytes: AtomicU64,
    from_relay_frames: AtomicU64,
    from_relay_bytes: AtomicU64,
    dropped_disconnected: AtomicU64,
    dropped_full: AtomicU64,
    dropped_other: AtomicU64,
    connects: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Where outgoing frames go.
enum Outbound {
    Tls(RelaySender),
    Local(LocalRelaySender),
}

struct PeerSock {
    /// A non-blocking clone of the socket for sends (tokio's `try_send_to` reports
    /// `WouldBlock` until the reactor has seen the socket writable).
    send: Arc<std::net::UdpSocket>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Peers {
    by_key: HashMap<PublicKey, PeerSock>,
    by_addr: HashMap<SocketAddr, PublicKey>,
}

struct Inner {
    /// `127.0.0.1:<dataplane listen port>`.
    dp: SocketAddr,
    rt: tokio::runtime::Handle,
    peers: Mutex<Peers>,
    out: Mutex<Option<Outbound>>,
    connected: AtomicBool,
    stats: Counters,
}

impl Inner {
    fn peers(&self) -> std::sync::MutexGuard<'_, Peers> {
        self.peers.lock().expect("relay bridge peers lock poisoned")
    }

    fn set_out(&self, out: Option<Outbound>) {
        self.connected.store(out.is_some(), Ordering::Release);
        *self.out.lock().expect("relay bridge out lock poisoned") = out;
    }

    /// The loopback socket of `peer`, created (with its reader task) if needed.
    fn ensure(
        self: &Arc<Self>,
        peer: PublicKey,
    ) -> io::Result<(Arc<std::net::UdpSocket>, SocketAddr)> {
        let mut g = self.peers();
        if let Some(p) = g.by_key.get(&peer) {
            return Ok((p.send.clone(), p.addr));
        }
        if g.by_key.len() >= MAX_RELAY_PEERS {
            return Err(io::Error::other(format!(
                "more than {MAX_RELAY_PEERS} relayed peers"
            )));
        }
        let std_sock = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        std_sock.set_nonblocking(true)?;
        let addr = std_sock.local_addr()?;
        let send = Arc::new(std_sock.try_clone()?);
        let sock = {
            let _guard = self.rt.enter();
            UdpSocket::from_std(std_sock)?
        };
        let task = self.rt.spawn(peer_reader(self.clone(), peer, sock));
        g.by_key.insert(
            peer,
            PeerSock {
                send: send.clone(),
                addr,
                task,
            },
        );
        g.by_addr.insert(addr, peer);
        tracing::debug!(peer = %peer, %addr, "relay endpoint created");
        Ok((send, addr))
    }

    /// A datagram from the dataplane for `peer`: onto the relay.
    fn to_relay(&self, peer: &PublicKey, payload: &[u8]) {
        let s = &self.stats;
        let g = self.out.lock().expect("relay bridge out lock poisoned");
        let sent = match g.as_ref() {
            None => {
                bump(&s.dropped_disconnected);
                return;
            }
            Some(Outbound::Tls(tx)) => match tx.try_send(peer, payload) {
                Ok(true) => true,
                Ok(false) => {
                    bump(&s.dropped_full);
                    false
                }
                Err(_) => {
                    bump(&s.dropped_disconnected);
                    false
                }
            },
            Some(Outbound::Local(tx)) => match tx.send(peer, payload.to_vec()) {
                RelayRoute::Delivered => true,
                _ => {
                    bump(&s.dropped_full);
                    false
                }
            },
        };
        if sent {
            bump(&s.to_relay_frames);
            s.to_relay_bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
    }

    /// A frame from the relay: to the dataplane, from `src`'s loopback socket.
    fn from_relay(self: &Arc<Self>, src: PublicKey, payload: &[u8]) {
        let s = &self.stats;
        let sock = match self.ensure(src) {
            Ok((send, _)) => send,
            Err(e) => {
                tracing::debug!(peer = %src, "relay frame dropped: {e}");
                bump(&s.dropped_other);
                return;
            }
        };
        match sock.send_to(payload, self.dp) {
            Ok(_) => {
                bump(&s.from_relay_frames);
                s.from_relay_bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(peer = %src, "relay frame not delivered to the dataplane: {e}");
                bump(&s.dropped_other);
            }
        }
    }
}

/// Reads what the dataplane sends to `peer`'s loopback socket.
async fn peer_reader(inner: Arc<Inner>, peer: PublicKey, sock: UdpSocket) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP-induced errors (e.g. the dataplane restarting) are transient.
                tracing::debug!(peer = %peer, "relay endpoint receive error: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let from_dp = from.ip().to_canonical().is_loopback() && from.port() == inner.dp.port();
        if !from_dp || n > MAX_RELAY_PAYLOAD {
            bump(&inner.stats.dropped_other);
            continue;
        }
        inner.to_relay(&peer, &buf[..n]);
    }
}

/// Delay before reconnect attempt `attempt` (1-based): exponential, capped, jittered down
/// to between half and all of it. `r` is a uniform random `u32`.
fn backoff(attempt: u32, r: u32) -> Duration {
    let exp = RECONNECT_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let d = exp.min(RECONNECT_MAX);
    d / 2 + d.mul_f64(f64::from(r) / f64::from(u32::MAX) / 2.0)
}

/// The bridge between the dataplane's loopback endpoints and the relay.
pub struct RelayBridge {
    inner: Arc<Inner>,
    driver: JoinHandle<()>,
}

impl core::fmt::Debug for RelayBridge {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RelayBridge")
            .field("dp", &self.inner.dp)
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

impl RelayBridge {
    fn new_inner(dp_port: u16) -> Arc<Inner> {
        Arc::new(Inner {
            dp: SocketAddr::from((Ipv4Addr::LOCALHOST, dp_port)),
            rt: tokio::runtime::Handle::current(),
            peers: Mutex::new(Peers::default()),
            out: Mutex::new(None),
            connected: AtomicBool::new(false),
            stats: Counters::default(),
        })
    }

    /// A bridge over relay connections made by `connect` (reconnecting with jittered
    /// backoff up to 10 s when one fails or closes). `dp_port` is the dataplane's UDP
    /// listen port. Must be called inside a tokio runtime.
    pub fn spawn_with<F, Fut>(connect: F, dp_port: u16) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<RelayConn, tm_coord::Error>> + Send + 'static,
    {
        let inner = Self::new_inner(dp_port);
        let i = inner.clone();
        let driver = tokio::spawn(async move {
            let mut attempt = 0u32;
            loop {
                match connect().await {
                    Ok(conn) => {
                        let since = Instant::now();
                        let (tx, mut rx) = conn.split();
                        i.set_out(Some(Outbound::Tls(tx)));
                        bump(&i.stats.connects);
                        tracing::info!("relay connected");
                        let why = loop {
                            match rx.recv().await {
                                Ok((src, p)) => i.from_relay(src, &p),
                                Err(e) => break e,
                            }
                        };
                        i.set_out(None);
                        tracing::warn!("relay connection lost: {why}");
                        if since.elapsed() >= STABLE {
                            attempt = 0;
                        }
                    }
                    Err(e) => tracing::warn!("relay connect failed: {e}"),
                }
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(backoff(attempt, OsRng.next_u32())).await;
            }
        });
        Self { inner, driver }
    }

    /// [`RelayBridge::spawn_with`] over `client`'s relay connections (the client must hold
    /// its registered identity).
    pub fn spawn(link: crate::mesh::CoordLink, dp_port: u16) -> Self {
        Self::spawn_with(
            move || {
                let c = link.current();
                async move { c.relay().await }
            },
            dp_port,
        )
    }

    /// The coordinator node's bridge, over [`Coordinator::local_relay`] (always connected;
    /// only one local bridge per coordinator: a second one replaces the first).
    pub fn spawn_local(coord: &Coordinator, dp_port: u16) -> Self {
        let inner = Self::new_inner(dp_port);
        let (tx, mut rx) = coord.local_relay();
        inner.set_out(Some(Outbound::Local(tx)));
        bump(&inner.stats.connects);
        let i = inner.clone();
        let driver = tokio::spawn(async move {
            while let Some((src, p)) = rx.recv().await {
                i.from_relay(src, &p);
            }
            i.set_out(None);
            tracing::warn!("local relay endpoint replaced; this bridge stops");
        });
        Self { inner, driver }
    }

    /// The loopback address to give the dataplane as `peer`'s endpoint (created on first
    /// use, then stable until [`RelayBridge::remove`]).
    pub fn endpoint_for(&self, peer: PublicKey) -> io::Result<SocketAddr> {
        self.inner.ensure(peer).map(|(_, a)| a)
    }

    /// Stops relaying for `peer` and closes its loopback socket. Returns whether it had one.
    pub fn remove(&self, peer: &PublicKey) -> bool {
        let mut g = self.inner.peers();
        match g.by_key.remove(peer) {
            Some(p) => {
                p.task.abort();
                g.by_addr.remove(&p.addr);
                true
            }
            None => false,
        }
    }

    /// The peer whose loopback relay endpoint `addr` is (IPv4-mapped IPv6 accepted, as a
    /// dual-stack dataplane reports it).
    pub fn is_relay_addr(&self, addr: &SocketAddr) -> Option<PublicKey> {
        let a = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        self.inner.peers().by_addr.get(&a).copied()
    }

    /// Peers with a loopback relay endpoint.
    #[cfg(test)]
    pub fn peers(&self) -> Vec<PublicKey> {
        self.inner.peers().by_key.keys().copied().collect()
    }

    /// Whether a relay connection is up right now.
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// Counters.
    pub fn stats(&self) -> BridgeStats {
        let c = &self.inner.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BridgeStats {
            to_relay_frames: l(&c.to_relay_frames),
            to_relay_bytes: l(&c.to_relay_bytes),
            from_relay_frames: l(&c.from_relay_frames),
            from_relay_bytes: l(&c.from_relay_bytes),
            dropped_disconnected: l(&c.dropped_disconnected),
            dropped_full: l(&c.dropped_full),
            dropped_other: l(&c.dropped_other),
            connects: l(&c.connects),
        }
    }
}

impl Drop for RelayBridge {
    fn drop(&mut self) {
        self.driver.abort();
        self.inner.set_out(None);
        let mut g = self.inner.peers();
        for (_, p) in g.by_key.drain() {
            p.task.abort();
        }
        g.by_addr.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tm_coord::{CoordinatorConfig, JoinClient, MemStore};
    use tm_noise::keys::PrivateKey;
    use tokio::net::TcpListener;

    const SOON: Duration = Duration::from_secs(10);

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + SOON;
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut b = [0u8; 4096];
        let (n, from) = tokio::time::timeout(SOON, s.recv_from(&mut b))
            .await
            .expect("datagram in time")
            .expect("recv");
        (b[..n].to_vec(), from)
    }

    async fn coordinator() -> (Coordinator, SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let mut r = [0u8; 8];
        OsRng.fill_bytes(&mut r);
        let dir = std::env::temp_dir().join(format!(
            "tm-relay-bridge-{}-{}",
            std::process::id(),
            u64::from_le_bytes(r)
        ));
        let mut cfg = CoordinatorConfig::new("hub");
        cfg.tls_names = vec!["127.0.0.1".into()];
        let coord = Coordinator::open(
            &dir,
            cfg,
            PrivateKey::generate(&mut OsRng),
            Arc::new(MemStore::new()),
        )
        .expect("open coordinator");
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let c = coord.clone();
        tokio::spawn(async move {
            c.serve(l, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        (coord, addr, tx)
    }

    async fn member(coord: &Coordinator, addr: SocketAddr, name: &str) -> (JoinClient, PublicKey) {
        let k = PrivateKey::generate(&mut OsRng);
        let mut c = JoinClient::new(addr.to_string(), coord.join_token()).expect("client");
        c.register(&k, name, &[]).await.expect("register");
        (c, k.public_key())
    }

    async fn dataplane() -> (UdpSocket, u16) {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind dp");
        let p = s.local_addr().expect("addr").port();
        (s, p)
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        assert_eq!(backoff(1, 0), RECONNECT_BASE / 2);
        assert_eq!(backoff(1, u32::MAX), RECONNECT_BASE);
        assert!(backoff(3, u32::MAX) > backoff(2, u32::MAX));
        for a in [7, 8, 20, 1000, u32::MAX] {
            assert!(backoff(a, u32::MAX) <= RECONNECT_MAX);
            assert!(backoff(a, 0) >= RECONNECT_MAX / 2);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_bridges_carry_datagrams_both_ways_and_reconnect() {
        let (coord, addr, _stop) = coordinator().await;
        let (ca, ka) = member(&coord, addr, "alpha").await;
        let (cb, kb) = member(&coord, addr, "beta").await;
        let (dpa, pa) = dataplane().await;
        let (dpb, pb) = dataplane().await;
        let ba = RelayBridge::spawn(crate::mesh::CoordLink::new(ca.clone(), &[]), pa);
        let bb = RelayBridge::spawn(crate::mesh::CoordLink::new(cb, &[]), pb);
        until("both connected", || ba.connected() && bb.connected()).await;

        // alpha's dataplane sends "ciphertext" to beta's relay endpoint.
        let ea = ba.endpoint_for(kb).expect("endpoint");
        assert_eq!(ba.endpoint_for(kb).expect("again"), ea, "stable");
        assert!(ea.ip().is_loopback());
        assert_eq!(ba.is_relay_addr(&ea), Some(kb));
        dpa.send_to(b"wg-init", ea).await.expect("send");
        // beta's dataplane receives it from a loopback address that stands for alpha.
        let (p, from) = recv(&dpb).await;
        assert_eq!(p, b"wg-init");
        assert_eq!(bb.is_relay_addr(&from), Some(ka));
        let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", from.port())
            .parse()
            .expect("mapped");
        assert_eq!(bb.is_relay_addr(&mapped), Some(ka));
        // The reply goes back the same way and arrives from alpha's endpoint for beta.
        dpb.send_to(b"wg-resp", from).await.expect("send");
        let (p, from_a) = recv(&dpa).await;
        assert_eq!((p.as_slice(), from_a), (&b"wg-resp"[..], ea));

        // Datagrams not from the dataplane's port are ignored.
        let stranger = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        stranger.send_to(b"spoof", ea).await.expect("send");
        until("foreign datagram counted", || ba.stats().dropped_other == 1).await;
        let st = ba.stats();
        assert_eq!((st.to_relay_frames, st.from_relay_frames), (1, 1));
        assert_eq!(st.to_relay_bytes, 7);

        // Another connection for alpha replaces the bridge's; the bridge reconnects.
        let intruder = ca.relay().await.expect("second relay");
        until("alpha reconnected", || {
            ba.stats().connects >= 2 && ba.connected()
        })
        .await;
        drop(intruder);
        until("coordinator sees alpha", || coord.relay_connected(&ka)).await;
        dpa.send_to(b"after", ea).await.expect("send");
        assert_eq!(recv(&dpb).await.0, b"after");

        // Removed endpoints are forgotten and closed.
        assert!(ba.remove(&kb));
        assert!(!ba.remove(&kb));
        assert_eq!(ba.is_relay_addr(&ea), None);
        assert!(ba.peers().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn coordinator_bridge_uses_the_local_endpoint() {
        let (coord, addr, _stop) = coordinator().await;
        let hub = coord.public_key();
        let (ca, ka) = member(&coord, addr, "alpha").await;
        let (dpa, pa) = dataplane().await;
        let (dph, ph) = dataplane().await;
        let ba = RelayBridge::spawn(crate::mesh::CoordLink::new(ca, &[]), pa);
        let bh = RelayBridge::spawn_local(&coord, ph);
        assert!(bh.connected());
        until("alpha connected", || ba.connected()).await;

        let ea = ba.endpoint_for(hub).expect("endpoint");
        dpa.send_to(b"to hub", ea).await.expect("send");
        let (p, from) = recv(&dph).await;
        assert_eq!(p, b"to hub");
        assert_eq!(bh.is_relay_addr(&from), Some(ka));
        dph.send_to(b"from hub", from).await.expect("send");
        assert_eq!(recv(&dpa).await, (b"from hub".to_vec(), ea));
        // Frames to an unregistered key are dropped by the coordinator and counted by the
        // local bridge.
        let nobody = PrivateKey::generate(&mut OsRng).public_key();
        let en = bh.endpoint_for(nobody).expect("endpoint");
        dph.send_to(b"lost", en).await.expect("send");
        until("drop counted", || bh.stats().dropped_full == 1).await;
    }
}
