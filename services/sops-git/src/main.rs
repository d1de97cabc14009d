use std::process::ExitCode;

use sops_git::config::{Config, build};

fn main() -> ExitCode {
    // One binary, same flags and environment: `rotate-keys` runs once and
    // exits instead of serving.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "rotate-keys")
    {
        return sops_git::rotate::main(std::env::args_os().skip(1));
    }
    shared::server::main_value(|config: Config| async move {
        // Opening the clone and reading keys is blocking file work.
        tokio::task::spawn_blocking(move || build(config))
            .await
            .map_err(|e| shared::Error::internal("startup task failed").with_source(e))?
    })
}
