//! The Vault session: how we log in, which token we hold, and keeping it
//! valid (renew-self before expiry, re-read a token file when it changes,
//! log in again on expiry or after a 403).
//!
//! Every login method goes through [`login`]; renewal and re-login
//! ([`Session::maintain`], [`Session::relogin`]) are the same for all of them.
//! A token, JWT, password or key lives only inside the current `VaultClient`
//! and in `Secret`s (or reqwest's opaque `Identity`); nothing here logs or
//! formats it.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use shared::{Error, Result, Secret};
use vaultrs::client::{Client, Identity, VaultClient, VaultClientSettingsBuilder};

/// How the backend logs in to Vault.
#[derive(Clone, Debug)]
pub enum Method {
    /// A token given directly, or read from a file (re-read when it changes,
    /// e.g. written by a Vault Agent sidecar).
    Token {
        token: Option<Secret>,
        file: Option<PathBuf>,
    },
    AppRole {
        mount: String,
        role_id: String,
        secret_id: SecretSource,
    },
    /// Kubernetes auth with the pod's service-account JWT, re-read at every
    /// login because the kubelet rotates it.
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
    /// JWT/OIDC auth (`jwt` method) with a JWT from a file, re-read at every
    /// login because its issuer rotates it. No role: the mount's `default_role`.
    Jwt {
        mount: String,
        role: Option<String>,
        jwt_file: PathBuf,
    },
    /// TLS certificate auth: the certificate and key are presented in the
    /// TLS handshake of the login and of every call made with its token.
    /// Both files are re-read at every login, so a renewed certificate is
    /// used from the next login on. No role: any role whose CA matches.
    Cert {
        mount: String,
        role: Option<String>,
        cert: PathBuf,
        key: PathBuf,
    },
    /// Username and password (`userpass` method), for development.
    Userpass {
        mount: String,
        username: String,
        password: SecretSource,
    },
}

/// A secret given directly or read from a file at each use.
#[derive(Clone, Debug)]
pub enum SecretSource {
    Value(Secret),
    File(PathBuf),
}

impl SecretSource {
    fn load(&self, what: &str) -> Result<Secret> {
        match self {
            SecretSource::Value(s) => Ok(s.clone()),
            SecretSource::File(p) => read_secret_file(p, what),
        }
    }
}

fn read_secret_file(path: &std::path::Path, what: &str) -> Result<Secret> {
    let raw = std::fs::read_to_string(path).map_err(|e| {
        Error::unavailable(format!("cannot read the {what} file {}", path.display())).with_source(e)
    })?;
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Error::unavailable(format!(
            "the {what} file {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(trimmed))
}

/// Connection settings that do not change with the token.
#[derive(Clone, Debug)]
pub struct Connection {
    pub address: url::Url,
    pub ca_certs: Vec<String>,
    pub identity: Option<Identity>,
    pub namespace: Option<String>,
    pub timeout: Duration,
}

/// A PEM certificate and its key as a TLS client identity; `cert_var` and
/// `key_var` name the settings in errors (never the content).
pub fn load_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
    cert_var: &str,
    key_var: &str,
) -> Result<Identity> {
    let mut pem = std::fs::read(cert).map_err(|e| {
        Error::invalid_argument(format!("cannot read {cert_var} {}", cert.display())).with_source(e)
    })?;
    pem.push(b'\n');
    pem.extend(std::fs::read(key).map_err(|e| {
        Error::invalid_argument(format!("cannot read {key_var} {}", key.display())).with_source(e)
    })?);
    Identity::from_pem(&pem).map_err(|e| {
        Error::invalid_argument(format!(
            "{cert_var}/{key_var} are not a PEM certificate and key"
        ))
        .with_source(e)
    })
}

impl Connection {
    /// A client holding `token` and presenting `identity` in TLS handshakes.
    /// Every setting is given explicitly so that vaultrs never falls back to
    /// reading VAULT_* variables itself.
    fn client(&self, token: &Secret, identity: Option<&Identity>) -> Result<VaultClient> {
        let mut b = VaultClientSettingsBuilder::default();
        b.address(self.address.as_str())
            .token(token.expose())
            .ca_certs(self.ca_certs.clone())
            .identity(identity.cloned())
            .verify(true)
            .timeout(Some(self.timeout))
            .namespace(self.namespace.clone());
        let settings = b
            .build()
            .map_err(|e| Error::internal("invalid vault client settings").with_source(e))?;
        VaultClient::new(settings)
            .map_err(|e| Error::internal("cannot build the vault client").with_source(e))
    }
}

/// What we know about the token in use.
struct Current {
    client: Arc<VaultClient>,
    /// Bumped at every new token, so that concurrent 403s cause one login.
    generation: u64,
    /// Token file content the token came from, to notice a change.
    from_file: Option<Secret>,
    /// Seconds the token had left when last checked (0: never expires).
    ttl: u64,
    renewable: bool,
}

pub struct Session {
    conn: Connection,
    method: Method,
    current: RwLock<Current>,
    login_lock: tokio::sync::Mutex<()>,
}

/// A client and the generation of its token.
pub struct Handle {
    pub client: Arc<VaultClient>,
    pub generation: u64,
}

impl Session {
    /// Logs in (or takes the token) and checks it with a lookup-self.
    pub async fn start(conn: Connection, method: Method) -> Result<Arc<Self>> {
        let current = login(&conn, &method, 1).await?;
        Ok(Arc::new(Self {
            conn,
            method,
            current: RwLock::new(current),
            login_lock: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn handle(&self) -> Handle {
        // A poisoned lock only means a panic elsewhere; the data is a plain
        // client handle and stays usable.
        let c = self.current.read().unwrap_or_else(|p| p.into_inner());
        Handle {
            client: Arc::clone(&c.client),
            generation: c.generation,
        }
    }

    pub fn address(&self) -> &url::Url {
        &self.conn.address
    }

    /// Obtains a new token after the one of `generation` was refused.
    /// Concurrent callers that saw the same refusal share one login.
    pub async fn relogin(&self, generation: u64) -> Result<()> {
        let _guard = self.login_lock.lock().await;
        if self.handle().generation != generation {
            return Ok(());
        }
        tracing::info!(
            method = self.method_name(),
            "vault refused the token; logging in again"
        );
        let next = login(&self.conn, &self.method, generation + 1).await?;
        self.replace(next);
        Ok(())
    }

    fn replace(&self, next: Current) {
        let mut c = self.current.write().unwrap_or_else(|p| p.into_inner());
        *c = next;
    }

    fn method_name(&self) -> &'static str {
        match self.method {
            Method::Token { .. } => "token",
            Method::AppRole { .. } => "approle",
            Method::Kubernetes { .. } => "kubernetes",
            Method::Jwt { .. } => "jwt",
            Method::Cert { .. } => "cert",
            Method::Userpass { .. } => "userpass",
        }
    }

    /// Keeps the token valid until the process ends: renews it at half its
    /// TTL, re-reads the token file, and logs in again when renewal is not
    /// possible. Failures are logged and retried; calls meanwhile may get
    /// PERMISSION_DENIED or UNAVAILABLE, which callers may retry.
    pub async fn maintain(self: Arc<Self>, file_poll: Duration) {
        loop {
            let (ttl, has_file) = {
                let c = self.current.read().unwrap_or_else(|p| p.into_inner());
                (c.ttl, c.from_file.is_some())
            };
            let mut wait = if ttl > 0 {
                Duration::from_secs(ttl / 2).max(Duration::from_millis(500))
            } else {
                Duration::from_secs(300)
            };
            if has_file {
                wait = wait.min(file_poll);
            }
            tokio::time::sleep(wait).await;
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e.detail(), "keeping the vault token valid failed; will retry");
            }
        }
    }

    async fn refresh(&self) -> Result<()> {
        let _guard = self.login_lock.lock().await;
        let (client, generation, from_file, ttl, renewable) = {
            let c = self.current.read().unwrap_or_else(|p| p.into_inner());
            (
                Arc::clone(&c.client),
                c.generation,
                c.from_file.clone(),
                c.ttl,
                c.renewable,
            )
        };
        if let Method::Token {
            file: Some(path), ..
        } = &self.method
        {
            let now = read_secret_file(path, "token")?;
            if from_file.as_ref() != Some(&now) {
                tracing::info!(file = %path.display(), "vault token file changed; using the new token");
                let next = login(&self.conn, &self.method, generation + 1).await?;
                self.replace(next);
                return Ok(());
            }
        }
        if ttl == 0 {
            return Ok(());
        }
        if renewable {
            match shared::metrics::store_call("renew_self", async {
                client
                    .renew(None)
                    .await
                    .map_err(|e| Error::unavailable("vault token renewal failed").with_source(e))
            })
            .await
            {
                Ok(info) => {
                    tracing::debug!(ttl = info.lease_duration, "vault token renewed");
                    let mut c = self.current.write().unwrap_or_else(|p| p.into_inner());
                    if c.generation == generation {
                        c.ttl = info.lease_duration;
                        c.renewable = info.renewable;
                    }
                    // A token at its max TTL renews to a shorter lease; below
                    // a few seconds, log in again rather than run out.
                    if info.lease_duration > 2 {
                        return Ok(());
                    }
                }
                Err(e) => tracing::warn!(error = %e.detail(), "renewing the vault token failed"),
            }
        }
        if matches!(self.method, Method::Token { file: None, .. }) {
            // Nothing to log in with: the operator must hand us a new token.
            return Err(Error::permission_denied(
                "the vault token expires and cannot be renewed",
            ));
        }
        let next = login(&self.conn, &self.method, generation + 1).await?;
        self.replace(next);
        Ok(())
    }
}

/// Gets a token by `method` and learns its TTL. The one login path of
/// every method: at start, on expiry ([`Session::refresh`]) and after a 403
/// ([`Session::relogin`]). Credentials in files are read here, every time.
async fn login(conn: &Connection, method: &Method, generation: u64) -> Result<Current> {
    let anonymous = Secret::new("");
    // The TLS client identity of this login and of the token it yields.
    let identity = match method {
        Method::Cert { cert, key, .. } => Some(load_identity(
            cert,
            key,
            "APP_VAULT_CERT_CLIENT_CERT",
            "APP_VAULT_CERT_CLIENT_KEY",
        )?),
        _ => conn.identity.clone(),
    };
    let identity = identity.as_ref();
    let (name, auth) = match method {
        Method::Token { token, file } => {
            let (token, from_file) = match (file, token) {
                (Some(p), _) => {
                    let t = read_secret_file(p, "token")?;
                    (t.clone(), Some(t))
                }
                (None, Some(t)) => (t.clone(), None),
                (None, None) => {
                    return Err(Error::invalid_argument(
                        "no vault credentials: set VAULT_TOKEN, VAULT_TOKEN_FILE or a login method (AppRole, Kubernetes, JWT, cert, userpass)",
                    ));
                }
            };
            let client = conn.client(&token, identity)?;
            let info = lookup(&client).await?;
            return Ok(Current {
                client: Arc::new(client),
                generation,
                from_file,
                ttl: info.0,
                renewable: info.1,
            });
        }
        Method::AppRole {
            mount,
            role_id,
            secret_id,
        } => {
            let secret_id = secret_id.load("AppRole secret_id")?;
            let bootstrap = conn.client(&anonymous, identity)?;
            let auth = login_call(
                "login_approle",
                "approle",
                mount,
                vaultrs::auth::approle::login(&bootstrap, mount, role_id, secret_id.expose()),
            )
            .await?;
            ("approle", auth)
        }
        Method::Kubernetes {
            mount,
            role,
            jwt_file,
        } => {
            let jwt = read_secret_file(jwt_file, "kubernetes service account token")?;
            let bootstrap = conn.client(&anonymous, identity)?;
            let auth = login_call(
                "login_kubernetes",
                "kubernetes",
                mount,
                vaultrs::auth::kubernetes::login(&bootstrap, mount, role, jwt.expose()),
            )
            .await?;
            ("kubernetes", auth)
        }
        Method::Jwt {
            mount,
            role,
            jwt_file,
        } => {
            let jwt = read_secret_file(jwt_file, "JWT")?;
            let bootstrap = conn.client(&anonymous, identity)?;
            let auth = login_call(
                "login_jwt",
                "jwt",
                mount,
                vaultrs::auth::oidc::login(&bootstrap, mount, jwt.expose(), role.clone()),
            )
            .await?;
            ("jwt", auth)
        }
        Method::Cert { mount, role, .. } => {
            let bootstrap = conn.client(&anonymous, identity)?;
            let endpoint = CertLogin {
                mount: mount.clone(),
                name: role.clone(),
            };
            let auth = login_call(
                "login_cert",
                "cert",
                mount,
                vaultrs::api::auth(&bootstrap, endpoint),
            )
            .await?;
            ("cert", auth)
        }
        Method::Userpass {
            mount,
            username,
            password,
        } => {
            let password = password.load("userpass password")?;
            let bootstrap = conn.client(&anonymous, identity)?;
            let auth = login_call(
                "login_userpass",
                "userpass",
                mount,
                vaultrs::auth::userpass::login(&bootstrap, mount, username, password.expose()),
            )
            .await?;
            ("userpass", auth)
        }
    };
    tracing::debug!(
        method = name,
        generation,
        ttl = auth.lease_duration,
        renewable = auth.renewable,
        "logged in to vault"
    );
    let token = Secret::new(auth.client_token);
    Ok(Current {
        client: Arc::new(conn.client(&token, identity)?),
        generation,
        from_file: None,
        ttl: auth.lease_duration,
        renewable: auth.renewable,
    })
}

/// The cert method's login. vaultrs 0.8's `auth::cert::login` sends the
/// role as `cert_name`, which Vault ignores (it then accepts any role whose
/// CA matches); Vault's parameter is `name`.
#[derive(serde::Serialize)]
struct CertLogin {
    #[serde(skip)]
    mount: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

impl rustify::Endpoint for CertLogin {
    type Response = ();
    const REQUEST_BODY_TYPE: rustify::enums::RequestType = rustify::enums::RequestType::JSON;
    const RESPONSE_BODY_TYPE: rustify::enums::ResponseType = rustify::enums::ResponseType::JSON;

    fn path(&self) -> String {
        // The form vaultrs' own endpoints use (rustify joins it to the address).
        format!("/auth/{}/login", self.mount)
    }

    fn method(&self) -> rustify::enums::RequestMethod {
        rustify::enums::RequestMethod::POST
    }

    fn body(&self) -> std::result::Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        rustify::http::build_body(self, Self::REQUEST_BODY_TYPE).map(Some)
    }
}

/// One login request, measured as a store call, its failure worded for
/// the operator (never with the credential).
async fn login_call(
    operation: &'static str,
    method: &str,
    mount: &str,
    request: impl std::future::Future<
        Output = std::result::Result<vaultrs::api::AuthInfo, vaultrs::error::ClientError>,
    >,
) -> Result<vaultrs::api::AuthInfo> {
    shared::metrics::store_call(operation, async {
        request.await.map_err(|e| login_error(e, method, mount))
    })
    .await
}

fn login_error(e: vaultrs::error::ClientError, method: &str, mount: &str) -> Error {
    let what = format!("{method} login at auth/{mount}");
    // Vault answers refused credentials with 400 on most auth methods (a bad
    // password, JWT, secret_id or certificate) and 403 on some.
    if crate::store::status_of(&e) == Some(400) {
        return Error::permission_denied(format!(
            "vault refused the {what}: check the role and its credentials"
        ))
        .with_source(e);
    }
    match crate::store::map_err(e, &what) {
        crate::store::Failure::Denied(e) => Error::permission_denied(format!(
            "vault refused the {what}: check the role and its credentials"
        ))
        .with_source(e),
        crate::store::Failure::Other(e) => e,
    }
}

/// The token's remaining TTL and renewability, by lookup-self. Also the
/// cheap "is our login valid" check of the health probe.
pub async fn lookup(client: &VaultClient) -> Result<(u64, bool)> {
    let info = shared::metrics::store_call("lookup_self", async {
        client
            .lookup()
            .await
            .map_err(|e| match crate::store::map_err(e, "token lookup-self") {
                crate::store::Failure::Denied(e) => {
                    Error::permission_denied("vault refused the backend's token (lookup-self)")
                        .with_source(e)
                }
                crate::store::Failure::Other(e) => e,
            })
    })
    .await?;
    Ok((info.ttl, info.renewable.unwrap_or(false)))
}

#[cfg(test)]
mod tests {
    use rustify::Endpoint as _;

    use super::*;

    #[test]
    fn cert_login_sends_the_role_as_name() {
        let with = CertLogin {
            mount: "cert".into(),
            name: Some("web".into()),
        };
        assert_eq!(with.path(), "/auth/cert/login");
        assert_eq!(
            with.body().ok().flatten(),
            Some(br#"{"name":"web"}"#.to_vec())
        );
        let without = CertLogin {
            mount: "cert".into(),
            name: None,
        };
        // rustify sends `{}` as an empty body; Vault then tries every role.
        assert_eq!(without.body().ok().flatten(), Some(Vec::new()));
    }

    #[test]
    fn debug_of_a_login_method_hides_its_secret() {
        let m = Method::Userpass {
            mount: "userpass".into(),
            username: "dev".into(),
            password: SecretSource::Value(Secret::new("pw-value-1b7f")),
        };
        let shown = format!("{m:?}");
        assert!(!shown.contains("pw-value-1b7f"), "{shown}");
        assert!(shown.contains("dev"), "{shown}");
    }
}
