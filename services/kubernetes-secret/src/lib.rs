//! A `ValueAndContextStorageBackend` that keeps TypeInstance revisions in
//! Kubernetes Secrets: one create-only, immutable Secret per revision and one
//! "head" Secret per TypeInstance carrying the latest revision, the lock and
//! the application-facing Secret, written at its resourceVersion. The layout
//! and its invariant are described in this crate's README.md.

pub mod store;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use async_trait::async_trait;
use clap::Parser;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::ObjectMeta;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use shared::{
    Backend, Context, Describe, Error, Owner, Result, Revision, TypeInstanceId, Value,
    ValueBackend, config::ServerConfig, server::BackendConfig,
};

use crate::store::{Secrets, Written};

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "capact-storage";
/// Label: a hash of the TypeInstance id (ids may be longer than a label value).
pub const KEY_LABEL: &str = "capact.io/type-instance-key";
/// Label: `head`, `revision` or `app`.
pub const ROLE_LABEL: &str = "capact.io/role";
pub const REVISION_LABEL: &str = "capact.io/revision";
/// Annotation: the TypeInstance id as sent.
pub const ID_ANNOTATION: &str = "capact.io/type-instance-id";
pub const LATEST_ANNOTATION: &str = "capact.io/latest-revision";
pub const LOCK_ANNOTATION: &str = "capact.io/locked-by";
pub const DELETING_ANNOTATION: &str = "capact.io/deleting";
pub const APP_ANNOTATION: &str = "capact.io/app-secret";
pub const REVISION_ANNOTATION: &str = "capact.io/revision";
/// The data key of a revision Secret.
pub const VALUE_KEY: &str = "value";

/// Kubernetes rejects a Secret whose data (keys plus values) exceeds 1 MiB.
pub const MAX_SECRET_DATA: u64 = 1 << 20;

/// How often a conflicting write is retried before giving up with ABORTED.
const MAX_ATTEMPTS: usize = 8;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "kubernetes-secret-backend",
    version,
    about = "Capact storage backend on Kubernetes Secrets"
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,

    /// Kubeconfig file; unset: $KUBECONFIG/~/.kube/config, else the pod's
    /// in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context (default: its current-context).
    #[arg(long, env = "APP_K8S_CONTEXT")]
    pub kube_context: Option<String>,

    /// Namespace of the Secrets (default: the pod's own, else the kubeconfig's).
    #[arg(long, env = "APP_K8S_NAMESPACE")]
    pub namespace: Option<String>,

    /// Prefix of every Secret name this backend writes.
    #[arg(long, env = "APP_K8S_NAME_PREFIX", default_value = "capact")]
    pub name_prefix: String,

    /// Namespaces an application-facing Secret may be written to (comma
    /// separated, `*` for any); the backend's own namespace is always allowed.
    #[arg(long, env = "APP_K8S_APP_SECRET_NAMESPACES", value_delimiter = ',')]
    pub app_secret_namespaces: Vec<String>,

    /// Timeout of one call to the API server.
    #[arg(long, env = "APP_K8S_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub kube_timeout: Duration,
}

impl BackendConfig for Config {
    const QUIET_LOG_TARGETS: &'static [&'static str] = &["kube_client"];

    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

fn valid_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 40
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && p.as_bytes()[0].is_ascii_lowercase()
        && !p.ends_with('-')
}

/// Builds the backend: reads the client configuration (no call is made;
/// health probes the API server).
pub async fn build(config: Config) -> Result<KubeSecretBackend> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !valid_prefix(&config.name_prefix) {
        return Err(Error::invalid_argument(
            "APP_K8S_NAME_PREFIX must be 1-40 characters of [a-z0-9-], starting with a letter",
        ));
    }
    let options = kube::config::KubeConfigOptions {
        context: config.kube_context.clone(),
        ..Default::default()
    };
    let mut kc = match &config.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                Error::invalid_argument(format!("cannot read KUBECONFIG {}", path.display()))
                    .with_source(e)
            })?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| {
                    Error::invalid_argument(format!(
                        "KUBECONFIG {} is not usable",
                        path.display()
                    ))
                    .with_source(e)
                })?
        }
        None => kube::Config::infer().await.map_err(|e| {
            Error::invalid_argument(
                "no Kubernetes configuration: set KUBECONFIG or run in a pod with a service account",
            )
            .with_source(e)
        })?,
    };
    kc.connect_timeout = Some(config.kube_timeout.min(Duration::from_secs(5)));
    kc.read_timeout = Some(config.kube_timeout);
    kc.write_timeout = Some(config.kube_timeout);
    let namespace = config
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| kc.default_namespace.clone());
    let client = kube::Client::try_from(kc)
        .map_err(|e| Error::invalid_argument("kubernetes client setup failed").with_source(e))?;
    let mut allowed: Vec<String> = config
        .app_secret_namespaces
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    allowed.push(namespace.clone());
    Ok(KubeSecretBackend {
        secrets: Secrets::new(client.clone(), &namespace),
        client,
        namespace,
        prefix: config.name_prefix,
        allowed,
    })
}

pub struct KubeSecretBackend {
    client: kube::Client,
    secrets: Secrets,
    namespace: String,
    prefix: String,
    allowed: Vec<String>,
}

/// The part of a TypeInstance's Secret names and `capact.io/type-instance-key`
/// label: the first 20 bytes of SHA-256 of the id, in hex. Ids may be up to
/// 128 characters with upper case; names and label values may not.
pub fn secret_key(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..20])
}

/// Where the latest revision is also written for a workload to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AppTarget {
    namespace: String,
    name: String,
    key: String,
}

impl AppTarget {
    fn encode(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.name, self.key)
    }

    fn decode(s: &str) -> Option<Self> {
        let mut it = s.splitn(3, '/');
        Some(Self {
            namespace: it.next()?.to_owned(),
            name: it.next()?.to_owned(),
            key: it.next()?.to_owned(),
        })
    }
}

/// The head Secret of a TypeInstance.
#[derive(Debug, Clone)]
struct Head {
    latest: u32,
    lock: Option<String>,
    deleting: bool,
    app: Option<AppTarget>,
    resource_version: Option<String>,
    uid: Option<String>,
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

fn foreign(namespace: &str, name: &str) -> Error {
    Error::failed_precondition(format!(
        "secret {namespace}/{name} was not written by this backend for this type instance; it is left untouched"
    ))
}

enum RevWrite {
    Stored,
    Same,
    Different,
}

/// The context schema (published through Describe and the registration).
pub fn context_schema() -> Json {
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "appSecret": {
                "description": "A Secret that receives the latest revision under `key`, for a workload to mount",
                "type": "object",
                "properties": {
                    "namespace": {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "name": {"type": "string", "maxLength": 253, "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                    "key": {"type": "string", "maxLength": 253, "pattern": "^[-._a-zA-Z0-9]+$"}
                },
                "required": ["name", "key"],
                "additionalProperties": false
            }
        },
        "additionalProperties": false
    })
}

impl KubeSecretBackend {
    /// The hash of an id that names its Secrets: ids may be up to 128
    /// characters with upper case, names and label values may not.
    fn key(id: &TypeInstanceId) -> String {
        secret_key(id.as_str())
    }

    fn head_name(&self, id: &TypeInstanceId) -> String {
        format!("{}-{}", self.prefix, Self::key(id))
    }

    fn rev_name(&self, id: &TypeInstanceId, rev: u32) -> String {
        format!("{}-{}-r{rev}", self.prefix, Self::key(id))
    }

    fn labels(id: &TypeInstanceId, role: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            (KEY_LABEL.to_owned(), Self::key(id)),
            (ROLE_LABEL.to_owned(), role.to_owned()),
        ])
    }

    fn owned_as(secret: &Secret, id: &TypeInstanceId, role: &str) -> bool {
        let labels = secret.metadata.labels.as_ref();
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        let annotation = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ID_ANNOTATION))
            .map(String::as_str);
        label(MANAGED_BY_LABEL) == Some(MANAGED_BY)
            && label(KEY_LABEL) == Some(Self::key(id).as_str())
            && label(ROLE_LABEL) == Some(role)
            && annotation == Some(id.as_str())
    }

    /// The application-facing Secret named by the context, checked against
    /// the allowed namespaces, or `None` when the context names none.
    fn app_target(&self, ctx: &Context) -> Result<Option<AppTarget>> {
        let Some(app) = ctx.object().and_then(|o| o.get("appSecret")) else {
            return Ok(None);
        };
        let field = |f: &str| app.get(f).and_then(Json::as_str).map(str::to_owned);
        let (Some(name), Some(key)) = (field("name"), field("key")) else {
            return Err(Error::invalid_argument(
                "context field '/appSecret' needs name and key",
            ));
        };
        let namespace = field("namespace").unwrap_or_else(|| self.namespace.clone());
        if !self.allowed.iter().any(|a| a == "*" || *a == namespace) {
            return Err(Error::invalid_argument(format!(
                "context field '/appSecret/namespace' names namespace {namespace}, where this backend may not write (APP_K8S_APP_SECRET_NAMESPACES)"
            )));
        }
        Ok(Some(AppTarget {
            namespace,
            name,
            key,
        }))
    }

    fn check_size(value: &Value, target: Option<&AppTarget>) -> Result<()> {
        if let Some(t) = target {
            let limit = MAX_SECRET_DATA - t.key.len() as u64;
            if value.len() as u64 > limit {
                return Err(Error::invalid_argument(format!(
                    "value is larger than the kubernetes-secret backend's limit of {limit} bytes for an application-facing secret with key {}",
                    t.key
                )));
            }
        }
        Ok(())
    }

    fn head_secret(&self, id: &TypeInstanceId, head: &Head) -> Secret {
        let mut annotations = BTreeMap::from([
            (ID_ANNOTATION.to_owned(), id.as_str().to_owned()),
            (LATEST_ANNOTATION.to_owned(), head.latest.to_string()),
        ]);
        if let Some(l) = &head.lock {
            annotations.insert(LOCK_ANNOTATION.to_owned(), l.clone());
        }
        if head.deleting {
            annotations.insert(DELETING_ANNOTATION.to_owned(), "true".to_owned());
        }
        if let Some(a) = &head.app {
            annotations.insert(APP_ANNOTATION.to_owned(), a.encode());
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(self.head_name(id)),
                namespace: Some(self.namespace.clone()),
                labels: Some(Self::labels(id, "head")),
                annotations: Some(annotations),
                resource_version: head.resource_version.clone(),
                ..Default::default()
            },
            type_: Some("capact.io/type-instance".to_owned()),
            ..Default::default()
        }
    }

    /// The head, or `None` if the TypeInstance does not exist.
    async fn head(&self, id: &TypeInstanceId) -> Result<Option<Head>> {
        let name = self.head_name(id);
        let Some(s) = self.secrets.get(&name).await? else {
            return Ok(None);
        };
        if !Self::owned_as(&s, id, "head") {
            return Err(foreign(&self.namespace, &name));
        }
        let ann = s.metadata.annotations.clone().unwrap_or_default();
        let latest = ann
            .get(LATEST_ANNOTATION)
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| {
                Error::data_loss(format!("the head of type instance {id} is corrupted"))
            })?;
        Ok(Some(Head {
            latest,
            lock: ann.get(LOCK_ANNOTATION).cloned(),
            deleting: ann.get(DELETING_ANNOTATION).is_some_and(|v| v == "true"),
            app: ann.get(APP_ANNOTATION).and_then(|a| AppTarget::decode(a)),
            resource_version: s.metadata.resource_version.clone(),
            uid: s.metadata.uid.clone(),
        }))
    }

    async fn live_head(&self, id: &TypeInstanceId) -> Result<Head> {
        match self.head(id).await? {
            Some(h) if !h.deleting => Ok(h),
            _ => Err(not_found(id)),
        }
    }

    /// Creates the head (no resourceVersion) or replaces it at the one read.
    async fn put_head(&self, id: &TypeInstanceId, head: &Head) -> Result<Written> {
        let secret = self.head_secret(id, head);
        match &head.resource_version {
            None => self.secrets.create(&secret).await,
            Some(_) => self.secrets.replace(&self.head_name(id), &secret).await,
        }
    }

    /// The bytes of revision `rev`, if stored.
    async fn rev(&self, id: &TypeInstanceId, rev: u32) -> Result<Option<Vec<u8>>> {
        let name = self.rev_name(id, rev);
        let Some(s) = self.secrets.get(&name).await? else {
            return Ok(None);
        };
        if !Self::owned_as(&s, id, "revision") {
            return Err(foreign(&self.namespace, &name));
        }
        Ok(Some(
            s.data
                .and_then(|mut d| d.remove(VALUE_KEY))
                .map(|b| b.0)
                .unwrap_or_default(),
        ))
    }

    /// Stores a revision create-only and immutable; an existing one is compared.
    async fn put_rev(&self, id: &TypeInstanceId, rev: u32, value: &Value) -> Result<RevWrite> {
        let mut labels = Self::labels(id, "revision");
        labels.insert(REVISION_LABEL.to_owned(), rev.to_string());
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.rev_name(id, rev)),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([
                    (ID_ANNOTATION.to_owned(), id.as_str().to_owned()),
                    (REVISION_ANNOTATION.to_owned(), rev.to_string()),
                ])),
                ..Default::default()
            },
            type_: Some("capact.io/type-instance-revision".to_owned()),
            immutable: Some(true),
            data: Some(BTreeMap::from([(
                VALUE_KEY.to_owned(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        match self.secrets.create(&secret).await? {
            Written::Ok => Ok(RevWrite::Stored),
            Written::Conflict => match self.rev(id, rev).await? {
                Some(existing) if existing == value.as_bytes() => Ok(RevWrite::Same),
                None => Err(aborted(id)),
                Some(_) => Ok(RevWrite::Different),
            },
        }
    }

    fn secrets_in(&self, namespace: &str) -> Secrets {
        if namespace == self.namespace {
            self.secrets.clone()
        } else {
            Secrets::new(self.client.clone(), namespace)
        }
    }

    /// Fails if the application-facing Secret exists and is not ours for
    /// this TypeInstance: checked before anything is written.
    async fn check_app(&self, id: &TypeInstanceId, target: &AppTarget) -> Result<()> {
        match self.secrets_in(&target.namespace).get(&target.name).await? {
            Some(s) if !Self::owned_as(&s, id, "app") => {
                Err(foreign(&target.namespace, &target.name))
            }
            _ => Ok(()),
        }
    }

    /// Writes revision `rev` into the application-facing Secret (create, or
    /// replace at the resourceVersion read). A newer revision already there
    /// is kept unless `force` (the latest revision was deleted).
    async fn project(
        &self,
        id: &TypeInstanceId,
        target: &AppTarget,
        rev: u32,
        value: &[u8],
        force: bool,
    ) -> Result<()> {
        let secrets = self.secrets_in(&target.namespace);
        for _ in 0..MAX_ATTEMPTS {
            let existing = secrets.get(&target.name).await?;
            if let Some(s) = &existing {
                if !Self::owned_as(s, id, "app") {
                    return Err(foreign(&target.namespace, &target.name));
                }
                let there = s
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(REVISION_ANNOTATION))
                    .and_then(|r| r.parse::<u32>().ok())
                    .unwrap_or(0);
                let same = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&target.key))
                    .is_some_and(|b| b.0 == value);
                if (there > rev && !force) || (there == rev && same) {
                    return Ok(());
                }
            }
            let mut labels = Self::labels(id, "app");
            labels.insert(REVISION_LABEL.to_owned(), rev.to_string());
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(target.name.clone()),
                    namespace: Some(target.namespace.clone()),
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([
                        (ID_ANNOTATION.to_owned(), id.as_str().to_owned()),
                        (REVISION_ANNOTATION.to_owned(), rev.to_string()),
                    ])),
                    resource_version: existing
                        .as_ref()
                        .and_then(|s| s.metadata.resource_version.clone()),
                    ..Default::default()
                },
                type_: Some("Opaque".to_owned()),
                data: Some(BTreeMap::from([(
                    target.key.clone(),
                    ByteString(value.to_vec()),
                )])),
                ..Default::default()
            };
            let written = match existing {
                None => secrets.create(&secret).await?,
                Some(_) => secrets.replace(&target.name, &secret).await?,
            };
            if written == Written::Ok {
                return Ok(());
            }
        }
        Err(aborted(id))
    }

    /// Deletes the application-facing Secret if it is ours for this TypeInstance.
    async fn remove_app(&self, id: &TypeInstanceId, target: &AppTarget) -> Result<()> {
        let secrets = self.secrets_in(&target.namespace);
        match secrets.get(&target.name).await? {
            Some(s) if Self::owned_as(&s, id, "app") => {
                secrets
                    .delete(&target.name, s.metadata.uid.as_deref())
                    .await
            }
            _ => Ok(()),
        }
    }

    fn check_owner(id: &TypeInstanceId, head: &Head, owner: Option<&Owner>) -> Result<()> {
        match &head.lock {
            Some(holder) if Some(holder.as_str()) != owner.map(Owner::as_str) => Err(
                Error::failed_precondition(format!("type instance {id} is locked by {holder}")),
            ),
            _ => Ok(()),
        }
    }

    /// Revision Secrets of `id` (a LIST by label: delete paths only).
    async fn stored_revisions(&self, id: &TypeInstanceId) -> Result<Vec<(u32, Secret)>> {
        let selector = format!(
            "{MANAGED_BY_LABEL}={MANAGED_BY},{KEY_LABEL}={},{ROLE_LABEL}=revision",
            Self::key(id)
        );
        let mut out = Vec::new();
        for s in self.secrets.list(&selector, None).await? {
            if !Self::owned_as(&s, id, "revision") {
                continue;
            }
            let n = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL))
                .and_then(|r| r.parse::<u32>().ok());
            if let Some(n) = n
                && n > 0
            {
                out.push((n, s));
            }
        }
        Ok(out)
    }

    /// Removes every revision, the application-facing Secret, then the
    /// head. Called with the head marked `deleting`, so a failure part-way
    /// is finished by the next retry. Deletes carry the uid read, so a
    /// TypeInstance re-created meanwhile is never touched.
    async fn purge(&self, id: &TypeInstanceId, head: &Head) -> Result<()> {
        for (_, s) in self.stored_revisions(id).await? {
            if let Some(name) = &s.metadata.name {
                self.secrets.delete(name, s.metadata.uid.as_deref()).await?;
            }
        }
        if let Some(app) = &head.app {
            self.remove_app(id, app).await?;
        }
        self.secrets
            .delete(&self.head_name(id), head.uid.as_deref())
            .await
    }

    /// Finishes a create/update that stored revision `n`: the
    /// application-facing Secret gets it, and a replaced one goes.
    async fn after_store(
        &self,
        id: &TypeInstanceId,
        n: u32,
        value: &Value,
        target: Option<&AppTarget>,
        old: Option<&AppTarget>,
    ) -> Result<()> {
        if let Some(t) = target {
            self.project(id, t, n, value.as_bytes(), false).await?;
        }
        if let Some(o) = old
            && Some(o) != target
        {
            self.remove_app(id, o).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for KubeSecretBackend {
    fn describe(&self) -> Describe {
        Describe {
            name: "kubernetes-secret",
            version: env!("CARGO_PKG_VERSION"),
            accept_value: true,
            context_schema: Some(context_schema()),
            context_required: false,
            max_value_bytes: MAX_SECRET_DATA - VALUE_KEY.len() as u64,
        }
    }

    /// A cheap authorized call: list at most one of our Secrets.
    async fn probe(&self) -> Result<()> {
        self.secrets
            .list(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"), Some(1))
            .await
            .map(drop)
    }

    /// One GET of the revision's own Secret: O(1) whatever the history.
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
        match self.live_head(id).await?.lock {
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
                ..head
            };
            // The resourceVersion decides between concurrent lockers; the
            // loser re-reads and sees the winner as the holder.
            if self.put_head(id, &next).await? == Written::Ok {
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
            let next = Head { lock: None, ..head };
            if self.put_head(id, &next).await? == Written::Ok {
                return Ok(());
            }
        }
        Err(aborted(id))
    }
}

#[async_trait]
impl ValueBackend for KubeSecretBackend {
    async fn create(
        &self,
        id: &TypeInstanceId,
        value: Value,
        ctx: &Context,
    ) -> Result<Option<Json>> {
        let target = self.app_target(ctx)?;
        Self::check_size(&value, target.as_ref())?;
        if let Some(t) = &target {
            self.check_app(id, t).await?;
        }
        let exists = || Error::already_exists(format!("type instance {id} already exists"));
        for _ in 0..MAX_ATTEMPTS {
            match self.head(id).await? {
                Some(head) if head.deleting => {
                    // A delete stopped part-way: finish it, then create anew.
                    self.purge(id, &head).await?;
                    continue;
                }
                Some(head) => {
                    // A retried create (head at 1, same bytes) succeeds and
                    // completes whatever the first attempt left undone.
                    if head.latest != 1 || head.app != target {
                        return Err(exists());
                    }
                    return match self.put_rev(id, 1, &value).await? {
                        RevWrite::Stored | RevWrite::Same => {
                            self.after_store(id, 1, &value, target.as_ref(), None)
                                .await?;
                            Ok(None)
                        }
                        RevWrite::Different => Err(exists()),
                    };
                }
                None => {
                    // Head first (create-only), then the revision: see README.
                    let head = Head {
                        latest: 1,
                        lock: None,
                        deleting: false,
                        app: target.clone(),
                        resource_version: None,
                        uid: None,
                    };
                    if self.put_head(id, &head).await? == Written::Conflict {
                        continue;
                    }
                    return match self.put_rev(id, 1, &value).await? {
                        RevWrite::Stored | RevWrite::Same => {
                            self.after_store(id, 1, &value, target.as_ref(), None)
                                .await?;
                            Ok(None)
                        }
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
        ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<Option<Json>> {
        let n = revision.get();
        let from_ctx = self.app_target(ctx)?;
        let exists =
            || Error::already_exists(format!("revision {n} of type instance {id} already exists"));
        for _ in 0..MAX_ATTEMPTS {
            let head = self.live_head(id).await?;
            // No appSecret in the context keeps the current one.
            let target = from_ctx.clone().or_else(|| head.app.clone());
            Self::check_size(&value, target.as_ref())?;
            if n <= head.latest {
                match self.rev(id, n).await? {
                    Some(existing) if existing == value.as_bytes() => {
                        if n == head.latest
                            && let Some(t) = &head.app
                        {
                            self.project(id, t, n, value.as_bytes(), false).await?;
                        }
                        return Ok(None);
                    }
                    Some(_) => return Err(exists()),
                    None => {}
                }
            }
            Self::check_owner(id, &head, owner)?;
            if n < head.latest {
                return Err(Error::failed_precondition(format!(
                    "revision {n} of type instance {id} is not above the latest revision {}",
                    head.latest
                )));
            }
            if let Some(t) = &target
                && head.app.as_ref() != Some(t)
            {
                self.check_app(id, t).await?;
            }
            let old = head.app.clone();
            if n > head.latest || head.app != target {
                // Claim the revision (and the target) in the head first: its
                // resourceVersion orders this update against other updates,
                // locks and deletes.
                let next = Head {
                    latest: n,
                    app: target.clone(),
                    ..head
                };
                if self.put_head(id, &next).await? == Written::Conflict {
                    continue;
                }
            }
            // Create-only: one winner among concurrent writers of revision n.
            return match self.put_rev(id, n, &value).await? {
                RevWrite::Stored | RevWrite::Same => {
                    self.after_store(id, n, &value, target.as_ref(), old.as_ref())
                        .await?;
                    Ok(None)
                }
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
            if head.deleting {
                return self.purge(id, &head).await;
            }
            Self::check_owner(id, &head, owner)?;
            let next = Head {
                deleting: true,
                ..head
            };
            if self.put_head(id, &next).await? == Written::Conflict {
                continue;
            }
            // The replace bumped the resourceVersion but not the uid.
            return self.purge(id, &next).await;
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
        for _ in 0..MAX_ATTEMPTS {
            let head = self.live_head(id).await?;
            if n > head.latest {
                return Err(rev_not_found(id, n));
            }
            Self::check_owner(id, &head, owner)?;
            let stored = self.secrets.get(&self.rev_name(id, n)).await?;
            if let Some(s) = &stored
                && !Self::owned_as(s, id, "revision")
            {
                return Err(foreign(&self.namespace, &self.rev_name(id, n)));
            }
            if stored.is_none() && n < head.latest {
                return Err(rev_not_found(id, n));
            }
            if let Some(s) = &stored {
                self.secrets
                    .delete(&self.rev_name(id, n), s.metadata.uid.as_deref())
                    .await?;
            }
            if n < head.latest {
                return Ok(());
            }
            // The latest revision went (or was only claimed): lower the head
            // to the highest revision left, or remove the TypeInstance.
            let left = self
                .stored_revisions(id)
                .await?
                .into_iter()
                .map(|(r, _)| r)
                .filter(|r| *r < n)
                .max();
            let next = match left {
                Some(latest) => Head {
                    latest,
                    ..head.clone()
                },
                None => Head {
                    deleting: true,
                    ..head.clone()
                },
            };
            if self.put_head(id, &next).await? == Written::Conflict {
                continue;
            }
            match left {
                None => self.purge(id, &next).await?,
                Some(latest) => {
                    if let Some(t) = &next.app
                        && let Some(bytes) = self.rev(id, latest).await?
                    {
                        self.project(id, t, latest, &bytes, true).await?;
                    }
                }
            }
            return if stored.is_some() {
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
        let mut all = vec!["kubernetes-secret-backend"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap_or_else(|e| panic!("parse: {e}"))
    }

    #[test]
    fn defaults_are_prefix_capact_and_only_the_own_namespace() {
        let c = parse(&[]);
        assert_eq!(c.name_prefix, "capact");
        assert!(c.app_secret_namespaces.is_empty());
    }

    #[test]
    fn app_secret_namespaces_are_comma_separated() {
        let c = parse(&["--app-secret-namespaces", "a,b"]);
        assert_eq!(c.app_secret_namespaces, vec!["a", "b"]);
    }

    #[test]
    fn prefix_must_fit_a_dns_name() {
        assert!(valid_prefix("capact"));
        assert!(valid_prefix("ti-store-1"));
        assert!(!valid_prefix("Capact"));
        assert!(!valid_prefix("cap_act"));
        assert!(!valid_prefix("capact-"));
        assert!(!valid_prefix(""));
    }

    #[test]
    fn key_of_long_upper_case_ids_is_a_short_lowercase_hash() {
        let long = "A".repeat(128);
        let id = TypeInstanceId::parse(&long).expect("valid id");
        let k = KubeSecretBackend::key(&id);
        assert_eq!(k.len(), 40);
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        let lower = TypeInstanceId::parse(&"a".repeat(128)).expect("valid id");
        assert_ne!(k, KubeSecretBackend::key(&lower));
    }

    #[test]
    fn app_target_round_trips_through_its_annotation() {
        let t = AppTarget {
            namespace: "ns".into(),
            name: "app.config".into(),
            key: "config.json".into(),
        };
        assert_eq!(AppTarget::decode(&t.encode()), Some(t));
    }

    #[test]
    fn context_schema_compiles() {
        assert!(jsonschema_compiles(&context_schema()));
    }

    fn jsonschema_compiles(s: &Json) -> bool {
        let d = Describe {
            name: "t",
            version: "0",
            accept_value: true,
            context_schema: Some(s.clone()),
            context_required: false,
            max_value_bytes: 1,
        };
        shared::validate::Rules::new(&d, 1).is_ok()
    }
}
