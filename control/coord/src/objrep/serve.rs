//! The receiving side: reassembles messages from the links, answers requests (each in its
//! own task, at most [`CONCURRENT`] at once) and hands answers to the requests waiting here.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tm_noise::PublicKey;
use tm_storage::replication::local;
use tm_storage::replication::vv::Dot;
use tm_storage::ChunkId;
use tokio::sync::{mpsc, Semaphore};

use super::wire::{self, Req, Resp, WireExported, WireVersion};
use super::ObjectReplication;

/// Requests answered at once (then reading from the links waits: back-pressure).
const CONCURRENT: usize = 16;

impl ObjectReplication {
    /// Receives the object replication frames of every link until the coordinator stops.
    pub(super) async fn receive(self, mut rx: mpsc::Receiver<(PublicKey, Vec<u8>)>) {
        let mut asm = wire::Assembler::default();
        let permits = Arc::new(Semaphore::new(CONCURRENT));
        while let Some((via, payload)) = rx.recv().await {
            let whole = match asm.push(via, &payload) {
                Ok(Some(w)) => w,
                Ok(None) => continue,
                Err(e) => {
                    self.refused(&e);
                    asm.forget(&via);
                    continue;
                }
            };
            let (id, response, bytes) = whole;
            if response {
                let waiting = self
                    .inner
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                if let Some(tx) = waiting {
                    let _ = tx.send(bytes);
                }
                continue;
            }
            self.inner.counters.served.fetch_add(1, Ordering::Relaxed);
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let (resp, raw) = match wire::decode::<Req>(&bytes) {
                    Ok((req, raw)) => me.answer(via, req, raw).await,
                    Err(e) => (Resp::Err { msg: e }, Vec::new()),
                };
                if let Resp::Err { msg } = &resp {
                    me.refused(msg);
                }
                me.send(&via, id, true, &wire::encode(&resp, &raw)).await;
                drop(permit);
            });
        }
    }

    fn refused(&self, why: &str) {
        self.inner.counters.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("object replication: refused: {why}");
    }

    /// The answer to one request from another coordinator (the link authenticated it as one).
    async fn answer(&self, via: PublicKey, req: Req, raw: Vec<u8>) -> (Resp, Vec<u8>) {
        let failed = |msg: String| (Resp::Err { msg }, Vec::new());
        let peer = tm_storage::replication::NodeId(crate::origin_of(&via).0);
        match req {
            Req::Status => match self.blocking(local::figures).await {
                Ok(f) => (
                    Resp::Status {
                        bytes: f.bytes,
                        objects: f.objects,
                        capacity: f.capacity,
                        under_replicated: f.under_replicated,
                    },
                    Vec::new(),
                ),
                Err(e) => failed(e),
            },
            Req::Digests => match self.shared_keys(peer).await {
                Ok(keys) => (
                    Resp::Digests {
                        parts: super::antientropy::digests(&keys),
                    },
                    Vec::new(),
                ),
                Err(e) => failed(e),
            },
            Req::Partition { p } => match self.shared_keys(peer).await {
                Ok(keys) => (
                    Resp::Keys {
                        keys: super::antientropy::listing(&keys, usize::from(p)),
                    },
                    Vec::new(),
                ),
                Err(e) => failed(e),
            },
            Req::Versions { bucket, key } => {
                match self
                    .blocking(move |s| local::versions(s, &bucket, &key))
                    .await
                {
                    Ok(set) => (
                        Resp::Versions {
                            versions: set.iter().map(WireVersion::from).collect(),
                        },
                        Vec::new(),
                    ),
                    Err(e) => failed(e),
                }
            }
            Req::Store { bucket, key, v } => {
                let ex = match v.exported(raw) {
                    Ok(ex) => ex,
                    Err(e) => return failed(e),
                };
                let chunks = ex.chunks.clone();
                match self
                    .blocking(move |s| local::missing_chunks(s, &chunks))
                    .await
                {
                    Ok(m) if !m.is_empty() => {
                        return (
                            Resp::NeedChunks {
                                ids: m.iter().map(ChunkId::to_hex).collect(),
                            },
                            Vec::new(),
                        )
                    }
                    Ok(_) => {}
                    Err(e) => return failed(e),
                }
                self.observe(&ex.version);
                match self
                    .blocking(move |s| local::apply(s, &bucket, &key, ex))
                    .await
                {
                    Ok(_) => (Resp::Stored, Vec::new()),
                    Err(e) => failed(e),
                }
            }
            Req::PutChunk { id } => {
                let Some(cid) = ChunkId::from_hex(&id) else {
                    return failed("a bad chunk id".into());
                };
                match self
                    .blocking(move |s| local::put_chunk(s, &cid, &raw))
                    .await
                {
                    Ok(()) => (Resp::Ok, Vec::new()),
                    Err(e) => failed(e),
                }
            }
            Req::Export {
                bucket,
                key,
                version_id,
            } => {
                let Some(dot) = Dot::parse_version_id(&version_id) else {
                    return failed("a bad version id".into());
                };
                match self
                    .blocking(move |s| local::export(s, &bucket, &key, dot))
                    .await
                {
                    Ok(Some(ex)) => {
                        let (w, raw) = WireExported::of(&ex);
                        (
                            Resp::Exported {
                                v: Some(Box::new(w)),
                            },
                            raw,
                        )
                    }
                    Ok(None) => (Resp::Exported { v: None }, Vec::new()),
                    Err(e) => failed(e),
                }
            }
            Req::GetChunk { id } => {
                let Some(cid) = ChunkId::from_hex(&id) else {
                    return failed("a bad chunk id".into());
                };
                match self.blocking(move |s| local::read_chunk(s, &cid)).await {
                    Ok(b) => (Resp::Chunk, b),
                    Err(e) => failed(e),
                }
            }
        }
    }
}
