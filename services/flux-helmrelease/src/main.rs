//! `flux-helmrelease-backend`: the Flux HelmRelease context storage backend process.

fn main() -> std::process::ExitCode {
    shared::server::main_context(flux_helmrelease::build)
}
