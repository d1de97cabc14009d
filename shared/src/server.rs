//! The process around a backend: gRPC server with health, reflection and
//! `BackendInfo`, metrics endpoint, TLS, and bounded graceful shutdown.

use std::{future::Future, process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;
use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    Backend, ContextBackend, Result, ValueBackend,
    config::ServerConfig,
    grpc::{Adapter, AdapterOptions, Info},
    proto::{
        self,
        admin::storage_admin_server::StorageAdminServer,
        info::backend_info_server::BackendInfoServer,
        storage_backend::{
            context_storage_backend_server::ContextStorageBackendServer,
            value_and_context_storage_backend_server::ValueAndContextStorageBackendServer,
        },
    },
};

/// Health service name that reports SERVING while the process runs, for
/// liveness probes (the empty name tracks the store, for readiness).
pub const LIVENESS_SERVICE: &str = "liveness";

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A backend's full configuration: the server part plus its own settings.
pub trait BackendConfig: Parser + Send + 'static {
    fn server(&self) -> &ServerConfig;

    /// Log targets of the store SDK to silence unless asked for by
    /// `APP_LOG_LEVEL` (see [`crate::telemetry::init`]).
    const QUIET_LOG_TARGETS: &'static [&'static str] = &[];

    /// `APP_WORKER_THREADS` when it is not set: 0 (one worker per CPU) for
    /// backends that compute per request; 1 for those that only wait on
    /// their store, where cross-thread wake-ups cost more than they save.
    const DEFAULT_WORKER_THREADS: usize = 0;
}

/// `main` of a value backend: parse config, build the backend, serve until a
/// signal. Startup errors are printed with what to change, and exit with 2.
pub fn main_value<C, B, F, Fut>(build: F) -> ExitCode
where
    C: BackendConfig,
    B: ValueBackend,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<B>>,
{
    main_with(build, |backend, server| {
        Box::pin(serve_value(backend, server))
    })
}

/// `main` of a context backend; see [`main_value`].
pub fn main_context<C, B, F, Fut>(build: F) -> ExitCode
where
    C: BackendConfig,
    B: ContextBackend,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<B>>,
{
    main_with(build, |backend, server| {
        Box::pin(serve_context(backend, server))
    })
}

type ServeFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), String>>>>;

fn main_with<C, B, F, Fut>(
    build: F,
    serve: impl FnOnce(Arc<B>, ServerConfig) -> ServeFuture,
) -> ExitCode
where
    C: BackendConfig,
    B: Backend,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<B>>,
{
    let config = C::parse();
    let server = config.server().clone();
    if let Err(e) = server.check() {
        eprintln!("configuration error: {e}");
        return ExitCode::from(2);
    }
    if let Err(code) =
        crate::telemetry::init_or_exit(server.log_format, &server.log_level, C::QUIET_LOG_TARGETS)
    {
        return code;
    }
    let runtime = match runtime(server.worker_threads.unwrap_or(C::DEFAULT_WORKER_THREADS)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let backend = match build(config).await {
            Ok(b) => Arc::new(b),
            Err(e) => {
                tracing::error!(error = %e.detail(), "backend failed to start");
                return ExitCode::from(2);
            }
        };
        match serve(backend, server).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// The runtime of `APP_WORKER_THREADS`: one thread needs no cross-thread
/// wake-ups between the gRPC connection, the handler and the store client.
fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().build()
}

/// Serves a value backend on `config.grpc_addr` until SIGTERM/SIGINT.
pub async fn serve_value<B: ValueBackend>(
    backend: Arc<B>,
    config: ServerConfig,
) -> Result<(), String> {
    let listener = bind(config.grpc_addr.0).await?;
    run_value(backend, &config, listener, shutdown_signal()).await
}

/// Serves a context backend on `config.grpc_addr` until SIGTERM/SIGINT.
pub async fn serve_context<B: ContextBackend>(
    backend: Arc<B>,
    config: ServerConfig,
) -> Result<(), String> {
    let listener = bind(config.grpc_addr.0).await?;
    run_context(backend, &config, listener, shutdown_signal()).await
}

/// Serves a value backend on `listener` until `shutdown` resolves (tests
/// pass their own listener and trigger).
pub async fn run_value<B: ValueBackend>(
    backend: Arc<B>,
    config: &ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let adapter = adapter(&backend, config)?;
    let info = Info::new(adapter.describe(), adapter.max_value_bytes());
    let svc = crate::oversize::Oversize::new(
        ValueAndContextStorageBackendServer::new(adapter)
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes),
        config.max_message_bytes,
    );
    run(
        backend,
        config,
        listener,
        shutdown,
        proto::VALUE_SERVICE,
        info,
        |r| r.add_service(svc),
    )
    .await
}

/// Serves a context backend on `listener` until `shutdown` resolves.
pub async fn run_context<B: ContextBackend>(
    backend: Arc<B>,
    config: &ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let adapter = adapter(&backend, config)?;
    let info = Info::new(adapter.describe(), adapter.max_value_bytes());
    let svc = crate::oversize::Oversize::new(
        ContextStorageBackendServer::new(adapter)
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes),
        config.max_message_bytes,
    );
    run(
        backend,
        config,
        listener,
        shutdown,
        proto::CONTEXT_SERVICE,
        info,
        |r| r.add_service(svc),
    )
    .await
}

fn adapter<B: Backend>(backend: &Arc<B>, config: &ServerConfig) -> Result<Adapter<B>, String> {
    let options = AdapterOptions {
        request_timeout: config.request_timeout,
        store_deadline: config.store_deadline,
        max_value_bytes: config.max_value_bytes,
    };
    Adapter::new(Arc::clone(backend), &options).map_err(|e| e.detail())
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (APP_GRPC_ADDR): {e}"))
}

type Router = tonic::transport::server::Router;

async fn run<B: Backend>(
    backend: Arc<B>,
    config: &ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    service_name: &'static str,
    info: Info,
    add_backend: impl FnOnce(Router) -> Router,
) -> Result<(), String> {
    let describe = backend.describe();
    let (reporter, health) = tonic_health::server::health_reporter();
    let services = ["", service_name, proto::INFO_SERVICE];
    set_status(&reporter, &services, ServingStatus::NotServing).await;
    // Liveness is the process answering, never the store: a store outage
    // must take the pod out of rotation (readiness), not restart it.
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection setup failed: {e}"))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| format!("reflection setup failed: {e}"))?;

    // TLS is ours (shared::tls), not tonic's: certificates reload from disk.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::Reloading::start(
            crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
            },
            config.tls_reload_interval,
        )?),
        _ => None,
    };
    let router = Server::builder()
        .add_service(health.clone())
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(BackendInfoServer::new(info));
    let router = add_backend(router);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let metrics_task = match config.metrics_addr.0 {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (APP_METRICS_ADDR): {e}"))?;
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(crate::metrics::serve(l, async move {
                let _ = rx.wait_for(|s| *s).await;
            })))
        }
        None => None,
    };

    // Health only, plaintext, same reporter: kubelet's gRPC probe cannot
    // speak TLS, and this port reveals nothing but serving status.
    let health_task = match config.health_addr.0 {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (APP_HEALTH_ADDR): {e}"))?;
            let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
            let mut rx = stop_rx.clone();
            let health_only = Server::builder().add_service(health.clone());
            Some(tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = health_only
                    .serve_with_incoming_shutdown(incoming, stop)
                    .await
                {
                    tracing::error!(error = %e, "health listener failed");
                }
            }))
        }
        None => None,
    };

    // Operators only: lock listing and force-unlock, with health so that a
    // port-forward can check it answers. Plaintext, like the health port;
    // bind it to loopback.
    let admin_task =
        match config.admin_addr.0 {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr} (APP_ADMIN_ADDR): {e}"))?;
                let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
                let mut rx = stop_rx.clone();
                let admin = Server::builder().add_service(health.clone()).add_service(
                    StorageAdminServer::new(crate::admin::Admin::new(Arc::clone(&backend))),
                );
                tracing::info!(addr = %addr, "admin service listening");
                Some(tokio::spawn(async move {
                    let stop = async move {
                        let _ = rx.wait_for(|s| *s).await;
                    };
                    if let Err(e) = admin.serve_with_incoming_shutdown(incoming, stop).await {
                        tracing::error!(error = %e, "admin listener failed");
                    }
                }))
            }
            None => None,
        };

    let probe_task = tokio::spawn(probe_loop(
        Arc::clone(&backend),
        reporter.clone(),
        services,
        Probing {
            interval: config.health_interval,
            timeout: config.health_probe_timeout.min(config.health_interval),
            threshold: config.health_failure_threshold,
        },
        stop_rx.clone(),
    ));

    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        backend = describe.name,
        version = describe.version,
        addr = %local,
        tls = config.tls_cert.is_some(),
        mtls = config.tls_client_ca.is_some(),
        "serving"
    );

    let mut server_stop = stop_rx.clone();
    let stopped = async move {
        let _ = server_stop.wait_for(|s| *s).await;
    };
    type Serving =
        std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;
    let server: Serving = match tls {
        Some(tls) => {
            let handshakes = tls.incoming(listener, HANDSHAKE_TIMEOUT);
            let incoming = tokio_stream::wrappers::ReceiverStream::new(handshakes);
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        None => {
            // TCP_NODELAY: small unary responses otherwise wait ~40 ms for
            // delayed ACKs.
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            // One TCP write per response (see coalesce.rs).
            let incoming = futures::StreamExt::map(incoming, |conn| {
                conn.map(crate::coalesce::Coalescing::new)
            });
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    };
    tokio::pin!(server);
    tokio::pin!(shutdown);

    let result = tokio::select! {
        r = &mut server => r.map_err(|e| format!("gRPC server failed: {e}")),
        () = &mut shutdown => {
            tracing::info!(grace = %humantime::format_duration(config.shutdown_grace), "shutting down");
            // NOT_SERVING first so that load balancers stop sending traffic.
            set_status(&reporter, &services, ServingStatus::NotServing).await;
            let _ = stop_tx.send(true);
            match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                Ok(r) => r.map_err(|e| format!("gRPC server failed: {e}")),
                Err(_) => {
                    tracing::warn!("grace period over; dropping the requests still running");
                    Ok(())
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    probe_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    for t in [health_task, admin_task].into_iter().flatten() {
        t.abort();
    }
    tracing::info!("stopped");
    result
}

async fn set_status(reporter: &HealthReporter, services: &[&str], status: ServingStatus) {
    for s in services {
        reporter.set_service_status(*s, status).await;
    }
}

/// How the store is probed for readiness.
struct Probing {
    interval: Duration,
    timeout: Duration,
    threshold: u32,
}

/// Readiness: a probe every `interval`. A probe that times out, or finds
/// the store unreachable (UNAVAILABLE), takes the backend out of rotation at
/// once — within one interval plus the probe timeout of the store going
/// silent; other failures (a denied permission) count to `threshold`. The
/// first good probe brings it back.
async fn probe_loop<B: Backend>(
    backend: Arc<B>,
    reporter: HealthReporter,
    services: [&'static str; 3],
    probing: Probing,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let mut serving = false;
    loop {
        let (ok, silent) = match tokio::time::timeout(probing.timeout, backend.probe()).await {
            Ok(Ok(())) => (true, false),
            Ok(Err(e)) => {
                tracing::warn!(error = %e.detail(), "health probe failed");
                (false, e.kind() == crate::ErrorKind::Unavailable)
            }
            Err(_) => {
                tracing::warn!(
                    timeout = %humantime::format_duration(probing.timeout),
                    "health probe timed out"
                );
                (false, true)
            }
        };
        if *stop.borrow() {
            return;
        }
        if ok {
            failures = 0;
            if !serving {
                serving = true;
                tracing::info!("backing store reachable: SERVING");
                set_status(&reporter, &services, ServingStatus::Serving).await;
            }
        } else {
            failures = failures.saturating_add(1);
            if serving && (silent || failures >= probing.threshold) {
                serving = false;
                tracing::warn!(failures, "backing store unreachable: NOT_SERVING");
                set_status(&reporter, &services, ServingStatus::NotServing).await;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(probing.interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
