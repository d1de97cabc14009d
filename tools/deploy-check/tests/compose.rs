//! docker-compose.yml: every backend with its store, ports on 127.0.0.1,
//! pinned images, healthchecks; `docker-compose config` where installed.

use deploy_check::repo_root;
use serde_json::Value as Json;

fn compose() -> Json {
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml"))
        .expect("docker-compose.yml");
    // Resolve the `<<: *anchor` merge keys the file uses, as compose does.
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    value.apply_merge().expect("merge keys");
    serde_json::to_value(value).expect("compose file as JSON")
}

#[test]
fn every_published_port_is_bound_to_localhost() {
    let c = compose();
    for (name, svc) in c["services"].as_object().expect("services") {
        for port in svc["ports"].as_array().cloned().unwrap_or_default() {
            let p = port.as_str().unwrap_or_default();
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name}: port {p} is not bound to 127.0.0.1"
            );
        }
    }
}

#[test]
fn every_image_is_pinned_and_every_long_running_service_has_a_healthcheck() {
    let c = compose();
    for (name, svc) in c["services"].as_object().expect("services") {
        let image = svc["image"].as_str().unwrap_or_default();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && !tag.contains('/'),
            "{name}: image {image} is not pinned"
        );
        // One-shot setup containers finish; everything else reports health.
        let one_shot = svc["command"].is_array()
            && svc["restart"].is_null()
            && svc["healthcheck"].is_null()
            && c["services"]
                .as_object()
                .expect("services")
                .values()
                .any(|other| {
                    other["depends_on"][name.as_str()]["condition"]
                        == "service_completed_successfully"
                });
        assert!(
            one_shot || svc["healthcheck"].is_object(),
            "{name}: no healthcheck"
        );
    }
}

#[test]
fn every_non_kubernetes_backend_is_in_the_compose_file_with_its_image_build() {
    let c = compose();
    for backend in ["vault", "sops-git", "s3", "aws-secretsmanager"] {
        let svc = &c["services"][format!("{backend}-backend")];
        assert_eq!(
            svc["build"]["args"]["BACKEND"], backend,
            "{backend}-backend"
        );
        assert!(
            svc["healthcheck"]["test"].is_array(),
            "{backend}-backend: no healthcheck"
        );
    }
}

#[test]
fn backend_environment_in_compose_is_read_by_the_backend() {
    let c = compose();
    for (backend, bin) in deploy_check::BACKENDS {
        let Some(env) = c["services"][format!("{backend}-backend")]["environment"].as_object()
        else {
            continue;
        };
        let known = deploy_check::env_vars_of(&deploy_check::backend_bin(bin));
        for key in env.keys() {
            assert!(
                known.contains(key)
                    || key.starts_with("AWS_ACCESS_KEY")
                    || key.starts_with("AWS_SECRET"),
                "{backend}-backend: {key} is not read by {bin}"
            );
        }
    }
}

/// The real compose parser: the compose plugin where installed, otherwise
/// docker-compose (tests/setup.sh installs it); said so when neither is.
#[test]
fn docker_compose_config_accepts_the_file() {
    let candidates: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    for cmd in candidates {
        // `docker` without the plugin answers any compose flag with a usage
        // error: ask for the version first.
        let present = std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !present {
            continue;
        }
        let out = std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .args(["-f"])
            .arg(repo_root().join("docker-compose.yml"))
            .args(["config", "-q"])
            .output();
        if let Ok(out) = out {
            assert!(
                out.status.success(),
                "{cmd:?} config: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
    }
    println!(
        "note: neither docker-compose nor the docker compose plugin is installed; structure checks only"
    );
}
