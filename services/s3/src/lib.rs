//! A `ValueAndContextStorageBackend` that keeps TypeInstance revisions as
//! objects in an S3 bucket (AWS S3 or an S3-compatible store): the revision
//! engine (`shared::engine`) over [`store::S3Store`]. The layout is
//! described in this crate's README.md.

pub mod config;
pub mod store;

use shared::{Error, ErrorKind, Result, engine::MANAGED_BY};

pub use crate::config::Config;
use crate::store::{Bucket, S3Store};

/// Name of the ownership tag put on every object we write.
pub const TAG_KEY: &str = "managed-by";

pub type S3Backend = shared::engine::Engine<S3Store>;

/// Builds the backend: the SDK client from the AWS settings, then one
/// HeadBucket so that a missing bucket or refused credentials stop the
/// process at start with a message saying what to fix.
pub async fn build(config: Config) -> Result<S3Backend> {
    if config.s3_bucket.is_empty() {
        return Err(Error::invalid_argument("APP_S3_BUCKET must not be empty"));
    }
    let opts = shared::engine::Options::from_args(&config.engine, &config.server)?;
    let sse = config.sse()?;
    let sdk = shared_aws::sdk_config(&config.aws)
        .await
        .map_err(Error::invalid_argument)?;
    let s3 = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(config.s3_force_path_style)
        // Checksums only where S3 requires them (DeleteObjects): the
        // default CRC trailers break several S3-compatible stores, and TLS
        // already protects the bytes in transit.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    let bucket = Bucket {
        client: aws_sdk_s3::Client::from_conf(s3),
        name: config.s3_bucket.clone(),
        sse,
        tagging: config
            .s3_tag_objects
            .then(|| format!("{TAG_KEY}={MANAGED_BY}")),
        purge_versions: config.s3_purge_versions,
    };
    match bucket.head_bucket().await {
        Ok(()) => {}
        // Unreachable now: start anyway, health reports NOT_SERVING until
        // the store answers (a store restarting must not crash-loop us).
        Err(e) if e.kind() == ErrorKind::Unavailable => {
            tracing::warn!(error = %e.detail(), "the s3 bucket cannot be reached yet");
        }
        Err(e) => return Err(e),
    }
    Ok(shared::engine::Engine::new(
        S3Store::new(bucket, config.prefix()),
        opts,
    ))
}
