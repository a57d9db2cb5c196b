//! Bucket versioning: Get/PutBucketVersioning, ListObjectVersions, versioned deletes.

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};
use tm_policy::S3Op;
use tm_storage::{Deleted, VersionEntry, Versioning};

use super::convert::*;
use super::TmS3;
use crate::access::check;

/// The version id as answered (`null` for the null version).
pub(super) fn vid(v: Option<&str>) -> String {
    v.unwrap_or("null").to_owned()
}

/// A `versionId` parameter: `None` absent; refuses an empty one.
pub(super) fn version_param(v: Option<&str>) -> S3Result<Option<String>> {
    match v {
        Some("") => Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            "Version id cannot be the empty string",
        )),
        v => Ok(v.map(str::to_owned)),
    }
}

/// One line of a version listing.
enum Item {
    Version(Box<VersionEntry>),
    Prefix(String),
}

impl TmS3 {
    pub(super) async fn get_bucket_versioning_op(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        check(&req, &req.input.bucket, "", S3Op::Read)?;
        let b = req.input.bucket.clone();
        let v = self
            .run(&req.input.bucket, move |s| s.versioning(&b))
            .await?;
        let status = match v {
            Versioning::Unversioned => None,
            Versioning::Enabled => Some(BucketVersioningStatus::ENABLED),
            Versioning::Suspended => Some(BucketVersioningStatus::SUSPENDED),
        };
        Ok(S3Response::new(GetBucketVersioningOutput {
            status: status.map(BucketVersioningStatus::from_static),
            mfa_delete: None,
        }))
    }

    pub(super) async fn put_bucket_versioning_op(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        check(&req, &req.input.bucket, "", S3Op::Admin)?;
        let c = &req.input.versioning_configuration;
        if c.mfa_delete
            .as_ref()
            .is_some_and(|m| m.as_str() == MFADelete::ENABLED)
        {
            return Err(S3Error::with_message(
                S3ErrorCode::NotImplemented,
                "MFA delete is not implemented",
            ));
        }
        let v = match c.status.as_ref().map(BucketVersioningStatus::as_str) {
            Some(BucketVersioningStatus::ENABLED) => Versioning::Enabled,
            Some(BucketVersioningStatus::SUSPENDED) => Versioning::Suspended,
            _ => {
                return Err(S3Error::with_message(
                    S3ErrorCode::MalformedXML,
                    "Status must be Enabled or Suspended",
                ))
            }
        };
        let b = req.input.bucket.clone();
        self.run(&req.input.bucket, move |s| {
            // Suspending a bucket that was never versioned leaves it unversioned (as S3 would
            // answer Suspended; the behaviour of both is the same for writes of `null`).
            if v == Versioning::Suspended && s.versioning(&b)? == Versioning::Unversioned {
                return s.set_versioning(&b, Versioning::Suspended);
            }
            s.set_versioning(&b, v)
        })
        .await?;
        self.bucket_changed(&req.input.bucket, crate::access::principal(&req)?)
            .await?;
        Ok(S3Response::new(PutBucketVersioningOutput {}))
    }

    pub(super) async fn delete_object_op(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let v = version_param(req.input.version_id.as_deref())?;
        let (b, k) = (req.input.bucket.clone(), req.input.key.clone());
        if let Some(r) = self.repl(&b) {
            if v.is_some() {
                return Err(super::replica::not_replicated("deleting one version"));
            }
            let plan = r
                .plan(b.clone(), k.clone())
                .await
                .map_err(super::replica::unavailable)?;
            let stamp = plan.stamp.clone();
            let version = self
                .run(&req.input.bucket, move |s| {
                    tm_storage::replication::local::commit_delete(&s, &b, &k, stamp)
                })
                .await?;
            let vid = version.dot.version_id();
            let replicas = r
                .replicate(plan, Some(version))
                .await
                .map_err(super::replica::unavailable)?;
            let mut resp = S3Response::new(DeleteObjectOutput {
                delete_marker: Some(true),
                version_id: Some(vid),
                ..Default::default()
            });
            super::replica::set_replicas(&mut resp, Some(replicas));
            return Ok(resp);
        }
        let (d, versioned) = self
            .run(&req.input.bucket, move |s| {
                let versioned = s.versioning(&b)? != Versioning::Unversioned;
                Ok((s.delete_version(&b, &k, v.as_deref())?, versioned))
            })
            .await?;
        Ok(S3Response::new(deleted_output(&d, versioned)))
    }

    pub(super) async fn list_object_versions_op(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let i = &req.input;
        check(
            &req,
            &i.bucket,
            i.prefix.as_deref().unwrap_or(""),
            S3Op::List,
        )?;
        let i = req.input;
        let url = is_url(i.encoding_type.as_ref());
        let max = checked_max(i.max_keys, "maxKeys")?;
        let prefix = i.prefix.clone().unwrap_or_default();
        let delim = i.delimiter.clone().filter(|d| !d.is_empty());
        let key_marker = i.key_marker.clone().filter(|k| !k.is_empty());
        let vid_marker = i.version_id_marker.clone().filter(|v| !v.is_empty());
        if vid_marker.is_some() && key_marker.is_none() {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                "A version-id marker cannot be specified without a key marker.",
            ));
        }
        let b = i.bucket.clone();
        let (p, d) = (prefix.clone(), delim.clone());
        let (items, truncated) = self
            .run(&i.bucket, move |s| {
                s.bucket(&b)?;
                let mut items: Vec<Item> = Vec::new();
                let mut after: Option<(String, Option<String>)> =
                    key_marker.map(|k| (k, vid_marker));
                if max == 0 {
                    return Ok((items, false));
                }
                'fetch: loop {
                    let a = after.as_ref().map(|(k, v)| (k.as_str(), v.as_deref()));
                    let batch = s.list_versions(&b, &p, a, 1000)?;
                    if batch.is_empty() {
                        return Ok((items, false));
                    }
                    for e in batch {
                        let rest = &e.key[p.len()..];
                        if let Some(cp) = d
                            .as_deref()
                            .and_then(|d| rest.find(d).map(|at| &rest[..at + d.len()]))
                        {
                            if items.len() == max {
                                return Ok((items, true));
                            }
                            let cp = format!("{p}{cp}");
                            after = Some((format!("{cp}{}", char::MAX), None));
                            items.push(Item::Prefix(cp));
                            continue 'fetch;
                        }
                        if items.len() == max {
                            return Ok((items, true));
                        }
                        after = Some((e.key.clone(), Some(vid(e.version_id.as_deref()))));
                        items.push(Item::Version(Box::new(e)));
                    }
                }
            })
            .await?;
        let (mut versions, mut markers, mut prefixes) = (Vec::new(), Vec::new(), Vec::new());
        let (mut next_key, mut next_vid) = (None, None);
        for it in items {
            match it {
                Item::Prefix(p) => {
                    next_key = Some(p.clone());
                    next_vid = None;
                    prefixes.push(CommonPrefix {
                        prefix: Some(enc_if(url, p)),
                    });
                }
                Item::Version(e) => {
                    let e = *e;
                    next_key = Some(e.key.clone());
                    next_vid = Some(vid(e.version_id.as_deref()));
                    match e.info {
                        Some(info) => versions.push(ObjectVersion {
                            e_tag: Some(etag(&info.etag)),
                            is_latest: Some(e.is_latest),
                            key: Some(enc_if(url, e.key)),
                            last_modified: Some(ts(info.modified)),
                            owner: Some(owner()),
                            size: i64::try_from(info.size).ok(),
                            storage_class: Some(ObjectVersionStorageClass::from_static(
                                ObjectVersionStorageClass::STANDARD,
                            )),
                            version_id: Some(vid(e.version_id.as_deref())),
                            ..Default::default()
                        }),
                        None => markers.push(DeleteMarkerEntry {
                            is_latest: Some(e.is_latest),
                            key: Some(enc_if(url, e.key)),
                            last_modified: Some(ts(e.modified)),
                            owner: Some(owner()),
                            version_id: Some(vid(e.version_id.as_deref())),
                        }),
                    }
                }
            }
        }
        Ok(S3Response::new(ListObjectVersionsOutput {
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            delete_markers: (!markers.is_empty()).then_some(markers),
            versions: (!versions.is_empty()).then_some(versions),
            delimiter: delim.map(|d| enc_if(url, d)),
            encoding_type: i.encoding_type,
            is_truncated: Some(truncated),
            key_marker: Some(enc_if(url, i.key_marker.unwrap_or_default())),
            version_id_marker: Some(i.version_id_marker.unwrap_or_default()),
            max_keys: i32::try_from(max).ok(),
            name: Some(i.bucket),
            prefix: Some(enc_if(url, prefix)),
            next_key_marker: truncated
                .then(|| next_key.map(|k| enc_if(url, k)))
                .flatten(),
            next_version_id_marker: truncated.then_some(next_vid).flatten(),
            ..Default::default()
        }))
    }
}

/// The answer to a DeleteObject.
fn deleted_output(d: &Deleted, versioned: bool) -> DeleteObjectOutput {
    DeleteObjectOutput {
        delete_marker: d.delete_marker.then_some(true),
        version_id: (versioned || d.version_id.is_some()).then(|| vid(d.version_id.as_deref())),
        ..Default::default()
    }
}
