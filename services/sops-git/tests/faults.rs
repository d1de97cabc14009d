//! The real binary when its git remote (`git daemon` with push enabled)
//! misbehaves or restarts, with four writers running: the daemon behind
//! `testkit::fault::FaultProxy` (black hole, resets, refused connections,
//! latency beyond the store deadline), and the daemon killed and started
//! again on the same port and repositories mid-load. Kills of the backend
//! itself are in `crash.rs`.

mod support;

use std::{path::Path, time::Duration};

use support::{bare_repo, git_daemon, git_daemon_on, start_backend, terminate_git_daemon};
use testkit::{
    BackendProcess,
    crash::{Load, LoadOptions},
    fault::{FaultProxy, FaultTimings, Mode, assert_store_fault},
    free_port,
};
use tonic_health::pb::health_check_response::ServingStatus;

/// libgit2's own bounds on the remote's socket, below the store deadline
/// of [`FaultTimings::default`]: a writer stuck on a silent remote frees
/// the writer lock before the calls queued behind it run out of budget.
const GIT_TIMEOUTS: [(&str, &str); 2] = [
    ("APP_GIT_CONNECT_TIMEOUT", "500ms"),
    ("APP_GIT_IO_TIMEOUT", "1s"),
];

/// Daemon restarts in the restart test.
const RESTARTS: usize = 3;

/// The backend's environment: `timings`, [`GIT_TIMEOUTS`] and `remote`.
fn env(timings: &FaultTimings, remote: &str) -> Vec<(String, String)> {
    let mut env = timings.env();
    env.extend(GIT_TIMEOUTS.map(|(k, v)| (k.to_owned(), v.to_owned())));
    env.push(("APP_GIT_REMOTE".into(), remote.to_owned()));
    env
}

async fn start(data: &Path, env: &[(String, String)]) -> BackendProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    start_backend(data, &env).await
}

/// The backend pushing to `git daemon` through a proxy switched to `fault`
/// mid-run. Its readiness probe is an ls-remote through the same proxy.
async fn under_store_fault(fault: Mode) {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let (_daemon, base) = git_daemon(dir.path()).await;
    let upstream = base.trim_start_matches("git://");
    let proxy = FaultProxy::start(upstream);
    let timings = FaultTimings::default();
    let remote = format!("{}/remote.git", proxy.url("git"));
    let backend = start(&dir.path().join("data"), &env(&timings, &remote)).await;
    assert_store_fault(&backend, &proxy, fault, &timings, LoadOptions::new("fault")).await;
}

testkit::store_fault_tests!(under_store_fault);

#[tokio::test(flavor = "multi_thread")]
async fn git_daemon_restarts_mid_push_are_unavailable_only_and_lose_no_acknowledged_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let port = free_port();
    let (mut daemon, base) = git_daemon_on(dir.path(), port).await;
    let timings = FaultTimings::default();
    let mut backend = start(
        &dir.path().join("data"),
        &env(&timings, &format!("{base}/remote.git")),
    )
    .await;
    let load = Load::start(
        &backend.url,
        LoadOptions {
            call_bound: Some(timings.call_bound()),
            ..LoadOptions::new("restart")
        },
    )
    .await;
    // Several restarts, so that some land in the middle of a push.
    for restart in 0..RESTARTS {
        let before = load.acknowledged();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            load.acknowledged() > before,
            "nothing acknowledged before restart {restart}"
        );
        // The daemon and the pushes and fetches it is serving all end: a
        // push may be cut at any step, and new connections are refused
        // until the daemon is back.
        terminate_git_daemon(&mut daemon);
        // Long enough for every writer to meet the outage.
        tokio::time::sleep(Duration::from_secs(1)).await;
        daemon = git_daemon_on(dir.path(), port).await.0;
        backend.wait_health(ServingStatus::Serving).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut report = load.finish().await;
    assert!(
        report.interrupted > 0,
        "no write met the restarts: {}",
        report.summary()
    );
    // The writers already failed on any answer but UNAVAILABLE/ABORTED.
    report.verify(&backend.url).await;
    report.assert_clean(&backend.logs());
}
