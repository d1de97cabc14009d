//! A `ValueAndContextStorageBackend` on AWS Secrets Manager: one secret per
//! revision (create-only), and one head secret per TypeInstance whose
//! AWSCURRENT stage is moved with compare-and-swap. The layout, the lock
//! design and the delete/re-create choice are described in README.md.

pub mod store;

use async_trait::async_trait;
use aws_sdk_secretsmanager::types::Tag;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use shared::{
    Backend, Context, Describe, Error, Owner, Result, Revision, TypeInstanceId, Value,
    ValueBackend, config::ServerConfig, server::BackendConfig,
};
use shared_aws::AwsArgs;

use crate::store::{Created, Current, Payload, Put, Read, Store};

/// Value of the `managed-by` tag and field of everything this backend writes.
pub const MANAGED_BY: &str = "capact-storage";

/// How often a lost compare-and-swap is retried before ABORTED.
const MAX_ATTEMPTS: usize = 8;

/// Secrets Manager holds at most 65,536 bytes per version; a binary value
/// costs one format byte (see [`encode`]).
const MAX_VALUE_BYTES: u64 = 65_535;

/// Label of a head version written but not (yet) made current.
const PENDING_STAGE: &str = "capact-pending";

/// First byte of a `SecretBinary`: a value follows.
const BINARY_VALUE: u8 = 1;
/// A `SecretBinary` of this one byte: the revision was deleted.
const TOMBSTONE: u8 = 0;

/// Revisions removed in parallel when a TypeInstance is deleted.
const PURGE_CONCURRENCY: usize = 8;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "aws-secretsmanager-backend",
    version,
    about = "Capact storage backend on AWS Secrets Manager"
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,

    #[command(flatten)]
    pub aws: AwsArgs,

    /// Name prefix; every secret we write is named `<prefix>/<id>/...`.
    #[arg(long, env = "APP_SM_NAME_PREFIX", default_value = "capact")]
    pub sm_name_prefix: String,

    /// KMS key (id, ARN or alias) encrypting new secrets; default: aws/secretsmanager.
    #[arg(long, env = "APP_SM_KMS_KEY_ID")]
    pub sm_kms_key_id: Option<String>,

    /// Extra tags on every secret we create, `key=value` separated by commas.
    #[arg(long, env = "APP_SM_TAGS", value_delimiter = ',', value_parser = parse_tag)]
    pub sm_tags: Vec<(String, String)>,

    /// Days a deleted secret stays recoverable (AWS allows 7 to 30).
    #[arg(long, env = "APP_SM_RECOVERY_WINDOW_DAYS", default_value_t = 7,
          value_parser = clap::value_parser!(i64).range(7..=30))]
    pub sm_recovery_window_days: i64,

    /// Delete secrets at once, without a recovery window.
    #[arg(long, env = "APP_SM_FORCE_DELETE", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub sm_force_delete: bool,
}

fn parse_tag(raw: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = raw
        .split_once('=')
        .ok_or_else(|| format!("tag {raw:?} is not key=value"))?;
    let k = k.trim();
    if k.is_empty() || k.len() > 128 || v.len() > 256 || k.starts_with("aws:") {
        return Err(format!(
            "tag key {k:?} must be 1-128 characters, not start with aws:, and its value at most 256"
        ));
    }
    Ok((k.to_owned(), v.trim().to_owned()))
}

impl BackendConfig for Config {
    // Store-bound: one signed HTTP call per step (BENCHMARKS.md, sixth session).
    const DEFAULT_WORKER_THREADS: usize = 1;

    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

/// Characters Secrets Manager allows in a name.
fn name_safe(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
}

/// Builds the backend: SDK configuration from the default credential chain
/// (plus AssumeRole if asked). The store is first contacted by the health probe.
pub async fn build(config: Config) -> Result<SecretsManagerBackend> {
    let prefix = config.sm_name_prefix.trim_matches('/').to_owned();
    if prefix.is_empty() || prefix.len() > 256 || !name_safe(&prefix) {
        return Err(Error::invalid_argument(
            "APP_SM_NAME_PREFIX must be 1-256 characters of A-Z a-z 0-9 / _ + = . @ -",
        ));
    }
    let sdk = shared_aws::sdk_config(&config.aws)
        .await
        .map_err(Error::invalid_argument)?;
    Ok(SecretsManagerBackend {
        store: Store {
            client: aws_sdk_secretsmanager::Client::new(&sdk),
            kms_key_id: config.sm_kms_key_id.filter(|k| !k.is_empty()),
            recovery_window_days: (!config.sm_force_delete)
                .then_some(config.sm_recovery_window_days),
        },
        prefix,
        tags: config.sm_tags,
    })
}

pub struct SecretsManagerBackend {
    store: Store,
    prefix: String,
    tags: Vec<(String, String)>,
}

/// Lifecycle of a TypeInstance as its head records it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum State {
    Live,
    /// OnDelete is removing the revisions: the TypeInstance no longer exists
    /// for any other call; a retry (or a create) finishes the removal.
    Deleting,
    /// Everything removed; the head itself is scheduled for deletion. Seen
    /// only after a re-create restored the head.
    Deleted,
}

/// The head secret's value (`SecretString`, JSON).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct HeadData {
    managed_by: String,
    state: State,
    latest: u32,
    lock: Option<String>,
    /// The highest revision ever claimed under these names, kept across
    /// OnDeleteRevision and re-creates: a revision at or below it may find
    /// its name still scheduled for deletion.
    #[serde(default)]
    high: u32,
}

/// A head as read: its data and the version that carries AWSCURRENT.
#[derive(Clone, Debug)]
struct Head {
    data: HeadData,
    version_id: String,
}

enum HeadRead {
    Missing,
    /// Scheduled for deletion (a TypeInstance deleted with a recovery window).
    Pending,
    Found(Head),
}

/// A revision secret's current content.
enum Stored {
    Value(Vec<u8>),
    Tombstone,
}

/// Outcome of writing a revision.
enum RevWrite {
    Stored,
    /// The revision already holds exactly these bytes.
    Same,
    /// The revision already holds other bytes.
    Different,
}

/// Non-empty UTF-8 goes to `SecretString` as is (readable in the console);
/// anything else (invalid UTF-8, the empty value, which `SecretString`
/// cannot hold) to `SecretBinary` behind one format byte.
fn encode(value: &[u8]) -> Payload {
    match std::str::from_utf8(value) {
        Ok(s) if !s.is_empty() => Payload::Text(s.to_owned()),
        _ => {
            let mut b = Vec::with_capacity(value.len() + 1);
            b.push(BINARY_VALUE);
            b.extend_from_slice(value);
            Payload::Binary(b)
        }
    }
}

fn decode(name: &str, payload: Payload) -> Result<Stored> {
    match payload {
        Payload::Text(s) => Ok(Stored::Value(s.into_bytes())),
        Payload::Binary(mut b) => match b.first() {
            Some(&BINARY_VALUE) => {
                b.remove(0);
                Ok(Stored::Value(b))
            }
            Some(&TOMBSTONE) if b.len() == 1 => Ok(Stored::Tombstone),
            _ => Err(Error::data_loss(format!(
                "secret {name} does not hold a value in this backend's format"
            ))),
        },
    }
}

/// A version id (ClientRequestToken, 64 hex characters) derived from its
/// parts, so that the retry of a write reuses the token and is a no-op.
fn token(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

fn rev_token(id: &TypeInstanceId, rev: u32, value: &[u8]) -> String {
    let digest = Sha256::digest(value);
    token(&[
        b"capact-rev",
        id.as_str().as_bytes(),
        &rev.to_be_bytes(),
        &digest,
    ])
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

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

impl SecretsManagerBackend {
    fn head_name(&self, id: &TypeInstanceId) -> String {
        format!("{}/{id}/head", self.prefix)
    }

    fn rev_name(&self, id: &TypeInstanceId, rev: u32) -> String {
        format!("{}/{id}/{rev}", self.prefix)
    }

    fn tags(&self, id: &TypeInstanceId, role: &str) -> Vec<Tag> {
        let mut tags = vec![
            tag("managed-by", MANAGED_BY),
            tag("capact-type-instance-id", id.as_str()),
            tag("capact-role", role),
        ];
        tags.extend(self.tags.iter().map(|(k, v)| tag(k, v)));
        tags
    }

    async fn head(&self, id: &TypeInstanceId) -> Result<HeadRead> {
        let name = self.head_name(id);
        let current = match self.store.get(&name).await? {
            Read::Missing => return Ok(HeadRead::Missing),
            Read::Pending => return Ok(HeadRead::Pending),
            Read::Found(c) => c,
        };
        let data = match &current.payload {
            Payload::Text(s) => serde_json::from_str::<HeadData>(s).ok(),
            Payload::Binary(_) => None,
        }
        .filter(|d| d.managed_by == MANAGED_BY)
        .ok_or_else(|| {
            Error::failed_precondition(format!(
                "secret {name} was not written by this backend; it is left untouched"
            ))
        })?;
        Ok(HeadRead::Found(Head {
            data,
            version_id: current.version_id,
        }))
    }

    /// The head of an existing TypeInstance.
    async fn live_head(&self, id: &TypeInstanceId) -> Result<Head> {
        match self.head(id).await? {
            HeadRead::Found(h) if h.data.state == State::Live => Ok(h),
            _ => Err(not_found(id)),
        }
    }

    /// Replaces the head with `next` if AWSCURRENT is still on the version
    /// read: a new version labelled only PENDING_STAGE, then the stage move
    /// from the old version to it, which fails if another writer moved it.
    async fn cas_head(&self, id: &TypeInstanceId, prev: &Head, next: HeadData) -> Result<bool> {
        let name = self.head_name(id);
        let json = serde_json::to_string(&next)
            .map_err(|e| Error::internal("encoding the head failed").with_source(e))?;
        // Derived from the version it replaces: a retried transition reuses
        // it, a later one (from another version) never collides with it.
        let version = token(&[
            b"capact-head",
            id.as_str().as_bytes(),
            prev.version_id.as_bytes(),
            json.as_bytes(),
        ]);
        self.swap_current(&name, &Payload::Text(json), &version, &prev.version_id)
            .await
    }

    async fn read_rev(&self, id: &TypeInstanceId, rev: u32) -> Result<Option<Vec<u8>>> {
        let name = self.rev_name(id, rev);
        match self.store.get(&name).await? {
            Read::Missing | Read::Pending => Ok(None),
            Read::Found(c) => match decode(&name, c.payload)? {
                Stored::Value(v) => Ok(Some(v)),
                Stored::Tombstone => Ok(None),
            },
        }
    }

    /// Stores a revision create-only. An existing revision is compared; a
    /// tombstone (left by a delete with a recovery window, see README) is
    /// restored and overwritten with a stage compare-and-swap, so that of
    /// two writers exactly one wins there too.
    ///
    /// `reused`: the name may have been used (and deleted) before. Then a
    /// successful CreateSecret is confirmed by a read, because moto answers
    /// a CreateSecret whose token a version of a secret scheduled for
    /// deletion already has with success, leaving the secret scheduled.
    async fn put_rev(
        &self,
        id: &TypeInstanceId,
        rev: u32,
        value: &Value,
        reused: bool,
    ) -> Result<RevWrite> {
        let name = self.rev_name(id, rev);
        let payload = encode(value.as_bytes());
        let version = rev_token(id, rev, value.as_bytes());
        let tags = || self.tags(id, "revision");
        let created = matches!(
            self.store.create(&name, &payload, &version, tags()).await?,
            Created::Yes
        );
        if created && !reused {
            return Ok(RevWrite::Stored);
        }
        let mut missing = false;
        for _ in 0..MAX_ATTEMPTS {
            match self.store.get(&name).await? {
                Read::Missing => {
                    // Refused although nothing holds the name, twice: not a
                    // race but a refusal (e.g. the KMS key), not worth retrying.
                    if missing {
                        return Err(Error::internal(format!(
                            "secrets manager refused to create {name}"
                        )));
                    }
                    missing = true;
                    // Removed since (a force delete finishing): create again.
                    if let Created::Yes =
                        self.store.create(&name, &payload, &version, tags()).await?
                    {
                        return Ok(RevWrite::Stored);
                    }
                }
                Read::Pending => self.store.restore(&name).await?,
                Read::Found(Current {
                    version_id,
                    payload: current,
                }) => match decode(&name, current)? {
                    Stored::Value(v) if v == value.as_bytes() => {
                        return Ok(if created {
                            RevWrite::Stored
                        } else {
                            RevWrite::Same
                        });
                    }
                    Stored::Value(_) => return Ok(RevWrite::Different),
                    Stored::Tombstone => {
                        if self
                            .swap_current(&name, &payload, &version, &version_id)
                            .await?
                        {
                            return Ok(RevWrite::Stored);
                        }
                    }
                },
            }
        }
        Err(aborted(id))
    }

    /// Makes `payload` the current version of `name` if AWSCURRENT is still
    /// on `from`: a new version labelled only PENDING_STAGE, then the stage
    /// move, which fails if another writer moved it first. (PutSecretValue's
    /// own move of AWSCURRENT is never used: it is unconditional, and moto
    /// 5.2.5 then leaves AWSCURRENT on two versions after an earlier
    /// UpdateSecretVersionStage.)
    async fn swap_current(
        &self,
        name: &str,
        payload: &Payload,
        version: &str,
        from: &str,
    ) -> Result<bool> {
        match self
            .store
            .put(name, payload, version, Some(PENDING_STAGE))
            .await?
        {
            Put::Ok => self.store.move_current(name, version, from).await,
            Put::Missing | Put::Pending => Ok(false),
        }
    }

    /// Removes one revision secret: with a recovery window, its current
    /// version first becomes a tombstone, so that restoring the name later
    /// never brings the old value back as a live revision.
    async fn remove_rev(&self, id: &TypeInstanceId, rev: u32) -> Result<()> {
        let name = self.rev_name(id, rev);
        if self.store.recovery_window_days.is_some() {
            let mut marked = false;
            for _ in 0..MAX_ATTEMPTS {
                let current = match self.store.get(&name).await? {
                    // Gone or already scheduled: nothing to mark.
                    Read::Missing | Read::Pending => {
                        marked = true;
                        break;
                    }
                    Read::Found(c) => c,
                };
                if let Stored::Tombstone = decode(&name, current.payload)? {
                    marked = true;
                    break;
                }
                let version = uuid::Uuid::new_v4().simple().to_string();
                let tombstone = Payload::Binary(vec![TOMBSTONE]);
                if self
                    .swap_current(&name, &tombstone, &version, &current.version_id)
                    .await?
                {
                    marked = true;
                    break;
                }
            }
            if !marked {
                return Err(aborted(id));
            }
        }
        self.store.delete(&name).await
    }

    /// Removes every revision, then the head. Called with the head in state
    /// `deleting`, so a failure part-way is finished by the next retry.
    async fn purge(&self, id: &TypeInstanceId, latest: u32) -> Result<()> {
        futures::stream::iter(1..=latest)
            .map(|rev| self.remove_rev(id, rev))
            .buffer_unordered(PURGE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let name = self.head_name(id);
        if self.store.recovery_window_days.is_some() {
            // A restored head must say "deleted", not "deleting" (which
            // would make a create purge again, forever).
            let mut marked = false;
            for _ in 0..MAX_ATTEMPTS {
                let head = match self.head(id).await? {
                    HeadRead::Found(h) if h.data.state == State::Deleting => h,
                    // Finished by a concurrent call.
                    _ => {
                        marked = true;
                        break;
                    }
                };
                let done = HeadData {
                    state: State::Deleted,
                    lock: None,
                    ..head.data.clone()
                };
                if self.cas_head(id, &head, done).await? {
                    marked = true;
                    break;
                }
            }
            if !marked {
                return Err(aborted(id));
            }
        }
        self.store.delete(&name).await
    }

    fn check_owner(id: &TypeInstanceId, head: &Head, owner: Option<&Owner>) -> Result<()> {
        match &head.data.lock {
            Some(holder) if Some(holder.as_str()) != owner.map(Owner::as_str) => Err(
                Error::failed_precondition(format!("type instance {id} is locked by {holder}")),
            ),
            _ => Ok(()),
        }
    }

    async fn finish_create(
        &self,
        id: &TypeInstanceId,
        value: &Value,
        reused: bool,
    ) -> Result<Option<Json>> {
        match self.put_rev(id, 1, value, reused).await? {
            RevWrite::Stored | RevWrite::Same => Ok(None),
            RevWrite::Different => Err(Error::already_exists(format!(
                "type instance {id} already exists"
            ))),
        }
    }
}

fn fresh_head() -> HeadData {
    HeadData {
        managed_by: MANAGED_BY.to_owned(),
        state: State::Live,
        latest: 1,
        lock: None,
        high: 1,
    }
}

#[async_trait]
impl Backend for SecretsManagerBackend {
    fn describe(&self) -> Describe {
        Describe {
            name: "aws-secretsmanager",
            version: env!("CARGO_PKG_VERSION"),
            accept_value: true,
            context_schema: None,
            context_required: false,
            max_value_bytes: MAX_VALUE_BYTES,
        }
    }

    /// One authenticated ListSecrets (at most one result, under our prefix).
    async fn probe(&self) -> Result<()> {
        self.store.list_one(&format!("{}/", self.prefix)).await
    }

    /// One GetSecretValue of the revision's own secret: O(1) whatever the history.
    async fn get_value(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        _ctx: &Context,
    ) -> Result<Value> {
        match self.read_rev(id, revision.get()).await? {
            Some(bytes) => Ok(Value::from(bytes)),
            None => Err(rev_not_found(id, revision.get())),
        }
    }

    async fn get_locked_by(&self, id: &TypeInstanceId, _ctx: &Context) -> Result<Option<Owner>> {
        let head = self.live_head(id).await?;
        match head.data.lock {
            Some(l) => Owner::parse(&l).map(Some).map_err(|_| {
                Error::data_loss(format!("the lock of type instance {id} is corrupted"))
            }),
            None => Ok(None),
        }
    }

    async fn lock(&self, id: &TypeInstanceId, _ctx: &Context, owner: &Owner) -> Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            let head = self.live_head(id).await?;
            match &head.data.lock {
                Some(h) if h == owner.as_str() => return Ok(()),
                Some(h) => {
                    return Err(Error::failed_precondition(format!(
                        "type instance {id} is locked by {h}"
                    )));
                }
                None => {}
            }
            let next = HeadData {
                lock: Some(owner.as_str().to_owned()),
                ..head.data.clone()
            };
            // The stage move decides between concurrent lockers; the loser
            // re-reads and sees the winner as the holder.
            if self.cas_head(id, &head, next).await? {
                return Ok(());
            }
        }
        Err(aborted(id))
    }

    async fn unlock(&self, id: &TypeInstanceId, _ctx: &Context) -> Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            let head = self.live_head(id).await?;
            if head.data.lock.is_none() {
                return Ok(());
            }
            let next = HeadData {
                lock: None,
                ..head.data.clone()
            };
            if self.cas_head(id, &head, next).await? {
                return Ok(());
            }
        }
        Err(aborted(id))
    }
}

#[async_trait]
impl ValueBackend for SecretsManagerBackend {
    async fn create(
        &self,
        id: &TypeInstanceId,
        value: Value,
        _ctx: &Context,
    ) -> Result<Option<Json>> {
        let name = self.head_name(id);
        for _ in 0..MAX_ATTEMPTS {
            match self.head(id).await? {
                HeadRead::Missing => {
                    let json = serde_json::to_string(&fresh_head())
                        .map_err(|e| Error::internal("encoding the head failed").with_source(e))?;
                    let version = token(&[b"capact-head-create", id.as_str().as_bytes()]);
                    match self
                        .store
                        .create(&name, &Payload::Text(json), &version, self.tags(id, "head"))
                        .await?
                    {
                        Created::Yes => return self.finish_create(id, &value, false).await,
                        Created::Exists => {
                            if let HeadRead::Missing = self.head(id).await? {
                                return Err(Error::internal(format!(
                                    "secrets manager refused to create {name}"
                                )));
                            }
                        }
                    }
                }
                // Deleted with a recovery window: take the name back (README).
                HeadRead::Pending => self.store.restore(&name).await?,
                HeadRead::Found(head) => match head.data.state {
                    // A delete stopped part-way: finish it, then create anew.
                    State::Deleting => self.purge(id, head.data.latest).await?,
                    State::Deleted => {
                        // The old life's revision names may still be
                        // scheduled for deletion: remember how far they go.
                        let next = HeadData {
                            high: head.data.high.max(head.data.latest),
                            ..fresh_head()
                        };
                        if self.cas_head(id, &head, next).await? {
                            return self.finish_create(id, &value, true).await;
                        }
                    }
                    // Exists. A retried create (head at 1, same bytes)
                    // succeeds, and completes one whose revision write failed.
                    State::Live if head.data.latest == 1 => {
                        return self.finish_create(id, &value, head.data.high > 1).await;
                    }
                    State::Live => {
                        return Err(Error::already_exists(format!(
                            "type instance {id} already exists"
                        )));
                    }
                },
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
            let latest = head.data.latest;
            if n <= latest {
                match self.read_rev(id, n).await? {
                    Some(existing) if existing == value.as_bytes() => return Ok(None),
                    Some(_) => return Err(exists()),
                    None => {}
                }
            }
            Self::check_owner(id, &head, owner)?;
            // n == latest here: the revision was claimed but never written.
            if n < latest {
                return Err(Error::failed_precondition(format!(
                    "revision {n} of type instance {id} is not above the latest revision {latest}"
                )));
            }
            if n > latest {
                // Claim n in the head first: its compare-and-swap orders
                // this update against other updates, locks and deletes.
                let next = HeadData {
                    latest: n,
                    high: head.data.high.max(n),
                    ..head.data.clone()
                };
                if !self.cas_head(id, &head, next).await? {
                    continue;
                }
            }
            // Create-only: of concurrent writers of n exactly one wins.
            let reused = n <= head.data.high;
            return match self.put_rev(id, n, &value, reused).await? {
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
            let head = match self.head(id).await? {
                HeadRead::Found(h) if h.data.state != State::Deleted => h,
                _ => return Err(not_found(id)),
            };
            if head.data.state == State::Live {
                Self::check_owner(id, &head, owner)?;
                let next = HeadData {
                    state: State::Deleting,
                    ..head.data.clone()
                };
                if !self.cas_head(id, &head, next).await? {
                    continue;
                }
            }
            return self.purge(id, head.data.latest).await;
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
        // Set once this call removed the revision: a later lost
        // compare-and-swap must not turn that into NOT_FOUND.
        let mut removed = false;
        for _ in 0..MAX_ATTEMPTS {
            let head = self.live_head(id).await?;
            let latest = head.data.latest;
            if n > latest {
                return if removed {
                    Ok(())
                } else {
                    Err(rev_not_found(id, n))
                };
            }
            Self::check_owner(id, &head, owner)?;
            let stored = self.read_rev(id, n).await?.is_some();
            if !stored && !removed && n < latest {
                return Err(rev_not_found(id, n));
            }
            if stored {
                self.remove_rev(id, n).await?;
                removed = true;
            }
            if n < latest {
                return Ok(());
            }
            // The latest revision went (or was only claimed): lower the head
            // to the highest revision left, found by reading downwards (one
            // read unless revisions below were deleted too), or remove the
            // TypeInstance when none is left.
            let mut left = None;
            for r in (1..n).rev() {
                if self.read_rev(id, r).await?.is_some() {
                    left = Some(r);
                    break;
                }
            }
            let next = match left {
                Some(latest) => HeadData {
                    latest,
                    ..head.data.clone()
                },
                None => HeadData {
                    state: State::Deleting,
                    ..head.data.clone()
                },
            };
            if !self.cas_head(id, &head, next.clone()).await? {
                continue;
            }
            if next.state == State::Deleting {
                self.purge(id, head.data.latest).await?;
            }
            return if removed {
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
        let mut all = vec!["aws-secretsmanager-backend"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap_or_else(|e| panic!("parse: {e}"))
    }

    #[test]
    fn text_values_are_stored_as_text_and_everything_else_as_framed_binary() {
        assert!(matches!(encode(b"{\"a\":1}"), Payload::Text(s) if s == "{\"a\":1}"));
        assert!(matches!(encode(b""), Payload::Binary(b) if b == [BINARY_VALUE]));
        assert!(
            matches!(encode(&[0xff, 0x00]), Payload::Binary(b) if b == [BINARY_VALUE, 0xff, 0x00])
        );
    }

    #[test]
    fn every_encoded_value_decodes_to_the_same_bytes() {
        for v in [&b""[..], b"x", b"{\"a\":1}", &[0xff, 0xfe, 0x00], &[0x00]] {
            match decode("n", encode(v)) {
                Ok(Stored::Value(back)) => assert_eq!(back, v),
                _ => panic!("{v:?} did not round-trip"),
            }
        }
        assert!(matches!(
            decode("n", Payload::Binary(vec![TOMBSTONE])),
            Ok(Stored::Tombstone)
        ));
        assert!(decode("n", Payload::Binary(vec![7, 1])).is_err());
        assert!(decode("n", Payload::Binary(vec![])).is_err());
    }

    #[test]
    fn revision_tokens_depend_on_id_revision_and_content_only() {
        let id = TypeInstanceId::parse("a").unwrap_or_else(|e| panic!("{}", e.message()));
        let other = TypeInstanceId::parse("b").unwrap_or_else(|e| panic!("{}", e.message()));
        let t = rev_token(&id, 1, b"v");
        assert_eq!(t, rev_token(&id, 1, b"v"));
        assert_eq!(t.len(), 64);
        assert_ne!(t, rev_token(&id, 2, b"v"));
        assert_ne!(t, rev_token(&id, 1, b"w"));
        assert_ne!(t, rev_token(&other, 1, b"v"));
    }

    #[test]
    fn defaults_are_a_seven_day_window_under_capact() {
        let c = parse(&["--aws-region", "us-east-1"]);
        assert_eq!(c.sm_name_prefix, "capact");
        assert_eq!(c.sm_recovery_window_days, 7);
        assert!(!c.sm_force_delete);
        assert!(c.sm_tags.is_empty());
    }

    #[test]
    fn recovery_window_outside_7_to_30_days_is_rejected() {
        for days in ["6", "31"] {
            assert!(
                Config::try_parse_from([
                    "aws-secretsmanager-backend",
                    "--sm-recovery-window-days",
                    days
                ])
                .is_err()
            );
        }
    }

    #[test]
    fn tags_parse_as_key_value_pairs() {
        let c = parse(&["--sm-tags", "team=platform,env=prod"]);
        assert_eq!(
            c.sm_tags,
            vec![
                ("team".to_owned(), "platform".to_owned()),
                ("env".to_owned(), "prod".to_owned())
            ]
        );
        assert!(
            Config::try_parse_from(["aws-secretsmanager-backend", "--sm-tags", "novalue"]).is_err()
        );
        assert!(
            Config::try_parse_from(["aws-secretsmanager-backend", "--sm-tags", "aws:x=1"]).is_err()
        );
    }

    #[test]
    fn head_data_carries_the_ownership_marker() {
        let json = serde_json::to_string(&fresh_head()).unwrap_or_default();
        assert!(json.contains("\"managed_by\":\"capact-storage\""), "{json}");
        assert!(json.contains("\"state\":\"live\""), "{json}");
    }

    #[test]
    fn prefix_with_characters_secrets_manager_refuses_is_detected() {
        assert!(name_safe("capact/prod_1"));
        assert!(!name_safe("capact prod"));
        assert!(!name_safe("capact#1"));
    }
}
