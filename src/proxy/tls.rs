//! TLS for clients on the `server.tls` listeners.
//!
//! The handshake is unpoll's, not pingora's listener's: pingora's TCP listener hands the
//! connection over, [`super::connections::Limited`] counts it against `server.max_connections`
//! first (so a handshake flood is bounded like any other), and the handshake then runs here
//! within `server.header_timeout`, counted by result in `unpoll_tls_handshakes_total`, its
//! failures logged at most once a minute per listener (pingora would log each one at error
//! level). ALPN offers `h2` and `http/1.1`; the result is a [`Negotiated`] stream that tells
//! pingora which to speak.
//!
//! The certificate is chosen per handshake from the pairs of the configuration in force (the
//! route table, swapped whole by a reload): a replaced certificate or key file reloads the
//! configuration (see `reload`), and new handshakes get the new pair while open connections
//! keep theirs. A pair that cannot be served never gets into a configuration.

use super::negotiated::Negotiated;
use crate::config::Pairs;
use crate::metrics::Metrics;
use crate::route_table::RouteTable;
use arc_swap::ArcSwap;
use pingora::protocols::Stream;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// The answer to a plain HTTP request sent to a TLS listener; the connection closes after it.
const PLAINTEXT: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 78\r\nconnection: close\r\n\r\n{\"error\":\"tls_required\",\"message\":\"this port speaks HTTPS: use https:// or wss://\"}";

/// The TLS listeners, each known by its address.
pub struct TlsListeners {
    listeners: Vec<Listener>,
    metrics: Arc<Metrics>,
}

struct Listener {
    /// As configured (`server.tls[i].listen`), for metrics and logs.
    listen: String,
    addr: Option<SocketAddr>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// Failed handshakes not yet logged, and when one was last logged.
    unlogged: AtomicU64,
    logged: Mutex<Option<Instant>>,
}

impl TlsListeners {
    /// The listeners of the configuration in `table`, their certificates chosen from whatever
    /// configuration is in force at each handshake.
    pub fn new(table: &Arc<ArcSwap<RouteTable>>, metrics: Arc<Metrics>) -> TlsListeners {
        let listeners = table
            .load()
            .server
            .tls
            .iter()
            .map(|tls| {
                let chooser = Chooser { table: table.clone(), listen: tls.listen.clone(), at_start: tls.pairs.clone() };
                let mut config =
                    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                        .with_safe_default_protocol_versions()
                        .expect("ring supports the default TLS versions")
                        .with_no_client_auth()
                        .with_cert_resolver(Arc::new(chooser));
                config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Listener {
                    listen: tls.listen.clone(),
                    addr: crate::config::lookup(&tls.listen).ok().and_then(|a| a.first().copied()),
                    acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
                    unlogged: AtomicU64::new(0),
                    logged: Mutex::new(None),
                }
            })
            .collect();
        TlsListeners { listeners, metrics }
    }

    /// Whether `stream` came through a TLS listener.
    pub fn arrived_on_tls(&self, stream: &Stream) -> bool {
        self.of(stream).is_some()
    }

    /// The TLS listener `stream` arrived on, if it came through one.
    fn of(&self, stream: &Stream) -> Option<&Listener> {
        if self.listeners.is_empty() {
            return None;
        }
        let digest = stream.get_socket_digest()?;
        let local = digest.local_addr()?.as_inet()?;
        self.listeners.iter().find(|l| {
            l.addr.is_some_and(|a| a.port() == local.port() && (a.ip().is_unspecified() || a.ip() == local.ip()))
        })
    }

    /// A new connection: through its TLS handshake if it came to a TLS listener (`true` with
    /// it), as it is otherwise; `None` when the handshake failed and the connection is done.
    /// `release` is called before a failed connection's descriptor closes (it is what the
    /// connection count knows it by, and a new connection may get the same number as soon as
    /// it closes).
    pub async fn accept(
        &self,
        mut stream: Stream,
        within: Duration,
        release: &(dyn Fn() + Sync),
    ) -> Option<(Stream, bool)> {
        let Some(listener) = self.of(&stream) else { return Some((stream, false)) };
        let deadline = tokio::time::Instant::now() + within;
        // A TLS client opens with a handshake record (0x16); a plain HTTP client with a
        // method's letters, and is told so in plain.
        let mut first = [0u8; 1];
        let refused = match tokio::time::timeout_at(deadline, stream.try_peek(&mut first)).await {
            Err(_) => Some("timeout"),
            Ok(Err(_)) => Some("closed"),
            Ok(Ok(peeked)) if peeked && first[0] != 0x16 => {
                if first[0].is_ascii_uppercase() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(PLAINTEXT)).await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.flush()).await;
                    Some("plaintext")
                } else {
                    Some("not_tls")
                }
            }
            Ok(Ok(_)) => None,
        };
        if let Some(reason) = refused {
            release();
            drop(stream);
            self.count(listener, Err(reason));
            return None;
        }
        let accepting = listener.acceptor.accept(stream).into_fallible();
        tokio::pin!(accepting);
        let result = match tokio::time::timeout_at(deadline, &mut accepting).await {
            Err(_) => {
                release();
                Err("timeout")
            }
            Ok(Err((e, io))) => {
                release();
                drop(io);
                log::debug!("TLS handshake failed: {e}");
                Err(reason(&e))
            }
            Ok(Ok(tls)) => Ok(tls),
        };
        // A failed connection closes with `accepting`, at the end of this function: after
        // `release`.
        self.count(listener, result.as_ref().map(|_| ()).map_err(|r| *r));
        result.ok().map(|tls| (Box::new(Negotiated::tls(tls)) as Stream, true))
    }

    fn count(&self, listener: &Listener, result: Result<(), &'static str>) {
        let label = result.err().unwrap_or("ok");
        self.metrics.handshakes.with_label_values(&[&listener.listen, label]).inc();
        if label != "ok" {
            listener.failed(label);
        }
    }
}

impl Listener {
    /// Logs a failed handshake, at most once a minute, with how many were not logged.
    fn failed(&self, reason: &str) {
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.is_some_and(|at| now.duration_since(at) < Duration::from_secs(60)) {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *logged = Some(now);
        let more = self.unlogged.swap(0, Ordering::Relaxed);
        log::warn!(
            "TLS handshake failed on {} ({reason}){}; every failure is counted in unpoll_tls_handshakes_total",
            self.listen,
            if more > 0 { format!(", and {more} more since the last one logged") } else { String::new() }
        );
    }
}

/// Why a handshake failed, as `unpoll_tls_handshakes_total` says it.
fn reason(e: &std::io::Error) -> &'static str {
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else { return "closed" };
    match tls {
        rustls::Error::AlertReceived(_) => "rejected_by_client",
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => "not_tls",
        rustls::Error::General(m) if m.contains("certificate") => "no_certificate",
        _ => "incompatible",
    }
}

/// Chooses a listener's certificate by the name the client asks for, from the configuration
/// in force (or, if a reload took the listener out, from the one the process started with:
/// listeners change only with a restart).
struct Chooser {
    table: Arc<ArcSwap<RouteTable>>,
    listen: String,
    at_start: Pairs,
}

impl std::fmt::Debug for Chooser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chooser").field("listen", &self.listen).finish_non_exhaustive()
    }
}

impl rustls::server::ResolvesServerCert for Chooser {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let table = self.table.load();
        let pairs = table.server.tls.iter().find(|t| t.listen == self.listen).map_or(&self.at_start, |t| &t.pairs);
        pairs.choose(hello.server_name()).map(|p| p.key.clone())
    }
}
