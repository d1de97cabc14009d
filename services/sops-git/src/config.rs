//! Configuration: flags that each also read an `APP_` environment variable.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use shared::{Error, Result, config::ServerConfig, server::BackendConfig};

use crate::{
    backend::{Keys, SopsGit},
    sops,
    store::{self, GitStore, StoreOptions},
};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "sops-git-backend",
    version,
    about = "Storage backend keeping TypeInstance revisions as SOPS (age) files in a Git repository"
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,

    /// Git remote URL (file://, git://). Unset: a bare repository
    /// `remote.git` in the data directory, created on first start.
    #[arg(long, env = "APP_GIT_REMOTE")]
    pub git_remote: Option<String>,

    /// Branch holding the data.
    #[arg(long, env = "APP_GIT_BRANCH", default_value = "main")]
    pub git_branch: String,

    /// Directory inside the repository for the TypeInstances.
    #[arg(long, env = "APP_GIT_PREFIX", default_value = "typeinstances")]
    pub git_prefix: String,

    /// Commit author name.
    #[arg(
        long,
        env = "APP_GIT_AUTHOR_NAME",
        default_value = "Capact SOPS-Git backend"
    )]
    pub git_author_name: String,

    /// Commit author email.
    #[arg(
        long,
        env = "APP_GIT_AUTHOR_EMAIL",
        default_value = "sops-git-backend@capact.local"
    )]
    pub git_author_email: String,

    /// Reads fetch from the remote first when the last fetch is older than
    /// this; `0s` makes writes of other processes visible at once.
    #[arg(long, env = "APP_GIT_READ_FETCH_INTERVAL", default_value = "0s", value_parser = humantime::parse_duration)]
    pub git_read_fetch_interval: Duration,

    /// Local state: the working clone, and the default remote and age key.
    #[arg(long, env = "APP_DATA_DIR", default_value = "./sops-git-data")]
    pub data_dir: PathBuf,

    /// age key file (AGE-SECRET-KEY lines; `#` comments allowed). Unset:
    /// `age.key` in the data directory, generated on first start.
    #[arg(long, env = "APP_SOPS_AGE_KEY_FILE")]
    pub sops_age_key_file: Option<PathBuf>,

    /// Comma-separated age recipients (age1…) every file is encrypted to.
    /// Unset: the public keys of the key file.
    #[arg(long, env = "APP_SOPS_AGE_RECIPIENTS", value_delimiter = ',')]
    pub sops_age_recipients: Vec<String>,
}

impl BackendConfig for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

fn startup(message: String) -> Error {
    // Startup errors reach only the operator's terminal/log.
    Error::invalid_argument(message)
}

/// Loads or creates the key, opens the clone and builds the backend. Blocking.
pub fn build(config: Config) -> Result<SopsGit> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        startup(format!(
            "cannot create APP_DATA_DIR {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| startup(format!("APP_DATA_DIR: {e}")))?;

    let keys = load_keys(&config, &data_dir)?;

    let remote_url = match &config.git_remote {
        Some(url) if !url.is_empty() => url.clone(),
        _ => {
            let dir = data_dir.join("remote.git");
            store::ensure_bare_repo(&dir)?;
            tracing::info!(path = %dir.display(), "no APP_GIT_REMOTE: using a local bare repository");
            format!("file://{}", dir.display())
        }
    };
    let store = GitStore::open(StoreOptions {
        remote_url,
        branch: config.git_branch.clone(),
        clone_dir: data_dir.join("clone.git"),
        author_name: config.git_author_name.clone(),
        author_email: config.git_author_email.clone(),
        read_fetch_interval: config.git_read_fetch_interval,
    })?;
    Ok(SopsGit::new(store, keys, &config.git_prefix))
}

fn load_keys(config: &Config, data_dir: &std::path::Path) -> Result<Keys> {
    let key_file = match &config.sops_age_key_file {
        Some(p) => p.clone(),
        None => {
            let p = data_dir.join("age.key");
            if !p.exists() {
                generate_key(&p)?;
                // The path only: the key itself never reaches a log.
                tracing::info!(path = %p.display(), "generated a new age key");
            }
            p
        }
    };
    let text = std::fs::read_to_string(&key_file).map_err(|e| {
        startup(format!(
            "cannot read APP_SOPS_AGE_KEY_FILE {}: {e}",
            key_file.display()
        ))
    })?;
    let identities = sops::parse_identities(&text)
        .map_err(|e| startup(format!("APP_SOPS_AGE_KEY_FILE {}: {e}", key_file.display())))?;
    tracing::info!(path = %key_file.display(), "using age key file");
    let recipients = if config.sops_age_recipients.is_empty() {
        identities.iter().map(|i| i.to_public()).collect()
    } else {
        config
            .sops_age_recipients
            .iter()
            .map(|r| {
                r.trim().parse::<age::x25519::Recipient>().map_err(|_| {
                    startup(
                        "APP_SOPS_AGE_RECIPIENTS holds an entry that is not an age1… recipient"
                            .into(),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    // Files we could write but never read back would turn every read into
    // an error: refuse to start instead.
    let ours: Vec<String> = identities
        .iter()
        .map(|i| i.to_public().to_string())
        .collect();
    if !recipients.iter().any(|r| ours.contains(&r.to_string())) {
        return Err(startup(
            "APP_SOPS_AGE_RECIPIENTS must include the public key of APP_SOPS_AGE_KEY_FILE".into(),
        ));
    }
    Ok(Keys {
        recipients,
        identities,
    })
}

/// Writes a new key in age-keygen's format, readable by the owner only.
fn generate_key(path: &std::path::Path) -> Result<()> {
    use age::secrecy::ExposeSecret;
    use std::io::Write;
    let identity = age::x25519::Identity::generate();
    let text = format!(
        "# created by sops-git-backend\n# public key: {}\n{}\n",
        identity.to_public(),
        identity.to_string().expose_secret()
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        startup(format!(
            "cannot create the age key file {}: {e}",
            path.display()
        ))
    })?;
    file.write_all(text.as_bytes()).map_err(|e| {
        startup(format!(
            "cannot write the age key file {}: {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, extra: &[&str]) -> Config {
        let mut args = vec!["x", "--data-dir", dir.to_str().unwrap_or(".")];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).expect("parses")
    }

    #[test]
    fn first_start_generates_a_private_key_file_and_reuses_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_keys(&config(dir.path(), &[]), dir.path()).expect("keys");
        let key = dir.path().join("age.key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "key file readable by others");
        }
        let again = load_keys(&config(dir.path(), &[]), dir.path()).expect("keys");
        assert_eq!(
            first.recipients[0].to_string(),
            again.recipients[0].to_string()
        );
    }

    #[test]
    fn recipients_without_our_own_key_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stranger = age::x25519::Identity::generate().to_public().to_string();
        let err = load_keys(
            &config(dir.path(), &["--sops-age-recipients", &stranger]),
            dir.path(),
        )
        .err()
        .expect("refused");
        assert!(err.message().contains("APP_SOPS_AGE_RECIPIENTS"));
        assert!(!err.message().contains("AGE-SECRET-KEY"));
    }

    #[test]
    fn extra_recipients_are_accepted_beside_our_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = load_keys(&config(dir.path(), &[]), dir.path()).expect("keys");
        let list = format!(
            "{},{}",
            age::x25519::Identity::generate().to_public(),
            ours.recipients[0]
        );
        let keys = load_keys(
            &config(dir.path(), &["--sops-age-recipients", &list]),
            dir.path(),
        )
        .expect("keys");
        assert_eq!(keys.recipients.len(), 2);
    }
}
