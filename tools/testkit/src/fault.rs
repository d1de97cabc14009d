//! Store faults on the wire: [`FaultProxy`], a TCP proxy put between a
//! backend and its store, and [`assert_store_fault`], the scenario every
//! backend runs through it (writers keep going while the store misbehaves;
//! every call stays bounded by `APP_STORE_DEADLINE`, readiness follows, and
//! nothing acknowledged is lost once the store is back).
//!
//! ```ignore
//! let proxy = FaultProxy::start(&format!("127.0.0.1:{}", moto.port));
//! // give the backend `proxy.url("http")` as its endpoint, then:
//! proxy.set(Mode::BlackHole);
//! proxy.set(Mode::Pass);
//! ```
//!
//! The proxy runs on its own thread and runtime, so it works from any test
//! runtime (current-thread included) and keeps forwarding while the test's
//! runtime is busy or blocked.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{oneshot, watch},
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    BackendProcess,
    crash::{Load, LoadOptions},
};

/// What the proxy does to the bytes between the backend and the store.
/// A new mode applies at once to new connections and to open ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Forward, each chunk held this long first (each way).
    Latency(Duration),
    /// Accept connections but forward and answer nothing; open connections
    /// stop forwarding (nothing is read from either side, as in a network
    /// partition). Going back to `Pass` or `Latency` resumes them where
    /// they stopped.
    BlackHole,
    /// Abort every connection with a TCP RST; new ones are reset right
    /// after they are accepted.
    Reset,
    /// Stop listening, so that connects are refused, and close the open
    /// connections (as a store process that went away). Any other mode
    /// listens again on the same port.
    Refuse,
}

/// Whether the listening socket is open, for [`FaultProxy::set`] to wait on.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Listening {
    Open,
    Closed,
    /// Re-binding the port failed (another process took it meanwhile).
    Failed(String),
}

#[derive(Default)]
struct ListenState {
    state: Mutex<Option<Listening>>,
    changed: Condvar,
}

impl ListenState {
    fn publish(&self, now: Listening) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        self.changed.notify_all();
    }
}

/// A TCP proxy on 127.0.0.1 (a free port) in front of one upstream
/// `host:port`, with a switchable [`Mode`]. Dropping it closes everything.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: String,
    mode: watch::Sender<Mode>,
    listening: Arc<ListenState>,
    accepted: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`
    /// (`host:port`), in [`Mode::Pass`].
    pub fn start(upstream: &str) -> Self {
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let listening = Arc::new(ListenState::default());
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = oneshot::channel();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = {
            let upstream: Arc<str> = Arc::from(upstream);
            let listening = Arc::clone(&listening);
            let accepted = Arc::clone(&accepted);
            std::thread::Builder::new()
                .name("fault-proxy".into())
                .spawn(move || {
                    // One thread is plenty for test traffic, and keeps the
                    // proxy independent of the test's runtime.
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("fault proxy: build its tokio runtime");
                    runtime.block_on(async move {
                        let listener = match bind(0).await {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = bound_tx.send(Err(e));
                                return;
                            }
                        };
                        let _ = bound_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                        listening.publish(Listening::Open);
                        let serve = listen(listener, upstream, mode_rx, listening, accepted);
                        tokio::select! {
                            () = serve => {}
                            _ = stop_rx => {}
                        }
                    });
                    // Dropping the runtime drops every connection task, and
                    // with them their sockets.
                })
                .expect("fault proxy: spawn its thread")
        };
        let addr = bound_rx
            .recv()
            .expect("fault proxy: its thread ended before binding")
            .unwrap_or_else(|e| panic!("fault proxy: bind 127.0.0.1: {e}"));
        Self {
            addr,
            upstream: upstream.to_owned(),
            mode,
            listening,
            accepted,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `<scheme>://127.0.0.1:<port>`: an endpoint for the backend.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Switches the mode. Returns once the listening socket is in the
    /// state the mode asks for (closed for [`Mode::Refuse`], open
    /// otherwise); open connections see the change at once, asynchronously.
    /// Panics if the port could not be bound again.
    pub fn set(&self, mode: Mode) {
        {
            // A failed re-bind is retried on this new mode: forget it, so
            // that the wait below sees the outcome of the retry.
            let mut state = self
                .listening
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if matches!(*state, Some(Listening::Failed(_))) {
                *state = None;
            }
        }
        self.mode.send_replace(mode);
        let want = if mode == Mode::Refuse {
            Listening::Closed
        } else {
            Listening::Open
        };
        let guard = self
            .listening
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (guard, timeout) = self
            .listening
            .changed
            .wait_timeout_while(guard, Duration::from_secs(10), |s| {
                s.as_ref()
                    .is_none_or(|s| *s != want && !matches!(s, Listening::Failed(_)))
            })
            .unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(Listening::Failed(e)) => panic!("fault proxy on {}: {e}", self.addr),
            _ if timeout.timed_out() => {
                panic!(
                    "fault proxy on {}: {mode:?} not applied within 10s",
                    self.addr
                )
            }
            _ => {}
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A listening socket on 127.0.0.1:`port` (0: any). SO_REUSEADDR, so that
/// the port of connections still in TIME_WAIT can be listened on again.
async fn bind(port: u16) -> Result<TcpListener, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // The port was ours a moment ago; a short retry covers a slow release.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let attempt = TcpSocket::new_v4().and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(1024)
        });
        match attempt {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() >= deadline => return Err(format!("bind {addr}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Accepts while the mode is not [`Mode::Refuse`]; under `Refuse` the
/// socket is closed, and bound again on the same port when the mode changes.
async fn listen(
    first: TcpListener,
    upstream: Arc<str>,
    mut mode: watch::Receiver<Mode>,
    listening: Arc<ListenState>,
    accepted: Arc<AtomicUsize>,
) {
    let port = first.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut listener = Some(first);
    loop {
        let Some(l) = listener.take() else {
            while *mode.borrow_and_update() == Mode::Refuse {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            match bind(port).await {
                Ok(l) => {
                    listener = Some(l);
                    listening.publish(Listening::Open);
                }
                Err(e) => {
                    listening.publish(Listening::Failed(e));
                    // Wait for the next mode before trying again.
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
            }
            continue;
        };
        loop {
            if *mode.borrow_and_update() == Mode::Refuse {
                break;
            }
            tokio::select! {
                conn = l.accept() => match conn {
                    Ok((stream, _)) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(connection(stream, Arc::clone(&upstream), mode.clone()));
                    }
                    // E.g. out of file descriptors: do not spin.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
                changed = mode.changed() => if changed.is_err() {
                    return;
                },
            }
        }
        drop(l);
        listening.publish(Listening::Closed);
    }
}

/// How a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Both directions reached end of stream and were shut down.
    Done,
    /// Abortive close: RST.
    Reset,
    /// Plain close (FIN), as when the process holding the socket exits.
    Closed,
}

async fn connection(client: TcpStream, upstream: Arc<str>, mut mode: watch::Receiver<Mode>) {
    let _ = client.set_nodelay(true);
    let mut client = client;
    // A connection accepted during a black hole does not even reach the
    // store until the black hole ends.
    let end = match wait_forwarding(&mut mode, false).await {
        Err(end) => end,
        Ok(()) => match TcpStream::connect(&*upstream).await {
            // The store itself refused: the client sees its connection reset.
            Err(_) => End::Reset,
            Ok(mut server) => {
                let _ = server.set_nodelay(true);
                let end = relay(&mut client, &mut server, &mode).await;
                close(server, end);
                end
            }
        },
    };
    close(client, end);
}

fn close(stream: TcpStream, end: End) {
    if end == End::Reset {
        // SO_LINGER 0: the close below sends RST instead of FIN.
        let _ = stream.set_zero_linger();
    }
    drop(stream);
}

async fn relay(
    client: &mut TcpStream,
    server: &mut TcpStream,
    mode: &watch::Receiver<Mode>,
) -> End {
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let up = pump(client_read, server_write, mode.clone());
    let down = pump(server_read, client_write, mode.clone());
    // The first direction that must end the connection ends both.
    match futures::future::try_join(up, down).await {
        Ok(_) => End::Done,
        Err(end) => end,
    }
}

/// Copies `from` to `to` chunk by chunk under the current mode.
async fn pump<R, W>(mut from: R, mut to: W, mut mode: watch::Receiver<Mode>) -> Result<(), End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        wait_forwarding(&mut mode, false).await?;
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) => {
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Ok(n) => n,
                // The peer reset its side: so does the proxy, to the other.
                Err(_) => return Err(End::Reset),
            },
            // A new mode applies to an idle connection too (reading is
            // cancel-safe: nothing read is lost).
            changed = mode.changed() => {
                changed.map_err(|_| End::Closed)?;
                continue;
            }
        };
        // The chunk is held for the latency, and through a black hole.
        wait_forwarding(&mut mode, true).await?;
        tokio::select! {
            written = to.write_all(&buf[..n]) => written.map_err(|_| End::Reset)?,
            end = killed(&mut mode) => return Err(end),
        }
    }
}

/// Waits until the mode lets bytes through (after the latency of the mode
/// in force when the wait began, if `with_latency`); an end if the mode ends
/// connections.
async fn wait_forwarding(mode: &mut watch::Receiver<Mode>, with_latency: bool) -> Result<(), End> {
    let mut due: Option<Instant> = None;
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Pass => return Ok(()),
            Mode::Latency(_) if !with_latency => return Ok(()),
            Mode::Latency(d) => {
                let at = *due.get_or_insert_with(|| Instant::now() + d);
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => return Ok(()),
                    changed = mode.changed() => changed.map_err(|_| End::Closed)?,
                }
            }
            Mode::BlackHole => mode.changed().await.map_err(|_| End::Closed)?,
            Mode::Reset => return Err(End::Reset),
            Mode::Refuse => return Err(End::Closed),
        }
    }
}

/// Resolves when the mode ends connections.
async fn killed(mode: &mut watch::Receiver<Mode>) -> End {
    loop {
        match *mode.borrow_and_update() {
            Mode::Reset => return End::Reset,
            Mode::Refuse => return End::Closed,
            _ => {}
        }
        if mode.changed().await.is_err() {
            return End::Closed;
        }
    }
}

/// A copy of the kubeconfig at `original` whose server is `server` (e.g. a
/// [`FaultProxy`] in front of the API server: its certificate names
/// 127.0.0.1, so TLS passes through the proxy unchanged), written to `dir`.
pub fn kubeconfig_via(original: &Path, server: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(original)
        .unwrap_or_else(|e| panic!("read {}: {e}", original.display()));
    let mut replaced = 0;
    let text: String = text
        .lines()
        .map(|line| match line.trim_start().strip_prefix("server: ") {
            Some(_) => {
                replaced += 1;
                let indent = &line[..line.len() - line.trim_start().len()];
                format!("{indent}server: {server}\n")
            }
            None => format!("{line}\n"),
        })
        .collect();
    assert_eq!(replaced, 1, "{} names one server", original.display());
    let name = original
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kubeconfig".into());
    let path = dir.join(format!("via-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// The settings [`assert_store_fault`] expects the backend to run with
/// (add them to its environment), and what it checks against.
#[derive(Clone, Debug)]
pub struct FaultTimings {
    /// `APP_STORE_DEADLINE`.
    pub store_deadline: Duration,
    /// `APP_HEALTH_INTERVAL`.
    pub health_interval: Duration,
    /// `APP_HEALTH_PROBE_TIMEOUT`.
    pub probe_timeout: Duration,
    /// Allowed on top of the deadline for a call to end (scheduling, the
    /// gRPC round trip, a loaded machine): a contract bound, not a speed
    /// target.
    pub slack: Duration,
}

impl Default for FaultTimings {
    fn default() -> Self {
        Self {
            store_deadline: Duration::from_secs(2),
            health_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(300),
            slack: Duration::from_secs(3),
        }
    }
}

impl FaultTimings {
    /// The environment that sets these timings on a backend.
    pub fn env(&self) -> Vec<(String, String)> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        vec![
            ("APP_STORE_DEADLINE".into(), ms(self.store_deadline)),
            ("APP_HEALTH_INTERVAL".into(), ms(self.health_interval)),
            ("APP_HEALTH_PROBE_TIMEOUT".into(), ms(self.probe_timeout)),
        ]
    }

    /// The longest any call may take.
    pub fn call_bound(&self) -> Duration {
        self.store_deadline + self.slack
    }

    /// A latency that no store call survives within the deadline.
    pub fn beyond_deadline(&self) -> Duration {
        self.store_deadline + Duration::from_millis(500)
    }
}

/// The readiness ("") and liveness ("liveness") health of `url`; `None`
/// for a service that did not answer.
pub async fn health(url: &str) -> (Option<ServingStatus>, Option<ServingStatus>) {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url.to_owned()) else {
        return (None, None);
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
    else {
        return (None, None);
    };
    let mut client = HealthClient::new(channel);
    let mut check = async |service: &str| {
        client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .ok()
            .and_then(|r| ServingStatus::try_from(r.into_inner().status).ok())
    };
    let readiness = check("").await;
    let liveness = check("liveness").await;
    (readiness, liveness)
}

/// Polls health until readiness is `want`, checking liveness stays SERVING
/// on every poll; returns how long it took. Panics after `within`.
async fn await_readiness(
    backend: &BackendProcess,
    want: ServingStatus,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let (readiness, liveness) = health(&backend.url).await;
        assert_eq!(
            liveness,
            Some(ServingStatus::Serving),
            "liveness must stay SERVING whatever the store does (readiness {readiness:?})"
        );
        if readiness == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "readiness stayed {readiness:?}, not {want:?}, for {within:?}; backend log:\n{}",
            backend.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many times [`assert_store_fault`] turns the fault on and off: each
/// onset cuts every writer's call at another step.
const FAULT_CYCLES: usize = 2;

/// The store-fault scenario for a backend whose store is reached through
/// `proxy` and which runs with `timings` (see [`FaultTimings::env`]):
///
/// 1. four writers (creates, successive updates, deletes, reads) run
///    against the backend with the proxy passing;
/// 2. the proxy switches to `fault` while they keep going: every call
///    ends within the deadline plus slack with UNAVAILABLE (ABORTED for a
///    lost race; DEADLINE_EXCEEDED or anything else fails the test),
///    readiness turns NOT_SERVING within an interval plus the probe timeout
///    (plus slack), liveness stays SERVING throughout;
/// 3. back to `Pass`: readiness returns to SERVING and the writers go on;
///    each interrupted call completes when retried with the same
///    arguments.
///
/// Steps 2 and 3 run [`FAULT_CYCLES`] times. At the end every
/// acknowledged revision (before, during or after a fault) reads back
/// byte-exact and every deleted TypeInstance stays gone.
pub async fn assert_store_fault(
    backend: &BackendProcess,
    proxy: &FaultProxy,
    fault: Mode,
    timings: &FaultTimings,
    load: LoadOptions,
) {
    assert_eq!(proxy.mode(), Mode::Pass, "the scenario starts passing");
    let bound = timings.call_bound();
    let load = Load::start(
        &backend.url,
        LoadOptions {
            call_bound: Some(bound),
            ..load
        },
    )
    .await;
    let mut windows = Vec::new();
    for _ in 0..FAULT_CYCLES {
        let acked = load.acknowledged();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            load.acknowledged() > acked,
            "nothing was acknowledged with the store passing"
        );

        let fault_started = Instant::now();
        proxy.set(fault);
        // A probe starts within one interval and fails within its timeout.
        let not_serving = await_readiness(
            backend,
            ServingStatus::NotServing,
            timings.health_interval + timings.probe_timeout + timings.slack,
        )
        .await;
        // Long enough for every writer's call under way at the onset to be
        // cut by the deadline, and for its retry to meet the fault too.
        let fault_for = timings.store_deadline + Duration::from_millis(1500);
        while fault_started.elapsed() < fault_for {
            let liveness = health(&backend.url).await.1;
            assert_eq!(liveness, Some(ServingStatus::Serving), "liveness");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let fault_ended = Instant::now();
        proxy.set(Mode::Pass);
        let serving = await_readiness(
            backend,
            ServingStatus::Serving,
            timings.health_interval + timings.probe_timeout + bound + timings.slack,
        )
        .await;
        windows.push((fault_started, fault_ended, not_serving, serving));
    }
    // Let the writers finish what the last fault interrupted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut report = load.finish().await;

    for (cycle, (from, to, not_serving, serving)) in windows.into_iter().enumerate() {
        let during = report.calls_between(from, to);
        assert!(
            during.count(Code::Unavailable) > 0,
            "no call answered UNAVAILABLE during {fault:?} #{cycle} (NOT_SERVING after \
             {not_serving:?}, SERVING {serving:?} after Pass): {}",
            during.summary()
        );
        if matches!(fault, Mode::BlackHole | Mode::Latency(_)) {
            // A silent store is cut by the store budget, which names the
            // store and what the call was doing.
            let messages = during.messages(Code::Unavailable);
            assert!(
                messages.iter().any(|m| m.contains("did not answer within")),
                "no UNAVAILABLE from the store deadline during {fault:?} #{cycle}: {messages:?}"
            );
        }
    }
    report.verify(&backend.url).await;
    report.assert_clean(&backend.logs());
}

/// The four store-fault tests of a backend, named for what they prove.
/// Each calls `$run(mode)`, an `async fn(Mode)` of the test file that puts
/// the backend's store behind a [`FaultProxy`], starts the backend with
/// [`FaultTimings::default`]'s environment and calls [`assert_store_fault`].
#[macro_export]
macro_rules! store_fault_tests {
    ($run:ident) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn a_black_holed_store_gives_unavailable_within_the_deadline_and_readiness_follows() {
            $run($crate::fault::Mode::BlackHole).await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_store_resetting_connections_gives_unavailable_within_the_deadline_and_readiness_follows() {
            $run($crate::fault::Mode::Reset).await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_store_refusing_connections_gives_unavailable_within_the_deadline_and_readiness_follows() {
            $run($crate::fault::Mode::Refuse).await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_store_slower_than_the_deadline_gives_unavailable_within_it_and_readiness_follows() {
            $run($crate::fault::Mode::Latency(
                $crate::fault::FaultTimings::default().beyond_deadline(),
            ))
            .await;
        }
    };
}
