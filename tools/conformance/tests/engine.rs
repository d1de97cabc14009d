//! The revision engine (`shared::engine`) on the in-memory store, served by
//! two gRPC servers that share the store as two backend processes share a
//! real one: the whole suite passes, and the two-process race group finds
//! no violation.

mod support;

use std::sync::Arc;

use conformance::{Connect, Target};
use shared::engine::{
    Engine, Options,
    memory::{MemoryStore, UNCONDITIONAL},
};
use support::server_config;

async fn serve<S: shared::engine::HeadStore>(
    engine: Arc<Engine<S>>,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let cfg = server_config(&[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let stop = async {
            let _ = rx.await;
        };
        shared::server::run_value(engine, &cfg, listener, stop)
            .await
            .expect("server runs");
    });
    (url, tx)
}

/// Two servers over one store: each with its own engine, as two processes.
async fn pair() -> (String, String, Guard) {
    let store = Arc::new(MemoryStore::<UNCONDITIONAL>::new());
    let a = Arc::new(Engine::new(Arc::clone(&store), Options::default()));
    let b = Arc::new(Engine::new(store, Options::default()));
    let (ua, sa) = serve(a).await;
    let (ub, sb) = serve(b).await;
    (ua, ub, Guard(vec![sa, sb]))
}

struct Guard(Vec<tokio::sync::oneshot::Sender<()>>);

impl Drop for Guard {
    fn drop(&mut self) {
        for s in self.0.drain(..) {
            let _ = s.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_on_the_memory_store_passes_the_whole_suite() {
    let (url, _, _guard) = pair().await;
    let target = Target::connect(&Connect::plain(url), None)
        .await
        .expect("connect");
    let report = conformance::run(Arc::new(target), None, |name, outcome| {
        println!("{}", conformance::line(name, outcome));
    })
    .await;
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    assert!(report.passed() >= 40, "{}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_sharing_one_store_pass_the_race_group() {
    let (a, b, _guard) = pair().await;
    let connect = |u: String| async move {
        Arc::new(
            Target::connect(&Connect::plain(u), None)
                .await
                .expect("connect"),
        )
    };
    let report = conformance::races::run(connect(a).await, connect(b).await, 200).await;
    assert!(report.violations.is_empty(), "{}", report.summary());
}
