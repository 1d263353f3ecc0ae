//! One upstream GET through pingora's pooled HTTP connector.

use super::key::PollRequest;
use crate::proxy::routing::Upstream;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use std::time::Duration;

/// The result of one poll.
#[derive(Debug)]
pub enum Fetched {
    /// A 2xx with its body.
    Body {
        body: Bytes,
        etag: Option<String>,
        json: bool,
    },
    /// 304: the `ETag` still matches.
    NotModified,
    /// Any other status.
    Status(u16),
    /// Connection refused or reset, protocol error.
    Unreachable(String),
    /// The poll took longer than the upstream's `timeout`.
    TimedOut,
    /// The body was larger than `max_body`.
    TooLarge(usize),
}

const IDLE_POOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `request` on the next server of `upstream`.
pub async fn fetch(
    connector: &Connector,
    upstream: &Upstream,
    request: &PollRequest,
    etag: Option<&str>,
    max_body: usize,
) -> Fetched {
    let timeout = upstream.settings.timeout;
    match tokio::time::timeout(
        timeout,
        fetch_inner(connector, upstream, request, etag, max_body),
    )
    .await
    {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => Fetched::Unreachable(e.to_string()),
        Err(_) => Fetched::TimedOut,
    }
}

async fn fetch_inner(
    connector: &Connector,
    upstream: &Upstream,
    request: &PollRequest,
    etag: Option<&str>,
    max_body: usize,
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
    req.insert_header(
        http::header::USER_AGENT,
        concat!("unpoll/", env!("CARGO_PKG_VERSION")),
    )?;
    if let Some(etag) = etag {
        req.insert_header(http::header::IF_NONE_MATCH, etag)?;
    }
    let (mut session, _reused) = connector.get_http_session(&peer).await?;
    session.write_request_header(Box::new(req)).await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let resp = session.response_header().expect("read above");
    let status = resp.status.as_u16();
    let etag = resp
        .headers
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let json = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.contains("json"));
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_response_body().await? {
        if body.len() + chunk.len() > max_body {
            return Ok(Fetched::TooLarge(body.len() + chunk.len()));
        }
        body.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(session, &peer, Some(IDLE_POOL_TIMEOUT))
        .await;
    Ok(match status {
        200..=299 => Fetched::Body {
            body: body.freeze(),
            etag,
            json,
        },
        304 => Fetched::NotModified,
        s => Fetched::Status(s),
    })
}
