//! Object and bucket tagging: Put/Get/DeleteObjectTagging (per version), Put/Get/
//! DeleteBucketTagging, the `x-amz-tagging` header of writes, with S3's limits (10 tags per
//! object, 50 per bucket, keys up to 128 and values up to 256 characters, no duplicate keys,
//! no `aws:` keys: otherwise `InvalidTag`). Tags are stored by the engine with the version's
//! record (and the bucket's).

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};
use tm_policy::S3Op;

use super::versioning::version_param;
use super::TmS3;
use crate::access::check;
use crate::auth::pct_decode;

/// Most tags on an object (S3).
const MAX_OBJECT_TAGS: usize = 10;
/// Most tags on a bucket (S3).
const MAX_BUCKET_TAGS: usize = 50;

fn invalid_tag(msg: &str) -> S3Error {
    let code: S3ErrorCode = "InvalidTag".parse().unwrap_or(S3ErrorCode::InvalidArgument);
    let mut e = S3Error::with_message(code, msg.to_owned());
    e.set_status_code(http::StatusCode::BAD_REQUEST);
    e
}

/// Checks `tags` against S3's limits (`max` tags).
pub(super) fn validate(tags: &[(String, String)], max: usize) -> S3Result<()> {
    if tags.len() > max {
        return Err(invalid_tag(&if max == MAX_OBJECT_TAGS {
            format!("Object tags cannot be greater than {max}")
        } else {
            format!("Bucket tag count cannot be greater than {max}")
        }));
    }
    for (i, (k, v)) in tags.iter().enumerate() {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(invalid_tag(
                "The TagKey you have provided is invalid (1 to 128 characters)",
            ));
        }
        if v.chars().count() > 256 {
            return Err(invalid_tag(
                "The TagValue you have provided is too long, max 256",
            ));
        }
        if k.starts_with("aws:") {
            return Err(invalid_tag("Your TagKey cannot be prefixed with aws:"));
        }
        if tags[..i].iter().any(|(k2, _)| k2 == k) {
            return Err(invalid_tag(
                "Cannot provide multiple Tags with the same key",
            ));
        }
    }
    Ok(())
}

/// The tags of an `x-amz-tagging` header (`k1=v1&k2=v2`, URL-encoded), checked; None without
/// the header.
pub(super) fn header_tags(h: &http::HeaderMap) -> S3Result<Option<Vec<(String, String)>>> {
    let Some(v) = h.get("x-amz-tagging") else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| invalid_tag("The x-amz-tagging header is not valid"))?;
    let tags: Vec<(String, String)> = v
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let d = |s: &str| pct_decode(&s.replace('+', " "));
            (d(k), d(v))
        })
        .collect();
    validate(&tags, MAX_OBJECT_TAGS)?;
    Ok(Some(tags))
}

fn from_dto(set: &[Tag]) -> Vec<(String, String)> {
    set.iter()
        .map(|t| {
            (
                t.key.clone().unwrap_or_default(),
                t.value.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn to_dto(tags: Vec<(String, String)>) -> TagSet {
    tags.into_iter()
        .map(|(k, v)| Tag {
            key: Some(k),
            value: Some(v),
        })
        .collect()
}

impl TmS3 {
    pub(super) async fn put_object_tagging_op(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let i = req.input;
        let tags = from_dto(&i.tagging.tag_set);
        validate(&tags, MAX_OBJECT_TAGS)?;
        self.set_tags(i.bucket, i.key, i.version_id, tags).await
    }

    pub(super) async fn delete_object_tagging_op(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Write)?;
        let i = req.input;
        let out = self
            .set_tags(i.bucket, i.key, i.version_id, Vec::new())
            .await?;
        Ok(S3Response::new(DeleteObjectTaggingOutput {
            version_id: out.output.version_id,
        }))
    }

    async fn set_tags(
        &self,
        bucket: String,
        key: String,
        version: Option<String>,
        tags: Vec<(String, String)>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        let v = version_param(version.as_deref())?;
        let asked = v.is_some();
        let b = bucket.clone();
        let info = self
            .run(&bucket, move |s| {
                s.set_object_tags(&b, &key, v.as_deref(), tags)
            })
            .await?;
        Ok(S3Response::new(PutObjectTaggingOutput {
            version_id: info.version_id.or_else(|| asked.then(|| "null".to_owned())),
        }))
    }

    pub(super) async fn get_object_tagging_op(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        check(&req, &req.input.bucket, &req.input.key, S3Op::Read)?;
        let i = req.input;
        let v = version_param(i.version_id.as_deref())?;
        let asked = v.is_some();
        let (b, k) = (i.bucket.clone(), i.key.clone());
        let info = self
            .run(&i.bucket, move |s| match v {
                Some(v) => s.head_version(&b, &k, &v),
                None => s.head(&b, &k),
            })
            .await?;
        Ok(S3Response::new(GetObjectTaggingOutput {
            tag_set: to_dto(info.meta.tags),
            version_id: info.version_id.or_else(|| asked.then(|| "null".to_owned())),
        }))
    }

    pub(super) async fn put_bucket_tagging_op(
        &self,
        req: S3Request<PutBucketTaggingInput>,
    ) -> S3Result<S3Response<PutBucketTaggingOutput>> {
        check(&req, &req.input.bucket, "", S3Op::Admin)?;
        let tags = from_dto(&req.input.tagging.tag_set);
        validate(&tags, MAX_BUCKET_TAGS)?;
        let b = req.input.bucket.clone();
        self.run(&req.input.bucket, move |s| s.set_bucket_tags(&b, tags))
            .await?;
        // 204, as S3 answers (s3s would say 200).
        let mut r = S3Response::new(PutBucketTaggingOutput {});
        r.headers
            .insert(crate::STATUS_HEADER, http::HeaderValue::from_static("204"));
        Ok(r)
    }

    pub(super) async fn get_bucket_tagging_op(
        &self,
        req: S3Request<GetBucketTaggingInput>,
    ) -> S3Result<S3Response<GetBucketTaggingOutput>> {
        check(&req, &req.input.bucket, "", S3Op::Read)?;
        let b = req.input.bucket.clone();
        let tags = self
            .run(&req.input.bucket, move |s| s.bucket_tags(&b))
            .await?;
        if tags.is_empty() {
            return Err(S3Error::with_message(
                S3ErrorCode::NoSuchTagSet,
                "The TagSet does not exist",
            ));
        }
        Ok(S3Response::new(GetBucketTaggingOutput {
            tag_set: to_dto(tags),
        }))
    }

    pub(super) async fn delete_bucket_tagging_op(
        &self,
        req: S3Request<DeleteBucketTaggingInput>,
    ) -> S3Result<S3Response<DeleteBucketTaggingOutput>> {
        check(&req, &req.input.bucket, "", S3Op::Admin)?;
        let b = req.input.bucket.clone();
        self.run(&req.input.bucket, move |s| {
            s.set_bucket_tags(&b, Vec::new())
        })
        .await?;
        Ok(S3Response::new(DeleteBucketTaggingOutput {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn limits() {
        assert!(validate(&t(&[("a", "b"), ("c", "")]), 10).is_ok());
        let many: Vec<_> = (0..11).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate(&many, 10).is_err());
        assert!(validate(&many, 50).is_ok());
        assert!(validate(&t(&[(&"k".repeat(129), "v")]), 10).is_err());
        assert!(validate(&t(&[(&"k".repeat(128), &"v".repeat(256))]), 10).is_ok());
        assert!(validate(&t(&[("k", &"v".repeat(257))]), 10).is_err());
        assert!(validate(&t(&[("a", "1"), ("a", "2")]), 10).is_err());
        assert!(validate(&t(&[("aws:x", "1")]), 10).is_err());
        assert!(validate(&t(&[("", "1")]), 10).is_err());
        let e = validate(&t(&[("a", "1"), ("a", "2")]), 10).unwrap_err();
        assert_eq!(e.code().as_str(), "InvalidTag");
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-amz-tagging",
            http::HeaderValue::from_static("a=1&b%20c=d+e&empty="),
        );
        assert_eq!(
            header_tags(&h).unwrap(),
            Some(t(&[("a", "1"), ("b c", "d e"), ("empty", "")]))
        );
    }
}
