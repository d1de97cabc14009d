//! What the Kubernetes-based backends (kubernetes-secret, flux-helmrelease)
//! share, so each keeps only its own objects: the API client built from a
//! kubeconfig or the pod's service account ([`connect`]), and the one mapping
//! of API errors onto the protocol's kinds ([`map`]).
//!
//! The API server's own message goes to the log as the error's source, never
//! to the caller.

use std::{fmt, path::Path, time::Duration};

use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};
use shared::{Error, Result};

/// One API call as RBAC sees it, for error messages: the verb, the resource
/// (plural, as in a Role), and where. Never carries a value.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub verb: &'a str,
    pub resource: &'a str,
    /// `None`: across all namespaces (a cluster-wide list).
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl<'a> Call<'a> {
    pub fn new(verb: &'a str, resource: &'a str) -> Self {
        Call {
            verb,
            resource,
            namespace: None,
            name: None,
        }
    }

    pub fn namespace(self, namespace: &'a str) -> Self {
        Call {
            namespace: Some(namespace),
            ..self
        }
    }

    pub fn name(self, name: &'a str) -> Self {
        Call {
            name: Some(name),
            ..self
        }
    }
}

/// `'update' on secrets/x in namespace ns`.
impl fmt::Display for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' on {}", self.verb, self.resource)?;
        if let Some(name) = self.name {
            write!(f, "/{name}")?;
        }
        match self.namespace {
            Some(ns) => write!(f, " in namespace {ns}"),
            None => write!(f, " in all namespaces"),
        }
    }
}

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

/// 409 from a stale `resourceVersion` or a failed delete precondition
/// (Conflict), not from a create of an existing name.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason != "AlreadyExists")
}

/// 409 from a create-only write of an existing name.
pub fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
}

/// The one mapping of a Kubernetes API failure that is not an expected
/// outcome of `call` (callers handle their expected 404s and 409s first):
///
/// | failure | kind |
/// |---|---|
/// | 401, 403, client credentials unusable ([`kube::Error::Auth`]) | PERMISSION_DENIED, naming the call and what to check |
/// | 404 | NOT_FOUND (the object the call names) |
/// | 409 | ABORTED (changed concurrently; retry) |
/// | 408, 429, 5xx, connection refused/reset, TLS, timeouts | UNAVAILABLE |
/// | 400, 413, 422 (an object we built was refused), anything else | INTERNAL |
///
/// `kube::Error::Auth` (token file unreadable, exec plugin failed, …) is
/// PERMISSION_DENIED, not UNAUTHENTICATED: the protocol keeps UNAUTHENTICATED
/// for a *caller* that failed authentication, and PERMISSION_DENIED for a
/// backing store that refused *our* credentials — which is what an API
/// server's 401 is too, so both failures of our credentials get one answer
/// (and are logged as server-side problems).
pub fn map(e: kube::Error, call: &Call<'_>) -> Error {
    let err = match &e {
        kube::Error::Api(s) => match s.code {
            401 => Error::permission_denied(format!(
                "kubernetes rejected the backend's credentials for {call}: check its kubeconfig or service account token"
            )),
            403 => Error::permission_denied(format!(
                "kubernetes denied {call}: check the Role or ClusterRole bound to the backend's identity"
            )),
            404 => Error::not_found(format!("kubernetes found nothing for {call}")),
            409 => Error::aborted(format!("kubernetes answered a conflict to {call}; retry")),
            408 | 504 => Error::unavailable(format!("kubernetes api timed out on {call}")),
            429 => Error::unavailable(format!("kubernetes api throttled {call}")),
            code @ 500..=599 => {
                Error::unavailable(format!("kubernetes api answered {code} to {call}"))
            }
            400 | 413 | 422 => Error::internal(format!("kubernetes api refused {call}")),
            code => Error::internal(format!("kubernetes api answered {code} to {call}")),
        },
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::RustlsTls(_) => {
            Error::unavailable(format!("kubernetes api cannot be reached for {call}"))
        }
        kube::Error::Auth(a) => {
            // The source can hold an exec plugin's output (a token): only a
            // summary goes to the log.
            return Error::permission_denied(format!(
                "the backend's kubernetes credentials are unusable for {call}: check its kubeconfig user or service account token"
            ))
            .with_source(auth_summary(a));
        }
        _ => Error::internal(format!("kubernetes client failed on {call}")),
    };
    err.with_source(e)
}

/// What went wrong with our credentials, without anything they produced.
fn auth_summary(e: &kube::client::AuthError) -> String {
    use kube::client::AuthError as A;
    match e {
        A::AuthExecRun { cmd, out } => {
            format!(
                "auth exec command '{cmd}' failed with status {}",
                out.status
            )
        }
        A::AuthExecParse(_) => "auth exec command printed unparseable output".to_owned(),
        A::AuthExec(_) => "auth exec command failed".to_owned(),
        A::InvalidBearerToken(_) => "the bearer token is not a valid header value".to_owned(),
        A::InvalidBasicAuth(_) => "the basic auth is not a valid header value".to_owned(),
        other => other.to_string(),
    }
}

/// How to reach the API server; both backends fill it from their own flags
/// (their variable names differ, and appear in the messages).
#[derive(Clone, Debug)]
pub struct ClientOptions<'a> {
    /// A kubeconfig file; `None`: the context's kubeconfig ($KUBECONFIG or
    /// ~/.kube/config) when `context` is set, else inferred (kubeconfig,
    /// then the pod's in-cluster service account).
    pub kubeconfig: Option<&'a Path>,
    pub context: Option<&'a str>,
    /// The variable that sets `kubeconfig`, named in messages.
    pub kubeconfig_var: &'a str,
    /// The variable that sets `context`, named in messages.
    pub context_var: &'a str,
    pub connect_timeout: Duration,
    /// Read and write timeout of one call.
    pub timeout: Duration,
}

/// A client and the namespace its configuration defaults to (the pod's own
/// in a cluster, else the kubeconfig context's, else `default`).
pub struct Connection {
    pub client: Client,
    pub default_namespace: String,
}

/// Builds the client; no call is made (health probes the API server).
/// Installs ring as the process' rustls provider if none is.
pub async fn connect(opts: &ClientOptions<'_>) -> Result<Connection> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = KubeConfigOptions {
        context: opts.context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let mut config = match (opts.kubeconfig, opts.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path).map_err(|e| {
                Error::invalid_argument(format!(
                    "{} {} is not a readable kubeconfig",
                    opts.kubeconfig_var,
                    path.display()
                ))
                .with_source(e)
            })?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| {
                    Error::invalid_argument(format!(
                        "{} {} cannot be used (see {})",
                        opts.kubeconfig_var,
                        path.display(),
                        opts.context_var
                    ))
                    .with_source(e)
                })?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options).await.map_err(|e| {
            Error::invalid_argument(format!("{} cannot be used", opts.context_var)).with_source(e)
        })?,
        (None, None) => kube::Config::infer().await.map_err(|e| {
            Error::invalid_argument(format!(
                "no kubernetes configuration found: set {} or run in a pod with a service account",
                opts.kubeconfig_var
            ))
            .with_source(e)
        })?,
    };
    config.connect_timeout = Some(opts.connect_timeout);
    config.read_timeout = Some(opts.timeout);
    config.write_timeout = Some(opts.timeout);
    let default_namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| {
        Error::invalid_argument("cannot build the kubernetes client").with_source(e)
    })?;
    Ok(Connection {
        client,
        default_namespace,
    })
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

    fn call() -> Call<'static> {
        Call::new("update", "secrets")
            .namespace("ns")
            .name("capact-x")
    }

    #[test]
    fn api_statuses_map_to_protocol_kinds() {
        for (code, kind) in [
            (400, ErrorKind::Internal),
            (401, ErrorKind::PermissionDenied),
            (403, ErrorKind::PermissionDenied),
            (404, ErrorKind::NotFound),
            (408, ErrorKind::Unavailable),
            (409, ErrorKind::Aborted),
            (413, ErrorKind::Internal),
            (418, ErrorKind::Internal),
            (422, ErrorKind::Internal),
            (429, ErrorKind::Unavailable),
            (500, ErrorKind::Unavailable),
            (503, ErrorKind::Unavailable),
            (504, ErrorKind::Unavailable),
        ] {
            assert_eq!(map(api(code, "X"), &call()).kind(), kind, "{code}");
        }
    }

    #[test]
    fn denied_names_verb_resource_namespace_and_what_to_check() {
        let e = map(api(403, "Forbidden"), &call());
        assert_eq!(
            e.message(),
            "kubernetes denied 'update' on secrets/capact-x in namespace ns: check the Role or ClusterRole bound to the backend's identity"
        );
        let e = map(api(401, "Unauthorized"), &Call::new("list", "configmaps"));
        assert!(
            e.message()
                .contains("'list' on configmaps in all namespaces")
        );
        assert!(e.message().contains("service account token"));
    }

    #[test]
    fn unusable_credentials_are_permission_denied_without_their_output() {
        let out = std::process::Command::new("true")
            .output()
            .unwrap_or_else(|e| panic!("run true: {e}"));
        let e = kube::Error::Auth(kube::client::AuthError::AuthExecRun {
            cmd: "get-token".into(),
            out: Box::new(std::process::Output {
                stdout: b"secret-token-value".to_vec(),
                ..out
            }),
        });
        let e = map(e, &call());
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.detail().contains("get-token"), "{}", e.detail());
        assert!(!e.detail().contains("secret-token-value"), "{}", e.detail());
    }

    #[test]
    fn unreachable_api_server_is_unavailable() {
        let e = kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )));
        assert_eq!(map(e, &call()).kind(), ErrorKind::Unavailable);
        let e = kube::Error::ReadEvents(std::io::Error::other("reset"));
        assert_eq!(map(e, &call()).kind(), ErrorKind::Unavailable);
        let e = kube::Error::LinesCodecMaxLineLengthExceeded;
        assert_eq!(map(e, &call()).kind(), ErrorKind::Internal);
    }

    #[test]
    fn conflict_and_already_exists_are_told_apart() {
        assert!(is_conflict(&api(409, "Conflict")));
        assert!(!is_conflict(&api(409, "AlreadyExists")));
        assert!(is_already_exists(&api(409, "AlreadyExists")));
        assert!(!is_already_exists(&api(409, "Conflict")));
        assert!(is_not_found(&api(404, "NotFound")));
        assert_eq!(status(&kube::Error::LinesCodecMaxLineLengthExceeded), None);
    }

    #[test]
    fn server_message_stays_out_of_the_status_message() {
        let e = map(api(403, "Forbidden"), &call());
        assert!(!e.message().contains("raw server message"));
        assert!(e.detail().contains("raw server message"));
    }

    #[tokio::test]
    async fn an_unreadable_kubeconfig_names_its_variable() {
        let opts = ClientOptions {
            kubeconfig: Some(Path::new("/nonexistent/kubeconfig")),
            context: None,
            kubeconfig_var: "APP_KUBECONFIG",
            context_var: "APP_KUBE_CONTEXT",
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        let e = connect(&opts)
            .await
            .err()
            .unwrap_or_else(|| panic!("no error"));
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.message()
                .starts_with("APP_KUBECONFIG /nonexistent/kubeconfig")
        );
    }

    #[tokio::test]
    async fn a_kubeconfig_gives_its_context_namespace() {
        let path = std::env::temp_dir().join(format!("shared-kube-test-{}", std::process::id()));
        let kubeconfig = "apiVersion: v1\nkind: Config\ncurrent-context: a\n\
            clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
            users: [{name: u, user: {token: t}}]\n\
            contexts: [{name: a, context: {cluster: c, user: u, namespace: apps}}, \
            {name: b, context: {cluster: c, user: u}}]\n";
        std::fs::write(&path, kubeconfig).unwrap_or_else(|e| panic!("write: {e}"));
        let mut opts = ClientOptions {
            kubeconfig: Some(&path),
            context: None,
            kubeconfig_var: "KUBECONFIG",
            context_var: "APP_K8S_CONTEXT",
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        let a = connect(&opts).await.map(|c| c.default_namespace);
        opts.context = Some("b");
        let b = connect(&opts).await.map(|c| c.default_namespace);
        opts.context = Some("missing");
        let missing = connect(&opts).await.err().map(|e| e.kind());
        let _ = std::fs::remove_file(&path);
        assert_eq!(a.ok().as_deref(), Some("apps"));
        assert_eq!(b.ok().as_deref(), Some("default"));
        assert_eq!(missing, Some(ErrorKind::InvalidArgument));
    }
}
