//! Helpers shared by the integration tests: the kube-apiserver with Flux's
//! CRD, HelmReleases as a user applies them, and the backend process.

#![allow(dead_code)]

use std::{path::Path, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::{DynamicObject, ObjectMeta, PostParams},
};
use serde_json::{Value as Json, json};
use testkit::{BackendProcess, kube::Cluster};

pub const BIN: &str = env!("CARGO_BIN_EXE_flux-helmrelease-backend");

pub fn crd_path() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/helm.toolkit.fluxcd.io_helmreleases.yaml"
    ))
}

pub async fn cluster() -> Cluster {
    let cluster = Cluster::start().await;
    cluster.install_crd(crd_path()).await;
    cluster
}

pub fn releases(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, ns, &flux_helmrelease::helmrelease_resource())
}

/// A HelmRelease as a user would apply it.
pub async fn create_release(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    labels: Json,
) -> DynamicObject {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "interval": "5m",
            "targetNamespace": "web",
            "chart": {"spec": {"chart": "podinfo", "version": "6.5.4",
                                "sourceRef": {"kind": "HelmRepository", "name": "podinfo"}}},
            "values": {"replicaCount": 1},
            "valuesFrom": [{"kind": "Secret", "name": "db-credentials", "valuesKey": "password",
                            "targetPath": "db.password"}]
        }
    }))
    .expect("helmrelease object");
    releases(cluster.client().await, ns)
        .create(&PostParams::default(), &obj)
        .await
        .expect("create helmrelease")
}

/// The backend under the deploy/ RBAC (ServiceAccount bound by the
/// ClusterRoleBinding of deploy/rbac/flux-helmrelease.yaml).
pub async fn deploy_identity(cluster: &Cluster) -> testkit::kube::Identity {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("capact-system".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let _ = Api::<Namespace>::all(cluster.client().await)
        .create(&PostParams::default(), &ns)
        .await;
    let rbac = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/rbac/flux-helmrelease.yaml"
    ))
    .expect("read deploy/rbac/flux-helmrelease.yaml");
    cluster.apply(&rbac, "capact-system").await;
    cluster
        .service_account_identity("capact-system", "capact-storage-flux-helmrelease")
        .await
}

pub async fn start(identity_env: Vec<(String, String)>, extra: &[(&str, &str)]) -> BackendProcess {
    let mut env: Vec<(&str, &str)> = identity_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.extend_from_slice(extra);
    BackendProcess::start(BIN, &["KUBECONFIG"], &env)
        .serving()
        .await
}

pub async fn wait_until(f: impl FnMut() -> bool) {
    wait_for(Duration::from_secs(10), f).await;
}

/// Polls `f` every 100 ms until it holds; fails the test after `within`.
pub async fn wait_for(within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not met within {within:?}");
}
