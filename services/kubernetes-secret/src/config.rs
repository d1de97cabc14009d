//! Flags (each also read from the environment variable shown by `--help`).

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use shared::{config::ServerConfig, engine::EngineArgs, server::BackendConfig};

#[derive(Parser, Clone, Debug)]
#[command(
    name = "kubernetes-secret-backend",
    version,
    about = "Capact storage backend on Kubernetes Secrets"
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Kubeconfig file; unset: $KUBECONFIG/~/.kube/config, else the pod's
    /// in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context (default: its current-context).
    #[arg(long, env = "APP_K8S_CONTEXT")]
    pub kube_context: Option<String>,

    /// Namespace of the Secrets (default: the pod's own, else the kubeconfig's).
    #[arg(long, env = "APP_K8S_NAMESPACE")]
    pub namespace: Option<String>,

    /// Prefix of every Secret name this backend writes.
    #[arg(long, env = "APP_K8S_NAME_PREFIX", default_value = "capact")]
    pub name_prefix: String,

    /// Namespaces an application-facing Secret may be written to (comma
    /// separated, `*` for any); the backend's own namespace is always allowed.
    #[arg(long, env = "APP_K8S_APP_SECRET_NAMESPACES", value_delimiter = ',')]
    pub app_secret_namespaces: Vec<String>,

    /// Timeout of one call to the API server.
    #[arg(long, env = "APP_K8S_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub kube_timeout: Duration,
}

impl BackendConfig for Config {
    const QUIET_LOG_TARGETS: &'static [&'static str] = &["kube_client"];

    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

/// A Secret name prefix: 1–40 of `[a-z0-9-]`, starting with a letter, not
/// ending with `-`.
pub fn valid_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 40
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && p.as_bytes()[0].is_ascii_lowercase()
        && !p.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["kubernetes-secret-backend"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap_or_else(|e| panic!("parse: {e}"))
    }

    #[test]
    fn defaults_are_prefix_capact_and_only_the_own_namespace() {
        let c = parse(&[]);
        assert_eq!(c.name_prefix, "capact");
        assert!(c.app_secret_namespaces.is_empty());
        assert_eq!(c.engine.intent_lease, Duration::from_secs(60));
        assert_eq!(c.engine.cas_attempts, 8);
    }

    #[test]
    fn app_secret_namespaces_are_comma_separated() {
        let c = parse(&["--app-secret-namespaces", "a,b"]);
        assert_eq!(c.app_secret_namespaces, vec!["a", "b"]);
    }

    #[test]
    fn prefix_must_fit_a_dns_name() {
        assert!(valid_prefix("capact"));
        assert!(valid_prefix("ti-store-1"));
        assert!(!valid_prefix("Capact"));
        assert!(!valid_prefix("cap_act"));
        assert!(!valid_prefix("capact-"));
        assert!(!valid_prefix("1capact"));
        assert!(!valid_prefix(""));
    }
}
