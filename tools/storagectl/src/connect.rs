//! How to reach a backend, as flags and env vars. Connecting itself is
//! [`shared::client`]'s: these arguments only turn into its settings.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use shared::client::{Client, Connect, Timeouts};

use crate::error::Error;

/// Connection flags shared by `storagectl` and `storage-bench`.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Connection")]
pub struct ConnectArgs {
    /// Backend address: `host:port`, `http://host:port` or `https://host:port`.
    #[arg(
        long,
        env = "STORAGECTL_URL",
        global = true,
        default_value = "127.0.0.1:50051"
    )]
    pub url: String,

    /// PEM CA bundle that signed the backend's certificate; enables TLS.
    #[arg(long, env = "STORAGECTL_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate for mutual TLS (with --tls-key).
    #[arg(long, env = "STORAGECTL_TLS_CERT", global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "STORAGECTL_TLS_KEY", global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Name to verify in the backend's certificate, when it differs from the host.
    #[arg(long, env = "STORAGECTL_TLS_DOMAIN", global = true)]
    pub tls_domain: Option<String>,

    /// Deadline of each call and of connecting (e.g. `500ms`, `30s`).
    #[arg(long, env = "STORAGECTL_TIMEOUT", global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl ConnectArgs {
    /// The settings [`shared::client`] connects with.
    pub fn settings(&self) -> Connect {
        Connect {
            url: self.url.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_domain: self.tls_domain.clone(),
        }
    }

    /// One deadline for connecting and for each call.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts::both(self.timeout)
    }

    /// Connects and calls Describe; bad settings are usage errors.
    pub async fn connect(&self) -> Result<Client, Error> {
        Ok(Client::connect(&self.settings(), self.timeouts()).await?)
    }
}

impl From<&ConnectArgs> for Connect {
    fn from(args: &ConnectArgs) -> Self {
        args.settings()
    }
}

#[cfg(test)]
mod tests {
    use shared::client::ConnectError;

    use super::*;

    #[tokio::test]
    async fn bad_settings_are_usage_errors() {
        let args = ConnectArgs {
            url: "https://b:1".into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_domain: None,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(args.settings(), Connect::plain("https://b:1"));
        assert_eq!(args.timeouts(), Timeouts::both(Duration::from_secs(1)));
        let err = args.connect().await.err();
        assert!(matches!(err, Some(Error::Usage(_))), "{err:?}");
        assert_eq!(
            Error::from(ConnectError::Failed("down".into())).exit_code(),
            1
        );
    }
}
