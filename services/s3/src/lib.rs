//! A `ValueAndContextStorageBackend` that keeps TypeInstance revisions as
//! objects in an S3 bucket (AWS S3 or an S3-compatible store). The layout and
//! its invariant are described in this crate's README.md.

pub mod store;

use async_trait::async_trait;
use clap::{ArgAction, Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use shared::{
    Backend, Context, Describe, Error, ErrorKind, Owner, Result, Revision, TypeInstanceId, Value,
    ValueBackend, config::ServerConfig, server::BackendConfig,
};
use shared_aws::AwsArgs;

use crate::store::{Bucket, Cond, Sse, Written};

/// Marker in every head object we write (and the value of the ownership
/// tag). A head without it was not written by us and is never overwritten.
pub const MANAGED_BY: &str = "capact-storage";

/// Name of the ownership tag put on every object we write.
pub const TAG_KEY: &str = "managed-by";

/// How often a conflicting conditional write is retried before ABORTED.
const MAX_ATTEMPTS: usize = 8;

/// S3's limit for one PutObject is 5 GiB; the gRPC message limit and
/// `APP_MAX_VALUE_BYTES` lower it in practice.
const MAX_VALUE_BYTES: u64 = 5 << 30;

/// Server-side encryption of the objects we write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SseMode {
    /// No encryption header: the bucket's default encryption applies.
    None,
    /// SSE-S3 (AES256).
    #[value(name = "aes256")]
    Aes256,
    /// SSE-KMS, with --s3-sse-kms-key-id or the account's aws/s3 key.
    #[value(name = "aws:kms")]
    AwsKms,
}

#[derive(Parser, Clone, Debug)]
#[command(
    name = "s3-backend",
    version,
    about = "Capact storage backend on S3 (AWS or S3-compatible)"
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,

    #[command(flatten)]
    pub aws: AwsArgs,

    /// Bucket holding the objects; it must exist (checked at start).
    #[arg(long, env = "APP_S3_BUCKET")]
    pub s3_bucket: String,

    /// Key prefix; every TypeInstance lives below `<prefix>/<id>/`.
    #[arg(long, env = "APP_S3_PREFIX", default_value = "capact")]
    pub s3_prefix: String,

    /// Path-style addressing (`<endpoint>/<bucket>/<key>`), needed by most
    /// S3-compatible stores and emulators.
    #[arg(long, env = "APP_S3_FORCE_PATH_STYLE", default_value_t = false,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub s3_force_path_style: bool,

    /// Server-side encryption requested on every write.
    #[arg(long, env = "APP_S3_SSE", value_enum, default_value = "none")]
    pub s3_sse: SseMode,

    /// KMS key id or ARN for --s3-sse aws:kms (default: the aws/s3 key).
    #[arg(long, env = "APP_S3_SSE_KMS_KEY_ID")]
    pub s3_sse_kms_key_id: Option<String>,

    /// On a versioned bucket, deleting also removes every old version and
    /// delete marker of the objects (they hold secrets). `false` leaves
    /// them to the bucket's lifecycle rules.
    #[arg(long, env = "APP_S3_PURGE_VERSIONS", default_value_t = true,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub s3_purge_versions: bool,

    /// Tag every object `managed-by=capact-storage` (needs
    /// s3:PutObjectTagging; some S3-compatible stores lack tagging).
    #[arg(long, env = "APP_S3_TAG_OBJECTS", default_value_t = true,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub s3_tag_objects: bool,
}

impl BackendConfig for Config {
    // Store-bound: one signed HTTP call per step (BENCHMARKS.md, sixth session).
    const DEFAULT_WORKER_THREADS: usize = 1;

    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

impl Config {
    fn sse(&self) -> Result<Sse> {
        match (self.s3_sse, &self.s3_sse_kms_key_id) {
            (SseMode::AwsKms, key) => Ok(Sse::Kms(key.clone().filter(|k| !k.is_empty()))),
            (_, Some(k)) if !k.is_empty() => Err(Error::invalid_argument(
                "APP_S3_SSE_KMS_KEY_ID needs APP_S3_SSE=aws:kms",
            )),
            (SseMode::Aes256, _) => Ok(Sse::S3),
            (SseMode::None, _) => Ok(Sse::BucketDefault),
        }
    }

    fn prefix(&self) -> String {
        self.s3_prefix.trim_matches('/').to_owned()
    }
}

/// Builds the backend: the SDK client from the AWS settings, then one
/// HeadBucket so that a missing bucket or refused credentials stop the
/// process at start with a message saying what to fix.
pub async fn build(config: Config) -> Result<S3Backend> {
    if config.s3_bucket.is_empty() {
        return Err(Error::invalid_argument("APP_S3_BUCKET must not be empty"));
    }
    let sse = config.sse()?;
    let sdk = shared_aws::sdk_config(&config.aws)
        .await
        .map_err(Error::invalid_argument)?;
    let s3 = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(config.s3_force_path_style)
        // Checksums only where S3 requires them (DeleteObjects): the
        // default CRC trailers break several S3-compatible stores, and TLS
        // already protects the bytes in transit.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    let bucket = Bucket {
        client: aws_sdk_s3::Client::from_conf(s3),
        name: config.s3_bucket.clone(),
        sse,
        tagging: config
            .s3_tag_objects
            .then(|| format!("{TAG_KEY}={MANAGED_BY}")),
        purge_versions: config.s3_purge_versions,
    };
    match bucket.head_bucket().await {
        Ok(()) => {}
        // Unreachable now: start anyway, health reports NOT_SERVING until
        // the store answers (a store restarting must not crash-loop us).
        Err(e) if e.kind() == ErrorKind::Unavailable => {
            tracing::warn!(error = %e.detail(), "the s3 bucket cannot be reached yet");
        }
        Err(e) => return Err(e),
    }
    Ok(S3Backend {
        bucket,
        prefix: config.prefix(),
    })
}

pub struct S3Backend {
    bucket: Bucket,
    prefix: String,
}

/// The body of the head object `<prefix>/<id>/head`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct HeadBody {
    managed_by: String,
    latest: u32,
    lock: Option<String>,
    /// Set by OnDelete before it removes anything: the TypeInstance no
    /// longer exists for any other call, and a retry finishes the removal.
    #[serde(default)]
    deleting: bool,
    /// Unique per write, so that two heads with equal content still have
    /// different ETags and an If-Match can never succeed on a stale read.
    #[serde(default)]
    write: String,
}

/// The head as read, with the ETag its next write must match.
#[derive(Debug, Clone)]
struct Head {
    latest: u32,
    lock: Option<String>,
    deleting: bool,
    etag: String,
}

impl Head {
    fn body(&self) -> Result<bytes::Bytes> {
        let body = HeadBody {
            managed_by: MANAGED_BY.to_owned(),
            latest: self.latest,
            lock: self.lock.clone(),
            deleting: self.deleting,
            write: uuid::Uuid::new_v4().simple().to_string(),
        };
        serde_json::to_vec(&body)
            .map(bytes::Bytes::from)
            .map_err(|e| Error::internal("encoding the head failed").with_source(e))
    }
}

fn not_found(id: &TypeInstanceId) -> Error {
    Error::not_found(format!("type instance {id} not found"))
}

fn rev_not_found(id: &TypeInstanceId, rev: u32) -> Error {
    Error::not_found(format!("revision {rev} of type instance {id} not found"))
}

fn aborted(id: &TypeInstanceId) -> Error {
    Error::aborted(format!(
        "type instance {id} changed concurrently too often; retry"
    ))
}

fn check_owner(id: &TypeInstanceId, head: &Head, owner: Option<&Owner>) -> Result<()> {
    match &head.lock {
        Some(holder) if Some(holder.as_str()) != owner.map(Owner::as_str) => Err(
            Error::failed_precondition(format!("type instance {id} is locked by {holder}")),
        ),
        _ => Ok(()),
    }
}

/// Outcome of writing a revision object create-only.
enum RevWrite {
    Stored,
    /// The revision already exists with exactly these bytes.
    Same,
    /// The revision already exists with other bytes.
    Different,
}

impl S3Backend {
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

    fn revs_prefix(&self, id: &TypeInstanceId) -> String {
        format!("{}rev/", self.base(id))
    }

    fn rev_key(&self, id: &TypeInstanceId, rev: u32) -> String {
        format!("{}rev/{rev}", self.base(id))
    }

    /// The head, or `None` if the TypeInstance does not exist.
    async fn head(&self, id: &TypeInstanceId) -> Result<Option<Head>> {
        let key = self.head_key(id);
        let Some(read) = self.bucket.get(&key).await? else {
            return Ok(None);
        };
        let body: HeadBody = serde_json::from_slice(&read.body).map_err(|e| {
            Error::failed_precondition(format!(
                "s3 object {}/{key} is not a head this backend wrote; it is left untouched",
                self.bucket.name
            ))
            .with_source(e)
        })?;
        if body.managed_by != MANAGED_BY {
            return Err(Error::failed_precondition(format!(
                "s3 object {}/{key} is not a head this backend wrote; it is left untouched",
                self.bucket.name
            )));
        }
        Ok(Some(Head {
            latest: body.latest,
            lock: body.lock,
            deleting: body.deleting,
            etag: read.etag,
        }))
    }

    /// The head of an existing TypeInstance (not being deleted), else NOT_FOUND.
    async fn live_head(&self, id: &TypeInstanceId) -> Result<Head> {
        match self.head(id).await? {
            Some(h) if !h.deleting => Ok(h),
            _ => Err(not_found(id)),
        }
    }

    /// Writes `next` over `current` (If-Match its ETag), or creates it
    /// (If-None-Match: *) when `current` is `None`.
    async fn put_head(
        &self,
        id: &TypeInstanceId,
        next: &Head,
        current: Option<&Head>,
    ) -> Result<Written> {
        let cond = match current {
            Some(h) => Cond::Match(&h.etag),
            None => Cond::Create,
        };
        self.bucket
            .put(&self.head_key(id), next.body()?, cond)
            .await
    }

    async fn rev(&self, id: &TypeInstanceId, rev: u32) -> Result<Option<bytes::Bytes>> {
        Ok(self
            .bucket
            .get(&self.rev_key(id, rev))
            .await?
            .map(|r| r.body))
    }

    /// Stores a revision create-only; an existing one is compared.
    async fn put_rev(&self, id: &TypeInstanceId, rev: u32, value: &Value) -> Result<RevWrite> {
        let key = self.rev_key(id, rev);
        match self
            .bucket
            .put(&key, value.clone().into_bytes(), Cond::Create)
            .await?
        {
            Written::Ok(_) => Ok(RevWrite::Stored),
            Written::Conflict => match self.rev(id, rev).await? {
                Some(existing) if existing == value.as_bytes() => Ok(RevWrite::Same),
                // Removed between our write and read: a concurrent delete won.
                None => Err(aborted(id)),
                Some(_) => Ok(RevWrite::Different),
            },
        }
    }

    /// Revision numbers stored for `id` (a LIST: only delete paths use it).
    async fn stored_revisions(&self, id: &TypeInstanceId) -> Result<Vec<u32>> {
        let prefix = self.revs_prefix(id);
        let keys = self.bucket.list(&prefix).await?;
        // Only plain numbers are ours; anything else under the prefix is left alone.
        Ok(keys
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter_map(|k| k.parse::<u32>().ok())
            .filter(|n| *n > 0)
            .collect())
    }

    /// Removes every object of `id`, the head last. Called with the head
    /// marked `deleting`, so a failure part-way is finished by the next retry.
    async fn purge(&self, id: &TypeInstanceId) -> Result<()> {
        self.bucket
            .remove_prefix(&self.base(id), &self.head_key(id))
            .await
    }
}

#[async_trait]
impl Backend for S3Backend {
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

    /// One GetObject of the revision's own object: O(1) whatever the history.
    async fn get_value(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        _ctx: &Context,
    ) -> Result<Value> {
        match self.rev(id, revision.get()).await? {
            Some(bytes) => Ok(Value::from(bytes)),
            None => Err(rev_not_found(id, revision.get())),
        }
    }

    async fn get_locked_by(&self, id: &TypeInstanceId, _ctx: &Context) -> Result<Option<Owner>> {
        let head = self.live_head(id).await?;
        match head.lock {
            Some(l) => Owner::parse(&l).map(Some).map_err(|_| {
                Error::data_loss(format!("the lock of type instance {id} is corrupted"))
            }),
            None => Ok(None),
        }
    }

    async fn lock(&self, id: &TypeInstanceId, _ctx: &Context, owner: &Owner) -> Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            let head = self.live_head(id).await?;
            match &head.lock {
                Some(h) if h == owner.as_str() => return Ok(()),
                Some(h) => {
                    return Err(Error::failed_precondition(format!(
                        "type instance {id} is locked by {h}"
                    )));
                }
                None => {}
            }
            let next = Head {
                lock: Some(owner.as_str().to_owned()),
                ..head.clone()
            };
            // If-Match decides between concurrent lockers; the loser
            // re-reads and sees the winner as the holder.
            if let Written::Ok(_) = self.put_head(id, &next, Some(&head)).await? {
                return Ok(());
            }
        }
        Err(aborted(id))
    }

    async fn unlock(&self, id: &TypeInstanceId, _ctx: &Context) -> Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            let head = self.live_head(id).await?;
            if head.lock.is_none() {
                return Ok(());
            }
            let next = Head {
                lock: None,
                ..head.clone()
            };
            if let Written::Ok(_) = self.put_head(id, &next, Some(&head)).await? {
                return Ok(());
            }
        }
        Err(aborted(id))
    }
}

#[async_trait]
impl ValueBackend for S3Backend {
    async fn create(
        &self,
        id: &TypeInstanceId,
        value: Value,
        _ctx: &Context,
    ) -> Result<Option<Json>> {
        let exists = || Error::already_exists(format!("type instance {id} already exists"));
        for _ in 0..MAX_ATTEMPTS {
            match self.head(id).await? {
                Some(head) if head.deleting => {
                    // A delete stopped part-way: finish it, then create anew.
                    self.purge(id).await?;
                    continue;
                }
                Some(head) => {
                    // Exists. A retried create (head at 1, same bytes) succeeds,
                    // and also completes a create whose revision write failed.
                    if head.latest != 1 {
                        return Err(exists());
                    }
                    return match self.put_rev(id, 1, &value).await? {
                        RevWrite::Stored | RevWrite::Same => Ok(None),
                        RevWrite::Different => Err(exists()),
                    };
                }
                None => {
                    // Head first (create-only), then the revision: see README.
                    let head = Head {
                        latest: 1,
                        lock: None,
                        deleting: false,
                        etag: String::new(),
                    };
                    if self.put_head(id, &head, None).await? == Written::Conflict {
                        continue;
                    }
                    return match self.put_rev(id, 1, &value).await? {
                        RevWrite::Stored | RevWrite::Same => Ok(None),
                        RevWrite::Different => Err(exists()),
                    };
                }
            }
        }
        Err(aborted(id))
    }

    async fn update(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        value: Value,
        _ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<Option<Json>> {
        let n = revision.get();
        let exists =
            || Error::already_exists(format!("revision {n} of type instance {id} already exists"));
        for _ in 0..MAX_ATTEMPTS {
            let head = self.live_head(id).await?;
            if n <= head.latest {
                match self.rev(id, n).await? {
                    Some(existing) if existing == value.as_bytes() => return Ok(None),
                    Some(_) => return Err(exists()),
                    None => {}
                }
            }
            check_owner(id, &head, owner)?;
            // n == latest here means the revision was claimed but never written.
            if n < head.latest {
                return Err(Error::failed_precondition(format!(
                    "revision {n} of type instance {id} is not above the latest revision {}",
                    head.latest
                )));
            }
            if n > head.latest {
                // Claim the revision in the head first: its If-Match orders
                // this update against other updates, locks and deletes.
                let next = Head {
                    latest: n,
                    ..head.clone()
                };
                if self.put_head(id, &next, Some(&head)).await? == Written::Conflict {
                    continue;
                }
            }
            // The create-only write of the revision picks the one winner
            // among concurrent writers of the same revision.
            return match self.put_rev(id, n, &value).await? {
                RevWrite::Stored | RevWrite::Same => Ok(None),
                RevWrite::Different => Err(exists()),
            };
        }
        Err(aborted(id))
    }

    async fn delete(
        &self,
        id: &TypeInstanceId,
        _ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(head) = self.head(id).await? else {
                return Err(not_found(id));
            };
            if !head.deleting {
                check_owner(id, &head, owner)?;
                let next = Head {
                    deleting: true,
                    ..head.clone()
                };
                if self.put_head(id, &next, Some(&head)).await? == Written::Conflict {
                    continue;
                }
            }
            return self.purge(id).await;
        }
        Err(aborted(id))
    }

    async fn delete_revision(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        _ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<()> {
        let n = revision.get();
        // Set once this call removed the revision, for a retry after a conflict.
        let mut removed = false;
        for _ in 0..MAX_ATTEMPTS {
            let head = self.live_head(id).await?;
            if n > head.latest {
                return Err(rev_not_found(id, n));
            }
            check_owner(id, &head, owner)?;
            let stored = self.rev(id, n).await?.is_some();
            if !stored && n < head.latest {
                return if removed {
                    Ok(())
                } else {
                    Err(rev_not_found(id, n))
                };
            }
            if stored {
                self.bucket.remove(&[self.rev_key(id, n)]).await?;
                removed = true;
            }
            if n < head.latest {
                return Ok(());
            }
            // The latest revision went (or was only claimed, never written):
            // lower the head to the highest revision left, or remove the
            // TypeInstance when none is left.
            let left = self
                .stored_revisions(id)
                .await?
                .into_iter()
                .filter(|r| *r < n)
                .max();
            let (next, last) = match left {
                Some(latest) => (
                    Head {
                        latest,
                        ..head.clone()
                    },
                    false,
                ),
                None => (
                    Head {
                        deleting: true,
                        ..head.clone()
                    },
                    true,
                ),
            };
            if self.put_head(id, &next, Some(&head)).await? == Written::Conflict {
                continue;
            }
            if last {
                self.purge(id).await?;
            }
            return if stored || removed {
                Ok(())
            } else {
                Err(rev_not_found(id, n))
            };
        }
        Err(aborted(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["s3-backend", "--s3-bucket", "b"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap_or_else(|e| panic!("parse: {e}"))
    }

    #[test]
    fn defaults_purge_versions_tag_objects_and_use_the_bucket_encryption() {
        let c = parse(&[]);
        assert!(c.s3_purge_versions);
        assert!(c.s3_tag_objects);
        assert!(!c.s3_force_path_style);
        assert_eq!(c.sse().ok(), Some(Sse::BucketDefault));
        assert_eq!(c.prefix(), "capact");
    }

    #[test]
    fn force_path_style_works_as_a_bare_flag() {
        assert!(parse(&["--s3-force-path-style"]).s3_force_path_style);
        assert!(!parse(&["--s3-force-path-style", "false"]).s3_force_path_style);
    }

    #[test]
    fn kms_key_id_is_used_with_aws_kms() {
        let c = parse(&["--s3-sse", "aws:kms", "--s3-sse-kms-key-id", "alias/k"]);
        assert_eq!(c.sse().ok(), Some(Sse::Kms(Some("alias/k".into()))));
    }

    #[test]
    fn kms_key_id_without_aws_kms_is_a_configuration_error() {
        let c = parse(&["--s3-sse", "aes256", "--s3-sse-kms-key-id", "k"]);
        assert!(c.sse().is_err());
    }

    #[test]
    fn bucket_is_required() {
        assert!(Config::try_parse_from(["s3-backend"]).is_err());
    }

    #[test]
    fn prefix_slashes_are_trimmed() {
        assert_eq!(parse(&["--s3-prefix", "/a/b/"]).prefix(), "a/b");
    }

    #[test]
    fn head_body_carries_the_ownership_marker_and_a_unique_write_id() -> Result<()> {
        let head = Head {
            latest: 3,
            lock: Some("o".into()),
            deleting: false,
            etag: String::new(),
        };
        let (a, b) = (head.body()?, head.body()?);
        assert_ne!(a, b, "equal heads must not share an etag");
        let parsed: HeadBody =
            serde_json::from_slice(&a).map_err(|e| Error::internal("parse").with_source(e))?;
        assert_eq!(parsed.managed_by, MANAGED_BY);
        assert_eq!(parsed.latest, 3);
        Ok(())
    }
}
