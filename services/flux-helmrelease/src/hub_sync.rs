//! Watch → Hub: every HelmRelease the watch follows becomes a TypeInstance
//! in the Hub, stored in this backend with context `{name, namespace}`,
//! and its TypeInstance goes when the release goes (or loses the label).
//!
//! Level-triggered: the watch keeps the set of releases that should be
//! registered ([`Desired`]); one reconciler compares it with what the Hub
//! lists as registered by this backend (Type, `createdBy` marker, backend
//! id) and creates or deletes the difference, on every change, every
//! `resync`, and after a failure with backoff. So missed events while down,
//! a Hub that was down, and a create whose answer was lost all converge,
//! and a duplicate left by a lost answer is removed.
//!
//! Only the replica holding the Lease acts ([`crate::leader`]); deletions
//! wait until every watch stream has listed once, so a restart never takes
//! "not listed yet" for "gone". A TypeInstance locked by someone else is
//! left alone and reported; one this backend locked is deleted as holder.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use hub_client::{Hub, HubError, Instance, NewInstance, TypeRef};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use serde_json::{Value as Json, json};
use tokio::sync::{Notify, watch};

use crate::{
    FluxBackend,
    watch::{LogObserver, ReleaseObserver, ReleaseRef},
};

/// What the reconciler needs to know about the Hub side.
#[derive(Clone, Debug)]
pub struct Registration {
    pub hub: Hub,
    /// This backend's own storage TypeInstance in the Hub.
    pub backend_id: String,
    /// The Type a release's TypeInstance gets.
    pub type_ref: TypeRef,
    /// `createdBy` of every TypeInstance this backend registers, and the lock
    /// owner it acts as.
    pub marker: String,
    pub resync: Duration,
}

impl Registration {
    pub fn marker_for(backend_id: &str) -> String {
        format!("flux-helmrelease/{backend_id}")
    }
}

/// The releases that should be registered, as the watch last saw them.
#[derive(Default)]
pub struct Desired {
    releases: BTreeSet<ReleaseRef>,
    /// Streams that completed their first listing.
    synced: BTreeSet<usize>,
    streams: usize,
}

impl Desired {
    fn complete(&self) -> bool {
        self.synced.len() >= self.streams
    }
}

/// Metrics of the Hub registration, next to the watch's.
pub struct HubMetrics {
    pub registered: IntCounter,
    pub deleted: IntCounter,
    pub failures: IntCounterVec,
    pub leader: IntGauge,
}

pub static METRICS: LazyLock<HubMetrics> = LazyLock::new(|| {
    // Constant definitions: only a programming error makes them fail, which
    // the unit test below catches.
    let counter = |name: &str, help: &str| {
        IntCounter::new(name, help).unwrap_or_else(|e| panic!("static metric definition: {e}"))
    };
    let registered = counter(
        "flux_hub_registered_total",
        "HelmReleases registered in the Hub as TypeInstances",
    );
    let deleted = counter(
        "flux_hub_deleted_total",
        "TypeInstances deleted from the Hub because their HelmRelease went",
    );
    let failures = IntCounterVec::new(
        Opts::new(
            "flux_hub_failures_total",
            "Failed Hub registration steps, by step (list, create, delete, locked)",
        ),
        &["step"],
    )
    .unwrap_or_else(|e| panic!("static metric definition: {e}"));
    let leader = IntGauge::new(
        "flux_hub_leader",
        "1 while this replica holds the Lease and registers releases in the Hub",
    )
    .unwrap_or_else(|e| panic!("static metric definition: {e}"));
    for m in [
        Box::new(registered.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(deleted.clone()),
        Box::new(failures.clone()),
        Box::new(leader.clone()),
    ] {
        let _ = shared::metrics::register(m);
    }
    HubMetrics {
        registered,
        deleted,
        failures,
        leader,
    }
});

/// The watch's observer: logs like [`LogObserver`] and keeps [`Desired`].
pub struct HubObserver {
    log: LogObserver,
    desired: Arc<Mutex<Desired>>,
    wake: Arc<Notify>,
}

impl HubObserver {
    pub fn new(streams: usize) -> (Self, Arc<Mutex<Desired>>, Arc<Notify>) {
        let desired = Arc::new(Mutex::new(Desired {
            streams,
            ..Desired::default()
        }));
        let wake = Arc::new(Notify::new());
        let observer = Self {
            log: LogObserver::new(),
            desired: Arc::clone(&desired),
            wake: Arc::clone(&wake),
        };
        (observer, desired, wake)
    }

    fn update(&self, f: impl FnOnce(&mut Desired)) {
        // A poisoned lock only means a panic elsewhere mid-update of a set
        // of names; the next listing repairs it.
        let mut d = self.desired.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut d);
        drop(d);
        self.wake.notify_one();
    }
}

#[async_trait]
impl ReleaseObserver for HubObserver {
    async fn added(&self, release: &ReleaseRef, projection: &Json) {
        self.log.added(release, projection).await;
        self.update(|d| {
            d.releases.insert(release.clone());
        });
    }

    async fn changed(&self, release: &ReleaseRef, projection: &Json) {
        // Reads are live: a changed release needs no Hub call.
        self.log.changed(release, projection).await;
    }

    async fn removed(&self, release: &ReleaseRef) {
        self.log.removed(release).await;
        self.update(|d| {
            d.releases.remove(release);
        });
    }

    async fn synced(&self, stream: usize) {
        self.update(|d| {
            d.synced.insert(stream);
        });
    }
}

/// What one reconcile pass decided, computed without I/O.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<ReleaseRef>,
    /// TypeInstances to delete: of releases gone, and duplicates.
    pub delete: Vec<Instance>,
}

/// The release a registered TypeInstance names, from its context.
fn release_of(instance: &Instance) -> Option<ReleaseRef> {
    let ctx = instance.context.as_ref()?;
    Some(ReleaseRef {
        namespace: ctx.get("namespace")?.as_str()?.to_owned(),
        name: ctx.get("name")?.as_str()?.to_owned(),
    })
}

/// Compares the releases with the Hub's TypeInstances of this backend.
/// Deletions only when `complete` (every stream listed once). Of several
/// TypeInstances for one release, the first listed stays: the Hub lists
/// the newest first, so the survivor is the newest and which one stays is
/// the same whichever replica decides.
pub fn plan(desired: &BTreeSet<ReleaseRef>, complete: bool, registered: Vec<Instance>) -> Plan {
    let mut by_release: BTreeMap<ReleaseRef, Vec<Instance>> = BTreeMap::new();
    for i in registered {
        match release_of(&i) {
            Some(r) => by_release.entry(r).or_default().push(i),
            None => {
                tracing::warn!(type_instance = %i.id, "hub sync: a registered type instance has no release context; left alone")
            }
        }
    }
    let mut out = Plan::default();
    for r in desired {
        if !by_release.contains_key(r) {
            out.create.push(r.clone());
        }
    }
    for (r, mut instances) in by_release {
        if desired.contains(&r) {
            out.delete.extend(instances.drain(1..));
        } else if complete {
            out.delete.extend(instances);
        }
    }
    out
}

/// Runs the reconciler until the process ends.
pub async fn run(
    registration: Registration,
    backend: Arc<FluxBackend>,
    desired: Arc<Mutex<Desired>>,
    wake: Arc<Notify>,
    mut leader: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    loop {
        if !*leader.borrow_and_update() {
            METRICS.leader.set(0);
            if leader.wait_for(|l| *l).await.is_err() {
                return;
            }
            continue;
        }
        METRICS.leader.set(1);
        let pause = match reconcile(&registration, &backend, &desired, &leader).await {
            Ok(()) => {
                failures = 0;
                registration.resync
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, "hub sync: reconcile failed; retrying");
                retry_delay(failures).min(registration.resync)
            }
        };
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
            _ = leader.changed() => {}
        }
    }
}

fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(30))
}

async fn reconcile(
    reg: &Registration,
    backend: &FluxBackend,
    desired: &Mutex<Desired>,
    leader: &watch::Receiver<bool>,
) -> Result<(), HubError> {
    let (releases, complete) = {
        let d = desired.lock().unwrap_or_else(|p| p.into_inner());
        (d.releases.clone(), d.complete())
    };
    let listed = reg
        .hub
        .list(&reg.type_ref.path, Some(&reg.marker))
        .await
        .inspect_err(|_| METRICS.failures.with_label_values(&["list"]).inc())?;
    let mine = listed
        .into_iter()
        .filter(|i| i.backend_id == reg.backend_id && i.type_ref == reg.type_ref)
        .collect();
    let plan = plan(&releases, complete, mine);
    let mut first_error = None;
    for release in plan.create {
        if !*leader.borrow() {
            return Ok(());
        }
        if let Err(e) = register(reg, backend, &release).await {
            first_error.get_or_insert(e);
        }
    }
    for instance in plan.delete {
        if !*leader.borrow() {
            return Ok(());
        }
        if let Err(e) = unregister(reg, &instance).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn register(
    reg: &Registration,
    backend: &FluxBackend,
    release: &ReleaseRef,
) -> Result<(), HubError> {
    let new = NewInstance {
        type_ref: reg.type_ref.clone(),
        created_by: Some(reg.marker.clone()),
        value: None,
        backend: Some((
            reg.backend_id.clone(),
            Some(json!({"name": release.name, "namespace": release.namespace})),
        )),
    };
    match reg.hub.create(&new).await {
        Ok(id) => {
            tracing::info!(helmrelease = %release, type_instance = %id, "hub sync: registered");
            METRICS.registered.inc();
            // The mapping, on the release for operators and restarts; the
            // Hub's list stays the authority, so a failure here only logs.
            if let Err(e) = backend
                .mark_registered(&release.namespace, &release.name, &id)
                .await
            {
                tracing::warn!(helmrelease = %release, error = %e, "hub sync: cannot record the registration on the release");
            }
            Ok(())
        }
        // Unknown outcome: the next pass lists before creating again.
        Err(e) if e.is_transient() => {
            METRICS.failures.with_label_values(&["create"]).inc();
            Err(e)
        }
        Err(e) => {
            // Refused (the release went meanwhile, the backend id is wrong):
            // reported; the next pass decides again from fresh state.
            METRICS.failures.with_label_values(&["create"]).inc();
            tracing::warn!(helmrelease = %release, error = %e, "hub sync: the hub refused to register the release");
            Err(e)
        }
    }
}

async fn unregister(reg: &Registration, instance: &Instance) -> Result<(), HubError> {
    let what = release_of(instance).map_or_else(String::new, |r| r.to_string());
    let owner = match instance.locked_by.as_deref() {
        None => None,
        Some(o) if o == reg.marker => Some(o),
        Some(other) => {
            METRICS.failures.with_label_values(&["locked"]).inc();
            tracing::warn!(type_instance = %instance.id, helmrelease = %what, lock_owner = %other,
                "hub sync: the release is gone but its type instance is locked by another owner; left alone");
            return Ok(());
        }
    };
    match reg.hub.delete(&instance.id, owner).await {
        Ok(()) => {
            tracing::info!(type_instance = %instance.id, helmrelease = %what, "hub sync: unregistered");
            METRICS.deleted.inc();
            Ok(())
        }
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) if e.is_locked() => {
            METRICS.failures.with_label_values(&["locked"]).inc();
            tracing::warn!(type_instance = %instance.id, helmrelease = %what,
                "hub sync: the type instance was locked by another owner meanwhile; left alone");
            Ok(())
        }
        Err(e) => {
            METRICS.failures.with_label_values(&["delete"]).inc();
            tracing::warn!(type_instance = %instance.id, helmrelease = %what, error = %e, "hub sync: cannot unregister");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> ReleaseRef {
        ReleaseRef {
            namespace: "apps".into(),
            name: name.into(),
        }
    }

    fn ti(id: &str, release: &str) -> Instance {
        Instance {
            id: id.into(),
            locked_by: None,
            type_ref: TypeRef {
                path: "cap.type.helm.chart.release".into(),
                revision: "0.1.0".into(),
            },
            backend_id: "b".into(),
            revision: 1,
            created_by: None,
            value: None,
            context: Some(json!({"name": release, "namespace": "apps"})),
        }
    }

    fn set(names: &[&str]) -> BTreeSet<ReleaseRef> {
        names.iter().map(|n| r(n)).collect()
    }

    #[test]
    fn releases_without_a_type_instance_are_created_and_gone_ones_deleted() {
        let p = plan(&set(&["a", "b"]), true, vec![ti("1", "b"), ti("2", "c")]);
        assert_eq!(p.create, vec![r("a")]);
        assert_eq!(p.delete, vec![ti("2", "c")]);
    }

    #[test]
    fn nothing_is_deleted_before_every_stream_listed() {
        let p = plan(&set(&[]), false, vec![ti("1", "b")]);
        assert!(p.delete.is_empty());
        assert!(p.create.is_empty());
    }

    #[test]
    fn of_duplicates_the_first_listed_stays() {
        let p = plan(&set(&["a"]), false, vec![ti("new", "a"), ti("old", "a")]);
        assert!(p.create.is_empty());
        assert_eq!(p.delete, vec![ti("old", "a")]);
    }

    #[test]
    fn retry_delay_grows_to_a_cap() {
        assert!(retry_delay(1) < retry_delay(3));
        assert_eq!(retry_delay(40), Duration::from_secs(30));
    }

    #[test]
    fn metrics_are_defined() {
        METRICS.failures.with_label_values(&["list"]).inc();
        assert!(shared::metrics::render().contains("flux_hub_failures_total"));
    }
}
