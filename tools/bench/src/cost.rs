//! What the backend process itself costs, read from Linux's /proc: CPU time
//! (user + system of every thread, exited ones included) and resident
//! memory, now and at its peak. Measured around a row, so the figures are
//! the backend's own, whatever the store and the bench spend. A row's CPU
//! is read once the process has gone quiet after it: work the row leaves
//! behind (sops-git packs objects in the background after writes) counts
//! for that row, not for the next.

use std::{future::Future, time::Duration};

use serde::{Deserialize, Serialize};

use crate::Stats;

/// How long the process must go without a new clock tick to count as
/// quiet: ten ticks.
const QUIET: Duration = Duration::from_millis(100);
/// The longest a row's leftover work is waited for.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// Reads the costs of one process.
#[derive(Clone, Debug)]
pub struct ProcessProbe {
    pid: u32,
    ticks_per_s: f64,
}

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reading {
    pub cpu: Duration,
    pub rss_kib: u64,
    /// The highest RSS since the start or the last [`ProcessProbe::reset_peak`].
    pub peak_rss_kib: u64,
    /// The anonymous part of the RSS (heap, stacks): the rest is mapped
    /// files, mostly the executable's own code.
    pub anon_kib: u64,
}

/// What a row cost the backend process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// CPU time of the backend during the row divided by the calls.
    pub cpu_per_call_us: f64,
    /// CPU time measured, in clock ticks (the resolution: 10 ms each).
    pub cpu_ticks: u64,
    /// RSS at the end of the row.
    pub rss_kib: u64,
    /// Highest RSS during the row.
    pub peak_rss_kib: u64,
}

impl ProcessProbe {
    pub fn new(pid: u32) -> Self {
        // USER_HZ: 100 on every Linux architecture the project builds for;
        // `getconf` says so when it is there.
        let ticks_per_s = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0);
        Self { pid, ticks_per_s }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn ticks(&self) -> Result<u64, String> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map_err(|e| format!("reading /proc/{}/stat: {e}", self.pid))?;
        // Fields after the command name (which may hold spaces and ')'):
        // state is field 3, utime 14 and stime 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or("unexpected /proc stat format")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| -> Result<u64, String> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| "unexpected /proc stat format".to_owned())
        };
        Ok(field(11)? + field(12)?)
    }

    pub fn read(&self) -> Result<Reading, String> {
        let ticks = self.ticks()?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .map_err(|e| format!("reading /proc/{}/status: {e}", self.pid))?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Reading {
            cpu: Duration::from_secs_f64(ticks as f64 / self.ticks_per_s),
            rss_kib: kib("VmRSS:"),
            peak_rss_kib: kib("VmHWM:"),
            anon_kib: kib("RssAnon:"),
        })
    }

    /// Starts a new RSS peak (`clear_refs` 5); false if the kernel refused,
    /// and the peak is then the peak since the start.
    pub fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    /// Runs a row and adds what it cost the process.
    pub async fn measure<F>(&self, row: F) -> Result<(Stats, Cost), String>
    where
        F: Future<Output = Result<Stats, String>>,
    {
        self.around(row, |stats| stats.ops).await
    }

    /// Runs alternating backend/direct rounds ([`crate::run_paired`]) and
    /// adds what they cost the process, per call of the backend side: the
    /// direct side never reaches the backend, so its CPU is the backend's.
    pub async fn measure_paired<F>(&self, rounds: F) -> Result<(crate::Paired, Cost), String>
    where
        F: Future<Output = Result<crate::Paired, String>>,
    {
        self.around(rounds, |paired| paired.backend.ops).await
    }

    /// Runs `work` and adds its cost to the process per call (`calls` of
    /// its result), the CPU read once the process is quiet.
    async fn around<T, F>(&self, work: F, calls: impl Fn(&T) -> u64) -> Result<(T, Cost), String>
    where
        F: Future<Output = Result<T, String>>,
    {
        self.reset_peak();
        let before = self.ticks()?;
        let out = work.await?;
        let ticks = self.settled_ticks().await?.saturating_sub(before);
        let cost = self.cost(ticks, calls(&out), self.read()?);
        Ok((out, cost))
    }

    /// The cost of `calls` that took `ticks` of CPU, with the memory of
    /// `after`.
    pub fn cost(&self, ticks: u64, calls: u64, after: Reading) -> Cost {
        let cpu = ticks as f64 / self.ticks_per_s;
        Cost {
            cpu_per_call_us: if calls == 0 {
                0.0
            } else {
                cpu * 1e6 / calls as f64
            },
            cpu_ticks: ticks,
            rss_kib: after.rss_kib,
            peak_rss_kib: after.peak_rss_kib,
        }
    }

    /// CPU ticks so far (for rows measured by hand).
    pub fn cpu_ticks(&self) -> Result<u64, String> {
        self.ticks()
    }

    /// CPU ticks once the process has gone [`QUIET`] (or after
    /// [`SETTLE_LIMIT`], for a process that never does): the end of a row
    /// measured by hand.
    pub async fn settled_ticks(&self) -> Result<u64, String> {
        let rounds = (SETTLE_LIMIT.as_millis() / QUIET.as_millis()) as u32;
        settle(|| self.ticks(), || tokio::time::sleep(QUIET), rounds).await
    }
}

/// The first reading of `ticks` equal to the one before it, `pause` apart,
/// or the last of `rounds` pauses.
async fn settle<T, P, F>(mut ticks: T, mut pause: P, rounds: u32) -> Result<u64, String>
where
    T: FnMut() -> Result<u64, String>,
    P: FnMut() -> F,
    F: Future<Output = ()>,
{
    let mut last = ticks()?;
    for _ in 0..rounds {
        pause().await;
        let now = ticks()?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_process_reads_as_busy_and_resident() {
        let probe = ProcessProbe::new(std::process::id());
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let r = probe.read().expect("read");
        assert!(
            r.cpu > Duration::ZERO && r.rss_kib > 0 && r.peak_rss_kib >= r.rss_kib,
            "{r:?}"
        );
    }

    /// Readings of a process's ticks, one per call, the last repeated.
    fn readings(values: &[u64]) -> impl FnMut() -> Result<u64, String> + '_ {
        let mut i = 0;
        move || {
            let v = values[i.min(values.len() - 1)];
            i += 1;
            Ok(v)
        }
    }

    #[tokio::test]
    async fn settling_waits_until_the_ticks_stop_moving() {
        let got = settle(readings(&[3, 7, 12, 12, 40]), || async {}, 100).await;
        assert_eq!(got, Ok(12));
    }

    #[tokio::test]
    async fn settling_gives_up_after_its_rounds() {
        let busy: Vec<u64> = (0..50).collect();
        assert_eq!(settle(readings(&busy), || async {}, 5).await, Ok(5));
    }

    #[test]
    fn cost_divides_cpu_by_calls() {
        let probe = ProcessProbe::new(std::process::id());
        let c = probe.cost(5, 1000, Reading::default());
        let want = 5.0 / probe.ticks_per_s * 1e6 / 1000.0;
        assert!((c.cpu_per_call_us - want).abs() < 1e-9);
        assert_eq!(probe.cost(5, 0, Reading::default()).cpu_per_call_us, 0.0);
    }
}
