//! Server settings shared by every backend. Each is a flag and an environment
//! variable (Capact's `APP_` names), parsed once at start.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, ValueEnum};

/// A listen address; `:PORT` means every interface, as in Capact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let full = if s.starts_with(':') {
            format!("0.0.0.0{s}")
        } else {
            s.to_owned()
        };
        full.parse()
            .map(Self)
            .map_err(|_| format!("'{s}' is not a listen address: use HOST:PORT or :PORT"))
    }
}

/// An optional listen address: `off` (or empty) disables the listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

impl FromStr for OptionalAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "off" => Ok(Self(None)),
            s => ListenAddr::from_str(s).map(|a| Self(Some(a.0))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of the gRPC server around any backend.
#[derive(Args, Clone, Debug)]
pub struct ServerConfig {
    /// gRPC listen address (HOST:PORT or :PORT).
    #[arg(long, env = "APP_GRPC_ADDR", default_value = ":50051")]
    pub grpc_addr: ListenAddr,

    /// Prometheus metrics listen address (serves /metrics); `off` disables it.
    #[arg(long, env = "APP_METRICS_ADDR", default_value = ":9464")]
    pub metrics_addr: OptionalAddr,

    /// Plaintext listener serving only grpc.health.v1 (for kubelet gRPC
    /// probes when the main port uses TLS/mTLS); `off` disables it.
    #[arg(long, env = "APP_HEALTH_ADDR", default_value = "off")]
    pub health_addr: OptionalAddr,

    /// Plaintext listener of the operator-only admin service (lock listing
    /// and force-unlock, `storagectl locks` / `force-unlock`) plus health;
    /// bind it to loopback (e.g. 127.0.0.1:50053) and reach it with kubectl
    /// exec or port-forward. `off` disables it.
    #[arg(long, env = "APP_ADMIN_ADDR", default_value = "off")]
    pub admin_addr: OptionalAddr,

    /// Log format.
    #[arg(long, env = "APP_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level or tracing filter directive (e.g. `info`, `debug,h2=info`).
    #[arg(long, env = "APP_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// PEM certificate chain: enables TLS (with --tls-key).
    #[arg(long, env = "APP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "APP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: enables mutual TLS, clients must present a certificate it signed.
    #[arg(long, env = "APP_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS files are checked; a changed certificate, key or
    /// client CA is used by new connections, open ones keep theirs.
    #[arg(long, env = "APP_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,

    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    #[arg(long, env = "APP_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Upper bound for one request (a shorter client deadline wins).
    #[arg(long, env = "APP_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Budget of one request for all its store calls and retries; when it
    /// runs out the call answers UNAVAILABLE naming the store and the step.
    /// A caller's shorter deadline still wins (DEADLINE_EXCEEDED).
    #[arg(long, env = "APP_STORE_DEADLINE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub store_deadline: Duration,

    /// Time limit of one health probe of the store; a probe that times out
    /// or finds the store unreachable turns readiness NOT_SERVING at once.
    #[arg(long, env = "APP_HEALTH_PROBE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub health_probe_timeout: Duration,

    /// Largest value accepted by OnCreate/OnUpdate, in bytes (the store's own
    /// limit applies if lower).
    #[arg(long, env = "APP_MAX_VALUE_BYTES", default_value_t = 1 << 20)]
    pub max_value_bytes: u64,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "APP_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    pub max_message_bytes: usize,

    /// How often the backing store is probed for the health status.
    #[arg(long, env = "APP_HEALTH_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,

    /// Consecutive failed probes before health turns NOT_SERVING.
    #[arg(long, env = "APP_HEALTH_FAILURE_THRESHOLD", default_value_t = 3)]
    pub health_failure_threshold: u32,

    /// Threads that run requests: 0 = one per CPU the process may use (its
    /// cgroup CPU quota included); 1 = a single thread, the lowest latency
    /// when the backend waits on its store rather than computing. Unset: the
    /// backend's own default (`BackendConfig::DEFAULT_WORKER_THREADS`).
    #[arg(long, env = "APP_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

impl ServerConfig {
    /// Cross-field checks clap cannot express; the message says what to change.
    pub fn check(&self) -> Result<(), String> {
        // Room for the other fields of the request around the value.
        let needed = self.max_value_bytes.saturating_add(64 * 1024);
        if (self.max_message_bytes as u64) < needed {
            return Err(format!(
                "APP_MAX_MESSAGE_BYTES ({}) must be at least APP_MAX_VALUE_BYTES + 65536 ({needed})",
                self.max_message_bytes
            ));
        }
        if self.health_failure_threshold == 0 {
            return Err("APP_HEALTH_FAILURE_THRESHOLD must be 1 or more".into());
        }
        if self.health_interval.is_zero() {
            return Err("APP_HEALTH_INTERVAL must be above zero".into());
        }
        if self.store_deadline.is_zero() || self.health_probe_timeout.is_zero() {
            return Err(
                "APP_STORE_DEADLINE and APP_HEALTH_PROBE_TIMEOUT must be above zero".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerConfig,
    }

    #[test]
    fn defaults_match_capact() {
        let cli = Cli::try_parse_from(["x"]).expect("defaults parse");
        assert_eq!(
            cli.server.grpc_addr.0,
            "0.0.0.0:50051".parse().expect("addr")
        );
        assert!(cli.server.check().is_ok());
    }

    #[test]
    fn metrics_can_be_turned_off() {
        let cli = Cli::try_parse_from(["x", "--metrics-addr", "off"]).expect("parse");
        assert_eq!(cli.server.metrics_addr.0, None);
    }

    #[test]
    fn message_limit_below_value_limit_is_rejected() {
        let cli = Cli::try_parse_from(["x", "--max-value-bytes", "5000000"]).expect("parse");
        assert!(cli.server.check().is_err());
    }

    #[test]
    fn tls_key_without_cert_is_rejected() {
        assert!(Cli::try_parse_from(["x", "--tls-key", "k.pem"]).is_err());
    }
}
