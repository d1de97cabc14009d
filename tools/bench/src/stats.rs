//! Latency statistics of one run, and the backend-versus-direct ratio.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The outcome of one measured run. Latency percentiles cover successful
/// calls only: a failed call's latency says little about the path measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Calls completed, successful or not.
    pub ops: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Wall time of the measured phase (warm-up excluded).
    #[serde(rename = "elapsed_s", with = "secs")]
    pub elapsed: Duration,
    /// Successful calls per second of `elapsed`.
    pub throughput_per_s: f64,
    #[serde(rename = "p50_us", with = "micros")]
    pub p50: Duration,
    #[serde(rename = "p90_us", with = "micros")]
    pub p90: Duration,
    #[serde(rename = "p99_us", with = "micros")]
    pub p99: Duration,
    #[serde(rename = "max_us", with = "micros")]
    pub max: Duration,
    /// The first error seen, to say why calls failed (never a value: the
    /// operation decides the message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl Stats {
    /// Statistics from the latencies of successful calls, in any order.
    pub fn from_latencies(
        mut latencies: Vec<Duration>,
        errors: u64,
        elapsed: Duration,
        first_error: Option<String>,
    ) -> Self {
        latencies.sort_unstable();
        let ok = latencies.len() as u64;
        let throughput_per_s = if elapsed.is_zero() {
            0.0
        } else {
            ok as f64 / elapsed.as_secs_f64()
        };
        Self {
            ops: ok + errors,
            errors,
            elapsed,
            throughput_per_s,
            p50: percentile(&latencies, 50.0),
            p90: percentile(&latencies, 90.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().copied().unwrap_or_default(),
            first_error,
        }
    }

    /// Calls that succeeded.
    pub fn successes(&self) -> u64 {
        self.ops - self.errors.min(self.ops)
    }
}

/// Nearest-rank percentile of sorted samples: the smallest sample that at
/// least `p` percent of the samples are less than or equal to. Zero when
/// there are no samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let n = sorted.len();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// How much slower (above 1) or faster (below 1) the path through the
/// backend is than going to the store directly, from two runs of the same
/// workload. `None` where the direct figure is zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// `backend / direct` of p50 and p99.
pub fn ratio(backend: &Stats, direct: &Stats) -> Ratio {
    let div = |b: Duration, d: Duration| (!d.is_zero()).then(|| b.as_secs_f64() / d.as_secs_f64());
    Ratio {
        p50: div(backend.p50, direct.p50),
        p99: div(backend.p99, direct.p99),
    }
}

/// A latency in the unit that keeps it readable: `850ns`, `12.3us`, `4.56ms`, `1.20s`.
pub fn format_latency(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos < 1_000 {
        format!("{nanos}ns")
    } else if nanos < 1_000_000 {
        format!("{:.1}us", nanos as f64 / 1e3)
    } else if nanos < 1_000_000_000 {
        format!("{:.2}ms", nanos as f64 / 1e6)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// Durations as fractional microseconds in JSON (latencies).
mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_nanos() as f64 / 1e3)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        // Through whole nanoseconds, so that what was written reads back equal.
        let nanos = f64::deserialize(d)? * 1e3;
        if !nanos.is_finite() || nanos < 0.0 || nanos > u64::MAX as f64 {
            return Err(D::Error::custom(
                "a latency must be a non-negative number of microseconds",
            ));
        }
        Ok(Duration::from_nanos(nanos.round() as u64))
    }
}

/// Durations as fractional seconds in JSON (run length).
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_of_one_to_a_hundred() {
        // Shuffled on purpose: from_latencies sorts.
        let mut samples: Vec<Duration> = (1..=100).map(ms).collect();
        samples.reverse();
        samples.swap(3, 71);
        let stats = Stats::from_latencies(samples, 0, Duration::from_secs(2), None);
        assert_eq!(stats.p50, ms(50));
        assert_eq!(stats.p90, ms(90));
        assert_eq!(stats.p99, ms(99));
        assert_eq!(stats.max, ms(100));
        assert_eq!(stats.ops, 100);
        assert!((stats.throughput_per_s - 50.0).abs() < 1e-9);
    }

    #[test]
    fn percentiles_of_a_small_set_use_nearest_rank() {
        let sorted: Vec<Duration> = (1..=10).map(ms).collect();
        assert_eq!(percentile(&sorted, 50.0), ms(5));
        assert_eq!(percentile(&sorted, 90.0), ms(9));
        assert_eq!(percentile(&sorted, 99.0), ms(10));
        assert_eq!(percentile(&sorted, 0.0), ms(1));
        assert_eq!(percentile(&sorted, 100.0), ms(10));
        assert_eq!(percentile(&[ms(7)], 99.0), ms(7));
    }

    #[test]
    fn skewed_tail_shows_in_p99_only() {
        let mut samples = vec![ms(1); 990];
        samples.extend(vec![ms(500); 10]);
        let stats = Stats::from_latencies(samples, 0, Duration::from_secs(1), None);
        assert_eq!(stats.p50, ms(1));
        assert_eq!(stats.p90, ms(1));
        assert_eq!(stats.p99, ms(1));
        assert_eq!(stats.max, ms(500));
        let mut samples = vec![ms(1); 989];
        samples.extend(vec![ms(500); 11]);
        let stats = Stats::from_latencies(samples, 0, Duration::from_secs(1), None);
        assert_eq!(stats.p99, ms(500));
    }

    #[test]
    fn no_samples_give_zeros() {
        let stats = Stats::from_latencies(Vec::new(), 3, Duration::ZERO, Some("boom".into()));
        assert_eq!(stats.ops, 3);
        assert_eq!(stats.errors, 3);
        assert_eq!(stats.successes(), 0);
        assert_eq!(stats.p50, Duration::ZERO);
        assert_eq!(stats.max, Duration::ZERO);
        assert_eq!(stats.throughput_per_s, 0.0);
    }

    #[test]
    fn errors_count_as_ops_but_not_throughput() {
        let stats = Stats::from_latencies(vec![ms(1); 4], 4, Duration::from_secs(1), None);
        assert_eq!(stats.ops, 8);
        assert_eq!(stats.successes(), 4);
        assert!((stats.throughput_per_s - 4.0).abs() < 1e-9);
    }

    #[test]
    fn ratio_of_backend_to_direct() {
        let direct = Stats {
            p50: ms(2),
            p99: ms(10),
            ..Stats::default()
        };
        let backend = Stats {
            p50: ms(3),
            p99: ms(25),
            ..Stats::default()
        };
        let r = ratio(&backend, &direct);
        assert_eq!(r.p50, Some(1.5));
        assert_eq!(r.p99, Some(2.5));
        assert_eq!(ratio(&backend, &Stats::default()), Ratio::default());
    }

    #[test]
    fn json_uses_explicit_units_and_round_trips() {
        let stats = Stats::from_latencies(
            vec![Duration::from_micros(1500), Duration::from_nanos(2500)],
            1,
            Duration::from_millis(250),
            Some("UNAVAILABLE: down".into()),
        );
        let text = serde_json::to_string(&stats).expect("serializes");
        assert!(text.contains(r#""p50_us":2.5"#), "{text}");
        assert!(text.contains(r#""max_us":1500.0"#), "{text}");
        assert!(text.contains(r#""elapsed_s":0.25"#), "{text}");
        let back: Stats = serde_json::from_str(&text).expect("deserializes");
        assert_eq!(back, stats);
        assert!(serde_json::from_str::<Stats>(&text.replace("0.25", "-1.0")).is_err());
    }

    #[test]
    fn latencies_are_readable() {
        assert_eq!(format_latency(Duration::from_nanos(850)), "850ns");
        assert_eq!(format_latency(Duration::from_nanos(12_340)), "12.3us");
        assert_eq!(format_latency(Duration::from_micros(4_560)), "4.56ms");
        assert_eq!(format_latency(Duration::from_millis(1_200)), "1.20s");
    }
}
