//! The file-system view's error type: its own refusals (the ones NFS has a status for) and,
//! wrapped, everything the object layer below can report. tm-nfs maps it to NFS status codes
//! in one place (`tm_nfs::vfs::nfs_status`).

use crate::db::TxError;
use crate::StorageError;

/// Everything that can go wrong in the file-system view.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The named share does not exist.
    #[error("no such share")]
    NoSuchShare,
    /// The name already exists (guarded/exclusive create, mkdir, share create).
    #[error("already exists")]
    Exists,
    /// A directory was expected.
    #[error("not a directory")]
    NotADirectory,
    /// The operation does not apply to a directory.
    #[error("is a directory")]
    IsADirectory,
    /// The directory still has entries.
    #[error("directory not empty")]
    DirectoryNotEmpty,
    /// The inode no longer exists (removed, or its object was deleted).
    #[error("stale file handle")]
    Stale,
    /// The share is read-only.
    #[error("read-only share")]
    ReadOnly,
    /// The name is `.`/`..`, empty, not UTF-8, or contains `/` or NUL.
    #[error("invalid file name")]
    InvalidName,
    /// The resulting key would exceed 1024 bytes.
    #[error("name too long")]
    NameTooLong,
    /// A directory cookie that this store never issued.
    #[error("bad directory cookie")]
    BadCookie,
    /// The operation would move a directory into itself, or similar.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// The file would be larger than [`crate::fs::MAX_FILE_SIZE`].
    #[error("file too large")]
    FileTooBig,
    /// A refusal or failure of the object layer (bucket, key, quota, I/O, ...).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl FsError {
    /// True for machine failures (as opposed to refusals of a request).
    pub fn is_failure(&self) -> bool {
        matches!(self, FsError::Storage(e) if e.is_failure())
    }
}

impl TxError for FsError {
    fn is_failure(&self) -> bool {
        FsError::is_failure(self)
    }
}

macro_rules! via_storage {
    ($($t:ty),*) => {$(
        impl From<$t> for FsError {
            fn from(e: $t) -> Self {
                FsError::Storage(StorageError::from(e))
            }
        }
    )*};
}
via_storage!(
    std::io::Error,
    serde_json::Error,
    redb::StorageError,
    redb::TableError
);
