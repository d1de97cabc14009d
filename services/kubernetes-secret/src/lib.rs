//! A `ValueAndContextStorageBackend` that keeps TypeInstance revisions in
//! Kubernetes Secrets: the revision engine ([`shared::engine`]) over a head
//! Secret per TypeInstance and one immutable Secret per revision
//! ([`store`]), plus the optional application-facing Secret ([`app`]).
//! Layout and invariant: this crate's README.md; the algorithm:
//! ARCHITECTURE.md, "The revision engine".

pub mod app;
pub mod config;
pub mod store;

use async_trait::async_trait;
use serde_json::Value as Json;
use shared::{
    Backend, Context, Describe, Error, LockInfo, Owner, Result, Revision, TypeInstanceId, Value,
    ValueBackend,
    engine::{Engine, Options},
};

pub use config::Config;
pub use store::{SecretStore, secret_key};

use crate::app::Request;

/// The engine over Secrets. A thin wrapper, because the engine gives the
/// store no context: each call runs in an [`app::Request`] scope carrying
/// the app Secret its context names (checked up front, like the size).
pub struct KubeSecretBackend {
    engine: Engine<SecretStore>,
}

/// Builds the backend: reads the client configuration (no call is made;
/// health probes the API server).
pub async fn build(config: Config) -> Result<KubeSecretBackend> {
    if !config::valid_prefix(&config.name_prefix) {
        return Err(Error::invalid_argument(
            "APP_K8S_NAME_PREFIX must be 1-40 characters of [a-z0-9-], starting with a letter",
        ));
    }
    let options = Options::from_args(&config.engine, &config.server)?;
    let conn = shared_kube::connect(&shared_kube::ClientOptions {
        kubeconfig: config.kubeconfig.as_deref(),
        context: config.kube_context.as_deref(),
        kubeconfig_var: "KUBECONFIG",
        context_var: "APP_K8S_CONTEXT",
        connect_timeout: config.kube_timeout.min(std::time::Duration::from_secs(5)),
        timeout: config.kube_timeout,
    })
    .await?;
    let namespace = config
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or(conn.default_namespace);
    let app_namespaces = config
        .app_secret_namespaces
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let store = SecretStore::new(
        conn.client,
        &namespace,
        &config.name_prefix,
        app_namespaces,
        config.engine.cas_attempts,
    );
    Ok(KubeSecretBackend {
        engine: Engine::new(store, options),
    })
}

impl KubeSecretBackend {
    pub fn store(&self) -> &SecretStore {
        self.engine.store()
    }

    /// The context's app Secret, allowed, within the size limit with its
    /// key, and not someone else's: before anything is written.
    async fn target(
        &self,
        id: &TypeInstanceId,
        value: &Value,
        ctx: &Context,
    ) -> Result<Option<app::AppTarget>> {
        let target = self.store().app_target(ctx)?;
        app::check_size(value.len() as u64, target.as_ref())?;
        if let Some(t) = &target {
            self.store().check_app(id, t).await?;
        }
        Ok(target)
    }
}

#[async_trait]
impl Backend for KubeSecretBackend {
    fn describe(&self) -> Describe {
        self.engine.describe()
    }

    async fn probe(&self) -> Result<()> {
        self.engine.probe().await
    }

    /// The head, then the revision's own Secret: two GETs whatever the
    /// history.
    async fn get_value(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        ctx: &Context,
    ) -> Result<Value> {
        self.engine.get_value(id, revision, ctx).await
    }

    async fn get_locked_by(&self, id: &TypeInstanceId, ctx: &Context) -> Result<Option<Owner>> {
        self.engine.get_locked_by(id, ctx).await
    }

    async fn lock(&self, id: &TypeInstanceId, ctx: &Context, owner: &Owner) -> Result<()> {
        Request::default()
            .run(self.engine.lock(id, ctx, owner))
            .await
    }

    async fn unlock(&self, id: &TypeInstanceId, ctx: &Context) -> Result<()> {
        Request::default().run(self.engine.unlock(id, ctx)).await
    }

    async fn list_locks(&self) -> Result<Vec<LockInfo>> {
        Request::default().run(self.engine.list_locks()).await
    }

    async fn force_unlock(&self, id: &TypeInstanceId, expected: &Owner) -> Result<()> {
        Request::default()
            .run(self.engine.force_unlock(id, expected))
            .await
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
        let target = self.target(id, &value, ctx).await?;
        Request::new(target, true, None)
            .run(self.engine.create(id, value, ctx))
            .await
    }

    async fn update(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        value: Value,
        ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<Option<Json>> {
        let target = self.target(id, &value, ctx).await?;
        let len = value.len() as u64;
        Request::new(target, false, Some(len))
            .run(self.engine.update(id, revision, value, ctx, owner))
            .await
    }

    async fn delete(
        &self,
        id: &TypeInstanceId,
        ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<()> {
        Request::default()
            .run(self.engine.delete(id, ctx, owner))
            .await
    }

    async fn delete_revision(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<()> {
        Request::default()
            .run(self.engine.delete_revision(id, revision, ctx, owner))
            .await
    }
}
