//! [`Vfs`]: the `nfs3_server` file-system traits on top of [`tm_storage::FileSystem`].
//!
//! Writes: UNSTABLE writes are staged in the engine's write-back buffer
//! ([`FileSystem::stage`]), where every reader of the store sees them at once (an S3 GET of the
//! object applies them first), and made durable by COMMIT, by a FILE_SYNC/DATA_SYNC write, in
//! the background when an inode holds [`FLUSH_BYTES`] or the server [`MAX_DIRTY`], and by the
//! idle flusher ([`Vfs::flush_idle`]). The write verifier changes with every process start
//! (see `front.rs`), so a client resends anything a crash lost before COMMIT. Quota and
//! read-only checks happen when the write arrives, so refusals are immediate and store nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use nfs3_server::nfs3_types::nfs3::{
    createverf3, fattr3, fileid3, filename3, ftype3, nfspath3, nfsstat3, nfstime3, post_op_attr,
    sattr3, set_atime, set_mtime, specdata3, stable_how, FSINFO3resok, Nfs3Option, FSF3_CANSETTIME,
    FSF3_HOMOGENEOUS, FSF3_SYMLINK,
};
use nfs3_server::vfs::{
    DirEntryPlus, FileHandleU64, NextResult, NfsFileSystem, NfsReadFileSystem, ReadDirPlusIterator,
};
use tm_storage::{
    CreateMode, DirEntry, FileAttr, FileKind, FileSystem, FsError, ReadAhead, Segment, SetAttrs,
    StorageError, DEFAULT_SHARE,
};

/// Buffered bytes of one inode that trigger a flush.
pub const FLUSH_BYTES: usize = 32 << 20;
/// Buffered bytes of the whole server that make every write flush its inode.
pub const MAX_DIRTY: usize = 256 << 20;
/// Entries fetched from the store per directory page.
const DIR_PAGE: usize = 256;
/// Preferred and advertised largest transfer (fsinfo rtmax/wtmax). 1 MiB, one chunk: measured
/// against 256 KiB (which lets libnfs split a 1 MiB call into concurrent RPCs), whole-chunk
/// RPCs roughly doubled sequential write and added a third to reads (per-RPC costs dominate;
/// see docs/benchmarks.md, NFS).
pub const MAX_IO: u32 = 1 << 20;
/// Largest READ served (clients that ignore rtmax still get at most this).
pub const READ_CAP: u32 = 1 << 20;

/// Map an error of the file-system view (its own, or the object layer's it wraps) to an NFS
/// status: the one place where engine errors become NFS status codes.
pub fn nfs_status(e: &FsError) -> nfsstat3 {
    use FsError as F;
    use StorageError as E;
    match e {
        F::NoSuchShare | F::Storage(E::NoSuchKey | E::NoSuchBucket) => nfsstat3::NFS3ERR_NOENT,
        F::Exists | F::Storage(E::BucketExists) => nfsstat3::NFS3ERR_EXIST,
        F::NotADirectory => nfsstat3::NFS3ERR_NOTDIR,
        F::IsADirectory => nfsstat3::NFS3ERR_ISDIR,
        F::DirectoryNotEmpty | F::Storage(E::BucketNotEmpty) => nfsstat3::NFS3ERR_NOTEMPTY,
        F::Stale => nfsstat3::NFS3ERR_STALE,
        F::ReadOnly => nfsstat3::NFS3ERR_ROFS,
        F::InvalidName | F::Invalid(_) | F::Storage(E::InvalidKey) => nfsstat3::NFS3ERR_INVAL,
        F::NameTooLong => nfsstat3::NFS3ERR_NAMETOOLONG,
        F::FileTooBig => nfsstat3::NFS3ERR_FBIG,
        F::BadCookie => nfsstat3::NFS3ERR_BAD_COOKIE,
        F::Storage(E::QuotaExceeded) => nfsstat3::NFS3ERR_DQUOT,
        F::Storage(E::Conflict) => nfsstat3::NFS3ERR_JUKEBOX,
        F::Storage(E::Unsupported(_)) => nfsstat3::NFS3ERR_NOTSUPP,
        F::Storage(E::Io(io)) if io.raw_os_error() == Some(28) => nfsstat3::NFS3ERR_NOSPC,
        _ => nfsstat3::NFS3ERR_IO,
    }
}

/// Like [`blocking`], but on a multi-thread runtime runs `f` on this worker thread
/// (`block_in_place`: no hand-off to the blocking pool and back, which costs two thread
/// wake-ups on the reply's path); for calls that are short or wait on the group commit.
pub(crate) async fn blocking_here<T, E, F>(f: F) -> Result<T, nfsstat3>
where
    T: Send + 'static,
    E: Into<FsError> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() != RuntimeFlavor::MultiThread {
        return blocking(f).await;
    }
    tokio::task::block_in_place(f).map_err(|e| failure_status(&e.into()))
}

/// [`nfs_status`], logging failures (not refusals).
fn failure_status(e: &FsError) -> nfsstat3 {
    if e.is_failure() {
        tracing::warn!("nfs: storage failure: {e}");
    }
    nfs_status(e)
}

pub(crate) async fn blocking<T, E, F>(f: F) -> Result<T, nfsstat3>
where
    T: Send + 'static,
    E: Into<FsError> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(failure_status(&e.into())),
        Err(_) => Err(nfsstat3::NFS3ERR_SERVERFAULT),
    }
}

fn nfstime(t: SystemTime) -> nfstime3 {
    nfstime3::try_from(t).unwrap_or_default()
}

fn from_nfstime(t: nfstime3) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::from(t.seconds))
        + Duration::from_nanos(u64::from(t.nseconds))
}

/// Engine attributes as NFS `fattr3`.
pub fn fattr(a: &FileAttr) -> fattr3 {
    fattr3 {
        type_: match a.kind {
            FileKind::File => ftype3::NF3REG,
            FileKind::Directory => ftype3::NF3DIR,
            FileKind::Symlink => ftype3::NF3LNK,
        },
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        used: a.size,
        rdev: specdata3::default(),
        fsid: a.fsid,
        fileid: a.ino,
        atime: nfstime(a.atime),
        mtime: nfstime(a.mtime),
        ctime: nfstime(a.ctime),
    }
}

/// NFS `sattr3` as engine attribute changes.
pub fn set_attrs(s: &sattr3) -> SetAttrs {
    let opt = |o: &Nfs3Option<u32>| match o {
        Nfs3Option::Some(v) => Some(*v),
        Nfs3Option::None => None,
    };
    SetAttrs {
        mode: opt(&s.mode),
        uid: opt(&s.uid),
        gid: opt(&s.gid),
        size: match s.size {
            Nfs3Option::Some(v) => Some(v),
            Nfs3Option::None => None,
        },
        atime: match s.atime {
            set_atime::DONT_CHANGE => None,
            set_atime::SET_TO_SERVER_TIME => Some(SystemTime::now()),
            set_atime::SET_TO_CLIENT_TIME(t) => Some(from_nfstime(t)),
        },
        mtime: match s.mtime {
            set_mtime::DONT_CHANGE => None,
            set_mtime::SET_TO_SERVER_TIME => Some(SystemTime::now()),
            set_mtime::SET_TO_CLIENT_TIME(t) => Some(from_nfstime(t)),
        },
    }
}

fn name_str(n: &filename3<'_>) -> Result<String, nfsstat3> {
    std::str::from_utf8(n.as_ref())
        .map(str::to_string)
        .map_err(|_| nfsstat3::NFS3ERR_INVAL)
}

/// What the RPC front saw in a call that the trait does not carry.
#[derive(Clone, Debug)]
pub(crate) enum Hint {
    /// MKDIR with these attributes.
    Mkdir(SetAttrs),
    /// The REMOVE-shaped call is an RMDIR.
    Rmdir,
    /// SYMLINK: the new link's owner (uid, gid) per [`crate::perm::own`].
    Owner(Option<u32>, Option<u32>),
}

/// Call details from the front, by (directory inode, name).
type Hints = HashMap<(u64, Vec<u8>), Hint>;

/// The NFS file system served by `nfs3_server`. Handles are [`FileHandleU64`] inode numbers
/// (the server prefixes the store generation).
/// Cheap to clone (shared state behind `Arc`s).
#[derive(Clone)]
pub struct Vfs {
    fs: FileSystem,
    root: u64,
    hints: Arc<Mutex<Hints>>,
    /// The background flush started per inode (at most one, so a writer that fills the
    /// buffer faster than the store absorbs it waits for the previous one).
    inflight: Arc<Mutex<HashMap<u64, tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Vfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vfs").field("root", &self.root).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vfs {
    /// Wrap a file system; `DEFAULT_SHARE` must exist (its root is the server's root handle).
    pub fn new(fs: FileSystem) -> Result<Vfs, FsError> {
        let root = fs.share_root(DEFAULT_SHARE)?.ino;
        Ok(Vfs {
            fs,
            root,
            hints: Arc::new(Mutex::new(HashMap::new())),
            inflight: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The engine view.
    pub fn fs(&self) -> &FileSystem {
        &self.fs
    }

    pub(crate) fn hint(&self, dir: u64, name: Vec<u8>, h: Hint) {
        let mut m = lock(&self.hints);
        if m.len() > 4096 {
            m.clear();
        }
        m.insert((dir, name), h);
    }

    fn take_hint(&self, dir: u64, name: &[u8]) -> Option<Hint> {
        lock(&self.hints).remove(&(dir, name.to_vec()))
    }

    /// Start applying `ino`'s staged writes in the background, after the previous background
    /// flush of that inode finished (back-pressure for a writer faster than the store).
    async fn start_flush(&self, ino: u64) {
        let prev = lock(&self.inflight).remove(&ino);
        if let Some(h) = prev {
            let _ = h.await;
        }
        let fs = self.fs.clone();
        let h = tokio::task::spawn_blocking(move || fs.flush_background(ino));
        let mut m = lock(&self.inflight);
        m.retain(|_, h| !h.is_finished());
        m.insert(ino, h);
    }

    /// Make everything written to one inode durable (COMMIT).
    pub async fn flush(&self, ino: u64) -> Result<(), nfsstat3> {
        if !self.fs.is_staged(ino) {
            return Ok(());
        }
        let fs = self.fs.clone();
        blocking_here(move || fs.flush(ino)).await
    }

    /// Flush inodes whose oldest staged write is older than `age` (all if `age` is zero);
    /// failures are kept for the next write/COMMIT of that inode.
    pub async fn flush_idle(&self, age: Duration) {
        if self.fs.staged_inodes() > 0 {
            let fs = self.fs.clone();
            let _ = tokio::task::spawn_blocking(move || fs.flush_idle(age)).await;
        }
    }

    /// READ with the file's attributes. Served inline (page-cache reads are quick) unless the
    /// inode has staged writes to apply first, which may wait for the disk.
    pub(crate) async fn read_with_attr(
        &self,
        ino: u64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool, fattr3), nfsstat3> {
        let count = count.min(READ_CAP);
        let r = if self.fs.is_staged(ino) {
            let fs = self.fs.clone();
            blocking(move || fs.read_with_attr(ino, offset, count)).await
        } else {
            self.fs
                .read_with_attr(ino, offset, count)
                .map_err(|e| failure_status(&e))
        };
        r.map(|(d, eof, a)| (d, eof, fattr(&a)))
    }

    /// Read a sequential reader's next range before it asks (see [`FileSystem::read_ahead`]).
    pub(crate) fn read_ahead(&self, ino: u64, offset: u64, count: u32) -> Option<ReadAhead> {
        self.fs.read_ahead(ino, offset, count.min(READ_CAP))
    }

    /// [`Vfs::read_with_attr`], from `ahead` when it holds this range and is still current.
    pub(crate) async fn read_with_attr_ahead(
        &self,
        ahead: Option<ReadAhead>,
        ino: u64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool, fattr3), nfsstat3> {
        if ahead.is_none() || self.fs.is_staged(ino) {
            return self.read_with_attr(ino, offset, count).await;
        }
        self.fs
            .read_with_attr_ahead(ahead, ino, offset, count.min(READ_CAP))
            .map(|(d, eof, a)| (d, eof, fattr(&a)))
            .map_err(|e| failure_status(&e))
    }

    /// [`Vfs::read_with_attr`] as segments (chunk files for `sendfile`, no copy): `(segments,
    /// byte count, eof, attributes)`.
    pub(crate) async fn read_segments_with_attr(
        &self,
        ino: u64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<Segment>, usize, bool, fattr3), nfsstat3> {
        let count = count.min(READ_CAP);
        let r = if self.fs.is_staged(ino) {
            let fs = self.fs.clone();
            blocking(move || fs.read_segments_with_attr(ino, offset, count)).await
        } else {
            self.fs
                .read_segments_with_attr(ino, offset, count)
                .map_err(|e| failure_status(&e))
        };
        r.map(|(s, n, eof, a)| (s, n, eof, fattr(&a)))
    }

    async fn attr(&self, ino: u64) -> Result<FileAttr, nfsstat3> {
        // A few metadata lookups in redb: cheaper inline than a blocking-pool round trip.
        self.fs.getattr(ino).map_err(|e| nfs_status(&e))
    }

    /// LOOKUP for the front: the entry's attributes and the directory's (`None` when the
    /// directory itself is gone), reading the directory once.
    pub(crate) async fn lookup_with_dir(
        &self,
        dir: u64,
        name: String,
    ) -> (Result<FileAttr, nfsstat3>, Option<fattr3>) {
        match self.fs.lookup_existing_with_dir(dir, &name) {
            Ok((Ok(Some(a)), d)) => (Ok(a), Some(fattr(&d))),
            Ok((Ok(None), d)) => {
                let fs = self.fs.clone();
                (
                    blocking(move || fs.lookup(dir, &name)).await,
                    Some(fattr(&d)),
                )
            }
            Ok((Err(e), d)) => (Err(nfs_status(&e)), Some(fattr(&d))),
            Err(e) => (Err(nfs_status(&e)), None),
        }
    }

    async fn lookup_ino(&self, dir: u64, name: String) -> Result<FileAttr, nfsstat3> {
        // Read-only metadata lookups inline; a blocking-pool trip only to allocate an inode.
        match self.fs.lookup_existing(dir, &name) {
            Ok(Some(a)) => return Ok(a),
            Ok(None) => {}
            Err(e) => return Err(nfs_status(&e)),
        }
        let fs = self.fs.clone();
        blocking(move || fs.lookup(dir, &name)).await
    }
}

/// Directory listing iterator: fetches pages of `DIR_PAGE` entries from the store.
pub struct DirIter {
    fs: FileSystem,
    dir: u64,
    cookie: u64,
    page: VecDeque<DirEntry>,
    eof: bool,
}

impl ReadDirPlusIterator<FileHandleU64> for DirIter {
    async fn next(&mut self) -> NextResult<DirEntryPlus<FileHandleU64>> {
        if self.page.is_empty() {
            if self.eof {
                return NextResult::Eof;
            }
            let (fs, dir, cookie) = (self.fs.clone(), self.dir, self.cookie);
            match blocking(move || fs.readdir(dir, cookie, DIR_PAGE)).await {
                Ok((entries, eof)) => {
                    self.eof = eof;
                    self.page.extend(entries);
                }
                Err(e) => return NextResult::Err(e),
            }
            if self.page.is_empty() {
                return NextResult::Eof;
            }
        }
        let e = self.page.pop_front().expect("page is not empty");
        self.cookie = e.cookie;
        NextResult::Ok(DirEntryPlus {
            fileid: e.attr.ino,
            name: filename3::from(e.name.into_bytes()),
            cookie: e.cookie,
            name_attributes: Some(fattr(&e.attr)),
            name_handle: Some(FileHandleU64::new(e.attr.ino)),
        })
    }
}

impl NfsReadFileSystem for Vfs {
    type Handle = FileHandleU64;

    fn root_dir(&self) -> FileHandleU64 {
        FileHandleU64::new(self.root)
    }

    async fn lookup(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
    ) -> Result<FileHandleU64, nfsstat3> {
        let name = name_str(filename)?;
        let a = self.lookup_ino(dirid.as_u64(), name).await?;
        Ok(FileHandleU64::new(a.ino))
    }

    async fn lookup_by_path(&self, path: &str) -> Result<FileHandleU64, nfsstat3> {
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let share = parts.next().ok_or(nfsstat3::NFS3ERR_NOENT)?.to_string();
        let fs = self.fs.clone();
        let mut ino = blocking(move || fs.share_root(&share)).await?.ino;
        for p in parts {
            let a = self.lookup_ino(ino, p.to_string()).await?;
            if a.kind != FileKind::Directory {
                return Err(nfsstat3::NFS3ERR_NOTDIR);
            }
            ino = a.ino;
        }
        Ok(FileHandleU64::new(ino))
    }

    async fn getattr(&self, id: &FileHandleU64) -> Result<fattr3, nfsstat3> {
        self.attr(id.as_u64()).await.map(|a| fattr(&a))
    }

    async fn read(
        &self,
        id: &FileHandleU64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        let ino = id.as_u64();
        let fs = self.fs.clone();
        blocking(move || fs.read(ino, offset, count.min(READ_CAP))).await
    }

    #[allow(refining_impl_trait)]
    async fn readdirplus(&self, dirid: &FileHandleU64, cookie: u64) -> Result<DirIter, nfsstat3> {
        let dir = dirid.as_u64();
        let (fs, c) = (self.fs.clone(), cookie);
        // First page now, so errors (not a directory, bad cookie) are reported as such.
        let (entries, eof) = blocking(move || fs.readdir(dir, c, DIR_PAGE)).await?;
        Ok(DirIter {
            fs: self.fs.clone(),
            dir,
            cookie,
            page: entries.into(),
            eof,
        })
    }

    async fn readlink(&self, id: &FileHandleU64) -> Result<nfspath3<'_>, nfsstat3> {
        let (fs, ino) = (self.fs.clone(), id.as_u64());
        let t = blocking(move || fs.readlink(ino)).await?;
        Ok(nfspath3::from(t.into_bytes()))
    }

    async fn fsinfo(&self, root: &FileHandleU64) -> Result<FSINFO3resok, nfsstat3> {
        let a = self.attr(root.as_u64()).await?;
        Ok(FSINFO3resok {
            obj_attributes: post_op_attr::Some(fattr(&a)),
            rtmax: MAX_IO,
            rtpref: MAX_IO,
            rtmult: 4096,
            wtmax: MAX_IO,
            wtpref: MAX_IO,
            wtmult: 4096,
            dtpref: 64 * 1024,
            maxfilesize: tm_storage::MAX_FILE_SIZE,
            time_delta: nfstime3 {
                seconds: 0,
                nseconds: 1,
            },
            properties: FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
        })
    }
}

impl NfsFileSystem for Vfs {
    async fn setattr(&self, id: &FileHandleU64, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        let ino = id.as_u64();
        let sa = set_attrs(&setattr);
        let fs = self.fs.clone();
        let a = blocking(move || fs.setattr(ino, &sa)).await?;
        Ok(fattr(&a))
    }

    async fn write(
        &self,
        id: &FileHandleU64,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> Result<(fattr3, stable_how), nfsstat3> {
        let ino = id.as_u64();
        let fs = self.fs.clone();
        if stable != stable_how::UNSTABLE {
            let data = data.to_vec();
            let a = blocking(move || {
                fs.stage(ino, offset, &data)?;
                fs.flush(ino)?;
                fs.getattr(ino)
            })
            .await?;
            return Ok((fattr(&a), stable_how::FILE_SYNC));
        }
        if fs.journal_full() {
            // The journal of staged writes is emptied by flushing everything: not on this
            // (async) thread.
            let fs = fs.clone();
            blocking(move || {
                fs.drain_journal();
                Ok::<(), FsError>(())
            })
            .await?;
        }
        let st = fs.stage(ino, offset, data).map_err(|e| {
            if e.is_failure() {
                tracing::warn!("nfs: storage failure: {e}");
            }
            nfs_status(&e)
        })?;
        if st.inode_bytes >= FLUSH_BYTES || st.total_bytes >= MAX_DIRTY {
            self.start_flush(ino).await;
        }
        Ok((fattr(&st.attr), stable_how::UNSTABLE))
    }

    async fn create(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
        attr: sattr3,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let (dir, name, sa) = (dirid.as_u64(), name_str(filename)?, set_attrs(&attr));
        let fs = self.fs.clone();
        let a = blocking(move || fs.create(dir, &name, CreateMode::Unchecked, &sa)).await?;
        Ok((FileHandleU64::new(a.ino), fattr(&a)))
    }

    async fn create_exclusive(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
        createverf: createverf3,
    ) -> Result<FileHandleU64, nfsstat3> {
        let (dir, name) = (dirid.as_u64(), name_str(filename)?);
        let verf = u64::from_be_bytes(createverf.0);
        let fs = self.fs.clone();
        let a = blocking(move || {
            fs.create(
                dir,
                &name,
                CreateMode::Exclusive(verf),
                &SetAttrs::default(),
            )
        })
        .await?;
        Ok(FileHandleU64::new(a.ino))
    }

    async fn mkdir(
        &self,
        dirid: &FileHandleU64,
        dirname: &filename3<'_>,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let dir = dirid.as_u64();
        let sa = match self.take_hint(dir, dirname.as_ref()) {
            Some(Hint::Mkdir(sa)) => sa,
            _ => SetAttrs::default(),
        };
        let name = name_str(dirname)?;
        let fs = self.fs.clone();
        let a = blocking(move || fs.mkdir(dir, &name, &sa)).await?;
        Ok((FileHandleU64::new(a.ino), fattr(&a)))
    }

    async fn remove(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
    ) -> Result<(), nfsstat3> {
        let dir = dirid.as_u64();
        let rmdir = matches!(self.take_hint(dir, filename.as_ref()), Some(Hint::Rmdir));
        let name = name_str(filename)?;
        let fs = self.fs.clone();
        blocking(move || {
            if rmdir {
                fs.rmdir(dir, &name)
            } else {
                fs.remove(dir, &name)
            }
        })
        .await
    }

    async fn rename<'a>(
        &self,
        from_dirid: &FileHandleU64,
        from_filename: &filename3<'a>,
        to_dirid: &FileHandleU64,
        to_filename: &filename3<'a>,
    ) -> Result<(), nfsstat3> {
        let (fd, td) = (from_dirid.as_u64(), to_dirid.as_u64());
        let (from, to) = (name_str(from_filename)?, name_str(to_filename)?);
        let fs = self.fs.clone();
        blocking(move || fs.rename(fd, &from, td, &to)).await
    }

    async fn symlink<'a>(
        &self,
        dirid: &FileHandleU64,
        linkname: &filename3<'a>,
        symlink: &nfspath3<'a>,
        attr: &sattr3,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let dir = dirid.as_u64();
        let name = name_str(linkname)?;
        let target = std::str::from_utf8(symlink.as_ref())
            .map_err(|_| nfsstat3::NFS3ERR_INVAL)?
            .to_string();
        let mut sa = set_attrs(attr);
        if let Some(Hint::Owner(uid, gid)) = self.take_hint(dir, linkname.as_ref()) {
            // Root's explicit owner in the call's attributes is kept.
            sa.uid = sa.uid.filter(|_| uid == Some(0)).or(uid);
            sa.gid = sa.gid.filter(|_| uid == Some(0)).or(gid);
        }
        let fs = self.fs.clone();
        let a = blocking(move || fs.symlink(dir, &name, &target, &sa)).await?;
        Ok((FileHandleU64::new(a.ino), fattr(&a)))
    }

    async fn commit(&self, id: &FileHandleU64, _offset: u64, _count: u32) -> Result<(), nfsstat3> {
        self.flush(id.as_u64()).await
    }
}

/// `fileid3` of a handle (for logs and the front).
pub fn handle_ino(h: &FileHandleU64) -> fileid3 {
    h.as_u64()
}
