//! The two-layer file-system state, without FUSE: what a program sees (the volatile layer) and
//! what would be on the disk after a power cut (the durable layer).
//!
//! The durability model (conservative, stricter than ext4 with `data=ordered`):
//!
//! - Every change (write, truncate, create, mkdir, rename, link, unlink, rmdir, chmod) lands in
//!   the volatile layer only.
//! - `fsync`/`fdatasync` of a file makes that file's bytes, size and mode durable, not its name.
//! - A write through a handle opened with `O_SYNC` or `O_DSYNC` is durable when it returns (as
//!   if followed by `fdatasync`; `O_DIRECT` alone is not: a device cache may still hold it).
//! - `fsync` of a directory makes its entries (names → inodes) durable, nothing about the
//!   inodes they name: a file created, written and named durably but never fsynced comes back
//!   empty (the zero-length-file outcome of delayed allocation).
//! - A power cut discards the volatile layer. With torn cuts, every unsynced 4 KiB page of a
//!   file and every unsynced directory entry change is independently kept or lost (write-back
//!   may have started on any of them), so a cut can also leave a torn mixture.
//! - After a cut every operation fails with `EIO` until the state is revived (the mount is
//!   replaced: no page cache of the old one survives).
//!
//! Inode numbers survive a cut, as on a real file system.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// Unit of torn write-back.
pub const PAGE: u64 = 4096;
/// Inode number of the root directory.
pub const ROOT: u64 = 1;

/// Errors are errnos: what the FUSE layer answers.
pub type Res<T> = Result<T, i32>;

/// Kind of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
}

/// What `stat` shows.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes (entries for a directory).
    pub size: u64,
    /// Permission bits.
    pub perm: u32,
    /// Links (volatile view).
    pub nlink: u32,
    /// Last change of data or entries.
    pub mtime: SystemTime,
}

#[derive(Clone, Debug)]
struct Inode {
    kind: Kind,
    perm: u32,
    dur_perm: u32,
    mtime: SystemTime,
    /// File bytes as programs see them, and as the disk has them.
    data: Vec<u8>,
    dur_data: Vec<u8>,
    /// Pages of `data` changed since the last sync.
    dirty: BTreeSet<u64>,
    /// Directory entries, volatile and durable.
    entries: BTreeMap<OsString, u64>,
    dur_entries: BTreeMap<OsString, u64>,
    /// Volatile link count.
    nlink: u32,
}

impl Inode {
    fn new(kind: Kind, perm: u32) -> Inode {
        Inode {
            kind,
            perm,
            dur_perm: perm,
            mtime: SystemTime::now(),
            data: Vec::new(),
            dur_data: Vec::new(),
            dirty: BTreeSet::new(),
            entries: BTreeMap::new(),
            dur_entries: BTreeMap::new(),
            nlink: 0,
        }
    }

    fn mark(&mut self, from: u64, to: u64) {
        if to > from {
            self.dirty.extend(from / PAGE..=(to - 1) / PAGE);
        }
    }

    fn sync_data(&mut self) -> u64 {
        let mut n = 0;
        self.dur_data.resize(self.data.len(), 0);
        for p in std::mem::take(&mut self.dirty) {
            let a = (p * PAGE) as usize;
            if a >= self.data.len() {
                continue;
            }
            let b = (a + PAGE as usize).min(self.data.len());
            self.dur_data[a..b].copy_from_slice(&self.data[a..b]);
            n += (b - a) as u64;
        }
        self.dur_perm = self.perm;
        n
    }
}

/// An open file: whether its writes are synchronous.
#[derive(Clone, Copy, Debug)]
struct Handle {
    sync: bool,
}

/// Counters of what the state saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// `fsync`/`fdatasync` calls on files.
    pub fsyncs: u64,
    /// `fsync` calls on directories.
    pub dir_fsyncs: u64,
    /// Writes through `O_SYNC`/`O_DSYNC` handles.
    pub sync_writes: u64,
    /// Bytes made durable.
    pub durable_bytes: u64,
    /// Power cuts.
    pub cuts: u64,
    /// Unsynced pages lost by cuts (kept pages of torn cuts not counted).
    pub lost_pages: u64,
    /// Unsynced directory entry changes lost by cuts.
    pub lost_entries: u64,
}

/// Small deterministic generator (xorshift64*) for torn cuts.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The whole file system.
#[derive(Debug)]
pub struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    dead: bool,
    stats: Stats,
}

impl Default for State {
    fn default() -> State {
        State::new()
    }
}

impl State {
    /// An empty file system (a root directory, durable).
    pub fn new() -> State {
        let mut root = Inode::new(Kind::Dir, 0o755);
        root.nlink = 2;
        State {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            dead: false,
            stats: Stats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether the power is off (every operation fails).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    fn live(&self) -> Res<()> {
        if self.dead {
            Err(libc::EIO)
        } else {
            Ok(())
        }
    }

    fn node(&self, ino: u64) -> Res<&Inode> {
        self.live()?;
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Res<&mut Inode> {
        self.live()?;
        self.inodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir_mut(&mut self, ino: u64) -> Res<&mut Inode> {
        let n = self.node_mut(ino)?;
        if n.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(n)
    }

    /// Attributes of an inode.
    pub fn getattr(&self, ino: u64) -> Res<Attr> {
        let n = self.node(ino)?;
        Ok(Attr {
            ino,
            kind: n.kind,
            size: match n.kind {
                Kind::File => n.data.len() as u64,
                Kind::Dir => n.entries.len() as u64,
            },
            perm: n.perm,
            nlink: n.nlink,
            mtime: n.mtime,
        })
    }

    /// The inode a name in a directory names.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Res<Attr> {
        let p = self.node(parent)?;
        if p.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        let ino = *p.entries.get(name).ok_or(libc::ENOENT)?;
        self.getattr(ino)
    }

    /// Change permission bits and/or size (`handle`: the file handle the change came through).
    pub fn setattr(
        &mut self,
        ino: u64,
        perm: Option<u32>,
        size: Option<u64>,
        handle: Option<u64>,
    ) -> Res<Attr> {
        let sync = handle
            .and_then(|h| self.handles.get(&h))
            .is_some_and(|h| h.sync);
        let n = self.node_mut(ino)?;
        if let Some(p) = perm {
            n.perm = p & 0o7777;
        }
        if let Some(size) = size {
            if n.kind == Kind::Dir {
                return Err(libc::EISDIR);
            }
            let old = n.data.len() as u64;
            n.data.resize(size as usize, 0);
            n.mark(old.min(size), old.max(size));
            n.mtime = SystemTime::now();
            if sync {
                let b = n.sync_data();
                self.stats.durable_bytes += b;
            }
        }
        self.getattr(ino)
    }

    fn link_into(&mut self, parent: u64, name: &OsStr, ino: u64) -> Res<()> {
        let p = self.dir_mut(parent)?;
        if p.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        p.entries.insert(name.to_owned(), ino);
        p.mtime = SystemTime::now();
        Ok(())
    }

    /// Create a file or directory named `name` in `parent`.
    pub fn create(&mut self, parent: u64, name: &OsStr, kind: Kind, perm: u32) -> Res<Attr> {
        if self.dir_mut(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        if name.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut n = Inode::new(kind, perm & 0o7777);
        n.nlink = if kind == Kind::Dir { 2 } else { 1 };
        self.inodes.insert(ino, n);
        self.link_into(parent, name, ino)?;
        if kind == Kind::Dir {
            self.node_mut(parent)?.nlink += 1;
        }
        self.getattr(ino)
    }

    /// A new hard link to a file.
    pub fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> Res<Attr> {
        if self.node(ino)?.kind == Kind::Dir {
            return Err(libc::EPERM);
        }
        self.link_into(parent, name, ino)?;
        self.node_mut(ino)?.nlink += 1;
        self.getattr(ino)
    }

    /// Remove a name (`dir`: rmdir semantics).
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        let ino = *self
            .dir_mut(parent)?
            .entries
            .get(name)
            .ok_or(libc::ENOENT)?;
        let n = self.node(ino)?;
        match (n.kind, dir) {
            (Kind::Dir, false) => return Err(libc::EISDIR),
            (Kind::File, true) => return Err(libc::ENOTDIR),
            (Kind::Dir, true) if !n.entries.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        let p = self.dir_mut(parent)?;
        p.entries.remove(name);
        p.mtime = SystemTime::now();
        if dir {
            p.nlink -= 1;
            self.node_mut(ino)?.nlink = 0;
        } else {
            let n = self.node_mut(ino)?;
            n.nlink = n.nlink.saturating_sub(1);
        }
        Ok(())
    }

    /// Rename (`noreplace`: fail if the target exists).
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> Res<()> {
        let ino = *self
            .dir_mut(parent)?
            .entries
            .get(name)
            .ok_or(libc::ENOENT)?;
        let kind = self.node(ino)?.kind;
        if let Some(&old) = self.dir_mut(newparent)?.entries.get(newname) {
            if old == ino {
                return Ok(());
            }
            if noreplace {
                return Err(libc::EEXIST);
            }
            let o = self.node(old)?;
            match (o.kind, kind) {
                (Kind::Dir, Kind::File) => return Err(libc::EISDIR),
                (Kind::File, Kind::Dir) => return Err(libc::ENOTDIR),
                (Kind::Dir, Kind::Dir) if !o.entries.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            self.remove(newparent, newname, kind == Kind::Dir)?;
        }
        let p = self.dir_mut(parent)?;
        p.entries.remove(name);
        p.mtime = SystemTime::now();
        if kind == Kind::Dir {
            p.nlink -= 1;
            self.dir_mut(newparent)?.nlink += 1;
        }
        self.link_into(newparent, newname, ino)
    }

    /// Directory entries (name, inode, kind), sorted by name.
    pub fn readdir(&self, ino: u64) -> Res<Vec<(OsString, u64, Kind)>> {
        let n = self.node(ino)?;
        if n.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(n.entries
            .iter()
            .map(|(name, &i)| {
                let k = self.inodes.get(&i).map_or(Kind::File, |c| c.kind);
                (name.clone(), i, k)
            })
            .collect())
    }

    /// Open a file; `sync`: opened with `O_SYNC` or `O_DSYNC`. Returns the handle.
    pub fn open(&mut self, ino: u64, sync: bool) -> Res<u64> {
        self.node(ino)?;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { sync });
        Ok(fh)
    }

    /// Close a handle.
    pub fn release(&mut self, fh: u64) {
        self.handles.remove(&fh);
    }

    /// Read up to `size` bytes at `off`.
    pub fn read(&self, ino: u64, off: u64, size: u32) -> Res<Vec<u8>> {
        let n = self.node(ino)?;
        if n.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        let len = n.data.len() as u64;
        let a = off.min(len) as usize;
        let b = off.saturating_add(u64::from(size)).min(len) as usize;
        Ok(n.data[a..b].to_vec())
    }

    /// Write `data` at `off` through handle `fh`.
    pub fn write(&mut self, ino: u64, fh: u64, off: u64, data: &[u8]) -> Res<u32> {
        let sync = self.handles.get(&fh).is_some_and(|h| h.sync);
        let n = self.node_mut(ino)?;
        if n.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        let end = off.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        if end > 1 << 40 {
            return Err(libc::EFBIG);
        }
        if n.data.len() < end as usize {
            let old = n.data.len() as u64;
            n.data.resize(end as usize, 0);
            n.mark(old, off);
        }
        n.data[off as usize..end as usize].copy_from_slice(data);
        n.mark(off, end);
        n.mtime = SystemTime::now();
        if sync {
            let b = n.sync_data();
            self.stats.sync_writes += 1;
            self.stats.durable_bytes += b;
        }
        Ok(data.len() as u32)
    }

    /// Preallocate (mode 0 only: extend the size).
    pub fn fallocate(&mut self, ino: u64, off: u64, len: u64, mode: i32) -> Res<()> {
        if mode != 0 {
            return Err(libc::EOPNOTSUPP);
        }
        let n = self.node_mut(ino)?;
        let end = off.saturating_add(len);
        if end > 1 << 40 {
            return Err(libc::EFBIG);
        }
        if (n.data.len() as u64) < end {
            let old = n.data.len() as u64;
            n.data.resize(end as usize, 0);
            n.mark(old, end);
        }
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file: its bytes, size and mode become durable.
    pub fn fsync(&mut self, ino: u64) -> Res<()> {
        let n = self.node_mut(ino)?;
        if n.kind == Kind::Dir {
            return self.fsyncdir(ino);
        }
        let b = n.sync_data();
        self.stats.fsyncs += 1;
        self.stats.durable_bytes += b;
        Ok(())
    }

    /// `fsync` of a directory: its entries become durable.
    pub fn fsyncdir(&mut self, ino: u64) -> Res<()> {
        let n = self.dir_mut(ino)?;
        n.dur_entries = n.entries.clone();
        n.dur_perm = n.perm;
        self.stats.dir_fsyncs += 1;
        Ok(())
    }

    /// Cut the power: the durable layer (with `torn`, plus a random part of the unsynced
    /// changes) becomes the only state, and every operation fails until [`State::revive`].
    pub fn cut(&mut self, mut torn: Option<&mut Rng>) {
        self.stats.cuts += 1;
        self.dead = true;
        self.handles.clear();
        let mut inos: Vec<u64> = self.inodes.keys().copied().collect();
        inos.sort_unstable(); // deterministic for a given seed
        for ino in inos {
            let n = self.inodes.get_mut(&ino).expect("listed");
            for p in std::mem::take(&mut n.dirty) {
                let a = (p * PAGE) as usize;
                let keep = a < n.data.len() && torn.as_mut().is_some_and(|r| r.coin());
                if !keep {
                    self.stats.lost_pages += 1;
                    continue;
                }
                let b = (a + PAGE as usize).min(n.data.len());
                if n.dur_data.len() < b {
                    n.dur_data.resize(b, 0);
                }
                n.dur_data[a..b].copy_from_slice(&n.data[a..b]);
            }
            n.data = n.dur_data.clone();
            n.perm = n.dur_perm;
            if n.kind == Kind::Dir {
                let mut names: BTreeSet<&OsString> = n.entries.keys().collect();
                names.extend(n.dur_entries.keys());
                let mut out = n.dur_entries.clone();
                for name in names {
                    let (v, d) = (n.entries.get(name), n.dur_entries.get(name));
                    if v == d {
                        continue;
                    }
                    if torn.as_mut().is_some_and(|r| r.coin()) {
                        match v {
                            Some(&i) => out.insert(name.clone(), i),
                            None => out.remove(name),
                        };
                    } else {
                        self.stats.lost_entries += 1;
                    }
                }
                n.dur_entries = out.clone();
                n.entries = out;
            }
        }
        self.collect();
    }

    /// Drop inodes no durable directory reaches; recount links.
    fn collect(&mut self) {
        let mut links: HashMap<u64, u32> = HashMap::new();
        let mut seen = BTreeSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(d) = todo.pop() {
            let Some(n) = self.inodes.get(&d) else {
                continue;
            };
            for &c in n.entries.values() {
                *links.entry(c).or_default() += 1;
                let Some(cn) = self.inodes.get(&c) else {
                    continue;
                };
                // A directory reached twice (a torn rename) is kept once.
                if cn.kind == Kind::Dir && seen.insert(c) {
                    todo.push(c);
                } else if cn.kind == Kind::File {
                    seen.insert(c);
                }
            }
        }
        self.inodes.retain(|i, _| seen.contains(i));
        // Names of inodes dropped above (a directory entry naming a lost inode) go too.
        let alive: BTreeSet<u64> = self.inodes.keys().copied().collect();
        for n in self.inodes.values_mut() {
            n.entries.retain(|_, i| alive.contains(i));
            n.dur_entries = n.entries.clone();
        }
        let dirs: HashMap<u64, u32> = self
            .inodes
            .iter()
            .map(|(&i, n)| {
                let subdirs = n
                    .entries
                    .values()
                    .filter(|c| self.inodes.get(c).is_some_and(|c| c.kind == Kind::Dir))
                    .count() as u32;
                (i, subdirs)
            })
            .collect();
        for (i, n) in self.inodes.iter_mut() {
            n.nlink = match n.kind {
                Kind::Dir => 2 + dirs[i],
                Kind::File => links.get(i).copied().unwrap_or(0),
            };
        }
    }

    /// Power back on: the durable state is served again.
    pub fn revive(&mut self) {
        self.dead = false;
    }

    /// Total bytes in the volatile layer's files (for tests and logs).
    pub fn bytes(&self) -> u64 {
        self.inodes.values().map(|n| n.data.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn cut_and_revive(s: &mut State, torn: Option<&mut Rng>) {
        s.cut(torn);
        assert_eq!(
            s.getattr(ROOT).map(|_| ()),
            Err(libc::EIO),
            "dead after a cut"
        );
        s.revive();
    }

    #[test]
    fn unsynced_writes_and_names_are_lost() {
        let mut s = State::new();
        let f = s
            .create(ROOT, os("a"), Kind::File, 0o644)
            .expect("create")
            .ino;
        let h = s.open(f, false).expect("open");
        s.write(f, h, 0, b"hello").expect("write");
        cut_and_revive(&mut s, None);
        assert_eq!(s.lookup(ROOT, os("a")).err(), Some(libc::ENOENT));
    }

    #[test]
    fn file_fsync_keeps_bytes_but_not_the_name_without_a_dir_fsync() {
        let mut s = State::new();
        let f = s
            .create(ROOT, os("a"), Kind::File, 0o644)
            .expect("create")
            .ino;
        let h = s.open(f, false).expect("open");
        s.write(f, h, 0, b"hello").expect("write");
        s.fsync(f).expect("fsync");
        cut_and_revive(&mut s, None);
        assert_eq!(s.lookup(ROOT, os("a")).err(), Some(libc::ENOENT));

        let f = s
            .create(ROOT, os("b"), Kind::File, 0o644)
            .expect("create")
            .ino;
        let h = s.open(f, false).expect("open");
        s.write(f, h, 0, b"hello").expect("write");
        s.fsyncdir(ROOT).expect("fsync dir");
        cut_and_revive(&mut s, None);
        let a = s.lookup(ROOT, os("b")).expect("named durably");
        assert_eq!(a.size, 0, "bytes never synced come back empty");

        let h = s.open(f, false).expect("open");
        s.write(f, h, 0, b"hello world").expect("write");
        s.fsync(f).expect("fsync");
        s.write(f, h, 6, b"WORLD").expect("write");
        cut_and_revive(&mut s, None);
        assert_eq!(s.read(f, 0, 100).expect("read"), b"hello world");
    }

    #[test]
    fn sync_handles_write_through_and_renames_need_the_dir_fsync() {
        let mut s = State::new();
        let f = s
            .create(ROOT, os("t"), Kind::File, 0o644)
            .expect("create")
            .ino;
        s.fsyncdir(ROOT).expect("fsync dir");
        let h = s.open(f, true).expect("open O_DSYNC");
        s.write(f, h, 0, b"log record").expect("write");
        s.rename(ROOT, os("t"), ROOT, os("u"), false)
            .expect("rename");
        cut_and_revive(&mut s, None);
        assert_eq!(s.lookup(ROOT, os("u")).err(), Some(libc::ENOENT));
        let a = s.lookup(ROOT, os("t")).expect("old name");
        assert_eq!(s.read(a.ino, 0, 100).expect("read"), b"log record");
        assert_eq!(s.stats().sync_writes, 1);
    }

    #[test]
    fn torn_cuts_keep_a_seeded_subset_of_pages() {
        let mut kept_some = false;
        let mut lost_some = false;
        for seed in 0..16 {
            let mut s = State::new();
            let f = s
                .create(ROOT, os("f"), Kind::File, 0o644)
                .expect("create")
                .ino;
            s.fsyncdir(ROOT).expect("fsync dir");
            let h = s.open(f, false).expect("open");
            s.write(f, h, 0, &vec![1u8; 4 * PAGE as usize])
                .expect("write");
            s.fsync(f).expect("fsync");
            s.write(f, h, 0, &vec![2u8; 4 * PAGE as usize])
                .expect("write");
            cut_and_revive(&mut s, Some(&mut Rng::new(seed)));
            let d = s.read(f, 0, 1 << 20).expect("read");
            assert_eq!(d.len(), 4 * PAGE as usize);
            for p in d.chunks(PAGE as usize) {
                assert!(p.iter().all(|&b| b == p[0]), "pages are kept or lost whole");
                kept_some |= p[0] == 2;
                lost_some |= p[0] == 1;
            }
        }
        assert!(kept_some && lost_some);
    }

    #[test]
    fn unreachable_inodes_are_collected_and_directories_need_their_parent_synced() {
        let mut s = State::new();
        let d = s
            .create(ROOT, os("d"), Kind::Dir, 0o755)
            .expect("mkdir")
            .ino;
        let f = s.create(d, os("f"), Kind::File, 0o644).expect("create").ino;
        s.fsyncdir(d).expect("fsync d");
        cut_and_revive(&mut s, None);
        assert_eq!(s.lookup(ROOT, os("d")).err(), Some(libc::ENOENT));
        assert_eq!(s.getattr(f).err(), Some(libc::ENOENT));
        assert_eq!(s.getattr(d).err(), Some(libc::ENOENT));
        assert_eq!(s.getattr(ROOT).expect("root").nlink, 2);
    }

    #[test]
    fn namespace_errors() {
        let mut s = State::new();
        let d = s
            .create(ROOT, os("d"), Kind::Dir, 0o755)
            .expect("mkdir")
            .ino;
        s.create(d, os("f"), Kind::File, 0o644).expect("create");
        assert_eq!(
            s.create(d, os("f"), Kind::File, 0o644).err(),
            Some(libc::EEXIST)
        );
        assert_eq!(s.remove(ROOT, os("d"), true).err(), Some(libc::ENOTEMPTY));
        assert_eq!(s.remove(ROOT, os("d"), false).err(), Some(libc::EISDIR));
        assert_eq!(
            s.rename(d, os("f"), ROOT, os("d"), false).err(),
            Some(libc::EISDIR)
        );
        s.remove(d, os("f"), false).expect("unlink");
        s.remove(ROOT, os("d"), true).expect("rmdir");
        assert!(s.readdir(ROOT).expect("readdir").is_empty());
    }
}
