//! Support for the tests of `deploy/` (the tests are in `tests/`): where the
//! chart, the backend binaries and helm are, and how to render the chart.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value as Json;

/// Every backend: (crate and chart `backend` value, binary).
pub const BACKENDS: [(&str, &str); 6] = [
    ("vault", "vault-backend"),
    ("sops-git", "sops-git-backend"),
    ("s3", "s3-backend"),
    ("aws-secretsmanager", "aws-secretsmanager-backend"),
    ("kubernetes-secret", "kubernetes-secret-backend"),
    ("flux-helmrelease", "flux-helmrelease-backend"),
];

/// The Kubernetes version the chart is rendered for (the test apiserver's).
pub const KUBE_VERSION: &str = "1.37.2";

pub fn repo_root() -> PathBuf {
    testkit::registration::repo_root()
}

pub fn chart_dir() -> PathBuf {
    repo_root().join("deploy/helm/capact-storage-backend")
}

/// A backend binary built by the same `cargo test --workspace` run (next to
/// this test's own executable, in target/<profile>/).
pub fn backend_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build every binary first (`cargo test --workspace` does, or `cargo build --workspace`)",
        bin.display()
    );
    bin
}

/// The environment variables a binary reads, from its `--help`.
pub fn env_vars_of(bin: &Path) -> Vec<String> {
    let out = Command::new(bin)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("run {} --help: {e}", bin.display()));
    let help = String::from_utf8_lossy(&out.stdout);
    let mut vars: Vec<String> = help
        .match_indices("[env: ")
        .filter_map(|(i, m)| {
            let rest = &help[i + m.len()..];
            let end = rest.find(['=', ']'])?;
            Some(rest[..end].to_owned())
        })
        .collect();
    vars.sort();
    vars.dedup();
    vars
}

/// `helm template` of the chart with `--set` pairs; the rendered objects.
pub fn render(release: &str, namespace: &str, sets: &[(&str, &str)]) -> Vec<Json> {
    let mut cmd = Command::new(testkit::tool_bin("helm", "HELM_BIN"));
    cmd.args(["template", release]).arg(chart_dir()).args([
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ]);
    for (k, v) in sets {
        cmd.arg("--set").arg(format!("{k}={v}"));
    }
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "helm template {sets:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    documents(&String::from_utf8_lossy(&out.stdout))
}

/// The non-empty documents of a YAML stream, as JSON.
pub fn documents(yaml: &str) -> Vec<Json> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| <Json as serde::Deserialize>::deserialize(doc).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The first rendered object of `kind`.
pub fn find<'a>(objects: &'a [Json], kind: &str) -> Option<&'a Json> {
    objects.iter().find(|o| o["kind"] == kind)
}
