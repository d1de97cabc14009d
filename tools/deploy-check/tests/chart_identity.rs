//! The chart's own identity on a real kube-apiserver: its ServiceAccount and
//! (Cluster)Roles applied as rendered, the backend binary run with that
//! ServiceAccount's token and the environment the chart's Deployment sets.
//! Unlike comparing rule lists, this sees scope errors: a namespaced Role
//! where the backend asks cluster-wide never reaches SERVING.

use deploy_check::{backend_bin, render};
use serde_json::{Value as Json, json};
use testkit::{BackendProcess, kube::Cluster};

/// Addresses and files the test process sets itself.
const NOT_FROM_THE_CHART: [&str; 6] = [
    "APP_GRPC_ADDR",
    "APP_HEALTH_ADDR",
    "APP_METRICS_ADDR",
    "APP_ADMIN_ADDR",
    "APP_LOG_FORMAT",
    "APP_DATA_DIR",
];

/// Applies the chart's identity objects and starts the backend as that
/// identity with the Deployment's plain environment.
async fn run_as_the_chart(
    cluster: &Cluster,
    backend: &str,
    bin: &str,
    namespace: &str,
    sets: &[(&str, &str)],
) -> BackendProcess {
    let mut all = vec![("backend", backend)];
    all.extend_from_slice(sets);
    let objects = render(&format!("capact-storage-{backend}"), namespace, &all);
    let identity_kinds = [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
    ];
    let mut sa = None;
    let yaml: Vec<String> = objects
        .iter()
        .filter(|o| identity_kinds.contains(&o["kind"].as_str().unwrap_or("")))
        .inspect(|o| {
            if o["kind"] == "ServiceAccount" {
                sa = o["metadata"]["name"].as_str().map(str::to_owned);
            }
        })
        .map(|o| serde_yaml::to_string(o).expect("yaml"))
        .collect();
    cluster.apply(&yaml.join("---\n"), namespace).await;
    let sa = sa.expect("the chart renders a ServiceAccount");
    let identity = cluster.service_account_identity(namespace, &sa).await;
    let deployment = deploy_check::find(&objects, "Deployment").expect("Deployment");
    let mut env: Vec<(String, String)> =
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            .filter(|(k, _)| !NOT_FROM_THE_CHART.contains(&k.as_str()))
            .collect();
    env.extend(identity.env());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let bin = backend_bin(bin);
    BackendProcess::start(&bin.to_string_lossy(), &["KUBECONFIG"], &env)
        .serving()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_backends_run_with_the_charts_own_service_account() {
    let cluster = Cluster::start().await;
    cluster
        .install_crd(&deploy_check::repo_root().join(
            "services/flux-helmrelease/tests/fixtures/helm.toolkit.fluxcd.io_helmreleases.yaml",
        ))
        .await;

    // kubernetes-secret, defaults: the whole suite in the release namespace.
    let ns = cluster.create_namespace("chart-secret").await;
    let b = run_as_the_chart(
        &cluster,
        "kubernetes-secret",
        "kubernetes-secret-backend",
        &ns,
        &[],
    )
    .await;
    testkit::assert_clean(&testkit::conformance(&b.url).await, 40);

    // flux-helmrelease, defaults (namespaced): SERVING, and it tracks a
    // release of its namespace through the Hub's calls.
    let ns = cluster.create_namespace("chart-flux").await;
    let b = run_as_the_chart(
        &cluster,
        "flux-helmrelease",
        "flux-helmrelease-backend",
        &ns,
        &[],
    )
    .await;
    track_a_release(&cluster, &b, &ns).await;

    // flux-helmrelease, cluster-wide: a release in another namespace.
    let ns = cluster.create_namespace("chart-flux-all").await;
    let other = cluster.create_namespace("apps").await;
    let b = run_as_the_chart(
        &cluster,
        "flux-helmrelease",
        "flux-helmrelease-backend",
        &ns,
        &[("rbac.clusterWide", "true")],
    )
    .await;
    track_a_release(&cluster, &b, &other).await;
}

async fn track_a_release(cluster: &Cluster, backend: &BackendProcess, ns: &str) {
    use kube::api::{Api, DynamicObject, PostParams};
    let resource = kube::api::ApiResource {
        group: "helm.toolkit.fluxcd.io".into(),
        version: "v2".into(),
        api_version: "helm.toolkit.fluxcd.io/v2".into(),
        kind: "HelmRelease".into(),
        plural: "helmreleases".into(),
    };
    let hr: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"interval": "5m", "chart": {"spec": {"chart": "podinfo",
                 "sourceRef": {"kind": "HelmRepository", "name": "podinfo"}}}}
    }))
    .expect("helmrelease");
    Api::<DynamicObject>::namespaced_with(cluster.client().await, ns, &resource)
        .create(&PostParams::default(), &hr)
        .await
        .expect("create helmrelease");
    let client = shared::client::Client::connect(
        &shared::client::Connect::plain(&backend.url),
        shared::client::Timeouts::default(),
    )
    .await
    .expect("connect");
    let ctx = Some(bytes::Bytes::from(
        json!({"name": "web", "namespace": ns}).to_string(),
    ));
    client
        .create("chart-ti", None, ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("OnCreate as the chart's identity: {e}\n{}", backend.logs()));
    let value = client
        .get("chart-ti", 1, ctx.clone())
        .await
        .expect("GetValue")
        .unwrap_or_default();
    let value: Json = serde_json::from_slice(&value).expect("JSON");
    assert_eq!(value["chart"]["name"], "podinfo", "{value}");
    client
        .delete("chart-ti", ctx, None)
        .await
        .expect("OnDelete");
}
