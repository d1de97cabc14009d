//! Runs the conformance suite against a running backend and prints one line
//! per case and a closing `N passed, N failed, N skipped` line.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::Parser;
use conformance::{Connect, Target};

#[derive(Parser)]
#[command(
    version,
    about = "Check a storage backend against the protocol's contract"
)]
struct Cli {
    /// Backend address: host:port, http://host:port or https://host:port.
    #[arg(long, env = "CONFORMANCE_URL")]
    url: String,
    /// A valid context (JSON object) sent with every call.
    #[arg(long, env = "CONFORMANCE_CONTEXT")]
    context: Option<String>,
    /// Only run cases whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
    /// PEM CA that signed the backend's certificate (enables TLS).
    #[arg(long, env = "CONFORMANCE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS.
    #[arg(long, env = "CONFORMANCE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, env = "CONFORMANCE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Server name to verify, if not the host of --url.
    #[arg(long, env = "CONFORMANCE_TLS_DOMAIN")]
    tls_domain: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let context = match cli.context.as_deref().map(serde_json::from_str).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: --context is not JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let connect = Connect {
        url: cli.url,
        tls_ca: cli.tls_ca,
        tls_cert: cli.tls_cert,
        tls_key: cli.tls_key,
        tls_domain: cli.tls_domain,
    };
    let target = match Target::connect(&connect, context).await {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let d = target.describe();
    println!(
        "backend {} {} ({}), value limit {} bytes",
        d.name,
        d.version,
        if d.accept_value {
            "ValueAndContextStorageBackend"
        } else {
            "ContextStorageBackend"
        },
        d.max_value_bytes
    );
    let report = conformance::run(target, cli.filter.as_deref(), |name, outcome| {
        println!("{}", conformance::line(name, outcome));
    })
    .await;
    println!("{}", report.summary());
    if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
