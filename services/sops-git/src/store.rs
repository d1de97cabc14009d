//! One local clone of a Git remote, and atomic "read-check-commit-push"
//! transactions on one branch of it.
//!
//! The clone is bare: we never need a checkout, files are read from and
//! written to trees directly, so no working-tree state can go stale or be
//! left half-written. The remote is the only source of truth; the clone is a
//! cache that any restart or conflict refreshes with a fetch.
//!
//! Atomicity comes from Git itself: a push that is not a fast-forward of what
//! the remote holds is rejected, so two writers (threads or processes) that
//! started from the same tip cannot both win. The loser fetches, re-runs its
//! contract checks on the new tip and tries again, a bounded number of times.

use std::{
    cell::Cell,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, TryLockError,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use aes_gcm::aead::{OsRng, rand_core::RngCore};
use base64::Engine;
use git2::{
    CertificateCheckStatus, Commit, Cred, CredentialType, Direction, ErrorClass, ErrorCode,
    FetchOptions, FileMode, Oid, PushOptions, RemoteCallbacks, Repository, Signature, Tree,
    TreeWalkMode, TreeWalkResult, build::TreeUpdateBuilder, cert::Cert,
};
use shared::{Error, Result, Secret};

use crate::{
    crash,
    datadir::{self, Sweep},
    pack::{self, PackError},
};

const REMOTE: &str = "origin";

/// Writes between two looks at the object stores (see [`GitStore::maintain`]).
const MAINTAIN_EVERY: u32 = 8;

/// Attempts of one write before ABORTED: each lost race costs one fetch.
const MAX_ATTEMPTS: u32 = 10;

/// Retries of a git operation that found a lock file in our own clone (or
/// in a remote we own), each after removing the stale lock files.
const LOCK_RETRIES: u32 = 3;

/// A lock file on a branch of a remote we do not own that is older than
/// this was left by a killed writer (git holds a ref lock for
/// milliseconds): writes answer UNAVAILABLE and health NOT_SERVING until
/// its owner removes it, instead of ABORTED as for a live competitor.
const STALE_REMOTE_LOCK: Duration = Duration::from_secs(30);

/// Where and as whom to commit.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub remote_url: String,
    pub branch: String,
    /// The local bare clone.
    pub clone_dir: PathBuf,
    pub author_name: String,
    pub author_email: String,
    /// Reads fetch first when the last fetch is older than this (zero:
    /// always), so that writes of other processes become visible.
    pub read_fetch_interval: Duration,
    /// Credentials and host verification for http(s):// and ssh:// remotes.
    pub auth: Auth,
    /// The remote is a repository on the local file system inside our
    /// (locked) data directory: no other process writes it, so its stale
    /// lock files are ours to clear.
    pub owned_remote: bool,
}

/// Set once the caller of a store call stopped waiting (its deadline passed
/// or it went away). Work not yet committed is then skipped: an abandoned
/// write never lands after its caller was answered, and calls queued behind
/// a stuck remote do not each wait for it again once their callers are gone.
#[derive(Clone, Debug, Default)]
pub struct Abandoned(Arc<AtomicBool>);

impl Abandoned {
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<()> {
        if self.is_set() {
            return Err(Error::unavailable(
                "the call ended before the git store was reached",
            ));
        }
        Ok(())
    }
}

/// How we prove who we are to the remote, and how we check who it is.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    /// User name for https (and for ssh when the URL names none; default
    /// `git`).
    pub username: Option<String>,
    /// https password or access token.
    pub password: Option<Secret>,
    /// ssh private key file.
    pub ssh_key: Option<PathBuf>,
    pub ssh_passphrase: Option<Secret>,
    /// OpenSSH known_hosts file the ssh host key must be listed in. Unset:
    /// libgit2's own check against `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// Accept any ssh host key (tests and throwaway setups only).
    pub insecure_skip_host_key_check: bool,
}

/// A read-only view of the branch tip.
pub struct Snapshot<'r> {
    repo: &'r Repository,
    tree: Option<Tree<'r>>,
}

impl Snapshot<'_> {
    /// The content of the file at `path`, if any.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(tree) = &self.tree else {
            return Ok(None);
        };
        let Some(entry) = entry_at(self.repo, tree, path)? else {
            return Ok(None);
        };
        let blob = self
            .repo
            .find_blob(entry.id())
            .map_err(|e| internal("reading a blob", e))?;
        Ok(Some(blob.content().to_vec()))
    }

    /// Whether anything is at `path` (no blob is read).
    pub fn has(&self, path: &str) -> Result<bool> {
        match &self.tree {
            Some(tree) => Ok(entry_at(self.repo, tree, path)?.is_some()),
            None => Ok(false),
        }
    }

    /// File names directly inside directory `dir` (empty if it is missing).
    pub fn list(&self, dir: &str) -> Result<Vec<String>> {
        let Some(tree) = &self.tree else {
            return Ok(Vec::new());
        };
        if dir.split('/').all(str::is_empty) {
            return Ok(names(tree));
        }
        let Some(entry) = entry_at(self.repo, tree, dir)? else {
            return Ok(Vec::new());
        };
        if entry.kind() != Some(git2::ObjectType::Tree) {
            return Ok(Vec::new());
        }
        let sub = self
            .repo
            .find_tree(entry.id())
            .map_err(|e| internal("reading a tree", e))?;
        Ok(names(&sub))
    }
}

fn names(tree: &Tree<'_>) -> Vec<String> {
    tree.iter()
        .filter_map(|e| e.name().ok().map(str::to_owned))
        .collect()
}

/// One file-level change of a commit.
#[derive(Debug)]
pub enum Change {
    Put {
        path: String,
        content: Vec<u8>,
    },
    Delete {
        path: String,
    },
    /// Removes a directory and everything in it.
    DeleteDir {
        path: String,
    },
    /// Moves a file or directory without reading it (absent: nothing).
    Move {
        from: String,
        to: String,
    },
}

/// What a write does: its changes and its commit message.
#[derive(Debug)]
pub struct Edit {
    pub message: String,
    pub changes: Vec<Change>,
}

pub struct GitStore {
    opts: StoreOptions,
    /// libgit2 repositories are not `Sync`; one writer at a time per process
    /// also avoids pointless self-conflicts.
    inner: Mutex<Inner>,
    /// A second handle on the clone for reads that need no fetch (with
    /// APP_GIT_READ_FETCH_INTERVAL above zero), so they never queue behind
    /// a write's fetch and push.
    reader: Mutex<Repository>,
    /// When the last fetch finished; outside `inner` so a read can tell
    /// without waiting for the writer.
    last_fetch: Mutex<Option<Instant>>,
    /// Writes that landed, to space out maintenance.
    writes: AtomicU32,
    /// The write count at which maintenance runs next.
    next_maintenance: AtomicU32,
    /// A maintenance run is under way (one at a time).
    maintaining: AtomicBool,
}

struct Inner {
    repo: Repository,
    /// A local remote, opened once: opening it for every fetch and push
    /// would map its pack indexes anew each time. Dropped after any error
    /// and after its packs were merged.
    remote: Option<Repository>,
}

impl Inner {
    fn local_remote(&mut self, path: &Path) -> Result<&Repository> {
        if self.remote.is_none() {
            self.remote = Some(Repository::open(path).map_err(|e| remote_error("open", e))?);
        }
        self.remote
            .as_ref()
            .ok_or_else(|| Error::internal("the local remote is not open"))
    }
}

impl GitStore {
    /// Opens the local clone (creating it on first start, rebuilding it
    /// when it is not usable) and points its `origin` at the configured
    /// remote. Blocking.
    pub fn open(opts: StoreOptions) -> Result<Self> {
        let tracking = format!("refs/remotes/{REMOTE}/{}", opts.branch);
        let borrowed = borrowed_objects(&opts);
        // Before the usability check (which must see what the clone will
        // use), and again after a rebuild.
        if opts.clone_dir.exists() {
            set_alternates(&opts.clone_dir, borrowed.as_deref())
                .map_err(|e| Error::internal("cannot set the clone's alternates").with_source(e))?;
        }
        let mut repo = open_or_rebuild(&opts.clone_dir, &tracking, borrowed.is_none())?;
        if set_alternates(&opts.clone_dir, borrowed.as_deref())
            .map_err(|e| Error::internal("cannot set the clone's alternates").with_source(e))?
        {
            repo = Repository::open_bare(&opts.clone_dir)
                .map_err(|e| internal("opening the local clone", e))?;
        }
        let dir = opts.clone_dir.as_path();
        match repo.find_remote(REMOTE) {
            Ok(r) if r.url().ok() == Some(opts.remote_url.as_str()) => {}
            Ok(_) => retry_locked(dir, || repo.remote_set_url(REMOTE, &opts.remote_url))
                .map_err(|e| internal("setting the remote url", e))?,
            Err(_) => {
                retry_locked(dir, || repo.remote(REMOTE, &opts.remote_url).map(|_| ()))
                    .map_err(|e| internal("adding the remote", e))?;
            }
        }
        let reader = Repository::open_bare(&opts.clone_dir)
            .map_err(|e| internal("opening the local clone", e))?;
        Ok(Self {
            opts,
            inner: Mutex::new(Inner { repo, remote: None }),
            reader: Mutex::new(reader),
            last_fetch: Mutex::new(None),
            writes: AtomicU32::new(0),
            next_maintenance: AtomicU32::new(1),
            maintaining: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        // A panic while holding the lock leaves at worst a stale local ref,
        // which the next fetch repairs: keep going.
        Ok(self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn tracking_ref(&self) -> String {
        format!("refs/remotes/{REMOTE}/{}", self.opts.branch)
    }

    /// Fetches the branch; a missing branch (empty remote) is fine.
    fn fetch(&self, inner: &mut Inner) -> Result<()> {
        if let Some(path) = local_path(&self.opts.remote_url) {
            inner.local_remote(&path)?;
            let Inner { repo, remote } = inner;
            let result = match remote.as_ref() {
                Some(r) => fetch_local(
                    repo,
                    &self.opts.clone_dir,
                    r,
                    &self.opts.branch,
                    &self.tracking_ref(),
                ),
                None => Err(Error::internal("the local remote is not open")),
            };
            if result.is_err() {
                *remote = None;
            }
            result?;
            self.fetched();
            return Ok(());
        }
        let mut remote = inner
            .repo
            .find_remote(REMOTE)
            .map_err(|e| internal("finding the remote", e))?;
        let spec = format!("+refs/heads/{0}:{1}", self.opts.branch, self.tracking_ref());
        // Updating the tracking ref (and FETCH_HEAD) takes lock files in
        // the clone: a stale one is cleared and the fetch repeated.
        retry_locked(&self.opts.clone_dir, || {
            let mut fo = FetchOptions::new();
            fo.prune(git2::FetchPrune::On);
            fo.remote_callbacks(self.callbacks());
            remote.fetch(&[spec.as_str()], Some(&mut fo), None)
        })
        .map_err(|e| remote_error("fetch", e))?;
        // A branch deleted on the remote leaves no tracking ref behind after
        // the prune; nothing else to do.
        self.fetched();
        Ok(())
    }

    fn fetched(&self) {
        *self
            .last_fetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    fn tip<'r>(&self, repo: &'r Repository) -> Result<Option<Commit<'r>>> {
        match repo.find_reference(&self.tracking_ref()) {
            Ok(r) => r
                .peel_to_commit()
                .map(Some)
                .map_err(|e| internal("resolving the branch tip", e)),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(internal("reading the branch ref", e)),
        }
    }

    /// Runs `f` on the branch tip, fetching first if the local copy may be
    /// stale. Blocking.
    pub fn read<T>(
        &self,
        abandoned: &Abandoned,
        f: impl FnOnce(&Snapshot<'_>) -> Result<T>,
    ) -> Result<T> {
        if !self.fetch_due() {
            let repo = self
                .reader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            return self.read_on(&repo, f);
        }
        let mut inner = self.lock()?;
        abandoned.check()?;
        // Another read may have fetched while we waited.
        if self.fetch_due() {
            self.fetch(&mut inner)?;
        }
        self.read_on(&inner.repo, f)
    }

    fn fetch_due(&self) -> bool {
        self.last_fetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none_or(|t| t.elapsed() >= self.opts.read_fetch_interval)
    }

    fn read_on<T>(
        &self,
        repo: &Repository,
        f: impl FnOnce(&Snapshot<'_>) -> Result<T>,
    ) -> Result<T> {
        let tip = self.tip(repo)?;
        let tree = match &tip {
            Some(c) => Some(c.tree().map_err(|e| internal("reading the tip tree", e))?),
            None => None,
        };
        f(&Snapshot { repo, tree })
    }

    /// Fetches, lets `plan` check the contract on the fresh tip and describe
    /// its change (None: nothing to do), commits and pushes; on a lost race
    /// starts over. Blocking.
    pub fn write(
        &self,
        abandoned: &Abandoned,
        mut plan: impl FnMut(&Snapshot<'_>) -> Result<Option<Edit>>,
    ) -> Result<()> {
        let mut inner = self.lock()?;
        abandoned.check()?;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                // Jittered backoff so that two losers do not collide again.
                let ms = 5 + u64::from(OsRng.next_u32() % (20 * attempt));
                std::thread::sleep(Duration::from_millis(ms));
                abandoned.check()?;
            }
            self.fetch(&mut inner)?;
            // Borrows of the repository end before the fetch below needs it
            // mutably: keep only ids out of this block.
            let (commit, parent_id) = {
                let repo = &inner.repo;
                let parent = self.tip(repo)?;
                let tree = match &parent {
                    Some(c) => Some(c.tree().map_err(|e| internal("reading the tip tree", e))?),
                    None => None,
                };
                let snapshot = Snapshot { repo, tree };
                let Some(edit) = plan(&snapshot)? else {
                    return Ok(());
                };
                let commit = self.commit(repo, parent.as_ref(), snapshot.tree.as_ref(), &edit)?;
                (commit, parent.as_ref().map(Commit::id))
            };
            // The push may make the change visible: a caller that stopped
            // waiting was answered with an error, so its change must not
            // land after that (a rollback it sent since would come first).
            abandoned.check()?;
            match self.push(&mut inner, commit, parent_id) {
                Ok(()) => {
                    crash::point("push");
                    self.pushed(&inner.repo, commit);
                    crash::point("tracking-ref");
                    self.writes.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(push_err) if push_err.kind() == shared::ErrorKind::Aborted => {
                    tracing::debug!(attempt, "push lost a race; retrying on the new tip");
                }
                Err(push_err) => {
                    // What happened shows in the remote: our commit (the push
                    // landed, only its report failed, e.g. a tracking ref
                    // that could not be updated), our parent (it failed), or
                    // another writer's commit (we lost a race).
                    self.fetch(&mut inner)?;
                    let now = self.tip(&inner.repo)?.map(|c| c.id());
                    if now == Some(commit) {
                        tracing::warn!(error = %push_err.detail(), "the push landed although it reported an error");
                        return Ok(());
                    }
                    if now == parent_id {
                        return Err(push_err);
                    }
                    tracing::debug!(attempt, "push lost a race; retrying on the new tip");
                }
            }
        }
        Err(Error::aborted(
            "too many concurrent writers to the git branch; retry",
        ))
    }

    /// Whether a maintenance run should start now (after the first write,
    /// then every [`MAINTAIN_EVERY`] writes, never two at once); if so the
    /// caller must run [`Self::maintain`].
    pub fn maintenance_due(&self) -> bool {
        self.writes.load(Ordering::Relaxed) >= self.next_maintenance.load(Ordering::Relaxed)
            && !self.maintaining.swap(true, Ordering::SeqCst)
    }

    /// Packs the loose objects of the clone (and of a local remote we own)
    /// once there are more than [`pack::LOOSE_LIMIT`], and merges packs
    /// beyond [`pack::PACK_LIMIT`], so the data directory stays near what
    /// `git gc` would leave. Reads and writes go on meanwhile; only the
    /// removal of merged packs waits for them. Blocking; failures are
    /// logged and retried at the next run.
    pub fn maintain(&self) {
        self.maintain_beyond(pack::LOOSE_LIMIT);
    }

    fn maintain_beyond(&self, loose_limit: usize) {
        self.next_maintenance.store(
            self.writes.load(Ordering::Relaxed) + MAINTAIN_EVERY,
            Ordering::Relaxed,
        );
        let mut dirs = Vec::new();
        if self.opts.owned_remote
            && let Some(remote) = local_path(&self.opts.remote_url)
        {
            dirs.push(remote);
        }
        dirs.push(self.opts.clone_dir.clone());
        for dir in &dirs {
            if let Err(e) = self.maintain_dir(dir, loose_limit) {
                tracing::warn!(error = %e, dir = %dir.display(), "packing git objects failed; the next run retries");
            }
        }
        self.maintaining.store(false, Ordering::SeqCst);
    }

    fn maintain_dir(&self, dir: &Path, loose_limit: usize) -> std::result::Result<(), PackError> {
        // A clone that borrows the remote's objects keeps only those not
        // pushed yet (a write under way).
        if dir == self.opts.clone_dir
            && let Some(remote) = borrowed_objects(&self.opts)
            && let Some(remote) = remote.parent()
        {
            let n = pack::drop_held_by(dir, remote)?;
            if n > 0 {
                tracing::debug!(objects = n, "dropped clone objects the remote holds");
            }
        }
        if pack::loose_objects(dir)?.len() > loose_limit {
            let n = pack::pack_loose(dir)?;
            tracing::debug!(objects = n, dir = %dir.display(), "packed loose git objects");
        }
        let merge = pack::packs_to_merge(&pack::packs(dir)?);
        if merge.is_empty() {
            return Ok(());
        }
        pack::merge_packs(dir, &merge)?;
        // Handles opened before may list the merged packs without having
        // opened them yet: remove them with every handle idle, then reopen.
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut reader = self
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for pack in &merge {
            pack::remove_pack(pack)?;
        }
        // The clone's handles list the embedded remote's packs too (they
        // borrow its objects).
        let clone = &self.opts.clone_dir;
        inner.repo = Repository::open_bare(clone)?;
        inner.remote = None;
        *reader = Repository::open_bare(clone)?;
        tracing::debug!(packs = merge.len(), dir = %dir.display(), "merged git packs");
        Ok(())
    }

    /// Makes our own write visible to reads without a fetch. The write is
    /// in the remote already, so it succeeded whatever happens here: if the
    /// tracking ref cannot move, the next read fetches instead.
    fn pushed(&self, repo: &Repository, commit: Oid) {
        let tracking = self.tracking_ref();
        if let Err(e) = retry_locked(&self.opts.clone_dir, || {
            repo.reference(&tracking, commit, true, "pushed")
                .map(|_| ())
        }) {
            tracing::warn!(error = %e.message(), "updating the tracking ref after a push failed; the next read fetches");
            *self
                .last_fetch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
    }

    /// Builds the commit of `edit` on `tree`. Only the trees on the
    /// changed paths are rewritten (libgit2's tree update), so a write costs
    /// the same however many TypeInstances the repository holds.
    fn commit(
        &self,
        repo: &Repository,
        parent: Option<&Commit<'_>>,
        tree: Option<&Tree<'_>>,
        edit: &Edit,
    ) -> Result<Oid> {
        let base = match tree {
            Some(t) => t.clone(),
            None => {
                let empty = repo
                    .treebuilder(None)
                    .and_then(|b| b.write())
                    .map_err(|e| internal("writing the empty tree", e))?;
                repo.find_tree(empty)
                    .map_err(|e| internal("finding the empty tree", e))?
            }
        };
        // Moves first take their sources out, in a tree of their own:
        // libgit2 would otherwise build a moved directory's new path on top
        // of a source that shares a name with one of its parents.
        let mut moved = Vec::new();
        let mut sources = TreeUpdateBuilder::new();
        for change in &edit.changes {
            if let Change::Move { from, to } = change
                && let Some(entry) = entry_at(repo, &base, from)?
            {
                let mode = match entry.kind() {
                    Some(git2::ObjectType::Tree) => FileMode::Tree,
                    _ => FileMode::Blob,
                };
                sources.remove(from.as_str());
                moved.push((to, entry.id(), mode));
            }
        }
        let base = if moved.is_empty() {
            base
        } else {
            let id = sources
                .create_updated(repo, &base)
                .map_err(|e| internal("writing the tree", e))?;
            repo.find_tree(id)
                .map_err(|e| internal("finding the new tree", e))?
        };
        let mut update = TreeUpdateBuilder::new();
        for (to, id, mode) in moved {
            update.upsert(to.as_str(), id, mode);
        }
        for change in &edit.changes {
            match change {
                Change::Put { path, content } => {
                    let blob = repo
                        .blob(content)
                        .map_err(|e| internal("writing a blob", e))?;
                    update.upsert(path.as_str(), blob, FileMode::Blob);
                }
                // libgit2 refuses to remove what is not there; a directory
                // left empty is dropped from its parent.
                Change::Delete { path } | Change::DeleteDir { path } => {
                    if entry_at(repo, &base, path)?.is_some() {
                        update.remove(path.as_str());
                    }
                }
                Change::Move { .. } => {}
            }
        }
        crash::point("blob");
        let tree_id = update
            .create_updated(repo, &base)
            .map_err(|e| internal("writing the tree", e))?;
        let tree = repo
            .find_tree(tree_id)
            .map_err(|e| internal("finding the new tree", e))?;
        let sig = Signature::now(&self.opts.author_name, &self.opts.author_email)
            .map_err(|e| internal("building the commit signature", e))?;
        let parents: Vec<&Commit<'_>> = parent.into_iter().collect();
        let commit = repo
            .commit(None, &sig, &sig, &edit.message, &tree, &parents)
            .map_err(|e| internal("committing", e))?;
        crash::point("commit");
        Ok(commit)
    }

    /// Pushes `commit` as the branch, never forcing: the remote accepts it
    /// only as a fast-forward of `parent`, what we built on.
    fn push(&self, inner: &mut Inner, commit: Oid, parent: Option<Oid>) -> Result<()> {
        if let Some(path) = local_path(&self.opts.remote_url) {
            inner.local_remote(&path)?;
            let Inner { repo, remote } = inner;
            let result = match remote.as_ref() {
                Some(r) => push_local(
                    repo,
                    r,
                    self.opts.owned_remote,
                    &self.opts.branch,
                    commit,
                    parent,
                ),
                None => Err(Error::internal("the local remote is not open")),
            };
            // A lost race keeps the handle; anything else opens it anew.
            if result
                .as_ref()
                .is_err_and(|e| e.kind() != shared::ErrorKind::Aborted)
            {
                *remote = None;
            }
            return result;
        }
        let repo = &inner.repo;
        // libgit2 pushes references, not bare object ids.
        let local = format!("refs/heads/{}", self.opts.branch);
        retry_locked(&self.opts.clone_dir, || {
            repo.reference(&local, commit, true, "to push").map(|_| ())
        })
        .map_err(|e| internal("setting the local branch", e))?;
        let mut remote = repo
            .find_remote(REMOTE)
            .map_err(|e| internal("finding the remote", e))?;
        let mut rejected: Option<String> = None;
        let result = {
            let mut cbs = self.callbacks();
            cbs.push_update_reference(|_, status| {
                if let Some(s) = status {
                    rejected = Some(s.to_owned());
                }
                Ok(())
            });
            let mut po = PushOptions::new();
            po.remote_callbacks(cbs);
            remote.push(&[format!("{local}:{local}").as_str()], Some(&mut po))
        };
        result.map_err(|e| remote_error("push", e))?;
        match rejected {
            None => Ok(()),
            Some(why) => Err(Error::aborted("the git remote rejected the push; retry")
                .with_source(std::io::Error::other(why))),
        }
    }

    /// Credential and host-key callbacks for one remote operation.
    fn callbacks(&self) -> RemoteCallbacks<'_> {
        let auth = &self.opts.auth;
        let url = self.opts.remote_url.as_str();
        let mut cbs = RemoteCallbacks::new();
        // libgit2 asks again after every rejection; a second ask for the same
        // kind means our credentials were refused, so stop instead of looping.
        let tries = Cell::new(0u32);
        cbs.credentials(move |_, url_user, allowed| {
            tries.set(tries.get() + 1);
            if tries.get() > 3 {
                return Err(auth_error("the git remote rejected our credentials"));
            }
            credential(auth, url_user, allowed)
        });
        cbs.certificate_check(move |cert, host| check_host(auth, url, cert, host));
        cbs
    }

    /// Readiness of what we write locally: the clone (and a local remote)
    /// holds no lock file that would fail every write, and accepts a file.
    /// Lock files found while no write of ours runs are stale (the data
    /// directory is ours alone) and removed; one that cannot be removed, or
    /// a directory that cannot be written, is UNAVAILABLE. Blocking.
    pub fn check_writable(&self) -> Result<()> {
        // A write in progress clears what it trips on, or fails: do not wait.
        let _writer = match self.inner.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(()),
        };
        let unwritable = |what: &'static str, e: std::io::Error| {
            Error::unavailable(format!("the {what} cannot be written")).with_source(e)
        };
        clear_locks(&self.opts.clone_dir, "local clone")
            .map_err(|e| unwritable("local git clone", e))?;
        datadir::check_writable(&self.opts.clone_dir)
            .map_err(|e| unwritable("local git clone", e))?;
        let Some(remote) = local_path(&self.opts.remote_url) else {
            return Ok(());
        };
        if self.opts.owned_remote {
            clear_locks(&remote, "local remote").map_err(|e| unwritable("git remote", e))?;
            datadir::check_writable(&remote).map_err(|e| unwritable("git remote", e))?;
        } else if let Some(age) = stale_branch_lock(&remote, &self.opts.branch) {
            return Err(Error::unavailable(
                "the git remote's branch is locked by a lock file nobody removes",
            )
            .with_source(std::io::Error::other(format!(
                "a lock file on the branch of {} is {}s old",
                remote.display(),
                age.as_secs()
            ))));
        }
        Ok(())
    }

    /// Asks the remote for its refs (ls-remote): the health probe.
    pub fn ping(&self) -> Result<()> {
        self.ls_remote().map_err(|(what, e)| remote_error(what, e))
    }

    fn ls_remote(&self) -> std::result::Result<(), (&'static str, git2::Error)> {
        // Its own handle on the clone: a probe must not queue behind a long
        // write holding the shared one, or health would flap under load.
        let repo = Repository::open_bare(&self.opts.clone_dir).map_err(|e| ("open", e))?;
        let mut remote = repo
            .remote_anonymous(&self.opts.remote_url)
            .map_err(|e| ("remote", e))?;
        remote
            .connect_auth(Direction::Fetch, Some(self.callbacks()), None)
            .map_err(|e| ("connect", e))?;
        remote.list().map_err(|e| ("ls-remote", e))?;
        let _ = remote.disconnect();
        Ok(())
    }

    /// At startup: refused credentials or an unverified host key end the
    /// process with the reason (a configuration error that no retry fixes);
    /// an unreachable remote only delays SERVING. Blocking.
    pub fn check_access(&self) -> Result<()> {
        match self.ls_remote() {
            Ok(()) => Ok(()),
            Err((_, e)) if is_auth_failure(&e) => Err(Error::invalid_argument(format!(
                "the git remote refused access: {} (check APP_GIT_USERNAME/APP_GIT_PASSWORD_FILE, APP_GIT_SSH_KEY_FILE, APP_GIT_SSH_KNOWN_HOSTS_FILE)",
                e.message()
            ))),
            Err((what, e)) => {
                tracing::warn!(error = %e.message(), what, "the git remote does not answer yet; health stays NOT_SERVING until it does");
                Ok(())
            }
        }
    }
}

fn auth_error(message: &str) -> git2::Error {
    git2::Error::new(ErrorCode::Auth, ErrorClass::Callback, message)
}

/// The credential for what the remote asks for.
fn credential(
    auth: &Auth,
    url_user: Option<&str>,
    allowed: CredentialType,
) -> Result<Cred, git2::Error> {
    let user = url_user.or(auth.username.as_deref()).unwrap_or("git");
    if allowed.contains(CredentialType::SSH_KEY) {
        let Some(key) = &auth.ssh_key else {
            return Err(auth_error(
                "the git remote wants an ssh key: set APP_GIT_SSH_KEY_FILE",
            ));
        };
        return Cred::ssh_key(
            user,
            None,
            key,
            auth.ssh_passphrase.as_ref().map(Secret::expose),
        );
    }
    if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
        let Some(password) = &auth.password else {
            return Err(auth_error(
                "the git remote wants a user name and password: set APP_GIT_USERNAME and APP_GIT_PASSWORD_FILE",
            ));
        };
        let user = auth.username.as_deref().or(url_user).unwrap_or("git");
        return Cred::userpass_plaintext(user, password.expose());
    }
    if allowed.contains(CredentialType::USERNAME) {
        return Cred::username(user);
    }
    Err(auth_error(
        "the git remote asks for a kind of credential we do not have",
    ))
}

/// Host verification: TLS certificates are left to OpenSSL (system CAs, or
/// APP_GIT_CA_FILE); ssh host keys are checked against our known_hosts file.
fn check_host(
    auth: &Auth,
    url: &str,
    cert: &Cert<'_>,
    host: &str,
) -> Result<CertificateCheckStatus, git2::Error> {
    let Some(hostkey) = cert.as_hostkey() else {
        return Ok(CertificateCheckStatus::CertificatePassthrough);
    };
    if auth.insecure_skip_host_key_check {
        return Ok(CertificateCheckStatus::CertificateOk);
    }
    let Some(file) = &auth.known_hosts else {
        return Ok(CertificateCheckStatus::CertificatePassthrough);
    };
    let reject = |m: &str| git2::Error::new(ErrorCode::Certificate, ErrorClass::Ssh, m);
    let Some(key) = hostkey.hostkey() else {
        return Err(reject("the ssh server sent no host key"));
    };
    let text = std::fs::read_to_string(file)
        .map_err(|_| reject("cannot read APP_GIT_SSH_KNOWN_HOSTS_FILE"))?;
    let name = match ssh_port(url) {
        Some(port) if port != 22 => format!("[{host}]:{port}"),
        _ => host.to_owned(),
    };
    if known_hosts_lists(&text, &name, key) {
        Ok(CertificateCheckStatus::CertificateOk)
    } else {
        Err(reject(
            "the ssh host key is not in APP_GIT_SSH_KNOWN_HOSTS_FILE (add the line `ssh-keyscan -p <port> <host>` prints, after checking it)",
        ))
    }
}

/// Whether an OpenSSH known_hosts text lists `key` (the raw wire-format host
/// key) for `name` (`host`, or `[host]:port` off port 22). Plain host
/// patterns only (`*`/`?` wildcards and `!` negation honoured); hashed
/// (`|1|…`) entries never match, and a matching `@revoked` line rejects.
fn known_hosts_lists(text: &str, name: &str, key: &[u8]) -> bool {
    let mut listed = false;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(mut hosts) = fields.next() else {
            continue;
        };
        if hosts.starts_with('#') {
            continue;
        }
        let marker = hosts.strip_prefix('@');
        if marker.is_some() {
            match fields.next() {
                Some(h) => hosts = h,
                None => continue,
            }
        }
        let (Some(_kind), Some(b64)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(listed_key) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            continue;
        };
        if listed_key != key || !host_matches(hosts, name) {
            continue;
        }
        match marker {
            Some("revoked") => return false,
            Some(_) => {}
            None => listed = true,
        }
    }
    listed
}

fn host_matches(patterns: &str, name: &str) -> bool {
    let mut hit = false;
    for pattern in patterns.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if glob(negated.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else if glob(pattern.as_bytes(), name.as_bytes()) {
            hit = true;
        }
    }
    hit
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// The port of an `ssh://[user@]host[:port]/path` URL (None: default, or
/// the scp-like `user@host:path` form, which has no port).
fn ssh_port(url: &str) -> Option<u16> {
    let rest = url
        .strip_prefix("ssh://")
        .or_else(|| url.strip_prefix("git+ssh://"))
        .or_else(|| url.strip_prefix("ssh+git://"))?;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    let port = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once("]:")?.1,
        None => host_port.split_once(':')?.1,
    };
    port.parse().ok()
}

/// The entry at `path` under `tree`, or None when the path is absent. An
/// object missing from the clone on the way is an error, never "absent":
/// libgit2's `get_path` reports both as not-found, and a damaged or
/// half-fetched clone must not answer NOT_FOUND for a stored revision.
fn entry_at(
    repo: &Repository,
    tree: &Tree<'_>,
    path: &str,
) -> Result<Option<git2::TreeEntry<'static>>> {
    let mut names = path.split('/').filter(|n| !n.is_empty()).peekable();
    let mut sub: Option<Tree<'_>> = None;
    while let Some(name) = names.next() {
        let next = {
            let Some(entry) = sub.as_ref().unwrap_or(tree).get_name(name) else {
                return Ok(None);
            };
            if names.peek().is_none() {
                return Ok(Some(entry.to_owned()));
            }
            if entry.kind() != Some(git2::ObjectType::Tree) {
                return Ok(None);
            }
            entry.id()
        };
        sub = Some(
            repo.find_tree(next)
                .map_err(|e| internal("reading a tree", e))?,
        );
    }
    Ok(None)
}

/// The directory of a local remote (`file://` URL or plain path), if it is one.
pub fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Some(PathBuf::from(rest));
    }
    (!url.contains("://") && Path::new(url).is_absolute()).then(|| PathBuf::from(url))
}

/// Pushes to a repository on the local file system with a real
/// compare-and-swap of the branch.
///
/// Why not libgit2's push: its local transport checks fast-forward against
/// the tip it saw on connect, then overwrites the ref unconditionally, so two
/// processes can both "win" (verified by the two-writer test). Here the
/// objects are copied first (harmless if we then lose), and the branch moves
/// only if it still points at `parent`, under the ref's lock file, the same
/// check `git receive-pack` does.
fn push_local(
    repo: &Repository,
    remote: &Repository,
    owned: bool,
    branch: &str,
    commit: Oid,
    parent: Option<Oid>,
) -> Result<()> {
    copy_missing(repo, remote, commit).map_err(|e| remote_error("write objects", e))?;
    crash::point("remote-objects");
    let name = format!("refs/heads/{branch}");
    let update = || match parent {
        Some(old) => remote
            .reference_matching(&name, commit, true, old, "sops-git push")
            .map(|_| ()),
        None => remote
            .reference(&name, commit, false, "sops-git push")
            .map(|_| ()),
    };
    // In a remote we own, a lock file is stale by construction (the
    // writer lock is held); in anyone else's it may be a live competitor.
    let result = if owned {
        retry_locked(remote.path(), update)
    } else {
        update()
    };
    match result {
        Ok(()) => Ok(()),
        // Still locked after clearing (ours), or locked for longer than any
        // live writer holds a ref (theirs): not a race to retry at once.
        Err(e)
            if is_lock_error(&e)
                && (owned || stale_branch_lock(remote.path(), branch).is_some()) =>
        {
            Err(Error::unavailable(
                "the git remote's branch is locked by a lock file nobody removes",
            )
            .with_source(e))
        }
        Err(e)
            if matches!(
                e.code(),
                ErrorCode::Modified | ErrorCode::Exists | ErrorCode::Locked
            ) =>
        {
            Err(Error::aborted("the git branch moved during the push; retry").with_source(e))
        }
        Err(e) => Err(remote_error("update the branch", e)),
    }
}

/// Copies `oid` and everything it references that `to` lacks, from `from`.
/// An object present in `to` implies its closure is (Git's own invariant,
/// kept here by writing every object after all it references), so the walk
/// stops there: only new commits and changed paths are visited. Iterative,
/// so a long history copied on a first fetch cannot overflow the stack.
fn copy_missing(
    from: &Repository,
    to: &Repository,
    oid: Oid,
) -> std::result::Result<(), git2::Error> {
    let (src, dst) = (from.odb()?, to.odb()?);
    // (object, its references already queued)
    let mut stack = vec![(oid, false)];
    while let Some((id, expanded)) = stack.pop() {
        if dst.exists(id) {
            continue;
        }
        let obj = src.read(id)?;
        if expanded {
            dst.write(obj.kind(), obj.data())?;
            continue;
        }
        stack.push((id, true));
        match obj.kind() {
            git2::ObjectType::Commit => {
                let commit = from.find_commit(id)?;
                stack.push((commit.tree_id(), false));
                stack.extend(commit.parent_ids().map(|p| (p, false)));
            }
            git2::ObjectType::Tree => {
                let tree = from.find_tree(id)?;
                stack.extend(tree.iter().map(|e| (e.id(), false)));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Fetches the branch of a repository on the local file system: its ref is
/// read by name (one file, replaced atomically by every writer) and the
/// objects the clone lacks are copied, then the tracking ref is moved. A
/// missing branch (empty remote) removes the tracking ref.
///
/// Why not libgit2's fetch: its local transport lists every ref of the
/// remote and packs a walk of it on each call; reading the one ref we follow
/// is cheaper, and keeps a cross-process read-after-write on the same
/// footing as `push_local` (the objects land in the remote before its ref
/// moves, and here in the clone before the tracking ref does).
fn fetch_local(
    repo: &Repository,
    clone_dir: &Path,
    remote: &Repository,
    branch: &str,
    tracking: &str,
) -> Result<()> {
    let tip = match remote.find_reference(&format!("refs/heads/{branch}")) {
        Ok(r) => r
            .resolve()
            .map_err(|e| remote_error("resolve the branch", e))?
            .target(),
        Err(e) if e.code() == ErrorCode::NotFound => None,
        Err(e) => return Err(remote_error("read the branch", e)),
    };
    let Some(tip) = tip else {
        return retry_locked(clone_dir, || match repo.find_reference(tracking) {
            Ok(mut r) => r.delete(),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .map_err(|e| internal("removing the tracking ref", e));
    };
    // The common case for reads: nothing new, so no object walk and no
    // ref write.
    if repo.refname_to_id(tracking).ok() == Some(tip) {
        return Ok(());
    }
    copy_missing(remote, repo, tip).map_err(|e| remote_error("copy objects", e))?;
    retry_locked(clone_dir, || {
        repo.reference(tracking, tip, true, "fetched").map(|_| ())
    })
    .map_err(|e| internal("updating the tracking ref", e))?;
    Ok(())
}

fn internal(what: &'static str, e: git2::Error) -> Error {
    if is_lock_error(&e) {
        return locked(what, e);
    }
    Error::internal(format!("git: {what} failed")).with_source(e)
}

/// A lock file that stayed after [`retry_locked`] removed the stale ones
/// (another git process in our clone, or one we may not remove): the store
/// cannot be written for now, which is UNAVAILABLE, never a permanent
/// INTERNAL.
fn locked(what: &'static str, e: git2::Error) -> Error {
    Error::unavailable(format!("git: {what} failed: a lock file is held; retry")).with_source(e)
}

/// libgit2 reports a lock file it found as `Locked`; some callers only
/// keep the message.
fn is_lock_error(e: &git2::Error) -> bool {
    e.code() == ErrorCode::Locked || e.message().contains("failed to lock file")
}

/// Removes the stale lock files of `repo_dir`, logging each.
fn clear_locks(repo_dir: &Path, what: &'static str) -> std::io::Result<()> {
    for path in datadir::clear_stale_git_files(repo_dir, Sweep::Locks)? {
        tracing::warn!(path = %path.display(), what, "removed a stale git lock file");
    }
    Ok(())
}

/// Runs `op`, which writes in the repository at `repo_dir` (the clone, or
/// a local remote we own). Only called while the writer lock is held, so a
/// lock file there was left by a killed process (the data directory is
/// locked by this one): it is removed and `op` retried, a bounded number of
/// times.
fn retry_locked<T>(
    repo_dir: &Path,
    mut op: impl FnMut() -> std::result::Result<T, git2::Error>,
) -> std::result::Result<T, git2::Error> {
    let mut attempt = 0;
    loop {
        match op() {
            Err(e) if is_lock_error(&e) && attempt < LOCK_RETRIES => {
                attempt += 1;
                tracing::warn!(error = %e.message(), attempt, "git found a lock file; clearing stale locks and retrying");
                if let Err(io) = clear_locks(repo_dir, "git repository") {
                    tracing::warn!(error = %io, "clearing stale git lock files failed");
                }
                std::thread::sleep(Duration::from_millis(5 * u64::from(attempt)));
            }
            result => return result,
        }
    }
}

/// The age of the lock file on `branch` in the repository at `git_dir`, if
/// there is one older than [`STALE_REMOTE_LOCK`].
fn stale_branch_lock(git_dir: &Path, branch: &str) -> Option<Duration> {
    let lock = git_dir.join(format!("refs/heads/{branch}.lock"));
    let modified = std::fs::metadata(lock).and_then(|m| m.modified()).ok()?;
    let age = SystemTime::now().duration_since(modified).ok()?;
    (age >= STALE_REMOTE_LOCK).then_some(age)
}

/// The objects directory of a local remote we own: the clone borrows its
/// objects (git's alternates) instead of copying them, so the data
/// directory holds each object once and a fetch copies nothing. Never for
/// a remote someone else may prune.
fn borrowed_objects(opts: &StoreOptions) -> Option<PathBuf> {
    if !opts.owned_remote {
        return None;
    }
    local_path(&opts.remote_url).map(|remote| remote.join("objects"))
}

/// Makes `objects/info/alternates` of the clone name exactly `objects`
/// (None: no file); whether it changed.
fn set_alternates(clone_dir: &Path, objects: Option<&Path>) -> std::io::Result<bool> {
    let file = clone_dir.join("objects").join("info").join("alternates");
    let want = objects.map(|o| format!("{}\n", o.display()));
    let have = match std::fs::read_to_string(&file) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if have == want {
        return Ok(false);
    }
    match want {
        Some(text) => {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &file)?;
        }
        None => std::fs::remove_file(&file)?,
    }
    Ok(true)
}

/// Opens the clone at `dir`, or builds a new empty one when there is none
/// or it is not usable (a kill mid-way through its creation, a damaged
/// object store): the remote is the source of truth, and the clone only a
/// cache of it that the next fetch fills.
fn open_or_rebuild(dir: &Path, tracking: &str, walk: bool) -> Result<Repository> {
    if dir.exists() {
        // The check's handle is dropped, and with it the trees it cached:
        // a read later goes to the object store.
        match Repository::open_bare(dir)
            .and_then(|r| clone_usable(&r, tracking, walk))
            .and_then(|()| Repository::open_bare(dir))
        {
            Ok(repo) => return Ok(repo),
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e.message(), "the local clone is not usable: rebuilding it from the remote");
                std::fs::remove_dir_all(dir).map_err(|e| {
                    Error::internal("cannot remove the damaged local clone").with_source(e)
                })?;
            }
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::internal("cannot create the local clone directory").with_source(e))?;
    Repository::init_bare(dir).map_err(|e| internal("creating the local clone", e))
}

/// What every call relies on: HEAD and the configuration read, and the
/// tracking ref (if any) leads to a commit whose whole tree is present.
/// Objects are written before the refs that name them, so a kill never
/// breaks this; a damaged disk may.
///
/// With `walk` false (a clone that borrows the embedded remote's objects,
/// which holds nothing of its own to lose) only the tip commit and its root
/// tree are checked: the whole walk costs about a second and the memory of
/// every tree per 100,000 TypeInstances, and a missing object there would
/// be the remote's damage, which no rebuild repairs.
fn clone_usable(
    repo: &Repository,
    tracking: &str,
    walk: bool,
) -> std::result::Result<(), git2::Error> {
    repo.find_reference("HEAD")?;
    repo.config()?.snapshot()?;
    let tip = match repo.find_reference(tracking) {
        Ok(r) => r.peel_to_commit()?,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !walk {
        tip.tree()?;
        return Ok(());
    }
    let odb = repo.odb()?;
    let mut missing = false;
    // The walk reads every tree (a missing one fails it); blobs are only
    // looked up. Gitlinks (submodules) name commits of other repositories.
    tip.tree()?.walk(TreeWalkMode::PreOrder, |_, entry| {
        if entry.kind() == Some(git2::ObjectType::Commit) || odb.exists(entry.id()) {
            TreeWalkResult::Ok
        } else {
            missing = true;
            TreeWalkResult::Abort
        }
    })?;
    if missing {
        return Err(git2::Error::new(
            ErrorCode::NotFound,
            ErrorClass::Odb,
            "an object of the tip is missing",
        ));
    }
    Ok(())
}

/// At start, in a local remote that we own: removes what a kill left
/// (lock and temporary files; a half-done creation would trip on its own
/// `config.lock`), creates the repository if it is missing, and checks that
/// the branch, if any, leads to a readable commit. A remote that fails the
/// check is not repaired: it is the source of truth, so the start stops
/// naming it. Blocking.
pub fn recover_owned_remote(dir: &Path, branch: &str) -> Result<()> {
    for path in datadir::clear_stale_git_files(dir, Sweep::All).map_err(|e| {
        Error::invalid_argument(format!(
            "cannot clear stale git files in the local remote {}: {e}",
            dir.display()
        ))
    })? {
        tracing::warn!(path = %path.display(), "removed a stale file from the local remote");
    }
    ensure_bare_repo(dir)?;
    let check = || -> std::result::Result<(), git2::Error> {
        let repo = Repository::open_bare(dir)?;
        match repo.find_reference(&format!("refs/heads/{branch}")) {
            Ok(r) => r.peel_to_commit()?.tree().map(|_| ()),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    };
    check().map_err(|e| {
        Error::invalid_argument(format!(
            "the local remote {} is damaged ({}): restore it from a backup or a clone",
            dir.display(),
            e.message()
        ))
    })
}

/// At start, in the clone: removes what a kill left (lock and temporary
/// files). Safe only under the data directory's lock. Blocking.
pub fn recover_clone(dir: &Path) -> Result<()> {
    for path in datadir::clear_stale_git_files(dir, Sweep::All).map_err(|e| {
        Error::invalid_argument(format!(
            "cannot clear stale git files in the local clone {}: {e}",
            dir.display()
        ))
    })? {
        tracing::warn!(path = %path.display(), "removed a stale file from the local clone");
    }
    Ok(())
}

/// Errors talking to the remote: network and transport trouble is
/// UNAVAILABLE (retry later), anything else INTERNAL.
fn remote_error(what: &'static str, e: git2::Error) -> Error {
    let unreachable = matches!(
        e.class(),
        ErrorClass::Net | ErrorClass::Os | ErrorClass::Ssh | ErrorClass::Http | ErrorClass::Ssl
    ) || matches!(e.code(), ErrorCode::NotFound | ErrorCode::Eof)
        || e.class() == ErrorClass::Repository;
    if e.code() == ErrorCode::NotFastForward {
        return Error::aborted(format!("git {what} lost a race; retry")).with_source(e);
    }
    if is_lock_error(&e) {
        return locked(what, e);
    }
    if is_auth_failure(&e) {
        // Still UNAVAILABLE to callers (health turns NOT_SERVING), but the
        // message says what to fix.
        return Error::unavailable(format!(
            "the git remote refused our credentials or failed the host check ({what})"
        ))
        .with_source(e);
    }
    if unreachable {
        Error::unavailable(format!("the git remote cannot be reached ({what})")).with_source(e)
    } else {
        Error::internal(format!("git {what} failed")).with_source(e)
    }
}

/// Rejected credentials or an unverified host: configuration to fix, not a
/// passing outage.
pub fn is_auth_failure(e: &git2::Error) -> bool {
    matches!(e.code(), ErrorCode::Auth | ErrorCode::Certificate)
        || (e.class() == ErrorClass::Http && e.message().contains("401"))
        || (e.class() == ErrorClass::Ssl && e.message().contains("certificate"))
}

/// Creates a bare repository at `dir` unless one exists (the default remote
/// when none is configured). Blocking.
pub fn ensure_bare_repo(dir: &Path) -> Result<()> {
    if Repository::open_bare(dir).is_ok() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::internal("cannot create the default repository").with_source(e))?;
    Repository::init_bare(dir)
        .map(|_| ())
        .map_err(|e| internal("creating the default repository", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> GitStore {
        store_owning(dir, false)
    }

    fn store_owning(dir: &Path, owned_remote: bool) -> GitStore {
        let remote = dir.join("remote.git");
        ensure_bare_repo(&remote).expect("remote");
        GitStore::open(StoreOptions {
            remote_url: format!("file://{}", remote.display()),
            branch: "main".into(),
            clone_dir: dir.join("clone.git"),
            author_name: "t".into(),
            author_email: "t@t".into(),
            read_fetch_interval: Duration::ZERO,
            auth: Auth::default(),
            owned_remote,
        })
        .expect("store")
    }

    fn plant(path: &Path, age: Duration) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let file = std::fs::File::create(path).expect("plant");
        file.set_modified(SystemTime::now() - age).expect("mtime");
    }

    fn put(path: &str, content: &str) -> Edit {
        Edit {
            message: format!("put {path}"),
            changes: vec![Change::Put {
                path: path.into(),
                content: content.as_bytes().to_vec(),
            }],
        }
    }

    /// Another writer's commit straight into the remote branch.
    fn commit_behind_our_back(remote: &Path, n: u32) {
        let repo = Repository::open_bare(remote).expect("open remote");
        let sig = Signature::now("other", "o@o").expect("sig");
        let parent = repo
            .find_reference("refs/heads/main")
            .ok()
            .and_then(|r| r.peel_to_commit().ok());
        let mut tb = repo
            .treebuilder(parent.as_ref().map(|p| p.tree().expect("tree")).as_ref())
            .expect("treebuilder");
        let blob = repo.blob(format!("{n}").as_bytes()).expect("blob");
        let mut other = repo.treebuilder(None).expect("treebuilder");
        if let Some(old) = tb.get("other").expect("get") {
            other = repo
                .treebuilder(Some(&repo.find_tree(old.id()).expect("other tree")))
                .expect("treebuilder");
        }
        other
            .insert(format!("{n}"), blob, 0o100644)
            .expect("insert");
        tb.insert("other", other.write().expect("write"), 0o040000)
            .expect("insert");
        let tree = repo.find_tree(tb.write().expect("write")).expect("tree");
        let parents: Vec<&Commit<'_>> = parent.iter().collect();
        repo.commit(
            Some("refs/heads/main"),
            &sig,
            &sig,
            "other",
            &tree,
            &parents,
        )
        .expect("commit");
    }

    fn object_count(dir: &Path) -> usize {
        let repo = Repository::open_bare(dir).expect("open");
        let mut n = 0;
        repo.odb()
            .expect("odb")
            .foreach(|_| {
                n += 1;
                true
            })
            .expect("foreach");
        n
    }

    /// Objects one write of `path` adds to the clone.
    fn objects_added_by(s: &GitStore, dir: &Path, path: &str) -> usize {
        let before = object_count(&dir.join("clone.git"));
        s.write(&Abandoned::default(), |_| Ok(Some(put(path, path))))
            .expect("write");
        object_count(&dir.join("clone.git")) - before
    }

    #[test]
    fn a_write_adds_the_same_objects_however_many_files_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        objects_added_by(&s, dir.path(), "p/0/1/2/zero/1.sops.yaml");
        let small = objects_added_by(&s, dir.path(), "p/0/1/2/first/1.sops.yaml");
        // 300 more files in other directories, in one commit.
        s.write(&Abandoned::default(), |_| {
            Ok(Some(Edit {
                message: "many".into(),
                changes: (0..300)
                    .map(|i| Change::Put {
                        path: format!("p/{:x}/{:x}/0/id{i}/1.sops.yaml", i % 16, i / 16 % 16),
                        content: format!("{i}").into_bytes(),
                    })
                    .collect(),
            }))
        })
        .expect("populate");
        let large = objects_added_by(&s, dir.path(), "p/0/1/2/second/1.sops.yaml");
        // A blob, the trees on its path (p/0/1/2/second, p/0/1/2, p/0/1,
        // p/0, p, the root) and the commit.
        assert_eq!((small, large), (8, 8), "objects added by one write");
    }

    #[test]
    fn packing_beside_writes_and_reads_loses_no_object_and_bounds_loose_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(store_owning(dir.path(), true));
        let ab = Abandoned::default();
        fn path(i: u32) -> String {
            format!("p/{:x}/{i}/1", i % 16)
        }
        fn write(s: &GitStore, i: u32) {
            s.write(&Abandoned::default(), |_| {
                Ok(Some(put(&path(i), &format!("value {i}"))))
            })
            .expect("write");
        }
        for i in 0..120 {
            write(&s, i);
        }
        let clone = dir.path().join("clone.git");
        let remote = dir.path().join("remote.git");
        assert!(pack::loose_objects(&clone).expect("loose").len() > pack::LOOSE_LIMIT);
        let writer = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for i in 120..240 {
                    write(&s, i);
                }
            })
        };
        // Many runs while the writer goes: every one packs what is loose,
        // so packs pile up and get merged too.
        while !writer.is_finished() {
            s.maintain_beyond(0);
            s.read(&ab, |snap| {
                assert!(snap.read(&path(7))?.is_some());
                Ok(())
            })
            .expect("read during maintenance");
        }
        writer.join().expect("writer");
        s.maintain();
        for repo in [&clone, &remote] {
            let loose = pack::loose_objects(repo).expect("loose").len();
            let packs = pack::packs(repo).expect("packs").len();
            assert!(
                loose <= pack::LOOSE_LIMIT && packs <= pack::PACK_LIMIT,
                "{} loose objects and {packs} packs left in {}",
                loose,
                repo.display()
            );
        }
        // The clone borrows the owned remote's objects: it keeps no copy of
        // what was pushed.
        assert_eq!(pack::loose_objects(&clone).expect("loose").len(), 0);
        // A fresh clone of the remote and the long-lived one both hold all.
        let other = tempfile::tempdir().expect("tempdir");
        let fresh = GitStore::open(StoreOptions {
            clone_dir: other.path().join("clone.git"),
            ..s.opts.clone()
        })
        .expect("fresh clone");
        for store in [&*s, &fresh] {
            store
                .read(&ab, |snap| {
                    for i in 0..240 {
                        let got = snap.read(&path(i))?;
                        assert_eq!(got, Some(format!("value {i}").into_bytes()), "{i}");
                    }
                    Ok(())
                })
                .expect("read back");
        }
    }

    #[test]
    fn a_move_takes_a_directory_under_a_parent_that_shares_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let ab = Abandoned::default();
        s.write(&ab, |_| {
            Ok(Some(Edit {
                message: "flat".into(),
                changes: ["p/a/1", "p/c/1", "p/c/lock"]
                    .map(|path| Change::Put {
                        path: path.into(),
                        content: path.as_bytes().to_vec(),
                    })
                    .into(),
            }))
        })
        .expect("flat");
        s.write(&ab, |_| {
            Ok(Some(Edit {
                message: "move".into(),
                changes: vec![
                    Change::Move {
                        from: "p/a".into(),
                        to: "p/c/x/a".into(),
                    },
                    Change::Move {
                        from: "p/c".into(),
                        to: "p/a/y/c".into(),
                    },
                    Change::Move {
                        from: "p/missing".into(),
                        to: "p/m/missing".into(),
                    },
                ],
            }))
        })
        .expect("move");
        s.read(&ab, |snap| {
            assert_eq!(snap.list("p")?, ["a", "c"]);
            assert_eq!(snap.list("p/c")?, ["x"]);
            assert_eq!(snap.list("p/a")?, ["y"]);
            assert_eq!(snap.read("p/c/x/a/1")?.as_deref(), Some(&b"p/a/1"[..]));
            assert_eq!(
                snap.read("p/a/y/c/lock")?.as_deref(),
                Some(&b"p/c/lock"[..])
            );
            Ok(())
        })
        .expect("read");
    }

    #[test]
    fn writes_and_reads_go_through_the_remote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.write(&Abandoned::default(), |_| Ok(Some(put("a/b", "x"))))
            .expect("write");
        let got = s
            .read(&Abandoned::default(), |snap| snap.read("a/b"))
            .expect("read");
        assert_eq!(got.as_deref(), Some(&b"x"[..]));
        assert_eq!(
            s.read(&Abandoned::default(), |snap| snap.list("a"))
                .expect("list"),
            vec!["b"]
        );
    }

    #[test]
    fn deleting_a_directory_keeps_siblings_that_share_its_name_as_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.write(&Abandoned::default(), |_| {
            Ok(Some(Edit {
                message: "two".into(),
                changes: vec![
                    Change::Put {
                        path: "p/a/1".into(),
                        content: b"a".to_vec(),
                    },
                    Change::Put {
                        path: "p/ab/1".into(),
                        content: b"ab".to_vec(),
                    },
                ],
            }))
        })
        .expect("write");
        s.write(&Abandoned::default(), |_| {
            Ok(Some(Edit {
                message: "rm".into(),
                changes: vec![Change::DeleteDir { path: "p/a".into() }],
            }))
        })
        .expect("delete");
        assert_eq!(
            s.read(&Abandoned::default(), |snap| snap.list("p"))
                .expect("list"),
            vec!["ab"]
        );
    }

    #[test]
    fn a_lost_race_is_retried_on_the_new_tip_with_the_checks_rerun() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let remote = dir.path().join("remote.git");
        let mut calls = 0;
        s.write(&Abandoned::default(), |snap| {
            calls += 1;
            if calls == 1 {
                // Someone else wins between our fetch and our push.
                commit_behind_our_back(&remote, 1);
            } else {
                // The retry sees the other writer's file.
                assert!(snap.read("other/1")?.is_some());
            }
            Ok(Some(put("mine", "y")))
        })
        .expect("write");
        assert_eq!(calls, 2);
        let (theirs, mine) = s
            .read(&Abandoned::default(), |snap| {
                Ok((snap.read("other/1")?, snap.read("mine")?))
            })
            .expect("read");
        assert!(theirs.is_some() && mine.is_some(), "a write was lost");
    }

    #[test]
    fn a_branch_removed_on_the_remote_reads_as_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.write(&Abandoned::default(), |_| Ok(Some(put("a", "x"))))
            .expect("write");
        let remote = Repository::open_bare(dir.path().join("remote.git")).expect("open");
        remote
            .find_reference("refs/heads/main")
            .expect("branch")
            .delete()
            .expect("delete");
        assert_eq!(
            s.read(&Abandoned::default(), |snap| snap.read("a"))
                .expect("read"),
            None
        );
    }

    #[test]
    fn an_object_missing_from_the_clone_is_an_error_never_absence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.write(&Abandoned::default(), |_| Ok(Some(put("a/b/c", "x"))))
            .expect("write");
        // Lose the tree of `a/b` from the clone (it stays in the remote).
        let id = {
            let clone = Repository::open_bare(&s.opts.clone_dir).expect("clone");
            let tip = clone
                .find_reference(&s.tracking_ref())
                .and_then(|r| r.peel_to_commit())
                .expect("tip");
            let tree = tip.tree().expect("tree");
            let a = clone
                .find_tree(tree.get_name("a").expect("a").id())
                .expect("a tree");
            a.get_name("b").expect("b").id().to_string()
        };
        let loose = s
            .opts
            .clone_dir
            .join("objects")
            .join(&id[..2])
            .join(&id[2..]);
        // A new handle: nothing of the tree is cached in memory. (Opened
        // before the loss: at open, a damaged clone is rebuilt.)
        let fresh = store(dir.path());
        std::fs::remove_file(loose).expect("remove the loose object");
        for err in [
            fresh
                .read(&Abandoned::default(), |snap| snap.read("a/b/c"))
                .expect_err("read"),
            fresh
                .read(&Abandoned::default(), |snap| snap.list("a/b"))
                .expect_err("list"),
        ] {
            assert_eq!(err.kind(), shared::ErrorKind::Internal);
        }
    }

    #[test]
    fn a_clone_missing_an_object_is_rebuilt_from_the_remote_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.write(&Abandoned::default(), |_| Ok(Some(put("a/b/c", "x"))))
            .expect("write");
        let tip = s
            .read(&Abandoned::default(), |snap| {
                Ok(snap.tree.as_ref().map(|t| t.id()))
            })
            .expect("read")
            .expect("a tip");
        let hex = tip.to_string();
        std::fs::remove_file(
            s.opts
                .clone_dir
                .join("objects")
                .join(&hex[..2])
                .join(&hex[2..]),
        )
        .expect("remove the root tree");
        drop(s);
        let reopened = store(dir.path());
        let got = reopened
            .read(&Abandoned::default(), |snap| snap.read("a/b/c"))
            .expect("read after the rebuild");
        assert_eq!(got.as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn a_stale_lock_in_the_clone_is_cleared_by_the_next_write_and_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.write(&Abandoned::default(), |_| Ok(Some(put("a", "1"))))
            .expect("write");
        let clone = s.opts.clone_dir.clone();
        for lock in ["refs/remotes/origin/main.lock", "packed-refs.lock"] {
            plant(&clone.join(lock), Duration::ZERO);
        }
        // Someone else moves the branch: the read must move the tracking ref.
        commit_behind_our_back(&dir.path().join("remote.git"), 1);
        let theirs = s
            .read(&Abandoned::default(), |snap| snap.read("other/1"))
            .expect("read");
        assert!(theirs.is_some());
        plant(&clone.join("refs/remotes/origin/main.lock"), Duration::ZERO);
        s.write(&Abandoned::default(), |_| Ok(Some(put("b", "2"))))
            .expect("write");
        assert!(!clone.join("refs/remotes/origin/main.lock").exists());
        let both = s
            .read(&Abandoned::default(), |snap| {
                Ok((snap.read("a")?, snap.read("b")?))
            })
            .expect("read");
        assert!(both.0.is_some() && both.1.is_some());
    }

    #[test]
    fn a_lock_on_an_owned_remote_is_cleared_and_on_a_foreign_one_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = dir.path().join("remote.git/refs/heads/main.lock");
        let owned = store_owning(dir.path(), true);
        owned
            .write(&Abandoned::default(), |_| Ok(Some(put("a", "1"))))
            .expect("write");
        plant(&lock, Duration::ZERO);
        owned
            .write(&Abandoned::default(), |_| Ok(Some(put("b", "2"))))
            .expect("the owner clears its remote's stale lock");
        drop(owned);

        // Someone else's remote: a fresh lock is a competitor (ABORTED, a
        // race to retry), an old one a stale lock we may not remove.
        let foreign = store(dir.path());
        plant(&lock, Duration::ZERO);
        let err = foreign
            .write(&Abandoned::default(), |_| Ok(Some(put("c", "3"))))
            .expect_err("locked");
        assert_eq!(err.kind(), shared::ErrorKind::Aborted);
        plant(&lock, STALE_REMOTE_LOCK + Duration::from_secs(5));
        let err = foreign
            .write(&Abandoned::default(), |_| Ok(Some(put("c", "3"))))
            .expect_err("locked");
        assert_eq!(err.kind(), shared::ErrorKind::Unavailable);
        assert_eq!(
            foreign.check_writable().expect_err("probe").kind(),
            shared::ErrorKind::Unavailable
        );
        assert!(lock.exists(), "a foreign lock file was removed");
        std::fs::remove_file(&lock).expect("its owner removes it");
        foreign.check_writable().expect("writable again");
        foreign
            .write(&Abandoned::default(), |_| Ok(Some(put("c", "3"))))
            .expect("write");
    }

    #[test]
    fn the_probe_clears_stale_clone_locks_unless_a_write_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let lock = s.opts.clone_dir.join("refs/remotes/origin/main.lock");
        plant(&lock, Duration::ZERO);
        s.check_writable().expect("cleared");
        assert!(!lock.exists());
        // A busy writer is not waited for.
        let writer = s.lock().expect("lock");
        plant(&lock, Duration::ZERO);
        s.check_writable().expect("skipped while a write runs");
        drop(writer);
        s.check_writable().expect("cleared");
        assert!(!lock.exists());
    }

    #[test]
    fn an_abandoned_write_never_reaches_the_remote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let abandoned = Abandoned::default();
        let err = s
            .write(&abandoned, |_| {
                // The caller's deadline passes while the change is planned.
                abandoned.set();
                Ok(Some(put("late", "x")))
            })
            .expect_err("abandoned");
        assert_eq!(err.kind(), shared::ErrorKind::Unavailable);
        let got = s
            .read(&Abandoned::default(), |snap| snap.read("late"))
            .expect("read");
        assert_eq!(got, None);
    }

    #[test]
    fn an_owned_remote_whose_creation_was_killed_is_created_at_the_next_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let remote = dir.path().join("remote.git");
        // What a kill during init leaves: a directory, a held config lock.
        plant(&remote.join("config.lock"), Duration::ZERO);
        recover_owned_remote(&remote, "main").expect("recovered");
        assert!(Repository::open_bare(&remote).is_ok());
        assert!(!remote.join("config.lock").exists());
    }

    #[test]
    fn a_damaged_owned_remote_stops_the_start_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let remote = dir.path().join("remote.git");
        ensure_bare_repo(&remote).expect("remote");
        std::fs::write(
            remote.join("refs/heads/main"),
            "0123456789012345678901234567890123456789\n",
        )
        .expect("point the branch nowhere");
        let err = recover_owned_remote(&remote, "main").expect_err("damaged");
        assert!(
            err.message().contains(&remote.display().to_string()),
            "{}",
            err.message()
        );
    }

    #[test]
    fn endless_conflicts_end_in_aborted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let remote = dir.path().join("remote.git");
        let mut n = 0;
        let err = s
            .write(&Abandoned::default(), |_| {
                n += 1;
                commit_behind_our_back(&remote, n);
                Ok(Some(put("mine", "y")))
            })
            .expect_err("aborted");
        assert_eq!(err.kind(), shared::ErrorKind::Aborted);
        assert_eq!(n, MAX_ATTEMPTS);
    }

    #[test]
    fn an_unreachable_remote_is_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        std::fs::remove_dir_all(dir.path().join("remote.git")).expect("rm");
        let err = s
            .read(&Abandoned::default(), |_| Ok(()))
            .expect_err("unreachable");
        assert_eq!(err.kind(), shared::ErrorKind::Unavailable);
        assert_eq!(
            s.ping().expect_err("ping").kind(),
            shared::ErrorKind::Unavailable
        );
    }

    #[test]
    fn reads_between_fetches_do_not_wait_for_a_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = store(dir.path());
        s.opts.read_fetch_interval = Duration::from_secs(3600);
        s.write(&Abandoned::default(), |_| Ok(Some(put("a", "x"))))
            .expect("write");
        let s = std::sync::Arc::new(s);
        // Stands in for a write busy pushing.
        let writer = s.lock().expect("lock");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::sync::Arc::clone(&s);
        std::thread::spawn(move || {
            let _ = tx.send(reader.read(&Abandoned::default(), |snap| snap.read("a")));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the read waited for the writer")
            .expect("read");
        assert_eq!(got.as_deref(), Some(&b"x"[..]));
        drop(writer);
    }

    #[test]
    fn known_hosts_entries_match_by_host_port_and_key() {
        let key = b"raw-host-key";
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let other = base64::engine::general_purpose::STANDARD.encode(b"other");
        let text = format!(
            "# comment\n\n[127.0.0.1]:2222 ssh-ed25519 {b64}\ngit.example.com,10.0.0.1 ssh-ed25519 {b64}\n*.wild.example ssh-ed25519 {b64}\n|1|hashed= ssh-ed25519 {b64}\nmixed ssh-ed25519 {other}\n"
        );
        assert!(known_hosts_lists(&text, "[127.0.0.1]:2222", key));
        assert!(!known_hosts_lists(&text, "127.0.0.1", key), "port matters");
        assert!(known_hosts_lists(&text, "10.0.0.1", key));
        assert!(known_hosts_lists(&text, "a.wild.example", key));
        assert!(!known_hosts_lists(&text, "mixed", key), "other key");
        assert!(!known_hosts_lists(&text, "unknown", key));
        let revoked = format!("{text}@revoked git.example.com ssh-ed25519 {b64}\n");
        assert!(!known_hosts_lists(&revoked, "git.example.com", key));
    }

    #[test]
    fn ssh_ports_come_from_the_url() {
        assert_eq!(ssh_port("ssh://git@host:2222/x.git"), Some(2222));
        assert_eq!(ssh_port("ssh://git@host/x.git"), None);
        assert_eq!(ssh_port("ssh://[::1]:2200/x.git"), Some(2200));
        assert_eq!(ssh_port("git@host:org/x.git"), None);
    }

    #[test]
    fn file_urls_and_absolute_paths_are_local_remotes() {
        assert_eq!(
            local_path("file:///srv/git/x.git"),
            Some(PathBuf::from("/srv/git/x.git"))
        );
        assert_eq!(
            local_path("/srv/git/x.git"),
            Some(PathBuf::from("/srv/git/x.git"))
        );
        assert_eq!(local_path("git://host/x.git"), None);
        assert_eq!(local_path("https://host/x.git"), None);
    }
}
