//! Test-only backends and server harness shared by the integration tests.
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use clap::Parser;
use serde_json::{Value as Json, json};
use shared::{
    Backend, Context, ContextBackend, Describe, Error, Owner, Result, Revision, TypeInstanceId,
    Value, ValueBackend, config::ServerConfig,
};
use tokio::sync::Mutex;

/// A way to break the contract, one rule at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flaw {
    GetReturnsLatest,
    IgnoresLock,
    OverwritesRevision,
    RacyUpdate,
    RacyLock,
    RetriesNotIdempotent,
    LockTakeover,
    DeleteKeepsLock,
    AcceptsOlderRevision,
    LossyValue,
}

#[derive(Default)]
struct Entry {
    revisions: BTreeMap<u32, Value>,
    lock: Option<String>,
}

pub struct Memory {
    data: Mutex<HashMap<String, Entry>>,
    flaw: Option<Flaw>,
    pub accept_value: bool,
    /// Probe result, for health tests.
    pub healthy: AtomicBool,
    /// Delay before every read, for deadline tests.
    pub read_delay: Duration,
    /// The probe never answers (a silent store), for readiness tests.
    pub probe_hangs: AtomicBool,
}

impl Memory {
    pub fn new(flaw: Option<Flaw>) -> Self {
        Self {
            data: Mutex::new(HashMap::new()),
            flaw,
            accept_value: true,
            healthy: AtomicBool::new(true),
            read_delay: Duration::ZERO,
            probe_hangs: AtomicBool::new(false),
        }
    }

    fn has(&self, f: Flaw) -> bool {
        self.flaw == Some(f)
    }

    fn check_owner(&self, e: &Entry, id: &str, owner: Option<&str>) -> Result<()> {
        match &e.lock {
            Some(holder) if Some(holder.as_str()) != owner && !self.has(Flaw::IgnoresLock) => Err(
                Error::failed_precondition(format!("type instance {id} is locked by {holder}")),
            ),
            _ => Ok(()),
        }
    }

    pub async fn get(&self, id: &str, rev: u32) -> Result<Value> {
        if !self.read_delay.is_zero() {
            tokio::time::sleep(self.read_delay).await;
        }
        let data = self.data.lock().await;
        let e = data.get(id).ok_or_else(|| {
            Error::not_found(format!(
                "TypeInstance \"{id}\" in revision {rev} was not found"
            ))
        })?;
        let v = if self.has(Flaw::GetReturnsLatest) {
            e.revisions.values().next_back()
        } else {
            e.revisions.get(&rev)
        };
        v.cloned().ok_or_else(|| {
            Error::not_found(format!(
                "TypeInstance \"{id}\" in revision {rev} was not found"
            ))
        })
    }

    pub async fn create(&self, id: &str, value: Value) -> Result<()> {
        let value = self.mangle(value);
        let mut data = self.data.lock().await;
        if let Some(e) = data.get(id) {
            let same = e.revisions.len() == 1 && e.revisions.get(&1) == Some(&value);
            if same && !self.has(Flaw::RetriesNotIdempotent) {
                return Ok(());
            }
            return Err(Error::already_exists(format!(
                "type instance {id} already exists"
            )));
        }
        let mut e = Entry::default();
        e.revisions.insert(1, value);
        data.insert(id.to_owned(), e);
        Ok(())
    }

    fn mangle(&self, value: Value) -> Value {
        if self.has(Flaw::LossyValue) {
            Value::new(
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into_bytes(),
            )
        } else {
            value
        }
    }

    pub async fn update(
        &self,
        id: &str,
        rev: u32,
        value: Value,
        owner: Option<&str>,
    ) -> Result<()> {
        let value = self.mangle(value);
        let mut data = self.data.lock().await;
        let e = data
            .get(id)
            .ok_or_else(|| Error::not_found(format!("TypeInstance \"{id}\" was not found")))?;
        if let Some(existing) = e.revisions.get(&rev)
            && !self.has(Flaw::OverwritesRevision)
        {
            if *existing == value && !self.has(Flaw::RetriesNotIdempotent) {
                return Ok(());
            }
            return Err(Error::already_exists(format!(
                "revision {rev} of type instance {id} already exists"
            )));
        }
        self.check_owner(e, id, owner)?;
        let latest = e.revisions.keys().next_back().copied().unwrap_or(0);
        if rev <= latest
            && !self.has(Flaw::AcceptsOlderRevision)
            && !self.has(Flaw::OverwritesRevision)
        {
            return Err(Error::failed_precondition(format!(
                "revision {rev} of type instance {id} is not above the latest revision {latest}"
            )));
        }
        if self.has(Flaw::RacyUpdate) {
            // Check-then-act across an await: the classic lost update.
            drop(data);
            tokio::time::sleep(Duration::from_millis(20)).await;
            data = self.data.lock().await;
        }
        if let Some(e) = data.get_mut(id) {
            e.revisions.insert(rev, value);
        }
        Ok(())
    }

    pub async fn delete(&self, id: &str, owner: Option<&str>) -> Result<()> {
        let mut data = self.data.lock().await;
        let e = data
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("TypeInstance \"{id}\" was not found")))?;
        self.check_owner(e, id, owner)?;
        if self.has(Flaw::DeleteKeepsLock) {
            e.revisions.clear();
            e.revisions.insert(0, Value::default());
            return Ok(());
        }
        data.remove(id);
        Ok(())
    }

    pub async fn delete_revision(&self, id: &str, rev: u32, owner: Option<&str>) -> Result<()> {
        let mut data = self.data.lock().await;
        let e = data
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("TypeInstance \"{id}\" was not found")))?;
        self.check_owner(e, id, owner)?;
        if e.revisions.remove(&rev).is_none() {
            return Err(Error::not_found(format!(
                "TypeInstance \"{id}\" in revision {rev} was not found"
            )));
        }
        if e.revisions.is_empty() && !self.has(Flaw::DeleteKeepsLock) {
            data.remove(id);
        }
        Ok(())
    }

    pub async fn locked_by(&self, id: &str) -> Result<Option<String>> {
        let data = self.data.lock().await;
        let e = data
            .get(id)
            .ok_or_else(|| Error::not_found(format!("TypeInstance \"{id}\" was not found")))?;
        Ok(e.lock.clone())
    }

    pub async fn lock(&self, id: &str, owner: &str) -> Result<()> {
        let mut data = self.data.lock().await;
        let e = data
            .get(id)
            .ok_or_else(|| Error::not_found(format!("TypeInstance \"{id}\" was not found")))?;
        match &e.lock {
            Some(h) if h == owner => return Ok(()),
            Some(h) if !self.has(Flaw::LockTakeover) => {
                return Err(Error::failed_precondition(format!(
                    "type instance {id} is locked by {h}"
                )));
            }
            _ => {}
        }
        if self.has(Flaw::RacyLock) {
            drop(data);
            tokio::time::sleep(Duration::from_millis(20)).await;
            data = self.data.lock().await;
        }
        if let Some(e) = data.get_mut(id) {
            e.lock = Some(owner.to_owned());
        }
        Ok(())
    }

    pub async fn unlock(&self, id: &str) -> Result<()> {
        let mut data = self.data.lock().await;
        let e = data
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("TypeInstance \"{id}\" was not found")))?;
        e.lock = None;
        Ok(())
    }
}

#[async_trait]
impl Backend for Memory {
    fn describe(&self) -> Describe {
        Describe {
            name: "memory",
            version: "test",
            accept_value: self.accept_value,
            context_schema: Some(json!({
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "additionalProperties": false
            })),
            context_required: !self.accept_value,
            max_value_bytes: 1 << 20,
        }
    }

    async fn probe(&self) -> Result<()> {
        if self.probe_hangs.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.healthy.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::unavailable("memory store is switched off"))
        }
    }

    async fn get_value(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        _ctx: &Context,
    ) -> Result<Value> {
        self.get(id.as_str(), revision.get()).await
    }

    async fn get_locked_by(&self, id: &TypeInstanceId, _ctx: &Context) -> Result<Option<Owner>> {
        self.locked_by(id.as_str())
            .await?
            .map(|o| Owner::parse(&o))
            .transpose()
    }

    async fn lock(&self, id: &TypeInstanceId, _ctx: &Context, owner: &Owner) -> Result<()> {
        Memory::lock(self, id.as_str(), owner.as_str()).await
    }

    async fn unlock(&self, id: &TypeInstanceId, _ctx: &Context) -> Result<()> {
        Memory::unlock(self, id.as_str()).await
    }
}

#[async_trait]
impl ValueBackend for Memory {
    async fn create(
        &self,
        id: &TypeInstanceId,
        value: Value,
        _ctx: &Context,
    ) -> Result<Option<Json>> {
        Memory::create(self, id.as_str(), value)
            .await
            .map(|()| None)
    }

    async fn update(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        value: Value,
        _ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<Option<Json>> {
        Memory::update(
            self,
            id.as_str(),
            revision.get(),
            value,
            owner.map(Owner::as_str),
        )
        .await
        .map(|()| None)
    }

    async fn delete(
        &self,
        id: &TypeInstanceId,
        _ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<()> {
        Memory::delete(self, id.as_str(), owner.map(Owner::as_str)).await
    }

    async fn delete_revision(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        _ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<()> {
        Memory::delete_revision(self, id.as_str(), revision.get(), owner.map(Owner::as_str)).await
    }
}

/// A context backend: the "external" value is a snapshot of the context
/// taken at each revision.
fn snapshot(ctx: &Context, revision: u32) -> Value {
    let name = ctx.str("name").unwrap_or_default();
    Value::new(
        json!({"name": name, "revision": revision})
            .to_string()
            .into_bytes(),
    )
}

#[async_trait]
impl ContextBackend for Memory {
    async fn pre_create_value(&self, ctx: &Context) -> Result<Option<Value>> {
        Ok(Some(snapshot(ctx, 0)))
    }

    async fn create(&self, id: &TypeInstanceId, ctx: &Context) -> Result<Option<Json>> {
        Memory::create(self, id.as_str(), snapshot(ctx, 1))
            .await
            .map(|()| None)
    }

    async fn update(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<Option<Json>> {
        let v = snapshot(ctx, revision.get());
        Memory::update(
            self,
            id.as_str(),
            revision.get(),
            v,
            owner.map(Owner::as_str),
        )
        .await
        .map(|()| None)
    }

    async fn delete(
        &self,
        id: &TypeInstanceId,
        _ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<()> {
        Memory::delete(self, id.as_str(), owner.map(Owner::as_str)).await
    }

    async fn delete_revision(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        owner: Option<&Owner>,
    ) -> Result<()> {
        Memory::delete_revision(self, id.as_str(), revision.get(), owner.map(Owner::as_str)).await
    }
}

// ---- harness ----

#[derive(Parser)]
#[command(args_override_self = true)]
struct Cli {
    #[command(flatten)]
    server: ServerConfig,
}

pub fn server_config(extra: &[&str]) -> ServerConfig {
    let mut args = vec!["test", "--metrics-addr", "off", "--health-interval", "1s"];
    args.extend_from_slice(extra);
    Cli::parse_from(args).server
}

pub struct Running {
    pub url: String,
    pub done: Option<tokio::task::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Running {
    /// Triggers graceful shutdown.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub async fn start(backend: Memory) -> Running {
    start_with(backend, &[]).await
}

pub async fn start_with(backend: Memory, extra: &[&str]) -> Running {
    start_shared(Arc::new(backend), extra).await
}

/// Starts a backend the test keeps a handle to (to flip its health, say);
/// the service kind follows `accept_value`.
pub async fn start_shared(backend: Arc<Memory>, extra: &[&str]) -> Running {
    start_on(backend, extra, "127.0.0.1:0").await
}

/// [`start_shared`] listening on `addr` (`[::1]:0` for IPv6).
pub async fn start_on(backend: Arc<Memory>, extra: &[&str], addr: &str) -> Running {
    let cfg = server_config(extra);
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done = tokio::spawn(async move {
        let stop = async {
            let _ = rx.await;
        };
        let result = if backend.accept_value {
            shared::server::run_value(backend, &cfg, listener, stop).await
        } else {
            shared::server::run_context(backend, &cfg, listener, stop).await
        };
        result.expect("server runs");
    });
    Running {
        url,
        stop: Some(tx),
        done: Some(done),
    }
}
