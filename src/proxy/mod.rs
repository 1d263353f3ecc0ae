//! The pingora [`ProxyHttp`] implementation: decide and dispatch only. A request is either a
//! subscription (served here, on the same port) or proxied unchanged to its route's upstream.

pub mod access;
pub mod client;
pub mod connections;
pub mod cors;
pub mod detach;
pub mod head_deadline;
pub mod negotiated;
pub mod path;
pub mod sticky;

mod serving;
pub mod subscribe;
pub mod tls;
pub mod token;

use crate::config::{Sticky, CREDENTIAL_HEADER_NAMES};
use crate::metrics::Metrics;
use crate::route_table::{Route, RouteTable, StreamRoute};
use crate::sys;
use crate::topic::hub::Hub;
use crate::topic::refresh::{Cause, Paths};
use crate::upstream::peer::is_tls_error;
use crate::upstream::pool::{self, Distrust};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use connections::Connections;
use head_deadline::HeadDeadline;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use std::net::SocketAddr;
use std::sync::Arc;
use subscribe::Reject;
use tokio::sync::watch;

/// The proxy: routes, the hub of topics, metrics, and the shutdown signal every stream watches.
pub struct Gateway {
    pub table: Arc<ArcSwap<RouteTable>>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
    pub connections: Arc<Connections>,
}

/// Per-request state: the route chosen in `request_filter`, and the server and connection
/// plan chosen in `upstream_peer`.
#[derive(Default)]
pub struct Ctx {
    route: Option<Arc<Route>>,
    server: Option<SocketAddr>,
    /// The server chosen, for its health and counters.
    chosen: Option<Arc<crate::upstream::balance::Server>>,
    /// A sticky cookie to set on the response (the client was assigned a server).
    set_cookie: Option<String>,
    /// Whether a failed connection was already retried on another server.
    retried: bool,
    /// The server whose connection failed, avoided on the retry.
    avoid: Option<SocketAddr>,
    /// Ask for the upstream connection to be closed after this request (see [`crate::upstream::pool`]).
    close: bool,
    /// What CORS adds to the answers (see [`cors`]).
    cors: cors::Cors,
    /// The route table the request was routed by (a proxied one's), read once for the
    /// request's steps.
    table: Option<Arc<RouteTable>>,
    /// When the request's head was read.
    started: Option<std::time::Instant>,
    /// It was proxied (not served here): its duration is counted.
    proxied: bool,
    /// It asked for a subscription: once its socket is taken over, its stream writes its
    /// own access log line when it ends.
    subscription: bool,
}

/// The client's address as limits and logs count it (see [`client::client_address`]): the
/// peer's, or what a trusted proxy in front forwarded.
fn client_of(session: &Session, trusted: &[crate::config::Cidr]) -> Option<std::net::IpAddr> {
    let peer = session.client_addr()?.as_inet()?.ip();
    let forwarded = session.req_header().headers.get_all(client::FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok());
    Some(client::client_address(peer, forwarded, trusted))
}

/// The error that sends a request on to another connection: the pooled one it was given had
/// bytes waiting, or was closed. Nothing was sent on it, so any request may be retried.
const STALE: ErrorType = ErrorType::Custom("stale pooled upstream connection");

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    /// No downstream modules. Pingora's default is its response compression module, disabled,
    /// whose context every request builds and every response head and body chunk passes
    /// through; unpoll compresses nothing (a proxied response goes out as the upstream sent
    /// it), so it does without.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx { started: Some(std::time::Instant::now()), ..Ctx::default() }
    }

    /// Routes the request; serves subscriptions and unrouted requests here (`Ok(true)`),
    /// and lets everything else go upstream (`Ok(false)`).
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        // An owned reference, not a guard: it is held across the awaits below.
        let table = self.table.load_full();
        // One canonical path for routing, the upstream and topic keys (see `path`).
        let normal = match path::normalise(session.req_header().uri.path()) {
            Ok(std::borrow::Cow::Borrowed(_)) => None,
            Ok(std::borrow::Cow::Owned(p)) => Some(p),
            Err(path::BadPath(why)) => {
                self.metrics.rejected.with_label_values(&["bad_path"]).inc();
                let reject = Reject { status: 400, reason: "bad_path", message: format!("{why}: refused") };
                respond(session, &reject).await?;
                return Ok(true);
            }
        };
        if let Some(path) = normal {
            let target = match session.req_header().uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let uri =
                target.parse::<http::Uri>().map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "path", e))?;
            session.req_header_mut().set_uri(uri);
        }
        let path = session.req_header().uri.path();
        let Some(route) = table.route(path).cloned() else {
            self.metrics.requests.with_label_values(&["", "no_route"]).inc();
            let reject = Reject { status: 404, reason: "no_route", message: format!("no route matches {path}") };
            respond(session, &reject).await?;
            return Ok(true);
        };
        ctx.route = Some(route.clone());
        if let Some(stream_route) = StreamRoute::of(&route) {
            let settings = &stream_route.stream;
            // The origin a page may read the answers from, refusals included.
            ctx.cors = cors::Cors::of(&session.req_header().headers, settings);
            // A subscription from an origin let read only without credentials is served without
            // the ones a browser sends by itself (WebSocket has no CORS to stop it otherwise).
            if !ctx.cors.keeps_credentials() && subscribe::asks(session.req_header()) {
                cors::drop_ambient_credentials(session.req_header_mut());
            }
            if let Some(token) = &settings.token {
                if let Err(reject) = token::from_query(session.req_header_mut(), token) {
                    self.metrics.rejected.with_label_values(&[reject.reason]).inc();
                    respond_to(session, &reject, &ctx.cors).await?;
                    return Ok(true);
                }
            }
            let req = session.req_header();
            if cors::is_preflight(&req.method, &req.headers, &ctx.cors) {
                match ctx.cors.granted().cloned() {
                    Some(grant) => preflight(session, &grant).await?,
                    None => {
                        let reason = "origin_not_allowed";
                        self.metrics.rejected.with_label_values(&[reason]).inc();
                        let message = "this origin may not read this route".to_string();
                        respond_to(session, &Reject { status: 403, reason, message }, &ctx.cors).await?;
                    }
                }
                return Ok(true);
            }
            match subscribe::classify(session.req_header(), &stream_route.stream) {
                None => {}
                Some(Err(reject)) => {
                    self.metrics.rejected.with_label_values(&[reject.reason]).inc();
                    respond_to(session, &reject, &ctx.cors).await?;
                    return Ok(true);
                }
                Some(Ok(request)) => {
                    route.counters.subscribed().inc();
                    let server = table.server.clone();
                    drop(table);
                    let cors = std::mem::take(&mut ctx.cors);
                    let asked = ctx.started.unwrap_or_else(std::time::Instant::now);
                    ctx.subscription = true;
                    let served = self.serve_subscription(session, &stream_route, request, &server, cors, asked);
                    if let Err(e) = served.await {
                        log::debug!("stream on {} ended: {e}", route.label());
                    }
                    return Ok(true);
                }
            }
        }
        route.counters.proxied().inc();
        ctx.proxied = true;
        ctx.table = Some(table);
        Ok(false)
    }

    /// How pingora's own log lines (a failed proxy attempt, at error) name the request: as
    /// pingora does, with credential parameters hidden (see [`crate::redact`]).
    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        let req = session.req_header();
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let host = req.headers.get(http::header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()));
        format!("{} {}, Host: {}", req.method, crate::redact::target(target), host.as_deref().unwrap_or(""))
    }

    /// Ends a request: re-arms the head guard for the next one, counts a proxied request's
    /// duration, refreshes what a write changed, and writes the access log line.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        // The next request head on a kept-alive connection gets a deadline and a size limit of
        // its own (see `head_deadline`); a connection whose request body was left unread is
        // closed instead, so that no body byte is taken for a head. (A subscription's session
        // is detached once its stream has the connection: no guard is left on it.)
        if session.stream().is_some_and(HeadDeadline::guards) {
            if !session.is_body_done() {
                session.set_keepalive(None);
            } else if let Some(stream) = session.stream() {
                HeadDeadline::next_head(stream);
            }
        }
        let status = session.response_written().map(|r| r.status.as_u16());
        let started = ctx.started.unwrap_or_else(std::time::Instant::now);
        if let (Some(route), true) = (ctx.route.as_ref(), ctx.proxied) {
            // `None`: no answer reached the client (it left, or the upstream failed before one).
            route.counters.duration(status).observe(started.elapsed().as_secs_f64());
        }
        // A write the upstream accepted refreshes the topics it may have changed.
        if let (Some(route), true, Some(200..=299)) = (ctx.route.as_ref(), ctx.proxied, status) {
            let method = &session.req_header().method;
            if [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(method) {
                let path = session.req_header().uri.path();
                let paths = Paths::of_route_write(&route.settings.pattern, route.settings.refreshes.as_deref(), path);
                if !paths.is_empty() {
                    let reached = self.hub.refresh_everywhere(&paths, Cause::Write);
                    log::debug!("{method} {} refreshed {reached} topics", crate::redact::target(path));
                }
            }
        }
        if ctx.subscription && status.is_none() {
            return;
        }
        let table = match ctx.table.take() {
            Some(table) => table,
            None => self.table.load_full(),
        };
        if !table.server.access_log {
            return;
        }
        let req = session.req_header();
        let client = client_of(session, &table.server.trusted_proxies);
        let route = ctx.route.as_deref();
        let entry = access::Entry {
            client,
            method: req.method.as_str(),
            target: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            route: route.map_or("", Route::label),
            kind: if ctx.proxied { "proxy" } else { "local" },
            status,
            duration: started.elapsed(),
            upstream: ctx.server,
            bytes: session.body_bytes_sent() as u64,
            stream: None,
        };
        access::write(&entry);
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<Box<HttpPeer>> {
        let route = ctx.route.clone().expect("request_filter sets the route of every proxied request");
        let req = session.req_header();
        // The client's address is worked out only when it is what the upstream hashes on.
        let by_address = matches!(route.upstream.settings.sticky, Some(Sticky::Hash(crate::config::HashOn::SourceIp)));
        let table = ctx.table.as_ref().expect("request_filter keeps the table of every proxied request");
        let client = by_address.then(|| client_of(session, &table.server.trusted_proxies)).flatten();
        let choice = sticky::choose(&route.upstream, &req.headers, req.uri.query(), client, ctx.avoid);
        if let Some(result) = choice.result {
            self.metrics.sticky.with_label_values(&[&route.upstream.name, result]).inc();
        }
        // A retry that lands on another server re-issues the cookie.
        ctx.set_cookie = choice.set_cookie.or(ctx.set_cookie.take());
        choice.server.proxied.inc();
        let server = choice.server.addr;
        ctx.chosen = Some(choice.server);
        // Requests with different credentials never share an upstream connection.
        let identity = pool::identity(&session.req_header().headers, &CREDENTIAL_HEADER_NAMES);
        let plan = route.upstream.plan(server, identity);
        let peer = route.upstream.peer(ctx.chosen.as_ref().expect("chosen above"), plan.group_key);
        ctx.server = Some(server);
        ctx.close = plan.close;
        Ok(Box::new(peer))
    }

    /// Adds the forwarding headers (see [`client::forwarding`]) and, when the connection plan
    /// says so, `Connection: close`.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if let Some(peer) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            let table = ctx.table.as_ref().expect("request_filter keeps the table of every proxied request");
            let trusted = &table.server.trusted_proxies;
            let req = session.req_header();
            let arrival = client::Arrival {
                tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
                version: req.version,
                authority: req.uri.authority().map(|a| a.as_str()),
                address: session.stream().and_then(HeadDeadline::address),
            };
            let f = client::forwarding(peer, &upstream_request.headers, trusted, arrival);
            // Room for them all at once (a client's head is parsed into maps just its size).
            upstream_request.reserve_headers(client::ADDED_HEADERS)?;
            upstream_request.insert_header(client::X_FORWARDED_FOR, f.forwarded_for)?;
            upstream_request.insert_header(client::X_FORWARDED_PROTO, f.forwarded_proto)?;
            match f.forwarded_host {
                Some(host) => upstream_request.insert_header(client::X_FORWARDED_HOST, host)?,
                None => {
                    upstream_request.remove_header(&client::FORWARDED_HOST);
                }
            }
            upstream_request.insert_header(client::VIA, f.via)?;
        }
        if ctx.close {
            upstream_request.insert_header(client::CONNECTION, "close")?;
        }
        let route = ctx.route.as_ref().expect("routed");
        // A TLS upstream is asked for its own name (the client's is in X-Forwarded-Host).
        if let Some(host) = ctx.chosen.as_ref().and_then(|server| route.upstream.host(server)) {
            upstream_request.insert_header(http::header::HOST, host)?;
        }
        // The sticky cookie is unpoll's own: the upstream never sees it.
        if let Some(crate::config::Sticky::Cookie(cookie)) = &route.upstream.settings.sticky {
            let kept: Vec<http::HeaderValue> = upstream_request
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| sticky::without_cookie(v, &cookie.name))
                .collect();
            upstream_request.remove_header(&http::header::COOKIE);
            for value in kept {
                upstream_request.append_header(http::header::COOKIE, value)?;
            }
        }
        Ok(())
    }

    /// Sets the sticky cookie of a client that was (re)assigned a server.
    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if let Some(cookie) = ctx.set_cookie.take() {
            response.append_header(http::header::SET_COOKIE, cookie)?;
        }
        ctx.cors.add_headers(response)?;
        Ok(())
    }

    /// A connection that could not be made counts against the server's health, and an
    /// idempotent request (nothing of it was sent) is tried once more on another server.
    fn fail_to_connect(&self, session: &mut Session, _peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        if let (Some(route), Some(server)) = (ctx.route.as_ref(), ctx.chosen.as_ref()) {
            route.upstream.unreachable(server);
            if is_tls_error(&e) {
                route.upstream.tls_failed(server, &e, "proxy");
            }
        }
        let idempotent =
            matches!(session.req_header().method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS);
        let retry =
            idempotent && !ctx.retried && ctx.route.as_ref().is_some_and(|r| r.upstream.balancer().servers().len() > 1);
        if retry {
            ctx.retried = true;
            ctx.avoid = ctx.server;
        }
        e.set_retry(retry);
        e
    }

    /// A pooled connection carries the request only if nothing waits on it (see [`crate::upstream::pool`]).
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if !reused {
            return Ok(());
        }
        let tls = ctx.route.as_ref().is_some_and(|r| r.upstream.is_tls());
        match pool::reusable_by_socket(sys::pending_fd(fd), tls) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(why) => {
                let (route, server) = (ctx.route.as_ref().expect("routed"), ctx.server.expect("picked"));
                route.upstream.distrust(server, why, &self.metrics.reuse_refused);
            }
        }
        Error::e_explain(STALE, "the pooled connection was closed or had bytes waiting")
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if let (Some(route), Some(server)) = (ctx.route.as_ref(), ctx.chosen.as_ref()) {
            route.upstream.reached(server);
            route.upstream.answering(server);
        }
        if pool::doubtful_framing(upstream_response.status, &upstream_response.headers, None) {
            let (route, server) = (ctx.route.as_ref().expect("routed"), ctx.server.expect("picked"));
            route.upstream.distrust(server, Distrust::DoubtfulFraming, &self.metrics.reuse_refused);
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        // A server that refuses the client certificate says so after the handshake (TLS 1.3).
        if let (Some(route), Some(server)) = (ctx.route.as_ref(), ctx.chosen.as_ref()) {
            if is_tls_error(&e) {
                route.upstream.tls_failed(server, &e, "proxy");
            }
        }
        let stale = e.etype() == &STALE;
        let mut e = e.more_context(format!("Peer: {peer}"));
        if stale {
            // Nothing was sent on the stale connection: any method may go on to another.
            e.set_retry(true);
        } else if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }
}

/// Answers a preflight from an allowed origin: it may GET the route (with credentials when
/// the grant says so).
async fn preflight(session: &mut Session, grant: &cors::Grant) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(204, Some(7))?;
    cors::Cors::Granted(grant.clone()).add_headers(&mut resp)?;
    resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_METHODS, "GET, OPTIONS")?;
    resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_HEADERS, cors::ALLOWED_HEADERS)?;
    resp.insert_header(http::header::ACCESS_CONTROL_MAX_AGE, cors::PREFLIGHT_MAX_AGE.to_string())?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    session.write_response_header(Box::new(resp), true).await
}

/// Answers with a small JSON error body; clients never see internals.
async fn respond(session: &mut Session, reject: &Reject) -> pingora::Result<()> {
    respond_to(session, reject, &cors::Cors::Off).await
}

/// [`respond`], readable by a page from another origin when the route lets that origin read
/// it (see [`cors`]): a browser client then sees why it was refused.
async fn respond_to(session: &mut Session, reject: &Reject, cors: &cors::Cors) -> pingora::Result<()> {
    let body = serde_json::json!({"error": reject.reason, "message": reject.message});
    let body = Bytes::from(serde_json::to_vec(&body).expect("a Value always serialises"));
    let mut resp = ResponseHeader::build(reject.status, Some(3))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    if reject.status == 426 {
        resp.insert_header("sec-websocket-version", "13")?;
    }
    if reject.status == 503 || reject.status == 429 {
        resp.insert_header("retry-after", "5")?;
    }
    cors.add_headers(&mut resp)?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}
