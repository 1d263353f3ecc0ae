//! The access log (`server.access_log`, off by default): a line per proxied request, per
//! request the proxy answered itself (refusals, `no_route`, preflights) and per subscription
//! when it ends, at info with the target `unpoll::access`. Its fields are key-value pairs
//! (see [`crate::logging`]): `client`, `method`, `path`, `route`, `kind` (`proxy`,
//! `local`, `subscribe`), `status`, `duration_ms`, `upstream` (the server, or `-`), `bytes`
//! (body bytes sent; for a subscription, event bytes), and for a subscription `protocol`,
//! `format` and `ended` (`closed`, or why the proxy dropped it).
//!
//! The target is the path and query as routed: a token parameter was already moved into its
//! header, and every parameter that carries a credential (any route's token parameter, those
//! whose names look like one, see [`crate::redact`]) and every `unpoll_*` one is written
//! `redacted`. No header is logged.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One line's fields.
pub struct Entry<'a> {
    pub client: Option<IpAddr>,
    pub method: &'a str,
    /// The path and query (see [`crate::redact`]).
    pub target: &'a str,
    pub route: &'a str,
    pub kind: &'static str,
    /// `None` when no answer reached the client.
    pub status: Option<u16>,
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    pub bytes: u64,
    /// For a subscription: its protocol, format and how it ended.
    pub stream: Option<(&'static str, &'static str, &'static str)>,
}

/// Writes `entry`'s line.
pub fn write(entry: &Entry) {
    let target = crate::redact::target(entry.target);
    let client = entry.client.map_or_else(|| "-".to_string(), |c| c.to_string());
    let upstream = entry.upstream.map_or_else(|| "-".to_string(), |u| u.to_string());
    let status = entry.status.map_or(0, u64::from);
    let duration_ms = (entry.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    let (protocol, format, ended) = entry.stream.unwrap_or(("-", "-", "-"));
    log::info!(
        target: "unpoll::access",
        client = client.as_str(),
        method = entry.method,
        path = target.as_ref(),
        route = entry.route,
        kind = entry.kind,
        status = status,
        duration_ms = duration_ms,
        upstream = upstream.as_str(),
        bytes = entry.bytes,
        protocol = protocol,
        format = format,
        ended = ended;
        "{} {} {}", entry.method, target, status
    );
}

/// A subscription's line, written when it ends.
pub struct Streamed {
    pub client: Option<IpAddr>,
    pub target: String,
    pub route: String,
    /// 200 (SSE) or 101 (WebSocket).
    pub status: u16,
    pub started: std::time::Instant,
    pub protocol: &'static str,
    pub format: &'static str,
    /// Event bytes written, counted by its delivery.
    pub bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Streamed {
    /// Writes the line: `ended` is `closed`, or why the proxy dropped the subscriber.
    pub fn end(&self, ended: &'static str) {
        let entry = Entry {
            client: self.client,
            method: "GET",
            target: &self.target,
            route: &self.route,
            kind: "subscribe",
            status: Some(self.status),
            duration: self.started.elapsed(),
            upstream: None,
            bytes: self.bytes.load(std::sync::atomic::Ordering::Relaxed),
            stream: Some((self.protocol, self.format, ended)),
        };
        write(&entry);
    }
}
