//! Every object the chart renders, for every backend and the optional
//! features, is accepted by a real kube-apiserver (server-side dry-run:
//! full validation and admission, nothing persisted).

use deploy_check::{BACKENDS, render};
use kube::{
    Api, Discovery,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams},
    discovery::Scope,
};
use serde_json::Value as Json;

/// Kinds whose API only exists with an operator installed.
const OPTIONAL_APIS: [&str; 1] = ["monitoring.coreos.com"];

#[tokio::test(flavor = "multi_thread")]
async fn rendered_chart_passes_server_side_dry_run_for_every_backend() {
    let cluster = testkit::kube::Cluster::start().await;
    let namespace = cluster.create_namespace("deploy-check").await;
    let client = cluster.client().await;
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("api discovery");

    let mut variants: Vec<Vec<(&str, &str)>> = BACKENDS
        .iter()
        .map(|(b, _)| vec![("backend", *b)])
        .collect();
    variants.push(vec![
        ("backend", "sops-git"),
        ("tls.enabled", "true"),
        ("tls.secretName", "backend-tls"),
        ("tls.clientCASecret", "hub-client-ca"),
        ("persistence.enabled", "true"),
        ("metrics.serviceMonitor.enabled", "true"),
    ]);
    variants.push(vec![
        ("backend", "kubernetes-secret"),
        ("rbac.namespaces[0]", namespace.as_str()),
    ]);
    variants.push(vec![
        ("backend", "flux-helmrelease"),
        (
            "config.flux-helmrelease.APP_FLUX_WATCH_SELECTOR",
            "capact.io/register=true",
        ),
        (
            "config.flux-helmrelease.APP_HUB_ENDPOINT",
            "http://capact-hub-local.capact-system/graphql",
        ),
        (
            "config.flux-helmrelease.APP_HUB_BACKEND_ID",
            "3c0e7d5a-0000-4000-8000-000000000001",
        ),
    ]);
    variants.push(vec![
        ("backend", "vault"),
        ("networkPolicy.enabled", "false"),
        ("metrics.enabled", "false"),
    ]);

    let mut checked = 0;
    for sets in &variants {
        for object in render("capact-storage", &namespace, sets) {
            if dry_run(&client, &discovery, &object, &namespace).await {
                checked += 1;
            }
        }
    }
    assert!(checked >= 30, "only {checked} objects were dry-run");
}

/// Server-side apply with dryRun=All; false for a kind of an optional API
/// that this server does not serve.
async fn dry_run(
    client: &kube::Client,
    discovery: &Discovery,
    object: &Json,
    namespace: &str,
) -> bool {
    let obj: DynamicObject = serde_json::from_value(object.clone()).expect("a Kubernetes object");
    let types = obj.types.clone().expect("apiVersion and kind");
    let gvk = GroupVersionKind::try_from(&types).expect("group/version/kind");
    let Some((resource, caps)) = discovery.resolve_gvk(&gvk) else {
        assert!(
            OPTIONAL_APIS.contains(&gvk.group.as_str()),
            "{gvk:?} is not served by the API server"
        );
        return false;
    };
    let name = obj.metadata.name.clone().expect("metadata.name");
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let params = PatchParams::apply("deploy-check").dry_run();
    api.patch(&name, &params, &Patch::Apply(&obj))
        .await
        .unwrap_or_else(|e| panic!("the API server rejects {} {name}: {e}", types.kind));
    true
}
