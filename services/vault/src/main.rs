//! `vault-backend`: the Vault/OpenBao storage backend process.

fn main() -> std::process::ExitCode {
    shared::server::main_value(vault::build)
}
