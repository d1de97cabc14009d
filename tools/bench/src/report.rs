//! A report of one or more runs: plain text rows for people, JSON for tools.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

use crate::stats::{Ratio, Stats, format_latency, ratio};

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

    pub fn row(&mut self, name: impl Into<String>, stats: Stats) -> &mut Self {
        self.rows.push(Row {
            name: name.into(),
            stats,
        });
        self
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
        let header = [
            "name", "ops", "errors", "elapsed", "ops/s", "p50", "p90", "p99", "max",
        ];
        let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        for row in &self.rows {
            let s = &row.stats;
            table.push(vec![
                row.name.clone(),
                s.ops.to_string(),
                s.errors.to_string(),
                format!("{:.2}s", s.elapsed.as_secs_f64()),
                format!("{:.1}", s.throughput_per_s),
                format_latency(s.p50),
                format_latency(s.p90),
                format_latency(s.p99),
                format_latency(s.max),
            ]);
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
