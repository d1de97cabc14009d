//! A connection to the backend under test and typed helpers for each RPC,
//! dispatching on the kind of service the backend serves.

use std::{path::PathBuf, time::Duration};

use bytes::Bytes;
use serde_json::Value as Json;
use shared::proto::{
    info::{DescribeRequest, DescribeResponse, backend_info_client::BackendInfoClient},
    storage_backend::{
        self as pb, context_storage_backend_client::ContextStorageBackendClient,
        value_and_context_storage_backend_client::ValueAndContextStorageBackendClient,
    },
};
use tonic::{
    Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

/// How to reach the backend under test.
#[derive(Clone, Debug, Default)]
pub struct Connect {
    /// `host:port`, `http://host:port` or `https://host:port`.
    pub url: String,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_domain: Option<String>,
}

impl Connect {
    pub fn plain(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    pub async fn channel(&self) -> Result<Channel, String> {
        let tls =
            self.url.starts_with("https://") || self.tls_ca.is_some() || self.tls_cert.is_some();
        let url = if self.url.contains("://") {
            self.url.clone()
        } else if tls {
            format!("https://{}", self.url)
        } else {
            format!("http://{}", self.url)
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("invalid url {url}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        if tls {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
            };
            let mut cfg = ClientTlsConfig::new();
            if let Some(ca) = &self.tls_ca {
                cfg = cfg.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
                cfg = cfg.identity(Identity::from_pem(read(c)?, read(k)?));
            }
            if let Some(d) = &self.tls_domain {
                cfg = cfg.domain_name(d.clone());
            }
            endpoint = endpoint
                .tls_config(cfg)
                .map_err(|e| format!("tls setup failed: {e}"))?;
        }
        endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))
    }
}

/// The backend under test.
pub struct Target {
    channel: Channel,
    describe: DescribeResponse,
    context: Option<Json>,
    prefix: String,
}

const MAX_MESSAGE: usize = 64 << 20;

impl Target {
    /// Connects and asks the backend what it is. `context` is sent with every
    /// valid call (required for backends whose schema needs one).
    pub async fn connect(connect: &Connect, context: Option<Json>) -> Result<Self, String> {
        let channel = connect.channel().await?;
        let describe = BackendInfoClient::new(channel.clone())
            .describe(DescribeRequest {})
            .await
            .map_err(|s| format!("Describe failed: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        if describe.context_required && context.is_none() {
            return Err(format!(
                "the {} backend requires a context: pass one with --context",
                describe.name
            ));
        }
        let run = uuid::Uuid::new_v4().simple().to_string();
        Ok(Self {
            channel,
            describe,
            context,
            prefix: format!("cf-{}", &run[..10]),
        })
    }

    pub fn describe(&self) -> &DescribeResponse {
        &self.describe
    }

    pub fn accept_value(&self) -> bool {
        self.describe.accept_value
    }

    pub fn schema(&self) -> Option<Json> {
        serde_json::from_str(&self.describe.context_schema).ok()
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

    fn value_client(&self) -> ValueAndContextStorageBackendClient<Channel> {
        ValueAndContextStorageBackendClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    fn context_client(&self) -> ContextStorageBackendClient<Channel> {
        ContextStorageBackendClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
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
        let resp = if self.accept_value() {
            self.value_client()
                .on_create(pb::OnCreateValueAndContextRequest {
                    type_instance_id: id.into(),
                    value: Bytes::copy_from_slice(value),
                    context: Some(context),
                })
                .await?
        } else {
            self.context_client()
                .on_create(pb::OnCreateRequest {
                    type_instance_id: id.into(),
                    context,
                })
                .await?
        };
        Ok(resp.into_inner().context)
    }

    pub async fn update(
        &self,
        id: &str,
        revision: u32,
        value: &[u8],
        owner: Option<&str>,
    ) -> Result<(), Status> {
        let owner_id = owner.map(str::to_owned);
        if self.accept_value() {
            self.value_client()
                .on_update(pb::OnUpdateValueAndContextRequest {
                    type_instance_id: id.into(),
                    new_resource_version: revision,
                    new_value: Bytes::copy_from_slice(value),
                    context: Some(self.context_bytes()),
                    owner_id,
                })
                .await?;
        } else {
            self.context_client()
                .on_update(pb::OnUpdateRequest {
                    type_instance_id: id.into(),
                    new_resource_version: revision,
                    context: self.context_bytes(),
                    owner_id,
                })
                .await?;
        }
        Ok(())
    }

    /// GetValue; an unset `value` in the response is an error of its own.
    pub async fn get(&self, id: &str, revision: u32) -> Result<Bytes, Status> {
        self.get_with(id, revision, self.context_bytes()).await
    }

    pub async fn get_with(&self, id: &str, revision: u32, context: Bytes) -> Result<Bytes, Status> {
        let req = pb::GetValueRequest {
            type_instance_id: id.into(),
            resource_version: revision,
            context,
        };
        let resp = if self.accept_value() {
            self.value_client().get_value(req).await?
        } else {
            self.context_client().get_value(req).await?
        };
        resp.into_inner()
            .value
            .ok_or_else(|| Status::unknown("conformance: GetValueResponse.value is unset"))
    }

    pub async fn delete(&self, id: &str, owner: Option<&str>) -> Result<(), Status> {
        let owner_id = owner.map(str::to_owned);
        if self.accept_value() {
            self.value_client()
                .on_delete(pb::OnDeleteValueAndContextRequest {
                    type_instance_id: id.into(),
                    context: Some(self.context_bytes()),
                    owner_id,
                })
                .await?;
        } else {
            self.context_client()
                .on_delete(pb::OnDeleteRequest {
                    type_instance_id: id.into(),
                    context: self.context_bytes(),
                    owner_id,
                })
                .await?;
        }
        Ok(())
    }

    pub async fn delete_revision(
        &self,
        id: &str,
        revision: u32,
        owner: Option<&str>,
    ) -> Result<(), Status> {
        let owner_id = owner.map(str::to_owned);
        if self.accept_value() {
            self.value_client()
                .on_delete_revision(pb::OnDeleteRevisionValueAndContextRequest {
                    type_instance_id: id.into(),
                    context: Some(self.context_bytes()),
                    owner_id,
                    resource_version: revision,
                })
                .await?;
        } else {
            self.context_client()
                .on_delete_revision(pb::OnDeleteRevisionRequest {
                    type_instance_id: id.into(),
                    owner_id,
                    resource_version: revision,
                })
                .await?;
        }
        Ok(())
    }

    pub async fn lock(&self, id: &str, owner: &str) -> Result<(), Status> {
        let req = pb::OnLockRequest {
            type_instance_id: id.into(),
            context: self.context_bytes(),
            locked_by: owner.into(),
        };
        if self.accept_value() {
            self.value_client().on_lock(req).await?;
        } else {
            self.context_client().on_lock(req).await?;
        }
        Ok(())
    }

    pub async fn unlock(&self, id: &str) -> Result<(), Status> {
        let req = pb::OnUnlockRequest {
            type_instance_id: id.into(),
            context: self.context_bytes(),
        };
        if self.accept_value() {
            self.value_client().on_unlock(req).await?;
        } else {
            self.context_client().on_unlock(req).await?;
        }
        Ok(())
    }

    pub async fn locked_by(&self, id: &str) -> Result<Option<String>, Status> {
        let req = pb::GetLockedByRequest {
            type_instance_id: id.into(),
            context: self.context_bytes(),
        };
        let resp = if self.accept_value() {
            self.value_client().get_locked_by(req).await?
        } else {
            self.context_client().get_locked_by(req).await?
        };
        Ok(resp.into_inner().locked_by)
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
