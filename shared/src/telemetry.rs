//! Structured logging through `tracing`, text or JSON.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the global subscriber. Idempotent: a second call is ignored
/// (tests start several servers in one process).
///
/// `quiet` names log targets (store SDKs) silenced unless `level` mentions
/// them: they log expected conflicts as errors, and our own log line for the
/// request already says what happened.
pub fn init(format: LogFormat, level: &str, quiet: &[&str]) -> Result<(), String> {
    let mut directives = level.to_owned();
    for target in quiet.iter().filter(|t| !level.contains(*t)) {
        directives.push_str(&format!(",{target}=off"));
    }
    let filter = EnvFilter::try_new(&directives)
        .map_err(|e| format!("APP_LOG_LEVEL '{level}' is not a valid filter: {e}"))?;
    // Colour only on a terminal: log collectors would store escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// [`init`] at the start of a binary: on a bad setting the reason goes to
/// stderr (there is no logger yet) and the process should exit with the
/// returned code.
pub fn init_or_exit(
    format: LogFormat,
    level: &str,
    quiet: &[&str],
) -> Result<(), std::process::ExitCode> {
    init(format, level, quiet).map_err(|e| {
        eprintln!("configuration error: {e}");
        std::process::ExitCode::from(2)
    })
}
