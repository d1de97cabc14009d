//! Test-only crash injection: `APP_SOPS_GIT_TEST_CRASH_AT=<step>[:<n>]`
//! aborts the process (as SIGKILL would end it: no unwinding, no clean-up)
//! right after the `n`-th time (default 1) a write reaches `step`.
//!
//! Compiled only with debug assertions: the tests need it in the real
//! binary (a crash must end the process the Hub talks to), and a release
//! build (the image) must not carry a switch that kills the process. It is
//! read from the environment directly, not a flag, so it stays out of
//! `--help` and the chart.

/// The steps of a write, in order.
pub const STEPS: [&str; 5] = [
    // every blob of the change is in the clone's object store
    "blob",
    // the commit object is in the clone
    "commit",
    // local remotes: the objects are in the remote, its branch not moved
    "remote-objects",
    // the remote's branch points at the commit
    "push",
    // the clone's tracking ref points at the commit (the answer not sent)
    "tracking-ref",
];

#[cfg(debug_assertions)]
mod imp {
    use std::sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    };

    pub const VAR: &str = "APP_SOPS_GIT_TEST_CRASH_AT";

    static PLAN: OnceLock<Option<(&'static str, u32)>> = OnceLock::new();
    static SEEN: AtomicU32 = AtomicU32::new(0);

    fn parse(text: &str) -> Result<(&'static str, u32), String> {
        let (step, n) = match text.split_once(':') {
            Some((s, n)) => (s, n.parse::<u32>().ok().filter(|n| *n > 0)),
            None => (text, Some(1)),
        };
        let step = super::STEPS.iter().find(|s| **s == step);
        match (step, n) {
            (Some(step), Some(n)) => Ok((step, n)),
            _ => Err(format!(
                "{VAR} must be <step>[:<n>] with a step of {} and n ≥ 1",
                super::STEPS.join(", ")
            )),
        }
    }

    pub fn arm() -> Result<(), String> {
        let plan = match std::env::var(VAR) {
            Ok(text) if !text.is_empty() => Some(parse(&text)?),
            _ => None,
        };
        if let Some((step, n)) = plan {
            tracing::warn!(step, n, "test-only crash injection armed ({VAR})");
        }
        let _ = PLAN.set(plan);
        Ok(())
    }

    pub fn point(step: &str) {
        let Some(Some((want, n))) = PLAN.get() else {
            return;
        };
        if *want == step && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            tracing::error!("{VAR}: aborting after {step} (test-only crash hook)");
            std::process::abort();
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn steps_parse_with_an_optional_count() {
            assert_eq!(super::parse("commit"), Ok(("commit", 1)));
            assert_eq!(super::parse("push:3"), Ok(("push", 3)));
            assert!(super::parse("push:0").is_err());
            assert!(super::parse("nowhere").is_err());
        }
    }
}

/// Reads the plan from the environment once, at start; a malformed value
/// stops the start (a test that would silently never crash proves nothing).
#[cfg(debug_assertions)]
pub fn arm() -> Result<(), String> {
    imp::arm()
}

/// Release builds carry no crash injection.
#[cfg(not(debug_assertions))]
pub fn arm() -> Result<(), String> {
    Ok(())
}

/// Marks that a write reached `step` (one of [`STEPS`]).
#[inline]
pub fn point(step: &'static str) {
    debug_assert!(STEPS.contains(&step));
    #[cfg(debug_assertions)]
    imp::point(step);
}
