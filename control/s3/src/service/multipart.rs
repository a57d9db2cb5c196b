//! Multipart uploads: create, upload part (and part copy), complete, abort, list.

use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};
use tm_policy::S3Op;
use tm_storage::PutWriter;
use tm_storage::{EncryptionKey, ObjectInfo, WriteCondition};

use super::convert::*;
use super::objects::outcome;
use super::objio::*;
use super::TmS3;
use crate::access::check;
use crate::checksum::{self, Algo};
use crate::error::{aws_error, Error};
use crate::sse;

/// One entry of a CompleteMultipartUpload part list (repeats merged).
struct Listed {
    number: u32,
    /// ETags listed for this number, in order (lower case, no quotes).
    etags: Vec<String>,
    /// The part checksum the client listed (stored form).
    sum: Option<String>,
}

fn completed(bucket: &str, key: &str, info: &ObjectInfo) -> CompleteMultipartUploadOutput {
    let mut out = CompleteMultipartUploadOutput {
        bucket: Some(bucket.to_owned()),
        key: Some(key.to_owned()),
        e_tag: Some(etag(&info.etag)),
        location: Some(format!("/{bucket}/{key}")),
        ..Default::default()
    };
    let f = put_checksum!(out, info.meta.checksum.as_deref());
    out.checksum_type = checksum_type(&f);
    // (S3 answers the customer-key pair of an SSE-C upload only on its other operations.)
    out.server_side_encryption = crate::sse::answer(info.meta.sse.as_ref()).0;
    out
}

impl TmS3 {
    pub(super) async fn create_multipart_upload_op(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let enc = sse::object_key(&req.headers).map_err(|e| aws_error(e, &req.input.bucket))?;
        if enc.is_some() && self.repl(&req.input.bucket).is_some() {
            return Err(super::replica::not_replicated("server-side encryption"));
        }
        let tags = super::tagging::header_tags(&req.headers)?;
        let i = req.input;
        let mut meta = object_meta(PutMeta {
            content_type: i.content_type,
            content_encoding: i.content_encoding,
            content_disposition: i.content_disposition,
            cache_control: i.cache_control,
            metadata: i.metadata,
            headers: &req.headers,
        });
        meta.tags = tags.unwrap_or_default();
        let algo = i.checksum_algorithm.clone();
        let (b, k) = (i.bucket.clone(), i.key.clone());
        let id = self
            .run(&i.bucket, move |s| {
                if let Some(e) = &enc {
                    meta.sse = Some(s.new_encryption(e)?);
                }
                let sse = meta.sse.clone();
                s.create_multipart(&b, &k, meta).map(|id| (id, sse))
            })
            .await?;
        let (id, sse) = id;
        let mut out = CreateMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(id),
            checksum_type: algo
                .is_some()
                .then(|| ChecksumType::from_static(ChecksumType::COMPOSITE)),
            checksum_algorithm: algo,
            ..Default::default()
        };
        put_sse!(out, sse.as_ref());
        Ok(S3Response::new(out))
    }

    pub(super) async fn upload_part_op(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let sums = outcome(&req);
        let enc = sse::customer_key(&req.headers, sse::Side::Object)
            .map_err(|e| aws_error(e, &req.input.bucket))?;
        let i = req.input;
        let n = part_number(i.part_number)?;
        let (b, k, id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
        let store = self.store.clone();
        let enc2 = enc.clone();
        let info = write_body(
            &i.bucket,
            move || {
                let mut w = store.begin_part(&b, &k, &id, n)?;
                if let Some(e) = &enc2 {
                    w.encrypt(e)?;
                }
                Ok(w)
            },
            i.body,
            i.content_md5.as_deref(),
            sums.clone(),
            WriteCondition::Always,
            PutWriter::commit,
        )
        .await?;
        let mut out = UploadPartOutput {
            e_tag: Some(etag(&info.etag)),
            ..Default::default()
        };
        if let Some(EncryptionKey::Customer(k)) = &enc {
            out.sse_customer_algorithm = Some(sse::AES256.to_owned());
            out.sse_customer_key_md5 = Some(tm_storage::customer_key_md5(k));
        }
        put_checksum!(out, sums.get().as_deref());
        Ok(S3Response::new(out))
    }

    pub(super) async fn upload_part_copy_op(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let (sb, sk, sv) = copy_source(&req.input.copy_source)?;
        check(&req, &sb, &sk, S3Op::Read)?;
        let enc = sse::customer_key(&req.headers, sse::Side::Object)
            .map_err(|e| aws_error(e, &req.input.bucket))?;
        let src_enc = sse::customer_key(&req.headers, sse::Side::CopySource)
            .map_err(|e| aws_error(e, &req.input.bucket))?;
        let i = req.input;
        let n = part_number(i.part_number)?;
        let (b2, k2) = (sb.clone(), sk.clone());
        let reader = self
            .run(&sb, move |s| match sv {
                Some(v) => s.open_version(&b2, &k2, &v),
                None => s.open_object(&b2, &k2),
            })
            .await?;
        reader
            .unlock(src_enc.as_ref())
            .map_err(|e| aws_error(Error::Storage(e), &sb))?;
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
                if let Some(e) = &enc {
                    w.encrypt(e)?;
                }
                copy_bytes(&reader, &mut w, start, end)?;
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

    pub(super) async fn complete_multipart_upload_op(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let cond = write_condition(&req.headers)?;
        let i = req.input;
        let whole = [
            (Algo::Crc32, &i.checksum_crc32),
            (Algo::Crc32c, &i.checksum_crc32c),
            (Algo::Sha1, &i.checksum_sha1),
            (Algo::Sha256, &i.checksum_sha256),
            (Algo::Crc64Nvme, &i.checksum_crc64nvme),
        ]
        .into_iter()
        .find_map(|(a, v)| v.as_ref().map(|v| format!("{}:{}", a.name(), v.trim())));
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
        let mut listed: Vec<Listed> = Vec::with_capacity(parts.len());
        for p in parts {
            let (Some(n), Some(e)) = (p.part_number, p.e_tag.as_ref()) else {
                return Err(S3Error::with_message(
                    S3ErrorCode::MalformedXML,
                    "each part needs PartNumber and ETag",
                ));
            };
            let sum = [
                (Algo::Crc32, &p.checksum_crc32),
                (Algo::Crc32c, &p.checksum_crc32c),
                (Algo::Sha1, &p.checksum_sha1),
                (Algo::Sha256, &p.checksum_sha256),
                (Algo::Crc64Nvme, &p.checksum_crc64nvme),
            ]
            .into_iter()
            .find_map(|(a, v)| v.as_ref().map(|v| format!("{}:{}", a.name(), v.trim())));
            listed.push(Listed {
                number: part_number(n)?,
                etags: vec![strip_quotes(e.value()).to_ascii_lowercase()],
                sum,
            });
        }
        // A part listed more than once (consecutively): the last upload of it counts.
        listed.dedup_by(|later, earlier| {
            if later.number != earlier.number {
                return false;
            }
            earlier.etags.append(&mut later.etags);
            earlier.sum = later.sum.take().or(earlier.sum.take());
            true
        });
        let (b, k, id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
        let stored = match self
            .run(&i.bucket, move |s| s.list_parts(&b, &k, &id))
            .await
        {
            Ok(p) => p,
            Err(e) if *e.code() == S3ErrorCode::NoSuchUpload => {
                if !self.was_completed(&format!("{}/{}/{}", i.bucket, i.key, i.upload_id)) {
                    return Err(e);
                }
                return self.completed_again(&i.bucket, &i.key, &listed, e).await;
            }
            Err(e) => return Err(e),
        };
        let mut list = Vec::with_capacity(listed.len());
        let mut sums = Vec::with_capacity(listed.len());
        for l in &listed {
            let have = stored.iter().find(|p| p.number == l.number);
            let etag = match have {
                Some(p) if l.etags.contains(&p.etag) => p.etag.clone(),
                _ => l.etags.last().cloned().unwrap_or_default(),
            };
            if let (Some(want), Some(got)) = (&l.sum, have.and_then(|p| p.checksum.as_ref())) {
                if want != got {
                    return Err(S3Error::with_message(
                        S3ErrorCode::InvalidPart,
                        format!("the checksum of part {} does not match", l.number),
                    ));
                }
            }
            sums.push(have.and_then(|p| p.checksum.clone()));
            list.push((l.number, etag));
        }
        let composite = checksum::composite(&sums);
        if whole.is_some() && whole != composite {
            return Err(aws_error(
                Error::BadDigest("checksum of the multipart object"),
                &i.bucket,
            ));
        }
        let (b, k, id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
        let sum = composite.clone();
        if let Some(r) = self.repl(&i.bucket) {
            // Replicated: the completion is a stamped version with its hints; then the owners.
            let plan = r
                .plan(b.clone(), k.clone())
                .await
                .map_err(super::replica::unavailable)?;
            let stamp = plan.stamp.clone();
            let (info, version) = self
                .run(&i.bucket, move |s| {
                    tm_storage::replication::local::commit_multipart(
                        &s, &b, &k, &id, &list, cond, sum, stamp,
                    )
                })
                .await?;
            self.remember_completed(format!("{}/{}/{}", i.bucket, i.key, i.upload_id));
            let replicas = r
                .replicate(plan, Some(version))
                .await
                .map_err(super::replica::unavailable)?;
            let mut resp = S3Response::new(completed(&i.bucket, &i.key, &info));
            super::replica::set_replicas(&mut resp, Some(replicas));
            return Ok(resp);
        }
        let info = self
            .run(&i.bucket, move |s| {
                s.complete_multipart_if(&b, &k, &id, &list, cond, sum)
            })
            .await?;
        self.remember_completed(format!("{}/{}/{}", i.bucket, i.key, i.upload_id));
        Ok(S3Response::new(completed(&i.bucket, &i.key, &info)))
    }

    /// A CompleteMultipartUpload of an upload already completed: answered like the first one
    /// (200, same ETag) if the object there is the one those parts made, else `NoSuchUpload`.
    async fn completed_again(
        &self,
        bucket: &str,
        key: &str,
        listed: &[Listed],
        no_upload: S3Error,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let mut md5s = Md5::new();
        for l in listed {
            let Some(raw) = l.etags.last().and_then(|e| hex::decode(e).ok()) else {
                return Err(no_upload);
            };
            md5s.update(&raw);
        }
        let want = format!("{}-{}", hex::encode(md5s.finalize()), listed.len());
        let (b, k) = (bucket.to_owned(), key.to_owned());
        match self.run(bucket, move |s| s.head(&b, &k)).await {
            Ok(info) if info.etag == want => Ok(S3Response::new(completed(bucket, key, &info))),
            _ => Err(no_upload),
        }
    }

    pub(super) async fn abort_multipart_upload_op(
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

    pub(super) async fn list_parts_op(
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
        let max = checked_max(i.max_parts, "max-parts")?;
        let sums: std::collections::HashMap<Option<i32>, Option<String>> = all
            .iter()
            .map(|p| (i32::try_from(p.number).ok(), p.checksum.clone()))
            .collect();
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
            .map(|mut part| {
                put_checksum!(part, sums.get(&part.part_number).and_then(|s| s.as_deref()));
                part
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

    pub(super) async fn list_multipart_uploads_op(
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
        let max = checked_max(i.max_uploads, "max-uploads")?;
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
