//! The backend binary when the API server misbehaves, restarts, or the
//! backend is killed, each test on its own etcd + kube-apiserver
//! (testkit::kube): the API server behind `testkit::fault::FaultProxy`
//! (black hole, resets, refused connections, latency beyond the store
//! deadline; its certificate names 127.0.0.1, so TLS passes through the
//! proxy), an API server restart (etcd keeps the data) and SIGKILLs at
//! random moments, all with four writers running.

use std::time::Duration;

use testkit::{
    BackendProcess,
    crash::{Kills, Load, LoadOptions, kill_at_random_moments},
    fault::{FaultProxy, FaultTimings, Mode, assert_store_fault, kubeconfig_via},
    kube::Cluster,
};
use tonic_health::pb::health_check_response::ServingStatus;

const BIN: &str = env!("CARGO_BIN_EXE_kubernetes-secret-backend");

fn start_on(port: u16, env: &[(String, String)]) -> BackendProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    BackendProcess::start_on(port, BIN, &["KUBECONFIG"], &env)
}

/// A fresh cluster and the admin environment of a backend in a namespace
/// of its own, plus `extra`.
async fn cluster_and_env(extra: Vec<(String, String)>) -> (Cluster, Vec<(String, String)>) {
    let cluster = Cluster::start().await;
    let ns = cluster.create_namespace("faults").await;
    let mut env = cluster.env();
    env.push(("APP_K8S_NAMESPACE".into(), ns));
    env.extend(extra);
    (cluster, env)
}

/// The backend reaching the API server through a proxy switched to
/// `fault` mid-run.
async fn under_store_fault(fault: Mode) {
    let timings = FaultTimings::default();
    let (cluster, mut env) = cluster_and_env(timings.env()).await;
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", cluster.port()));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig_via(&cluster.kubeconfig_path(), &proxy.url("https"), dir.path());
    env.push((
        "KUBECONFIG".into(),
        kubeconfig.to_string_lossy().into_owned(),
    ));
    let backend = start_on(testkit::free_port(), &env).serving().await;
    assert_store_fault(&backend, &proxy, fault, &timings, LoadOptions::new("fault")).await;
}

testkit::store_fault_tests!(under_store_fault);

#[tokio::test(flavor = "multi_thread")]
async fn an_api_server_restart_mid_load_is_unavailable_only_and_loses_no_acknowledged_write() {
    let timings = FaultTimings::default();
    let (mut cluster, env) = cluster_and_env(timings.env()).await;
    let mut backend = start_on(testkit::free_port(), &env).serving().await;
    let load = Load::start(
        &backend.url,
        LoadOptions {
            call_bound: Some(timings.call_bound()),
            ..LoadOptions::new("restart")
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
    let (_cluster, env) = cluster_and_env(Vec::new()).await;
    kill_at_random_moments(
        |port| start_on(port, &env),
        Kills::default(),
        LoadOptions::new("crash"),
    )
    .await;
}
