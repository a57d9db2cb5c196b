//! Directory listings (with resumable cookies), space figures and write checks.

use std::ops::Bound;

use super::inode::*;
use super::share::{ShareRec, SHARES};
use super::*;
use crate::db::ReadTable as _;
use crate::object::meta::*;
use crate::StorageError;

impl FileSystem {
    /// Up to `max` entries of directory `dir` after `cookie` (0 = from the start, with `.` and
    /// `..`): `(entries, eof)`.
    pub fn readdir(
        &self,
        dir: u64,
        cookie: u64,
        max: usize,
    ) -> Result<(Vec<DirEntry>, bool), FsError> {
        let d = self.resolve_dir(dir)?;
        let share = d.rec.share.clone();
        let mut out = Vec::new();
        if cookie == 0 {
            out.push(DirEntry {
                name: ".".into(),
                cookie: COOKIE_DOT,
                attr: attr_of(dir, &d.rec, &d.node),
            });
        }
        if cookie <= COOKIE_DOT {
            let mut a = self.attr_at(&share, parent_of(&d.rec.path))?;
            if d.rec.path.is_empty() {
                a = attr_of(dir, &d.rec, &d.node);
            }
            out.push(DirEntry {
                name: "..".into(),
                cookie: COOKIE_DOTDOT,
                attr: a,
            });
        }
        let prefix = if d.rec.path.is_empty() {
            obj_key(&share, "")
        } else {
            obj_key(&share, &format!("{}/", d.rec.path))
        };
        let mut last: Option<String> = None;
        let mut start: Bound<String> = Bound::Included(prefix.clone());
        if cookie > COOKIE_DOTDOT {
            let rtx = self.store.view()?;
            let r = get_inode(&rtx.open_table(FS_INODES)?, cookie)?.ok_or(FsError::BadCookie)?;
            if r.share != share {
                return Err(FsError::BadCookie);
            }
            let name = last_name(&r.path).to_string();
            start = Bound::Excluded(format!("{prefix}{name}"));
            last = Some(name);
        }
        // (name, node) of the page, in key order.
        let mut found: Vec<(String, Node)> = Vec::new();
        let mut eof = true;
        let want = max.saturating_sub(out.len()).max(1);
        {
            let rtx = self.store.view()?;
            let objects = rtx.open_table(OBJECTS)?;
            'scan: loop {
                let range = objects.range::<&str>((
                    match &start {
                        Bound::Included(s) => Bound::Included(s.as_str()),
                        Bound::Excluded(s) => Bound::Excluded(s.as_str()),
                        Bound::Unbounded => Bound::Unbounded,
                    },
                    Bound::Unbounded,
                ))?;
                for e in range {
                    let (k, v) = e?;
                    let key = k.value();
                    if !key.starts_with(&prefix) {
                        break 'scan;
                    }
                    let rest = &key[prefix.len()..];
                    if rest.is_empty() {
                        continue;
                    }
                    let (name, is_dir) = match rest.find('/') {
                        Some(i) => (&rest[..i], true),
                        None => (rest, false),
                    };
                    let dup = last.as_deref() == Some(name);
                    let valid = check_name(name).is_ok();
                    if !dup && valid {
                        if found.len() >= want {
                            eof = false;
                            break 'scan;
                        }
                        let node = if is_dir {
                            Node::Dir { marker: None }
                        } else {
                            node_of(serde_json::from_slice(v.value())?)
                        };
                        found.push((name.to_string(), node));
                        last = Some(name.to_string());
                    }
                    if is_dir {
                        // Skip everything below this subdirectory.
                        start = Bound::Included(format!("{prefix}{name}0"));
                        continue 'scan;
                    }
                }
                break;
            }
        }
        // Inodes for the entries (allocating the missing ones in one transaction).
        let dir_path = d.rec.path.clone();
        let mut inos: Vec<Option<(u64, InodeRec)>> = Vec::with_capacity(found.len());
        {
            let rtx = self.store.view()?;
            let paths = rtx.open_table(FS_PATHS)?;
            let inodes = rtx.open_table(FS_INODES)?;
            for (name, _) in &found {
                let pk = obj_key(&share, &join(&dir_path, name));
                let got = match paths.get(pk.as_str())? {
                    Some(v) => get_inode(&inodes, v.value())?.map(|r| (v.value(), r)),
                    None => None,
                };
                inos.push(got);
            }
        }
        let missing: Vec<InodeRec> = found
            .iter()
            .zip(&inos)
            .filter(|(_, i)| i.is_none())
            .map(|((name, node), _)| default_rec(&share, &join(&dir_path, name), node))
            .collect();
        if !missing.is_empty() {
            let recs = missing.clone();
            let new = self.store.txn_as(move |wtx, _| {
                let mut v = Vec::new();
                for r in recs {
                    v.push(alloc_ino(wtx, r)?);
                }
                Ok::<_, FsError>(v)
            })?;
            let mut it = new.into_iter().zip(missing);
            for slot in inos.iter_mut().filter(|s| s.is_none()) {
                *slot = it.next();
            }
        }
        for ((name, node), ino) in found.into_iter().zip(inos) {
            let (ino, rec) = ino.expect("every entry has an inode after allocation");
            let mut attr = attr_of(ino, &rec, &node);
            self.overlay(&mut attr);
            out.push(DirEntry {
                name,
                cookie: ino,
                attr,
            });
        }
        Ok((out, eof))
    }

    /// Space and object figures of the share holding `ino`.
    pub fn fsstat(&self, ino: u64) -> Result<FsStat, FsError> {
        let (share, _) = self.share_of(ino)?;
        let rtx = self.store.view()?;
        let b: BucketRec =
            get_json(&rtx.open_table(BUCKETS)?, &share)?.ok_or(StorageError::NoSuchBucket)?;
        let total_used = rtx
            .open_table(STATS)?
            .get("bytes")?
            .map_or(0, |v| v.value());
        let nominal: u64 = 1 << 50;
        let by_quota = b.quota.map(|q| (q, q.saturating_sub(b.bytes)));
        let by_max = self
            .store
            .max_size()
            .map(|m| (m, m.saturating_sub(total_used)));
        let (total, free) = match (by_quota, by_max) {
            (Some(q), Some(m)) => (q.0.min(m.0), q.1.min(m.1)),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => (nominal, nominal.saturating_sub(b.bytes)),
        };
        Ok(FsStat {
            total_bytes: total,
            free_bytes: free,
            files: b.objects,
        })
    }

    /// Everything a WRITE must know before it is buffered, in one read transaction: the
    /// file's attributes and how many bytes its share may still grow by (`None` = unlimited).
    /// `ReadOnly`, `IsADirectory`, `Invalid` (symlink) and `Stale` refuse the write.
    pub fn write_check(&self, ino: u64) -> Result<(FileAttr, Option<u64>), FsError> {
        let (mut a, room, _) = self.check_write(ino)?;
        self.overlay(&mut a);
        Ok((a, room))
    }

    /// `write_check` without the staged-write overlay, plus the object key of the file.
    pub(super) fn check_write(&self, ino: u64) -> Result<(FileAttr, Option<u64>, String), FsError> {
        let rtx = self.store.view()?;
        let rec = get_inode(&rtx.open_table(FS_INODES)?, ino)?.ok_or(FsError::Stale)?;
        if rec.removed {
            return Err(FsError::Stale);
        }
        let node =
            probe(&rtx.open_table(OBJECTS)?, &rec.share, &rec.path)?.ok_or(FsError::Stale)?;
        match node {
            Node::File(_) => {}
            Node::Dir { .. } => return Err(FsError::IsADirectory),
            Node::Symlink(_) => return Err(FsError::Invalid("write to a symlink")),
        }
        let sh: ShareRec = get_json(&rtx.open_table(SHARES)?, &rec.share)?.ok_or(FsError::Stale)?;
        if sh.read_only {
            return Err(FsError::ReadOnly);
        }
        let b: BucketRec =
            get_json(&rtx.open_table(BUCKETS)?, &rec.share)?.ok_or(StorageError::NoSuchBucket)?;
        let by_quota = b.quota.map(|q| q.saturating_sub(b.bytes));
        let by_max = match self.store.max_size() {
            Some(m) => {
                let used = rtx
                    .open_table(STATS)?
                    .get("bytes")?
                    .map_or(0, |v| v.value());
                Some(m.saturating_sub(used))
            }
            None => None,
        };
        let room = match (by_quota, by_max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok((
            attr_of(ino, &rec, &node),
            room,
            obj_key(&rec.share, &rec.path),
        ))
    }

    /// Bytes a file may still grow by in its share (`None` = unlimited); used to refuse
    /// buffered writes early with a quota error.
    pub fn room(&self, ino: u64) -> Result<Option<u64>, FsError> {
        let st = self.fsstat(ino)?;
        let (share, _) = self.share_of(ino)?;
        let rtx = self.store.view()?;
        let b: BucketRec =
            get_json(&rtx.open_table(BUCKETS)?, &share)?.ok_or(StorageError::NoSuchBucket)?;
        if b.quota.is_none() && self.store.max_size().is_none() {
            return Ok(None);
        }
        Ok(Some(st.free_bytes))
    }
}
