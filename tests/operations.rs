//! What an operator asks a running unpoll: `GET /status`, the savings counters, the access
//! log and JSON log lines.

mod support;

use serde_json::{json, Value};
use support::*;

const SECRET: &str = "sekrit-alice-4f2a";

async fn status(proxy: &Proxy) -> (Value, String) {
    let r = http_get(proxy.admin, "/status").await.expect("admin answers");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let text = String::from_utf8(r.body).unwrap();
    (serde_json::from_str(&text).unwrap(), text)
}

fn topic<'a>(status: &'a Value, route: &str, target: &str) -> &'a Value {
    let route = status["routes"].as_array().unwrap().iter().find(|r| r["route"] == route).expect("the route");
    route["topics"].as_array().unwrap().iter().find(|t| t["target"] == target).unwrap_or_else(|| panic!("{status:#}"))
}

#[tokio::test]
async fn status_shows_each_topic_its_subscribers_last_poll_version_and_error_and_no_credential() {
    let up = Upstream::start().await;
    up.set_json("/items/a", &json!({"n": 1}));
    up.set("/items/b", 503, "application/json", "{}");
    let setup = Setup::stream("/items/*").every("100ms");
    let proxy = Proxy::launch(up.addr, &setup).await;
    let auth = format!("Bearer {SECRET}");
    let headers = [("Authorization", auth.as_str())];
    let mut sse = Sse::connect(proxy.addr, "/items/a?unpoll_format=merge-patch", &headers).await;
    let first = sse.next_event(5 * SECOND).await.unwrap();
    let (mut ws, _) = ws_connect(proxy.addr, "/items/a", &[], &headers).await.unwrap();
    ws_event(&mut ws, 5 * SECOND).await;
    let mut failing = Sse::connect(proxy.addr, "/items/b", &[]).await;
    assert_eq!(failing.next_event(5 * SECOND).await.unwrap().kind(), "error");

    let (s, text) = status(&proxy).await;
    assert!(!text.contains(SECRET) && !text.contains("Bearer"), "a credential in /status:\n{text}");
    assert_eq!(s["config_generation"], 1);
    assert_eq!(s["cluster"], Value::Null);
    assert_eq!(s["topics"], 2);
    assert_eq!(s["subscribers"], 3);
    assert!(s["version"].as_str().is_some_and(|v| !v.is_empty()) && s["commit"].is_string());
    let items = s["routes"].as_array().unwrap().iter().find(|r| r["route"] == "/items/*").unwrap();
    assert_eq!((items["topic_count"].clone(), items["subscribers"].clone()), (json!(2), json!(3)));
    let a = topic(&s, "/items/*", "/items/a");
    assert_eq!(a["subscribers"], json!({"total": 2, "sse": 1, "websocket": 1}));
    assert_eq!(a["formats"], json!({"json-patch": 1, "merge-patch": 1, "snapshot": 0}));
    assert_eq!(a["role"], "local");
    assert_eq!(a["error"], Value::Null);
    assert_eq!(a["version"].as_str(), first.id.as_deref(), "the version subscribers were sent");
    let outcome = a["last_poll"]["outcome"].as_str().unwrap();
    assert!(["changed", "unchanged"].contains(&outcome), "{outcome}");
    assert!(a["last_poll"]["ago_seconds"].as_f64().unwrap() < 2.0);
    let hash = a["hash"].as_str().unwrap();
    assert_eq!(hash.len(), 8);
    assert_eq!(a["topic"], format!("/items/* /items/a #{hash}"));
    let b = topic(&s, "/items/*", "/items/b");
    assert_eq!(b["error"], "upstream_unavailable");
    assert_eq!(b["last_poll"]["outcome"], "error_status");
    assert_eq!(b["version"], Value::Null);

    // Another credential is another topic, told apart by its hash alone.
    let other = [("Authorization", "Bearer someone-else")];
    let mut bob = Sse::connect(proxy.addr, "/items/a", &other).await;
    bob.next_event(5 * SECOND).await.unwrap();
    let (s, _) = status(&proxy).await;
    let route = s["routes"].as_array().unwrap().iter().find(|r| r["route"] == "/items/*").unwrap();
    let hashes: Vec<&str> = route["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["target"] == "/items/a")
        .map(|t| t["hash"].as_str().unwrap())
        .collect();
    assert_eq!(hashes.len(), 2);
    assert_ne!(hashes[0], hashes[1]);
    drop((sse, ws));
}

/// Two readings of the metrics the savings follow, taken where no poll fell between the
/// families.
async fn savings(proxy: &Proxy, route: &str) -> (f64, f64, f64) {
    loop {
        let text = proxy.metrics().await;
        let polls: f64 = ["changed", "unchanged"]
            .iter()
            .map(|o| metric_value(&text, "unpoll_upstream_polls_total", &[("route", route), ("outcome", o)]).unwrap())
            .sum();
        let requests = metric_value(&text, "unpoll_upstream_requests_saved_total", &[("route", route)]).unwrap();
        let bytes = metric_value(&text, "unpoll_bytes_saved_total", &[("route", route)]).unwrap();
        let again = proxy.metrics().await;
        let polls_again: f64 = ["changed", "unchanged"]
            .iter()
            .map(|o| metric_value(&again, "unpoll_upstream_polls_total", &[("route", route), ("outcome", o)]).unwrap())
            .sum();
        if polls == polls_again {
            return (polls, requests, bytes);
        }
    }
}

#[tokio::test]
async fn savings_count_the_polls_and_bodies_subscribers_would_have_cost() {
    let up = Upstream::start().await;
    let body = json!({"padding": "x".repeat(1000)});
    let len = serde_json::to_vec(&body).unwrap().len() as f64;
    up.set_json("/doc", &body);
    let proxy = Proxy::launch(up.addr, &Setup::stream("/doc").every("200ms")).await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut s = Sse::connect(proxy.addr, "/doc", &[]).await;
        s.next_event(5 * SECOND).await.unwrap();
        subs.push(s);
    }
    // The three snapshots sent are more than the first polls saved: the counter stands still
    // until the polls saved make up for them, two polls later.
    let (joined, _, _) = savings(&proxy, "/doc").await;
    let made_up = eventually(5 * SECOND, || async { savings(&proxy, "/doc").await.0 >= joined + 3.0 }).await;
    assert!(made_up, "no polls");
    let (polls_a, requests_a, bytes_a) = savings(&proxy, "/doc").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (polls_b, requests_b, bytes_b) = savings(&proxy, "/doc").await;
    let polls = polls_b - polls_a;
    assert!(polls >= 4.0, "{polls} polls in 1.5 s at 200 ms");
    // Three subscribers would each have polled; unpoll polled once.
    assert_eq!(requests_b - requests_a, 2.0 * polls);
    // The document did not change: nothing more was sent, and every poll saved three bodies.
    assert_eq!(bytes_b - bytes_a, 3.0 * len * polls);
    // In all: what polling would have downloaded, less what was sent (three snapshots).
    let sent: f64 = proxy.metric("unpoll_sent_bytes_total", &[("route", "/doc"), ("protocol", "sse")]).await;
    let (polls, _, bytes) = savings(&proxy, "/doc").await;
    assert!(sent > 3.0 * len, "sent {sent}");
    assert!(bytes <= 3.0 * len * polls - sent && bytes > 3.0 * len * (polls - 3.0) - sent, "saved {bytes}");
    drop(subs);
}

#[tokio::test]
async fn the_access_log_names_each_request_and_subscription_without_tokens() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let up = Upstream::start().await;
    up.set_json("/plain", &json!({"ok": true}));
    up.set_user("Bearer t0ken-9d1c", &json!({"user": "alice"}));
    let setup = Setup::stream("/me")
        .every("100ms")
        .with("token", json!({"query": "access_token", "first_message": true}))
        .route("/plain")
        .server("access_log", true);
    let proxy = Proxy::start_args(up.addr, &setup.server_extra(), &setup.body(), &["--log-format", "json"]).await;
    let plain = http_get(proxy.addr, "/plain?unpoll_x=secret-ish&y=1").await.unwrap();
    assert_eq!(plain.status, 200);
    assert_eq!(http_get(proxy.addr, "/nowhere").await.unwrap().status, 404);
    let mut sse = Sse::connect(proxy.addr, "/me?access_token=t0ken-9d1c&unpoll_format=merge-patch", &[]).await;
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().json(), json!({"user": "alice"}));
    drop(sse);
    // A WebSocket that sends its token in its first message, and one that never does.
    let (mut ws, _) = ws_connect(proxy.addr, "/me", &["unpoll.snapshot"], &[]).await.unwrap();
    let auth = json!({"type": "auth", "token": "t0ken-9d1c"}).to_string();
    ws.send(Message::Text(auth.into())).await.unwrap();
    assert_eq!(ws_event(&mut ws, 5 * SECOND).await["data"], json!({"user": "alice"}));
    ws.close(None).await.unwrap();
    let (mut silent, _) = ws_connect(proxy.addr, "/me", &[], &[]).await.unwrap();
    silent.send(Message::Text("hello".into())).await.unwrap();
    assert!(matches!(ws_next(&mut silent, 5 * SECOND).await, Some(WsNext::Close(Some(1008)))));
    let lines = || -> Vec<Value> {
        proxy
            .log()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
            .collect()
    };
    let ended = eventually(5 * SECOND, || async {
        lines().iter().filter(|l| l["target"] == "unpoll::access" && l["kind"] == "subscribe").count() == 3
    })
    .await;
    assert!(ended, "{}", proxy.log());
    let log = proxy.log();
    assert!(!log.contains("t0ken-9d1c") && !log.contains("secret-ish"), "a secret in the log:\n{log}");
    let access: Vec<Value> = lines().into_iter().filter(|l| l["target"] == "unpoll::access").collect();
    let of = |kind: &str| access.iter().find(|l| l["kind"] == kind).unwrap_or_else(|| panic!("{access:#?}")).clone();
    let proxied = of("proxy");
    assert_eq!(proxied["method"], "GET");
    assert_eq!(proxied["route"], "/plain");
    assert_eq!(proxied["status"], 200);
    assert_eq!(proxied["upstream"], up.addr.to_string());
    assert_eq!(proxied["bytes"], plain.body.len());
    assert_eq!(proxied["client"], "127.0.0.1");
    assert!(proxied["duration_ms"].as_f64().unwrap() >= 0.0);
    let local = of("local");
    assert_eq!((local["status"].clone(), local["route"].clone()), (json!(404), json!("")));
    let subs: Vec<&Value> = access.iter().filter(|l| l["kind"] == "subscribe").collect();
    let ws = subs.iter().find(|l| l["protocol"] == "websocket" && l["ended"] == "closed").expect("the WebSocket");
    assert_eq!((ws["status"].clone(), ws["format"].clone()), (json!(101), json!("snapshot")));
    assert!(ws["bytes"].as_u64().unwrap() > 0);
    assert!(subs.iter().any(|l| l["protocol"] == "websocket" && l["ended"] == "unauthenticated"), "{subs:#?}");
    let sub = subs.iter().find(|l| l["protocol"] == "sse").expect("the SSE stream");
    assert_eq!(sub["route"], "/me");
    assert_eq!(sub["protocol"], "sse");
    assert_eq!(sub["format"], "merge-patch");
    assert_eq!(sub["status"], 200);
    assert_eq!(sub["ended"], "closed");
    assert!(sub["bytes"].as_u64().unwrap() > 0);
    assert_eq!(sub["path"], "/me?unpoll_format=redacted");
    // Every line of the log is JSON, pingora's and unpoll's own.
    assert!(lines().iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("serving on"))));
}

#[tokio::test]
async fn credentials_in_query_strings_reach_no_log_line_and_no_status() {
    let up = Upstream::start().await;
    up.set_json("/plain", &json!({"ok": true}));
    up.set_json("/items/a", &json!({"n": 1}));
    let setup = Setup::stream("/me")
        .with("token", json!({"query": "access_token"}))
        .stream_route("/items/*")
        .route("/plain")
        .server("access_log", true);
    let proxy = Proxy::launch(up.addr, &setup).await;
    let secrets = ["s1-bad-path", "s2-no-route", "s3-encoded", "s4-api-key", "s5-signature", "s6-password"];
    // Refused before any route is known: the token parameter is still in the target.
    let bad = RawConn::send(proxy.addr, b"GET /a/%2e%2e%2fb?access_token=s1-bad-path HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(bad.await.read_to_end(5 * SECOND).await.status, 400);
    assert_eq!(http_get(proxy.addr, "/nowhere?access_token=s2-no-route").await.unwrap().status, 404);
    // Proxied, under an encoded name, beside names that look like credentials.
    let plain = http_get(proxy.addr, "/plain?access%5Ftoken=s3-encoded&api_key=s4-api-key&page=2").await.unwrap();
    assert_eq!(plain.status, 200);
    // A topic whose target carries a signature: /status names it without the value.
    let mut sse = Sse::connect(proxy.addr, "/items/a?X-Amz-Signature=s5-signature", &[]).await;
    sse.next_event(5 * SECOND).await.unwrap();
    let (s, text) = status(&proxy).await;
    topic(&s, "/items/*", "/items/a?X-Amz-Signature=redacted");
    // pingora's own error line for a request it could not proxy.
    up.stop();
    assert_eq!(http_get(proxy.addr, "/plain?password=s6-password").await.unwrap().status, 502);
    let wrote = |needle: &'static str| proxy.log().contains(needle);
    assert!(eventually(5 * SECOND, || async { wrote("password=redacted") }).await, "{}", proxy.log());
    let log = proxy.log();
    for secret in secrets {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        assert!(!text.contains(secret), "{secret} in /status:\n{text}");
    }
    for line in [
        "GET /a/%2e%2e%2fb?access_token=redacted 400",
        "GET /nowhere?access_token=redacted 404",
        "GET /plain?access%5Ftoken=redacted&api_key=redacted&page=2 200",
    ] {
        assert!(log.contains(line), "`{line}` not in:\n{log}");
    }
}

#[tokio::test]
async fn without_access_log_no_line_is_written_and_text_is_the_default_format() {
    let up = Upstream::start().await;
    up.set_json("/plain", &json!({"ok": true}));
    let proxy = Proxy::launch(up.addr, &Setup::new().route("/plain")).await;
    assert_eq!(http_get(proxy.addr, "/plain").await.unwrap().status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = proxy.log();
    assert!(!log.contains("unpoll::access"), "{log}");
    let serving = log.lines().find(|l| l.contains("serving on")).expect("the start line");
    assert!(serving.starts_with('[') && serving.contains(" INFO  unpoll] "), "{serving}");
}

#[tokio::test]
async fn polls_answered_slower_than_their_interval_are_counted_late() {
    let up = Upstream::start().await;
    up.set_json("/doc", &json!({"v": 1}));
    // A 400 ms interval: a poll is late past 100 ms, well beyond a busy test machine's jitter.
    let proxy = Proxy::launch(up.addr, &Setup::stream("/doc").every("400ms")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    sse.next_event(5 * SECOND).await.unwrap();
    let late = || async { proxy.metric("unpoll_upstream_polls_late_total", &[("route", "/doc")]).await };
    tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
    assert!(up.count("/doc") >= 4, "polled on time");
    assert_eq!(late().await, 0.0, "a healthy upstream's polls are on time");
    // Each answer now takes three intervals: every poll after it is sent late.
    up.set_delay(std::time::Duration::from_millis(1200));
    assert!(eventually(10 * SECOND, || async { late().await >= 2.0 }).await, "late polls are counted");
    drop(sse);
}
