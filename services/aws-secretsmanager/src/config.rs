//! The backend's flags (each also read from an environment variable).

use clap::Parser;
use shared::{Error, Result, config::ServerConfig, engine::EngineArgs, server::BackendConfig};
use shared_aws::AwsArgs;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "aws-secretsmanager-backend",
    version,
    about = "Capact storage backend on AWS Secrets Manager"
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub aws: AwsArgs,

    /// Name prefix; every secret we write is named `<prefix>/<id>/...`.
    #[arg(long, env = "APP_SM_NAME_PREFIX", default_value = "capact")]
    pub sm_name_prefix: String,

    /// KMS key (id, ARN or alias) encrypting new secrets; default: aws/secretsmanager.
    #[arg(long, env = "APP_SM_KMS_KEY_ID")]
    pub sm_kms_key_id: Option<String>,

    /// Extra tags on every secret we create, `key=value` separated by commas.
    #[arg(long, env = "APP_SM_TAGS", value_delimiter = ',', value_parser = parse_tag)]
    pub sm_tags: Vec<(String, String)>,

    /// Days a deleted secret stays recoverable (AWS allows 7 to 30).
    #[arg(long, env = "APP_SM_RECOVERY_WINDOW_DAYS", default_value_t = 7,
          value_parser = clap::value_parser!(i64).range(7..=30))]
    pub sm_recovery_window_days: i64,

    /// Delete secrets at once, without a recovery window.
    #[arg(long, env = "APP_SM_FORCE_DELETE", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub sm_force_delete: bool,
}

impl BackendConfig for Config {
    // Store-bound: one signed HTTP call per step (BENCHMARKS.md, sixth session).
    const DEFAULT_WORKER_THREADS: usize = 1;

    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

impl Config {
    /// The name prefix without surrounding slashes, checked against what
    /// Secrets Manager allows in a name.
    pub fn prefix(&self) -> Result<String> {
        let prefix = self.sm_name_prefix.trim_matches('/').to_owned();
        if prefix.is_empty() || prefix.len() > 256 || !name_safe(&prefix) {
            return Err(Error::invalid_argument(
                "APP_SM_NAME_PREFIX must be 1-256 characters of A-Z a-z 0-9 / _ + = . @ -",
            ));
        }
        Ok(prefix)
    }

    /// The recovery window of a delete; `None`: force delete.
    pub fn recovery_window_days(&self) -> Option<i64> {
        (!self.sm_force_delete).then_some(self.sm_recovery_window_days)
    }
}

fn parse_tag(raw: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = raw
        .split_once('=')
        .ok_or_else(|| format!("tag {raw:?} is not key=value"))?;
    let k = k.trim();
    if k.is_empty() || k.len() > 128 || v.len() > 256 || k.starts_with("aws:") {
        return Err(format!(
            "tag key {k:?} must be 1-128 characters, not start with aws:, and its value at most 256"
        ));
    }
    Ok((k.to_owned(), v.trim().to_owned()))
}

/// Characters Secrets Manager allows in a name.
fn name_safe(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["aws-secretsmanager-backend"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap_or_else(|e| panic!("parse: {e}"))
    }

    #[test]
    fn defaults_are_a_seven_day_window_under_capact() {
        let c = parse(&["--aws-region", "us-east-1"]);
        assert_eq!(c.sm_name_prefix, "capact");
        assert_eq!(c.sm_recovery_window_days, 7);
        assert_eq!(c.recovery_window_days(), Some(7));
        assert!(!c.sm_force_delete);
        assert!(c.sm_tags.is_empty());
        assert_eq!(c.prefix().ok().as_deref(), Some("capact"));
    }

    #[test]
    fn force_delete_drops_the_recovery_window() {
        assert_eq!(parse(&["--sm-force-delete"]).recovery_window_days(), None);
        assert_eq!(
            parse(&["--sm-force-delete", "false"]).recovery_window_days(),
            Some(7)
        );
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
    fn recovery_window_outside_7_to_30_days_is_rejected() {
        for days in ["6", "31"] {
            assert!(
                Config::try_parse_from([
                    "aws-secretsmanager-backend",
                    "--sm-recovery-window-days",
                    days
                ])
                .is_err()
            );
        }
    }

    #[test]
    fn tags_parse_as_key_value_pairs() {
        let c = parse(&["--sm-tags", "team=platform,env=prod"]);
        assert_eq!(
            c.sm_tags,
            vec![
                ("team".to_owned(), "platform".to_owned()),
                ("env".to_owned(), "prod".to_owned())
            ]
        );
        assert!(
            Config::try_parse_from(["aws-secretsmanager-backend", "--sm-tags", "novalue"]).is_err()
        );
        assert!(
            Config::try_parse_from(["aws-secretsmanager-backend", "--sm-tags", "aws:x=1"]).is_err()
        );
    }

    #[test]
    fn prefix_with_characters_secrets_manager_refuses_is_detected() {
        assert!(name_safe("capact/prod_1"));
        assert!(!name_safe("capact prod"));
        assert!(!name_safe("capact#1"));
        assert_eq!(
            parse(&["--sm-name-prefix", "/a/b/"])
                .prefix()
                .ok()
                .as_deref(),
            Some("a/b")
        );
        assert!(parse(&["--sm-name-prefix", "/"]).prefix().is_err());
        assert!(parse(&["--sm-name-prefix", "a b"]).prefix().is_err());
    }
}
