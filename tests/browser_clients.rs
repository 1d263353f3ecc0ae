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
    assert_eq!(
        proxy.metric("unpoll_subscribers_dropped_total", &[("route", "/me"), ("reason", "unauthenticated")]).await,
        4.0
    );
    // A token in the URL (or a header) needs no first message.
    let (mut direct, _) = ws_connect(proxy.addr, &format!("/me?access_token={BOB}"), &[], &[]).await.unwrap();
    assert_eq!(ws_event(&mut direct, 5 * SECOND).await["data"], json!({"user": "bob"}));
}
