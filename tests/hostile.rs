//! Limits and hostile input: subscription limits, Origin allowlists, oversized WebSocket
//! messages, Host and absolute-form targets, and request smuggling over raw TCP.

mod support;

use futures_util::SinkExt;
use serde_json::json;
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn subscription_limits_refuse_with_503_and_count() {
    let up = Upstream::start().await;
    for path in ["/t/1", "/t/2", "/t/3"] {
        up.set_json(path, &doc(1));
    }
    let body = &Setup::stream("/t/{id}").with("max_subscribers", 2).body();
    let proxy = Proxy::start_with(up.addr, "  max_subscribers: 4\n  max_topics: 2\n", body).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = Sse::connect(proxy.addr, "/t/1", &[]).await;
        s.next_event(5 * SECOND).await.unwrap();
        open.push(s);
    }
    let full = Sse::connect(proxy.addr, "/t/1", &[]).await.conn.read_to_end(5 * SECOND).await;
    assert_eq!((full.status, full.json()["error"].as_str()), (503, Some("topic_full")));
    assert_eq!(full.header("retry-after"), Some("5"));
    let mut second = Sse::connect(proxy.addr, "/t/2", &[]).await;
    second.next_event(5 * SECOND).await.unwrap();
    let third_topic = Sse::connect(proxy.addr, "/t/3", &[]).await.conn.read_to_end(5 * SECOND).await;
    assert_eq!((third_topic.status, third_topic.json()["error"].as_str()), (503, Some("too_many_topics")));
    let mut fourth = Sse::connect(proxy.addr, "/t/2", &[]).await;
    fourth.next_event(5 * SECOND).await.unwrap();
    match ws_connect(proxy.addr, "/t/2", &[], &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503 over the global limit, got {other:?}"),
    }
    for reason in ["topic_full", "too_many_topics", "too_many_subscribers"] {
        assert_eq!(proxy.metric("unpoll_requests_rejected_total", &[("reason", reason)]).await, 1.0, "{reason}");
    }
    // Leaving frees the place.
    drop(open);
    assert!(
        eventually(5 * SECOND, || async { proxy.metric("unpoll_subscribers", &[("route", "/t/{id}")]).await == 2.0 })
            .await
    );
    let mut again = Sse::connect(proxy.addr, "/t/1", &[]).await;
    assert_eq!(again.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
}

#[tokio::test]
async fn origins_outside_the_allowlist_cannot_subscribe() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let body = &Setup::stream("/doc")
        .with("origins", json!(["https://app.example"]))
        .with("allow_missing_origin", false)
        .body();
    let proxy = Proxy::start(up.addr, body).await;
    match ws_connect(proxy.addr, "/doc", &[], &[("origin", "https://evil.example")]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("a cross-site WebSocket was accepted: {other:?}"),
    }
    let sse = Sse::connect(proxy.addr, "/doc", &[("Origin", "https://evil.example")])
        .await
        .conn
        .read_to_end(5 * SECOND)
        .await;
    assert_eq!((sse.status, sse.json()["error"].as_str()), (403, Some("origin_not_allowed")));
    let missing = Sse::connect(proxy.addr, "/doc", &[]).await.conn.read_to_end(5 * SECOND).await;
    assert_eq!(missing.status, 403, "allow_missing_origin: false");
    let (mut ws, _) = ws_connect(proxy.addr, "/doc", &[], &[("origin", "https://app.example")]).await.unwrap();
    assert_eq!(ws_event(&mut ws, 5 * SECOND).await["event"], "snapshot");
    assert_eq!(up.count("/doc"), 1, "refused subscriptions never reached the upstream");
}

#[tokio::test]
async fn oversized_websocket_messages_are_closed_with_1009() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let body = &Setup::stream("/doc").body();
    let proxy = Proxy::start_with(up.addr, "  websocket_max_message: 1024\n", body).await;
    let (mut ws, _) = ws_connect(proxy.addr, "/doc", &[], &[]).await.unwrap();
    ws_event(&mut ws, 5 * SECOND).await;
    ws.send(Message::text("x".repeat(100))).await.unwrap();
    ws.send(Message::text("x".repeat(5000))).await.unwrap();
    assert!(matches!(ws_next(&mut ws, 5 * SECOND).await, Some(WsNext::Close(Some(1009)))));
    // The drop is counted as the subscriber ends, just after its close frame is written.
    let dropped = || proxy.metric("unpoll_subscribers_dropped_total", &[("reason", "protocol_error")]);
    assert!(eventually(5 * SECOND, || async { dropped().await == 1.0 }).await, "{} drops", dropped().await);
}

fn plain() -> String {
    Setup::new().route("/api/*").body()
}

#[tokio::test]
async fn clients_cannot_choose_the_upstream() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, &plain()).await;
    let mut answered = 0;
    for request in [
        "GET /api/x HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
        "GET http://169.254.169.254/api/x HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
        // Authority and Host disagree: refused outright.
        "GET http://127.0.0.1:1/api/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ] {
        let resp = RawConn::send(proxy.addr, request.as_bytes()).await.read_to_end(5 * SECOND).await;
        // Going anywhere but the configured upstream would be a 502 (nothing listens there).
        match resp.status {
            200 => {
                assert_eq!(resp.header("x-upstream"), Some("yes"), "answered by the configured upstream");
                answered += 1;
            }
            400 => {}
            other => panic!("{other} for {request:?}"),
        }
    }
    let absolute = up.seen("http://169.254.169.254/api/x").len(); // forwarded in absolute form
    assert_eq!(up.count("/api/x") + absolute, answered);
    assert!(answered >= 2, "Host and absolute-form targets are routed by path to the configured upstream");
    let absolute =
        RawConn::send(proxy.addr, b"GET http://h/elsewhere HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
            .read_to_end(5 * SECOND)
            .await;
    assert_eq!(absolute.status, 404, "absolute-form targets are routed by their path");
}

/// Sends `raw`, then a normal request on a new connection; the upstream must never have
/// received a request for `/smuggled`, and the normal request must work.
async fn assert_not_smuggled(proxy: &Proxy, up: &Upstream, raw: &str) {
    let mut conn = RawConn::send(proxy.addr, raw.as_bytes()).await;
    let first = conn.status;
    conn.read_until(Duration::from_millis(500), |_| false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(up.count("/smuggled"), 0, "smuggled through (first answer {first}): {raw:?}");
    assert_eq!(up.count("/api/smuggled"), 0, "smuggled through (first answer {first}): {raw:?}");
    let after = http_get(proxy.addr, "/api/after").await;
    assert_eq!(after.map(|r| r.status), Some(200), "a normal request after {raw:?} (first answer {first})");
}

#[tokio::test]
async fn request_smuggling_attempts_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, &plain()).await;
    let smuggled = "GET /api/smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    // CL.TE: Content-Length says the body is the "0" chunk, TE says it ends there too, and a
    // request follows that a CL-only reader would see as body.
    let cl_te = format!("POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}", 5 + smuggled.len());
    assert_not_smuggled(&proxy, &up, &cl_te).await;
    // TE.CL: a chunk holding a whole request, with a Content-Length that ends early.
    let chunk = smuggled.to_string();
    let te_cl = format!("POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len());
    assert_not_smuggled(&proxy, &up, &te_cl).await;
    // Two Content-Lengths.
    let dup = format!(
        "POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    assert_not_smuggled(&proxy, &up, &dup).await;
    // Obfuscated Transfer-Encoding.
    for te in [
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding:\tchunked",
    ] {
        let raw = format!("POST /api/x HTTP/1.1\r\nHost: h\r\n{te}\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}");
        assert_not_smuggled(&proxy, &up, &raw).await;
    }
    // An Upgrade the upstream does not accept (it answers 200, not 101), with a request for a
    // path no route allows pipelined behind it: it must be routed (404), not tunnelled.
    let upgrade = "GET /api/x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_not_smuggled(&proxy, &up, upgrade).await;
}

#[tokio::test]
async fn oversized_request_heads_get_431_and_the_next_request_works() {
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(up.addr, "  max_request_header: 2048\n", &plain()).await;
    let big = format!("GET /api/x HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "b".repeat(3000));
    let resp = RawConn::send(proxy.addr, big.as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!((resp.status, resp.json()["error"].as_str()), (431, Some("header_too_large")));
    assert_eq!(up.count("/api/x"), 0);
    let small = format!("GET /api/x HTTP/1.1\r\nHost: h\r\nX-Small: {}\r\nConnection: close\r\n\r\n", "s".repeat(1000));
    let ok = RawConn::send(proxy.addr, small.as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!(ok.status, 200);
    assert_eq!(proxy.metric("unpoll_requests_rejected_total", &[("reason", "header_too_large")]).await, 1.0);
}

#[tokio::test]
async fn connections_over_max_connections_get_503_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(up.addr, "  max_connections: 3\n", &plain()).await;
    // Three keep-alive connections, each having made a request and staying open.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(held_connection(proxy.addr).await);
    }
    assert!(eventually(5 * SECOND, || async { proxy.metric("unpoll_connections", &[]).await == 3.0 }).await);
    // Read by its Content-Length, so a wrong length would cut the JSON short.
    let refused =
        RawConn::send(proxy.addr, b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n").await.read_to_end(5 * SECOND).await;
    assert_eq!((refused.status, refused.json()["error"].as_str()), (503, Some("too_many_connections")));
    assert_eq!(refused.header("retry-after"), Some("5"));
    // A held connection keeps working: only new connections are refused.
    held[0].write_all(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = held[0].read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    // Closing one frees its place.
    drop(held.pop());
    assert!(eventually(5 * SECOND, || async { proxy.metric("unpoll_connections", &[]).await == 2.0 }).await);
    assert_eq!(http_get(proxy.addr, "/api/x").await.unwrap().status, 200);
    assert_eq!(proxy.metric("unpoll_requests_rejected_total", &[("reason", "too_many_connections")]).await, 1.0);
}

#[tokio::test]
async fn open_streams_count_as_connections_until_they_end() {
    // Streams are served from their own tasks once pingora has finished with the request:
    // they must still count against max_connections, and be released when they end.
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let body = &Setup::stream("/doc").route("/api/*").body();
    let proxy = Proxy::start_with(up.addr, "  max_connections: 2\n", body).await;
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
    let (mut ws, _) = ws_connect(proxy.addr, "/doc", &[], &[]).await.expect("upgrade");
    assert_eq!(ws_event(&mut ws, 5 * SECOND).await["event"], "snapshot");
    assert!(eventually(5 * SECOND, || async { proxy.metric("unpoll_connections", &[]).await == 2.0 }).await);
    let refused =
        RawConn::send(proxy.addr, b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n").await.read_to_end(5 * SECOND).await;
    assert_eq!(refused.status, 503);
    drop(sse);
    drop(ws);
    assert!(eventually(5 * SECOND, || async { proxy.metric("unpoll_connections", &[]).await == 0.0 }).await);
    assert_eq!(http_get(proxy.addr, "/api/x").await.unwrap().status, 200);
}

#[tokio::test]
async fn slow_request_heads_are_cut_off_but_streams_outlive_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let body = &Setup::stream("/doc").with("heartbeat", "10s").route("/api/*").body();
    let proxy = Proxy::start_with(up.addr, "  header_timeout: 500ms\n", body).await;
    // A client that sends its head one byte at a time, 100 ms apart.
    let mut slow = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = b"GET /api/x HTTP/1.1\r\nHost: h\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = tokio::time::Instant::now();
    let mut cut_off = false;
    for b in head {
        if slow.write_all(&[*b]).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(2 * SECOND, slow.read_to_end(&mut rest)).await;
    assert!(cut_off || !rest.starts_with(b"HTTP/1.1 200"), "the slow head was served");
    assert!(started.elapsed() < Duration::from_secs(4), "the connection was held {:?}", started.elapsed());
    assert_eq!(up.count("/api/x"), 0);
    // A stream stays open well past header_timeout: the deadline covers the head only.
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    up.set_json("/doc", &json!({"v": 2, "pad": "p".repeat(100)}));
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().kind(), "patch");
    // Normal requests are unaffected.
    assert_eq!(http_get(proxy.addr, "/api/x").await.unwrap().status, 200);
}

/// Reads one response with a `content-length` body from `stream`; its status, or `None` when the
/// connection closed (or nothing came within 2 s).
async fn read_sized_response(stream: &mut tokio::net::TcpStream) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                return head.get(9..12).and_then(|s| s.parse().ok());
            }
        }
        let n = tokio::time::timeout(2 * SECOND, stream.read(&mut chunk)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn each_request_head_on_a_kept_alive_connection_gets_its_own_deadline() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    up.set_json("/api/x", &doc(1));
    let body = &Setup::new().route("/api/*").body();
    let server = "  header_timeout: 600ms\n  max_request_header: 4096\n";
    let proxy = Proxy::start_with(up.addr, server, body).await;
    let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let request = b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n";
    // Three quick requests 450 ms apart: 900 ms in all, past one deadline, within each one's.
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(450)).await;
        }
        conn.write_all(request).await.unwrap();
        assert_eq!(read_sized_response(&mut conn).await, Some(200), "request {i} on the kept-alive connection");
    }
    // A slow head on the same connection is cut off at its own deadline.
    let started = tokio::time::Instant::now();
    for b in b"GET /api/x HTTP/1.1\r\nHost: h\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
        if conn.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read_sized_response(&mut conn).await, None, "the slow head was served");
    assert!(started.elapsed() < Duration::from_secs(5), "the connection was held {:?}", started.elapsed());
    // A second request's head over the size limit is refused as a first one's is.
    let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    assert_eq!(read_sized_response(&mut conn).await, Some(200));
    let big = format!("GET /api/x HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n", "b".repeat(8000));
    let _ = conn.write_all(big.as_bytes()).await;
    assert_eq!(read_sized_response(&mut conn).await, Some(431), "the second head's size is limited");
    assert_eq!(up.count("/api/x"), 4);
}

#[tokio::test]
async fn one_client_cannot_fill_the_topic_table() {
    let up = Upstream::start().await;
    up.set_json("/t", &doc(1));
    let body = &Setup::stream("/t").every("100ms").with("linger", "5s").with("linger_unshared", "300ms").body();
    let proxy = Proxy::start_with(up.addr, "  max_topics_per_client: 5\n  trusted_proxies: [127.0.0.3]\n", body).await;
    let (a, b, edge): (std::net::IpAddr, std::net::IpAddr, std::net::IpAddr) =
        ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
    let open = |from, path: String, xff: Option<&'static str>| {
        let addr = proxy.addr;
        async move {
            let headers: Vec<(&str, &str)> = xff.map(|x| ("X-Forwarded-For", x)).into_iter().collect();
            Sse::connect_from(from, addr, &path, &headers).await
        }
    };
    // Client a holds five variants of one resource: five topics, its quota.
    let mut held = Vec::new();
    for v in 0..5 {
        let mut s = open(a, format!("/t?v={v}"), None).await;
        assert_eq!(s.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
        held.push(s);
    }
    let sixth = open(a, "/t?v=5".to_string(), None).await.conn.read_to_end(5 * SECOND).await;
    assert_eq!((sixth.status, sixth.json()["error"].as_str()), (429, Some("too_many_topics_for_client")));
    assert_eq!(sixth.header("retry-after"), Some("5"));
    // Joining a topic that exists is not making one; other clients are not locked out.
    assert_eq!(open(a, "/t?v=0".to_string(), None).await.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
    assert_eq!(open(b, "/t?v=5".to_string(), None).await.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
    // Behind a trusted proxy, the forwarded address is the client; elsewhere it is ignored.
    for v in 0..5 {
        let mut s = open(edge, format!("/t?e={v}"), Some("198.51.100.1")).await;
        assert_eq!(s.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
        held.push(s);
    }
    let over = open(edge, "/t?e=5".to_string(), Some("198.51.100.1")).await.conn.read_to_end(5 * SECOND).await;
    assert_eq!(over.status, 429, "the forwarded client is at its quota");
    let other = open(edge, "/t?e=6".to_string(), Some("198.51.100.2")).await.next_event(5 * SECOND).await;
    assert_eq!(other.unwrap().kind(), "snapshot", "another client behind the same proxy");
    let spoofed = open(a, "/t?s=1".to_string(), Some("203.0.113.50")).await.conn.read_to_end(5 * SECOND).await;
    assert_eq!(spoofed.status, 429, "an untrusted peer cannot claim another address");
    assert_eq!(proxy.metric("unpoll_requests_rejected_total", &[("reason", "too_many_topics_for_client")]).await, 3.0);
    // Subscribe-and-close churn: topics that never had a second subscriber stop polling after
    // linger_unshared, not linger, and stop counting against their maker; a shared one stays.
    drop(held);
    let topics = || async { proxy.metric("unpoll_topics", &[]).await };
    assert!(eventually(3 * SECOND, || async { topics().await == 1.0 }).await, "{} topics left", topics().await);
    for round in 0..3 {
        for v in 0..5 {
            let mut s = open(a, format!("/t?churn={round}-{v}"), None).await;
            assert_eq!(s.conn.status, 200, "round {round}");
            s.next_event(5 * SECOND).await.unwrap();
        }
        assert!(eventually(3 * SECOND, || async { topics().await == 1.0 }).await, "round {round}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(topics().await, 1.0, "the topic two subscriptions shared lingers its full 5 s");
}

#[tokio::test]
async fn unfinished_huge_request_heads_are_refused_as_they_arrive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(up.addr, "  header_timeout: 30s\n", &plain()).await;
    let before = rss_kib(proxy.pid());
    // 300 clients, each sending 1 MiB of one header line and never finishing the head.
    let line = format!("X-Big: {}", "b".repeat(64 * 1024));
    let mut clients = Vec::new();
    for _ in 0..300 {
        let line = line.clone();
        let addr = proxy.addr;
        clients.push(tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = c.write_all(b"GET /api/x HTTP/1.1\r\nHost: h\r\n").await;
            let mut sent = 0;
            while sent < 1 << 20 {
                if c.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
                sent += line.len();
            }
            // The proxy must have closed the connection long before header_timeout.
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await.is_ok()
        }));
    }
    for c in clients {
        assert!(c.await.unwrap(), "a connection stayed open with an unfinished head");
    }
    let grown = rss_kib(proxy.pid()).saturating_sub(before);
    let refused = proxy.metric("unpoll_requests_rejected_total", &[("reason", "header_too_large")]).await;
    eprintln!("{refused} of 300 heads refused; RSS grew {grown} KiB");
    assert_eq!(refused, 300.0);
    // Pingora alone buffers up to 1 MiB of each: some 300 MiB.
    assert!(grown < 64 * 1024, "the proxy grew {grown} KiB holding unfinished heads");
    assert_eq!(up.count("/api/x"), 0);
    assert_eq!(http_get(proxy.addr, "/api/x").await.unwrap().status, 200, "the proxy still serves");
}

#[tokio::test]
async fn request_heads_ending_in_bare_line_feeds_are_not_cut_off() {
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(up.addr, "  header_timeout: 1s\n", &plain()).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Lines ending in LF alone; the body follows after the head deadline would have passed.
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(b"POST /api/x HTTP/1.1\nHost: h\nContent-Length: 5\nConnection: close\n\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.write_all(b"hello").await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(5 * SECOND, c.read_to_end(&mut resp)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"body\":\"hello\""), "the body arrived whole: {text}");
}

#[tokio::test]
async fn running_out_of_descriptors_is_a_503_and_the_admin_listener_still_answers() {
    let up = Upstream::start().await;
    // An open-files limit of 1000: by default, max_connections keeps 320 of them for the rest.
    let proxy = Proxy::start_with_open_files(up.addr, "", &plain(), 1000).await;
    let mut held = Vec::new();
    for _ in 0..680 {
        held.push(held_connection(proxy.addr).await);
    }
    assert!(eventually(5 * SECOND, || async { proxy.metric("unpoll_connections", &[]).await == 680.0 }).await);
    let refused =
        RawConn::send(proxy.addr, b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n").await.read_to_end(5 * SECOND).await;
    assert_eq!((refused.status, refused.json()["error"].as_str()), (503, Some("too_many_connections")));
    // The admin listener answers, and a reload (which opens the file) applies.
    assert_eq!(http_get(proxy.admin, "/healthz").await.map(|r| r.status), Some(200));
    proxy.write_config(up.addr, "", &Setup::new().route("/api/*").route("/more/*").body());
    assert!(eventually(5 * SECOND, || async { proxy.metric("unpoll_config_generation", &[]).await == 2.0 }).await);
    drop(held);
    assert!(eventually(5 * SECOND, || async { proxy.metric("unpoll_connections", &[]).await == 0.0 }).await);
    assert_eq!(http_get(proxy.addr, "/more/x").await.unwrap().status, 200);
}

#[tokio::test]
async fn dot_segments_and_encoded_slashes_cannot_leave_an_allowlisted_prefix() {
    let up = Upstream::start().await;
    up.set_json("/doc/a", &doc(1));
    let body = &Setup::stream("/doc/{id}").route("/public/*").body();
    let proxy = Proxy::start(up.addr, body).await;
    let get = |target: &'static str| {
        let addr = proxy.addr;
        async move {
            let req = format!("GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
            RawConn::send(addr, req.as_bytes()).await.read_to_end(5 * SECOND).await
        }
    };
    for target in [
        "/public/../admin/secret",
        "/public/%2e%2e/admin/secret",
        "/public/%2E%2E/admin/secret",
        "/public/.%2e/admin/secret",
        "/public/..%2Fadmin/secret",
        "/public/..%2fadmin/secret",
        "/public/%2e%2e%2fadmin/secret",
        "/public/..;/admin/secret",
        "/public/%252e%252e/admin/secret",
        "/public/..%5Cadmin/secret",
    ] {
        let resp = get(target).await;
        assert!(matches!(resp.status, 400 | 404), "{target}: {}", resp.status);
    }
    let seen: Vec<String> = up.seen_all().into_iter().map(|s| s.target).collect();
    assert!(seen.is_empty(), "the upstream was asked for {seen:?}");
    // Paths that stay inside are sent normalised.
    assert_eq!(get("/public/a/./b/../c").await.status, 200);
    assert_eq!(get("/public/%7Euser?q=%2e").await.status, 200);
    let targets: Vec<String> = up.seen_all().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, vec!["/public/a/c", "/public/~user?q=%2e"]);
    // And topics are keyed by the normalised path: one topic for both spellings.
    let mut plain = Sse::connect(proxy.addr, "/doc/a", &[]).await;
    let mut escaped = Sse::connect(proxy.addr, "/doc/%61", &[]).await;
    assert_eq!(plain.next_event(5 * SECOND).await.unwrap().json(), doc(1));
    assert_eq!(escaped.next_event(5 * SECOND).await.unwrap().json(), doc(1));
    assert_eq!(proxy.metric("unpoll_topics", &[]).await, 1.0);
    assert!(proxy.metric("unpoll_requests_rejected_total", &[("reason", "bad_path")]).await >= 4.0);
}

#[tokio::test]
async fn a_websocket_upgrade_with_two_keys_is_refused() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let body = &Setup::stream("/doc").body();
    let proxy = Proxy::start(up.addr, body).await;
    let request = "GET /doc HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n";
    let resp = RawConn::send(proxy.addr, request.as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!((resp.status, resp.json()["error"].as_str()), (400, Some("bad_upgrade")));
    assert_eq!(up.count("/doc"), 0);
}

/// Holds a connection to `admin` open, sending a request now and then, and comes back 100 ms
/// after the proxy closes it; until `stop`.
async fn hold_admin(admin: std::net::SocketAddr, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut c) = tokio::net::TcpStream::connect(admin).await {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                if c.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await.is_err() {
                    break;
                }
                match tokio::time::timeout(5 * SECOND, c.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => break,
                }
                tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn probes_answer_while_two_hundred_idle_connections_hold_the_admin_listener() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let up = Upstream::start().await;
    let proxy = Proxy::launch(up.addr, &Setup::new().route("/*")).await;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let holders: Vec<_> = (0..200).map(|_| tokio::spawn(hold_admin(proxy.admin, stop.clone()))).collect();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // A probe a fresh connection makes, as a kubelet's: every one answers, and soon.
    for i in 0..20 {
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(2 * SECOND, http_get(proxy.admin, "/healthz")).await;
        let status = answer.ok().flatten().map(|r| r.status);
        assert_eq!(status, Some(200), "probe {i} unanswered after {:?}", started.elapsed());
        for path in ["/readyz", "/metrics"] {
            let r = tokio::time::timeout(2 * SECOND, http_get(proxy.admin, path)).await.ok().flatten();
            assert_eq!(r.map(|r| r.status), Some(200), "{path} during probe {i}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let metrics = http_get(proxy.admin, "/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let open = metric_value(&text, "unpoll_admin_connections", &[]).unwrap();
    assert!(open <= 64.0, "at most admin_max_connections held: {open}");
    let evicted = metric_value(&text, "unpoll_admin_connections_closed_total", &[("reason", "evicted")]).unwrap();
    assert!(evicted > 0.0, "idle holders made room");
    stop.store(true, Ordering::Relaxed);
    for h in holders {
        h.abort();
    }
}

#[tokio::test]
async fn an_admin_connection_that_sends_nothing_is_closed_after_its_first_request_timeout() {
    use tokio::io::AsyncReadExt;
    let up = Upstream::start().await;
    let proxy = Proxy::launch(up.addr, &Setup::new().route("/*")).await;
    let mut silent = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(10 * SECOND, silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed: {read:?}");
    let took = started.elapsed();
    assert!(took >= 4 * SECOND && took < 8 * SECOND, "after about 5 s: {took:?}");
    assert_eq!(proxy.metric("unpoll_admin_connections_closed_total", &[("reason", "timeout")]).await, 1.0);
}
