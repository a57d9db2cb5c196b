//! ListObjects (v1) and ListObjectsV2.

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};
use tm_policy::S3Op;

use super::convert::*;
use super::TmS3;
use crate::access::check;
use crate::list;

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
        (after, with_owner): (Option<String>, bool),
    ) -> S3Result<Listing> {
        let url = is_url(encoding_type.as_ref());
        let max = checked_max(max_keys_in, "maxKeys")?;
        let prefix = prefix.unwrap_or_default();
        // An empty delimiter is no delimiter (and is not echoed).
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let (b, p, d) = (bucket.to_owned(), prefix.clone(), delimiter.clone());
        let page = self
            .run(bucket, move |s| {
                s.bucket(&b)?;
                if max == 0 {
                    // max-keys=0: an empty, complete page (as S3).
                    return Ok(list::Page::default());
                }
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
                .map(|o| to_object(o, url, with_owner))
                .collect(),
            common_prefixes: common_prefixes(page.prefixes, url),
            next_after: page.next_marker,
        })
    }
}

impl TmS3 {
    pub(super) async fn list_objects_op(
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
                (after, true),
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

    pub(super) async fn list_objects_v2_op(
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
                (after, i.fetch_owner == Some(true)),
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
}

/// A page of ListBuckets (as current S3): `prefix`, `max-buckets` (1..=10000; without it and
/// without a token, every bucket) and an opaque `continuation-token` (the base64 of the last
/// name of the previous page).
pub(super) struct BucketPage {
    prefix: String,
    max: usize,
    after: Option<String>,
}

impl BucketPage {
    pub(super) fn of(i: &ListBucketsInput) -> S3Result<BucketPage> {
        use base64::Engine as _;
        let max = match i.max_buckets {
            None => 10_000,
            Some(n) if (1..=10_000).contains(&n) => n as usize,
            Some(_) => {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidArgument,
                    "max-buckets must be an integer between 1 and 10000",
                ))
            }
        };
        let after = match i.continuation_token.as_deref() {
            None => None,
            Some(t) => Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(t)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        S3Error::with_message(
                            S3ErrorCode::InvalidArgument,
                            "The continuation token provided is incorrect",
                        )
                    })?,
            ),
        };
        Ok(BucketPage {
            prefix: i.prefix.clone().unwrap_or_default(),
            max,
            after,
        })
    }

    /// The page of `items` (sorted by name) and the token of the next page, if any.
    pub(super) fn cut<T>(
        &self,
        items: impl Iterator<Item = T>,
        name: impl Fn(&T) -> &str,
    ) -> (Vec<T>, Option<String>) {
        use base64::Engine as _;
        let mut out = Vec::new();
        let mut more = false;
        for it in items {
            let n = name(&it);
            if !n.starts_with(&self.prefix) || self.after.as_deref().is_some_and(|a| n <= a) {
                continue;
            }
            if out.len() == self.max {
                more = true;
                break;
            }
            out.push(it);
        }
        let next = more.then(|| {
            let last = out.last().map(&name).unwrap_or_default();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)
        });
        (out, next)
    }
}
