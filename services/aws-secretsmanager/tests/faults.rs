//! The backend binary when moto misbehaves or the backend is killed: moto
//! behind `testkit::fault::FaultProxy` (black hole, resets, refused
//! connections, latency beyond the store deadline) with four writers
//! running, and SIGKILLs at random moments under the same writers.
//! moto keeps its data only in memory, so there is no store-restart test
//! here (`tests/moto.rs` covers a restart that starts empty).

mod support;

use testkit::{
    BackendProcess,
    crash::{Kills, LoadOptions, kill_at_random_moments},
    fault::{FaultProxy, FaultTimings, Mode, assert_store_fault},
    moto::Moto,
};

/// The backend's environment for `moto`, plus `extra` (later entries win).
fn env(moto: &Moto, extra: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut env = moto.env();
    env.extend(extra);
    env
}

fn start_on(port: u16, env: &[(String, String)]) -> BackendProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    BackendProcess::start_on(port, support::BIN, &["AWS_"], &env)
}

/// The backend reaching moto through a proxy switched to `fault` mid-run.
async fn under_store_fault(fault: Mode) {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", moto.port));
    let timings = FaultTimings::default();
    let mut extra = vec![("AWS_ENDPOINT_URL".to_owned(), proxy.url("http"))];
    extra.extend(timings.env());
    let backend = start_on(testkit::free_port(), &env(&moto, extra))
        .serving()
        .await;
    assert_store_fault(&backend, &proxy, fault, &timings, LoadOptions::new("fault")).await;
}

testkit::store_fault_tests!(under_store_fault);

#[tokio::test(flavor = "multi_thread")]
async fn kills_at_random_moments_lose_no_acknowledged_revision() {
    let moto = Moto::start();
    let env = env(&moto, Vec::new());
    kill_at_random_moments(
        |port| start_on(port, &env),
        Kills::default(),
        LoadOptions::new("crash"),
    )
    .await;
}
