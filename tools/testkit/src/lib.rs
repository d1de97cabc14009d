//! Test-only support shared by the services' integration tests: the
//! third-party servers they run against and the backend binaries as real
//! processes. Never a dependency of anything shipped.
//!
//! Everything binds 127.0.0.1 on free ports and is stopped by its own PID
//! when dropped.

pub mod hub;
pub mod kube;
pub mod memory;
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

/// Runs the two-process race scenarios (`conformance::races`) between the
/// backends at `url_a` and `url_b` (two processes on one store) and fails
/// the test on any violation. Prints what each scenario saw.
pub async fn assert_races_clean(url_a: &str, url_b: &str, rounds: usize) {
    let connect = |url: &str| {
        let url = url.to_owned();
        async move {
            conformance::Target::connect(&conformance::Connect::plain(&url), None)
                .await
                .expect("connect a race target")
        }
    };
    let a = Arc::new(connect(url_a).await);
    let b = Arc::new(connect(url_b).await);
    let report = conformance::races::run(a, b, rounds).await;
    println!("{}", report.summary());
    assert!(
        report.violations.is_empty(),
        "race violations:\n{}",
        report.summary()
    );
}
