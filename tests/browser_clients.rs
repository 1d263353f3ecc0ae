//! What browsers need from a stream route: a token in the URL instead of a header
//! (`stream.token`), and cross-origin reads (`origins`: CORS headers and preflights).

mod support;

use serde_json::json;
use support::*;

const ALICE: &str = "alice-7c1e-token";
const BOB: &str = "bob-93ad-token";

fn setup() -> Setup {
    Setup::stream("/me")
        .every("100ms")
        .with("token", json!({"query": "access_token"}))
        .with("origins", json!(["http://app.example:3000"]))
}

async fn users(up: &Upstream) {
    up.set_user(&format!("Bearer {ALICE}"), &json!({"user": "alice"}));
    up.set_user(&format!("Bearer {BOB}"), &json!({"user": "bob"}));
}

#[tokio::test]
async fn a_query_token_becomes_the_header_splits_topics_and_leaves_the_url() {
    let up = Upstream::start().await;
    users(&up).await;
    let proxy = Proxy::start_args(up.addr, "", &setup().body(), &["--log-level", "debug"]).await;
    let mut alice = Sse::connect(proxy.addr, &format!("/me?access_token={ALICE}"), &[]).await;
    let mut bob = Sse::connect(proxy.addr, &format!("/me?x=1&access_token={BOB}"), &[]).await;
    assert_eq!(alice.next_event(5 * SECOND).await.unwrap().json(), json!({"user": "alice"}));
    assert_eq!(bob.next_event(5 * SECOND).await.unwrap().json(), json!({"user": "bob"}));
    let seen = up.seen("/me");
    for s in &seen {
        assert!(!s.target.contains("access_token"), "the token left the target: {}", s.target);
    }
    let auth: Vec<Option<&str>> = seen.iter().map(|s| s.header("authorization")).collect();
    assert!(auth.contains(&Some(&format!("Bearer {ALICE}"))) && auth.contains(&Some(&format!("Bearer {BOB}"))));
    assert!(seen.iter().any(|s| s.target == "/me?x=1"), "other parameters stay");
    // Two topics: one per token.
    assert!(eventually(5 * SECOND, || async { proxy.metric("unpoll_topics", &[]).await == 2.0 }).await);
    // A real header wins over the parameter.
    let mut both =
        Sse::connect(proxy.addr, &format!("/me?access_token={BOB}"), &[("Authorization", &format!("Bearer {ALICE}"))])
            .await;
    assert_eq!(both.next_event(5 * SECOND).await.unwrap().json(), json!({"user": "alice"}));
    // The plain GET of the route too.
    let plain = http_get(proxy.addr, &format!("/me?access_token={BOB}")).await.unwrap();
    assert_eq!((plain.status, plain.json()), (200, json!({"user": "bob"})));
    let log = proxy.log();
    assert!(log.contains("polls"), "the debug log names topics: {log}");
    for token in [ALICE, BOB] {
        assert!(!log.contains(token), "a token in the log:\n{log}");
    }
    let bad = RawConn::send(
        proxy.addr,
        b"GET /me?access_token=%0d%0aX-Evil:%201 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await
    .read_to_end(5 * SECOND)
    .await;
    assert_eq!((bad.status, bad.json()["error"].as_str()), (400, Some("bad_token")));
}

#[tokio::test]
async fn an_allowed_origin_can_read_why_it_was_refused() {
    let up = Upstream::start().await;
    users(&up).await;
    let proxy = Proxy::launch(up.addr, &setup().with("max_subscribers", 1)).await;
    let origin = "http://app.example:3000";
    let first = Sse::connect(proxy.addr, &format!("/me?access_token={ALICE}"), &[("Origin", origin)]).await;
    assert_eq!(first.conn.status, 200);
    let refused = |path: String, from: &'static str| async move {
        Sse::connect(proxy.addr, &path, &[("Origin", from)]).await.conn.read_to_end(5 * SECOND).await
    };
    // The topic is full, the format unknown, the token malformed: each refusal is readable.
    for (path, status, error) in [
        (format!("/me?access_token={ALICE}"), 503, "topic_full"),
        (format!("/me?access_token={ALICE}&unpoll_format=yaml"), 400, "unknown_format"),
        ("/me?access_token=%0d%0a".to_string(), 400, "bad_token"),
    ] {
        let r = refused(path.clone(), origin).await;
        assert_eq!((r.status, r.json()["error"].as_str()), (status, Some(error)), "{path}");
        assert_eq!(r.header("access-control-allow-origin"), Some(origin), "{path}");
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header("vary"), Some("Origin"));
        // Another origin's refusal is not readable.
        let other = refused(path.clone(), "http://evil.example").await;
        assert_eq!(other.header("access-control-allow-origin"), None, "{path}");
    }
    drop(first);
}

#[tokio::test]
async fn an_allowed_origin_may_read_streams_and_gets_and_preflights_are_answered() {
    let up = Upstream::start().await;
    users(&up).await;
    let proxy = Proxy::launch(up.addr, &setup().stream_route("/open").route("/*")).await;
    let origin = "http://app.example:3000";
    let sse = Sse::connect(proxy.addr, &format!("/me?access_token={ALICE}"), &[("Origin", origin)]).await;
    assert_eq!(sse.conn.status, 200);
    assert_eq!(sse.conn.header("access-control-allow-origin"), Some(origin));
    assert_eq!(sse.conn.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(sse.conn.header("vary"), Some("Origin"));
    let request = format!("GET /me?access_token={ALICE} HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\r\n");
    let get = RawConn::send(proxy.addr, request.as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!((get.status, get.header("access-control-allow-origin")), (200, Some(origin)));
    assert_eq!(get.header("access-control-allow-credentials"), Some("true"));
    let preflight = |from: &str| {
        format!(
            "OPTIONS /me HTTP/1.1\r\nHost: x\r\nOrigin: {from}\r\nAccess-Control-Request-Method: GET\r\n\
             Access-Control-Request-Headers: last-event-id\r\n\r\n"
        )
    };
    let ok = RawConn::send(proxy.addr, preflight(origin).as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!((ok.status, ok.header("access-control-allow-origin")), (204, Some(origin)));
    assert!(ok.header("access-control-allow-headers").is_some_and(|h| h.contains("last-event-id")));
    let evil = "http://evil.example";
    let no = RawConn::send(proxy.addr, preflight(evil).as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!((no.status, no.header("access-control-allow-origin")), (403, None));
    let refused = Sse::connect(proxy.addr, "/me", &[("Origin", evil)]).await.conn.read_to_end(5 * SECOND).await;
    assert_eq!((refused.status, refused.header("access-control-allow-origin")), (403, None));
    // A route without `origins` sends no CORS headers.
    up.set_json("/open", &doc(1));
    let open = Sse::connect(proxy.addr, "/open", &[("Origin", origin)]).await;
    assert_eq!((open.conn.status, open.conn.header("access-control-allow-origin")), (200, None));
}

/// A client's text frame (masked, as clients must), of under 126 bytes.
fn client_text_frame(text: &str) -> Vec<u8> {
    assert!(text.len() < 126);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn an_auth_message_sent_in_the_same_write_as_the_handshake_is_not_lost() {
    let up = Upstream::start().await;
    users(&up).await;
    let setup = Setup::stream("/me").every("100ms").with("token", json!({"first_message": true, "timeout": "2s"}));
    let proxy = Proxy::launch(up.addr, &setup).await;
    let handshake = "GET /me HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut request = handshake.as_bytes().to_vec();
    request.extend(client_text_frame(&json!({"type": "auth", "token": ALICE}).to_string()));
    // One write: the head and the first frame reach the proxy in the same segment.
    let mut conn = RawConn::send(proxy.addr, &request).await;
    assert_eq!(conn.status, 101);
    let alice = br#"{"user":"alice"}"#;
    let got = conn.read_until(5 * SECOND, |b| b.windows(alice.len()).any(|w| w == alice)).await;
    assert!(got, "the snapshot, not a 4401 close: {:?}", String::from_utf8_lossy(&conn.body));
    assert!(up.seen("/me").iter().all(|s| s.header("authorization") == Some(&format!("Bearer {ALICE}"))));
    let dropped = proxy.metric("unpoll_subscribers_dropped_total", &[("route", "/me"), ("reason", "unauthenticated")]);
    assert_eq!(dropped.await, 0.0);
}

#[tokio::test]
async fn a_star_lets_any_origin_read_without_credentials_and_null_only_when_listed() {
    let up = Upstream::start().await;
    users(&up).await;
    let star = json!(["*", "http://app.example:3000"]);
    let setup = Setup::stream("/me")
        .every("100ms")
        .with("token", json!({"query": "access_token"}))
        .with("origins", star)
        .stream_route("/sandboxed")
        .with("origins", json!(["null"]))
        .route("/*");
    let proxy = Proxy::launch(up.addr, &setup).await;
    let (app, evil) = ("http://app.example:3000", "http://evil.example");
    let bearer = format!("Bearer {ALICE}");
    // Another origin, carrying credentials the browser would add by itself: they are not used.
    let mut ambient = Sse::connect(proxy.addr, "/me", &[("Origin", evil), ("Authorization", &bearer)]).await;
    assert_eq!(ambient.conn.header("access-control-allow-origin"), Some("*"));
    assert_eq!(ambient.conn.header("access-control-allow-credentials"), None, "`*` never with credentials");
    let first = ambient.next_event(5 * SECOND).await.unwrap();
    assert_eq!((first.kind(), first.json()["status"].as_u64()), ("error", Some(401)), "served as anonymous");
    // A token the page chose to send (in the URL) still works from any origin.
    let mut token = Sse::connect(proxy.addr, &format!("/me?access_token={ALICE}"), &[("Origin", evil)]).await;
    assert_eq!(token.next_event(5 * SECOND).await.unwrap().json(), json!({"user": "alice"}));
    // WebSocket has no CORS: its ambient credentials are not used either.
    let (mut ws, response) =
        ws_connect(proxy.addr, "/me", &[], &[("origin", evil), ("authorization", &bearer)]).await.unwrap();
    assert_eq!(response.headers().get("access-control-allow-credentials"), None);
    let event = ws_event(&mut ws, 5 * SECOND).await;
    assert_eq!((event["event"].as_str(), event["data"]["status"].as_u64()), (Some("error"), Some(401)));
    // A listed origin keeps its credentials.
    let mut listed = Sse::connect(proxy.addr, "/me", &[("Origin", app), ("Authorization", &bearer)]).await;
    assert_eq!(listed.conn.header("access-control-allow-origin"), Some(app));
    assert_eq!(listed.conn.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(listed.next_event(5 * SECOND).await.unwrap().json(), json!({"user": "alice"}));
    // Plain GETs and preflights say the same.
    let get =
        |origin: &str| format!("GET /me HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAuthorization: {bearer}\r\n\r\n");
    let r = RawConn::send(proxy.addr, get(evil).as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!(
        (r.header("access-control-allow-origin"), r.header("access-control-allow-credentials")),
        (Some("*"), None)
    );
    let preflight =
        format!("OPTIONS /me HTTP/1.1\r\nHost: x\r\nOrigin: {evil}\r\nAccess-Control-Request-Method: GET\r\n\r\n");
    let r = RawConn::send(proxy.addr, preflight.as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!((r.status, r.header("access-control-allow-origin")), (204, Some("*")));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    // `null` (sandboxed frames, files) is not covered by `*`; listed literally, it reads without credentials.
    let null = Sse::connect(proxy.addr, "/me", &[("Origin", "null")]).await.conn.read_to_end(5 * SECOND).await;
    assert_eq!((null.status, null.header("access-control-allow-origin")), (403, None));
    let r = RawConn::send(proxy.addr, get("null").as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!(r.header("access-control-allow-origin"), None, "a GET from null on a `*` route");
    up.set_json("/sandboxed", &doc(1));
    let sandboxed = Sse::connect(proxy.addr, "/sandboxed", &[("Origin", "null")]).await;
    assert_eq!(sandboxed.conn.status, 200);
    assert_eq!(sandboxed.conn.header("access-control-allow-origin"), Some("null"));
    assert_eq!(sandboxed.conn.header("access-control-allow-credentials"), None);
}

#[tokio::test]
async fn every_answer_of_a_route_with_origins_varies_on_origin() {
    let up = Upstream::start().await;
    users(&up).await;
    up.set_json("/plain", &doc(1));
    let proxy = Proxy::launch(up.addr, &setup().route("/*")).await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    // No Origin at all: a shared cache must still not serve this copy to a page that sends one.
    let r = RawConn::send(proxy.addr, get(&format!("/me?access_token={ALICE}")).as_bytes())
        .await
        .read_to_end(5 * SECOND)
        .await;
    assert_eq!((r.status, r.header("vary")), (200, Some("Origin")));
    assert_eq!(r.header("access-control-allow-origin"), None);
    let sse = Sse::connect(proxy.addr, &format!("/me?access_token={ALICE}"), &[]).await;
    assert_eq!(sse.conn.header("vary"), Some("Origin"));
    let refused = Sse::connect(proxy.addr, "/me?unpoll_format=yaml", &[]).await.conn.read_to_end(5 * SECOND).await;
    assert_eq!((refused.status, refused.header("vary")), (400, Some("Origin")));
    let other =
        Sse::connect(proxy.addr, "/me", &[("Origin", "http://evil.example")]).await.conn.read_to_end(5 * SECOND).await;
    assert_eq!((other.status, other.header("vary")), (403, Some("Origin")));
    // A route without origins adds nothing.
    let plain = RawConn::send(proxy.addr, get("/plain").as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!((plain.status, plain.header("vary")), (200, None));
}

#[tokio::test]
async fn a_token_must_name_a_header_that_splits_topics() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unpoll.yaml");
    let body = Setup::stream("/me")
        .with("token", json!({"query": "t", "header": "x-api-key"}))
        .stream_route("/pub")
        .with("share", "public")
        .with("token", json!({"query": "t"}))
        .stream_route("/none")
        .with("token", json!({}))
        .body();
    std::fs::write(&path, config_text(up.addr, up.addr, up.addr, "", &body)).unwrap();
    let out = unpoll_command(None).args(["check", "-c"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    for expected in ["routes[0].stream.token.header", "routes[1].stream.token.header", "routes[2].stream.token"] {
        assert!(text.contains(expected), "{expected} not in:\n{text}");
    }
}

#[tokio::test]
async fn a_websocket_may_send_its_token_as_its_first_message_and_nothing_starts_before() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let up = Upstream::start().await;
    users(&up).await;
    let setup = Setup::stream("/me")
        .every("100ms")
        .with("token", json!({"query": "access_token", "first_message": true, "timeout": "500ms"}));
    let proxy = Proxy::launch(up.addr, &setup).await;
    let (mut ws, _) = ws_connect(proxy.addr, "/me", &[], &[]).await.expect("the 101 comes at once");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(up.count("/me"), 0, "nothing is polled before the auth message");
    let auth = json!({"type": "auth", "token": ALICE}).to_string();
    ws.send(Message::Text(auth.into())).await.unwrap();
    let first = ws_event(&mut ws, 5 * SECOND).await;
    assert_eq!((first["event"].as_str(), first["data"].clone()), (Some("snapshot"), json!({"user": "alice"})));
    let seen = up.seen("/me");
    assert!(seen.iter().all(|s| s.header("authorization") == Some(&format!("Bearer {ALICE}"))), "as the header would");
    // Late, malformed, or not text: closed, with nothing polled for them.
    let (mut late, _) = ws_connect(proxy.addr, "/me", &[], &[]).await.unwrap();
    assert!(matches!(ws_next(&mut late, 5 * SECOND).await, Some(WsNext::Close(Some(4401)))));
    for bad in [
        Message::Text("hello".into()),
        Message::Text(r#"{"type":"auth","token":""}"#.into()),
        Message::Binary(vec![1].into()),
    ] {
        let (mut ws, _) = ws_connect(proxy.addr, "/me", &[], &[]).await.unwrap();
        ws.send(bad.clone()).await.unwrap();
        assert!(matches!(ws_next(&mut ws, 5 * SECOND).await, Some(WsNext::Close(Some(1008)))), "{bad:?}");
    }
    let polled = up.seen("/me");
    assert!(polled.iter().all(|s| s.header("authorization").is_some()), "no poll without a credential");
    // The last close may reach the client before its drop is counted.
    let dropped = || async {
        proxy.metric("unpoll_subscribers_dropped_total", &[("route", "/me"), ("reason", "unauthenticated")]).await
    };
    assert!(eventually(5 * SECOND, || async { dropped().await == 4.0 }).await, "{} drops", dropped().await);
    // A token in the URL (or a header) needs no first message.
    let (mut direct, _) = ws_connect(proxy.addr, &format!("/me?access_token={BOB}"), &[], &[]).await.unwrap();
    assert_eq!(ws_event(&mut direct, 5 * SECOND).await["data"], json!({"user": "bob"}));
}
