//! The connection limit: a [`ServerApp`] around pingora's proxy that counts open downstream
//! connections and answers new ones over `server.max_connections` with a 503.
//!
//! Pingora hands each connection to `process_new` again after every keep-alive request, so a
//! connection is known by its id (the file descriptor, unique among open connections): an id
//! not yet counted is a new connection. The count is approximate by a connection or so around
//! a descriptor that closes and is reused at once.

use crate::metrics::Metrics;
use crate::proxy::head_deadline::HeadDeadline;
use crate::proxy::routing::Runtime;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 81\r\nretry-after: 5\r\nconnection: close\r\n\r\n{\"error\":\"too_many_connections\",\"message\":\"the proxy is at its connection limit\"}";

/// Wraps a server app with the connection limit.
pub struct Limited<A> {
    pub inner: Arc<A>,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub metrics: Arc<Metrics>,
    open: Mutex<HashSet<i32>>,
}

impl<A> Limited<A> {
    pub fn new(inner: A, runtime: Arc<ArcSwap<Runtime>>, metrics: Arc<Metrics>) -> Limited<A> {
        Limited { inner: Arc::new(inner), runtime, metrics, open: Mutex::default() }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let id = stream.id();
        let admitted = {
            let mut open = self.open();
            let max = self.runtime.load().server.max_connections;
            if open.contains(&id) || open.len() < max {
                open.insert(id);
                self.metrics.connections.set(open.len() as i64);
                true
            } else {
                false
            }
        };
        if !admitted {
            self.metrics.rejected.with_label_values(&["too_many_connections"]).inc();
            let _ = stream.write_all(REFUSAL).await;
            let _ = stream.shutdown().await;
            return None;
        }
        let stream = HeadDeadline::arm(stream, self.runtime.load().server.header_timeout);
        let reused = self.inner.process_new(stream, shutdown).await;
        if reused.is_none() {
            let mut open = self.open();
            open.remove(&id);
            self.metrics.connections.set(open.len() as i64);
        }
        reused
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(super::REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }
}
