//! A `ValueAndContextStorageBackend` that keeps TypeInstance revisions in
//! Vault's (or OpenBao's) KV secrets engine: the revision engine
//! ([`shared::engine`]) over [`store::VaultStore`]. The layout is described
//! in this crate's README.md.

pub mod auth;
pub mod config;
pub mod http;
pub mod store;

use std::sync::Arc;

use shared::{
    Error, Result,
    engine::{Engine, Options},
};

pub use config::Config;

use crate::{
    auth::Session,
    store::{Kv, VaultStore},
};

pub type VaultBackend = Engine<VaultStore>;

/// Builds the backend from its configuration: logs in and starts keeping
/// the token valid.
pub async fn build(config: Config) -> Result<VaultBackend> {
    // reqwest is built with rustls but without a crypto provider: the whole
    // workspace uses ring (tonic's tls-ring). Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = Options::from_args(&config.engine, &config.server)?;
    let prefix = config.vault_path_prefix.trim_matches('/').to_owned();
    let mount = config.vault_mount.trim_matches('/').to_owned();
    if prefix.is_empty() || mount.is_empty() {
        return Err(Error::invalid_argument(
            "APP_VAULT_MOUNT and APP_VAULT_PATH_PREFIX must not be empty",
        ));
    }
    let session = Session::start(config.connection()?, config.method()?).await?;
    tokio::spawn(Arc::clone(&session).maintain(config.token_file_poll));
    let kv = Kv::new(session.address(), mount, config.vault_kv_version);
    Ok(Engine::new(VaultStore::new(session, kv, prefix), options))
}
