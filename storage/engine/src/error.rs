//! The crate's one error type.

/// Everything that can go wrong in the storage engine.
///
/// Variants up to `Unsupported` are *refusals*: the engine checked the request, stored nothing
/// and changed nothing. `Io`, `Db`, `Corrupt` and `Remote` are *failures* of the machine
/// underneath. The file-system view's own refusals (NFS-shaped: stale handle, not a directory,
/// ...) are in its error type, [`crate::FsError`], which wraps this one.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The named bucket does not exist.
    #[error("no such bucket")]
    NoSuchBucket,
    /// The named object does not exist in the bucket.
    #[error("no such key")]
    NoSuchKey,
    /// A bucket with that name already exists.
    #[error("bucket already exists")]
    BucketExists,
    /// The bucket still holds objects.
    #[error("bucket not empty")]
    BucketNotEmpty,
    /// The bucket name breaks the S3 naming rules.
    #[error("invalid bucket name")]
    InvalidBucketName,
    /// The object key is empty or longer than 1024 bytes.
    #[error("invalid object key")]
    InvalidKey,
    /// The bucket is reserved by the system (`_tunnelmesh`) and cannot be deleted.
    #[error("bucket is reserved")]
    ReservedBucket,
    /// The write would exceed the bucket quota or the global `max_size`; nothing was stored.
    #[error("quota exceeded")]
    QuotaExceeded,
    /// The multipart upload id is unknown (never created, completed or aborted).
    #[error("no such upload")]
    NoSuchUpload,
    /// A part listed in a completion does not exist or its etag does not match.
    #[error("invalid part")]
    InvalidPart,
    /// Parts listed in a completion are not in strictly ascending order (or the list is empty).
    #[error("invalid part order")]
    InvalidPartOrder,
    /// A part other than the last is smaller than 5 MiB.
    #[error("entity too small")]
    EntityTooSmall,
    /// Part number outside 1..=10000.
    #[error("invalid part number")]
    InvalidPartNumber,
    /// A conditional write's condition does not hold (the key exists for `IfAbsent`, or its
    /// ETag differs for `IfMatch`); nothing was written.
    #[error("precondition failed")]
    PreconditionFailed,
    /// The version id names no stored version of the key.
    #[error("no such version")]
    NoSuchVersion,
    /// The version named is a delete marker (it has no data).
    #[error("the version is a delete marker")]
    DeleteMarker,
    /// The object is encrypted with a customer-provided key (SSE-C) and no key was given.
    #[error("the object is encrypted with a customer key; the key is required")]
    KeyRequired,
    /// The customer-provided key is not the one the object (or upload) was encrypted with.
    #[error("the customer key does not match the object's")]
    KeyMismatch,
    /// A customer key was given for an object (or upload) that is not encrypted with one.
    #[error("the encryption parameters are not applicable to this object")]
    NotCustomerEncrypted,
    /// Server-managed encryption (SSE-S3, or sealing every chunk) needs a master key and the
    /// store has none.
    #[error("no master key configured")]
    NoMasterKey,
    /// The object kept changing under a read-modify-write (`write_at`/`truncate`); retry later.
    #[error("concurrent modification")]
    Conflict,
    /// The operation is not supported by this engine or backend.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// Filesystem or backend I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The metadata store failed (redb error text).
    #[error("metadata store error: {0}")]
    Db(String),
    /// Stored data does not match what the metadata says (bad hash, bad record).
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// The remote S3-compatible chunk backend refused a request (`code` is the S3 error code,
    /// e.g. `SignatureDoesNotMatch`, `NoSuchBucket`, `AccessDenied`).
    #[error("remote chunk store answered {status} {code}: {message}")]
    Remote {
        /// HTTP status.
        status: u16,
        /// S3 error code from the XML body (or a name derived from the status for bodiless answers).
        code: String,
        /// S3 error message, if any.
        message: String,
    },
}

impl StorageError {
    /// True for machine failures (as opposed to refusals of a request).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            StorageError::Io(_)
                | StorageError::Db(_)
                | StorageError::Corrupt(_)
                | StorageError::Remote { .. }
        )
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Db(redb::Error::from(e).to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<serde_json::Error> for StorageError {
    fn from(e: serde_json::Error) -> Self {
        StorageError::Corrupt(format!("metadata record: {e}"))
    }
}
