//! `sops-git-backend rotate-keys`: every file re-encrypted to the new
//! recipients in one commit, values and bindings kept, checked with both
//! real sops versions and by the backend restarted with the new key only.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde_json::json;
use sops_git::sops::{self, Binding};
use support::{age_keygen, bare_repo, git, real_sopses, start_backend, target, ti_dir};

/// A file of TypeInstance `id` in the backend's layout.
fn at(id: &str, file: &str) -> String {
    format!("{}/{file}", ti_dir("typeinstances", id))
}

/// Runs `sops-git-backend rotate-keys` with only `env` (plus PATH/HOME).
fn rotate_keys(env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sops-git-backend"));
    cmd.arg("rotate-keys").env_clear();
    for keep in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the backend binary runs")
}

/// What a rotate-keys run logged (stdout) and any start-up error (stderr).
fn log(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A fresh clone of the remote's `main`.
fn checkout(dir: &Path, remote: &str) -> PathBuf {
    let path = dir.join("checkout");
    let _ = std::fs::remove_dir_all(&path);
    git(dir, &["clone", "-q", "-b", "main", remote, "checkout"]);
    path
}

/// Every `*.sops.yaml` of the checkout, relative paths, sorted.
fn sops_files(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = git(root, &["ls-files"])
        .lines()
        .filter(|l| l.ends_with(".sops.yaml"))
        .map(str::to_owned)
        .collect();
    out.sort();
    out
}

fn bound(id: &str, revision: u32) -> Option<Binding> {
    Some(Binding {
        type_instance_id: id.to_owned(),
        revision,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_re_encrypts_every_file_to_the_new_key_in_one_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    std::fs::create_dir_all(dir.path().join("old")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("new")).expect("mkdir");
    let (old_key, old) = age_keygen(&dir.path().join("old"));
    let (new_key, new) = age_keygen(&dir.path().join("new"));
    // Reading with the old key, writing to the new one.
    let both_key = dir.path().join("both.key");
    std::fs::write(
        &both_key,
        std::fs::read_to_string(&old_key).expect("key")
            + &std::fs::read_to_string(&new_key).expect("key"),
    )
    .expect("write");

    // A revision written before the binding existed (value only), with
    // its `latest` copy, as real sops writes our layout.
    let work = checkout_empty(dir.path(), &remote);
    let legacy_dir = work.join("typeinstances/legacy");
    std::fs::create_dir_all(&legacy_dir).expect("mkdir");
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, format!("value: {}\n", B64.encode(b"legacy-value"))).expect("write");
    let sops = &real_sopses()[0];
    let legacy = sops.encrypt(&old_key, &["--age", &old.to_public().to_string()], &plain);
    std::fs::write(legacy_dir.join("1.sops.yaml"), &legacy).expect("write");
    std::fs::write(legacy_dir.join("latest.sops.yaml"), &legacy).expect("write");
    git(&work, &["add", "-A"]);
    git(
        &work,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "legacy",
        ],
    );
    git(&work, &["push", "-q", "origin", "main"]);

    let data = dir.path().join("data");
    let old_env = [
        ("APP_GIT_REMOTE", remote.as_str()),
        ("APP_SOPS_AGE_KEY_FILE", old_key.to_str().expect("utf-8")),
    ];
    {
        let backend = start_backend(&data, &old_env).await;
        let t = target(&backend.url).await;
        let ctx = json!({"fluxSecret": {"name": "db-creds", "namespace": "apps"}});
        let with_ctx =
            conformance::Target::connect(&conformance::Connect::plain(&backend.url), Some(ctx))
                .await
                .expect("connect");
        with_ctx.create("db", b"db-one").await.expect("create");
        with_ctx
            .update("db", 2, b"db-two", None)
            .await
            .expect("update");
        t.create("other", b"\xffother").await.expect("create");
        t.lock("other", " hub").await.expect("lock");

        // The running backend holds its data directory: rotation on it
        // is refused, changing nothing.
        let refused = rotate_keys(&[
            ("APP_DATA_DIR", &data),
            ("APP_GIT_REMOTE", Path::new(&remote)),
            ("APP_SOPS_AGE_KEY_FILE", &both_key),
            (
                "APP_SOPS_AGE_RECIPIENTS",
                Path::new(&new.to_public().to_string()),
            ),
        ]);
        assert_eq!(refused.status.code(), Some(2));
        assert!(log(&refused).contains("in use"), "{}", log(&refused));
    }

    let before = checkout(dir.path(), &remote);
    let files = sops_files(&before);
    assert_eq!(
        files,
        vec![
            "flux-secrets/db.sops.yaml".to_owned(),
            at("db", "1.sops.yaml"),
            at("db", "2.sops.yaml"),
            at("db", "latest.sops.yaml"),
            at("legacy", "1.sops.yaml"),
            at("legacy", "latest.sops.yaml"),
            at("other", "1.sops.yaml"),
            at("other", "latest.sops.yaml"),
        ]
    );
    let commits_before = git(&before, &["rev-list", "--count", "main"]);
    // Until the rotation lands, the old key opens everything, the new none.
    for sops in real_sopses() {
        for file in &files {
            let path = before.join(file);
            assert!(sops.decrypt(&old_key, &path).is_ok(), "{file}");
            assert!(sops.decrypt(&new_key, &path).is_err(), "{file}");
        }
    }

    // Its own data directory, the shared remote.
    let rotated = rotate_keys(&[
        ("APP_DATA_DIR", &dir.path().join("rotate-data")),
        ("APP_GIT_REMOTE", Path::new(&remote)),
        ("APP_SOPS_AGE_KEY_FILE", &both_key),
        (
            "APP_SOPS_AGE_RECIPIENTS",
            Path::new(&new.to_public().to_string()),
        ),
    ]);
    let logged = log(&rotated);
    assert!(rotated.status.success(), "{logged}");
    assert!(
        logged.contains("re-encrypted 7 documents and 1 Flux Secret manifests"),
        "{logged}"
    );
    assert!(logged.contains("2 bound now, 0 left unbound"), "{logged}");

    let after = checkout(dir.path(), &remote);
    assert_eq!(sops_files(&after), files);
    let commits_after = git(&after, &["rev-list", "--count", "main"]);
    assert_eq!(
        commits_after.trim().parse::<u32>().expect("count"),
        commits_before.trim().parse::<u32>().expect("count") + 1,
        "one commit"
    );
    let subject = git(&after, &["log", "-1", "--format=%s"]);
    assert!(
        subject.starts_with("rotate keys: re-encrypt 8 files"),
        "{subject}"
    );
    assert_eq!(
        std::fs::read_to_string(after.join(at("other", "lock"))).expect("lock kept"),
        " hub\n"
    );

    // Now the new key opens everything, the old none, in both sops.
    for sops in real_sopses() {
        for file in &files {
            let path = after.join(file);
            assert!(
                sops.decrypt(&new_key, &path).is_ok(),
                "{} {file}",
                sops.version
            );
            assert!(
                sops.decrypt(&old_key, &path).is_err(),
                "{} {file}",
                sops.version
            );
        }
        let secret = sops
            .decrypt(&new_key, &after.join("flux-secrets/db.sops.yaml"))
            .expect("decrypts");
        assert_eq!(secret["data"]["value"], B64.encode(b"db-two"));
        assert_eq!(secret["metadata"]["name"], "db-creds");
    }
    // Values and bindings kept; the pre-binding files are bound now; a
    // `latest` copy is still the same document as its revision.
    let ids = std::slice::from_ref(&new);
    for (file, value, binding) in [
        (at("db", "1.sops.yaml"), &b"db-one"[..], bound("db", 1)),
        (at("db", "2.sops.yaml"), b"db-two", bound("db", 2)),
        (at("db", "latest.sops.yaml"), b"db-two", bound("db", 2)),
        (at("other", "1.sops.yaml"), b"\xffother", bound("other", 1)),
        (
            at("legacy", "1.sops.yaml"),
            b"legacy-value",
            bound("legacy", 1),
        ),
        (
            at("legacy", "latest.sops.yaml"),
            b"legacy-value",
            bound("legacy", 1),
        ),
    ] {
        let doc = std::fs::read_to_string(after.join(&file)).expect("read");
        let opened = sops::open(&doc, ids).expect("opens with the new key");
        assert_eq!(opened.value, value, "{file}");
        assert_eq!(opened.binding, binding, "{file}");
        assert!(
            sops::open(&doc, std::slice::from_ref(&old)).is_err(),
            "{file}"
        );
    }
    for dir_name in ["db", "legacy"] {
        let rev = if dir_name == "db" { "2" } else { "1" };
        let base = after.join(ti_dir("typeinstances", dir_name));
        assert_eq!(
            std::fs::read(base.join("latest.sops.yaml")).expect("read"),
            std::fs::read(base.join(format!("{rev}.sops.yaml"))).expect("read"),
            "{dir_name}"
        );
    }

    // The backend with the new key alone serves every revision.
    let new_env = [
        ("APP_GIT_REMOTE", remote.as_str()),
        ("APP_SOPS_AGE_KEY_FILE", new_key.to_str().expect("utf-8")),
    ];
    let backend = start_backend(&data, &new_env).await;
    let t = target(&backend.url).await;
    assert_eq!(&t.get("db", 1).await.expect("get")[..], b"db-one");
    assert_eq!(&t.get("db", 2).await.expect("get")[..], b"db-two");
    assert_eq!(&t.get("other", 1).await.expect("get")[..], b"\xffother");
    assert_eq!(&t.get("legacy", 1).await.expect("get")[..], b"legacy-value");
    assert_eq!(
        t.locked_by("other").await.expect("locked by"),
        Some(" hub".to_owned())
    );
    t.update("db", 3, b"db-three", None).await.expect("update");
}

#[test]
fn rotation_without_a_prefix_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let (key, _) = age_keygen(dir.path());
    let out = rotate_keys(&[
        ("APP_DATA_DIR", &dir.path().join("data")),
        ("APP_GIT_REMOTE", Path::new(&remote)),
        ("APP_GIT_PREFIX", Path::new("")),
        ("APP_SOPS_AGE_KEY_FILE", &key),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let logged = log(&out);
    assert!(logged.contains("APP_GIT_PREFIX"), "{logged}");
}

/// A clone of the empty remote with `main` checked out, to push files by
/// hand.
fn checkout_empty(dir: &Path, remote: &str) -> PathBuf {
    let path = dir.join("work");
    git(dir, &["clone", "-q", remote, "work"]);
    git(&path, &["checkout", "-q", "-b", "main"]);
    path
}
