//! Timing smoke checks, not run by default (timings are noisy on shared
//! machines): `cargo test -p sops-git --test perf_smoke -- --ignored --nocapture`.

mod support;

use std::time::{Duration, Instant};

use support::{bare_repo, git, start_backend, target};

async fn median_get(t: &conformance::Target, rev: u32, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        t.get("many", rev).await.expect("get");
        times.push(start.elapsed());
    }
    times.sort();
    times[n / 2]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "timing; run by hand"]
async fn reading_revision_1000_costs_about_the_same_as_revision_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = bare_repo(dir.path(), "remote.git");
    let backend = start_backend(&dir.path().join("data"), &[("APP_GIT_REMOTE", &remote)]).await;
    let t = target(&backend.url).await;
    t.create("many", b"1").await.expect("create");
    let start = Instant::now();
    for rev in 2..=1000u32 {
        t.update("many", rev, rev.to_string().as_bytes(), None)
            .await
            .expect("update");
    }
    let per_update = start.elapsed() / 999;
    let (first, last) = (
        median_get(&t, 1, 200).await,
        median_get(&t, 1000, 200).await,
    );
    println!("OnUpdate mean {per_update:?}; GetValue p50 rev 1 {first:?}, rev 1000 {last:?}");

    // The same one-file change as a plain `git commit && git push`.
    let checkout = dir.path().join("checkout");
    git(
        dir.path(),
        &["clone", "-q", "-b", "main", &remote, "checkout"],
    );
    let file = checkout.join("typeinstances/many/1001.sops.yaml");
    let start = Instant::now();
    for i in 0..20 {
        std::fs::write(&file, format!("value: {i}\n")).expect("write");
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
                "x",
            ],
        );
        git(&checkout, &["push", "-q", "origin", "main"]);
    }
    println!("git commit && git push mean {:?}", start.elapsed() / 20);
    assert!(
        last.as_secs_f64() <= first.as_secs_f64() * 1.5 + 0.002,
        "rev 1000 read {last:?} vs rev 1 {first:?}"
    );
}
