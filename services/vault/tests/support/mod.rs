//! Real processes for the integration tests: an OpenBao dev server and the
//! `vault-backend` binary (through testkit), each stopped by its PID on drop.
#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

pub use testkit::{BackendProcess, Guard};

pub const ROOT_TOKEN: &str = "root-token-for-tests-7f3a";

/// The `bao` binary: `BAO_BIN`, else `bao` on PATH.
pub fn bao_bin() -> PathBuf {
    testkit::tool_bin("bao", "BAO_BIN")
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
            process: Guard::new(child),
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

/// The `vault-backend` binary with only the given environment.
pub fn start_backend(env: &[(&str, &str)]) -> BackendProcess {
    BackendProcess::start(
        env!("CARGO_BIN_EXE_vault-backend"),
        &["VAULT_", "BAO_"],
        env,
    )
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
