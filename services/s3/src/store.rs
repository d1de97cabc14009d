//! The S3 calls the backend makes, each wrapped in `metrics::store_call`, with
//! S3's answers turned into what the backend needs: a missing key is `None`,
//! a failed precondition is [`Written::Conflict`], everything else an
//! [`Error`] whose message names the bucket and key, never a value.

use aws_sdk_s3::{
    Client,
    error::{ProvideErrorMetadata, SdkError},
    operation::head_bucket::HeadBucketError,
    primitives::ByteStream,
    types::{Delete, ObjectIdentifier, ServerSideEncryption},
};
use bytes::Bytes;
use shared::{Error, ErrorKind, Result, metrics::store_call};

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

/// An object read: body and ETag.
pub struct Read {
    pub body: Bytes,
    pub etag: String,
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
            }))
        })
        .await
    }

    /// PutObject with a precondition, our tags and encryption.
    pub async fn put(&self, key: &str, body: Bytes, cond: Cond<'_>) -> Result<Written> {
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

    /// Removes `keys` (batches of DeleteObjects); with `purge_versions`, every
    /// stored version and delete marker of them too. A missing key is fine.
    pub async fn remove(&self, keys: &[String]) -> Result<()> {
        let mut targets: Vec<(String, Option<String>)> = Vec::new();
        if self.purge_versions {
            for key in keys {
                // The listing is by prefix: keep exactly this key's versions.
                targets.extend(
                    self.versions(key)
                        .await?
                        .into_iter()
                        .filter(|(k, _)| k == key),
                );
            }
        } else {
            targets.extend(keys.iter().map(|k| (k.clone(), None)));
        }
        for batch in targets.chunks(1000) {
            self.delete_batch(batch).await?;
        }
        Ok(())
    }

    /// Removes every object (and, with `purge_versions`, every version) under
    /// `prefix` except `last`, then `last`.
    pub async fn remove_prefix(&self, prefix: &str, last: &str) -> Result<()> {
        let mut targets: Vec<(String, Option<String>)> = if self.purge_versions {
            self.versions(prefix).await?
        } else {
            self.list(prefix)
                .await?
                .into_iter()
                .map(|k| (k, None))
                .collect()
        };
        // The head goes last: while it exists a retry can finish the removal.
        targets.sort_by_key(|(k, _)| k == last);
        let split = targets
            .iter()
            .position(|(k, _)| k == last)
            .unwrap_or(targets.len());
        let (body, head) = targets.split_at(split);
        for batch in body.chunks(1000) {
            self.delete_batch(batch).await?;
        }
        if head.is_empty() {
            // Not listed (e.g. a listing lagging behind): delete it by name.
            return self.remove(&[last.to_owned()]).await;
        }
        for batch in head.chunks(1000) {
            self.delete_batch(batch).await?;
        }
        Ok(())
    }

    async fn delete_batch(&self, batch: &[(String, Option<String>)]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let first = batch[0].0.clone();
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
                .map_err(|e| self.error("DeleteObjects", &first, e))?;
            // Per-key failures come back in a 200 answer.
            if let Some(err) = out.errors().iter().find(|e| e.code() != Some("NoSuchKey")) {
                let key = err.key().unwrap_or(&first);
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
}
