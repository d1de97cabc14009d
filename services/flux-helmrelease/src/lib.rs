//! A `ContextStorageBackend` that lets the Hub track Helm releases managed by
//! Flux (helm.toolkit.fluxcd.io/v2 HelmRelease). The Hub sends no value: the
//! value of a TypeInstance is a JSON projection of the HelmRelease named by
//! its context (see [`projection`]). The latest revision is read live; every
//! revision the Hub creates is snapshotted in a ConfigMap owned by the
//! HelmRelease (see [`snapshot`]); tracking and locks live in one annotation
//! on the HelmRelease (see [`tracking`]). Layout and design: README.md.

pub mod config;
pub mod hub_sync;
pub mod leader;
pub mod projection;
pub mod snapshot;
pub mod tracking;
pub mod watch;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{
        ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
        Preconditions,
    },
};
use serde_json::{Value as Json, json};
use shared::{
    Backend, Context, ContextBackend, Describe, Error, Owner, Result, Revision, TypeInstanceId,
    Value,
    engine::rules::{self, LockStep},
    metrics::store_call,
};
use shared_kube::{self as ke, Call};

pub use crate::config::Config;
use crate::{
    snapshot::MAX_SNAPSHOT_BYTES,
    tracking::{Entry, SuspendChange, Tracking},
};

pub const GROUP: &str = "helm.toolkit.fluxcd.io";
pub const VERSION: &str = "v2";
pub const KIND: &str = "HelmRelease";

/// How often a write that lost a resourceVersion race is retried before
/// ABORTED. Every TypeInstance on one HelmRelease shares its resourceVersion.
const MAX_ATTEMPTS: u32 = 24;

/// The HelmRelease v2 resource, addressed dynamically (no generated types).
pub fn helmrelease_resource() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.into(),
        plural: "helmreleases".into(),
    }
}

/// Builds the backend: connects to the API server and, if configured,
/// starts the watch, and with a Hub endpoint the registration of watched
/// releases in the Hub (leader-elected).
pub async fn build(config: Config) -> Result<FluxBackend> {
    let registration = config.registration()?;
    let client = config.client().await?;
    let backend = FluxBackend::new(client, &config);
    let Some(selector) = config.watch_selector.clone().filter(|s| !s.is_empty()) else {
        return Ok(backend);
    };
    let observer: Arc<dyn watch::ReleaseObserver> = match registration {
        None => Arc::new(watch::LogObserver::new()),
        Some((registration, lease)) => {
            let streams = config.namespaces.len().max(1);
            let (observer, desired, wake) = hub_sync::HubObserver::new(streams);
            let leader = leader::spawn(backend.client.clone(), lease);
            tokio::spawn(hub_sync::run(
                registration,
                Arc::new(FluxBackend::new(backend.client.clone(), &config)),
                desired,
                wake,
                leader,
            ));
            Arc::new(observer)
        }
    };
    tokio::spawn(watch::run(
        backend.client.clone(),
        config.namespaces.clone(),
        selector,
        observer,
    ));
    Ok(backend)
}

pub struct FluxBackend {
    client: Client,
    resource: ApiResource,
    namespaces: Vec<String>,
    suspend_on_lock: bool,
    delete_release_on_delete: bool,
    /// Where snapshots live; `None`: each release's own namespace.
    snapshot_namespace: Option<String>,
}

/// A HelmRelease as read, with its tracking state.
struct Release {
    namespace: String,
    name: String,
    uid: String,
    resource_version: String,
    object: Json,
    tracking: Tracking,
}

impl Release {
    fn what(&self) -> String {
        format!("helmrelease {}/{}", self.namespace, self.name)
    }

    fn suspend(&self) -> Option<bool> {
        self.object
            .get("spec")
            .and_then(|s| s.get("suspend"))
            .and_then(Json::as_bool)
    }

    /// The entry of `id`; NOT_FOUND (worded for revision `rev`, if one
    /// was asked for) when the release does not track it.
    fn entry(&self, id: &TypeInstanceId, rev: Option<u32>) -> Result<&Entry> {
        self.tracking
            .entry(id.as_str())
            .ok_or_else(|| gone(id, rev))
    }

    /// The projection as stored and returned, within the snapshot limit.
    fn value(&self) -> Result<String> {
        let bytes = projection::to_bytes(&projection::project(&self.object));
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            return Err(Error::invalid_argument(format!(
                "the value of {} is {} bytes, above this backend's limit of {MAX_SNAPSHOT_BYTES} bytes",
                self.what(),
                bytes.len()
            )));
        }
        String::from_utf8(bytes)
            .map_err(|e| Error::internal("projection is not utf-8").with_source(e))
    }
}

/// NOT_FOUND for the TypeInstance, in the words for revision `rev` when a
/// revision was asked for (as the engine answers).
fn gone(id: &TypeInstanceId, rev: Option<u32>) -> Error {
    match rev {
        Some(r) => rules::revision_not_found(id, r),
        None => rules::not_found(id),
    }
}

fn check_owner(id: &TypeInstanceId, entry: &Entry, owner: Option<&Owner>) -> Result<()> {
    rules::check_lock(id, entry.lock.as_deref(), owner)
}

/// A permission denial as "not there": legacy snapshot places the backend's
/// Role may no longer cover.
fn tolerate_denied<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == shared::ErrorKind::PermissionDenied => Ok(None),
        Err(e) => Err(e),
    }
}

/// A short pause before retrying a lost race, spread so that racing writers
/// do not collide again in lockstep.
async fn backoff(attempt: u32) {
    let spread = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 7_000_000)
        .unwrap_or(0);
    let ms = u64::from(attempt.min(10)) * 4;
    tokio::time::sleep(Duration::from_millis(ms) + Duration::from_nanos(u64::from(spread))).await;
}

/// The published context schema; with namespaces configured, only those.
pub fn context_schema(namespaces: &[String]) -> Json {
    let mut namespace = json!({
        "type": "string",
        "description": "Namespace of the HelmRelease",
        "minLength": 1,
        "maxLength": 63,
        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    });
    if !namespaces.is_empty() {
        namespace["enum"] = json!(namespaces);
    }
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Flux HelmRelease",
        "description": "The helm.toolkit.fluxcd.io/v2 HelmRelease whose projection is the TypeInstance value",
        "type": "object",
        "properties": {
            "name": {
                "type": "string",
                "description": "Name of the HelmRelease",
                "minLength": 1,
                "maxLength": 253,
                "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
            },
            "namespace": namespace,
        },
        "required": ["name", "namespace"],
        "additionalProperties": false,
    })
}

impl FluxBackend {
    pub fn new(client: Client, config: &Config) -> Self {
        Self {
            client,
            resource: helmrelease_resource(),
            namespaces: config
                .namespaces
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect(),
            suspend_on_lock: config.suspend_on_lock,
            delete_release_on_delete: config.delete_release_on_delete,
            snapshot_namespace: config
                .snapshot_namespace
                .clone()
                .filter(|n| !n.trim().is_empty()),
        }
    }

    fn releases(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &self.resource)
    }

    fn config_maps(&self, namespace: &str) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Where the snapshots of a release in `release_ns` are written.
    fn snapshot_ns<'a>(&'a self, release_ns: &'a str) -> &'a str {
        self.snapshot_namespace.as_deref().unwrap_or(release_ns)
    }

    /// Where snapshots written before APP_FLUX_SNAPSHOT_NAMESPACE was set
    /// may still be: the release's namespace, if it is not the snapshot one.
    fn legacy_ns<'a>(&self, release_ns: &'a str) -> Option<&'a str> {
        (self.snapshot_ns(release_ns) != release_ns).then_some(release_ns)
    }

    fn target(ctx: &Context) -> Result<(String, String)> {
        match (ctx.str("namespace"), ctx.str("name")) {
            (Some(ns), Some(name)) => Ok((ns.to_owned(), name.to_owned())),
            _ => Err(Error::invalid_argument(
                "context must name the helmrelease: name and namespace",
            )),
        }
    }

    /// The HelmRelease, or `None` if it does not exist.
    async fn release(&self, namespace: &str, name: &str) -> Result<Option<Release>> {
        let what = format!("helmrelease {namespace}/{name}");
        let api = self.releases(namespace);
        let call = Call::new("get", "helmreleases")
            .namespace(namespace)
            .name(name);
        let Some(obj) = store_call("get_helmrelease", async {
            api.get_opt(name).await.map_err(|e| ke::map(e, &call))
        })
        .await?
        else {
            return Ok(None);
        };
        let annotation = obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(tracking::ANNOTATION))
            .cloned();
        let tracking = Tracking::from_annotation(annotation.as_deref(), &what)?;
        let uid = obj.metadata.uid.clone().unwrap_or_default();
        let resource_version = obj.metadata.resource_version.clone().unwrap_or_default();
        let object = serde_json::to_value(&obj)
            .map_err(|e| Error::internal(format!("cannot encode {what}")).with_source(e))?;
        Ok(Some(Release {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid,
            resource_version,
            object,
            tracking,
        }))
    }

    /// The release the context names; NOT_FOUND if it does not exist (a
    /// TypeInstance cannot outlive its release).
    async fn live(&self, id: &TypeInstanceId, ctx: &Context, rev: Option<u32>) -> Result<Release> {
        let (ns, name) = Self::target(ctx)?;
        self.release(&ns, &name).await?.ok_or_else(|| gone(id, rev))
    }

    /// Writes `next` as the release's tracking state. `false`: the release
    /// changed since it was read (409); the caller re-reads and re-checks.
    async fn write(&self, rel: &Release, next: &Tracking, suspend: SuspendChange) -> Result<bool> {
        let call = Call::new("patch", "helmreleases")
            .namespace(&rel.namespace)
            .name(&rel.name);
        let patch = next.patch(&rel.resource_version, suspend);
        let api = self.releases(&rel.namespace);
        store_call("patch_helmrelease", async {
            match api
                .patch(&rel.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if ke::is_conflict(&e) => Ok(false),
                Err(e) => Err(ke::map(e, &call)),
            }
        })
        .await
    }

    /// The snapshot of `id` at `rev` for a release in `release_ns`: where
    /// snapshots are written, else (legacy) in the release's namespace, if
    /// the backend may still read there.
    async fn get_snapshot(
        &self,
        release_ns: &str,
        id: &TypeInstanceId,
        rev: u32,
    ) -> Result<Option<ConfigMap>> {
        if let Some(cm) = self
            .get_snapshot_in(self.snapshot_ns(release_ns), id, rev)
            .await?
        {
            return Ok(Some(cm));
        }
        match self.legacy_ns(release_ns) {
            Some(ns) => {
                tolerate_denied(self.get_snapshot_in(ns, id, rev).await).map(Option::flatten)
            }
            None => Ok(None),
        }
    }

    async fn get_snapshot_in(
        &self,
        ns: &str,
        id: &TypeInstanceId,
        rev: u32,
    ) -> Result<Option<ConfigMap>> {
        let name = snapshot::name(id.as_str(), rev);
        let call = Call::new("get", "configmaps").namespace(ns).name(&name);
        let api = self.config_maps(ns);
        let cm = store_call("get_snapshot", async {
            api.get_opt(&name).await.map_err(|e| ke::map(e, &call))
        })
        .await?;
        // A ConfigMap of that name for another id (hash collision, or
        // written by someone else) is not ours to read.
        Ok(cm.filter(|cm| snapshot::read(cm).id.as_deref() == Some(id.as_str())))
    }

    /// Stores the projection of `rel` as revision `rev` (create-only). An
    /// existing snapshot is kept when `keep_existing`, else replaced: it is a
    /// leftover of a revision that no longer exists.
    async fn put_snapshot(
        &self,
        rel: &Release,
        id: &TypeInstanceId,
        rev: u32,
        keep_existing: bool,
    ) -> Result<()> {
        let owner = snapshot::Owner {
            namespace: &rel.namespace,
            name: &rel.name,
            uid: &rel.uid,
            api_version: &self.resource.api_version,
        };
        let ns = self.snapshot_ns(&rel.namespace);
        let mut cm = snapshot::build(id.as_str(), rev, &owner, ns, rel.value()?);
        let name = snapshot::name(id.as_str(), rev);
        let call = Call::new("create", "configmaps").namespace(ns).name(&name);
        let api = self.config_maps(ns);
        let created = store_call("create_snapshot", async {
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => Ok(true),
                Err(e) if ke::is_already_exists(&e) => Ok(false),
                Err(e) => Err(ke::map(e, &call)),
            }
        })
        .await?;
        if created || keep_existing {
            return Ok(());
        }
        store_call("replace_snapshot", async {
            let existing = api.get(&name).await.map_err(|e| {
                ke::map(
                    e,
                    &Call {
                        verb: "get",
                        ..call
                    },
                )
            })?;
            cm.metadata.resource_version = existing.metadata.resource_version;
            match api.replace(&name, &PostParams::default(), &cm).await {
                // A concurrent writer replaced it with a projection taken
                // at the same moment: as good as ours.
                Ok(_) => Ok(()),
                Err(e) if ke::is_conflict(&e) => Ok(()),
                Err(e) => Err(ke::map(
                    e,
                    &Call {
                        verb: "update",
                        ..call
                    },
                )),
            }
        })
        .await
    }

    /// Removes a snapshot of a release in `release_ns` wherever it is.
    async fn delete_snapshot(&self, release_ns: &str, name: &str) -> Result<()> {
        self.delete_snapshot_in(self.snapshot_ns(release_ns), name)
            .await?;
        match self.legacy_ns(release_ns) {
            Some(ns) => tolerate_denied(self.delete_snapshot_in(ns, name).await).map(drop),
            None => Ok(()),
        }
    }

    async fn delete_snapshot_in(&self, ns: &str, name: &str) -> Result<()> {
        let call = Call::new("delete", "configmaps").namespace(ns).name(name);
        let api = self.config_maps(ns);
        store_call("delete_snapshot", async {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(e) if ke::is_not_found(&e) => Ok(()),
                Err(e) => Err(ke::map(e, &call)),
            }
        })
        .await
    }

    /// Every snapshot of `id` of a release in `ns` (`None`: of any served
    /// release, for OnDeleteRevision). With a snapshot namespace, legacy
    /// snapshots are listed too where the backend may still read them.
    async fn list_snapshots(
        &self,
        id: &TypeInstanceId,
        ns: Option<&str>,
    ) -> Result<Vec<ConfigMap>> {
        let lp = ListParams::default().labels(&snapshot::selector(id.as_str()));
        let list = Call::new("list", "configmaps");
        let served: Vec<(Api<ConfigMap>, Call<'_>)> = match ns {
            Some(ns) => vec![(self.config_maps(ns), list.namespace(ns))],
            None if self.namespaces.is_empty() => vec![(Api::all(self.client.clone()), list)],
            None => self
                .namespaces
                .iter()
                .map(|n| (self.config_maps(n), list.namespace(n)))
                .collect(),
        };
        // (where, whether a denial there is an error): the snapshot namespace
        // must answer; legacy places may refuse once their Role is gone.
        let apis: Vec<(Api<ConfigMap>, Call<'_>, bool)> = match &self.snapshot_namespace {
            None => served.into_iter().map(|(a, c)| (a, c, true)).collect(),
            Some(own) => std::iter::once((self.config_maps(own), list.namespace(own), true))
                .chain(
                    served
                        .into_iter()
                        .filter(|(_, c)| c.namespace != Some(own.as_str()))
                        .map(|(a, c)| (a, c, false)),
                )
                .collect(),
        };
        let mut out = Vec::new();
        for (api, call, required) in apis {
            let listed = store_call("list_snapshots", async {
                api.list(&lp).await.map_err(|e| ke::map(e, &call))
            })
            .await;
            let list = if required {
                listed?
            } else {
                match tolerate_denied(listed)? {
                    Some(list) => list,
                    None => continue,
                }
            };
            out.extend(
                list.items
                    .into_iter()
                    .filter(|cm| snapshot::read(cm).id.as_deref() == Some(id.as_str())),
            );
        }
        Ok(out)
    }

    async fn delete_all_snapshots(&self, id: &TypeInstanceId, ns: &str) -> Result<()> {
        for cm in self.list_snapshots(id, Some(ns)).await? {
            if let (Some(name), Some(at)) = (&cm.metadata.name, &cm.metadata.namespace) {
                let removed = self.delete_snapshot_in(at, name).await;
                if at == self.snapshot_ns(ns) {
                    removed?;
                } else {
                    tolerate_denied(removed)?;
                }
            }
        }
        Ok(())
    }

    /// The HelmRelease tracking `id`, found from its snapshots (for
    /// OnDeleteRevision, which carries no context).
    async fn release_of(&self, id: &TypeInstanceId) -> Result<Release> {
        let mut candidates: Vec<(String, String)> = self
            .list_snapshots(id, None)
            .await?
            .iter()
            .filter_map(|cm| snapshot::read(cm).release)
            .collect();
        candidates.sort();
        candidates.dedup();
        for (ns, name) in candidates {
            if let Some(rel) = self.release(&ns, &name).await?
                && rel.tracking.entry(id.as_str()).is_some()
            {
                return Ok(rel);
            }
        }
        Err(rules::not_found(id))
    }

    /// Records on the release that the Hub watch registered `id` for it
    /// (the tracking entry the Hub's OnCreate wrote).
    pub(crate) async fn mark_registered(&self, ns: &str, name: &str, id: &str) -> Result<()> {
        for attempt in 0..MAX_ATTEMPTS {
            let Some(rel) = self.release(ns, name).await? else {
                return Ok(());
            };
            let mut next = rel.tracking.clone();
            match next.type_instances.get_mut(id) {
                Some(e) if !e.registered => e.registered = true,
                _ => return Ok(()),
            }
            if self.write(&rel, &next, SuspendChange::Keep).await? {
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(Error::aborted(format!(
            "helmrelease {ns}/{name} kept changing while recording its registration"
        )))
    }

    async fn delete_release(&self, rel: &Release) -> Result<()> {
        let call = Call::new("delete", "helmreleases")
            .namespace(&rel.namespace)
            .name(&rel.name);
        let api = self.releases(&rel.namespace);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(rel.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        store_call("delete_helmrelease", async {
            match api.delete(&rel.name, &dp).await {
                Ok(_) => Ok(()),
                Err(e) if ke::is_not_found(&e) || ke::is_conflict(&e) => Ok(()),
                Err(e) => Err(ke::map(e, &call)),
            }
        })
        .await
    }
}

#[async_trait]
impl Backend for FluxBackend {
    fn describe(&self) -> Describe {
        Describe {
            name: "flux-helmrelease",
            version: env!("CARGO_PKG_VERSION"),
            accept_value: false,
            context_schema: Some(context_schema(&self.namespaces)),
            context_required: true,
            max_value_bytes: MAX_SNAPSHOT_BYTES as u64,
        }
    }

    /// One LIST of HelmReleases (limit 1): the API server answers, the CRD is
    /// installed and our role may read it.
    async fn probe(&self) -> Result<()> {
        let call = Call::new("list", "helmreleases");
        let (api, call): (Api<DynamicObject>, _) = match self.namespaces.first() {
            Some(ns) => (self.releases(ns), call.namespace(ns)),
            None => (Api::all_with(self.client.clone(), &self.resource), call),
        };
        store_call("list_helmreleases", async {
            api.list_metadata(&ListParams::default().limit(1))
                .await
                .map(drop)
                .map_err(|e| ke::map(e, &call))
        })
        .await
    }

    /// Latest revision: the HelmRelease as it is now. Older: its snapshot.
    /// At most two GETs whatever the number of revisions.
    async fn get_value(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        ctx: &Context,
    ) -> Result<Value> {
        let n = revision.get();
        let rel = self.live(id, ctx, Some(n)).await?;
        let latest = rel.entry(id, Some(n))?.latest;
        if n > latest {
            return Err(rules::revision_not_found(id, n));
        }
        if n == latest {
            return Ok(Value::from(rel.value()?.into_bytes()));
        }
        let cm = self.get_snapshot(&rel.namespace, id, n).await?;
        match cm.and_then(|cm| snapshot::read(&cm).value) {
            Some(v) => Ok(Value::from(v.into_bytes())),
            None => Err(rules::revision_not_found(id, n)),
        }
    }

    async fn get_locked_by(&self, id: &TypeInstanceId, ctx: &Context) -> Result<Option<Owner>> {
        let rel = self.live(id, ctx, None).await?;
        match &rel.entry(id, None)?.lock {
            Some(l) => Owner::parse(l).map(Some).map_err(|_| {
                Error::data_loss(format!("the lock of type instance {id} is corrupted"))
            }),
            None => Ok(None),
        }
    }

    async fn lock(&self, id: &TypeInstanceId, ctx: &Context, owner: &Owner) -> Result<()> {
        for attempt in 0..MAX_ATTEMPTS {
            let rel = self.live(id, ctx, None).await?;
            let holder = rel.entry(id, None)?.lock.as_deref();
            if rules::lock_step(id, holder, owner)? == LockStep::Held {
                return Ok(());
            }
            let mut next = rel.tracking.clone();
            let change = next.lock(
                id.as_str(),
                owner.as_str(),
                self.suspend_on_lock,
                rel.suspend(),
            );
            if self.write(&rel, &next, change).await? {
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(rules::contended(id))
    }

    async fn unlock(&self, id: &TypeInstanceId, ctx: &Context) -> Result<()> {
        for attempt in 0..MAX_ATTEMPTS {
            let rel = self.live(id, ctx, None).await?;
            let entry = rel.entry(id, None)?;
            if entry.lock.is_none() && !entry.suspended {
                return Ok(());
            }
            let mut next = rel.tracking.clone();
            let change = next.release(id.as_str(), false);
            if self.write(&rel, &next, change).await? {
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(rules::contended(id))
    }
}

#[async_trait]
impl ContextBackend for FluxBackend {
    async fn pre_create_value(&self, ctx: &Context) -> Result<Option<Value>> {
        let (ns, name) = Self::target(ctx)?;
        let rel = self
            .release(&ns, &name)
            .await?
            .ok_or_else(|| Error::not_found(format!("helmrelease {ns}/{name} not found")))?;
        Ok(Some(Value::from(rel.value()?.into_bytes())))
    }

    /// Snapshot of revision 1 first, then the tracking entry: a failure in
    /// between leaves only an unreferenced snapshot that a retry replaces.
    async fn create(&self, id: &TypeInstanceId, ctx: &Context) -> Result<Option<Json>> {
        for attempt in 0..MAX_ATTEMPTS {
            let (ns, name) = Self::target(ctx)?;
            let rel = self.release(&ns, &name).await?.ok_or_else(|| {
                Error::not_found(format!(
                    "helmrelease {ns}/{name} not found for type instance {id}"
                ))
            })?;
            if let Some(entry) = rel.tracking.entry(id.as_str()) {
                // A retried create succeeds, and completes a create whose
                // snapshot write failed.
                if entry.latest != 1 {
                    return Err(rules::already_exists(id));
                }
                self.put_snapshot(&rel, id, 1, true).await?;
                return Ok(None);
            }
            self.put_snapshot(&rel, id, 1, false).await?;
            let mut next = rel.tracking.clone();
            next.type_instances.insert(
                id.as_str().to_owned(),
                Entry {
                    latest: 1,
                    lock: None,
                    suspended: false,
                    registered: false,
                },
            );
            if self.write(&rel, &next, SuspendChange::Keep).await? {
                return Ok(None);
            }
            backoff(attempt).await;
        }
        Err(rules::contended(id))
    }

    /// Snapshot of the new revision first, then `latest` raised with the
    /// release's resourceVersion: the one compare-and-set that orders this
    /// update against locks, deletes and other updates.
    async fn update(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<Option<Json>> {
        let n = revision.get();
        for attempt in 0..MAX_ATTEMPTS {
            let rel = self.live(id, ctx, None).await?;
            let entry = rel.entry(id, None)?;
            if n <= entry.latest {
                let stored = self.get_snapshot(&rel.namespace, id, n).await?.is_some();
                if stored && n == entry.latest {
                    return Ok(None);
                }
                if stored {
                    return Err(rules::revision_exists(id, n));
                }
            }
            check_owner(id, entry, owner)?;
            if n < entry.latest {
                return Err(rules::not_above_latest(id, n, entry.latest));
            }
            if n == entry.latest {
                // The latest revision lost its snapshot: take it again.
                self.put_snapshot(&rel, id, n, true).await?;
                return Ok(None);
            }
            self.put_snapshot(&rel, id, n, false).await?;
            let mut next = rel.tracking.clone();
            if let Some(e) = next.type_instances.get_mut(id.as_str()) {
                e.latest = n;
            }
            if self.write(&rel, &next, SuspendChange::Keep).await? {
                return Ok(None);
            }
            backoff(attempt).await;
        }
        Err(rules::contended(id))
    }

    /// Untracks first (one compare-and-set), then removes the snapshots; a
    /// HelmRelease deleted outside the Hub is not an error: its snapshots
    /// are removed and the call succeeds.
    async fn delete(
        &self,
        id: &TypeInstanceId,
        ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<()> {
        let (ns, name) = Self::target(ctx)?;
        for attempt in 0..MAX_ATTEMPTS {
            let Some(rel) = self.release(&ns, &name).await? else {
                return self.delete_all_snapshots(id, &ns).await;
            };
            let entry = rel.entry(id, None)?;
            check_owner(id, entry, owner)?;
            let mut next = rel.tracking.clone();
            let change = next.release(id.as_str(), true);
            if !self.write(&rel, &next, change).await? {
                backoff(attempt).await;
                continue;
            }
            self.delete_all_snapshots(id, &ns).await?;
            if self.delete_release_on_delete && next.type_instances.is_empty() {
                self.delete_release(&rel).await?;
            }
            return Ok(());
        }
        Err(rules::contended(id))
    }

    async fn delete_revision(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        owner: Option<&Owner>,
    ) -> Result<()> {
        let n = revision.get();
        let found = self.release_of(id).await?;
        let (ns, name) = (found.namespace, found.name);
        for attempt in 0..MAX_ATTEMPTS {
            let rel = self
                .release(&ns, &name)
                .await?
                .ok_or_else(|| gone(id, Some(n)))?;
            let entry = rel.entry(id, Some(n))?;
            if n > entry.latest {
                return Err(rules::revision_not_found(id, n));
            }
            check_owner(id, entry, owner)?;
            let snapshot_name = snapshot::name(id.as_str(), n);
            if n < entry.latest {
                if self.get_snapshot(&ns, id, n).await?.is_none() {
                    return Err(rules::revision_not_found(id, n));
                }
                return self.delete_snapshot(&ns, &snapshot_name).await;
            }
            // The latest goes: lower it to the highest revision left, or
            // untrack when none is left. Tracking first, snapshot after.
            let left = self
                .list_snapshots(id, Some(&ns))
                .await?
                .iter()
                .filter_map(|cm| snapshot::read(cm).revision)
                .filter(|r| *r < n)
                .max();
            let mut next = rel.tracking.clone();
            let change = match left {
                Some(latest) => {
                    if let Some(e) = next.type_instances.get_mut(id.as_str()) {
                        e.latest = latest;
                    }
                    SuspendChange::Keep
                }
                None => next.release(id.as_str(), true),
            };
            if !self.write(&rel, &next, change).await? {
                backoff(attempt).await;
                continue;
            }
            return match left {
                Some(_) => self.delete_snapshot(&ns, &snapshot_name).await,
                None => self.delete_all_snapshots(id, &ns).await,
            };
        }
        Err(rules::contended(id))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["flux-helmrelease-backend"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap_or_else(|e| panic!("parse: {e}"))
    }

    #[test]
    fn defaults_track_every_namespace_without_suspend_or_delete() {
        let c = parse(&[]);
        assert!(c.namespaces.is_empty());
        assert!(!c.suspend_on_lock);
        assert!(!c.delete_release_on_delete);
        assert!(c.watch_selector.is_none());
    }

    #[test]
    fn flags_parse_lists_and_bare_booleans() {
        let c = parse(&[
            "--namespaces",
            "a,b",
            "--suspend-on-lock",
            "--delete-release-on-delete",
            "false",
        ]);
        assert_eq!(c.namespaces, vec!["a", "b"]);
        assert!(c.suspend_on_lock);
        assert!(!c.delete_release_on_delete);
    }

    #[test]
    fn schema_requires_name_and_namespace_and_pins_configured_namespaces() {
        let s = context_schema(&["apps".into()]);
        assert_eq!(s["required"], json!(["name", "namespace"]));
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["namespace"]["enum"], json!(["apps"]));
        assert!(
            context_schema(&[])["properties"]["namespace"]
                .get("enum")
                .is_none()
        );
    }

    #[test]
    fn lock_held_by_another_owner_is_a_failed_precondition_naming_it() {
        let id = TypeInstanceId::parse("ti").unwrap_or_else(|e| panic!("{e:?}"));
        let entry = Entry {
            latest: 1,
            lock: Some("alice".into()),
            suspended: false,
            registered: false,
        };
        let bob = Owner::parse("bob").unwrap_or_else(|e| panic!("{e:?}"));
        let alice = Owner::parse("alice").unwrap_or_else(|e| panic!("{e:?}"));
        let err = check_owner(&id, &entry, Some(&bob)).expect_err("locked");
        assert_eq!(err.kind(), shared::ErrorKind::FailedPrecondition);
        assert!(err.message().contains("alice"));
        assert!(check_owner(&id, &entry, None).is_err());
        assert!(check_owner(&id, &entry, Some(&alice)).is_ok());
    }
}
