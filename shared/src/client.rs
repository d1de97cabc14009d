//! A Hub-like client: how to reach a backend ([`Connect`]) and one set of
//! calls that works against both services ([`Client`]).
//!
//! The service kind is learned from `BackendInfo/Describe` (`accept_value`),
//! exactly as the Hub learns it from the registration's `acceptValue`, and
//! every call is dispatched to `ValueAndContextStorageBackend` or
//! `ContextStorageBackend` accordingly. The conformance suite, `storagectl`
//! and `storage-bench` all talk to backends through this module; policy that
//! belongs to one of them (size checks before sending, exit codes, the
//! suite's own context) stays with it.

use std::{fmt, path::PathBuf, time::Duration};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::{
    Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{
    coalesce::Coalescing,
    proto::{
        info::{DescribeRequest, DescribeResponse, backend_info_client::BackendInfoClient},
        storage_backend::{
            self as pb, context_storage_backend_client::ContextStorageBackendClient,
            value_and_context_storage_backend_client::ValueAndContextStorageBackendClient,
        },
    },
};

/// How to reach a backend: address and TLS.
///
/// Deadlines are given apart, as [`Timeouts`], so that this struct keeps
/// exactly the fields callers already build it from with struct literals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connect {
    /// `host:port`, `http://host:port` or `https://host:port`.
    pub url: String,
    /// PEM CA bundle that signed the backend's certificate; enables TLS.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Name to verify in the backend's certificate, when it differs from the host.
    pub tls_domain: Option<String>,
}

/// Deadlines of connecting and of each call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub call: Duration,
}

impl Default for Timeouts {
    /// Quick to notice an unreachable backend, patient with slow stores.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            call: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    /// The same deadline for connecting and for each call.
    pub fn both(timeout: Duration) -> Self {
        Self {
            connect: timeout,
            call: timeout,
        }
    }
}

/// Why connecting failed, split by who has to act.
#[derive(Debug)]
pub enum ConnectError {
    /// The settings are wrong (URL, TLS options that do not fit together).
    Invalid(String),
    /// A file could not be read, TLS could not be set up or the backend
    /// could not be reached.
    Failed(String),
    /// The backend was reached but answered Describe with an error.
    Describe(Status),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(m) | Self::Failed(m) => f.write_str(m),
            Self::Describe(s) => write!(f, "Describe failed: {:?}: {}", s.code(), s.message()),
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<ConnectError> for String {
    fn from(err: ConnectError) -> Self {
        err.to_string()
    }
}

impl Connect {
    /// Plaintext (or TLS for an `https://` URL) with no TLS files.
    pub fn plain(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// TLS is on for an `https://` URL or as soon as any TLS file is given.
    pub fn tls(&self) -> bool {
        self.url.starts_with("https://") || self.tls_ca.is_some() || self.tls_cert.is_some()
    }

    /// The URL tonic dials, with the scheme made explicit.
    pub fn endpoint_url(&self) -> Result<String, ConnectError> {
        if self.url.is_empty() {
            return Err(ConnectError::Invalid("--url is empty".into()));
        }
        if let Some((scheme, _)) = self.url.split_once("://") {
            return match scheme {
                "http" if self.tls() => Err(ConnectError::Invalid(
                    "TLS options were given but --url starts with http://: use https:// or host:port"
                        .into(),
                )),
                "http" | "https" => Ok(self.url.clone()),
                _ => Err(ConnectError::Invalid(format!(
                    "--url scheme {scheme}:// is not supported: use host:port, http:// or https://"
                ))),
            };
        }
        let scheme = if self.tls() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.url))
    }

    fn endpoint(&self, timeouts: Timeouts) -> Result<Endpoint, ConnectError> {
        let url = self.endpoint_url()?;
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| ConnectError::Invalid(format!("invalid --url {url}: {}", chain(&e))))?
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.call);
        if self.tls() {
            endpoint = endpoint
                .tls_config(self.tls_config()?)
                .map_err(|e| ConnectError::Failed(format!("tls setup failed: {}", chain(&e))))?;
        }
        Ok(endpoint)
    }

    fn tls_config(&self) -> Result<ClientTlsConfig, ConnectError> {
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| ConnectError::Failed(format!("cannot read {}: {e}", p.display())))
        };
        // tonic is built without a bundle of public roots: an operator always
        // names the CA of a backend's (usually private) certificate.
        let ca = self.tls_ca.as_ref().ok_or_else(|| {
            ConnectError::Invalid(
                "TLS needs --tls-ca: no CA is trusted unless told which one".into(),
            )
        })?;
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(domain) = &self.tls_domain {
            cfg = cfg.domain_name(domain.clone());
        }
        Ok(cfg)
    }

    /// [`Connect::channel_with`] the default [`Timeouts`].
    pub async fn channel(&self) -> Result<Channel, ConnectError> {
        self.channel_with(Timeouts::default()).await
    }

    /// Connects now, so that an unreachable backend is reported as such and
    /// not as the failure of the first call.
    pub async fn channel_with(&self, timeouts: Timeouts) -> Result<Channel, ConnectError> {
        let endpoint = self.endpoint(timeouts)?;
        let url = endpoint.uri().to_string();
        endpoint
            .connect_with_connector(CoalescingConnector)
            .await
            .map_err(|e| ConnectError::Failed(format!("cannot connect to {url}: {}", chain(&e))))
    }
}

/// Dials TCP without Nagle and wraps the stream in [`Coalescing`], so that
/// a request's HEADERS and DATA leave in one write, as grpc-go's client (the
/// Hub's) sends them: tonic's client otherwise writes them apart and wakes
/// the backend twice per call. TLS, when set, is layered on top by tonic.
#[derive(Clone, Copy, Debug)]
struct CoalescingConnector;

impl tonic::codegen::Service<tonic::codegen::http::Uri> for CoalescingConnector {
    type Response = TokioIo<Coalescing<TcpStream>>;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        Box::pin(async move {
            let invalid =
                || std::io::Error::new(std::io::ErrorKind::InvalidInput, "the url has no host");
            let host = uri.host().ok_or_else(invalid)?;
            // `[::1]` in a URL, `::1` to the resolver.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let default_port = if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            };
            let port = uri.port_u16().unwrap_or(default_port);
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(Coalescing::new(stream)))
        })
    }
}

/// An error and its sources on one line: tonic's transport errors say little
/// at the top ("transport error") and the cause sits further down the chain.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Room for the fields around a value in one message.
const MESSAGE_OVERHEAD: u64 = 64 * 1024;
/// tonic's default limit, kept as the floor.
const MIN_MESSAGE: usize = 4 << 20;

/// A context as sent on the wire: JSON text, or none. The value service's
/// field is optional (`None` leaves it unset); the context service's is not,
/// so `None` goes out as empty there.
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
    pub async fn connect(connect: &Connect, timeouts: Timeouts) -> Result<Self, ConnectError> {
        let channel = connect.channel_with(timeouts).await?;
        Self::describe(channel)
            .await
            .map_err(ConnectError::Describe)
    }

    /// Calls Describe on a channel already connected.
    pub async fn describe(channel: Channel) -> Result<Self, Status> {
        let info = BackendInfoClient::new(channel.clone())
            .describe(DescribeRequest {})
            .await?
            .into_inner();
        Ok(Self::new(channel, info))
    }

    /// A client for a backend already described (tests, or a cached Describe).
    pub fn new(channel: Channel, info: DescribeResponse) -> Self {
        // Large enough for the biggest value the backend accepts, both ways,
        // and for one byte more, so that an oversized value reaches the
        // backend and is refused there, not by this client's codec.
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

    /// The message for a value given to a context backend.
    pub fn value_refused(&self, what: &str) -> String {
        format!(
            "the {} backend stores no value (acceptValue: false): {what}",
            self.info.name
        )
    }

    /// The message for a context-backend-only call made to a value backend.
    pub fn context_only(&self, what: &str) -> String {
        format!(
            "{what} is served by context backends only; the {} backend takes values (acceptValue: true)",
            self.info.name
        )
    }

    /// Checks a value against the backend's limit. The calls do not: the
    /// conformance suite sends oversized values on purpose, while a CLI
    /// refuses them before sending.
    pub fn check_size(&self, value: &[u8]) -> Result<(), String> {
        let len = value.len() as u64;
        if self.info.max_value_bytes > 0 && len > self.info.max_value_bytes {
            return Err(format!(
                "the value is {len} bytes, the {} backend accepts at most {}",
                self.info.name, self.info.max_value_bytes
            ));
        }
        Ok(())
    }

    /// GetValue, as answered: `None` when the response left `value` unset,
    /// which the Hub treats as a failure; each caller words it its own way.
    pub async fn get(
        &self,
        id: &str,
        revision: u32,
        context: Context,
    ) -> Result<Option<Bytes>, Status> {
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
        Ok(resp.into_inner().value)
    }

    /// OnCreate; `value` is required by value backends and refused by context
    /// backends (locally, as INVALID_ARGUMENT). Returns the context the
    /// backend wants stored, as sent (possibly empty).
    pub async fn create(
        &self,
        id: &str,
        value: Option<Bytes>,
        context: Context,
    ) -> Result<Option<Bytes>, Status> {
        let resp = match (self.accept_value(), value) {
            (true, Some(value)) => {
                self.value_client()
                    .on_create(pb::OnCreateValueAndContextRequest {
                        type_instance_id: id.into(),
                        value,
                        context,
                    })
                    .await?
            }
            (true, None) => return Err(Status::invalid_argument("create needs a value")),
            (false, Some(_)) => {
                return Err(Status::invalid_argument(
                    self.value_refused("omit the value"),
                ));
            }
            (false, None) => {
                self.context_client()
                    .on_create(pb::OnCreateRequest {
                        type_instance_id: id.into(),
                        context: context.unwrap_or_default(),
                    })
                    .await?
            }
        };
        Ok(resp.into_inner().context)
    }

    /// OnUpdate to `revision`; value rules as for [`Client::create`].
    pub async fn update(
        &self,
        id: &str,
        revision: u32,
        value: Option<Bytes>,
        context: Context,
        owner: Option<String>,
    ) -> Result<Option<Bytes>, Status> {
        let resp = match (self.accept_value(), value) {
            (true, Some(new_value)) => {
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
            (true, None) => return Err(Status::invalid_argument("update needs a value")),
            (false, Some(_)) => {
                return Err(Status::invalid_argument(
                    self.value_refused("omit the value"),
                ));
            }
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
        Ok(resp.into_inner().context)
    }

    /// OnDelete: the TypeInstance with every revision and its lock.
    pub async fn delete(
        &self,
        id: &str,
        context: Context,
        owner: Option<String>,
    ) -> Result<(), Status> {
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
    /// so a context given for a context backend is refused (locally, as
    /// INVALID_ARGUMENT), not dropped.
    pub async fn delete_revision(
        &self,
        id: &str,
        revision: u32,
        context: Context,
        owner: Option<String>,
    ) -> Result<(), Status> {
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
                return Err(Status::invalid_argument(
                    "OnDeleteRevision of a context backend carries no context",
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

    pub async fn lock(&self, id: &str, owner: &str, context: Context) -> Result<(), Status> {
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

    /// OnUnlock, whoever holds the lock (the wire carries no owner).
    pub async fn unlock(&self, id: &str, context: Context) -> Result<(), Status> {
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
    pub async fn locked_by(&self, id: &str, context: Context) -> Result<Option<String>, Status> {
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

    /// GetPreCreateValue (context backends only; refused locally, as
    /// INVALID_ARGUMENT, for value backends); `None` when the backend has no
    /// value to offer.
    pub async fn pre_create_value(&self, context: Context) -> Result<Option<Bytes>, Status> {
        if self.accept_value() {
            return Err(Status::invalid_argument(
                self.context_only("GetPreCreateValue"),
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_gets_a_scheme() {
        assert_eq!(
            Connect::plain("localhost:50051").endpoint_url().ok(),
            Some("http://localhost:50051".to_owned())
        );
        let tls = Connect {
            tls_ca: Some("ca.pem".into()),
            ..Connect::plain("backend:443")
        };
        assert_eq!(
            tls.endpoint_url().ok(),
            Some("https://backend:443".to_owned())
        );
    }

    #[test]
    fn explicit_schemes_are_kept_or_refused() {
        assert_eq!(
            Connect::plain("https://b:1").endpoint_url().ok(),
            Some("https://b:1".to_owned())
        );
        assert!(Connect::plain("unix:///tmp/s").endpoint_url().is_err());
        assert!(Connect::plain("").endpoint_url().is_err());
        let mixed = Connect {
            tls_ca: Some("ca.pem".into()),
            ..Connect::plain("http://b:1")
        };
        assert!(matches!(
            mixed.endpoint_url(),
            Err(ConnectError::Invalid(_))
        ));
    }

    #[test]
    fn https_without_a_ca_is_invalid() {
        let err = Connect::plain("https://b:1").tls_config().err();
        assert!(matches!(err, Some(ConnectError::Invalid(_))));
    }

    #[test]
    fn describe_errors_read_as_before() {
        let err = ConnectError::Describe(Status::unimplemented("no"));
        assert_eq!(err.to_string(), "Describe failed: Unimplemented: no");
    }
}
