//! Tooling of `tools/bench/run-all.sh`: finds each bench executable in
//! cargo's build messages, and regenerates BENCHMARKS.md from the reports
//! the benches wrote (see `bench::doc`).

use std::{path::PathBuf, process::ExitCode};

use bench::{Report, doc};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Regenerates BENCHMARKS.md from bench reports")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes `<executable> <package dir>` of the `direct` bench of a
    /// package, from `cargo bench --no-run --message-format=json` output,
    /// into the file `to`.
    Executable {
        build_json: PathBuf,
        package: String,
        to: PathBuf,
    },
    /// Rewrites the generated blocks of BENCHMARKS.md from `<out>/<backend>.json`
    /// and `<out>/machine.txt`.
    Regenerate {
        out: PathBuf,
        benchmarks_md: PathBuf,
    },
}

fn executable(build_json: &PathBuf, package: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(build_json)
        .map_err(|e| format!("reading {}: {e}", build_json.display()))?;
    for line in text.lines() {
        let Ok(m) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let target = &m["target"];
        let is_bench = target["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|v| v == "bench"));
        let (Some(exe), Some(manifest)) = (m["executable"].as_str(), m["manifest_path"].as_str())
        else {
            continue;
        };
        let dir = std::path::Path::new(manifest).parent();
        if m["reason"] == "compiler-artifact"
            && target["name"] == "direct"
            && is_bench
            && dir
                .and_then(|d| d.file_name())
                .is_some_and(|n| n == package)
            && let Some(dir) = dir
        {
            return Ok(format!("{exe} {}\n", dir.display()));
        }
    }
    Err(format!("no direct bench executable for {package}"))
}

fn regenerate(out: &std::path::Path, md: &std::path::Path) -> Result<(), String> {
    let mut text =
        std::fs::read_to_string(md).map_err(|e| format!("reading {}: {e}", md.display()))?;
    let mut reports = Vec::new();
    for backend in doc::BACKENDS {
        let path = out.join(format!("{backend}.json"));
        let report = match std::fs::read_to_string(&path) {
            Ok(json) => Some(
                serde_json::from_str::<Report>(&json)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        if let Some(r) = &report {
            text = doc::replace_block(&text, backend, &r.to_markdown())?;
        }
        reports.push((backend, report));
    }
    if let Ok(machine) = std::fs::read_to_string(out.join("machine.txt")) {
        text = doc::replace_block(
            &text,
            "machine",
            &format!("```\n{}\n```", machine.trim_end()),
        )?;
    }
    let refs: Vec<(&str, Option<&Report>)> =
        reports.iter().map(|(b, r)| (*b, r.as_ref())).collect();
    text = doc::replace_block(&text, "targets", &doc::targets(&refs))?;
    std::fs::write(md, text).map_err(|e| format!("writing {}: {e}", md.display()))
}

fn main() -> ExitCode {
    if let Err(code) = shared::telemetry::init_or_exit(shared::config::LogFormat::Text, "info", &[])
    {
        return code;
    }
    let result = match Cli::parse().command {
        Command::Executable {
            build_json,
            package,
            to,
        } => executable(&build_json, &package).and_then(|line| {
            std::fs::write(&to, line).map_err(|e| format!("writing {}: {e}", to.display()))
        }),
        Command::Regenerate { out, benchmarks_md } => regenerate(&out, &benchmarks_md),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "benchmarks-md failed");
            ExitCode::FAILURE
        }
    }
}
