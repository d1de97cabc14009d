//! The protocol's behaviour contract (spec §3) as a suite of cases, run
//! through a real gRPC client against any running backend.
//!
//! The suite learns what the backend is from `BackendInfo/Describe`: value
//! backends get every case, context backends the subset that applies. Each
//! case works on its own fresh TypeInstance ids and cleans up after itself, so
//! it can run against a store that holds other data.

mod cases;
pub mod races;
mod target;

use std::sync::Arc;

pub use cases::{Applies, Case, all_cases};
pub use target::{Connect, Target};

/// The result of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

/// Results of a run, in case order.
#[derive(Debug, Default)]
pub struct Report {
    pub results: Vec<(&'static str, Outcome)>,
}

impl Report {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|(_, o)| f(o)).count()
    }

    pub fn passed(&self) -> usize {
        self.count(|o| *o == Outcome::Pass)
    }

    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Fail(_)))
    }

    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skip(_)))
    }

    /// Names of the failed cases.
    pub fn failures(&self) -> Vec<&'static str> {
        self.results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Fail(_)))
            .map(|(n, _)| *n)
            .collect()
    }

    /// The closing line test harnesses read.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }
}

/// Runs every case that applies to the target (or those whose name contains
/// `filter`), calling `on_result` as each finishes.
pub async fn run(
    target: Arc<Target>,
    filter: Option<&str>,
    mut on_result: impl FnMut(&str, &Outcome),
) -> Report {
    let mut report = Report::default();
    for case in all_cases() {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let outcome = if !case.applies.to(target.accept_value()) {
            continue;
        } else {
            (case.run)(Arc::clone(&target)).await
        };
        on_result(case.name, &outcome);
        report.results.push((case.name, outcome));
    }
    report
}

/// Renders one result line as the binary prints it.
pub fn line(name: &str, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Pass => format!("ok    {name}"),
        Outcome::Fail(why) => format!("FAIL  {name}: {why}"),
        Outcome::Skip(why) => format!("skip  {name}: {why}"),
    }
}
