//! Serving a subscription: who it is (the topic key, with a sticky upstream's pin), joining
//! the topic, and handing the socket to the SSE or WebSocket loop. A WebSocket whose
//! credential comes in its first message (`stream.token.first_message`) is answered first,
//! and joins only once that message came.

use super::subscribe::{Reject, SubscribeRequest};
use super::{access, client_of, cors, detach, head_deadline, respond, respond_to, sticky, Gateway};
use crate::config::{ServerSettings, Sticky};
use crate::metrics::Metrics;
use crate::route_table::StreamRoute;
use crate::stream::delivery::Delivery;
use crate::stream::downstream::{self, Downstream, WriteFailed};
use crate::stream::serve::{drop_reason, serve, Ended};
use crate::stream::{sse, ws};
use crate::topic::hub::{Limits, Refused, Subscription};
use crate::topic::key;
use crate::wire::encode::Protocol;
use futures_util::FutureExt;
use http::HeaderMap;
use pingora::proxy::Session;
use std::net::IpAddr;
use std::time::Instant;

impl Gateway {
    /// `asked`: when the request's head was read.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn serve_subscription(
        &self,
        session: &mut Session,
        route: &StreamRoute,
        request: SubscribeRequest,
        server: &ServerSettings,
        cors: cors::Cors,
        asked: Instant,
    ) -> pingora::Result<()> {
        let settings = &route.stream;
        let req = session.req_header();
        // HTTP/1.0 knows no chunked bodies: its SSE stream ends by closing.
        let http10 = req.version == http::Version::HTTP_10;
        let client = client_of(session, &server.trusted_proxies);
        let h2 = session.downstream_session.is_http2();
        // (A WebSocket upgrade over HTTP/2 was refused as a bad upgrade: it needs HTTP/1.1.)
        let in_band = settings.token.as_ref().filter(|t| {
            t.first_message && request.protocol == Protocol::WebSocket && !req.headers.contains_key(t.header.as_str())
        });
        if in_band.is_some() {
            return self.serve_authenticating(session, route, request, server, cors, client).await;
        }
        let (path, query) = (req.uri.path().to_string(), req.uri.query().map(str::to_string));
        let headers = req.headers.clone();
        let (mut sub, set_cookie) = match self.join(route, &path, query.as_deref(), &headers, client, &request, server)
        {
            Ok(joined) => joined,
            Err(reject) => return respond_to(session, &reject, &cors).await,
        };
        sub.settle(request.resume.as_ref()).await;
        // More header lines: a sticky cookie, and what lets another origin read the stream.
        let extra_head = match (set_cookie, cors.head_lines()) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or_default() + &b.unwrap_or_default()),
        };
        let handshake = (request.protocol == Protocol::WebSocket).then(|| {
            let key = request.ws_key.as_deref().expect("validated upgrades carry a key");
            ws::handshake_response(key, request.subprotocol, extra_head.as_deref())
        });
        let access = streamed(server, session, client, route, &request, asked);
        let delivery = Delivery::new(sub, request.protocol, settings.queue_bytes, route.label(), &self.metrics)
            .asked_at(asked, &self.metrics, route.label())
            .tallied(access.as_ref().map(|a| a.bytes.clone()));
        if h2 {
            // An HTTP/2 stream stays in pingora's session, which frames it and shares the
            // connection with the others: served here, in the request's own task.
            let delivery = delivery.over_http("2", &self.metrics);
            let sink = sse::H2 { session, write_timeout: server.write_timeout, extra_head };
            let result = serve(sink, delivery, settings.heartbeat, self.shutdown.clone()).await;
            ended(&self.metrics, route, access.as_ref(), drop_reason(&result));
            return Ok(());
        }
        let delivery = delivery.over_http(if http10 { "1.0" } else { "1.1" }, &self.metrics);
        let Some(down) = self.detach(session, server, request.protocol).await? else { return Ok(()) };
        let shutdown = self.shutdown.clone();
        let metrics = self.metrics.clone();
        let route = route.clone();
        let (heartbeat, max_message) = (settings.heartbeat, server.websocket_max_message);
        let done = move |result: Result<Ended, WriteFailed>| {
            ended(&metrics, &route, access.as_ref(), drop_reason(&result));
        };
        // Each protocol's task holds only its own future, and each future once (a block
        // awaiting it would keep a second place for it).
        match handshake {
            None => drop(tokio::spawn(
                serve(sse::Http1::new(down, http10, extra_head), delivery, heartbeat, shutdown).map(done),
            )),
            Some(handshake) => drop(tokio::spawn(
                serve(ws::Ws::new(down, handshake, max_message), delivery, heartbeat, shutdown).map(done),
            )),
        }
        Ok(())
    }

    /// A WebSocket that sends its credential as its first message: the 101 now, then that
    /// message within `token.timeout`, and only then the topic (nothing is polled or sent
    /// before). A sticky cookie cannot be set on it: the 101 went out before a server was
    /// chosen.
    async fn serve_authenticating(
        &self,
        session: &mut Session,
        route: &StreamRoute,
        request: SubscribeRequest,
        server: &ServerSettings,
        cors: cors::Cors,
        client: Option<IpAddr>,
    ) -> pingora::Result<()> {
        let token = route.stream.token.clone().expect("an in-band token route");
        let req = session.req_header();
        let (path, query) = (req.uri.path().to_string(), req.uri.query().map(str::to_string));
        let mut headers = req.headers.clone();
        let key = request.ws_key.as_deref().expect("validated upgrades carry a key");
        let handshake = ws::handshake_response(key, request.subprotocol, cors.head_lines().as_deref());
        let access = streamed(server, session, client, route, &request, Instant::now());
        let Some(mut down) = self.detach(session, server, Protocol::WebSocket).await? else { return Ok(()) };
        let gateway = Gateway {
            table: self.table.clone(),
            hub: self.hub.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            connections: self.connections.clone(),
        };
        let (route, server) = (route.clone(), server.clone());
        tokio::spawn(async move {
            let failed = |reason: Option<&'static str>| ended(&gateway.metrics, &route, access.as_ref(), reason);
            let (value, opened) =
                match ws::authenticate(&mut down, &handshake, server.websocket_max_message, token.timeout).await {
                    Ok(ws::Auth::Token(t, opened)) => {
                        (http::HeaderValue::from_str(&format!("{}{t}", token.prefix)), opened)
                    }
                    Ok(ws::Auth::Refused(how)) => {
                        failed(how.drop_reason());
                        return down.close().await;
                    }
                    Err(error) => return failed(Some(error.drop_reason())),
                };
            let Ok(value) = value else {
                failed(Some("unauthenticated"));
                return ws::refuse(down, opened, 1008, "malformed auth message").await;
            };
            headers.insert(http::HeaderName::from_bytes(token.header.as_bytes()).expect("checked"), value);
            let mut sub = match gateway.join(&route, &path, query.as_deref(), &headers, client, &request, &server) {
                Ok((sub, _)) => sub,
                // As the HTTP answer would be: try again later.
                Err(reject) => {
                    if let Some(access) = &access {
                        access.end(reject.reason);
                    }
                    return ws::refuse(down, opened, 1013, reject.reason).await;
                }
            };
            sub.settle(request.resume.as_ref()).await;
            let delivery =
                Delivery::new(sub, Protocol::WebSocket, route.stream.queue_bytes, route.label(), &gateway.metrics)
                    .tallied(access.as_ref().map(|a| a.bytes.clone()))
                    .over_http("1.1", &gateway.metrics);
            // The stream gets a task of its own, holding only its future: this one's captures
            // (the request's path, headers, the gateway) are let go.
            let (metrics, heartbeat, shutdown) =
                (gateway.metrics.clone(), route.stream.heartbeat, gateway.shutdown.clone());
            let stream = serve(ws::Ws::opened(down, opened), delivery, heartbeat, shutdown);
            tokio::spawn(stream.map(move |result| ended(&metrics, &route, access.as_ref(), drop_reason(&result))));
        });
        Ok(())
    }

    /// Takes the client's socket out of pingora, to be served from a task of its own (so
    /// pingora's state for this request is freed). `None` once refused (not HTTP/1.1). A
    /// WebSocket's bytes that came with its handshake are read first; an SSE client sends
    /// nothing that matters (what it sends only says it left).
    async fn detach(
        &self,
        session: &mut Session,
        server: &ServerSettings,
        protocol: Protocol,
    ) -> pingora::Result<Option<Downstream>> {
        let Some((stream, ahead)) = detach::detach(session).await else {
            let reject =
                Reject { status: 400, reason: "bad_request", message: "streams are served over HTTP/1.1".to_string() };
            respond(session, &reject).await?;
            return Ok(None);
        };
        let (stream, id) = downstream::lean(head_deadline::HeadDeadline::unwrap(stream));
        let hold = Box::new(self.connections.hold(id));
        let down = Downstream::new(stream, hold, server.write_timeout);
        Ok(Some(if protocol == Protocol::WebSocket { down.read_ahead(ahead) } else { down }))
    }

    /// Who the subscriber is (its topic key, pinned on a sticky upstream to where its plain
    /// requests would go; the sticky cookie itself is unpoll's, never sent upstream nor keyed
    /// on), and its subscription with a `set-cookie` line to send, or why it is refused.
    #[allow(clippy::too_many_arguments)]
    fn join(
        &self,
        route: &StreamRoute,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        client: Option<IpAddr>,
        request: &SubscribeRequest,
        server: &ServerSettings,
    ) -> Result<(Subscription, Option<String>), Reject> {
        let settings = &route.stream;
        let upstream = route.upstream();
        let (key, poll, set_cookie) = match &upstream.settings.sticky {
            None => {
                let (key, poll, _) = key::derive(route.label(), settings, path, query, headers);
                (key, poll, None)
            }
            Some(rule) => {
                let choice = sticky::choose(upstream, headers, query, client, None);
                if let Some(result) = choice.result {
                    self.metrics.sticky.with_label_values(&[&upstream.name, result]).inc();
                }
                let (pin, headers) = match rule {
                    Sticky::Cookie(cookie) => {
                        (key::Pin::Server(choice.server.id.clone()), sticky::strip(headers, &cookie.name))
                    }
                    Sticky::Hash(on) => match sticky::key(on, headers, query, client) {
                        Some(attribute) => (key::Pin::Hash(attribute), headers.clone()),
                        None => (key::Pin::Server(choice.server.id.clone()), headers.clone()),
                    },
                };
                let (mut key, mut poll, _) = key::derive(route.label(), settings, path, query, &headers);
                key::pin(&mut key, &mut poll, settings, pin);
                (key, poll, choice.set_cookie.map(|c| format!("set-cookie: {c}\r\n")))
            }
        };
        let limits = Limits {
            subscribers: server.max_subscribers,
            topics: server.max_topics,
            per_topic: settings.max_subscribers,
            per_client: server.max_topics_per_client,
        };
        match self.hub.subscribe(
            key,
            poll,
            route,
            request.resume.as_ref(),
            request.format,
            request.protocol,
            limits,
            client,
        ) {
            Ok(sub) => Ok((sub, set_cookie)),
            Err(refused) => {
                self.metrics.rejected.with_label_values(&[refused.reason()]).inc();
                Err(match refused {
                    Refused::TooManyTopicsForClient => Reject {
                        status: 429,
                        reason: refused.reason(),
                        message: "this client has opened too many different streams; retry later".to_string(),
                    },
                    _ => Reject {
                        status: 503,
                        reason: refused.reason(),
                        message: "the proxy is at its subscription limit; retry later".to_string(),
                    },
                })
            }
        }
    }
}

/// How a stream ended, counted and logged: `reason` is `None` when it was closed, else why it
/// was dropped (`unpoll_subscribers_dropped_total`).
fn ended(metrics: &Metrics, route: &StreamRoute, access: Option<&access::Streamed>, reason: Option<&'static str>) {
    if let Some(reason) = reason {
        metrics.dropped.with_label_values(&[route.label(), reason]).inc();
    }
    if let Some(access) = access {
        access.end(reason.unwrap_or("closed"));
    }
}

/// A subscription's access log line, when `server.access_log` is on.
fn streamed(
    server: &ServerSettings,
    session: &Session,
    client: Option<IpAddr>,
    route: &StreamRoute,
    request: &SubscribeRequest,
    started: Instant,
) -> Option<access::Streamed> {
    if !server.access_log {
        return None;
    }
    let req = session.req_header();
    Some(access::Streamed {
        client,
        target: req.uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        route: route.label().to_string(),
        status: if request.protocol == Protocol::WebSocket { 101 } else { 200 },
        started,
        protocol: request.protocol.name(),
        format: request.format.name(),
        bytes: Default::default(),
    })
}
