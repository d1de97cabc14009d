//! TLS of the gRPC port with certificates that follow their files: a
//! certificate, key or client CA rotated on disk (cert-manager renewing a
//! Secret) is picked up within `APP_TLS_RELOAD_INTERVAL` by new handshakes,
//! while established connections keep the session they negotiated. A file
//! that fails to load keeps the previous configuration and is logged.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::coalesce::Coalescing;

/// The files of the server's TLS identity.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// What a reload compares: each file's modification time and length.
type Stamp = Vec<Option<(SystemTime, u64)>>;

impl TlsFiles {
    fn paths(&self) -> Vec<&PathBuf> {
        let mut out = vec![&self.cert, &self.key];
        out.extend(self.client_ca.as_ref());
        out
    }

    fn stamp(&self) -> Stamp {
        self.paths()
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }

    /// The rustls configuration these files make (h2 only, as gRPC needs).
    pub fn load(&self) -> Result<ServerConfig, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("cannot read APP_TLS_CERT {}: {e}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "APP_TLS_CERT {} holds no certificate",
                self.cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("cannot read APP_TLS_KEY {}: {e}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("cannot read APP_TLS_CLIENT_CA {}: {e}", ca.display()))?
                {
                    let cert = cert.map_err(|e| {
                        format!("cannot read APP_TLS_CLIENT_CA {}: {e}", ca.display())
                    })?;
                    roots.add(cert).map_err(|e| {
                        format!(
                            "APP_TLS_CLIENT_CA {} holds a bad certificate: {e}",
                            ca.display()
                        )
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| format!("APP_TLS_CLIENT_CA {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("APP_TLS_CERT and APP_TLS_KEY do not make an identity: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// The current configuration, swapped whole by the reloader.
#[derive(Clone)]
pub struct Reloading {
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl Reloading {
    /// Loads the files now (a bad file fails the start) and re-reads them
    /// every `interval` when their stamps changed, until the process ends.
    pub fn start(files: TlsFiles, interval: Duration) -> Result<Self, String> {
        let first = Arc::new(files.load()?);
        let me = Self {
            current: Arc::new(RwLock::new(first)),
        };
        let current = Arc::clone(&me.current);
        tokio::spawn(async move {
            let mut seen = files.stamp();
            loop {
                tokio::time::sleep(interval).await;
                let now = files.stamp();
                if now == seen {
                    continue;
                }
                match files.load() {
                    Ok(config) => {
                        *current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                        seen = now;
                        tracing::info!(cert = %files.cert.display(), "tls certificate reloaded");
                    }
                    // Mid-rotation (key written, certificate not yet) or a
                    // bad file: keep serving the previous identity.
                    Err(e) => {
                        tracing::warn!(error = %e, "tls files changed but do not load; keeping the previous ones")
                    }
                }
            }
        });
        Ok(me)
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }

    /// Accepts on `listener` and hands out finished handshakes; each runs
    /// in its own task (bounded by `handshake_timeout`), so a slow client
    /// never holds up the others. Ends when the receiver is dropped.
    pub fn incoming(
        &self,
        listener: TcpListener,
        handshake_timeout: Duration,
    ) -> tokio::sync::mpsc::Receiver<std::io::Result<TlsStream<Coalescing<tokio::net::TcpStream>>>>
    {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let tcp = match listener.accept().await {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of descriptors and the like: pause, go on.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let _ = tcp.set_nodelay(true);
                let acceptor = me.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(Coalescing::new(tcp)),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "tls handshake failed"),
                        Err(_) => tracing::debug!("tls handshake timed out"),
                    }
                });
            }
        });
        rx
    }
}
