//! A value backend served in-process: the revision engine on its in-memory
//! store, behind the real gRPC server. For tests that need *a* backend to
//! talk to (a Hub that delegates, a CLI that describes one), not a store.

use std::sync::Arc;

use clap::Parser;
use shared::{
    config::ServerConfig,
    engine::{
        Engine, Options,
        memory::{MemoryStore, UNCONDITIONAL},
    },
};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    server: ServerConfig,
}

/// The running server; dropping it shuts the server down.
pub struct MemoryBackend {
    /// `http://127.0.0.1:<port>`, for gRPC clients.
    pub url: String,
    /// `127.0.0.1:<port>`, the form a Hub registration holds.
    pub addr: String,
    /// The admin listener (APP_ADMIN_ADDR), `http://127.0.0.1:<port>`.
    pub admin_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl MemoryBackend {
    /// Serves a fresh, empty store on a free port.
    pub async fn start() -> Self {
        let admin = format!("127.0.0.1:{}", crate::free_port());
        let config =
            Args::parse_from(["memory", "--metrics-addr", "off", "--admin-addr", &admin]).server;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the in-process backend");
        let addr = listener.local_addr().expect("local addr").to_string();
        let engine = Arc::new(Engine::new(
            Arc::new(MemoryStore::<UNCONDITIONAL>::new()),
            Options::default(),
        ));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            if let Err(e) = shared::server::run_value(engine, &config, listener, stop).await {
                panic!("the in-process backend failed: {e}");
            }
        });
        Self {
            url: format!("http://{addr}"),
            addr,
            admin_url: format!("http://{admin}"),
            stop: Some(tx),
        }
    }
}

impl Drop for MemoryBackend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
