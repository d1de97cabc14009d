//! The flux-helmrelease backend's flags: the shared server settings, the
//! API server connection and what the backend may do to HelmReleases.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use kube::Client;
use shared::{Result, config::ServerConfig, server::BackendConfig};

#[derive(Parser, Clone, Debug)]
#[command(
    name = "flux-helmrelease-backend",
    version,
    about = "Capact context storage backend tracking Flux HelmReleases"
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,

    /// kubeconfig file; unset: in-cluster service account, else $KUBECONFIG
    /// or ~/.kube/config.
    #[arg(long, env = "APP_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// kubeconfig context to use (default: its current context).
    #[arg(long, env = "APP_KUBE_CONTEXT")]
    pub kube_context: Option<String>,

    /// Timeout of one call to the Kubernetes API.
    #[arg(long, env = "APP_KUBE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub kube_timeout: Duration,

    /// Namespaces whose HelmReleases may be tracked (comma-separated); empty:
    /// every namespace (needs a ClusterRole).
    #[arg(long, env = "APP_FLUX_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// While a TypeInstance is locked, set `spec.suspend: true` on its
    /// HelmRelease so that Flux stops changing the release; restored on unlock.
    #[arg(long, env = "APP_FLUX_SUSPEND_ON_LOCK", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub suspend_on_lock: bool,

    /// OnDelete also deletes the HelmRelease (when no other TypeInstance
    /// tracks it). Off: OnDelete only stops tracking.
    #[arg(long, env = "APP_FLUX_DELETE_RELEASE_ON_DELETE", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub delete_release_on_delete: bool,

    /// Watch HelmReleases matching this label selector and report new,
    /// changed and removed releases (log and metrics). Unset: no watch.
    #[arg(long, env = "APP_FLUX_WATCH_SELECTOR")]
    pub watch_selector: Option<String>,
}

impl BackendConfig for Config {
    const QUIET_LOG_TARGETS: &'static [&'static str] = &["kube", "kube_client", "kube_runtime"];

    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

impl Config {
    pub(crate) async fn client(&self) -> Result<Client> {
        let conn = shared_kube::connect(&shared_kube::ClientOptions {
            kubeconfig: self.kubeconfig.as_deref(),
            context: self.kube_context.as_deref(),
            kubeconfig_var: "APP_KUBECONFIG",
            context_var: "APP_KUBE_CONTEXT",
            connect_timeout: self.kube_timeout,
            timeout: self.kube_timeout,
        })
        .await?;
        Ok(conn.client)
    }
}
