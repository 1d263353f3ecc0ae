//! Plain reverse proxying: everything that is not a subscription reaches the upstream unchanged.

mod support;

use std::time::Duration;
use support::*;

const CONFIG: &str = r#"
upstreams:
  app:
    servers: ["{upstream}"]
routes:
  - match: /orders/{id}
    upstream: app
    stream:
      interval: 1s
  - match: /api/*
    upstream: app
"#;

#[tokio::test]
async fn requests_reach_the_upstream_unchanged() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, CONFIG).await;
    let body = "{\"qty\":3}";
    let req = format!(
        "PUT /api/items/7?x=1&y=%20 HTTP/1.1\r\nHost: shop.example\r\nX-Custom: a b\r\nAuthorization: Bearer t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = RawConn::send(proxy.addr, req.as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-upstream"), Some("yes"), "upstream response headers come back");
    let echo = resp.json();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["target"], "/api/items/7?x=1&y=%20");
    assert_eq!(echo["headers"]["host"], "shop.example");
    assert_eq!(echo["headers"]["x-custom"], "a b");
    assert_eq!(echo["headers"]["authorization"], "Bearer t");
    assert_eq!(echo["body"], body);
}

#[tokio::test]
async fn upstream_status_codes_pass_through() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, CONFIG).await;
    let req = "DELETE /api/x HTTP/1.1\r\nHost: h\r\nX-Want-Status: 418\r\nContent-Length: 0\r\n\r\n";
    let resp = RawConn::send(proxy.addr, req.as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!(resp.status, 418);
}

#[tokio::test]
async fn streaming_bodies_are_streamed() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, &Setup::new().route("/*").body()).await;
    let mut conn = RawConn::send(proxy.addr, b"GET /slow-stream HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(conn.status, 200);
    // The first part arrives before the upstream has sent the rest (300 ms later).
    assert!(conn.read_until(Duration::from_millis(250), |b| b.starts_with(b"part-1;")).await);
    assert!(!conn.body.ends_with(b"part-3;"), "the body was buffered, not streamed");
    assert!(conn.read_until(2 * SECOND, |b| b == b"part-1;part-2;part-3;").await);
}

#[tokio::test]
async fn unrouted_requests_get_404_from_the_proxy() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, CONFIG).await;
    let resp = http_get(proxy.addr, "/nowhere").await.unwrap();
    assert_eq!(resp.status, 404);
    assert_eq!(resp.json()["error"], "no_route");
    assert_eq!(up.count("/nowhere"), 0);
    assert_eq!(proxy.metric("unpoll_http_requests_total", &[("kind", "no_route")]).await, 1.0);
}

#[tokio::test]
async fn plain_get_on_a_stream_route_is_proxied() {
    let up = Upstream::start().await;
    up.set_json("/orders/1", &serde_json::json!({"id": 1}));
    let proxy = Proxy::start(up.addr, CONFIG).await;
    let resp = http_get(proxy.addr, "/orders/1?unpoll_format=xml").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), serde_json::json!({"id": 1}));
    assert_eq!(up.seen("/orders/1")[0].target, "/orders/1?unpoll_format=xml", "plain requests are not rewritten");
}

#[tokio::test]
async fn upstream_websockets_pass_through_on_plain_routes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // A WebSocket echo server as the upstream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    let proxy = Proxy::start(addr, &Setup::new().route("/*").body()).await;
    let (mut ws, resp) = ws_connect(proxy.addr, "/chat", &[], &[]).await.expect("upgrade through the proxy");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello upstream")).await.unwrap();
    let echoed = tokio::time::timeout(5 * SECOND, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello upstream");
}

#[tokio::test]
async fn several_servers_are_used_round_robin() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let body = format!(
        "upstreams:\n  app:\n    servers: [\"{}\", \"{}\"]\nroutes:\n  - match: /*\n    upstream: app\n",
        a.addr, b.addr
    );
    let proxy = Proxy::start(a.addr, &body).await;
    for _ in 0..6 {
        assert_eq!(http_get(proxy.addr, "/rr").await.unwrap().status, 200);
    }
    assert_eq!((a.count("/rr"), b.count("/rr")), (3, 3));
}

#[tokio::test]
async fn forwarding_headers_reach_the_upstream_in_the_case_proxies_write_them() {
    // A server that keeps the head it was sent, byte for byte (the test upstream parses it,
    // which loses the names' case).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the head ends");
            head.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await.unwrap();
        tx.send(String::from_utf8(head).unwrap()).unwrap();
    });
    let proxy = Proxy::start(addr, &Setup::new().route("/*").body()).await;
    let resp = http_get(proxy.addr, "/cased").await.unwrap();
    assert_eq!(resp.status, 200);
    let head = tokio::time::timeout(5 * SECOND, rx).await.unwrap().unwrap();
    for line in ["X-Forwarded-For: 127.0.0.1", "X-Forwarded-Proto: http", "Via: 1.1 unpoll"] {
        assert!(head.contains(&format!("\r\n{line}\r\n")), "{line:?} in {head:?}");
    }
    assert!(head.contains("\r\nX-Forwarded-Host: "), "{head:?}");
}

#[tokio::test]
async fn proxied_requests_carry_forwarding_headers_a_client_cannot_forge() {
    let up = Upstream::start().await;
    let body = &Setup::new().route("/*").body();
    let forged = "GET /echo HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nVia: 1.1 cdn\r\nConnection: close\r\n\r\n";
    // From a client: its own claims are replaced by what the proxy saw.
    let proxy = Proxy::start(up.addr, body).await;
    let seen = RawConn::send(proxy.addr, forged.as_bytes()).await.read_to_end(5 * SECOND).await.json();
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "app.example");
    assert_eq!(h["via"], "1.1 cdn, 1.1 unpoll");
    drop(proxy);
    // From a trusted proxy: its chain is kept and extended.
    let proxy = Proxy::start_with(up.addr, "  trusted_proxies: [127.0.0.0/8]\n", body).await;
    let seen = RawConn::send(proxy.addr, forged.as_bytes()).await.read_to_end(5 * SECOND).await.json();
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["via"], "1.1 cdn, 1.1 unpoll");
}
