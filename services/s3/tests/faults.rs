//! The `s3-backend` binary when moto misbehaves or the backend is killed:
//! moto behind `testkit::fault::FaultProxy` (black hole, resets, refused
//! connections, latency beyond the store deadline) with four writers
//! running, and SIGKILLs at random moments under the same writers.
//! moto keeps its data only in memory, so there is no store-restart test
//! here (`tests/moto.rs` covers a restart that starts empty).

mod support;

use support::{BackendProcess, Moto, backend_env, backend_env_at, create_bucket, s3_client};
use testkit::{
    crash::{Kills, LoadOptions, kill_at_random_moments},
    fault::{FaultProxy, FaultTimings, Mode, assert_store_fault},
};

async fn moto_with_bucket(bucket: &str) -> Moto {
    let moto = Moto::start();
    create_bucket(&s3_client(&moto).await, bucket, false).await;
    moto
}

/// The backend reaching moto through a proxy switched to `fault` mid-run.
async fn under_store_fault(fault: Mode) {
    let moto = moto_with_bucket("faults").await;
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", moto.port));
    let timings = FaultTimings::default();
    let mut env = backend_env_at(&proxy.url("http"), "faults", &[]);
    env.extend(timings.env());
    let backend: BackendProcess = support::start_backend(&env).serving().await;
    assert_store_fault(&backend, &proxy, fault, &timings, LoadOptions::new("fault")).await;
}

testkit::store_fault_tests!(under_store_fault);

#[tokio::test(flavor = "multi_thread")]
async fn kills_at_random_moments_lose_no_acknowledged_revision() {
    let moto = moto_with_bucket("crash").await;
    let env = backend_env(&moto, "crash", &[]);
    kill_at_random_moments(
        |port| support::start_backend_on(port, &env),
        Kills::default(),
        LoadOptions::new("crash"),
    )
    .await;
}
