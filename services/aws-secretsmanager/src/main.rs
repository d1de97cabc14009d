//! `aws-secretsmanager-backend`: the AWS Secrets Manager storage backend process.

fn main() -> std::process::ExitCode {
    shared::server::main_value(aws_secretsmanager::build)
}
