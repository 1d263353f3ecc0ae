//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`.

use crate::metrics::Metrics;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Set once shutdown (SIGTERM, or SIGQUIT after an upgrade hand-over) has begun.
    pub draining: tokio::sync::watch::Receiver<bool>,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, content_type, body) = match session.req_header().uri.path() {
            "/metrics" => (200, "text/plain; version=0.0.4", self.metrics.render()),
            "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
            "/readyz" if *self.draining.borrow() => (503, "text/plain", b"draining\n".to_vec()),
            "/readyz" => (200, "text/plain", b"ready\n".to_vec()),
            _ => (404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n".to_vec()),
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            // Which process answered: lets a supervisor (or a test) tell this instance from
            // another one that holds the same port.
            .header("x-unpoll-pid", std::process::id())
            .header("content-length", body.len())
            .body(body)
            .expect("static response parts are valid")
    }
}
