//! Pieces every `harness = false` bench target of a backend needs.

use std::{
    future::Future,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use crate::{Report, Stats};

/// `main` of a bench target: runs `bench` only under `cargo bench` (which
/// passes `--bench`), so `cargo test --benches` stays fast, and prints the
/// report as text.
pub fn bench_main<F>(name: &str, bench: impl FnOnce() -> F) -> ExitCode
where
    F: Future<Output = Result<Report, String>>,
{
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name}: run it with `cargo bench`");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
            print!("{}", report.to_text());
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
