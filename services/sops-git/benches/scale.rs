//! sops-git at scale: what one write and one read cost the backend when the
//! repository already holds 0, 1,000, 10,000 or 100,000 TypeInstances, on
//! the default embedded remote (`<data>/remote.git`).
//!
//! The repository is filled by a bulk loader that writes exactly the files
//! the backend writes for a create (revision 1 and `latest`, encrypted by
//! the backend's own codec, in its layout) in one `git fast-import` commit;
//! then the backend is started and measured through gRPC: OnCreate,
//! OnUpdate and GetValue at concurrency 1, with the backend's CPU per call
//! and peak RSS from /proc, start to SERVING, bytes the data directory
//! grew per write, and its size against `git gc` of a copy of the same
//! repository.
//!
//! `cargo bench -p sops-git --bench scale` (SOPS_GIT_SCALE=0,1000 for a
//! shorter run). Figures are printed, never asserted.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use bench::{ProcessProbe, Report, cli::make_value, harness::checked};
use sha2::Digest;
use support::{age_keygen, start_backend, target};

const VALUE_SIZE: usize = 1024;
const OPS: u64 = 200;
const GET_OPS: u64 = 1000;
/// Rounds each operation's calls are split into, alternating repositories.
const ROUNDS: usize = 10;
const PREFIX: &str = "typeinstances";

fn main() -> std::process::ExitCode {
    bench::harness::bench_main("sops-git scale bench", bench_all)
}

fn sizes() -> Vec<usize> {
    std::env::var("SOPS_GIT_SCALE")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 1_000, 10_000, 100_000])
}

/// The directory of a TypeInstance, as the backend's README documents it.
fn ti_dir(id: &str) -> String {
    let h = hex::encode(sha2::Sha256::digest(id.as_bytes()));
    format!("{PREFIX}/{}/{}/{}/{id}", &h[0..1], &h[1..2], &h[2..3])
}

/// Bytes the files under `dir` take on disk (allocated blocks).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Adds `n` TypeInstances to the branch of the bare repository `remote` in
/// one commit: per id, revision 1 and `latest.sops.yaml`, the same
/// document, as the backend's create writes them.
fn bulk_load(
    remote: &Path,
    n: usize,
    recipient: &age::x25519::Recipient,
    value: &[u8],
) -> Result<(), String> {
    if n == 0 {
        return Ok(());
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(remote)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("git fast-import: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stream = std::io::BufWriter::new(&mut stdin);
    let w = |s: &mut std::io::BufWriter<_>, b: &[u8]| s.write_all(b).map_err(|e| e.to_string());
    let recipients = [recipient.clone()];
    for i in 0..n {
        let binding = sops_git::sops::Binding {
            type_instance_id: format!("bulk-{i}"),
            revision: 1,
        };
        let doc = sops_git::sops::encrypt(value, Some(&binding), &recipients, SystemTime::now())
            .map_err(|e| format!("encrypt: {e}"))?;
        w(
            &mut stream,
            format!("blob\nmark :{}\ndata {}\n", i + 1, doc.len()).as_bytes(),
        )?;
        w(&mut stream, doc.as_bytes())?;
        w(&mut stream, b"\n")?;
    }
    let message = format!("bulk load {n} type instances");
    w(
        &mut stream,
        format!(
            "commit refs/heads/main\ncommitter bench <bench@localhost> 0 +0000\ndata {}\n{message}\nfrom refs/heads/main^0\n",
            message.len()
        )
        .as_bytes(),
    )?;
    for i in 0..n {
        let dir = ti_dir(&format!("bulk-{i}"));
        for file in ["1.sops.yaml", "latest.sops.yaml"] {
            w(
                &mut stream,
                format!("M 100644 :{} {dir}/{file}\n", i + 1).as_bytes(),
            )?;
        }
    }
    w(&mut stream, b"\n")?;
    stream.flush().map_err(|e| e.to_string())?;
    drop(stream);
    drop(stdin);
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("git fast-import failed: {status}"));
    }
    Ok(())
}

/// Size on disk of `git gc` of a copy of `remote`.
fn gc_size(remote: &Path, scratch: &Path) -> Result<u64, String> {
    let copy = scratch.join("gc-copy.git");
    run(Command::new("git")
        .args(["clone", "-q", "--bare", "--no-local"])
        .arg(remote)
        .arg(&copy))?;
    run(Command::new("git")
        .arg("-C")
        .arg(&copy)
        .args(["gc", "-q", "--prune=now"]))?;
    let size = disk_bytes(&copy.join("objects"));
    std::fs::remove_dir_all(&copy).map_err(|e| e.to_string())?;
    Ok(size)
}

async fn bench_all() -> Result<Report, String> {
    let value = make_value(VALUE_SIZE);
    let mut report = Report::new("sops-git-backend (gRPC) at scale, default embedded remote");
    report
        .param("value_size", VALUE_SIZE)
        .param("write_ops", OPS)
        .param("get_ops", GET_OPS)
        .param("rounds", ROUNDS)
        .param("concurrency", 1)
        .build_profile();
    let mut scales = Vec::new();
    for n in sizes() {
        scales.push(Scale::start(n, &value).await?);
    }
    let ids: Vec<String> = (0..OPS).map(|i| format!("new-{i}")).collect();
    let per_round = ids.len().div_ceil(ROUNDS);
    // Rounds alternate between the repositories (in a rotating order), so
    // that the drift of a shared machine hits every size alike.
    for op in [Op::Create, Op::Update] {
        for (round, chunk) in ids.chunks(per_round).enumerate() {
            for k in 0..scales.len() {
                let i = (k + round) % scales.len();
                scales[i].calls(op, chunk, &value).await?;
            }
        }
    }
    // Maintenance runs every few writes in the background: let the last
    // run end before the disk is measured.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for scale in &mut scales {
        scale.after = disk_bytes(&scale.data);
        // One read of each first: the rows show the steady cost, not the
        // first read of each file from disk into the page cache.
        for id in &ids {
            scale
                .t
                .get(id, 2)
                .await
                .map_err(|e| format!("warm-up: {e}"))?;
        }
    }
    let reads: Vec<String> = (0..GET_OPS as usize)
        .map(|i| ids[i % ids.len()].clone())
        .collect();
    for (round, chunk) in reads.chunks(reads.len().div_ceil(ROUNDS)).enumerate() {
        for k in 0..scales.len() {
            let i = (k + round) % scales.len();
            scales[i].calls(Op::Get, chunk, &value).await?;
        }
    }
    for scale in scales {
        scale.report(&mut report)?;
    }
    Ok(report)
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Create,
    /// To revision 2.
    Update,
    /// Of revision 2.
    Get,
}

/// Calls of one operation on one repository, over all rounds.
#[derive(Default)]
struct Acc {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    ticks: u64,
    peak_rss_kib: u64,
}

/// One repository of `n` TypeInstances and its backend.
struct Scale {
    n: usize,
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    backend: testkit::BackendProcess,
    probe: ProcessProbe,
    t: conformance::Target,
    start_to_serving: Duration,
    idle_rss_kib: u64,
    before: u64,
    after: u64,
    acc: [Acc; 3],
}

impl Scale {
    async fn start(n: usize, value: &[u8]) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (key_file, identity) = age_keygen(dir.path());
        let key = key_file.to_string_lossy().into_owned();
        let data = dir.path().join("data");
        let env = [("APP_SOPS_AGE_KEY_FILE", key.as_str())];
        // A first start creates the embedded remote and its layout.
        drop(start_backend(&data, &env).await);
        bulk_load(&data.join("remote.git"), n, &identity.to_public(), value)?;
        // A start that fetches the loaded tip: the measured start below is
        // a restart of a backend whose clone holds all of it.
        drop(start_backend(&data, &env).await);
        let started = Instant::now();
        let backend = start_backend(&data, &env).await;
        let start_to_serving = started.elapsed();
        let probe = ProcessProbe::new(backend.pid().ok_or("the backend is not running")?);
        let idle_rss_kib = probe.read()?.rss_kib;
        let t = target(&backend.url).await;
        let before = disk_bytes(&data);
        Ok(Self {
            n,
            dir,
            data,
            backend,
            probe,
            t,
            start_to_serving,
            idle_rss_kib,
            before,
            after: 0,
            acc: Default::default(),
        })
    }

    async fn calls(&mut self, op: Op, ids: &[String], value: &[u8]) -> Result<(), String> {
        let acc = &mut self.acc[op as usize];
        self.probe.reset_peak();
        let ticks = self.probe.cpu_ticks()?;
        let started = Instant::now();
        for id in ids {
            let t0 = Instant::now();
            let result = match op {
                Op::Create => self.t.create(id, value).await.map(drop),
                Op::Update => self.t.update(id, 2, value, None).await,
                Op::Get => self.t.get(id, 2).await.map(drop),
            };
            match result {
                Ok(()) => acc.latencies.push(t0.elapsed()),
                Err(e) => {
                    acc.errors += 1;
                    acc.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        acc.elapsed += started.elapsed();
        acc.ticks += self.probe.settled_ticks().await?.saturating_sub(ticks);
        acc.peak_rss_kib = acc.peak_rss_kib.max(self.probe.read()?.peak_rss_kib);
        Ok(())
    }

    fn report(self, report: &mut Report) -> Result<(), String> {
        let [create, update, get] = self.acc;
        let rss = self.probe.read()?;
        let row = |report: &mut Report, name: &str, acc: Acc| -> Result<(), String> {
            let stats = bench::Stats::from_latencies(
                acc.latencies,
                acc.errors,
                acc.elapsed,
                acc.first_error,
            );
            let mut cost = self.probe.cost(acc.ticks, stats.ops, rss);
            cost.peak_rss_kib = acc.peak_rss_kib;
            let name = format!("{name} @ {}", self.n);
            report.row_with_cost(&name, checked(&name, stats)?, cost);
            Ok(())
        };
        row(report, "create", create)?;
        report
            .extra(
                "start to SERVING",
                format!("{} ms", self.start_to_serving.as_millis()),
            )
            .extra(
                "RSS idle",
                format!("{:.1} MiB", self.idle_rss_kib as f64 / 1024.0),
            );
        row(report, "update", update)?;
        report.extra(
            "disk added per write",
            format!(
                "{:.1} KiB",
                self.after.saturating_sub(self.before) as f64 / 1024.0 / (2 * OPS) as f64
            ),
        );
        row(report, "get", get)?;
        let gc = gc_size(&self.data.join("remote.git"), self.dir.path())?;
        report
            .extra(
                "data dir",
                format!("{:.1} MiB", self.after as f64 / 1048576.0),
            )
            .extra("git gc of it", format!("{:.1} MiB", gc as f64 / 1048576.0));
        drop(self.backend);
        Ok(())
    }
}
