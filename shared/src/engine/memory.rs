//! An in-memory [`HeadStore`] for tests of the engine and of anything built
//! on it: every primitive is atomic, as in a real store, and the store can
//! fail from its k-th call on (a crash at every point of an operation) and
//! yield to other tasks a seeded random number of times around every call
//! (random interleavings that replay from their seed).

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Head, HeadRemoval, HeadStore, Slot, Stored};
use crate::{Describe, Error, Result, TypeInstanceId, Value};

/// What the store holds, as plain data for invariant checks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contents {
    /// id → (head, version)
    pub heads: BTreeMap<String, (Head, u64)>,
    /// (id, life, rev) → (bytes, epoch, version)
    pub objects: BTreeMap<(String, String, u32), (Bytes, u64, u64)>,
}

/// `MODE` of a [`MemoryStore`]: how it removes heads ([`HeadRemoval`]).
pub const UNCONDITIONAL: u8 = 0;
pub const CONDITIONAL: u8 = 1;
pub const KEEP: u8 = 2;

/// The store, removing heads as `MODE` says.
pub struct MemoryStore<const MODE: u8 = UNCONDITIONAL> {
    contents: Mutex<Contents>,
    /// Version counter: tags never repeat, even across removal.
    version: AtomicU64,
    calls: AtomicU64,
    /// Calls numbered above this fail with UNAVAILABLE.
    fail_after: AtomicU64,
    /// Seeded source of yields; `None` yields never.
    shuffle: Mutex<Option<fastrand::Rng>>,
}

impl<const MODE: u8> Default for MemoryStore<MODE> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const MODE: u8> MemoryStore<MODE> {
    pub fn new() -> Self {
        MemoryStore {
            contents: Mutex::new(Contents::default()),
            version: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            fail_after: AtomicU64::new(u64::MAX),
            shuffle: Mutex::new(None),
        }
    }

    /// Yield 0–3 times around each call, drawn from `seed`.
    pub fn with_shuffle(self, seed: u64) -> Self {
        *self.shuffle.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(fastrand::Rng::with_seed(seed));
        self
    }

    /// Calls from now on: the first `k` succeed, every later one fails.
    pub fn fail_after(&self, k: u64) {
        self.calls.store(0, Ordering::SeqCst);
        self.fail_after.store(k, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.fail_after.store(u64::MAX, Ordering::SeqCst);
    }

    /// Calls made since the last `fail_after` (or since creation).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn reset_calls(&self) {
        self.calls.store(0, Ordering::SeqCst);
    }

    pub fn contents(&self) -> Contents {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Contents> {
        self.contents.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn shuffle(&self) {
        let n = {
            let mut rng = self.shuffle.lock().unwrap_or_else(|p| p.into_inner());
            rng.as_mut().map(|r| r.u32(0..4)).unwrap_or(0)
        };
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
    }

    /// Counts a call, fails it past the limit, and yields around it.
    async fn enter(&self) -> Result<()> {
        self.shuffle().await;
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n > self.fail_after.load(Ordering::SeqCst) {
            return Err(Error::unavailable("memory store failed on purpose"));
        }
        Ok(())
    }

    fn key(at: &Slot<'_>) -> (String, String, u32) {
        (at.id.as_str().to_owned(), at.life.to_owned(), at.rev)
    }
}

fn parse_tag(tag: &str) -> u64 {
    tag.parse().unwrap_or(0)
}

#[async_trait]
impl<const MODE: u8> HeadStore for MemoryStore<MODE> {
    const HEAD_REMOVAL: HeadRemoval = match MODE {
        CONDITIONAL => HeadRemoval::Conditional,
        KEEP => HeadRemoval::Keep,
        _ => HeadRemoval::Unconditional,
    };

    fn describe(&self) -> Describe {
        Describe {
            name: "memory",
            version: env!("CARGO_PKG_VERSION"),
            accept_value: true,
            context_schema: None,
            context_required: false,
            max_value_bytes: 16 << 20,
        }
    }

    async fn probe(&self) -> Result<()> {
        Ok(())
    }

    async fn read_head(&self, id: &TypeInstanceId) -> Result<Option<(Head, String)>> {
        self.enter().await?;
        let out = self
            .lock()
            .heads
            .get(id.as_str())
            .map(|(h, v)| (h.clone(), v.to_string()));
        self.shuffle().await;
        Ok(out)
    }

    async fn list_heads(&self) -> Result<Vec<(TypeInstanceId, Head)>> {
        self.enter().await?;
        let heads: Vec<(String, Head)> = self
            .lock()
            .heads
            .iter()
            .map(|(id, (h, _))| (id.clone(), h.clone()))
            .collect();
        Ok(heads
            .into_iter()
            .filter_map(|(id, h)| Some((TypeInstanceId::parse(&id).ok()?, h)))
            .collect())
    }

    async fn create_head(&self, id: &TypeInstanceId, head: &Head) -> Result<Option<String>> {
        self.enter().await?;
        let v = self.next_version();
        let out = {
            let mut c = self.lock();
            if c.heads.contains_key(id.as_str()) {
                None
            } else {
                c.heads.insert(id.as_str().to_owned(), (head.clone(), v));
                Some(v.to_string())
            }
        };
        self.shuffle().await;
        Ok(out)
    }

    async fn replace_head(
        &self,
        id: &TypeInstanceId,
        head: &Head,
        tag: &str,
    ) -> Result<Option<String>> {
        self.enter().await?;
        let v = self.next_version();
        let out = {
            let mut c = self.lock();
            match c.heads.get_mut(id.as_str()) {
                Some(entry) if entry.1 == parse_tag(tag) => {
                    *entry = (head.clone(), v);
                    Some(v.to_string())
                }
                _ => None,
            }
        };
        self.shuffle().await;
        Ok(out)
    }

    async fn remove_head(&self, id: &TypeInstanceId, tag: &str) -> Result<()> {
        self.enter().await?;
        {
            let mut c = self.lock();
            let matches = c
                .heads
                .get(id.as_str())
                .is_some_and(|e| e.1 == parse_tag(tag));
            if matches || MODE != CONDITIONAL {
                c.heads.remove(id.as_str());
            }
        }
        self.shuffle().await;
        Ok(())
    }

    async fn read_revision(&self, at: Slot<'_>) -> Result<Option<Stored>> {
        self.enter().await?;
        let out = self
            .lock()
            .objects
            .get(&Self::key(&at))
            .map(|(b, e, v)| Stored {
                value: b.clone(),
                epoch: *e,
                tag: v.to_string(),
            });
        self.shuffle().await;
        Ok(out)
    }

    async fn write_revision(
        &self,
        at: Slot<'_>,
        value: &Value,
        epoch: u64,
        replace: Option<&str>,
    ) -> Result<bool> {
        self.enter().await?;
        let v = self.next_version();
        let out = {
            let mut c = self.lock();
            let key = Self::key(&at);
            let allowed = match (c.objects.get(&key), replace) {
                (None, None) => true,
                (Some(existing), Some(tag)) => existing.2 == parse_tag(tag),
                _ => false,
            };
            if allowed {
                c.objects
                    .insert(key, (Bytes::copy_from_slice(value.as_bytes()), epoch, v));
            }
            allowed
        };
        self.shuffle().await;
        Ok(out)
    }

    async fn remove_revision(&self, at: Slot<'_>) -> Result<()> {
        self.enter().await?;
        self.lock().objects.remove(&Self::key(&at));
        self.shuffle().await;
        Ok(())
    }

    async fn list_revisions(
        &self,
        id: &TypeInstanceId,
        life: &str,
        _upto: u32,
    ) -> Result<Vec<u32>> {
        self.enter().await?;
        let out = self
            .lock()
            .objects
            .keys()
            .filter(|(i, g, _)| i == id.as_str() && g == life)
            .map(|(_, _, r)| *r)
            .collect();
        self.shuffle().await;
        Ok(out)
    }
}
