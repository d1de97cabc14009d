//! The backend's flags (each also read from an environment variable).

use clap::{ArgAction, Parser, ValueEnum};
use shared::{Error, Result, config::ServerConfig, engine::EngineArgs, server::BackendConfig};
use shared_aws::AwsArgs;

use crate::store::Sse;

/// Server-side encryption of the objects we write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SseMode {
    /// No encryption header: the bucket's default encryption applies.
    None,
    /// SSE-S3 (AES256).
    #[value(name = "aes256")]
    Aes256,
    /// SSE-KMS, with --s3-sse-kms-key-id or the account's aws/s3 key.
    #[value(name = "aws:kms")]
    AwsKms,
}

#[derive(Parser, Clone, Debug)]
#[command(
    name = "s3-backend",
    version,
    about = "Capact storage backend on S3 (AWS or S3-compatible)"
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub aws: AwsArgs,

    /// Bucket holding the objects; it must exist (checked at start).
    #[arg(long, env = "APP_S3_BUCKET")]
    pub s3_bucket: String,

    /// Key prefix; every TypeInstance lives below `<prefix>/<id>/`.
    #[arg(long, env = "APP_S3_PREFIX", default_value = "capact")]
    pub s3_prefix: String,

    /// Path-style addressing (`<endpoint>/<bucket>/<key>`), needed by most
    /// S3-compatible stores and emulators.
    #[arg(long, env = "APP_S3_FORCE_PATH_STYLE", default_value_t = false,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub s3_force_path_style: bool,

    /// Server-side encryption requested on every write.
    #[arg(long, env = "APP_S3_SSE", value_enum, default_value = "none")]
    pub s3_sse: SseMode,

    /// KMS key id or ARN for --s3-sse aws:kms (default: the aws/s3 key).
    #[arg(long, env = "APP_S3_SSE_KMS_KEY_ID")]
    pub s3_sse_kms_key_id: Option<String>,

    /// On a versioned bucket, deleting also removes every old version and
    /// delete marker of the objects (they hold secrets). `false` leaves
    /// them to the bucket's lifecycle rules.
    #[arg(long, env = "APP_S3_PURGE_VERSIONS", default_value_t = true,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub s3_purge_versions: bool,

    /// Tag every object `managed-by=capact-storage` (needs
    /// s3:PutObjectTagging; some S3-compatible stores lack tagging).
    #[arg(long, env = "APP_S3_TAG_OBJECTS", default_value_t = true,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub s3_tag_objects: bool,
}

impl BackendConfig for Config {
    // Store-bound: one signed HTTP call per step (BENCHMARKS.md, sixth session).
    const DEFAULT_WORKER_THREADS: usize = 1;

    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

impl Config {
    pub fn sse(&self) -> Result<Sse> {
        match (self.s3_sse, &self.s3_sse_kms_key_id) {
            (SseMode::AwsKms, key) => Ok(Sse::Kms(key.clone().filter(|k| !k.is_empty()))),
            (_, Some(k)) if !k.is_empty() => Err(Error::invalid_argument(
                "APP_S3_SSE_KMS_KEY_ID needs APP_S3_SSE=aws:kms",
            )),
            (SseMode::Aes256, _) => Ok(Sse::S3),
            (SseMode::None, _) => Ok(Sse::BucketDefault),
        }
    }

    pub fn prefix(&self) -> String {
        self.s3_prefix.trim_matches('/').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["s3-backend", "--s3-bucket", "b"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap_or_else(|e| panic!("parse: {e}"))
    }

    #[test]
    fn defaults_purge_versions_tag_objects_and_use_the_bucket_encryption() {
        let c = parse(&[]);
        assert!(c.s3_purge_versions);
        assert!(c.s3_tag_objects);
        assert!(!c.s3_force_path_style);
        assert_eq!(c.sse().ok(), Some(Sse::BucketDefault));
        assert_eq!(c.prefix(), "capact");
    }

    #[test]
    fn engine_defaults_are_a_sixty_second_lease_and_eight_attempts() {
        let c = parse(&[]);
        assert_eq!(c.engine.intent_lease, Duration::from_secs(60));
        assert_eq!(c.engine.cas_attempts, 8);
        assert!(shared::engine::Options::from_args(&c.engine, &c.server).is_ok());
        let short = parse(&["--intent-lease", "5s"]);
        assert!(shared::engine::Options::from_args(&short.engine, &short.server).is_err());
    }

    #[test]
    fn force_path_style_works_as_a_bare_flag() {
        assert!(parse(&["--s3-force-path-style"]).s3_force_path_style);
        assert!(!parse(&["--s3-force-path-style", "false"]).s3_force_path_style);
    }

    #[test]
    fn kms_key_id_is_used_with_aws_kms() {
        let c = parse(&["--s3-sse", "aws:kms", "--s3-sse-kms-key-id", "alias/k"]);
        assert_eq!(c.sse().ok(), Some(Sse::Kms(Some("alias/k".into()))));
    }

    #[test]
    fn kms_key_id_without_aws_kms_is_a_configuration_error() {
        let c = parse(&["--s3-sse", "aes256", "--s3-sse-kms-key-id", "k"]);
        assert!(c.sse().is_err());
    }

    #[test]
    fn bucket_is_required() {
        assert!(Config::try_parse_from(["s3-backend"]).is_err());
    }

    #[test]
    fn prefix_slashes_are_trimmed() {
        assert_eq!(parse(&["--s3-prefix", "/a/b/"]).prefix(), "a/b");
    }
}
