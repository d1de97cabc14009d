//! The backend binary against a real kube-apiserver (testkit::kube): the
//! conformance suite as admin and as the deploy/ Role only, a missing verb,
//! two backend processes racing, the size limit, the application-facing
//! Secret, the stored layout, and an API server restart.

use std::time::{Duration, Instant};

use bytes::Bytes;
use k8s_openapi::{
    ByteString,
    api::{core::v1::Secret, rbac::v1::PolicyRule},
};
use kube::{
    Api,
    api::{ListParams, ObjectMeta, PostParams},
};
use shared::proto::storage_backend as pb;
use testkit::{BackendProcess, assert_clean, conformance, kube::Cluster};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const BIN: &str = env!("CARGO_BIN_EXE_kubernetes-secret-backend");

async fn backend(env: Vec<(String, String)>) -> BackendProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    BackendProcess::start(BIN, &["KUBECONFIG"], &env)
        .serving()
        .await
}

fn with(mut env: Vec<(String, String)>, more: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

async fn create(
    b: &BackendProcess,
    id: &str,
    value: &[u8],
    ctx: Option<&str>,
) -> Result<(), tonic::Status> {
    b.client()
        .await
        .on_create(pb::OnCreateValueAndContextRequest {
            type_instance_id: id.into(),
            value: Bytes::copy_from_slice(value),
            context: ctx.map(|c| Bytes::copy_from_slice(c.as_bytes())),
        })
        .await
        .map(drop)
}

async fn update(
    b: &BackendProcess,
    id: &str,
    rev: u32,
    value: &[u8],
    ctx: Option<&str>,
) -> Result<(), tonic::Status> {
    b.client()
        .await
        .on_update(pb::OnUpdateValueAndContextRequest {
            type_instance_id: id.into(),
            new_resource_version: rev,
            new_value: Bytes::copy_from_slice(value),
            context: ctx.map(|c| Bytes::copy_from_slice(c.as_bytes())),
            owner_id: None,
        })
        .await
        .map(drop)
}

async fn get(b: &BackendProcess, id: &str, rev: u32) -> Result<Vec<u8>, tonic::Status> {
    b.client()
        .await
        .get_value(pb::GetValueRequest {
            type_instance_id: id.into(),
            resource_version: rev,
            context: Bytes::new(),
        })
        .await
        .map(|r| r.into_inner().value.unwrap_or_default().to_vec())
}

async fn lock(b: &BackendProcess, id: &str, owner: &str) -> Result<(), tonic::Status> {
    b.client()
        .await
        .on_lock(pb::OnLockRequest {
            type_instance_id: id.into(),
            context: Bytes::new(),
            locked_by: owner.into(),
        })
        .await
        .map(drop)
}

fn deploy_rbac(namespace: &str) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/rbac/kubernetes-secret.yaml"
    );
    std::fs::read_to_string(path)
        .expect("deploy/rbac/kubernetes-secret.yaml")
        .replace("NAMESPACE", namespace)
}

fn secret_rules(verbs: &[&str]) -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["secrets".into()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }]
}

/// Everything on one cluster, each scenario in its own namespace: a cluster
/// takes seconds to start, and this keeps one etcd + API server per binary.
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_secret_backend_on_a_real_api_server() {
    let started = Instant::now();
    let mut cluster = Cluster::start().await;
    println!("cluster ready in {:?}", started.elapsed());

    conformance_as_admin(&cluster).await;
    conformance_with_only_the_deploy_role(&cluster).await;
    missing_verb_is_permission_denied_naming_it(&cluster).await;
    two_processes_racing_have_one_winner(&cluster).await;
    size_limit_is_enforced_up_front(&cluster).await;
    app_secret_follows_the_latest_revision_and_is_cleaned_up(&cluster).await;
    foreign_or_disallowed_app_secret_is_refused_and_nothing_is_written(&cluster).await;
    layout_is_labelled_immutable_and_hashed(&cluster).await;
    legacy_layout_written_by_the_previous_version_is_still_served(&cluster).await;
    two_backends_racing_on_one_api_server_never_violate_the_fence(&cluster).await;
    retention_keeps_the_newest_revisions_and_removes_the_rest(&cluster).await;
    admin_lists_locks_and_force_unlocks_by_compare_and_set(&cluster).await;
    api_server_restart_is_unavailable_then_recovers(&mut cluster).await;
}

async fn conformance_as_admin(cluster: &Cluster) {
    let ns = cluster.create_namespace("conformance").await;
    let b = backend(with(cluster.env(), &[("APP_K8S_NAMESPACE", &ns)])).await;
    assert_clean(&conformance(&b.url).await, 40);
    testkit::registration::assert_manifests_match(&b.url, "kubernetes-secret").await;
}

async fn conformance_with_only_the_deploy_role(cluster: &Cluster) {
    let ns = cluster.create_namespace("rbac").await;
    cluster.apply(&deploy_rbac(&ns), &ns).await;
    let sa = cluster
        .service_account_identity(&ns, "kubernetes-secret-backend")
        .await;
    // No APP_K8S_NAMESPACE: the namespace comes from the kubeconfig.
    let b = backend(sa.env()).await;
    assert_clean(&conformance(&b.url).await, 40);
    // The app-facing Secret in the own namespace works with the same Role.
    create(
        &b,
        "rbac-app",
        b"v1",
        Some(r#"{"appSecret":{"name":"rbac-app","key":"v"}}"#),
    )
    .await
    .expect("create with an app secret as the deploy role");
}

async fn missing_verb_is_permission_denied_naming_it(cluster: &Cluster) {
    let ns = cluster.create_namespace("noupdate").await;
    let sa = cluster
        .identity(&ns, "no-update", secret_rules(&["get", "create", "delete"]))
        .await;
    let b = backend(sa.env()).await;
    // A create commits by updating the head: refused, and nothing visible.
    let s = create(&b, "t1", b"1", None)
        .await
        .expect_err("create needs update");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("'update'"), "{}", s.message());
    assert!(s.message().contains("secrets"), "{}", s.message());
    assert!(s.message().contains(&ns), "{}", s.message());
    assert_eq!(
        get(&b, "t1", 1).await.expect_err("never committed").code(),
        Code::NotFound
    );
}

async fn two_processes_racing_have_one_winner(cluster: &Cluster) {
    let ns = cluster.create_namespace("race").await;
    let env = with(cluster.env(), &[("APP_K8S_NAMESPACE", &ns)]);
    let a = backend(env.clone()).await;
    let b = backend(env).await;
    for round in 0..5 {
        let id = format!("race-{round}");
        create(&a, &id, b"0", None).await.expect("create");
        let (ra, rb) = tokio::join!(
            update(&a, &id, 2, b"from-a", None),
            update(&b, &id, 2, b"from-b", None)
        );
        let codes = [
            ra.as_ref().err().map(|s| s.code()),
            rb.as_ref().err().map(|s| s.code()),
        ];
        assert_eq!(
            codes.iter().filter(|c| c.is_none()).count(),
            1,
            "exactly one update wins: {ra:?} {rb:?}"
        );
        assert!(
            codes.contains(&Some(Code::AlreadyExists)) || codes.contains(&Some(Code::Aborted)),
            "{codes:?}"
        );
        let stored = get(&a, &id, 2).await.expect("revision 2");
        let winner: &[u8] = if ra.is_ok() { b"from-a" } else { b"from-b" };
        assert_eq!(stored, winner);

        let (la, lb) = tokio::join!(lock(&a, &id, "owner-a"), lock(&b, &id, "owner-b"));
        assert_eq!(
            [la.is_ok(), lb.is_ok()].iter().filter(|x| **x).count(),
            1,
            "exactly one lock wins: {la:?} {lb:?}"
        );
        let loser = la.err().or(lb.err()).expect("a loser");
        assert!(
            matches!(loser.code(), Code::FailedPrecondition | Code::Aborted),
            "{loser:?}"
        );
    }
}

async fn size_limit_is_enforced_up_front(cluster: &Cluster) {
    let ns = cluster.create_namespace("size").await;
    let b = backend(with(cluster.env(), &[("APP_K8S_NAMESPACE", &ns)])).await;
    let limit = (1 << 20) - "value".len();
    let s = create(&b, "big", &vec![b'x'; limit + 1], None)
        .await
        .expect_err("over the limit");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains(&limit.to_string()), "{}", s.message());
    assert_eq!(
        get(&b, "big", 1).await.expect_err("nothing").code(),
        Code::NotFound
    );
    let secrets: Api<Secret> = Api::namespaced(cluster.client().await, &ns);
    assert!(
        secrets
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .iter()
            .all(|s| s.metadata.labels.is_none()),
        "no Secret of ours after a rejected create"
    );
    // Exactly at the limit fits in one Secret.
    let value: Vec<u8> = (0..limit).map(|i| (i % 251) as u8).collect();
    create(&b, "big", &value, None).await.expect("at the limit");
    assert_eq!(get(&b, "big", 1).await.expect("read back"), value);
    // With an app secret the key counts too.
    let s = update(
        &b,
        "big",
        2,
        &value,
        Some(r#"{"appSecret":{"name":"big-app","key":"payload"}}"#),
    )
    .await
    .expect_err("app secret key makes it too big");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert_eq!(
        get(&b, "big", 2).await.expect_err("nothing").code(),
        Code::NotFound
    );
}

async fn app_secret(secrets: &Api<Secret>, name: &str, key: &str) -> Option<Vec<u8>> {
    secrets
        .get_opt(name)
        .await
        .expect("get app secret")
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove(key))
        .map(|b| b.0)
}

async fn app_secret_follows_the_latest_revision_and_is_cleaned_up(cluster: &Cluster) {
    let ns = cluster.create_namespace("app").await;
    let other = cluster.create_namespace("app-other").await;
    let b = backend(with(
        cluster.env(),
        &[
            ("APP_K8S_NAMESPACE", &ns),
            ("APP_K8S_APP_SECRET_NAMESPACES", &other),
        ],
    ))
    .await;
    let client = cluster.client().await;
    let own: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let theirs: Api<Secret> = Api::namespaced(client, &other);
    let ctx = format!(
        r#"{{"appSecret":{{"namespace":"{other}","name":"db-creds","key":"creds.json"}}}}"#
    );

    create(&b, "app-ti", br#"{"user":"a"}"#, Some(&ctx))
        .await
        .expect("create");
    assert_eq!(
        app_secret(&theirs, "db-creds", "creds.json")
            .await
            .as_deref(),
        Some(&br#"{"user":"a"}"#[..])
    );
    // The Hub sends `null` when the revision has no context of its own: the
    // app secret keeps following.
    update(&b, "app-ti", 2, br#"{"user":"b"}"#, Some("null"))
        .await
        .expect("update");
    assert_eq!(
        app_secret(&theirs, "db-creds", "creds.json")
            .await
            .as_deref(),
        Some(&br#"{"user":"b"}"#[..])
    );
    // Deleting the latest revision rolls the app secret back.
    b.client()
        .await
        .on_delete_revision(pb::OnDeleteRevisionValueAndContextRequest {
            type_instance_id: "app-ti".into(),
            context: None,
            owner_id: None,
            resource_version: 2,
        })
        .await
        .expect("delete revision 2");
    assert_eq!(
        app_secret(&theirs, "db-creds", "creds.json")
            .await
            .as_deref(),
        Some(&br#"{"user":"a"}"#[..])
    );
    // Moving it to the own namespace removes the old one.
    update(
        &b,
        "app-ti",
        3,
        b"three",
        Some(r#"{"appSecret":{"name":"moved","key":"k"}}"#),
    )
    .await
    .expect("update with a new target");
    assert_eq!(
        app_secret(&own, "moved", "k").await.as_deref(),
        Some(&b"three"[..])
    );
    assert!(theirs.get_opt("db-creds").await.expect("get").is_none());
    // OnDelete removes it with everything else.
    b.client()
        .await
        .on_delete(pb::OnDeleteValueAndContextRequest {
            type_instance_id: "app-ti".into(),
            context: None,
            owner_id: None,
        })
        .await
        .expect("delete");
    assert!(own.get_opt("moved").await.expect("get").is_none());
    let left = own
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=capact-storage"))
        .await
        .expect("list");
    assert!(left.items.is_empty(), "{} secrets left", left.items.len());
}

async fn foreign_or_disallowed_app_secret_is_refused_and_nothing_is_written(cluster: &Cluster) {
    let ns = cluster.create_namespace("foreign").await;
    let b = backend(with(cluster.env(), &[("APP_K8S_NAMESPACE", &ns)])).await;
    let own: Api<Secret> = Api::namespaced(cluster.client().await, &ns);
    own.create(
        &PostParams::default(),
        &Secret {
            metadata: ObjectMeta {
                name: Some("someone-elses".into()),
                ..Default::default()
            },
            string_data: Some([("k".to_string(), "theirs".to_string())].into()),
            ..Default::default()
        },
    )
    .await
    .expect("create a foreign secret");
    let s = create(
        &b,
        "f1",
        b"mine",
        Some(r#"{"appSecret":{"name":"someone-elses","key":"k"}}"#),
    )
    .await
    .expect_err("foreign");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert_eq!(
        get(&b, "f1", 1).await.expect_err("nothing").code(),
        Code::NotFound
    );
    assert_eq!(
        app_secret(&own, "someone-elses", "k").await.as_deref(),
        Some(&b"theirs"[..])
    );
    let s = create(
        &b,
        "f2",
        b"mine",
        Some(r#"{"appSecret":{"namespace":"kube-system","name":"x","key":"k"}}"#),
    )
    .await
    .expect_err("namespace not allowed");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("appSecret/namespace"),
        "{}",
        s.message()
    );
    assert_eq!(
        get(&b, "f2", 1).await.expect_err("nothing").code(),
        Code::NotFound
    );
    // Two TypeInstances cannot share one app secret.
    create(
        &b,
        "f3",
        b"a",
        Some(r#"{"appSecret":{"name":"shared","key":"k"}}"#),
    )
    .await
    .expect("first owner");
    let s = create(
        &b,
        "f4",
        b"b",
        Some(r#"{"appSecret":{"name":"shared","key":"k"}}"#),
    )
    .await
    .expect_err("second owner");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
}

async fn layout_is_labelled_immutable_and_hashed(cluster: &Cluster) {
    let ns = cluster.create_namespace("layout").await;
    let b = backend(with(cluster.env(), &[("APP_K8S_NAMESPACE", &ns)])).await;
    let id = format!("Upper.Case_{}", "x".repeat(100));
    create(&b, &id, b"\xff\x00 not utf-8", None)
        .await
        .expect("create");
    update(&b, &id, 2, b"two", None).await.expect("update");
    let own: Api<Secret> = Api::namespaced(cluster.client().await, &ns);
    let all = own
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=capact-storage"))
        .await
        .expect("list")
        .items;
    assert_eq!(all.len(), 3, "one head and two revisions");
    let mut life = None;
    let mut revision_lives = Vec::new();
    for s in &all {
        let name = s.metadata.name.clone().unwrap_or_default();
        // A Secret name is a DNS subdomain (at most 253 characters): prefix,
        // key (40), life (16) and revision stay far below.
        assert!(name.starts_with("capact-") && name.len() < 100, "{name}");
        let ann = s.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get("capact.io/type-instance-id"), Some(&id));
        let role = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("capact.io/role"))
            .cloned();
        match role.as_deref() {
            Some("head") => {
                let head: serde_json::Value = serde_json::from_str(
                    ann.get("capact.io/head").map(String::as_str).unwrap_or(""),
                )
                .expect("the head is JSON in one annotation");
                assert_eq!(head["latest"], 2, "{head}");
                assert_eq!(head["managed_by"], "capact-storage", "{head}");
                assert!(!ann.contains_key("capact.io/latest-revision"), "{ann:?}");
                life = head["life"].as_str().map(str::to_owned);
            }
            Some("revision") => {
                assert_eq!(s.immutable, Some(true), "{name}");
                assert!(name.ends_with("-r1") || name.ends_with("-r2"), "{name}");
                assert!(ann.contains_key("capact.io/epoch"), "{ann:?}");
                revision_lives.push(
                    s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("capact.io/life"))
                        .cloned(),
                );
            }
            other => panic!("unexpected role {other:?} on {name}"),
        }
    }
    // Both revisions live under the head's life, which names them.
    let life = life.expect("a life in the head");
    assert_eq!(revision_lives, vec![Some(life.clone()); 2]);
    for s in &all {
        let name = s.metadata.name.clone().unwrap_or_default();
        if name.ends_with("-r1") || name.ends_with("-r2") {
            assert!(name.contains(&format!("-{life}-r")), "{name}");
        }
    }
    assert_eq!(get(&b, &id, 1).await.expect("rev 1"), b"\xff\x00 not utf-8");
}

/// A Secret as the previous version (before the revision engine) wrote it
/// for `id`: its labels and annotations, and `data` if any.
fn legacy_secret(
    id: &str,
    name: &str,
    role: &str,
    type_: &str,
    extra_labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    data: Option<(&str, &[u8])>,
) -> Secret {
    let key = kubernetes_secret::secret_key(id);
    let labels = [
        ("app.kubernetes.io/managed-by", "capact-storage"),
        ("capact.io/type-instance-key", key.as_str()),
        ("capact.io/role", role),
    ]
    .iter()
    .chain(extra_labels)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let annotations = [("capact.io/type-instance-id", id)]
        .iter()
        .chain(annotations)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        type_: Some(type_.to_owned()),
        immutable: (role == "revision").then_some(true),
        data: data.map(|(k, v)| [(k.to_owned(), ByteString(v.to_vec()))].into()),
        ..Default::default()
    }
}

async fn legacy_layout_written_by_the_previous_version_is_still_served(cluster: &Cluster) {
    let ns = cluster.create_namespace("legacy").await;
    let own: Api<Secret> = Api::namespaced(cluster.client().await, &ns);
    let id = "Legacy.TI";
    let key = kubernetes_secret::secret_key(id);
    let head = format!("capact-{key}");
    let app_target = format!("{ns}/legacy-app/creds");
    let old = [
        legacy_secret(
            id,
            &head,
            "head",
            "capact.io/type-instance",
            &[],
            &[
                ("capact.io/latest-revision", "2"),
                ("capact.io/locked-by", "hub"),
                ("capact.io/app-secret", &app_target),
            ],
            None,
        ),
        legacy_secret(
            id,
            &format!("{head}-r1"),
            "revision",
            "capact.io/type-instance-revision",
            &[("capact.io/revision", "1")],
            &[("capact.io/revision", "1")],
            Some(("value", b"one")),
        ),
        legacy_secret(
            id,
            &format!("{head}-r2"),
            "revision",
            "capact.io/type-instance-revision",
            &[("capact.io/revision", "2")],
            &[("capact.io/revision", "2")],
            Some(("value", b"two")),
        ),
        legacy_secret(
            id,
            "legacy-app",
            "app",
            "Opaque",
            &[("capact.io/revision", "2")],
            &[("capact.io/revision", "2")],
            Some(("creds", b"two")),
        ),
    ];
    for s in &old {
        own.create(&PostParams::default(), s)
            .await
            .expect("create a secret in the previous layout");
    }
    let b = backend(with(cluster.env(), &[("APP_K8S_NAMESPACE", &ns)])).await;
    assert_eq!(get(&b, id, 1).await.expect("legacy revision 1"), b"one");
    assert_eq!(get(&b, id, 2).await.expect("legacy revision 2"), b"two");
    // The legacy lock holds.
    let locked_by = b
        .client()
        .await
        .get_locked_by(pb::GetLockedByRequest {
            type_instance_id: id.into(),
            context: Bytes::new(),
        })
        .await
        .expect("get locked by")
        .into_inner()
        .locked_by;
    assert_eq!(locked_by.as_deref(), Some("hub"));
    let s = update(&b, id, 3, b"three", None)
        .await
        .expect_err("locked by hub");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    b.client()
        .await
        .on_unlock(pb::OnUnlockRequest {
            type_instance_id: id.into(),
            context: Bytes::new(),
        })
        .await
        .expect("unlock");
    update(&b, id, 3, b"three", Some("null"))
        .await
        .expect("update a legacy TypeInstance");
    assert_eq!(get(&b, id, 3).await.expect("revision 3"), b"three");
    assert_eq!(get(&b, id, 1).await.expect("still revision 1"), b"one");
    // The legacy life keeps the legacy names; the app Secret follows.
    let r3 = own
        .get_opt(&format!("{head}-r3"))
        .await
        .expect("get -r3")
        .expect("revision 3 under the legacy name");
    assert_eq!(r3.immutable, Some(true));
    assert_eq!(
        app_secret(&own, "legacy-app", "creds").await.as_deref(),
        Some(&b"three"[..])
    );
    let h = own.get(&head).await.expect("head");
    let ann = h.metadata.annotations.unwrap_or_default();
    assert!(ann.contains_key("capact.io/head"), "{ann:?}");
    assert!(!ann.contains_key("capact.io/latest-revision"), "{ann:?}");

    b.client()
        .await
        .on_delete(pb::OnDeleteValueAndContextRequest {
            type_instance_id: id.into(),
            context: None,
            owner_id: None,
        })
        .await
        .expect("delete a legacy TypeInstance");
    assert_eq!(
        get(&b, id, 1).await.expect_err("deleted").code(),
        Code::NotFound
    );
    let left = own
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=capact-storage"))
        .await
        .expect("list");
    let names: Vec<_> = left.items.iter().map(|s| s.metadata.name.clone()).collect();
    assert!(names.is_empty(), "left behind: {names:?}");
}

async fn two_backends_racing_on_one_api_server_never_violate_the_fence(cluster: &Cluster) {
    let ns = cluster.create_namespace("fence").await;
    let env = with(cluster.env(), &[("APP_K8S_NAMESPACE", &ns)]);
    let a = backend(env.clone()).await;
    let b = backend(env).await;
    testkit::assert_races_clean(&a.url, &b.url, 200).await;
}

async fn retention_keeps_the_newest_revisions_and_removes_the_rest(cluster: &Cluster) {
    let ns = cluster.create_namespace("retention").await;
    let b = backend(with(
        cluster.env(),
        &[("APP_K8S_NAMESPACE", &ns), ("APP_MAX_REVISIONS", "3")],
    ))
    .await;
    testkit::assert_retention(&b.url, 3, None).await;
    let left = Api::<Secret>::namespaced(cluster.client().await, &ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=capact-storage"))
        .await
        .expect("list");
    assert!(left.items.is_empty(), "left behind: {}", left.items.len());
}

async fn admin_lists_locks_and_force_unlocks_by_compare_and_set(cluster: &Cluster) {
    let ns = cluster.create_namespace("admin").await;
    let admin = format!("127.0.0.1:{}", testkit::free_port());
    let b = backend(with(
        cluster.env(),
        &[("APP_K8S_NAMESPACE", &ns), ("APP_ADMIN_ADDR", &admin)],
    ))
    .await;
    testkit::assert_admin(&b.url, &format!("http://{admin}"), None, true).await;
}

async fn api_server_restart_is_unavailable_then_recovers(cluster: &mut Cluster) {
    let ns = cluster.create_namespace("restart").await;
    let mut b = backend(with(cluster.env(), &[("APP_K8S_NAMESPACE", &ns)])).await;
    create(&b, "r1", b"before", None).await.expect("create");
    cluster.stop_apiserver();
    let s = get(&b, "r1", 1).await.expect_err("api server down");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    let s = update(&b, "r1", 2, b"during", None)
        .await
        .expect_err("down");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    b.wait_health(ServingStatus::NotServing).await;
    let t = Instant::now();
    cluster.start_apiserver().await;
    println!("api server restarted in {:?}", t.elapsed());
    b.wait_health(ServingStatus::Serving).await;
    assert_eq!(get(&b, "r1", 1).await.expect("after restart"), b"before");
    update(&b, "r1", 2, b"after", None)
        .await
        .expect("update after restart");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(get(&b, "r1", 2).await.expect("rev 2"), b"after");
}
