//! What the integration tests and the bench share: the backend binary on a
//! moto server, and a direct SDK client to the same server.
#![allow(dead_code)]

use std::sync::Arc;

use aws_credential_types::Credentials;
use aws_sdk_secretsmanager::{Client, config::Region};
use conformance::{Connect, Target};
use testkit::{BackendProcess, moto::Moto};

pub const BIN: &str = env!("CARGO_BIN_EXE_aws-secretsmanager-backend");

/// Starts the backend against `moto` with `extra` settings and waits for SERVING.
pub async fn start_backend(moto: &Moto, extra: &[(&str, &str)]) -> BackendProcess {
    let env = moto.env();
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    BackendProcess::start(BIN, &["AWS_"], &all).serving().await
}

pub async fn target(backend: &BackendProcess) -> Arc<Target> {
    Arc::new(
        Target::connect(&Connect::plain(&backend.url), None)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", backend.logs())),
    )
}

/// An SDK client straight to moto, with the same ring-based HTTP client the
/// backend uses.
pub fn direct_client(moto: &Moto) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version_latest()
        .http_client(http)
        .region(Region::new(testkit::moto::REGION))
        .endpoint_url(moto.endpoint())
        .credentials_provider(Credentials::new(
            testkit::moto::ACCESS_KEY_ID,
            testkit::moto::SECRET_ACCESS_KEY,
            None,
            None,
            "tests",
        ))
        .build();
    Client::from_conf(config)
}
