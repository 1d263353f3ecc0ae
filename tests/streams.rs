//! Subscriptions over SSE and WebSocket: snapshot then patches, formats, convergence,
//! heartbeats.

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

fn setup() -> Setup {
    Setup::stream("/doc/{id}")
}

#[tokio::test]
async fn sse_sends_a_snapshot_then_patches() {
    let up = Upstream::start().await;
    let pad = "p".repeat(100);
    up.set_json("/doc/1", &json!({"id": 1, "title": "a", "tags": ["x"], "pad": pad}));
    let proxy = Proxy::launch(up.addr, &setup().every("100ms")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    assert_eq!(sse.conn.status, 200);
    assert_eq!(sse.conn.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.conn.header("cache-control"), Some("no-cache"));
    let first = sse.next_block(5 * SECOND).await.unwrap();
    assert_eq!(first.retry.as_deref(), Some("2000"), "the stream opens with retry:");
    let snap = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!(snap.kind(), "snapshot");
    assert_eq!(snap.json(), json!({"id": 1, "title": "a", "tags": ["x"], "pad": pad}));
    let id = snap.id.clone().unwrap();
    let (epoch, version) = id.split_once('-').unwrap();
    assert_eq!(version, "1");

    up.set_json("/doc/1", &json!({"id": 1, "title": "b", "tags": ["x"], "pad": pad}));
    let patch = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!(patch.kind(), "patch");
    assert_eq!(patch.id.as_deref(), Some(format!("{epoch}-2").as_str()));
    assert_eq!(patch.json(), json!([{"op": "replace", "path": "/title", "value": "b"}]));
    // An unchanged body sends nothing (only keep-alives could come).
    assert!(sse.next_event(Duration::from_millis(500)).await.is_none());
    assert_eq!(proxy.metric("unpoll_events_sent_total", &[("protocol", "sse"), ("kind", "patch")]).await, 1.0);
    assert!(proxy.metric("unpoll_upstream_polls_total", &[("outcome", "unchanged")]).await >= 2.0);
}

#[tokio::test]
async fn a_format_gets_patches_from_its_first_subscriber_on() {
    // Patches are computed only for formats someone subscribes in: a merge-patch subscriber
    // joining a topic read only in JSON Patch so far gets its snapshot, then merge patches.
    let up = Upstream::start().await;
    up.set_json("/doc/1", &doc(1));
    let proxy = Proxy::launch(up.addr, &setup().every("100ms")).await;
    let mut json_patch = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    assert_eq!(json_patch.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
    up.set_json("/doc/1", &doc(2));
    assert_eq!(json_patch.next_event(5 * SECOND).await.unwrap().kind(), "patch");
    let mut merge = Sse::connect(proxy.addr, "/doc/1?unpoll_format=merge-patch", &[]).await;
    let snap = merge.next_event(5 * SECOND).await.unwrap();
    assert_eq!((snap.kind(), snap.json()), ("snapshot", doc(2)));
    up.set_json("/doc/1", &doc(3));
    let patch = merge.next_event(5 * SECOND).await.unwrap();
    assert_eq!((patch.kind(), patch.json()), ("patch", json!({"v": 3})));
    assert_eq!(json_patch.next_event(5 * SECOND).await.unwrap().kind(), "patch");
    // With the JSON Patch subscriber gone, the merge-patch one is still served patches.
    drop(json_patch);
    tokio::time::sleep(Duration::from_millis(300)).await;
    up.set_json("/doc/1", &doc(4));
    let patch = merge.next_event(5 * SECOND).await.unwrap();
    assert_eq!((patch.kind(), patch.json()), ("patch", json!({"v": 4})));
}

#[tokio::test]
async fn websocket_sends_a_snapshot_then_patches_in_the_chosen_format() {
    let up = Upstream::start().await;
    let pad = "p".repeat(100);
    up.set_json("/doc/1", &json!({"a": {"b": 1, "c": 2}, "pad": pad}));
    let proxy = Proxy::launch(up.addr, &setup().every("100ms")).await;
    let (mut ws, resp) = ws_connect(proxy.addr, "/doc/1", &["unpoll.merge-patch"], &[]).await.unwrap();
    assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "unpoll.merge-patch");
    let snap = ws_event(&mut ws, 5 * SECOND).await;
    assert_eq!(snap["event"], "snapshot");
    assert_eq!(snap["data"], json!({"a": {"b": 1, "c": 2}, "pad": pad}));
    assert!(snap["id"].as_str().unwrap().ends_with("-1"));
    up.set_json("/doc/1", &json!({"a": {"b": 1}, "pad": pad}));
    let patch = ws_event(&mut ws, 5 * SECOND).await;
    assert_eq!(patch["event"], "patch");
    assert_eq!(patch["data"], json!({"a": {"c": null}}));

    let (mut plain, resp) = ws_connect(proxy.addr, "/doc/1", &[], &[]).await.unwrap();
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    assert_eq!(ws_event(&mut plain, 5 * SECOND).await["data"], json!({"a": {"b": 1}, "pad": pad}));
    up.set_json("/doc/1", &json!({"a": {"b": 2}, "pad": pad}));
    let patch = ws_event(&mut plain, 5 * SECOND).await;
    assert_eq!(patch["data"], json!([{"op": "replace", "path": "/a/b", "value": 2}]), "json-patch by default");
    assert_eq!(proxy.metric("unpoll_subscribers", &[("protocol", "websocket")]).await, 2.0);
}

#[tokio::test]
async fn snapshot_format_sends_every_change_whole() {
    let up = Upstream::start().await;
    up.set_json("/doc/1", &json!({"n": 1}));
    let proxy = Proxy::launch(up.addr, &setup().every("100ms")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1?unpoll_format=snapshot", &[]).await;
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().json(), json!({"n": 1}));
    up.set_json("/doc/1", &json!({"n": 2}));
    let next = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!(next.kind(), "snapshot");
    assert_eq!(next.json(), json!({"n": 2}));
    assert_eq!(up.seen("/doc/1")[0].target, "/doc/1", "unpoll_* parameters are not sent upstream");
}

#[tokio::test]
async fn non_json_bodies_are_text_snapshots() {
    let up = Upstream::start().await;
    up.set("/doc/t", 200, "text/plain", "line one\nline two");
    let proxy = Proxy::launch(up.addr, &setup().every("100ms")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/t", &[]).await;
    let snap = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!(snap.kind(), "snapshot");
    assert_eq!(snap.json(), json!("line one\nline two"));
    up.set("/doc/t", 200, "text/plain", "line three");
    let next = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!((next.kind(), next.json()), ("snapshot", json!("line three")));
}

/// A random JSON document: objects, arrays, nulls, numbers, strings, a few levels deep.
fn random_doc(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth == 0 { 4 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.random_range(0..5)),
        2 => json!(["a", "b", "c"][rng.random_range(0..3)]),
        3 => json!(rng.random_bool(0.5)),
        4 | 5 => {
            let n = rng.random_range(0..5);
            Value::Object(
                (0..n)
                    .map(|i| (format!("k{}", (i * 7 + rng.random_range(0..3)) % 6), random_doc(rng, depth - 1)))
                    .collect(),
            )
        }
        _ => Value::Array((0..rng.random_range(0..6)).map(|_| random_doc(rng, depth - 1)).collect()),
    }
}

/// Mutates part of a document so that successive versions share structure.
fn mutate(rng: &mut StdRng, doc: &mut Value) {
    match doc {
        Value::Object(m) if !m.is_empty() && rng.random_bool(0.7) => {
            let key = m.keys().nth(rng.random_range(0..m.len())).unwrap().clone();
            if rng.random_bool(0.2) {
                m.remove(&key);
            } else {
                mutate(rng, m.get_mut(&key).unwrap());
            }
        }
        Value::Array(a) if !a.is_empty() && rng.random_bool(0.7) => {
            let i = rng.random_range(0..a.len());
            match rng.random_range(0..3) {
                0 => {
                    a.insert(i, random_doc(rng, 1));
                }
                1 => {
                    a.remove(i);
                }
                _ => mutate(rng, &mut a[i]),
            }
        }
        Value::Object(m) => {
            m.insert(format!("n{}", rng.random_range(0..4)), random_doc(rng, 2));
        }
        other => *other = random_doc(rng, 2),
    }
}

#[tokio::test]
async fn clients_converge_over_random_changes_in_every_format() {
    let up = Upstream::start().await;
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut doc = json!({"items": [1, 2, 3], "meta": {"v": 0}});
    up.set_json("/doc/r", &doc);
    let proxy = Proxy::launch(up.addr, &setup().every("40ms")).await;
    let mut sse: Vec<(Sse, Doc)> = Vec::new();
    for format in ["json-patch", "merge-patch", "snapshot"] {
        let s = Sse::connect(proxy.addr, &format!("/doc/r?unpoll_format={format}"), &[]).await;
        sse.push((s, Doc::new(format)));
    }
    let mut ws = Vec::new();
    for format in ["json-patch", "merge-patch", "snapshot"] {
        let (w, _) = ws_connect(proxy.addr, "/doc/r", &[&format!("unpoll.{format}")], &[]).await.unwrap();
        ws.push((w, Doc::new(format)));
    }
    for _ in 0..40 {
        for _ in 0..rng.random_range(1..4) {
            mutate(&mut rng, &mut doc);
        }
        if !doc.is_object() {
            doc = json!({"root": doc});
        }
        up.set_json("/doc/r", &doc);
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..90))).await;
    }
    // Every client, applying only what it received, ends with exactly the latest body.
    for (s, d) in sse.iter_mut() {
        while d.value.as_ref() != Some(&doc) {
            let ev = s
                .next_event(5 * SECOND)
                .await
                .unwrap_or_else(|| panic!("{} SSE client stuck at {:?}", d.format, d.value));
            d.apply(ev.kind(), ev.json());
        }
    }
    for (w, d) in ws.iter_mut() {
        while d.value.as_ref() != Some(&doc) {
            let ev = ws_event(w, 5 * SECOND).await;
            d.apply(ev["event"].as_str().unwrap(), ev["data"].clone());
        }
    }
    let patches = proxy.metric("unpoll_events_sent_total", &[("kind", "patch"), ("protocol", "sse")]).await;
    assert!(patches >= 20.0, "the changes went out mostly as patches ({patches})");
}

#[tokio::test]
async fn sse_heartbeats_are_comments() {
    let up = Upstream::start().await;
    up.set_json("/doc/1", &json!({}));
    let proxy = Proxy::launch(up.addr, &setup().every("1s").with("heartbeat", "200ms")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    sse.next_event(5 * SECOND).await.unwrap();
    let block = sse.next_block(2 * SECOND).await.unwrap();
    assert_eq!(block.comment.as_deref(), Some("keep-alive"));
    assert!(block.event.is_none());
}

#[tokio::test]
async fn websocket_clients_that_answer_pings_stay_and_silent_ones_are_dropped() {
    let up = Upstream::start().await;
    let pad = "p".repeat(100);
    up.set_json("/doc/1", &json!({"v": 1, "pad": pad}));
    let proxy = Proxy::launch(up.addr, &setup().every("100ms").with("heartbeat", "200ms")).await;
    // A live client: it reads all the time, and tungstenite answers pings while reading.
    let (mut live_ws, _) = ws_connect(proxy.addr, "/doc/1", &[], &[]).await.unwrap();
    let (tx, mut live) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(next) = ws_next(&mut live_ws, 60 * SECOND).await {
            let done = !matches!(next, WsNext::Event(_));
            let _ = tx.send(next);
            if done {
                break;
            }
        }
    });
    assert!(matches!(live.recv().await, Some(WsNext::Event(_))));
    // A silent client: handshake by hand, then never read or answer.
    let req = "GET /doc/1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut silent = RawConn::send(proxy.addr, req.as_bytes()).await;
    assert_eq!(silent.status, 101);
    assert_eq!(silent.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(live.try_recv().is_err(), "the live client is still open and idle");
    // The silent client got pings, then a close frame with 1008 (policy), then EOF.
    assert!(
        silent.read_until(3 * SECOND, |b| b.windows(2).any(|w| w == [0x88, 0x0e])).await,
        "no close frame: {:?}",
        silent.body
    );
    let close_at = silent.body.windows(2).position(|w| w == [0x88, 0x0e]).unwrap();
    assert_eq!(&silent.body[close_at + 2..close_at + 4], &1008u16.to_be_bytes());
    assert!(silent.body.windows(8).any(|w| w == b"\x89\x06unpoll"), "pings were sent");
    // Counted as the subscriber ends, just after its close frame is written.
    let dropped = || proxy.metric("unpoll_subscribers_dropped_total", &[("reason", "ping_timeout")]);
    assert!(eventually(5 * SECOND, || async { dropped().await == 1.0 }).await, "{} drops", dropped().await);
    up.set_json("/doc/1", &json!({"v": 2, "pad": pad}));
    loop {
        match tokio::time::timeout(5 * SECOND, live.recv()).await.ok().flatten() {
            Some(WsNext::Event(ev)) if ev["event"] == "patch" => break,
            Some(WsNext::Event(_)) => continue,
            other => panic!("the live client lost its stream: {other:?}"),
        }
    }
}

#[tokio::test]
async fn polls_are_conditional_on_the_etag() {
    let up = Upstream::start().await;
    let pad = "p".repeat(100);
    up.set_json_etag("/doc/1", &json!({"v": 1, "pad": pad}), "\"v1\"");
    let proxy = Proxy::launch(up.addr, &setup().every("100ms")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().json()["v"], 1);
    assert!(eventually(5 * SECOND, || async { up.count("/doc/1") >= 3 }).await);
    let seen = up.seen("/doc/1");
    assert_eq!(seen[0].header("if-none-match"), None);
    assert_eq!(seen[1].header("if-none-match"), Some("\"v1\""));
    assert!(proxy.metric("unpoll_upstream_polls_total", &[("outcome", "not_modified")]).await >= 1.0);
    up.set_json_etag("/doc/1", &json!({"v": 2, "pad": pad}), "\"v2\"");
    let patch = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!(patch.json(), json!([{"op": "replace", "path": "/v", "value": 2}]));
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_resynchronised_and_converges() {
    let up = Upstream::start().await;
    let pad = "p".repeat(20_000);
    // 300 KB that changes whole with each version.
    let big = |i: u32| -> String { char::from(b'a' + (i % 26) as u8).to_string().repeat(300_000) };
    let mut log: Vec<u32> = Vec::new();
    let mut doc = json!({"big": big(99), "log": log, "pad": pad});
    up.set_json("/doc/big", &doc);
    let proxy = Proxy::launch(up.addr, &setup().every("30ms").with("queue", 2)).await;
    let mut slow = Sse::connect(proxy.addr, "/doc/big", &[]).await;
    let mut client = Doc::new("json-patch");
    let first = slow.next_event(5 * SECOND).await.unwrap();
    client.apply(first.kind(), first.json());
    // The client stops reading while ~30 MB of changes pile up: socket buffers fill, the
    // proxy's write blocks, and the subscriber falls more than `queue` events behind.
    for i in 0..60 {
        log.push(i);
        doc = json!({"big": big(i), "log": log, "pad": pad});
        up.set_json("/doc/big", &doc);
        tokio::time::sleep(Duration::from_millis(35)).await;
    }
    let mut kinds = Vec::new();
    while client.value.as_ref() != Some(&doc) {
        let ev = slow.next_event(10 * SECOND).await.expect("the slow client still receives events");
        kinds.push(ev.kind().to_string());
        client.apply(ev.kind(), ev.json());
    }
    assert!(proxy.metric("unpoll_subscriber_lagged_total", &[]).await >= 1.0, "the client never lagged: {kinds:?}");
    assert!(kinds.len() < 60, "missed events were skipped, not replayed ({} events)", kinds.len());
}

#[tokio::test]
async fn the_readmes_example_shows_a_snapshot_then_a_patch() {
    let up = Upstream::start().await;
    up.set("/orders/42", 200, "application/json", r#"{"id":42,"status":"packed"}"#);
    let body = &Setup::stream("/orders/{id}").every("100ms").body();
    let proxy = Proxy::start(up.addr, body).await;
    let mut sse = Sse::connect(proxy.addr, "/orders/42", &[]).await;
    let snapshot = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!((snapshot.kind(), snapshot.data.as_deref()), ("snapshot", Some(r#"{"id":42,"status":"packed"}"#)));
    up.set("/orders/42", 200, "application/json", r#"{"id":42,"status":"shipped"}"#);
    let patch = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!(
        (patch.kind(), patch.data.as_deref()),
        ("patch", Some(r#"[{"op":"replace","path":"/status","value":"shipped"}]"#)),
        "as the README shows it"
    );
    let readme = include_str!("../README.md");
    assert!(readme.contains(r#"data: [{"op":"replace","path":"/status","value":"shipped"}]"#));
}
