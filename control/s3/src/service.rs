//! The `s3s::S3` implementation over `tm_storage::Store`. Every operation first asks
//! [`crate::access`] whether the principal the front layer put into the request extensions may
//! read or write the bucket (and, for copies, read the source bucket). Engine calls run on the blocking pool.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};
use tm_storage::{ObjectInfo, ObjectMeta, PutWriter, StorageError, Store};
use tokio::sync::{mpsc, oneshot};

use crate::access::{check, principal};
use crate::error::{aws_error, body_error, Error};
use crate::{list, SYSTEM_BUCKET};
use tm_policy::S3Op;

/// Bytes per message when streaming an object out of the engine.
const READ_PIECE: usize = 256 * 1024;
/// Default and maximum page size of listings.
const MAX_KEYS: usize = 1000;

/// Bucket-name validation for s3s: S3 rules plus the reserved system bucket.
pub(crate) struct Names;

impl s3s::validation::NameValidation for Names {
    fn validate_bucket_name(&self, name: &str) -> bool {
        name == SYSTEM_BUCKET || tm_storage::valid_bucket_name(name)
    }
}

/// The S3 operations over the engine.
pub(crate) struct TmS3 {
    store: Store,
}

impl TmS3 {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }

    async fn run<T: Send + 'static>(
        &self,
        bucket: &str,
        f: impl FnOnce(Store) -> Result<T, StorageError> + Send + 'static,
    ) -> S3Result<T> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(store)).await {
            Ok(r) => r.map_err(|e| aws_error(Error::Storage(e), bucket)),
            Err(e) => Err(S3Error::internal_error(e)),
        }
    }
}

/// One page of ListObjects (v1) / ListObjectsV2, already converted to output fields; the two
/// operations differ only in how the start key comes in and how the next one goes out.
struct Listing {
    url: bool,
    prefix: String,
    delimiter: Option<String>,
    encoding_type: Option<EncodingType>,
    max_keys: i32,
    truncated: bool,
    contents: Vec<Object>,
    prefix_count: usize,
    common_prefixes: Option<Vec<CommonPrefix>>,
    /// Raw (unencoded) key to continue after, if truncated.
    next_after: Option<String>,
}

impl Listing {
    /// Applies `encoding-type=url` if the request asked for it.
    fn enc(&self, s: String) -> String {
        enc_if(self.url, s)
    }
}

impl TmS3 {
    /// Lists `bucket` after `after` (exclusive) for both listing versions.
    async fn listing(
        &self,
        bucket: &str,
        prefix: Option<String>,
        delimiter: Option<String>,
        encoding_type: Option<EncodingType>,
        max_keys_in: Option<i32>,
        after: Option<String>,
    ) -> S3Result<Listing> {
        let url = is_url(encoding_type.as_ref());
        let max = max_keys(max_keys_in);
        let prefix = prefix.unwrap_or_default();
        let (b, p, d) = (bucket.to_owned(), prefix.clone(), delimiter.clone());
        let page = self
            .run(bucket, move |s| {
                s.bucket(&b)?;
                list::page(
                    |p, a, n| s.list_objects(&b, p, a, n),
                    &p,
                    d.as_deref(),
                    after.as_deref(),
                    max,
                )
            })
            .await?;
        Ok(Listing {
            url,
            prefix: enc_if(url, prefix),
            delimiter: delimiter.map(|d| enc_if(url, d)),
            encoding_type,
            max_keys: i32::try_from(max).unwrap_or(i32::MAX),
            truncated: page.truncated,
            prefix_count: page.prefixes.len(),
            contents: page
                .objects
                .into_iter()
                .map(|o| to_object(o, url))
                .collect(),
            common_prefixes: common_prefixes(page.prefixes, url),
            next_after: page.next_marker,
        })
    }
}

fn strip_quotes(s: &str) -> &str {
    s.trim().trim_matches('"')
}

fn etag(info_etag: &str) -> ETag {
    ETag::Strong(strip_quotes(info_etag).to_owned())
}

fn ts(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

fn secs(t: SystemTime) -> i64 {
    time::OffsetDateTime::from(t).unix_timestamp()
}

fn ts_secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

fn user_meta(m: Option<Metadata>) -> BTreeMap<String, String> {
    m.map(|m| {
        m.into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect()
    })
    .unwrap_or_default()
}

fn out_meta(m: &ObjectMeta) -> Option<Metadata> {
    (!m.user.is_empty()).then(|| m.user.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn cond_matches(c: &ETagCondition, etag: &str) -> bool {
    match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => strip_quotes(e.value()) == strip_quotes(etag),
    }
}

/// HTTP conditional request semantics (RFC 9110 order) for GET/HEAD.
fn check_conditions(
    info: &ObjectInfo,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let modified = secs(info.modified);
    if let Some(c) = if_match {
        if !cond_matches(c, &info.etag) {
            return Err(S3Error::new(S3ErrorCode::PreconditionFailed));
        }
    } else if let Some(t) = if_unmodified_since {
        if modified > ts_secs(t) {
            return Err(S3Error::new(S3ErrorCode::PreconditionFailed));
        }
    }
    if let Some(c) = if_none_match {
        if cond_matches(c, &info.etag) {
            return Err(S3Error::new(S3ErrorCode::NotModified));
        }
    } else if let Some(t) = if_modified_since {
        if modified <= ts_secs(t) {
            return Err(S3Error::new(S3ErrorCode::NotModified));
        }
    }
    Ok(())
}

/// Conditions on a copy source: failures are always 412.
fn check_copy_conditions(
    info: &ObjectInfo,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    check_conditions(
        info,
        if_match,
        if_none_match,
        if_modified_since,
        if_unmodified_since,
    )
    .map_err(|_| S3Error::new(S3ErrorCode::PreconditionFailed))
}

fn copy_source(src: &CopySource) -> S3Result<(String, String)> {
    match src {
        CopySource::Bucket {
            bucket,
            key,
            version_id: None,
        } => Ok((bucket.to_string(), key.to_string())),
        CopySource::Bucket { .. } => Err(S3Error::with_message(
            S3ErrorCode::NotImplemented,
            "object versions are not supported",
        )),
        _ => Err(S3Error::with_message(
            S3ErrorCode::NotImplemented,
            "access points are not supported",
        )),
    }
}

fn max_keys(v: Option<i32>) -> usize {
    v.map_or(MAX_KEYS, |n| {
        usize::try_from(n.max(0)).unwrap_or(0).min(MAX_KEYS)
    })
}

/// Percent-encodes a listing value for `encoding-type=url` (keeps unreserved chars and `/`).
fn url_enc(s: &str) -> String {
    crate::auth::uri_encode(s, false)
}

fn enc_if(url: bool, s: String) -> String {
    if url {
        url_enc(&s)
    } else {
        s
    }
}

fn owner() -> Owner {
    Owner {
        display_name: Some("tunnelmesh".to_owned()),
        id: Some("tunnelmesh".to_owned()),
    }
}

/// Channel messages from the request task to the blocking writer.
enum Msg {
    Data(Bytes),
    Finish,
}

/// The decoded `Content-MD5` header, if any.
fn want_md5(content_md5: Option<&str>) -> S3Result<Option<Vec<u8>>> {
    content_md5
        .map(|m| {
            base64::engine::general_purpose::STANDARD
                .decode(m.trim())
                .map_err(|_| S3Error::new(S3ErrorCode::InvalidDigest))
        })
        .transpose()
}

/// Reads a whole body of exactly `len` (at most `INLINE_MAX`) bytes into memory and checks
/// `Content-MD5`. Any body error (signature, hash, truncation) fails it: nothing is stored.
async fn read_small(
    bucket: &str,
    body: Option<StreamingBlob>,
    len: usize,
    content_md5: Option<&str>,
) -> S3Result<Vec<u8>> {
    let want = want_md5(content_md5)?;
    let mut data = Vec::with_capacity(len);
    if let Some(mut body) = body {
        while let Some(item) = body.next().await {
            let b = item.map_err(|e| body_error(&*e, bucket))?;
            if data.len() + b.len() > len {
                return Err(aws_error(Error::IncompleteBody, bucket));
            }
            data.extend_from_slice(&b);
        }
    }
    if data.len() != len {
        return Err(aws_error(Error::IncompleteBody, bucket));
    }
    if let Some(want) = want {
        if Md5::digest(&data).as_slice() != want.as_slice() {
            return Err(S3Error::new(S3ErrorCode::BadDigest));
        }
    }
    Ok(data)
}

/// Streams `body` into a writer opened by `begin` on the blocking pool; commits only when the
/// whole body arrived intact (and matches `content_md5`, if given). Otherwise the writer is
/// dropped (aborted) and nothing is stored.
async fn write_body(
    bucket: &str,
    begin: impl FnOnce() -> Result<PutWriter, StorageError> + Send + 'static,
    body: Option<StreamingBlob>,
    content_md5: Option<&str>,
) -> S3Result<ObjectInfo> {
    let want_md5 = want_md5(content_md5)?;
    let (tx, mut rx) = mpsc::channel::<Msg>(8);
    let writer =
        tokio::task::spawn_blocking(move || -> Result<Option<ObjectInfo>, StorageError> {
            let mut w = begin()?;
            while let Some(m) = rx.blocking_recv() {
                match m {
                    Msg::Data(b) => w.write_all(&b)?,
                    Msg::Finish => return w.commit().map(Some),
                }
            }
            Ok(None) // sender gone without Finish: abort
        });
    let mut md5 = want_md5.as_ref().map(|_| Md5::new());
    let mut failure: Option<S3Error> = None;
    if let Some(mut body) = body {
        while let Some(item) = body.next().await {
            match item {
                Ok(b) => {
                    if let Some(h) = md5.as_mut() {
                        h.update(&b);
                    }
                    if tx.send(Msg::Data(b)).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    failure = Some(body_error(&*e, bucket));
                    break;
                }
            }
        }
    }
    if failure.is_none() {
        if let (Some(want), Some(h)) = (want_md5, md5) {
            if h.finalize().as_slice() != want.as_slice() {
                failure = Some(S3Error::new(S3ErrorCode::BadDigest));
            }
        }
    }
    if failure.is_none() {
        let _ = tx.send(Msg::Finish).await;
    }
    drop(tx);
    let res = writer.await.map_err(S3Error::internal_error)?;
    match (failure, res) {
        (Some(f), _) => Err(f),
        (None, Ok(Some(info))) => Ok(info),
        (None, Ok(None)) => Err(aws_error(Error::IncompleteBody, bucket)),
        (None, Err(e)) => Err(aws_error(Error::Storage(e), bucket)),
    }
}

/// A `Sync` stream over an mpsc receiver (s3s requires `Sync` bodies).
struct RxStream(mpsc::Receiver<Result<Bytes, io::Error>>);

impl Stream for RxStream {
    type Item = Result<Bytes, io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Streams bytes `start..end` of an open object from the blocking pool.
fn read_body(reader: tm_storage::ObjectReader, start: u64, end: u64) -> StreamingBlob {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut off = start;
        let mut buf = vec![0u8; READ_PIECE];
        while off < end {
            let want =
                usize::try_from((end - off).min(READ_PIECE as u64)).expect("bounded by READ_PIECE");
            let item = match reader.read_at(off, &mut buf[..want]) {
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "object shrank",
                )),
                Ok(n) => {
                    off += n as u64;
                    Ok(Bytes::copy_from_slice(&buf[..n]))
                }
                Err(e) => Err(io::Error::other(e.to_string())),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                break;
            }
        }
    });
    StreamingBlob::wrap(RxStream(rx))
}

struct PutMeta {
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    cache_control: Option<String>,
    metadata: Option<Metadata>,
}

fn object_meta(m: PutMeta) -> ObjectMeta {
    ObjectMeta {
        content_type: m.content_type,
        content_encoding: m.content_encoding,
        content_disposition: m.content_disposition,
        cache_control: m.cache_control,
        user: user_meta(m.metadata),
    }
}

fn part_number(n: i32) -> S3Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })
}

/// Parses `bytes=a-b` (x-amz-copy-source-range) against a source of `size` bytes.
fn copy_range(r: &str, size: u64) -> S3Result<(u64, u64)> {
    let bad = || S3Error::with_message(S3ErrorCode::InvalidArgument, "bad x-amz-copy-source-range");
    let spec = r.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if a > b || b >= size {
        return Err(S3Error::new(S3ErrorCode::InvalidRange));
    }
    Ok((a, b + 1))
}

fn encode_token(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn decode_token(s: &str) -> S3Result<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                "The continuation token provided is incorrect",
            )
        })
}

fn to_object(o: ObjectInfo, url: bool) -> Object {
    Object {
        e_tag: Some(etag(&o.etag)),
        key: Some(enc_if(url, o.key)),
        last_modified: Some(ts(o.modified)),
        size: i64::try_from(o.size).ok(),
        storage_class: Some(ObjectStorageClass::from_static(
            ObjectStorageClass::STANDARD,
        )),
        owner: Some(owner()),
        ..Default::default()
    }
}

fn common_prefixes(p: Vec<String>, url: bool) -> Option<Vec<CommonPrefix>> {
    (!p.is_empty()).then(|| {
        p.into_iter()
            .map(|p| CommonPrefix {
                prefix: Some(enc_if(url, p)),
            })
            .collect()
    })
}

fn is_url(e: Option<&EncodingType>) -> bool {
    e.is_some_and(|e| e.as_str() == EncodingType::URL)
}

#[async_trait::async_trait]
impl S3 for TmS3 {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let me = principal(&req)?.clone();
        let buckets = self.run("", |s| s.list_buckets()).await?;
        let buckets = buckets
            .into_iter()
            .filter(|b| crate::access::visible(&req, &me, &b.name))
            .map(|b| Bucket {
                name: Some(b.name),
                creation_date: Some(ts(b.created)),
                bucket_region: None,
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(owner()),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket.clone();
        check(&req, &bucket, "", S3Op::Admin)?;
        let b = bucket.clone();
        self.run(&bucket, move |s| s.create_bucket(&b)).await?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket.clone();
        check(&req, &bucket, "", S3Op::Admin)?;
        let b = bucket.clone();
        self.run(&bucket, move |s| s.delete_bucket(&b)).await?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        check(&req, &req.input.bucket, "", S3Op::Read)?;
        let b = req.input.bucket.clone();
        self.run(&req.input.bucket, move |s| s.bucket(&b)).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        check(&req, &req.input.bucket, "", S3Op::Read)?;
        let b = req.input.bucket.clone();
        self.run(&req.input.bucket, move |s| s.bucket(&b)).await?;
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: None,
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let input = req.input;
        if input.if_match.is_some() || input.if_none_match.is_some() {
            return Err(S3Error::with_message(
                S3ErrorCode::NotImplemented,
                "conditional writes are not supported",
            ));
        }
        let meta = object_meta(PutMeta {
            content_type: input.content_type,
            content_encoding: input.content_encoding,
            content_disposition: input.content_disposition,
            cache_control: input.cache_control,
            metadata: input.metadata,
        });
        let small = input
            .content_length
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= tm_storage::INLINE_MAX);
        let info = if let Some(len) = small {
            // Small object: buffer it and hand it to the group committer without tying up a
            // blocking thread; the reply comes back when it is durable.
            let data =
                read_small(&input.bucket, input.body, len, input.content_md5.as_deref()).await?;
            let (tx, rx) = oneshot::channel();
            self.store
                .put_small(&input.bucket, &input.key, meta, data, move |r| {
                    let _ = tx.send(r);
                });
            rx.await
                .map_err(S3Error::internal_error)?
                .map_err(|e| aws_error(Error::Storage(e), &input.bucket))?
        } else {
            let (b, k) = (input.bucket.clone(), input.key.clone());
            let store = self.store.clone();
            write_body(
                &input.bucket,
                move || store.begin_put(&b, &k, meta),
                input.body,
                input.content_md5.as_deref(),
            )
            .await?
        };
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&info.etag)),
            size: i64::try_from(info.size).ok(),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Read)?;
        let i = req.input;
        if i.part_number.is_some() {
            return Err(S3Error::with_message(
                S3ErrorCode::NotImplemented,
                "GetObject by partNumber is not supported",
            ));
        }
        let (b, k) = (i.bucket.clone(), i.key.clone());
        let reader = self.run(&i.bucket, move |s| s.open_object(&b, &k)).await?;
        let info = reader.info.clone();
        check_conditions(
            &info,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
            i.if_unmodified_since.as_ref(),
        )?;
        let (start, end, content_range) = match &i.range {
            Some(r) => {
                let rg = r.check(info.size)?;
                let cr = format!("bytes {}-{}/{}", rg.start, rg.end - 1, info.size);
                (rg.start, rg.end, Some(cr))
            }
            None => (0, info.size, None),
        };
        let m = info.meta.clone();
        let out = GetObjectOutput {
            body: Some(read_body(reader, start, end)),
            content_length: i64::try_from(end - start).ok(),
            content_range,
            accept_ranges: Some("bytes".to_owned()),
            e_tag: Some(etag(&info.etag)),
            last_modified: Some(ts(info.modified)),
            content_type: i.response_content_type.or(m.content_type.clone()),
            content_encoding: i.response_content_encoding.or(m.content_encoding.clone()),
            content_disposition: i
                .response_content_disposition
                .or(m.content_disposition.clone()),
            cache_control: i.response_cache_control.or(m.cache_control.clone()),
            content_language: i.response_content_language,
            metadata: out_meta(&m),
            ..Default::default()
        };
        Ok(S3Response::new(out))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Read)?;
        let i = req.input;
        let (b, k) = (i.bucket.clone(), i.key.clone());
        let info = self.run(&i.bucket, move |s| s.head(&b, &k)).await?;
        check_conditions(
            &info,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
            i.if_unmodified_since.as_ref(),
        )?;
        let m = &info.meta;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: i64::try_from(info.size).ok(),
            accept_ranges: Some("bytes".to_owned()),
            e_tag: Some(etag(&info.etag)),
            last_modified: Some(ts(info.modified)),
            content_type: m.content_type.clone(),
            content_encoding: m.content_encoding.clone(),
            content_disposition: m.content_disposition.clone(),
            cache_control: m.cache_control.clone(),
            metadata: out_meta(m),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let (b, k) = (req.input.bucket.clone(), req.input.key.clone());
        self.run(&req.input.bucket, move |s| {
            s.bucket(&b)?;
            s.delete_object(&b, &k)
        })
        .await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        for o in &req.input.delete.objects {
            check(&req, &req.input.bucket, &o.key, S3Op::Write)?;
        }
        let bucket = req.input.bucket.clone();
        let quiet = req.input.delete.quiet.unwrap_or(false);
        let keys: Vec<String> = req
            .input
            .delete
            .objects
            .into_iter()
            .map(|o| o.key)
            .collect();
        if keys.len() > 1000 {
            return Err(S3Error::with_message(
                S3ErrorCode::MalformedXML,
                "at most 1000 keys per request",
            ));
        }
        let b = bucket.clone();
        let results = self
            .run(&bucket, move |s| {
                s.bucket(&b)?;
                Ok(keys
                    .into_iter()
                    .map(|k| {
                        let r = s.delete_object(&b, &k);
                        (k, r)
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (k, r) in results {
            match r {
                Ok(()) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(k),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => {
                    let e = aws_error(Error::Storage(e), &bucket);
                    errors.push(s3s::dto::Error {
                        code: Some(e.code().as_str().to_owned()),
                        key: Some(k),
                        message: e.message().map(str::to_owned),
                        version_id: None,
                    });
                }
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let (sb, sk) = copy_source(&req.input.copy_source)?;
        check(&req, &sb, &sk, S3Op::Read)?;
        let i = req.input;
        let replace = i
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if !replace && sb == i.bucket && sk == i.key {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself \
                 without changing the object's metadata.",
            ));
        }
        let (b2, k2) = (sb.clone(), sk.clone());
        let src = self.run(&sb, move |s| s.head(&b2, &k2)).await?;
        check_copy_conditions(
            &src,
            i.copy_source_if_match.as_ref(),
            i.copy_source_if_none_match.as_ref(),
            i.copy_source_if_modified_since.as_ref(),
            i.copy_source_if_unmodified_since.as_ref(),
        )?;
        let meta = replace.then(|| {
            object_meta(PutMeta {
                content_type: i.content_type,
                content_encoding: i.content_encoding,
                content_disposition: i.content_disposition,
                cache_control: i.cache_control,
                metadata: i.metadata,
            })
        });
        let (db, dk) = (i.bucket.clone(), i.key.clone());
        let info = self
            .run(&i.bucket, move |s| s.copy_object(&sb, &sk, &db, &dk, meta))
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&info.etag)),
                last_modified: Some(ts(info.modified)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        check(
            &req,
            &req.input.bucket,
            req.input.prefix.as_deref().unwrap_or(""),
            S3Op::List,
        )?;
        let i = req.input;
        let after = i.marker.clone().filter(|m| !m.is_empty());
        let l = self
            .listing(
                &i.bucket,
                i.prefix,
                i.delimiter,
                i.encoding_type,
                i.max_keys,
                after,
            )
            .await?;
        // NextMarker is only returned with a delimiter (without one, clients use the last key).
        let next_marker = match (&l.delimiter, l.next_after.clone()) {
            (Some(_), Some(m)) => Some(l.enc(m)),
            _ => None,
        };
        Ok(S3Response::new(ListObjectsOutput {
            marker: Some(l.enc(i.marker.unwrap_or_default())),
            next_marker,
            name: Some(i.bucket),
            prefix: Some(l.prefix),
            max_keys: Some(l.max_keys),
            is_truncated: Some(l.truncated),
            contents: Some(l.contents),
            common_prefixes: l.common_prefixes,
            delimiter: l.delimiter,
            encoding_type: l.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        check(
            &req,
            &req.input.bucket,
            req.input.prefix.as_deref().unwrap_or(""),
            S3Op::List,
        )?;
        let i = req.input;
        let after = match i.continuation_token.as_deref() {
            Some(t) => Some(decode_token(t)?),
            None => i.start_after.clone().filter(|s| !s.is_empty()),
        };
        let l = self
            .listing(
                &i.bucket,
                i.prefix,
                i.delimiter,
                i.encoding_type,
                i.max_keys,
                after,
            )
            .await?;
        Ok(S3Response::new(ListObjectsV2Output {
            key_count: i32::try_from(l.contents.len() + l.prefix_count).ok(),
            continuation_token: i.continuation_token,
            next_continuation_token: l.next_after.as_deref().map(encode_token),
            start_after: i.start_after.map(|s| l.enc(s)),
            name: Some(i.bucket),
            prefix: Some(l.prefix),
            max_keys: Some(l.max_keys),
            is_truncated: Some(l.truncated),
            contents: Some(l.contents),
            common_prefixes: l.common_prefixes,
            delimiter: l.delimiter,
            encoding_type: l.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let i = req.input;
        let meta = object_meta(PutMeta {
            content_type: i.content_type,
            content_encoding: i.content_encoding,
            content_disposition: i.content_disposition,
            cache_control: i.cache_control,
            metadata: i.metadata,
        });
        let (b, k) = (i.bucket.clone(), i.key.clone());
        let id = self
            .run(&i.bucket, move |s| s.create_multipart(&b, &k, meta))
            .await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let i = req.input;
        let n = part_number(i.part_number)?;
        let (b, k, id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
        let store = self.store.clone();
        let info = write_body(
            &i.bucket,
            move || store.begin_part(&b, &k, &id, n),
            i.body,
            i.content_md5.as_deref(),
        )
        .await?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&info.etag)),
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let (sb, sk) = copy_source(&req.input.copy_source)?;
        check(&req, &sb, &sk, S3Op::Read)?;
        let i = req.input;
        let n = part_number(i.part_number)?;
        let (b2, k2) = (sb.clone(), sk.clone());
        let reader = self.run(&sb, move |s| s.open_object(&b2, &k2)).await?;
        check_copy_conditions(
            &reader.info,
            i.copy_source_if_match.as_ref(),
            i.copy_source_if_none_match.as_ref(),
            i.copy_source_if_modified_since.as_ref(),
            i.copy_source_if_unmodified_since.as_ref(),
        )?;
        let (start, end) = match i.copy_source_range.as_deref() {
            Some(r) => copy_range(r, reader.info.size)?,
            None => (0, reader.info.size),
        };
        let (b, k, id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
        let info = self
            .run(&i.bucket, move |s| {
                let mut w = s.begin_part(&b, &k, &id, n)?;
                let mut buf = vec![0u8; READ_PIECE];
                let mut off = start;
                while off < end {
                    let want = usize::try_from((end - off).min(READ_PIECE as u64))
                        .expect("bounded by READ_PIECE");
                    let got = reader.read_at(off, &mut buf[..want])?;
                    if got == 0 {
                        return Err(StorageError::Corrupt("copy source shrank".into()));
                    }
                    w.write_all(&buf[..got])?;
                    off += got as u64;
                }
                w.commit()
            })
            .await?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(etag(&info.etag)),
                last_modified: Some(ts(info.modified)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let i = req.input;
        let parts = i
            .multipart_upload
            .and_then(|m| m.parts)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                S3Error::with_message(
                    S3ErrorCode::MalformedXML,
                    "CompleteMultipartUpload needs at least one part",
                )
            })?;
        let mut list = Vec::with_capacity(parts.len());
        for p in parts {
            let (Some(n), Some(e)) = (p.part_number, p.e_tag) else {
                return Err(S3Error::with_message(
                    S3ErrorCode::MalformedXML,
                    "each part needs PartNumber and ETag",
                ));
            };
            list.push((part_number(n)?, strip_quotes(e.value()).to_owned()));
        }
        let (b, k, id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
        let info = self
            .run(&i.bucket, move |s| s.complete_multipart(&b, &k, &id, &list))
            .await?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(i.bucket.clone()),
            key: Some(i.key.clone()),
            e_tag: Some(etag(&info.etag)),
            location: Some(format!("/{}/{}", i.bucket, i.key)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let i = req.input;
        let (b, k, id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
        self.run(&i.bucket, move |s| s.abort_multipart(&b, &k, &id))
            .await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Read)?;
        let i = req.input;
        let (b, k, id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
        let all = self
            .run(&i.bucket, move |s| s.list_parts(&b, &k, &id))
            .await?;
        let marker = i.part_number_marker.unwrap_or(0);
        let max = max_keys(i.max_parts);
        let mut rest: Vec<_> = all
            .into_iter()
            .filter(|p| i64::from(p.number) > i64::from(marker))
            .collect();
        let truncated = rest.len() > max;
        rest.truncate(max);
        let next = rest
            .last()
            .map(|p| i32::try_from(p.number).unwrap_or(i32::MAX));
        let parts = rest
            .into_iter()
            .map(|p| Part {
                e_tag: Some(etag(&p.etag)),
                last_modified: Some(ts(p.modified)),
                part_number: i32::try_from(p.number).ok(),
                size: i64::try_from(p.size).ok(),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(i.upload_id),
            part_number_marker: i.part_number_marker,
            next_part_number_marker: next,
            max_parts: i32::try_from(max).ok(),
            is_truncated: Some(truncated),
            parts: Some(parts),
            owner: Some(owner()),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        check(
            &req,
            &req.input.bucket,
            req.input.prefix.as_deref().unwrap_or(""),
            S3Op::List,
        )?;
        let i = req.input;
        let url = is_url(i.encoding_type.as_ref());
        let (b, prefix) = (i.bucket.clone(), i.prefix.clone().unwrap_or_default());
        let mut all = self
            .run(&i.bucket, move |s| s.list_uploads(&b, &prefix))
            .await?;
        all.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        let km = i.key_marker.clone().unwrap_or_default();
        let um = i.upload_id_marker.clone().unwrap_or_default();
        let mut rest: Vec<_> = all
            .into_iter()
            .filter(|u| {
                km.is_empty() || u.key > km || (u.key == km && !um.is_empty() && u.upload_id > um)
            })
            .collect();
        let max = max_keys(i.max_uploads);
        let truncated = rest.len() > max;
        rest.truncate(max);
        let (nk, nu) = match rest.last() {
            Some(u) if truncated => (Some(u.key.clone()), Some(u.upload_id.clone())),
            _ => (None, None),
        };
        let uploads = rest
            .into_iter()
            .map(|u| MultipartUpload {
                initiated: Some(ts(u.initiated)),
                key: Some(enc_if(url, u.key)),
                upload_id: Some(u.upload_id),
                owner: Some(owner()),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(i.bucket),
            prefix: i.prefix.map(|p| enc_if(url, p)),
            key_marker: i.key_marker,
            upload_id_marker: i.upload_id_marker,
            next_key_marker: nk.map(|k| enc_if(url, k)),
            next_upload_id_marker: nu,
            max_uploads: i32::try_from(max).ok(),
            is_truncated: Some(truncated),
            uploads: Some(uploads),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(etag: &str, modified: SystemTime) -> ObjectInfo {
        ObjectInfo {
            key: "k".into(),
            size: 3,
            etag: etag.into(),
            modified,
            meta: ObjectMeta::default(),
        }
    }

    #[test]
    fn conditions() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let o = info("abc", t);
        let m = ETagCondition::ETag(ETag::Strong("abc".into()));
        let other = ETagCondition::ETag(ETag::Strong("zzz".into()));
        assert!(check_conditions(&o, Some(&m), None, None, None).is_ok());
        let e = check_conditions(&o, Some(&other), None, None, None).unwrap_err();
        assert_eq!(e.code(), &S3ErrorCode::PreconditionFailed);
        let e = check_conditions(&o, None, Some(&m), None, None).unwrap_err();
        assert_eq!(e.code(), &S3ErrorCode::NotModified);
        let later = ts(t + std::time::Duration::from_secs(10));
        let earlier = ts(t - std::time::Duration::from_secs(10));
        assert_eq!(
            check_conditions(&o, None, None, Some(&later), None)
                .unwrap_err()
                .code(),
            &S3ErrorCode::NotModified
        );
        assert!(check_conditions(&o, None, None, Some(&earlier), None).is_ok());
        assert_eq!(
            check_conditions(&o, None, None, None, Some(&earlier))
                .unwrap_err()
                .code(),
            &S3ErrorCode::PreconditionFailed
        );
        // If-None-Match wins over If-Modified-Since
        assert!(check_conditions(&o, None, Some(&other), Some(&later), None).is_ok());
    }

    #[test]
    fn copy_ranges_and_tokens() {
        assert_eq!(copy_range("bytes=0-9", 10).expect("ok"), (0, 10));
        assert!(copy_range("bytes=0-10", 10).is_err());
        assert!(copy_range("bytes=5-1", 10).is_err());
        assert_eq!(decode_token(&encode_token("a/b c")).expect("tok"), "a/b c");
        assert!(decode_token("%%%").is_err());
        assert!(part_number(0).is_err());
        assert_eq!(part_number(10_000).expect("ok"), 10_000);
    }
}
