//! The KV secrets engine as this backend needs it: read a secret with its
//! version, write with check-and-set, list a folder, remove a path for good.
//! KV v1 has no versions and no cas: see [`Kv::V1`] for what replaces them.
//!
//! Every call goes through [`shared::metrics::store_call`] and maps Vault's
//! answers onto the protocol's error kinds in exactly one place ([`map_err`]).

use std::collections::HashMap;

use serde_json::{Map, Value as Json};
use shared::Error;
use vaultrs::{
    api::{self, kv2::requests::ReadSecretRequest, kv2::requests::SetSecretRequestOptions},
    client::VaultClient,
    error::ClientError,
};

/// Which KV engine version the mount runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvVersion {
    #[value(name = "1")]
    V1,
    #[value(name = "2")]
    V2,
}

/// A secret as read: its data and, on KV v2, its current version (the
/// number a cas write must name).
#[derive(Debug)]
pub struct Read {
    pub data: Map<String, Json>,
    pub version: u64,
}

/// Outcome of a check-and-set write.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Ok,
    /// The secret's version was not the one named: someone else wrote first.
    Conflict,
}

/// A failed Vault call, classified before it becomes a protocol error.
#[derive(Debug)]
pub enum Failure {
    /// 403: the token is not (or no longer) allowed here. The caller may log
    /// in again once and retry.
    Denied(ClientError),
    Other(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Other(e)
    }
}

impl Failure {
    /// The protocol error, naming the path (never the token).
    pub fn into_error(self, mount: &str, path: &str) -> Error {
        match self {
            Failure::Denied(e) => Error::permission_denied(format!(
                "vault denied access to {mount}/{path}: check the policy of the backend's token"
            ))
            .with_source(e),
            Failure::Other(e) => e,
        }
    }
}

pub type StoreResult<T> = std::result::Result<T, Failure>;

/// HTTP status code of a Vault answer, in both forms vaultrs reports it: as
/// an API error (JSON `errors` body) or, when the body is something else
/// (for example the 404 of a deleted KV v2 version, whose body carries
/// metadata), as a REST client error.
fn status_of(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::APIError { code, .. } => Some(*code),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => Some(*code),
        _ => None,
    }
}

/// Whether the answer means "this path or version does not exist".
fn is_not_found(e: &ClientError) -> bool {
    status_of(e) == Some(404)
}

/// Whether a KV v2 write was refused because its `cas` did not match.
fn is_cas_mismatch(e: &ClientError) -> bool {
    match e {
        ClientError::APIError { code: 400, errors } => {
            errors.iter().any(|m| m.contains("check-and-set"))
        }
        _ => false,
    }
}

/// The one mapping of Vault failures to protocol errors.
pub fn map_err(e: ClientError, what: &str) -> Failure {
    match status_of(&e) {
        Some(403) => Failure::Denied(e),
        // 5xx includes 503 "Vault is sealed"; 429 is a standby or rate limit.
        Some(code) if code >= 500 || code == 429 => Failure::Other(
            Error::unavailable(format!("vault is unavailable ({code}) for {what}")).with_source(e),
        ),
        Some(code) => Failure::Other(
            Error::internal(format!("vault answered {code} for {what}")).with_source(e),
        ),
        None => match e {
            // Connection refused, reset, TLS or timeout: the store cannot be reached.
            ClientError::RestClientError { .. } => Failure::Other(
                Error::unavailable(format!("vault cannot be reached for {what}")).with_source(e),
            ),
            other => Failure::Other(
                Error::internal(format!("vault call failed for {what}")).with_source(other),
            ),
        },
    }
}

/// A KV mount of one engine version.
#[derive(Clone, Debug)]
pub struct Kv {
    pub mount: String,
    pub version: KvVersion,
}

impl Kv {
    /// Reads the secret at `path`; `None` if it does not exist.
    pub async fn read(&self, client: &VaultClient, path: &str) -> StoreResult<Option<Read>> {
        let what = format!("reading {}/{path}", self.mount);
        let result = match self.version {
            KvVersion::V2 => {
                let endpoint = ReadSecretRequest::builder()
                    .mount(self.mount.as_str())
                    .path(path)
                    .build()
                    .map_err(|e| Error::internal("building a vault read failed").with_source(e))?;
                shared::metrics::store_call("kv2_read", async {
                    Ok(api::exec_with_result(client, endpoint).await)
                })
                .await?
                .map(|r| (r.data, r.metadata.version))
            }
            KvVersion::V1 => shared::metrics::store_call("kv1_read", async {
                Ok(vaultrs::kv1::get_raw(client, &self.mount, path).await)
            })
            .await?
            // KV v1 has no versions: an existing secret is "version 1", so
            // that a cas of 0 (create-only) and a cas naming what was read
            // stay distinguishable under the id's in-process lock.
            .map(|r| (r.data, 1)),
        };
        match result {
            Ok((Json::Object(data), version)) => Ok(Some(Read { data, version })),
            // A destroyed or deleted KV v2 version answers with `data: null`.
            Ok((Json::Null, _)) => Ok(None),
            Ok(_) => Err(Error::internal(format!("{what}: data is not a JSON object")).into()),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err(e, &what)),
        }
    }

    /// Writes `data` at `path`. `cas`: `Some(0)` creates only, `Some(v)`
    /// replaces only version `v`, `None` writes unconditionally.
    ///
    /// On KV v1 the caller must hold the id's in-process lock: the check of
    /// `Some(0)` is a read followed by a write.
    pub async fn write(
        &self,
        client: &VaultClient,
        path: &str,
        data: &Map<String, Json>,
        cas: Option<u64>,
    ) -> StoreResult<Written> {
        let what = format!("writing {}/{path}", self.mount);
        match self.version {
            KvVersion::V2 => {
                let result = shared::metrics::store_call("kv2_write", async {
                    Ok(match cas {
                        Some(v) => {
                            let cas = u32::try_from(v)
                                .map_err(|_| Error::internal("secret version above u32"))?;
                            vaultrs::kv2::set_with_options(
                                client,
                                &self.mount,
                                path,
                                data,
                                SetSecretRequestOptions { cas },
                            )
                            .await
                        }
                        None => vaultrs::kv2::set(client, &self.mount, path, data).await,
                    })
                })
                .await?;
                match result {
                    Ok(_) => Ok(Written::Ok),
                    Err(e) if is_cas_mismatch(&e) => Ok(Written::Conflict),
                    Err(e) => Err(map_err(e, &what)),
                }
            }
            KvVersion::V1 => {
                if cas == Some(0) && self.read(client, path).await?.is_some() {
                    return Ok(Written::Conflict);
                }
                let map: HashMap<&str, &Json> = data.iter().map(|(k, v)| (k.as_str(), v)).collect();
                shared::metrics::store_call("kv1_write", async {
                    Ok(vaultrs::kv1::set(client, &self.mount, path, &map).await)
                })
                .await?
                .map(|()| Written::Ok)
                .map_err(|e| map_err(e, &what))
            }
        }
    }

    /// Removes `path` for good: on KV v2 every version and the metadata (a
    /// soft delete would leave metadata behind and make a later cas=0
    /// create fail). Removing a missing path succeeds.
    pub async fn remove(&self, client: &VaultClient, path: &str) -> StoreResult<()> {
        let what = format!("removing {}/{path}", self.mount);
        let result = match self.version {
            KvVersion::V2 => {
                shared::metrics::store_call("kv2_delete_metadata", async {
                    Ok(vaultrs::kv2::delete_metadata(client, &self.mount, path).await)
                })
                .await?
            }
            KvVersion::V1 => {
                shared::metrics::store_call("kv1_delete", async {
                    Ok(vaultrs::kv1::delete(client, &self.mount, path).await)
                })
                .await?
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_err(e, &what)),
        }
    }

    /// Keys directly under the folder `path` (empty if there is none).
    pub async fn list(&self, client: &VaultClient, path: &str) -> StoreResult<Vec<String>> {
        let what = format!("listing {}/{path}", self.mount);
        let result = match self.version {
            KvVersion::V2 => {
                shared::metrics::store_call("kv2_list", async {
                    Ok(vaultrs::kv2::list(client, &self.mount, path).await)
                })
                .await?
            }
            KvVersion::V1 => {
                shared::metrics::store_call("kv1_list", async {
                    Ok(vaultrs::kv1::list(client, &self.mount, path)
                        .await
                        .map(|r| r.data.keys))
                })
                .await?
            }
        };
        match result {
            Ok(keys) => Ok(keys),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(map_err(e, &what)),
        }
    }
}
