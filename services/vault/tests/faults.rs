//! The `vault-backend` binary when OpenBao misbehaves, restarts, or the
//! backend is killed, all with four writers running: OpenBao behind
//! `testkit::fault::FaultProxy` (black hole, resets, refused connections,
//! latency beyond the store deadline), a persistent OpenBao (raft storage)
//! SIGKILLed and started again on the same data mid-load, and SIGKILLs of
//! the backend at random moments.

mod support;

use std::time::Duration;

use support::{BackendProcess, Bao, ROOT_TOKEN, RaftBao};
use testkit::{
    crash::{Kills, Load, LoadOptions, kill_at_random_moments},
    fault::{FaultProxy, FaultTimings, Mode, assert_store_fault},
};
use tonic_health::pb::health_check_response::ServingStatus;

const BIN: &str = env!("CARGO_BIN_EXE_vault-backend");

fn start_on(port: u16, env: &[(String, String)]) -> BackendProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    BackendProcess::start_on(port, BIN, &["VAULT_", "BAO_"], &env)
}

fn env_for(addr: &str, token: &str, extra: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut env = vec![
        ("VAULT_ADDR".to_owned(), addr.to_owned()),
        ("VAULT_TOKEN".to_owned(), token.to_owned()),
    ];
    env.extend(extra);
    env
}

/// The backend reaching OpenBao through a proxy switched to `fault`
/// mid-run.
async fn under_store_fault(fault: Mode) {
    let bao = Bao::start();
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", bao.port));
    let timings = FaultTimings::default();
    let env = env_for(&proxy.url("http"), ROOT_TOKEN, timings.env());
    let backend = start_on(testkit::free_port(), &env).serving().await;
    assert_store_fault(&backend, &proxy, fault, &timings, LoadOptions::new("fault")).await;
}

testkit::store_fault_tests!(under_store_fault);

#[tokio::test(flavor = "multi_thread")]
async fn openbao_restart_mid_load_is_unavailable_only_and_loses_no_acknowledged_revision() {
    let timings = FaultTimings::default();
    let mut bao = RaftBao::start();
    let env = env_for(&bao.addr(), &bao.root_token, timings.env());
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
    // SIGKILL: what raft acknowledged must survive without a clean
    // shutdown.
    bao.kill();
    // Long enough for every writer to meet the outage.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Same port, same data; sealed until the unseal key is given again,
    // and the root token from the first init is still valid after it.
    bao.start_again();
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
    report.assert_clean(&format!(
        "{}\n----- openbao -----\n{}",
        backend.logs(),
        bao.logs()
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_at_random_moments_lose_no_acknowledged_revision() {
    let bao = Bao::start();
    let env = env_for(&bao.addr(), ROOT_TOKEN, Vec::new());
    kill_at_random_moments(
        |port| start_on(port, &env),
        Kills::default(),
        LoadOptions::new("crash"),
    )
    .await;
}
