//! `s3-backend`: the S3 storage backend process.

fn main() -> std::process::ExitCode {
    shared::server::main_value(s3::build)
}
