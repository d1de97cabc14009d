//! The suite against an in-memory backend that keeps the contract, and
//! against deliberately broken variants: each major rule must be caught.
//! The in-memory backend lives here only; it is not a shipped service.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use clap::Parser;
use conformance::{Connect, Target};
use serde_json::{Value as Json, json};
use shared::{
    Backend, Context, ContextBackend, Describe, Error, Owner, Result, Revision, TypeInstanceId, Value, ValueBackend,
    config::ServerConfig,
};
use tokio::sync::Mutex;

/// A way to break the contract, one rule at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flaw {
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

struct Memory {
    data: Mutex<HashMap<String, Entry>>,
    flaw: Option<Flaw>,
    accept_value: bool,
}

impl Memory {
    fn new(flaw: Option<Flaw>) -> Self {
        Self {
            data: Mutex::new(HashMap::new()),
            flaw,
            accept_value: true,
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

    async fn get(&self, id: &str, rev: u32) -> Result<Value> {
        let data = self.data.lock().await;
        let e = data.get(id).ok_or_else(|| Error::not_found(format!("type instance {id} not found")))?;
        let v = if self.has(Flaw::GetReturnsLatest) {
            e.revisions.values().next_back()
        } else {
            e.revisions.get(&rev)
        };
        v.cloned()
            .ok_or_else(|| Error::not_found(format!("revision {rev} of type instance {id} not found")))
    }

    async fn create(&self, id: &str, value: Value) -> Result<()> {
        let value = self.mangle(value);
        let mut data = self.data.lock().await;
        if let Some(e) = data.get(id) {
            let same = e.revisions.len() == 1 && e.revisions.get(&1) == Some(&value);
            if same && !self.has(Flaw::RetriesNotIdempotent) {
                return Ok(());
            }
            return Err(Error::already_exists(format!("type instance {id} already exists")));
        }
        let mut e = Entry::default();
        e.revisions.insert(1, value);
        data.insert(id.to_owned(), e);
        Ok(())
    }

    fn mangle(&self, value: Value) -> Value {
        if self.has(Flaw::LossyValue) {
            Value::new(String::from_utf8_lossy(value.as_bytes()).into_owned().into_bytes())
        } else {
            value
        }
    }

    async fn update(&self, id: &str, rev: u32, value: Value, owner: Option<&str>) -> Result<()> {
        let value = self.mangle(value);
        let mut data = self.data.lock().await;
        let e = data.get(id).ok_or_else(|| Error::not_found(format!("type instance {id} not found")))?;
        if let Some(existing) = e.revisions.get(&rev) {
            if !self.has(Flaw::OverwritesRevision) {
                if *existing == value && !self.has(Flaw::RetriesNotIdempotent) {
                    return Ok(());
                }
                return Err(Error::already_exists(format!("revision {rev} of type instance {id} already exists")));
            }
        }
        self.check_owner(e, id, owner)?;
        let latest = e.revisions.keys().next_back().copied().unwrap_or(0);
        if rev <= latest && !self.has(Flaw::AcceptsOlderRevision) && !self.has(Flaw::OverwritesRevision) {
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

    async fn delete(&self, id: &str, owner: Option<&str>) -> Result<()> {
        let mut data = self.data.lock().await;
        let e = data.get_mut(id).ok_or_else(|| Error::not_found(format!("type instance {id} not found")))?;
        self.check_owner(e, id, owner)?;
        if self.has(Flaw::DeleteKeepsLock) {
            e.revisions.clear();
            e.revisions.insert(0, Value::default());
            return Ok(());
        }
        data.remove(id);
        Ok(())
    }

    async fn delete_revision(&self, id: &str, rev: u32, owner: Option<&str>) -> Result<()> {
        let mut data = self.data.lock().await;
        let e = data.get_mut(id).ok_or_else(|| Error::not_found(format!("type instance {id} not found")))?;
        self.check_owner(e, id, owner)?;
        if e.revisions.remove(&rev).is_none() {
            return Err(Error::not_found(format!("revision {rev} of type instance {id} not found")));
        }
        if e.revisions.is_empty() && !self.has(Flaw::DeleteKeepsLock) {
            data.remove(id);
        }
        Ok(())
    }

    async fn locked_by(&self, id: &str) -> Result<Option<String>> {
        let data = self.data.lock().await;
        let e = data.get(id).ok_or_else(|| Error::not_found(format!("type instance {id} not found")))?;
        Ok(e.lock.clone())
    }

    async fn lock(&self, id: &str, owner: &str) -> Result<()> {
        let mut data = self.data.lock().await;
        let e = data.get(id).ok_or_else(|| Error::not_found(format!("type instance {id} not found")))?;
        match &e.lock {
            Some(h) if h == owner => return Ok(()),
            Some(h) if !self.has(Flaw::LockTakeover) => {
                return Err(Error::failed_precondition(format!("type instance {id} is locked by {h}")));
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

    async fn unlock(&self, id: &str) -> Result<()> {
        let mut data = self.data.lock().await;
        let e = data.get_mut(id).ok_or_else(|| Error::not_found(format!("type instance {id} not found")))?;
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
        Ok(())
    }

    async fn get_value(&self, id: &TypeInstanceId, revision: Revision, _ctx: &Context) -> Result<Value> {
        self.get(id.as_str(), revision.get()).await
    }

    async fn get_locked_by(&self, id: &TypeInstanceId, _ctx: &Context) -> Result<Option<Owner>> {
        self.locked_by(id.as_str()).await?.map(|o| Owner::parse(&o)).transpose()
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
    async fn create(&self, id: &TypeInstanceId, value: Value, _ctx: &Context) -> Result<Option<Json>> {
        Memory::create(self, id.as_str(), value).await.map(|()| None)
    }

    async fn update(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        value: Value,
        _ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<Option<Json>> {
        Memory::update(self, id.as_str(), revision.get(), value, owner.map(Owner::as_str))
            .await
            .map(|()| None)
    }

    async fn delete(&self, id: &TypeInstanceId, _ctx: &Context, owner: Option<&Owner>) -> Result<()> {
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
    Value::new(json!({"name": name, "revision": revision}).to_string().into_bytes())
}

#[async_trait]
impl ContextBackend for Memory {
    async fn pre_create_value(&self, ctx: &Context) -> Result<Option<Value>> {
        Ok(Some(snapshot(ctx, 0)))
    }

    async fn create(&self, id: &TypeInstanceId, ctx: &Context) -> Result<Option<Json>> {
        Memory::create(self, id.as_str(), snapshot(ctx, 1)).await.map(|()| None)
    }

    async fn update(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<Option<Json>> {
        let v = snapshot(ctx, revision.get());
        Memory::update(self, id.as_str(), revision.get(), v, owner.map(Owner::as_str))
            .await
            .map(|()| None)
    }

    async fn delete(&self, id: &TypeInstanceId, _ctx: &Context, owner: Option<&Owner>) -> Result<()> {
        Memory::delete(self, id.as_str(), owner.map(Owner::as_str)).await
    }

    async fn delete_revision(&self, id: &TypeInstanceId, revision: Revision, owner: Option<&Owner>) -> Result<()> {
        Memory::delete_revision(self, id.as_str(), revision.get(), owner.map(Owner::as_str)).await
    }
}

// ---- harness ----

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    server: ServerConfig,
}

fn server_config() -> ServerConfig {
    Cli::parse_from(["test", "--metrics-addr", "off", "--health-interval", "1s"]).server
}

struct Running {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start(backend: Memory) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let backend = Arc::new(backend);
    tokio::spawn(async move {
        let cfg = server_config();
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
    Running { url, stop: Some(tx) }
}

async fn run_suite(url: &str, context: Option<Json>) -> conformance::Report {
    let target = Target::connect(&Connect::plain(url), context).await.expect("connect");
    conformance::run(Arc::new(target), None, |name, outcome| {
        println!("{}", conformance::line(name, outcome));
    })
    .await
}

async fn failures_with(flaw: Flaw) -> Vec<&'static str> {
    let server = start(Memory::new(Some(flaw))).await;
    run_suite(&server.url, None).await.failures()
}

fn assert_caught(failures: &[&str], expected: &[&str]) {
    for case in expected {
        assert!(failures.contains(case), "case {case} did not fail; failures: {failures:?}");
    }
}

// ---- the tests ----

#[tokio::test]
async fn memory_backend_passes_every_case() {
    let server = start(Memory::new(None)).await;
    let report = run_suite(&server.url, None).await;
    assert_eq!(report.failures(), Vec::<&str>::new());
    assert_eq!(report.skipped(), 0);
    assert!(report.passed() >= 40, "only {} cases ran", report.passed());
}

#[tokio::test]
async fn context_backend_passes_the_context_subset() {
    let mut backend = Memory::new(None);
    backend.accept_value = false;
    let server = start(backend).await;
    let report = run_suite(&server.url, Some(json!({"name": "release"}))).await;
    assert_eq!(report.failures(), Vec::<&str>::new());
    assert!(report.passed() >= 25, "only {} cases ran", report.passed());
}

#[tokio::test]
async fn suite_catches_get_returning_latest_instead_of_the_revision() {
    assert_caught(
        &failures_with(Flaw::GetReturnsLatest).await,
        &["lifecycle_create_update_read_each_revision_delete", "get_missing_revision_is_not_found"],
    );
}

#[tokio::test]
async fn suite_catches_writes_that_ignore_the_lock() {
    assert_caught(
        &failures_with(Flaw::IgnoresLock).await,
        &[
            "update_while_locked_by_other_owner_fails",
            "delete_while_locked_by_other_owner_fails",
            "delete_revision_while_locked_by_other_owner_fails",
        ],
    );
}

#[tokio::test]
async fn suite_catches_overwritten_revisions() {
    assert_caught(
        &failures_with(Flaw::OverwritesRevision).await,
        &["update_to_existing_revision_with_other_bytes_already_exists"],
    );
}

#[tokio::test]
async fn suite_catches_lost_updates_under_concurrency() {
    assert_caught(
        &failures_with(Flaw::RacyUpdate).await,
        &["concurrent_updates_to_same_revision_have_exactly_one_winner"],
    );
}

#[tokio::test]
async fn suite_catches_two_lock_winners_under_concurrency() {
    assert_caught(
        &failures_with(Flaw::RacyLock).await,
        &["concurrent_locks_by_different_owners_have_exactly_one_winner"],
    );
}

#[tokio::test]
async fn suite_catches_retries_that_are_not_idempotent() {
    assert_caught(
        &failures_with(Flaw::RetriesNotIdempotent).await,
        &["retried_create_with_same_bytes_succeeds", "retried_update_with_same_bytes_succeeds"],
    );
}

#[tokio::test]
async fn suite_catches_a_lock_taken_over_by_another_owner() {
    assert_caught(
        &failures_with(Flaw::LockTakeover).await,
        &["lock_by_other_owner_fails_naming_the_holder"],
    );
}

#[tokio::test]
async fn suite_catches_a_lock_that_outlives_its_type_instance() {
    assert_caught(
        &failures_with(Flaw::DeleteKeepsLock).await,
        &["delete_removes_every_revision_and_the_lock", "deleting_last_revision_removes_type_instance"],
    );
}

#[tokio::test]
async fn suite_catches_updates_below_the_latest_revision() {
    assert_caught(
        &failures_with(Flaw::AcceptsOlderRevision).await,
        &["update_to_revision_not_above_latest_fails_precondition"],
    );
}

#[tokio::test]
async fn suite_catches_values_that_do_not_round_trip_byte_exact() {
    assert_caught(
        &failures_with(Flaw::LossyValue).await,
        &["non_utf8_value_round_trips_byte_exact", "value_at_size_limit_round_trips"],
    );
}

mod naive {
    //! A server without the shared adapter's input rules, like the reference
    //! implementations: the suite must catch every missing rule.
    use super::*;
    use bytes::Bytes;
    use shared::proto::{
        info::{DescribeRequest, DescribeResponse, backend_info_server::{BackendInfo, BackendInfoServer}},
        storage_backend::{
            self as pb,
            value_and_context_storage_backend_server::{ValueAndContextStorageBackend, ValueAndContextStorageBackendServer},
        },
    };
    use tonic::{Request, Response, Status};

    pub struct Naive(pub Arc<Memory>);

    fn st(e: Error) -> Status {
        e.to_status("naive")
    }

    #[tonic::async_trait]
    impl ValueAndContextStorageBackend for Naive {
        async fn get_value(&self, r: Request<pb::GetValueRequest>) -> Result<Response<pb::GetValueResponse>, Status> {
            let r = r.into_inner();
            let v = self.0.get(&r.type_instance_id, r.resource_version).await.map_err(st)?;
            Ok(Response::new(pb::GetValueResponse { value: Some(v.into_bytes()) }))
        }
        async fn on_create(
            &self,
            r: Request<pb::OnCreateValueAndContextRequest>,
        ) -> Result<Response<pb::OnCreateResponse>, Status> {
            let r = r.into_inner();
            self.0.create(&r.type_instance_id, Value::new(r.value)).await.map_err(st)?;
            Ok(Response::new(pb::OnCreateResponse { context: None }))
        }
        async fn on_update(
            &self,
            r: Request<pb::OnUpdateValueAndContextRequest>,
        ) -> Result<Response<pb::OnUpdateResponse>, Status> {
            let r = r.into_inner();
            self.0
                .update(&r.type_instance_id, r.new_resource_version, Value::new(r.new_value), r.owner_id.as_deref())
                .await
                .map_err(st)?;
            Ok(Response::new(pb::OnUpdateResponse { context: None }))
        }
        async fn on_delete(
            &self,
            r: Request<pb::OnDeleteValueAndContextRequest>,
        ) -> Result<Response<pb::OnDeleteResponse>, Status> {
            let r = r.into_inner();
            self.0.delete(&r.type_instance_id, r.owner_id.as_deref()).await.map_err(st)?;
            Ok(Response::new(pb::OnDeleteResponse {}))
        }
        async fn on_delete_revision(
            &self,
            r: Request<pb::OnDeleteRevisionValueAndContextRequest>,
        ) -> Result<Response<pb::OnDeleteRevisionResponse>, Status> {
            let r = r.into_inner();
            self.0
                .delete_revision(&r.type_instance_id, r.resource_version, r.owner_id.as_deref())
                .await
                .map_err(st)?;
            Ok(Response::new(pb::OnDeleteRevisionResponse {}))
        }
        async fn get_locked_by(
            &self,
            r: Request<pb::GetLockedByRequest>,
        ) -> Result<Response<pb::GetLockedByResponse>, Status> {
            let r = r.into_inner();
            let o = self.0.locked_by(&r.type_instance_id).await.map_err(st)?;
            Ok(Response::new(pb::GetLockedByResponse { locked_by: o }))
        }
        async fn on_lock(&self, r: Request<pb::OnLockRequest>) -> Result<Response<pb::OnLockResponse>, Status> {
            let r = r.into_inner();
            self.0.lock(&r.type_instance_id, &r.locked_by).await.map_err(st)?;
            Ok(Response::new(pb::OnLockResponse {}))
        }
        async fn on_unlock(&self, r: Request<pb::OnUnlockRequest>) -> Result<Response<pb::OnUnlockResponse>, Status> {
            let r = r.into_inner();
            self.0.unlock(&r.type_instance_id).await.map_err(st)?;
            Ok(Response::new(pb::OnUnlockResponse {}))
        }
    }

    struct Info;

    #[tonic::async_trait]
    impl BackendInfo for Info {
        async fn describe(&self, _: Request<DescribeRequest>) -> Result<Response<DescribeResponse>, Status> {
            Ok(Response::new(DescribeResponse {
                name: "naive".into(),
                version: "test".into(),
                accept_value: true,
                context_schema: json!({"type": "object", "additionalProperties": false}).to_string(),
                max_value_bytes: 1024,
                context_required: false,
            }))
        }
    }

    pub async fn start() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let svc = Naive(Arc::new(Memory::new(None)));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(ValueAndContextStorageBackendServer::new(svc))
                .add_service(BackendInfoServer::new(Info))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("naive server runs");
        });
        let _ = Bytes::new();
        url
    }
}

#[tokio::test]
async fn suite_catches_missing_input_validation() {
    let url = naive::start().await;
    let failures = run_suite(&url, None).await.failures();
    assert_caught(
        &failures,
        &[
            "invalid_ids_are_rejected",
            "revision_zero_is_invalid",
            "context_that_is_not_an_object_is_invalid_and_nothing_is_stored",
            "context_against_the_schema_is_invalid",
            "value_over_size_limit_is_rejected_and_nothing_is_stored",
            "lock_with_empty_owner_is_invalid",
        ],
    );
}
