//! `kubernetes-secret-backend`: the Kubernetes Secrets storage backend process.

fn main() -> std::process::ExitCode {
    shared::server::main_value(kubernetes_secret::build)
}
