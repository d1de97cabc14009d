//! moto's server mode (PyPI `moto[server]`): one process serving S3,
//! Secrets Manager and KMS like AWS does, accepting any credentials.

use std::{path::PathBuf, process::Command, time::Duration};

use crate::process::{Guard, free_port, read, spawn_logged, wait_for_port};

/// The credentials and region the tests hand to both the SDK and the backend.
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";
pub const REGION: &str = "us-east-1";

pub struct Moto {
    pub port: u16,
    pub process: Guard,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts moto on `port`; used to restart a stopped server at the same
    /// address (its state starts empty again).
    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("moto.log");
        let mut cmd = Command::new(crate::tool_bin("moto_server", "MOTO_SERVER_BIN"));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let mut process = spawn_logged(&mut cmd, &log);
        wait_for_port(
            port,
            &mut process,
            "moto_server",
            &log,
            Duration::from_secs(60),
        );
        Self {
            port,
            process,
            log,
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    pub fn logs(&self) -> String {
        read(&self.log)
    }

    /// The environment a backend process needs to reach this server
    /// (static test credentials, region, endpoint); add the backend's own.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_ACCESS_KEY.into()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            // Never read the developer's ~/.aws or an instance role.
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }
}
