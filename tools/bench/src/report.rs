//! A report of one or more runs: plain text rows for people, JSON for tools.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

use crate::{
    cost::Cost,
    stats::{Ratio, Stats, format_latency, ratio},
};

/// Named runs of one benchmark, their parameters, and comparisons.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub title: String,
    /// What was run (op, concurrency, value size, backend, ...).
    pub params: BTreeMap<String, String>,
    pub rows: Vec<Row>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comparisons: Vec<Comparison>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub stats: Stats,
    /// What the row cost the backend process, where the bench measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
    /// Further named figures of the row (a column each in the tables).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// `backend` row against `direct` row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub backend: String,
    pub direct: String,
    pub ratio: Ratio,
}

impl Report {
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Self::default()
        }
    }

    pub fn param(&mut self, key: impl Into<String>, value: impl ToString) -> &mut Self {
        self.params.insert(key.into(), value.to_string());
        self
    }

    /// Records how the bench (and the backend built with it) was compiled.
    pub fn build_profile(&mut self) -> &mut Self {
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "optimized (bench)"
        };
        self.param("profile", profile)
    }

    pub fn row(&mut self, name: impl Into<String>, stats: Stats) -> &mut Self {
        self.rows.push(Row {
            name: name.into(),
            stats,
            cost: None,
            extra: BTreeMap::new(),
        });
        self
    }

    /// A row with what it cost the backend process.
    pub fn row_with_cost(
        &mut self,
        name: impl Into<String>,
        stats: Stats,
        cost: Cost,
    ) -> &mut Self {
        self.row(name, stats);
        if let Some(row) = self.rows.last_mut() {
            row.cost = Some(cost);
        }
        self
    }

    /// Adds a named figure to the last row.
    pub fn extra(&mut self, key: impl Into<String>, value: impl ToString) -> &mut Self {
        if let Some(row) = self.rows.last_mut() {
            row.extra.insert(key.into(), value.to_string());
        }
        self
    }

    /// A Markdown table of the rows (the form BENCHMARKS.md shows): calls,
    /// errors, throughput, latency percentiles, and where measured the
    /// backend's CPU per call and peak RSS, then any extra figures.
    pub fn to_markdown(&self) -> String {
        let with_cost = self.rows.iter().any(|r| r.cost.is_some());
        let extras: Vec<&String> = {
            let mut keys: Vec<&String> = self.rows.iter().flat_map(|r| r.extra.keys()).collect();
            keys.sort();
            keys.dedup();
            keys
        };
        let mut header: Vec<String> = ["row", "calls", "errors", "ops/s", "p50", "p90", "p99"]
            .map(String::from)
            .to_vec();
        if with_cost {
            header.push("backend CPU/call".into());
            header.push("backend RSS peak".into());
        }
        header.extend(extras.iter().map(|k| k.to_string()));
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            header
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
                .collect::<String>()
        );
        for row in &self.rows {
            let s = &row.stats;
            let mut cells = vec![
                row.name.clone(),
                s.ops.to_string(),
                s.errors.to_string(),
                format!("{:.0}", s.throughput_per_s),
                format_latency(s.p50),
                format_latency(s.p90),
                format_latency(s.p99),
            ];
            if with_cost {
                match &row.cost {
                    Some(c) => {
                        cells.push(format!("{:.0} µs", c.cpu_per_call_us));
                        cells.push(format!("{:.1} MiB", c.peak_rss_kib as f64 / 1024.0));
                    }
                    None => cells.extend(["-".to_owned(), "-".to_owned()]),
                }
            }
            for key in &extras {
                cells.push(row.extra.get(*key).cloned().unwrap_or_else(|| "-".into()));
            }
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out
    }

    /// Adds the ratio of two rows already in the report.
    pub fn compare(&mut self, backend: &str, direct: &str) -> Result<&mut Self, String> {
        let find = |name: &str| {
            self.rows
                .iter()
                .find(|r| r.name == name)
                .map(|r| &r.stats)
                .ok_or_else(|| format!("the report has no row {name:?}"))
        };
        let ratio = ratio(find(backend)?, find(direct)?);
        self.comparisons.push(Comparison {
            backend: backend.into(),
            direct: direct.into(),
            ratio,
        });
        Ok(self)
    }

    /// Pretty JSON of the whole report.
    pub fn to_json(&self) -> Result<String, String> {
        serde_json::to_string_pretty(self).map_err(|e| format!("cannot encode the report: {e}"))
    }

    /// Aligned text: the title, the parameters, one row per run, the ratios.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if !self.title.is_empty() {
            let _ = writeln!(out, "{}", self.title);
        }
        for (key, value) in &self.params {
            let _ = writeln!(out, "  {key}: {value}");
        }
        let with_cost = self.rows.iter().any(|r| r.cost.is_some());
        let mut header = vec![
            "name", "ops", "errors", "elapsed", "ops/s", "p50", "p90", "p99", "max",
        ];
        if with_cost {
            header.extend(["cpu/call", "rss", "rss-peak"]);
        }
        let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        for row in &self.rows {
            let s = &row.stats;
            let mut cells = vec![
                row.name.clone(),
                s.ops.to_string(),
                s.errors.to_string(),
                format!("{:.2}s", s.elapsed.as_secs_f64()),
                format!("{:.1}", s.throughput_per_s),
                format_latency(s.p50),
                format_latency(s.p90),
                format_latency(s.p99),
                format_latency(s.max),
            ];
            if with_cost {
                match &row.cost {
                    Some(c) => cells.extend([
                        format!("{:.1}us", c.cpu_per_call_us),
                        format!("{:.1}MiB", c.rss_kib as f64 / 1024.0),
                        format!("{:.1}MiB", c.peak_rss_kib as f64 / 1024.0),
                    ]),
                    None => cells.extend(["-", "-", "-"].map(String::from)),
                }
            }
            table.push(cells);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|col| table.iter().map(|r| r[col].len()).max().unwrap_or(0))
            .collect();
        for cells in &table {
            let mut line = String::new();
            for (col, cell) in cells.iter().enumerate() {
                if col == 0 {
                    let _ = write!(line, "{cell:<w$}", w = widths[col]);
                } else {
                    let _ = write!(line, "  {cell:>w$}", w = widths[col]);
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        for row in &self.rows {
            if let Some(e) = &row.stats.first_error {
                let _ = writeln!(out, "{}: first error: {e}", row.name);
            }
            for (key, value) in &row.extra {
                let _ = writeln!(out, "{}: {key}: {value}", row.name);
            }
        }
        for c in &self.comparisons {
            let fmt = |r: Option<f64>| r.map_or("n/a".to_owned(), |r| format!("x{r:.2}"));
            let _ = writeln!(
                out,
                "{} vs {}: p50 {}, p99 {}",
                c.backend,
                c.direct,
                fmt(c.ratio.p50),
                fmt(c.ratio.p99)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stats(p50_ms: u64, p99_ms: u64) -> Stats {
        Stats {
            ops: 10,
            errors: 0,
            elapsed: Duration::from_secs(1),
            throughput_per_s: 10.0,
            p50: Duration::from_millis(p50_ms),
            p90: Duration::from_millis(p50_ms),
            p99: Duration::from_millis(p99_ms),
            max: Duration::from_millis(p99_ms),
            first_error: None,
        }
    }

    fn sample() -> Report {
        let mut report = Report::new("storage-bench");
        report.param("op", "get").param("concurrency", 4);
        report
            .row("backend", stats(4, 20))
            .row("direct", stats(2, 10));
        report.compare("backend", "direct").expect("rows exist");
        report
    }

    #[test]
    fn text_has_aligned_rows_and_ratios() {
        let text = sample().to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "storage-bench");
        assert_eq!(lines[1], "  concurrency: 4");
        assert_eq!(lines[2], "  op: get");
        assert!(lines[3].starts_with("name   "), "{text}");
        assert_eq!(
            lines[4].split_whitespace().collect::<Vec<_>>(),
            [
                "backend", "10", "0", "1.00s", "10.0", "4.00ms", "4.00ms", "20.00ms", "20.00ms"
            ],
        );
        assert_eq!(lines[3].len(), lines[4].len(), "{text}");
        assert_eq!(lines[6], "backend vs direct: p50 x2.00, p99 x2.00");
    }

    #[test]
    fn json_round_trips() {
        let report = sample();
        let json = report.to_json().expect("encodes");
        let back: Report = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, report);
    }

    #[test]
    fn comparing_an_unknown_row_fails() {
        assert!(sample().compare("backend", "nope").is_err());
    }
}
