//! A TCP forwarder in its own process that does nothing but copy bytes: the
//! floor of any out-of-process backend. A store call sent through it pays
//! what one more process in the path costs on this machine (accept, connect,
//! two more socket hops and their wake-ups) with none of a backend's work,
//! so `store through forwarder / store direct` is the ratio no backend can
//! beat here.
//!
//! The bench binary is its own forwarder: [`Forwarder::spawn`] re-executes
//! it with [`FORWARD_ENV`] set, and [`crate::harness::bench_main`] serves
//! instead of benchmarking when it finds that variable.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, ExitCode, Stdio},
};

/// `host:port` to forward to; set only on the forwarder child.
pub const FORWARD_ENV: &str = "BENCH_FORWARD_TO";

/// The forwarder child, killed on drop.
pub struct Forwarder {
    child: Child,
    port: u16,
}

impl Forwarder {
    /// Starts a forwarder to `upstream` (`host:port`) on a free port of
    /// 127.0.0.1.
    pub fn spawn(upstream: &str) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("forwarder: own path: {e}"))?;
        let mut child = Command::new(exe)
            .env(FORWARD_ENV, upstream)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("forwarder: spawn: {e}"))?;
        // Owned from here on, so that an error below still kills it.
        let stdout = child.stdout.take();
        let mut forwarder = Self { child, port: 0 };
        let mut line = String::new();
        if let Some(out) = stdout {
            BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| format!("forwarder: read its port: {e}"))?;
        }
        forwarder.port = line
            .trim()
            .parse()
            .map_err(|_| format!("forwarder did not report a port (got {line:?})"))?;
        Ok(forwarder)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The forwarder's process id (to measure what copying costs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves as the forwarder when [`FORWARD_ENV`] is set; `None` otherwise.
pub fn serve_if_asked() -> Option<ExitCode> {
    let upstream = std::env::var(FORWARD_ENV).ok()?;
    // One thread, like the lightest proxy one could put in the path.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("forwarder: cannot start the async runtime: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    Some(match runtime.block_on(serve(upstream)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forwarder: {e}");
            ExitCode::FAILURE
        }
    })
}

async fn serve(upstream: String) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?
        .port();
    println!("{port}");
    loop {
        let (mut client, _) = listener
            .accept()
            .await
            .map_err(|e| format!("accept: {e}"))?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let mut server = match tokio::net::TcpStream::connect(&upstream).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("forwarder: connect {upstream}: {e}");
                    return;
                }
            };
            // As every client and server in the benches sets it.
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}
