//! Configuration: flags that each also read an `APP_` environment variable.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser};
use shared::{Error, Result, Secret, config::ServerConfig, server::BackendConfig};

use crate::{
    backend::{Keys, SopsGit},
    crash,
    datadir::DataDirLock,
    sops,
    store::{self, Auth, GitStore, StoreOptions},
};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "sops-git-backend",
    version,
    about = "Storage backend keeping TypeInstance revisions as SOPS (age) files in a Git repository",
    after_help = "Key rotation: `sops-git-backend rotate-keys --help`."
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,

    #[command(flatten)]
    pub store: StoreConfig,

    /// Keep only the newest N revisions of each TypeInstance: the update
    /// that makes older ones too old removes them in its own commit, and
    /// they answer NOT_FOUND. 0 keeps every revision.
    #[arg(long, env = "APP_MAX_REVISIONS", default_value_t = 0)]
    pub max_revisions: u32,
}

/// Where the data lives and which keys open it: shared by the server and
/// `rotate-keys`.
#[derive(Args, Debug, Clone)]
pub struct StoreConfig {
    /// Git remote URL (file://, git://, http(s)://, ssh://). Unset: a bare
    /// repository `remote.git` in the data directory, created on first start.
    #[arg(long, env = "APP_GIT_REMOTE")]
    pub git_remote: Option<String>,

    /// Branch holding the data.
    #[arg(long, env = "APP_GIT_BRANCH", default_value = "main")]
    pub git_branch: String,

    /// Directory inside the repository for the TypeInstances.
    #[arg(long, env = "APP_GIT_PREFIX", default_value = "typeinstances")]
    pub git_prefix: String,

    /// Directory for the Flux Secret manifests (context `fluxSecret`); must
    /// lie outside APP_GIT_PREFIX. With an empty prefix the output is off.
    #[arg(long, env = "APP_GIT_FLUX_DIR", default_value = "flux-secrets")]
    pub git_flux_dir: String,

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

    /// Time limit of connecting to the git remote (git://, http(s)://,
    /// ssh://); an unreachable remote fails the call with UNAVAILABLE.
    #[arg(long, env = "APP_GIT_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub git_connect_timeout: Duration,

    /// Time limit of each read from and write to the git remote's
    /// connection: a remote that stops answering fails the call with
    /// UNAVAILABLE after this instead of holding every later write. Keep it
    /// below APP_STORE_DEADLINE.
    #[arg(long, env = "APP_GIT_IO_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub git_io_timeout: Duration,

    /// User name for http(s) remotes (and ssh ones whose URL names none).
    #[arg(long, env = "APP_GIT_USERNAME")]
    pub git_username: Option<String>,

    /// Password or access token for http(s) remotes.
    #[arg(long, env = "APP_GIT_PASSWORD", hide_env_values = true)]
    pub git_password: Option<Secret>,

    /// File holding the password or token (trailing newline ignored);
    /// preferred over APP_GIT_PASSWORD.
    #[arg(long, env = "APP_GIT_PASSWORD_FILE", conflicts_with = "git_password")]
    pub git_password_file: Option<PathBuf>,

    /// PEM/CA bundle trusted for https remotes instead of the system's.
    #[arg(long, env = "APP_GIT_CA_FILE")]
    pub git_ca_file: Option<PathBuf>,

    /// Private key file for ssh remotes (OpenSSH or PEM format).
    #[arg(long, env = "APP_GIT_SSH_KEY_FILE")]
    pub git_ssh_key_file: Option<PathBuf>,

    /// Passphrase of the ssh private key.
    #[arg(long, env = "APP_GIT_SSH_PASSPHRASE", hide_env_values = true)]
    pub git_ssh_passphrase: Option<Secret>,

    /// known_hosts file the ssh server's host key must be listed in. Unset:
    /// `~/.ssh/known_hosts`.
    #[arg(long, env = "APP_GIT_SSH_KNOWN_HOSTS_FILE")]
    pub git_ssh_known_hosts_file: Option<PathBuf>,

    /// Accept any ssh host key. Opens the door to a man in the middle: only
    /// for throwaway setups.
    #[arg(long, env = "APP_GIT_SSH_INSECURE_SKIP_HOST_KEY_CHECK", default_value_t = false, action = clap::ArgAction::Set)]
    pub git_ssh_insecure_skip_host_key_check: bool,

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

/// Locks the data directory, recovers what a killed predecessor left,
/// loads or creates the key, opens the clone and builds the backend.
/// Blocking.
pub fn build(config: Config) -> Result<SopsGit> {
    let keep = (config.max_revisions > 0).then_some(config.max_revisions);
    Ok(open(&config.store, Some(config.server.store_deadline))?.with_max_revisions(keep))
}

/// [`build`] without the server settings: what `rotate-keys` runs on too,
/// under the same data-directory lock. `store_deadline` only serves a
/// warning about the git timeouts. Blocking.
pub fn open(config: &StoreConfig, store_deadline: Option<Duration>) -> Result<SopsGit> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        startup(format!(
            "cannot create APP_DATA_DIR {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| startup(format!("APP_DATA_DIR: {e}")))?;
    // First: everything below may clear what another process is writing,
    // which the lock rules out.
    let data_dir_lock = DataDirLock::acquire(&data_dir)?;
    crash::arm().map_err(startup)?;
    // A key generation killed before its rename leaves a secret behind.
    let _ = std::fs::remove_file(data_dir.join(KEY_TEMP));
    // libgit2's options are process-wide: set before any remote is used.
    set_git_timeouts(config, store_deadline)?;

    let keys = load_keys(config, &data_dir)?;

    let (remote_url, owned_remote) = match &config.git_remote {
        Some(url) if !url.is_empty() => {
            // Our default remote named explicitly is as much ours as the
            // clone (no other process may use the directory). Any other
            // path may be shared, even one below the data directory (a
            // nested data directory of another process).
            let owned = store::local_path(url)
                .and_then(|p| std::fs::canonicalize(p).ok())
                .is_some_and(|p| p == data_dir.join("remote.git"));
            (url.clone(), owned)
        }
        _ => {
            let dir = data_dir.join("remote.git");
            tracing::info!(path = %dir.display(), "no APP_GIT_REMOTE: using a local bare repository");
            (format!("file://{}", dir.display()), true)
        }
    };
    if owned_remote && let Some(dir) = store::local_path(&remote_url) {
        // Creates it on first start, after clearing what a kill during an
        // earlier first start (or any write) left.
        store::recover_owned_remote(&dir, &config.git_branch)?;
    }
    let clone_dir = data_dir.join("clone.git");
    store::recover_clone(&clone_dir)?;
    let auth = load_auth(config)?;
    let store = GitStore::open(StoreOptions {
        remote_url,
        branch: config.git_branch.clone(),
        clone_dir,
        author_name: config.git_author_name.clone(),
        author_email: config.git_author_email.clone(),
        read_fetch_interval: config.git_read_fetch_interval,
        auth,
        owned_remote,
    })?;
    let flux_dir = flux_dir(&config.git_prefix, &config.git_flux_dir)?;
    store.check_access()?;
    let backend = SopsGit::new(
        store,
        keys,
        &config.git_prefix,
        flux_dir.as_deref(),
        data_dir_lock,
    );
    // A remote that does not answer yet only delays this to the first write.
    if let Err(e) = backend.migrate_layout() {
        tracing::warn!(error = %e, "the repository could not be moved to the fan-out layout at start; the first write retries");
    }
    Ok(backend)
}

/// libgit2 waits forever on a remote that accepts a connection and never
/// answers, holding the writer lock; these bound every connect, read and
/// write of its socket (and libssh2's session).
fn set_git_timeouts(config: &StoreConfig, store_deadline: Option<Duration>) -> Result<()> {
    let millis = |name: &str, d: Duration| {
        i32::try_from(d.as_millis())
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| {
                startup(format!(
                    "{name} must be between 1ms and 24 days (libgit2 has no timeout without it)"
                ))
            })
    };
    let connect = millis("APP_GIT_CONNECT_TIMEOUT", config.git_connect_timeout)?;
    let io = millis("APP_GIT_IO_TIMEOUT", config.git_io_timeout)?;
    if store_deadline.is_some_and(|d| config.git_io_timeout >= d) {
        tracing::warn!(
            "APP_GIT_IO_TIMEOUT is not below APP_STORE_DEADLINE: a silent remote keeps the writer busy after its callers were answered"
        );
    }
    // SAFETY: libgit2 global options, set once at startup before any other
    // libgit2 call of this process can run concurrently. Both are set:
    // libgit2 makes the socket non-blocking for a connect timeout and then
    // relies on the I/O timeout to wait for data.
    unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(connect)
            .and_then(|()| git2::opts::set_server_timeout_in_milliseconds(io))
    }
    .map_err(|e| startup(format!("setting the git timeouts failed: {e}")))
}

/// The Flux manifests must not sit where TypeInstance directories do (a
/// TypeInstance named like the Flux directory would own them), nor the
/// reverse.
fn flux_dir(prefix: &str, flux: &str) -> Result<Option<String>> {
    let (p, f) = (prefix.trim_matches('/'), flux.trim_matches('/'));
    if p.is_empty() {
        // Every top-level directory may be a TypeInstance's.
        return Ok(None);
    }
    let inside = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
    if f.is_empty() || inside(f, p) || inside(p, f) {
        return Err(startup(
            "APP_GIT_FLUX_DIR must be a non-empty directory outside APP_GIT_PREFIX (and not contain it)"
                .into(),
        ));
    }
    Ok(Some(f.to_owned()))
}

fn load_auth(config: &StoreConfig) -> Result<Auth> {
    let password = match &config.git_password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                startup(format!(
                    "cannot read APP_GIT_PASSWORD_FILE {}: {e}",
                    path.display()
                ))
            })?;
            Some(Secret::new(text.trim_end_matches(['\r', '\n'])))
        }
        None => config.git_password.clone(),
    };
    for (name, path) in [
        ("APP_GIT_SSH_KEY_FILE", &config.git_ssh_key_file),
        (
            "APP_GIT_SSH_KNOWN_HOSTS_FILE",
            &config.git_ssh_known_hosts_file,
        ),
    ] {
        if let Some(p) = path
            && !p.is_file()
        {
            return Err(startup(format!("{name} {} is not a file", p.display())));
        }
    }
    if let Some(ca) = &config.git_ca_file {
        if !ca.is_file() {
            return Err(startup(format!(
                "APP_GIT_CA_FILE {} is not a file",
                ca.display()
            )));
        }
        // SAFETY: libgit2 global option, set once at startup before any
        // other libgit2 call of this process can run concurrently.
        unsafe { git2::opts::set_ssl_cert_file(ca) }
            .map_err(|e| startup(format!("APP_GIT_CA_FILE {}: {e}", ca.display())))?;
    }
    if config.git_ssh_insecure_skip_host_key_check {
        tracing::warn!("ssh host keys are not checked (APP_GIT_SSH_INSECURE_SKIP_HOST_KEY_CHECK)");
    }
    Ok(Auth {
        username: config.git_username.clone().filter(|u| !u.is_empty()),
        password,
        ssh_key: config.git_ssh_key_file.clone(),
        ssh_passphrase: config.git_ssh_passphrase.clone(),
        known_hosts: config.git_ssh_known_hosts_file.clone(),
        insecure_skip_host_key_check: config.git_ssh_insecure_skip_host_key_check,
    })
}

fn load_keys(config: &StoreConfig, data_dir: &std::path::Path) -> Result<Keys> {
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

/// Where a generated key is written before it is renamed into place.
const KEY_TEMP: &str = ".age.key.tmp";

/// Writes a new key in age-keygen's format, readable by the owner only.
/// Written aside and renamed: a kill mid-way must not leave an empty key
/// file that every later start would refuse.
fn generate_key(path: &std::path::Path) -> Result<()> {
    use age::secrecy::ExposeSecret;
    use std::io::Write;
    let identity = age::x25519::Identity::generate();
    let text = format!(
        "# created by sops-git-backend\n# public key: {}\n{}\n",
        identity.to_public(),
        identity.to_string().expose_secret()
    );
    let temp = path.with_file_name(KEY_TEMP);
    let _ = std::fs::remove_file(&temp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    written
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            startup(format!(
                "cannot write the age key file {}: {e}",
                path.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, extra: &[&str]) -> StoreConfig {
        let mut args = vec!["x", "--data-dir", dir.to_str().unwrap_or(".")];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).expect("parses").store
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
