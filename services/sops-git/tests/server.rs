//! The real binary against real Git remotes (file:// and `git daemon`).

mod support;

use std::{path::Path, process::Command, sync::Arc};

use support::{age_keygen, bare_repo, git, git_daemon, sops_bin, start_backend, target, ti_dir};
use testkit::{assert_clean, conformance};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite_passes_over_a_file_remote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let backend = start_backend(&dir.path().join("data"), &[("APP_GIT_REMOTE", &remote)]).await;
    assert_clean(&conformance(&backend.url).await, 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_newest_revisions_and_removes_the_rest_from_the_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let backend = start_backend(
        &dir.path().join("data"),
        &[("APP_GIT_REMOTE", &remote), ("APP_MAX_REVISIONS", "3")],
    )
    .await;
    testkit::assert_retention(&backend.url, 3, None).await;
    // The pruned files left the tree with the update that made them too
    // old: the remote's history shows the deletions in those commits.
    let log = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(dir.path().join("remote.git"))
        .args(["log", "--all", "--name-status", "--format=%s"])
        .output()
        .expect("git log");
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.lines()
            .any(|l| l.starts_with('D') && l.contains("/1.sops.yaml")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_manifests_match_the_running_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = start_backend(&dir.path().join("data"), &[]).await;
    testkit::registration::assert_manifests_match(&backend.url, "sops-git").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite_passes_over_git_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let (_daemon, base) = git_daemon(dir.path()).await;
    let remote = format!("{base}/remote.git");
    let backend = start_backend(&dir.path().join("data"), &[("APP_GIT_REMOTE", &remote)]).await;
    assert_clean(&conformance(&backend.url).await, 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn default_start_creates_a_local_repository_and_an_age_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let backend = start_backend(&data, &[]).await;
    let t = target(&backend.url).await;
    t.create("first", b"\"hello\"").await.expect("create");
    assert_eq!(&t.get("first", 1).await.expect("get")[..], b"\"hello\"");
    assert!(data.join("age.key").is_file());
    assert!(data.join("remote.git").is_dir());
    let key = std::fs::read_to_string(data.join("age.key")).expect("key");
    assert!(key.contains("AGE-SECRET-KEY-"));
}

#[tokio::test(flavor = "multi_thread")]
async fn files_in_the_repository_decrypt_with_real_sops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let (key_file, _) = age_keygen(dir.path());
    let key = key_file.to_string_lossy().into_owned();
    let backend = start_backend(
        &dir.path().join("data"),
        &[
            ("APP_GIT_REMOTE", &remote),
            ("APP_SOPS_AGE_KEY_FILE", &key),
            ("APP_GIT_PREFIX", "secrets/prod"),
        ],
    )
    .await;
    let t = target(&backend.url).await;
    t.create("db", b"{\"password\":\"s3cr3t-v1\"}")
        .await
        .expect("create");
    t.update("db", 2, b"{\"password\":\"n3w-v2\"}", None)
        .await
        .expect("update");

    let checkout = dir.path().join("checkout");
    git(
        dir.path(),
        &["clone", "-q", "-b", "main", &remote, "checkout"],
    );
    let log = git(&checkout, &["log", "--format=%s"]);
    assert!(log.contains("update type instance db revision 2"), "{log}");
    assert!(!log.contains("n3w-v2"));
    for (file, want) in [
        ("1.sops.yaml", "{\"password\":\"s3cr3t-v1\"}"),
        ("2.sops.yaml", "{\"password\":\"n3w-v2\"}"),
        ("latest.sops.yaml", "{\"password\":\"n3w-v2\"}"),
    ] {
        let path = checkout.join(ti_dir("secrets/prod", "db")).join(file);
        let raw = std::fs::read_to_string(&path).expect("file in layout");
        // The markers hold a '-', which base64 ciphertext never does: a
        // three-letter secret turned up inside random ciphertext by chance.
        assert!(
            !raw.contains("s3cr3t-v1") && !raw.contains("n3w-v2"),
            "{file}"
        );
        let out = Command::new(sops_bin())
            .env("SOPS_DISABLE_VERSION_CHECK", "1")
            .env("SOPS_AGE_KEY_FILE", &key_file)
            .args(["-d", "--extract", "[\"value\"]"])
            .arg(&path)
            .output()
            .expect("sops runs");
        assert!(out.status.success(), "sops -d {file} failed");
        let b64 = String::from_utf8(out.stdout).expect("utf-8");
        use base64::Engine;
        let value = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .expect("base64");
        assert_eq!(value, want.as_bytes(), "{file}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_written_by_real_sops_in_our_layout_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let (key_file, identity) = age_keygen(dir.path());
    let key = key_file.to_string_lossy().into_owned();
    let checkout = dir.path().join("checkout");
    git(dir.path(), &["clone", "-q", &remote, "checkout"]);
    git(&checkout, &["checkout", "-q", "-b", "main"]);
    let ti = checkout.join("typeinstances/handmade");
    std::fs::create_dir_all(&ti).expect("mkdir");
    std::fs::write(ti.join("1.yaml"), "value: aGFuZG1hZGU=\n").expect("write");
    let out = Command::new(sops_bin())
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .args(["-e", "--age", &identity.to_public().to_string()])
        .arg(ti.join("1.yaml"))
        .output()
        .expect("sops runs");
    assert!(out.status.success());
    std::fs::write(ti.join("1.sops.yaml"), &out.stdout).expect("write");
    std::fs::remove_file(ti.join("1.yaml")).expect("rm");
    git(&checkout, &["add", "."]);
    git(
        &checkout,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "by hand",
        ],
    );
    git(&checkout, &["push", "-q", "origin", "main"]);

    let backend = start_backend(
        &dir.path().join("data"),
        &[("APP_GIT_REMOTE", &remote), ("APP_SOPS_AGE_KEY_FILE", &key)],
    )
    .await;
    let t = target(&backend.url).await;
    assert_eq!(&t.get("handmade", 1).await.expect("get")[..], b"handmade");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_every_revision_and_the_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let data = dir.path().join("data");
    let env = [("APP_GIT_REMOTE", remote.as_str())];
    {
        let backend = start_backend(&data, &env).await;
        let t = target(&backend.url).await;
        t.create("kept", b"one").await.expect("create");
        t.update("kept", 2, b"two", None).await.expect("update");
        t.lock("kept", "alice").await.expect("lock");
    }
    // A fresh data directory too: state lives only in the remote, but the
    // key must be the same one, so reuse the generated key file.
    let backend = start_backend(&data, &env).await;
    let t = target(&backend.url).await;
    assert_eq!(&t.get("kept", 1).await.expect("rev 1")[..], b"one");
    assert_eq!(&t.get("kept", 2).await.expect("rev 2")[..], b"two");
    assert_eq!(
        t.locked_by("kept").await.expect("lock"),
        Some("alice".into())
    );

    let other_data = dir.path().join("other");
    std::fs::create_dir_all(&other_data).expect("mkdir");
    let key = data.join("age.key").to_string_lossy().into_owned();
    let fresh = start_backend(
        &other_data,
        &[("APP_GIT_REMOTE", &remote), ("APP_SOPS_AGE_KEY_FILE", &key)],
    )
    .await;
    let t = target(&fresh.url).await;
    assert_eq!(
        &t.get("kept", 2).await.expect("rev 2 from a new clone")[..],
        b"two"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_sharing_a_file_remote_never_lose_a_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    two_writers(dir.path(), &remote).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_sharing_a_git_daemon_remote_never_lose_a_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let (_daemon, base) = git_daemon(dir.path()).await;
    two_writers(dir.path(), &format!("{base}/remote.git")).await;
}

async fn two_writers(dir: &std::path::Path, remote: &str) {
    let (key_file, _) = age_keygen(dir);
    let key = key_file.to_string_lossy().into_owned();
    let env = [("APP_GIT_REMOTE", remote), ("APP_SOPS_AGE_KEY_FILE", &key)];
    let a = start_backend(&dir.join("a"), &env).await;
    let b = start_backend(&dir.join("b"), &env).await;
    let (ta, tb) = (
        Arc::new(target(&a.url).await),
        Arc::new(target(&b.url).await),
    );

    // Distinct TypeInstances created concurrently through both processes.
    let mut tasks = Vec::new();
    for i in 0..8 {
        for (name, t) in [("a", Arc::clone(&ta)), ("b", Arc::clone(&tb))] {
            tasks.push(tokio::spawn(async move {
                let id = format!("{name}-{i}");
                t.create(&id, id.as_bytes()).await.map(|_| id)
            }));
        }
    }
    for task in tasks {
        let id = task.await.expect("join").expect("every create succeeds");
        for (process, t) in [("a", &ta), ("b", &tb)] {
            let got = t.get(&id, 1).await;
            let got = got.unwrap_or_else(|s| panic!("{id} not visible in {process}: {s:?}"));
            assert_eq!(&got[..], id.as_bytes());
        }
    }

    // The same next revision from both processes: exactly one wins each round.
    ta.create("shared", b"r1").await.expect("create");
    for rev in 2..=6u32 {
        let (va, vb) = (format!("a{rev}"), format!("b{rev}"));
        let (ra, rb) = tokio::join!(
            ta.update("shared", rev, va.as_bytes(), None),
            tb.update("shared", rev, vb.as_bytes(), None)
        );
        let winners = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "revision {rev}: {ra:?} / {rb:?}");
        let loser = if ra.is_ok() { rb } else { ra };
        assert_eq!(loser.expect_err("loser").code(), Code::AlreadyExists);
        let stored = tb.get("shared", rev).await.expect("stored");
        assert!(&stored[..] == va.as_bytes() || &stored[..] == vb.as_bytes());
    }
    for rev in 1..=6 {
        ta.get("shared", rev).await.expect("no revision lost");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_file_is_data_loss_and_others_keep_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let backend = start_backend(&dir.path().join("data"), &[("APP_GIT_REMOTE", &remote)]).await;
    let t = target(&backend.url).await;
    t.create("victim", b"secret-one").await.expect("create");
    t.create("bystander", b"fine").await.expect("create");

    let checkout = dir.path().join("checkout");
    git(
        dir.path(),
        &["clone", "-q", "-b", "main", &remote, "checkout"],
    );
    let path = checkout
        .join(ti_dir("typeinstances", "victim"))
        .join("1.sops.yaml");
    let doc = std::fs::read_to_string(&path).expect("read");
    let first = doc.lines().next().expect("line").to_owned();
    // A different value in plaintext: every ciphertext stays valid, only
    // the MAC can tell.
    std::fs::write(&path, doc.replace(&first, "value: b3RoZXI=")).expect("write");
    git(&checkout, &["add", "typeinstances"]);
    git(
        &checkout,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "tamper",
        ],
    );
    git(&checkout, &["push", "-q", "origin", "main"]);

    let err = t.get("victim", 1).await.expect_err("tampered");
    assert_eq!(err.code(), Code::DataLoss);
    assert!(!err.message().contains("secret") && !err.message().contains("other"));
    assert_eq!(
        &t.get("bystander", 1).await.expect("others served")[..],
        b"fine"
    );

    // Garbage that is not YAML at all is DATA_LOSS too.
    std::fs::write(&path, ":::: not yaml [").expect("write");
    git(
        &checkout,
        &["commit", "-q", "-a", "-m", "garbage", "--author=t <t@t>"],
    );
    git(
        &checkout,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "push",
            "-q",
            "origin",
            "main",
        ],
    );
    assert_eq!(
        t.get("victim", 1).await.expect_err("garbage").code(),
        Code::DataLoss
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_serving_while_the_remote_answers() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let backend = start_backend(&dir.path().join("data"), &[("APP_GIT_REMOTE", &remote)]).await;
    let channel = conformance::Connect::plain(&backend.url)
        .channel()
        .await
        .expect("connect");
    let mut client = HealthClient::new(channel);
    let status = |c: &mut HealthClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        async move {
            c.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(ServingStatus::Unknown as i32)
        }
    };
    let mut serving = false;
    for _ in 0..50 {
        if status(&mut client).await == ServingStatus::Serving as i32 {
            serving = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(serving, "never SERVING");

    // Remove the remote: health turns NOT_SERVING after the threshold.
    std::fs::remove_dir_all(dir.path().join("remote.git")).expect("rm remote");
    let mut down = false;
    for _ in 0..100 {
        if status(&mut client).await == ServingStatus::NotServing as i32 {
            down = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(down, "still SERVING without a remote");
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_that_git_treats_specially_are_stored_like_any_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let backend = start_backend(&dir.path().join("data"), &[("APP_GIT_REMOTE", &remote)]).await;
    let t = target(&backend.url).await;
    for id in [
        ".git",
        ".GIT",
        ".git.",
        "a.",
        "..a",
        ".gitmodules",
        ".gitattributes",
        "git",
        "GIT.",
        "lock",
        "latest.sops.yaml",
    ] {
        t.create(id, id.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
        t.update(id, 2, b"two", None)
            .await
            .unwrap_or_else(|e| panic!("update {id}: {e:?}"));
        assert_eq!(&t.get(id, 1).await.expect("get")[..], id.as_bytes(), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_backends_racing_on_one_remote_never_violate_the_fence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let (key_file, _) = age_keygen(dir.path());
    let key = key_file.to_string_lossy().into_owned();
    let env = [
        ("APP_GIT_REMOTE", remote.as_str()),
        ("APP_SOPS_AGE_KEY_FILE", &key),
    ];
    let a = start_backend(&dir.path().join("a"), &env).await;
    let b = start_backend(&dir.path().join("b"), &env).await;
    testkit::assert_races_clean(&a.url, &b.url, 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_lists_locks_and_force_unlocks_by_compare_and_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = format!("127.0.0.1:{}", testkit::free_port());
    let backend = start_backend(&dir.path().join("data"), &[("APP_ADMIN_ADDR", &admin)]).await;
    // sops-git keeps no lock time.
    testkit::assert_admin(&backend.url, &format!("http://{admin}"), None, false).await;
}

/// A SOPS document as earlier versions wrote it, encrypted by real sops.
fn sops_document(dir: &Path, recipient: &str, value: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let plain = dir.join("plain.yaml");
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    std::fs::write(&plain, format!("value: {b64}\n")).expect("write");
    let out = Command::new(sops_bin())
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .args(["-e", "--age", recipient])
        .arg(&plain)
        .output()
        .expect("sops runs");
    assert!(out.status.success(), "sops -e failed");
    std::fs::remove_file(&plain).expect("rm");
    out.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_in_the_flat_layout_is_moved_in_one_commit_and_serves_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let (key_file, identity) = age_keygen(dir.path());
    let recipient = identity.to_public().to_string();
    let key = key_file.to_string_lossy().into_owned();
    let checkout = dir.path().join("checkout");
    git(dir.path(), &["clone", "-q", &remote, "checkout"]);
    git(&checkout, &["checkout", "-q", "-b", "main"]);
    // The flat layout: `<prefix>/<id>/`, ids starting with `.` behind a `%`.
    // "a" and "c" are also names of fan-out directories.
    let flat = checkout.join("typeinstances");
    let files: [(&str, &str, &[u8]); 7] = [
        ("a", "1.sops.yaml", b"a-one"),
        ("a", "latest.sops.yaml", b"a-one"),
        ("c", "1.sops.yaml", b"c-one"),
        ("c", "latest.sops.yaml", b"c-one"),
        ("db", "1.sops.yaml", b"db-one"),
        ("db", "2.sops.yaml", b"db-two"),
        ("%.hidden", "1.sops.yaml", b"hidden-one"),
    ];
    for (ti, file, value) in files {
        std::fs::create_dir_all(flat.join(ti)).expect("mkdir");
        std::fs::write(
            flat.join(ti).join(file),
            sops_document(dir.path(), &recipient, value),
        )
        .expect("write");
    }
    std::fs::copy(
        flat.join("db/2.sops.yaml"),
        flat.join("db/latest.sops.yaml"),
    )
    .expect("cp");
    std::fs::write(flat.join("c/lock"), "alice\n").expect("lock");
    // Not a TypeInstance (no revision file): stays where it is.
    std::fs::create_dir_all(flat.join("notes")).expect("mkdir");
    std::fs::write(flat.join("notes/README"), "kept").expect("write");
    git(&checkout, &["add", "."]);
    let commit = [
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "-m",
        "flat",
    ];
    git(&checkout, &commit);
    git(&checkout, &["push", "-q", "origin", "main"]);

    let data = dir.path().join("data");
    let env = [
        ("APP_GIT_REMOTE", remote.as_str()),
        ("APP_SOPS_AGE_KEY_FILE", key.as_str()),
    ];
    {
        let backend = start_backend(&data, &env).await;
        let t = target(&backend.url).await;
        for (id, rev, want) in [
            ("a", 1, &b"a-one"[..]),
            ("c", 1, b"c-one"),
            ("db", 1, b"db-one"),
            ("db", 2, b"db-two"),
            (".hidden", 1, b"hidden-one"),
        ] {
            assert_eq!(&t.get(id, rev).await.expect("get")[..], want, "{id} {rev}");
        }
        assert_eq!(
            t.locked_by("c").await.expect("lockedBy").as_deref(),
            Some("alice")
        );
        t.update("c", 2, b"c-two", Some("alice"))
            .await
            .expect("update under its lock");
        t.create("new", b"new-one").await.expect("create");
    }
    // A restart finds the layout done: no second move.
    let backend = start_backend(&data, &env).await;
    let t = target(&backend.url).await;
    assert_eq!(&t.get("c", 2).await.expect("get")[..], b"c-two");

    git(&checkout, &["pull", "-q", "origin", "main"]);
    let log = git(&checkout, &["log", "--format=%s"]);
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("fan-out layout"))
            .collect::<Vec<_>>(),
        ["move 4 type instances to the fan-out layout"],
        "{log}"
    );
    for (id, name) in [
        ("a", "a"),
        ("c", "c"),
        ("db", "db"),
        (".hidden", "%.hidden"),
    ] {
        let moved = ti_dir("typeinstances", id).replace(&format!("/{id}"), &format!("/{name}"));
        assert!(
            checkout.join(&moved).join("1.sops.yaml").is_file(),
            "{moved}"
        );
    }
    assert!(!flat.join("db").exists() && !flat.join("%.hidden").exists());
    assert!(flat.join("sops-git-layout.md").is_file());
    assert_eq!(
        std::fs::read_to_string(flat.join("notes/README")).expect("kept"),
        "kept"
    );
}

/// Commits everything in `checkout` and pushes it to `main`.
fn commit_and_push(checkout: &std::path::Path, message: &str) {
    git(checkout, &["add", "-A"]);
    git(
        checkout,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            message,
        ],
    );
    git(checkout, &["push", "-q", "origin", "main"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revision_file_copied_to_another_id_or_revision_is_data_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let backend = start_backend(&dir.path().join("data"), &[("APP_GIT_REMOTE", &remote)]).await;
    let t = target(&backend.url).await;
    t.create("source", b"secret-of-source")
        .await
        .expect("create");
    t.create("victim", b"one").await.expect("create");
    t.update("victim", 2, b"two", None).await.expect("update");

    // Someone who can push but holds no private key copies a valid file
    // (every ciphertext and the MAC intact) to another id's path, and an
    // old revision over a newer one.
    let checkout = dir.path().join("checkout");
    git(
        dir.path(),
        &["clone", "-q", "-b", "main", &remote, "checkout"],
    );
    let source = checkout.join(ti_dir("typeinstances", "source"));
    let victim = checkout.join(ti_dir("typeinstances", "victim"));
    std::fs::copy(source.join("1.sops.yaml"), victim.join("1.sops.yaml")).expect("copy");
    std::fs::copy(victim.join("1.sops.yaml"), victim.join("2.sops.yaml")).expect("copy");
    commit_and_push(&checkout, "move files around");

    for rev in [1, 2] {
        let err = t.get("victim", rev).await.expect_err("misplaced");
        assert_eq!(err.code(), Code::DataLoss, "revision {rev}: {err:?}");
        assert!(err.message().contains("victim"), "{}", err.message());
        assert!(!err.message().contains("secret"), "{}", err.message());
    }
    assert_eq!(
        &t.get("source", 1).await.expect("the original still reads")[..],
        b"secret-of-source"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_owner_with_surrounding_spaces_is_kept_verbatim() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let backend = start_backend(&dir.path().join("data"), &[("APP_GIT_REMOTE", &remote)]).await;
    let t = target(&backend.url).await;
    t.create("spaced", b"one").await.expect("create");
    t.lock("spaced", " hub").await.expect("lock");
    assert_eq!(
        t.locked_by("spaced").await.expect("locked by"),
        Some(" hub".to_owned())
    );
    // The holder relocks and updates under its own lock…
    t.lock("spaced", " hub")
        .await
        .expect("relock by the holder");
    t.update("spaced", 2, b"two", Some(" hub"))
        .await
        .expect("update by the holder");
    // …and the owner without the space is someone else.
    assert_eq!(
        t.update("spaced", 3, b"three", Some("hub"))
            .await
            .expect_err("not the holder")
            .code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        t.lock("spaced", "hub")
            .await
            .expect_err("not the holder")
            .code(),
        Code::FailedPrecondition
    );
    assert_eq!(&t.get("spaced", 2).await.expect("get")[..], b"two");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flat_repository_root_keeps_its_other_files_when_moved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let (key_file, identity) = age_keygen(dir.path());
    let recipient = identity.to_public().to_string();
    let key = key_file.to_string_lossy().into_owned();
    let checkout = dir.path().join("checkout");
    git(dir.path(), &["clone", "-q", &remote, "checkout"]);
    git(&checkout, &["checkout", "-q", "-b", "main"]);
    // APP_GIT_PREFIX empty: TypeInstances directly in the root, beside a
    // project's own files.
    for id in ["a", "db"] {
        std::fs::create_dir_all(checkout.join(id)).expect("mkdir");
        let doc = sops_document(dir.path(), &recipient, id.as_bytes());
        std::fs::write(checkout.join(id).join("1.sops.yaml"), &doc).expect("write");
        std::fs::write(checkout.join(id).join("latest.sops.yaml"), &doc).expect("write");
    }
    std::fs::create_dir_all(checkout.join("docs")).expect("mkdir");
    std::fs::write(checkout.join("docs/guide.md"), "guide").expect("write");
    std::fs::write(checkout.join("README.md"), "project").expect("write");
    commit_and_push(&checkout, "flat root");

    let backend = start_backend(
        &dir.path().join("data"),
        &[
            ("APP_GIT_REMOTE", remote.as_str()),
            ("APP_SOPS_AGE_KEY_FILE", key.as_str()),
            ("APP_GIT_PREFIX", ""),
        ],
    )
    .await;
    let t = target(&backend.url).await;
    for id in ["a", "db"] {
        assert_eq!(&t.get(id, 1).await.expect("get")[..], id.as_bytes(), "{id}");
    }
    git(&checkout, &["pull", "-q", "origin", "main"]);
    for id in ["a", "db"] {
        let moved = ti_dir("", id);
        let moved = moved.trim_start_matches('/');
        assert!(
            checkout.join(moved).join("1.sops.yaml").is_file(),
            "{moved}"
        );
    }
    assert!(!checkout.join("db").exists());
    assert_eq!(
        std::fs::read_to_string(checkout.join("README.md")).expect("kept"),
        "project"
    );
    assert_eq!(
        std::fs::read_to_string(checkout.join("docs/guide.md")).expect("kept"),
        "guide"
    );
    assert!(checkout.join("sops-git-layout.md").is_file());
}
