//! The `storage-bench` binary: everything lives in `bench::cli`.

fn main() -> std::process::ExitCode {
    bench::cli::main()
}
