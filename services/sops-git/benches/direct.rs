//! The `sops-git-backend` binary (gRPC) over a file:// remote: GetValue and
//! OnUpdate at concurrency 1 and 16, GetValue of revision 1 against revision
//! 1000 of one TypeInstance with 1000 revisions, and OnUpdate against a plain
//! `git add && git commit && git push` of the same change.
//!
//! `cargo bench -p sops-git --bench direct` (needs git; see tests/run.sh).
//! Timings are printed, never asserted. Without `--bench` (e.g. `cargo test
//! --benches`) it does nothing.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::Arc,
};

use bench::{
    Report, RunOptions, Stats,
    cli::make_value,
    harness::{Pool, checked},
};
use support::{bare_repo, git, start_backend, target};

const VALUE_SIZE: usize = 1024;
const GET_OPS: u64 = 400;
const UPDATE_OPS: u64 = 100;
const WARMUP_OPS: u64 = 10;
const CONCURRENCY: [usize; 2] = [1, 16];
/// TypeInstances read by the get rows (workers pick one by call number).
const GET_IDS: usize = 16;
/// Revisions of the TypeInstance of the history rows.
const HISTORY: u32 = 1000;
const HISTORY_GET_OPS: u64 = 200;
const GIT_OPS: u64 = 50;
/// The backend's default `APP_GIT_PREFIX`.
const GIT_PREFIX: &str = "typeinstances";

fn main() -> ExitCode {
    bench::harness::bench_main("sops-git direct bench", bench_all)
}

fn options(concurrency: usize, ops: u64, warmup_ops: u64) -> RunOptions {
    RunOptions {
        concurrency,
        duration: None,
        ops: Some(ops),
        warmup_ops,
    }
}

/// GetValue of `rev` of the ids (picked by call number).
async fn get_row(
    t: &Arc<conformance::Target>,
    ids: &Arc<[String]>,
    rev: u32,
    options: &RunOptions,
) -> Result<Stats, String> {
    bench::run(bench::harness::get_cycling(t, ids, rev), options).await
}

/// OnUpdate of the next revision, each worker on its own TypeInstance.
async fn update_row(
    t: &Arc<conformance::Target>,
    slots: Vec<(String, u32)>,
    value: &[u8],
    options: &RunOptions,
) -> Result<Stats, String> {
    let pool = Pool::new(slots);
    let (t, value) = (Arc::clone(t), Arc::<[u8]>::from(value));
    bench::run(
        move |_| {
            let (t, pool, value) = (Arc::clone(&t), Arc::clone(&pool), Arc::clone(&value));
            async move {
                let (id, rev) = pool.take()?;
                let result = t.update(&id, rev, &value, None).await;
                pool.give((id, rev + 1));
                result.map_err(|s| s.to_string())
            }
        },
        options,
    )
    .await
}

/// `git` with the arguments; Err(stderr) on failure.
fn git_try(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(|e| format!("git: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What the backend's OnUpdate changes in Git, done with the git CLI in a
/// checkout: a new `<n>.sops.yaml` and `latest.sops.yaml` (real SOPS files,
/// copied from one the backend wrote), one commit, one push.
fn git_commit_push(checkout: &Path, dir: &Path, sops_file: &[u8], n: u64) -> Result<(), String> {
    let rev = format!("{n}.sops.yaml");
    std::fs::write(dir.join(&rev), sops_file).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("latest.sops.yaml"), sops_file).map_err(|e| e.to_string())?;
    let rel = dir
        .strip_prefix(checkout)
        .map_err(|e| e.to_string())?
        .to_string_lossy()
        .into_owned();
    git_try(
        checkout,
        &[
            "add",
            &format!("{rel}/{rev}"),
            &format!("{rel}/latest.sops.yaml"),
        ],
    )?;
    git_try(
        checkout,
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-q",
            "-m",
            &format!("update type instance bench-git revision {n}"),
        ],
    )?;
    git_try(checkout, &["push", "-q", "origin", "main"])
}

async fn bench_all() -> Result<Report, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let remote = bare_repo(dir.path(), "remote.git");
    let backend = start_backend(&dir.path().join("data"), &[("APP_GIT_REMOTE", &remote)]).await;
    let t = Arc::new(target(&backend.url).await);
    let value = make_value(VALUE_SIZE);

    let mut report = Report::new("sops-git-backend (gRPC) over a file:// remote");
    report
        .param("remote", "file:// bare repository, same disk")
        .param("value_size", VALUE_SIZE)
        .param("get_ops", GET_OPS)
        .param("update_ops", UPDATE_OPS)
        .param("history_get_ops", HISTORY_GET_OPS)
        .param("git_ops", GIT_OPS)
        .param("warmup_ops", WARMUP_OPS)
        .param(
            "git",
            Command::new("git")
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default(),
        )
        .param(
            "profile",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "optimized (bench)"
            },
        );

    // GetValue of revision 1 of GET_IDS TypeInstances.
    let get_ids: Arc<[String]> = (0..GET_IDS).map(|i| format!("get-{i}")).collect();
    for id in get_ids.iter() {
        t.create(id, &value)
            .await
            .map_err(|s| format!("create {id}: {s}"))?;
    }
    for concurrency in CONCURRENCY {
        let name = format!("get c{concurrency}");
        let stats = get_row(&t, &get_ids, 1, &options(concurrency, GET_OPS, WARMUP_OPS)).await?;
        report.row(&name, checked(&name, stats)?);
    }

    // OnUpdate at concurrency 1, then the same change with the git CLI.
    let update_ids = |concurrency: usize| -> Vec<String> {
        (0..concurrency)
            .map(|i| format!("upd-c{concurrency}-{i}"))
            .collect()
    };
    let mut c1_slots = Vec::new();
    for id in update_ids(1) {
        t.create(&id, &value)
            .await
            .map_err(|s| format!("create {id}: {s}"))?;
        c1_slots.push((id, 2));
    }
    let stats = update_row(&t, c1_slots, &value, &options(1, UPDATE_OPS, WARMUP_OPS)).await?;
    report.row("update c1", checked("update c1", stats)?);

    let checkout = dir.path().join("checkout");
    git(
        dir.path(),
        &["clone", "-q", "-b", "main", &remote, "checkout"],
    );
    let sops_file = std::fs::read(checkout.join(GIT_PREFIX).join("upd-c1-0/2.sops.yaml"))
        .map_err(|e| format!("reading a SOPS file the backend wrote: {e}"))?;
    let git_dir: PathBuf = checkout.join(GIT_PREFIX).join("bench-git");
    std::fs::create_dir_all(&git_dir).map_err(|e| e.to_string())?;
    let shared = Arc::new((checkout, git_dir, sops_file));
    let stats = bench::run(
        move |seq| {
            let shared = Arc::clone(&shared);
            async move {
                tokio::task::spawn_blocking(move || {
                    let (checkout, git_dir, sops_file) = &*shared;
                    git_commit_push(checkout, git_dir, sops_file, seq + 1)
                })
                .await
                .map_err(|e| format!("git task: {e}"))?
            }
        },
        &options(1, GIT_OPS, WARMUP_OPS.min(5)),
    )
    .await?;
    report.row("git commit+push", checked("git commit+push", stats)?);
    report.compare("update c1", "git commit+push")?;

    // OnUpdate at concurrency 16 (every worker its own TypeInstance).
    let mut slots = Vec::new();
    for id in update_ids(16) {
        t.create(&id, &value)
            .await
            .map_err(|s| format!("create {id}: {s}"))?;
        slots.push((id, 2));
    }
    let stats = update_row(&t, slots, &value, &options(16, UPDATE_OPS, WARMUP_OPS)).await?;
    report.row("update c16", checked("update c16", stats)?);

    // One TypeInstance with HISTORY revisions, written through the backend
    // (the row doubles as OnUpdate into a directory that keeps growing).
    let many: Arc<[String]> = Arc::from(vec!["many".to_owned()]);
    t.create(&many[0], &value)
        .await
        .map_err(|s| format!("create many: {s}"))?;
    let stats = update_row(
        &t,
        vec![(many[0].clone(), 2)],
        &value,
        &options(1, u64::from(HISTORY - 1), 0),
    )
    .await?;
    report.row("update rev 2..1000", checked("update rev 2..1000", stats)?);
    let first = get_row(&t, &many, 1, &options(1, HISTORY_GET_OPS, WARMUP_OPS)).await?;
    report.row("get rev 1 of 1000", checked("get rev 1 of 1000", first)?);
    let last = get_row(&t, &many, HISTORY, &options(1, HISTORY_GET_OPS, WARMUP_OPS)).await?;
    report.row(
        "get rev 1000 of 1000",
        checked("get rev 1000 of 1000", last)?,
    );
    report.compare("get rev 1000 of 1000", "get rev 1 of 1000")?;
    drop(backend);
    Ok(report)
}
