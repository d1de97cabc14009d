//! The backend binary when the API server misbehaves, restarts, or the
//! backend is killed, each test on its own etcd + kube-apiserver with
//! Flux's HelmRelease CRD (testkit::kube): the API server behind
//! `testkit::fault::FaultProxy` (black hole, resets, refused connections,
//! latency beyond the store deadline; its certificate names 127.0.0.1, so
//! TLS passes through the proxy), an API server restart (etcd keeps the
//! data) and SIGKILLs at random moments, all with four writers running.
//!
//! The writers' TypeInstances all track one HelmRelease that nothing
//! changes during the run: every revision's value is its projection, as
//! GetPreCreateValue gives it, and must read back as exactly that (the
//! latest live, older ones from their snapshots).

mod support;

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use shared::client::{Client, Connect, Timeouts};
use support::{BIN, cluster, create_release};
use testkit::{
    BackendProcess,
    crash::{Kills, Load, LoadOptions, kill_at_random_moments},
    fault::{FaultProxy, FaultTimings, Mode, assert_store_fault, kubeconfig_via},
    kube::Cluster,
};
use tonic_health::pb::health_check_response::ServingStatus;

fn start_on(port: u16, env: &[(String, String)]) -> BackendProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    BackendProcess::start_on(port, BIN, &["KUBECONFIG"], &env)
}

/// A fresh cluster with one HelmRelease in a namespace of its own, the
/// admin environment of a backend plus `extra`, and the context naming
/// the release.
async fn cluster_and_env(extra: Vec<(String, String)>) -> (Cluster, Vec<(String, String)>, Bytes) {
    let cluster = cluster().await;
    let ns = cluster.create_namespace("faults").await;
    create_release(&cluster, &ns, "podinfo", json!({})).await;
    let mut env = cluster.env();
    env.extend(extra);
    let context = Bytes::from(json!({"name": "podinfo", "namespace": ns}).to_string());
    (cluster, env, context)
}

/// The writers' options: the release as context, its projection (what
/// `backend` answers to GetPreCreateValue) as every revision's value.
async fn load_options(prefix: &str, backend: &BackendProcess, context: &Bytes) -> LoadOptions {
    let client = Client::connect(&Connect::plain(&backend.url), Timeouts::default())
        .await
        .expect("connect to the backend");
    let value = client
        .pre_create_value(Some(context.clone()))
        .await
        .expect("GetPreCreateValue")
        .expect("the projection of the release");
    LoadOptions {
        context: Some(context.clone()),
        derived_value: Some(value),
        ..LoadOptions::new(prefix)
    }
}

/// The backend reaching the API server through a proxy switched to
/// `fault` mid-run.
async fn under_store_fault(fault: Mode) {
    let timings = FaultTimings::default();
    let (cluster, mut env, context) = cluster_and_env(timings.env()).await;
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", cluster.port()));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig_via(&cluster.kubeconfig_path(), &proxy.url("https"), dir.path());
    env.push((
        "KUBECONFIG".into(),
        kubeconfig.to_string_lossy().into_owned(),
    ));
    let backend = start_on(testkit::free_port(), &env).serving().await;
    let options = load_options("fault", &backend, &context).await;
    assert_store_fault(&backend, &proxy, fault, &timings, options).await;
}

testkit::store_fault_tests!(under_store_fault);

#[tokio::test(flavor = "multi_thread")]
async fn an_api_server_restart_mid_load_is_unavailable_only_and_loses_no_acknowledged_revision() {
    let timings = FaultTimings::default();
    let (mut cluster, env, context) = cluster_and_env(timings.env()).await;
    let mut backend = start_on(testkit::free_port(), &env).serving().await;
    let options = load_options("restart", &backend, &context).await;
    let load = Load::start(
        &backend.url,
        LoadOptions {
            call_bound: Some(timings.call_bound()),
            ..options
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = load.acknowledged();
    cluster.stop_apiserver();
    // Long enough for every writer to meet the outage.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.start_apiserver().await;
    backend.wait_health(ServingStatus::Serving).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut report = load.finish().await;
    assert!(before > 0, "nothing acknowledged before the restart");
    assert!(
        report.interrupted > 0,
        "no write met the restart: {}",
        report.summary()
    );
    // The writers already failed on any answer but UNAVAILABLE/ABORTED.
    report.verify(&backend.url).await;
    report.assert_clean(&backend.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_at_random_moments_lose_no_acknowledged_revision() {
    let (_cluster, env, context) = cluster_and_env(Vec::new()).await;
    // A first life of the backend only to learn the projection.
    let options = {
        let backend = start_on(testkit::free_port(), &env).serving().await;
        load_options("crash", &backend, &context).await
    };
    kill_at_random_moments(|port| start_on(port, &env), Kills::default(), options).await;
}
