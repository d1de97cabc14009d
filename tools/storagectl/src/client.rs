//! A Hub-like client: one set of calls that works against both services.
//!
//! The service kind is learned from `BackendInfo/Describe` (`accept_value`),
//! exactly as the Hub learns it from the registration's `acceptValue`.

use bytes::Bytes;
use shared::proto::{
    info::{DescribeRequest, DescribeResponse, backend_info_client::BackendInfoClient},
    storage_backend::{
        self as pb, context_storage_backend_client::ContextStorageBackendClient,
        value_and_context_storage_backend_client::ValueAndContextStorageBackendClient,
    },
};
use tonic::{Status, transport::Channel};

use crate::{connect::Connect, error::Error};

/// Room for the fields around a value in one message.
const MESSAGE_OVERHEAD: u64 = 64 * 1024;
/// tonic's default limit, kept as the floor.
const MIN_MESSAGE: usize = 4 << 20;

/// A context as sent on the wire: JSON text, or none.
pub type Context = Option<Bytes>;

/// A connected backend and what it said it is.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    info: DescribeResponse,
    max_message: usize,
}

impl Client {
    /// Connects and calls Describe.
    pub async fn connect(connect: &Connect) -> Result<Self, Error> {
        let channel = connect.channel().await?;
        let info = BackendInfoClient::new(channel.clone())
            .describe(DescribeRequest {})
            .await
            .map_err(|s| {
                Error::Status(Status::new(
                    s.code(),
                    format!("Describe failed: {}", s.message()),
                ))
            })?
            .into_inner();
        Ok(Self::new(channel, info))
    }

    /// A client for a backend already described (tests, or a cached Describe).
    pub fn new(channel: Channel, info: DescribeResponse) -> Self {
        // Large enough for the biggest value the backend accepts, both ways.
        let max_message = usize::try_from(info.max_value_bytes.saturating_add(MESSAGE_OVERHEAD))
            .unwrap_or(usize::MAX)
            .max(MIN_MESSAGE);
        Self {
            channel,
            info,
            max_message,
        }
    }

    pub fn info(&self) -> &DescribeResponse {
        &self.info
    }

    /// True for a ValueAndContextStorageBackend, false for a ContextStorageBackend.
    pub fn accept_value(&self) -> bool {
        self.info.accept_value
    }

    fn value_client(&self) -> ValueAndContextStorageBackendClient<Channel> {
        ValueAndContextStorageBackendClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    fn context_client(&self) -> ContextStorageBackendClient<Channel> {
        ContextStorageBackendClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    fn value_only(&self, what: &str) -> Error {
        Error::usage(format!(
            "the {} backend stores no value (acceptValue: false): {what}",
            self.info.name
        ))
    }

    /// Refuses a value over the backend's limit before sending it.
    pub fn check_size(&self, value: &[u8]) -> Result<(), Error> {
        let len = value.len() as u64;
        if self.info.max_value_bytes > 0 && len > self.info.max_value_bytes {
            return Err(Error::usage(format!(
                "the value is {len} bytes, the {} backend accepts at most {}",
                self.info.name, self.info.max_value_bytes
            )));
        }
        Ok(())
    }

    /// GetValue. An unset `value` fails, as it does in the Hub.
    pub async fn get(&self, id: &str, revision: u32, context: Context) -> Result<Bytes, Error> {
        let req = pb::GetValueRequest {
            type_instance_id: id.into(),
            resource_version: revision,
            context: context.unwrap_or_default(),
        };
        let resp = if self.accept_value() {
            self.value_client().get_value(req).await?
        } else {
            self.context_client().get_value(req).await?
        };
        resp.into_inner().value.ok_or_else(|| {
            Error::other(format!(
                "the {} backend answered GetValue without a value",
                self.info.name
            ))
        })
    }

    /// OnCreate; `value` is required by value backends and refused by context
    /// backends. Returns the context the backend wants stored, if any.
    pub async fn create(
        &self,
        id: &str,
        value: Option<Bytes>,
        context: Context,
    ) -> Result<Option<Bytes>, Error> {
        let resp = match (self.accept_value(), value) {
            (true, Some(value)) => {
                self.check_size(&value)?;
                self.value_client()
                    .on_create(pb::OnCreateValueAndContextRequest {
                        type_instance_id: id.into(),
                        value,
                        context,
                    })
                    .await?
            }
            (true, None) => return Err(Error::usage("create needs a value")),
            (false, Some(_)) => return Err(self.value_only("omit the value")),
            (false, None) => {
                self.context_client()
                    .on_create(pb::OnCreateRequest {
                        type_instance_id: id.into(),
                        context: context.unwrap_or_default(),
                    })
                    .await?
            }
        };
        Ok(resp.into_inner().context.filter(|c| !c.is_empty()))
    }

    /// OnUpdate to `revision`; value rules as for [`Client::create`].
    pub async fn update(
        &self,
        id: &str,
        revision: u32,
        value: Option<Bytes>,
        context: Context,
        owner: Option<String>,
    ) -> Result<Option<Bytes>, Error> {
        let resp = match (self.accept_value(), value) {
            (true, Some(new_value)) => {
                self.check_size(&new_value)?;
                self.value_client()
                    .on_update(pb::OnUpdateValueAndContextRequest {
                        type_instance_id: id.into(),
                        new_resource_version: revision,
                        new_value,
                        context,
                        owner_id: owner,
                    })
                    .await?
            }
            (true, None) => return Err(Error::usage("update needs a value")),
            (false, Some(_)) => return Err(self.value_only("omit the value")),
            (false, None) => {
                self.context_client()
                    .on_update(pb::OnUpdateRequest {
                        type_instance_id: id.into(),
                        new_resource_version: revision,
                        context: context.unwrap_or_default(),
                        owner_id: owner,
                    })
                    .await?
            }
        };
        Ok(resp.into_inner().context.filter(|c| !c.is_empty()))
    }

    pub async fn delete(
        &self,
        id: &str,
        context: Context,
        owner: Option<String>,
    ) -> Result<(), Error> {
        if self.accept_value() {
            self.value_client()
                .on_delete(pb::OnDeleteValueAndContextRequest {
                    type_instance_id: id.into(),
                    context,
                    owner_id: owner,
                })
                .await?;
        } else {
            self.context_client()
                .on_delete(pb::OnDeleteRequest {
                    type_instance_id: id.into(),
                    context: context.unwrap_or_default(),
                    owner_id: owner,
                })
                .await?;
        }
        Ok(())
    }

    /// OnDeleteRevision. The context service's request has no context field,
    /// so a context given for a context backend is refused, not dropped.
    pub async fn delete_revision(
        &self,
        id: &str,
        revision: u32,
        context: Context,
        owner: Option<String>,
    ) -> Result<(), Error> {
        if self.accept_value() {
            self.value_client()
                .on_delete_revision(pb::OnDeleteRevisionValueAndContextRequest {
                    type_instance_id: id.into(),
                    context,
                    owner_id: owner,
                    resource_version: revision,
                })
                .await?;
        } else {
            if context.is_some() {
                return Err(Error::usage(
                    "OnDeleteRevision of a context backend carries no context: omit --context",
                ));
            }
            self.context_client()
                .on_delete_revision(pb::OnDeleteRevisionRequest {
                    type_instance_id: id.into(),
                    owner_id: owner,
                    resource_version: revision,
                })
                .await?;
        }
        Ok(())
    }

    pub async fn lock(&self, id: &str, owner: &str, context: Context) -> Result<(), Error> {
        let req = pb::OnLockRequest {
            type_instance_id: id.into(),
            context: context.unwrap_or_default(),
            locked_by: owner.into(),
        };
        if self.accept_value() {
            self.value_client().on_lock(req).await?;
        } else {
            self.context_client().on_lock(req).await?;
        }
        Ok(())
    }

    pub async fn unlock(&self, id: &str, context: Context) -> Result<(), Error> {
        let req = pb::OnUnlockRequest {
            type_instance_id: id.into(),
            context: context.unwrap_or_default(),
        };
        if self.accept_value() {
            self.value_client().on_unlock(req).await?;
        } else {
            self.context_client().on_unlock(req).await?;
        }
        Ok(())
    }

    /// The lock holder, or `None` while unlocked.
    pub async fn locked_by(&self, id: &str, context: Context) -> Result<Option<String>, Error> {
        let req = pb::GetLockedByRequest {
            type_instance_id: id.into(),
            context: context.unwrap_or_default(),
        };
        let resp = if self.accept_value() {
            self.value_client().get_locked_by(req).await?
        } else {
            self.context_client().get_locked_by(req).await?
        };
        Ok(resp.into_inner().locked_by)
    }

    /// GetPreCreateValue (context backends only); `None` when the backend has
    /// no value to offer.
    pub async fn pre_create_value(&self, context: Context) -> Result<Option<Bytes>, Error> {
        if self.accept_value() {
            return Err(Error::usage(format!(
                "pre-create-value is served by context backends only; the {} backend takes values (acceptValue: true)",
                self.info.name
            )));
        }
        let resp = self
            .context_client()
            .get_pre_create_value(pb::GetPreCreateValueRequest {
                context: context.unwrap_or_default(),
            })
            .await?;
        Ok(resp.into_inner().value)
    }
}
