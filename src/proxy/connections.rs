//! The connection limit: a [`ServerApp`] around pingora's proxy that counts open downstream
//! connections and answers new ones over `server.max_connections` with a 503.
//!
//! Pingora hands each connection to `process_new` once and serves all of a kept-alive HTTP/1
//! connection's requests inside it, so each call is a new connection. A connection is counted
//! by its id (the file descriptor) with the number of its holders: a descriptor closed and
//! reused at once by a newer connection may still be counted for the old one, which lets go of
//! it a moment later; such a descriptor is counted once while both hold it, and stays counted
//! for the newcomer.
//!
//! A new connection is settled here before pingora serves it: on a `server.tls` listener
//! through its TLS handshake (see `tls`), with `server.h2c` told HTTP/2 or HTTP/1 (see
//! `negotiated`). It is counted first, so handshakes are bounded like any connection.
//!
//! An HTTP/1 subscription's stream outlives pingora's handling of its request: it is served
//! from its own task (on a duplicate of the descriptor for plain TCP, through the TLS stream
//! otherwise: see `stream::downstream`), which holds the connection in the count until it
//! ends. While pingora finishes the request, the connection is briefly counted under both
//! descriptors. Each entry counts its holders, so a descriptor is only forgotten once everyone
//! holding it has let go. An HTTP/2 connection is counted once, by pingora's handling of it,
//! however many streams it carries (`unpoll_client_streams` counts those).

use crate::metrics::Metrics;
use crate::proxy::head_deadline::{HeadDeadline, HeadLimits};
use crate::proxy::negotiated::Negotiated;
use crate::proxy::tls::TlsListeners;
use crate::route_table::RouteTable;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::tls::ALPN;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 81\r\nretry-after: 5\r\nconnection: close\r\n\r\n{\"error\":\"too_many_connections\",\"message\":\"the proxy is at its connection limit\"}";

/// The open downstream connections, each with the number of holders (pingora, a stream).
pub struct Connections {
    open: Mutex<HashMap<i32, u32>>,
    metrics: Arc<Metrics>,
}

impl Connections {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Connections> {
        Arc::new(Connections { open: Mutex::default(), metrics })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<i32, u32>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many connections are open (streams included).
    pub fn count(&self) -> usize {
        self.open().len()
    }

    /// Counts a new connection (a holder of `id`) if there is room; `false` when full. An id
    /// still counted is a descriptor whose old connection has closed but not yet let go: the
    /// newcomer holds it too.
    fn admit(&self, id: i32, max: usize) -> bool {
        let mut open = self.open();
        if !open.contains_key(&id) && open.len() >= max {
            return false;
        }
        *open.entry(id).or_insert(0) += 1;
        self.metrics.connections.set(open.len() as i64);
        true
    }

    /// Another holder of a counted connection, released when the returned guard drops.
    pub fn hold(self: &Arc<Self>, id: i32) -> Hold {
        *self.open().entry(id).or_insert(0) += 1;
        Hold { connections: self.clone(), id }
    }

    fn release(&self, id: i32) {
        let mut open = self.open();
        if let Some(holders) = open.get_mut(&id) {
            *holders -= 1;
            if *holders == 0 {
                open.remove(&id);
            }
        }
        self.metrics.connections.set(open.len() as i64);
    }
}

/// Keeps a connection counted. Drop it while the connection is still open, so its descriptor
/// can't have been reused by a newer connection.
pub struct Hold {
    connections: Arc<Connections>,
    id: i32,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.connections.release(self.id);
    }
}

/// Wraps a server app with the connection limit.
pub struct Limited<A> {
    pub inner: Arc<A>,
    pub table: Arc<ArcSwap<RouteTable>>,
    pub metrics: Arc<Metrics>,
    connections: Arc<Connections>,
    /// `unpoll_requests_rejected_total{reason="header_too_large"}`.
    too_large: prometheus::IntCounter,
    /// The `server.tls` listeners, whose connections begin with a TLS handshake.
    tls: TlsListeners,
    /// `server.h2c` as the process started (listeners change only with a restart).
    h2c: bool,
}

impl<A> Limited<A> {
    pub fn new(inner: A, table: Arc<ArcSwap<RouteTable>>, connections: Arc<Connections>) -> Limited<A> {
        let metrics = connections.metrics.clone();
        let too_large = metrics.rejected.with_label_values(&["header_too_large"]);
        let tls = TlsListeners::new(&table, metrics.clone());
        let h2c = table.load().server.h2c;
        Limited { inner: Arc::new(inner), table, metrics, connections, too_large, tls, h2c }
    }

    /// A new connection made ready to serve: through its TLS handshake on a TLS listener, or
    /// told HTTP/2 with prior knowledge (`server.h2c`) from HTTP/1 on a plain one. `None` when
    /// it is done (the handshake failed, or the client left or said nothing in time): it is
    /// then no longer counted, and was forgotten before its descriptor closed.
    async fn settle(&self, stream: Stream, id: i32, within: std::time::Duration) -> Option<Stream> {
        let connections = &self.connections;
        let release = move || connections.release(id);
        let (stream, tls) = self.tls.accept(stream, within, &release).await?;
        let (stream, transport) = if tls {
            (stream, "tls")
        } else if self.h2c {
            match super::negotiated::h2c(stream, within).await {
                (stream, Some(true)) => (Box::new(Negotiated::h2c(stream)) as Stream, "tcp"),
                (stream, Some(false)) => (stream, "tcp"),
                (stream, None) => {
                    release();
                    drop(stream);
                    return None;
                }
            }
        } else {
            (stream, "tcp")
        };
        let version = if stream.selected_alpn_proto() == Some(ALPN::H2) { "2" } else { "1.1" };
        self.metrics.client_connections.with_label_values(&[transport, version]).inc();
        Some(stream)
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let id = stream.id();
        let table = self.table.load_full();
        if !self.connections.admit(id, table.server.max_connections) {
            self.metrics.rejected.with_label_values(&["too_many_connections"]).inc();
            // A TLS client could not read a plain answer: it is just closed.
            if !self.tls.arrived_on_tls(&stream) {
                let _ = stream.write_all(REFUSAL).await;
            }
            let _ = stream.shutdown().await;
            return None;
        }
        stream = self.settle(stream, id, table.server.header_timeout).await?;
        let server = &table.server;
        let limits = HeadLimits {
            timeout: server.header_timeout,
            max_bytes: server.max_request_header,
            refused: self.too_large.clone(),
        };
        // Not held while the connection is served: a subscription may outlive this table.
        drop(table);
        let stream = HeadDeadline::arm(stream, &limits);
        let reused = self.inner.process_new(stream, shutdown).await;
        // Pingora 0.9 returns nothing here; a stream it did return would come back as a new call.
        self.connections.release(id);
        reused
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_descriptor_reused_before_its_old_connection_let_go_stays_counted_for_the_new_one() {
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let connections = super::Connections::new(metrics);
        assert!(connections.admit(7, 2));
        // Connection 7 closed; a newcomer got descriptor 7 before the old one let go.
        assert!(connections.admit(7, 2), "a new connection, not a kept-alive one");
        assert_eq!(connections.count(), 1);
        assert!(connections.admit(8, 2));
        assert!(!connections.admit(9, 2), "full");
        connections.release(7); // the old connection lets go
        assert_eq!(connections.count(), 2, "the newcomer is still counted");
        connections.release(7);
        assert_eq!(connections.count(), 1);
    }

    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(super::REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }
}
