//! The backend under test and typed helpers for each RPC, on top of
//! [`shared::client::Client`], which dispatches on the kind of service the
//! backend serves. The helpers send the suite's valid context with every call
//! and hand each case the raw gRPC status.

use bytes::Bytes;
use serde_json::Value as Json;
use shared::{
    client::{Client, Timeouts},
    proto::info::DescribeResponse,
};
use tonic::Status;

/// How to reach the backend under test.
pub use shared::client::Connect;

/// The backend under test.
pub struct Target {
    client: Client,
    context: Option<Json>,
    prefix: String,
}

impl Target {
    /// Connects and asks the backend what it is. `context` is sent with every
    /// valid call (required for backends whose schema needs one).
    pub async fn connect(connect: &Connect, context: Option<Json>) -> Result<Self, String> {
        let client = Client::connect(connect, Timeouts::default()).await?;
        let describe = client.info();
        if describe.context_required && context.is_none() {
            return Err(format!(
                "the {} backend requires a context: pass one with --context",
                describe.name
            ));
        }
        let run = uuid::Uuid::new_v4().simple().to_string();
        Ok(Self {
            client,
            context,
            prefix: format!("cf-{}", &run[..10]),
        })
    }

    pub fn describe(&self) -> &DescribeResponse {
        self.client.info()
    }

    pub fn accept_value(&self) -> bool {
        self.client.accept_value()
    }

    pub fn schema(&self) -> Option<Json> {
        serde_json::from_str(&self.describe().context_schema).ok()
    }

    /// A fresh TypeInstance id for one case.
    pub fn id(&self, case: &str) -> String {
        format!("{}-{case}", self.prefix)
    }

    pub fn context_bytes(&self) -> Bytes {
        self.context
            .as_ref()
            .map(|c| Bytes::from(c.to_string()))
            .unwrap_or_default()
    }

    /// The valid context as it goes on the wire: always set, empty when the
    /// suite has none.
    fn context(&self) -> Option<Bytes> {
        Some(self.context_bytes())
    }

    /// The value as sent: context backends take none, so it is dropped for
    /// them and a case can write the same calls for both kinds.
    fn value(&self, value: &[u8]) -> Option<Bytes> {
        self.accept_value().then(|| Bytes::copy_from_slice(value))
    }

    pub async fn create(&self, id: &str, value: &[u8]) -> Result<Option<Bytes>, Status> {
        self.create_with(id, value, self.context_bytes()).await
    }

    /// Create with an explicit raw context (empty = none).
    pub async fn create_with(
        &self,
        id: &str,
        value: &[u8],
        context: Bytes,
    ) -> Result<Option<Bytes>, Status> {
        self.client
            .create(id, self.value(value), Some(context))
            .await
    }

    pub async fn update(
        &self,
        id: &str,
        revision: u32,
        value: &[u8],
        owner: Option<&str>,
    ) -> Result<(), Status> {
        self.client
            .update(
                id,
                revision,
                self.value(value),
                self.context(),
                owner.map(str::to_owned),
            )
            .await
            .map(drop)
    }

    /// GetValue; an unset `value` in the response is an error of its own.
    pub async fn get(&self, id: &str, revision: u32) -> Result<Bytes, Status> {
        self.get_with(id, revision, self.context_bytes()).await
    }

    pub async fn get_with(&self, id: &str, revision: u32, context: Bytes) -> Result<Bytes, Status> {
        self.client
            .get(id, revision, Some(context))
            .await?
            .ok_or_else(|| Status::unknown("conformance: GetValueResponse.value is unset"))
    }

    pub async fn delete(&self, id: &str, owner: Option<&str>) -> Result<(), Status> {
        self.client
            .delete(id, self.context(), owner.map(str::to_owned))
            .await
    }

    /// The context service's OnDeleteRevision carries no context, so none is
    /// sent to a context backend.
    pub async fn delete_revision(
        &self,
        id: &str,
        revision: u32,
        owner: Option<&str>,
    ) -> Result<(), Status> {
        let context = if self.accept_value() {
            self.context()
        } else {
            None
        };
        self.client
            .delete_revision(id, revision, context, owner.map(str::to_owned))
            .await
    }

    pub async fn lock(&self, id: &str, owner: &str) -> Result<(), Status> {
        self.client.lock(id, owner, self.context()).await
    }

    pub async fn unlock(&self, id: &str) -> Result<(), Status> {
        self.client.unlock(id, self.context()).await
    }

    pub async fn locked_by(&self, id: &str) -> Result<Option<String>, Status> {
        self.client.locked_by(id, self.context()).await
    }

    /// Best-effort removal of what a case left behind.
    pub async fn cleanup(&self, id: &str) {
        if let Ok(Some(owner)) = self.locked_by(id).await {
            let _ = self.delete(id, Some(&owner)).await;
        }
        let _ = self.unlock(id).await;
        let _ = self.delete(id, None).await;
    }
}

impl Target {
    /// The valid context as JSON, if one was given.
    pub fn valid_context(&self) -> Option<Json> {
        self.context.clone()
    }
}
