//! Object replication messages on the coordinator link, and their framing.
//!
//! A message is `u32 BE length of the JSON header | JSON header | raw bytes` (the raw bytes
//! are a chunk's or an inline chunk's, never base64). It travels in link frames addressed to
//! [`OBJREP_KEY`], each carrying `u64 BE message id | u8 flags | up to PIECE bytes` after the
//! link's 32-byte source field; the last piece has [`LAST`], answers have [`RESPONSE`] and
//! the id of their request. Pieces of one message are in order (one queue per link); the
//! receiver reassembles at most [`MAX_MSG`] bytes per message and [`MAX_PARTIAL`] bytes in all.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tm_noise::PublicKey;
use tm_storage::replication::local::{ChunkEntry, Exported};
use tm_storage::replication::vv::{Dot, Hlc, Version, VersionVector};
use tm_storage::replication::NodeId;
use tm_storage::{ChunkId, ObjectMeta};

use crate::relay::KEY_LEN;

const fn objrep_key() -> [u8; 32] {
    let mut k = [0xFF; 32];
    k[31] = 0xFE;
    k
}

/// Destination of object replication frames on a link.
pub(crate) const OBJREP_KEY: PublicKey = PublicKey(objrep_key());
/// Largest message (a 1 MiB chunk with its header, with room to spare).
pub(crate) const MAX_MSG: usize = 4 << 20;
/// Bytes of a message reassembled at once from one receiver's links.
pub(crate) const MAX_PARTIAL: usize = 32 << 20;
/// Message bytes per frame (a frame holds at most 65,503 bytes after its destination).
pub(crate) const PIECE: usize = 60 * 1024;
/// Flag: the last piece of a message.
pub(crate) const LAST: u8 = 1;
/// Flag: an answer.
pub(crate) const RESPONSE: u8 = 2;
const HDR: usize = 9;

/// A version's replication identity on the wire.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct WireVersion {
    node: u64,
    counter: u64,
    vv: Vec<(u64, u64)>,
    wall_ms: u64,
    logical: u32,
    deleted: bool,
}

impl From<&Version> for WireVersion {
    fn from(v: &Version) -> Self {
        WireVersion {
            node: v.dot.node.0,
            counter: v.dot.counter,
            vv: v.vv.entries().map(|(n, c)| (n.0, c)).collect(),
            wall_ms: v.clock.wall_ms,
            logical: v.clock.logical,
            deleted: v.deleted,
        }
    }
}

impl WireVersion {
    pub(crate) fn version(&self) -> Result<Version, String> {
        if self.counter == 0 {
            return Err("a version with counter 0".into());
        }
        let mut vv = VersionVector::new();
        for &(n, c) in &self.vv {
            vv.observe(NodeId(n), c);
        }
        let dot = Dot {
            node: NodeId(self.node),
            counter: self.counter,
        };
        if !vv.contains(dot) {
            return Err("a version whose vector does not contain its dot".into());
        }
        Ok(Version {
            dot,
            vv,
            clock: Hlc {
                wall_ms: self.wall_ms,
                logical: self.logical,
            },
            deleted: self.deleted,
        })
    }
}

/// A version with its manifest on the wire (inline bytes travel as the raw part).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct WireExported {
    version: WireVersion,
    size: u64,
    etag: String,
    modified_ns: u64,
    meta: ObjectMeta,
    /// (chunk id hex, length, inline)
    chunks: Vec<(String, u32, bool)>,
}

impl WireExported {
    pub(crate) fn of(ex: &Exported) -> (WireExported, Vec<u8>) {
        let w = WireExported {
            version: WireVersion::from(&ex.version),
            size: ex.size,
            etag: ex.etag.clone(),
            modified_ns: ex.modified_ns,
            meta: ex.meta.clone(),
            chunks: ex
                .chunks
                .iter()
                .map(|c| (c.id.to_hex(), c.len, c.inline))
                .collect(),
        };
        (w, ex.inline.clone().unwrap_or_default())
    }

    pub(crate) fn exported(self, raw: Vec<u8>) -> Result<Exported, String> {
        let mut chunks = Vec::with_capacity(self.chunks.len());
        for (id, len, inline) in self.chunks {
            let id = ChunkId::from_hex(&id).ok_or("a chunk id is not 64 hex digits")?;
            chunks.push(ChunkEntry { id, len, inline });
        }
        let inline = chunks.iter().any(|c| c.inline).then_some(raw);
        Ok(Exported {
            version: self.version.version()?,
            size: self.size,
            etag: self.etag,
            modified_ns: self.modified_ns,
            meta: self.meta,
            chunks,
            inline,
        })
    }
}

/// Requests.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Req {
    /// Every version of a key the receiver holds (metadata only).
    Versions { bucket: String, key: String },
    /// Store this version (answers `NeedChunks` with the chunks it lacks, then `Stored`).
    Store {
        bucket: String,
        key: String,
        v: Box<WireExported>,
    },
    /// A chunk (the raw part), stored if it matches its id.
    PutChunk { id: String },
    /// One version with its manifest.
    Export {
        bucket: String,
        key: String,
        version_id: String,
    },
    /// A chunk's bytes.
    GetChunk { id: String },
    /// Anti-entropy: the receiver's partition digests over the keys both sides own.
    Digests,
    /// Anti-entropy: the keys of partition `p` both sides own, with their version ids.
    Partition { p: u16 },
    /// What the receiver stores (`cluster status`).
    Status,
}

/// Answers.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Resp {
    Versions {
        versions: Vec<WireVersion>,
    },
    Stored,
    NeedChunks {
        ids: Vec<String>,
    },
    Exported {
        v: Option<Box<WireExported>>,
    },
    Chunk,
    Ok,
    /// 256 digests, hex.
    Digests {
        parts: Vec<String>,
    },
    /// (bucket, key, version ids).
    Keys {
        keys: Vec<(String, String, Vec<String>)>,
    },
    /// Bytes, objects, capacity, under-replicated.
    Status {
        bytes: u64,
        objects: u64,
        capacity: Option<u64>,
        under_replicated: u64,
    },
    Err {
        msg: String,
    },
}

/// A message's bytes.
pub(crate) fn encode<T: Serialize>(m: &T, raw: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(m).expect("messages serialise");
    let mut out = Vec::with_capacity(4 + json.len() + raw.len());
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(raw);
    out
}

/// A message and its raw part.
pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<(T, Vec<u8>), String> {
    if b.len() < 4 {
        return Err("a message shorter than its header length".into());
    }
    let n = u32::from_be_bytes(b[..4].try_into().expect("4 bytes")) as usize;
    let json = b.get(4..4 + n).ok_or("a message header beyond its end")?;
    let m = serde_json::from_slice(json).map_err(|e| format!("a message is not valid: {e}"))?;
    Ok((m, b[4 + n..].to_vec()))
}

/// The link frame payloads (source field included) carrying message `id`.
pub(crate) fn pieces(id: u64, response: bool, msg: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunks: Vec<&[u8]> = msg.chunks(PIECE).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        let mut f = Vec::with_capacity(KEY_LEN + HDR + c.len());
        f.extend_from_slice(&[0u8; KEY_LEN]);
        f.extend_from_slice(&id.to_be_bytes());
        let mut flags = if response { RESPONSE } else { 0 };
        if i + 1 == n {
            flags |= LAST;
        }
        f.push(flags);
        f.extend_from_slice(c);
        out.push(f);
    }
    out
}

/// Reassembles messages from the pieces of every link.
#[derive(Default)]
pub(crate) struct Assembler {
    partial: HashMap<(PublicKey, u64, bool), Vec<u8>>,
    bytes: usize,
}

/// A whole message: its id, whether it is an answer, its bytes.
pub(crate) type Whole = (u64, bool, Vec<u8>);

impl Assembler {
    /// Adds one piece from `via`; a whole message when it was the last. Errors (a piece too
    /// short, a message or the total too large) drop what was gathered for it.
    pub(crate) fn push(&mut self, via: PublicKey, payload: &[u8]) -> Result<Option<Whole>, String> {
        if payload.len() < HDR {
            return Err("an object replication frame without its header".into());
        }
        let id = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
        let flags = payload[8];
        let body = &payload[HDR..];
        let k = (via, id, flags & RESPONSE != 0);
        let buf = self.partial.entry(k).or_default();
        if buf.len() + body.len() > MAX_MSG || self.bytes + body.len() > MAX_PARTIAL {
            let dropped = self.partial.remove(&k).map_or(0, |b| b.len());
            self.bytes -= dropped;
            return Err("an object replication message too large".into());
        }
        buf.extend_from_slice(body);
        self.bytes += body.len();
        if flags & LAST == 0 {
            return Ok(None);
        }
        let msg = self.partial.remove(&k).unwrap_or_default();
        self.bytes -= msg.len();
        Ok(Some((id, k.2, msg)))
    }

    /// Forgets what was gathered from `via` (its link ended).
    pub(crate) fn forget(&mut self, via: &PublicKey) {
        let gone: Vec<_> = self
            .partial
            .keys()
            .filter(|k| k.0 == *via)
            .copied()
            .collect();
        for k in gone {
            if let Some(b) = self.partial.remove(&k) {
                self.bytes -= b.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_reassemble_and_oversize_is_refused() {
        let via = PublicKey([7; 32]);
        let msg: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut a = Assembler::default();
        let ps = pieces(9, true, &msg);
        assert_eq!(ps.len(), 4);
        let mut got = None;
        for p in &ps {
            assert!(p.len() - KEY_LEN <= u16::MAX as usize - KEY_LEN);
            got = a.push(via, &p[KEY_LEN..]).expect("piece");
        }
        assert_eq!(got, Some((9, true, msg)));
        assert_eq!(a.bytes, 0);
        let big = vec![0u8; MAX_MSG + 1];
        let r: Result<Vec<_>, _> = pieces(1, false, &big)
            .iter()
            .map(|p| a.push(via, &p[KEY_LEN..]))
            .collect();
        assert!(r.is_err());
        assert_eq!(a.bytes, 0);
        let (m, raw): (Req, Vec<u8>) =
            decode(&encode(&Req::GetChunk { id: "ab".into() }, b"xyz")).expect("decode");
        assert!(matches!(m, Req::GetChunk { id } if id == "ab"));
        assert_eq!(raw, b"xyz");
    }
}
