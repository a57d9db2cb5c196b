//! The relay: WireGuard ciphertext between nodes that cannot reach each other over UDP,
//! carried over the coordinator's TLS port (`GET /v1/relay`, `Upgrade: tm-relay/1`).
//!
//! After `101 Switching Protocols` the TLS stream carries frames both ways:
//! `u16 BE length of (key + payload) | 32-byte public key | payload`. From a node the key
//! is the destination; from the coordinator it is the source, set by the server from the
//! sender's verified client certificate (never from the frame). A zero key with an empty
//! payload is a keepalive. Payloads are at most [`MAX_RELAY_PAYLOAD`] bytes; a larger frame
//! closes the connection. The relay never decrypts anything: payloads are opaque.
//!
//! This module holds the frame codec, the server's routing table (`RelayHub`) and the
//! client's connection ([`RelayConn`], from [`crate::JoinClient::relay`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tm_noise::PublicKey;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// The `Upgrade:` protocol token.
pub const RELAY_PROTOCOL: &str = "tm-relay/1";
/// Largest payload in one frame (a WireGuard datagram for a 1420-byte MTU fits easily).
pub const MAX_RELAY_PAYLOAD: usize = 2048;
/// Bytes of a public key in a frame.
pub(crate) const KEY_LEN: usize = 32;
/// Default interval of keepalive frames on an idle connection (both directions).
pub const RELAY_KEEPALIVE: Duration = Duration::from_secs(20);
/// A relay connection on which nothing (not even a keepalive) arrived for this long is
/// closed, by either side.
pub const RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default bound of each per-connection queue, in frames.
pub const RELAY_QUEUE: usize = 256;
/// Most bytes of frames written in one go.
const WRITE_BATCH: usize = 64 * 1024;

/// The all-zero key of keepalive frames.
pub const KEEPALIVE_KEY: PublicKey = PublicKey([0u8; 32]);

/// Appends one frame to `out`. The caller has checked `payload.len() <= MAX_RELAY_PAYLOAD`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, key: &PublicKey, payload: &[u8]) {
    let len = u16::try_from(KEY_LEN + payload.len()).expect("payload length checked by caller");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&key.0);
    out.extend_from_slice(payload);
}

/// One frame as encoded bytes (`None` if the payload exceeds [`MAX_RELAY_PAYLOAD`]).
pub fn frame_bytes(key: &PublicKey, payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() > MAX_RELAY_PAYLOAD {
        return None;
    }
    let mut v = Vec::with_capacity(2 + KEY_LEN + payload.len());
    encode_frame(&mut v, key, payload);
    Some(v)
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<(PublicKey, Vec<u8>)>, Error> {
    read_frame_max(r, MAX_RELAY_PAYLOAD).await
}

/// Reads one frame whose payload may be up to `max` bytes.
pub(crate) async fn read_frame_max<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<(PublicKey, Vec<u8>)>, Error> {
    let mut len = [0u8; 2];
    // Only an end before the first byte is clean; one byte of a length and then the end is
    // a truncated frame.
    match r.read_exact(&mut len[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::io("read relay frame", e)),
    }
    r.read_exact(&mut len[1..])
        .await
        .map_err(|e| Error::io("read relay frame", e))?;
    let len = usize::from(u16::from_be_bytes(len));
    if len < KEY_LEN {
        return Err(Error::RelayProtocol(format!(
            "frame length {len} is shorter than a key"
        )));
    }
    if len - KEY_LEN > max {
        return Err(Error::RelayFrameTooLarge(len - KEY_LEN));
    }
    let mut key = [0u8; KEY_LEN];
    r.read_exact(&mut key)
        .await
        .map_err(|e| Error::io("read relay frame", e))?;
    let mut payload = vec![0u8; len - KEY_LEN];
    r.read_exact(&mut payload)
        .await
        .map_err(|e| Error::io("read relay frame", e))?;
    Ok(Some((PublicKey(key), payload)))
}

/// Writes queued frames (`(key, payload)`, already length-checked) and keepalives when
/// idle for `keepalive`, until the queue closes or a write fails.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    w: &mut W,
    rx: &mut mpsc::Receiver<(PublicKey, Vec<u8>)>,
    keepalive: Duration,
) -> Result<(), Error> {
    let mut out = Vec::with_capacity(WRITE_BATCH);
    loop {
        match tokio::time::timeout(keepalive, rx.recv()).await {
            Err(_) => encode_frame(&mut out, &KEEPALIVE_KEY, &[]),
            Ok(None) => return Ok(()),
            Ok(Some((k, p))) => {
                encode_frame(&mut out, &k, &p);
                while out.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok((k, p)) => encode_frame(&mut out, &k, &p),
                        Err(_) => break,
                    }
                }
            }
        }
        w.write_all(&out)
            .await
            .map_err(|e| Error::io("write relay frames", e))?;
        w.flush()
            .await
            .map_err(|e| Error::io("write relay frames", e))?;
        out.clear();
    }
}

/// What happened to one relayed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRoute {
    /// Queued on the destination's connection.
    Delivered,
    /// The destination is not a registered node (counted).
    UnknownDestination,
    /// The destination is registered but has no live relay connection (counted).
    Offline,
    /// The destination's queue is full (counted).
    QueueFull,
    /// The destination is not connected here; the frame went to the other coordinators
    /// (the one it was last heard through, or all of them) (counted).
    Forwarded,
    /// The payload exceeds [`MAX_RELAY_PAYLOAD`] (not sent).
    TooLarge,
}

/// Relay counters of a coordinator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Live relay connections (the coordinator's local endpoint included).
    pub connections: usize,
    /// Frames forwarded.
    pub frames: u64,
    /// Payload bytes forwarded.
    pub bytes: u64,
    /// Frames dropped: destination is not a registered node.
    pub dropped_unknown: u64,
    /// Frames dropped: destination registered but not connected.
    pub dropped_offline: u64,
    /// Frames dropped: destination queue full.
    pub dropped_full: u64,
    /// Connections closed for an oversized or malformed frame.
    pub protocol_errors: u64,
    /// Frames for nodes connected to another coordinator, sent on to it.
    pub forwarded: u64,
    /// Frames received from other coordinators for nodes connected here.
    pub from_peers: u64,
    /// Live links to other coordinators that frames can be forwarded on.
    pub peer_links: usize,
    /// Replication messages received on links.
    pub cluster_on_links: u64,
    /// Replication messages received as `POST /v1/cluster` (without a link).
    pub cluster_posts: u64,
}

struct Slot {
    id: u64,
    tx: mpsc::Sender<(PublicKey, Vec<u8>)>,
    /// Dropping it (slot removed or replaced) ends the connection's session.
    _close: oneshot::Sender<()>,
}

/// The coordinator's relay routing table: one live connection per node key.
pub(crate) struct RelayHub {
    slots: Mutex<HashMap<PublicKey, Slot>>,
    /// Links to the other coordinators, by their key: frames `(destination, source key ||
    /// payload)` (see [`crate::relay_peer`]).
    pub(crate) peers: Mutex<HashMap<PublicKey, PeerLink>>,
    /// Which coordinator a node was last heard through, and when (learned from the frames
    /// other coordinators forward here, as a learning bridge does).
    learned: Mutex<HashMap<PublicKey, (PublicKey, Instant)>>,
    forwarded: AtomicU64,
    from_peers: AtomicU64,
    pub(crate) cluster_on_links: AtomicU64,
    pub(crate) cluster_posts: AtomicU64,
    next_id: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    dropped_unknown: AtomicU64,
    dropped_offline: AtomicU64,
    dropped_full: AtomicU64,
    protocol_errors: AtomicU64,
    /// Where object replication frames from the links go (`objrep`), once it runs.
    pub(crate) objrep: std::sync::OnceLock<mpsc::Sender<(PublicKey, Vec<u8>)>>,
}

/// An outgoing link to another coordinator.
pub(crate) struct PeerLink {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<(PublicKey, Vec<u8>)>,
}

/// How long a node stays known to be behind another coordinator after a frame from it
/// arrived through that coordinator; afterwards frames to it go to every coordinator again.
const LEARNED_TTL: Duration = Duration::from_secs(30);
/// Most nodes remembered as behind other coordinators (stale entries are dropped first).
const MAX_LEARNED: usize = 1 << 16;

/// A registered slot: its id (to unregister only itself), its queue and close signal.
pub(crate) struct Registered {
    pub id: u64,
    pub rx: mpsc::Receiver<(PublicKey, Vec<u8>)>,
    pub closed: oneshot::Receiver<()>,
}

impl RelayHub {
    pub(crate) fn new() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            learned: Mutex::new(HashMap::new()),
            forwarded: AtomicU64::new(0),
            from_peers: AtomicU64::new(0),
            cluster_on_links: AtomicU64::new(0),
            cluster_posts: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            dropped_unknown: AtomicU64::new(0),
            dropped_offline: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            objrep: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PublicKey, Slot>> {
        self.slots.lock().expect("relay hub lock poisoned")
    }

    /// Registers `key`'s connection, replacing (and so closing) an older one.
    pub(crate) fn register(&self, key: PublicKey, queue: usize) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(queue.max(1));
        let (close_tx, closed) = oneshot::channel();
        let old = self.lock().insert(
            key,
            Slot {
                id,
                tx,
                _close: close_tx,
            },
        );
        if old.is_some() {
            tracing::info!(key = %key, "relay connection replaced by a new one");
        }
        Registered { id, rx, closed }
    }

    /// Removes `key`'s slot if it is still the one registered with `id`.
    pub(crate) fn unregister(&self, key: &PublicKey, id: u64) {
        let mut g = self.lock();
        if g.get(key).is_some_and(|s| s.id == id) {
            g.remove(key);
        }
    }

    /// Closes `key`'s connection, if any. Returns whether there was one.
    pub(crate) fn close(&self, key: &PublicKey) -> bool {
        self.lock().remove(key).is_some()
    }

    /// Routes one frame from `src` to `dst`; `registered` tells whether a key without a
    /// connection belongs to a registered node (only asked on that path). A registered node
    /// that is not connected here may be connected to another coordinator: the frame is
    /// forwarded there.
    pub(crate) fn route(
        &self,
        src: PublicKey,
        dst: &PublicKey,
        payload: Vec<u8>,
        registered: impl FnOnce(&PublicKey) -> bool,
    ) -> RelayRoute {
        self.route_inner(src, dst, payload, registered, true)
    }

    /// Routes one frame that another coordinator forwarded: delivered only to a node connected
    /// here, never forwarded again (so frames cannot loop between coordinators).
    pub(crate) fn route_from_peer(
        &self,
        via: PublicKey,
        src: PublicKey,
        dst: &PublicKey,
        payload: Vec<u8>,
        registered: impl FnOnce(&PublicKey) -> bool,
    ) -> RelayRoute {
        self.from_peers.fetch_add(1, Ordering::Relaxed);
        self.learn(src, via);
        self.route_inner(src, dst, payload, registered, false)
    }

    fn route_inner(
        &self,
        src: PublicKey,
        dst: &PublicKey,
        payload: Vec<u8>,
        registered: impl FnOnce(&PublicKey) -> bool,
        may_forward: bool,
    ) -> RelayRoute {
        if payload.len() > MAX_RELAY_PAYLOAD {
            return RelayRoute::TooLarge;
        }
        let n = payload.len() as u64;
        let local = {
            let g = self.lock();
            match g.get(dst) {
                Some(s) => Ok(match s.tx.try_send((src, payload)) {
                    Ok(()) => RelayRoute::Delivered,
                    Err(mpsc::error::TrySendError::Full(_)) => RelayRoute::QueueFull,
                    Err(mpsc::error::TrySendError::Closed(_)) => RelayRoute::Offline,
                }),
                None => Err(payload),
            }
        };
        let r = match local {
            Ok(r) => r,
            Err(_) if !registered(dst) => RelayRoute::UnknownDestination,
            Err(payload) if may_forward => self.forward(src, dst, &payload),
            Err(_) => RelayRoute::Offline,
        };
        let c = match r {
            RelayRoute::Delivered => {
                self.bytes.fetch_add(n, Ordering::Relaxed);
                &self.frames
            }
            RelayRoute::Forwarded => &self.forwarded,
            RelayRoute::UnknownDestination => &self.dropped_unknown,
            RelayRoute::Offline => &self.dropped_offline,
            RelayRoute::QueueFull => &self.dropped_full,
            RelayRoute::TooLarge => return r,
        };
        c.fetch_add(1, Ordering::Relaxed);
        r
    }

    /// Sends a frame for a node not connected here to the coordinator it was last heard
    /// through, else to every linked coordinator (the one it is connected to delivers it).
    fn forward(&self, src: PublicKey, dst: &PublicKey, payload: &[u8]) -> RelayRoute {
        let links = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if links.is_empty() {
            return RelayRoute::Offline;
        }
        let mut data = Vec::with_capacity(KEY_LEN + payload.len());
        data.extend_from_slice(&src.0);
        data.extend_from_slice(payload);
        let via = self
            .learned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dst)
            .filter(|(_, at)| at.elapsed() < LEARNED_TTL)
            .map(|(k, _)| *k);
        if let Some(link) = via.and_then(|k| links.get(&k)) {
            match link.tx.try_send((*dst, data.clone())) {
                Ok(()) => return RelayRoute::Forwarded,
                Err(mpsc::error::TrySendError::Full(_)) => return RelayRoute::QueueFull,
                // The link is going away: ask every coordinator instead.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        let mut sent = false;
        for link in links.values() {
            sent |= link.tx.try_send((*dst, data.clone())).is_ok();
        }
        if sent {
            RelayRoute::Forwarded
        } else {
            RelayRoute::Offline
        }
    }

    /// Remembers that `node` was heard through coordinator `via`.
    fn learn(&self, node: PublicKey, via: PublicKey) {
        let mut g = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if g.len() >= MAX_LEARNED && !g.contains_key(&node) {
            g.retain(|_, (_, at)| now.duration_since(*at) < LEARNED_TTL);
            if g.len() >= MAX_LEARNED {
                return;
            }
        }
        g.insert(node, (via, now));
    }

    pub(crate) fn count_protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn is_connected(&self, key: &PublicKey) -> bool {
        self.lock().contains_key(key)
    }

    pub(crate) fn stats(&self) -> RelayStats {
        RelayStats {
            connections: self.lock().len(),
            frames: self.frames.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped_unknown: self.dropped_unknown.load(Ordering::Relaxed),
            dropped_offline: self.dropped_offline.load(Ordering::Relaxed),
            dropped_full: self.dropped_full.load(Ordering::Relaxed),
            protocol_errors: self.protocol_errors.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            from_peers: self.from_peers.load(Ordering::Relaxed),
            peer_links: self.peers.lock().unwrap_or_else(|p| p.into_inner()).len(),
            cluster_on_links: self.cluster_on_links.load(Ordering::Relaxed),
            cluster_posts: self.cluster_posts.load(Ordering::Relaxed),
        }
    }
}

/// The coordinator node's own relay endpoint (from
/// [`crate::Coordinator::local_relay`]): frames sent here have the coordinator's key as
/// their source. Cheap to clone.
#[derive(Clone)]
pub struct LocalRelaySender {
    pub(crate) coord: crate::Coordinator,
}

impl core::fmt::Debug for LocalRelaySender {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LocalRelaySender").finish_non_exhaustive()
    }
}

impl LocalRelaySender {
    /// Relays `payload` to the node `dst` (never blocks; drops are counted by the hub).
    pub fn send(&self, dst: &PublicKey, payload: Vec<u8>) -> RelayRoute {
        self.coord.relay_from_local(dst, payload)
    }
}

/// A node's relay connection to the coordinator (from [`crate::JoinClient::relay`]).
/// Use it whole, or [`RelayConn::split`] it to send and receive from two tasks.
#[derive(Debug)]
pub struct RelayConn {
    sender: RelaySender,
    receiver: RelayReceiver,
}

/// The sending half: cheap to clone. Frames go through a bounded queue to a writer task
/// that also sends keepalives when idle; the connection closes when every sender and the
/// receiver are dropped, or the server closes it.
#[derive(Debug, Clone)]
pub struct RelaySender {
    pub(crate) tx: mpsc::Sender<(PublicKey, Vec<u8>)>,
}

/// The receiving half.
pub struct RelayReceiver {
    rd: Box<dyn AsyncRead + Send + Unpin>,
    idle: Duration,
    keepalives: u64,
}

impl core::fmt::Debug for RelayReceiver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RelayReceiver")
            .field("keepalives", &self.keepalives)
            .finish_non_exhaustive()
    }
}

impl RelayConn {
    /// Wraps an upgraded stream: spawns the writer task (needs a tokio runtime).
    pub(crate) fn start<S>(stream: S, prefix: Vec<u8>, keepalive: Duration, queue: usize) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel(queue.max(1));
        tokio::spawn(async move {
            if let Err(e) = write_loop(&mut wr, &mut rx, keepalive).await {
                tracing::debug!("relay writer stopped: {e}");
            }
            let _ = wr.shutdown().await;
        });
        let rd = tokio::io::BufReader::new(std::io::Cursor::new(prefix).chain(rd));
        Self {
            sender: RelaySender { tx },
            receiver: RelayReceiver {
                rd: Box::new(rd),
                idle: RELAY_IDLE_TIMEOUT,
                keepalives: 0,
            },
        }
    }

    /// Splits into halves usable from two tasks.
    pub fn split(self) -> (RelaySender, RelayReceiver) {
        (self.sender, self.receiver)
    }

    /// A clone of the sending half.
    pub fn sender(&self) -> RelaySender {
        self.sender.clone()
    }

    /// See [`RelaySender::send`].
    pub async fn send(&self, dst: &PublicKey, payload: &[u8]) -> Result<(), Error> {
        self.sender.send(dst, payload).await
    }

    /// See [`RelayReceiver::recv`].
    pub async fn recv(&mut self) -> Result<(PublicKey, Vec<u8>), Error> {
        self.receiver.recv().await
    }
}

impl RelaySender {
    fn check(payload: &[u8]) -> Result<(), Error> {
        if payload.len() > MAX_RELAY_PAYLOAD {
            return Err(Error::RelayFrameTooLarge(payload.len()));
        }
        Ok(())
    }

    /// Queues a frame to `dst`, waiting for room in the queue. Fails if the payload is
    /// larger than [`MAX_RELAY_PAYLOAD`] or the connection is closed.
    pub async fn send(&self, dst: &PublicKey, payload: &[u8]) -> Result<(), Error> {
        Self::check(payload)?;
        self.tx
            .send((*dst, payload.to_vec()))
            .await
            .map_err(|_| Error::RelayClosed)
    }

    /// Queues a frame to `dst` without waiting: `Ok(false)` if the queue is full (the frame
    /// is dropped, as UDP would).
    pub fn try_send(&self, dst: &PublicKey, payload: &[u8]) -> Result<bool, Error> {
        Self::check(payload)?;
        match self.tx.try_send((*dst, payload.to_vec())) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::RelayClosed),
        }
    }

    /// Low-level, for protocol tests: queues a frame WITHOUT the payload size check (an
    /// oversized one is truncated to the u16 length field's range and makes the server
    /// close the connection).
    pub async fn send_unchecked(&self, dst: &PublicKey, payload: &[u8]) -> Result<(), Error> {
        let max = usize::from(u16::MAX) - KEY_LEN;
        let p = &payload[..payload.len().min(max)];
        self.tx
            .send((*dst, p.to_vec()))
            .await
            .map_err(|_| Error::RelayClosed)
    }

    /// Whether the writer task has stopped (connection closed or failed).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl RelayReceiver {
    /// The next frame `(source key, payload)`; keepalives are skipped. Fails when the
    /// connection closes, a frame is malformed, or nothing arrives for
    /// [`RELAY_IDLE_TIMEOUT`].
    pub async fn recv(&mut self) -> Result<(PublicKey, Vec<u8>), Error> {
        loop {
            let f = tokio::time::timeout(self.idle, read_frame(&mut self.rd))
                .await
                .map_err(|_| Error::Timeout("relay connection idle"))??;
            match f {
                None => return Err(Error::RelayClosed),
                Some((k, p)) if k == KEEPALIVE_KEY && p.is_empty() => self.keepalives += 1,
                Some(f) => return Ok(f),
            }
        }
    }

    /// Keepalive frames received so far.
    pub fn keepalives(&self) -> u64 {
        self.keepalives
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `relay_frames` fuzz target: a stream that ended one byte into a frame's
    /// length was reported as a clean end between frames.
    #[tokio::test]
    async fn one_byte_of_a_length_is_a_truncated_frame() {
        let key = PublicKey([7; 32]);
        let mut bytes = frame_bytes(&key, b"abc").expect("small payload");
        bytes.push(0);
        let mut r = &bytes[..];
        let (k, payload) = read_frame(&mut r)
            .await
            .expect("first frame")
            .expect("a frame");
        assert_eq!((k, payload.as_slice()), (key, &b"abc"[..]));
        let e = read_frame(&mut r).await.expect_err("truncated length");
        assert!(e.to_string().contains("read relay frame"), "{e}");
        // An end exactly between frames is clean.
        let mut r = &bytes[..bytes.len() - 1];
        assert!(read_frame(&mut r).await.expect("frame").is_some());
        assert!(read_frame(&mut r).await.expect("clean end").is_none());
    }
}
