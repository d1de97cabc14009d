//! gRPC adapters: the Hub's two services and `BackendInfo` on top of a backend.
//!
//! Each RPC validates its inputs with [`Rules`], calls the backend under the
//! request deadline, maps the error through [`Error::to_status`], and records
//! one log line and one metric sample. This is the only place a request
//! becomes a response.

use std::{future::Future, sync::Arc, time::Duration};

use serde_json::Value as Json;
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::Instrument;

use crate::{
    Backend, ContextBackend, Describe, Error, Result, TypeInstanceId, ValueBackend,
    proto::{
        info::{DescribeRequest, DescribeResponse, backend_info_server::BackendInfo},
        storage_backend::{
            self as pb, context_storage_backend_server::ContextStorageBackend,
            value_and_context_storage_backend_server::ValueAndContextStorageBackend,
        },
    },
    validate::Rules,
};

/// Per-process settings of the adapters.
#[derive(Clone, Debug)]
pub struct AdapterOptions {
    /// Upper bound for one request; a shorter `grpc-timeout` from the caller wins.
    pub request_timeout: Duration,
    /// Budget of one request's store calls and retries: when it runs out
    /// the answer is UNAVAILABLE naming the step (a caller's shorter
    /// deadline still gives DEADLINE_EXCEEDED).
    pub store_deadline: Duration,
    /// Configured value limit; the backend's own limit may be lower.
    pub max_value_bytes: u64,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            store_deadline: Duration::from_secs(15),
            max_value_bytes: 1 << 20,
        }
    }
}

/// A backend wrapped with its rules and metrics; serves either service kind.
pub struct Adapter<B> {
    backend: Arc<B>,
    describe: Describe,
    rules: Rules,
    timeout: Duration,
    store_deadline: Duration,
}

/// Which bound ends a request: the caller's (or the request timeout), or
/// the store's budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    pub after: Duration,
    pub store: bool,
}

impl<B: Backend> Adapter<B> {
    pub fn new(backend: Arc<B>, options: &AdapterOptions) -> Result<Self> {
        let describe = backend.describe();
        let rules = Rules::new(&describe, options.max_value_bytes)?;
        Ok(Self {
            backend,
            describe,
            rules,
            timeout: options.request_timeout,
            store_deadline: options.store_deadline,
        })
    }

    pub fn describe(&self) -> &Describe {
        &self.describe
    }

    /// The effective value limit (configured and store limit combined).
    pub fn max_value_bytes(&self) -> u64 {
        self.rules.max_value_bytes()
    }

    fn deadline(&self, meta: &MetadataMap) -> Deadline {
        let caller = meta
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map_or(self.timeout, |d| d.min(self.timeout));
        if self.store_deadline < caller {
            Deadline {
                after: self.store_deadline,
                store: true,
            }
        } else {
            Deadline {
                after: caller,
                store: false,
            }
        }
    }

    /// Runs one RPC: deadline, status mapping, log line, metrics.
    async fn run<T>(
        &self,
        method: &'static str,
        raw_id: &str,
        revision: Option<u32>,
        deadline: Deadline,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<Response<T>, Status> {
        // Only a valid id is logged: an invalid one may hold anything.
        let id = if TypeInstanceId::parse(raw_id).is_ok() {
            raw_id
        } else {
            "<invalid>"
        };
        let span = tracing::info_span!("rpc", method, id, revision);
        let start = std::time::Instant::now();
        let result = match tokio::time::timeout(deadline.after, fut.instrument(span.clone())).await
        {
            Ok(r) => r,
            Err(_) if deadline.store => Err(Error::unavailable(format!(
                "{} did not answer within {} while {}",
                self.describe.name,
                humantime::format_duration(deadline.after),
                step(method, id, revision)
            ))),
            Err(_) => Err(Error::deadline_exceeded(format!(
                "{method} did not finish within {}",
                humantime::format_duration(deadline.after)
            ))),
        };
        let elapsed = start.elapsed();
        let backend = self.describe.name;
        let _enter = span.enter();
        match result {
            Ok(resp) => {
                crate::metrics::observe_request(method, tonic::Code::Ok, elapsed);
                tracing::debug!(elapsed_ms = elapsed.as_millis() as u64, "ok");
                Ok(Response::new(resp))
            }
            Err(err) => {
                let code = err.code();
                crate::metrics::observe_request(method, code, elapsed);
                if err.kind().is_server_side() {
                    tracing::warn!(?code, error = %err.detail(), "failed");
                } else {
                    tracing::debug!(?code, error = %err.message(), "refused");
                }
                Err(err.to_status(backend))
            }
        }
    }

    async fn get_value(
        &self,
        req: Request<pb::GetValueRequest>,
    ) -> Result<Response<pb::GetValueResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let r = req.into_inner();
        self.run(
            "GetValue",
            &r.type_instance_id,
            Some(r.resource_version),
            deadline,
            async {
                let id = self.rules.id(&r.type_instance_id)?;
                let revision = self.rules.revision(r.resource_version)?;
                let ctx = self.rules.context(Some(&r.context))?;
                let value = self.backend.get_value(&id, revision, &ctx).await?;
                Ok(pb::GetValueResponse {
                    value: Some(value.into_bytes()),
                })
            },
        )
        .await
    }

    async fn get_locked_by(
        &self,
        req: Request<pb::GetLockedByRequest>,
    ) -> Result<Response<pb::GetLockedByResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let r = req.into_inner();
        self.run("GetLockedBy", &r.type_instance_id, None, deadline, async {
            let id = self.rules.id(&r.type_instance_id)?;
            let ctx = self.rules.context(Some(&r.context))?;
            let owner = self.backend.get_locked_by(&id, &ctx).await?;
            Ok(pb::GetLockedByResponse {
                locked_by: owner.map(|o| o.as_str().to_owned()),
            })
        })
        .await
    }

    async fn lock(
        &self,
        req: Request<pb::OnLockRequest>,
    ) -> Result<Response<pb::OnLockResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let r = req.into_inner();
        self.run("OnLock", &r.type_instance_id, None, deadline, async {
            let id = self.rules.id(&r.type_instance_id)?;
            let ctx = self.rules.context(Some(&r.context))?;
            let owner = crate::Owner::parse(&r.locked_by)?;
            self.backend.lock(&id, &ctx, &owner).await?;
            Ok(pb::OnLockResponse {})
        })
        .await
    }

    async fn unlock(
        &self,
        req: Request<pb::OnUnlockRequest>,
    ) -> Result<Response<pb::OnUnlockResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let r = req.into_inner();
        self.run("OnUnlock", &r.type_instance_id, None, deadline, async {
            let id = self.rules.id(&r.type_instance_id)?;
            let ctx = self.rules.context(Some(&r.context))?;
            self.backend.unlock(&id, &ctx).await?;
            Ok(pb::OnUnlockResponse {})
        })
        .await
    }
}

fn context_bytes(ctx: Option<Json>) -> Option<bytes::Bytes> {
    // serde_json cannot fail to serialize a `Value`.
    ctx.map(|c| bytes::Bytes::from(c.to_string()))
}

#[tonic::async_trait]
impl<B: ValueBackend> ValueAndContextStorageBackend for Adapter<B> {
    async fn get_value(
        &self,
        req: Request<pb::GetValueRequest>,
    ) -> Result<Response<pb::GetValueResponse>, Status> {
        Adapter::get_value(self, req).await
    }

    async fn on_create(
        &self,
        req: Request<pb::OnCreateValueAndContextRequest>,
    ) -> Result<Response<pb::OnCreateResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let r = req.into_inner();
        self.run("OnCreate", &r.type_instance_id, Some(1), deadline, async {
            let id = self.rules.id(&r.type_instance_id)?;
            let ctx = self.rules.context(r.context.as_deref())?;
            let value = self.rules.value(r.value)?;
            let out = self.backend.create(&id, value, &ctx).await?;
            Ok(pb::OnCreateResponse {
                context: context_bytes(out),
            })
        })
        .await
    }

    async fn on_update(
        &self,
        req: Request<pb::OnUpdateValueAndContextRequest>,
    ) -> Result<Response<pb::OnUpdateResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let r = req.into_inner();
        self.run(
            "OnUpdate",
            &r.type_instance_id,
            Some(r.new_resource_version),
            deadline,
            async {
                let id = self.rules.id(&r.type_instance_id)?;
                let revision = self.rules.revision(r.new_resource_version)?;
                let ctx = self.rules.context(r.context.as_deref())?;
                let owner = self.rules.owner(r.owner_id.as_deref())?;
                let value = self.rules.value(r.new_value)?;
                let out = self
                    .backend
                    .update(&id, revision, value, &ctx, owner.as_ref())
                    .await?;
                Ok(pb::OnUpdateResponse {
                    context: context_bytes(out),
                })
            },
        )
        .await
    }

    async fn on_delete(
        &self,
        req: Request<pb::OnDeleteValueAndContextRequest>,
    ) -> Result<Response<pb::OnDeleteResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let r = req.into_inner();
        self.run("OnDelete", &r.type_instance_id, None, deadline, async {
            let id = self.rules.id(&r.type_instance_id)?;
            let ctx = self.rules.context(r.context.as_deref())?;
            let owner = self.rules.owner(r.owner_id.as_deref())?;
            self.backend.delete(&id, &ctx, owner.as_ref()).await?;
            Ok(pb::OnDeleteResponse {})
        })
        .await
    }

    async fn on_delete_revision(
        &self,
        req: Request<pb::OnDeleteRevisionValueAndContextRequest>,
    ) -> Result<Response<pb::OnDeleteRevisionResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let r = req.into_inner();
        self.run(
            "OnDeleteRevision",
            &r.type_instance_id,
            Some(r.resource_version),
            deadline,
            async {
                let id = self.rules.id(&r.type_instance_id)?;
                let revision = self.rules.revision(r.resource_version)?;
                let ctx = self.rules.context(r.context.as_deref())?;
                let owner = self.rules.owner(r.owner_id.as_deref())?;
                self.backend
                    .delete_revision(&id, revision, &ctx, owner.as_ref())
                    .await?;
                Ok(pb::OnDeleteRevisionResponse {})
            },
        )
        .await
    }

    async fn get_locked_by(
        &self,
        req: Request<pb::GetLockedByRequest>,
    ) -> Result<Response<pb::GetLockedByResponse>, Status> {
        Adapter::get_locked_by(self, req).await
    }

    async fn on_lock(
        &self,
        req: Request<pb::OnLockRequest>,
    ) -> Result<Response<pb::OnLockResponse>, Status> {
        Adapter::lock(self, req).await
    }

    async fn on_unlock(
        &self,
        req: Request<pb::OnUnlockRequest>,
    ) -> Result<Response<pb::OnUnlockResponse>, Status> {
        Adapter::unlock(self, req).await
    }
}

#[tonic::async_trait]
impl<B: ContextBackend> ContextStorageBackend for Adapter<B> {
    async fn get_pre_create_value(
        &self,
        req: Request<pb::GetPreCreateValueRequest>,
    ) -> Result<Response<pb::GetPreCreateValueResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let r = req.into_inner();
        self.run("GetPreCreateValue", "", None, deadline, async {
            let ctx = self.rules.context(Some(&r.context))?;
            let value = self.backend.pre_create_value(&ctx).await?;
            Ok(pb::GetPreCreateValueResponse {
                value: value.map(crate::Value::into_bytes),
            })
        })
        .await
    }

    async fn get_value(
        &self,
        req: Request<pb::GetValueRequest>,
    ) -> Result<Response<pb::GetValueResponse>, Status> {
        Adapter::get_value(self, req).await
    }

    async fn on_create(
        &self,
        req: Request<pb::OnCreateRequest>,
    ) -> Result<Response<pb::OnCreateResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let r = req.into_inner();
        self.run("OnCreate", &r.type_instance_id, Some(1), deadline, async {
            let id = self.rules.id(&r.type_instance_id)?;
            let ctx = self.rules.context(Some(&r.context))?;
            let out = self.backend.create(&id, &ctx).await?;
            Ok(pb::OnCreateResponse {
                context: context_bytes(out),
            })
        })
        .await
    }

    async fn on_update(
        &self,
        req: Request<pb::OnUpdateRequest>,
    ) -> Result<Response<pb::OnUpdateResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let r = req.into_inner();
        self.run(
            "OnUpdate",
            &r.type_instance_id,
            Some(r.new_resource_version),
            deadline,
            async {
                let id = self.rules.id(&r.type_instance_id)?;
                let revision = self.rules.revision(r.new_resource_version)?;
                let ctx = self.rules.context(Some(&r.context))?;
                let owner = self.rules.owner(r.owner_id.as_deref())?;
                let out = self
                    .backend
                    .update(&id, revision, &ctx, owner.as_ref())
                    .await?;
                Ok(pb::OnUpdateResponse {
                    context: context_bytes(out),
                })
            },
        )
        .await
    }

    async fn on_delete(
        &self,
        req: Request<pb::OnDeleteRequest>,
    ) -> Result<Response<pb::OnDeleteResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let r = req.into_inner();
        self.run("OnDelete", &r.type_instance_id, None, deadline, async {
            let id = self.rules.id(&r.type_instance_id)?;
            let ctx = self.rules.context(Some(&r.context))?;
            let owner = self.rules.owner(r.owner_id.as_deref())?;
            self.backend.delete(&id, &ctx, owner.as_ref()).await?;
            Ok(pb::OnDeleteResponse {})
        })
        .await
    }

    async fn on_delete_revision(
        &self,
        req: Request<pb::OnDeleteRevisionRequest>,
    ) -> Result<Response<pb::OnDeleteRevisionResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let r = req.into_inner();
        self.run(
            "OnDeleteRevision",
            &r.type_instance_id,
            Some(r.resource_version),
            deadline,
            async {
                let id = self.rules.id(&r.type_instance_id)?;
                let revision = self.rules.revision(r.resource_version)?;
                let owner = self.rules.owner(r.owner_id.as_deref())?;
                self.backend
                    .delete_revision(&id, revision, owner.as_ref())
                    .await?;
                Ok(pb::OnDeleteRevisionResponse {})
            },
        )
        .await
    }

    async fn get_locked_by(
        &self,
        req: Request<pb::GetLockedByRequest>,
    ) -> Result<Response<pb::GetLockedByResponse>, Status> {
        Adapter::get_locked_by(self, req).await
    }

    async fn on_lock(
        &self,
        req: Request<pb::OnLockRequest>,
    ) -> Result<Response<pb::OnLockResponse>, Status> {
        Adapter::lock(self, req).await
    }

    async fn on_unlock(
        &self,
        req: Request<pb::OnUnlockRequest>,
    ) -> Result<Response<pb::OnUnlockResponse>, Status> {
        Adapter::unlock(self, req).await
    }
}

/// Serves [`Describe`] over `capact_storage.info.v1.BackendInfo`.
pub struct Info {
    response: DescribeResponse,
}

impl Info {
    pub fn new(describe: &Describe, effective_max_value_bytes: u64) -> Self {
        Self {
            response: DescribeResponse {
                name: describe.name.to_owned(),
                version: describe.version.to_owned(),
                accept_value: describe.accept_value,
                context_schema: describe
                    .context_schema
                    .as_ref()
                    .map(Json::to_string)
                    .unwrap_or_default(),
                max_value_bytes: effective_max_value_bytes,
                context_required: describe.context_required,
            },
        }
    }
}

#[tonic::async_trait]
impl BackendInfo for Info {
    async fn describe(
        &self,
        _req: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        Ok(Response::new(self.response.clone()))
    }
}

/// What a request was doing, for the message of a store that went silent.
fn step(method: &str, id: &str, revision: Option<u32>) -> String {
    let rev = |what: &str| match revision {
        Some(r) => format!("{what} revision {r} of type instance {id}"),
        None => format!("{what} type instance {id}"),
    };
    match method {
        "GetValue" => rev("reading"),
        "OnCreate" | "OnUpdate" => rev("writing"),
        "OnDeleteRevision" => rev("deleting"),
        "OnDelete" => format!("deleting type instance {id}"),
        "OnLock" => format!("locking type instance {id}"),
        "OnUnlock" => format!("unlocking type instance {id}"),
        "GetLockedBy" => format!("reading the lock of type instance {id}"),
        other => format!("serving {other} for type instance {id}"),
    }
}
fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_parses_every_unit() {
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    struct Nothing;

    #[async_trait::async_trait]
    impl Backend for Nothing {
        fn describe(&self) -> Describe {
            Describe {
                name: "nothing",
                version: "0",
                accept_value: true,
                context_schema: None,
                context_required: false,
                max_value_bytes: 1,
            }
        }
        async fn probe(&self) -> Result<()> {
            Ok(())
        }
        async fn get_value(
            &self,
            _: &TypeInstanceId,
            _: crate::Revision,
            _: &crate::Context,
        ) -> Result<crate::Value> {
            Err(Error::unimplemented("nothing"))
        }
        async fn get_locked_by(
            &self,
            _: &TypeInstanceId,
            _: &crate::Context,
        ) -> Result<Option<crate::Owner>> {
            Ok(None)
        }
        async fn lock(
            &self,
            _: &TypeInstanceId,
            _: &crate::Context,
            _: &crate::Owner,
        ) -> Result<()> {
            Ok(())
        }
        async fn unlock(&self, _: &TypeInstanceId, _: &crate::Context) -> Result<()> {
            Ok(())
        }
    }

    fn adapter(request: u64, store: u64) -> Adapter<Nothing> {
        let options = AdapterOptions {
            request_timeout: Duration::from_millis(request),
            store_deadline: Duration::from_millis(store),
            max_value_bytes: 1,
        };
        Adapter::new(Arc::new(Nothing), &options).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn caller(timeout: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(t) = timeout {
            m.insert(
                "grpc-timeout",
                t.parse().unwrap_or_else(|e| panic!("{e:?}")),
            );
        }
        m
    }

    #[test]
    fn the_store_deadline_binds_unless_the_caller_or_the_request_timeout_is_shorter() {
        let a = adapter(30_000, 15_000);
        let store = |ms| Deadline {
            after: Duration::from_millis(ms),
            store: true,
        };
        let caller_side = |ms| Deadline {
            after: Duration::from_millis(ms),
            store: false,
        };
        assert_eq!(a.deadline(&caller(None)), store(15_000));
        assert_eq!(a.deadline(&caller(Some("20S"))), store(15_000));
        assert_eq!(a.deadline(&caller(Some("200m"))), caller_side(200));
        assert_eq!(
            adapter(100, 15_000).deadline(&caller(None)),
            caller_side(100)
        );
    }

    #[test]
    fn a_silent_store_is_described_by_the_step() {
        assert_eq!(
            step("OnUpdate", "ti", Some(3)),
            "writing revision 3 of type instance ti"
        );
        assert_eq!(step("OnLock", "ti", None), "locking type instance ti");
    }
}
