//! One write per response: a connection wrapper that holds what hyper's h2
//! writes until it flushes, and lets every other ready task run once before
//! the first flush of a batch.
//!
//! Why: hyper sends a unary response's HEADERS+DATA, then its trailers
//! (grpc-status) from a second poll of the response body, and flushes in
//! between, so every GetValue went out as two TCP writes and woke the Hub's
//! client twice. Yielding once before the flush lets the trailers join the
//! batch, as grpc-go's writer does with its Gosched before a small flush.
//!
//! `shared::client` wraps its outgoing connections too: tonic's client
//! likewise writes a request's HEADERS and its DATA apart.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Beyond this many held bytes, writes go through without waiting for a
/// flush: a large response is throughput-bound, not latency-bound.
const HOLD_LIMIT: usize = 64 * 1024;

pub struct Coalescing<T> {
    inner: T,
    held: Vec<u8>,
    /// Written out of `held` so far.
    sent: usize,
    /// The current batch already yielded once before flushing.
    yielded: bool,
}

impl<T> Coalescing<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            held: Vec::new(),
            sent: 0,
            yielded: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalescing<T> {
    /// Writes out everything held.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalescing<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalescing<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.held.len() + buf.len() > HOLD_LIMIT {
            ready!(self.poll_send_held(cx))?;
            if buf.len() > HOLD_LIMIT {
                return Pin::new(&mut self.inner).poll_write(cx, buf);
            }
        }
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.held.len() + len > HOLD_LIMIT {
            ready!(self.poll_send_held(cx))?;
            if len > HOLD_LIMIT {
                return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            self.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.is_empty() {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        if !self.yielded {
            // tokio's yield_now defers the wake-up until the tasks already
            // woken (the response body's) have run.
            let mut yield_now = std::pin::pin!(tokio::task::yield_now());
            if yield_now.as_mut().poll(cx).is_pending() {
                self.yielded = true;
                return Poll::Pending;
            }
        }
        ready!(self.poll_send_held(cx))?;
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_held(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Coalescing<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A socket stand-in that records every write it is given.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Recorder {
        fn writes(&self) -> Vec<Vec<u8>> {
            self.0.lock().map(|w| w.clone()).unwrap_or_default()
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if let Ok(mut w) = self.0.lock() {
                w.push(buf.to_vec());
            }
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_before_a_flush_leave_as_one_write() {
        let socket = Recorder::default();
        let mut conn = Coalescing::new(socket.clone());
        conn.write_all(b"headers").await.expect("write");
        conn.write_all(b"data").await.expect("write");
        assert!(socket.writes().is_empty(), "nothing is sent before a flush");
        conn.flush().await.expect("flush");
        assert_eq!(socket.writes(), vec![b"headersdata".to_vec()]);
    }

    /// Polls `fut` once.
    fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
        fut.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test]
    async fn a_write_made_while_the_flush_yields_joins_the_batch() {
        let socket = Recorder::default();
        let mut conn = Coalescing::new(socket.clone());
        conn.write_all(b"data").await.expect("write");
        {
            let mut flush = std::pin::pin!(conn.flush());
            assert!(
                poll_once(flush.as_mut()).is_pending(),
                "the first flush of a batch yields once"
            );
        }
        // Meanwhile the task woken before it (hyper's response body) sends
        // the trailers; the flush that follows sends both.
        conn.write_all(b"trailers").await.expect("write");
        conn.flush().await.expect("flush");
        assert_eq!(socket.writes(), vec![b"datatrailers".to_vec()]);
    }

    #[tokio::test]
    async fn a_flush_with_nothing_held_does_not_yield() {
        let mut conn = Coalescing::new(Recorder::default());
        let mut flush = std::pin::pin!(conn.flush());
        assert!(poll_once(flush.as_mut()).is_ready());
    }

    #[tokio::test]
    async fn a_write_beyond_the_hold_limit_goes_straight_through() {
        let socket = Recorder::default();
        let mut conn = Coalescing::new(socket.clone());
        conn.write_all(b"small").await.expect("write");
        let big = vec![7u8; HOLD_LIMIT + 1];
        conn.write_all(&big).await.expect("write");
        assert_eq!(socket.writes(), vec![b"small".to_vec(), big]);
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_held() {
        let socket = Recorder::default();
        let mut conn = Coalescing::new(socket.clone());
        conn.write_all(b"goaway").await.expect("write");
        conn.shutdown().await.expect("shutdown");
        assert_eq!(socket.writes(), vec![b"goaway".to_vec()]);
    }
}
