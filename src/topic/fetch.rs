//! One upstream GET through pingora's HTTP connector, on a connection kept from an earlier
//! poll where one waits ([`super::idle`]), with the reuse checks of [`crate::upstream::pool`].

use super::idle::Idle;
use super::key::PollRequest;
use crate::sys::{self, Pending};
use crate::upstream::balance::Server;
use crate::upstream::pool::{self, Distrust, Plan};
use crate::upstream::Upstream;
use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::HeaderMap;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType};
use prometheus::{IntCounterVec, IntGauge};
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
    /// Connection refused or reset, protocol error, with the detail (for the log only).
    Unreachable(String),
    /// A TLS upstream's handshake failed, or it refused the connection in TLS (a certificate
    /// that does not verify, a client certificate refused), with the detail (for the log only).
    Tls(String),
    /// The poll took longer than the upstream's `timeout`.
    TimedOut,
    /// The body was larger than the upstream's `max_body`.
    TooLarge(usize),
    /// Reading the answer failed inside the HTTP client itself (it panicked): the answer is
    /// one it cannot read.
    Unreadable,
    /// The body came in a content coding unpoll does not decode (it asks for `identity`, and
    /// decodes gzip, deflate and br within `max_body`).
    BadEncoding(String),
}

/// Pooled connections found closed (or with bytes waiting) before a new one is made.
const MAX_STALE: usize = 4;
/// Informational answers (`100`, `103 Early Hints`) skipped before a poll gives up.
const MAX_INFORMATIONAL: usize = 8;

/// The names of the headers a poll adds, parsed once and sent in their usual case (see
/// `vendor/pingora-http/UNPOLL.md`): no name is parsed or copied per poll.
mod names {
    use http::header;
    use pingora::http::StaticHeaderName;
    pub const HOST: StaticHeaderName = StaticHeaderName::new(header::HOST, "Host");
    pub const ACCEPT: StaticHeaderName = StaticHeaderName::new(header::ACCEPT, "Accept");
    pub const ACCEPT_ENCODING: StaticHeaderName = StaticHeaderName::new(header::ACCEPT_ENCODING, "Accept-Encoding");
    pub const USER_AGENT: StaticHeaderName = StaticHeaderName::new(header::USER_AGENT, "User-Agent");
    pub const IF_NONE_MATCH: StaticHeaderName = StaticHeaderName::new(header::IF_NONE_MATCH, "If-None-Match");
    pub const IF_MODIFIED_SINCE: StaticHeaderName =
        StaticHeaderName::new(header::IF_MODIFIED_SINCE, "If-Modified-Since");
    pub const CONNECTION: StaticHeaderName = StaticHeaderName::new(header::CONNECTION, "Connection");
    /// How many of them a poll may add beyond the subscriber's own headers.
    pub const ADDED: usize = 7;
}

/// How a poll loop fetches: over HTTP ([`HttpFetch`]), or from a script in the poll loop's
/// own tests.
pub trait Fetch: Send + Sync {
    /// Polls `request` on `upstream`, conditionally on `validators`.
    fn fetch<'a>(
        &'a self,
        upstream: &'a Upstream,
        request: &'a PollRequest,
        validators: &'a Validators,
    ) -> BoxFuture<'a, Fetched>;
}

/// Polls through pingora's HTTP connector, keeping connections between polls in [`Idle`]
/// ([`fetch`]).
pub struct HttpFetch {
    connector: Connector,
    idle: Idle,
    /// `unpoll_upstream_reuse_refused_total`.
    refused: IntCounterVec,
}

impl HttpFetch {
    /// `idle_limit` connections at most wait for their next poll (`idle_gauge` counts them).
    pub fn new(refused: IntCounterVec, idle_limit: usize, idle_gauge: IntGauge) -> HttpFetch {
        HttpFetch { connector: crate::upstream::peer::connector(), idle: Idle::new(idle_limit, idle_gauge), refused }
    }
}

impl Fetch for HttpFetch {
    fn fetch<'a>(
        &'a self,
        upstream: &'a Upstream,
        request: &'a PollRequest,
        validators: &'a Validators,
    ) -> BoxFuture<'a, Fetched> {
        Box::pin(fetch(self, upstream, request, validators))
    }
}

/// Polls `request` on its server of `upstream` (see [`super::key::Pin`]), or the next one.
/// A server that cannot be reached is tried no more for this poll: the poll goes once to
/// another, so a pinned topic moves on without an error event. Connections that cannot be
/// trusted with another request are counted in `refused` (see [`crate::upstream::pool`]).
pub async fn fetch(http: &HttpFetch, upstream: &Upstream, request: &PollRequest, validators: &Validators) -> Fetched {
    // A pinned topic polls its server while it is in rotation, and another meanwhile.
    let first = match &request.pin {
        Some(super::key::Pin::Server(id)) => upstream.balancer().by_id(id).cloned().unwrap_or_else(|| upstream.pick()),
        Some(super::key::Pin::Hash(attribute)) => upstream.balancer().by_hash(attribute, None).clone(),
        None => upstream.pick(),
    };
    let fetched = fetch_from(http, upstream, &first, request, validators).await;
    if !matches!(fetched, Fetched::Unreachable(_) | Fetched::Tls(_)) || upstream.balancer().servers().len() < 2 {
        return fetched;
    }
    let balancer = upstream.balancer();
    let next = match &request.pin {
        Some(super::key::Pin::Hash(attribute)) => balancer.by_hash(attribute, Some(first.addr)),
        _ => balancer.round_robin(Some(first.addr)),
    }
    .clone();
    drop(balancer);
    if next.addr == first.addr {
        return fetched;
    }
    fetch_from(http, upstream, &next, request, validators).await
}

/// One poll of `server`, with its health and outage logging.
async fn fetch_from(
    http: &HttpFetch,
    upstream: &Upstream,
    server: &Server,
    request: &PollRequest,
    validators: &Validators,
) -> Fetched {
    let timeout = upstream.settings.timeout;
    server.polled.inc();
    let fetched = match tokio::time::timeout(timeout, fetch_inner(http, upstream, server, request, validators)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) if crate::upstream::peer::is_tls_error(&e) => {
            upstream.tls_failed(server, &e, "poll");
            Fetched::Tls(e.to_string())
        }
        Ok(Err(e)) => Fetched::Unreachable(e.to_string()),
        Err(_) => Fetched::TimedOut,
    };
    // Its health, and the details for the log, once per outage of the server; clients are
    // told in plain words.
    match &fetched {
        Fetched::Unreachable(detail) => {
            upstream.unreachable(server);
            upstream.failing(server, detail);
        }
        // Counted and logged by `tls_failed` above.
        Fetched::Tls(_) => upstream.unreachable(server),
        Fetched::TimedOut => {
            upstream.unreachable(server);
            upstream.failing(server, &format!("no answer within {timeout:?}"));
        }
        Fetched::Status { status, .. } if *status >= 500 => {
            upstream.reached(server);
            upstream.failing(server, &format!("it answered {status}"));
        }
        _ => {
            upstream.reached(server);
            upstream.answering(server);
        }
    }
    fetched
}

/// A session to `server` for a request on behalf of `identity`, and how it was planned. A
/// connection kept from an earlier poll is used only if nothing waits on it; one with bytes
/// waiting quarantines the server, and the request then gets a new connection.
async fn connect(
    http: &HttpFetch,
    upstream: &Upstream,
    server: &Server,
    identity: u64,
) -> pingora::Result<(HttpSession, HttpPeer, Plan)> {
    for _ in 0..MAX_STALE {
        let plan = upstream.plan(server.addr, identity);
        let peer = upstream.peer(server, plan.group_key);
        let Some(stream) = http.idle.take(peer.reuse_hash()) else {
            let (session, _) = http.connector.get_http_session(&peer).await?;
            return Ok((session, peer, plan));
        };
        let session = HttpSession::H1(Http1Session::new_with_options(stream, &peer));
        let (session, pending, _) = waiting(session, &peer, upstream.is_tls()).await;
        match pool::reusable(pending) {
            Ok(true) => return Ok((session, peer, plan)),
            Ok(false) => {}
            Err(why) => upstream.distrust(server.addr, why, &http.refused),
        }
    }
    Error::e_explain(ErrorType::ConnectError, "every pooled connection was stale")
}

/// What waits on `session`'s connection: asked of the kernel, and on a TLS connection whose
/// socket holds records, read through TLS (see [`pool::look_through_tls`]); and whether it was
/// read through (its session is then a new one on the same stream, ready for a new request
/// when nothing waits, but not one to give back to the pool).
async fn waiting(session: HttpSession, peer: &HttpPeer, tls: bool) -> (HttpSession, Pending, bool) {
    let kernel = session.stream().map_or(Pending::Closed, sys::pending);
    if !tls || kernel != Pending::Data {
        return (session, kernel, false);
    }
    let HttpSession::H1(h1) = session else { return (session, Pending::Closed, false) };
    let mut stream = h1.into_inner();
    let pending = pool::look_through_tls(&mut stream).await;
    (HttpSession::H1(Http1Session::new_with_options(stream, peer)), pending, true)
}

async fn fetch_inner(
    http: &HttpFetch,
    upstream: &Upstream,
    server: &Server,
    request: &PollRequest,
    request_validators: &Validators,
) -> pingora::Result<Fetched> {
    let validators = request_validators;
    let addr = server.addr;
    let (mut session, peer, plan) = connect(http, upstream, server, request.identity).await?;
    let size = Some(request.headers.len() + names::ADDED);
    let mut req = RequestHeader::build("GET", request.target.as_bytes(), size)?;
    for (name, value) in &request.headers {
        req.append_header(name.clone(), value.clone())?;
    }
    // A TLS upstream is asked for its own name; a plain one gets the subscriber's `Host`.
    if let Some(host) = upstream.host(server) {
        req.insert_header(names::HOST, host)?;
    } else if req.headers.get(http::header::HOST).is_none() {
        req.insert_header(names::HOST, addr.to_string())?;
    }
    req.insert_header(names::ACCEPT, "application/json")?;
    // Diffs work on the JSON itself, so ask for it uncompressed (and decode it if it comes anyway).
    req.insert_header(names::ACCEPT_ENCODING, "identity")?;
    req.insert_header(names::USER_AGENT, concat!("unpoll/", env!("CARGO_PKG_VERSION")))?;
    if let Some(etag) = &validators.etag {
        req.insert_header(names::IF_NONE_MATCH, etag)?;
    }
    if let Some(date) = &validators.last_modified {
        req.insert_header(names::IF_MODIFIED_SINCE, date)?;
    }
    if plan.close {
        req.insert_header(names::CONNECTION, "close")?;
    }
    session.write_request_header(Box::new(req)).await?;
    session.finish_request_body().await?;
    // Informational answers (100 Continue, 103 Early Hints) come before the response itself.
    let mut informational = 0;
    loop {
        session.read_response_header().await?;
        let status = session.response_header().expect("read above").status;
        if !status.is_informational() || status == http::StatusCode::SWITCHING_PROTOCOLS {
            break;
        }
        informational += 1;
        if informational > MAX_INFORMATIONAL {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "too many informational responses");
        }
    }
    let resp = session.response_header().expect("read above");
    let status = resp.status.as_u16();
    if status == 101 {
        // Nobody asked to switch protocols; the connection is dropped, not reused.
        return Ok(Fetched::Status { status, retry_after: None });
    }
    // What the head says, taken before the body is read (no copy of the header map).
    let headers = &resp.headers;
    let keeps_alive = pool::keeps_alive(resp.version, headers, plan.close);
    let raw_head = session.as_http1().map(|h| h.get_headers_raw_bytes());
    let doubtful = pool::doubtful_framing(resp.status, headers, raw_head.as_deref());
    let text = |name: http::header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let validators = Validators { etag: text(http::header::ETAG), last_modified: text(http::header::LAST_MODIFIED) };
    let json =
        headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_none_or(|ct| ct.contains("json"));
    let max_age = max_age(headers);
    let retry_after = if (200..300).contains(&status) { None } else { retry_after(headers, SystemTime::now()) };
    let coding = headers.get(http::header::CONTENT_ENCODING).cloned();
    let max_body = upstream.settings.max_body;
    let mut body = Gather::new(content_length(headers), max_body);
    while let Some(chunk) = session.read_response_body().await? {
        if let Err(n) = body.push(chunk) {
            return Ok(Fetched::TooLarge(n));
        }
    }
    // Bytes read past the end of a response that announced keep-alive: the server sent more
    // than it framed (pingora then closes the connection, but says nothing of it).
    let overread = match &mut session {
        HttpSession::H1(h1) if keeps_alive => {
            h1.respect_keepalive();
            !h1.will_keepalive()
        }
        _ => false,
    };
    // Bytes already waiting after the end of the response belong to no request. (A TLS
    // connection read through to find out is not pooled again: its session was taken apart.)
    let (session, after, read_through) = waiting(session, &peer, upstream.is_tls()).await;
    if after == Pending::Data || overread || doubtful {
        let why = if doubtful { Distrust::DoubtfulFraming } else { Distrust::StrayBytes };
        upstream.distrust(addr, why, &http.refused);
    } else if after == Pending::Nothing && !read_through && !plan.close {
        if let HttpSession::H1(mut h1) = session {
            h1.respect_keepalive();
            if let Some(stream) = h1.reuse().await {
                http.idle.put(peer.reuse_hash(), stream, upstream.is_tls()).await;
            }
        }
    }
    let asked_conditionally = request_validators.etag.is_some() || request_validators.last_modified.is_some();
    Ok(match status {
        200..=299 => match decode(body.finish(), coding.as_ref(), max_body) {
            Ok(body) => Fetched::Body { body, validators, json, max_age },
            Err(Decoded::TooLarge(n)) => Fetched::TooLarge(n),
            Err(Decoded::Unknown(coding)) => Fetched::BadEncoding(coding),
        },
        // A 304 to a poll that sent no validator says nothing: an error, not silence.
        304 if asked_conditionally => Fetched::NotModified { max_age },
        status => Fetched::Status { status, retry_after },
    })
}

/// A body read in chunks: a body that came in one chunk is kept as it came (the HTTP client's
/// own copy); one in several is joined once, into a buffer sized by its `Content-Length`.
struct Gather {
    first: Option<Bytes>,
    joined: Option<BytesMut>,
    len: usize,
    /// The announced length (at most `max_body`): what the joined buffer is made for.
    hint: usize,
    max_body: usize,
}

impl Gather {
    fn new(announced: Option<usize>, max_body: usize) -> Gather {
        Gather { first: None, joined: None, len: 0, hint: announced.unwrap_or(0).min(max_body), max_body }
    }

    /// Adds a chunk, or says how long the body would be if it is longer than `max_body`.
    fn push(&mut self, chunk: Bytes) -> Result<(), usize> {
        self.len += chunk.len();
        if self.len > self.max_body {
            return Err(self.len);
        }
        match (&self.first, &mut self.joined) {
            (None, _) => self.first = Some(chunk),
            (Some(first), None) => {
                let mut joined = BytesMut::with_capacity(self.hint.max(self.len));
                joined.extend_from_slice(first);
                joined.extend_from_slice(&chunk);
                self.joined = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&chunk),
        }
        Ok(())
    }

    fn finish(self) -> Bytes {
        match self.joined {
            Some(joined) => joined.freeze(),
            None => self.first.unwrap_or_default(),
        }
    }
}

/// The `Content-Length` a response announces, if one number.
fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Why a body could not be decoded.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    /// Decoded, it is larger than `max_body` (so much is read, no more).
    TooLarge(usize),
    /// A content coding that is not decoded here, or a body that does not decode.
    Unknown(String),
}

/// `body` without its content coding (`gzip`, `x-gzip`, `deflate`, `br`; `identity` and none
/// leave it as it is), decoded into at most `max_body` bytes.
fn decode(body: Bytes, coding: Option<&http::HeaderValue>, max_body: usize) -> Result<Bytes, Decoded> {
    use std::io::Read;
    let Some(coding) = coding else { return Ok(body) };
    let coding = coding.to_str().unwrap_or("identity").trim().to_ascii_lowercase();
    let mut reader: Box<dyn Read> = match coding.as_str() {
        "" | "identity" => return Ok(body),
        "gzip" | "x-gzip" => Box::new(flate2::read::GzDecoder::new(&body[..])),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(&body[..])),
        "br" => Box::new(brotli::Decompressor::new(&body[..], 4096)),
        other => return Err(Decoded::Unknown(other.to_string())),
    };
    let mut out = Vec::new();
    let read = (&mut reader).take(max_body as u64 + 1).read_to_end(&mut out);
    match read {
        Ok(n) if n > max_body => Err(Decoded::TooLarge(n)),
        Ok(_) => Ok(Bytes::from(out)),
        Err(_) => Err(Decoded::Unknown(format!("{coding} (corrupt)"))),
    }
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

    #[test]
    fn a_body_in_one_chunk_is_kept_and_one_in_several_is_joined() {
        let one = Bytes::from_static(b"{\"a\":1}");
        let mut g = Gather::new(Some(7), 100);
        g.push(one.clone()).unwrap();
        let kept = g.finish();
        assert_eq!(kept, one);
        assert_eq!(kept.as_ptr(), one.as_ptr(), "a single chunk is not copied");

        let mut g = Gather::new(Some(9), 100);
        for part in [&b"[1,"[..], b"2,", b"3]"] {
            g.push(Bytes::copy_from_slice(part)).unwrap();
        }
        assert_eq!(&g.finish()[..], b"[1,2,3]");
        // No announced length (or a wrong one): joined all the same.
        let mut g = Gather::new(None, 100);
        g.push(Bytes::from_static(b"ab")).unwrap();
        g.push(Bytes::from_static(b"cd")).unwrap();
        assert_eq!(&g.finish()[..], b"abcd");
        assert_eq!(Gather::new(Some(5), 100).finish(), Bytes::new());
    }

    #[test]
    fn a_body_past_max_body_is_refused_with_its_length() {
        let mut g = Gather::new(Some(1_000_000), 5);
        g.push(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(g.push(Bytes::from_static(b"def")), Err(6));
        assert_eq!(Gather::new(None, 5).push(Bytes::from_static(b"abcdef")), Err(6));
        assert_eq!(content_length(&HeaderMap::new()), None);
    }

    #[test]
    fn bodies_are_decoded_within_max_body() {
        use std::io::Write;
        let json = br#"{"a":[1,2,3]}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(json).unwrap();
        let gz = Bytes::from(gz.finish().unwrap());
        let coding = |c: &str| http::HeaderValue::from_str(c).unwrap();
        assert_eq!(decode(gz.clone(), Some(&coding("gzip")), 1024).unwrap(), &json[..]);
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22).write_all(json).unwrap();
        assert_eq!(decode(Bytes::from(br), Some(&coding("br")), 1024).unwrap(), &json[..]);
        assert_eq!(decode(Bytes::from_static(json), None, 1024).unwrap(), &json[..]);
        assert_eq!(decode(gz.clone(), Some(&coding("gzip")), 5), Err(Decoded::TooLarge(6)));
        assert_eq!(decode(gz.clone(), Some(&coding("zstd")), 1024), Err(Decoded::Unknown("zstd".into())));
        assert!(matches!(decode(Bytes::from_static(b"nope"), Some(&coding("gzip")), 1024), Err(Decoded::Unknown(_))));
    }

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
