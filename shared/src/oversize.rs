//! A request above the gRPC message limit is answered RESOURCE_EXHAUSTED
//! stating the limit (gRPC's own convention, spec §3), not the OUT_OF_RANGE
//! that tonic's decoder gives. The decoder answers before any handler runs,
//! so the status is rewritten on the way out.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{
    codegen::{Service, http},
    server::NamedService,
};

/// Wraps one generated gRPC service.
#[derive(Clone)]
pub struct Oversize<S> {
    inner: S,
    limit: usize,
}

impl<S> Oversize<S> {
    pub fn new(inner: S, limit: usize) -> Self {
        Oversize { inner, limit }
    }
}

impl<S: NamedService> NamedService for Oversize<S> {
    const NAME: &'static str = S::NAME;
}

/// The decoder's words for a message above the limit.
const DECODER_TOO_LARGE: &str = "decoded message length too large";

impl<S, B, R> Service<http::Request<B>> for Oversize<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limit = self.limit;
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            rewrite(resp.headers_mut(), limit);
            Ok(resp)
        })
    }
}

/// Turns the decoder's OUT_OF_RANGE into RESOURCE_EXHAUSTED in a
/// trailers-only response (the only form a decode failure takes).
fn rewrite(headers: &mut http::HeaderMap, limit: usize) {
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.contains(DECODER_TOO_LARGE) || m.contains("decoded%20message"));
    if !(out_of_range && too_large) {
        return;
    }
    let message = format!("request larger than the grpc message limit of {limit} bytes");
    headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    if let Ok(v) = http::HeaderValue::from_str(&message) {
        headers.insert("grpc-message", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoders_out_of_range_becomes_resource_exhausted_stating_the_limit() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
            ),
        );
        rewrite(&mut h, 4);
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(
            h["grpc-message"],
            "request larger than the grpc message limit of 4 bytes"
        );
    }

    #[test]
    fn other_statuses_pass_unchanged() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static("revision out of range"),
        );
        rewrite(&mut h, 4);
        assert_eq!(h["grpc-status"], "11");
    }
}
