//! Prometheus metrics of the process: requests by method and code with
//! latency, and calls to the backing store by operation and outcome.
//!
//! One process-wide registry: a process serves exactly one backend.

use std::{future::Future, net::SocketAddr, sync::LazyLock, time::Duration};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::Result;

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    store_calls: IntCounterVec,
    store_seconds: HistogramVec,
    pruned: IntCounter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new_custom(Some("storage_backend".into()), None)
        .unwrap_or_else(|_| Registry::new());
    // The definitions below are constants: `expect` can only fire on a
    // programming error, which the metrics test catches.
    let requests = IntCounterVec::new(
        Opts::new(
            "grpc_requests_total",
            "gRPC requests by method and status code",
        ),
        &["method", "code"],
    )
    .expect("static metric definition");
    let request_seconds = HistogramVec::new(
        HistogramOpts::new("grpc_request_duration_seconds", "gRPC request latency")
            .buckets(BUCKETS.to_vec()),
        &["method"],
    )
    .expect("static metric definition");
    let store_calls = IntCounterVec::new(
        Opts::new(
            "store_calls_total",
            "Calls to the backing store by operation and outcome",
        ),
        &["operation", "outcome"],
    )
    .expect("static metric definition");
    let store_seconds = HistogramVec::new(
        HistogramOpts::new("store_call_duration_seconds", "Backing store call latency")
            .buckets(BUCKETS.to_vec()),
        &["operation"],
    )
    .expect("static metric definition");
    let pruned = IntCounter::new(
        "revisions_pruned_total",
        "Revisions removed by retention (APP_MAX_REVISIONS)",
    )
    .expect("static metric definition");
    for c in [
        Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(request_seconds.clone()),
        Box::new(store_calls.clone()),
        Box::new(store_seconds.clone()),
        Box::new(pruned.clone()),
    ] {
        let _ = registry.register(c);
    }
    Metrics {
        registry,
        requests,
        request_seconds,
        store_calls,
        store_seconds,
        pruned,
    }
});

/// Counts revisions removed by retention.
pub fn revisions_pruned(n: u64) {
    METRICS.pruned.inc_by(n);
}

/// Records one finished gRPC request.
pub fn observe_request(method: &'static str, code: tonic::Code, elapsed: Duration) {
    let m = &*METRICS;
    m.requests
        .with_label_values(&[method, crate::error::code_name(code)])
        .inc();
    m.request_seconds
        .with_label_values(&[method])
        .observe(elapsed.as_secs_f64());
}

/// Runs one call to the backing store and records its outcome and latency.
/// Every backend wraps its store calls in this.
pub async fn store_call<T>(
    operation: &'static str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    let start = std::time::Instant::now();
    let result = fut.await;
    let m = &*METRICS;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => crate::error::code_name(e.code()),
    };
    m.store_calls.with_label_values(&[operation, outcome]).inc();
    m.store_seconds
        .with_label_values(&[operation])
        .observe(start.elapsed().as_secs_f64());
    result
}

/// Adds a backend's own collector (e.g. a watch's counters) to the registry
/// `/metrics` serves; names get the same `storage_backend_` prefix.
pub fn register(collector: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
    METRICS.registry.register(collector)
}

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => return,
        };
        let (stream, _peer): (_, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                continue;
            }
        };
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<Incoming>| async move {
                if req.uri().path() == "/metrics" {
                    Response::builder()
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(bytes::Bytes::from(render())))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(bytes::Bytes::from_static(b"not found\n")))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
