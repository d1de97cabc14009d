//! The S3 side of the backend: [`Bucket`], the S3 calls it makes (each
//! wrapped in `metrics::store_call`, S3's answers turned into what the
//! engine needs: a missing key is `None`, a failed precondition is
//! [`Written::Conflict`], everything else an [`Error`] naming the bucket and
//! key, never a value), and [`S3Store`], the engine's [`HeadStore`] over it.

use async_trait::async_trait;
use aws_sdk_s3::{
    Client,
    error::{ProvideErrorMetadata, SdkError},
    operation::head_bucket::HeadBucketError,
    primitives::ByteStream,
    types::{Delete, ObjectIdentifier, ServerSideEncryption},
};
use bytes::Bytes;
use serde_json::Value as Json;
use shared::{
    Describe, Error, ErrorKind, Result, TypeInstanceId, Value,
    engine::{self, Head, HeadStore, Slot, Stored, head},
    metrics::store_call,
};

/// S3's limit for one PutObject is 5 GiB; the gRPC message limit and
/// `APP_MAX_VALUE_BYTES` lower it in practice.
const MAX_VALUE_BYTES: u64 = 5 << 30;

/// User metadata key (`x-amz-meta-capact-epoch`) of a revision object's
/// epoch: GetObject returns it with the body, in the same call.
const EPOCH_META: &str = "capact-epoch";

/// Server-side encryption requested on every object we write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sse {
    /// No header: the bucket's default encryption applies.
    BucketDefault,
    /// SSE-S3 (`AES256`).
    S3,
    /// SSE-KMS with the given key (or the account's `aws/s3` key if `None`).
    Kms(Option<String>),
}

/// The precondition of a write.
#[derive(Clone, Copy, Debug)]
pub enum Cond<'a> {
    /// `If-None-Match: *`: create only.
    Create,
    /// `If-Match: <etag>`: replace exactly the version that was read.
    Match(&'a str),
}

/// Outcome of a conditional write.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Stored; carries the new ETag.
    Ok(String),
    /// The precondition failed (412), a concurrent conditional write was in
    /// progress (409), or the object to replace is gone (404).
    Conflict,
}

/// An object read: body, ETag and the epoch from its metadata, if any.
pub struct Read {
    pub body: Bytes,
    pub etag: String,
    pub epoch: Option<String>,
}

/// One bucket, as the backend uses it.
pub struct Bucket {
    pub client: Client,
    pub name: String,
    pub sse: Sse,
    /// `key=value` URL-encoded tag set put on every object, if any.
    pub tagging: Option<String>,
    /// Remove every version (and delete marker) of a key when deleting it.
    pub purge_versions: bool,
}

/// Whether a service error is an HTTP `code`.
fn is_status<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>, code: u16) -> bool {
    shared_aws::status(err).map(|s| s.as_u16()) == Some(code)
}

/// An SDK error the caller does not interpret, as a backend error naming
/// the operation, bucket and key; the SDK error is the (logged) source.
fn service_error<E>(
    bucket: &str,
    op: &str,
    key: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let what = format!("s3 {op} of {bucket}/{key}");
    if shared_aws::code(&err) == Some("NoSuchBucket") {
        let msg = format!("{what}: the bucket {bucket} does not exist");
        return Error::unavailable(msg)
            .with_source(aws_sdk_s3::error::DisplayErrorContext(err).to_string());
    }
    shared_aws::to_error(&what, err)
}

impl Bucket {
    fn error<E>(
        &self,
        op: &str,
        key: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        service_error(&self.name, op, key, err)
    }

    /// HeadBucket: the health probe and the start-up check.
    pub async fn head_bucket(&self) -> Result<()> {
        store_call("head_bucket", async {
            match self.client.head_bucket().bucket(&self.name).send().await {
                Ok(_) => Ok(()),
                Err(e) => Err(self.head_bucket_error(e)),
            }
        })
        .await
    }

    fn head_bucket_error(
        &self,
        err: SdkError<HeadBucketError, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Error {
        let source = aws_sdk_s3::error::DisplayErrorContext(&err).to_string();
        if is_status(&err, 404)
            || matches!(&err, SdkError::ServiceError(e) if e.err().is_not_found())
        {
            return Error::failed_precondition(format!(
                "s3 bucket {} does not exist (HeadBucket answered 404): create it or set \
                 APP_S3_BUCKET to an existing bucket",
                self.name
            ))
            .with_source(source);
        }
        match shared_aws::common_kind(&err) {
            Some(ErrorKind::PermissionDenied) => Error::permission_denied(format!(
                "s3 HeadBucket of {} was denied: the credentials need s3:ListBucket on it",
                self.name
            ))
            .with_source(source),
            Some(ErrorKind::Unavailable) => {
                Error::unavailable(format!("s3 bucket {} cannot be reached", self.name))
                    .with_source(source)
            }
            _ => Error::internal(format!("s3 HeadBucket of {} failed", self.name))
                .with_source(source),
        }
    }

    /// GetObject; `None` if the key does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Read>> {
        store_call("get_object", async {
            let out = match self
                .client
                .get_object()
                .bucket(&self.name)
                .key(key)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e)
                    if shared_aws::code(&e) == Some("NoSuchKey")
                        || (is_status(&e, 404) && shared_aws::code(&e) != Some("NoSuchBucket")) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(self.error("GetObject", key, e)),
            };
            let etag = out.e_tag().unwrap_or_default().to_owned();
            let epoch = out.metadata().and_then(|m| m.get(EPOCH_META)).cloned();
            let body = out.body.collect().await.map_err(|e| {
                Error::unavailable(format!(
                    "s3 GetObject of {}/{key}: the body could not be read",
                    self.name
                ))
                .with_source(e)
            })?;
            Ok(Some(Read {
                body: body.into_bytes(),
                etag,
                epoch,
            }))
        })
        .await
    }

    /// PutObject with a precondition, our tags and encryption, and the
    /// epoch (revision objects) in the metadata.
    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        cond: Cond<'_>,
        epoch: Option<u64>,
    ) -> Result<Written> {
        store_call("put_object", async {
            let mut req = self
                .client
                .put_object()
                .bucket(&self.name)
                .key(key)
                .content_type("application/octet-stream")
                .body(ByteStream::from(body));
            req = match cond {
                Cond::Create => req.if_none_match("*"),
                Cond::Match(etag) => req.if_match(etag),
            };
            if let Some(tags) = &self.tagging {
                req = req.tagging(tags);
            }
            if let Some(epoch) = epoch {
                req = req.metadata(EPOCH_META, epoch.to_string());
            }
            req = match &self.sse {
                Sse::BucketDefault => req,
                Sse::S3 => req.server_side_encryption(ServerSideEncryption::Aes256),
                Sse::Kms(key_id) => req
                    .server_side_encryption(ServerSideEncryption::AwsKms)
                    .set_ssekms_key_id(key_id.clone()),
            };
            match req.send().await {
                Ok(out) => Ok(Written::Ok(out.e_tag().unwrap_or_default().to_owned())),
                // 412: the precondition failed. 409 ConditionalRequestConflict:
                // another conditional write to the key was in flight. 404 on
                // If-Match: the object was removed meanwhile. All three mean
                // "someone else changed it": re-read and decide again.
                Err(e)
                    if is_status(&e, 412)
                        || is_status(&e, 409)
                        || (matches!(cond, Cond::Match(_))
                            && shared_aws::code(&e) == Some("NoSuchKey")) =>
                {
                    Ok(Written::Conflict)
                }
                Err(e) => Err(self.error("PutObject", key, e)),
            }
        })
        .await
    }

    /// Keys under `prefix` (ListObjectsV2, every page).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        store_call("list_objects", async {
            let mut keys = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let out = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.name)
                    .prefix(prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| self.error("ListObjectsV2", prefix, e))?;
                keys.extend(
                    out.contents()
                        .iter()
                        .filter_map(|o| o.key())
                        .map(str::to_owned),
                );
                match out.next_continuation_token() {
                    Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                    _ => return Ok(keys),
                }
            }
        })
        .await
    }

    /// Every version and delete marker of keys under `prefix`
    /// (ListObjectVersions, every page), as `(key, version id)`.
    async fn versions(&self, prefix: &str) -> Result<Vec<(String, Option<String>)>> {
        store_call("list_object_versions", async {
            let mut all = Vec::new();
            let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
            loop {
                let out = self
                    .client
                    .list_object_versions()
                    .bucket(&self.name)
                    .prefix(prefix)
                    .set_key_marker(key_marker.take())
                    .set_version_id_marker(version_marker.take())
                    .send()
                    .await
                    .map_err(|e| self.error("ListObjectVersions", prefix, e))?;
                let versions = out.versions().iter().map(|v| (v.key(), v.version_id()));
                let markers = out
                    .delete_markers()
                    .iter()
                    .map(|m| (m.key(), m.version_id()));
                for (key, version) in versions.chain(markers) {
                    if let Some(key) = key {
                        all.push((key.to_owned(), version.map(str::to_owned)));
                    }
                }
                if out.is_truncated() != Some(true) {
                    return Ok(all);
                }
                key_marker = out.next_key_marker().map(str::to_owned);
                version_marker = out.next_version_id_marker().map(str::to_owned);
                if key_marker.is_none() {
                    return Ok(all);
                }
            }
        })
        .await
    }

    /// Removes `key` (DeleteObject); with `purge_versions`, every stored
    /// version and delete marker of it instead. Gone already is success.
    pub async fn remove(&self, key: &str) -> Result<()> {
        if !self.purge_versions {
            return store_call("delete_object", async {
                match self
                    .client
                    .delete_object()
                    .bucket(&self.name)
                    .key(key)
                    .send()
                    .await
                {
                    Ok(_) => Ok(()),
                    // S3 answers 204 for a missing key; some compatible stores 404.
                    Err(e) if shared_aws::code(&e) == Some("NoSuchKey") => Ok(()),
                    Err(e) => Err(self.error("DeleteObject", key, e)),
                }
            })
            .await;
        }
        // The listing is by prefix: keep exactly this key's versions. Nothing
        // listed means nothing to remove; a plain DELETE would only leave a
        // delete marker behind on a versioned bucket.
        let targets: Vec<_> = self
            .versions(key)
            .await?
            .into_iter()
            .filter(|(k, _)| k == key)
            .collect();
        for batch in targets.chunks(1000) {
            self.delete_batch(batch).await?;
        }
        Ok(())
    }

    async fn delete_batch(&self, batch: &[(String, Option<String>)]) -> Result<()> {
        let Some((first, _)) = batch.first() else {
            return Ok(());
        };
        store_call("delete_objects", async {
            let objects = batch
                .iter()
                .map(|(key, version)| {
                    ObjectIdentifier::builder()
                        .key(key)
                        .set_version_id(version.clone())
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::internal("building a delete request failed").with_source(e))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| Error::internal("building a delete request failed").with_source(e))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.name)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.error("DeleteObjects", first, e))?;
            // Per-key failures come back in a 200 answer.
            if let Some(err) = out.errors().iter().find(|e| e.code() != Some("NoSuchKey")) {
                let key = err.key().unwrap_or(first);
                let msg = format!("s3 DeleteObjects of {}/{key} failed", self.name);
                let source = format!(
                    "{}: {}",
                    err.code().unwrap_or("unknown"),
                    err.message().unwrap_or_default()
                );
                return Err(match err.code() {
                    Some("AccessDenied") => Error::permission_denied(format!(
                        "s3 DeleteObjects of {}/{key}: access denied by the store",
                        self.name
                    )),
                    Some("InternalError" | "SlowDown" | "ServiceUnavailable") => {
                        Error::unavailable(format!("{msg}: store unavailable"))
                    }
                    _ => Error::internal(msg),
                }
                .with_source(source));
            }
            Ok(())
        })
        .await
    }
}

/// The engine's store: heads at `<prefix>/<id>/head`, revisions at
/// `<prefix>/<id>/<life>/<n>` (`rev/<n>` for heads written before lives).
pub struct S3Store {
    bucket: Bucket,
    prefix: String,
}

/// The head's JSON plus a fresh `write` field: two heads with equal content
/// must never share an ETag, or a stale If-Match could succeed.
fn head_body(head: &Head) -> Result<Bytes> {
    let mut map = head.to_map();
    map.insert(
        "write".to_owned(),
        Json::String(uuid::Uuid::new_v4().simple().to_string()),
    );
    serde_json::to_vec(&Json::Object(map))
        .map(Bytes::from)
        .map_err(|e| Error::internal("encoding the head failed").with_source(e))
}

impl S3Store {
    pub fn new(bucket: Bucket, prefix: String) -> Self {
        S3Store { bucket, prefix }
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    fn base(&self, id: &TypeInstanceId) -> String {
        if self.prefix.is_empty() {
            format!("{id}/")
        } else {
            format!("{}/{id}/", self.prefix)
        }
    }

    fn head_key(&self, id: &TypeInstanceId) -> String {
        format!("{}head", self.base(id))
    }

    fn life_prefix(&self, id: &TypeInstanceId, life: &str) -> String {
        if life.is_empty() {
            format!("{}rev/", self.base(id))
        } else {
            format!("{}{life}/", self.base(id))
        }
    }

    fn rev_key(&self, at: Slot<'_>) -> String {
        format!("{}{}", self.life_prefix(at.id, at.life), at.rev)
    }

    fn what(&self, key: &str) -> String {
        format!("{}/{key}", self.bucket.name)
    }
}

#[async_trait]
impl HeadStore for S3Store {
    fn describe(&self) -> Describe {
        Describe {
            name: "s3",
            version: env!("CARGO_PKG_VERSION"),
            accept_value: true,
            context_schema: None,
            context_required: false,
            max_value_bytes: MAX_VALUE_BYTES,
        }
    }

    /// HeadBucket on the configured bucket.
    async fn probe(&self) -> Result<()> {
        self.bucket.head_bucket().await
    }

    /// One listing of the prefix, then a GET per head (admin only).
    async fn list_heads(&self) -> Result<Vec<(TypeInstanceId, Head)>> {
        let root = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let keys = self.bucket.list(&root).await?;
        Ok(engine::heads_at_keys(self, &root, keys).await)
    }

    async fn read_head(&self, id: &TypeInstanceId) -> Result<Option<(Head, String)>> {
        let key = self.head_key(id);
        let Some(read) = self.bucket.get(&key).await? else {
            return Ok(None);
        };
        let head = head::decode("s3 object", &self.what(&key), &read.body)?;
        // The life becomes part of keys: anything but our hex tokens would
        // reach outside this TypeInstance's own objects.
        if !head.life.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(head::foreign("s3 object", &self.what(&key)));
        }
        Ok(Some((head, read.etag)))
    }

    async fn create_head(&self, id: &TypeInstanceId, head: &Head) -> Result<Option<String>> {
        let key = self.head_key(id);
        match self
            .bucket
            .put(&key, head_body(head)?, Cond::Create, None)
            .await?
        {
            Written::Ok(tag) => Ok(Some(tag)),
            Written::Conflict => Ok(None),
        }
    }

    async fn replace_head(
        &self,
        id: &TypeInstanceId,
        head: &Head,
        tag: &str,
    ) -> Result<Option<String>> {
        let key = self.head_key(id);
        match self
            .bucket
            .put(&key, head_body(head)?, Cond::Match(tag), None)
            .await?
        {
            Written::Ok(tag) => Ok(Some(tag)),
            Written::Conflict => Ok(None),
        }
    }

    /// Unconditional (S3 has no conditional delete on every store): the
    /// engine marks the head deleted by If-Match first.
    async fn remove_head(&self, id: &TypeInstanceId, _tag: &str) -> Result<()> {
        self.bucket.remove(&self.head_key(id)).await
    }

    async fn read_revision(&self, at: Slot<'_>) -> Result<Option<Stored>> {
        let key = self.rev_key(at);
        let Some(read) = self.bucket.get(&key).await? else {
            return Ok(None);
        };
        // Objects written before epochs carry none: epoch 0.
        let epoch = match read.epoch.as_deref() {
            None => 0,
            Some(e) => e.parse().map_err(|_| {
                Error::data_loss(format!(
                    "s3 object {} has an unreadable epoch",
                    self.what(&key)
                ))
            })?,
        };
        Ok(Some(Stored {
            value: read.body,
            epoch,
            tag: read.etag,
        }))
    }

    async fn write_revision(
        &self,
        at: Slot<'_>,
        value: &Value,
        epoch: u64,
        replace: Option<&str>,
    ) -> Result<bool> {
        let cond = match replace {
            Some(tag) => Cond::Match(tag),
            None => Cond::Create,
        };
        let written = self
            .bucket
            .put(
                &self.rev_key(at),
                value.clone().into_bytes(),
                cond,
                Some(epoch),
            )
            .await?;
        Ok(matches!(written, Written::Ok(_)))
    }

    async fn remove_revision(&self, at: Slot<'_>) -> Result<()> {
        self.bucket.remove(&self.rev_key(at)).await
    }

    async fn list_revisions(
        &self,
        id: &TypeInstanceId,
        life: &str,
        _upto: u32,
    ) -> Result<Vec<u32>> {
        let prefix = self.life_prefix(id, life);
        let keys = self.bucket.list(&prefix).await?;
        // Only plain numbers (as `rev_key` writes them) are ours; anything
        // else under the prefix is left alone.
        Ok(keys
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|k| !k.starts_with('0') && k.bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|k| k.parse::<u32>().ok())
            .filter(|n| *n > 0)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::{
        config::http::HttpResponse, error::ErrorMetadata, operation::get_object::GetObjectError,
        primitives::SdkBody,
    };
    use aws_smithy_runtime_api::http::StatusCode;

    use super::*;

    fn failure(status: u16, code: &str) -> SdkError<GetObjectError, HttpResponse> {
        let status = StatusCode::try_from(status).expect("status");
        let meta = ErrorMetadata::builder()
            .code(code)
            .message("raw detail from s3")
            .build();
        SdkError::service_error(
            GetObjectError::generic(meta),
            HttpResponse::new(status, SdkBody::empty()),
        )
    }

    fn kind(status: u16, code: &str) -> ErrorKind {
        service_error("b", "GetObject", "capact/x/rev/1", failure(status, code)).kind()
    }

    #[test]
    fn access_denied_is_permission_denied_naming_the_key_but_not_the_detail() {
        let err = service_error(
            "b",
            "GetObject",
            "capact/x/rev/1",
            failure(403, "AccessDenied"),
        );
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(
            err.message().contains("b/capact/x/rev/1"),
            "{}",
            err.message()
        );
        assert!(!err.message().contains("raw detail"), "{}", err.message());
        assert!(err.detail().contains("raw detail"), "{}", err.detail());
    }

    #[test]
    fn server_errors_and_throttling_are_unavailable() {
        assert_eq!(kind(500, "InternalError"), ErrorKind::Unavailable);
        assert_eq!(kind(503, "SlowDown"), ErrorKind::Unavailable);
    }

    #[test]
    fn a_bucket_removed_after_start_is_unavailable_naming_it() {
        let err = service_error("gone", "PutObject", "k", failure(404, "NoSuchBucket"));
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(
            err.message().contains("bucket gone does not exist"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn an_unexpected_client_error_is_internal() {
        assert_eq!(kind(400, "InvalidArgument"), ErrorKind::Internal);
    }

    #[test]
    fn equal_heads_never_share_a_body_and_still_decode() -> Result<()> {
        let h = Head {
            life: "00000000000000ab".into(),
            latest: 3,
            lock: Some("o".into()),
            epoch: 1,
            floor: 0,
            locked_at: None,
            intent: None,
        };
        let (a, b) = (head_body(&h)?, head_body(&h)?);
        assert_ne!(a, b, "equal heads must not share an etag");
        assert_eq!(Head::from_json(&a), Some(h.clone()));
        assert_eq!(Head::from_json(&b), Some(h));
        Ok(())
    }

    fn store(prefix: &str) -> S3Store {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .build();
        S3Store::new(
            Bucket {
                client: Client::from_conf(conf),
                name: "b".into(),
                sse: Sse::BucketDefault,
                tagging: None,
                purge_versions: false,
            },
            prefix.into(),
        )
    }

    #[test]
    fn revisions_live_under_their_life_and_legacy_heads_keep_the_old_keys() -> Result<()> {
        let id = TypeInstanceId::parse("ti")?;
        let s = store("capact");
        let at = |life| Slot {
            id: &id,
            life,
            rev: 7,
        };
        assert_eq!(
            s.rev_key(at("00000000000000ab")),
            "capact/ti/00000000000000ab/7"
        );
        assert_eq!(s.rev_key(at("")), "capact/ti/rev/7");
        assert_eq!(s.head_key(&id), "capact/ti/head");
        assert_eq!(store("").head_key(&id), "ti/head");
        Ok(())
    }
}
