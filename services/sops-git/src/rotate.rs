//! `sops-git-backend rotate-keys`: re-encrypts every SOPS file of the
//! repository to the configured recipients in one commit, the way
//! `sops updatekeys` + `sops rotate` would file by file.
//!
//! It reads with the identities of `APP_SOPS_AGE_KEY_FILE` (old key, or old
//! and new) and writes to `APP_SOPS_AGE_RECIPIENTS` (the new set), through
//! the same compare-and-set push as every write: a concurrent write makes it
//! start over on the new tip, so nothing written meanwhile is lost or left
//! behind. Until the commit lands every file still opens with the old key;
//! after it, with the new recipients' keys only. Each file gets a fresh data
//! key, its value and binding kept.
//!
//! It opens the data directory like the server, under the same lock: run it
//! with the backend stopped, or with a data directory of its own and
//! `APP_GIT_REMOTE` naming the shared remote (not a backend's own default
//! `remote.git`, whose lock files that backend clears as its own).

use std::{collections::HashMap, ffi::OsString, process::ExitCode, time::SystemTime};

use clap::Parser;
use sha2::{Digest, Sha512};
use shared::{Error, Result, TypeInstanceId, config::LogFormat};

use crate::{
    backend::Keys,
    config::{self, StoreConfig},
    sops::{self, Binding, CodecError},
    store::{Abandoned, Change, Edit, GitStore, Snapshot},
};

const SUFFIX: &str = ".sops.yaml";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "rotate-keys",
    bin_name = "sops-git-backend rotate-keys",
    version,
    about = "Re-encrypt every SOPS file of the repository to APP_SOPS_AGE_RECIPIENTS in one commit",
    long_about = "Re-encrypt every SOPS file of the repository (every revision, latest copy and \
Flux Secret manifest) to APP_SOPS_AGE_RECIPIENTS in one commit, reading them with the keys \
of APP_SOPS_AGE_KEY_FILE. Takes the lock of APP_DATA_DIR like the server: stop the backend \
first, or give this command a data directory of its own and APP_GIT_REMOTE."
)]
pub struct RotateConfig {
    #[command(flatten)]
    pub store: StoreConfig,

    /// Log level or tracing filter directive (info: the outcome is shown).
    #[arg(long, env = "APP_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// What a rotation rewrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// Revision and `latest` documents re-encrypted.
    pub documents: usize,
    /// Of those, documents written before the binding that got one now
    /// (their path is where the layout puts that id and revision).
    pub bound_now: usize,
    /// Of those, documents that stay unbound (e.g. a `latest` copy whose
    /// revision file is gone).
    pub unbound: usize,
    /// Flux Secret manifests re-encrypted.
    pub secrets: usize,
}

/// The part of the backend's layout rotation needs: where to look, and
/// where the backend reads a revision from.
pub(crate) struct Layout<'a> {
    pub prefix: &'a str,
    pub flux_dir: Option<&'a str>,
    pub revision_path: &'a dyn Fn(&TypeInstanceId, u32) -> String,
}

/// `sops-git-backend rotate-keys …`; `args` starts with the subcommand's
/// name. What happened is logged (APP_LOG_LEVEL, to stdout like the server).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let config = RotateConfig::parse_from(args);
    if let Err(code) = shared::telemetry::init_or_exit(LogFormat::Text, &config.log_level, &[]) {
        return code;
    }
    let backend = match config::open(&config.store, None) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e.detail(), "rotate-keys: cannot open the repository");
            return ExitCode::from(2);
        }
    };
    match backend.rotate_keys() {
        Ok(r) => {
            tracing::info!(
                "rotate-keys: re-encrypted {} documents and {} Flux Secret manifests in one commit ({} bound now, {} left unbound)",
                r.documents,
                r.secrets,
                r.bound_now,
                r.unbound
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e.detail(), "rotate-keys failed, nothing was changed");
            ExitCode::FAILURE
        }
    }
}

/// Re-encrypts every `*.sops.yaml` under the prefix and the Flux directory
/// in one commit. Blocking.
pub(crate) fn rotate(store: &GitStore, keys: &Keys, layout: &Layout<'_>) -> Result<Rotated> {
    if layout.prefix.is_empty() {
        // With the repository root as the prefix, SOPS files of other tools
        // would be re-encrypted (or stop the rotation) along with ours.
        return Err(Error::invalid_argument(
            "rotate-keys needs a non-empty APP_GIT_PREFIX: with the repository root it cannot tell the backend's files from others",
        ));
    }
    let mut report = Rotated::default();
    store.write(&Abandoned::default(), |snap| {
        // A lost race runs the plan again on the new tip.
        report = Rotated::default();
        let now = SystemTime::now();
        let mut changes = Vec::new();

        let mut documents = files(snap, layout.prefix)?;
        documents.retain(|p| p.ends_with(SUFFIX));
        // Revision files first: a `latest` copy then gets the very document
        // of its revision again, not a second encryption of it.
        documents.sort_by_key(|p| revision_of(p).is_none());
        // Re-encrypted documents by directory and old content.
        let mut done: HashMap<(String, Vec<u8>), (Vec<u8>, Bound)> = HashMap::new();
        for path in documents {
            let old = read(snap, &path)?;
            let parent = path.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
            let key = (parent, Sha512::digest(&old).to_vec());
            let (new, bound_now) = match done.get(&key) {
                Some(hit) => hit.clone(),
                None => {
                    let opened = std::str::from_utf8(&old)
                        .map_err(|_| CodecError::Malformed("not UTF-8"))
                        .and_then(|doc| sops::open(doc, &keys.identities))
                        .map_err(|e| file_error(&path, e))?;
                    let (binding, bound_now) = match opened.binding {
                        Some(b) => (Some(b), Bound::Already),
                        None => match legacy_binding(&path, layout) {
                            Some(b) => (Some(b), Bound::Now),
                            None => (None, Bound::Not),
                        },
                    };
                    let new = sops::encrypt(&opened.value, binding.as_ref(), &keys.recipients, now)
                        .map_err(|e| {
                            Error::internal("encrypting a document failed").with_source(e)
                        })?
                        .into_bytes();
                    done.insert(key, (new.clone(), bound_now));
                    (new, bound_now)
                }
            };
            match bound_now {
                Bound::Now => report.bound_now += 1,
                Bound::Already => {}
                Bound::Not => report.unbound += 1,
            }
            report.documents += 1;
            changes.push(Change::Put { path, content: new });
        }

        if let Some(dir) = layout.flux_dir {
            for path in files(snap, dir)? {
                if !path.ends_with(SUFFIX) {
                    continue;
                }
                let old = read(snap, &path)?;
                let (target, value) = std::str::from_utf8(&old)
                    .map_err(|_| CodecError::Malformed("not UTF-8"))
                    .and_then(|doc| sops::decrypt_secret(doc, &keys.identities))
                    .map_err(|e| file_error(&path, e))?;
                let new =
                    sops::encrypt_secret(&target, &value, &keys.recipients, now).map_err(|e| {
                        Error::internal("encrypting a flux secret failed").with_source(e)
                    })?;
                changes.push(Change::Put {
                    path,
                    content: new.into_bytes(),
                });
                report.secrets += 1;
            }
        }

        if changes.is_empty() {
            return Ok(None);
        }
        Ok(Some(Edit {
            message: format!(
                "rotate keys: re-encrypt {} files to {} age recipients",
                changes.len(),
                keys.recipients.len()
            ),
            changes,
        }))
    })?;
    Ok(report)
}

/// How a re-encrypted document came to its binding.
#[derive(Clone, Copy)]
enum Bound {
    Already,
    /// Written before the binding; bound now from its path.
    Now,
    Not,
}

/// Every file below `dir` (recursively), whatever the layout inside: a
/// name with children is a directory (Git stores no empty ones).
fn files(snap: &Snapshot<'_>, dir: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for name in snap.list(&dir)? {
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if snap.list(&path)?.is_empty() {
                out.push(path);
            } else {
                pending.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read(snap: &Snapshot<'_>, path: &str) -> Result<Vec<u8>> {
    snap.read(path)?
        .ok_or_else(|| Error::internal("a listed file vanished"))
}

/// The revision a `<n>.sops.yaml` file name stands for.
fn revision_of(path: &str) -> Option<u32> {
    let name = path.rsplit('/').next()?;
    name.strip_suffix(SUFFIX)?.parse().ok().filter(|r| *r > 0)
}

/// The binding of a document written before bindings existed, taken from
/// its path, but only where the backend itself would read that id and
/// revision (so a file already moved elsewhere is not blessed).
fn legacy_binding(path: &str, layout: &Layout<'_>) -> Option<Binding> {
    let revision = revision_of(path)?;
    let (dir, _) = path.rsplit_once('/')?;
    let name = dir.rsplit('/').next()?;
    let id = TypeInstanceId::parse(name.strip_prefix('%').unwrap_or(name)).ok()?;
    ((layout.revision_path)(&id, revision) == path).then(|| Binding {
        type_instance_id: id.to_string(),
        revision,
    })
}

/// A file that cannot be re-encrypted stops the rotation, named by its path
/// (never its content).
fn file_error(path: &str, e: CodecError) -> Error {
    match e {
        CodecError::NoMatchingKey => Error::internal(format!(
            "{path} is not encrypted to any key of APP_SOPS_AGE_KEY_FILE"
        )),
        CodecError::Unsupported(_) => Error::internal(format!(
            "{path} uses a SOPS feature this backend does not read"
        )),
        _ => Error::data_loss(format!("{path} is corrupted or was tampered with")),
    }
    .with_source(e)
}
