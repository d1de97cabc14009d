//! One error type for the CLI: it decides the message and the exit code.

use std::fmt;

use shared::client::ConnectError;
use tonic::{Code, Status};

/// What went wrong, split by who has to act: the user (usage), the backend
/// (a gRPC status) or the environment (anything else).
#[derive(Debug)]
pub enum Error {
    /// Wrong or missing arguments; exit code 2, like clap's own errors.
    Usage(String),
    /// The backend answered with a non-OK status.
    Status(Status),
    /// Connecting, reading a file, writing output, unexpected responses.
    Other(String),
}

impl Error {
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::Usage(msg.into())
    }

    pub fn other(msg: impl Into<String>) -> Self {
        Self::Other(msg.into())
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Status(_) | Self::Other(_) => 1,
        }
    }

    /// The gRPC code, when the backend answered with one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

impl From<ConnectError> for Error {
    fn from(err: ConnectError) -> Self {
        match err {
            ConnectError::Invalid(m) => Self::Usage(m),
            ConnectError::Failed(m) => Self::Other(m),
            ConnectError::Describe(s) => Self::Status(Status::new(
                s.code(),
                format!("Describe failed: {}", s.message()),
            )),
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m) | Self::Other(m) => f.write_str(m),
            Self::Status(s) if s.message().is_empty() => f.write_str(code_name(s.code())),
            Self::Status(s) => write!(f, "{}: {}", code_name(s.code()), s.message()),
        }
    }
}

impl std::error::Error for Error {}

/// The canonical upper-case name of a gRPC code (one table, in `shared`).
pub use shared::error::code_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_like_the_spec() {
        let e = Error::from(Status::not_found("type instance x not found"));
        assert_eq!(e.to_string(), "NOT_FOUND: type instance x not found");
        assert_eq!(e.exit_code(), 1);
        assert_eq!(Error::from(Status::aborted("")).to_string(), "ABORTED");
    }

    #[test]
    fn usage_exits_with_two() {
        assert_eq!(Error::usage("bad").exit_code(), 2);
    }
}
