//! The backend binary against a real moto server (Secrets Manager): the
//! conformance suite with a recovery window and with force delete, long
//! histories, binary values, delete then re-create, the previous version's
//! layout, two backend processes racing on locks, updates and the fence, an
//! outage, and what the logs contain.

mod support;

use std::{collections::HashSet, sync::Arc};

use aws_sdk_secretsmanager::Client;
use support::{direct_client, start_backend, target};
use testkit::{assert_clean, conformance, moto::Moto};
use tonic::Code;

/// Rounds per scenario of the two-process races.
const RACE_ROUNDS: usize = 200;

/// The life the head of `id` names (revision secrets live under it).
async fn life(direct: &Client, id: &str) -> String {
    let head = direct
        .get_secret_value()
        .secret_id(format!("capact/{id}/head"))
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap_or_else(|e| panic!("read the head of {id}: {e:?}"));
    let head: serde_json::Value =
        serde_json::from_str(head.secret_string().unwrap_or_default()).expect("head is json");
    let life = head["life"].as_str().expect("the head names its life");
    assert_eq!(life.len(), 16, "{head}");
    life.to_owned()
}

/// The name of the secret of revision `rev` of `id`.
async fn rev_name(direct: &Client, id: &str, rev: u32) -> String {
    format!("capact/{id}/{}/{rev}", life(direct, id).await)
}

/// Whether the secret `name` exists and is scheduled for deletion.
async fn scheduled(direct: &Client, name: &str) -> bool {
    let d = direct
        .describe_secret()
        .secret_id(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("describe {name}: {e:?}"));
    d.deleted_date.is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_with_recovery_window_passes_the_conformance_suite() {
    let moto = Moto::start();
    let backend = start_backend(&moto, &[]).await;
    assert_clean(&conformance(&backend.url).await, 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_with_force_delete_passes_the_conformance_suite() {
    let moto = Moto::start();
    let backend = start_backend(&moto, &[("APP_SM_FORCE_DELETE", "true")]).await;
    assert_clean(&conformance(&backend.url).await, 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_manifests_match_the_running_backend() {
    let moto = Moto::start();
    let backend = start_backend(&moto, &[]).await;
    testkit::registration::assert_manifests_match(&backend.url, "aws-secretsmanager").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_revisions_of_40_kib_each_are_all_readable() {
    let moto = Moto::start();
    let backend = start_backend(&moto, &[]).await;
    let t = target(&backend).await;
    let value = |rev: u32| {
        let mut v = vec![b'a' + (rev % 26) as u8; 40 * 1024];
        v[..4].copy_from_slice(&rev.to_be_bytes());
        v
    };
    t.create("long-history", &value(1)).await.expect("create");
    for rev in 2..=100 {
        t.update("long-history", rev, &value(rev), None)
            .await
            .unwrap_or_else(|s| panic!("update {rev}: {s:?}"));
    }
    for rev in 1..=100 {
        let got = t.get("long-history", rev).await.expect("get");
        assert_eq!(got.as_ref(), value(rev).as_slice(), "revision {rev}");
    }
    // The whole history (4 MB) lives in 100 secrets of 40 KiB each.
    let direct = direct_client(&moto);
    let rev50 = direct
        .get_secret_value()
        .secret_id(rev_name(&direct, "long-history", 50).await)
        .send()
        .await
        .expect("direct read of revision 50");
    assert_eq!(rev50.secret_binary.map(|b| b.into_inner().len()), None);
    assert_eq!(rev50.secret_string.map(|s| s.len()), Some(40 * 1024));
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_values_round_trip_byte_for_byte_through_secret_binary() {
    let moto = Moto::start();
    let backend = start_backend(&moto, &[]).await;
    let t = target(&backend).await;
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    t.create("bin", &binary).await.expect("create");
    // Same bytes again is a retry, other bytes a conflict.
    t.create("bin", &binary).await.expect("retried create");
    let status = t.create("bin", b"other").await.expect_err("conflict");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    t.update("bin", 2, b"", None).await.expect("empty value");
    t.update("bin", 3, &[0x00], None)
        .await
        .expect("one zero byte");
    t.update("bin", 4, "ünïcode ✓".as_bytes(), None)
        .await
        .expect("utf-8 text");
    assert_eq!(t.get("bin", 1).await.expect("get 1").as_ref(), &binary[..]);
    assert_eq!(t.get("bin", 2).await.expect("get 2").as_ref(), b"");
    assert_eq!(t.get("bin", 3).await.expect("get 3").as_ref(), &[0x00]);
    assert_eq!(
        t.get("bin", 4).await.expect("get 4").as_ref(),
        "ünïcode ✓".as_bytes()
    );

    let direct = direct_client(&moto);
    let stored = direct
        .get_secret_value()
        .secret_id(rev_name(&direct, "bin", 1).await)
        .send()
        .await
        .expect("direct read");
    assert!(stored.secret_string.is_none());
    let mut framed = vec![1u8];
    framed.extend_from_slice(&binary);
    assert_eq!(stored.secret_binary.map(|b| b.into_inner()), Some(framed));
    let text = direct
        .get_secret_value()
        .secret_id(rev_name(&direct, "bin", 4).await)
        .send()
        .await
        .expect("direct read");
    assert_eq!(text.secret_string.as_deref(), Some("ünïcode ✓"));
}

/// Delete, then create the same id again with other values: nothing of the
/// first life shows through.
async fn delete_then_recreate(t: &conformance::Target) {
    t.create("again", b"first-1").await.expect("create");
    t.update("again", 2, b"first-2", None)
        .await
        .expect("update 2");
    t.update("again", 3, b"first-3", None)
        .await
        .expect("update 3");
    t.lock("again", "alice").await.expect("lock");
    t.delete("again", Some("alice")).await.expect("delete");
    for rev in 1..=3 {
        let s = t.get("again", rev).await.expect_err("deleted");
        assert_eq!(s.code(), Code::NotFound, "revision {rev}: {s:?}");
    }
    let s = t.locked_by("again").await.expect_err("deleted");
    assert_eq!(s.code(), Code::NotFound, "{s:?}");

    t.create("again", b"second-1").await.expect("re-create");
    assert_eq!(t.get("again", 1).await.expect("get").as_ref(), b"second-1");
    // Old revisions 2 and 3 do not come back, and the lock is gone.
    for rev in 2..=3 {
        let s = t.get("again", rev).await.expect_err("not written yet");
        assert_eq!(s.code(), Code::NotFound, "revision {rev}: {s:?}");
    }
    assert_eq!(t.locked_by("again").await.expect("locked by"), None);
    t.update("again", 2, b"second-2", None)
        .await
        .expect("update over an old revision's name");
    assert_eq!(t.get("again", 2).await.expect("get").as_ref(), b"second-2");
    // A retried update of the re-used revision is a no-op, other bytes conflict.
    t.update("again", 2, b"second-2", None)
        .await
        .expect("retry");
    let s = t
        .update("again", 2, b"first-2", None)
        .await
        .expect_err("conflict");
    assert_eq!(s.code(), Code::AlreadyExists, "{s:?}");
    // And a third life after deleting the second.
    t.delete("again", None).await.expect("delete again");
    t.create("again", b"first-1")
        .await
        .expect("third create with the first life's bytes");
    assert_eq!(t.get("again", 1).await.expect("get").as_ref(), b"first-1");
    let s = t.get("again", 2).await.expect_err("gone");
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn type_instance_deleted_with_a_recovery_window_can_be_created_again() {
    let moto = Moto::start();
    let backend = start_backend(&moto, &[]).await;
    let t = target(&backend).await;
    let direct = direct_client(&moto);
    t.create("window", b"v").await.expect("create");
    let first = rev_name(&direct, "window", 1).await;
    t.delete("window", None).await.expect("delete");
    // The secrets are scheduled for deletion, not gone.
    for name in [first.as_str(), "capact/window/head"] {
        let d = direct
            .describe_secret()
            .secret_id(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("describe {name}: {e:?}"));
        assert!(
            d.deleted_date.is_some(),
            "{name} is not scheduled for deletion"
        );
        let tags: HashSet<(String, String)> = d
            .tags
            .unwrap_or_default()
            .into_iter()
            .map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default()))
            .collect();
        assert!(tags.contains(&("managed-by".into(), "capact-storage".into())));
        assert!(tags.contains(&("capact-type-instance-id".into(), "window".into())));
    }
    // Within the window the same id lives again under a new life: the head
    // is restored and taken over, the old revision's name is never reused
    // (its old value stays recoverable, never served).
    t.create("window", b"w").await.expect("re-create");
    let second = rev_name(&direct, "window", 1).await;
    assert_ne!(first, second);
    assert!(scheduled(&direct, &first).await, "{first} was restored");
    assert!(!scheduled(&direct, "capact/window/head").await);
    assert_eq!(t.get("window", 1).await.expect("get").as_ref(), b"w");
    delete_then_recreate(&t).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn type_instance_force_deleted_can_be_created_again() {
    let moto = Moto::start();
    let backend = start_backend(&moto, &[("APP_SM_FORCE_DELETE", "true")]).await;
    let t = target(&backend).await;
    let direct = direct_client(&moto);
    t.create("forced", b"v").await.expect("create");
    let first = rev_name(&direct, "forced", 1).await;
    t.delete("forced", None).await.expect("delete");
    for name in [first.as_str(), "capact/forced/head"] {
        let err = direct
            .describe_secret()
            .secret_id(name)
            .send()
            .await
            .expect_err("force-deleted secret is gone");
        assert!(format!("{err:?}").contains("ResourceNotFound"), "{err:?}");
    }
    delete_then_recreate(&t).await;
}

/// A head and revisions as the previous version of this backend wrote them
/// (no life: revisions at `<prefix>/<id>/<n>`, a `state` in the head) are
/// served, updated and deleted as they are.
#[tokio::test(flavor = "multi_thread")]
async fn legacy_layout_written_by_the_previous_version_is_still_served() {
    let moto = Moto::start();
    let direct = direct_client(&moto);
    for (name, value) in [
        (
            "capact/leg-1/head",
            r#"{"managed_by":"capact-storage","state":"live","latest":2,"lock":null,"high":2}"#,
        ),
        ("capact/leg-1/1", "one"),
        ("capact/leg-1/2", "two"),
    ] {
        direct
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e:?}"));
    }
    let backend = start_backend(&moto, &[]).await;
    let t = target(&backend).await;
    assert_eq!(t.get("leg-1", 1).await.expect("get 1").as_ref(), b"one");
    assert_eq!(t.get("leg-1", 2).await.expect("get 2").as_ref(), b"two");
    t.update("leg-1", 3, b"three", None).await.expect("update");
    assert_eq!(t.get("leg-1", 3).await.expect("get 3").as_ref(), b"three");
    // A head without a life keeps its revisions at the old names.
    let rev3 = direct
        .get_secret_value()
        .secret_id("capact/leg-1/3")
        .version_stage("AWSCURRENT")
        .send()
        .await
        .expect("direct read of revision 3");
    assert_eq!(rev3.secret_string(), Some("three"));
    t.delete("leg-1", None).await.expect("delete");
    for name in [
        "capact/leg-1/1",
        "capact/leg-1/2",
        "capact/leg-1/3",
        "capact/leg-1/head",
    ] {
        assert!(scheduled(&direct, name).await, "{name} was not deleted");
    }
    let status = t.get("leg-1", 1).await.expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        status.message(),
        "TypeInstance \"leg-1\" in revision 1 was not found"
    );
    let status = t.locked_by("leg-1").await.expect_err("deleted");
    assert_eq!(status.message(), "TypeInstance \"leg-1\" was not found");
}

/// Two processes on one moto share nothing but Secrets Manager: every fence
/// holds through the stage compare-and-swap and create-only names alone.
#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_newest_revisions() {
    let moto = Moto::start();
    let backend = start_backend(&moto, &[("APP_MAX_REVISIONS", "3")]).await;
    testkit::assert_retention(&backend.url, 3, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_lists_locks_and_force_unlocks_by_compare_and_set() {
    let moto = Moto::start();
    let admin = format!("127.0.0.1:{}", testkit::free_port());
    let backend = start_backend(&moto, &[("APP_ADMIN_ADDR", &admin)]).await;
    testkit::assert_admin(&backend.url, &format!("http://{admin}"), None, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_backends_racing_on_one_moto_never_violate_the_fence() {
    let moto = Moto::start();
    let a = start_backend(&moto, &[]).await;
    let b = start_backend(&moto, &[]).await;
    testkit::assert_races_clean(&a.url, &b.url, RACE_ROUNDS).await;
}

/// Two backend processes on one moto, and their targets alternately.
async fn two_backends(
    moto: &Moto,
) -> (Vec<testkit::BackendProcess>, Vec<Arc<conformance::Target>>) {
    let a = start_backend(moto, &[]).await;
    let b = start_backend(moto, &[]).await;
    let targets = vec![target(&a).await, target(&b).await];
    (vec![a, b], targets)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_lockers_in_two_processes_have_exactly_one_winner() {
    let moto = Moto::start();
    let (_procs, targets) = two_backends(&moto).await;
    for round in 0..5 {
        let id = format!("race-lock-{round}");
        targets[0].create(&id, b"v").await.expect("create");
        let mut tasks = Vec::new();
        for i in 0..16 {
            let t = Arc::clone(&targets[i % 2]);
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let owner = format!("owner-{i}");
                (owner.clone(), t.lock(&id, &owner).await)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (owner, result) = task.await.expect("task");
            match result {
                Ok(()) => winners.push(owner),
                Err(s) => assert!(
                    matches!(s.code(), Code::FailedPrecondition | Code::Aborted),
                    "{owner}: {s:?}"
                ),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        for t in &targets {
            assert_eq!(
                t.locked_by(&id).await.expect("locked by").as_deref(),
                Some(winners[0].as_str())
            );
        }
        // The winner's lock holds against every other owner's update.
        let s = targets[1]
            .update(&id, 2, b"x", Some("someone-else"))
            .await
            .expect_err("locked");
        assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
        targets[1]
            .update(&id, 2, b"x", Some(&winners[0]))
            .await
            .expect("holder updates");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_updates_of_one_revision_in_two_processes_have_exactly_one_winner() {
    let moto = Moto::start();
    let (_procs, targets) = two_backends(&moto).await;
    for round in 0..5 {
        let id = format!("race-update-{round}");
        targets[0].create(&id, b"v1").await.expect("create");
        let mut tasks = Vec::new();
        for i in 0..16 {
            let t = Arc::clone(&targets[i % 2]);
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let value = format!("writer-{i}");
                (
                    value.clone(),
                    t.update(&id, 2, value.as_bytes(), None).await,
                )
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (value, result) = task.await.expect("task");
            match result {
                Ok(()) => winners.push(value),
                Err(s) => assert!(
                    matches!(s.code(), Code::AlreadyExists | Code::Aborted),
                    "{value}: {s:?}"
                ),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        for t in &targets {
            assert_eq!(
                t.get(&id, 2).await.expect("get").as_ref(),
                winners[0].as_bytes()
            );
        }
    }
}

/// Re-creates within the recovery window race on the restored head: of
/// concurrent creators with different bytes exactly one wins.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_re_creates_within_the_recovery_window_have_exactly_one_winner() {
    let moto = Moto::start();
    let (_procs, targets) = two_backends(&moto).await;
    for round in 0..3 {
        let id = format!("race-recreate-{round}");
        targets[0].create(&id, b"old").await.expect("create");
        targets[0].delete(&id, None).await.expect("delete");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let t = Arc::clone(&targets[i % 2]);
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let value = format!("creator-{i}");
                (value.clone(), t.create(&id, value.as_bytes()).await)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (value, result) = task.await.expect("task");
            match result {
                Ok(_) => winners.push(value),
                Err(s) => assert!(
                    matches!(s.code(), Code::AlreadyExists | Code::Aborted),
                    "{value}: {s:?}"
                ),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        for t in &targets {
            assert_eq!(
                t.get(&id, 1).await.expect("get").as_ref(),
                winners[0].as_bytes()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_writers_of_successive_revisions_lose_none() {
    let moto = Moto::start();
    let (_procs, targets) = two_backends(&moto).await;
    let id = "race-history";
    targets[0].create(id, b"1").await.expect("create");
    const LAST: u32 = 25;
    // Four writers (two per process) each try every revision in order;
    // for each revision exactly one may succeed, and its bytes must stay.
    let mut tasks = Vec::new();
    for w in 0..4 {
        let t = Arc::clone(&targets[w % 2]);
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for rev in 2..=LAST {
                let value = format!("{rev}-by-{w}");
                match t.update(id, rev, value.as_bytes(), None).await {
                    Ok(()) => won.push((rev, value)),
                    Err(s) => assert!(
                        matches!(
                            s.code(),
                            Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition
                        ),
                        "writer {w} revision {rev}: {s:?}"
                    ),
                }
            }
            won
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    let revs: HashSet<u32> = all.iter().map(|(r, _)| *r).collect();
    assert_eq!(revs.len(), all.len(), "a revision had two winners: {all:?}");
    for (rev, value) in &all {
        assert_eq!(
            targets[1].get(id, *rev).await.expect("get").as_ref(),
            value.as_bytes(),
            "revision {rev}"
        );
    }
    // Every revision was won by someone (each writer tried all of them in
    // order, so a revision nobody stored would have to be below the latest).
    for rev in 2..=LAST {
        assert!(revs.contains(&rev), "revision {rev} was stored by nobody");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_stopped_mid_run_gives_unavailable_then_recovers_after_restart() {
    let mut moto = Moto::start();
    let port = moto.port;
    let mut backend = start_backend(&moto, &[("APP_AWS_CONNECT_TIMEOUT", "1s")]).await;
    let t = target(&backend).await;
    t.create("outage-1", b"before").await.expect("create");

    moto.stop();
    let s = t.get("outage-1", 1).await.expect_err("store is down");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    let s = t.create("outage-2", b"x").await.expect_err("store is down");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    backend
        .wait_health(tonic_health::pb::health_check_response::ServingStatus::NotServing)
        .await;

    // moto restarts empty on the same port: the backend just carries on.
    let _moto = Moto::start_on(port);
    backend
        .wait_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    t.create("outage-2", b"after")
        .await
        .expect("create after restart");
    assert_eq!(t.get("outage-2", 1).await.expect("get").as_ref(), b"after");
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_logs_contain_no_value() {
    let moto = Moto::start();
    let backend = start_backend(
        &moto,
        &[(
            "APP_LOG_LEVEL",
            "trace,aws_smithy_runtime=trace,aws_sdk_secretsmanager=trace",
        )],
    )
    .await;
    let t = target(&backend).await;
    let value = b"value-that-must-not-be-logged-5d1e";
    t.create("logged", value).await.expect("create");
    t.update("logged", 2, value, None).await.expect("update");
    assert_eq!(t.get("logged", 2).await.expect("get").as_ref(), value);
    let _ = t.create("logged", b"other").await;
    let logs = backend.logs();
    assert!(
        logs.len() > 1000,
        "trace logging produced almost nothing:\n{logs}"
    );
    assert!(
        !logs.contains("value-that-must-not-be-logged"),
        "the value appears in the logs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_the_store_refuses_give_permission_denied_and_not_serving() {
    // moto with IAM enforced from the first call: the test keys are unknown
    // to it, so every call is refused with 403 InvalidClientTokenId.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("moto.log");
    let port = testkit::free_port();
    let mut cmd = std::process::Command::new(testkit::tool_bin("moto_server", "MOTO_SERVER_BIN"));
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
    let mut guard = testkit::process::spawn_logged(&mut cmd, &log);
    testkit::process::wait_for_port(
        port,
        &mut guard,
        "moto_server",
        &log,
        std::time::Duration::from_secs(60),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("AWS_ACCESS_KEY_ID", testkit::moto::ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", testkit::moto::SECRET_ACCESS_KEY),
        ("AWS_REGION", testkit::moto::REGION),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let mut backend = testkit::BackendProcess::start(support::BIN, &["AWS_"], &env);
    backend
        .wait_health(tonic_health::pb::health_check_response::ServingStatus::NotServing)
        .await;
    let t = target(&backend).await;
    let s = t.create("denied", b"v").await.expect_err("refused");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let s = t.get("denied", 1).await.expect_err("refused");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    drop(guard);
}
