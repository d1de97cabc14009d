//! The Helm chart: renders for every backend and option, keeps the security
//! and probe settings the guide promises, lists every variable of every
//! binary, and carries the same RBAC as deploy/rbac/.

use deploy_check::{BACKENDS, backend_bin, env_vars_of, find, render, repo_root};
use serde_json::Value as Json;

fn container(objects: &[Json]) -> &Json {
    &find(objects, "Deployment").expect("a Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn env_names(objects: &[Json]) -> Vec<String> {
    container(objects)["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn every_backend_renders_a_hardened_deployment_with_grpc_probes() {
    for (backend, _) in BACKENDS {
        let objects = render(
            &format!("capact-storage-{backend}"),
            "capact-system",
            &[("backend", backend)],
        );
        let pod = &find(&objects, "Deployment").expect("Deployment")["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{backend}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{backend}"
        );
        let c = container(&objects);
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{backend}"
        );
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{backend}"
        );
        assert_eq!(
            c["securityContext"]["capabilities"]["drop"][0], "ALL",
            "{backend}"
        );
        assert_eq!(
            c["livenessProbe"]["grpc"]["service"], "liveness",
            "{backend}"
        );
        assert_eq!(c["readinessProbe"]["grpc"]["port"], 50052, "{backend}");
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{backend}: no memory limit"
        );
        let svc = find(&objects, "Service").expect("Service");
        assert_eq!(svc["spec"]["ports"][0]["port"], 50051, "{backend}");
        assert!(
            find(&objects, "NetworkPolicy").is_some(),
            "{backend}: no NetworkPolicy"
        );
        let kube_api = matches!(backend, "kubernetes-secret" | "flux-helmrelease");
        assert_eq!(
            pod["automountServiceAccountToken"], kube_api,
            "{backend}: token mount"
        );
        assert_eq!(
            find(&objects, "Role").is_some(),
            kube_api,
            "{backend}: Role"
        );
    }
}

#[test]
fn tls_mtls_persistence_and_service_monitor_options_render() {
    let objects = render(
        "capact-storage-sops-git",
        "capact-system",
        &[
            ("backend", "sops-git"),
            ("tls.enabled", "true"),
            ("tls.secretName", "backend-tls"),
            ("tls.clientCASecret", "hub-client-ca"),
            ("persistence.enabled", "true"),
            ("metrics.serviceMonitor.enabled", "true"),
        ],
    );
    let env = env_names(&objects);
    for var in [
        "APP_TLS_CERT",
        "APP_TLS_KEY",
        "APP_TLS_CLIENT_CA",
        "APP_DATA_DIR",
    ] {
        assert!(env.contains(&var.to_owned()), "{var} not set");
    }
    assert!(find(&objects, "PersistentVolumeClaim").is_some());
    assert!(find(&objects, "ServiceMonitor").is_some());
    let deployment = find(&objects, "Deployment").expect("Deployment");
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
}

#[test]
fn worker_threads_are_the_backend_default_unless_set() {
    let env_value = |objects: &[Json]| {
        container(objects)["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == "APP_WORKER_THREADS")
            .map(|e| e["value"].clone())
    };
    let default = render("capact-storage-s3", "capact-system", &[("backend", "s3")]);
    assert_eq!(env_value(&default), None, "left to the binary's default");
    for n in ["0", "1", "4"] {
        let set = render(
            "capact-storage-s3",
            "capact-system",
            &[("backend", "s3"), ("server.workerThreads", n)],
        );
        assert_eq!(env_value(&set), Some(Json::from(n)), "workerThreads={n}");
    }
}

#[test]
fn an_unknown_backend_is_refused_at_render_time() {
    let out = std::process::Command::new(testkit::tool_bin("helm", "HELM_BIN"))
        .args(["template", "x"])
        .arg(deploy_check::chart_dir())
        .args([
            "--kube-version",
            deploy_check::KUBE_VERSION,
            "--set",
            "backend=postgres",
        ])
        .output()
        .expect("run helm");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not one of"));
}

/// `helm template` that must fail; its error text.
fn render_error(sets: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(testkit::tool_bin("helm", "HELM_BIN"));
    cmd.args(["template", "x"])
        .arg(deploy_check::chart_dir())
        .args(["--kube-version", deploy_check::KUBE_VERSION]);
    for (k, v) in sets {
        cmd.arg("--set").arg(format!("{k}={v}"));
    }
    let out = cmd.output().expect("run helm");
    assert!(!out.status.success(), "{sets:?} rendered");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn sops_git_defaults_keep_every_value_and_the_key_on_a_volume() {
    let objects = render(
        "capact-storage-sops-git",
        "capact-system",
        &[("backend", "sops-git")],
    );
    assert!(
        find(&objects, "PersistentVolumeClaim").is_some(),
        "a PVC by default"
    );
    let deployment = find(&objects, "Deployment").expect("Deployment");
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(volumes.contains("persistentVolumeClaim"), "{volumes}");
}

#[test]
fn sops_git_setups_that_would_lose_data_are_refused_with_what_to_set() {
    let err = render_error(&[("backend", "sops-git"), ("persistence.enabled", "false")]);
    assert!(
        err.contains("APP_GIT_REMOTE") && err.contains("sopsAgeKey"),
        "{err}"
    );
    let err = render_error(&[
        ("backend", "sops-git"),
        ("persistence.enabled", "false"),
        (
            "config.sops-git.APP_GIT_REMOTE",
            "https://git.example/state.git",
        ),
    ]);
    assert!(err.contains("sopsAgeKey"), "{err}");
    let err = render_error(&[("backend", "sops-git"), ("replicaCount", "2")]);
    assert!(err.contains("replicaCount must be 1"), "{err}");
}

#[test]
fn sops_git_with_a_remote_and_an_age_key_secret_needs_no_volume() {
    let objects = render(
        "capact-storage-sops-git",
        "capact-system",
        &[
            ("backend", "sops-git"),
            ("persistence.enabled", "false"),
            (
                "config.sops-git.APP_GIT_REMOTE",
                "https://git.example/state.git",
            ),
            ("sopsAgeKey.value", "AGE-SECRET-KEY-1TEST"),
        ],
    );
    assert!(find(&objects, "PersistentVolumeClaim").is_none());
    let secret = find(&objects, "Secret").expect("the age key Secret");
    assert_eq!(secret["stringData"]["age.key"], "AGE-SECRET-KEY-1TEST");
    let env = container(&objects)["env"].to_string();
    assert!(
        env.contains(r#""name":"APP_SOPS_AGE_KEY_FILE","value":"/etc/capact-storage/age/age.key""#),
        "{env}"
    );
    let existing = render(
        "capact-storage-sops-git",
        "capact-system",
        &[
            ("backend", "sops-git"),
            ("sopsAgeKey.existingSecret", "sops-age"),
        ],
    );
    assert!(
        find(&existing, "Secret").is_none(),
        "an existing Secret is not created"
    );
    let volumes =
        find(&existing, "Deployment").expect("Deployment")["spec"]["template"]["spec"]["volumes"]
            .to_string();
    assert!(volumes.contains(r#""secretName":"sops-age""#), "{volumes}");
}

#[test]
fn values_list_every_environment_variable_of_every_backend() {
    let values = std::fs::read_to_string(deploy_check::chart_dir().join("values.yaml"))
        .expect("values.yaml");
    let mut missing = Vec::new();
    for (backend, bin) in BACKENDS {
        for var in env_vars_of(&backend_bin(bin)) {
            if !values.contains(&var) {
                missing.push(format!("{backend}: {var}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "values.yaml does not mention: {missing:#?}"
    );
}

#[test]
fn config_values_are_variables_the_backend_reads() {
    let values: Json = serde_yaml::from_str(
        &std::fs::read_to_string(deploy_check::chart_dir().join("values.yaml"))
            .expect("values.yaml"),
    )
    .expect("values.yaml is YAML");
    for (backend, bin) in BACKENDS {
        let known = env_vars_of(&backend_bin(bin));
        let config = values["config"][backend]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for key in config.keys() {
            assert!(
                known.contains(key),
                "config.{backend}.{key} is not read by {bin}"
            );
        }
    }
}

#[test]
fn chart_rbac_equals_the_plain_rbac_manifests() {
    for backend in ["kubernetes-secret", "flux-helmrelease"] {
        let path = repo_root().join(format!("deploy/rbac/{backend}.yaml"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let plain = deploy_check::documents(&text);
        let chart = render(
            &format!("capact-storage-{backend}"),
            "capact-system",
            &[("backend", backend)],
        );
        let rules = |objects: &[Json], kind: &str| -> Vec<Json> {
            objects
                .iter()
                .filter(|o| o["kind"] == kind)
                .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
                .map(normalize_rule)
                .collect()
        };
        let mut want = rules(&plain, "Role");
        want.extend(rules(&plain, "ClusterRole"));
        let mut have = rules(&chart, "Role");
        have.extend(rules(&chart, "ClusterRole"));
        want.sort_by_key(|r| r.to_string());
        have.sort_by_key(|r| r.to_string());
        assert_eq!(
            have,
            want,
            "{backend}: chart RBAC differs from {}",
            path.display()
        );
    }
}

#[test]
fn flux_hub_registration_adds_the_lease_role_of_the_plain_manifest() {
    let read = |name: &str| {
        let path = repo_root().join(format!("deploy/rbac/{name}"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        deploy_check::documents(&text)
    };
    let mut plain = read("flux-helmrelease.yaml");
    plain.extend(read("flux-helmrelease-hub-registration.yaml"));
    let chart = render(
        "capact-storage-flux-helmrelease",
        "capact-system",
        &[
            ("backend", "flux-helmrelease"),
            (
                "config.flux-helmrelease.APP_HUB_ENDPOINT",
                "http://hub/graphql",
            ),
        ],
    );
    let rules = |objects: &[Json]| -> Vec<Json> {
        let mut out: Vec<Json> = objects
            .iter()
            .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
            .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
            .map(normalize_rule)
            .collect();
        out.sort_by_key(|r| r.to_string());
        out
    };
    assert_eq!(rules(&chart), rules(&plain));
    let lease_role = chart
        .iter()
        .find(|o| o["kind"] == "Role" && o["rules"].to_string().contains("leases"))
        .expect("a Role for the leader-election Lease");
    assert_eq!(lease_role["metadata"]["namespace"], "capact-system");
}

/// A rule with its lists sorted, so order does not matter.
fn normalize_rule(mut rule: Json) -> Json {
    if let Some(map) = rule.as_object_mut() {
        for list in map.values_mut() {
            if let Some(items) = list.as_array_mut() {
                items.sort_by_key(|v| v.to_string());
            }
        }
    }
    rule
}
