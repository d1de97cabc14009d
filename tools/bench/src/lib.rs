//! Latency and throughput of any async operation, run by concurrent workers.
//!
//! [`run`] drives an operation `Fn(sequence) -> Future<Output = Result<(), String>>`
//! and returns [`Stats`]; [`Report`] prints them as text rows or JSON;
//! [`ratio`] compares a run through a backend with the same workload sent
//! straight to its store. The `storage-bench` binary ([`cli`]) uses it
//! against a real backend over gRPC.

pub mod cli;
pub mod cost;
pub mod doc;
pub mod forwarder;
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

pub use cost::{Cost, ProcessProbe};
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

/// Two runs of the same workload, one through the backend and one straight
/// to its store, measured in alternating rounds.
#[derive(Clone, Debug)]
pub struct Paired {
    pub backend: Stats,
    pub direct: Stats,
    /// `backend p50 / direct p50` of each round, in round order.
    pub round_ratios: Vec<f64>,
}

impl Paired {
    /// The median of the per-round p50 ratios: a store whose speed drifts
    /// during the run (a Python moto, a garbage-collecting API server) moves
    /// both sides of a round alike, so this is steadier than one ratio of
    /// two long runs made one after the other.
    pub fn median_round_ratio(&self) -> Option<f64> {
        let mut r: Vec<f64> = self
            .round_ratios
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        if r.is_empty() {
            return None;
        }
        r.sort_by(f64::total_cmp);
        let mid = r.len() / 2;
        Some(if r.len() % 2 == 1 {
            r[mid]
        } else {
            f64::midpoint(r[mid - 1], r[mid])
        })
    }
}

/// Runs `backend` and `direct` in `rounds` alternating rounds of
/// `options.ops / rounds` calls each (ABBA order, so neither side always
/// goes first), after `options.warmup_ops` warm-up calls of each. Each
/// side's sequence numbers count up across its rounds as in [`run`].
/// `options.duration` is ignored: rounds need a number of calls.
pub async fn run_paired<B, BF, D, DF>(
    backend: B,
    direct: D,
    options: &RunOptions,
    rounds: u64,
) -> Result<Paired, String>
where
    B: Fn(u64) -> BF + Send + Sync + 'static,
    BF: Future<Output = OpResult> + Send + 'static,
    D: Fn(u64) -> DF + Send + Sync + 'static,
    DF: Future<Output = OpResult> + Send + 'static,
{
    options.check()?;
    let ops = options
        .ops
        .ok_or_else(|| "paired runs need a number of ops".to_owned())?;
    let rounds = rounds.clamp(1, ops);
    let per_round = ops / rounds;
    let (backend, direct) = (Arc::new(backend), Arc::new(direct));
    let (mut b_seq, mut d_seq) = (0, 0);
    if options.warmup_ops > 0 {
        let warm = |first_seq| Phase {
            first_seq,
            max_ops: Some(options.warmup_ops),
            deadline: None,
        };
        b_seq = warm(0).run(&backend, options.concurrency).await?.calls();
        d_seq = warm(0).run(&direct, options.concurrency).await?.calls();
    }
    let (mut b_all, mut d_all) = (Samples::default(), Samples::default());
    let (mut b_time, mut d_time) = (Duration::ZERO, Duration::ZERO);
    let mut round_ratios = Vec::new();
    for round in 0..rounds {
        let phase = |first_seq| Phase {
            first_seq,
            max_ops: Some(per_round),
            deadline: None,
        };
        let backend_first = round % 4 == 0 || round % 4 == 3;
        let ((mut b, bt), (mut d, dt)) = if backend_first {
            let b = timed(phase(b_seq).run(&backend, options.concurrency)).await?;
            let d = timed(phase(d_seq).run(&direct, options.concurrency)).await?;
            (b, d)
        } else {
            let d = timed(phase(d_seq).run(&direct, options.concurrency)).await?;
            let b = timed(phase(b_seq).run(&backend, options.concurrency)).await?;
            (b, d)
        };
        b_seq += b.calls();
        d_seq += d.calls();
        b_time += bt;
        d_time += dt;
        if let (Some(bp), Some(dp)) = (b.p50(), d.p50())
            && !dp.is_zero()
        {
            round_ratios.push(bp.as_secs_f64() / dp.as_secs_f64());
        }
        b_all.merge(b);
        d_all.merge(d);
    }
    let stats = |s: Samples, t| Stats::from_latencies(s.latencies, s.errors, t, s.first_error);
    Ok(Paired {
        backend: stats(b_all, b_time),
        direct: stats(d_all, d_time),
        round_ratios,
    })
}

async fn timed<T>(f: impl Future<Output = Result<T, String>>) -> Result<(T, Duration), String> {
    let start = Instant::now();
    let v = f.await?;
    Ok((v, start.elapsed()))
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

    /// Sorts the latencies in place (merging and `Stats` do not care about
    /// their order).
    fn p50(&mut self) -> Option<Duration> {
        self.latencies.sort_unstable();
        (!self.latencies.is_empty()).then(|| percentile(&self.latencies, 50.0))
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
    async fn paired_rounds_call_each_side_its_own_sequence_once() {
        let seen = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let (rb, rd) = (Arc::clone(&seen), Arc::clone(&seen));
        let paired = run_paired(
            move |seq| {
                let rb = Arc::clone(&rb);
                async move {
                    rb.lock().map_err(|e| e.to_string())?.0.push(seq);
                    Ok(())
                }
            },
            move |seq| {
                let rd = Arc::clone(&rd);
                async move {
                    rd.lock().map_err(|e| e.to_string())?.1.push(seq);
                    Ok(())
                }
            },
            &options(3, 100, 5),
            10,
        )
        .await
        .expect("runs");
        assert_eq!((paired.backend.ops, paired.direct.ops), (100, 100));
        assert_eq!(paired.round_ratios.len(), 10);
        let (b, d) = seen.lock().expect("not poisoned").clone();
        for calls in [b, d] {
            let unique: BTreeSet<u64> = calls.iter().copied().collect();
            assert_eq!(calls.len(), 105);
            assert_eq!(unique, (0..105).collect::<BTreeSet<u64>>());
        }
    }

    #[test]
    fn median_round_ratio_ignores_one_disturbed_round() {
        let paired = |round_ratios: Vec<f64>| Paired {
            backend: Stats::default(),
            direct: Stats::default(),
            round_ratios,
        };
        assert_eq!(
            paired(vec![1.05, 3.0, 1.02]).median_round_ratio(),
            Some(1.05)
        );
        assert_eq!(
            paired(vec![1.0, 1.2, 9.0, 0.5]).median_round_ratio(),
            Some(1.1)
        );
        assert_eq!(paired(Vec::new()).median_round_ratio(), None);
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
