//! The revision engine: the whole protocol (spec §3) for stores that keep a
//! *head* per TypeInstance (latest revision, lock, unfinished work) plus one
//! *object* per revision. A backend implements [`HeadStore`] — a handful of
//! primitives over its store's compare-and-set — and gets a
//! [`ValueBackend`] by wrapping it in [`Engine`].
//!
//! How the rules hold (ARCHITECTURE.md, "The revision engine"):
//! - Every state change is one compare-and-set of the head. The lock check
//!   that allows a change is made on the head version that the change
//!   replaces, so nothing takes effect under another owner's lock.
//! - Work on objects is announced in the head first ([`Intent`]) and is
//!   invisible to readers until the head says so: a revision becomes
//!   readable when the commit raises `latest`, and is unreadable from the
//!   moment its removal is recorded.
//! - Each life of a TypeInstance has its own life, a name under which
//!   its objects live: a delete's cleanup cannot touch a later create's data.
//! - Revision objects are written create-only, or replaced only on the tag
//!   read; they carry the head's epoch so a reader detects an object
//!   written after the head it read.
//! - Conflicts are retried a bounded number of times with jittered backoff;
//!   another call's unfinished intent is respected until its lease expires.

pub mod head;
pub mod memory;
pub mod rules;

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value as Json;

pub use head::{Head, Intent, MANAGED_BY};

use crate::{
    Backend, Context, Describe, Error, LockInfo, Owner, Result, Revision, TypeInstanceId, Value,
    ValueBackend, config::ServerConfig,
};

/// Where one revision object lives.
#[derive(Clone, Copy, Debug)]
pub struct Slot<'a> {
    pub id: &'a TypeInstanceId,
    /// The life ([`Head::life`]); empty for the legacy layout.
    pub life: &'a str,
    pub rev: u32,
}

/// A revision object as read.
pub struct Stored {
    pub value: Bytes,
    /// [`Head::epoch`] when it was written (0 for objects older than epochs).
    pub epoch: u64,
    /// The store's version of the object, for a conditional replace.
    pub tag: String,
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .field("epoch", &self.epoch)
            .field("tag", &self.tag)
            .finish()
    }
}

/// How a store removes the head of a deleted TypeInstance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadRemoval {
    /// Only at the tag read (Kubernetes preconditions): removed at once.
    Conditional,
    /// Unconditionally (S3, Secrets Manager): the engine first marks the
    /// head [`Intent::Deleted`], and only that caller removes it, so a later
    /// create never loses its head to a late removal; a create waits for the
    /// mark's lease before taking it over.
    Unconditional,
    /// Never: the head stays marked [`Intent::Deleted`] and a later create
    /// replaces it at once. For stores whose versions restart when a record
    /// is removed (Vault KV v2), where a removed and re-created head could
    /// match a stale tag.
    Keep,
}

/// The primitives a head-based store offers. Every method is one (or, for
/// stores without the primitive, a few) store calls; none decides anything
/// the protocol cares about.
#[async_trait]
pub trait HeadStore: Send + Sync + 'static {
    /// How this store removes a deleted TypeInstance's head.
    const HEAD_REMOVAL: HeadRemoval = HeadRemoval::Unconditional;

    /// Whether [`HeadStore::project`] does anything: the engine reads a
    /// revision to project only for stores that project.
    const PROJECTS: bool = false;

    fn describe(&self) -> Describe;

    /// A real, cheap request to the store (health).
    async fn probe(&self) -> Result<()>;

    /// The head and its version tag; `None` if there is none. A record that
    /// is not ours is an error (FAILED_PRECONDITION), never `None`.
    async fn read_head(&self, id: &TypeInstanceId) -> Result<Option<(Head, String)>>;

    /// Creates the head if none exists: the new tag, or `None` if one exists.
    async fn create_head(&self, id: &TypeInstanceId, head: &Head) -> Result<Option<String>>;

    /// Replaces the head if its version is still `tag`: the new tag, or
    /// `None` on a conflict (changed or removed).
    async fn replace_head(
        &self,
        id: &TypeInstanceId,
        head: &Head,
        tag: &str,
    ) -> Result<Option<String>>;

    /// Removes the head; only at `tag` if [`HeadRemoval::Conditional`].
    /// Gone already is success. Never called for [`HeadRemoval::Keep`].
    async fn remove_head(&self, id: &TypeInstanceId, tag: &str) -> Result<()>;

    async fn read_revision(&self, at: Slot<'_>) -> Result<Option<Stored>>;

    /// Writes a revision object create-only (`replace: None`) or over the
    /// object whose tag is `replace`: `false` on a conflict.
    async fn write_revision(
        &self,
        at: Slot<'_>,
        value: &Value,
        epoch: u64,
        replace: Option<&str>,
    ) -> Result<bool>;

    /// Removes a revision object; gone already is success.
    async fn remove_revision(&self, at: Slot<'_>) -> Result<()>;

    /// The revision numbers with an object in life `life` (delete paths
    /// only). `upto` is the highest that can exist, for stores that probe
    /// instead of listing.
    async fn list_revisions(&self, id: &TypeInstanceId, life: &str, upto: u32) -> Result<Vec<u32>>;

    /// The highest revision below `rev` with an object.
    async fn highest_below(
        &self,
        id: &TypeInstanceId,
        life: &str,
        rev: u32,
    ) -> Result<Option<u32>> {
        let revs = self.list_revisions(id, life, rev.saturating_sub(1)).await?;
        Ok(revs.into_iter().filter(|r| *r < rev).max())
    }

    /// Every head the store holds, for the admin service's lock listing
    /// (a full scan: operators only). Records that are not ours are skipped.
    async fn list_heads(&self) -> Result<Vec<(TypeInstanceId, Head)>> {
        Err(Error::unimplemented(format!(
            "the {} backend cannot list its TypeInstances",
            self.describe().name
        )))
    }

    /// Called after the latest readable revision changed (`None`: the
    /// TypeInstance is gone), for stores that project it somewhere
    /// (kubernetes-secret's application Secret; set [`Self::PROJECTS`]). A failure fails the call;
    /// its retry projects again.
    async fn project(&self, _id: &TypeInstanceId, _latest: Option<(u32, &[u8])>) -> Result<()> {
        Ok(())
    }
}

/// [`HeadStore::highest_below`] for stores that address revisions by name
/// and would rather not list: reads downwards from `rev - 1`, one read
/// unless the revisions just below were removed too.
pub async fn highest_below_by_reading<S: HeadStore + ?Sized>(
    store: &S,
    id: &TypeInstanceId,
    life: &str,
    rev: u32,
) -> Result<Option<u32>> {
    for r in (1..rev).rev() {
        if store
            .read_revision(Slot { id, life, rev: r })
            .await?
            .is_some()
        {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// [`HeadStore::list_heads`] for stores keyed `<root><id>/head`: the heads
/// among `keys`, each read; other keys and records that are not ours are
/// skipped (the listing covers everything under `root`).
pub async fn heads_at_keys<S: HeadStore + ?Sized>(
    store: &S,
    root: &str,
    keys: impl IntoIterator<Item = String>,
) -> Vec<(TypeInstanceId, Head)> {
    let mut out = Vec::new();
    for key in keys {
        let Some(id) = key
            .strip_prefix(root)
            .and_then(|k| k.strip_suffix("/head"))
            .filter(|id| !id.contains('/'))
            .and_then(|id| TypeInstanceId::parse(id).ok())
        else {
            continue;
        };
        if let Ok(Some((head, _))) = store.read_head(&id).await {
            out.push((id, head));
        }
    }
    out
}

/// One store behind several engines (tests: two "processes" on one store).
#[async_trait]
impl<S: HeadStore> HeadStore for Arc<S> {
    const HEAD_REMOVAL: HeadRemoval = S::HEAD_REMOVAL;
    const PROJECTS: bool = S::PROJECTS;

    fn describe(&self) -> Describe {
        (**self).describe()
    }
    async fn probe(&self) -> Result<()> {
        (**self).probe().await
    }
    async fn read_head(&self, id: &TypeInstanceId) -> Result<Option<(Head, String)>> {
        (**self).read_head(id).await
    }
    async fn create_head(&self, id: &TypeInstanceId, head: &Head) -> Result<Option<String>> {
        (**self).create_head(id, head).await
    }
    async fn replace_head(
        &self,
        id: &TypeInstanceId,
        head: &Head,
        tag: &str,
    ) -> Result<Option<String>> {
        (**self).replace_head(id, head, tag).await
    }
    async fn remove_head(&self, id: &TypeInstanceId, tag: &str) -> Result<()> {
        (**self).remove_head(id, tag).await
    }
    async fn read_revision(&self, at: Slot<'_>) -> Result<Option<Stored>> {
        (**self).read_revision(at).await
    }
    async fn write_revision(
        &self,
        at: Slot<'_>,
        value: &Value,
        epoch: u64,
        replace: Option<&str>,
    ) -> Result<bool> {
        (**self).write_revision(at, value, epoch, replace).await
    }
    async fn remove_revision(&self, at: Slot<'_>) -> Result<()> {
        (**self).remove_revision(at).await
    }
    async fn list_revisions(&self, id: &TypeInstanceId, life: &str, upto: u32) -> Result<Vec<u32>> {
        (**self).list_revisions(id, life, upto).await
    }
    async fn highest_below(
        &self,
        id: &TypeInstanceId,
        life: &str,
        rev: u32,
    ) -> Result<Option<u32>> {
        (**self).highest_below(id, life, rev).await
    }
    async fn list_heads(&self) -> Result<Vec<(TypeInstanceId, Head)>> {
        (**self).list_heads().await
    }

    async fn project(&self, id: &TypeInstanceId, latest: Option<(u32, &[u8])>) -> Result<()> {
        (**self).project(id, latest).await
    }
}

/// The engine's settings, shared by every head-based backend's flags.
#[derive(clap::Args, Clone, Debug)]
pub struct EngineArgs {
    /// How long another call's unfinished change, recorded in the head, is
    /// respected before any call may take it over. Must exceed the longest
    /// a request can run (APP_REQUEST_TIMEOUT): a call still running would
    /// otherwise race its successor.
    #[arg(long, env = "APP_INTENT_LEASE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub intent_lease: Duration,

    /// Attempts of one call against concurrent changes before ABORTED.
    #[arg(long, env = "APP_CAS_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub cas_attempts: u32,

    /// Keep only the newest N revisions of each TypeInstance; older ones are
    /// pruned by the update that makes them too old and answer NOT_FOUND.
    /// 0 keeps every revision.
    #[arg(long, env = "APP_MAX_REVISIONS", default_value_t = 0)]
    pub max_revisions: u32,
}

/// Milliseconds since the Unix epoch; replaceable for tests.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Clock(Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        }))
    }

    /// Milliseconds of tokio's clock since the call: follows paused time.
    pub fn tokio() -> Self {
        let start = tokio::time::Instant::now();
        Clock(Arc::new(move || start.elapsed().as_millis() as u64 + 1))
    }

    pub fn now(&self) -> u64 {
        (self.0)()
    }
}

#[derive(Clone)]
pub struct Options {
    pub lease: Duration,
    pub attempts: u32,
    /// First backoff ceiling; doubles per attempt up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub clock: Clock,
    /// Retention: the newest N revisions stay readable; `None` keeps all.
    pub max_revisions: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lease: Duration::from_secs(60),
            attempts: 8,
            backoff_base: Duration::from_millis(4),
            backoff_cap: Duration::from_millis(250),
            clock: Clock::system(),
            max_revisions: None,
        }
    }
}

impl Options {
    /// From the flags; the lease must outlast a request.
    pub fn from_args(args: &EngineArgs, server: &ServerConfig) -> Result<Self> {
        if args.intent_lease <= server.request_timeout {
            return Err(Error::invalid_argument(format!(
                "APP_INTENT_LEASE ({}) must be longer than APP_REQUEST_TIMEOUT ({})",
                humantime::format_duration(args.intent_lease),
                humantime::format_duration(server.request_timeout)
            )));
        }
        Ok(Options {
            lease: args.intent_lease,
            attempts: args.cas_attempts,
            max_revisions: (args.max_revisions > 0).then_some(args.max_revisions),
            ..Options::default()
        })
    }
}

/// A [`ValueBackend`] over a [`HeadStore`].
pub struct Engine<S> {
    store: S,
    opts: Options,
}

/// How far past the usual one revision a single commit may raise the
/// retention floor (bounds the removals one OnUpdate does).
const PRUNE_BATCH: u32 = 16;

/// 64 random bits in hex: lifes and write nonces.
fn token() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Names a value's bytes in a claim (not a secret: 128 bits of SHA-256).
fn digest(value: &Value) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(value.as_bytes())[..16])
}

/// Whether `h` holds a claim of `rev` for these bytes, by any call.
fn claimed_for(h: &Head, rev: u32, digest: &str) -> bool {
    matches!(&h.intent, Some(Intent::Write { rev: r, digest: d, .. }) if *r == rev && d == digest)
}

/// ABORTED after the last attempt: because another call's unfinished work
/// was in the way (`busy`), or because the head kept changing.
fn gave_up(id: &TypeInstanceId, busy: bool) -> Error {
    if busy {
        rules::busy(id)
    } else {
        rules::contended(id)
    }
}

/// Whether `h` is a claim of `rev` by `nonce`.
fn claimed_by(h: &Head, rev: u32, nonce: &str) -> bool {
    matches!(&h.intent, Some(Intent::Write { rev: r, nonce: n, .. }) if *r == rev && n == nonce)
}

fn deleting_revision(h: &Head, rev: u32) -> bool {
    matches!(&h.intent, Some(Intent::DeleteRevision { rev: r, .. }) if *r == rev)
}

/// How a write that holds a claim ended.
enum Commit {
    Done,
    Failed(Error),
}

impl<S: HeadStore> Engine<S> {
    pub fn new(store: S, opts: Options) -> Self {
        Engine { store, opts }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    fn now(&self) -> u64 {
        self.opts.clock.now()
    }

    fn stale(&self, intent: &Intent) -> bool {
        self.now().saturating_sub(intent.since()) >= self.opts.lease.as_millis() as u64
    }

    /// Jittered exponential backoff before attempt `attempt` (≥ 1).
    async fn pause(&self, attempt: u32) {
        let ceiling = self
            .opts
            .backoff_base
            .saturating_mul(1 << attempt.min(16))
            .min(self.opts.backoff_cap);
        let micros = fastrand::u64(0..=ceiling.as_micros() as u64);
        tokio::time::sleep(Duration::from_micros(micros)).await;
    }

    fn attempts(&self) -> impl Iterator<Item = u32> + use<S> {
        0..self.opts.attempts
    }

    async fn backoff(&self, attempt: u32) {
        if attempt > 0 {
            self.pause(attempt).await;
        }
    }

    /// The live head, or NOT_FOUND (`rev` picks the wording). Reads stop
    /// there; a state change first finishes a delete that stopped part-way
    /// (always safe: its life is dead), so nothing of it lingers.
    async fn live(
        &self,
        id: &TypeInstanceId,
        rev: Option<u32>,
        write: bool,
    ) -> Result<(Head, String)> {
        let gone = || match rev {
            Some(r) => rules::revision_not_found(id, r),
            None => rules::not_found(id),
        };
        match self.store.read_head(id).await? {
            Some((h, tag)) if h.is_live() => Ok((h, tag)),
            Some((h, tag)) if write && matches!(h.intent, Some(Intent::Delete { .. })) => {
                self.finish_delete(id, h, tag).await?;
                Err(gone())
            }
            _ => Err(gone()),
        }
    }

    /// Whether the head is still at `tag` (a decision made on an absent
    /// object holds only if nothing changed since the head was read).
    async fn unchanged(&self, id: &TypeInstanceId, tag: &str) -> Result<bool> {
        Ok(matches!(self.store.read_head(id).await?, Some((_, t)) if t == tag))
    }

    /// Removes every object of life `life`: safe at any time once the
    /// head no longer names `life` as live, and resumable (it lists what is
    /// left).
    async fn purge(&self, id: &TypeInstanceId, life: &str, upto: u32) -> Result<()> {
        for rev in self.store.list_revisions(id, life, upto).await? {
            self.store.remove_revision(Slot { id, life, rev }).await?;
        }
        Ok(())
    }

    /// Finishes a delete recorded in `head` (at `tag`): objects, then head.
    async fn finish_delete(&self, id: &TypeInstanceId, head: Head, tag: String) -> Result<()> {
        self.purge(id, &head.life, head.latest.max(1)).await?;
        // The projection goes before the head, so a retry (which finds the
        // head) still removes it.
        self.store.project(id, None).await?;
        if S::HEAD_REMOVAL == HeadRemoval::Conditional {
            return self.store.remove_head(id, &tag).await;
        }
        let done = Head {
            intent: Some(Intent::Deleted { since: self.now() }),
            ..head
        };
        // Only the caller that recorded `Deleted` removes the head, right
        // away; a create takes over a `Deleted` head only once its lease has
        // expired (or at once where heads are kept).
        if let Some(tag) = self.store.replace_head(id, &done, &tag).await?
            && S::HEAD_REMOVAL == HeadRemoval::Unconditional
        {
            self.store.remove_head(id, &tag).await?;
        }
        Ok(())
    }

    /// Finishes the removal of revision `rev` recorded in `head` (at `tag`).
    async fn finish_delete_revision(
        &self,
        id: &TypeInstanceId,
        head: Head,
        tag: String,
        rev: u32,
    ) -> Result<()> {
        let life = head.life.clone();
        let still = |h: &Head| h.life == life && deleting_revision(h, rev);
        match self.remove_and_clear(id, (head, tag), rev, still).await? {
            Some(cleared) => self.project_latest(id, &cleared).await,
            // Finished by someone else, or the TypeInstance is gone.
            None => Ok(()),
        }
    }

    /// Removes the object of `rev`, then clears the intent of `head` (at
    /// `tag`) for as long as `still` recognises it as the one this call
    /// owns. Returns the cleared head, or `None` if someone else moved on.
    async fn remove_and_clear(
        &self,
        id: &TypeInstanceId,
        (mut head, mut tag): (Head, String),
        rev: u32,
        still: impl Fn(&Head) -> bool + Send + Sync,
    ) -> Result<Option<Head>> {
        self.store
            .remove_revision(Slot {
                id,
                life: &head.life,
                rev,
            })
            .await?;
        for attempt in self.attempts() {
            self.backoff(attempt).await;
            let next = Head {
                intent: None,
                ..head.clone()
            };
            if self.store.replace_head(id, &next, &tag).await?.is_some() {
                return Ok(Some(next));
            }
            match self.store.read_head(id).await? {
                Some((h, t)) if still(&h) => {
                    head = h;
                    tag = t;
                }
                _ => return Ok(None),
            }
        }
        Err(rules::contended(id))
    }

    /// Projects the latest revision of a live head (stores without a
    /// projection return at once).
    async fn project_latest(&self, id: &TypeInstanceId, head: &Head) -> Result<()> {
        if !S::PROJECTS {
            return Ok(());
        }
        let stored = self
            .store
            .read_revision(Slot {
                id,
                life: &head.life,
                rev: head.latest,
            })
            .await?;
        match stored {
            Some(s) => self.store.project(id, Some((head.latest, &s.value))).await,
            None => Ok(()),
        }
    }

    /// Completes or clears another call's intent whose lease has expired,
    /// so that this call can go on. Returns whether the head changed.
    async fn take_over(&self, id: &TypeInstanceId, head: &Head, tag: &str) -> Result<bool> {
        match &head.intent {
            Some(i @ Intent::DeleteRevision { rev, .. }) if self.stale(i) => {
                self.finish_delete_revision(id, head.clone(), tag.to_owned(), *rev)
                    .await?;
                Ok(true)
            }
            Some(i @ Intent::Write { rev, digest, .. }) if self.stale(i) => {
                // Adopt the dead claim first, so that no one else acts on
                // it, then remove what it may have written: an object left
                // above `latest` would become visible with a later commit.
                let nonce = token();
                let adopted = Head {
                    intent: Some(Intent::Write {
                        rev: *rev,
                        nonce: nonce.clone(),
                        digest: digest.clone(),
                        since: self.now(),
                    }),
                    ..head.clone()
                };
                if let Some(tag) = self.store.replace_head(id, &adopted, tag).await? {
                    self.abandon(id, adopted, tag, *rev, &nonce).await?;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Writes revision `rev` under the claim `nonce` recorded in `head`
    /// (at `tag`), then commits it: the commit is the change's one atomic
    /// step, made only while the claim is ours and the lock allows it.
    async fn write_and_commit(
        &self,
        id: &TypeInstanceId,
        (mut head, mut tag): (Head, String),
        (rev, nonce): (u32, &str),
        value: &Value,
        owner: Option<&Owner>,
    ) -> Result<Commit> {
        let life = head.life.clone();
        let slot = Slot {
            id,
            life: &life,
            rev,
        };
        let mut written = false;
        for attempt in self.attempts() {
            self.backoff(attempt).await;
            // Create-only first: the common case costs one call.
            if self
                .store
                .write_revision(slot, value, head.epoch, None)
                .await?
            {
                written = true;
                break;
            }
            let done = match self.store.read_revision(slot).await? {
                Some(s) if s.value == value.as_bytes() => true,
                // Left by an earlier claim of this revision that never
                // committed: replace it on its tag, never blindly.
                Some(s) => {
                    self.store
                        .write_revision(slot, value, head.epoch, Some(&s.tag))
                        .await?
                }
                None => false,
            };
            if done {
                written = true;
                break;
            }
        }
        if !written {
            self.abandon(id, head, tag, rev, nonce).await?;
            return Ok(Commit::Failed(rules::contended(id)));
        }
        for attempt in self.attempts() {
            self.backoff(attempt).await;
            // Retention: the commit that makes revisions too old also makes
            // them unreadable, in the same compare-and-set (so the lock and
            // the claim that allowed the commit allowed the pruning too).
            let floor = self.floor_after(head.floor, rev);
            let next = Head {
                latest: rev,
                intent: None,
                floor,
                ..head.clone()
            };
            if self.store.replace_head(id, &next, &tag).await?.is_some() {
                self.store
                    .project(id, Some((rev, value.as_bytes())))
                    .await?;
                crate::metrics::revisions_pruned(u64::from(floor - head.floor));
                self.prune(id, &life, head.floor, floor).await?;
                return Ok(Commit::Done);
            }
            let current = self.store.read_head(id).await?;
            let dead = match &current {
                None => true,
                Some((h, _)) => h.life != life || h.intent.as_ref().is_some_and(Intent::is_delete),
            };
            let Some((h, t)) = current.filter(|_| !dead) else {
                // Deleted while we wrote: our object belongs to a dead life,
                // which anyone may clean; do it now rather than leave it to
                // a cleanup that may have listed the life before we wrote.
                self.store.remove_revision(slot).await?;
                return Ok(Commit::Failed(rules::not_found(id)));
            };
            if !claimed_by(&h, rev, nonce) {
                // Our claim outlived its lease and was taken over.
                return Ok(Commit::Failed(rules::busy(id)));
            }
            if let Err(e) = rules::check_lock(id, h.lock.as_deref(), owner) {
                // Locked by another owner since the claim: nothing of this
                // call may take effect now.
                self.abandon(id, h, t, rev, nonce).await?;
                return Ok(Commit::Failed(e));
            }
            head = h;
            tag = t;
        }
        self.abandon(id, head, tag, rev, nonce).await?;
        Ok(Commit::Failed(rules::contended(id)))
    }

    /// Gives up our own claim of `rev`: removes what we wrote (an object
    /// left above `latest` would become visible with a later commit), then
    /// clears the claim. A crash in between leaves a claim that expires and
    /// is taken over the same way.
    async fn abandon(
        &self,
        id: &TypeInstanceId,
        head: Head,
        tag: String,
        rev: u32,
        nonce: &str,
    ) -> Result<()> {
        let still = |h: &Head| claimed_by(h, rev, nonce);
        self.remove_and_clear(id, (head, tag), rev, still)
            .await
            .map(drop)
    }

    /// The floor after committing `rev`: with retention, everything below
    /// the newest N, advancing at most [`PRUNE_BATCH`] past the usual one
    /// per commit (a lowered limit catches up over several updates).
    fn floor_after(&self, floor: u32, rev: u32) -> u32 {
        match self.opts.max_revisions {
            Some(keep) => {
                let target = rev.saturating_sub(keep);
                target.min(floor.saturating_add(PRUNE_BATCH + 1)).max(floor)
            }
            None => floor,
        }
    }

    /// Removes the objects of revisions `from+1..=to`, now below the floor:
    /// unreadable already, so a crash here only leaves objects that the
    /// TypeInstance's delete removes with the rest.
    async fn prune(&self, id: &TypeInstanceId, life: &str, from: u32, to: u32) -> Result<()> {
        for rev in from + 1..=to {
            self.store.remove_revision(Slot { id, life, rev }).await?;
        }
        Ok(())
    }

    fn finish(commit: Commit) -> Result<Option<Json>> {
        match commit {
            Commit::Done => Ok(None),
            Commit::Failed(e) => Err(e),
        }
    }
}

#[async_trait]
impl<S: HeadStore> Backend for Engine<S> {
    fn describe(&self) -> Describe {
        self.store.describe()
    }

    async fn probe(&self) -> Result<()> {
        self.store.probe().await
    }

    /// Head, then the object. The head says whether the revision is
    /// readable; an object written in a later epoch than that head was
    /// replaced after it was read, so the read starts over.
    async fn get_value(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        _ctx: &Context,
    ) -> Result<Value> {
        let rev = revision.get();
        for attempt in self.attempts() {
            self.backoff(attempt).await;
            let (h, _) = self.live(id, Some(rev), false).await?;
            if !h.holds(rev) || deleting_revision(&h, rev) {
                return Err(rules::revision_not_found(id, rev));
            }
            match self
                .store
                .read_revision(Slot {
                    id,
                    life: &h.life,
                    rev,
                })
                .await?
            {
                None => return Err(rules::revision_not_found(id, rev)),
                Some(s) if s.epoch > h.epoch => continue,
                Some(s) => return Ok(Value::from(s.value)),
            }
        }
        Err(rules::contended(id))
    }

    async fn get_locked_by(&self, id: &TypeInstanceId, _ctx: &Context) -> Result<Option<Owner>> {
        let (h, _) = self.live(id, None, false).await?;
        match h.lock {
            Some(l) => Owner::parse(&l).map(Some).map_err(|_| {
                Error::data_loss(format!("the lock of type instance {id} is corrupted"))
            }),
            None => Ok(None),
        }
    }

    async fn lock(&self, id: &TypeInstanceId, _ctx: &Context, owner: &Owner) -> Result<()> {
        for attempt in self.attempts() {
            self.backoff(attempt).await;
            let (h, tag) = self.live(id, None, true).await?;
            if rules::lock_step(id, h.lock.as_deref(), owner)? == rules::LockStep::Held {
                return Ok(());
            }
            let next = Head {
                lock: Some(owner.as_str().to_owned()),
                locked_at: Some(self.now()),
                ..h
            };
            if self.store.replace_head(id, &next, &tag).await?.is_some() {
                return Ok(());
            }
        }
        Err(rules::contended(id))
    }

    async fn list_locks(&self) -> Result<Vec<LockInfo>> {
        let mut locks: Vec<LockInfo> = self
            .store
            .list_heads()
            .await?
            .into_iter()
            .filter(|(_, h)| h.is_live())
            .filter_map(|(id, h)| {
                Some(LockInfo {
                    owner: h.lock?,
                    locked_at: h.locked_at,
                    id,
                })
            })
            .collect();
        locks.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(locks)
    }

    async fn force_unlock(&self, id: &TypeInstanceId, expected: &Owner) -> Result<()> {
        for attempt in self.attempts() {
            self.backoff(attempt).await;
            let (h, tag) = self.live(id, None, true).await?;
            rules::force_unlock_step(id, h.lock.as_deref(), expected)?;
            let next = Head {
                lock: None,
                locked_at: None,
                ..h
            };
            if self.store.replace_head(id, &next, &tag).await?.is_some() {
                tracing::warn!(type_instance = %id, owner = %expected, "lock cleared by force-unlock");
                return Ok(());
            }
        }
        Err(rules::contended(id))
    }

    async fn unlock(&self, id: &TypeInstanceId, _ctx: &Context) -> Result<()> {
        for attempt in self.attempts() {
            self.backoff(attempt).await;
            let (h, tag) = self.live(id, None, true).await?;
            if h.lock.is_none() {
                return Ok(());
            }
            let next = Head {
                lock: None,
                locked_at: None,
                ..h
            };
            if self.store.replace_head(id, &next, &tag).await?.is_some() {
                return Ok(());
            }
        }
        Err(rules::contended(id))
    }
}

#[async_trait]
impl<S: HeadStore> ValueBackend for Engine<S> {
    async fn create(
        &self,
        id: &TypeInstanceId,
        value: Value,
        _ctx: &Context,
    ) -> Result<Option<Json>> {
        let nonce = token();
        let dig = digest(&value);
        let mut busy = false;
        for attempt in self.attempts() {
            self.backoff(attempt).await;
            let fresh = Head::new_life(token(), nonce.clone(), dig.clone(), self.now());
            let (head, tag) = match self.store.read_head(id).await? {
                None => match self.store.create_head(id, &fresh).await? {
                    Some(tag) => (fresh, tag),
                    None => continue,
                },
                Some((h, tag)) if h.is_live() => {
                    let first = if h.latest == 1 {
                        let read = self
                            .store
                            .read_revision(Slot {
                                id,
                                life: &h.life,
                                rev: 1,
                            })
                            .await?;
                        match read {
                            Some(s) if s.epoch <= h.epoch => Some(s),
                            // Changed since the head was read: look again.
                            _ if !self.unchanged(id, &tag).await? => continue,
                            _ => None,
                        }
                    } else {
                        None
                    };
                    rules::create_on_existing(
                        id,
                        h.latest,
                        first.as_ref().map(|s| &s.value[..]),
                        value.as_bytes(),
                    )?;
                    self.project_latest(id, &h).await?;
                    return Ok(None);
                }
                Some((h, tag)) if claimed_for(&h, 1, &dig) => {
                    // A create of these very bytes never committed: this is
                    // its retry (or an identical call); carry the claim on.
                    let adopted = Head {
                        intent: Some(Intent::Write {
                            rev: 1,
                            nonce: nonce.clone(),
                            digest: dig.clone(),
                            since: self.now(),
                        }),
                        ..h
                    };
                    match self.store.replace_head(id, &adopted, &tag).await? {
                        Some(tag) => (adopted, tag),
                        None => continue,
                    }
                }
                Some((h, tag)) => {
                    // Not live: a delete (finish it: its life is dead),
                    // or a create that never committed (wait for its lease).
                    let replaceable = match &h.intent {
                        Some(Intent::Delete { .. }) => {
                            self.purge(id, &h.life, h.latest.max(1)).await?;
                            true
                        }
                        Some(Intent::Deleted { .. }) if S::HEAD_REMOVAL == HeadRemoval::Keep => {
                            true
                        }
                        Some(i @ Intent::Deleted { .. }) | Some(i @ Intent::Write { .. }) => {
                            self.stale(i)
                        }
                        Some(Intent::DeleteRevision { .. }) | None => true,
                    };
                    if !replaceable {
                        busy = true;
                        continue;
                    }
                    if !h.life.is_empty() && !matches!(h.intent, Some(Intent::Delete { .. })) {
                        // The dead claim's object, if any, goes with its life.
                        self.purge(id, &h.life, 1).await?;
                    }
                    match self.store.replace_head(id, &fresh, &tag).await? {
                        Some(tag) => (fresh, tag),
                        None => continue,
                    }
                }
            };
            let commit = self
                .write_and_commit(id, (head, tag), (1, &nonce), &value, None)
                .await?;
            return Self::finish(commit);
        }
        Err(gave_up(id, busy))
    }

    async fn update(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        value: Value,
        _ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<Option<Json>> {
        let rev = revision.get();
        let nonce = token();
        let dig = digest(&value);
        let mut busy = false;
        for attempt in self.attempts() {
            self.backoff(attempt).await;
            let (h, tag) = self.live(id, None, true).await?;
            let stored = if rev <= h.latest && !deleting_revision(&h, rev) {
                match self
                    .store
                    .read_revision(Slot {
                        id,
                        life: &h.life,
                        rev,
                    })
                    .await?
                {
                    Some(s) if s.epoch > h.epoch => continue,
                    // A hole, or removed since the head was read: only an
                    // unchanged head says which.
                    None if !self.unchanged(id, &tag).await? => continue,
                    other => other,
                }
            } else {
                None
            };
            let step = rules::update_step(
                id,
                rev,
                h.latest,
                stored.as_ref().map(|s| &s.value[..]),
                value.as_bytes(),
                h.lock.as_deref(),
                owner,
            )?;
            if step == rules::UpdateStep::Done {
                if rev == h.latest {
                    // A retry also completes the projection and the pruning
                    // of the first try (removals of gone objects are no-ops).
                    self.store
                        .project(id, Some((rev, value.as_bytes())))
                        .await?;
                    if self.opts.max_revisions.is_some() {
                        let from = h.floor.saturating_sub(PRUNE_BATCH + 1);
                        self.prune(id, &h.life, from, h.floor).await?;
                    }
                }
                return Ok(None);
            }
            match &h.intent {
                None => {}
                // The same bytes for the same revision: the retry of a call
                // that failed part-way (or an identical call) carries its
                // claim on, replacing the nonce.
                Some(_) if claimed_for(&h, rev, &dig) => {}
                Some(i) => {
                    if !self.stale(i) || !self.take_over(id, &h, &tag).await? {
                        busy = true;
                    }
                    continue;
                }
            }
            let claimed = Head {
                intent: Some(Intent::Write {
                    rev,
                    nonce: nonce.clone(),
                    digest: dig.clone(),
                    since: self.now(),
                }),
                ..h
            };
            let Some(tag) = self.store.replace_head(id, &claimed, &tag).await? else {
                continue;
            };
            let commit = self
                .write_and_commit(id, (claimed, tag), (rev, &nonce), &value, owner)
                .await?;
            return Self::finish(commit);
        }
        Err(gave_up(id, busy))
    }

    async fn delete(
        &self,
        id: &TypeInstanceId,
        _ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<()> {
        for attempt in self.attempts() {
            self.backoff(attempt).await;
            let Some((h, tag)) = self.store.read_head(id).await? else {
                return Err(rules::not_found(id));
            };
            if !h.is_live() {
                if matches!(h.intent, Some(Intent::Delete { .. })) {
                    // Help an unfinished delete (its life is dead).
                    self.finish_delete(id, h, tag).await?;
                }
                return Err(rules::not_found(id));
            }
            rules::check_lock(id, h.lock.as_deref(), owner)?;
            let marked = Head {
                intent: Some(Intent::Delete { since: self.now() }),
                ..h
            };
            if let Some(tag) = self.store.replace_head(id, &marked, &tag).await? {
                // The TypeInstance is gone from here on; the rest is cleanup
                // that any later call can finish.
                return self.finish_delete(id, marked, tag).await;
            }
        }
        Err(rules::contended(id))
    }

    async fn delete_revision(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        _ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<()> {
        let rev = revision.get();
        let mut busy = false;
        for attempt in self.attempts() {
            self.backoff(attempt).await;
            let (h, tag) = self.live(id, Some(rev), true).await?;
            if deleting_revision(&h, rev) {
                // Already gone; a retry after a crash finishes the removal.
                self.take_over(id, &h, &tag).await?;
                return Err(rules::revision_not_found(id, rev));
            }
            if rev > h.latest {
                return Err(rules::revision_not_found(id, rev));
            }
            rules::check_lock(id, h.lock.as_deref(), owner)?;
            if !h.holds(rev) {
                // Pruned by retention: gone like a deleted revision.
                return Err(rules::revision_not_found(id, rev));
            }
            if let Some(i) = &h.intent {
                if !self.stale(i) || !self.take_over(id, &h, &tag).await? {
                    busy = true;
                }
                continue;
            }
            let slot = Slot {
                id,
                life: &h.life,
                rev,
            };
            match self.store.read_revision(slot).await? {
                None => return Err(rules::revision_not_found(id, rev)),
                Some(s) if s.epoch > h.epoch => continue,
                Some(_) => {}
            }
            let below = if rev == h.latest {
                // Objects at or below the floor are pruned leftovers, not
                // revisions.
                match self
                    .store
                    .highest_below(id, &h.life, rev)
                    .await?
                    .filter(|b| *b > h.floor)
                {
                    Some(b) => Some(b),
                    None => {
                        // The last revision: the TypeInstance goes with it.
                        let marked = Head {
                            intent: Some(Intent::Delete { since: self.now() }),
                            ..h
                        };
                        match self.store.replace_head(id, &marked, &tag).await? {
                            Some(tag) => return self.finish_delete(id, marked, tag).await,
                            None => continue,
                        }
                    }
                }
            } else {
                None
            };
            let marked = Head {
                latest: below.unwrap_or(h.latest),
                epoch: h.epoch + 1,
                intent: Some(Intent::DeleteRevision {
                    rev,
                    since: self.now(),
                }),
                ..h
            };
            if let Some(tag) = self.store.replace_head(id, &marked, &tag).await? {
                return self.finish_delete_revision(id, marked, tag, rev).await;
            }
        }
        Err(gave_up(id, busy))
    }
}
