//! The `storagectl` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    storagectl::main()
}
