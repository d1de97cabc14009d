//! Latency and throughput of any async operation, run by concurrent workers.
//!
//! [`run`] drives an operation `Fn(sequence) -> Future<Output = Result<(), String>>`
//! and returns [`Stats`]; [`Report`] prints them as text rows or JSON;
//! [`ratio`] compares a run through a backend with the same workload sent
//! straight to its store. The `storage-bench` binary ([`cli`]) uses it
//! against a real backend over gRPC.

pub mod cli;
pub mod harness;
pub mod report;
pub mod stats;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::task::JoinSet;

pub use report::{Comparison, Report, Row};
pub use stats::{Ratio, Stats, format_latency, percentile, ratio};

/// The result of one call: the error is a message only (a status code and
/// text, never a value).
pub type OpResult = Result<(), String>;

/// How long and how wide a run is.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Workers calling the operation at the same time (1 or more).
    pub concurrency: usize,
    /// Stop starting calls after this long (in-flight calls finish).
    pub duration: Option<Duration>,
    /// Stop after this many calls in total. With `duration` too, whichever
    /// comes first ends the run.
    pub ops: Option<u64>,
    /// Calls made before measuring (same concurrency), not counted.
    pub warmup_ops: u64,
}

impl RunOptions {
    pub fn check(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("concurrency must be 1 or more".into());
        }
        match (self.duration, self.ops) {
            (None, None) => Err("give a duration or a number of ops".into()),
            (Some(d), _) if d.is_zero() => Err("duration must be above zero".into()),
            (_, Some(0)) => Err("ops must be 1 or more".into()),
            _ => Ok(()),
        }
    }
}

/// Runs `op` with the given options and measures each call.
///
/// Every call gets a distinct sequence number, counting up from 0 across
/// the warm-up and the measured phase (warm-up calls get `0..warmup_ops`),
/// so an operation can derive unique ids or pick its own input from it.
/// Workers are tokio tasks: the runtime's threads run them in parallel.
pub async fn run<F, Fut>(op: F, options: &RunOptions) -> Result<Stats, String>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = OpResult> + Send + 'static,
{
    options.check()?;
    let op = Arc::new(op);
    let mut first_seq = 0;
    if options.warmup_ops > 0 {
        let warmup = Phase {
            first_seq,
            max_ops: Some(options.warmup_ops),
            deadline: None,
        };
        let done = warmup.run(&op, options.concurrency).await?;
        first_seq = done.calls();
    }
    let start = Instant::now();
    let measured = Phase {
        first_seq,
        max_ops: options.ops,
        deadline: options.duration.map(|d| start + d),
    };
    let samples = measured.run(&op, options.concurrency).await?;
    let elapsed = start.elapsed();
    Ok(Stats::from_latencies(
        samples.latencies,
        samples.errors,
        elapsed,
        samples.first_error,
    ))
}

/// One phase of a run: its sequence numbers start at `first_seq`.
struct Phase {
    first_seq: u64,
    max_ops: Option<u64>,
    deadline: Option<Instant>,
}

/// What the workers of one phase saw.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl Samples {
    fn calls(&self) -> u64 {
        self.latencies.len() as u64 + self.errors
    }

    fn merge(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

impl Phase {
    async fn run<F, Fut>(&self, op: &Arc<F>, concurrency: usize) -> Result<Samples, String>
    where
        F: Fn(u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = OpResult> + Send + 'static,
    {
        // Claimed one at a time: a call is only started after its number is
        // taken, so every number below the final count was called exactly once.
        let claimed = Arc::new(AtomicU64::new(0));
        let per_worker = self
            .max_ops
            .map_or(1024, |n| (n / concurrency as u64).saturating_add(1));
        let mut workers = JoinSet::new();
        for _ in 0..concurrency {
            let op = Arc::clone(op);
            let claimed = Arc::clone(&claimed);
            let (first_seq, max_ops, deadline) = (self.first_seq, self.max_ops, self.deadline);
            let capacity = usize::try_from(per_worker).unwrap_or(1024).min(1 << 20);
            workers.spawn(async move {
                let mut samples = Samples {
                    latencies: Vec::with_capacity(capacity),
                    ..Samples::default()
                };
                loop {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let n = claimed.fetch_add(1, Ordering::Relaxed);
                    if max_ops.is_some_and(|max| n >= max) {
                        break;
                    }
                    let started = Instant::now();
                    let result = op(first_seq + n).await;
                    let latency = started.elapsed();
                    match result {
                        Ok(()) => samples.latencies.push(latency),
                        Err(e) => {
                            samples.errors += 1;
                            samples.first_error.get_or_insert(e);
                        }
                    }
                }
                samples
            });
        }
        let mut all = Samples::default();
        while let Some(joined) = workers.join_next().await {
            let samples = joined.map_err(|e| format!("a benchmark worker failed: {e}"))?;
            all.merge(samples);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::BTreeSet, sync::Mutex};

    fn options(concurrency: usize, ops: u64, warmup_ops: u64) -> RunOptions {
        RunOptions {
            concurrency,
            duration: None,
            ops: Some(ops),
            warmup_ops,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_sequence_number_is_called_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let stats = run(
            move |seq| {
                let record = Arc::clone(&record);
                async move {
                    record.lock().map_err(|e| e.to_string())?.push(seq);
                    tokio::task::yield_now().await;
                    Ok(())
                }
            },
            &options(7, 500, 20),
        )
        .await
        .expect("runs");
        assert_eq!(stats.ops, 500);
        assert_eq!(stats.errors, 0);
        let seen = seen.lock().expect("not poisoned").clone();
        assert_eq!(seen.len(), 520);
        let unique: BTreeSet<u64> = seen.iter().copied().collect();
        assert_eq!(unique, (0..520).collect::<BTreeSet<u64>>());
    }

    #[tokio::test]
    async fn errors_are_counted_and_the_first_kept() {
        let stats = run(
            |seq| async move {
                if seq % 4 == 0 {
                    Err(format!("UNAVAILABLE: call {seq}"))
                } else {
                    Ok(())
                }
            },
            &options(1, 100, 0),
        )
        .await
        .expect("runs");
        assert_eq!(stats.ops, 100);
        assert_eq!(stats.errors, 25);
        assert_eq!(stats.successes(), 75);
        assert_eq!(stats.first_error.as_deref(), Some("UNAVAILABLE: call 0"));
    }

    #[tokio::test]
    async fn warmup_calls_are_not_measured() {
        let stats = run(
            |seq| async move {
                if seq < 10 {
                    Err("warm-up".into())
                } else {
                    Ok(())
                }
            },
            &options(3, 30, 10),
        )
        .await
        .expect("runs");
        assert_eq!(stats.ops, 30);
        assert_eq!(stats.errors, 0);
    }

    #[tokio::test]
    async fn a_duration_run_stops_by_itself() {
        let stats = run(
            |_| async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(())
            },
            &RunOptions {
                concurrency: 2,
                duration: Some(Duration::from_millis(20)),
                ops: None,
                warmup_ops: 0,
            },
        )
        .await
        .expect("runs");
        assert_eq!(stats.errors, 0);
        assert_eq!(stats.ops, stats.successes());
    }

    #[tokio::test]
    async fn ops_cap_a_duration_run() {
        let stats = run(
            |_| async { Ok(()) },
            &RunOptions {
                concurrency: 4,
                duration: Some(Duration::from_secs(3600)),
                ops: Some(10),
                warmup_ops: 0,
            },
        )
        .await
        .expect("runs");
        assert_eq!(stats.ops, 10);
    }

    #[test]
    fn options_are_checked() {
        assert!(options(0, 1, 0).check().is_err());
        assert!(options(1, 0, 0).check().is_err());
        let none = RunOptions {
            concurrency: 1,
            duration: None,
            ops: None,
            warmup_ops: 0,
        };
        assert!(none.check().is_err());
        assert!(options(1, 1, 0).check().is_ok());
    }
}
