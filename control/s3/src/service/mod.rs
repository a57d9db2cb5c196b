//! The `s3s::S3` implementation over `tm_storage::Store`. Every operation first asks
//! [`crate::access`] whether the principal the front layer put into the request extensions may
//! read or write the bucket (and, for copies, read the source bucket). Engine calls run on the blocking pool.

mod convert;
mod listing;
mod multipart;
mod objects;
mod objio;
mod replica;
mod tagging;
mod versioning;

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};
use tm_storage::{StorageError, Store};

use crate::access::{check, principal};
use crate::error::{aws_error, Error};
use crate::SYSTEM_BUCKET;
use convert::*;
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
    /// The configured region (bucket locations, `CreateBucket` constraints).
    region: String,
    /// Recently completed multipart uploads (`bucket/key/upload id`), newest last: a repeated
    /// CompleteMultipartUpload of one of them is answered like the first (AWS does so for a
    /// while); older or unknown ids get `NoSuchUpload`.
    completed: std::sync::Mutex<std::collections::VecDeque<String>>,
    /// Told of bucket changes ([`crate::Authority::bucket_changed`]).
    authority: Option<std::sync::Arc<dyn crate::Authority>>,
    /// The object replication driver (`replica.rs`).
    replicator: Option<std::sync::Arc<dyn tm_storage::replication::hook::Replicator>>,
}

/// How many completed uploads are remembered.
const COMPLETED_MEMORY: usize = 4096;

impl TmS3 {
    pub(crate) fn new(
        store: Store,
        region: String,
        authority: Option<std::sync::Arc<dyn crate::Authority>>,
    ) -> Self {
        Self {
            store,
            region,
            completed: std::sync::Mutex::new(std::collections::VecDeque::new()),
            authority,
            replicator: None,
        }
    }

    /// Tells the authority that `who` changed bucket `bucket` (created, versioning, deleted:
    /// its settings are read back from the store), before the request is answered.
    async fn bucket_changed(&self, bucket: &str, who: &crate::Principal) -> S3Result<()> {
        let Some(a) = self.authority.clone() else {
            return Ok(());
        };
        let (store, b, who) = (self.store.clone(), bucket.to_owned(), who.clone());
        let r = tokio::task::spawn_blocking(move || {
            let now = match store.bucket(&b) {
                Ok(info) => Some(crate::BucketSettings {
                    quota: info.quota,
                    versioning: store.versioning(&b).unwrap_or_default(),
                }),
                Err(_) => None,
            };
            a.bucket_changed(&b, now.as_ref(), &who)
        })
        .await
        .map_err(S3Error::internal_error)?;
        r.map_err(|why| {
            S3Error::with_message(
                S3ErrorCode::InternalError,
                format!("done on this node, but not recorded for the other coordinators: {why}"),
            )
        })
    }

    pub(crate) fn with_replicator(
        mut self,
        r: Option<std::sync::Arc<dyn tm_storage::replication::hook::Replicator>>,
    ) -> Self {
        self.replicator = r;
        self
    }

    fn remember_completed(&self, id: String) {
        let mut c = self.completed.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() >= COMPLETED_MEMORY {
            c.pop_front();
        }
        c.push_back(id);
    }

    fn was_completed(&self, id: &str) -> bool {
        let c = self.completed.lock().unwrap_or_else(|p| p.into_inner());
        c.iter().any(|x| x == id)
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

#[async_trait::async_trait]
impl S3 for TmS3 {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let me = principal(&req)?.clone();
        let page = listing::BucketPage::of(&req.input)?;
        let buckets = self.run("", |s| s.list_buckets()).await?;
        let visible = buckets
            .into_iter()
            .filter(|b| crate::access::visible(&req, &me, &b.name));
        let (buckets, next) = page.cut(visible, |b| &b.name);
        let buckets = buckets
            .into_iter()
            .map(|b| Bucket {
                name: Some(b.name),
                creation_date: Some(ts(b.created)),
                bucket_region: Some(self.region.clone()),
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(owner()),
            continuation_token: next,
            prefix: req.input.prefix.clone(),
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket.clone();
        check(&req, &bucket, "", S3Op::Admin)?;
        let constraint = req
            .input
            .create_bucket_configuration
            .as_ref()
            .and_then(|c| c.location_constraint.as_ref())
            .map(|l| l.as_str().to_owned());
        if constraint.as_ref().is_some_and(|c| *c != self.region) {
            return Err(S3Error::with_message(
                S3ErrorCode::IllegalLocationConstraintException,
                format!(
                    "The {} location constraint is incompatible for the region specific \
                     endpoint this request was sent to ({}).",
                    constraint.unwrap_or_default(),
                    self.region
                ),
            ));
        }
        let b = bucket.clone();
        match self.run(&bucket, move |s| s.create_bucket(&b)).await {
            Ok(()) => self.bucket_changed(&bucket, principal(&req)?).await?,
            // As us-east-1: re-creating a bucket you own succeeds (every bucket here is ours).
            Err(e)
                if *e.code() == S3ErrorCode::BucketAlreadyOwnedByYou
                    && self.region == crate::DEFAULT_REGION => {}
            Err(e) => return Err(e),
        }
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
        self.bucket_changed(&bucket, principal(&req)?).await?;
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
        // us-east-1 is answered as an empty constraint (as AWS).
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: (self.region != crate::DEFAULT_REGION)
                .then(|| BucketLocationConstraint::from(self.region.clone())),
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.put_object_op(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.get_object_op(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.head_object_op(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.delete_object_op(req).await
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        self.get_bucket_versioning_op(req).await
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        self.put_object_tagging_op(req).await
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        self.get_object_tagging_op(req).await
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        self.delete_object_tagging_op(req).await
    }

    async fn put_bucket_tagging(
        &self,
        req: S3Request<PutBucketTaggingInput>,
    ) -> S3Result<S3Response<PutBucketTaggingOutput>> {
        self.put_bucket_tagging_op(req).await
    }

    async fn get_bucket_tagging(
        &self,
        req: S3Request<GetBucketTaggingInput>,
    ) -> S3Result<S3Response<GetBucketTaggingOutput>> {
        self.get_bucket_tagging_op(req).await
    }

    async fn delete_bucket_tagging(
        &self,
        req: S3Request<DeleteBucketTaggingInput>,
    ) -> S3Result<S3Response<DeleteBucketTaggingOutput>> {
        self.delete_bucket_tagging_op(req).await
    }

    async fn put_bucket_versioning(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        self.put_bucket_versioning_op(req).await
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        self.list_object_versions_op(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.refuse_replicated(&req.input.bucket, "DeleteObjects")?;
        for o in &req.input.delete.objects {
            check(&req, &req.input.bucket, &o.key, S3Op::Write)?;
            versioning::version_param(o.version_id.as_deref())?;
        }
        let bucket = req.input.bucket.clone();
        let quiet = req.input.delete.quiet.unwrap_or(false);
        let keys: Vec<(String, Option<String>)> = req
            .input
            .delete
            .objects
            .into_iter()
            .map(|o| (o.key, o.version_id))
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
                    .map(|(k, v)| {
                        let r = s.delete_version(&b, &k, v.as_deref());
                        (k, r)
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (k, r) in results {
            match r {
                Ok(d) => {
                    if !quiet {
                        let v = d.version_id.as_deref().map(str::to_owned);
                        deleted.push(DeletedObject {
                            key: Some(k),
                            delete_marker: d.delete_marker.then_some(true),
                            delete_marker_version_id: d.delete_marker.then(|| v.clone()).flatten(),
                            version_id: v,
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
        self.refuse_replicated(&req.input.bucket, "CopyObject")?;
        self.copy_object_op(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.list_objects_op(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.list_objects_v2_op(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.create_multipart_upload_op(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.upload_part_op(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.refuse_replicated(&req.input.bucket, "UploadPartCopy")?;
        self.upload_part_copy_op(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.complete_multipart_upload_op(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.abort_multipart_upload_op(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.list_parts_op(req).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.list_multipart_uploads_op(req).await
    }
}
