//! The real binary against authenticated network remotes: `git http-backend`
//! behind lighttpd (https, basic auth) and OpenSSH's sshd (key auth, host key
//! checked against a known_hosts file), both on 127.0.0.1.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use support::{bare_repo, free_port, start_backend, target};
use testkit::{BackendProcess, Guard, assert_clean, conformance};

const USER: &str = "capact";
const TOKEN: &str = "t0ken-for-tests";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?} ({e}): run ./tests/run.sh",
            cmd.get_program()
        )
    });
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

/// lighttpd serving `git http-backend` over https with basic auth for every
/// repository under `root`; returns the server, the https base URL and the
/// CA (self-signed certificate) to trust.
fn https_git_server(dir: &Path, root: &Path) -> (Guard, String, PathBuf) {
    let port = free_port();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let users = dir.join("htusers");
    write(&users, &format!("{USER}:{TOKEN}\n"));
    let conf = dir.join("lighttpd.conf");
    write(
        &conf,
        &format!(
            r#"server.modules = ("mod_auth", "mod_authn_file", "mod_alias", "mod_setenv", "mod_cgi", "mod_openssl")
server.document-root = "{root}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{dir}/lighttpd-error.log"
ssl.engine = "enable"
ssl.pemfile = "{cert}"
ssl.privkey = "{key}"
alias.url = ("/git" => "/usr/lib/git-core/git-http-backend")
$HTTP["url"] =~ "^/git" {{
    cgi.assign = ("" => "")
    setenv.add-environment = ("GIT_PROJECT_ROOT" => "{root}", "GIT_HTTP_EXPORT_ALL" => "")
    auth.backend = "plain"
    auth.backend.plain.userfile = "{users}"
    auth.require = ("" => ("method" => "basic", "realm" => "git", "require" => "valid-user"))
}}
"#,
            root = root.display(),
            dir = dir.display(),
            cert = cert.display(),
            key = key.display(),
            users = users.display(),
        ),
    );
    let log = dir.join("lighttpd.log");
    let mut guard = testkit::process::spawn_logged(
        Command::new("/usr/sbin/lighttpd")
            .arg("-D")
            .arg("-f")
            .arg(&conf),
        &log,
    );
    testkit::process::wait_for_port(port, &mut guard, "lighttpd", &log, Duration::from_secs(10));
    (guard, format!("https://127.0.0.1:{port}/git"), cert)
}

struct Sshd {
    _guard: Guard,
    port: u16,
    /// A known_hosts file listing the server's host key.
    known_hosts: PathBuf,
    /// An authorized client key without passphrase.
    client_key: PathBuf,
    /// Another authorized client key, encrypted with `passphrase`.
    encrypted_key: PathBuf,
    passphrase: &'static str,
}

fn ssh_keygen(path: &Path, passphrase: &str) {
    let _ = std::fs::remove_file(path);
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", "test", "-f"])
        .arg(path));
}

fn public_key(private: &Path) -> String {
    let text = std::fs::read_to_string(private.with_extension("pub")).expect("public key");
    // "type base64 comment": keep type and key.
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// OpenSSH's sshd on a free loopback port, run as the current user with a
/// private configuration: a fresh host key and one authorized client key.
fn sshd(dir: &Path) -> Sshd {
    let port = free_port();
    let host_key = dir.join("ssh_host_ed25519_key");
    ssh_keygen(&host_key, "");
    let client_key = dir.join("client_key");
    ssh_keygen(&client_key, "");
    let encrypted_key = dir.join("encrypted_key");
    let passphrase = "correct horse";
    ssh_keygen(&encrypted_key, passphrase);
    let authorized = dir.join("authorized_keys");
    write(
        &authorized,
        &format!(
            "{}\n{}\n",
            public_key(&client_key),
            public_key(&encrypted_key)
        ),
    );
    let known_hosts = dir.join("known_hosts");
    write(
        &known_hosts,
        &format!("[127.0.0.1]:{port} {}\n", public_key(&host_key)),
    );
    // sshd insists on its privilege separation directory, even unprivileged.
    let _ = std::fs::create_dir_all("/run/sshd");
    let conf = dir.join("sshd_config");
    write(
        &conf,
        &format!(
            "ListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {auth}\nPidFile {dir}/sshd.pid\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
            host = host_key.display(),
            auth = authorized.display(),
            dir = dir.display(),
        ),
    );
    let log = dir.join("sshd.log");
    let mut guard = testkit::process::spawn_logged(
        Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&conf)
            .arg("-p")
            .arg(port.to_string()),
        &log,
    );
    testkit::process::wait_for_port(port, &mut guard, "sshd", &log, Duration::from_secs(10));
    Sshd {
        _guard: guard,
        port,
        known_hosts,
        client_key,
        encrypted_key,
        passphrase,
    }
}

fn current_user() -> String {
    run(Command::new("id").arg("-un")).trim().to_owned()
}

fn ssh_url(server: &Sshd, repo: &Path) -> String {
    format!(
        "ssh://{}@127.0.0.1:{}{}",
        current_user(),
        server.port,
        repo.display()
    )
}

/// Starts the binary and expects it to exit at startup; returns its logs.
fn start_expecting_exit(data: &Path, env: &[(&str, &str)]) -> String {
    let data = path_str(data);
    let mut all = vec![("APP_LOG_LEVEL", "info"), ("APP_DATA_DIR", data.as_str())];
    all.extend_from_slice(env);
    let mut backend = BackendProcess::start(
        env!("CARGO_BIN_EXE_sops-git-backend"),
        &["SOPS_", "GIT_"],
        &all,
    );
    let (code, logs) = backend.wait_exit(Duration::from_secs(30));
    assert!(
        code.is_some_and(|c| c != 0),
        "expected a failed start, got {code:?}; logs:\n{logs}"
    );
    logs
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite_passes_over_https_with_basic_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let (_server, base, ca) = https_git_server(dir.path(), dir.path());
    let token_file = dir.path().join("token");
    write(&token_file, &format!("{TOKEN}\n"));
    let remote = format!("{base}/remote.git");
    let backend = start_backend(
        &dir.path().join("data"),
        &[
            ("APP_GIT_REMOTE", &remote),
            ("APP_GIT_USERNAME", USER),
            ("APP_GIT_PASSWORD_FILE", &path_str(&token_file)),
            ("APP_GIT_CA_FILE", &path_str(&ca)),
        ],
    )
    .await;
    assert_clean(&conformance(&backend.url).await, 40);
    // The pushes really landed in the repository behind the server.
    let log = support::git(
        &dir.path().join("remote.git"),
        &["log", "--format=%s", "main"],
    );
    assert!(log.contains("type instance"), "{log}");
    assert!(!backend.logs().contains(TOKEN), "the token reached a log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_https_token_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let (_server, base, ca) = https_git_server(dir.path(), dir.path());
    let remote = format!("{base}/remote.git");
    let wrong = "not-the-token";
    let logs = start_expecting_exit(
        &dir.path().join("data"),
        &[
            ("APP_GIT_REMOTE", &remote),
            ("APP_GIT_USERNAME", USER),
            ("APP_GIT_PASSWORD", wrong),
            ("APP_GIT_CA_FILE", &path_str(&ca)),
        ],
    );
    assert!(logs.contains("refused access"), "{logs}");
    assert!(logs.contains("APP_GIT_PASSWORD_FILE"), "{logs}");
    assert!(!logs.contains(wrong), "the password reached a log");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_https_certificate_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let (_server, base, _ca) = https_git_server(dir.path(), dir.path());
    let remote = format!("{base}/remote.git");
    let logs = start_expecting_exit(
        &dir.path().join("data"),
        &[
            ("APP_GIT_REMOTE", &remote),
            ("APP_GIT_USERNAME", USER),
            ("APP_GIT_PASSWORD", TOKEN),
        ],
    );
    assert!(logs.contains("refused access"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite_passes_over_ssh_with_key_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let server = sshd(dir.path());
    let remote = ssh_url(&server, &dir.path().join("remote.git"));
    let backend = start_backend(
        &dir.path().join("data"),
        &[
            ("APP_GIT_REMOTE", &remote),
            ("APP_GIT_SSH_KEY_FILE", &path_str(&server.client_key)),
            (
                "APP_GIT_SSH_KNOWN_HOSTS_FILE",
                &path_str(&server.known_hosts),
            ),
            // Every ssh connection costs a handshake (slow in a debug
            // build): reads skip the fetch here (our own writes are visible
            // without one), so this also runs the no-fetch read path. Reads
            // that fetch over ssh are covered by the tests below.
            ("APP_GIT_READ_FETCH_INTERVAL", "1h"),
        ],
    )
    .await;
    assert_clean(&conformance(&backend.url).await, 40);
    let t = target(&backend.url).await;
    t.create("over-ssh", b"\"v\"").await.expect("create");
    let log = support::git(
        &dir.path().join("remote.git"),
        &["log", "--format=%s", "main"],
    );
    assert!(
        log.contains("create type instance over-ssh revision 1"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passphrase_protected_ssh_key_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let server = sshd(dir.path());
    let remote = ssh_url(&server, &dir.path().join("remote.git"));
    let backend = start_backend(
        &dir.path().join("data"),
        &[
            ("APP_GIT_REMOTE", &remote),
            ("APP_GIT_SSH_KEY_FILE", &path_str(&server.encrypted_key)),
            ("APP_GIT_SSH_PASSPHRASE", server.passphrase),
            (
                "APP_GIT_SSH_KNOWN_HOSTS_FILE",
                &path_str(&server.known_hosts),
            ),
            // Opening a bcrypt-protected key costs seconds in an unoptimized
            // libssh2 (debug build): give the health probe time.
            ("APP_HEALTH_INTERVAL", "20s"),
        ],
    )
    .await;
    let t = target(&backend.url).await;
    t.create("x", b"1").await.expect("create");
    assert_eq!(&t.get("x", 1).await.expect("get")[..], b"1");
    assert!(!backend.logs().contains(server.passphrase));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_ssh_host_key_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let server = sshd(dir.path());
    // A known_hosts file that lists another key for this host.
    let other = dir.path().join("other_host_key");
    ssh_keygen(&other, "");
    let known = dir.path().join("known_hosts_other");
    write(
        &known,
        &format!("[127.0.0.1]:{} {}\n", server.port, public_key(&other)),
    );
    let remote = ssh_url(&server, &dir.path().join("remote.git"));
    let logs = start_expecting_exit(
        &dir.path().join("data"),
        &[
            ("APP_GIT_REMOTE", &remote),
            ("APP_GIT_SSH_KEY_FILE", &path_str(&server.client_key)),
            ("APP_GIT_SSH_KNOWN_HOSTS_FILE", &path_str(&known)),
        ],
    );
    assert!(logs.contains("APP_GIT_SSH_KNOWN_HOSTS_FILE"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthorized_ssh_key_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let server = sshd(dir.path());
    let stranger = dir.path().join("stranger_key");
    ssh_keygen(&stranger, "");
    let remote = ssh_url(&server, &dir.path().join("remote.git"));
    let logs = start_expecting_exit(
        &dir.path().join("data"),
        &[
            ("APP_GIT_REMOTE", &remote),
            ("APP_GIT_SSH_KEY_FILE", &path_str(&stranger)),
            (
                "APP_GIT_SSH_KNOWN_HOSTS_FILE",
                &path_str(&server.known_hosts),
            ),
        ],
    );
    assert!(logs.contains("refused access"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn insecure_mode_accepts_an_unlisted_ssh_host_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let server = sshd(dir.path());
    let remote = ssh_url(&server, &dir.path().join("remote.git"));
    let empty = dir.path().join("known_hosts_empty");
    write(&empty, "");
    let backend = start_backend(
        &dir.path().join("data"),
        &[
            ("APP_GIT_REMOTE", &remote),
            ("APP_GIT_SSH_KEY_FILE", &path_str(&server.client_key)),
            ("APP_GIT_SSH_KNOWN_HOSTS_FILE", &path_str(&empty)),
            ("APP_GIT_SSH_INSECURE_SKIP_HOST_KEY_CHECK", "true"),
        ],
    )
    .await;
    let t = target(&backend.url).await;
    t.create("x", b"1").await.expect("create");
    assert_eq!(&t.get("x", 1).await.expect("get")[..], b"1");
}
