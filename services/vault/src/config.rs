//! The process's configuration: flags, each also read from an environment
//! variable, and what they turn into (login method, connection settings).

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use shared::{
    Error, Result, Secret, config::ServerConfig, engine::EngineArgs, server::BackendConfig,
};

use crate::{
    auth::{Connection, Method, SecretSource, load_identity},
    store::KvVersion,
};

const USERPASS_PASSWORD_ENV: &str = "APP_VAULT_USERPASS_PASSWORD";

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

    /// JWT auth role; unset: the mount's default_role (needs --jwt-file).
    #[arg(long, env = "APP_VAULT_JWT_ROLE")]
    pub jwt_role: Option<String>,

    /// File holding the JWT (e.g. a projected service-account token): enables JWT/OIDC login; re-read at every login.
    #[arg(long, env = "APP_VAULT_JWT_FILE")]
    pub jwt_file: Option<PathBuf>,

    /// JWT/OIDC auth mount.
    #[arg(long, env = "APP_VAULT_JWT_MOUNT", default_value = "jwt")]
    pub jwt_mount: String,

    /// PEM client certificate presented to Vault: enables TLS certificate login (with --cert-client-key); re-read at every login.
    #[arg(long, env = "APP_VAULT_CERT_CLIENT_CERT")]
    pub cert_client_cert: Option<PathBuf>,

    /// PEM private key of --cert-client-cert.
    #[arg(long, env = "APP_VAULT_CERT_CLIENT_KEY")]
    pub cert_client_key: Option<PathBuf>,

    /// Certificate role (`name`) to log in against; unset: any role whose CA matches.
    #[arg(long, env = "APP_VAULT_CERT_ROLE")]
    pub cert_role: Option<String>,

    /// TLS certificate auth mount.
    #[arg(long, env = "APP_VAULT_CERT_MOUNT", default_value = "cert")]
    pub cert_mount: String,

    /// userpass user name: enables userpass login (meant for development).
    #[arg(long, env = "APP_VAULT_USERPASS_USERNAME")]
    pub userpass_username: Option<String>,

    /// userpass password, from the environment only (a flag value would show in ps).
    #[arg(long, env = USERPASS_PASSWORD_ENV, hide_env_values = true)]
    pub userpass_password: Option<Secret>,

    /// File holding the userpass password; re-read at every login.
    #[arg(long, env = "APP_VAULT_USERPASS_PASSWORD_FILE")]
    pub userpass_password_file: Option<PathBuf>,

    /// userpass auth mount.
    #[arg(long, env = "APP_VAULT_USERPASS_MOUNT", default_value = "userpass")]
    pub userpass_mount: String,

    /// How often a token file is checked for a new token.
    #[arg(long, env = "APP_VAULT_TOKEN_FILE_POLL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub token_file_poll: Duration,
}

impl BackendConfig for Config {
    // vaultrs logs every cas conflict (an expected race outcome) at ERROR,
    // and rustify (its HTTP layer) every 404, e.g. the missing head of each
    // create; our own request log line already says what happened.
    const QUIET_LOG_TARGETS: &'static [&'static str] = &["vaultrs", "rustify"];

    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

impl Config {
    /// The one login method the settings select. Two methods, a token with
    /// a method, or a method's setting without the one that enables it stop
    /// the process with a message naming the variables.
    pub(crate) fn method(&self) -> Result<Method> {
        let set = |o: &Option<String>| o.as_deref().is_some_and(|v| !v.is_empty());
        let jwt_role = self.jwt_role.clone().filter(|r| !r.is_empty());
        let cert_role = self.cert_role.clone().filter(|r| !r.is_empty());

        // Each method with the variable that selects it.
        let mut selected: Vec<(Login, &str)> = Vec::new();
        if set(&self.approle_role_id) {
            selected.push((Login::AppRole, "APP_VAULT_APPROLE_ROLE_ID"));
        } else if self.approle_secret_id.is_some() || self.approle_secret_id_file.is_some() {
            return Err(invalid(
                "APP_VAULT_APPROLE_SECRET_ID(_FILE) needs APP_VAULT_APPROLE_ROLE_ID",
            ));
        }
        if set(&self.k8s_role) {
            selected.push((Login::Kubernetes, "APP_VAULT_K8S_ROLE"));
        }
        if self.jwt_file.is_some() {
            selected.push((Login::Jwt, "APP_VAULT_JWT_FILE"));
        } else if jwt_role.is_some() {
            return Err(invalid("APP_VAULT_JWT_ROLE needs APP_VAULT_JWT_FILE"));
        }
        match (&self.cert_client_cert, &self.cert_client_key) {
            (Some(_), Some(_)) => selected.push((Login::Cert, "APP_VAULT_CERT_CLIENT_CERT")),
            (Some(_), None) => {
                return Err(invalid(
                    "APP_VAULT_CERT_CLIENT_CERT needs APP_VAULT_CERT_CLIENT_KEY",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "APP_VAULT_CERT_CLIENT_KEY needs APP_VAULT_CERT_CLIENT_CERT",
                ));
            }
            (None, None) if cert_role.is_some() => {
                return Err(invalid(
                    "APP_VAULT_CERT_ROLE needs APP_VAULT_CERT_CLIENT_CERT and APP_VAULT_CERT_CLIENT_KEY",
                ));
            }
            (None, None) => {}
        }
        if set(&self.userpass_username) {
            selected.push((Login::Userpass, "APP_VAULT_USERPASS_USERNAME"));
        } else if self.userpass_password.is_some() || self.userpass_password_file.is_some() {
            return Err(invalid(
                "APP_VAULT_USERPASS_PASSWORD(_FILE) needs APP_VAULT_USERPASS_USERNAME",
            ));
        }

        let token_set = self.vault_token.as_ref().is_some_and(|t| !t.is_empty())
            || self.vault_token_file.is_some();
        let (login, var) = match selected.as_slice() {
            [] => {
                return Ok(Method::Token {
                    token: self.vault_token.clone().filter(|t| !t.is_empty()),
                    file: self.vault_token_file.clone(),
                });
            }
            [one] => *one,
            many => {
                let vars: Vec<&str> = many.iter().map(|(_, v)| *v).collect();
                return Err(invalid(format!(
                    "more than one vault login method is configured ({}): keep the settings of one",
                    vars.join(", ")
                )));
            }
        };
        if token_set {
            return Err(invalid(format!(
                "VAULT_TOKEN/VAULT_TOKEN_FILE and the {} login ({var}) are both set: keep one",
                login.name()
            )));
        }
        let mount = |var: &str, value: &str| {
            let m = value.trim_matches('/');
            if m.is_empty() {
                Err(invalid(format!("{var} must not be empty")))
            } else {
                Ok(m.to_owned())
            }
        };
        match login {
            Login::AppRole => {
                let secret_id = match (&self.approle_secret_id, &self.approle_secret_id_file) {
                    (_, Some(f)) => SecretSource::File(f.clone()),
                    (Some(s), None) => SecretSource::Value(s.clone()),
                    (None, None) => {
                        return Err(invalid(
                            "AppRole login needs APP_VAULT_APPROLE_SECRET_ID or APP_VAULT_APPROLE_SECRET_ID_FILE",
                        ));
                    }
                };
                Ok(Method::AppRole {
                    mount: mount("APP_VAULT_APPROLE_MOUNT", &self.approle_mount)?,
                    role_id: self.approle_role_id.clone().unwrap_or_default(),
                    secret_id,
                })
            }
            Login::Kubernetes => Ok(Method::Kubernetes {
                mount: mount("APP_VAULT_K8S_MOUNT", &self.k8s_mount)?,
                role: self.k8s_role.clone().unwrap_or_default(),
                jwt_file: self.k8s_jwt_file.clone(),
            }),
            Login::Jwt => Ok(Method::Jwt {
                mount: mount("APP_VAULT_JWT_MOUNT", &self.jwt_mount)?,
                role: jwt_role,
                jwt_file: self.jwt_file.clone().unwrap_or_default(),
            }),
            Login::Cert => {
                if self.vault_client_cert.is_some() {
                    // One TLS identity per connection: the login's certificate
                    // is also the one every later call presents.
                    return Err(invalid(
                        "VAULT_CLIENT_CERT and APP_VAULT_CERT_CLIENT_CERT are both set: with cert login APP_VAULT_CERT_CLIENT_CERT/KEY are presented on every connection, unset VAULT_CLIENT_CERT/KEY",
                    ));
                }
                Ok(Method::Cert {
                    mount: mount("APP_VAULT_CERT_MOUNT", &self.cert_mount)?,
                    role: cert_role,
                    cert: self.cert_client_cert.clone().unwrap_or_default(),
                    key: self.cert_client_key.clone().unwrap_or_default(),
                })
            }
            Login::Userpass => {
                let password = match (&self.userpass_password, &self.userpass_password_file) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "APP_VAULT_USERPASS_PASSWORD and APP_VAULT_USERPASS_PASSWORD_FILE are both set: keep one",
                        ));
                    }
                    (None, Some(f)) => SecretSource::File(f.clone()),
                    (Some(p), None) => {
                        // clap takes the flag over the variable: a value that is
                        // not the variable's came from the command line.
                        if std::env::var(USERPASS_PASSWORD_ENV).ok().as_deref() != Some(p.expose())
                        {
                            return Err(invalid(
                                "--userpass-password is refused on the command line (it shows in ps): set APP_VAULT_USERPASS_PASSWORD or APP_VAULT_USERPASS_PASSWORD_FILE",
                            ));
                        }
                        SecretSource::Value(p.clone())
                    }
                    (None, None) => {
                        return Err(invalid(
                            "userpass login needs APP_VAULT_USERPASS_PASSWORD or APP_VAULT_USERPASS_PASSWORD_FILE",
                        ));
                    }
                };
                let username = self.userpass_username.clone().unwrap_or_default();
                // The name is a path segment of the login request.
                if username.contains('/') {
                    return Err(invalid("APP_VAULT_USERPASS_USERNAME must not contain '/'"));
                }
                Ok(Method::Userpass {
                    mount: mount("APP_VAULT_USERPASS_MOUNT", &self.userpass_mount)?,
                    username,
                    password,
                })
            }
        }
    }

    pub(crate) fn connection(&self) -> Result<Connection> {
        let address = url::Url::parse(&self.vault_addr)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                Error::invalid_argument("VAULT_ADDR must be an http:// or https:// url")
            })?;
        let identity = match (&self.vault_client_cert, &self.vault_client_key) {
            (Some(cert), Some(key)) => Some(load_identity(
                cert,
                key,
                "VAULT_CLIENT_CERT",
                "VAULT_CLIENT_KEY",
            )?),
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

/// The login methods other than a token, as selected by the settings.
#[derive(Clone, Copy)]
enum Login {
    AppRole,
    Kubernetes,
    Jwt,
    Cert,
    Userpass,
}

impl Login {
    fn name(self) -> &'static str {
        match self {
            Login::AppRole => "AppRole",
            Login::Kubernetes => "Kubernetes",
            Login::Jwt => "JWT",
            Login::Cert => "cert",
            Login::Userpass => "userpass",
        }
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::invalid_argument(message)
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

    /// The configuration error of `args`, which must not carry `secret`.
    fn method_error(args: &[&str], secret: &str) -> String {
        let err = parse(args).method().expect_err("a configuration error");
        assert_eq!(err.kind(), shared::ErrorKind::InvalidArgument);
        let message = err.detail();
        assert!(!message.contains(secret) || secret.is_empty(), "{message}");
        message
    }

    #[test]
    fn each_login_method_is_selected_by_its_own_setting_with_its_default_mount() {
        let m = parse(&["--jwt-file", "/jwt", "--jwt-role", "r"])
            .method()
            .ok();
        assert!(
            matches!(&m, Some(Method::Jwt { mount, role: Some(r), .. }) if mount == "jwt" && r == "r"),
            "{m:?}"
        );
        let m = parse(&["--cert-client-cert", "/c", "--cert-client-key", "/k"])
            .method()
            .ok();
        assert!(
            matches!(&m, Some(Method::Cert { mount, role: None, .. }) if mount == "cert"),
            "{m:?}"
        );
        let m = parse(&[
            "--userpass-username",
            "dev",
            "--userpass-password-file",
            "/pw",
            "--userpass-mount",
            "/up/",
        ])
        .method()
        .ok();
        assert!(
            matches!(&m, Some(Method::Userpass { mount, username, password: SecretSource::File(_) }) if mount == "up" && username == "dev"),
            "{m:?}"
        );
        assert!(matches!(parse(&[]).method(), Ok(Method::Token { .. })));
    }

    #[test]
    fn a_login_setting_without_the_one_that_enables_it_names_both_variables() {
        for (args, expected) in [
            (
                &["--jwt-role", "r"][..],
                "APP_VAULT_JWT_ROLE needs APP_VAULT_JWT_FILE",
            ),
            (
                &["--cert-client-cert", "/c"][..],
                "APP_VAULT_CERT_CLIENT_CERT needs APP_VAULT_CERT_CLIENT_KEY",
            ),
            (
                &["--cert-client-key", "/k"][..],
                "APP_VAULT_CERT_CLIENT_KEY needs APP_VAULT_CERT_CLIENT_CERT",
            ),
            (&["--cert-role", "web"][..], "APP_VAULT_CERT_ROLE needs"),
            (
                &["--userpass-password-file", "/pw"][..],
                "needs APP_VAULT_USERPASS_USERNAME",
            ),
            (
                &["--approle-secret-id-file", "/s"][..],
                "needs APP_VAULT_APPROLE_ROLE_ID",
            ),
            (
                &["--userpass-username", "dev"][..],
                "userpass login needs APP_VAULT_USERPASS_PASSWORD or APP_VAULT_USERPASS_PASSWORD_FILE",
            ),
            (
                &["--jwt-file", "/jwt", "--jwt-mount", "/"][..],
                "APP_VAULT_JWT_MOUNT must not be empty",
            ),
        ] {
            let message = method_error(args, "");
            assert!(message.contains(expected), "{args:?}: {message}");
        }
    }

    #[test]
    fn two_login_methods_or_a_token_with_one_are_refused() {
        let message = method_error(
            &[
                "--approle-role-id",
                "r",
                "--approle-secret-id",
                "secret-id-value",
                "--jwt-file",
                "/jwt",
            ],
            "secret-id-value",
        );
        assert!(
            message.contains("APP_VAULT_APPROLE_ROLE_ID, APP_VAULT_JWT_FILE"),
            "{message}"
        );
        let message = method_error(
            &["--vault-token", "hvs.token-value", "--jwt-file", "/jwt"],
            "hvs.token-value",
        );
        assert!(
            message.contains("VAULT_TOKEN/VAULT_TOKEN_FILE and the JWT login (APP_VAULT_JWT_FILE)"),
            "{message}"
        );
        let message = method_error(
            &[
                "--cert-client-cert",
                "/c",
                "--cert-client-key",
                "/k",
                "--vault-client-cert",
                "/c2",
                "--vault-client-key",
                "/k2",
            ],
            "",
        );
        assert!(message.contains("unset VAULT_CLIENT_CERT/KEY"), "{message}");
    }

    #[test]
    fn userpass_password_on_the_command_line_is_refused_without_echoing_it() {
        let message = method_error(
            &[
                "--userpass-username",
                "dev",
                "--userpass-password",
                "pw-on-the-command-line",
            ],
            "pw-on-the-command-line",
        );
        assert!(message.contains("APP_VAULT_USERPASS_PASSWORD"), "{message}");
        let c = parse(&[
            "--userpass-username",
            "dev",
            "--userpass-password",
            "pw-on-the-command-line",
        ]);
        assert!(!format!("{c:?}").contains("pw-on-the-command-line"));
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
