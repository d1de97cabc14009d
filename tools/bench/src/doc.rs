//! Regenerates the generated blocks of BENCHMARKS.md from the reports the
//! benches wrote (`BENCH_JSON`): one table per backend, the machine, and
//! the targets table read from every backend's rows.
//!
//! A block is the text between `<!-- generated:KEY -->` and
//! `<!-- /generated:KEY -->`; a block whose input is missing is left as it
//! is.

use std::fmt::Write as _;

use crate::{Report, Row};

/// The backends, in the order of the targets table's columns.
pub const BACKENDS: [&str; 6] = [
    "vault",
    "s3",
    "aws-secretsmanager",
    "kubernetes-secret",
    "flux-helmrelease",
    "sops-git",
];

/// The rows a CPU target reads for `backend`: (label, row name).
fn rows_for(backend: &str, op: &str) -> Vec<(String, String)> {
    match (backend, op) {
        ("flux-helmrelease", "get") => [
            ("latest c1", "get-latest c1 backend"),
            ("latest c32", "get-latest c32 backend"),
            ("older c1", "get-older c1 backend"),
            ("older c32", "get-older c32 backend"),
        ]
        .map(|(l, r)| (l.to_owned(), r.to_owned()))
        .to_vec(),
        ("sops-git", _) => ["c1", "c32"]
            .map(|c| (c.to_owned(), format!("{op} {c}")))
            .to_vec(),
        _ => ["c1", "c32"]
            .map(|c| (c.to_owned(), format!("{op} {c} backend")))
            .to_vec(),
    }
}

/// The first number in a cell such as "11.6 MiB" or "+397 µs".
fn number(cell: &str) -> Option<f64> {
    let start = cell.find(|c: char| c.is_ascii_digit() || c == '-' || c == '+')?;
    let rest = &cell[start..];
    let end = rest
        .char_indices()
        .skip(1)
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].parse().ok()
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

/// `c1 12, c32 14 µs: yes`: the figures and whether the worst is within.
fn cell(values: &[(String, f64)], unit: &str, limit: f64, digits: usize) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let text = values
        .iter()
        .map(|(label, v)| format!("{label} {v:.digits$}").trim().to_owned())
        .collect::<Vec<_>>()
        .join(", ");
    let worst = values.iter().map(|(_, v)| *v).fold(f64::MIN, f64::max);
    format!("{text} {unit}: {}", met(worst <= limit))
}

fn find<'a>(report: &'a Report, name: &str) -> Option<&'a Row> {
    report.rows.iter().find(|r| r.name == name)
}

fn first_extra(report: &Report, key: &str) -> Option<f64> {
    report
        .rows
        .iter()
        .find_map(|r| r.extra.get(key).and_then(|v| number(v)))
}

/// The targets table over the reports there are (None: not run).
pub fn targets(reports: &[(&str, Option<&Report>)]) -> String {
    let mut out = String::new();
    let names: Vec<&str> = reports.iter().map(|(b, _)| *b).collect();
    let _ = writeln!(out, "| target | {} |", names.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(names.len()));
    let mut line = |title: &str, f: &dyn Fn(&Report, &str) -> String| {
        let cells: Vec<String> = reports
            .iter()
            .map(|(b, r)| r.map_or_else(|| "not run".to_owned(), |r| f(r, b)))
            .collect();
        let _ = writeln!(out, "| {title} | {} |", cells.join(" | "));
    };
    for (title, op, limit) in [
        ("backend CPU per GetValue ≤ 50 µs", "get", 50.0),
        ("backend CPU per OnUpdate ≤ 150 µs", "update", 150.0),
    ] {
        line(title, &|r, b| {
            let values: Vec<(String, f64)> = rows_for(b, op)
                .into_iter()
                .filter_map(|(label, name)| {
                    let cost = find(r, &name)?.cost.as_ref()?;
                    Some((label, cost.cpu_per_call_us))
                })
                .collect();
            cell(&values, "µs", limit, 0)
        });
    }
    line("RSS idle ≤ 15 MiB", &|r, _| {
        let v = first_extra(r, "RSS idle").map(|v| vec![(String::new(), v)]);
        let text = cell(&v.unwrap_or_default(), "MiB", 15.0, 1);
        // The rest is the mapped executable, which the kernel can drop.
        match first_extra(r, "of it anonymous") {
            Some(anon) => format!("{text} (anonymous {anon:.1})"),
            None => text,
        }
    });
    line("RSS peak under c32 ≤ 50 MiB", &|r, _| {
        // The backend's rows under c32 load (not the forwarder's).
        let peak = r
            .rows
            .iter()
            .filter(|row| row.name.contains("c32") && !row.name.starts_with("floor"))
            .filter_map(|row| row.cost.as_ref())
            .map(|c| c.peak_rss_kib as f64 / 1024.0)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        cell(
            &peak.map(|v| vec![(String::new(), v)]).unwrap_or_default(),
            "MiB",
            50.0,
            1,
        )
    });
    line("start to SERVING ≤ 200 ms", &|r, _| {
        let v = first_extra(r, "start to SERVING").map(|v| vec![(String::new(), v)]);
        cell(&v.unwrap_or_default(), "ms", 200.0, 0)
    });
    line(
        "GetValue c1 p50 added over the forwarder floor ≤ 60 µs",
        &|r, b| {
            let Some((_, name)) = rows_for(b, "get").into_iter().next() else {
                return "-".into();
            };
            let row = find(r, &name);
            let figure = |key: &str| row.and_then(|x| x.extra.get(key)).and_then(|v| number(v));
            match (figure("p50 over floor"), figure("p50 over direct")) {
                (Some(f), _) => format!("{f:+.0} µs over the floor: {}", met(f <= 60.0)),
                (None, Some(d)) => {
                    format!("{d:+.0} µs over direct (no floor): {}", met(d <= 60.0))
                }
                (None, None) => "no direct row".into(),
            }
        },
    );
    out
}

/// `doc` with the block `key` replaced by `body`; Err if it has none.
pub fn replace_block(doc: &str, key: &str, body: &str) -> Result<String, String> {
    let open = format!("<!-- generated:{key} -->\n");
    let close = format!("<!-- /generated:{key} -->");
    let start = doc
        .find(&open)
        .map(|i| i + open.len())
        .ok_or_else(|| format!("BENCHMARKS.md has no block {key:?}"))?;
    let end = doc[start..]
        .find(&close)
        .map(|i| start + i)
        .ok_or_else(|| format!("BENCHMARKS.md has no end of block {key:?}"))?;
    Ok(format!(
        "{}{}\n{}",
        &doc[..start],
        body.trim_end_matches('\n'),
        &doc[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cost, Stats};

    fn report() -> Report {
        let mut r = Report::new("vault");
        let cost = |us: f64, kib: u64| Cost {
            cpu_per_call_us: us,
            cpu_ticks: 50,
            rss_kib: kib,
            peak_rss_kib: kib,
        };
        r.row_with_cost("get c1 backend", Stats::default(), cost(40.0, 12_000))
            .extra("RSS idle", "11.6 MiB")
            .extra("of it anonymous", "1.6 MiB")
            .extra("start to SERVING", "10 ms")
            .extra("p50 over floor", "+45 µs");
        r.row_with_cost("get c32 backend", Stats::default(), cost(55.0, 20_480));
        r.row_with_cost("update c1 backend", Stats::default(), cost(100.0, 12_000));
        r
    }

    #[test]
    fn targets_read_the_named_rows_and_judge_the_worst() {
        let r = report();
        let table = targets(&[("vault", Some(&r)), ("s3", None)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| target | vault | s3 |");
        assert_eq!(
            lines[2],
            "| backend CPU per GetValue ≤ 50 µs | c1 40, c32 55 µs: **no** | not run |"
        );
        assert_eq!(
            lines[3],
            "| backend CPU per OnUpdate ≤ 150 µs | c1 100 µs: yes | not run |"
        );
        assert_eq!(
            lines[4],
            "| RSS idle ≤ 15 MiB | 11.6 MiB: yes (anonymous 1.6) | not run |"
        );
        assert_eq!(
            lines[5],
            "| RSS peak under c32 ≤ 50 MiB | 20.0 MiB: yes | not run |"
        );
        assert_eq!(
            lines[6],
            "| start to SERVING ≤ 200 ms | 10 ms: yes | not run |"
        );
        assert!(
            lines[7].contains("+45 µs over the floor: yes"),
            "{}",
            lines[7]
        );
    }

    #[test]
    fn a_block_is_replaced_and_the_rest_kept() {
        let doc = "a\n<!-- generated:x -->\nold\n<!-- /generated:x -->\nb\n";
        assert_eq!(
            replace_block(doc, "x", "new\n").as_deref(),
            Ok("a\n<!-- generated:x -->\nnew\n<!-- /generated:x -->\nb\n")
        );
        assert!(replace_block(doc, "y", "new").is_err());
    }

    #[test]
    fn numbers_come_out_of_cells() {
        assert_eq!(number("11.6 MiB"), Some(11.6));
        assert_eq!(number("+397 µs"), Some(397.0));
        assert_eq!(number("-239 µs"), Some(-239.0));
        assert_eq!(number("n/a"), None);
    }
}
