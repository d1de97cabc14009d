//! The process's configuration: flags, each also read from an environment
//! variable, and what they turn into (login method, connection settings).

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use shared::{
    Error, Result, Secret, config::ServerConfig, engine::EngineArgs, server::BackendConfig,
};

use crate::{
    auth::{Connection, Method, SecretSource},
    store::KvVersion,
};

#[derive(Parser, Clone, Debug)]
#[command(
    name = "vault-backend",
    version,
    about = "Capact storage backend on Vault/OpenBao KV"
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Vault address, e.g. https://vault.example:8200.
    #[arg(long, env = "VAULT_ADDR", default_value = "http://127.0.0.1:8200")]
    pub vault_addr: String,

    /// Vault token (prefer --vault-token-file or a login method).
    #[arg(long, env = "VAULT_TOKEN", hide_env_values = true)]
    pub vault_token: Option<Secret>,

    /// File holding the Vault token; re-read when it changes.
    #[arg(long, env = "VAULT_TOKEN_FILE")]
    pub vault_token_file: Option<PathBuf>,

    /// Vault Enterprise / OpenBao namespace (sent as X-Vault-Namespace).
    #[arg(long, env = "VAULT_NAMESPACE")]
    pub vault_namespace: Option<String>,

    /// PEM CA bundle to trust for Vault's TLS certificate.
    #[arg(long, env = "VAULT_CACERT")]
    pub vault_cacert: Option<PathBuf>,

    /// PEM client certificate for mutual TLS with Vault (with --vault-client-key).
    #[arg(long, env = "VAULT_CLIENT_CERT", requires = "vault_client_key")]
    pub vault_client_cert: Option<PathBuf>,

    /// PEM private key of --vault-client-cert.
    #[arg(long, env = "VAULT_CLIENT_KEY", requires = "vault_client_cert")]
    pub vault_client_key: Option<PathBuf>,

    /// Timeout of one HTTP call to Vault.
    #[arg(long, env = "APP_VAULT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub vault_timeout: Duration,

    /// KV mount path.
    #[arg(long, env = "APP_VAULT_MOUNT", default_value = "secret")]
    pub vault_mount: String,

    /// Path prefix under the mount; every TypeInstance lives below it.
    #[arg(long, env = "APP_VAULT_PATH_PREFIX", default_value = "capact")]
    pub vault_path_prefix: String,

    /// KV engine version of the mount: 2 (atomic with cas) or 1 (see README).
    #[arg(long, env = "APP_VAULT_KV_VERSION", value_enum, default_value = "2")]
    pub vault_kv_version: KvVersion,

    /// AppRole role_id: enables AppRole login.
    #[arg(long, env = "APP_VAULT_APPROLE_ROLE_ID")]
    pub approle_role_id: Option<String>,

    /// AppRole secret_id.
    #[arg(long, env = "APP_VAULT_APPROLE_SECRET_ID", hide_env_values = true)]
    pub approle_secret_id: Option<Secret>,

    /// File holding the AppRole secret_id.
    #[arg(long, env = "APP_VAULT_APPROLE_SECRET_ID_FILE")]
    pub approle_secret_id_file: Option<PathBuf>,

    /// AppRole auth mount.
    #[arg(long, env = "APP_VAULT_APPROLE_MOUNT", default_value = "approle")]
    pub approle_mount: String,

    /// Kubernetes auth role: enables Kubernetes login.
    #[arg(long, env = "APP_VAULT_K8S_ROLE")]
    pub k8s_role: Option<String>,

    /// Service-account JWT file for Kubernetes login.
    #[arg(
        long,
        env = "APP_VAULT_K8S_JWT_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub k8s_jwt_file: PathBuf,

    /// Kubernetes auth mount.
    #[arg(long, env = "APP_VAULT_K8S_MOUNT", default_value = "kubernetes")]
    pub k8s_mount: String,

    /// How often a token file is checked for a new token.
    #[arg(long, env = "APP_VAULT_TOKEN_FILE_POLL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub token_file_poll: Duration,
}

impl BackendConfig for Config {
    // vaultrs logs every cas conflict (an expected race outcome) at ERROR.
    const QUIET_LOG_TARGETS: &'static [&'static str] = &["vaultrs"];

    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

impl Config {
    pub(crate) fn method(&self) -> Result<Method> {
        if let Some(role_id) = &self.approle_role_id {
            let secret_id = match (&self.approle_secret_id, &self.approle_secret_id_file) {
                (_, Some(f)) => SecretSource::File(f.clone()),
                (Some(s), None) => SecretSource::Value(s.clone()),
                (None, None) => {
                    return Err(Error::invalid_argument(
                        "AppRole login needs APP_VAULT_APPROLE_SECRET_ID or APP_VAULT_APPROLE_SECRET_ID_FILE",
                    ));
                }
            };
            return Ok(Method::AppRole {
                mount: self.approle_mount.clone(),
                role_id: role_id.clone(),
                secret_id,
            });
        }
        if let Some(role) = &self.k8s_role {
            return Ok(Method::Kubernetes {
                mount: self.k8s_mount.clone(),
                role: role.clone(),
                jwt_file: self.k8s_jwt_file.clone(),
            });
        }
        Ok(Method::Token {
            token: self.vault_token.clone().filter(|t| !t.is_empty()),
            file: self.vault_token_file.clone(),
        })
    }

    pub(crate) fn connection(&self) -> Result<Connection> {
        let address = url::Url::parse(&self.vault_addr)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                Error::invalid_argument("VAULT_ADDR must be an http:// or https:// url")
            })?;
        let identity = match (&self.vault_client_cert, &self.vault_client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert).map_err(|e| {
                    Error::invalid_argument(format!(
                        "cannot read VAULT_CLIENT_CERT {}",
                        cert.display()
                    ))
                    .with_source(e)
                })?;
                pem.push(b'\n');
                pem.extend(std::fs::read(key).map_err(|e| {
                    Error::invalid_argument(format!(
                        "cannot read VAULT_CLIENT_KEY {}",
                        key.display()
                    ))
                    .with_source(e)
                })?);
                Some(vaultrs::client::Identity::from_pem(&pem).map_err(|e| {
                    Error::invalid_argument(
                        "VAULT_CLIENT_CERT/VAULT_CLIENT_KEY are not a PEM certificate and key",
                    )
                    .with_source(e)
                })?)
            }
            _ => None,
        };
        Ok(Connection {
            address,
            ca_certs: self
                .vault_cacert
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            identity,
            namespace: self.vault_namespace.clone().filter(|n| !n.is_empty()),
            timeout: self.vault_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["vault-backend"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap_or_else(|e| panic!("parse: {e}"))
    }

    #[test]
    fn debug_of_the_config_hides_token_and_secret_id() {
        let c = parse(&[
            "--vault-token",
            "hvs.super-secret-token",
            "--approle-secret-id",
            "secret-id-value",
        ]);
        let shown = format!("{c:?}");
        assert!(!shown.contains("super-secret-token"), "{shown}");
        assert!(!shown.contains("secret-id-value"), "{shown}");
    }

    #[test]
    fn defaults_are_kv2_under_secret_capact() {
        let c = parse(&[]);
        assert_eq!(c.vault_kv_version, KvVersion::V2);
        assert_eq!(c.vault_mount, "secret");
        assert_eq!(c.vault_path_prefix, "capact");
    }

    #[test]
    fn kv_version_other_than_1_or_2_is_rejected() {
        assert!(Config::try_parse_from(["vault-backend", "--vault-kv-version", "3"]).is_err());
    }

    #[test]
    fn approle_without_secret_id_is_a_configuration_error() {
        let c = parse(&["--approle-role-id", "r"]);
        let err = c.method().expect_err("needs a secret id");
        assert_eq!(err.kind(), shared::ErrorKind::InvalidArgument);
    }

    #[test]
    fn address_without_http_scheme_is_rejected() {
        let c = parse(&["--vault-addr", "vault:8200"]);
        assert!(c.connection().is_err());
    }

    #[test]
    fn engine_flags_default_to_a_minute_and_8_attempts_and_the_lease_must_outlast_a_request() {
        let c = parse(&[]);
        assert_eq!(c.engine.intent_lease, Duration::from_secs(60));
        assert_eq!(c.engine.cas_attempts, 8);
        assert!(shared::engine::Options::from_args(&c.engine, &c.server).is_ok());
        let c = parse(&["--intent-lease", "30s", "--request-timeout", "30s"]);
        let err = shared::engine::Options::from_args(&c.engine, &c.server).err();
        assert_eq!(
            err.map(|e| e.kind()),
            Some(shared::ErrorKind::InvalidArgument)
        );
    }
}
