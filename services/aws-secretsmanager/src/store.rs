//! The Secrets Manager side of the backend: [`Secrets`], the calls it makes
//! (each reduced to the outcomes the backend distinguishes; anything else —
//! throttling and 5xx after the SDK's retries, refused credentials, ... —
//! becomes a `shared::Error` through `shared_aws::to_error`), and
//! [`SecretsStore`], the engine's [`HeadStore`] over it.

use async_trait::async_trait;
use aws_sdk_secretsmanager::{
    Client,
    primitives::Blob,
    types::{Filter, FilterNameStringType, Tag},
};
use shared::{
    Describe, Error, Result, TypeInstanceId, Value,
    engine::{self, Head, HeadRemoval, HeadStore, Intent, MANAGED_BY, Slot, Stored, head, rules},
    metrics::store_call,
};

/// The stage every read asks for explicitly. (AWS reads AWSCURRENT by
/// default; moto 5.2.5 instead returns the last version PutSecretValue made
/// current, ignoring UpdateSecretVersionStage, so name it.)
pub const CURRENT: &str = "AWSCURRENT";

/// What a secret version holds: text in `SecretString`, anything else in
/// `SecretBinary`.
#[derive(Clone, PartialEq)]
pub enum Payload {
    Text(String),
    Binary(Vec<u8>),
}

/// The current version of a secret.
pub struct Current {
    pub version_id: String,
    pub payload: Payload,
}

/// What a read of a secret's current version found.
pub enum Read {
    /// No secret of that name.
    Missing,
    /// The secret is scheduled for deletion (its name is still taken).
    Pending,
    Found(Current),
}

/// Outcome of a create-only CreateSecret.
pub enum Created {
    Yes,
    /// The name is taken (by an existing secret, or one scheduled for
    /// deletion), and not by a retry of this very request.
    Exists,
}

/// Outcome of PutSecretValue.
pub enum Put {
    Ok,
    Missing,
    Pending,
}

/// The Secrets Manager calls of the backend.
pub struct Secrets {
    pub client: Client,
    pub kms_key_id: Option<String>,
    /// Recovery window of a delete; `None`: force delete without recovery.
    pub recovery_window_days: Option<i64>,
}

fn code<E: aws_sdk_secretsmanager::error::ProvideErrorMetadata>(
    err: &aws_sdk_secretsmanager::error::SdkError<
        E,
        aws_sdk_secretsmanager::config::http::HttpResponse,
    >,
) -> &str {
    shared_aws::code(err).unwrap_or_default()
}

impl Secrets {
    /// The current version of `name` (AWSCURRENT).
    pub async fn get(&self, name: &str) -> Result<Read> {
        store_call("get_secret_value", async {
            match self
                .client
                .get_secret_value()
                .secret_id(name)
                .version_stage(CURRENT)
                .send()
                .await
            {
                Ok(out) => {
                    let payload = match (out.secret_string, out.secret_binary) {
                        (Some(s), _) => Payload::Text(s),
                        (None, Some(b)) => Payload::Binary(b.into_inner()),
                        (None, None) => {
                            return Err(Error::data_loss(format!(
                                "secret {name} has a current version without a value"
                            )));
                        }
                    };
                    let version_id = out.version_id.ok_or_else(|| {
                        Error::internal(format!("secret {name} was read without a version id"))
                    })?;
                    Ok(Read::Found(Current {
                        version_id,
                        payload,
                    }))
                }
                Err(e) => match code(&e) {
                    "ResourceNotFoundException" => Ok(Read::Missing),
                    // The only reason GetSecretValue gives for an existing secret.
                    "InvalidRequestException" => Ok(Read::Pending),
                    _ => Err(shared_aws::to_error(
                        &format!("secrets manager read of {name}"),
                        e,
                    )),
                },
            }
        })
        .await
    }

    /// CreateSecret: atomic create-only on the name. A retry with the same
    /// token and payload is a no-op that succeeds (AWS and moto agree).
    pub async fn create(
        &self,
        name: &str,
        payload: &Payload,
        token: &str,
        tags: Vec<Tag>,
    ) -> Result<Created> {
        store_call("create_secret", async {
            let mut req = self
                .client
                .create_secret()
                .name(name)
                .client_request_token(token)
                .set_tags(Some(tags))
                .set_kms_key_id(self.kms_key_id.clone());
            req = match payload {
                Payload::Text(s) => req.secret_string(s),
                Payload::Binary(b) => req.secret_binary(Blob::new(b.clone())),
            };
            match req.send().await {
                Ok(_) => Ok(Created::Yes),
                // AWS answers InvalidRequestException for a name scheduled
                // for deletion, moto ResourceExistsException; the caller
                // reads the secret to find out which case it is.
                Err(e)
                    if matches!(
                        code(&e),
                        "ResourceExistsException" | "InvalidRequestException"
                    ) =>
                {
                    Ok(Created::Exists)
                }
                Err(e) => Err(shared_aws::to_error(
                    &format!("secrets manager create of {name}"),
                    e,
                )),
            }
        })
        .await
    }

    /// PutSecretValue with the version id `token`. With `stage` the new
    /// version gets that label only and AWSCURRENT stays where it is;
    /// without, AWSCURRENT moves to it.
    pub async fn put(
        &self,
        name: &str,
        payload: &Payload,
        token: &str,
        stage: Option<&str>,
    ) -> Result<Put> {
        store_call("put_secret_value", async {
            let mut req = self
                .client
                .put_secret_value()
                .secret_id(name)
                .client_request_token(token);
            if let Some(stage) = stage {
                req = req.version_stages(stage);
            }
            req = match payload {
                Payload::Text(s) => req.secret_string(s),
                Payload::Binary(b) => req.secret_binary(Blob::new(b.clone())),
            };
            match req.send().await {
                Ok(_) => Ok(Put::Ok),
                Err(e) => match code(&e) {
                    "ResourceNotFoundException" => Ok(Put::Missing),
                    "InvalidRequestException" => Ok(Put::Pending),
                    _ => Err(shared_aws::to_error(
                        &format!("secrets manager write of {name}"),
                        e,
                    )),
                },
            }
        })
        .await
    }

    /// Moves AWSCURRENT from `from` to `to` only if it is still on `from`:
    /// the compare-and-swap of this store. `false` when it was not.
    pub async fn move_current(&self, name: &str, to: &str, from: &str) -> Result<bool> {
        store_call("update_secret_version_stage", async {
            match self
                .client
                .update_secret_version_stage()
                .secret_id(name)
                .version_stage(CURRENT)
                .move_to_version_id(to)
                .remove_from_version_id(from)
                .send()
                .await
            {
                Ok(_) => Ok(true),
                Err(e)
                    if matches!(
                        code(&e),
                        "InvalidParameterException"
                            | "ResourceNotFoundException"
                            | "InvalidRequestException"
                    ) =>
                {
                    Ok(false)
                }
                Err(e) => Err(shared_aws::to_error(
                    &format!("secrets manager stage move on {name}"),
                    e,
                )),
            }
        })
        .await
    }

    /// Deletes `name` with the configured recovery window (or without one).
    /// A secret already gone or already scheduled for deletion is fine.
    pub async fn delete(&self, name: &str) -> Result<()> {
        store_call("delete_secret", async {
            let req = self.client.delete_secret().secret_id(name);
            let req = match self.recovery_window_days {
                Some(days) => req.recovery_window_in_days(days),
                None => req.force_delete_without_recovery(true),
            };
            match req.send().await {
                Ok(_) => Ok(()),
                Err(e)
                    if matches!(
                        code(&e),
                        "ResourceNotFoundException" | "InvalidRequestException"
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(shared_aws::to_error(
                    &format!("secrets manager delete of {name}"),
                    e,
                )),
            }
        })
        .await
    }

    /// Cancels the scheduled deletion of `name`. Gone or not scheduled is
    /// fine: the caller reads the secret again either way.
    pub async fn restore(&self, name: &str) -> Result<()> {
        store_call("restore_secret", async {
            match self.client.restore_secret().secret_id(name).send().await {
                Ok(_) => Ok(()),
                Err(e)
                    if matches!(
                        code(&e),
                        "ResourceNotFoundException" | "InvalidRequestException"
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(shared_aws::to_error(
                    &format!("secrets manager restore of {name}"),
                    e,
                )),
            }
        })
        .await
    }

    /// Names of every secret whose name starts with `prefix` (all pages;
    /// eventually consistent, which the admin listing it serves tolerates).
    pub async fn list_names(&self, prefix: &str) -> Result<Vec<String>> {
        store_call("list_secrets", async {
            let mut names = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let filter = Filter::builder()
                    .key(FilterNameStringType::Name)
                    .values(prefix)
                    .build();
                let out = self
                    .client
                    .list_secrets()
                    .filters(filter)
                    .set_next_token(token.take())
                    .send()
                    .await
                    .map_err(|e| shared_aws::to_error("secrets manager list", e))?;
                names.extend(
                    out.secret_list()
                        .iter()
                        .filter_map(|s| s.name())
                        .filter(|n| n.starts_with(prefix))
                        .map(str::to_owned),
                );
                match out.next_token() {
                    Some(t) => token = Some(t.to_owned()),
                    None => return Ok(names),
                }
            }
        })
        .await
    }

    /// The health probe: one authenticated ListSecrets of at most one
    /// secret under our prefix.
    pub async fn list_one(&self, prefix: &str) -> Result<()> {
        store_call("list_secrets", async {
            let filter = Filter::builder()
                .key(FilterNameStringType::Name)
                .values(prefix)
                .build();
            self.client
                .list_secrets()
                .max_results(1)
                .filters(filter)
                .send()
                .await
                .map(drop)
                .map_err(|e| shared_aws::to_error("secrets manager list", e))
        })
        .await
    }
}

/// Secrets Manager holds at most 65,536 bytes per version; a binary value
/// costs one format byte (see [`encode`]).
pub const MAX_VALUE_BYTES: u64 = 65_535;

/// Label of a version written but not (yet) made current.
const PENDING_STAGE: &str = "capact-pending";

/// First byte of a `SecretBinary`: a value follows.
const BINARY_VALUE: u8 = 1;
/// A `SecretBinary` of this one byte: the revision was removed.
const TOMBSTONE: u8 = 0;

/// Stage moves tried when a revision becomes a tombstone before ABORTED.
const TOMBSTONE_ATTEMPTS: usize = 8;

/// What a revision secret's current version holds.
#[derive(Debug, PartialEq)]
enum Content {
    Value(Vec<u8>),
    Tombstone,
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

fn decode(name: &str, payload: Payload) -> Result<Content> {
    match payload {
        Payload::Text(s) => Ok(Content::Value(s.into_bytes())),
        Payload::Binary(mut b) => match b.first() {
            Some(&BINARY_VALUE) => {
                b.remove(0);
                Ok(Content::Value(b))
            }
            Some(&TOMBSTONE) if b.len() == 1 => Ok(Content::Tombstone),
            _ => Err(Error::data_loss(format!(
                "secret {name} does not hold a value in this backend's format"
            ))),
        },
    }
}

/// A fresh version id (`ClientRequestToken`, 32–64 characters). Random, so
/// that a version id is never current twice (the stage compare-and-swap
/// would otherwise succeed on a stale read) and never matches a version of
/// a secret scheduled for deletion (moto then answers CreateSecret with
/// success and leaves the secret scheduled). The SDK's own retries of a
/// call reuse it, which AWS answers as a no-op.
///
/// A revision's version id starts with its epoch, `e<epoch>-`, so that the
/// read that returns the value also returns the epoch.
fn new_version(epoch: Option<u64>) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    match epoch {
        Some(e) => format!("e{e}-{random}"),
        None => random,
    }
}

/// The epoch of a revision version id from [`new_version`]; 0 for any other
/// form (revisions written before epochs, by the previous version).
fn epoch_of(version_id: &str) -> u64 {
    let parsed = version_id.strip_prefix('e').and_then(|rest| {
        let (epoch, random) = rest.split_once('-')?;
        let ours = !epoch.is_empty()
            && epoch.bytes().all(|b| b.is_ascii_digit())
            && random.len() == 32
            && random.bytes().all(|b| b.is_ascii_hexdigit());
        if ours { epoch.parse().ok() } else { None }
    });
    parsed.unwrap_or(0)
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

/// The engine's store. The head of `<id>` is the secret `<prefix>/<id>/head`
/// (its JSON in `SecretString`; its tag is the id of the version carrying
/// AWSCURRENT); revision `n` is the secret `<prefix>/<id>/<life>/<n>`
/// (`<prefix>/<id>/<n>` for heads written before lives).
pub struct SecretsStore {
    secrets: Secrets,
    prefix: String,
    /// Extra tags on every secret we create.
    tags: Vec<(String, String)>,
}

impl SecretsStore {
    pub fn new(secrets: Secrets, prefix: String, tags: Vec<(String, String)>) -> Self {
        SecretsStore {
            secrets,
            prefix,
            tags,
        }
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    fn head_name(&self, id: &TypeInstanceId) -> String {
        format!("{}/{id}/head", self.prefix)
    }

    fn rev_name(&self, at: Slot<'_>) -> String {
        if at.life.is_empty() {
            format!("{}/{}/{}", self.prefix, at.id, at.rev)
        } else {
            format!("{}/{}/{}/{}", self.prefix, at.id, at.life, at.rev)
        }
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

    /// Makes `payload` the current version of `name` if AWSCURRENT is still
    /// on `from`: a new version labelled only PENDING_STAGE, then the stage
    /// move, which fails if another writer moved it first. Returns the new
    /// version id. (PutSecretValue's own move of AWSCURRENT is never used:
    /// it is unconditional, and moto 5.2.5 then leaves AWSCURRENT on two
    /// versions after an earlier UpdateSecretVersionStage.)
    async fn swap_current(
        &self,
        name: &str,
        payload: &Payload,
        version: String,
        from: &str,
    ) -> Result<Option<String>> {
        match self
            .secrets
            .put(name, payload, &version, Some(PENDING_STAGE))
            .await?
        {
            Put::Ok if self.secrets.move_current(name, &version, from).await? => Ok(Some(version)),
            _ => Ok(None),
        }
    }
}

fn head_payload(head: &Head) -> Result<Payload> {
    serde_json::to_string(&serde_json::Value::Object(head.to_map()))
        .map(Payload::Text)
        .map_err(|e| Error::internal("encoding the head failed").with_source(e))
}

/// Decodes the head secret `name`; anything we did not write is refused.
fn decode_head(name: &str, payload: &Payload) -> Result<Head> {
    const WHAT: &str = "secrets manager secret";
    let head = match payload {
        Payload::Text(s) => head::decode(WHAT, name, s.as_bytes())?,
        Payload::Binary(_) => return Err(head::foreign(WHAT, name)),
    };
    // The life becomes part of secret names: anything but our hex tokens
    // would reach outside this TypeInstance's own secrets.
    if !head.life.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(head::foreign(WHAT, name));
    }
    Ok(head)
}

#[async_trait]
impl HeadStore for SecretsStore {
    // DeleteSecret takes no version: the engine marks the head deleted by
    // the stage compare-and-swap before removing it.
    const HEAD_REMOVAL: HeadRemoval = HeadRemoval::Unconditional;

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
        self.secrets.list_one(&format!("{}/", self.prefix)).await
    }

    /// A head scheduled for deletion is a removed head.
    /// One listing of the prefix, then a read per head (admin only).
    async fn list_heads(&self) -> Result<Vec<(TypeInstanceId, Head)>> {
        let root = format!("{}/", self.prefix);
        let names = self.secrets.list_names(&root).await?;
        Ok(engine::heads_at_keys(self, &root, names).await)
    }

    async fn read_head(&self, id: &TypeInstanceId) -> Result<Option<(Head, String)>> {
        let name = self.head_name(id);
        match self.secrets.get(&name).await? {
            Read::Missing | Read::Pending => Ok(None),
            Read::Found(c) => Ok(Some((decode_head(&name, &c.payload)?, c.version_id))),
        }
    }

    /// CreateSecret, create-only on the name. A name scheduled for deletion
    /// (a delete with a recovery window) is taken back when its head says
    /// that delete finished: restored, then replaced by the stage
    /// compare-and-swap, so that of two creators exactly one wins.
    async fn create_head(&self, id: &TypeInstanceId, head: &Head) -> Result<Option<String>> {
        let name = self.head_name(id);
        let payload = head_payload(head)?;
        let version = new_version(None);
        if let Created::Yes = self
            .secrets
            .create(&name, &payload, &version, self.tags(id, "head"))
            .await?
        {
            return Ok(Some(version));
        }
        // Missing here: a force delete still in progress at AWS; the engine
        // retries and answers ABORTED if it lasts.
        if !matches!(self.secrets.get(&name).await?, Read::Pending) {
            return Ok(None);
        }
        self.secrets.restore(&name).await?;
        match self.secrets.get(&name).await? {
            Read::Found(c)
                if matches!(
                    decode_head(&name, &c.payload)?.intent,
                    Some(Intent::Deleted { .. })
                ) =>
            {
                self.swap_current(&name, &payload, new_version(None), &c.version_id)
                    .await
            }
            // Anything else is an existing head the engine reads next.
            _ => Ok(None),
        }
    }

    async fn replace_head(
        &self,
        id: &TypeInstanceId,
        head: &Head,
        tag: &str,
    ) -> Result<Option<String>> {
        let payload = head_payload(head)?;
        self.swap_current(&self.head_name(id), &payload, new_version(None), tag)
            .await
    }

    /// DeleteSecret with the recovery window (or force): a later create
    /// restores the name (see `create_head`).
    async fn remove_head(&self, id: &TypeInstanceId, _tag: &str) -> Result<()> {
        self.secrets.delete(&self.head_name(id)).await
    }

    /// A tombstone or a secret scheduled for deletion is no revision.
    async fn read_revision(&self, at: Slot<'_>) -> Result<Option<Stored>> {
        let name = self.rev_name(at);
        let Read::Found(c) = self.secrets.get(&name).await? else {
            return Ok(None);
        };
        match decode(&name, c.payload)? {
            Content::Tombstone => Ok(None),
            Content::Value(v) => Ok(Some(Stored {
                value: Value::from(v).into_bytes(),
                epoch: epoch_of(&c.version_id),
                tag: c.version_id,
            })),
        }
    }

    /// Create-only is CreateSecret; a replace is the stage compare-and-swap
    /// from the version read. A name taken by a removed revision (a
    /// tombstone, maybe scheduled for deletion) counts as free: it is
    /// restored and the tombstone replaced by the same compare-and-swap, so
    /// that of two writers exactly one wins there too.
    async fn write_revision(
        &self,
        at: Slot<'_>,
        value: &Value,
        epoch: u64,
        replace: Option<&str>,
    ) -> Result<bool> {
        let name = self.rev_name(at);
        let payload = encode(value.as_bytes());
        if let Some(tag) = replace {
            let swapped = self
                .swap_current(&name, &payload, new_version(Some(epoch)), tag)
                .await?;
            return Ok(swapped.is_some());
        }
        let version = new_version(Some(epoch));
        if let Created::Yes = self
            .secrets
            .create(&name, &payload, &version, self.tags(at.id, "revision"))
            .await?
        {
            return Ok(true);
        }
        let mut current = self.secrets.get(&name).await?;
        if let Read::Pending = current {
            self.secrets.restore(&name).await?;
            current = self.secrets.get(&name).await?;
        }
        // Missing: a force delete still in progress at AWS; the engine
        // retries. A value: the object exists.
        let Read::Found(Current {
            version_id,
            payload: held,
        }) = current
        else {
            return Ok(false);
        };
        if decode(&name, held)? != Content::Tombstone {
            return Ok(false);
        }
        let swapped = self
            .swap_current(&name, &payload, new_version(Some(epoch)), &version_id)
            .await?;
        Ok(swapped.is_some())
    }

    /// With a recovery window the current version first becomes a
    /// tombstone, so that restoring the name later (an operator, or a write
    /// of the same name) never shows the old value as a revision; without,
    /// a force delete.
    async fn remove_revision(&self, at: Slot<'_>) -> Result<()> {
        let name = self.rev_name(at);
        if self.secrets.recovery_window_days.is_none() {
            return self.secrets.delete(&name).await;
        }
        for _ in 0..TOMBSTONE_ATTEMPTS {
            let c = match self.secrets.get(&name).await? {
                Read::Missing | Read::Pending => return Ok(()),
                Read::Found(c) => c,
            };
            let marked = match decode(&name, c.payload)? {
                Content::Tombstone => true,
                Content::Value(_) => {
                    let tombstone = Payload::Binary(vec![TOMBSTONE]);
                    self.swap_current(&name, &tombstone, new_version(None), &c.version_id)
                        .await?
                        .is_some()
                }
            };
            if marked {
                return self.secrets.delete(&name).await;
            }
        }
        Err(rules::contended(at.id))
    }

    /// `1..=upto` without a listing: ListSecrets is eventually consistent,
    /// and removing a revision that does not exist is a cheap success.
    async fn list_revisions(
        &self,
        _id: &TypeInstanceId,
        _life: &str,
        upto: u32,
    ) -> Result<Vec<u32>> {
        Ok((1..=upto).collect())
    }

    /// Reads downwards from `rev - 1`: one read unless the revisions just
    /// below were removed too.
    async fn highest_below(
        &self,
        id: &TypeInstanceId,
        life: &str,
        rev: u32,
    ) -> Result<Option<u32>> {
        engine::highest_below_by_reading(self, id, life, rev).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                Ok(Content::Value(back)) => assert_eq!(back, v),
                _ => panic!("{v:?} did not round-trip"),
            }
        }
        assert_eq!(
            decode("n", Payload::Binary(vec![TOMBSTONE])).ok(),
            Some(Content::Tombstone)
        );
        assert!(decode("n", Payload::Binary(vec![7, 1])).is_err());
        assert!(decode("n", Payload::Binary(vec![])).is_err());
    }

    #[test]
    fn revision_version_ids_carry_the_epoch_within_aws_token_limits() {
        for epoch in [0, 7, u64::MAX] {
            let v = new_version(Some(epoch));
            assert!((32..=64).contains(&v.len()), "{v}");
            assert_eq!(epoch_of(&v), epoch, "{v}");
        }
        assert_ne!(new_version(Some(1)), new_version(Some(1)));
        assert_eq!(new_version(None).len(), 32);
    }

    #[test]
    fn version_ids_in_other_forms_have_epoch_zero() {
        // The previous version's tokens (64 hex), AWS's own UUIDs (one
        // starting with `e` and digits), a tombstone's plain token.
        let legacy = "e".repeat(64);
        for v in [
            legacy.as_str(),
            "e1234567-98fc-4a1b-9c2d-0123456789ab",
            "e12-xyz",
            "e-0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(epoch_of(v), 0, "{v}");
        }
    }

    fn store(prefix: &str) -> SecretsStore {
        let conf = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .build();
        SecretsStore::new(
            Secrets {
                client: Client::from_conf(conf),
                kms_key_id: None,
                recovery_window_days: Some(7),
            },
            prefix.into(),
            vec![],
        )
    }

    #[test]
    fn revisions_live_under_their_life_and_legacy_heads_keep_the_old_names() -> Result<()> {
        let id = TypeInstanceId::parse("ti")?;
        let s = store("capact");
        let at = |life| Slot {
            id: &id,
            life,
            rev: 7,
        };
        assert_eq!(
            s.rev_name(at("00000000000000ab")),
            "capact/ti/00000000000000ab/7"
        );
        assert_eq!(s.rev_name(at("")), "capact/ti/7");
        assert_eq!(s.head_name(&id), "capact/ti/head");
        Ok(())
    }

    #[test]
    fn heads_round_trip_and_foreign_or_unsafe_ones_are_refused() -> Result<()> {
        let h = Head {
            life: "00000000000000ab".into(),
            latest: 3,
            lock: Some("o".into()),
            epoch: 1,
            floor: 0,
            locked_at: None,
            intent: Some(Intent::Deleted { since: 5 }),
        };
        assert_eq!(decode_head("n", &head_payload(&h)?)?, h);
        let legacy = Payload::Text(
            r#"{"managed_by":"capact-storage","state":"live","latest":2,"lock":null,"high":2}"#
                .into(),
        );
        let old = decode_head("n", &legacy)?;
        assert!(old.is_live() && old.life.is_empty() && old.latest == 2);
        let escape = Head {
            life: "../x".into(),
            ..h
        };
        assert!(decode_head("n", &head_payload(&escape)?).is_err());
        assert!(decode_head("n", &Payload::Text(r#"{"latest":1}"#.into())).is_err());
        assert!(decode_head("n", &Payload::Binary(vec![1])).is_err());
        Ok(())
    }
}
