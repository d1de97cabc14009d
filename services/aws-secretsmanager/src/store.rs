//! The Secrets Manager calls the backend makes, each reduced to the outcomes
//! the backend distinguishes. Anything else (throttling and 5xx after the
//! SDK's retries, refused credentials, ...) becomes a `shared::Error` through
//! `shared_aws::to_error`.

use aws_sdk_secretsmanager::{
    Client,
    primitives::Blob,
    types::{Filter, FilterNameStringType, Tag},
};
use shared::{Error, Result, metrics::store_call};

/// The stage every read asks for explicitly. (AWS reads AWSCURRENT by
/// default; moto 5.2.5 instead returns the last version PutSecretValue made
/// current, ignoring UpdateSecretVersionStage, so name it.)
pub const CURRENT: &str = "AWSCURRENT";

/// What a secret version holds: text in `SecretString`, anything else in
/// `SecretBinary`.
#[derive(Clone, PartialEq)]
pub enum Payload {
    Text(String),
    Binary(Vec<u8>),
}

/// The current version of a secret.
pub struct Current {
    pub version_id: String,
    pub payload: Payload,
}

/// What a read of a secret's current version found.
pub enum Read {
    /// No secret of that name.
    Missing,
    /// The secret is scheduled for deletion (its name is still taken).
    Pending,
    Found(Current),
}

/// Outcome of a create-only CreateSecret.
pub enum Created {
    Yes,
    /// The name is taken (by an existing secret, or one scheduled for
    /// deletion), and not by a retry of this very request.
    Exists,
}

/// Outcome of PutSecretValue.
pub enum Put {
    Ok,
    Missing,
    Pending,
}

pub struct Store {
    pub client: Client,
    pub kms_key_id: Option<String>,
    /// Recovery window of a delete; `None`: force delete without recovery.
    pub recovery_window_days: Option<i64>,
}

fn code<E: aws_sdk_secretsmanager::error::ProvideErrorMetadata>(
    err: &aws_sdk_secretsmanager::error::SdkError<
        E,
        aws_sdk_secretsmanager::config::http::HttpResponse,
    >,
) -> &str {
    shared_aws::code(err).unwrap_or_default()
}

impl Store {
    /// The current version of `name` (AWSCURRENT).
    pub async fn get(&self, name: &str) -> Result<Read> {
        store_call("get_secret_value", async {
            match self
                .client
                .get_secret_value()
                .secret_id(name)
                .version_stage(CURRENT)
                .send()
                .await
            {
                Ok(out) => {
                    let payload = match (out.secret_string, out.secret_binary) {
                        (Some(s), _) => Payload::Text(s),
                        (None, Some(b)) => Payload::Binary(b.into_inner()),
                        (None, None) => {
                            return Err(Error::data_loss(format!(
                                "secret {name} has a current version without a value"
                            )));
                        }
                    };
                    let version_id = out.version_id.ok_or_else(|| {
                        Error::internal(format!("secret {name} was read without a version id"))
                    })?;
                    Ok(Read::Found(Current {
                        version_id,
                        payload,
                    }))
                }
                Err(e) => match code(&e) {
                    "ResourceNotFoundException" => Ok(Read::Missing),
                    // The only reason GetSecretValue gives for an existing secret.
                    "InvalidRequestException" => Ok(Read::Pending),
                    _ => Err(shared_aws::to_error(
                        &format!("secrets manager read of {name}"),
                        e,
                    )),
                },
            }
        })
        .await
    }

    /// CreateSecret: atomic create-only on the name. A retry with the same
    /// token and payload is a no-op that succeeds (AWS and moto agree).
    pub async fn create(
        &self,
        name: &str,
        payload: &Payload,
        token: &str,
        tags: Vec<Tag>,
    ) -> Result<Created> {
        store_call("create_secret", async {
            let mut req = self
                .client
                .create_secret()
                .name(name)
                .client_request_token(token)
                .set_tags(Some(tags))
                .set_kms_key_id(self.kms_key_id.clone());
            req = match payload {
                Payload::Text(s) => req.secret_string(s),
                Payload::Binary(b) => req.secret_binary(Blob::new(b.clone())),
            };
            match req.send().await {
                Ok(_) => Ok(Created::Yes),
                // AWS answers InvalidRequestException for a name scheduled
                // for deletion, moto ResourceExistsException; the caller
                // reads the secret to find out which case it is.
                Err(e)
                    if matches!(
                        code(&e),
                        "ResourceExistsException" | "InvalidRequestException"
                    ) =>
                {
                    Ok(Created::Exists)
                }
                Err(e) => Err(shared_aws::to_error(
                    &format!("secrets manager create of {name}"),
                    e,
                )),
            }
        })
        .await
    }

    /// PutSecretValue with the version id `token`. With `stage` the new
    /// version gets that label only and AWSCURRENT stays where it is;
    /// without, AWSCURRENT moves to it.
    pub async fn put(
        &self,
        name: &str,
        payload: &Payload,
        token: &str,
        stage: Option<&str>,
    ) -> Result<Put> {
        store_call("put_secret_value", async {
            let mut req = self
                .client
                .put_secret_value()
                .secret_id(name)
                .client_request_token(token);
            if let Some(stage) = stage {
                req = req.version_stages(stage);
            }
            req = match payload {
                Payload::Text(s) => req.secret_string(s),
                Payload::Binary(b) => req.secret_binary(Blob::new(b.clone())),
            };
            match req.send().await {
                Ok(_) => Ok(Put::Ok),
                Err(e) => match code(&e) {
                    "ResourceNotFoundException" => Ok(Put::Missing),
                    "InvalidRequestException" => Ok(Put::Pending),
                    _ => Err(shared_aws::to_error(
                        &format!("secrets manager write of {name}"),
                        e,
                    )),
                },
            }
        })
        .await
    }

    /// Moves AWSCURRENT from `from` to `to` only if it is still on `from`:
    /// the compare-and-swap of this store. `false` when it was not.
    pub async fn move_current(&self, name: &str, to: &str, from: &str) -> Result<bool> {
        store_call("update_secret_version_stage", async {
            match self
                .client
                .update_secret_version_stage()
                .secret_id(name)
                .version_stage(CURRENT)
                .move_to_version_id(to)
                .remove_from_version_id(from)
                .send()
                .await
            {
                Ok(_) => Ok(true),
                Err(e)
                    if matches!(
                        code(&e),
                        "InvalidParameterException"
                            | "ResourceNotFoundException"
                            | "InvalidRequestException"
                    ) =>
                {
                    Ok(false)
                }
                Err(e) => Err(shared_aws::to_error(
                    &format!("secrets manager stage move on {name}"),
                    e,
                )),
            }
        })
        .await
    }

    /// Deletes `name` with the configured recovery window (or without one).
    /// A secret already gone or already scheduled for deletion is fine.
    pub async fn delete(&self, name: &str) -> Result<()> {
        store_call("delete_secret", async {
            let req = self.client.delete_secret().secret_id(name);
            let req = match self.recovery_window_days {
                Some(days) => req.recovery_window_in_days(days),
                None => req.force_delete_without_recovery(true),
            };
            match req.send().await {
                Ok(_) => Ok(()),
                Err(e)
                    if matches!(
                        code(&e),
                        "ResourceNotFoundException" | "InvalidRequestException"
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(shared_aws::to_error(
                    &format!("secrets manager delete of {name}"),
                    e,
                )),
            }
        })
        .await
    }

    /// Cancels the scheduled deletion of `name`. Gone or not scheduled is
    /// fine: the caller reads the secret again either way.
    pub async fn restore(&self, name: &str) -> Result<()> {
        store_call("restore_secret", async {
            match self.client.restore_secret().secret_id(name).send().await {
                Ok(_) => Ok(()),
                Err(e)
                    if matches!(
                        code(&e),
                        "ResourceNotFoundException" | "InvalidRequestException"
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(shared_aws::to_error(
                    &format!("secrets manager restore of {name}"),
                    e,
                )),
            }
        })
        .await
    }

    /// The health probe: one authenticated ListSecrets of at most one
    /// secret under our prefix.
    pub async fn list_one(&self, prefix: &str) -> Result<()> {
        store_call("list_secrets", async {
            let filter = Filter::builder()
                .key(FilterNameStringType::Name)
                .values(prefix)
                .build();
            self.client
                .list_secrets()
                .max_results(1)
                .filters(filter)
                .send()
                .await
                .map(drop)
                .map_err(|e| shared_aws::to_error("secrets manager list", e))
        })
        .await
    }
}
