//! Watch → Hub on a real kube-apiserver with Flux's CRD and the test Hub
//! (testkit::hub: the Hub's GraphQL API, every query validated against its
//! schema, calling this backend over gRPC as the Hub does). The backend runs
//! under the deploy/ RBAC plus the Lease role of
//! deploy/rbac/flux-helmrelease-hub-registration.yaml.

use std::time::Duration;

use hub_client::{HubOptions, NewInstance, TypeRef};
use kube::api::{Patch, PatchParams};
use serde_json::{Value as Json, json};
use testkit::{
    BackendProcess, free_port,
    hub::{Hub as TestHub, HubOptions as TestHubOptions, StoredTypeInstance},
    kube::{Cluster, Identity},
};

mod support;
use support::*;

const LABEL: &str = "capact.io/register";
const RELEASE_TYPE: &str = "cap.type.helm.chart.release";

/// The backend's identity: the deploy RBAC and the Lease role.
async fn identity(cluster: &Cluster) -> Identity {
    let id = deploy_identity(cluster).await;
    let rbac = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/rbac/flux-helmrelease-hub-registration.yaml"
    ))
    .expect("read deploy/rbac/flux-helmrelease-hub-registration.yaml");
    cluster.apply(&rbac, "capact-system").await;
    id
}

/// Registers the backend that will listen on `port` in the Hub, as an
/// operator does before starting it; returns its storage TypeInstance id.
async fn register_backend(hub: &TestHub, port: u16, token: Option<&std::path::Path>) -> String {
    let mut options = HubOptions::new(hub.url());
    options.token_file = token.map(std::path::Path::to_path_buf);
    let client = hub_client::Hub::new(&options).expect("hub client");
    client
        .create(&NewInstance {
            type_ref: TypeRef {
                path: "cap.type.capactio.storage-backends.flux-helmrelease.storage".into(),
                revision: "0.1.0".into(),
            },
            created_by: None,
            value: Some(json!({
                "url": format!("127.0.0.1:{port}"),
                "acceptValue": false,
                "contextSchema": flux_helmrelease::context_schema(&[]),
            })),
            backend: None,
        })
        .await
        .expect("register the backend in the hub")
}

/// Starts a replica on `port` that registers releases labelled [`LABEL`].
async fn replica(
    identity: &Identity,
    hub: &TestHub,
    port: u16,
    backend_id: &str,
    extra: &[(&str, &str)],
) -> BackendProcess {
    let mut env: Vec<(String, String)> = identity.env();
    for (k, v) in [
        ("APP_FLUX_WATCH_SELECTOR", format!("{LABEL}=true")),
        ("APP_HUB_ENDPOINT", hub.url()),
        ("APP_HUB_BACKEND_ID", backend_id.to_owned()),
        ("APP_HUB_LEASE_NAMESPACE", "capact-system".to_owned()),
        ("APP_HUB_LEASE_DURATION", "3s".to_owned()),
        ("APP_HUB_RESYNC", "1s".to_owned()),
        ("APP_HUB_TIMEOUT", "2s".to_owned()),
        ("APP_FLUX_SNAPSHOT_NAMESPACE", "capact-system".to_owned()),
    ] {
        env.push((k.to_owned(), v));
    }
    for (k, v) in extra {
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    BackendProcess::start_on(port, BIN, &["KUBECONFIG"], &env)
        .serving()
        .await
}

/// The Hub's TypeInstances of releases, by `namespace/name`.
fn registered(hub: &TestHub, backend_id: &str) -> Vec<(String, StoredTypeInstance)> {
    let mut out: Vec<(String, StoredTypeInstance)> = hub
        .type_instances()
        .into_iter()
        .filter(|t| t.type_path == RELEASE_TYPE && t.backend_id == backend_id)
        .map(|t| {
            let ctx = t
                .revisions
                .last()
                .and_then(|r| r.context.clone())
                .unwrap_or(Json::Null);
            let key = format!(
                "{}/{}",
                ctx["namespace"].as_str().unwrap_or(""),
                ctx["name"].as_str().unwrap_or("")
            );
            (key, t)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn names(hub: &TestHub, backend_id: &str) -> Vec<String> {
    registered(hub, backend_id)
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

fn creates(hub: &TestHub) -> usize {
    hub.operations()
        .iter()
        .filter(|o| o.as_str() == "createTypeInstance")
        .count()
}

async fn tracking(cluster: &Cluster, ns: &str, name: &str) -> Json {
    let obj = releases(cluster.client().await, ns)
        .get(name)
        .await
        .expect("get helmrelease");
    obj.metadata
        .annotations
        .and_then(|a| a.get(flux_helmrelease::tracking::ANNOTATION).cloned())
        .map(|s| serde_json::from_str(&s).expect("tracking JSON"))
        .unwrap_or(Json::Null)
}

async fn delete_release(cluster: &Cluster, ns: &str, name: &str) {
    releases(cluster.client().await, ns)
        .delete(name, &Default::default())
        .await
        .expect("delete helmrelease");
}

fn label(value: Option<&str>) -> Json {
    json!({"metadata": {"labels": {LABEL: value}}})
}

const SETTLE: Duration = Duration::from_secs(3);
const WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn labelled_release_is_registered_once_and_goes_with_its_release() {
    let cluster = cluster().await;
    let identity = identity(&cluster).await;
    let ns = cluster.create_namespace("hub").await;
    let hub = TestHub::start().await;
    let port = free_port();
    let backend_id = register_backend(&hub, port, None).await;
    let backend = replica(&identity, &hub, port, &backend_id, &[]).await;

    create_release(&cluster, &ns, "web", json!({LABEL: "true"})).await;
    create_release(&cluster, &ns, "ignored", json!({})).await;
    wait_for(WITHIN, || names(&hub, &backend_id) == [format!("{ns}/web")]).await;

    // The Hub called OnCreate: the release tracks the TypeInstance, and the
    // watch recorded that it registered it.
    let (_, ti) = registered(&hub, &backend_id).remove(0);
    let entry = &tracking(&cluster, &ns, "web").await["typeInstances"][&ti.id];
    assert_eq!(entry["latest"], 1, "{entry}");
    let mut marked = false;
    for _ in 0..100 {
        marked =
            tracking(&cluster, &ns, "web").await["typeInstances"][&ti.id]["registered"] == true;
        if marked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(marked, "the registration is recorded on the release");
    assert_eq!(
        ti.revisions[0].created_by.as_deref(),
        Some(format!("flux-helmrelease/{backend_id}").as_str())
    );
    assert!(ti.uses.contains(&backend_id), "uses its backend: {ti:?}");

    // Several resyncs later: still one, created once.
    tokio::time::sleep(SETTLE).await;
    assert_eq!(names(&hub, &backend_id), [format!("{ns}/web")]);
    assert_eq!(
        creates(&hub),
        2,
        "the backend's own registration and the release's"
    );

    // Changes need no Hub call; the label going takes the TypeInstance away
    // and the release stops tracking it.
    releases(cluster.client().await, &ns)
        .patch("web", &PatchParams::default(), &Patch::Merge(label(None)))
        .await
        .expect("unlabel");
    wait_for(WITHIN, || names(&hub, &backend_id).is_empty()).await;
    assert_eq!(tracking(&cluster, &ns, "web").await, Json::Null);

    // Labelled again, then deleted: registered again, then gone.
    releases(cluster.client().await, &ns)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(label(Some("true"))),
        )
        .await
        .expect("label");
    wait_for(WITHIN, || names(&hub, &backend_id).len() == 1).await;
    delete_release(&cluster, &ns, "web").await;
    wait_for(WITHIN, || names(&hub, &backend_id).is_empty()).await;

    assert_eq!(hub.rejected(), Vec::<String>::new());
    let logs = backend.logs();
    assert!(logs.contains("hub sync: registered"), "{logs}");
    assert!(logs.contains("hub sync: unregistered"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_register_each_release_once_and_the_survivor_takes_over() {
    let cluster = cluster().await;
    let identity = identity(&cluster).await;
    let ns = cluster.create_namespace("hub2").await;
    let hub = TestHub::start().await;
    // The Hub dials the Service, which outlives any one replica: here a
    // third process of the same backend that does not watch.
    let service = free_port();
    let backend_id = register_backend(&hub, service, None).await;
    let mut env = identity.env();
    env.push(("APP_FLUX_SNAPSHOT_NAMESPACE".into(), "capact-system".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let _service = BackendProcess::start_on(service, BIN, &["KUBECONFIG"], &env)
        .serving()
        .await;
    let a = replica(&identity, &hub, free_port(), &backend_id, &[]).await;
    let b = replica(&identity, &hub, free_port(), &backend_id, &[]).await;

    for i in 0..5 {
        create_release(&cluster, &ns, &format!("r{i}"), json!({LABEL: "true"})).await;
    }
    wait_for(WITHIN, || names(&hub, &backend_id).len() == 5).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(names(&hub, &backend_id).len(), 5);
    assert_eq!(creates(&hub), 1 + 5, "each release created once");
    let leading = |p: &BackendProcess| p.logs().contains("leader election: leading");
    assert!(
        leading(&a) ^ leading(&b),
        "exactly one replica leads:\nA:\n{}\nB:\n{}",
        a.logs(),
        b.logs()
    );

    // The leader goes; the other takes the Lease over and carries on.
    let (mut gone, survivor) = if leading(&a) { (a, b) } else { (b, a) };
    gone.process.stop();
    create_release(&cluster, &ns, "late", json!({LABEL: "true"})).await;
    delete_release(&cluster, &ns, "r0").await;
    wait_for(Duration::from_secs(30), || {
        let n = names(&hub, &backend_id);
        n.len() == 5 && n.contains(&format!("{ns}/late")) && !n.contains(&format!("{ns}/r0"))
    })
    .await;
    assert!(leading(&survivor), "{}", survivor.logs());
    assert_eq!(creates(&hub), 1 + 6);
    assert_eq!(hub.rejected(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_while_the_backend_is_down_are_reconciled_at_start() {
    let cluster = cluster().await;
    let identity = identity(&cluster).await;
    let ns = cluster.create_namespace("hub3").await;
    let hub = TestHub::start().await;
    let port = free_port();
    let backend_id = register_backend(&hub, port, None).await;
    let mut backend = replica(&identity, &hub, port, &backend_id, &[]).await;
    create_release(&cluster, &ns, "old", json!({LABEL: "true"})).await;
    wait_for(WITHIN, || names(&hub, &backend_id) == [format!("{ns}/old")]).await;

    backend.process.stop();
    create_release(&cluster, &ns, "new", json!({LABEL: "true"})).await;
    delete_release(&cluster, &ns, "old").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(names(&hub, &backend_id), [format!("{ns}/old")]);

    // Same port: the Hub reaches the restarted backend at its registered URL.
    let _backend = replica(&identity, &hub, port, &backend_id, &[]).await;
    wait_for(Duration::from_secs(30), || {
        names(&hub, &backend_id) == [format!("{ns}/new")]
    })
    .await;
    assert_eq!(creates(&hub), 1 + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_down_or_a_lost_answer_is_retried_without_duplicates() {
    let cluster = cluster().await;
    let identity = identity(&cluster).await;
    let ns = cluster.create_namespace("hub4").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("hub-token");
    std::fs::write(&token, "hub-token-value-42\n").expect("write token");
    let hub = TestHub::start_with(TestHubOptions {
        bearer_token: Some("hub-token-value-42".into()),
        ..TestHubOptions::default()
    })
    .await;
    let port = free_port();
    let backend_id = register_backend(&hub, port, Some(&token)).await;

    // Down while the backend starts: it still reaches SERVING (health does
    // not depend on the Hub) and retries.
    hub.set_down(true);
    let token_env = token.to_string_lossy().into_owned();
    let backend = replica(
        &identity,
        &hub,
        port,
        &backend_id,
        &[("APP_HUB_TOKEN_FILE", &token_env)],
    )
    .await;
    create_release(&cluster, &ns, "a", json!({LABEL: "true"})).await;
    tokio::time::sleep(SETTLE).await;
    assert!(names(&hub, &backend_id).is_empty());
    hub.set_down(false);
    wait_for(WITHIN, || names(&hub, &backend_id) == [format!("{ns}/a")]).await;

    // The Hub applies the next create but the answer is lost: the next pass
    // lists before creating, so the release is not registered twice.
    hub.lose_next_responses(1);
    create_release(&cluster, &ns, "b", json!({LABEL: "true"})).await;
    wait_for(WITHIN, || names(&hub, &backend_id).len() == 2).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        names(&hub, &backend_id),
        [format!("{ns}/a"), format!("{ns}/b")]
    );

    let logs = backend.logs();
    assert!(!logs.contains("hub-token-value-42"), "token in the log");
    assert!(logs.contains("reconcile failed"), "{logs}");
    assert_eq!(hub.rejected(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_type_instance_locked_by_another_owner_is_left_alone_and_ours_is_deleted() {
    let cluster = cluster().await;
    let identity = identity(&cluster).await;
    let ns = cluster.create_namespace("hub5").await;
    let hub = TestHub::start().await;
    let port = free_port();
    let backend_id = register_backend(&hub, port, None).await;
    let backend = replica(&identity, &hub, port, &backend_id, &[]).await;
    create_release(&cluster, &ns, "theirs", json!({LABEL: "true"})).await;
    create_release(&cluster, &ns, "ours", json!({LABEL: "true"})).await;
    wait_for(WITHIN, || names(&hub, &backend_id).len() == 2).await;
    let ids: Vec<(String, String)> = registered(&hub, &backend_id)
        .into_iter()
        .map(|(k, t)| (k, t.id))
        .collect();
    let id_of = |name: &str| {
        ids.iter()
            .find(|(k, _)| k.ends_with(&format!("/{name}")))
            .map(|(_, id)| id.clone())
            .expect("registered")
    };
    let (theirs, ours) = (id_of("theirs"), id_of("ours"));
    // Locked through the Hub by someone else (the Hub tells the backend).
    let client = hub_client::Hub::new(&HubOptions::new(hub.url())).expect("client");
    client
        .lock(std::slice::from_ref(&theirs), "capact/some-action")
        .await
        .expect("lock");
    hub.lock_directly(&ours, &format!("flux-helmrelease/{backend_id}"));

    delete_release(&cluster, &ns, "theirs").await;
    delete_release(&cluster, &ns, "ours").await;
    wait_for(WITHIN, || hub.get(&ours).is_none()).await;
    tokio::time::sleep(SETTLE).await;
    let kept = hub.get(&theirs).expect("the locked TypeInstance stays");
    assert_eq!(kept.locked_by.as_deref(), Some("capact/some-action"));
    assert!(
        backend.logs().contains("locked by another owner"),
        "{}",
        backend.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_settings_that_cannot_work_stop_the_backend_at_start() {
    let cluster = cluster().await;
    let mut env = cluster.env();
    env.push((
        "APP_HUB_ENDPOINT".into(),
        "http://127.0.0.1:1/graphql".into(),
    ));
    env.push(("APP_HUB_BACKEND_ID".into(), "x".into()));
    env.push(("APP_HUB_LEASE_NAMESPACE".into(), "default".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut p = BackendProcess::start(BIN, &["KUBECONFIG"], &env);
    let (code, log) = p.wait_exit(Duration::from_secs(20));
    assert_ne!(code, Some(0));
    assert!(log.contains("APP_FLUX_WATCH_SELECTOR"), "{log}");
}

/// The Hub client's TLS settings against a real TLS server with its own CA
/// (the kube-apiserver: any HTTP answer proves the handshake).
#[tokio::test(flavor = "multi_thread")]
async fn hub_client_trusts_the_ca_it_is_given_and_only_that() {
    let cluster = cluster().await;
    let endpoint = format!("https://127.0.0.1:{}/graphql", cluster.port());
    let mut options = HubOptions::new(&endpoint);
    options.attempts = 1;
    let untrusted = hub_client::Hub::new(&options)
        .expect("client")
        .lock_of("x")
        .await
        .expect_err("the test CA is not a system root");
    assert!(
        matches!(untrusted, hub_client::HubError::Unavailable { .. }),
        "{untrusted}"
    );
    assert!(untrusted.to_string().contains("certificate"), "{untrusted}");

    options.ca_file = Some(cluster.ca_path());
    let answered = hub_client::Hub::new(&options)
        .expect("client")
        .lock_of("x")
        .await
        .expect_err("the API server is no Hub");
    assert!(
        matches!(answered, hub_client::HubError::Http { .. }),
        "{answered}"
    );
}
