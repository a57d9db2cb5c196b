//! The crate error type and the ONE place that maps errors (ours and the engine's) to S3 codes.

use s3s::{S3Error, S3ErrorCode};
use tm_storage::StorageError;

/// Errors raised by the front layer (authentication, body decoding) and the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request carries no credentials at all.
    #[error("anonymous requests are not allowed")]
    MissingAuth,
    /// The access key is not in the credential table.
    #[error("unknown access key")]
    InvalidAccessKeyId,
    /// The signature (or Basic secret, or Bearer token) does not match.
    #[error("signature does not match")]
    SignatureDoesNotMatch,
    /// A mesh token is known but revoked or expired (the message says which).
    #[error("{0}")]
    TokenRefused(String),
    /// Basic or Bearer credentials that are not valid: a wrong secret for a known access key,
    /// an unknown token (`AccessDenied` with this message; SigV4 keeps AWS's
    /// `SignatureDoesNotMatch`).
    #[error("{0}")]
    CredentialRefused(String),
    /// The seed login (access key = this node name, secret = the mesh token) came from
    /// another address than the node's mesh address.
    #[error("the seed login of node {0} is accepted only from its mesh address")]
    SeedLoginSource(String),
    /// A presigned URL is past its expiry.
    #[error("request has expired")]
    Expired,
    /// The request time differs from ours by more than 15 minutes.
    #[error("request time too skewed")]
    RequestTimeTooSkewed,
    /// The Authorization header / presign query is malformed or uses an unsupported scheme.
    #[error("malformed authorization: {0}")]
    MalformedAuth(String),
    /// The body does not hash to the declared `x-amz-content-sha256`.
    #[error("x-amz-content-sha256 does not match the body")]
    ContentSha256Mismatch,
    /// The body ended before the declared length / final chunk.
    #[error("request body is incomplete")]
    IncompleteBody,
    /// The body (or declared length) exceeds the configured maximum.
    #[error("request body too large")]
    EntityTooLarge,
    /// The request headers are too large.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// The aws-chunked framing is invalid.
    #[error("invalid aws-chunked body: {0}")]
    InvalidChunk(String),
    /// The aws-chunked trailer section is malformed or too large.
    #[error("malformed trailer: {0}")]
    MalformedTrailer(String),
    /// The client sent its request body too slowly.
    #[error("request body arrived too slowly")]
    RequestTimeout,
    /// A declared checksum (`x-amz-checksum-*` header or trailer) does not match the body.
    #[error("the {0} you specified did not match the calculated checksum")]
    BadDigest(&'static str),
    /// `Content-MD5` is empty or not the base64 of 16 bytes.
    #[error("the Content-MD5 you specified is not valid")]
    InvalidDigest,
    /// The request is invalid as a whole (AWS `InvalidRequest`, 400).
    #[error("{0}")]
    InvalidRequest(String),
    /// An argument is invalid (AWS `InvalidArgument`, 400).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request asks for a feature this server does not implement (501 `NotImplemented`).
    #[error("{0}")]
    NotImplemented(String),
    /// ACLs other than `private` / `bucket-owner-full-control` (as AWS buckets with ACLs
    /// disabled answer).
    #[error("the bucket does not allow ACLs")]
    AclNotSupported,
    /// `x-amz-storage-class` is not a storage class.
    #[error("the storage class you specified is not valid")]
    InvalidStorageClass,
    /// `x-amz-expected-bucket-owner` names another owner.
    #[error("access denied")]
    WrongOwner,
    /// A `partNumber` read past the object's parts (416 `InvalidPartNumber`).
    #[error("the requested partnumber is not satisfiable")]
    PartNotSatisfiable,
    /// An XML request body above 20 MiB.
    #[error("your request was too big")]
    MaxMessageLengthExceeded,
    /// A request handler panicked (answered 500 InternalError; the node keeps running).
    #[error("internal error")]
    Internal,
    /// An engine error.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn custom(code: &str, status: http::StatusCode, msg: String) -> S3Error {
    let code: S3ErrorCode = code.parse().unwrap_or(S3ErrorCode::InternalError);
    let mut e = S3Error::with_message(code, msg);
    e.set_status_code(status);
    e
}

/// Maps any crate or engine error to the S3 error answered to the client. `bucket` names the
/// bucket the request addressed (used in messages, e.g. for quotas). This is the only place
/// where error codes are chosen.
#[must_use]
pub fn aws_error(err: Error, bucket: &str) -> S3Error {
    use http::StatusCode as St;
    use S3ErrorCode as C;
    match err {
        Error::MissingAuth => S3Error::with_message(C::AccessDenied, "authentication required"),
        Error::InvalidAccessKeyId => S3Error::with_message(
            C::InvalidAccessKeyId,
            "The AWS Access Key Id you provided does not exist in our records.",
        ),
        Error::SignatureDoesNotMatch => S3Error::with_message(
            C::SignatureDoesNotMatch,
            "The request signature we calculated does not match the signature you provided.",
        ),
        Error::Expired => S3Error::with_message(C::AccessDenied, "Request has expired"),
        Error::TokenRefused(m) | Error::CredentialRefused(m) => {
            S3Error::with_message(C::AccessDenied, m)
        }
        e @ Error::SeedLoginSource(_) => S3Error::with_message(C::AccessDenied, e.to_string()),
        Error::RequestTimeTooSkewed => S3Error::with_message(
            C::RequestTimeTooSkewed,
            "The difference between the request time and the server's time is too large.",
        ),
        Error::MalformedAuth(m) => custom("AuthorizationHeaderMalformed", St::BAD_REQUEST, m),
        Error::ContentSha256Mismatch => custom(
            "XAmzContentSHA256Mismatch",
            St::BAD_REQUEST,
            "The provided 'x-amz-content-sha256' header does not match what was computed.".into(),
        ),
        Error::IncompleteBody => S3Error::with_message(
            C::IncompleteBody,
            "You did not provide the number of bytes specified by the Content-Length HTTP header.",
        ),
        Error::EntityTooLarge => S3Error::with_message(
            C::EntityTooLarge,
            "Your proposed upload exceeds the maximum allowed object size.",
        ),
        Error::HeadersTooLarge => custom(
            "RequestHeaderSectionTooLarge",
            St::BAD_REQUEST,
            "Your request header section exceeds the maximum allowed size.".into(),
        ),
        Error::InvalidChunk(m) => custom("InvalidChunkSizeError", St::BAD_REQUEST, m),
        Error::MalformedTrailer(m) => custom("MalformedTrailerError", St::BAD_REQUEST, m),
        Error::RequestTimeout => S3Error::with_message(
            C::RequestTimeout,
            "Your socket connection to the server was not read from or written to within the timeout period",
        ),
        Error::Internal => S3Error::with_message(C::InternalError, "internal error"),
        e @ Error::BadDigest(_) => S3Error::with_message(C::BadDigest, e.to_string()),
        e @ Error::InvalidDigest => S3Error::with_message(C::InvalidDigest, e.to_string()),
        Error::InvalidRequest(m) => S3Error::with_message(C::InvalidRequest, m),
        Error::InvalidArgument(m) => S3Error::with_message(C::InvalidArgument, m),
        Error::NotImplemented(m) => S3Error::with_message(C::NotImplemented, m),
        Error::AclNotSupported => custom(
            "AccessControlListNotSupported",
            St::BAD_REQUEST,
            "The bucket does not allow ACLs".into(),
        ),
        e @ Error::InvalidStorageClass => {
            S3Error::with_message(C::InvalidStorageClass, e.to_string())
        }
        Error::WrongOwner => S3Error::with_message(C::AccessDenied, "Access Denied"),
        Error::PartNotSatisfiable => custom(
            "InvalidPartNumber",
            St::RANGE_NOT_SATISFIABLE,
            "The requested partnumber is not satisfiable".into(),
        ),
        Error::MaxMessageLengthExceeded => custom(
            "MaxMessageLengthExceeded",
            St::BAD_REQUEST,
            "Your request was too big.".into(),
        ),
        Error::Storage(e) => match e {
            StorageError::NoSuchBucket => S3Error::with_message(
                C::NoSuchBucket,
                format!("The specified bucket does not exist: {bucket}"),
            ),
            StorageError::NoSuchKey => {
                S3Error::with_message(C::NoSuchKey, "The specified key does not exist.")
            }
            StorageError::BucketExists => S3Error::with_message(
                C::BucketAlreadyOwnedByYou,
                format!("Bucket {bucket} already exists"),
            ),
            StorageError::BucketNotEmpty => S3Error::with_message(
                C::BucketNotEmpty,
                format!("The bucket {bucket} you tried to delete is not empty"),
            ),
            StorageError::InvalidBucketName => S3Error::with_message(
                C::InvalidBucketName,
                format!("The specified bucket is not valid: {bucket}"),
            ),
            StorageError::QuotaExceeded => custom(
                "QuotaExceeded",
                St::FORBIDDEN,
                format!("Storage quota exceeded for bucket {bucket}; nothing was stored"),
            ),
            StorageError::NoSuchUpload => S3Error::with_message(
                C::NoSuchUpload,
                "The specified multipart upload does not exist.",
            ),
            StorageError::InvalidPart => S3Error::with_message(
                C::InvalidPart,
                "One or more of the specified parts could not be found.",
            ),
            StorageError::InvalidPartOrder => S3Error::with_message(
                C::InvalidPartOrder,
                "The list of parts was not in ascending order.",
            ),
            StorageError::EntityTooSmall => S3Error::with_message(
                C::EntityTooSmall,
                "Your proposed upload is smaller than the minimum allowed object size.",
            ),
            StorageError::InvalidKey => S3Error::with_message(
                C::KeyTooLongError,
                "Object keys must be 1 to 1024 bytes of UTF-8.",
            ),
            StorageError::ReservedBucket => {
                S3Error::with_message(C::AccessDenied, format!("the bucket {bucket} is reserved"))
            }
            StorageError::InvalidPartNumber => S3Error::with_message(
                C::InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive",
            ),
            StorageError::Conflict => custom(
                "OperationAborted",
                St::CONFLICT,
                "A conflicting operation is in progress; please try again.".into(),
            ),
            StorageError::NoSuchVersion => S3Error::with_message(
                C::NoSuchVersion,
                "The specified version does not exist.",
            ),
            StorageError::DeleteMarker => {
                let mut e = S3Error::with_message(
                    C::MethodNotAllowed,
                    "The specified method is not allowed against this resource.",
                );
                let mut h = http::HeaderMap::new();
                h.insert("x-amz-delete-marker", http::HeaderValue::from_static("true"));
                e.set_headers(h);
                e
            }
            StorageError::PreconditionFailed => S3Error::with_message(
                C::PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold",
            ),
            StorageError::KeyRequired => S3Error::with_message(
                C::InvalidRequest,
                "The object was stored using a form of Server Side Encryption. The correct \
                 parameters must be provided to retrieve the object.",
            ),
            StorageError::KeyMismatch => S3Error::with_message(
                C::AccessDenied,
                "The provided customer key does not match the key the object was encrypted with.",
            ),
            StorageError::NotCustomerEncrypted => S3Error::with_message(
                C::InvalidRequest,
                "The encryption parameters are not applicable to this object.",
            ),
            StorageError::NoMasterKey => S3Error::with_message(
                C::NotImplemented,
                "Server-side encryption needs a master key and this node has none configured.",
            ),
            StorageError::Unsupported(what) => {
                S3Error::with_message(C::NotImplemented, format!("not implemented: {what}"))
            }
            other => {
                tracing::warn!(error = %other, "storage error");
                S3Error::with_message(C::InternalError, "internal storage error")
            }
        },
    }
}

/// Maps a body-stream error (as seen through s3s' `StreamingBlob`) to an S3 error.
pub(crate) fn body_error(err: &(dyn std::error::Error + 'static), bucket: &str) -> S3Error {
    if let Some(e) = err.downcast_ref::<Error>() {
        let mapped = match e {
            Error::SignatureDoesNotMatch => Error::SignatureDoesNotMatch,
            Error::ContentSha256Mismatch => Error::ContentSha256Mismatch,
            Error::EntityTooLarge => Error::EntityTooLarge,
            Error::InvalidChunk(m) => Error::InvalidChunk(m.clone()),
            Error::MalformedTrailer(m) => Error::MalformedTrailer(m.clone()),
            Error::RequestTimeout => Error::RequestTimeout,
            Error::BadDigest(a) => Error::BadDigest(a),
            Error::InvalidRequest(m) => Error::InvalidRequest(m.clone()),
            Error::MaxMessageLengthExceeded => Error::MaxMessageLengthExceeded,
            _ => Error::IncompleteBody,
        };
        return aws_error(mapped, bucket);
    }
    aws_error(Error::IncompleteBody, bucket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_403_with_bucket_in_message() {
        let e = aws_error(Error::Storage(StorageError::QuotaExceeded), "photos");
        assert_eq!(e.code().as_str(), "QuotaExceeded");
        assert_eq!(e.status_code(), Some(http::StatusCode::FORBIDDEN));
        assert!(e.message().unwrap_or_default().contains("photos"));
    }

    #[test]
    fn auth_codes() {
        assert_eq!(
            aws_error(Error::InvalidAccessKeyId, "").code(),
            &S3ErrorCode::InvalidAccessKeyId
        );
        assert_eq!(
            aws_error(Error::SignatureDoesNotMatch, "").code(),
            &S3ErrorCode::SignatureDoesNotMatch
        );
        assert_eq!(
            aws_error(Error::Expired, "").code(),
            &S3ErrorCode::AccessDenied
        );
        assert_eq!(
            aws_error(Error::RequestTimeTooSkewed, "").code(),
            &S3ErrorCode::RequestTimeTooSkewed
        );
    }

    #[test]
    fn body_errors_downcast() {
        let e: Box<dyn std::error::Error + Send + Sync> = Box::new(Error::ContentSha256Mismatch);
        assert_eq!(
            body_error(&*e, "b").code().as_str(),
            "XAmzContentSHA256Mismatch"
        );
        let e: Box<dyn std::error::Error + Send + Sync> =
            Box::new(Error::MalformedTrailer("too large".into()));
        let e = body_error(&*e, "b");
        assert_eq!(e.code().as_str(), "MalformedTrailerError");
        assert_eq!(e.status_code(), Some(http::StatusCode::BAD_REQUEST));
        let io = std::io::Error::other("x");
        assert_eq!(body_error(&io, "b").code(), &S3ErrorCode::IncompleteBody);
    }
}
