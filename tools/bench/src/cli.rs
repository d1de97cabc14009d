//! `storage-bench`: one operation of a ValueAndContextStorageBackend, through
//! real gRPC, on TypeInstances it creates for the run and deletes afterwards.

use std::{
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use clap::{Args, Parser, ValueEnum};
use futures::{StreamExt, stream};
use shared::client::{Client, Context};
use storagectl::{ConnectArgs, Error};
use tonic::{Code, Status};

use crate::{Report, RunOptions, Stats};

/// Benchmark one operation of a storage backend through real gRPC.
#[derive(Parser, Debug)]
#[command(name = "storage-bench", version)]
pub struct Cli {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Operation to measure. get: GetValue of revision 1; update: OnUpdate
    /// of the worker's own TypeInstance with increasing revisions; create:
    /// OnCreate of a new TypeInstance per call; lock: OnLock and OnUnlock in
    /// turn on the worker's own TypeInstance (each call changes the lock).
    #[arg(long, env = "STORAGE_BENCH_OP", value_enum)]
    pub op: Op,

    /// Calls in flight at once.
    #[arg(long, env = "STORAGE_BENCH_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,

    #[command(flatten)]
    pub amount: Amount,

    /// Calls before measuring, not counted.
    #[arg(long, env = "STORAGE_BENCH_WARMUP_OPS", default_value_t = 10)]
    pub warmup_ops: u64,

    /// Size of each value in bytes (JSON text of exactly this size).
    #[arg(long, env = "STORAGE_BENCH_VALUE_SIZE", default_value_t = 1024)]
    pub value_size: usize,

    /// Context sent with every call, as JSON (required by some backends).
    #[arg(long, env = "STORAGE_BENCH_CONTEXT", value_parser = parse_context)]
    pub context: Option<Bytes>,

    /// Report format.
    #[arg(long, env = "STORAGE_BENCH_FORMAT", value_enum, default_value = "text")]
    pub format: Format,

    /// Process id of the backend (on this machine): adds its CPU time per
    /// call and its RSS (before the run, and the peak during it), read from
    /// /proc.
    #[arg(long, env = "STORAGE_BENCH_BACKEND_PID")]
    pub backend_pid: Option<u32>,
}

/// How long to run: a duration or a number of calls.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct Amount {
    /// Run for this long (e.g. `10s`, `1m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Run this many calls.
    #[arg(long)]
    pub ops: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Op {
    Get,
    Update,
    Create,
    Lock,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Update => "update",
            Op::Create => "create",
            Op::Lock => "lock",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// The Markdown table BENCHMARKS.md shows.
    Markdown,
}

fn parse_context(raw: &str) -> Result<Bytes, String> {
    serde_json::from_str::<serde_json::Value>(raw).map_err(|e| format!("not JSON: {e}"))?;
    Ok(Bytes::copy_from_slice(raw.as_bytes()))
}

/// A value of exactly `size` bytes that is also JSON text, so that backends
/// that only store JSON take it too.
pub fn make_value(size: usize) -> Bytes {
    const WRAP: usize = r#"{"d":""}"#.len();
    let fill = |n: usize| (0..n).map(|i| b'a' + (i % 26) as u8);
    let bytes: Vec<u8> = if size >= WRAP {
        br#"{"d":""#.iter().copied().chain(fill(size - WRAP)).chain(*br#""}"#).collect()
    } else {
        // A number: digits only, no leading zero.
        std::iter::repeat_n(b'1', size).collect()
    };
    Bytes::from(bytes)
}

/// Parses the command line, runs the benchmark, prints the report.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// TypeInstances one worker owns at a time (update, lock), handed out so
/// that no two calls ever touch the same one concurrently.
struct Pool {
    slots: Mutex<Vec<Slot>>,
}

struct Slot {
    id: String,
    /// update: the next revision to write; lock: 1 while locked.
    counter: u32,
}

impl Pool {
    fn take(&self) -> Result<Slot, String> {
        self.slots
            .lock()
            .map_err(|_| "the TypeInstance pool is poisoned".to_owned())?
            .pop()
            .ok_or_else(|| "no free TypeInstance in the pool".to_owned())
    }

    fn give(&self, slot: Slot) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.push(slot);
        }
    }
}

/// Everything one run needs and leaves behind.
struct Bench {
    client: Client,
    context: Context,
    value: Bytes,
    prefix: String,
    owner: String,
}

impl Bench {
    fn pool_id(&self, i: usize) -> String {
        format!("{}-w{i}", self.prefix)
    }

    fn create_id(prefix: &str, seq: u64) -> String {
        format!("{prefix}-c{seq}")
    }

    /// Creates the pool's TypeInstances; on failure deletes what it made.
    async fn prepare(&self, n: usize, concurrency: usize) -> Result<Vec<String>, Error> {
        let ids: Vec<String> = (0..n).map(|i| self.pool_id(i)).collect();
        let results: Vec<Result<(), Status>> = stream::iter(ids.iter())
            .map(|id| async move {
                self.client
                    .create(id, Some(self.value.clone()), self.context.clone())
                    .await
                    .map(drop)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        if let Some(err) = results.into_iter().find_map(Result::err) {
            self.cleanup(ids, concurrency).await;
            return Err(Error::Status(Status::new(
                err.code(),
                format!("preparing TypeInstances failed: {}", err.message()),
            )));
        }
        Ok(ids)
    }

    /// Deletes the run's TypeInstances (as the lock owner, in case one is
    /// still locked); NOT_FOUND is fine, anything else is reported.
    async fn cleanup(&self, ids: Vec<String>, concurrency: usize) {
        let total = ids.len();
        let failures: Vec<Error> = stream::iter(ids)
            .map(|id| async move {
                self.client
                    .delete(&id, self.context.clone(), Some(self.owner.clone()))
                    .await
            })
            .buffer_unordered(concurrency)
            .filter_map(|r| async move {
                match r {
                    Err(e) if e.code() != Code::NotFound => Some(Error::from(e)),
                    _ => None,
                }
            })
            .collect()
            .await;
        if let Some(first) = failures.first() {
            eprintln!(
                "warning: {} of {total} TypeInstances with prefix {} were not deleted: {first}",
                failures.len(),
                self.prefix
            );
        }
    }
}

/// Runs the benchmark; the exit code is 1 when any call failed.
pub async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let options = RunOptions {
        concurrency: cli.concurrency,
        duration: cli.amount.duration,
        ops: cli.amount.ops,
        warmup_ops: cli.warmup_ops,
    };
    options.check().map_err(Error::usage)?;
    let client = cli.connect.connect().await?;
    let info = client.info().clone();
    if !info.accept_value {
        return Err(Error::usage(format!(
            "storage-bench drives ValueAndContextStorageBackend; the {} backend serves ContextStorageBackend",
            info.name
        )));
    }
    let value = make_value(cli.value_size);
    client.check_size(&value).map_err(Error::usage)?;

    // Unique per run, so that runs never collide and leftovers are easy to find.
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench-{}", &run_id[..12]);
    let bench = Arc::new(Bench {
        owner: format!("{prefix}-owner"),
        client,
        context: cli.context,
        value,
        prefix,
    });
    let concurrency = cli.concurrency;
    let probe = cli.backend_pid.map(crate::ProcessProbe::new);
    // Before the run stores anything through the backend.
    let idle = match &probe {
        Some(p) => Some(p.read().map_err(Error::usage)?),
        None => None,
    };

    let pool_ids = match cli.op {
        Op::Create => Vec::new(),
        _ => bench.prepare(concurrency, concurrency).await?,
    };
    let pool = Arc::new(Pool {
        slots: Mutex::new(
            pool_ids
                .iter()
                .map(|id| Slot {
                    id: id.clone(),
                    counter: if cli.op == Op::Update { 2 } else { 0 },
                })
                .collect(),
        ),
    });
    // create: the highest sequence number tried, to know what to delete.
    let created = Arc::new(AtomicU64::new(0));

    let row = measure(cli.op, &bench, &pool, &pool_ids, &created, &options);
    let measured = tokio::select! {
        stats = async {
            match &probe {
                Some(p) => p.measure(row).await.map(|(s, c)| (s, Some(c))),
                None => row.await.map(|s| (s, None)),
            }
        } => Some(stats),
        _ = tokio::signal::ctrl_c() => None,
    };

    let mut leftovers = pool_ids;
    leftovers.extend(
        (0..created.load(Ordering::SeqCst)).map(|seq| Bench::create_id(&bench.prefix, seq)),
    );
    bench.cleanup(leftovers, concurrency).await;

    let Some(stats) = measured else {
        eprintln!("interrupted: cleaned up, no report");
        return Ok(ExitCode::from(130));
    };
    let (stats, cost) = stats.map_err(Error::other)?;

    let mut report = Report::new(format!(
        "storage-bench: {} against {} {}",
        cli.op.name(),
        info.name,
        info.version
    ));
    report
        .param("op", cli.op.name())
        .param("concurrency", concurrency)
        .param("value_size", cli.value_size)
        .param("warmup_ops", cli.warmup_ops)
        .param("backend", &info.name)
        .param("url", &cli.connect.url);
    if let Some(d) = cli.amount.duration {
        report.param("duration", humantime::format_duration(d));
    }
    if let Some(n) = cli.amount.ops {
        report.param("ops", n);
    }
    if let Some(pid) = cli.backend_pid {
        report.param("backend_pid", pid);
    }
    let failed = (stats.errors, stats.ops);
    match cost {
        Some(cost) => report.row_with_cost(cli.op.name(), stats, cost),
        None => report.row(cli.op.name(), stats),
    };
    if let Some(idle) = idle {
        report.extra(
            "RSS before",
            format!("{:.1} MiB", idle.rss_kib as f64 / 1024.0),
        );
    }
    let text = match cli.format {
        Format::Text => report.to_text(),
        Format::Json => report.to_json().map_err(Error::other)? + "\n",
        Format::Markdown => report.to_markdown(),
    };
    print!("{text}");
    if failed.0 > 0 {
        eprintln!("error: {} of {} calls failed", failed.0, failed.1);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The measured run of one operation.
async fn measure(
    op: Op,
    bench: &Arc<Bench>,
    pool: &Arc<Pool>,
    pool_ids: &[String],
    created: &Arc<AtomicU64>,
    options: &RunOptions,
) -> Result<Stats, String> {
    let message = |e: Error| e.to_string();
    match op {
        Op::Get => {
            let ids: Arc<[String]> = pool_ids.into();
            let bench = Arc::clone(bench);
            crate::run(
                move |seq| {
                    let (bench, ids) = (Arc::clone(&bench), Arc::clone(&ids));
                    async move {
                        let id = pick(&ids, seq)?;
                        // An unset value is a failed call, as in the Hub.
                        match bench.client.get(id, 1, bench.context.clone()).await {
                            Ok(Some(_)) => Ok(()),
                            Ok(None) => Err(format!(
                                "the {} backend answered GetValue without a value",
                                bench.client.info().name
                            )),
                            Err(status) => Err(message(status.into())),
                        }
                    }
                },
                options,
            )
            .await
        }
        Op::Create => {
            let (bench, created) = (Arc::clone(bench), Arc::clone(created));
            crate::run(
                move |seq| {
                    let (bench, created) = (Arc::clone(&bench), Arc::clone(&created));
                    async move {
                        created.fetch_max(seq + 1, Ordering::SeqCst);
                        let id = Bench::create_id(&bench.prefix, seq);
                        bench
                            .client
                            .create(&id, Some(bench.value.clone()), bench.context.clone())
                            .await
                            .map(drop)
                            .map_err(|s| message(s.into()))
                    }
                },
                options,
            )
            .await
        }
        Op::Update | Op::Lock => {
            let (bench, pool) = (Arc::clone(bench), Arc::clone(pool));
            crate::run(
                move |_| {
                    let (bench, pool) = (Arc::clone(&bench), Arc::clone(&pool));
                    async move {
                        let mut slot = pool.take()?;
                        let result = if op == Op::Update {
                            with_slot_update(&bench, &mut slot).await
                        } else {
                            with_slot_lock(&bench, &mut slot).await
                        };
                        pool.give(slot);
                        result.map_err(message)
                    }
                },
                options,
            )
            .await
        }
    }
}

fn pick(ids: &[String], seq: u64) -> Result<&str, String> {
    let n = ids.len() as u64;
    (n > 0)
        .then(|| ids.get((seq % n) as usize))
        .flatten()
        .map(String::as_str)
        .ok_or_else(|| "no TypeInstance to read".to_owned())
}

/// Writes the slot's next revision. The counter moves on even after a
/// failure: the revision may have been stored, and a gap is harmless.
async fn with_slot_update(bench: &Bench, slot: &mut Slot) -> Result<(), Error> {
    let revision = slot.counter;
    slot.counter = slot.counter.saturating_add(1);
    bench
        .client
        .update(
            &slot.id,
            revision,
            Some(bench.value.clone()),
            bench.context.clone(),
            None,
        )
        .await
        .map(drop)
        .map_err(Error::from)
}

/// Locks an unlocked slot, unlocks a locked one.
async fn with_slot_lock(bench: &Bench, slot: &mut Slot) -> Result<(), Error> {
    if slot.counter == 0 {
        bench
            .client
            .lock(&slot.id, &bench.owner, bench.context.clone())
            .await?;
        slot.counter = 1;
    } else {
        bench.client.unlock(&slot.id, bench.context.clone()).await?;
        slot.counter = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn duration_and_ops_exclude_each_other() {
        let base = ["storage-bench", "--op", "get"];
        let parse = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra).copied());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--ops", "5", "--duration", "1s"]).is_err());
        let cli = parse(&["--duration", "10s", "--concurrency", "8"]).expect("parses");
        assert_eq!(cli.amount.duration, Some(Duration::from_secs(10)));
        assert_eq!(cli.concurrency, 8);
        assert_eq!(cli.backend_pid, None);
        let cli = parse(&["--ops", "5", "--backend-pid", "42"]).expect("parses");
        assert_eq!(cli.backend_pid, Some(42));
        assert!(parse(&["--ops", "5", "--backend-pid", "x"]).is_err());
        assert!(parse(&["--ops", "5", "--context", "{bad"]).is_err());
    }

    #[test]
    fn values_have_the_exact_size_and_are_json() {
        for size in [0, 1, 7, 8, 9, 100, 4096] {
            let value = make_value(size);
            assert_eq!(value.len(), size);
            if size > 0 {
                assert!(
                    serde_json::from_slice::<serde_json::Value>(&value).is_ok(),
                    "size {size}"
                );
            }
        }
    }

    #[test]
    fn pick_spreads_over_the_pool() {
        let ids = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(pick(&ids, 0).ok(), Some("a"));
        assert_eq!(pick(&ids, 3).ok(), Some("b"));
        assert!(pick(&[], 0).is_err());
    }
}
