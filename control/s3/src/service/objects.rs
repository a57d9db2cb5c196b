//! Object operations: put, get, head, copy.

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};
use tm_policy::S3Op;
use tokio::sync::oneshot;

use super::convert::*;
use super::objio::*;
use super::versioning::version_param;
use super::TmS3;
use crate::access::check;
use crate::checksum::{self, Outcome};
use crate::error::{aws_error, Error};
use crate::sse;

/// The verified-checksum slot the front put into the request (empty if none).
pub(super) fn outcome<T>(req: &S3Request<T>) -> Outcome {
    req.extensions.get::<Outcome>().cloned().unwrap_or_default()
}

/// The `x-amz-version-id` answered: the version's id in a versioned bucket, `null` when asked
/// for by id.
fn shown_version(info: &tm_storage::ObjectInfo, asked: bool) -> Option<String> {
    match &info.version_id {
        Some(v) => Some(v.clone()),
        None if asked => Some("null".to_owned()),
        None => None,
    }
}

/// Whether the client asked for checksums in the answer (`x-amz-checksum-mode: ENABLED`).
fn wants_checksum(m: Option<&ChecksumMode>) -> bool {
    m.is_some_and(|m| m.as_str().eq_ignore_ascii_case(ChecksumMode::ENABLED))
}

/// `partNumber` on a read: 1..=10000 (`InvalidArgument`), not with a `Range` (`InvalidRequest`).
fn check_part_number(n: Option<i32>, range: bool) -> S3Result<()> {
    match n {
        None => Ok(()),
        Some(_) if range => Err(S3Error::with_message(
            S3ErrorCode::InvalidRequest,
            "Cannot specify both Range header and partNumber query parameter",
        )),
        Some(n) if !(1..=10_000).contains(&n) => Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive",
        )),
        Some(_) => Ok(()),
    }
}

/// Bytes `start..end` of part `n` (1-based, in the order the parts were completed) of an
/// object; an object not uploaded in parts is its own part 1. Past the last part: 416
/// `InvalidPartNumber`.
fn part_range(info: &tm_storage::ObjectInfo, n: i32, bucket: &str) -> S3Result<(u64, u64)> {
    let whole = [info.size];
    let sizes: &[u64] = if info.meta.part_sizes.is_empty() {
        &whole
    } else {
        &info.meta.part_sizes
    };
    let i = usize::try_from(n - 1).unwrap_or(usize::MAX);
    if i >= sizes.len() {
        return Err(aws_error(Error::PartNotSatisfiable, bucket));
    }
    let start: u64 = sizes[..i].iter().sum();
    Ok((start, start + sizes[i]))
}

/// `x-amz-mp-parts-count` of a `partNumber` read of a multipart object.
fn parts_count(info: &tm_storage::ObjectInfo, n: Option<i32>) -> Option<i32> {
    let k = info.meta.part_sizes.len();
    (n.is_some() && k > 0).then(|| i32::try_from(k).unwrap_or(i32::MAX))
}

impl TmS3 {
    /// A `NoSuchKey` for a key whose latest version is a delete marker carries
    /// `x-amz-delete-marker: true` and the marker's version id (as S3).
    async fn marked(&self, mut e: S3Error, bucket: &str, key: &str) -> S3Error {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        if let Ok(Some(v)) = self
            .run(bucket, move |s| s.latest_delete_marker(&b, &k))
            .await
        {
            let mut h = http::HeaderMap::new();
            h.insert(
                "x-amz-delete-marker",
                http::HeaderValue::from_static("true"),
            );
            if let Ok(v) = http::HeaderValue::from_str(v.as_deref().unwrap_or("null")) {
                h.insert("x-amz-version-id", v);
            }
            e.set_headers(h);
        }
        e
    }

    pub(super) async fn put_object_op(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let cond = write_condition(&req.headers)?;
        let sums = outcome(&req);
        let enc = sse::object_key(&req.headers).map_err(|e| aws_error(e, &req.input.bucket))?;
        let tags = super::tagging::header_tags(&req.headers)?;
        let input = req.input;
        let mut meta = object_meta(PutMeta {
            content_type: input.content_type,
            content_encoding: input.content_encoding,
            content_disposition: input.content_disposition,
            cache_control: input.cache_control,
            metadata: input.metadata,
            headers: &req.headers,
        });
        meta.tags = tags.unwrap_or_default();
        let repl = self.repl(&input.bucket);
        if repl.is_some() && enc.is_some() {
            return Err(super::replica::not_replicated("server-side encryption"));
        }
        let small = input
            .content_length
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= tm_storage::INLINE_MAX && enc.is_none() && repl.is_none());
        let mut replicas = None;
        let info = if let Some(len) = small {
            // Small object: buffer it and hand it to the group committer without tying up a
            // blocking thread; the reply comes back when it is durable.
            let data =
                read_small(&input.bucket, input.body, len, input.content_md5.as_deref()).await?;
            meta.checksum = sums.get();
            let (tx, rx) = oneshot::channel();
            self.store
                .put_small_if(&input.bucket, &input.key, meta, data, cond, move |r| {
                    let _ = tx.send(r);
                });
            rx.await
                .map_err(S3Error::internal_error)?
                .map_err(|e| aws_error(Error::Storage(e), &input.bucket))?
        } else {
            let (b, k) = (input.bucket.clone(), input.key.clone());
            let plan = match &repl {
                Some(r) => Some(
                    r.plan(b.clone(), k.clone())
                        .await
                        .map_err(super::replica::unavailable)?,
                ),
                None => None,
            };
            let stamp = plan.as_ref().map(|p| p.stamp.clone());
            let store = self.store.clone();
            let (info, version) = write_body(
                &input.bucket,
                move || {
                    let mut w = store.begin_put(&b, &k, meta)?;
                    if let Some(e) = &enc {
                        w.encrypt(e)?;
                    }
                    Ok(w)
                },
                input.body,
                input.content_md5.as_deref(),
                sums,
                cond,
                move |w| match stamp {
                    Some(st) => {
                        tm_storage::replication::local::commit_put(w, st).map(|(i, v)| (i, Some(v)))
                    }
                    None => w.commit().map(|i| (i, None)),
                },
            )
            .await?;
            if let (Some(r), Some(plan)) = (&repl, plan) {
                replicas = Some(
                    r.replicate(plan, version)
                        .await
                        .map_err(super::replica::unavailable)?,
                );
            }
            info
        };
        let mut out = PutObjectOutput {
            e_tag: Some(etag(&info.etag)),
            size: i64::try_from(info.size).ok(),
            version_id: info.version_id.clone(),
            ..Default::default()
        };
        let f = put_checksum!(out, info.meta.checksum.as_deref());
        out.checksum_type = checksum_type(&f);
        put_sse!(out, info.meta.sse.as_ref());
        let mut r = S3Response::new(out);
        super::replica::set_replicas(&mut r, replicas);
        Ok(r)
    }

    pub(super) async fn get_object_op(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Read)?;
        let enc = sse::customer_key(&req.headers, sse::Side::Object)
            .map_err(|e| aws_error(e, &req.input.bucket))?;
        let i = req.input;
        check_part_number(i.part_number, i.range.is_some())?;
        let (b, k) = (i.bucket.clone(), i.key.clone());
        let v = version_param(i.version_id.as_deref())?;
        let asked = v.is_some();
        self.replicated_read(&i.bucket, &i.key).await?;
        let reader = self
            .run(&i.bucket, move |s| match v {
                Some(v) => s.open_version(&b, &k, &v),
                None => s.open_object(&b, &k),
            })
            .await;
        let reader = match reader {
            Err(e) if *e.code() == S3ErrorCode::NoSuchKey => {
                return Err(self.marked(e, &i.bucket, &i.key).await)
            }
            r => r?,
        };
        reader
            .unlock(enc.as_ref())
            .map_err(|e| aws_error(Error::Storage(e), &i.bucket))?;
        let info = reader.info.clone();
        check_conditions(
            &info,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
            i.if_unmodified_since.as_ref(),
        )?;
        let (start, end, content_range) = match (&i.range, i.part_number) {
            (Some(r), _) => {
                let rg = r.check(info.size)?;
                let cr = format!("bytes {}-{}/{}", rg.start, rg.end - 1, info.size);
                (rg.start, rg.end, Some(cr))
            }
            (None, Some(n)) => {
                let (s, e) = part_range(&info, n, &i.bucket)?;
                (
                    s,
                    e,
                    (e > s).then(|| format!("bytes {s}-{}/{}", e - 1, info.size)),
                )
            }
            (None, None) => (0, info.size, None),
        };
        let m = info.meta.clone();
        let whole = content_range.is_none();
        let mut out = GetObjectOutput {
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
            content_language: i.response_content_language.or(m.content_language.clone()),
            metadata: out_meta(&m),
            version_id: shown_version(&info, asked),
            parts_count: parts_count(&info, i.part_number),
            tag_count: (!m.tags.is_empty()).then(|| i32::try_from(m.tags.len()).unwrap_or(0)),
            ..Default::default()
        };
        // A range has no checksum of its own; AWS answers none.
        if whole && wants_checksum(i.checksum_mode.as_ref()) {
            let f = put_checksum!(out, m.checksum.as_deref());
            out.checksum_type = checksum_type(&f);
        }
        put_sse!(out, m.sse.as_ref());
        let mut r = S3Response::new(out);
        if i.response_expires.is_none() {
            r.headers = extra_headers(&m);
        }
        Ok(r)
    }

    pub(super) async fn head_object_op(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Read)?;
        let enc = sse::customer_key(&req.headers, sse::Side::Object)
            .map_err(|e| aws_error(e, &req.input.bucket))?;
        let i = req.input;
        check_part_number(i.part_number, i.range.is_some())?;
        let (b, k) = (i.bucket.clone(), i.key.clone());
        let v = version_param(i.version_id.as_deref())?;
        let asked = v.is_some();
        self.replicated_read(&i.bucket, &i.key).await?;
        let info = self
            .run(&i.bucket, move |s| match v {
                Some(v) => s.head_version(&b, &k, &v),
                None => s.head(&b, &k),
            })
            .await;
        let info = match info {
            Err(e) if *e.code() == S3ErrorCode::NoSuchKey => {
                return Err(self.marked(e, &i.bucket, &i.key).await)
            }
            r => r?,
        };
        sse::check_read(info.meta.sse.as_ref(), enc.as_ref())
            .map_err(|e| aws_error(Error::Storage(e), &i.bucket))?;
        check_conditions(
            &info,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
            i.if_unmodified_since.as_ref(),
        )?;
        let m = &info.meta;
        let (start, end) = match i.part_number {
            Some(n) => part_range(&info, n, &i.bucket)?,
            None => (0, info.size),
        };
        let partial = i.part_number.is_some() && end > start;
        let mut out = HeadObjectOutput {
            content_length: i64::try_from(end - start).ok(),
            content_range: partial.then(|| format!("bytes {start}-{}/{}", end - 1, info.size)),
            parts_count: parts_count(&info, i.part_number),
            accept_ranges: Some("bytes".to_owned()),
            e_tag: Some(etag(&info.etag)),
            last_modified: Some(ts(info.modified)),
            content_type: m.content_type.clone(),
            content_encoding: m.content_encoding.clone(),
            content_disposition: m.content_disposition.clone(),
            cache_control: m.cache_control.clone(),
            content_language: m.content_language.clone(),
            metadata: out_meta(m),
            version_id: shown_version(&info, asked),
            ..Default::default()
        };
        if wants_checksum(i.checksum_mode.as_ref()) {
            let f = put_checksum!(out, m.checksum.as_deref());
            out.checksum_type = checksum_type(&f);
        }
        put_sse!(out, m.sse.as_ref());
        let mut r = S3Response::new(out);
        r.headers = extra_headers(m);
        if partial {
            r.headers
                .insert(crate::STATUS_HEADER, http::HeaderValue::from_static("206"));
        }
        Ok(r)
    }

    pub(super) async fn copy_object_op(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let (sb, sk, sv) = copy_source(&req.input.copy_source)?;
        check(&req, &sb, &sk, S3Op::Read)?;
        let cond = write_condition(&req.headers)?;
        let enc = sse::object_key(&req.headers).map_err(|e| aws_error(e, &req.input.bucket))?;
        let src_enc = sse::customer_key(&req.headers, sse::Side::CopySource)
            .map_err(|e| aws_error(e, &req.input.bucket))?;
        let headers = req.headers;
        let i = req.input;
        let replace = i
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let retag = i.tagging_directive.is_some();
        if !replace && !retag && enc.is_none() && sb == i.bucket && sk == i.key && sv.is_none() {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself \
                 without changing the object's metadata.",
            ));
        }
        let (b2, k2, v2) = (sb.clone(), sk.clone(), sv.clone());
        let src = self
            .run(&sb, move |s| match v2 {
                Some(v) => s.head_version(&b2, &k2, &v),
                None => s.head(&b2, &k2),
            })
            .await?;
        sse::check_read(src.meta.sse.as_ref(), src_enc.as_ref())
            .map_err(|e| aws_error(Error::Storage(e), &sb))?;
        check_copy_conditions(
            &src,
            i.copy_source_if_match.as_ref(),
            i.copy_source_if_none_match.as_ref(),
            i.copy_source_if_modified_since.as_ref(),
            i.copy_source_if_unmodified_since.as_ref(),
        )?;
        if let Some(a) = &i.checksum_algorithm {
            let have = src
                .meta
                .checksum
                .as_deref()
                .and_then(checksum::parse_stored);
            if have.is_none_or(|(h, _)| !h.name().eq_ignore_ascii_case(a.as_str())) {
                return Err(S3Error::with_message(
                    S3ErrorCode::NotImplemented,
                    "CopyObject with a checksum algorithm other than the source's is not supported",
                ));
            }
        }
        // Tags: the source's (`x-amz-tagging-directive: COPY`, the default) or the header's.
        let replace_tags = i
            .tagging_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == TaggingDirective::REPLACE);
        let tags = if replace_tags {
            super::tagging::header_tags(&headers)?.unwrap_or_default()
        } else {
            src.meta.tags.clone()
        };
        let mut meta = replace.then(|| {
            object_meta(PutMeta {
                content_type: i.content_type,
                content_encoding: i.content_encoding,
                content_disposition: i.content_disposition,
                cache_control: i.cache_control,
                metadata: i.metadata,
                headers: &headers,
            })
        });
        if replace_tags && meta.is_none() {
            meta = Some(src.meta.clone());
        }
        if let Some(m) = meta.as_mut() {
            m.tags = tags;
        }
        let (db, dk) = (i.bucket.clone(), i.key.clone());
        let info = if sse::same(src.meta.sse.as_ref(), enc.as_ref()) {
            // Same encryption: the copy shares the source's chunks (and its data key).
            self.run(&i.bucket, move |s| {
                s.copy_object_if((&sb, &sk, sv.as_deref()), &db, &dk, meta, cond)
            })
            .await?
        } else {
            // Another encryption: the bytes are read (opened with the source's key) and
            // written anew (sealed with the destination's).
            self.run(&i.bucket, move |s| {
                let r = match sv {
                    Some(v) => s.open_version(&sb, &sk, &v)?,
                    None => s.open_object(&sb, &sk)?,
                };
                r.unlock(src_enc.as_ref())?;
                let mut meta = meta.unwrap_or_else(|| r.info.meta.clone());
                if meta.checksum.is_none() {
                    meta.checksum = r.info.meta.checksum.clone();
                }
                meta.sse = None;
                let mut w = s.begin_put(&db, &dk, meta)?;
                w.set_condition(cond);
                if let Some(e) = &enc {
                    w.encrypt(e)?;
                }
                copy_bytes(&r, &mut w, 0, r.info.size)?;
                w.commit()
            })
            .await?
        };
        let mut res = CopyObjectResult {
            e_tag: Some(etag(&info.etag)),
            last_modified: Some(ts(info.modified)),
            ..Default::default()
        };
        let f = put_checksum!(res, info.meta.checksum.as_deref());
        res.checksum_type = checksum_type(&f);
        let mut out = CopyObjectOutput {
            copy_object_result: Some(res),
            copy_source_version_id: src.version_id.clone(),
            version_id: info.version_id.clone(),
            ..Default::default()
        };
        put_sse!(out, info.meta.sse.as_ref());
        Ok(S3Response::new(out))
    }
}
