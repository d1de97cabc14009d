//! A remote that accepts connections and never answers (a blackholed
//! network path, a hung server): calls answer UNAVAILABLE within the
//! request timeout, readiness drops, reads from the clone keep being
//! served, and once the remote answers again the next calls succeed.

mod support;

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use shared::client::{Client, Connect, Timeouts};
use support::{bare_repo, free_port, git_daemon, spawn_backend_on, start_backend};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// What the backends below are told: short git timeouts, so the test is
/// quick; the request timeout well above them.
const TIMEOUTS: [(&str, &str); 4] = [
    ("APP_GIT_CONNECT_TIMEOUT", "1s"),
    ("APP_GIT_IO_TIMEOUT", "2s"),
    ("APP_STORE_DEADLINE", "8s"),
    ("APP_REQUEST_TIMEOUT", "10s"),
];
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn client(url: &str) -> Client {
    Client::connect(
        &Connect::plain(url),
        Timeouts::both(Duration::from_secs(30)),
    )
    .await
    .expect("connect")
}

/// A TCP forwarder to `target` that can turn into a blackhole: while on,
/// it accepts connections and never reads or writes them.
struct Switch {
    port: u16,
    blackhole: Arc<AtomicBool>,
}

impl Switch {
    fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let blackhole = Arc::new(AtomicBool::new(false));
        let on = Arc::clone(&blackhole);
        // Threads end with the test process; held sockets likewise.
        std::thread::spawn(move || {
            let held = Mutex::new(Vec::new());
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                if on.load(Ordering::SeqCst) {
                    held.lock().expect("held").push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });
        Self { port, blackhole }
    }

    fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }
}

fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_that_stops_answering_is_unavailable_within_the_request_timeout_and_blocks_nothing_after()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let (_daemon, base) = git_daemon(dir.path()).await;
    let daemon_port: u16 = base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("daemon port");
    let switch = Switch::start(daemon_port);
    let remote = format!("git://127.0.0.1:{}/remote.git", switch.port);
    let mut env = TIMEOUTS.to_vec();
    env.push(("APP_GIT_REMOTE", &remote));
    // Reads between fetches come from the clone: they must not wait for
    // a writer stuck on the remote.
    env.push(("APP_GIT_READ_FETCH_INTERVAL", "1h"));
    let mut backend = start_backend(&dir.path().join("data"), &env).await;
    let c = client(&backend.url).await;
    c.create("a", Some(b"a1".to_vec().into()), None)
        .await
        .expect("create");

    switch.set_blackhole(true);
    // Three writers at once: the first waits for the remote, the others
    // for the first; each is answered within the request timeout.
    let started = Instant::now();
    let writes: Vec<_> = (0..3)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let r = c
                    .update(
                        "a",
                        2,
                        Some(format!("a2-{i}").into_bytes().into()),
                        None,
                        None,
                    )
                    .await;
                (r, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read_at = Instant::now();
    let got = c.get("a", 1, None).await.expect("read from the clone");
    assert_eq!(got.as_deref(), Some(&b"a1"[..]));
    assert!(
        read_at.elapsed() < Duration::from_secs(1),
        "a read waited for the stuck writer: {:?}",
        read_at.elapsed()
    );
    for w in writes {
        let (r, took) = w.await.expect("join");
        let err = r.expect_err("the remote does not answer");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(took < REQUEST_TIMEOUT, "answered after {took:?}");
    }
    backend.wait_health(ServingStatus::NotServing).await;

    // The remote answers again: the next write does not queue behind the
    // abandoned ones, and readiness comes back.
    switch.set_blackhole(false);
    let again = Instant::now();
    c.update("a", 2, Some(b"a2".to_vec().into()), None, None)
        .await
        .expect("write once the remote answers");
    assert!(
        again.elapsed() < Duration::from_secs(5),
        "took {:?}",
        again.elapsed()
    );
    backend.wait_health(ServingStatus::Serving).await;
    let got = c.get("a", 2, None).await.expect("read");
    assert_eq!(got.as_deref(), Some(&b"a2"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_remote_that_never_answers_is_unavailable_within_the_request_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Bound and never accepted: the kernel completes the handshakes, and
    // nothing is ever read or answered.
    let blackhole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = blackhole.local_addr().expect("addr").port();
    let remote = format!("http://127.0.0.1:{port}/remote.git");
    let mut env = TIMEOUTS.to_vec();
    env.push(("APP_GIT_REMOTE", &remote));
    let mut backend = spawn_backend_on(free_port(), &dir.path().join("data"), &env);
    // It starts (a silent remote only delays readiness) but is not ready.
    backend.wait_health(ServingStatus::NotServing).await;
    let c = client(&backend.url).await;
    for _ in 0..2 {
        let started = Instant::now();
        let err = c
            .create("x", Some(b"x".to_vec().into()), None)
            .await
            .expect_err("the remote never answers");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            started.elapsed() < REQUEST_TIMEOUT,
            "answered after {:?}",
            started.elapsed()
        );
        let err = c.get("x", 1, None).await.expect_err("reads fetch first");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    drop(blackhole);
}
