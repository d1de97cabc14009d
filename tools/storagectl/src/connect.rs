//! How to reach a backend: address, TLS and timeout, as flags and env vars.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, chain};

/// Connection settings shared by `storagectl` and `storage-bench`.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Connection")]
pub struct Connect {
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

impl Connect {
    pub fn plain(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_domain: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// TLS is on for an `https://` URL or as soon as any TLS file is given.
    pub fn tls(&self) -> bool {
        self.url.starts_with("https://") || self.tls_ca.is_some() || self.tls_cert.is_some()
    }

    /// The URL tonic dials, with the scheme made explicit.
    pub fn endpoint_url(&self) -> Result<String, Error> {
        if self.url.is_empty() {
            return Err(Error::usage("--url is empty"));
        }
        if let Some((scheme, _)) = self.url.split_once("://") {
            return match scheme {
                "http" if self.tls() => Err(Error::usage(
                    "TLS options were given but --url starts with http://: use https:// or host:port",
                )),
                "http" | "https" => Ok(self.url.clone()),
                _ => Err(Error::usage(format!(
                    "--url scheme {scheme}:// is not supported: use host:port, http:// or https://"
                ))),
            };
        }
        let scheme = if self.tls() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.url))
    }

    fn endpoint(&self) -> Result<Endpoint, Error> {
        let url = self.endpoint_url()?;
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::usage(format!("invalid --url {url}: {}", chain(&e))))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        if self.tls() {
            endpoint = endpoint
                .tls_config(self.tls_config()?)
                .map_err(|e| Error::other(format!("tls setup failed: {}", chain(&e))))?;
        }
        Ok(endpoint)
    }

    fn tls_config(&self) -> Result<ClientTlsConfig, Error> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| Error::other(format!("cannot read {}: {e}", p.display())))
        };
        // tonic is built without a bundle of public roots: an operator always
        // names the CA of a backend's (usually private) certificate.
        let ca = self.tls_ca.as_ref().ok_or_else(|| {
            Error::usage("TLS needs --tls-ca: storagectl trusts no CA unless told which one")
        })?;
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(domain) = &self.tls_domain {
            cfg = cfg.domain_name(domain.clone());
        }
        Ok(cfg)
    }

    /// Connects now, so that an unreachable backend is reported as such and
    /// not as the failure of the first call.
    pub async fn channel(&self) -> Result<Channel, Error> {
        let endpoint = self.endpoint()?;
        let url = endpoint.uri().to_string();
        endpoint
            .connect()
            .await
            .map_err(|e| Error::other(format!("cannot connect to {url}: {}", chain(&e))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_gets_a_scheme() {
        assert_eq!(
            Connect::plain("localhost:50051").endpoint_url().ok(),
            Some("http://localhost:50051".to_owned())
        );
        let mut tls = Connect::plain("backend:443");
        tls.tls_ca = Some("ca.pem".into());
        assert_eq!(
            tls.endpoint_url().ok(),
            Some("https://backend:443".to_owned())
        );
    }

    #[test]
    fn explicit_schemes_are_kept_or_refused() {
        assert_eq!(
            Connect::plain("https://b:1").endpoint_url().ok(),
            Some("https://b:1".to_owned())
        );
        assert!(Connect::plain("unix:///tmp/s").endpoint_url().is_err());
        let mut mixed = Connect::plain("http://b:1");
        mixed.tls_ca = Some("ca.pem".into());
        assert!(mixed.endpoint_url().is_err());
    }

    #[test]
    fn https_without_a_ca_is_a_usage_error() {
        let err = Connect::plain("https://b:1").tls_config().err();
        assert!(matches!(err, Some(Error::Usage(_))));
    }
}
