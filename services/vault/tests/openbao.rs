//! The backend binary against a real OpenBao dev server: the conformance
//! suite on KV v2, KV v1 and over TLS, every login method we can run here,
//! token renewal, a denying policy, an outage, what the logs contain, data
//! in the layout of the previous version, and two processes racing.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value as Json, json};
use shared::proto::storage_backend as pb;
use support::{BackendProcess, Bao, ROOT_TOKEN, path_str};
use testkit::{assert_clean, conformance};
use tonic::Code;

fn root_env(bao: &Bao) -> Vec<(&'static str, String)> {
    vec![
        ("VAULT_ADDR", bao.addr()),
        ("VAULT_TOKEN", ROOT_TOKEN.to_owned()),
    ]
}

fn start_backend(env: &[(&'static str, String)]) -> BackendProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    support::start_backend(&env)
}

async fn create(b: &BackendProcess, id: &str, value: &[u8]) -> Result<(), tonic::Status> {
    b.client()
        .await
        .on_create(pb::OnCreateValueAndContextRequest {
            type_instance_id: id.into(),
            value: Bytes::copy_from_slice(value),
            context: None,
        })
        .await
        .map(|_| ())
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

async fn update(b: &BackendProcess, id: &str, rev: u32, value: &[u8]) -> Result<(), tonic::Status> {
    b.client()
        .await
        .on_update(pb::OnUpdateValueAndContextRequest {
            type_instance_id: id.into(),
            new_resource_version: rev,
            new_value: Bytes::copy_from_slice(value),
            context: None,
            owner_id: None,
        })
        .await
        .map(|_| ())
}

async fn delete(b: &BackendProcess, id: &str) -> Result<(), tonic::Status> {
    b.client()
        .await
        .on_delete(pb::OnDeleteValueAndContextRequest {
            type_instance_id: id.into(),
            context: None,
            owner_id: None,
        })
        .await
        .map(|_| ())
}

/// A vaultrs client with the root token, to read and write behind the
/// backend's back.
fn root_client(bao: &Bao) -> vaultrs::client::VaultClient {
    // reqwest is built without a crypto provider (see vault::build).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = vaultrs::client::VaultClientSettingsBuilder::default()
        .address(bao.addr())
        .token(ROOT_TOKEN)
        .build()
        .expect("vault client settings");
    vaultrs::client::VaultClient::new(settings).expect("vault client")
}

fn object(value: Json) -> Map<String, Json> {
    match value {
        Json::Object(m) => m,
        other => panic!("not a JSON object: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kv2_backend_passes_the_conformance_suite() {
    let bao = Bao::start();
    let backend = start_backend(&root_env(&bao)).serving().await;
    assert_clean(&conformance(&backend.url).await, 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_manifests_match_the_running_backend() {
    let bao = Bao::start();
    let backend = start_backend(&root_env(&bao)).serving().await;
    testkit::registration::assert_manifests_match(&backend.url, "vault").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kv1_backend_passes_the_conformance_suite() {
    let bao = Bao::start();
    bao.must(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    let mut env = root_env(&bao);
    env.push(("APP_VAULT_MOUNT", "kv1".into()));
    env.push(("APP_VAULT_KV_VERSION", "1".into()));
    let backend = start_backend(&env).serving().await;
    assert_clean(&conformance(&backend.url).await, 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_to_openbao_with_a_custom_ca_passes_the_conformance_suite() {
    let bao = Bao::start_tls();
    let ca = bao.ca_cert().expect("tls dev server writes a CA");
    let mut env = root_env(&bao);
    env.push(("VAULT_CACERT", path_str(&ca).to_owned()));
    let backend = start_backend(&env).serving().await;
    assert_clean(&conformance(&backend.url).await, 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn approle_login_serves_requests() {
    let bao = Bao::start();
    bao.must(&["auth", "enable", "approle"]);
    bao.cli_input(
        &["policy", "write", "capact", "-"],
        Some(
            r#"path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }"#,
        ),
    )
    .expect("policy write");
    bao.must(&[
        "write",
        "auth/approle/role/capact",
        "token_policies=capact",
        "token_ttl=1h",
    ]);
    let role_id = bao.must(&["read", "-field=role_id", "auth/approle/role/capact/role-id"]);
    let secret_id = bao.must(&[
        "write",
        "-f",
        "-field=secret_id",
        "auth/approle/role/capact/secret-id",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("secret-id");
    std::fs::write(&secret_file, &secret_id).expect("write secret id");

    let backend = start_backend(&[
        ("VAULT_ADDR", bao.addr()),
        ("APP_VAULT_APPROLE_ROLE_ID", role_id),
        (
            "APP_VAULT_APPROLE_SECRET_ID_FILE",
            path_str(&secret_file).to_owned(),
        ),
    ])
    .serving()
    .await;
    create(&backend, "approle-1", b"{\"a\":1}")
        .await
        .expect("create");
    assert_eq!(
        get(&backend, "approle-1", 1).await.expect("get"),
        b"{\"a\":1}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn short_ttl_token_is_renewed_and_keeps_working() {
    let bao = Bao::start();
    // Renewable, 3 s at a time, for up to a minute: without renewal it
    // expires long before the loop below ends.
    let token = bao.must(&[
        "token",
        "create",
        "-policy=root",
        "-ttl=3s",
        "-explicit-max-ttl=60s",
        "-renewable=true",
        "-field=token",
    ]);
    let backend = start_backend(&[("VAULT_ADDR", bao.addr()), ("VAULT_TOKEN", token)])
        .serving()
        .await;
    create(&backend, "renewed", b"1").await.expect("create");
    let start = Instant::now();
    let mut rev = 1;
    while start.elapsed() < Duration::from_secs(9) {
        rev += 1;
        update(&backend, "renewed", rev, rev.to_string().as_bytes())
            .await
            .unwrap_or_else(|s| {
                panic!(
                    "update {rev} after {:?}: {s:?}\n{}",
                    start.elapsed(),
                    backend.logs()
                )
            });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        get(&backend, "renewed", rev).await.expect("get"),
        rev.to_string().as_bytes()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_denying_our_path_gives_permission_denied_naming_the_path() {
    let bao = Bao::start();
    bao.cli_input(
        &["policy", "write", "elsewhere", "-"],
        Some(r#"path "secret/data/elsewhere/*" { capabilities = ["create", "read", "update"] }"#),
    )
    .expect("policy write");
    let token = bao.must(&["token", "create", "-policy=elsewhere", "-field=token"]);
    let backend = start_backend(&[("VAULT_ADDR", bao.addr()), ("VAULT_TOKEN", token.clone())])
        .serving()
        .await;
    let status = create(&backend, "denied-1", b"x")
        .await
        .expect_err("create must be denied");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("secret/capact/denied-1"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(&token));
}

#[tokio::test(flavor = "multi_thread")]
async fn openbao_stopped_mid_run_gives_unavailable_then_recovers_after_restart() {
    let mut bao = Bao::start();
    let port = bao.port;
    let mut backend = start_backend(&root_env(&bao)).serving().await;
    create(&backend, "outage-1", b"before")
        .await
        .expect("create");

    bao.process.stop();
    let status = get(&backend, "outage-1", 1)
        .await
        .expect_err("store is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    backend
        .wait_health(tonic_health::pb::health_check_response::ServingStatus::NotServing)
        .await;

    // Same port and root token; dev mode starts empty, which is fine here.
    let _bao = Bao::start_on(port, false);
    backend
        .wait_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    create(&backend, "outage-2", b"after")
        .await
        .expect("create after restart");
    assert_eq!(get(&backend, "outage-2", 1).await.expect("get"), b"after");
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_logs_contain_neither_the_token_nor_a_value() {
    let bao = Bao::start();
    let token = bao.must(&["token", "create", "-policy=root", "-field=token"]);
    let mut env = vec![("VAULT_ADDR", bao.addr()), ("VAULT_TOKEN", token.clone())];
    // Naming vaultrs keeps the SDK's own logs in the capture too.
    env.push(("APP_LOG_LEVEL", "trace,vaultrs=trace".into()));
    let backend = start_backend(&env).serving().await;
    let value = b"value-that-must-not-be-logged-91c2";
    create(&backend, "logged-1", value).await.expect("create");
    update(&backend, "logged-1", 2, value)
        .await
        .expect("update");
    assert_eq!(get(&backend, "logged-1", 2).await.expect("get"), value);
    let _ = create(&backend, "logged-1", b"other").await;
    let logs = backend.logs();
    assert!(
        logs.len() > 1000,
        "trace logging produced almost nothing:\n{logs}"
    );
    assert!(!logs.contains(&token), "the token appears in the logs");
    assert!(!logs.contains(ROOT_TOKEN));
    assert!(
        !logs.contains("value-that-must-not-be-logged"),
        "the value appears in the logs"
    );
    // The store keeps values base64-encoded: that form must not leak either.
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(value);
    assert!(
        !logs.contains(&encoded[..24]),
        "the base64 form of the value appears in the logs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_backend_passes_the_conformance_suite_and_writes_inside_the_namespace() {
    let bao = Bao::start();
    bao.must(&["namespace", "create", "team-a"]);
    bao.must(&[
        "secrets",
        "enable",
        "-namespace=team-a",
        "-path=secret",
        "kv-v2",
    ]);
    let mut env = root_env(&bao);
    env.push(("VAULT_NAMESPACE", "team-a".into()));
    let backend = start_backend(&env).serving().await;
    assert_clean(&conformance(&backend.url).await, 40);
    create(&backend, "in-namespace", b"ns")
        .await
        .expect("create");

    let inside = bao.must(&[
        "kv",
        "list",
        "-namespace=team-a",
        "-format=json",
        "secret/capact",
    ]);
    assert!(inside.contains("in-namespace/"), "{inside}");
    // The root namespace's own secret/ mount stays untouched.
    let root = bao.cli(&["kv", "list", "-format=json", "secret/capact"]);
    assert!(
        !root.as_deref().unwrap_or_default().contains("in-namespace"),
        "{root:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificate_is_needed_and_with_it_the_conformance_suite_passes() {
    let bao = support::MtlsBao::start();
    let ca = path_str(&bao.file("ca.crt")).to_owned();
    let base = vec![
        ("VAULT_ADDR", bao.addr()),
        ("VAULT_TOKEN", bao.root_token.clone()),
        ("VAULT_CACERT", ca),
    ];

    // Without the certificate the TLS handshake fails: the backend cannot
    // reach Vault and refuses to start (UNAVAILABLE at login).
    let mut without = start_backend(&base);
    let (code, log) = without.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("cannot be reached"), "{log}");

    let mut env = base.clone();
    env.push((
        "VAULT_CLIENT_CERT",
        path_str(&bao.file("client.crt")).to_owned(),
    ));
    env.push((
        "VAULT_CLIENT_KEY",
        path_str(&bao.file("client.key")).to_owned(),
    ));
    let backend = start_backend(&env).serving().await;
    assert_clean(&conformance(&backend.url).await, 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn replaced_token_file_is_picked_up_after_the_old_token_is_revoked() {
    let bao = Bao::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    let first = bao.must(&["token", "create", "-policy=root", "-field=token"]);
    std::fs::write(&file, &first).expect("write token file");
    let mut backend = start_backend(&[
        ("VAULT_ADDR", bao.addr()),
        ("VAULT_TOKEN_FILE", path_str(&file).to_owned()),
        ("APP_VAULT_TOKEN_FILE_POLL", "1s".into()),
    ])
    .serving()
    .await;
    create(&backend, "rotated", b"1").await.expect("create");

    // Replace the file (as a Vault Agent does: write aside, rename), then
    // revoke the old token so that only the new one works.
    let second = bao.must(&["token", "create", "-policy=root", "-field=token"]);
    let aside = dir.path().join("token.new");
    std::fs::write(&aside, &second).expect("write new token");
    std::fs::rename(&aside, &file).expect("replace token file");
    bao.must(&["token", "revoke", &first]);

    // At once (a 403 makes the backend re-read the file) ...
    update(&backend, "rotated", 2, b"2")
        .await
        .unwrap_or_else(|s| panic!("update right after rotation: {s:?}\n{}", backend.logs()));
    // ... and after the poll interval, when the health probe has used it too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    backend
        .wait_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    update(&backend, "rotated", 3, b"3").await.expect("update");
    assert_eq!(get(&backend, "rotated", 3).await.expect("get"), b"3");
    assert!(!backend.logs().contains(&second));
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_login_passes_the_conformance_suite_and_logs_in_again_on_expiry() {
    let cluster = testkit::kube::Cluster::start().await;
    let ns = cluster.create_namespace("vault").await;
    // OpenBao checks service-account JWTs with a TokenReview, as this reviewer.
    let reviewer = cluster
        .service_account_identity(&ns, "vault-reviewer")
        .await;
    cluster
        .apply(
            &format!(
                r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: vault-reviewer-{ns}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:auth-delegator
subjects:
- kind: ServiceAccount
  name: vault-reviewer
  namespace: {ns}
"#
            ),
            &ns,
        )
        .await;
    let app = cluster
        .service_account_identity(&ns, "capact-backend")
        .await;

    let bao = Bao::start();
    bao.must(&["auth", "enable", "kubernetes"]);
    let ca = format!("kubernetes_ca_cert=@{}", path_str(&cluster.ca_path()));
    bao.must(&[
        "write",
        "auth/kubernetes/config",
        &format!("kubernetes_host={}", cluster.server_url()),
        &ca,
        "disable_local_ca_jwt=true",
        &format!("token_reviewer_jwt={}", reviewer.token),
    ]);
    bao.cli_input(
        &["policy", "write", "capact", "-"],
        Some(
            r#"path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }"#,
        ),
    )
    .expect("policy write");
    // Tokens that cannot outlive 4 s: the backend must log in again, often.
    bao.must(&[
        "write",
        "auth/kubernetes/role/capact",
        "bound_service_account_names=capact-backend",
        &format!("bound_service_account_namespaces={ns}"),
        "token_policies=capact",
        "token_ttl=4s",
        "token_max_ttl=4s",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let jwt = dir.path().join("token");
    std::fs::write(&jwt, &app.token).expect("write jwt");

    let backend = start_backend(&[
        ("VAULT_ADDR", bao.addr()),
        ("APP_VAULT_K8S_ROLE", "capact".into()),
        ("APP_VAULT_K8S_JWT_FILE", path_str(&jwt).to_owned()),
        ("APP_LOG_LEVEL", "info,vault=debug".into()),
    ])
    .serving()
    .await;
    assert_clean(&conformance(&backend.url).await, 40);

    create(&backend, "k8s-relogin", b"1").await.expect("create");
    let start = Instant::now();
    let mut rev = 1;
    while start.elapsed() < Duration::from_secs(10) {
        rev += 1;
        update(&backend, "k8s-relogin", rev, rev.to_string().as_bytes())
            .await
            .unwrap_or_else(|s| {
                panic!(
                    "update {rev} after {:?}: {s:?}\n{}",
                    start.elapsed(),
                    backend.logs()
                )
            });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Tokens live 4 s at most, so the run above needed several logins.
    let logins = backend.logs().matches("logged in to vault").count();
    assert!(logins >= 3, "only {logins} kubernetes logins in 10 s");
    assert!(!backend.logs().contains(&app.token));
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_layout_written_by_the_previous_version_is_still_served() {
    let bao = Bao::start();
    let client = root_client(&bao);
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    // Exactly what the version before the revision engine wrote: a head
    // without life or epoch, and revisions under `rev/` without an epoch.
    let secrets = [
        (
            "capact/legacy-1/meta",
            json!({"managed_by": "capact-storage", "latest": 2, "lock": null, "deleting": false}),
        ),
        (
            "capact/legacy-1/rev/1",
            json!({"managed_by": "capact-storage", "value": b64(b"\"one\"")}),
        ),
        (
            "capact/legacy-1/rev/2",
            json!({"managed_by": "capact-storage", "value": b64(b"\"two\"")}),
        ),
    ];
    for (path, data) in secrets {
        vaultrs::kv2::set(&client, "secret", path, &object(data))
            .await
            .unwrap_or_else(|e| panic!("write {path}: {e}"));
    }
    let backend = start_backend(&root_env(&bao)).serving().await;

    assert_eq!(
        get(&backend, "legacy-1", 1).await.expect("get 1"),
        b"\"one\""
    );
    assert_eq!(
        get(&backend, "legacy-1", 2).await.expect("get 2"),
        b"\"two\""
    );
    let missing = get(&backend, "legacy-1", 3)
        .await
        .expect_err("no revision 3 yet");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert_eq!(
        missing.message(),
        "TypeInstance \"legacy-1\" in revision 3 was not found"
    );

    update(&backend, "legacy-1", 3, b"\"three\"")
        .await
        .unwrap_or_else(|s| panic!("update to 3: {s:?}\n{}", backend.logs()));
    assert_eq!(
        get(&backend, "legacy-1", 3).await.expect("get 3"),
        b"\"three\""
    );
    assert_eq!(
        get(&backend, "legacy-1", 1).await.expect("get 1 again"),
        b"\"one\""
    );
    // The head still has no life, so revision 3 joined the old folder.
    let keys = vaultrs::kv2::list(&client, "secret", "capact/legacy-1/rev")
        .await
        .expect("list rev/");
    assert!(keys.contains(&"3".to_owned()), "{keys:?}");

    delete(&backend, "legacy-1")
        .await
        .unwrap_or_else(|s| panic!("delete: {s:?}\n{}", backend.logs()));
    for rev in 1..=3 {
        let status = get(&backend, "legacy-1", rev).await.expect_err("deleted");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    let status = delete(&backend, "legacy-1").await.expect_err("deleted");
    assert_eq!(status.message(), "TypeInstance \"legacy-1\" was not found");
    // The revisions are gone for good, metadata included; only the head
    // stays, marked deleted (README: KV versions restart after a delete).
    let left = vaultrs::kv2::list(&client, "secret", "capact/legacy-1").await;
    assert_eq!(
        left.as_ref().ok().map(Vec::as_slice),
        Some(&["meta".to_owned()][..]),
        "left behind: {left:?}"
    );
    // And the id can be created again at once.
    create(&backend, "legacy-1", b"again")
        .await
        .unwrap_or_else(|s| panic!("create again: {s:?}\n{}", backend.logs()));
    assert_eq!(get(&backend, "legacy-1", 1).await.expect("read"), b"again");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_newest_revisions() {
    let bao = Bao::start();
    let mut env = root_env(&bao);
    env.push(("APP_MAX_REVISIONS", "3".to_owned()));
    let backend = start_backend(&env).serving().await;
    testkit::assert_retention(&backend.url, 3, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_lists_locks_and_force_unlocks_by_compare_and_set() {
    let bao = Bao::start();
    let admin = format!("127.0.0.1:{}", testkit::free_port());
    let mut env = root_env(&bao);
    env.push(("APP_ADMIN_ADDR", admin.clone()));
    let backend = start_backend(&env).serving().await;
    testkit::assert_admin(&backend.url, &format!("http://{admin}"), None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_backends_racing_on_one_openbao_never_violate_the_fence() {
    let bao = Bao::start();
    let a = start_backend(&root_env(&bao)).serving().await;
    let b = start_backend(&root_env(&bao)).serving().await;
    testkit::assert_races_clean(&a.url, &b.url, 200).await;
}
