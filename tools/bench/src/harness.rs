//! Pieces every `harness = false` bench target of a backend needs.

use std::{
    future::Future,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use crate::{Report, Stats};

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
    match runtime.block_on(bench()) {
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
    let (backend, direct) = (format!("{row} {through}"), format!("{row} direct"));
    let median = paired.median_round_ratio();
    let (min, max) = paired
        .round_ratios
        .iter()
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), r| {
            (lo.min(*r), hi.max(*r))
        });
    report.row(&direct, checked(&direct, paired.direct)?);
    report.row(&backend, checked(&backend, paired.backend)?);
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
/// alternating rounds like the backend rows.
pub async fn floor_rows(
    report: &mut Report,
    via_forwarder: CyclingOp,
    direct: CyclingOp,
    options: &crate::RunOptions,
    rounds: u64,
) -> Result<(), String> {
    let floor = crate::run_paired(via_forwarder, direct, options, rounds).await?;
    let row = format!("floor c{}", options.concurrency);
    paired_rows(report, &row, "forwarder", floor)
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
