//! `testkit::fault::FaultProxy` in front of an echo server: each mode does
//! what it says to new and to open connections, and switching back heals.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use testkit::fault::{FaultProxy, Mode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// An echo server on its own threads (independent of any test runtime);
/// counts the connections it accepted.
struct Echo {
    addr: String,
    accepted: Arc<AtomicUsize>,
}

fn echo() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
    let addr = listener.local_addr().expect("echo address").to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = conn.shutdown(Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Echo { addr, accepted }
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    TcpStream::connect(proxy.addr())
        .await
        .expect("connect to the proxy")
}

/// Sends `msg` and reads its echo; `Err` with what happened instead
/// (a timeout, end of stream or an I/O error).
async fn round_trip(conn: &mut TcpStream, msg: &[u8], within: Duration) -> Result<(), String> {
    conn.write_all(msg)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut got = vec![0u8; msg.len()];
    match tokio::time::timeout(within, conn.read_exact(&mut got)).await {
        Err(_) => Err("timeout".into()),
        Ok(Err(e)) if e.kind() == ErrorKind::UnexpectedEof => Err("eof".into()),
        Ok(Err(e)) => Err(format!("{:?}", e.kind())),
        Ok(Ok(_)) if got == msg => Ok(()),
        Ok(Ok(_)) => Err(format!("wrong bytes: {got:?}")),
    }
}

/// What the next read of `conn` gives within `within`: "timeout", "eof",
/// the error kind, or "data".
async fn next_read(conn: &mut TcpStream, within: Duration) -> String {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, conn.read(&mut buf)).await {
        Err(_) => "timeout".into(),
        Ok(Ok(0)) => "eof".into(),
        Ok(Ok(_)) => "data".into(),
        Ok(Err(e)) => format!("{:?}", e.kind()),
    }
}

const QUICK: Duration = Duration::from_secs(2);

#[tokio::test]
async fn pass_forwards_both_ways_and_passes_end_of_stream_on() {
    let echo = echo();
    let proxy = FaultProxy::start(&echo.addr);
    let mut conn = connect(&proxy).await;
    round_trip(&mut conn, b"hello", QUICK).await.expect("echo");
    // A large message crosses in several chunks.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = conn.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&big).await.expect("write");
        w.shutdown().await.expect("shutdown");
        big
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut back))
        .await
        .expect("the echo ends after our end of stream")
        .expect("read");
    assert_eq!(back, writer.await.expect("writer"));
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn latency_holds_each_chunk_each_way_and_applies_to_open_connections() {
    let echo = echo();
    let proxy = FaultProxy::start(&echo.addr);
    let mut open = connect(&proxy).await;
    round_trip(&mut open, b"warm", QUICK).await.expect("echo");

    proxy.set(Mode::Latency(Duration::from_millis(300)));
    for conn in [&mut open, &mut connect(&proxy).await] {
        let t = Instant::now();
        round_trip(conn, b"slow", QUICK).await.expect("echo");
        // Once on the way there, once on the way back.
        assert!(
            t.elapsed() >= Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
    }
    proxy.set(Mode::Pass);
    let t = Instant::now();
    round_trip(&mut open, b"fast", QUICK).await.expect("echo");
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn black_hole_accepts_but_answers_nothing_and_passing_again_resumes() {
    let echo = echo();
    let proxy = FaultProxy::start(&echo.addr);
    let mut open = connect(&proxy).await;
    round_trip(&mut open, b"before", QUICK).await.expect("echo");

    proxy.set(Mode::BlackHole);
    assert_eq!(
        round_trip(&mut open, b"lost?", Duration::from_millis(700)).await,
        Err("timeout".into())
    );
    // A new connection is accepted, and never reaches the store.
    let mut new = connect(&proxy).await;
    assert_eq!(
        round_trip(&mut new, b"anyone?", Duration::from_millis(700)).await,
        Err("timeout".into())
    );
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);

    // Healed: what was held is delivered, in order, on both connections.
    proxy.set(Mode::Pass);
    let mut got = [0u8; 5];
    open.read_exact(&mut got).await.expect("held bytes");
    assert_eq!(&got, b"lost?");
    let mut got = [0u8; 7];
    new.read_exact(&mut got).await.expect("held bytes");
    assert_eq!(&got, b"anyone?");
    round_trip(&mut new, b"after", QUICK).await.expect("echo");
}

#[tokio::test]
async fn reset_aborts_open_connections_and_every_new_one() {
    let echo = echo();
    let proxy = FaultProxy::start(&echo.addr);
    let mut open = connect(&proxy).await;
    round_trip(&mut open, b"before", QUICK).await.expect("echo");

    proxy.set(Mode::Reset);
    assert_eq!(next_read(&mut open, QUICK).await, "ConnectionReset");
    // Accepted, then reset at once: the RST may even beat the end of our
    // connect.
    for _ in 0..5 {
        match TcpStream::connect(proxy.addr()).await {
            Ok(mut new) => assert_eq!(next_read(&mut new, QUICK).await, "ConnectionReset"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        }
    }
    assert_eq!(proxy.accepted(), 6);

    proxy.set(Mode::Pass);
    let mut healed = connect(&proxy).await;
    round_trip(&mut healed, b"after", QUICK)
        .await
        .expect("echo");
}

#[tokio::test]
async fn refuse_closes_the_port_and_open_connections_then_listens_on_the_same_port_again() {
    let echo = echo();
    let proxy = FaultProxy::start(&echo.addr);
    let port = proxy.port();
    let mut open = connect(&proxy).await;
    round_trip(&mut open, b"before", QUICK).await.expect("echo");

    proxy.set(Mode::Refuse);
    assert_eq!(next_read(&mut open, QUICK).await, "eof");
    let refused = TcpStream::connect(proxy.addr())
        .await
        .expect_err("nothing listens");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);

    proxy.set(Mode::Pass);
    assert_eq!(proxy.port(), port);
    let mut healed = connect(&proxy).await;
    round_trip(&mut healed, b"after", QUICK)
        .await
        .expect("echo");
    // And once more, from another mode than Pass.
    proxy.set(Mode::Refuse);
    proxy.set(Mode::Latency(Duration::from_millis(10)));
    let mut again = connect(&proxy).await;
    round_trip(&mut again, b"again", QUICK).await.expect("echo");
}

#[test]
fn a_store_that_refuses_resets_the_proxied_connection() {
    // Nothing listens upstream: the proxy accepts, fails to connect, resets.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = upstream.local_addr().expect("address").to_string();
    drop(upstream);
    let proxy = FaultProxy::start(&gone);
    let mut conn = std::net::TcpStream::connect(proxy.addr()).expect("the proxy accepts");
    conn.set_read_timeout(Some(QUICK)).expect("timeout");
    let mut buf = [0u8; 8];
    let err = conn.read(&mut buf).expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
}

#[test]
fn dropping_the_proxy_closes_its_port() {
    let echo = echo();
    let proxy = FaultProxy::start(&echo.addr);
    let addr = proxy.addr();
    drop(proxy);
    let err = std::net::TcpStream::connect(addr).expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

/// The writers' ledger itself: clean on a sound backend (the revision
/// engine in-process), and a revision it never wrote or a TypeInstance
/// still there after its delete is reported.
#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_is_clean_on_a_sound_backend_and_reports_lost_and_resurrected_writes() {
    use testkit::crash::{Load, LoadOptions};
    let backend = testkit::memory::MemoryBackend::start().await;
    let load = Load::start(
        &backend.url,
        LoadOptions {
            call_bound: Some(Duration::from_secs(5)),
            ..LoadOptions::new("ledger")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut report = load.finish().await;
    assert!(report.acknowledged > 20, "{}", report.summary());
    report.verify(&backend.url).await;
    assert_eq!(report.violations, Vec::<String>::new());

    let live: Vec<usize> = (0..report.records.len())
        .filter(|&i| !report.records[i].deleted && !report.records[i].uncertain)
        .collect();
    assert!(live.len() >= 2, "{}", report.summary());
    let (lost, resurrected) = (live[0], live[1]);
    report.records[lost]
        .revisions
        .push(bytes::Bytes::from_static(b"never written"));
    report.records[resurrected].deleted = true;
    report.verify(&backend.url).await;
    let lost_rev = report.records[lost].revisions.len() - 1;
    let lost_id = &report.records[lost].id;
    assert!(
        report.violations.iter().any(|v| v.starts_with(&format!(
            "{lost_id} revision {lost_rev} (acknowledged, 13 bytes) reads back as NOT_FOUND"
        ))),
        "{:#?}",
        report.violations
    );
    let resurrected_id = &report.records[resurrected].id;
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.starts_with(&format!("deleted {resurrected_id} came back"))),
        "{:#?}",
        report.violations
    );
}
