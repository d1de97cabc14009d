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

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and, signed by it, a server certificate for 127.0.0.1
/// (`server.crt`/`server.key`) and a client certificate
/// (`client.crt`/`client.key`), all in `dir`.
pub fn make_certs(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "30"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=vault-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let mut csr = vec!["req", "-nodes"];
        csr.extend(ec);
        let (key, req, crt, extf, subj) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
            format!("/CN=vault-test-{name}"),
        );
        csr.extend(["-keyout", &key, "-out", &req, "-subj", &subj]);
        openssl(dir, &csr);
        std::fs::write(
            dir.join(&extf),
            format!("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{ext}"),
        )
        .expect("write extension file");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &req,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                &extf,
                "-out",
                &crt,
            ],
        );
    }
}

/// A non-dev OpenBao (raft storage in a tempdir) whose listener requires a
/// client certificate signed by the test CA; initialised with one unseal
/// key, unsealed, KV v2 enabled at `secret/`.
pub struct MtlsBao {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub root_token: String,
    pub process: Guard,
    pub log: PathBuf,
}

impl MtlsBao {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        make_certs(dir.path());
        let port = free_port();
        let d = dir.path().display();
        std::fs::create_dir(dir.path().join("raft")).expect("raft dir");
        let config = format!(
            r#"storage "raft" {{
  path = "{d}/raft"
  node_id = "node1"
  # Raft's default 1 MiB entry limit is below the backend's value limit.
  max_entry_size = 67108864
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cport}"
  tls_cert_file = "{d}/server.crt"
  tls_key_file = "{d}/server.key"
  tls_client_ca_file = "{d}/ca.crt"
  tls_require_and_verify_client_cert = true
}}
api_addr = "https://127.0.0.1:{port}"
cluster_addr = "https://127.0.0.1:{cport}"
disable_mlock = true
"#,
            cport = port + 1
        );
        let config_path = dir.path().join("bao.hcl");
        std::fs::write(&config_path, config).expect("write bao config");
        let log = dir.path().join("bao.log");
        let out = std::fs::File::create(&log).expect("bao log file");
        let err = out.try_clone().expect("bao log file");
        let child = Command::new(bao_bin())
            .arg("server")
            .arg(format!("-config={}", config_path.display()))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start bao");
        let mut bao = Self {
            port,
            dir,
            root_token: String::new(),
            process: Guard::new(child),
            log,
        };
        bao.init_and_unseal();
        bao
    }

    pub fn addr(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn init_and_unseal(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let init = loop {
            match self.cli(&[
                "operator",
                "init",
                "-key-shares=1",
                "-key-threshold=1",
                "-format=json",
            ]) {
                Ok(out) => break out,
                Err(e) if Instant::now() > deadline => panic!(
                    "bao operator init failed: {e}\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let init: serde_json::Value = serde_json::from_str(&init).expect("init json");
        let key = init["unseal_keys_b64"][0]
            .as_str()
            .expect("unseal key")
            .to_owned();
        self.root_token = init["root_token"].as_str().expect("root token").to_owned();
        self.must(&["operator", "unseal", &key]);
        // Raft elects itself leader shortly after unseal: 200 from then on.
        loop {
            let status = self.health_status();
            if status == Some(200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "openbao health is {status:?} after unseal\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The secrets engine can still refuse while the leader settles.
        loop {
            match self.cli(&["secrets", "enable", "-path=secret", "kv-v2"]) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => panic!("enable kv-v2: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The HTTP status of /v1/sys/health (via curl with the client certificate).
    fn health_status(&self) -> Option<u16> {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(self.file("ca.crt"))
            .arg("--cert")
            .arg(self.file("client.crt"))
            .arg("--key")
            .arg(self.file("client.key"))
            .arg(format!("{}/v1/sys/health", self.addr()))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// Runs the `bao` CLI as root with the client certificate.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(bao_bin())
            .args(args)
            .env("BAO_ADDR", self.addr())
            .env("BAO_TOKEN", &self.root_token)
            .env("BAO_CACERT", self.file("ca.crt"))
            .env("BAO_CLIENT_CERT", self.file("client.crt"))
            .env("BAO_CLIENT_KEY", self.file("client.key"))
            .env_remove("VAULT_TOKEN")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn must(&self, args: &[&str]) -> String {
        self.cli(args)
            .unwrap_or_else(|e| panic!("bao {args:?} failed: {e}"))
    }
}

/// A fresh RSA key pair in `dir`: `<name>.key` (private, PEM) and
/// `<name>.pub` (public, PEM), for signing test JWTs.
pub fn make_rsa_key(dir: &Path, name: &str) {
    let (key, public) = (format!("{name}.key"), format!("{name}.pub"));
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &key,
        ],
    );
    openssl(dir, &["pkey", "-in", &key, "-pubout", "-out", &public]);
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An RS256 JWT with `claims`, signed with `<dir>/<key>.key` by the
/// `openssl` CLI (the workspace has no JWT crate; RS256 signatures need no
/// conversion, unlike ES256's DER).
pub fn sign_jwt(dir: &Path, key: &str, claims: &serde_json::Value) -> String {
    use std::io::Write;
    let header = base64url(br#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = base64url(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.join(format!("{key}.key")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl dgst");
    child
        .stdin
        .take()
        .expect("openssl stdin")
        .write_all(signing_input.as_bytes())
        .expect("write the signing input");
    let out = child.wait_with_output().expect("openssl dgst output");
    assert!(
        out.status.success(),
        "openssl dgst failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{signing_input}.{}", base64url(&out.stdout))
}

/// Claims OpenBao's `jwt` role of the tests accepts: audience
/// `capact-storage`, subject `capact-backend`, valid for an hour.
pub fn jwt_claims(id: &str) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    serde_json::json!({
        "iss": "https://issuer.test",
        "sub": "capact-backend",
        "aud": "capact-storage",
        "iat": now - 5,
        "nbf": now - 5,
        "exp": now + 3600,
        // Makes every token distinct, so a log check can name each one.
        "jti": id,
    })
}

/// Replaces `path` by rename, as a kubelet or Vault Agent does, so that a
/// reader never sees half a file.
pub fn replace_file(path: &Path, content: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, content).expect("write the new file");
    std::fs::rename(&aside, path).expect("replace the file");
}

/// A non-dev OpenBao over plain http whose data outlives the process: raft
/// storage in a tempdir (OpenBao 2 has no `file` storage), initialised
/// with one unseal key, unsealed, KV v2 at `secret/`. [`RaftBao::kill`]
/// and [`RaftBao::start_again`] restart it on the same port and data.
pub struct RaftBao {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub root_token: String,
    unseal_key: String,
    pub process: Guard,
    pub log: PathBuf,
}

impl RaftBao {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        std::fs::create_dir(dir.path().join("raft")).expect("raft dir");
        let config = format!(
            r#"storage "raft" {{
  path = "{d}/raft"
  node_id = "node1"
  # Raft's default 1 MiB entry limit is below the backend's value limit.
  max_entry_size = 67108864
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cport}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "https://127.0.0.1:{cport}"
"#,
            cport = port + 1
        );
        std::fs::write(dir.path().join("bao.hcl"), config).expect("write bao config");
        let log = dir.path().join("bao.log");
        let mut bao = Self {
            port,
            dir,
            root_token: String::new(),
            unseal_key: String::new(),
            process: Guard(None),
            log,
        };
        bao.spawn();
        let init = bao.retry(
            "operator init",
            &[
                "operator",
                "init",
                "-key-shares=1",
                "-key-threshold=1",
                "-format=json",
            ],
        );
        let init: serde_json::Value = serde_json::from_str(&init).expect("init json");
        bao.unseal_key = init["unseal_keys_b64"][0]
            .as_str()
            .expect("unseal key")
            .to_owned();
        bao.root_token = init["root_token"].as_str().expect("root token").to_owned();
        bao.unseal();
        // The secrets engine can still refuse while the leader settles.
        bao.retry(
            "enable kv-v2",
            &["secrets", "enable", "-path=secret", "kv-v2"],
        );
        // A new KV v2 mount refuses requests until it has upgraded its
        // storage: the load must start on a store that is ready.
        bao.retry(
            "write to kv-v2",
            &["kv", "put", "-mount=secret", "fixture-ready", "ok=1"],
        );
        bao
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server (no clean shutdown: raft must recover on its own).
    pub fn kill(&mut self) {
        self.process.stop();
    }

    /// Starts the server again on the same port and data, and unseals it
    /// with the key of the first init (the root token stays valid).
    pub fn start_again(&mut self) {
        self.process.stop();
        self.spawn();
        self.unseal();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let config = self.dir.path().join("bao.hcl");
        self.process = testkit::process::spawn_logged(
            Command::new(bao_bin())
                .arg("server")
                .arg(format!("-config={}", config.display())),
            &self.log,
        );
        testkit::process::wait_for_port(
            self.port,
            &mut self.process,
            "openbao",
            &self.log,
            Duration::from_secs(30),
        );
    }

    /// Unseals, then waits until raft has elected this node and health
    /// answers 200 (429, standby, in between).
    fn unseal(&self) {
        let key = self.unseal_key.clone();
        self.retry("operator unseal", &["operator", "unseal", &key]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.health_status();
            if status == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "openbao health is {status:?} 30s after unseal\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The HTTP status of /v1/sys/health.
    fn health_status(&self) -> Option<u16> {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{}/v1/sys/health", self.addr()))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// Runs the `bao` CLI as root; retries for 30 s while it fails.
    fn retry(&self, what: &str, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.cli(args) {
                Ok(out) => return out,
                Err(e) if Instant::now() > deadline => {
                    panic!("bao {what} failed: {e}\n{}", self.logs())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Runs the `bao` CLI as root; Ok(stdout) on success.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(bao_bin())
            .args(args)
            .env("BAO_ADDR", self.addr())
            .env("BAO_TOKEN", &self.root_token)
            .env_remove("VAULT_TOKEN")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}
