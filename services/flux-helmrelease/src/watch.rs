//! Optional watch mode: follows the HelmReleases that carry a configured
//! label and reports releases that appear, change or go.
//!
//! The report goes to a [`ReleaseObserver`]: [`LogObserver`] (log lines and
//! counters), or [`crate::hub_sync::HubObserver`], which also registers the
//! releases in the Hub.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, LazyLock},
};

use async_trait::async_trait;
use futures::StreamExt;
use kube::{
    Api, Client,
    api::DynamicObject,
    runtime::{WatchStreamExt, watcher},
};
use prometheus::{IntCounterVec, IntGauge, Opts};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::{helmrelease_resource, projection};

/// Which HelmRelease an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReleaseRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ReleaseRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Receives what the watch sees. Called from one task, in order; an
/// implementation that takes long delays the next event, not the server.
#[async_trait]
pub trait ReleaseObserver: Send + Sync + 'static {
    /// A matching release that was not known before (also for every release
    /// present when the watch starts).
    async fn added(&self, release: &ReleaseRef, projection: &Json);
    /// A known release whose projection changed.
    async fn changed(&self, release: &ReleaseRef, projection: &Json);
    /// A known release that was deleted or no longer matches the selector.
    async fn removed(&self, release: &ReleaseRef);
    /// Stream `stream` (one per watched namespace) finished a full listing:
    /// every release it has was reported by then.
    async fn synced(&self, _stream: usize) {}
}

/// Counters of the watch, served on `/metrics` with the server's own.
pub struct WatchMetrics {
    pub events: IntCounterVec,
    pub known: IntGauge,
}

pub static METRICS: LazyLock<WatchMetrics> = LazyLock::new(|| {
    // Constant definitions: these can only fail on a programming error,
    // which the unit test below catches.
    let events = IntCounterVec::new(
        Opts::new(
            "flux_watch_events_total",
            "HelmReleases seen by the watch, by event (added, changed, removed)",
        ),
        &["event"],
    )
    .unwrap_or_else(|e| panic!("static metric definition: {e}"));
    let known = IntGauge::new(
        "flux_watch_releases",
        "HelmReleases currently matching the watch selector",
    )
    .unwrap_or_else(|e| panic!("static metric definition: {e}"));
    let _ = shared::metrics::register(Box::new(events.clone()));
    let _ = shared::metrics::register(Box::new(known.clone()));
    WatchMetrics { events, known }
});

/// Logs every event (names and chart only, never values) and counts it.
#[derive(Default)]
pub struct LogObserver;

impl LogObserver {
    pub fn new() -> Self {
        Self
    }
}

fn chart_of(p: &Json) -> (String, String) {
    let s = |v: &Json| v.as_str().unwrap_or("").to_owned();
    (s(&p["chart"]["name"]), s(&p["chart"]["version"]))
}

#[async_trait]
impl ReleaseObserver for LogObserver {
    async fn added(&self, release: &ReleaseRef, projection: &Json) {
        let (chart, version) = chart_of(projection);
        tracing::info!(helmrelease = %release, chart, version, "watch: helmrelease added");
        METRICS.events.with_label_values(&["added"]).inc();
        METRICS.known.inc();
    }

    async fn changed(&self, release: &ReleaseRef, projection: &Json) {
        let (chart, version) = chart_of(projection);
        let ready = projection["status"]["ready"]["status"]
            .as_str()
            .unwrap_or("Unknown")
            .to_owned();
        tracing::info!(helmrelease = %release, chart, version, ready, "watch: helmrelease changed");
        METRICS.events.with_label_values(&["changed"]).inc();
    }

    async fn removed(&self, release: &ReleaseRef) {
        tracing::info!(helmrelease = %release, "watch: helmrelease removed");
        METRICS.events.with_label_values(&["removed"]).inc();
        METRICS.known.dec();
    }
}

/// What the watch knows: each release and a digest of its projection.
#[derive(Default)]
pub struct Known(HashMap<ReleaseRef, [u8; 32]>);

/// One step of the watch, decided without I/O (unit-tested).
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Added(ReleaseRef),
    Changed(ReleaseRef),
    Removed(ReleaseRef),
}

fn digest(p: &Json) -> [u8; 32] {
    Sha256::digest(projection::to_bytes(p)).into()
}

impl Known {
    /// An object was applied (added or modified).
    pub fn apply(&mut self, r: ReleaseRef, p: &Json) -> Option<Change> {
        let d = digest(p);
        match self.0.insert(r.clone(), d) {
            None => Some(Change::Added(r)),
            Some(old) if old != d => Some(Change::Changed(r)),
            Some(_) => None,
        }
    }

    pub fn delete(&mut self, r: &ReleaseRef) -> Option<Change> {
        self.0.remove(r).map(|_| Change::Removed(r.clone()))
    }

    /// After a (re)list: everything known but not listed went away.
    pub fn retain_listed(&mut self, listed: &HashSet<ReleaseRef>) -> Vec<Change> {
        let mut gone: Vec<ReleaseRef> = self
            .0
            .keys()
            .filter(|r| !listed.contains(*r))
            .cloned()
            .collect();
        gone.sort();
        gone.into_iter().filter_map(|r| self.delete(&r)).collect()
    }
}

fn reference(obj: &DynamicObject) -> Option<ReleaseRef> {
    Some(ReleaseRef {
        namespace: obj.metadata.namespace.clone()?,
        name: obj.metadata.name.clone()?,
    })
}

fn projected(obj: &DynamicObject) -> Json {
    serde_json::to_value(obj)
        .map(|v| projection::project(&v))
        .unwrap_or(Json::Null)
}

async fn report(observer: &dyn ReleaseObserver, change: Change, p: &Json) {
    match change {
        Change::Added(r) => observer.added(&r, p).await,
        Change::Changed(r) => observer.changed(&r, p).await,
        Change::Removed(r) => observer.removed(&r).await,
    }
}

/// Runs the watch until the process ends. Errors (API server gone, RBAC)
/// are logged and the watch restarts with kube's default backoff.
pub async fn run(
    client: Client,
    namespaces: Vec<String>,
    selector: String,
    observer: Arc<dyn ReleaseObserver>,
) {
    let resource = helmrelease_resource();
    let apis: Vec<Api<DynamicObject>> = if namespaces.is_empty() {
        vec![Api::all_with(client, &resource)]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced_with(client.clone(), ns, &resource))
            .collect()
    };
    tracing::info!(selector, "watch: following helmreleases");
    let streams = apis.into_iter().map(|api| {
        watcher(api, watcher::Config::default().labels(&selector))
            .default_backoff()
            .boxed()
    });
    // One Known per stream: a relist of one namespace must not remove the
    // releases of another.
    let tasks = streams.enumerate().map(|(index, mut stream)| {
        let observer = Arc::clone(&observer);
        async move {
            let mut known = Known::default();
            let mut listed = HashSet::new();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => listed.clear(),
                    Ok(watcher::Event::InitApply(obj) | watcher::Event::Apply(obj)) => {
                        let Some(r) = reference(&obj) else { continue };
                        listed.insert(r.clone());
                        let p = projected(&obj);
                        if let Some(c) = known.apply(r, &p) {
                            report(observer.as_ref(), c, &p).await;
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        for c in known.retain_listed(&listed) {
                            report(observer.as_ref(), c, &Json::Null).await;
                        }
                        observer.synced(index).await;
                    }
                    Ok(watcher::Event::Delete(obj)) => {
                        let Some(r) = reference(&obj) else { continue };
                        listed.remove(&r);
                        if let Some(c) = known.delete(&r) {
                            report(observer.as_ref(), c, &Json::Null).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watch: helmrelease watch failed; retrying")
                    }
                }
            }
        }
    });
    futures::future::join_all(tasks).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(name: &str) -> ReleaseRef {
        ReleaseRef {
            namespace: "apps".into(),
            name: name.into(),
        }
    }

    #[test]
    fn first_sight_is_added_then_only_real_changes_are_reported() {
        let mut k = Known::default();
        assert_eq!(
            k.apply(r("a"), &json!({"v": 1})),
            Some(Change::Added(r("a")))
        );
        assert_eq!(k.apply(r("a"), &json!({"v": 1})), None);
        assert_eq!(
            k.apply(r("a"), &json!({"v": 2})),
            Some(Change::Changed(r("a")))
        );
        assert_eq!(k.delete(&r("a")), Some(Change::Removed(r("a"))));
        assert_eq!(k.delete(&r("a")), None);
    }

    #[test]
    fn relist_removes_what_was_not_listed() {
        let mut k = Known::default();
        k.apply(r("a"), &json!({}));
        k.apply(r("b"), &json!({}));
        let listed: HashSet<_> = [r("b")].into_iter().collect();
        assert_eq!(k.retain_listed(&listed), vec![Change::Removed(r("a"))]);
    }

    #[test]
    fn metrics_are_defined() {
        METRICS.events.with_label_values(&["added"]).inc();
        assert!(shared::metrics::render().contains("storage_backend_flux_watch_events_total"));
    }
}
