//! Pieces every `harness = false` bench target of a backend needs.

use std::{
    future::Future,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{Cost, ProcessProbe, Report, Stats, cost::Reading};

/// `main` of a bench target: runs `bench` only under `cargo bench` (which
/// passes `--bench`), so `cargo test --benches` stays fast, on a
/// single-threaded runtime, and prints the report as text.
pub fn bench_main<F>(name: &str, bench: impl FnOnce() -> F) -> ExitCode
where
    F: Future<Output = Result<Report, String>>,
{
    if let Some(code) = crate::forwarder::serve_if_asked() {
        return code;
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name}: run it with `cargo bench`");
        return ExitCode::SUCCESS;
    }
    // One client thread: the client's own wake-ups (tonic's buffer, h2 and
    // HTTP/1 connection tasks) then stay on one core instead of adding
    // cross-thread hand-offs to every measured call, direct or not.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The whole report as JSON for tools/bench/run-all.sh, if asked.
    let outcome =
        runtime
            .block_on(bench())
            .and_then(|report| match std::env::var_os("BENCH_JSON") {
                Some(path) => report
                    .to_json()
                    .and_then(|json| {
                        std::fs::write(&path, json).map_err(|e| format!("writing BENCH_JSON: {e}"))
                    })
                    .map(|()| report),
                None => Ok(report),
            });
    match outcome {
        Ok(report) => {
            // The text for people, then the table BENCHMARKS.md shows.
            print!("{}\n{}", report.to_text(), report.to_markdown());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Items handed to one worker at a time, so that no two calls share one.
pub struct Pool<T>(Mutex<Vec<T>>);

impl<T> Pool<T> {
    pub fn new(items: Vec<T>) -> Arc<Self> {
        Arc::new(Self(Mutex::new(items)))
    }

    pub fn take(&self) -> Result<T, String> {
        self.0
            .lock()
            .map_err(|_| "pool poisoned".to_owned())?
            .pop()
            .ok_or_else(|| "pool empty".to_owned())
    }

    pub fn give(&self, item: T) {
        if let Ok(mut items) = self.0.lock() {
            items.push(item);
        }
    }
}

/// Fails when any call of a row failed: a ratio of failures means nothing.
pub fn checked(name: &str, stats: Stats) -> Result<Stats, String> {
    match (&stats.first_error, stats.errors) {
        (Some(e), n) if n > 0 => Err(format!("{name}: {n} of {} calls failed: {e}", stats.ops)),
        _ => Ok(stats),
    }
}

/// The backend's metrics as `name{labels}` → value.
pub fn scrape(port: u16) -> Result<std::collections::HashMap<String, f64>, String> {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connect to the backend's metrics: {e}"))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("metrics request: {e}"))?;
    let mut text = String::new();
    conn.read_to_string(&mut text)
        .map_err(|e| format!("metrics response: {e}"))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

/// Adds the mean time per request inside the backend's handler and in its
/// store calls (`store_ops`: the `operation` labels), from the metric deltas
/// of one row: what is left of the client-side latency is the gRPC hop.
pub fn split(
    report: &mut Report,
    row: &str,
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
    method: &str,
    store_ops: &[&str],
) {
    let delta =
        |k: String| after.get(&k).copied().unwrap_or(0.0) - before.get(&k).copied().unwrap_or(0.0);
    let requests = delta(format!(
        "storage_backend_grpc_request_duration_seconds_count{{method=\"{method}\"}}"
    ));
    if requests <= 0.0 {
        return;
    }
    let handler = delta(format!(
        "storage_backend_grpc_request_duration_seconds_sum{{method=\"{method}\"}}"
    ));
    let (mut store, mut calls) = (0.0, 0.0);
    for op in store_ops {
        store += delta(format!(
            "storage_backend_store_call_duration_seconds_sum{{operation=\"{op}\"}}"
        ));
        calls += delta(format!(
            "storage_backend_store_call_duration_seconds_count{{operation=\"{op}\"}}"
        ));
    }
    report.param(
        format!("{row}: mean per request"),
        format!(
            "handler {:.0}us, store {:.0}us in {:.2} calls, in-backend rest {:.0}us",
            handler / requests * 1e6,
            store / requests * 1e6,
            calls / requests,
            (handler - store) / requests * 1e6
        ),
    );
}

/// Adds the two rows of a paired run (`{row} {through}`, `{row} direct`),
/// their comparison, and the median of the per-round p50 ratios with its
/// spread. `through` names the paired run's first side: "backend", or
/// "forwarder" for [`crate::forwarder`]. Fails when any call failed.
pub fn paired_rows(
    report: &mut Report,
    row: &str,
    through: &str,
    paired: crate::Paired,
) -> Result<(), String> {
    paired_rows_with_cost(report, row, through, paired, None)
}

/// [`paired_rows`] with what the `through` side cost its process (the
/// backend, or the forwarder of a floor row).
pub fn paired_rows_with_cost(
    report: &mut Report,
    row: &str,
    through: &str,
    paired: crate::Paired,
    cost: Option<Cost>,
) -> Result<(), String> {
    let (backend, direct) = (format!("{row} {through}"), format!("{row} direct"));
    let median = paired.median_round_ratio();
    let (min, max) = paired
        .round_ratios
        .iter()
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), r| {
            (lo.min(*r), hi.max(*r))
        });
    report.row(&direct, checked(&direct, paired.direct)?);
    let stats = checked(&backend, paired.backend)?;
    match cost {
        Some(cost) => report.row_with_cost(&backend, stats, cost),
        None => report.row(&backend, stats),
    };
    report.compare(&backend, &direct)?;
    if let Some(m) = median {
        report.param(
            format!("{row}: p50 ratio per round"),
            format!(
                "median x{m:.2} over {} alternating rounds (min x{min:.2}, max x{max:.2})",
                paired.round_ratios.len()
            ),
        );
    }
    Ok(())
}

/// The floor rows (`floor cN forwarder`, `floor cN direct`): the same store
/// call through [`crate::forwarder`] and straight to the store, in
/// alternating rounds like the backend rows. With `forwarder` (its probe)
/// the forwarder row carries what copying the bytes cost that process.
pub async fn floor_rows(
    report: &mut Report,
    via_forwarder: CyclingOp,
    direct: CyclingOp,
    options: &crate::RunOptions,
    rounds: u64,
    forwarder: Option<&ProcessProbe>,
) -> Result<(), String> {
    let rounds = crate::run_paired(via_forwarder, direct, options, rounds);
    let (floor, cost) = match forwarder {
        Some(probe) => {
            let (floor, cost) = probe.measure_paired(rounds).await?;
            (floor, Some(cost))
        }
        None => (rounds.await?, None),
    };
    let row = format!("floor c{}", options.concurrency);
    paired_rows_with_cost(report, &row, "forwarder", floor, cost)
}

/// Adds to `row` how much its p50 is above `base`'s (e.g. a backend row
/// over the forwarder floor at the same concurrency), as the figure `key`.
pub fn p50_over(report: &mut Report, row: &str, base: &str, key: &str) -> Result<(), String> {
    let p50 = |name: &str| {
        report
            .rows
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.stats.p50.as_secs_f64() * 1e6)
            .ok_or_else(|| format!("the report has no row {name:?}"))
    };
    let added = p50(row)? - p50(base)?;
    if let Some(r) = report.rows.iter_mut().find(|r| r.name == row) {
        r.extra.insert(key.to_owned(), format!("{added:+.0} µs"));
    }
    Ok(())
}

/// What starting the backend cost: spawn to the first SERVING answer, and
/// its RSS right then (before the bench stores anything through it).
#[derive(Clone, Copy, Debug)]
pub struct Startup {
    pub to_serving: Duration,
    pub idle: Reading,
}

impl Startup {
    /// Waits for SERVING on `url` (the process was spawned at `spawned`)
    /// and reads the process's memory.
    pub async fn measure(
        url: &str,
        spawned: Instant,
        probe: &ProcessProbe,
    ) -> Result<Self, String> {
        let to_serving = wait_serving(url, spawned).await?;
        Ok(Self {
            to_serving,
            idle: probe.read()?,
        })
    }

    /// Adds "start to SERVING" and "RSS idle" to the last row of `report`.
    pub fn annotate(&self, report: &mut Report) {
        report
            .extra(
                "start to SERVING",
                format!("{} ms", self.to_serving.as_millis()),
            )
            .extra(
                "RSS idle",
                format!("{:.1} MiB", self.idle.rss_kib as f64 / 1024.0),
            )
            .extra(
                "of it anonymous",
                format!("{:.1} MiB", self.idle.anon_kib as f64 / 1024.0),
            );
    }
}

/// Time from `spawned` to the first SERVING answer of the health service
/// at `url`. Polled every 2 ms (testkit's own wait polls every 200 ms, too
/// coarse for a start measured in tens of milliseconds); gives up after 30 s.
pub async fn wait_serving(url: &str, spawned: Instant) -> Result<Duration, String> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("backend url {url}: {e}"))?
        .connect_timeout(Duration::from_secs(1));
    while spawned.elapsed() < Duration::from_secs(30) {
        if let Ok(channel) = endpoint.connect().await {
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await;
            if answer.is_ok_and(|a| a.into_inner().status == ServingStatus::Serving as i32) {
                return Ok(spawned.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(format!("{url} did not report SERVING within 30 s"))
}

/// The value sizes of the sweep beside the 1 KiB rows, with the calls of
/// their GetValue and OnUpdate rows (fewer for larger values: the CPU a
/// row measures grows with the size).
pub const SWEEP: [(usize, u64, u64); 2] = [(64 << 10, 600, 300), (1 << 20, 80, 50)];

/// "64 KiB", "1 MiB", or the exact bytes when not a whole KiB.
pub fn size_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// GetValue and OnUpdate at concurrency 1 of each [`SWEEP`] size, one
/// TypeInstance per size (`{id_prefix}-{size}`), each row measured with
/// `probe`. Sizes above the backend's limit are lowered to it (and named
/// by their real size); a size that would repeat the previous one is left
/// out, and so noted in the report's parameters.
pub async fn size_sweep(
    report: &mut Report,
    target: &Arc<conformance::Target>,
    probe: &ProcessProbe,
    id_prefix: &str,
    warmup_ops: u64,
) -> Result<(), String> {
    let limit = usize::try_from(target.describe().max_value_bytes)
        .ok()
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let mut previous = 0;
    for (size, get_ops, update_ops) in SWEEP {
        let bytes = size.min(limit);
        if bytes == previous {
            report.param(
                format!("sweep {}", size_label(size)),
                format!("left out: the backend takes at most {limit} bytes"),
            );
            continue;
        }
        previous = bytes;
        let label = size_label(bytes);
        let value = crate::cli::make_value(bytes);
        let id = format!("{id_prefix}-{bytes}");
        target
            .create(&id, &value)
            .await
            .map_err(|s| format!("create {id}: {s}"))?;
        let ids: Arc<[String]> = Arc::from(vec![id.clone()]);
        let options = |ops| crate::RunOptions {
            concurrency: 1,
            duration: None,
            ops: Some(ops),
            warmup_ops: warmup_ops.min(ops / 4),
        };
        let name = format!("get c1 {label}");
        let (stats, cost) = probe
            .measure(crate::run(get_cycling(target, &ids, 1), &options(get_ops)))
            .await?;
        report.row_with_cost(&name, checked(&name, stats)?, cost);

        let name = format!("update c1 {label}");
        let (stats, cost) = probe
            .measure(crate::run(
                update_cycling(target, vec![(id, 2)], value),
                &options(update_ops),
            ))
            .await?;
        report.row_with_cost(&name, checked(&name, stats)?, cost);
    }
    Ok(())
}

/// OnUpdate of the next revision of the slots' TypeInstances (`(id, next
/// revision)`), each call on a slot of its own; a failed call leaves its
/// revision to the next.
pub fn update_cycling(
    target: &Arc<conformance::Target>,
    slots: Vec<(String, u32)>,
    value: bytes::Bytes,
) -> CyclingOp {
    let (target, pool) = (Arc::clone(target), Pool::new(slots));
    Box::new(move |_| {
        let (target, pool, value) = (Arc::clone(&target), Arc::clone(&pool), value.clone());
        Box::pin(async move {
            let (id, rev) = pool.take()?;
            let result = target.update(&id, rev, &value, None).await;
            pool.give((id, if result.is_ok() { rev + 1 } else { rev }));
            result.map(drop).map_err(|s| s.to_string())
        })
    })
}

/// The boxed operation [`crate::run`] / [`crate::run_paired`] take from
/// [`cycling`].
pub type CyclingOp = Box<
    dyn Fn(u64) -> std::pin::Pin<Box<dyn Future<Output = crate::OpResult> + Send>> + Send + Sync,
>;

/// An operation for [`crate::run`] / [`crate::run_paired`]: call `seq`
/// runs `op` on `ids[seq % ids.len()]`, so that every worker cycles over
/// the same TypeInstances.
pub fn cycling<F, Fut>(ids: &Arc<[String]>, op: F) -> CyclingOp
where
    F: Fn(&str) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = crate::OpResult> + Send + 'static,
{
    let ids = Arc::clone(ids);
    Box::new(move |seq| {
        let index = usize::try_from(seq % ids.len().max(1) as u64).unwrap_or(0);
        match ids.get(index) {
            Some(id) => Box::pin(op(id)),
            None => Box::pin(async { Err("no TypeInstance to read".to_owned()) }),
        }
    })
}

/// GetValue of `revision` through `target`, cycling over `ids`.
pub fn get_cycling(
    target: &Arc<conformance::Target>,
    ids: &Arc<[String]>,
    revision: u32,
) -> CyclingOp {
    let target = Arc::clone(target);
    cycling(ids, move |id| {
        let (target, id) = (Arc::clone(&target), id.to_owned());
        async move {
            target
                .get(&id, revision)
                .await
                .map(drop)
                .map_err(|s| s.to_string())
        }
    })
}
