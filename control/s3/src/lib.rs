//! S3 API (s3s) over the tm-storage engine.
#![forbid(unsafe_code)]
