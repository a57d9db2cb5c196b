//! Test harness: an in-process server on 127.0.0.1:0 over a store in a temp dir, and an
//! `nfs3_client` connection with helpers that turn NFS results into `Result<_, nfsstat3>`.
#![allow(dead_code)]

pub mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};
use tm_nfs::{Cidr, NfsConfig, NfsServer};
use tm_storage::{Store, StoreConfig};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub type Conn = Nfs3Connection<TokioIo<TcpStream>>;

pub const MIB: usize = 1 << 20;

/// Deterministic pseudo-random bytes (xorshift), distinct per `seed`.
pub fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub struct Srv {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub store: Store,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Open the store in `dir`, retrying while a previous instance is still closing.
pub async fn open_store(dir: &Path, cfg: impl Fn(&mut StoreConfig)) -> Store {
    for _ in 0..200 {
        let mut c = StoreConfig::new(dir);
        cfg(&mut c);
        match Store::open(c) {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("store in {} did not reopen", dir.display());
}

pub async fn start_with(dir: &Path, store: Store, nc: impl Fn(&mut NfsConfig)) -> Srv {
    let mut cfg = NfsConfig::new("127.0.0.1:0".parse().expect("addr"), Vec::new());
    nc(&mut cfg);
    let server = NfsServer::bind(store.clone(), cfg).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        server
            .serve(async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
    });
    Srv {
        dir: dir.to_path_buf(),
        addr,
        store,
        stop: Some(tx),
        task: Some(task),
    }
}

pub async fn start(dir: &Path) -> Srv {
    let store = open_store(dir, |_| {}).await;
    start_with(dir, store, |_| {}).await
}

impl Srv {
    /// Stop serving and release the store (so it can be reopened).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }

    pub async fn mount(&self, share: &str) -> Conn {
        mount(self.addr, &format!("/shares/{share}"))
            .await
            .expect("mount")
    }
}

pub async fn mount(addr: SocketAddr, path: &str) -> Result<Conn, nfs3_client::ConnectError> {
    mount_as(addr, path, 0, 0, &[]).await
}

/// An AUTH_SYS credential for `uid`/`gid` with supplementary `gids`.
pub fn sys_cred(
    uid: u32,
    gid: u32,
    gids: &[u32],
) -> nfs3_client::nfs3_types::rpc::opaque_auth<'static> {
    use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
    opaque_auth::auth_unix(&auth_unix {
        stamp: 1,
        machinename: Opaque::borrowed(b"test"),
        uid,
        gid,
        gids: gids.to_vec(),
    })
}

/// [`mount`] as `uid`/`gid` (AUTH_SYS) with supplementary `gids`.
pub async fn mount_as(
    addr: SocketAddr,
    path: &str,
    uid: u32,
    gid: u32,
    gids: &[u32],
) -> Result<Conn, nfs3_client::ConnectError> {
    Nfs3ConnectionBuilder::new(TokioConnector, addr.ip().to_string(), path)
        .credential(sys_cred(uid, gid, gids))
        .connect_from_privileged_port(false)
        .mount_port(addr.port())
        .nfs3_port(addr.port())
        .mount()
        .await
}

pub fn allow_loopback(c: &mut NfsConfig, on: bool) {
    c.allow_loopback = on;
}

pub fn cidr(s: &str) -> Cidr {
    s.parse().expect("cidr")
}

pub fn res<T, E>(r: Nfs3Result<T, E>) -> Result<T, nfsstat3> {
    match r {
        Nfs3Result::Ok(v) => Ok(v),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

pub fn name(s: &str) -> filename3<'static> {
    filename3::from(s.as_bytes().to_vec())
}

pub fn dirop(dir: &nfs_fh3, n: &str) -> diropargs3<'static> {
    diropargs3 {
        dir: dir.clone(),
        name: name(n),
    }
}

pub fn attr_of(a: &post_op_attr) -> fattr3 {
    match a {
        Nfs3Option::Some(a) => a.clone(),
        Nfs3Option::None => panic!("no attributes"),
    }
}

pub fn fh_of(f: &post_op_fh3) -> nfs_fh3 {
    match f {
        Nfs3Option::Some(h) => h.clone(),
        Nfs3Option::None => panic!("no handle"),
    }
}

pub async fn lookup(c: &mut Conn, dir: &nfs_fh3, n: &str) -> Result<(nfs_fh3, fattr3), nfsstat3> {
    let r = res(c
        .lookup(&LOOKUP3args {
            what: dirop(dir, n),
        })
        .await
        .expect("rpc"))?;
    Ok((r.object, attr_of(&r.obj_attributes)))
}

pub async fn getattr(c: &mut Conn, fh: &nfs_fh3) -> Result<fattr3, nfsstat3> {
    res(c
        .getattr(&GETATTR3args { object: fh.clone() })
        .await
        .expect("rpc"))
    .map(|r| r.obj_attributes)
}

pub async fn create(
    c: &mut Conn,
    dir: &nfs_fh3,
    n: &str,
    how: createhow3,
) -> Result<nfs_fh3, nfsstat3> {
    let r = res(c
        .create(&CREATE3args {
            where_: dirop(dir, n),
            how,
        })
        .await
        .expect("rpc"))?;
    match r.obj {
        Nfs3Option::Some(h) => Ok(h),
        Nfs3Option::None => Ok(lookup(c, dir, n).await?.0),
    }
}

pub async fn mkfile(c: &mut Conn, dir: &nfs_fh3, n: &str) -> nfs_fh3 {
    create(c, dir, n, createhow3::UNCHECKED(sattr3::default()))
        .await
        .expect("create")
}

pub async fn mkdir(
    c: &mut Conn,
    dir: &nfs_fh3,
    n: &str,
    mode: Option<u32>,
) -> Result<nfs_fh3, nfsstat3> {
    let mut a = sattr3::default();
    if let Some(m) = mode {
        a.mode = Nfs3Option::Some(m);
    }
    let r = res(c
        .mkdir(&MKDIR3args {
            where_: dirop(dir, n),
            attributes: a,
        })
        .await
        .expect("rpc"))?;
    Ok(fh_of(&r.obj))
}

pub async fn write(
    c: &mut Conn,
    fh: &nfs_fh3,
    off: u64,
    data: &[u8],
    stable: stable_how,
) -> Result<WRITE3resok, nfsstat3> {
    res(c
        .write(&WRITE3args {
            file: fh.clone(),
            offset: off,
            count: data.len() as u32,
            stable,
            data: Opaque::owned(data.to_vec()),
        })
        .await
        .expect("rpc"))
}

pub async fn commit(c: &mut Conn, fh: &nfs_fh3) -> Result<writeverf3, nfsstat3> {
    res(c
        .commit(&COMMIT3args {
            file: fh.clone(),
            offset: 0,
            count: 0,
        })
        .await
        .expect("rpc"))
    .map(|r| r.verf)
}

pub async fn read(
    c: &mut Conn,
    fh: &nfs_fh3,
    off: u64,
    count: u32,
) -> Result<(Vec<u8>, bool), nfsstat3> {
    let r = res(c
        .read(&READ3args {
            file: fh.clone(),
            offset: off,
            count,
        })
        .await
        .expect("rpc"))?;
    Ok((r.data.to_vec(), r.eof))
}

pub async fn read_all(c: &mut Conn, fh: &nfs_fh3) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let (d, eof) = read(c, fh, out.len() as u64, 1 << 20).await.expect("read");
        out.extend_from_slice(&d);
        if eof || d.is_empty() {
            return out;
        }
    }
}

pub async fn setattr(c: &mut Conn, fh: &nfs_fh3, a: sattr3) -> Result<fattr3, nfsstat3> {
    let r = res(c
        .setattr(&SETATTR3args {
            object: fh.clone(),
            new_attributes: a,
            guard: Nfs3Option::None,
        })
        .await
        .expect("rpc"))?;
    Ok(attr_of(&r.obj_wcc.after))
}

pub async fn remove(c: &mut Conn, dir: &nfs_fh3, n: &str) -> Result<(), nfsstat3> {
    res(c
        .remove(&REMOVE3args {
            object: dirop(dir, n),
        })
        .await
        .expect("rpc"))
    .map(|_| ())
}

pub async fn rmdir(c: &mut Conn, dir: &nfs_fh3, n: &str) -> Result<(), nfsstat3> {
    res(c
        .rmdir(&RMDIR3args {
            object: dirop(dir, n),
        })
        .await
        .expect("rpc"))
    .map(|_| ())
}

pub async fn rename(
    c: &mut Conn,
    fd: &nfs_fh3,
    f: &str,
    td: &nfs_fh3,
    t: &str,
) -> Result<(), nfsstat3> {
    res(c
        .rename(&RENAME3args {
            from: dirop(fd, f),
            to: dirop(td, t),
        })
        .await
        .expect("rpc"))
    .map(|_| ())
}

/// One READDIRPLUS page: (names with cookies, cookieverf, eof).
pub async fn readdirplus(
    c: &mut Conn,
    dir: &nfs_fh3,
    cookie: u64,
    verf: cookieverf3,
    maxcount: u32,
) -> Result<(Vec<(String, u64, u64)>, cookieverf3, bool), nfsstat3> {
    let r = res(c
        .readdirplus(&READDIRPLUS3args {
            dir: dir.clone(),
            cookie,
            cookieverf: verf,
            dircount: maxcount,
            maxcount,
        })
        .await
        .expect("rpc"))?;
    let v = r
        .reply
        .entries
        .into_inner()
        .into_iter()
        .map(|e| {
            (
                String::from_utf8_lossy(e.name.as_ref()).into_owned(),
                e.cookie,
                e.fileid,
            )
        })
        .collect();
    Ok((v, r.cookieverf, r.reply.eof))
}

/// One READDIR page.
pub async fn readdir(
    c: &mut Conn,
    dir: &nfs_fh3,
    cookie: u64,
    verf: cookieverf3,
    count: u32,
) -> Result<(Vec<(String, u64)>, cookieverf3, bool), nfsstat3> {
    let r = res(c
        .readdir(&READDIR3args {
            dir: dir.clone(),
            cookie,
            cookieverf: verf,
            count,
        })
        .await
        .expect("rpc"))?;
    let v = r
        .reply
        .entries
        .into_inner()
        .into_iter()
        .map(|e| {
            (
                String::from_utf8_lossy(e.name.as_ref()).into_owned(),
                e.cookie,
            )
        })
        .collect();
    Ok((v, r.cookieverf, r.reply.eof))
}

/// All names of a directory through READDIRPLUS pages.
pub async fn list(c: &mut Conn, dir: &nfs_fh3) -> Vec<String> {
    let (mut cookie, mut verf) = (0, cookieverf3::default());
    let mut out = Vec::new();
    loop {
        let (v, nv, eof) = readdirplus(c, dir, cookie, verf, 8192)
            .await
            .expect("readdirplus");
        verf = nv;
        if let Some(l) = v.last() {
            cookie = l.1;
        }
        out.extend(v.into_iter().map(|e| e.0));
        if eof {
            return out;
        }
    }
}

/// Put an object through the engine (the S3 path).
pub fn put_object(store: &Store, bucket: &str, key: &str, data: &[u8]) {
    let mut w = store
        .begin_put(bucket, key, Default::default())
        .expect("begin_put");
    w.write_all(data).expect("write");
    w.commit().expect("commit");
}

pub fn get_object(store: &Store, bucket: &str, key: &str) -> Vec<u8> {
    let r = store.open_object(bucket, key).expect("open_object");
    let mut buf = vec![0u8; r.size() as usize];
    let n = r.read_at(0, &mut buf).expect("read_at");
    buf.truncate(n);
    buf
}

pub fn time(s: u32, ns: u32) -> nfstime3 {
    nfstime3 {
        seconds: s,
        nseconds: ns,
    }
}
