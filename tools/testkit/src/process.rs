//! Child processes: a kill-on-drop guard, free ports, tool lookup, and the
//! backend binary under test.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use shared::proto::storage_backend::value_and_context_storage_backend_client::ValueAndContextStorageBackendClient;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A third-party tool: the path in `env_var` if set, else `name` on PATH
/// (tests/run.sh puts the test virtualenv and the tool cache first).
/// Missing is a test failure with a hint, never a skip.
pub fn tool_bin(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`{name}` was not found: run ./tests/run.sh (or tests/setup.sh) or set {env_var}"
            )
        })
}

/// A child process killed (by its PID) and reaped on drop.
pub struct Guard(pub Option<Child>);

impl Guard {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The exit status, if the process has already ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `port` accepts connections; panics (with `log`'s content)
/// if the process exits or the wait exceeds `within`.
pub fn wait_for_port(port: u16, guard: &mut Guard, what: &str, log: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Some(status) = guard.exited() {
            panic!("{what} exited with {status}; its log:\n{}", read(log));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "{what} did not listen on port {port} within {within:?}; its log:\n{}",
        read(log)
    );
}

pub(crate) fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Spawns `cmd` with stdout and stderr appended to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Guard {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let err = out.try_clone().expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    Guard::new(child)
}

/// A backend binary under test, started with only the environment the test
/// gives (nothing `APP_*`/store-specific from the developer's shell), its
/// output captured to a log file in its own temporary directory.
pub struct BackendProcess {
    pub url: String,
    pub port: u16,
    pub process: Guard,
    pub log: PathBuf,
    name: String,
    dir: tempfile::TempDir,
}

impl BackendProcess {
    /// `bin` is the `env!("CARGO_BIN_EXE_<name>")` of the calling test;
    /// variables starting with any of `clear_prefixes` (plus `APP_`) are
    /// removed from the inherited environment.
    pub fn start(bin: &str, clear_prefixes: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), bin, clear_prefixes, env)
    }

    /// Like [`BackendProcess::start`] on a given port (a restart keeps its URL).
    pub fn start_on(port: u16, bin: &str, clear_prefixes: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("backend.log");
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars() {
            if k.starts_with("APP_") || clear_prefixes.iter().any(|p| k.starts_with(p)) {
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
        // `TESTKIT_BACKEND_ENV="K=V;K=V"`: extra settings for every backend
        // started, applied last (e.g. a bench run with APP_WORKER_THREADS=1).
        if let Ok(extra) = std::env::var("TESTKIT_BACKEND_ENV") {
            for (k, v) in extra.split(';').filter_map(|kv| kv.split_once('=')) {
                cmd.env(k.trim(), v.trim());
            }
        }
        let name = Path::new(bin)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| bin.to_owned());
        let process = spawn_logged(&mut cmd, &log);
        Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            process,
            log,
            name,
            dir,
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.0.as_ref().map(std::process::Child::id)
    }

    /// A scratch directory that lives as long as the process.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn logs(&self) -> String {
        read(&self.log)
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(self.url.clone())
            .expect("url")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
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
            if let Some(status) = self.process.exited() {
                panic!(
                    "{} exited with {status}; its log:\n{}",
                    self.name,
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
            // Fine-grained: benches read start-to-SERVING off this wait.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{} did not report {want:?} within 30s; its log:\n{}",
            self.name,
            self.logs()
        );
    }

    /// Waits for SERVING and returns the process.
    pub async fn serving(mut self) -> Self {
        self.wait_health(ServingStatus::Serving).await;
        self
    }

    /// Waits until the process exits by itself (a startup failure); returns
    /// its exit code and log.
    pub fn wait_exit(&mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.process.exited() {
                return (status.code(), self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} kept running; its log:\n{}", self.name, self.logs());
    }
}
