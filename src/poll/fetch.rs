//! One upstream GET through pingora's pooled HTTP connector.

use super::key::PollRequest;
use crate::proxy::routing::Upstream;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use std::time::{Duration, SystemTime};

/// The validators of the last body, sent back as `If-None-Match` / `If-Modified-Since`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// The result of one poll.
#[derive(Debug)]
pub enum Fetched {
    /// A 2xx with its body.
    Body { body: Bytes, validators: Validators, json: bool, max_age: Option<Duration> },
    /// 304: the validators still match.
    NotModified { max_age: Option<Duration> },
    /// Any other status, with its `Retry-After` if it gave one.
    Status { status: u16, retry_after: Option<Duration> },
    /// Connection refused or reset, protocol error.
    Unreachable(String),
    /// The poll took longer than the upstream's `timeout`.
    TimedOut,
    /// The body was larger than the upstream's `max_body`.
    TooLarge(usize),
}

const IDLE_POOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `request` on the next server of `upstream`.
pub async fn fetch(
    connector: &Connector,
    upstream: &Upstream,
    request: &PollRequest,
    validators: &Validators,
) -> Fetched {
    let timeout = upstream.settings.timeout;
    match tokio::time::timeout(timeout, fetch_inner(connector, upstream, request, validators)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => Fetched::Unreachable(e.to_string()),
        Err(_) => Fetched::TimedOut,
    }
}

async fn fetch_inner(
    connector: &Connector,
    upstream: &Upstream,
    request: &PollRequest,
    validators: &Validators,
) -> pingora::Result<Fetched> {
    let addr = upstream.pick();
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(upstream.settings.connect_timeout);
    let mut req = RequestHeader::build("GET", request.target.as_bytes(), None)?;
    for (name, value) in &request.headers {
        req.append_header(name.clone(), value.clone())?;
    }
    if req.headers.get(http::header::HOST).is_none() {
        req.insert_header(http::header::HOST, addr.to_string())?;
    }
    req.insert_header(http::header::ACCEPT, "application/json")?;
    req.insert_header(http::header::USER_AGENT, concat!("unpoll/", env!("CARGO_PKG_VERSION")))?;
    if let Some(etag) = &validators.etag {
        req.insert_header(http::header::IF_NONE_MATCH, etag)?;
    }
    if let Some(date) = &validators.last_modified {
        req.insert_header(http::header::IF_MODIFIED_SINCE, date)?;
    }
    let (mut session, _reused) = connector.get_http_session(&peer).await?;
    session.write_request_header(Box::new(req)).await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let resp = session.response_header().expect("read above");
    let status = resp.status.as_u16();
    let headers = resp.headers.clone();
    let text = |name: http::header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let validators = Validators { etag: text(http::header::ETAG), last_modified: text(http::header::LAST_MODIFIED) };
    let json = text(http::header::CONTENT_TYPE).is_none_or(|ct| ct.contains("json"));
    let max_age = max_age(&headers);
    let retry_after = retry_after(&headers, SystemTime::now());
    let max_body = upstream.settings.max_body;
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_response_body().await? {
        if body.len() + chunk.len() > max_body {
            return Ok(Fetched::TooLarge(body.len() + chunk.len()));
        }
        body.extend_from_slice(&chunk);
    }
    connector.release_http_session(session, &peer, Some(IDLE_POOL_TIMEOUT)).await;
    Ok(match status {
        200..=299 => Fetched::Body { body: body.freeze(), validators, json, max_age },
        304 => Fetched::NotModified { max_age },
        status => Fetched::Status { status, retry_after },
    })
}

/// `Cache-Control: max-age=N` (ignored with `no-cache` or `no-store`).
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut age = None;
    for value in headers.get_all(http::header::CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()) {
        for directive in value.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-cache" || lower == "no-store" {
                return None;
            }
            if let Some(n) = lower.strip_prefix("max-age=") {
                age = n.trim_matches('"').parse().ok().map(Duration::from_secs);
            }
        }
    }
    age
}

/// `Retry-After` as seconds or an HTTP date, relative to `now`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn reads_max_age() {
        assert_eq!(max_age(&headers(&[("cache-control", "public, max-age=30")])), Some(Duration::from_secs(30)));
        assert_eq!(max_age(&headers(&[("cache-control", "max-age=30, no-cache")])), None);
        assert_eq!(max_age(&headers(&[("cache-control", "private")])), None);
        assert_eq!(max_age(&headers(&[])), None);
    }

    #[test]
    fn reads_retry_after_in_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(retry_after(&headers(&[("retry-after", "120")]), now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(retry_after(&headers(&[("retry-after", &later)]), now), Some(Duration::from_secs(90)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(retry_after(&headers(&[("retry-after", &past)]), now), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
    }
}
