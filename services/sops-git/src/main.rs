use std::process::ExitCode;

use sops_git::config::{Config, build};

fn main() -> ExitCode {
    shared::server::main_value(|config: Config| async move {
        // Opening the clone and reading keys is blocking file work.
        tokio::task::spawn_blocking(move || build(config))
            .await
            .map_err(|e| shared::Error::internal("startup task failed").with_source(e))?
    })
}
