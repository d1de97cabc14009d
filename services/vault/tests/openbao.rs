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

/// Every log line, the SDK's own included (naming vaultrs and rustify keeps
/// them in the capture: they are silenced unless named).
const TRACE_ALL: &str = "trace,vaultrs=trace,rustify=trace";

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

async fn lock(b: &BackendProcess, id: &str, owner: &str) -> Result<(), tonic::Status> {
    b.client()
        .await
        .on_lock(pb::OnLockRequest {
            type_instance_id: id.into(),
            context: Bytes::new(),
            locked_by: owner.into(),
        })
        .await
        .map(|_| ())
}

async fn locked_by(b: &BackendProcess, id: &str) -> Result<Option<String>, tonic::Status> {
    b.client()
        .await
        .get_locked_by(pb::GetLockedByRequest {
            type_instance_id: id.into(),
            context: Bytes::new(),
        })
        .await
        .map(|r| r.into_inner().locked_by)
}

/// Create, get, update, get, lock and read the lock of `id`: the smoke set
/// of calls a login method must carry.
async fn smoke(b: &BackendProcess, id: &str) {
    let fail = |what: &str, s: tonic::Status| -> ! {
        panic!("{what} {id}: {s:?}\n{}", b.logs());
    };
    create(b, id, b"1")
        .await
        .unwrap_or_else(|s| fail("create", s));
    assert_eq!(get(b, id, 1).await.unwrap_or_else(|s| fail("get", s)), b"1");
    update(b, id, 2, b"2")
        .await
        .unwrap_or_else(|s| fail("update", s));
    assert_eq!(get(b, id, 2).await.unwrap_or_else(|s| fail("get", s)), b"2");
    lock(b, id, "owner-a")
        .await
        .unwrap_or_else(|s| fail("lock", s));
    assert_eq!(
        locked_by(b, id)
            .await
            .unwrap_or_else(|s| fail("get locked by", s))
            .as_deref(),
        Some("owner-a")
    );
}

/// Creates `id`, then updates it every 500 ms for `length`: with tokens
/// shorter than that, every update after the first TTL needs a new login.
async fn keep_updating(b: &BackendProcess, id: &str, length: Duration) {
    create(b, id, b"1")
        .await
        .unwrap_or_else(|s| panic!("create {id}: {s:?}\n{}", b.logs()));
    let start = Instant::now();
    let mut rev = 1;
    while start.elapsed() < length {
        rev += 1;
        update(b, id, rev, rev.to_string().as_bytes())
            .await
            .unwrap_or_else(|s| {
                panic!(
                    "update {rev} after {:?}: {s:?}\n{}",
                    start.elapsed(),
                    b.logs()
                )
            });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        get(b, id, rev).await.expect("get the last revision"),
        rev.to_string().as_bytes()
    );
}

/// How many logins the backend's log shows (it needs `vault=debug`).
fn logins(b: &BackendProcess) -> usize {
    b.logs().matches("logged in to vault").count()
}

/// A policy `capact` allowing everything the backend does on `mount`.
fn write_capact_policy(bao: &Bao, mount: &str) {
    bao.cli_input(
        &["policy", "write", "capact", "-"],
        Some(&format!(
            r#"path "{mount}/*" {{ capabilities = ["create", "read", "update", "delete", "list"] }}"#
        )),
    )
    .expect("policy write");
}

/// The base64 body of a PEM file (its key material), one line per entry.
fn pem_body_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read pem")
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_owned)
        .collect()
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
    env.push(("APP_LOG_LEVEL", TRACE_ALL.into()));
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
    testkit::assert_admin(&backend.url, &format!("http://{admin}"), None, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_backends_racing_on_one_openbao_never_violate_the_fence() {
    let bao = Bao::start();
    let a = start_backend(&root_env(&bao)).serving().await;
    let b = start_backend(&root_env(&bao)).serving().await;
    testkit::assert_races_clean(&a.url, &b.url, 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_login_with_a_rotating_token_file_passes_the_suite() {
    let bao = Bao::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path();
    support::make_rsa_key(keys, "first");
    support::make_rsa_key(keys, "second");
    bao.must(&["auth", "enable", "jwt"]);
    let trust_only = |key: &str| {
        let public = keys.join(format!("{key}.pub"));
        bao.must(&[
            "write",
            "auth/jwt/config",
            &format!("jwt_validation_pubkeys=@{}", path_str(&public)),
        ]);
    };
    trust_only("first");
    write_capact_policy(&bao, "secret");
    // Tokens that cannot outlive 3 s: the backend must log in again, often.
    bao.must(&[
        "write",
        "auth/jwt/role/capact",
        "role_type=jwt",
        "bound_audiences=capact-storage",
        "user_claim=sub",
        "token_policies=capact",
        "token_ttl=3s",
        "token_max_ttl=3s",
    ]);
    let first = support::sign_jwt(keys, "first", &support::jwt_claims("first"));
    let file = keys.join("jwt");
    std::fs::write(&file, &first).expect("write the jwt");

    let backend = start_backend(&[
        ("VAULT_ADDR", bao.addr()),
        ("APP_VAULT_JWT_ROLE", "capact".into()),
        ("APP_VAULT_JWT_FILE", path_str(&file).to_owned()),
        ("APP_LOG_LEVEL", "info,vault=debug".into()),
    ])
    .serving()
    .await;
    smoke(&backend, "jwt-smoke").await;

    // The issuer rotates: a new JWT signed with a new key replaces the
    // file, and OpenBao trusts only the new key. The first JWT cannot log
    // in any more, and its tokens expire within 3 s: every update after
    // that works only because a login read the file again.
    let second = support::sign_jwt(keys, "second", &support::jwt_claims("second"));
    support::replace_file(&file, &second);
    trust_only("second");
    let before = logins(&backend);
    keep_updating(&backend, "jwt-rotation", Duration::from_secs(7)).await;
    let after = logins(&backend);
    assert!(
        after >= before + 2,
        "{} logins in 7 s after the rotation with 3 s tokens",
        after - before
    );

    assert_clean(&conformance(&backend.url).await, 40);
    let logs = backend.logs();
    for (what, jwt) in [("first", &first), ("second", &second)] {
        let signature = jwt.rsplit('.').next().unwrap_or_default();
        assert!(
            !logs.contains(jwt.as_str()) && !logs.contains(signature),
            "the {what} JWT appears in the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cert_login_presents_the_client_certificate_and_logs_in_again_on_expiry() {
    // `-dev-tls` listeners ask for (and do not require) a client certificate.
    let bao = Bao::start_tls();
    let dev_ca = bao.ca_cert().expect("tls dev server writes a CA");
    let dir = tempfile::tempdir().expect("tempdir");
    support::make_certs(dir.path());
    let (ca, cert, key) = (
        dir.path().join("ca.crt"),
        dir.path().join("client.crt"),
        dir.path().join("client.key"),
    );
    bao.must(&["auth", "enable", "cert"]);
    write_capact_policy(&bao, "secret");
    bao.must(&[
        "write",
        "auth/cert/certs/capact",
        &format!("certificate=@{}", path_str(&ca)),
        "token_policies=capact",
        "token_ttl=3s",
        "token_max_ttl=3s",
    ]);
    let env = |role: Option<&str>| {
        let mut env = vec![
            ("VAULT_ADDR", bao.addr()),
            ("VAULT_CACERT", path_str(&dev_ca).to_owned()),
            ("APP_VAULT_CERT_CLIENT_CERT", path_str(&cert).to_owned()),
            ("APP_VAULT_CERT_CLIENT_KEY", path_str(&key).to_owned()),
            ("APP_LOG_LEVEL", TRACE_ALL.into()),
        ];
        if let Some(role) = role {
            env.push(("APP_VAULT_CERT_ROLE", role.to_owned()));
        }
        env
    };

    // A role that does not exist is refused: the role's name reaches
    // OpenBao (vaultrs' own cert login sends it under a name OpenBao ignores).
    let mut wrong = start_backend(&env(Some("no-such-role")));
    let (code, log) = wrong.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("vault refused the cert login at auth/cert"),
        "{log}"
    );

    let backend = start_backend(&env(Some("capact"))).serving().await;
    smoke(&backend, "cert-smoke").await;
    keep_updating(&backend, "cert-expiry", Duration::from_secs(5)).await;
    assert!(logins(&backend) >= 2, "{}", backend.logs());
    // Without a role OpenBao picks the one whose CA matches.
    let any_role = start_backend(&env(None)).serving().await;
    create(&any_role, "cert-any-role", b"x")
        .await
        .unwrap_or_else(|s| panic!("create: {s:?}\n{}", any_role.logs()));

    let logs = backend.logs() + &any_role.logs();
    // The capture covers the login requests themselves.
    assert!(logs.contains("auth/cert/login"), "{logs}");
    for line in pem_body_lines(&key) {
        assert!(
            !logs.contains(&line),
            "client key material appears in the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn userpass_login_reads_the_password_file_and_logs_in_again_on_expiry() {
    let bao = Bao::start();
    bao.must(&["auth", "enable", "userpass"]);
    write_capact_policy(&bao, "secret");
    let password = "pw-that-must-not-be-logged-5d1e";
    bao.must(&[
        "write",
        "auth/userpass/users/capact-dev",
        &format!("password={password}"),
        "token_policies=capact",
        "token_ttl=3s",
        "token_max_ttl=3s",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{password}\n")).expect("write the password");

    let backend = start_backend(&[
        ("VAULT_ADDR", bao.addr()),
        ("APP_VAULT_USERPASS_USERNAME", "capact-dev".into()),
        (
            "APP_VAULT_USERPASS_PASSWORD_FILE",
            path_str(&file).to_owned(),
        ),
        ("APP_LOG_LEVEL", TRACE_ALL.into()),
    ])
    .serving()
    .await;
    smoke(&backend, "userpass-smoke").await;
    keep_updating(&backend, "userpass-expiry", Duration::from_secs(5)).await;
    assert!(logins(&backend) >= 2, "{}", backend.logs());

    // The password may also come from the (secret) environment variable.
    let from_env = start_backend(&[
        ("VAULT_ADDR", bao.addr()),
        ("APP_VAULT_USERPASS_USERNAME", "capact-dev".into()),
        ("APP_VAULT_USERPASS_PASSWORD", password.into()),
        ("APP_LOG_LEVEL", TRACE_ALL.into()),
    ])
    .serving()
    .await;
    create(&from_env, "userpass-env", b"x")
        .await
        .unwrap_or_else(|s| panic!("create: {s:?}\n{}", from_env.logs()));

    let logs = backend.logs() + &from_env.logs();
    // The capture covers the login requests themselves.
    assert!(logs.contains("auth/userpass/login/capact-dev"), "{logs}");
    assert!(!logs.contains(password), "the password appears in the logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn incomplete_or_conflicting_login_settings_stop_the_backend_at_start_naming_the_variables() {
    let (password, token) = ("pw-in-a-bad-config-77a0", "hvs.token-in-a-bad-config");
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("APP_VAULT_JWT_ROLE", "capact")],
            "APP_VAULT_JWT_ROLE needs APP_VAULT_JWT_FILE",
        ),
        (
            &[
                ("APP_VAULT_APPROLE_ROLE_ID", "role"),
                ("APP_VAULT_APPROLE_SECRET_ID", password),
                ("APP_VAULT_USERPASS_USERNAME", "dev"),
                ("APP_VAULT_USERPASS_PASSWORD", password),
            ],
            "more than one vault login method is configured (APP_VAULT_APPROLE_ROLE_ID, APP_VAULT_USERPASS_USERNAME)",
        ),
        (
            &[
                ("VAULT_TOKEN", token),
                ("APP_VAULT_CERT_CLIENT_CERT", "/nonexistent/client.crt"),
                ("APP_VAULT_CERT_CLIENT_KEY", "/nonexistent/client.key"),
            ],
            "VAULT_TOKEN/VAULT_TOKEN_FILE and the cert login (APP_VAULT_CERT_CLIENT_CERT) are both set",
        ),
    ];
    for (env, expected) in cases {
        // No OpenBao: the settings are refused before any connection.
        let mut backend = support::start_backend(env);
        let (code, log) = backend.wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(2), "{env:?}: {log}");
        assert!(log.contains(expected), "{env:?}: {log}");
        assert!(!log.contains(password) && !log.contains(token), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kv2_mount_with_cas_required_passes_the_conformance_suite_and_the_races() {
    let bao = Bao::start();
    bao.must(&["secrets", "enable", "-path=casreq", "-version=2", "kv"]);
    bao.must(&["write", "casreq/config", "cas_required=true"]);
    // The setting is in force: a write without cas is refused.
    let unconditional = bao.cli(&["kv", "put", "casreq/probe", "a=1"]);
    assert!(
        unconditional
            .as_ref()
            .is_err_and(|e| e.contains("check-and-set")),
        "{unconditional:?}"
    );
    let mut env = root_env(&bao);
    env.push(("APP_VAULT_MOUNT", "casreq".into()));
    let a = start_backend(&env).serving().await;
    let b = start_backend(&env).serving().await;
    assert_clean(&conformance(&a.url).await, 40);
    testkit::assert_races_clean(&a.url, &b.url, 200).await;
}
