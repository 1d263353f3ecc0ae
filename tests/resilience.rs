//! Resume, upstream failure and recovery, bad requests, and shutdown.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

fn setup() -> Setup {
    Setup::stream("/doc").every("100ms").upstream("timeout", "1s")
}

#[tokio::test]
async fn last_event_id_resumes_with_only_what_was_missed() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let proxy = Proxy::launch(up.addr, &setup().with("history", 2)).await;
    // A WebSocket subscriber keeps the topic alive and tells us each version's id.
    let (mut watcher, _) = ws_connect(proxy.addr, "/doc", &[], &[]).await.unwrap();
    let first = ws_event(&mut watcher, 5 * SECOND).await;
    let epoch = first["id"].as_str().unwrap().split('-').next().unwrap().to_string();
    // Someone reads merge patches too, so the topic computes them (for the resume below).
    let (mut merge_watcher, _) = ws_connect(proxy.addr, "/doc", &["unpoll.merge-patch"], &[]).await.unwrap();
    assert_eq!(ws_event(&mut merge_watcher, 5 * SECOND).await["event"], "snapshot");
    for v in 2..=4 {
        up.set_json("/doc", &doc(v));
        assert_eq!(ws_event(&mut watcher, 5 * SECOND).await["id"], format!("{epoch}-{v}"));
    }
    // Missed 3 and 4: SSE with Last-Event-ID gets exactly those patches.
    let mut sse = Sse::connect(proxy.addr, "/doc", &[("Last-Event-ID", &format!("{epoch}-2"))]).await;
    let mut client = Doc::new("json-patch");
    client.value = Some(doc(2));
    for v in 3..=4 {
        let ev = sse.next_event(5 * SECOND).await.unwrap();
        assert_eq!((ev.kind(), ev.id.clone().unwrap()), ("patch", format!("{epoch}-{v}")));
        client.apply(ev.kind(), ev.json());
    }
    assert_eq!(client.value, Some(doc(4)));
    // Up to date: nothing at all until the next change.
    let mut current = Sse::connect(proxy.addr, "/doc", &[("Last-Event-ID", &format!("{epoch}-4"))]).await;
    assert!(current.next_event(Duration::from_millis(400)).await.is_none());
    // WebSocket resumes through the query parameter.
    let path = format!("/doc?unpoll_last_event_id={epoch}-3");
    let (mut ws, _) = ws_connect(proxy.addr, &path, &["unpoll.merge-patch"], &[]).await.unwrap();
    let ev = ws_event(&mut ws, 5 * SECOND).await;
    assert_eq!((ev["event"].as_str(), ev["data"].clone()), (Some("patch"), json!({"v": 4})));
    // Too old for the history (2 events kept: 3 and 4; version 1 needs 2), or another epoch: a snapshot.
    for stale in [format!("{epoch}-1"), "ffffffff-3".to_string()] {
        let mut s = Sse::connect(proxy.addr, "/doc", &[("Last-Event-ID", &stale)]).await;
        let ev = s.next_event(5 * SECOND).await.unwrap();
        assert_eq!((ev.kind(), ev.json()), ("snapshot", doc(4)), "resume from {stale}");
    }
}

#[tokio::test]
async fn resuming_in_a_format_nobody_read_gets_one_snapshot() {
    // Only JSON Patch subscribers: merge patches were never computed, so a merge-patch resume
    // can't be served from the history; it gets the current document once, not one snapshot
    // per missed event.
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let proxy = Proxy::launch(up.addr, &setup().with("history", 8)).await;
    let mut watcher = Sse::connect(proxy.addr, "/doc", &[]).await;
    let first = watcher.next_event(5 * SECOND).await.unwrap();
    let epoch = first.id.unwrap().split('-').next().unwrap().to_string();
    for v in 2..=4 {
        up.set_json("/doc", &doc(v));
        assert_eq!(watcher.next_event(5 * SECOND).await.unwrap().kind(), "patch");
    }
    let resume = format!("{epoch}-2");
    let mut merge = Sse::connect(proxy.addr, "/doc?unpoll_format=merge-patch", &[("Last-Event-ID", &resume)]).await;
    let ev = merge.next_event(5 * SECOND).await.unwrap();
    assert_eq!((ev.kind(), ev.json(), ev.id.clone().unwrap()), ("snapshot", doc(4), format!("{epoch}-4")));
    assert!(merge.next_event(Duration::from_millis(400)).await.is_none(), "one snapshot, then nothing until a change");
    // From now on merge patches are computed for it.
    up.set_json("/doc", &doc(5));
    let ev = merge.next_event(5 * SECOND).await.unwrap();
    assert_eq!((ev.kind(), ev.json()), ("patch", json!({"v": 5})));
}

#[tokio::test]
async fn upstream_errors_are_reported_and_streams_recover() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let proxy = Proxy::launch(up.addr, &setup()).await;
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    let (mut ws, _) = ws_connect(proxy.addr, "/doc", &[], &[]).await.unwrap();
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
    ws_event(&mut ws, 5 * SECOND).await;

    up.set("/doc", 503, "text/plain", "maintenance");
    let err = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!(err.kind(), "error");
    assert!(err.id.is_none());
    let data = err.json();
    assert_eq!(
        (data["status"].as_u64(), data["error"].as_str(), data["retrying"].as_bool()),
        (Some(503), Some("upstream_unavailable"), Some(true))
    );
    let ws_err = ws_event(&mut ws, 5 * SECOND).await;
    assert_eq!((ws_err["event"].as_str(), ws_err["data"]["status"].as_u64()), (Some("error"), Some(503)));

    // Down altogether: connections refused.
    up.stop();
    let err = sse.next_event(10 * SECOND).await.unwrap();
    assert_eq!((err.kind(), err.json()["error"].as_str()), ("error", Some("upstream_unreachable")));

    // Back, with a changed body: the stream resumes with the whole document.
    up.set_json("/doc", &doc(2));
    up.restart().await;
    let back = sse.next_event(20 * SECOND).await.unwrap();
    assert_eq!((back.kind(), back.json()), ("snapshot", doc(2)));
    let ws_back = loop {
        let ev = ws_event(&mut ws, 20 * SECOND).await;
        if ev["event"] != "error" {
            break ev;
        }
    };
    assert_eq!((ws_back["event"].as_str(), ws_back["data"].clone()), (Some("snapshot"), doc(2)));
    up.set_json("/doc", &doc(3));
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().kind(), "patch", "patches again after recovery");
    assert!(proxy.metric("unpoll_upstream_polls_total", &[("outcome", "unreachable")]).await >= 1.0);
    assert!(proxy.metric("unpoll_upstream_polls_total", &[("outcome", "error_status")]).await >= 1.0);
}

#[tokio::test]
async fn a_slow_upstream_is_a_timeout_error() {
    // An upstream that accepts but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let proxy = Proxy::launch(addr, &setup().upstream("timeout", "300ms")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    let err = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!(
        (err.kind(), err.json()["status"].as_u64(), err.json()["error"].as_str()),
        ("error", Some(504), Some("upstream_timeout"))
    );
}

#[tokio::test]
async fn gone_resources_end_the_stream_after_an_error() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let proxy = Proxy::launch(up.addr, &setup()).await;
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    let (mut ws, _) = ws_connect(proxy.addr, "/doc", &[], &[]).await.unwrap();
    sse.next_event(5 * SECOND).await.unwrap();
    ws_event(&mut ws, 5 * SECOND).await;
    up.set("/doc", 404, "application/json", "{}");
    let err = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!(
        (err.kind(), err.json()["status"].as_u64(), err.json()["retrying"].as_bool()),
        ("error", Some(404), Some(false))
    );
    assert!(sse.next_event(5 * SECOND).await.is_none());
    assert!(sse.conn.finished, "the SSE response ended with its last chunk");
    assert_eq!(ws_event(&mut ws, 5 * SECOND).await["data"]["error"], "not_found");
    assert!(matches!(ws_next(&mut ws, 5 * SECOND).await, Some(WsNext::Close(Some(1000)))));
    // A subscriber arriving later starts afresh and is told the same.
    up.set("/doc", 401, "application/json", "{}");
    let mut late = Sse::connect(proxy.addr, "/doc", &[]).await;
    let ev = late.next_event(5 * SECOND).await.unwrap();
    assert_eq!((ev.kind(), ev.json()["error"].as_str()), ("error", Some("unauthorized")));
    assert!(late.next_event(5 * SECOND).await.is_none() && late.conn.finished);
}

#[tokio::test]
async fn bad_subscription_requests_get_a_clear_4xx_and_others_are_still_served() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let proxy = Proxy::launch(up.addr, &setup()).await;
    let mut good = Sse::connect(proxy.addr, "/doc", &[]).await;
    good.next_event(5 * SECOND).await.unwrap();

    let bad_format = Sse::connect(proxy.addr, "/doc?unpoll_format=yaml", &[]).await.conn.read_to_end(5 * SECOND).await;
    assert_eq!(bad_format.status, 400);
    assert_eq!(bad_format.json()["error"], "unknown_format");
    let bad_id =
        Sse::connect(proxy.addr, "/doc", &[("Last-Event-ID", "not an id")]).await.conn.read_to_end(5 * SECOND).await;
    assert_eq!((bad_id.status, bad_id.json()["error"].as_str()), (400, Some("bad_last_event_id")));
    match ws_connect(proxy.addr, "/doc", &["unpoll.yaml"], &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected 400, got {other:?}"),
    }
    let upgrade = |extra: &str| {
        format!("GET /doc HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n")
    };
    let no_key = RawConn::send(proxy.addr, upgrade("Sec-WebSocket-Version: 13\r\n").as_bytes())
        .await
        .read_to_end(5 * SECOND)
        .await;
    assert_eq!((no_key.status, no_key.json()["error"].as_str()), (400, Some("bad_upgrade")));
    let old = RawConn::send(
        proxy.addr,
        upgrade("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n").as_bytes(),
    )
    .await
    .read_to_end(5 * SECOND)
    .await;
    assert_eq!((old.status, old.header("sec-websocket-version")), (426, Some("13")));
    assert_eq!(proxy.metric("unpoll_requests_rejected_total", &[("reason", "bad_upgrade")]).await, 2.0);
    assert_eq!(up.count("/doc"), up.seen("/doc").len());
    // Everyone else is still served.
    up.set_json("/doc", &doc(2));
    assert_eq!(good.next_event(5 * SECOND).await.unwrap().kind(), "patch");
    let mut fresh = Sse::connect(proxy.addr, "/doc", &[]).await;
    assert_eq!(fresh.next_event(5 * SECOND).await.unwrap().json(), doc(2));
}

#[tokio::test]
async fn sigterm_closes_streams_cleanly_and_exits_within_the_grace_period() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let mut proxy = Proxy::launch(up.addr, &setup().server("grace_period", "2s")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    let (mut ws, _) = ws_connect(proxy.addr, "/doc", &[], &[]).await.unwrap();
    sse.next_event(5 * SECOND).await.unwrap();
    ws_event(&mut ws, 5 * SECOND).await;
    let exit = tokio::spawn(async move {
        let r = proxy.terminate(Duration::from_secs(10)).await;
        (r, proxy)
    });
    assert!(matches!(ws_next(&mut ws, 3 * SECOND).await, Some(WsNext::Close(Some(1001)))), "WebSocket close 1001");
    assert!(sse.next_event(3 * SECOND).await.is_none());
    assert!(sse.conn.finished, "the SSE stream ended with its last chunk, not a reset");
    let (result, _proxy) = exit.await.unwrap();
    let (status, took) = result.expect("unpoll exited");
    assert!(status.success(), "{status:?}");
    assert!(took <= Duration::from_millis(2500), "exit took {took:?} with a 2 s grace period");
}

#[tokio::test]
async fn error_events_tell_clients_no_internals_and_the_log_tells_the_operator_once() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let proxy = Proxy::launch(up.addr, &setup().with("max_backoff", "200ms")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
    up.stop();
    let ev = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!(ev.kind(), "error");
    let data = ev.json();
    assert_eq!(data["error"], "upstream_unreachable");
    assert_eq!(data["message"], "the upstream could not be reached; retrying");
    let text = ev.data.unwrap();
    for internal in ["127.0.0.1", &up.addr.port().to_string(), "os error", "Connect", "addr"] {
        assert!(!text.contains(internal), "`{internal}` in what a client sees: {text}");
    }
    // Several failed polls later (every 200 ms at most), the operator has one line with the detail.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(proxy.metric("unpoll_upstream_polls_total", &[("outcome", "unreachable")]).await >= 4.0);
    let log = proxy.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("is failing")).collect();
    assert_eq!(lines.len(), 1, "one warning per outage: {lines:?}");
    assert!(lines[0].contains("WARN") && lines[0].contains(&up.addr.to_string()), "{}", lines[0]);
    up.restart().await;
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
    assert!(eventually(2 * SECOND, || async { proxy.log().contains("answers again") }).await);
}

#[tokio::test]
async fn a_lone_subscriber_reconnecting_within_linger_gets_only_what_it_missed() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let proxy = Proxy::launch(up.addr, &setup().with("linger", "3s")).await;
    for (protocol, format) in [("sse", "json-patch"), ("ws", "merge-patch")] {
        let path = format!("/doc?unpoll_format={format}&p={protocol}");
        // The only subscriber, reading for a while (longer than linger), then dropped.
        let mut sse = Sse::connect(proxy.addr, &path, &[]).await;
        let first = sse.next_event(5 * SECOND).await.unwrap();
        let epoch = first.id.unwrap().split('-').next().unwrap().to_string();
        up.set_json("/doc", &doc(2));
        let second = sse.next_event(5 * SECOND).await.unwrap();
        assert_eq!((second.kind(), second.id.clone()), ("patch", Some(format!("{epoch}-2"))));
        tokio::time::sleep(Duration::from_millis(3100)).await;
        drop(sse);
        // It misses a change while away.
        up.set_json("/doc", &doc(3));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let missed = format!("{epoch}-2");
        let (kind, id) = if protocol == "sse" {
            let mut again = Sse::connect(proxy.addr, &path, &[("Last-Event-ID", &missed)]).await;
            let ev = again.next_event(5 * SECOND).await.unwrap();
            (ev.kind().to_string(), ev.id.unwrap())
        } else {
            let resume = format!("{path}&unpoll_last_event_id={missed}");
            let (mut ws, _) = ws_connect(proxy.addr, &resume, &["unpoll.merge-patch"], &[]).await.unwrap();
            let ev = ws_event(&mut ws, 5 * SECOND).await;
            (ev["event"].as_str().unwrap().to_string(), ev["id"].as_str().unwrap().to_string())
        };
        assert_eq!((kind.as_str(), id), ("patch", format!("{epoch}-3")), "{protocol} {format}: only the missed change");
        up.set_json("/doc", &doc(1));
    }
}
