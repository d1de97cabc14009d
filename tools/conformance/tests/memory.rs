//! The suite against an in-memory backend that keeps the contract, and
//! against deliberately broken variants: each major rule must be caught.
//! The in-memory backend lives here only; it is not a shipped service.

mod support;

use std::sync::Arc;

use conformance::{Connect, Target};
use serde_json::{Value as Json, json};
use shared::{Error, Value};
use support::{Flaw, Memory, start};

async fn run_suite(url: &str, context: Option<Json>) -> conformance::Report {
    let target = Target::connect(&Connect::plain(url), context)
        .await
        .expect("connect");
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
        assert!(
            failures.contains(case),
            "case {case} did not fail; failures: {failures:?}"
        );
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
        &[
            "lifecycle_create_update_read_each_revision_delete",
            "get_missing_revision_is_not_found",
        ],
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
        &[
            "retried_create_with_same_bytes_succeeds",
            "retried_update_with_same_bytes_succeeds",
        ],
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
        &[
            "delete_removes_every_revision_and_the_lock",
            "deleting_last_revision_removes_type_instance",
        ],
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
        &[
            "non_utf8_value_round_trips_byte_exact",
            "value_at_size_limit_round_trips",
        ],
    );
}

mod naive {
    //! A server without the shared adapter's input rules, like the reference
    //! implementations: the suite must catch every missing rule.
    use super::*;
    use bytes::Bytes;
    use shared::proto::{
        info::{
            DescribeRequest, DescribeResponse,
            backend_info_server::{BackendInfo, BackendInfoServer},
        },
        storage_backend::{
            self as pb,
            value_and_context_storage_backend_server::{
                ValueAndContextStorageBackend, ValueAndContextStorageBackendServer,
            },
        },
    };
    use tonic::{Request, Response, Status};

    pub struct Naive(pub Arc<Memory>);

    fn st(e: Error) -> Status {
        e.to_status("naive")
    }

    #[tonic::async_trait]
    impl ValueAndContextStorageBackend for Naive {
        async fn get_value(
            &self,
            r: Request<pb::GetValueRequest>,
        ) -> Result<Response<pb::GetValueResponse>, Status> {
            let r = r.into_inner();
            let v = self
                .0
                .get(&r.type_instance_id, r.resource_version)
                .await
                .map_err(st)?;
            Ok(Response::new(pb::GetValueResponse {
                value: Some(v.into_bytes()),
            }))
        }
        async fn on_create(
            &self,
            r: Request<pb::OnCreateValueAndContextRequest>,
        ) -> Result<Response<pb::OnCreateResponse>, Status> {
            let r = r.into_inner();
            self.0
                .create(&r.type_instance_id, Value::new(r.value))
                .await
                .map_err(st)?;
            Ok(Response::new(pb::OnCreateResponse { context: None }))
        }
        async fn on_update(
            &self,
            r: Request<pb::OnUpdateValueAndContextRequest>,
        ) -> Result<Response<pb::OnUpdateResponse>, Status> {
            let r = r.into_inner();
            self.0
                .update(
                    &r.type_instance_id,
                    r.new_resource_version,
                    Value::new(r.new_value),
                    r.owner_id.as_deref(),
                )
                .await
                .map_err(st)?;
            Ok(Response::new(pb::OnUpdateResponse { context: None }))
        }
        async fn on_delete(
            &self,
            r: Request<pb::OnDeleteValueAndContextRequest>,
        ) -> Result<Response<pb::OnDeleteResponse>, Status> {
            let r = r.into_inner();
            self.0
                .delete(&r.type_instance_id, r.owner_id.as_deref())
                .await
                .map_err(st)?;
            Ok(Response::new(pb::OnDeleteResponse {}))
        }
        async fn on_delete_revision(
            &self,
            r: Request<pb::OnDeleteRevisionValueAndContextRequest>,
        ) -> Result<Response<pb::OnDeleteRevisionResponse>, Status> {
            let r = r.into_inner();
            self.0
                .delete_revision(
                    &r.type_instance_id,
                    r.resource_version,
                    r.owner_id.as_deref(),
                )
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
        async fn on_lock(
            &self,
            r: Request<pb::OnLockRequest>,
        ) -> Result<Response<pb::OnLockResponse>, Status> {
            let r = r.into_inner();
            self.0
                .lock(&r.type_instance_id, &r.locked_by)
                .await
                .map_err(st)?;
            Ok(Response::new(pb::OnLockResponse {}))
        }
        async fn on_unlock(
            &self,
            r: Request<pb::OnUnlockRequest>,
        ) -> Result<Response<pb::OnUnlockResponse>, Status> {
            let r = r.into_inner();
            self.0.unlock(&r.type_instance_id).await.map_err(st)?;
            Ok(Response::new(pb::OnUnlockResponse {}))
        }
    }

    struct Info;

    #[tonic::async_trait]
    impl BackendInfo for Info {
        async fn describe(
            &self,
            _: Request<DescribeRequest>,
        ) -> Result<Response<DescribeResponse>, Status> {
            Ok(Response::new(DescribeResponse {
                name: "naive".into(),
                version: "test".into(),
                accept_value: true,
                context_schema: json!({"type": "object", "additionalProperties": false})
                    .to_string(),
                max_value_bytes: 1024,
                context_required: false,
            }))
        }
    }

    pub async fn start() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
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
