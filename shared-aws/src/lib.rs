//! What the AWS-based backends (S3, Secrets Manager) share, so each service
//! keeps only its store's adapter: the SDK configuration built from flags and
//! environment (default credential chain, optional AssumeRole, endpoint
//! override for S3-compatible stores and emulators), one ring-based HTTP
//! client, and the classification of SDK errors into the protocol's kinds.
//!
//! Depends on the AWS runtime crates only, never on a service SDK.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_smithy_http_client::{
    Builder,
    tls::{Provider, rustls_provider::CryptoMode},
};
use aws_smithy_runtime_api::{
    client::{orchestrator::HttpResponse, result::SdkError},
    http::StatusCode,
};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use shared::{Error, ErrorKind};

pub use aws_config::SdkConfig;

/// AWS connection settings, flattened into each AWS backend's config. The
/// standard `AWS_*` variables keep their usual meaning; credentials come from
/// the default chain (environment, shared profile, web identity/IRSA,
/// container and instance metadata), never from a flag.
#[derive(clap::Args, Clone, Debug)]
pub struct AwsArgs {
    /// AWS region; else from the profile. Required one way or the other.
    #[arg(long = "aws-region", env = "AWS_REGION")]
    pub region: Option<String>,

    /// Endpoint override (S3-compatible stores, emulators, VPC endpoints).
    #[arg(long = "aws-endpoint-url", env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,

    /// Role to assume (sts:AssumeRole) with the default chain's credentials.
    #[arg(long = "aws-role-arn", env = "APP_AWS_ROLE_ARN")]
    pub role_arn: Option<String>,

    /// External id for --aws-role-arn, if the role's trust policy asks for one.
    #[arg(
        long = "aws-role-external-id",
        env = "APP_AWS_ROLE_EXTERNAL_ID",
        requires = "role_arn"
    )]
    pub role_external_id: Option<String>,

    /// Session name recorded in CloudTrail for --aws-role-arn.
    #[arg(
        long = "aws-role-session-name",
        env = "APP_AWS_ROLE_SESSION_NAME",
        default_value = "capact-storage"
    )]
    pub role_session_name: String,

    /// Attempts per AWS call (throttling, 5xx and timeouts are retried with
    /// exponential backoff and jitter) before the request fails UNAVAILABLE.
    #[arg(long = "aws-max-attempts", env = "APP_AWS_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    pub max_attempts: u32,

    /// Time limit of one AWS call attempt.
    #[arg(long = "aws-attempt-timeout", env = "APP_AWS_ATTEMPT_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub attempt_timeout: Duration,

    /// Time to establish a connection to the AWS endpoint.
    #[arg(long = "aws-connect-timeout", env = "APP_AWS_CONNECT_TIMEOUT", default_value = "3s",
          value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

/// Builds the SDK configuration; fails with an actionable message when no
/// region can be found.
pub async fn sdk_config(args: &AwsArgs) -> Result<SdkConfig, String> {
    let http = Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(args.max_attempts))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(args.connect_timeout)
                .operation_attempt_timeout(args.attempt_timeout)
                .build(),
        );
    if let Some(region) = &args.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &args.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let base = loader.load().await;
    if base.region().is_none() {
        return Err(
            "no AWS region: set AWS_REGION (or --aws-region, or a region in the AWS profile)"
                .into(),
        );
    }
    let Some(role_arn) = &args.role_arn else {
        return Ok(base);
    };
    let mut role = aws_config::sts::AssumeRoleProvider::builder(role_arn)
        .session_name(&args.role_session_name)
        .configure(&base);
    if let Some(id) = &args.role_external_id {
        role = role.external_id(id);
    }
    let provider = role.build().await;
    Ok(base
        .into_builder()
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(provider),
        )
        .build())
}

/// Error codes AWS services use for refused credentials or permissions.
const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "KMS.AccessDeniedException",
];

/// Error codes meaning "try again later" although the status may be 4xx.
const TRANSIENT: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "InternalServiceError",
    "ServiceUnavailable",
];

/// The kind an SDK error has whatever the operation: the store unreachable
/// or overloaded (after the SDK's own retries) → Unavailable; credentials or
/// policy refused → PermissionDenied. `None` for a service answer the
/// backend must interpret itself (not found, precondition failed, ...).
pub fn common_kind<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<ErrorKind> {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Some(ErrorKind::Unavailable),
        // A response we could not parse: a proxy error page, a cut body.
        SdkError::ResponseError(_) => Some(ErrorKind::Unavailable),
        SdkError::ConstructionFailure(_) => Some(ErrorKind::Internal),
        SdkError::ServiceError(e) => {
            let status = e.raw().status();
            let code = e.err().code().unwrap_or_default();
            if DENIED.contains(&code) || status.as_u16() == 403 {
                Some(ErrorKind::PermissionDenied)
            } else if TRANSIENT.contains(&code)
                || status.is_server_error()
                || status.as_u16() == 429
            {
                Some(ErrorKind::Unavailable)
            } else {
                None
            }
        }
        _ => Some(ErrorKind::Internal),
    }
}

/// The HTTP status of a service error, if the error is one.
pub fn status<E>(err: &SdkError<E, HttpResponse>) -> Option<StatusCode> {
    match err {
        SdkError::ServiceError(e) => Some(e.raw().status()),
        _ => None,
    }
}

/// The AWS error code of a service error (`NoSuchKey`, `PreconditionFailed`...).
pub fn code<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<&str> {
    match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}

/// An SDK error as a backend error, for the cases the caller does not
/// interpret: `what` names the store operation (e.g. "s3 put object"); the
/// SDK error becomes the logged source, never part of the message.
pub fn to_error<E>(what: &str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = common_kind(&err).unwrap_or(ErrorKind::Internal);
    let message = match kind {
        ErrorKind::PermissionDenied => format!("{what}: access denied by the store"),
        ErrorKind::Unavailable => format!("{what}: store unavailable"),
        _ => format!("{what} failed"),
    };
    Error::new(kind, message)
        .with_source(aws_smithy_types::error::display::DisplayErrorContext(err).to_string())
}
