//! A `ValueAndContextStorageBackend` on AWS Secrets Manager: the revision
//! engine (`shared::engine`) over [`store::SecretsStore`] — one head secret
//! per TypeInstance, changed by a compare-and-swap on its AWSCURRENT stage,
//! and one secret per revision. The layout is described in README.md.

pub mod config;
pub mod store;

use shared::{Error, Result};

pub use crate::config::Config;
use crate::store::{Secrets, SecretsStore};

pub type SecretsManagerBackend = shared::engine::Engine<SecretsStore>;

/// Builds the backend: SDK configuration from the default credential chain
/// (plus AssumeRole if asked). The store is first contacted by the health probe.
pub async fn build(config: Config) -> Result<SecretsManagerBackend> {
    let prefix = config.prefix()?;
    let opts = shared::engine::Options::from_args(&config.engine, &config.server)?;
    let sdk = shared_aws::sdk_config(&config.aws)
        .await
        .map_err(Error::invalid_argument)?;
    let secrets = Secrets {
        client: aws_sdk_secretsmanager::Client::new(&sdk),
        kms_key_id: config.sm_kms_key_id.clone().filter(|k| !k.is_empty()),
        recovery_window_days: config.recovery_window_days(),
    };
    Ok(shared::engine::Engine::new(
        SecretsStore::new(secrets, prefix, config.sm_tags),
        opts,
    ))
}
