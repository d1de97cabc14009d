//! The `sops-git-backend` binary (gRPC) over a file:// remote: GetValue and
//! OnUpdate at concurrency 1 and 32, GetValue of revision 1 against revision
//! 1000 of one TypeInstance with 1000 revisions, OnUpdate against a plain
//! `git add && git commit && git push` of the same change, and the
//! value-size sweep (`get c1 64 KiB`, `update c1 1 MiB`, ...).
//!
//! Every backend row carries the backend's CPU time per call and peak RSS
//! (from /proc): Git and SOPS run inside the backend process, so that CPU
//! includes the store's work. The first row carries the start to SERVING
//! and idle RSS.
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
    time::Instant,
};

use bench::{
    Cost, ProcessProbe, Report, RunOptions, Stats,
    cli::make_value,
    harness::{Pool, Startup, checked, p50_over},
};
use support::{bare_repo, git, spawn_backend_on, target, ti_dir};

const VALUE_SIZE: usize = 1024;
// Enough calls that each row's backend CPU spans some 30 or more 10 ms ticks.
const GET_OPS: u64 = 3000;
const UPDATE_OPS: u64 = 300;
const WARMUP_OPS: u64 = 10;
const CONCURRENCY: [usize; 2] = [1, 32];
/// TypeInstances read by the get rows (workers pick one by call number).
const GET_IDS: usize = 16;
/// Revisions of the TypeInstance of the history rows.
const HISTORY: u32 = 1000;
const HISTORY_GET_OPS: u64 = 1000;
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

/// GetValue of `rev` of the ids (picked by call number), with its cost.
async fn get_row(
    t: &Arc<conformance::Target>,
    probe: &ProcessProbe,
    ids: &Arc<[String]>,
    rev: u32,
    options: &RunOptions,
) -> Result<(Stats, Cost), String> {
    probe
        .measure(bench::run(
            bench::harness::get_cycling(t, ids, rev),
            options,
        ))
        .await
}

/// OnUpdate of the next revision, each worker on its own TypeInstance,
/// with its cost.
async fn update_row(
    t: &Arc<conformance::Target>,
    probe: &ProcessProbe,
    slots: Vec<(String, u32)>,
    value: &[u8],
    options: &RunOptions,
) -> Result<(Stats, Cost), String> {
    let pool = Pool::new(slots);
    let (t, value) = (Arc::clone(t), Arc::<[u8]>::from(value));
    probe
        .measure(bench::run(
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
        ))
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
    let spawned = Instant::now();
    let backend = spawn_backend_on(
        testkit::free_port(),
        &dir.path().join("data"),
        &[("APP_GIT_REMOTE", &remote)],
    );
    let probe = ProcessProbe::new(backend.pid().ok_or("the backend is not running")?);
    let startup = Startup::measure(&backend.url, spawned, &probe).await;
    // testkit's wait panics with the backend's log if it never got there.
    let backend = backend.serving().await;
    let startup = startup?;
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
        .build_profile();

    // GetValue of revision 1 of GET_IDS TypeInstances.
    let get_ids: Arc<[String]> = (0..GET_IDS).map(|i| format!("get-{i}")).collect();
    for id in get_ids.iter() {
        t.create(id, &value)
            .await
            .map_err(|s| format!("create {id}: {s}"))?;
    }
    for concurrency in CONCURRENCY {
        let name = format!("get c{concurrency}");
        let opts = options(concurrency, GET_OPS, WARMUP_OPS);
        let (stats, cost) = get_row(&t, &probe, &get_ids, 1, &opts).await?;
        report.row_with_cost(&name, checked(&name, stats)?, cost);
        if concurrency == 1 {
            startup.annotate(&mut report);
        }
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
    let opts = options(1, UPDATE_OPS, WARMUP_OPS);
    let (stats, cost) = update_row(&t, &probe, c1_slots, &value, &opts).await?;
    report.row_with_cost("update c1", checked("update c1", stats)?, cost);

    let checkout = dir.path().join("checkout");
    git(
        dir.path(),
        &["clone", "-q", "-b", "main", &remote, "checkout"],
    );
    // In the layout the backend writes (sha256 fan-out directories).
    let sops_file = std::fs::read(
        checkout
            .join(ti_dir(GIT_PREFIX, "upd-c1-0"))
            .join("2.sops.yaml"),
    )
    .map_err(|e| format!("reading a SOPS file the backend wrote: {e}"))?;
    let git_dir: PathBuf = checkout.join(ti_dir(GIT_PREFIX, "bench-git"));
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
    p50_over(
        &mut report,
        "update c1",
        "git commit+push",
        "p50 over direct",
    )?;

    // OnUpdate at concurrency 32 (every worker its own TypeInstance).
    let mut slots = Vec::new();
    for id in update_ids(32) {
        t.create(&id, &value)
            .await
            .map_err(|s| format!("create {id}: {s}"))?;
        slots.push((id, 2));
    }
    let opts = options(32, UPDATE_OPS, WARMUP_OPS);
    let (stats, cost) = update_row(&t, &probe, slots, &value, &opts).await?;
    report.row_with_cost("update c32", checked("update c32", stats)?, cost);

    // One TypeInstance with HISTORY revisions, written through the backend
    // (the row doubles as OnUpdate into a directory that keeps growing).
    let many: Arc<[String]> = Arc::from(vec!["many".to_owned()]);
    t.create(&many[0], &value)
        .await
        .map_err(|s| format!("create many: {s}"))?;
    let (stats, cost) = update_row(
        &t,
        &probe,
        vec![(many[0].clone(), 2)],
        &value,
        &options(1, u64::from(HISTORY - 1), 0),
    )
    .await?;
    report.row_with_cost(
        "update rev 2..1000",
        checked("update rev 2..1000", stats)?,
        cost,
    );
    let opts = options(1, HISTORY_GET_OPS, WARMUP_OPS);
    let (first, cost) = get_row(&t, &probe, &many, 1, &opts).await?;
    report.row_with_cost(
        "get rev 1 of 1000",
        checked("get rev 1 of 1000", first)?,
        cost,
    );
    let (last, cost) = get_row(&t, &probe, &many, HISTORY, &opts).await?;
    report.row_with_cost(
        "get rev 1000 of 1000",
        checked("get rev 1000 of 1000", last)?,
        cost,
    );
    report.compare("get rev 1000 of 1000", "get rev 1 of 1000")?;

    bench::harness::size_sweep(&mut report, &t, &probe, "sweep", WARMUP_OPS).await?;
    drop(backend);
    Ok(report)
}
