//! The process around a backend: health tracking the store, reflection,
//! metrics, deadlines, TLS and mutual TLS, graceful shutdown.

mod support;

use std::{
    io::{Read, Write},
    path::Path,
    process::Command,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use conformance::{Connect, Target};
use support::{Memory, start, start_with};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn health(url: &str, service: &str) -> ServingStatus {
    let channel = Connect::plain(url).channel().await.expect("connect");
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check");
    ServingStatus::try_from(resp.into_inner().status).unwrap_or(ServingStatus::Unknown)
}

/// Polls until the status is reached; bounded so a broken server fails
/// instead of hanging (a liveness bound, not a speed assertion).
async fn wait_for_health(url: &str, want: ServingStatus) {
    for _ in 0..100 {
        if health(url, "storage_backend.ValueAndContextStorageBackend").await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health never became {want:?}");
}

#[tokio::test]
async fn health_follows_the_backing_store() {
    let backend = Memory::new(None);
    backend.healthy.store(true, Ordering::SeqCst);
    let backend = Arc::new(backend);
    let server =
        support::start_shared(Arc::clone(&backend), &["--health-failure-threshold", "1"]).await;
    wait_for_health(&server.url, ServingStatus::Serving).await;
    assert_eq!(health(&server.url, "").await, ServingStatus::Serving);
    backend.healthy.store(false, Ordering::SeqCst);
    wait_for_health(&server.url, ServingStatus::NotServing).await;
    // Liveness ignores the store: an outage must not restart the pod.
    assert_eq!(
        health(&server.url, shared::server::LIVENESS_SERVICE).await,
        ServingStatus::Serving
    );
    backend.healthy.store(true, Ordering::SeqCst);
    wait_for_health(&server.url, ServingStatus::Serving).await;
}

#[tokio::test]
async fn shutdown_stops_the_server_within_the_grace_period() {
    let mut server = start_with(Memory::new(None), &["--shutdown-grace", "2s"]).await;
    wait_for_health(&server.url, ServingStatus::Serving).await;
    server.stop();
    let done = server.done.take().expect("server task");
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("server stopped")
        .expect("server task ended cleanly");
    assert!(Connect::plain(server.url.clone()).channel().await.is_err());
}

/// The client dials through its own connector (shared::client): names are
/// resolved and IPv6 literals lose their brackets before dialling.
#[tokio::test]
async fn clients_dial_host_names_and_ipv6_literals() {
    let server = start(Memory::new(None)).await;
    let port = server.url.rsplit(':').next().expect("port");
    let by_name = Target::connect(&Connect::plain(format!("localhost:{port}")), None)
        .await
        .expect("connect by host name");
    by_name.create("by-name", b"v1").await.expect("create");
    assert_eq!(by_name.get("by-name", 1).await.expect("get"), &b"v1"[..]);

    // Only where the machine has an IPv6 loopback.
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        return;
    }
    let v6 = support::start_on(Arc::new(Memory::new(None)), &[], "[::1]:0").await;
    assert!(v6.url.starts_with("http://[::1]:"), "{}", v6.url);
    let target = Target::connect(&Connect::plain(v6.url.clone()), None)
        .await
        .expect("connect to an IPv6 literal");
    target.create("by-v6", b"v1").await.expect("create");
    assert_eq!(target.get("by-v6", 1).await.expect("get"), &b"v1"[..]);
}

#[tokio::test]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = start(Memory::new(None)).await;
    let channel = Connect::plain(server.url.clone())
        .channel()
        .await
        .expect("connect");
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(req))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("message")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "storage_backend.ValueAndContextStorageBackend",
        "capact_storage.info.v1.BackendInfo",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[tokio::test]
async fn metrics_count_requests_by_method_and_code() {
    let addr = format!("127.0.0.1:{}", free_port());
    let server = start_with(Memory::new(None), &["--metrics-addr", &addr]).await;
    let target = Target::connect(&Connect::plain(server.url.clone()), None)
        .await
        .expect("connect");
    let _ = target.get("missing", 1).await;
    let body = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics"))
        .await
        .expect("get");
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    assert!(
        body.contains(r#"storage_backend_grpc_requests_total{code="NOT_FOUND",method="GetValue"}"#),
        "{body}"
    );
    assert!(body.contains("storage_backend_grpc_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn slow_request_ends_with_deadline_exceeded() {
    let mut backend = Memory::new(None);
    backend.read_delay = Duration::from_secs(3);
    let server = start_with(backend, &["--request-timeout", "200ms"]).await;
    let target = Target::connect(&Connect::plain(server.url.clone()), None)
        .await
        .expect("connect");
    let err = target.get("slow", 1).await.expect_err("deadline");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
}

#[tokio::test]
async fn a_silent_store_ends_the_call_with_unavailable_naming_the_step() {
    let mut backend = Memory::new(None);
    backend.read_delay = Duration::from_secs(3);
    let server = start_with(backend, &["--store-deadline", "200ms"]).await;
    let target = Target::connect(&Connect::plain(server.url.clone()), None)
        .await
        .expect("connect");
    let err = target.get("slow", 1).await.expect_err("store deadline");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("did not answer within 200ms while reading revision 1 of type instance slow"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_silent_probe_takes_readiness_away_at_once_whatever_the_threshold() {
    let backend = Arc::new(Memory::new(None));
    let server = support::start_shared(
        Arc::clone(&backend),
        &[
            "--health-interval",
            "200ms",
            "--health-probe-timeout",
            "100ms",
            "--health-failure-threshold",
            "100",
        ],
    )
    .await;
    wait_for_health(&server.url, ServingStatus::Serving).await;
    backend.probe_hangs.store(true, Ordering::SeqCst);
    wait_for_health(&server.url, ServingStatus::NotServing).await;
    assert_eq!(
        health(&server.url, shared::server::LIVENESS_SERVICE).await,
        ServingStatus::Serving
    );
    backend.probe_hangs.store(false, Ordering::SeqCst);
    wait_for_health(&server.url, ServingStatus::Serving).await;
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client
/// certificate, made with the openssl CLI.
fn make_pki(dir: &Path) {
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            ok.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("ext");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    ]);
    for name in ["server", "client", "server2"] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
    }
}

/// The certificate a new TLS connection to `addr` is shown.
async fn served_certificate(addr: &str, ca: &Path) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
}

fn der_of(pem: &Path) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_file(pem).expect("pem").to_vec()
}

#[tokio::test]
async fn a_renewed_certificate_reaches_new_connections_while_open_ones_keep_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_pki(dir.path());
    let p = |f: &str| dir.path().join(f);
    // The mounted Secret, as cert-manager rotates it.
    let live = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (live.path().join("tls.crt"), live.path().join("tls.key"));
    std::fs::copy(p("server.pem"), &cert).expect("copy");
    std::fs::copy(p("server.key"), &key).expect("copy");
    let server = start_with(
        Memory::new(None),
        &[
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
            "--tls-reload-interval",
            "100ms",
        ],
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let open = Target::connect(
        &Connect {
            url: format!("https://{addr}"),
            tls_ca: Some(p("ca.pem")),
            ..Connect::default()
        },
        None,
    )
    .await
    .expect("tls connect");
    open.create("before", b"v").await.expect("create");
    assert_eq!(
        served_certificate(&addr, &p("ca.pem")).await,
        der_of(&p("server.pem"))
    );

    // Rotate: each file replaced whole, as a Secret volume update does.
    for (from, to) in [("server2.key", &key), ("server2.pem", &cert)] {
        let tmp = to.with_extension("new");
        std::fs::copy(p(from), &tmp).expect("copy");
        std::fs::rename(&tmp, to).expect("rename");
    }
    let renewed = der_of(&p("server2.pem"));
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = served_certificate(&addr, &p("ca.pem")).await;
        if seen == renewed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, renewed, "new connections get the renewed certificate");
    open.create("after", b"v")
        .await
        .expect("the connection opened before the rotation still works");
}

#[tokio::test]
async fn tls_and_mutual_tls_are_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_pki(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();

    let tls = start_with(
        Memory::new(None),
        &[
            "--tls-cert",
            &p("server.pem"),
            "--tls-key",
            &p("server.key"),
        ],
    )
    .await;
    let url = tls.url.replace("http://", "https://");
    let with_ca = Connect {
        url: url.clone(),
        tls_ca: Some(p("ca.pem").into()),
        ..Connect::default()
    };
    let target = Target::connect(&with_ca, None).await.expect("tls connect");
    target
        .create("tls-value", b"v")
        .await
        .expect("create over tls");
    assert!(
        Target::connect(&Connect::plain(tls.url.clone()), None)
            .await
            .is_err(),
        "plaintext accepted"
    );

    let mtls = start_with(
        Memory::new(None),
        &[
            "--tls-cert",
            &p("server.pem"),
            "--tls-key",
            &p("server.key"),
            "--tls-client-ca",
            &p("ca.pem"),
        ],
    )
    .await;
    let url = mtls.url.replace("http://", "https://");
    let no_cert = Connect {
        url: url.clone(),
        tls_ca: Some(p("ca.pem").into()),
        ..Connect::default()
    };
    assert!(
        Target::connect(&no_cert, None).await.is_err(),
        "client without certificate accepted"
    );
    let with_cert = Connect {
        url,
        tls_ca: Some(p("ca.pem").into()),
        tls_cert: Some(p("client.pem").into()),
        tls_key: Some(p("client.key").into()),
        tls_domain: None,
    };
    let target = Target::connect(&with_cert, None)
        .await
        .expect("mtls connect");
    target
        .create("mtls-value", b"v")
        .await
        .expect("create over mtls");
}

#[tokio::test]
async fn plaintext_health_port_answers_while_the_main_port_requires_mutual_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_pki(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let health_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let health_addr = format!("127.0.0.1:{health_port}");
    let mtls = start_with(
        Memory::new(None),
        &[
            "--tls-cert",
            &p("server.pem"),
            "--tls-key",
            &p("server.key"),
            "--tls-client-ca",
            &p("ca.pem"),
            "--health-addr",
            &health_addr,
        ],
    )
    .await;
    let health_url = format!("http://{health_addr}");
    // The server binds its listeners in its own task: wait for this one.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&health_addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_health(&health_url, ServingStatus::Serving).await;
    assert_eq!(
        health(&health_url, shared::server::LIVENESS_SERVICE).await,
        ServingStatus::Serving
    );
    // The health port serves nothing else.
    assert!(
        Target::connect(&Connect::plain(health_url), None)
            .await
            .is_err(),
        "the health port answered Describe"
    );
    assert!(
        Target::connect(&Connect::plain(mtls.url.clone()), None)
            .await
            .is_err(),
        "plaintext accepted on the main port"
    );
}

#[tokio::test]
async fn request_above_the_message_limit_is_resource_exhausted_stating_the_limit() {
    use shared::proto::storage_backend::{
        OnCreateValueAndContextRequest,
        value_and_context_storage_backend_client::ValueAndContextStorageBackendClient,
    };
    let server = start_with(
        Memory::new(None),
        &["--max-value-bytes", "1024", "--max-message-bytes", "70000"],
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    // A client that sends what the server refuses to decode.
    let mut client = ValueAndContextStorageBackendClient::new(channel)
        .max_encoding_message_size(1 << 20)
        .max_decoding_message_size(1 << 20);
    let err = client
        .on_create(OnCreateValueAndContextRequest {
            type_instance_id: "big".into(),
            value: vec![b'x'; 100_000].into(),
            context: None,
        })
        .await
        .expect_err("too large");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        err.message(),
        "request larger than the grpc message limit of 70000 bytes"
    );
}
