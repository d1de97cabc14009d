//! The optional Flux output (context `fluxSecret`): a SOPS-encrypted
//! Kubernetes Secret manifest beside the revisions, decrypted by the real
//! `sops` and checked by a real kube-apiserver (server-side dry run).

mod support;

use std::{path::Path, process::Command};

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::PostParams};
use serde_json::json;
use serde_yaml::Value as Yaml;
use support::{age_keygen, bare_repo, git, sops_bin, start_backend, ti_dir};

/// The manifest as a fresh clone of the remote sees it, if present.
fn manifest(dir: &Path, remote: &str, file: &str) -> Option<String> {
    let checkout = dir.join("checkout");
    let _ = std::fs::remove_dir_all(&checkout);
    git(dir, &["clone", "-q", "-b", "main", remote, "checkout"]);
    std::fs::read_to_string(checkout.join("flux-secrets").join(file)).ok()
}

/// `sops -d` of a manifest, parsed.
fn decrypt(dir: &Path, key_file: &Path, doc: &str) -> Yaml {
    let path = dir.join("secret.sops.yaml");
    std::fs::write(&path, doc).expect("write");
    let out = Command::new(sops_bin())
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .env("SOPS_AGE_KEY_FILE", key_file)
        .args(["-d", "--input-type", "yaml", "--output-type", "yaml"])
        .arg(&path)
        .output()
        .expect("sops runs");
    assert!(
        out.status.success(),
        "sops -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::from_slice(&out.stdout).expect("decrypted YAML")
}

fn data_value(secret: &Yaml, key: &str) -> Vec<u8> {
    let b64 = secret["data"][key].as_str().expect("data.<key> string");
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64")
}

#[tokio::test(flavor = "multi_thread")]
async fn flux_secret_manifest_follows_the_latest_revision_and_is_a_valid_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let (key_file, _) = age_keygen(dir.path());
    let backend = start_backend(
        &dir.path().join("data"),
        &[
            ("APP_GIT_REMOTE", &remote),
            ("APP_SOPS_AGE_KEY_FILE", key_file.to_str().expect("utf-8")),
        ],
    )
    .await;
    let cluster = testkit::kube::Cluster::start().await;
    let namespace = cluster.create_namespace("flux").await;
    let ctx =
        json!({"fluxSecret": {"name": "db-creds", "namespace": namespace, "key": "password"}});
    let with_ctx =
        conformance::Target::connect(&conformance::Connect::plain(&backend.url), Some(ctx))
            .await
            .expect("connect");
    let plain = support::target(&backend.url).await;

    // Not UTF-8 and not JSON: the Secret carries the bytes exactly.
    let v1: &[u8] = b"\xff\x00first";
    with_ctx.create("db", v1).await.expect("create");
    let doc = manifest(dir.path(), &remote, "db.sops.yaml").expect("manifest written");
    assert!(
        doc.contains("encrypted_regex: ^(data|stringData)$"),
        "{doc}"
    );
    assert!(
        doc.contains("name: \"db-creds\""),
        "metadata stays readable"
    );
    assert!(!doc.contains("first"));
    let secret = decrypt(dir.path(), &key_file, &doc);
    assert_eq!(secret["apiVersion"].as_str(), Some("v1"));
    assert_eq!(secret["kind"].as_str(), Some("Secret"));
    assert_eq!(secret["metadata"]["name"].as_str(), Some("db-creds"));
    assert_eq!(
        secret["metadata"]["namespace"].as_str(),
        Some(namespace.as_str())
    );
    assert_eq!(data_value(&secret, "password"), v1);

    // The real API server accepts it as a Secret (dry run: nothing stored).
    let parsed: Secret = serde_yaml::from_value(secret.clone()).expect("a Secret");
    let api: Api<Secret> = Api::namespaced(cluster.client().await, &namespace);
    let created = api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &parsed,
        )
        .await
        .expect("server-side dry-run create");
    let stored = created.data.expect("data");
    assert_eq!(stored["password"].0, v1);

    // An update without context rewrites the manifest in the same commit.
    plain
        .update("db", 2, b"second", None)
        .await
        .expect("update");
    let doc = manifest(dir.path(), &remote, "db.sops.yaml").expect("manifest");
    assert_eq!(
        data_value(&decrypt(dir.path(), &key_file, &doc), "password"),
        b"second"
    );
    let files = git(
        &dir.path().join("checkout"),
        &["show", "--name-only", "--format=%s", "HEAD"],
    );
    let revision = format!("{}/2.sops.yaml", ti_dir("typeinstances", "db"));
    assert!(files.contains(&revision), "{files}");
    assert!(files.contains("flux-secrets/db.sops.yaml"), "{files}");

    // Deleting the latest revision moves the Secret back to the one before.
    plain
        .delete_revision("db", 2, None)
        .await
        .expect("delete revision");
    let doc = manifest(dir.path(), &remote, "db.sops.yaml").expect("manifest");
    assert_eq!(
        data_value(&decrypt(dir.path(), &key_file, &doc), "password"),
        v1
    );

    // Deleting the TypeInstance removes the manifest with it.
    plain.delete("db", None).await.expect("delete");
    assert!(manifest(dir.path(), &remote, "db.sops.yaml").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_context_outside_the_schema_is_invalid_argument() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&dir.path().join("data"), &[]).await;
    let t = support::target(&backend.url).await;
    for bad in [
        json!({"fluxSecret": {"name": "Not_A_Name", "namespace": "apps"}}),
        json!({"fluxSecret": {"name": "x"}}),
        json!({"subdir": "x"}),
    ] {
        let err = t
            .create_with("x", b"1", bad.to_string().into())
            .await
            .expect_err("rejected");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite_passes_with_a_flux_secret_context_and_leaves_no_orphans() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let backend = start_backend(&dir.path().join("data"), &[("APP_GIT_REMOTE", &remote)]).await;
    let ctx = json!({"fluxSecret": {"name": "conformance", "namespace": "apps"}});
    let target =
        conformance::Target::connect(&conformance::Connect::plain(&backend.url), Some(ctx))
            .await
            .expect("connect");
    let report = conformance::run(std::sync::Arc::new(target), None, |name, outcome| {
        println!("{}", conformance::line(name, outcome));
    })
    .await;
    testkit::assert_clean(&report, 40);

    // Every manifest belongs to a TypeInstance that still exists.
    let checkout = dir.path().join("checkout");
    git(
        dir.path(),
        &["clone", "-q", "-b", "main", &remote, "checkout"],
    );
    let manifests = std::fs::read_dir(checkout.join("flux-secrets"))
        .map(|d| d.filter_map(|e| e.ok()).collect::<Vec<_>>())
        .unwrap_or_default();
    for entry in manifests {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ti = name.strip_suffix(".sops.yaml").expect("manifest name");
        assert!(
            checkout.join("typeinstances").join(ti).is_dir(),
            "orphaned manifest {name}"
        );
    }
}
