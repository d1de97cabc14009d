//! `storagectl register` / `unregister` against the test Hub (testkit::hub:
//! the Hub's GraphQL API, every query validated against its schema), for a
//! backend served in-process: the binary as an operator runs it.

use std::process::{Command, Output};

use serde_json::{Value as Json, json};
use testkit::{
    hub::{Hub, HubOptions, StoredTypeInstance},
    memory::MemoryBackend,
};

const BIN: &str = env!("CARGO_BIN_EXE_storagectl");
const TYPE_PATH: &str = "cap.type.capactio.storage-backends.memory.storage";

fn storagectl(backend: &MemoryBackend, hub: &Hub, args: &[&str]) -> Output {
    storagectl_at(&hub.url(), backend, args)
}

fn storagectl_at(endpoint: &str, backend: &MemoryBackend, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("STORAGECTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["--url", &backend.url, "--timeout", "5s"])
        .args(args)
        .args(["--hub-endpoint", endpoint]);
    cmd.output().expect("run storagectl")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "storagectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn registrations(hub: &Hub) -> Vec<StoredTypeInstance> {
    hub.type_instances()
        .into_iter()
        .filter(|t| t.type_path == TYPE_PATH)
        .collect()
}

fn latest_value(t: &StoredTypeInstance) -> Json {
    t.revisions
        .last()
        .and_then(|r| r.value.clone())
        .unwrap_or(Json::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn register_is_idempotent_and_updates_a_changed_url() {
    let backend = MemoryBackend::start().await;
    let hub = Hub::start().await;
    let register = |url: &str| {
        storagectl(
            &backend,
            &hub,
            &["register", "--hub-url", url, "--name", "memory"],
        )
    };

    let id = stdout(&register(&backend.addr));
    let all = registrations(&hub);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, id);
    assert_eq!(
        latest_value(&all[0]),
        json!({"url": backend.addr, "acceptValue": true, "contextSchema": null})
    );
    assert_eq!(
        all[0].revisions[0].created_by.as_deref(),
        Some("storagectl/memory")
    );

    // Again: found, not duplicated, no new revision.
    assert_eq!(stdout(&register(&backend.addr)), id);
    assert_eq!(registrations(&hub).len(), 1);
    assert_eq!(registrations(&hub)[0].revisions.len(), 1);

    // A new address: the same TypeInstance gets a revision with it.
    assert_eq!(stdout(&register("memory.capact-system:50051")), id);
    let all = registrations(&hub);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].revisions.len(), 2);
    assert_eq!(latest_value(&all[0])["url"], "memory.capact-system:50051");
    assert_eq!(hub.rejected(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_made_by_hand_is_adopted_by_its_url() {
    let backend = MemoryBackend::start().await;
    let hub = Hub::start().await;
    let client = hub_client::Hub::new(&hub_client::HubOptions::new(hub.url())).expect("client");
    let by_hand = client
        .create(&hub_client::NewInstance {
            type_ref: hub_client::TypeRef {
                path: TYPE_PATH.into(),
                revision: "0.1.0".into(),
            },
            created_by: None,
            value: Some(json!({"url": backend.addr, "acceptValue": true, "contextSchema": null})),
            backend: None,
        })
        .await
        .expect("create by hand");
    let out = storagectl(
        &backend,
        &hub,
        &["register", "--hub-url", &backend.addr, "--name", "memory"],
    );
    assert_eq!(stdout(&out), by_hand);
    assert_eq!(registrations(&hub).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn unregister_is_refused_while_used_and_idempotent_after() {
    let backend = MemoryBackend::start().await;
    let hub = Hub::start().await;
    let id = stdout(&storagectl(
        &backend,
        &hub,
        &["register", "--hub-url", &backend.addr, "--name", "memory"],
    ));
    // A TypeInstance stored in the backend: the Hub refuses to drop it.
    let client = hub_client::Hub::new(&hub_client::HubOptions::new(hub.url())).expect("client");
    let stored = client
        .create(&hub_client::NewInstance {
            type_ref: hub_client::TypeRef {
                path: "cap.type.example.secret".into(),
                revision: "0.1.0".into(),
            },
            created_by: None,
            value: Some(json!({"password": "hunter2"})),
            backend: Some((id.clone(), None)),
        })
        .await
        .expect("store a value in the backend");
    let unregister = || storagectl(&backend, &hub, &["unregister", "--name", "memory"]);
    let refused = unregister();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("still stored"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert_eq!(registrations(&hub).len(), 1);

    client
        .delete(&stored, None)
        .await
        .expect("delete the value");
    assert_eq!(stdout(&unregister()), id);
    assert!(registrations(&hub).is_empty());
    // Nothing left: success, nothing printed.
    assert_eq!(stdout(&unregister()), "");
    assert_eq!(hub.rejected(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_that_wants_a_token_gets_it_from_the_file_and_never_shows_it() {
    let backend = MemoryBackend::start().await;
    let hub = Hub::start_with(HubOptions {
        bearer_token: Some("tok-7f3a".into()),
        ..HubOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-7f3a\n").expect("write");
    let token_arg = token.to_string_lossy().into_owned();

    let denied = storagectl(
        &backend,
        &hub,
        &["register", "--hub-url", &backend.addr, "--name", "memory"],
    );
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("401"));

    let out = storagectl(
        &backend,
        &hub,
        &[
            "register",
            "--hub-url",
            &backend.addr,
            "--name",
            "memory",
            "--hub-token-file",
            &token_arg,
        ],
    );
    assert!(!stdout(&out).is_empty());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("tok-7f3a"));

    let bad = storagectl_at(
        "http://u:tok-7f3a@h/graphql",
        &backend,
        &["register", "--hub-url", &backend.addr],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&bad.stderr).contains("tok-7f3a"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_behind_basic_auth_gets_the_user_and_password_from_the_file() {
    let backend = MemoryBackend::start().await;
    let hub = Hub::start_with(HubOptions {
        basic_auth: Some(("capact".into(), "pw-91c2".into())),
        ..HubOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth");
    std::fs::write(&auth, "capact:pw-91c2\n").expect("write");
    let auth_arg = auth.to_string_lossy().into_owned();
    let register = |extra: &[&str]| {
        let mut args = vec!["register", "--hub-url", &backend.addr, "--name", "memory"];
        args.extend_from_slice(extra);
        storagectl(&backend, &hub, &args)
    };
    assert_eq!(register(&[]).status.code(), Some(1));
    let id = stdout(&register(&["--hub-basic-auth-file", &auth_arg]));
    assert_eq!(registrations(&hub).len(), 1);
    assert_eq!(registrations(&hub)[0].id, id);
}
