//! The two traits a backend implements, one per kind of service.
//!
//! Inputs arrive validated (see [`crate::validate`]): a well-formed id, a
//! revision ≥ 1, a context that passed the backend's schema, a value within the
//! size limit. The adapter in [`crate::grpc`] does all of that once.

use async_trait::async_trait;
use serde_json::Value as Json;

use crate::{Context, Error, Owner, Result, Revision, TypeInstanceId, Value};

/// What a backend is: printed by `describe`, served by `BackendInfo`, used for
/// the Hub registration (`acceptValue`, `contextSchema`).
#[derive(Clone, Debug)]
pub struct Describe {
    /// Short name, e.g. "vault"; used in status messages and metrics.
    pub name: &'static str,
    pub version: &'static str,
    /// `true` for [`ValueBackend`], `false` for [`ContextBackend`].
    pub accept_value: bool,
    /// JSON Schema of the context. `None`: the backend takes no context and
    /// accepts only "no context" or `{}`.
    pub context_schema: Option<Json>,
    /// Whether a context must be sent.
    pub context_required: bool,
    /// The largest value the store can hold; the configured limit may only
    /// lower it.
    pub max_value_bytes: u64,
}

/// Calls common to both kinds of service.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn describe(&self) -> Describe;

    /// A real, cheap request to the backing store; health reports SERVING
    /// only while this succeeds.
    async fn probe(&self) -> Result<()>;

    /// The value of exactly `revision`. NOT_FOUND if the TypeInstance or the
    /// revision does not exist.
    async fn get_value(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        ctx: &Context,
    ) -> Result<Value>;

    async fn get_locked_by(&self, id: &TypeInstanceId, ctx: &Context) -> Result<Option<Owner>>;

    /// Idempotent for the same owner; FAILED_PRECONDITION naming the holder
    /// for another owner; atomic against concurrent lockers.
    async fn lock(&self, id: &TypeInstanceId, ctx: &Context, owner: &Owner) -> Result<()>;

    /// Succeeds whether or not the TypeInstance was locked.
    async fn unlock(&self, id: &TypeInstanceId, ctx: &Context) -> Result<()>;

    /// Every locked TypeInstance (admin service, operators only).
    async fn list_locks(&self) -> Result<Vec<LockInfo>> {
        Err(Error::unimplemented(format!(
            "the {} backend cannot list locks",
            self.describe().name
        )))
    }

    /// Clears the lock of `id` only while `expected` still holds it
    /// (compare-and-set): FAILED_PRECONDITION naming the holder otherwise.
    async fn force_unlock(&self, id: &TypeInstanceId, expected: &Owner) -> Result<()> {
        let _ = (id, expected);
        Err(Error::unimplemented(format!(
            "the {} backend cannot force-unlock",
            self.describe().name
        )))
    }
}

/// One held lock, as the admin service lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub id: TypeInstanceId,
    pub owner: String,
    /// When it was taken (ms since the Unix epoch), if recorded.
    pub locked_at: Option<u64>,
}

/// A backend that stores the value the Hub sends (`acceptValue: true`).
#[async_trait]
pub trait ValueBackend: Backend {
    /// Stores revision 1. Returns a context to replace the Hub's, if any.
    async fn create(
        &self,
        id: &TypeInstanceId,
        value: Value,
        ctx: &Context,
    ) -> Result<Option<Json>>;

    /// Stores `revision`, which must be above every stored revision.
    async fn update(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        value: Value,
        ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<Option<Json>>;

    async fn delete(&self, id: &TypeInstanceId, ctx: &Context, owner: Option<&Owner>)
    -> Result<()>;

    async fn delete_revision(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<()>;
}

/// A backend whose value lives elsewhere and is found through the context
/// (`acceptValue: false`).
#[async_trait]
pub trait ContextBackend: Backend {
    /// The value as it is now, before any TypeInstance exists.
    async fn pre_create_value(&self, ctx: &Context) -> Result<Option<Value>>;

    async fn create(&self, id: &TypeInstanceId, ctx: &Context) -> Result<Option<Json>>;

    async fn update(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        ctx: &Context,
        owner: Option<&Owner>,
    ) -> Result<Option<Json>>;

    async fn delete(&self, id: &TypeInstanceId, ctx: &Context, owner: Option<&Owner>)
    -> Result<()>;

    /// The wire carries no context for this call.
    async fn delete_revision(
        &self,
        id: &TypeInstanceId,
        revision: Revision,
        owner: Option<&Owner>,
    ) -> Result<()>;
}
