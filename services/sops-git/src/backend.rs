//! The storage contract (spec §3) on top of [`GitStore`] and the SOPS codec.
//!
//! Layout under the configured prefix: each TypeInstance `<id>` has a
//! directory `<a>/<b>/<c>/<id>/`, where `abc` are the first three hex digits
//! of the SHA-256 of the id (`sops-git-layout.md` at the prefix says so and
//! marks the layout). No directory lists every TypeInstance, so a write
//! rewrites a handful of small trees however many there are. Repositories
//! written before (`<id>/` directly under the prefix) are read in place and
//! moved in one commit at start or by the first write. In the directory:
//!
//! - `<revision>.sops.yaml`: one SOPS document per revision (read in
//!   O(1): one tree lookup, no history walk);
//! - `latest.sops.yaml`: a copy of the highest revision's document, at a
//!   path that tools (e.g. Flux) can follow;
//! - `lock`: the lock holder's name, present only while locked.
//!
//! A TypeInstance exists exactly while its directory holds a revision file.
//!
//! Optionally (context `fluxSecret`), `<flux dir>/<id>.sops.yaml` holds a
//! Kubernetes Secret manifest with the latest value, SOPS-encrypted the way
//! Flux decrypts; it changes in the same commit as the revision it mirrors.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::SystemTime,
};

use async_trait::async_trait;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use shared::{
    Backend, Context, Describe, Error, LockInfo, Owner, Result, Revision, TypeInstanceId, Value,
    ValueBackend, engine::rules, metrics::store_call,
};

use crate::{
    datadir::DataDirLock,
    sops::{self, Binding, CodecError, SecretTarget},
    store::{Abandoned, Change, Edit, GitStore, Snapshot},
};

const SUFFIX: &str = ".sops.yaml";
const LATEST: &str = "latest.sops.yaml";
const LOCK: &str = "lock";

/// Marks the fan-out layout at the prefix, and tells a person where to look.
const LAYOUT_FILE: &str = "sops-git-layout.md";
const LAYOUT_TEXT: &str = "\
# sops-git layout v2

Managed by the sops-git storage backend; do not edit by hand.

The files of TypeInstance `<id>` are in `<a>/<b>/<c>/<id>/`, where `abc` are
the first three hex digits of `printf %s '<id>' | sha256sum`:
`<revision>.sops.yaml` per revision, `latest.sops.yaml`, and `lock` while
locked. Ids starting with `.` get a `%` in front of the directory name.
";

/// Where TypeInstance directories sit under the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `<id>/` directly under the prefix (written by earlier versions).
    Flat,
    /// `<a>/<b>/<c>/<id>/`.
    FanOut,
}

/// Age keys: recipients we encrypt to, identities we decrypt with.
pub struct Keys {
    pub recipients: Vec<age::x25519::Recipient>,
    pub identities: Vec<age::x25519::Identity>,
}

pub struct SopsGit {
    core: Arc<Core>,
}

struct Core {
    store: GitStore,
    keys: Keys,
    /// Directory inside the repository; empty for the root.
    prefix: String,
    /// Directory of the Flux Secret manifests (outside `prefix`); None: off.
    flux_dir: Option<String>,
    /// Held for the process lifetime: the clone is ours alone.
    _data_dir: DataDirLock,
    /// Retention (APP_MAX_REVISIONS); `None` keeps every revision.
    max_revisions: Option<u32>,
    /// Set once the branch was seen in the fan-out layout: writes then skip
    /// the migration check (and its fetch).
    laid_out: AtomicBool,
}

/// The published context schema: where to render the Flux Secret.
pub fn context_schema() -> Json {
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "fluxSecret": {
                "description": "Also keep a SOPS-encrypted Kubernetes Secret manifest holding the latest value under `key`, for Flux to apply",
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 253, "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                    "namespace": {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "key": {"type": "string", "maxLength": 253, "pattern": "^[-._a-zA-Z0-9]+$", "default": "value"}
                },
                "required": ["name", "namespace"],
                "additionalProperties": false
            }
        },
        "additionalProperties": false
    })
}

/// The Secret the context asks for, if any (the schema has been checked).
fn secret_target(ctx: &Context) -> Result<Option<SecretTarget>> {
    let Some(spec) = ctx.object().and_then(|o| o.get("fluxSecret")) else {
        return Ok(None);
    };
    let field = |f: &str| spec.get(f).and_then(Json::as_str).map(str::to_owned);
    match (field("name"), field("namespace")) {
        (Some(name), Some(namespace)) => Ok(Some(SecretTarget {
            name,
            namespace,
            key: field("key").unwrap_or_else(|| "value".to_owned()),
        })),
        _ => Err(Error::invalid_argument(
            "context.fluxSecret needs name and namespace",
        )),
    }
}

impl SopsGit {
    pub fn new(
        store: GitStore,
        keys: Keys,
        prefix: &str,
        flux_dir: Option<&str>,
        data_dir: DataDirLock,
    ) -> Self {
        let prefix = prefix.trim_matches('/').to_owned();
        let flux_dir = flux_dir
            .map(|d| d.trim_matches('/').to_owned())
            .filter(|d| !d.is_empty());
        Self {
            core: Arc::new(Core {
                store,
                keys,
                prefix,
                flux_dir,
                _data_dir: data_dir,
                max_revisions: None,
                laid_out: AtomicBool::new(false),
            }),
        }
    }

    /// Keeps only the newest `keep` revisions of each TypeInstance.
    pub fn with_max_revisions(mut self, keep: Option<u32>) -> Self {
        if let Some(core) = Arc::get_mut(&mut self.core) {
            core.max_revisions = keep;
        }
        self
    }

    /// Moves a repository in the flat layout to the fan-out one (at start;
    /// otherwise the first write does it). Blocking.
    pub fn migrate_layout(&self) -> Result<()> {
        self.core.ensure_layout(&Abandoned::default())
    }

    /// Runs blocking Git work off the async executor, recorded as a store
    /// call. The blocking work cannot be cancelled, so it is told when this
    /// future is dropped (the request's deadline passed or the caller left)
    /// and stops before its commit point.
    async fn run<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Core, &Abandoned) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let core = Arc::clone(&self.core);
        let abandoned = Abandoned::default();
        let on_drop = AbandonOnDrop(abandoned.clone());
        let result = store_call(operation, async move {
            tokio::task::spawn_blocking(move || f(&core, &abandoned))
                .await
                .map_err(|e| Error::internal("git worker task failed").with_source(e))?
        })
        .await;
        drop(on_drop);
        if self.core.store.maintenance_due() {
            let core = Arc::clone(&self.core);
            tokio::task::spawn_blocking(move || core.store.maintain());
        }
        result
    }
}

/// Marks the call abandoned when dropped; after the work finished, that
/// changes nothing.
struct AbandonOnDrop(Abandoned);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// What a TypeInstance directory holds at the branch tip.
struct State {
    /// The directory, in the layout of the tip.
    dir: String,
    /// Sorted ascending.
    revisions: Vec<u32>,
    lock: Option<String>,
}

impl State {
    fn latest(&self) -> Option<u32> {
        self.revisions.last().copied()
    }
}

/// The directory name of a TypeInstance: its id, except that ids starting
/// with `.` get a `%` in front. Git refuses paths such as `.git` (in any case
/// and with trailing dots), and hidden directories surprise people; `%` is
/// outside the id alphabet, so the mapping cannot collide.
fn dir_name(id: &TypeInstanceId) -> String {
    if id.as_str().starts_with('.') {
        format!("%{id}")
    } else {
        id.to_string()
    }
}

fn revision_not_found(id: &TypeInstanceId, rev: Revision) -> Error {
    rules::revision_not_found(id, rev.get())
}

/// The revision number of a file name in a TypeInstance directory.
fn revision_of(name: &str) -> Option<u32> {
    name.strip_suffix(SUFFIX)?.parse().ok().filter(|r| *r > 0)
}

impl Core {
    fn under_prefix(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// The layout of the tip: one tree lookup, no blob read.
    fn layout(&self, snap: &Snapshot<'_>) -> Result<Layout> {
        Ok(if snap.has(&self.under_prefix(LAYOUT_FILE))? {
            Layout::FanOut
        } else {
            Layout::Flat
        })
    }

    fn dir_in(&self, layout: Layout, id: &TypeInstanceId) -> String {
        let name = dir_name(id);
        match layout {
            Layout::Flat => self.under_prefix(&name),
            Layout::FanOut => {
                let h = hex::encode(Sha256::digest(id.as_str().as_bytes()));
                self.under_prefix(&format!("{}/{}/{}/{name}", &h[0..1], &h[1..2], &h[2..3]))
            }
        }
    }

    /// The TypeInstance's directory at the tip.
    fn dir(&self, snap: &Snapshot<'_>, id: &TypeInstanceId) -> Result<String> {
        Ok(self.dir_in(self.layout(snap)?, id))
    }

    /// Every TypeInstance directory name with its directory (absent ones
    /// and foreign files skipped).
    fn type_instances(&self, snap: &Snapshot<'_>) -> Result<Vec<(TypeInstanceId, String)>> {
        let layout = self.layout(snap)?;
        let mut dirs = vec![self.prefix.clone()];
        if layout == Layout::FanOut {
            // Three levels of one hex digit each.
            for _ in 0..3 {
                let mut next = Vec::new();
                for dir in &dirs {
                    for name in snap.list(dir)? {
                        if name.len() == 1 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                            next.push(join(dir, &name));
                        }
                    }
                }
                dirs = next;
            }
        }
        let mut out = Vec::new();
        for dir in &dirs {
            for name in snap.list(dir)? {
                let raw = name.strip_prefix('%').unwrap_or(&name);
                let Ok(id) = TypeInstanceId::parse(raw) else {
                    continue;
                };
                if dir_name(&id) != name || self.dir_in(layout, &id) != join(dir, &name) {
                    continue;
                }
                out.push((id, join(dir, &name)));
            }
        }
        Ok(out)
    }

    /// Moves a flat repository to the fan-out layout in one commit of its
    /// own, once per process after it has been seen done.
    fn ensure_layout(&self, ab: &Abandoned) -> Result<()> {
        if self.laid_out.load(Ordering::Relaxed) {
            return Ok(());
        }
        let moved = AtomicUsize::new(0);
        let migrated = AtomicBool::new(false);
        self.store.write(ab, |snap| {
            migrated.store(false, Ordering::Relaxed);
            if self.layout(snap)? == Layout::FanOut {
                return Ok(None);
            }
            let mut changes = Vec::new();
            for (id, from) in self.type_instances(snap)? {
                // Only directories holding a revision are TypeInstances; with
                // an empty prefix the root may hold anything else.
                if snap.list(&from)?.iter().any(|n| revision_of(n).is_some()) {
                    let to = self.dir_in(Layout::FanOut, &id);
                    changes.push(Change::Move { from, to });
                }
            }
            moved.store(changes.len(), Ordering::Relaxed);
            migrated.store(true, Ordering::Relaxed);
            changes.push(Change::Put {
                path: self.under_prefix(LAYOUT_FILE),
                content: LAYOUT_TEXT.as_bytes().to_vec(),
            });
            Ok(Some(Edit {
                message: format!(
                    "move {} type instances to the fan-out layout",
                    changes.len() - 1
                ),
                changes,
            }))
        })?;
        if migrated.load(Ordering::Relaxed) {
            tracing::info!(
                type_instances = moved.load(Ordering::Relaxed),
                "moved the repository to the fan-out layout in one commit"
            );
        }
        self.laid_out.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// A write of the contract: on the fan-out layout, always.
    fn write(
        &self,
        ab: &Abandoned,
        plan: impl FnMut(&Snapshot<'_>) -> Result<Option<Edit>>,
    ) -> Result<()> {
        self.ensure_layout(ab)?;
        self.store.write(ab, plan)
    }

    fn secret_path(&self, id: &TypeInstanceId) -> Option<String> {
        let dir = self.flux_dir.as_ref()?;
        Some(format!("{dir}/{}{SUFFIX}", dir_name(id)))
    }

    /// The Secret manifest's change for a new latest `value`: to `wanted`
    /// if given, else to where the existing manifest points (none: no
    /// manifest, nothing to do).
    fn secret_change(
        &self,
        snap: &Snapshot<'_>,
        id: &TypeInstanceId,
        wanted: Option<&SecretTarget>,
        value: &[u8],
    ) -> Result<Option<Change>> {
        let Some(path) = self.secret_path(id) else {
            return match wanted {
                Some(_) => Err(Error::invalid_argument(
                    "context.fluxSecret needs APP_GIT_PREFIX to be set on the backend",
                )),
                None => Ok(None),
            };
        };
        let target = match wanted {
            Some(t) => t.clone(),
            None => match snap.read(&path)? {
                None => return Ok(None),
                Some(doc) => std::str::from_utf8(&doc)
                    .ok()
                    .and_then(sops::secret_target)
                    .ok_or_else(|| {
                        Error::data_loss(format!(
                            "the flux secret manifest of type instance {id} is corrupted"
                        ))
                    })?,
            },
        };
        let doc = sops::encrypt_secret(&target, value, &self.keys.recipients, SystemTime::now())
            .map_err(|e| Error::internal("encrypting the flux secret failed").with_source(e))?;
        Ok(Some(Change::Put {
            path,
            content: doc.into_bytes(),
        }))
    }

    /// Removes the Secret manifest if there is one.
    fn secret_removal(&self, snap: &Snapshot<'_>, id: &TypeInstanceId) -> Result<Option<Change>> {
        let Some(path) = self.secret_path(id) else {
            return Ok(None);
        };
        Ok(snap.read(&path)?.map(|_| Change::Delete { path }))
    }

    fn revision_path(dir: &str, rev: u32) -> String {
        format!("{dir}/{rev}{SUFFIX}")
    }

    /// The TypeInstance's state, or NOT_FOUND when it has no revision.
    fn state(&self, snap: &Snapshot<'_>, id: &TypeInstanceId) -> Result<State> {
        let dir = self.dir(snap, id)?;
        let mut revisions: Vec<u32> = snap
            .list(&dir)?
            .iter()
            .filter_map(|name| revision_of(name))
            .collect();
        if revisions.is_empty() {
            return Err(rules::not_found(id));
        }
        revisions.sort_unstable();
        // Verbatim: only the newline the writer adds goes (an owner holds
        // no control character), so " hub" stays " hub", not "hub".
        let lock = snap
            .read(&format!("{dir}/{LOCK}"))?
            .map(|b| {
                let text = String::from_utf8_lossy(&b);
                text.strip_suffix('\n').unwrap_or(&text).to_owned()
            })
            .filter(|s| !s.is_empty());
        Ok(State {
            dir,
            revisions,
            lock,
        })
    }

    /// Decrypts one revision; corruption, and a document bound to another
    /// id or revision (copied or moved), are DATA_LOSS for this TypeInstance
    /// only, logged without content. Unbound documents (written before the
    /// binding) still read.
    fn value(&self, snap: &Snapshot<'_>, id: &TypeInstanceId, rev: u32) -> Result<Option<Vec<u8>>> {
        let Some(doc) = snap.read(&Self::revision_path(&self.dir(snap, id)?, rev))? else {
            return Ok(None);
        };
        let doc = std::str::from_utf8(&doc)
            .map_err(|_| corrupt(id, rev, CodecError::Malformed("not UTF-8")))?;
        let opened = sops::open(doc, &self.keys.identities).map_err(|e| match e {
            CodecError::NoMatchingKey => Error::internal(format!(
                "revision {rev} of type instance {id} is not encrypted to our age key"
            ))
            .with_source(e),
            CodecError::Unsupported(_) => Error::internal(format!(
                "revision {rev} of type instance {id} uses a SOPS feature this backend does not read"
            ))
            .with_source(e),
            e => corrupt(id, rev, e),
        })?;
        opened
            .check_binding(&binding(id, rev))
            .map_err(|e| {
                Error::data_loss(format!(
                    "revision {rev} of type instance {id} holds the document of another type instance or revision"
                ))
                .with_source(e)
            })?;
        Ok(Some(opened.value))
    }

    /// The document of revision `rev` of `id`, bound to both.
    fn encrypt(&self, id: &TypeInstanceId, rev: u32, value: &[u8]) -> Result<Vec<u8>> {
        sops::encrypt(
            value,
            Some(&binding(id, rev)),
            &self.keys.recipients,
            SystemTime::now(),
        )
        .map(String::into_bytes)
        .map_err(|e| Error::internal("encrypting the value failed").with_source(e))
    }

    /// FAILED_PRECONDITION unless unlocked or locked by `owner`.
    fn check_owner(id: &TypeInstanceId, state: &State, owner: Option<&Owner>) -> Result<()> {
        rules::check_lock(id, state.lock.as_deref(), owner)
    }

    /// Puts a revision and refreshes `latest` when it becomes the highest.
    fn put_revision(dir: &str, rev: u32, doc: Vec<u8>) -> Vec<Change> {
        vec![
            Change::Put {
                path: format!("{dir}/{LATEST}"),
                content: doc.clone(),
            },
            Change::Put {
                path: Self::revision_path(dir, rev),
                content: doc,
            },
        ]
    }

    fn get(&self, ab: &Abandoned, id: &TypeInstanceId, rev: Revision) -> Result<Vec<u8>> {
        self.store.read(ab, |snap| {
            // Straight to the revision's path: no listing, no history.
            match self.value(snap, id, rev.get())? {
                Some(v) => Ok(v),
                None => Err(revision_not_found(id, rev)),
            }
        })
    }

    fn create(
        &self,
        ab: &Abandoned,
        id: &TypeInstanceId,
        value: &[u8],
        secret: Option<&SecretTarget>,
    ) -> Result<()> {
        // Encrypt once, outside the retry loop: a retry re-checks the
        // contract but writes the same document.
        let doc = self.encrypt(id, 1, value)?;
        self.write(ab, |snap| match self.state(snap, id) {
            Ok(state) => {
                let first = match state.revisions.as_slice() {
                    [1] => self.value(snap, id, 1)?,
                    _ => None,
                };
                let latest = state.latest().unwrap_or(0);
                rules::create_on_existing(id, latest, first.as_deref(), value).map(|()| None)
            }
            Err(e) if e.kind() == shared::ErrorKind::NotFound => {
                let dir = self.dir(snap, id)?;
                let mut changes = Self::put_revision(&dir, 1, doc.clone());
                // A stale manifest (left by hand after a delete) is replaced
                // or removed: it must never outlive its TypeInstance.
                match secret {
                    Some(t) => changes.extend(self.secret_change(snap, id, Some(t), value)?),
                    None => changes.extend(self.secret_removal(snap, id)?),
                }
                Ok(Some(Edit {
                    message: format!("create type instance {id} revision 1"),
                    changes,
                }))
            }
            Err(e) => Err(e),
        })
    }

    fn update(
        &self,
        ab: &Abandoned,
        id: &TypeInstanceId,
        rev: Revision,
        value: &[u8],
        owner: Option<&Owner>,
        secret: Option<&SecretTarget>,
    ) -> Result<()> {
        let r = rev.get();
        let doc = self.encrypt(id, r, value)?;
        // Set by the attempt that commits (a retried attempt overwrites it).
        let pruned_now = std::sync::atomic::AtomicU64::new(0);
        let written = self.write(ab, |snap| {
            pruned_now.store(0, std::sync::atomic::Ordering::Relaxed);
            let state = self.state(snap, id)?;
            let stored = if state.revisions.contains(&r) {
                self.value(snap, id, r)?
            } else {
                None
            };
            let step = rules::update_step(
                id,
                r,
                state.latest().unwrap_or(0),
                stored.as_deref(),
                value,
                state.lock.as_deref(),
                owner,
            )?;
            if step == rules::UpdateStep::Done {
                return Ok(None);
            }
            let mut changes = Self::put_revision(&state.dir, r, doc.clone());
            changes.extend(self.secret_change(snap, id, secret, value)?);
            // Retention: the revisions this one makes too old go in the
            // same commit, so the pruning is exactly as atomic as the write.
            let floor = self.max_revisions.map_or(0, |keep| r.saturating_sub(keep));
            let pruned: Vec<u32> = state
                .revisions
                .iter()
                .copied()
                .filter(|old| *old <= floor)
                .collect();
            pruned_now.store(pruned.len() as u64, std::sync::atomic::Ordering::Relaxed);
            changes.extend(pruned.into_iter().map(|old| Change::Delete {
                path: Self::revision_path(&state.dir, old),
            }));
            Ok(Some(Edit {
                message: format!("update type instance {id} revision {rev}"),
                changes,
            }))
        });
        written?;
        shared::metrics::revisions_pruned(pruned_now.load(std::sync::atomic::Ordering::Relaxed));
        Ok(())
    }

    fn delete(&self, ab: &Abandoned, id: &TypeInstanceId, owner: Option<&Owner>) -> Result<()> {
        self.write(ab, |snap| {
            let state = self.state(snap, id)?;
            Self::check_owner(id, &state, owner)?;
            Ok(Some(Edit {
                message: format!(
                    "delete type instance {id} (revisions up to {})",
                    state.latest().unwrap_or(0)
                ),
                changes: std::iter::once(Change::DeleteDir { path: state.dir })
                    .chain(self.secret_removal(snap, id)?)
                    .collect(),
            }))
        })
    }

    fn delete_revision(
        &self,
        ab: &Abandoned,
        id: &TypeInstanceId,
        rev: Revision,
        owner: Option<&Owner>,
    ) -> Result<()> {
        let r = rev.get();
        self.write(ab, |snap| {
            let state = self.state(snap, id)?;
            Self::check_owner(id, &state, owner)?;
            if !state.revisions.contains(&r) {
                return Err(revision_not_found(id, rev));
            }
            let message = format!("delete revision {rev} of type instance {id}");
            let rest: Vec<u32> = state
                .revisions
                .iter()
                .copied()
                .filter(|x| *x != r)
                .collect();
            let changes = match rest.last() {
                // The last revision takes the TypeInstance and its lock along.
                None => std::iter::once(Change::DeleteDir {
                    path: state.dir.clone(),
                })
                .chain(self.secret_removal(snap, id)?)
                .collect(),
                Some(&new_latest) if new_latest < r => {
                    let doc = snap
                        .read(&Self::revision_path(&state.dir, new_latest))?
                        .ok_or_else(|| Error::internal("a listed revision file vanished"))?;
                    let mut changes = vec![
                        Change::Delete {
                            path: Self::revision_path(&state.dir, r),
                        },
                        Change::Put {
                            path: format!("{}/{LATEST}", state.dir),
                            content: doc,
                        },
                    ];
                    // The Secret follows the new latest revision; decrypt only
                    // when there is a manifest to rewrite.
                    if self.secret_removal(snap, id)?.is_some() {
                        let value = self
                            .value(snap, id, new_latest)?
                            .ok_or_else(|| Error::internal("a listed revision file vanished"))?;
                        changes.extend(self.secret_change(snap, id, None, &value)?);
                    }
                    changes
                }
                Some(_) => vec![Change::Delete {
                    path: Self::revision_path(&state.dir, r),
                }],
            };
            Ok(Some(Edit { message, changes }))
        })
    }

    fn locked_by(&self, ab: &Abandoned, id: &TypeInstanceId) -> Result<Option<String>> {
        self.store.read(ab, |snap| Ok(self.state(snap, id)?.lock))
    }

    fn lock(&self, ab: &Abandoned, id: &TypeInstanceId, owner: &Owner) -> Result<()> {
        self.write(ab, |snap| {
            let state = self.state(snap, id)?;
            match rules::lock_step(id, state.lock.as_deref(), owner)? {
                rules::LockStep::Held => Ok(None),
                rules::LockStep::Take => Ok(Some(Edit {
                    message: format!(
                        "lock type instance {id} revision {} by {owner}",
                        state.latest().unwrap_or(0)
                    ),
                    changes: vec![Change::Put {
                        path: format!("{}/{LOCK}", state.dir),
                        content: format!("{owner}\n").into_bytes(),
                    }],
                })),
            }
        })
    }

    fn unlock(&self, ab: &Abandoned, id: &TypeInstanceId) -> Result<()> {
        self.write(ab, |snap| {
            let state = self.state(snap, id)?;
            if state.lock.is_none() {
                return Ok(None);
            }
            Ok(Some(Edit {
                message: format!(
                    "unlock type instance {id} revision {}",
                    state.latest().unwrap_or(0)
                ),
                changes: vec![Change::Delete {
                    path: format!("{}/{LOCK}", state.dir),
                }],
            }))
        })
    }

    /// Every held lock: one read of the tree (admin only). sops-git records
    /// no lock time.
    fn list_locks(&self, ab: &Abandoned) -> Result<Vec<LockInfo>> {
        self.store.read(ab, |snap| {
            let mut out = Vec::new();
            for (id, _) in self.type_instances(snap)? {
                if let Ok(State {
                    lock: Some(owner), ..
                }) = self.state(snap, &id)
                {
                    out.push(LockInfo {
                        id,
                        owner,
                        locked_at: None,
                    });
                }
            }
            out.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
            Ok(out)
        })
    }

    /// Clears the lock in one commit, only while `expected` holds it.
    fn force_unlock(&self, ab: &Abandoned, id: &TypeInstanceId, expected: &Owner) -> Result<()> {
        self.write(ab, |snap| {
            let state = self.state(snap, id)?;
            rules::force_unlock_step(id, state.lock.as_deref(), expected)?;
            Ok(Some(Edit {
                message: format!("force-unlock type instance {id} held by {expected}"),
                changes: vec![Change::Delete {
                    path: format!("{}/{LOCK}", state.dir),
                }],
            }))
        })
    }

    /// The clone (and a local remote) can be written, the remote answers,
    /// and our identity opens what we encrypt.
    fn probe(&self) -> Result<()> {
        self.store.check_writable()?;
        self.store.ping()?;
        let doc = sops::encrypt(b"probe", None, &self.keys.recipients, SystemTime::now())
            .map_err(|e| Error::internal("encrypting the value failed").with_source(e))?;
        sops::decrypt(&doc, &self.keys.identities)
            .map(|_| ())
            .map_err(|e| {
                Error::internal("the age key cannot decrypt what we encrypt to the recipients")
                    .with_source(e)
            })
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Where the document of revision `rev` of `id` belongs.
fn binding(id: &TypeInstanceId, rev: u32) -> Binding {
    Binding {
        type_instance_id: id.to_string(),
        revision: rev,
    }
}

fn corrupt(id: &TypeInstanceId, rev: u32, e: CodecError) -> Error {
    Error::data_loss(format!(
        "revision {rev} of type instance {id} is corrupted or was tampered with"
    ))
    .with_source(e)
}

#[async_trait]
impl Backend for SopsGit {
    fn describe(&self) -> Describe {
        Describe {
            name: "sops-git",
            version: env!("CARGO_PKG_VERSION"),
            accept_value: true,
            context_schema: Some(context_schema()),
            context_required: false,
            // Git copes with large blobs, but every revision is a full copy in
            // history; the configured limit (1 MiB by default) applies below.
            max_value_bytes: 64 << 20,
        }
    }

    async fn probe(&self) -> Result<()> {
        self.run("probe", |c, _| c.probe()).await
    }

    async fn get_value(&self, id: &TypeInstanceId, rev: Revision, _: &Context) -> Result<Value> {
        let id = id.clone();
        self.run("get_value", move |c, ab| {
            c.get(ab, &id, rev).map(Value::from)
        })
        .await
    }

    async fn get_locked_by(&self, id: &TypeInstanceId, _: &Context) -> Result<Option<Owner>> {
        let id = id.clone();
        let holder = self
            .run("get_locked_by", move |c, ab| c.locked_by(ab, &id))
            .await?;
        // A lock file edited by hand may hold anything; expose it only if it
        // is a valid owner name.
        Ok(holder.and_then(|h| Owner::parse(&h).ok()))
    }

    async fn lock(&self, id: &TypeInstanceId, _: &Context, owner: &Owner) -> Result<()> {
        let (id, owner) = (id.clone(), owner.clone());
        self.run("lock", move |c, ab| c.lock(ab, &id, &owner)).await
    }

    async fn unlock(&self, id: &TypeInstanceId, _: &Context) -> Result<()> {
        let id = id.clone();
        self.run("unlock", move |c, ab| c.unlock(ab, &id)).await
    }

    async fn list_locks(&self) -> Result<Vec<LockInfo>> {
        self.run("list_locks", |c, ab| c.list_locks(ab)).await
    }

    async fn force_unlock(&self, id: &TypeInstanceId, expected: &Owner) -> Result<()> {
        let (id, expected) = (id.clone(), expected.clone());
        self.run("force_unlock", move |c, ab| {
            c.force_unlock(ab, &id, &expected)
        })
        .await
    }
}

#[async_trait]
impl ValueBackend for SopsGit {
    async fn create(
        &self,
        id: &TypeInstanceId,
        value: Value,
        ctx: &Context,
    ) -> Result<Option<Json>> {
        let id = id.clone();
        let secret = secret_target(ctx)?;
        self.run("create", move |c, ab| {
            c.create(ab, &id, value.as_bytes(), secret.as_ref())
        })
        .await?;
        Ok(None)
    }

    async fn update(
        &self,
        id: &TypeInstanceId,
        rev: Revision,
        value: Value,
        ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<Option<Json>> {
        let (id, owner) = (id.clone(), owner.cloned());
        let secret = secret_target(ctx)?;
        self.run("update", move |c, ab| {
            c.update(
                ab,
                &id,
                rev,
                value.as_bytes(),
                owner.as_ref(),
                secret.as_ref(),
            )
        })
        .await?;
        Ok(None)
    }

    async fn delete(&self, id: &TypeInstanceId, _: &Context, owner: Option<&Owner>) -> Result<()> {
        let (id, owner) = (id.clone(), owner.cloned());
        self.run("delete", move |c, ab| c.delete(ab, &id, owner.as_ref()))
            .await
    }

    async fn delete_revision(
        &self,
        id: &TypeInstanceId,
        rev: Revision,
        _: &Context,
        owner: Option<&Owner>,
    ) -> Result<()> {
        let (id, owner) = (id.clone(), owner.cloned());
        self.run("delete_revision", move |c, ab| {
            c.delete_revision(ab, &id, rev, owner.as_ref())
        })
        .await
    }
}

impl SopsGit {
    /// Re-encrypts every SOPS file of the repository to the configured
    /// recipients in one commit (`sops-git-backend rotate-keys`). Blocking.
    pub fn rotate_keys(&self) -> Result<crate::rotate::Rotated> {
        let core = &self.core;
        // Rotation addresses files in the fan-out layout.
        core.ensure_layout(&Abandoned::default())?;
        crate::rotate::rotate(
            &core.store,
            &core.keys,
            &crate::rotate::Layout {
                prefix: &core.prefix,
                flux_dir: core.flux_dir.as_deref(),
                revision_path: &|id, rev| {
                    Core::revision_path(&core.dir_in(Layout::FanOut, id), rev)
                },
            },
        )
    }
}
