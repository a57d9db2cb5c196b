//! A raw ONC RPC client over TCP: hand-built call records (any lengths, truncated records),
//! replies read with a deadline. For the hostile-client tests.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PROG_NFS: u32 = 100_003;
pub const PROG_MOUNT: u32 = 100_005;
pub const AUTH_UNIX: u32 = 1;

/// Big-endian bytes of `ws`.
pub fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// An XDR opaque/string: length, bytes, pad.
pub fn opaque(b: &[u8]) -> Vec<u8> {
    let mut v = words(&[b.len() as u32]);
    v.extend_from_slice(b);
    v.resize(v.len() + (4 - b.len() % 4) % 4, 0);
    v
}

/// An AUTH_UNIX credential (flavor and body) for uid/gid 0, announcing `gid_count` groups
/// and carrying `gids` of them.
pub fn auth_unix(gid_count: u32, gids: usize) -> Vec<u8> {
    let mut body = words(&[0]);
    body.extend(opaque(b"test"));
    body.extend(words(&[0, 0, gid_count]));
    body.extend(std::iter::repeat_n(0u8, 4 * gids));
    let mut v = words(&[AUTH_UNIX]);
    v.extend(opaque(&body));
    v
}

/// A call record (without record mark): header, `cred` (flavor and body), a null verifier,
/// `args`.
pub fn call(xid: u32, prog: u32, proc_: u32, cred: &[u8], args: &[u8]) -> Vec<u8> {
    let mut v = words(&[xid, 0, 2, prog, 3, proc_]);
    v.extend_from_slice(cred);
    v.extend(words(&[0, 0]));
    v.extend_from_slice(args);
    v
}

pub struct Raw {
    pub s: TcpStream,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.expect("connect"),
        }
    }

    /// Send `rec` as one record.
    pub async fn send(&mut self, rec: &[u8]) -> std::io::Result<()> {
        let mut v = (rec.len() as u32 | 0x8000_0000).to_be_bytes().to_vec();
        v.extend_from_slice(rec);
        self.s.write_all(&v).await
    }

    /// The next reply record; `None` when the server closed the connection. Panics after 10 s.
    pub async fn reply(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut rec = Vec::new();
            loop {
                let mut h = [0u8; 4];
                self.s.read_exact(&mut h).await.ok()?;
                let h = u32::from_be_bytes(h);
                let mut part = vec![0u8; (h & 0x7fff_ffff) as usize];
                self.s.read_exact(&mut part).await.ok()?;
                rec.extend(part);
                if h & 0x8000_0000 != 0 {
                    return Some(rec);
                }
            }
        })
        .await
        .expect("no reply within 10 s")
    }

    /// Send a call and return its reply.
    pub async fn call(&mut self, rec: &[u8]) -> Option<Vec<u8>> {
        self.send(rec).await.ok()?;
        self.reply().await
    }

    /// MNT `path`: the root handle (opaque contents).
    pub async fn mount(&mut self, path: &str) -> Vec<u8> {
        let r = self
            .call(&call(
                1,
                PROG_MOUNT,
                1,
                &auth_unix(0, 0),
                &opaque(path.as_bytes()),
            ))
            .await
            .expect("MNT reply");
        assert_eq!(word(&r, 5), 0, "accepted");
        assert_eq!(word(&r, 6), 0, "MNT3_OK");
        let n = word(&r, 7) as usize;
        r[32..32 + n].to_vec()
    }
}

/// The `i`th big-endian word of `b`.
pub fn word(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes"))
}

/// Accept status of an accepted reply (`None` for a denied one).
pub fn accept_stat(r: &[u8]) -> Option<u32> {
    (word(r, 2) == 0).then(|| word(r, 5))
}
