//! The access log (`server.access_log`, off by default): a line per proxied request, per
//! request the proxy answered itself (refusals, `no_route`, preflights) and per subscription
//! when it ends, at info with the target `unpoll::access`. Its fields are key-value pairs
//! (see [`crate::logging`]): `client`, `method`, `path`, `route`, `kind` (`proxy`,
//! `local`, `subscribe`), `status`, `duration_ms`, `upstream` (the server, or `-`), `bytes`
//! (body bytes sent; for a subscription, event bytes), and for a subscription `protocol`,
//! `format` and `ended` (`closed`, or why the proxy dropped it).
//!
//! The target is the path and query as routed: a token parameter was already moved into its
//! header, and the value of every `unpoll_*` parameter and of a route's token parameter is
//! written `redacted`. No header is logged.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One line's fields.
pub struct Entry<'a> {
    pub client: Option<IpAddr>,
    pub method: &'a str,
    /// The path and query (see [`redact`]).
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
pub fn write(entry: &Entry, token_param: Option<&str>) {
    let target = redact(entry.target, token_param);
    let client = entry.client.map_or_else(|| "-".to_string(), |c| c.to_string());
    let upstream = entry.upstream.map_or_else(|| "-".to_string(), |u| u.to_string());
    let status = entry.status.map_or(0, u64::from);
    let duration_ms = (entry.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    let (protocol, format, ended) = entry.stream.unwrap_or(("-", "-", "-"));
    log::info!(
        target: "unpoll::access",
        client = client.as_str(),
        method = entry.method,
        path = target.as_str(),
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

/// `target` with the value of every `unpoll_*` parameter, and of `token_param`, replaced by
/// `redacted`.
pub fn redact(target: &str, token_param: Option<&str>) -> String {
    let Some((path, query)) = target.split_once('?') else { return target.to_string() };
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            let secret = name.starts_with("unpoll_") || Some(name) == token_param;
            if secret && pair.contains('=') {
                format!("{name}=redacted")
            } else {
                pair.to_string()
            }
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

/// A subscription's line, written when it ends.
pub struct Streamed {
    pub client: Option<IpAddr>,
    pub target: String,
    pub route: String,
    pub token_param: Option<String>,
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
        write(&entry, self.token_param.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn unpoll_and_token_parameters_are_redacted() {
        assert_eq!(
            redact("/a?x=1&unpoll_last_event_id=e-3&access_token=s3cr3t&y", Some("access_token")),
            "/a?x=1&unpoll_last_event_id=redacted&access_token=redacted&y"
        );
        assert_eq!(redact("/a?access_token=s", None), "/a?access_token=s");
        assert_eq!(redact("/a", Some("t")), "/a");
    }
}
