//! Real processes for the integration tests: an OpenBao dev server and the
//! `vault-backend` binary, each stopped (by its own PID) when dropped.
#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use shared::proto::storage_backend::value_and_context_storage_backend_client::ValueAndContextStorageBackendClient;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub const ROOT_TOKEN: &str = "root-token-for-tests-7f3a";

/// The `bao` binary: `BAO_BIN`, else `bao` on PATH (tests/run.sh puts the
/// test virtualenv's bin first). Missing is a test failure, not a skip.
pub fn bao_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BAO_BIN") {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("bao");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the OpenBao binary `bao` was not found: run ./tests/run.sh (or tests/setup.sh and set BAO_BIN)"
    );
}

/// A port that is free now, with the next one free too (OpenBao's dev
/// cluster listener takes port + 1).
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free pair of ports found");
}

/// A child process killed (by its PID) and reaped on drop.
pub struct Guard(pub Option<Child>);

impl Guard {
    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An OpenBao dev server (in-memory, unsealed, KV v2 at `secret/`).
pub struct Bao {
    pub port: u16,
    pub tls_dir: Option<tempfile::TempDir>,
    pub process: Guard,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bao {
    pub fn start() -> Self {
        Self::start_on(free_port(), false)
    }

    pub fn start_tls() -> Self {
        Self::start_on(free_port(), true)
    }

    pub fn start_on(port: u16, tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("bao.log");
        let tls_dir = tls.then(|| tempfile::tempdir().expect("tempdir"));
        let mut cmd = Command::new(bao_bin());
        cmd.arg("server")
            .arg("-dev")
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .arg("-dev-no-store-token")
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"));
        if let Some(d) = &tls_dir {
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", d.path().display()));
        }
        let out = std::fs::File::create(&log).expect("bao log file");
        let err = out.try_clone().expect("bao log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start bao");
        let bao = Self {
            port,
            tls_dir,
            process: Guard(Some(child)),
            log,
            _dir: dir,
        };
        bao.wait_ready();
        bao
    }

    pub fn addr(&self) -> String {
        let scheme = if self.tls_dir.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.tls_dir.as_ref().map(|d| d.path().join("vault-ca.pem"))
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.cli(&["status"]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("openbao did not become ready within 30s; its log:\n{log}");
    }

    /// Runs the `bao` CLI against this server as root; Ok(stdout) on success.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        self.cli_input(args, None)
    }

    pub fn cli_input(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut cmd = Command::new(bao_bin());
        cmd.args(args)
            .env("BAO_ADDR", self.addr())
            .env("BAO_TOKEN", ROOT_TOKEN)
            .env_remove("VAULT_TOKEN")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ca) = self.ca_cert() {
            cmd.env("BAO_CACERT", ca);
        }
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            pipe.write_all(input.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Like [`Bao::cli`], panicking with the CLI's message on failure.
    pub fn must(&self, args: &[&str]) -> String {
        self.cli(args)
            .unwrap_or_else(|e| panic!("bao {args:?} failed: {e}"))
    }
}

/// The `vault-backend` binary, run with env configuration, its stdout and
/// stderr captured to one file.
pub struct BackendProcess {
    pub url: String,
    pub process: Guard,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl BackendProcess {
    pub fn start(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("backend.log");
        let port = free_port();
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vault-backend"));
        // Only what the test sets: nothing from the developer's shell.
        for (k, _) in std::env::vars() {
            if k.starts_with("VAULT_") || k.starts_with("APP_") || k.starts_with("BAO_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("APP_GRPC_ADDR", format!("127.0.0.1:{port}"))
            .env("APP_METRICS_ADDR", "off")
            .env("APP_HEALTH_INTERVAL", "1s")
            .env("APP_HEALTH_FAILURE_THRESHOLD", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start vault-backend");
        Self {
            url: format!("http://127.0.0.1:{port}"),
            process: Guard(Some(child)),
            log,
            _dir: dir,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(self.url.clone())
            .expect("url")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connect to the backend")
    }

    pub async fn client(&self) -> ValueAndContextStorageBackendClient<Channel> {
        ValueAndContextStorageBackendClient::new(self.channel().await)
    }

    /// Waits until health says `want`, or panics with the backend's log.
    pub async fn wait_health(&mut self, want: ServingStatus) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(c) = self.process.0.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "vault-backend exited with {status}; its log:\n{}",
                    self.logs()
                );
            }
            if let Ok(ch) = tonic::transport::Endpoint::from_shared(self.url.clone())
                .expect("url")
                .connect()
                .await
            {
                let r = HealthClient::new(ch)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if let Ok(r) = r
                    && r.into_inner().status == want as i32
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "vault-backend did not report {want:?} within 30s; its log:\n{}",
            self.logs()
        );
    }

    pub async fn serving(mut self) -> Self {
        self.wait_health(ServingStatus::Serving).await;
        self
    }
}

/// Runs the whole conformance suite and returns its report.
pub async fn conformance(url: &str) -> conformance::Report {
    let target = conformance::Target::connect(&conformance::Connect::plain(url), None)
        .await
        .expect("connect the conformance suite");
    conformance::run(Arc::new(target), None, |name, outcome| {
        println!("{}", conformance::line(name, outcome));
    })
    .await
}

pub fn assert_clean(report: &conformance::Report) {
    println!("{}", report.summary());
    assert_eq!(
        report.failures(),
        Vec::<&str>::new(),
        "conformance failures"
    );
    assert!(
        report.passed() >= 40,
        "only {} cases passed",
        report.passed()
    );
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
