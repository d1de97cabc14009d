//! kube errors → `shared::Error`, in the terms of the protocol's status table.
//!
//! Kept in one small module so it can later move to a crate shared with the
//! Kubernetes Secrets backend. The API server's message goes to the log as the
//! error's source, never to the caller.

use shared::Error;

/// The HTTP status of an API error, if the error is one.
pub fn status(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

pub fn is_not_found(e: &kube::Error) -> bool {
    status(e) == Some(404)
}

/// 409 from a stale `resourceVersion` (Conflict) or a create-only write of an
/// existing name (AlreadyExists).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason != "AlreadyExists")
}

pub fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
}

/// Maps an error that is not an expected outcome of the call. `what` names
/// the object (never a value), e.g. "helmrelease ns/name".
pub fn map(e: kube::Error, what: &str) -> Error {
    let err = match &e {
        kube::Error::Api(s) => match s.code {
            401 => Error::permission_denied(format!(
                "the kubernetes api rejected our credentials for {what}"
            )),
            403 => Error::permission_denied(format!(
                "the kubernetes api forbids this backend's access to {what}"
            )),
            404 => Error::not_found(format!("{what} not found")),
            409 => Error::aborted(format!("{what} changed concurrently; retry")),
            // Invalid/too large: the object we built was refused (for example
            // a snapshot over the size limit); not the caller's input.
            400 | 413 | 422 => Error::internal(format!("the kubernetes api refused {what}")),
            429 => Error::unavailable(format!("the kubernetes api throttled access to {what}")),
            504 => Error::unavailable(format!("the kubernetes api timed out on {what}")),
            500..=599 => Error::unavailable(format!(
                "the kubernetes api failed on {what} (status {})",
                s.code
            )),
            _ => Error::internal(format!("unexpected kubernetes api answer for {what}")),
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            Error::unavailable(format!("the kubernetes api cannot be reached for {what}"))
        }
        kube::Error::Auth(_) => Error::permission_denied(format!(
            "cannot authenticate to the kubernetes api for {what}"
        )),
        _ => Error::internal(format!("kubernetes client error on {what}")),
    };
    err.with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ErrorKind;

    fn api(code: u16, reason: &str) -> kube::Error {
        let mut s = kube::core::Status::failure("raw server message", reason).with_code(code);
        s.reason = reason.to_owned();
        kube::Error::Api(s.boxed())
    }

    #[test]
    fn api_statuses_map_to_protocol_kinds() {
        for (code, kind) in [
            (401, ErrorKind::PermissionDenied),
            (403, ErrorKind::PermissionDenied),
            (404, ErrorKind::NotFound),
            (409, ErrorKind::Aborted),
            (422, ErrorKind::Internal),
            (429, ErrorKind::Unavailable),
            (500, ErrorKind::Unavailable),
            (503, ErrorKind::Unavailable),
        ] {
            assert_eq!(
                map(api(code, "X"), "helmrelease a/b").kind(),
                kind,
                "{code}"
            );
        }
    }

    #[test]
    fn conflict_and_already_exists_are_told_apart() {
        assert!(is_conflict(&api(409, "Conflict")));
        assert!(!is_conflict(&api(409, "AlreadyExists")));
        assert!(is_already_exists(&api(409, "AlreadyExists")));
        assert!(is_not_found(&api(404, "NotFound")));
    }

    #[test]
    fn server_message_stays_out_of_the_status_message() {
        let e = map(api(403, "Forbidden"), "helmrelease a/b");
        assert!(!e.message().contains("raw server message"));
        assert!(e.detail().contains("raw server message"));
    }
}
