//! Test-only support shared by the services' integration tests: the
//! third-party servers they run against and the backend binaries as real
//! processes. Never a dependency of anything shipped.
//!
//! Everything binds 127.0.0.1 on free ports and is stopped by its own PID
//! when dropped.

pub mod kube;
pub mod moto;
pub mod process;
pub mod registration;

pub use process::{BackendProcess, Guard, free_port, tool_bin};

use std::sync::Arc;

/// Runs the whole conformance suite against `url`, printing one line per
/// case, and returns the report.
pub async fn conformance(url: &str) -> conformance::Report {
    let target = conformance::Target::connect(&conformance::Connect::plain(url), None)
        .await
        .expect("connect the conformance suite");
    conformance::run(Arc::new(target), None, |name, outcome| {
        println!("{}", conformance::line(name, outcome));
    })
    .await
}

/// Fails the test unless every applicable case passed and at least
/// `min_passed` ran.
pub fn assert_clean(report: &conformance::Report, min_passed: usize) {
    println!("{}", report.summary());
    assert_eq!(
        report.failures(),
        Vec::<&str>::new(),
        "conformance failures"
    );
    assert!(
        report.passed() >= min_passed,
        "only {} cases passed",
        report.passed()
    );
}
