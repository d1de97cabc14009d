//! The backend binary against a real kube-apiserver (v1.37, testkit::kube)
//! with Flux's own HelmRelease v2 CRD installed. The tests play
//! helm-controller: they create HelmReleases and write their status through
//! the status subresource. There is no garbage collector here (no
//! kube-controller-manager), so owned snapshots outlive a deleted release
//! unless the backend removes them itself.

use std::sync::Arc;

use bytes::Bytes;
use k8s_openapi::api::{core::v1::ConfigMap, rbac::v1::PolicyRule};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value as Json, json};
use shared::client::{Client, Connect, Timeouts};
use testkit::{BackendProcess, kube::Cluster};
use tonic::Code;

mod support;
use support::*;

/// What helm-controller does after reconciling `chart_version` with
/// `replicas`: spec change by the user, then status through the subresource.
async fn reconcile(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    chart_version: &str,
    replicas: u32,
    release: u32,
) {
    let api = releases(cluster.client().await, ns);
    let obj = api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "chart": {"spec": {"version": chart_version}},
                "values": {"replicaCount": replicas}
            }})),
        )
        .await
        .expect("patch spec");
    let generation = obj.metadata.generation.unwrap_or(1);
    let history: Vec<Json> = (1..=release)
        .rev()
        .map(|v| {
            json!({
                "name": format!("web-{name}"), "namespace": "web", "version": v,
                "status": if v == release { "deployed" } else { "superseded" },
                "chartName": "podinfo", "chartVersion": chart_version, "appVersion": chart_version,
                "configDigest": format!("sha256:{v:064}"), "digest": format!("sha256:{v:064}"),
                "firstDeployed": "2026-01-01T00:00:00Z", "lastDeployed": "2026-01-01T00:00:00Z"
            })
        })
        .collect();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "observedGeneration": generation,
            "lastAttemptedRevision": chart_version,
            "lastAttemptedGeneration": generation,
            "lastAttemptedReleaseAction": if release == 1 { "install" } else { "upgrade" },
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "UpgradeSucceeded",
                "message": format!("Helm upgrade succeeded for release web/web-{name}.v{release}"),
                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation
            }],
            "history": history
        }})),
    )
    .await
    .expect("patch status");
}

struct Hub {
    client: Client,
    context: Bytes,
}

impl Hub {
    async fn new(backend: &BackendProcess, ns: &str, name: &str) -> Self {
        let client = Client::connect(&Connect::plain(&backend.url), Timeouts::default())
            .await
            .expect("connect to the backend");
        let context = Bytes::from(json!({"name": name, "namespace": ns}).to_string());
        Self { client, context }
    }

    fn ctx(&self) -> Option<Bytes> {
        Some(self.context.clone())
    }

    async fn create(&self, id: &str) -> Result<(), tonic::Status> {
        self.client.create(id, None, self.ctx()).await.map(drop)
    }

    async fn update(&self, id: &str, rev: u32, owner: Option<&str>) -> Result<(), tonic::Status> {
        self.client
            .update(id, rev, None, self.ctx(), owner.map(str::to_owned))
            .await
            .map(drop)
    }

    async fn get(&self, id: &str, rev: u32) -> Result<Json, tonic::Status> {
        let bytes = self
            .client
            .get(id, rev, self.ctx())
            .await?
            .unwrap_or_default();
        Ok(serde_json::from_slice(&bytes).expect("the value is JSON"))
    }
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

async fn snapshots(cluster: &Cluster, ns: &str, id: &str) -> Vec<ConfigMap> {
    Api::<ConfigMap>::namespaced(cluster.client().await, ns)
        .list(&ListParams::default().labels(&flux_helmrelease::snapshot::selector(id)))
        .await
        .expect("list snapshots")
        .items
}

async fn suspend_of(cluster: &Cluster, ns: &str, name: &str) -> Json {
    let obj = releases(cluster.client().await, ns)
        .get(name)
        .await
        .expect("get helmrelease");
    obj.data["spec"]
        .get("suspend")
        .cloned()
        .unwrap_or(Json::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_passes_the_context_conformance_subset_under_the_deploy_rbac() {
    let cluster = cluster().await;
    let ns = cluster.create_namespace("conf").await;
    create_release(&cluster, &ns, "podinfo", json!({})).await;
    reconcile(&cluster, &ns, "podinfo", "6.5.4", 1, 1).await;
    let identity = deploy_identity(&cluster).await;
    let backend = start(
        identity.env(),
        &[("APP_FLUX_SNAPSHOT_NAMESPACE", "capact-system")],
    )
    .await;
    // Every case's TypeInstances track this one release (the tracking
    // annotation holds any number of them).
    let context = json!({"name": "podinfo", "namespace": ns});
    let target = conformance::Target::connect(&Connect::plain(&backend.url), Some(context))
        .await
        .expect("connect the conformance suite");
    let report = conformance::run(Arc::new(target), None, |name, outcome| {
        println!("{}", conformance::line(name, outcome));
    })
    .await;
    testkit::assert_clean(&report, 28);
    // Every case cleaned up: nothing tracked, no snapshot left.
    let obj = releases(cluster.client().await, &ns)
        .get("podinfo")
        .await
        .expect("get");
    let annotations = obj.metadata.annotations.unwrap_or_default();
    assert!(
        !annotations.contains_key(flux_helmrelease::tracking::ANNOTATION),
        "tracking annotation left: {annotations:?}"
    );
    for at in [ns.as_str(), "capact-system"] {
        let left = Api::<ConfigMap>::namespaced(cluster.client().await, at)
            .list(
                &ListParams::default()
                    .labels("app.kubernetes.io/managed-by=capact-storage-flux-helmrelease"),
            )
            .await
            .expect("list")
            .items;
        assert!(left.is_empty(), "{} snapshots left in {at}", left.len());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn release_behaviour_on_a_real_api_server() {
    let cluster = cluster().await;
    let ns = cluster.create_namespace("flux").await;
    let admin = cluster.env();

    // ---- GetPreCreateValue, create on a missing release ----
    let backend = start(admin.clone(), &[]).await;
    create_release(&cluster, &ns, "podinfo", json!({})).await;
    reconcile(&cluster, &ns, "podinfo", "6.5.4", 1, 1).await;
    let hub = Hub::new(&backend, &ns, "podinfo").await;
    let pre = hub
        .client
        .pre_create_value(hub.ctx())
        .await
        .expect("pre-create value");
    let pre: Json = serde_json::from_slice(&pre.unwrap_or_default()).expect("json");
    assert_eq!(pre["chart"]["name"], "podinfo");
    assert_eq!(pre["releaseName"], "web-podinfo");
    assert_eq!(pre["status"]["ready"]["status"], "True");
    // valuesFrom is a reference only: the Secret does not even exist.
    assert_eq!(pre["valuesFrom"][0]["name"], "db-credentials");
    let missing = Hub::new(&backend, &ns, "absent").await;
    assert_eq!(code(missing.create("ti-missing").await), Code::NotFound);
    assert_eq!(
        code(missing.client.pre_create_value(missing.ctx()).await),
        Code::NotFound
    );

    // ---- revisions are snapshots of what the release was ----
    let id = "ti-revisions";
    hub.create(id).await.expect("create");
    let obj = releases(cluster.client().await, &ns)
        .get("podinfo")
        .await
        .expect("get");
    let annotation = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(flux_helmrelease::tracking::ANNOTATION))
        .cloned()
        .unwrap_or_default();
    assert!(annotation.contains(id), "tracking annotation: {annotation}");
    reconcile(&cluster, &ns, "podinfo", "6.5.5", 2, 2).await;
    hub.update(id, 2, None).await.expect("update to 2");
    reconcile(&cluster, &ns, "podinfo", "6.6.0", 3, 3).await;
    let r1 = hub.get(id, 1).await.expect("get 1");
    let r2 = hub.get(id, 2).await.expect("get 2 (latest: live)");
    assert_eq!(r1["values"]["replicaCount"], 1);
    assert_eq!(r1["chart"]["version"], "6.5.4");
    assert_eq!(r1["status"]["history"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        r2["values"]["replicaCount"], 3,
        "the latest revision is read live"
    );
    hub.update(id, 3, None).await.expect("update to 3");
    reconcile(&cluster, &ns, "podinfo", "6.7.0", 4, 4).await;
    let r2 = hub.get(id, 2).await.expect("get 2 (snapshot)");
    let r3 = hub.get(id, 3).await.expect("get 3 (live)");
    assert_eq!(r2["values"]["replicaCount"], 2);
    assert_eq!(r2["status"]["lastAttemptedRevision"], "6.5.5");
    assert_eq!(r2["status"]["lastAppliedRevision"], "6.5.5");
    assert_eq!(r3["values"]["replicaCount"], 4);
    assert_eq!(r3["status"]["history"].as_array().map(Vec::len), Some(4));
    assert_eq!(r3["generation"], r3["observedGeneration"]);
    let snaps = snapshots(&cluster, &ns, id).await;
    assert_eq!(snaps.len(), 3);
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    for cm in &snaps {
        let owners = cm.metadata.owner_references.clone().unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, uid, "snapshot owned by the helmrelease");
    }
    hub.client
        .delete_revision(id, 2, None, None)
        .await
        .expect("delete revision 2");
    assert_eq!(code(hub.get(id, 2).await), Code::NotFound);
    assert_eq!(snapshots(&cluster, &ns, id).await.len(), 2);

    // ---- locks without suspend leave the spec alone ----
    hub.client.lock(id, "alice", hub.ctx()).await.expect("lock");
    assert_eq!(suspend_of(&cluster, &ns, "podinfo").await, Json::Null);
    assert_eq!(
        code(hub.update(id, 4, Some("bob")).await),
        Code::FailedPrecondition
    );
    hub.update(id, 4, Some("alice"))
        .await
        .expect("update by the holder");
    hub.client.unlock(id, hub.ctx()).await.expect("unlock");

    // ---- OnDelete untracks but keeps the release ----
    hub.client
        .delete(id, hub.ctx(), None)
        .await
        .expect("delete");
    assert!(snapshots(&cluster, &ns, id).await.is_empty());
    let obj = releases(cluster.client().await, &ns)
        .get("podinfo")
        .await
        .expect("release kept");
    assert!(
        !obj.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(flux_helmrelease::tracking::ANNOTATION)
    );
    drop(backend);

    // ---- locks with suspend ----
    let backend = start(admin.clone(), &[("APP_FLUX_SUSPEND_ON_LOCK", "true")]).await;
    let hub = Hub::new(&backend, &ns, "podinfo").await;
    let id = "ti-suspend";
    hub.create(id).await.expect("create");
    hub.client.lock(id, "alice", hub.ctx()).await.expect("lock");
    assert_eq!(suspend_of(&cluster, &ns, "podinfo").await, json!(true));
    assert_eq!(hub.get(id, 1).await.expect("get")["suspended"], true);
    assert_eq!(
        code(hub.client.lock(id, "bob", hub.ctx()).await),
        Code::FailedPrecondition
    );
    hub.client.unlock(id, hub.ctx()).await.expect("unlock");
    assert_eq!(
        suspend_of(&cluster, &ns, "podinfo").await,
        Json::Null,
        "field removed again"
    );
    // A release the user had set to suspend: false gets false back.
    releases(cluster.client().await, &ns)
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await
        .expect("set suspend false");
    hub.client
        .lock(id, "alice", hub.ctx())
        .await
        .expect("lock again");
    assert_eq!(suspend_of(&cluster, &ns, "podinfo").await, json!(true));
    hub.client
        .delete(id, hub.ctx(), Some("alice".into()))
        .await
        .expect("delete while locked by us");
    assert_eq!(suspend_of(&cluster, &ns, "podinfo").await, json!(false));
    drop(backend);

    // ---- the release deleted outside the Hub ----
    let backend = start(admin.clone(), &[]).await;
    create_release(&cluster, &ns, "gone", json!({})).await;
    let hub = Hub::new(&backend, &ns, "gone").await;
    let id = "ti-gone";
    hub.create(id).await.expect("create");
    hub.update(id, 2, None).await.expect("update");
    releases(cluster.client().await, &ns)
        .delete("gone", &Default::default())
        .await
        .expect("delete helmrelease");
    assert_eq!(code(hub.get(id, 1).await), Code::NotFound);
    assert_eq!(code(hub.get(id, 2).await), Code::NotFound);
    assert_eq!(
        code(hub.client.lock(id, "o", hub.ctx()).await),
        Code::NotFound
    );
    assert_eq!(
        code(hub.client.locked_by(id, hub.ctx()).await),
        Code::NotFound
    );
    assert_eq!(
        code(hub.client.delete_revision(id, 1, None, None).await),
        Code::NotFound
    );
    // No garbage collector here: the snapshots are still there until OnDelete.
    assert_eq!(snapshots(&cluster, &ns, id).await.len(), 2);
    hub.client
        .delete(id, hub.ctx(), None)
        .await
        .expect("delete succeeds");
    assert!(
        snapshots(&cluster, &ns, id).await.is_empty(),
        "delete cleaned up"
    );
    drop(backend);

    // ---- deleting the release only when configured ----
    let backend = start(
        admin.clone(),
        &[("APP_FLUX_DELETE_RELEASE_ON_DELETE", "true")],
    )
    .await;
    create_release(&cluster, &ns, "doomed", json!({})).await;
    let hub = Hub::new(&backend, &ns, "doomed").await;
    hub.create("ti-doomed").await.expect("create");
    hub.client
        .delete("ti-doomed", hub.ctx(), None)
        .await
        .expect("delete");
    let left = releases(cluster.client().await, &ns)
        .get_opt("doomed")
        .await
        .expect("get");
    assert!(left.is_none(), "the helmrelease was deleted");
    drop(backend);

    // ---- a role without patch: PERMISSION_DENIED, nothing changed ----
    let rules = vec![PolicyRule {
        api_groups: Some(vec!["helm.toolkit.fluxcd.io".into()]),
        resources: Some(vec!["helmreleases".into()]),
        verbs: vec!["get".into(), "list".into()],
        ..Default::default()
    }];
    let reader = cluster.identity(&ns, "reader", rules).await;
    let backend = start(reader.env(), &[("APP_FLUX_NAMESPACES", &ns)]).await;
    let hub = Hub::new(&backend, &ns, "podinfo").await;
    let status = hub
        .create("ti-denied")
        .await
        .expect_err("no rights to write");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    // Namespaces outside APP_FLUX_NAMESPACES are refused by the schema.
    let other = Hub::new(&backend, "default", "podinfo").await;
    assert_eq!(
        code(other.client.pre_create_value(other.ctx()).await),
        Code::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_reports_added_changed_and_removed_releases() {
    let cluster = cluster().await;
    let ns = cluster.create_namespace("watch").await;
    let backend = start(
        cluster.env(),
        &[("APP_FLUX_WATCH_SELECTOR", "capact.io/register=true")],
    )
    .await;
    create_release(&cluster, &ns, "ignored", json!({})).await;
    create_release(
        &cluster,
        &ns,
        "watched",
        json!({"capact.io/register": "true"}),
    )
    .await;
    let seen = |what: &'static str, name: &'static str| {
        let logs = backend.logs();
        logs.lines()
            .any(|l| l.contains(&format!("watch: helmrelease {what}")) && l.contains(name))
    };
    wait_until(|| seen("added", "watched")).await;
    reconcile(&cluster, &ns, "watched", "6.5.5", 2, 1).await;
    wait_until(|| seen("changed", "watched")).await;
    releases(cluster.client().await, &ns)
        .delete("watched", &Default::default())
        .await
        .expect("delete");
    wait_until(|| seen("removed", "watched")).await;
    assert!(
        !backend.logs().contains("ignored"),
        "unlabelled release reported"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_server_down_gives_unavailable_then_recovers_and_registration_matches() {
    let mut cluster = cluster().await;
    let ns = cluster.create_namespace("outage").await;
    create_release(&cluster, &ns, "podinfo", json!({})).await;
    let mut backend = start(cluster.env(), &[]).await;
    testkit::registration::assert_manifests_match(&backend.url, "flux-helmrelease").await;
    let hub = Hub::new(&backend, &ns, "podinfo").await;
    hub.create("ti-outage").await.expect("create");
    cluster.stop_apiserver();
    let status = hub
        .get("ti-outage", 1)
        .await
        .expect_err("api server is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    backend
        .wait_health(tonic_health::pb::health_check_response::ServingStatus::NotServing)
        .await;
    cluster.start_apiserver().await;
    backend
        .wait_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let value = hub.get("ti-outage", 1).await.expect("get after restart");
    assert_eq!(value["name"], "podinfo");
    hub.client
        .delete("ti-outage", hub.ctx(), None)
        .await
        .expect("delete");
}

/// With APP_FLUX_SNAPSHOT_NAMESPACE the backend writes ConfigMaps only in
/// its own namespace: a Role there, and only HelmRelease verbs where the
/// releases are. Snapshots written before (in the release's namespace) are
/// still read where allowed, and are simply absent where not.
#[tokio::test(flavor = "multi_thread")]
async fn snapshots_in_the_backends_own_namespace_need_configmaps_only_there() {
    let cluster = cluster().await;
    let apps = cluster.create_namespace("apps").await;
    let own = cluster.create_namespace("own").await;
    let rbac = format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: flux-backend, namespace: {own}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: releases, namespace: {apps}}}
rules:
  - apiGroups: [helm.toolkit.fluxcd.io]
    resources: [helmreleases]
    verbs: [get, list, watch, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: releases, namespace: {apps}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: releases}}
subjects: [{{kind: ServiceAccount, name: flux-backend, namespace: {own}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: snapshots, namespace: {own}}}
rules:
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get, list, create, update, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: snapshots, namespace: {own}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: snapshots}}
subjects: [{{kind: ServiceAccount, name: flux-backend, namespace: {own}}}]
"#
    );
    cluster.apply(&rbac, &own).await;
    let sa = cluster.service_account_identity(&own, "flux-backend").await;
    create_release(&cluster, &apps, "web", json!({})).await;
    reconcile(&cluster, &apps, "web", "6.5.4", 1, 1).await;

    // Written before: a legacy backend (no snapshot namespace) made "old".
    let legacy = start(cluster.env(), &[]).await;
    let hub = Hub::new(&legacy, &apps, "web").await;
    hub.create("old").await.expect("legacy create");
    reconcile(&cluster, &apps, "web", "6.5.5", 2, 2).await;
    hub.update("old", 2, None).await.expect("legacy update");
    assert_eq!(snapshots(&cluster, &apps, "old").await.len(), 2);
    drop(legacy);

    let env = [
        ("APP_FLUX_NAMESPACES", apps.as_str()),
        ("APP_FLUX_SNAPSHOT_NAMESPACE", own.as_str()),
    ];
    let b = start(sa.env(), &env).await;
    let hub = Hub::new(&b, &apps, "web").await;
    hub.create("new")
        .await
        .expect("create with configmaps only in own");
    reconcile(&cluster, &apps, "web", "6.5.6", 3, 3).await;
    hub.update("new", 2, None).await.expect("update");
    assert_eq!(snapshots(&cluster, &own, "new").await.len(), 2);
    assert!(snapshots(&cluster, &apps, "new").await.is_empty());
    let first = hub
        .get("new", 1)
        .await
        .expect("revision 1 from its snapshot");
    assert_eq!(first["chart"]["version"], "6.5.5", "{first}");
    assert_eq!(
        hub.get("new", 2).await.expect("latest")["chart"]["version"],
        "6.5.6"
    );
    hub.client
        .delete_revision("new", 1, None, None)
        .await
        .expect("delete revision 1");
    assert_eq!(snapshots(&cluster, &own, "new").await.len(), 1);
    hub.client
        .delete("new", hub.ctx(), None)
        .await
        .expect("delete");
    assert!(snapshots(&cluster, &own, "new").await.is_empty());

    // The legacy snapshot of "old" is out of this Role's reach: absent, not
    // an error. With read access there it is found.
    assert_eq!(code(hub.get("old", 1).await), Code::NotFound);
    let admin = start(
        cluster.env(),
        &[("APP_FLUX_SNAPSHOT_NAMESPACE", own.as_str())],
    )
    .await;
    let hub = Hub::new(&admin, &apps, "web").await;
    let old = hub.get("old", 1).await.expect("legacy snapshot still read");
    assert_eq!(old["chart"]["version"], "6.5.4", "{old}");
}
