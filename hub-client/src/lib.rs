//! A small typed client of the Capact Hub's GraphQL API: the TypeInstance
//! operations the storage tools need (list, create, update, delete, lock,
//! unlock), used by `storagectl register` and the Flux watch.
//!
//! Every operation is generated from `graphql/operations.graphql` against
//! the Hub's schema ([`ops`]); no query is a hand-written string. Calls are
//! retried with jittered backoff while the Hub is unreachable or answers
//! 5xx, except where a retry could apply a mutation twice: a create whose
//! outcome is unknown returns [`HubError::Ambiguous`] and the caller looks
//! before it tries again.
//!
//! Credentials come from files read at each call (projected tokens rotate)
//! and never appear in an error, a log line or `Debug` output; an endpoint
//! URL carrying credentials is refused.

pub mod ops;

use std::{fmt, path::PathBuf, time::Duration};

use graphql_client::{GraphQLQuery, Response};
use serde_json::Value as Json;

/// How to reach the Hub.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// The GraphQL endpoint, e.g. `http://capact-hub-local.capact-system/graphql`.
    pub endpoint: String,
    /// File holding a bearer token (sent as `Authorization: Bearer`).
    pub token_file: Option<PathBuf>,
    /// File holding `user:password` for basic auth (the Capact gateway's).
    pub basic_auth_file: Option<PathBuf>,
    /// PEM bundle of extra CAs trusted for an `https://` endpoint.
    pub ca_file: Option<PathBuf>,
    /// Deadline of one HTTP request.
    pub timeout: Duration,
    /// Attempts per call while the Hub is unreachable or answers 5xx.
    pub attempts: u32,
}

impl HubOptions {
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            token_file: None,
            basic_auth_file: None,
            ca_file: None,
            timeout: Duration::from_secs(10),
            attempts: 5,
        }
    }
}

/// What went wrong talking to the Hub. Messages name the operation and the
/// endpoint (without credentials), never a value or a token.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("hub settings: {0}")]
    Config(String),
    #[error("the hub at {endpoint} is unavailable for {operation}: {detail}")]
    Unavailable {
        endpoint: String,
        operation: &'static str,
        detail: String,
    },
    /// The request was sent but its outcome is unknown (timeout, 502, a
    /// broken connection): the mutation may have been applied.
    #[error("the hub at {endpoint} may or may not have applied {operation}: {detail}")]
    Ambiguous {
        endpoint: String,
        operation: &'static str,
        detail: String,
    },
    #[error("the hub refused {operation}: {}", messages.join("; "))]
    Refused {
        operation: &'static str,
        messages: Vec<String>,
    },
    #[error("the hub at {endpoint} answered {operation} with http {status}{hint}")]
    Http {
        endpoint: String,
        operation: &'static str,
        status: u16,
        hint: &'static str,
    },
    #[error("cannot read the hub's answer to {operation}: {detail}")]
    Decode {
        operation: &'static str,
        detail: String,
    },
}

impl HubError {
    fn refused_with(&self, needle: &str) -> bool {
        matches!(self, Self::Refused { messages, .. } if messages.iter().any(|m| m.contains(needle)))
    }

    /// The Hub does not know the TypeInstance.
    pub fn is_not_found(&self) -> bool {
        self.refused_with("not found")
    }

    /// Someone else holds the TypeInstance's lock.
    pub fn is_locked(&self) -> bool {
        self.refused_with("locked by different owner")
    }

    /// Other TypeInstances use it (a storage backend that stores some).
    pub fn is_in_use(&self) -> bool {
        self.refused_with("used by other TypeInstances")
    }

    /// Worth trying again later: the Hub was down or the outcome unknown.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Ambiguous { .. })
    }
}

pub type Result<T, E = HubError> = std::result::Result<T, E>;

/// A TypeInstance reference to a Type: path and revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeRef {
    pub path: String,
    pub revision: String,
}

/// A TypeInstance as listed: identity, lock, backend and its latest revision.
#[derive(Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub locked_by: Option<String>,
    pub type_ref: TypeRef,
    pub backend_id: String,
    pub revision: u32,
    pub created_by: Option<String>,
    /// The latest value; only listed with [`Hub::list_with_values`].
    pub value: Option<Json>,
    pub context: Option<Json>,
}

// The value may be a secret: Debug names it only.
impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.id)
            .field("locked_by", &self.locked_by)
            .field("type_ref", &self.type_ref)
            .field("backend_id", &self.backend_id)
            .field("revision", &self.revision)
            .field("created_by", &self.created_by)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("context", &self.context)
            .finish()
    }
}

/// A TypeInstance to create.
#[derive(Clone)]
pub struct NewInstance {
    pub type_ref: TypeRef,
    pub created_by: Option<String>,
    /// The value kept by the Hub itself (built-in storage) or handed to
    /// the backend; `None` for a context backend.
    pub value: Option<Json>,
    /// `(storage TypeInstance id, context)`; `None`: the Hub's built-in storage.
    pub backend: Option<(String, Option<Json>)>,
}

#[derive(Clone)]
enum Auth {
    None,
    Bearer(PathBuf),
    Basic(PathBuf),
}

/// Whether a call may be sent again after an unknown outcome.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads, and mutations whose repetition changes nothing more.
    Always,
    /// Only when the Hub certainly did not process it.
    WhenUnsent,
}

/// The [`Instance`]s of a `typeInstances` answer: the two list queries
/// differ only in whether the latest revision's `spec` carries the value
/// (`$value`, of the latest revision `$latest`), so their generated types
/// differ too.
macro_rules! instances {
    ($data:expr, $latest:ident => $value:expr) => {
        $data
            .type_instances
            .into_iter()
            .map(|t| {
                let latest = t.latest_resource_version;
                let revision = latest
                    .as_ref()
                    .map_or(0, |l| u32::try_from(l.resource_version).unwrap_or(0));
                let created_by = latest.as_ref().and_then(|l| l.created_by.clone());
                let (context, value) = match latest {
                    Some($latest) => ($latest.spec.backend.context.clone(), $value),
                    None => (None, None),
                };
                Instance {
                    id: t.summary.id,
                    locked_by: t.summary.locked_by,
                    type_ref: TypeRef {
                        path: t.summary.type_ref.path,
                        revision: t.summary.type_ref.revision,
                    },
                    backend_id: t.summary.backend.id,
                    revision,
                    created_by,
                    value,
                    context,
                }
            })
            .collect()
    };
}

/// A connection to one Hub.
#[derive(Clone)]
pub struct Hub {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    shown: String,
    auth: Auth,
    attempts: u32,
    backoff: Duration,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("endpoint", &self.shown)
            .finish()
    }
}

impl Hub {
    /// Checks the settings and builds the HTTP client; connects lazily.
    pub fn new(options: &HubOptions) -> Result<Self> {
        let endpoint = reqwest::Url::parse(options.endpoint.trim()).map_err(|e| {
            HubError::Config(format!(
                "the hub endpoint must be an http:// or https:// URL of its GraphQL API: {e}"
            ))
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(HubError::Config(
                "the hub endpoint must be an http:// or https:// URL of its GraphQL API".into(),
            ));
        }
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            return Err(HubError::Config(
                "the hub endpoint must not carry credentials: pass a token or basic-auth file"
                    .into(),
            ));
        }
        let auth = match (&options.token_file, &options.basic_auth_file) {
            (Some(_), Some(_)) => {
                return Err(HubError::Config(
                    "pass either a hub token file or a basic-auth file, not both".into(),
                ));
            }
            (Some(f), None) => Auth::Bearer(f.clone()),
            (None, Some(f)) => Auth::Basic(f.clone()),
            (None, None) => Auth::None,
        };
        // Read once now so that a wrong path fails at start, not at the first call.
        auth_header(&auth)?;
        // reqwest is built without a default crypto provider: use the
        // process-wide ring provider, as the rest of the workspace does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &options.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                HubError::Config(format!("cannot read the hub CA file {}: {e}", ca.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                HubError::Config(format!(
                    "the hub CA file {} holds no PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| HubError::Config(format!("cannot build the hub client: {e}")))?;
        let shown = endpoint.as_str().to_owned();
        Ok(Self {
            http,
            endpoint,
            shown,
            auth,
            attempts: options.attempts.max(1),
            backoff: Duration::from_millis(200),
        })
    }

    /// The endpoint, safe to log.
    pub fn endpoint(&self) -> &str {
        &self.shown
    }

    /// Sets the first retry delay (tests shorten it).
    pub fn with_backoff(mut self, first: Duration) -> Self {
        self.backoff = first;
        self
    }

    /// TypeInstances of Type `path` (any revision), optionally only those
    /// one of whose revisions was created by `created_by`, with their values.
    pub async fn list_with_values(
        &self,
        path: &str,
        created_by: Option<&str>,
    ) -> Result<Vec<Instance>> {
        use ops::list_with_value as q;
        let vars = q::Variables {
            path: path.to_owned(),
            created_by: created_by.map(str::to_owned),
        };
        let data = self
            .call::<ops::ListWithValue>("typeInstances", vars, Retry::Always)
            .await?;
        Ok(instances!(data, latest => Some(latest.spec.value)))
    }

    /// As [`Hub::list_with_values`] without the values: the Hub does not
    /// ask the backends for them.
    pub async fn list(&self, path: &str, created_by: Option<&str>) -> Result<Vec<Instance>> {
        use ops::list_with_context as q;
        let vars = q::Variables {
            path: path.to_owned(),
            created_by: created_by.map(str::to_owned),
        };
        let data = self
            .call::<ops::ListWithContext>("typeInstances", vars, Retry::Always)
            .await?;
        Ok(instances!(data, _latest => None))
    }

    /// The lock holder of `id`: `None` when the Hub does not know it,
    /// `Some(None)` while unlocked.
    pub async fn lock_of(&self, id: &str) -> Result<Option<Option<String>>> {
        let vars = ops::lock_of::Variables { id: id.to_owned() };
        let data = self
            .call::<ops::LockOf>("typeInstance", vars, Retry::Always)
            .await?;
        Ok(data.type_instance.map(|t| t.locked_by))
    }

    /// Creates a TypeInstance and returns its id. Never sent twice: an
    /// unknown outcome is [`HubError::Ambiguous`], for the caller to look
    /// (list) before trying again.
    pub async fn create(&self, new: &NewInstance) -> Result<String> {
        use ops::create_type_instance as q;
        let input = q::CreateTypeInstanceInput {
            alias: None,
            created_by: new.created_by.clone(),
            type_ref: q::TypeInstanceTypeReferenceInput {
                path: new.type_ref.path.clone(),
                revision: new.type_ref.revision.clone(),
            },
            attributes: None,
            value: new.value.clone(),
            backend: new
                .backend
                .as_ref()
                .map(|(id, context)| q::TypeInstanceBackendInput {
                    id: id.clone(),
                    context: context.clone(),
                }),
        };
        let data = self
            .call::<ops::CreateTypeInstance>(
                "createTypeInstance",
                q::Variables { in_: input },
                Retry::WhenUnsent,
            )
            .await?;
        Ok(data.create_type_instance)
    }

    /// Stores `value` as a new revision of `id`; returns that revision.
    /// Sent once: a repeat would add another revision.
    pub async fn update_value(
        &self,
        id: &str,
        value: &Json,
        created_by: Option<&str>,
    ) -> Result<u32> {
        use ops::update_type_instances as q;
        let item = q::UpdateTypeInstancesInput {
            owner_id: None,
            created_by: created_by.map(str::to_owned),
            id: id.to_owned(),
            type_instance: q::UpdateTypeInstanceInput {
                attributes: None,
                value: Some(value.clone()),
                backend: None,
            },
        };
        let data = self
            .call::<ops::UpdateTypeInstances>(
                "updateTypeInstances",
                q::Variables {
                    in_: vec![Some(item)],
                },
                Retry::WhenUnsent,
            )
            .await?;
        Ok(data
            .update_type_instances
            .first()
            .and_then(|t| t.latest_resource_version.as_ref())
            .map_or(0, |l| u32::try_from(l.resource_version).unwrap_or(0)))
    }

    /// Deletes `id`, as lock holder `owner` if given. Repeating it is safe:
    /// a retry that finds nothing reports not found, which callers treat
    /// as done.
    pub async fn delete(&self, id: &str, owner: Option<&str>) -> Result<()> {
        let vars = ops::delete_type_instance::Variables {
            id: id.to_owned(),
            owner_id: owner.map(str::to_owned),
        };
        self.call::<ops::DeleteTypeInstance>("deleteTypeInstance", vars, Retry::Always)
            .await
            .map(drop)
    }

    /// Locks `ids` for `owner` (all or none); repeating it is harmless.
    pub async fn lock(&self, ids: &[String], owner: &str) -> Result<()> {
        use ops::lock_type_instances as q;
        let vars = q::Variables {
            in_: q::LockTypeInstancesInput {
                ids: ids.to_vec(),
                owner_id: owner.to_owned(),
            },
        };
        self.call::<ops::LockTypeInstances>("lockTypeInstances", vars, Retry::Always)
            .await
            .map(drop)
    }

    /// Unlocks `ids` held by `owner` (all or none).
    pub async fn unlock(&self, ids: &[String], owner: &str) -> Result<()> {
        use ops::unlock_type_instances as q;
        let vars = q::Variables {
            in_: q::UnlockTypeInstancesInput {
                ids: ids.to_vec(),
                owner_id: owner.to_owned(),
            },
        };
        self.call::<ops::UnlockTypeInstances>("unlockTypeInstances", vars, Retry::Always)
            .await
            .map(drop)
    }

    /// Sends one operation, retrying as `retry` allows.
    async fn call<Q: GraphQLQuery>(
        &self,
        operation: &'static str,
        variables: Q::Variables,
        retry: Retry,
    ) -> Result<Q::ResponseData> {
        let body = Q::build_query(variables);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.send::<Q>(operation, &body).await {
                Err(Failure::Final(e)) => return Err(e),
                Ok(data) => return Ok(data),
                Err(Failure::Unsent(detail)) if attempt < self.attempts => {
                    tracing::debug!(operation, attempt, %detail, "hub unavailable; retrying");
                }
                Err(Failure::Unknown(detail))
                    if attempt < self.attempts && retry == Retry::Always =>
                {
                    tracing::debug!(operation, attempt, %detail, "hub call failed; retrying");
                }
                Err(Failure::Unsent(detail)) => {
                    return Err(HubError::Unavailable {
                        endpoint: self.shown.clone(),
                        operation,
                        detail,
                    });
                }
                Err(Failure::Unknown(detail)) if retry == Retry::Always => {
                    return Err(HubError::Unavailable {
                        endpoint: self.shown.clone(),
                        operation,
                        detail,
                    });
                }
                Err(Failure::Unknown(detail)) => {
                    return Err(HubError::Ambiguous {
                        endpoint: self.shown.clone(),
                        operation,
                        detail,
                    });
                }
            }
            tokio::time::sleep(backoff(self.backoff, attempt)).await;
        }
    }

    async fn send<Q: GraphQLQuery>(
        &self,
        operation: &'static str,
        body: &graphql_client::QueryBody<Q::Variables>,
    ) -> Result<Q::ResponseData, Failure> {
        let mut request = self.http.post(self.endpoint.clone()).json(body);
        if let Some(header) = auth_header(&self.auth).map_err(Failure::Final)? {
            request = request.header(reqwest::header::AUTHORIZATION, header);
        }
        let response = request.send().await.map_err(|e| {
            // Connecting failed: the Hub never saw the request.
            if e.is_connect() {
                Failure::Unsent(describe(e))
            } else {
                Failure::Unknown(describe(e))
            }
        })?;
        let status = response.status();
        match status.as_u16() {
            // Not processed: overloaded or not ready, per RFC 9110.
            429 | 503 => return Err(Failure::Unsent(format!("http {status}"))),
            500..=599 => return Err(Failure::Unknown(format!("http {status}"))),
            // GraphQL servers answer 400 for queries the schema rejects,
            // with the reasons as GraphQL errors: decode those below.
            200 | 400 => {}
            code => {
                let hint = match code {
                    401 => ": check the token or basic-auth file",
                    403 => ": the credentials may not do this",
                    404 => ": check the path of the GraphQL endpoint",
                    _ => "",
                };
                return Err(Failure::Final(HubError::Http {
                    endpoint: self.shown.clone(),
                    operation,
                    status: code,
                    hint,
                }));
            }
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::Unknown(describe(e)))?;
        let decoded: Response<Q::ResponseData> = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::Final(HubError::Decode {
                operation,
                detail: e.to_string(),
            })
        })?;
        if let Some(errors) = decoded.errors.filter(|e| !e.is_empty()) {
            return Err(Failure::Final(HubError::Refused {
                operation,
                messages: errors
                    .into_iter()
                    .map(|e| without_values(e.message))
                    .collect(),
            }));
        }
        decoded.data.ok_or(Failure::Final(HubError::Decode {
            operation,
            detail: format!("http {status} without data or errors"),
        }))
    }
}

enum Failure {
    /// The Hub did not process the request: safe to send again.
    Unsent(String),
    /// Sent, outcome unknown.
    Unknown(String),
    Final(HubError),
}

/// The error chain of a transport failure (reqwest's top line alone says
/// little), without the URL: the caller names the endpoint once.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A GraphQL server that rejects a variable quotes it (graphql-js: `Variable
/// "$in" got invalid value {…}; …`), and a value may be a secret: such a
/// message is replaced by one that names the variable only.
fn without_values(message: String) -> String {
    match message.find(" got invalid value ") {
        Some(at) => format!("{} has an invalid value (not shown)", message[..at].trim()),
        None => message,
    }
}

/// The Authorization header, read from its file now.
fn auth_header(auth: &Auth) -> Result<Option<reqwest::header::HeaderValue>> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| {
                HubError::Config(format!(
                    "cannot read the hub {what} file {}: {e}",
                    path.display()
                ))
            })
    };
    let text = match auth {
        Auth::None => return Ok(None),
        Auth::Bearer(path) => {
            let token = read(path, "token")?;
            if token.is_empty() {
                return Err(HubError::Config(format!(
                    "the hub token file {} is empty",
                    path.display()
                )));
            }
            format!("Bearer {token}")
        }
        Auth::Basic(path) => {
            let pair = read(path, "basic-auth")?;
            if !pair.contains(':') {
                return Err(HubError::Config(format!(
                    "the hub basic-auth file {} must hold user:password",
                    path.display()
                )));
            }
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
            )
        }
    };
    let mut header = reqwest::header::HeaderValue::from_str(&text).map_err(|_| {
        HubError::Config("the hub credentials hold characters a header cannot carry".into())
    })?;
    header.set_sensitive(true);
    Ok(Some(header))
}

/// Jittered exponential backoff, capped at 5 s.
fn backoff(first: Duration, attempt: u32) -> Duration {
    let base = first.saturating_mul(1 << attempt.min(5).saturating_sub(1));
    let capped = base.min(Duration::from_secs(5));
    capped / 2 + capped.mul_f64(fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_with_credentials_or_other_schemes_are_refused() {
        for bad in [
            "",
            "hub:8080",
            "ftp://hub/graphql",
            "http://user:pw@hub/graphql",
        ] {
            let err = Hub::new(&HubOptions::new(bad)).expect_err(bad);
            assert!(matches!(err, HubError::Config(_)), "{bad}: {err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
        assert!(Hub::new(&HubOptions::new("https://hub.example/graphql")).is_ok());
    }

    #[test]
    fn a_missing_credentials_file_fails_at_start() {
        let mut o = HubOptions::new("http://hub/graphql");
        o.token_file = Some("/nonexistent/token".into());
        let err = Hub::new(&o).expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/token"), "{err}");
    }

    #[test]
    fn credentials_never_show_in_errors_or_debug() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cr3t-token\n").expect("write");
        let mut o = HubOptions::new("http://hub/graphql");
        o.token_file = Some(token);
        let hub = Hub::new(&o).expect("builds");
        assert!(!format!("{hub:?}").contains("s3cr3t"));
        let header = auth_header(&hub.auth).expect("reads").expect("some");
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().ok(), Some("Bearer s3cr3t-token"));
    }

    #[test]
    fn instance_debug_redacts_the_value() {
        let i = Instance {
            id: "a".into(),
            locked_by: None,
            type_ref: TypeRef {
                path: "cap.type.x".into(),
                revision: "0.1.0".into(),
            },
            backend_id: "b".into(),
            revision: 1,
            created_by: None,
            value: Some(serde_json::json!({"password": "hunter2"})),
            context: None,
        };
        assert!(!format!("{i:?}").contains("hunter2"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let first = Duration::from_millis(200);
        assert!(backoff(first, 1) <= first);
        assert!(backoff(first, 3) >= Duration::from_millis(400));
        assert!(backoff(first, 30) <= Duration::from_secs(5));
    }

    #[test]
    fn a_rejected_variable_is_named_without_its_value() {
        let m = without_values(
            r#"Variable "$in" got invalid value { value: { password: "hunter2" } }; Field "typeRef" of required type was not provided."#.into(),
        );
        assert_eq!(m, r#"Variable "$in" has an invalid value (not shown)"#);
        assert_eq!(
            without_values("TypeInstance was not found".into()),
            "TypeInstance was not found"
        );
    }

    #[test]
    fn refusals_are_classified_by_the_hubs_messages() {
        let refused = |m: &str| HubError::Refused {
            operation: "deleteTypeInstance",
            messages: vec![m.into()],
        };
        assert!(
            refused("failed to delete TypeInstance with ID \"x\": TypeInstance was not found")
                .is_not_found()
        );
        assert!(refused("failed to delete TypeInstance with ID \"x\": TypeInstance is locked by different owner").is_locked());
        assert!(refused("failed to delete TypeInstance with ID \"x\": TypeInstance is used by other TypeInstances, you must first remove y").is_in_use());
    }
}
