//! Where coordinator state lives: a whole-state snapshot behind [`StateStore`]. [`FileStore`]
//! writes a file atomically (temp, fsync, rename, fsync dir); [`MemStore`] is for tests.
//! The daemon keeps it in the object store's `_tunnelmesh` bucket. Each store also keeps the
//! append-only audit log of identity changes.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::Error;

/// A place to keep one opaque snapshot of the coordinator state.
pub trait StateStore: Send + Sync {
    /// The last saved snapshot, or `None` if nothing was ever saved.
    fn load(&self) -> Result<Option<Vec<u8>>, Error>;
    /// Replaces the snapshot durably (returns only once it survives a crash).
    fn save(&self, bytes: &[u8]) -> Result<(), Error>;
    /// Appends one audit entry (a JSON document) durably.
    fn append_audit(&self, entry: &[u8]) -> Result<(), Error> {
        let _ = entry;
        Err(Error::State("this state store keeps no audit log".into()))
    }
    /// Every audit entry appended so far, oldest first.
    fn load_audit(&self) -> Result<Vec<Vec<u8>>, Error> {
        Ok(Vec::new())
    }
}

/// A snapshot in one file (mode 0600: it holds S3 secrets).
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store at `path` (its parent directory must exist or be creatable).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl StateStore for FileStore {
    fn load(&self) -> Result<Option<Vec<u8>>, Error> {
        match fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", self.path.display()), e)),
        }
    }

    fn save(&self, bytes: &[u8]) -> Result<(), Error> {
        write_atomic(&self.path, bytes, 0o600)
    }

    /// One JSON line per entry in `audit.jsonl` next to the state file (mode 0600, fsynced).
    fn append_audit(&self, entry: &[u8]) -> Result<(), Error> {
        let p = self.audit_path();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| Error::io(format!("open {}", p.display()), e))?;
        let mut line = entry.to_vec();
        line.push(b'\n');
        f.write_all(&line)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io(format!("append to {}", p.display()), e))
    }

    fn load_audit(&self) -> Result<Vec<Vec<u8>>, Error> {
        let p = self.audit_path();
        match fs::read(&p) {
            Ok(b) => Ok(b
                .split(|c| *c == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
        }
    }
}

impl FileStore {
    fn audit_path(&self) -> PathBuf {
        self.path.with_file_name("audit.jsonl")
    }
}

/// Writes `bytes` to `path` atomically with permissions `mode`: temp file, fsync, rename,
/// fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let ctx = |what: &str| format!("{what} {}", path.display());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(ctx("create parent of"), e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io(ctx("create temp for"), e))?;
        f.write_all(bytes).map_err(|e| Error::io(ctx("write"), e))?;
        f.sync_all().map_err(|e| Error::io(ctx("fsync"), e))?;
    }
    fs::rename(&tmp, path).map_err(|e| Error::io(ctx("rename into"), e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(ctx("fsync directory of"), e))?;
    Ok(())
}

/// An in-memory store; clones share the same snapshot (so a "restart" can reopen it).
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Option<Vec<u8>>>>,
    audit: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StateStore for MemStore {
    fn load(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.inner.lock().expect("MemStore lock poisoned").clone())
    }

    fn save(&self, bytes: &[u8]) -> Result<(), Error> {
        *self.inner.lock().expect("MemStore lock poisoned") = Some(bytes.to_vec());
        Ok(())
    }

    fn append_audit(&self, entry: &[u8]) -> Result<(), Error> {
        self.audit
            .lock()
            .expect("MemStore lock poisoned")
            .push(entry.to_vec());
        Ok(())
    }

    fn load_audit(&self) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self.audit.lock().expect("MemStore lock poisoned").clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn file_store_roundtrip_and_mode() {
        let dir = std::env::temp_dir().join(format!("tm-coord-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = FileStore::new(dir.join("sub/state.json"));
        assert_eq!(s.load().expect("load"), None);
        s.save(b"one").expect("save");
        s.save(b"two").expect("save");
        assert_eq!(s.load().expect("load").as_deref(), Some(&b"two"[..]));
        let mode = fs::metadata(s.path()).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.join("sub/state.json.tmp").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
