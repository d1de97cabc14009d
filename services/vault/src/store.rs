//! The KV secrets engine as this backend needs it, and [`VaultStore`]: the
//! [`HeadStore`] primitives of the revision engine over it.
//!
//! [`Kv`] reads a secret with its version, writes with check-and-set, lists
//! a folder and removes a path for good. Every call goes through
//! [`shared::metrics::store_call`] and maps Vault's answers onto the
//! protocol's error kinds in exactly one place ([`map_err`]).
//!
//! Layout (README.md, "Layout"): the head at `<prefix>/<id>/meta`, revision
//! `n` of a life at `<prefix>/<id>/<life>/<n>`, or at `<prefix>/<id>/rev/<n>`
//! for heads written before lives existed. On KV v2 a tag is the secret's
//! version and every write names it as `cas`. KV v1 has neither: see
//! `VaultStore::write_if`.

use std::{
    collections::{HashMap, hash_map::RandomState},
    future::Future,
    hash::BuildHasher,
    sync::{
        Arc, Mutex as StdMutex,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use shared::{
    Describe, Error, Result, TypeInstanceId, Value,
    engine::{Head, HeadRemoval, HeadStore, MANAGED_BY, Slot, Stored, head::foreign},
};
use vaultrs::{client::VaultClient, error::ClientError};

use crate::{
    auth::{self, Session},
    http,
};

/// Vault's own request size limit is 32 MiB; base64 and JSON cost a third.
const MAX_VALUE_BYTES: u64 = 16 << 20;

/// KV v1 only: the data field holding a record's tag (KV v1 has no versions).
const KV1_TAG: &str = "kv1_tag";

/// Which KV engine version the mount runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvVersion {
    #[value(name = "1")]
    V1,
    #[value(name = "2")]
    V2,
}

/// A secret as read: its data and, on KV v2, its current version (the
/// number a cas write must name; 0 on KV v1).
#[derive(Debug)]
pub struct Read {
    pub data: Map<String, Json>,
    pub version: u64,
}

/// A failed Vault call, classified before it becomes a protocol error.
#[derive(Debug)]
pub enum Failure {
    /// 403: the token is not (or no longer) allowed here. The caller may log
    /// in again once and retry.
    Denied(Source),
    Other(Error),
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Other(e)
    }
}

impl Failure {
    /// The protocol error, naming the path (never the token).
    pub fn into_error(self, mount: &str, path: &str) -> Error {
        match self {
            Failure::Denied(e) => Error::permission_denied(format!(
                "vault denied access to {mount}/{path}: check the policy of the backend's token"
            ))
            .with_source(e),
            Failure::Other(e) => e,
        }
    }
}

pub type StoreResult<T> = std::result::Result<T, Failure>;

/// HTTP status code of a Vault answer, in both forms vaultrs reports it: as
/// an API error (JSON `errors` body) or, when the body is something else
/// (for example the 404 of a deleted KV v2 version, whose body carries
/// metadata), as a REST client error.
pub(crate) fn status_of(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::APIError { code, .. } => Some(*code),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => Some(*code),
        _ => None,
    }
}

/// What a failed call came to, whichever client sent it.
enum Outcome<'a> {
    /// Vault answered with this status and these messages.
    Answered(u16, &'a [String]),
    /// Connection refused, reset, TLS or timeout: the store cannot be reached.
    Unreachable,
    /// Anything else (a body that does not parse, a bad request built here).
    Broken,
}

/// The one mapping of Vault failures to protocol errors.
fn classify(outcome: Outcome<'_>, what: &str, source: Source) -> Failure {
    let e = match outcome {
        // A KV v2 mount right after it was enabled: "come back shortly".
        Outcome::Answered(400, errors)
            if errors
                .iter()
                .any(|m| m.contains("will be unavailable for a brief period")) =>
        {
            Error::unavailable(format!(
                "vault's kv engine is upgrading its storage for {what}"
            ))
        }
        Outcome::Answered(403, _) => return Failure::Denied(source),
        // 5xx includes 503 "Vault is sealed"; 429 is a standby or rate limit.
        Outcome::Answered(code, _) if code >= 500 || code == 429 => {
            Error::unavailable(format!("vault is unavailable ({code}) for {what}"))
        }
        Outcome::Answered(code, _) => Error::internal(format!("vault answered {code} for {what}")),
        Outcome::Unreachable => Error::unavailable(format!("vault cannot be reached for {what}")),
        Outcome::Broken => Error::internal(format!("vault call failed for {what}")),
    };
    Failure::Other(e.with_source(source))
}

/// A vaultrs failure (logins, renewals, lookups) as a protocol error.
pub fn map_err(e: ClientError, what: &str) -> Failure {
    let (code, errors) = match &e {
        ClientError::APIError { code, errors } => (Some(*code), errors.clone()),
        _ => (status_of(&e), Vec::new()),
    };
    let outcome = match code {
        Some(code) => Outcome::Answered(code, &errors),
        None if matches!(e, ClientError::RestClientError { .. }) => Outcome::Unreachable,
        None => Outcome::Broken,
    };
    classify(outcome, what, Box::new(e))
}

/// A failure of this crate's own KV calls ([`http`]).
fn map_http(e: reqwest::Error, what: &str) -> Failure {
    let outcome = if e.is_decode() || e.is_builder() {
        Outcome::Broken
    } else {
        Outcome::Unreachable
    };
    classify(outcome, what, Box::new(e))
}

/// A refusal answered to this crate's own KV calls.
fn map_answer(a: &http::Answer, what: &str) -> Failure {
    let refused = a.refusal();
    let errors = refused.errors.clone();
    classify(
        Outcome::Answered(refused.status, &errors),
        what,
        Box::new(refused),
    )
}

/// The JSON body of a successful answer.
fn parse<T: serde::de::DeserializeOwned>(a: &http::Answer, what: &str) -> StoreResult<T> {
    serde_json::from_slice(&a.body).map_err(|e| {
        Failure::Other(
            Error::internal(format!("{what}: vault's answer does not parse")).with_source(e),
        )
    })
}

/// One KV call, measured as a store call.
async fn send(
    operation: &'static str,
    client: &VaultClient,
    method: reqwest::Method,
    url: url::Url,
    body: Option<Vec<u8>>,
    what: &str,
) -> StoreResult<http::Answer> {
    shared::metrics::store_call(operation, async {
        Ok(http::send(client, method, url, body).await)
    })
    .await?
    .map_err(|e| map_http(e, what))
}

/// A KV mount of one engine version.
#[derive(Clone, Debug)]
pub struct Kv {
    pub mount: String,
    pub version: KvVersion,
    url: http::Mount,
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct V2Read {
    data: Json,
    metadata: V2Version,
}

#[derive(Deserialize)]
struct V2Version {
    version: u64,
}

#[derive(Deserialize)]
struct Keys {
    keys: Vec<String>,
}

impl Kv {
    pub fn new(address: &url::Url, mount: String, version: KvVersion) -> Self {
        let url = http::Mount::new(address, &mount);
        Kv {
            mount,
            version,
            url,
        }
    }

    fn v2(&self, section: &str, path: &str) -> url::Url {
        match self.version {
            KvVersion::V2 => self.url.url(Some(section), path),
            KvVersion::V1 => self.url.url(None, path),
        }
    }

    /// Reads the secret at `path`; `None` if it does not exist.
    pub async fn read(&self, client: &VaultClient, path: &str) -> StoreResult<Option<Read>> {
        let what = format!("reading {}/{path}", self.mount);
        let op = match self.version {
            KvVersion::V2 => "kv2_read",
            KvVersion::V1 => "kv1_read",
        };
        let url = self.v2("data", path);
        let a = send(op, client, reqwest::Method::GET, url, None, &what).await?;
        // A deleted KV v2 version answers 404 with its metadata.
        if a.status == 404 {
            return Ok(None);
        }
        if !a.ok() {
            return Err(map_answer(&a, &what));
        }
        let (data, version) = match self.version {
            KvVersion::V2 => {
                let r: Envelope<V2Read> = parse(&a, &what)?;
                (r.data.data, r.data.metadata.version)
            }
            // KV v1 has no versions: tags live in the data (`KV1_TAG`).
            KvVersion::V1 => (parse::<Envelope<Json>>(&a, &what)?.data, 0),
        };
        match data {
            Json::Object(data) => Ok(Some(Read { data, version })),
            // A destroyed or deleted KV v2 version answers with `data: null`.
            Json::Null => Ok(None),
            _ => Err(Error::internal(format!("{what}: data is not a JSON object")).into()),
        }
    }

    /// Writes `data` at `path`: the new version (0 on KV v1), or `None`
    /// if the cas did not match. On KV v2 `cas` 0 creates only and `v`
    /// replaces only version `v`. KV v1 has no cas and writes
    /// unconditionally: `VaultStore::write_if` checks first.
    pub async fn write(
        &self,
        client: &VaultClient,
        path: &str,
        data: &Map<String, Json>,
        cas: u64,
    ) -> StoreResult<Option<u64>> {
        let what = format!("writing {}/{path}", self.mount);
        let (op, body) = match self.version {
            KvVersion::V2 => ("kv2_write", json!({"data": data, "options": {"cas": cas}})),
            KvVersion::V1 => ("kv1_write", json!(data)),
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| Error::internal(format!("{what}: encoding failed")).with_source(e))?;
        let url = self.v2("data", path);
        let a = send(op, client, reqwest::Method::POST, url, Some(body), &what).await?;
        if !a.ok() {
            let refused = a.refusal();
            if refused.status == 400 && refused.errors.iter().any(|m| m.contains("check-and-set")) {
                return Ok(None);
            }
            return Err(map_answer(&a, &what));
        }
        match self.version {
            KvVersion::V2 => Ok(Some(parse::<Envelope<V2Version>>(&a, &what)?.data.version)),
            KvVersion::V1 => Ok(Some(0)),
        }
    }

    /// Removes `path` for good: on KV v2 every version and the metadata (a
    /// soft delete would leave metadata behind and make a later cas=0
    /// create fail). Removing a missing path succeeds.
    pub async fn remove(&self, client: &VaultClient, path: &str) -> StoreResult<()> {
        let what = format!("removing {}/{path}", self.mount);
        let op = match self.version {
            KvVersion::V2 => "kv2_delete_metadata",
            KvVersion::V1 => "kv1_delete",
        };
        let url = self.v2("metadata", path);
        let a = send(op, client, reqwest::Method::DELETE, url, None, &what).await?;
        if a.ok() || a.status == 404 {
            Ok(())
        } else {
            Err(map_answer(&a, &what))
        }
    }

    /// Keys directly under the folder `path` (empty if there is none).
    pub async fn list(&self, client: &VaultClient, path: &str) -> StoreResult<Vec<String>> {
        let what = format!("listing {}/{path}", self.mount);
        let op = match self.version {
            KvVersion::V2 => "kv2_list",
            KvVersion::V1 => "kv1_list",
        };
        let url = self.v2("metadata", path);
        let a = send(op, client, http::list_method(), url, None, &what).await?;
        if a.status == 404 {
            return Ok(Vec::new());
        }
        if !a.ok() {
            return Err(map_answer(&a, &what));
        }
        Ok(parse::<Envelope<Keys>>(&a, &what)?.data.keys)
    }
}

/// KV v1 tags: a counter, so a tag never comes back within the process,
/// behind a random prefix, so none repeats one an earlier process wrote.
struct Kv1Tags {
    prefix: u64,
    next: AtomicU64,
}

impl Kv1Tags {
    fn new() -> Self {
        Kv1Tags {
            prefix: RandomState::new().hash_one(std::process::id()),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n}", self.prefix)
    }
}

/// The revision engine's store on one KV mount, below one prefix.
pub struct VaultStore {
    session: Arc<Session>,
    kv: Kv,
    prefix: String,
    /// KV v1 only: per-id locks held across the read-compare-write that
    /// stands in for cas, so it is atomic within this process (and only
    /// there: KV v1 is for a single replica).
    locks: StdMutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    kv1_tags: Kv1Tags,
}

impl VaultStore {
    pub fn new(session: Arc<Session>, kv: Kv, prefix: String) -> Self {
        VaultStore {
            session,
            kv,
            prefix,
            locks: StdMutex::new(HashMap::new()),
            kv1_tags: Kv1Tags::new(),
        }
    }

    /// Runs one store call with the current token; after a 403 it logs in
    /// again (or re-reads the token file) once and retries, then reports
    /// PERMISSION_DENIED naming the path.
    async fn call<T, F, Fut>(&self, path: &str, f: F) -> Result<T>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let handle = self.session.handle();
        match f(handle.client).await {
            Ok(v) => Ok(v),
            Err(Failure::Denied(_)) => {
                if let Err(e) = self.session.relogin(handle.generation).await {
                    tracing::warn!(error = %e.detail(), "logging in again after a 403 failed");
                }
                f(self.session.handle().client)
                    .await
                    .map_err(|e| e.into_error(&self.kv.mount, path))
            }
            Err(e) => Err(e.into_error(&self.kv.mount, path)),
        }
    }

    async fn read(&self, path: &str) -> Result<Option<Read>> {
        let kv = &self.kv;
        self.call(path, |c| async move { kv.read(&c, path).await })
            .await
    }

    async fn write(&self, path: &str, data: &Map<String, Json>, cas: u64) -> Result<Option<u64>> {
        let kv = &self.kv;
        self.call(path, |c| async move { kv.write(&c, path, data, cas).await })
            .await
    }

    async fn list(&self, path: &str) -> Result<Vec<String>> {
        let kv = &self.kv;
        self.call(path, |c| async move { kv.list(&c, path).await })
            .await
    }

    fn foreign(&self, path: &str) -> Error {
        foreign("vault path", &format!("{}/{path}", self.kv.mount))
    }

    /// The tag of a secret as read: its version on KV v2, the tag in its
    /// data on KV v1 (empty for records written before tags existed).
    fn tag_of(&self, read: &Read) -> String {
        match self.kv.version {
            KvVersion::V2 => read.version.to_string(),
            KvVersion::V1 => read
                .data
                .get(KV1_TAG)
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// KV v1: the id's in-process lock; KV v2 needs none.
    async fn serialize(&self, id: &TypeInstanceId) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        if self.kv.version != KvVersion::V1 {
            return None;
        }
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            // Drop entries nobody holds so the map does not grow forever.
            map.retain(|_, l| Arc::strong_count(l) > 1);
            Arc::clone(map.entry(id.as_str().to_owned()).or_default())
        };
        Some(lock.lock_owned().await)
    }

    /// Writes `data` at `path` only if the secret there has tag `expect`
    /// (`None`: only if there is none). Returns the new tag, or `None` if
    /// the secret was something else (changed, removed or created).
    ///
    /// KV v2: one write with `cas`. KV v1: read, compare and write under the
    /// id's lock, with a fresh tag in the data.
    async fn write_if(
        &self,
        id: &TypeInstanceId,
        path: &str,
        mut data: Map<String, Json>,
        expect: Option<&str>,
    ) -> Result<Option<String>> {
        match self.kv.version {
            KvVersion::V2 => {
                let cas = match expect.map(str::parse::<u64>) {
                    None => 0,
                    Some(Ok(v)) if v > 0 => v,
                    // Not a version we handed out: nothing can match it.
                    Some(_) => return Ok(None),
                };
                Ok(self.write(path, &data, cas).await?.map(|v| v.to_string()))
            }
            KvVersion::V1 => {
                let _serial = self.serialize(id).await;
                let current = self.read(path).await?;
                let matches = match (&current, expect) {
                    (None, None) => true,
                    (Some(read), Some(tag)) => self.tag_of(read) == tag,
                    _ => false,
                };
                if !matches {
                    return Ok(None);
                }
                let tag = self.kv1_tags.next();
                data.insert(KV1_TAG.to_owned(), json!(tag));
                self.write(path, &data, 0).await?;
                Ok(Some(tag))
            }
        }
    }

    /// Removes `path` for good (under the id's lock on KV v1, so that no
    /// read-compare-write brings it back).
    async fn remove(&self, id: &TypeInstanceId, path: &str) -> Result<()> {
        let _serial = self.serialize(id).await;
        let kv = &self.kv;
        self.call(path, |c| async move { kv.remove(&c, path).await })
            .await
    }
}

fn head_path(prefix: &str, id: &TypeInstanceId) -> String {
    format!("{prefix}/{id}/meta")
}

/// The folder of one life's revisions. The life comes from a head we
/// read: anything but the hex the engine writes could leave the id's folder.
fn life_dir(prefix: &str, id: &TypeInstanceId, life: &str) -> Result<String> {
    if life.is_empty() {
        // Heads written before lives existed keep their revisions here.
        return Ok(format!("{prefix}/{id}/rev"));
    }
    if life.len() > 64 || !life.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::data_loss(format!(
            "the head of type instance {id} names an invalid life"
        )));
    }
    Ok(format!("{prefix}/{id}/{life}"))
}

fn rev_path(prefix: &str, at: &Slot<'_>) -> Result<String> {
    Ok(format!("{}/{}", life_dir(prefix, at.id, at.life)?, at.rev))
}

/// The data of a revision secret.
fn revision_data(value: &Value, epoch: u64) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("managed_by".into(), json!(MANAGED_BY));
    m.insert(
        "value".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(value.as_bytes())),
    );
    m.insert("epoch".into(), json!(epoch));
    m
}

/// The bytes and epoch of a revision secret; an epoch is missing from
/// those written before epochs existed, and reads as 0.
fn decode_revision(at: &Slot<'_>, data: &Map<String, Json>) -> Result<(Vec<u8>, u64)> {
    let corrupt = |what: &str| {
        Error::data_loss(format!(
            "revision {} of type instance {} {what}",
            at.rev, at.id
        ))
    };
    let encoded = data
        .get("value")
        .and_then(Json::as_str)
        .ok_or_else(|| corrupt("has no value field"))?;
    let value = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| corrupt("is not valid base64"))?;
    let epoch = match data.get("epoch") {
        None | Some(Json::Null) => 0,
        Some(e) => e.as_u64().ok_or_else(|| corrupt("has an invalid epoch"))?,
    };
    Ok((value, epoch))
}

fn owned(data: &Map<String, Json>) -> bool {
    data.get("managed_by").and_then(Json::as_str) == Some(MANAGED_BY)
}

/// Revision numbers among the keys of a life's folder: only plain numbers
/// are ours; anything else there is left alone.
fn revision_numbers(keys: &[String]) -> Vec<u32> {
    keys.iter()
        .filter(|k| !k.starts_with('0') && k.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|k| k.parse::<u32>().ok())
        .collect()
}

#[async_trait]
impl HeadStore for VaultStore {
    // KV v2 versions restart at 1 when metadata is deleted: a removed and
    // re-created head could match a stale cas. The head of a deleted
    // TypeInstance therefore stays (marked deleted; one small secret per
    // deleted id) and a later create replaces it by cas.
    const HEAD_REMOVAL: HeadRemoval = HeadRemoval::Keep;

    fn describe(&self) -> Describe {
        Describe {
            name: "vault",
            version: env!("CARGO_PKG_VERSION"),
            accept_value: true,
            context_schema: None,
            context_required: false,
            max_value_bytes: MAX_VALUE_BYTES,
        }
    }

    /// Unsealed (a plain GET of /v1/sys/health: vaultrs' own health call
    /// fails on OpenBao) and our login valid (lookup-self).
    async fn probe(&self) -> Result<()> {
        let handle = self.session.handle();
        let url = self
            .session
            .address()
            .join("v1/sys/health")
            .map_err(|e| Error::internal("building the health url failed").with_source(e))?;
        let status = shared::metrics::store_call("sys_health", async {
            handle
                .client
                .http
                .http
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| {
                    Error::unavailable("vault cannot be reached for sys/health").with_source(e)
                })
        })
        .await?;
        match status {
            // Active, or a standby that forwards requests.
            200 | 429 | 472 | 473 => {}
            503 => return Err(Error::unavailable("vault is sealed")),
            501 => return Err(Error::unavailable("vault is not initialized")),
            other => return Err(Error::unavailable(format!("vault health answered {other}"))),
        }
        match auth::lookup(&handle.client).await {
            Err(e) if e.kind() == shared::ErrorKind::PermissionDenied => {
                self.session.relogin(handle.generation).await?;
                auth::lookup(&self.session.handle().client)
                    .await
                    .map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    /// One LIST of the prefix (a folder per TypeInstance), then a read per
    /// head (admin only); what is not ours is skipped.
    async fn list_heads(&self) -> Result<Vec<(TypeInstanceId, Head)>> {
        let mut out = Vec::new();
        for key in self.list(&self.prefix).await? {
            let Some(id) = key
                .strip_suffix('/')
                .and_then(|id| TypeInstanceId::parse(id).ok())
            else {
                continue;
            };
            if let Ok(Some((head, _))) = self.read_head(&id).await {
                out.push((id, head));
            }
        }
        Ok(out)
    }

    async fn read_head(&self, id: &TypeInstanceId) -> Result<Option<(Head, String)>> {
        let path = head_path(&self.prefix, id);
        let Some(read) = self.read(&path).await? else {
            return Ok(None);
        };
        let head = Head::from_map(&read.data).ok_or_else(|| self.foreign(&path))?;
        Ok(Some((head, self.tag_of(&read))))
    }

    async fn create_head(&self, id: &TypeInstanceId, head: &Head) -> Result<Option<String>> {
        self.write_if(id, &head_path(&self.prefix, id), head.to_map(), None)
            .await
    }

    async fn replace_head(
        &self,
        id: &TypeInstanceId,
        head: &Head,
        tag: &str,
    ) -> Result<Option<String>> {
        self.write_if(id, &head_path(&self.prefix, id), head.to_map(), Some(tag))
            .await
    }

    /// Not called with [`HeadRemoval::Keep`]; removes everything if it is.
    async fn remove_head(&self, id: &TypeInstanceId, _tag: &str) -> Result<()> {
        self.remove(id, &head_path(&self.prefix, id)).await
    }

    async fn read_revision(&self, at: Slot<'_>) -> Result<Option<Stored>> {
        let path = rev_path(&self.prefix, &at)?;
        let Some(read) = self.read(&path).await? else {
            return Ok(None);
        };
        if !owned(&read.data) {
            return Err(self.foreign(&path));
        }
        let (value, epoch) = decode_revision(&at, &read.data)?;
        Ok(Some(Stored {
            value: value.into(),
            epoch,
            tag: self.tag_of(&read),
        }))
    }

    async fn write_revision(
        &self,
        at: Slot<'_>,
        value: &Value,
        epoch: u64,
        replace: Option<&str>,
    ) -> Result<bool> {
        let path = rev_path(&self.prefix, &at)?;
        Ok(self
            .write_if(at.id, &path, revision_data(value, epoch), replace)
            .await?
            .is_some())
    }

    async fn remove_revision(&self, at: Slot<'_>) -> Result<()> {
        self.remove(at.id, &rev_path(&self.prefix, &at)?).await
    }

    /// A LIST of the life's folder (delete paths only).
    async fn list_revisions(
        &self,
        id: &TypeInstanceId,
        life: &str,
        _upto: u32,
    ) -> Result<Vec<u32>> {
        let keys = self.list(&life_dir(&self.prefix, id, life)?).await?;
        Ok(revision_numbers(&keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TypeInstanceId {
        TypeInstanceId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_kv_mount_still_upgrading_is_unavailable_and_other_400s_internal() {
        let kind = |errors: &[&str]| match map_err(
            ClientError::APIError {
                code: 400,
                errors: errors.iter().map(|m| m.to_string()).collect(),
            },
            "writing",
        ) {
            Failure::Other(e) => Some(e.kind()),
            Failure::Denied(_) => None,
        };
        let upgrading = "Upgrading from non-versioned to versioned data. This backend will be unavailable for a brief period and will resume service shortly.";
        assert_eq!(kind(&[upgrading]), Some(shared::ErrorKind::Unavailable));
        assert_eq!(
            kind(&["invalid request"]),
            Some(shared::ErrorKind::Internal)
        );
    }

    #[test]
    fn revisions_live_under_their_life_or_under_rev_for_legacy_heads() {
        let ti = id("ti-1");
        let at = |life, rev| Slot { id: &ti, life, rev };
        assert_eq!(head_path("capact", &ti), "capact/ti-1/meta");
        assert_eq!(
            rev_path("capact", &at("00ff00ff00ff00ff", 3))
                .ok()
                .as_deref(),
            Some("capact/ti-1/00ff00ff00ff00ff/3")
        );
        assert_eq!(
            rev_path("capact", &at("", 2)).ok().as_deref(),
            Some("capact/ti-1/rev/2")
        );
    }

    #[test]
    fn a_life_that_is_not_hex_never_becomes_a_path() {
        let ti = id("ti");
        for life in ["../other", "meta", "a/b", &"a".repeat(65)] {
            let err = life_dir("capact", &ti, life).err();
            assert_eq!(
                err.map(|e| e.kind()),
                Some(shared::ErrorKind::DataLoss),
                "{life}"
            );
        }
    }

    #[test]
    fn revision_data_round_trips_and_legacy_data_reads_as_epoch_0() {
        let ti = id("ti");
        let at = Slot {
            id: &ti,
            life: "",
            rev: 1,
        };
        let data = revision_data(&Value::from(vec![0u8, 255, b'x']), 7);
        assert!(owned(&data));
        let decoded = decode_revision(&at, &data).ok();
        assert_eq!(decoded, Some((vec![0u8, 255, b'x'], 7)));
        let Json::Object(legacy) = json!({"managed_by": MANAGED_BY, "value": "eA=="}) else {
            panic!("not an object");
        };
        assert_eq!(decode_revision(&at, &legacy).ok(), Some((b"x".to_vec(), 0)));
        let Json::Object(bad) = json!({"managed_by": MANAGED_BY, "value": "eA==", "epoch": "x"})
        else {
            panic!("not an object");
        };
        assert!(decode_revision(&at, &bad).is_err());
    }

    #[test]
    fn only_plain_positive_numbers_are_revisions() {
        let keys: Vec<String> = ["1", "2", "0", "07", "x", "3/", "+4", "10"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut revs = revision_numbers(&keys);
        revs.sort_unstable();
        assert_eq!(revs, vec![1, 2, 10]);
    }

    #[test]
    fn kv1_tags_never_repeat() {
        let tags = Kv1Tags::new();
        let (a, b) = (tags.next(), tags.next());
        assert_ne!(a, b);
        assert_ne!(Kv1Tags::new().next(), a);
    }
}
