//! A `ValueAndContextStorageBackend` that keeps TypeInstance revisions in
//! Vault's (or OpenBao's) KV secrets engine. The layout and its invariant
//! are described in this crate's README.md.

pub mod auth;
pub mod store;

use std::{
    collections::HashMap,
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use async_trait::async_trait;
use base64::Engine as _;
use clap::Parser;
use serde_json::{Map, Value as Json, json};
use shared::{
    Backend, Context, Describe, Error, Owner, Result, Revision, Secret, TypeInstanceId, Value,
    ValueBackend, config::ServerConfig, server::BackendConfig,
};
use vaultrs::client::VaultClient;

use crate::{
    auth::{Connection, Method, SecretSource, Session},
    store::{Failure, Kv, KvVersion, Read, StoreResult, Written},
};

/// Marker in the data of every secret this backend writes. A secret at one
/// of our paths without it was not written by us and is never overwritten.
pub const MANAGED_BY: &str = "capact-storage";

/// How often a conflicting cas write is retried before giving up with ABORTED.
const MAX_ATTEMPTS: usize = 8;

/// Vault's own request size limit is 32 MiB; base64 and JSON cost a third.
const MAX_VALUE_BYTES: u64 = 16 << 20;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "vault-backend",
    version,
    about = "Capact storage backend on Vault/OpenBao KV"
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,

    /// Vault address, e.g. https://vault.example:8200.
    #[arg(long, env = "VAULT_ADDR", default_value = "http://127.0.0.1:8200")]
    pub vault_addr: String,

    /// Vault token (prefer --vault-token-file or a login method).
    #[arg(long, env = "VAULT_TOKEN", hide_env_values = true)]
    pub vault_token: Option<Secret>,

    /// File holding the Vault token; re-read when it changes.
    #[arg(long, env = "VAULT_TOKEN_FILE")]
    pub vault_token_file: Option<PathBuf>,

    /// Vault Enterprise / OpenBao namespace (sent as X-Vault-Namespace).
    #[arg(long, env = "VAULT_NAMESPACE")]
    pub vault_namespace: Option<String>,

    /// PEM CA bundle to trust for Vault's TLS certificate.
    #[arg(long, env = "VAULT_CACERT")]
    pub vault_cacert: Option<PathBuf>,

    /// PEM client certificate for mutual TLS with Vault (with --vault-client-key).
    #[arg(long, env = "VAULT_CLIENT_CERT", requires = "vault_client_key")]
    pub vault_client_cert: Option<PathBuf>,

    /// PEM private key of --vault-client-cert.
    #[arg(long, env = "VAULT_CLIENT_KEY", requires = "vault_client_cert")]
    pub vault_client_key: Option<PathBuf>,

    /// Timeout of one HTTP call to Vault.
    #[arg(long, env = "APP_VAULT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub vault_timeout: Duration,

    /// KV mount path.
    #[arg(long, env = "APP_VAULT_MOUNT", default_value = "secret")]
    pub vault_mount: String,

    /// Path prefix under the mount; every TypeInstance lives below it.
    #[arg(long, env = "APP_VAULT_PATH_PREFIX", default_value = "capact")]
    pub vault_path_prefix: String,

    /// KV engine version of the mount: 2 (atomic with cas) or 1 (see README).
    #[arg(long, env = "APP_VAULT_KV_VERSION", value_enum, default_value = "2")]
    pub vault_kv_version: KvVersion,

    /// AppRole role_id: enables AppRole login.
    #[arg(long, env = "APP_VAULT_APPROLE_ROLE_ID")]
    pub approle_role_id: Option<String>,

    /// AppRole secret_id.
    #[arg(long, env = "APP_VAULT_APPROLE_SECRET_ID", hide_env_values = true)]
    pub approle_secret_id: Option<Secret>,

    /// File holding the AppRole secret_id.
    #[arg(long, env = "APP_VAULT_APPROLE_SECRET_ID_FILE")]
    pub approle_secret_id_file: Option<PathBuf>,

    /// AppRole auth mount.
    #[arg(long, env = "APP_VAULT_APPROLE_MOUNT", default_value = "approle")]
    pub approle_mount: String,

    /// Kubernetes auth role: enables Kubernetes login.
    #[arg(long, env = "APP_VAULT_K8S_ROLE")]
    pub k8s_role: Option<String>,

    /// Service-account JWT file for Kubernetes login.
    #[arg(
        long,
        env = "APP_VAULT_K8S_JWT_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub k8s_jwt_file: PathBuf,

    /// Kubernetes auth mount.
    #[arg(long, env = "APP_VAULT_K8S_MOUNT", default_value = "kubernetes")]
    pub k8s_mount: String,

    /// How often a token file is checked for a new token.
    #[arg(long, env = "APP_VAULT_TOKEN_FILE_POLL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub token_file_poll: Duration,
}

impl BackendConfig for Config {
    // vaultrs logs every cas conflict (an expected race outcome) at ERROR.
    const QUIET_LOG_TARGETS: &'static [&'static str] = &["vaultrs"];

    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

impl Config {
    fn method(&self) -> Result<Method> {
        if let Some(role_id) = &self.approle_role_id {
            let secret_id = match (&self.approle_secret_id, &self.approle_secret_id_file) {
                (_, Some(f)) => SecretSource::File(f.clone()),
                (Some(s), None) => SecretSource::Value(s.clone()),
                (None, None) => {
                    return Err(Error::invalid_argument(
                        "AppRole login needs APP_VAULT_APPROLE_SECRET_ID or APP_VAULT_APPROLE_SECRET_ID_FILE",
                    ));
                }
            };
            return Ok(Method::AppRole {
                mount: self.approle_mount.clone(),
                role_id: role_id.clone(),
                secret_id,
            });
        }
        if let Some(role) = &self.k8s_role {
            return Ok(Method::Kubernetes {
                mount: self.k8s_mount.clone(),
                role: role.clone(),
                jwt_file: self.k8s_jwt_file.clone(),
            });
        }
        Ok(Method::Token {
            token: self.vault_token.clone().filter(|t| !t.is_empty()),
            file: self.vault_token_file.clone(),
        })
    }

    fn connection(&self) -> Result<Connection> {
        let address = url::Url::parse(&self.vault_addr)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                Error::invalid_argument("VAULT_ADDR must be an http:// or https:// url")
            })?;
        let identity = match (&self.vault_client_cert, &self.vault_client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert).map_err(|e| {
                    Error::invalid_argument(format!(
                        "cannot read VAULT_CLIENT_CERT {}",
                        cert.display()
                    ))
                    .with_source(e)
                })?;
                pem.push(b'\n');
                pem.extend(std::fs::read(key).map_err(|e| {
                    Error::invalid_argument(format!(
                        "cannot read VAULT_CLIENT_KEY {}",
                        key.display()
                    ))
                    .with_source(e)
                })?);
                Some(vaultrs::client::Identity::from_pem(&pem).map_err(|e| {
                    Error::invalid_argument(
                        "VAULT_CLIENT_CERT/VAULT_CLIENT_KEY are not a PEM certificate and key",
                    )
                    .with_source(e)
                })?)
            }
            _ => None,
        };
        Ok(Connection {
            address,
            ca_certs: self
                .vault_cacert
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            identity,
            namespace: self.vault_namespace.clone().filter(|n| !n.is_empty()),
            timeout: self.vault_timeout,
        })
    }
}

/// Builds the backend from its configuration: logs in and starts keeping
/// the token valid.
pub async fn build(config: Config) -> Result<VaultBackend> {
    // reqwest is built with rustls but without a crypto provider: the whole
    // workspace uses ring (tonic's tls-ring). Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let prefix = config.vault_path_prefix.trim_matches('/').to_owned();
    let mount = config.vault_mount.trim_matches('/').to_owned();
    if prefix.is_empty() || mount.is_empty() {
        return Err(Error::invalid_argument(
            "APP_VAULT_MOUNT and APP_VAULT_PATH_PREFIX must not be empty",
        ));
    }
    let session = Session::start(config.connection()?, config.method()?).await?;
    tokio::spawn(Arc::clone(&session).maintain(config.token_file_poll));
    Ok(VaultBackend {
        session,
        kv: Kv {
            mount,
            version: config.vault_kv_version,
        },
        prefix,
        locks: StdMutex::new(HashMap::new()),
    })
}

pub struct VaultBackend {
    session: Arc<Session>,
    kv: Kv,
    prefix: String,
    /// KV v1 only: per-id locks that serialize every state change of an id
    /// inside this process (KV v1 has no cas).
    locks: StdMutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The head of a TypeInstance: `<prefix>/<id>/meta`.
#[derive(Debug, Clone, PartialEq)]
struct Head {
    latest: u32,
    lock: Option<String>,
    /// Set by OnDelete before it removes anything: the TypeInstance no
    /// longer exists for any other call, and a retry finishes the removal.
    deleting: bool,
    version: u64,
}

impl Head {
    fn data(&self) -> Map<String, Json> {
        let Json::Object(m) = json!({
            "managed_by": MANAGED_BY,
            "latest": self.latest,
            "lock": self.lock,
            "deleting": self.deleting,
        }) else {
            return Map::new();
        };
        m
    }
}

fn owned(data: &Map<String, Json>) -> bool {
    data.get("managed_by").and_then(Json::as_str) == Some(MANAGED_BY)
}

fn not_found(id: &TypeInstanceId) -> Error {
    Error::not_found(format!("type instance {id} not found"))
}

fn rev_not_found(id: &TypeInstanceId, rev: u32) -> Error {
    Error::not_found(format!("revision {rev} of type instance {id} not found"))
}

fn foreign(path: &str) -> Error {
    Error::failed_precondition(format!(
        "vault path {path} holds a secret this backend did not write; it is left untouched"
    ))
}

fn aborted(id: &TypeInstanceId) -> Error {
    Error::aborted(format!(
        "type instance {id} changed concurrently too often; retry"
    ))
}

/// Outcome of writing a revision secret with cas=0.
enum RevWrite {
    Stored,
    /// The revision already exists with exactly these bytes.
    Same,
    /// The revision already exists with other bytes.
    Different,
}

impl VaultBackend {
    fn head_path(&self, id: &TypeInstanceId) -> String {
        format!("{}/{id}/meta", self.prefix)
    }

    fn revs_path(&self, id: &TypeInstanceId) -> String {
        format!("{}/{id}/rev", self.prefix)
    }

    fn rev_path(&self, id: &TypeInstanceId, rev: u32) -> String {
        format!("{}/{id}/rev/{rev}", self.prefix)
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

    async fn write(
        &self,
        path: &str,
        data: &Map<String, Json>,
        cas: Option<u64>,
    ) -> Result<Written> {
        let kv = &self.kv;
        self.call(path, |c| async move { kv.write(&c, path, data, cas).await })
            .await
    }

    async fn remove(&self, path: &str) -> Result<()> {
        let kv = &self.kv;
        self.call(path, |c| async move { kv.remove(&c, path).await })
            .await
    }

    async fn list(&self, path: &str) -> Result<Vec<String>> {
        let kv = &self.kv;
        self.call(path, |c| async move { kv.list(&c, path).await })
            .await
    }

    /// The head, or `None` if the TypeInstance does not exist.
    async fn head(&self, id: &TypeInstanceId) -> Result<Option<Head>> {
        let path = self.head_path(id);
        let Some(read) = self.read(&path).await? else {
            return Ok(None);
        };
        if !owned(&read.data) {
            return Err(foreign(&path));
        }
        let latest = read
            .data
            .get("latest")
            .and_then(Json::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                Error::data_loss(format!("the head of type instance {id} is corrupted"))
            })?;
        Ok(Some(Head {
            latest,
            lock: read
                .data
                .get("lock")
                .and_then(Json::as_str)
                .map(str::to_owned),
            deleting: read
                .data
                .get("deleting")
                .and_then(Json::as_bool)
                .unwrap_or(false),
            version: read.version,
        }))
    }

    /// The head of an existing TypeInstance (one being deleted does not exist).
    async fn live_head(&self, id: &TypeInstanceId) -> Result<Head> {
        match self.head(id).await? {
            Some(h) if !h.deleting => Ok(h),
            _ => Err(not_found(id)),
        }
    }

    /// Replaces the head if it is still at `prev.version`.
    async fn put_head(
        &self,
        id: &TypeInstanceId,
        next: &Head,
        prev_version: u64,
    ) -> Result<Written> {
        self.write(&self.head_path(id), &next.data(), Some(prev_version))
            .await
    }

    /// The bytes of one revision, or `None` if it does not exist.
    async fn rev(&self, id: &TypeInstanceId, rev: u32) -> Result<Option<Vec<u8>>> {
        let path = self.rev_path(id, rev);
        let Some(read) = self.read(&path).await? else {
            return Ok(None);
        };
        if !owned(&read.data) {
            return Err(foreign(&path));
        }
        let encoded = read
            .data
            .get("value")
            .and_then(Json::as_str)
            .ok_or_else(|| {
                Error::data_loss(format!(
                    "revision {rev} of type instance {id} has no value field"
                ))
            })?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Some)
            .map_err(|_| {
                Error::data_loss(format!(
                    "revision {rev} of type instance {id} is not valid base64"
                ))
            })
    }

    /// Stores a revision create-only (cas=0); an existing one is compared.
    async fn put_rev(&self, id: &TypeInstanceId, rev: u32, value: &Value) -> Result<RevWrite> {
        let Json::Object(data) = json!({
            "managed_by": MANAGED_BY,
            "value": base64::engine::general_purpose::STANDARD.encode(value.as_bytes()),
        }) else {
            return Err(Error::internal("building the revision data failed"));
        };
        match self.write(&self.rev_path(id, rev), &data, Some(0)).await? {
            Written::Ok => Ok(RevWrite::Stored),
            Written::Conflict => match self.rev(id, rev).await? {
                Some(existing) if existing == value.as_bytes() => Ok(RevWrite::Same),
                // Removed between our write and read: a concurrent delete won.
                None => Err(aborted(id)),
                Some(_) => Ok(RevWrite::Different),
            },
        }
    }

    /// KV v1 has no cas: serialize the state changes of one id in-process.
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

    fn check_owner(id: &TypeInstanceId, head: &Head, owner: Option<&Owner>) -> Result<()> {
        match &head.lock {
            Some(holder) if Some(holder.as_str()) != owner.map(Owner::as_str) => Err(
                Error::failed_precondition(format!("type instance {id} is locked by {holder}")),
            ),
            _ => Ok(()),
        }
    }

    /// Revision numbers stored for `id` (a LIST: only delete paths use it).
    async fn stored_revisions(&self, id: &TypeInstanceId) -> Result<Vec<u32>> {
        let keys = self.list(&self.revs_path(id)).await?;
        // Only plain numbers are ours; anything else under the folder is left alone.
        Ok(keys
            .iter()
            .filter_map(|k| k.parse::<u32>().ok())
            .filter(|n| *n > 0)
            .collect())
    }

    /// Removes every revision, then the head. Called with the head marked
    /// `deleting`, so a failure part-way is finished by the next retry.
    async fn purge(&self, id: &TypeInstanceId) -> Result<()> {
        for rev in self.stored_revisions(id).await? {
            self.remove(&self.rev_path(id, rev)).await?;
        }
        self.remove(&self.head_path(id)).await
    }
}

#[async_trait]
impl Backend for VaultBackend {
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

    /// One read of the revision's own secret: O(1) whatever the history.
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
        let _serial = self.serialize(id).await;
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
            // The head's cas decides between concurrent lockers; the loser
            // re-reads and sees the winner as the holder.
            if self.put_head(id, &next, head.version).await? == Written::Ok {
                return Ok(());
            }
        }
        Err(aborted(id))
    }

    async fn unlock(&self, id: &TypeInstanceId, _ctx: &Context) -> Result<()> {
        let _serial = self.serialize(id).await;
        for _ in 0..MAX_ATTEMPTS {
            let head = self.live_head(id).await?;
            if head.lock.is_none() {
                return Ok(());
            }
            let next = Head {
                lock: None,
                ..head.clone()
            };
            if self.put_head(id, &next, head.version).await? == Written::Ok {
                return Ok(());
            }
        }
        Err(aborted(id))
    }
}

#[async_trait]
impl ValueBackend for VaultBackend {
    async fn create(
        &self,
        id: &TypeInstanceId,
        value: Value,
        _ctx: &Context,
    ) -> Result<Option<Json>> {
        let _serial = self.serialize(id).await;
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
                        return Err(Error::already_exists(format!(
                            "type instance {id} already exists"
                        )));
                    }
                    return match self.put_rev(id, 1, &value).await? {
                        RevWrite::Stored | RevWrite::Same => Ok(None),
                        RevWrite::Different => Err(Error::already_exists(format!(
                            "type instance {id} already exists"
                        ))),
                    };
                }
                None => {
                    // Head first (cas=0), then the revision: see README "Invariant".
                    let head = Head {
                        latest: 1,
                        lock: None,
                        deleting: false,
                        version: 0,
                    };
                    if self.put_head(id, &head, 0).await? == Written::Conflict {
                        continue;
                    }
                    return match self.put_rev(id, 1, &value).await? {
                        RevWrite::Stored | RevWrite::Same => Ok(None),
                        RevWrite::Different => Err(Error::already_exists(format!(
                            "type instance {id} already exists"
                        ))),
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
        let _serial = self.serialize(id).await;
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
            Self::check_owner(id, &head, owner)?;
            // n == latest here means the revision was claimed but never written.
            if n < head.latest {
                return Err(Error::failed_precondition(format!(
                    "revision {n} of type instance {id} is not above the latest revision {}",
                    head.latest
                )));
            }
            if n > head.latest {
                // Claim the revision in the head first: its cas orders this
                // update against other updates, locks and deletes.
                let next = Head {
                    latest: n,
                    ..head.clone()
                };
                if self.put_head(id, &next, head.version).await? == Written::Conflict {
                    continue;
                }
            }
            // The cas=0 write of the revision picks the one winner among
            // concurrent writers of the same revision.
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
        let _serial = self.serialize(id).await;
        for _ in 0..MAX_ATTEMPTS {
            let Some(head) = self.head(id).await? else {
                return Err(not_found(id));
            };
            if !head.deleting {
                Self::check_owner(id, &head, owner)?;
                let next = Head {
                    deleting: true,
                    ..head.clone()
                };
                if self.put_head(id, &next, head.version).await? == Written::Conflict {
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
        let _serial = self.serialize(id).await;
        let n = revision.get();
        for _ in 0..MAX_ATTEMPTS {
            let head = self.live_head(id).await?;
            if n > head.latest {
                return Err(rev_not_found(id, n));
            }
            Self::check_owner(id, &head, owner)?;
            let stored = self.rev(id, n).await?.is_some();
            if !stored && n < head.latest {
                return Err(rev_not_found(id, n));
            }
            if stored {
                self.remove(&self.rev_path(id, n)).await?;
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
            if self.put_head(id, &next, head.version).await? == Written::Conflict {
                continue;
            }
            if last {
                self.purge(id).await?;
            }
            return if stored {
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
        let mut all = vec!["vault-backend"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap_or_else(|e| panic!("parse: {e}"))
    }

    #[test]
    fn debug_of_the_config_hides_token_and_secret_id() {
        let c = parse(&[
            "--vault-token",
            "hvs.super-secret-token",
            "--approle-secret-id",
            "secret-id-value",
        ]);
        let shown = format!("{c:?}");
        assert!(!shown.contains("super-secret-token"), "{shown}");
        assert!(!shown.contains("secret-id-value"), "{shown}");
    }

    #[test]
    fn defaults_are_kv2_under_secret_capact() {
        let c = parse(&[]);
        assert_eq!(c.vault_kv_version, KvVersion::V2);
        assert_eq!(c.vault_mount, "secret");
        assert_eq!(c.vault_path_prefix, "capact");
    }

    #[test]
    fn kv_version_other_than_1_or_2_is_rejected() {
        assert!(Config::try_parse_from(["vault-backend", "--vault-kv-version", "3"]).is_err());
    }

    #[test]
    fn approle_without_secret_id_is_a_configuration_error() {
        let c = parse(&["--approle-role-id", "r"]);
        let err = c.method().expect_err("needs a secret id");
        assert_eq!(err.kind(), shared::ErrorKind::InvalidArgument);
    }

    #[test]
    fn address_without_http_scheme_is_rejected() {
        let c = parse(&["--vault-addr", "vault:8200"]);
        assert!(c.connection().is_err());
    }

    #[test]
    fn head_data_carries_the_ownership_marker() {
        let head = Head {
            latest: 3,
            lock: Some("o".into()),
            deleting: false,
            version: 7,
        };
        let data = head.data();
        assert!(owned(&data));
        assert_eq!(data.get("latest").and_then(Json::as_u64), Some(3));
    }
}
