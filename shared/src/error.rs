//! The one error type of every backend and its one mapping to gRPC codes.
//!
//! Messages are lowercase, have no trailing period and name only the backend,
//! TypeInstance id and revision: never a value, token or decrypted byte. The
//! `source` of an error goes to the log (for INTERNAL, UNAVAILABLE, DATA_LOSS),
//! never to the caller.

use std::fmt;

use tonic::Code;

pub type Result<T, E = Error> = std::result::Result<T, E>;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, in the terms of the protocol's status table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    /// Lost a race in the backing store; the caller may retry.
    Aborted,
    /// The backing store cannot be reached; the caller may retry.
    Unavailable,
    DeadlineExceeded,
    /// The backing store refused our credentials.
    PermissionDenied,
    Unauthenticated,
    Unimplemented,
    /// Stored data is corrupted or was tampered with.
    DataLoss,
    Internal,
}

impl ErrorKind {
    /// The table: the only place a kind becomes a gRPC code.
    pub fn code(self) -> Code {
        match self {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::Aborted => Code::Aborted,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::Unimplemented => Code::Unimplemented,
            ErrorKind::DataLoss => Code::DataLoss,
            ErrorKind::Internal => Code::Internal,
        }
    }

    /// Whether the cause is on our side (logged at warn/error with its source)
    /// rather than a normal answer to a bad or conflicting request.
    pub fn is_server_side(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable
                | ErrorKind::PermissionDenied
                | ErrorKind::DataLoss
                | ErrorKind::Internal
                | ErrorKind::DeadlineExceeded
        )
    }
}

/// A backend error: a kind, a value-free message and an optional cause.
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Source>,
}

macro_rules! constructors {
    ($($name:ident => $kind:ident),* $(,)?) => {
        $(
            #[doc = concat!("An error of kind [`ErrorKind::", stringify!($kind), "`].")]
            pub fn $name(message: impl Into<String>) -> Self {
                Self::new(ErrorKind::$kind, message)
            }
        )*
    };
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    constructors! {
        invalid_argument => InvalidArgument,
        not_found => NotFound,
        already_exists => AlreadyExists,
        failed_precondition => FailedPrecondition,
        aborted => Aborted,
        unavailable => Unavailable,
        deadline_exceeded => DeadlineExceeded,
        permission_denied => PermissionDenied,
        unauthenticated => Unauthenticated,
        unimplemented => Unimplemented,
        data_loss => DataLoss,
        internal => Internal,
    }

    /// Attaches the underlying cause. It is logged, never sent to the caller,
    /// so it must not carry a value either (SDK errors carry none).
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn code(&self) -> Code {
        self.kind.code()
    }

    /// The message plus the chain of causes, for the log.
    pub fn detail(&self) -> String {
        let mut out = self.message.clone();
        let mut next: Option<&(dyn std::error::Error + 'static)> =
            self.source.as_deref().map(|s| s as _);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }

    /// The status sent to the caller. INTERNAL keeps its details in the log.
    pub fn to_status(&self, backend: &str) -> tonic::Status {
        let message = match self.kind {
            ErrorKind::Internal => {
                format!("internal error in the {backend} backend (details in its log)")
            }
            _ => self.message.clone(),
        };
        tonic::Status::new(self.code(), message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as _)
    }
}

/// The canonical upper-case name of a gRPC code, as the spec, grpcurl and
/// the metrics' `code` label write it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_status_hides_message_and_source() {
        let err = Error::internal("decoding revision 3 of abc failed")
            .with_source(std::io::Error::other("raw detail"));
        let status = err.to_status("vault");
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("raw detail"));
        assert!(!status.message().contains("abc"));
        assert!(err.detail().contains("raw detail"));
    }

    #[test]
    fn client_errors_keep_their_message() {
        let status = Error::not_found("type instance abc not found").to_status("vault");
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "type instance abc not found");
    }
}
