//! What the S3 tests and the bench share: moto, a direct S3 client to it,
//! and the `s3-backend` binary started against a bucket.

#![allow(dead_code)]

use aws_sdk_s3::{
    Client,
    config::{Credentials, Region},
    types::{BucketVersioningStatus, VersioningConfiguration},
};
pub use testkit::{BackendProcess, moto::Moto};

/// The backend's default `APP_S3_PREFIX`.
pub const PREFIX: &str = "capact";

/// A direct aws-sdk-s3 client to `moto` (path style, test credentials).
pub async fn s3_client(moto: &Moto) -> Client {
    s3_client_at(moto.endpoint()).await
}

/// [`s3_client`] for moto's endpoint reached some other way (the bench's
/// forwarder).
pub async fn s3_client_at(endpoint: String) -> Client {
    let args = shared_aws::AwsArgs {
        region: Some(testkit::moto::REGION.into()),
        endpoint_url: Some(endpoint),
        role_arn: None,
        role_external_id: None,
        role_session_name: "test".into(),
        max_attempts: 1,
        attempt_timeout: std::time::Duration::from_secs(10),
        connect_timeout: std::time::Duration::from_secs(2),
    };
    let sdk = shared_aws::sdk_config(&args).await.expect("sdk config");
    let conf = aws_sdk_s3::config::Builder::from(&sdk)
        .region(Region::new(testkit::moto::REGION))
        .credentials_provider(Credentials::new(
            testkit::moto::ACCESS_KEY_ID,
            testkit::moto::SECRET_ACCESS_KEY,
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        // As the backend sets it (services/s3/src/lib.rs): the bench's
        // direct calls must be the same requests.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(conf)
}

pub async fn create_bucket(s3: &Client, bucket: &str, versioned: bool) {
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("create bucket");
    if versioned {
        s3.put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .expect("enable versioning");
    }
}

/// The environment of a backend using `bucket` on `moto`, plus `extra`.
pub fn backend_env(moto: &Moto, bucket: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    backend_env_at(&moto.endpoint(), bucket, extra)
}

/// Like [`backend_env`] for a moto endpoint that may not be running yet.
pub fn backend_env_at(
    endpoint: &str,
    bucket: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        (
            "AWS_ACCESS_KEY_ID".into(),
            testkit::moto::ACCESS_KEY_ID.into(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            testkit::moto::SECRET_ACCESS_KEY.into(),
        ),
        ("AWS_REGION".into(), testkit::moto::REGION.into()),
        ("AWS_ENDPOINT_URL".into(), endpoint.into()),
        // Never read the developer's ~/.aws or an instance role.
        ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
        ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ("APP_S3_BUCKET".into(), bucket.into()),
        ("APP_S3_FORCE_PATH_STYLE".into(), "true".into()),
        // Fail fast in tests: the outage test wants UNAVAILABLE, not a long retry.
        ("APP_AWS_MAX_ATTEMPTS".into(), "2".into()),
        ("APP_AWS_ATTEMPT_TIMEOUT".into(), "5s".into()),
        ("APP_AWS_CONNECT_TIMEOUT".into(), "1s".into()),
    ];
    for (k, v) in extra {
        env.push(((*k).into(), (*v).into()));
    }
    env
}

pub fn start_backend(env: &[(String, String)]) -> BackendProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    BackendProcess::start(env!("CARGO_BIN_EXE_s3-backend"), &["AWS_"], &env)
}

pub fn start_backend_on(port: u16, env: &[(String, String)]) -> BackendProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    BackendProcess::start_on(port, env!("CARGO_BIN_EXE_s3-backend"), &["AWS_"], &env)
}
