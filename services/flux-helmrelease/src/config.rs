//! The flux-helmrelease backend's flags: the shared server settings, the
//! API server connection and what the backend may do to HelmReleases.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use hub_client::{Hub, HubOptions, TypeRef};
use kube::Client;
use shared::{Error, Result, config::ServerConfig, server::BackendConfig};

use crate::{hub_sync::Registration, leader::LeaseConfig};

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

    /// Namespace of the revision snapshots (ConfigMaps), so that the
    /// backend writes ConfigMaps only there (the chart sets its own
    /// namespace). Unset: each release's namespace, owned by the release.
    /// Snapshots written before it was set are still read where allowed.
    #[arg(long, env = "APP_FLUX_SNAPSHOT_NAMESPACE")]
    pub snapshot_namespace: Option<String>,

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

    #[command(flatten)]
    pub hub: HubConfig,
}

/// Registering watched releases in the Hub (off unless an endpoint is set).
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Hub registration")]
pub struct HubConfig {
    /// The Hub's GraphQL endpoint: watched HelmReleases are registered there
    /// as TypeInstances and unregistered when they go. Needs
    /// APP_FLUX_WATCH_SELECTOR and APP_HUB_BACKEND_ID.
    #[arg(long, env = "APP_HUB_ENDPOINT")]
    pub hub_endpoint: Option<String>,

    /// File holding a bearer token for the Hub (re-read at each call).
    #[arg(
        long,
        env = "APP_HUB_TOKEN_FILE",
        conflicts_with = "hub_basic_auth_file"
    )]
    pub hub_token_file: Option<PathBuf>,

    /// File holding `user:password` for the Hub (the Capact gateway's basic auth).
    #[arg(long, env = "APP_HUB_BASIC_AUTH_FILE")]
    pub hub_basic_auth_file: Option<PathBuf>,

    /// PEM bundle of CAs to trust for an https:// Hub endpoint.
    #[arg(long, env = "APP_HUB_CA_FILE")]
    pub hub_ca_file: Option<PathBuf>,

    /// Deadline of one Hub request.
    #[arg(long, env = "APP_HUB_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub hub_timeout: Duration,

    /// The id of this backend's own storage TypeInstance in the Hub
    /// (printed by `storagectl register --hub-endpoint`).
    #[arg(long, env = "APP_HUB_BACKEND_ID")]
    pub hub_backend_id: Option<String>,

    /// Type of the TypeInstance a release gets.
    #[arg(
        long,
        env = "APP_HUB_TYPE_PATH",
        default_value = "cap.type.helm.chart.release"
    )]
    pub hub_type_path: String,

    /// Revision of that Type.
    #[arg(long, env = "APP_HUB_TYPE_REVISION", default_value = "0.1.0")]
    pub hub_type_revision: String,

    /// Full comparison with the Hub at least this often (events trigger one too).
    #[arg(long, env = "APP_HUB_RESYNC", default_value = "60s", value_parser = humantime::parse_duration)]
    pub hub_resync: Duration,

    /// Namespace of the Lease that elects the one replica that registers
    /// [default: the pod's namespace].
    #[arg(long, env = "APP_HUB_LEASE_NAMESPACE")]
    pub hub_lease_namespace: Option<String>,

    /// Name of that Lease.
    #[arg(
        long,
        env = "APP_HUB_LEASE_NAME",
        default_value = "flux-helmrelease-hub-sync"
    )]
    pub hub_lease_name: String,

    /// How long a silent leader keeps the Lease before another replica takes over.
    #[arg(long, env = "APP_HUB_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub hub_lease_duration: Duration,
}

/// Where a pod finds its own namespace.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl BackendConfig for Config {
    const QUIET_LOG_TARGETS: &'static [&'static str] = &["kube", "kube_client", "kube_runtime"];

    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

impl Config {
    /// The Hub registration and its Lease, when an endpoint is set; fails
    /// fast on settings that cannot work.
    pub(crate) fn registration(&self) -> Result<Option<(Registration, LeaseConfig)>> {
        let h = &self.hub;
        let Some(endpoint) = &h.hub_endpoint else {
            return Ok(None);
        };
        let usage = |m: &str| Error::invalid_argument(m.to_owned());
        if self
            .watch_selector
            .as_deref()
            .is_none_or(|s| s.trim().is_empty())
        {
            return Err(usage(
                "APP_HUB_ENDPOINT registers watched releases: set APP_FLUX_WATCH_SELECTOR too (e.g. capact.io/register=true)",
            ));
        }
        let backend_id = h
            .hub_backend_id
            .clone()
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(|| usage("APP_HUB_ENDPOINT needs APP_HUB_BACKEND_ID: the id of this backend's storage TypeInstance in the Hub (storagectl register --hub-endpoint prints it)"))?;
        if h.hub_lease_duration < Duration::from_secs(3) {
            return Err(usage("APP_HUB_LEASE_DURATION must be at least 3s"));
        }
        let namespace = match &h.hub_lease_namespace {
            Some(ns) => ns.clone(),
            None => std::fs::read_to_string(POD_NAMESPACE_FILE)
                .map(|s| s.trim().to_owned())
                .map_err(|_| usage("set APP_HUB_LEASE_NAMESPACE: outside a pod the namespace of the leader-election Lease is unknown"))?,
        };
        let mut options = HubOptions::new(endpoint.clone());
        options.token_file = h.hub_token_file.clone();
        options.basic_auth_file = h.hub_basic_auth_file.clone();
        options.ca_file = h.hub_ca_file.clone();
        options.timeout = h.hub_timeout;
        let hub = Hub::new(&options).map_err(|e| usage(&e.to_string()))?;
        let registration = Registration {
            hub,
            marker: Registration::marker_for(&backend_id),
            backend_id,
            type_ref: TypeRef {
                path: h.hub_type_path.clone(),
                revision: h.hub_type_revision.clone(),
            },
            resync: h.hub_resync,
        };
        // Unique per process: the pod name (HOSTNAME) alone is not, for two
        // processes on one host.
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "flux-helmrelease".into());
        let identity = format!("{host}-{:08x}", fastrand::u32(..));
        let lease = LeaseConfig::new(
            namespace,
            h.hub_lease_name.clone(),
            identity,
            h.hub_lease_duration,
        );
        Ok(Some((registration, lease)))
    }

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
