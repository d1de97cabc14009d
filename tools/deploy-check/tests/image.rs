//! The image's HEALTHCHECK works when the gRPC port uses TLS: the image
//! turns the plaintext health-only port on, and the check asks it. Run with
//! the real binaries (sops-git needs no external store) and the Dockerfile's
//! own ENV and HEALTHCHECK lines.

use std::process::Command;

use deploy_check::{backend_bin, repo_root};
use testkit::{BackendProcess, free_port};

/// `ENV APP_HEALTH_ADDR=…` and the HEALTHCHECK's exec form, from the Dockerfile.
fn dockerfile() -> (String, Vec<String>) {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    let health_addr = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ENV APP_HEALTH_ADDR="))
        .expect("the image sets APP_HEALTH_ADDR")
        .to_owned();
    let cmd = text
        .find("\nHEALTHCHECK ")
        .and_then(|at| text[at..].split("CMD").nth(1))
        .and_then(|rest| rest.lines().next())
        .expect("a HEALTHCHECK CMD");
    let argv: Vec<String> = serde_json::from_str(cmd.trim()).expect("exec-form CMD");
    (health_addr, argv)
}

fn self_signed(dir: &std::path::Path) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=backend",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            "tls.key",
            "-out",
            "tls.crt",
        ])
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_healthcheck_answers_while_the_grpc_port_requires_tls() {
    let (health_addr, argv) = dockerfile();
    assert_eq!(health_addr, ":50052");
    assert_eq!(argv[0], "/usr/local/bin/storagectl");
    let dir = tempfile::tempdir().expect("tempdir");
    self_signed(dir.path());
    let data = dir.path().join("data");
    let health_port = free_port();
    let health = format!("127.0.0.1:{health_port}");
    let cert = dir.path().join("tls.crt").display().to_string();
    let key = dir.path().join("tls.key").display().to_string();
    let data_dir = data.display().to_string();
    let mut backend = BackendProcess::start(
        &backend_bin("sops-git-backend").to_string_lossy(),
        &["SOPS_", "GIT_"],
        &[
            ("APP_HEALTH_ADDR", &health),
            ("APP_TLS_CERT", &cert),
            ("APP_TLS_KEY", &key),
            ("APP_DATA_DIR", &data_dir),
        ],
    );
    // The check as the image runs it, aimed at this process's health port.
    let check = |target: &str| {
        let args: Vec<String> = argv[1..]
            .iter()
            .map(|a| a.replace("127.0.0.1:50052", target))
            .collect();
        Command::new(backend_bin("storagectl"))
            .args(&args)
            .env_remove("STORAGECTL_URL")
            .output()
            .expect("run storagectl")
    };
    let mut ok = false;
    for _ in 0..100 {
        let out = check(&health);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SERVING") {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        ok,
        "the HEALTHCHECK never passed; backend log:\n{}",
        backend.logs()
    );
    // The gRPC port itself speaks only TLS: a plaintext check there fails.
    let main = check(&format!("127.0.0.1:{}", backend.port));
    assert!(!main.status.success());
    backend.process.stop();
}
