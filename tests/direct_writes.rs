//! Events written by the topic straight to waiting subscribers' sockets (`topic::direct`):
//! each event arrives once and in order, whoever wrote it; the topic hands a subscriber back
//! to its own task when it must, and the task picks up exactly where the topic stopped.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

fn setup() -> Setup {
    Setup::stream("/doc").every("30ms")
}

/// Version `i`: a log that grows by one entry per version, so a patch applied twice, or one
/// missed, shows in the document.
fn version(i: u32, pad: usize) -> Value {
    json!({"v": i, "log": (0..i).collect::<Vec<_>>(), "pad": "p".repeat(pad)})
}

/// The version in an event id `<epoch>-<version>`.
fn version_of(id: &str) -> u64 {
    id.rsplit_once('-').and_then(|(_, v)| v.parse().ok()).expect("an event id")
}

/// Publishes versions `1..=n` one by one, each read by an SSE and a WebSocket subscriber
/// before the next: every event must follow the previous one by exactly one version, and
/// both clients' documents must be the upstream's.
async fn publish_and_check(up: &Upstream, sse: &mut Sse, ws: &mut Ws, n: u32) {
    let (mut sse_doc, mut ws_doc) = (Doc::new("json-patch"), Doc::new("json-patch"));
    let first = sse.next_event(5 * SECOND).await.unwrap();
    sse_doc.apply(first.kind(), first.json());
    let mut sse_last = version_of(first.id.as_deref().unwrap());
    let first = ws_event(ws, 5 * SECOND).await;
    ws_doc.apply(first["event"].as_str().unwrap(), first["data"].clone());
    let mut ws_last = version_of(first["id"].as_str().unwrap());
    for i in 1..=n {
        let doc = version(i, 100);
        up.set_json("/doc", &doc);
        let ev = sse.next_event(5 * SECOND).await.expect("an SSE event for each version");
        let v = version_of(ev.id.as_deref().unwrap());
        assert_eq!(v, sse_last + 1, "SSE: each version once, in order");
        sse_last = v;
        sse_doc.apply(ev.kind(), ev.json());
        assert_eq!(sse_doc.value.as_ref(), Some(&doc));
        let ev = ws_event(ws, 5 * SECOND).await;
        let v = version_of(ev["id"].as_str().unwrap());
        assert_eq!(v, ws_last + 1, "WebSocket: each version once, in order");
        ws_last = v;
        ws_doc.apply(ev["event"].as_str().unwrap(), ev["data"].clone());
        assert_eq!(ws_doc.value.as_ref(), Some(&doc));
    }
    // Nothing more comes: no event was written twice.
    assert!(sse.next_event(Duration::from_millis(300)).await.is_none(), "an SSE event came twice");
    assert!(ws_next(ws, Duration::from_millis(300)).await.is_none(), "a WebSocket event came twice");
}

#[tokio::test]
async fn events_to_waiting_subscribers_are_written_by_the_topic_each_once_in_order() {
    let up = Upstream::start().await;
    up.set_json("/doc", &version(0, 100));
    let proxy = Proxy::launch(up.addr, &setup()).await;
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    let (mut ws, _) = ws_connect(proxy.addr, "/doc", &[], &[]).await.unwrap();
    publish_and_check(&up, &mut sse, &mut ws, 20).await;
    // 40 deliveries, each made while its subscriber was waiting: the topic wrote them.
    let direct = proxy.metric("unpoll_direct_writes_total", &[]).await;
    assert!(direct >= 36.0, "{direct} of 40 events written by the topic");
    for protocol in ["sse", "websocket"] {
        let patches = proxy.metric("unpoll_events_sent_total", &[("protocol", protocol), ("kind", "patch")]).await;
        assert_eq!(patches, 20.0, "{protocol}");
    }
    assert_eq!(proxy.metric("unpoll_subscriber_lagged_total", &[]).await, 0.0);
}

#[tokio::test]
async fn a_subscriber_handed_back_every_other_event_skips_what_the_topic_wrote() {
    let up = Upstream::start().await;
    up.set_json("/doc", &version(0, 100));
    // A queue of 4 events: the topic hands each subscriber back after 2 written, and its
    // task must move past those 2 in the queue without sending them again.
    let proxy = Proxy::launch(up.addr, &setup().with("queue", 4)).await;
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    let (mut ws, _) = ws_connect(proxy.addr, "/doc", &[], &[]).await.unwrap();
    publish_and_check(&up, &mut sse, &mut ws, 16).await;
    let budget = proxy.metric("unpoll_direct_handbacks_total", &[("reason", "budget")]).await;
    assert!(budget >= 10.0, "handed back {budget} times for the budget");
    assert!(proxy.metric("unpoll_direct_writes_total", &[]).await >= 20.0);
    assert_eq!(proxy.metric("unpoll_subscriber_lagged_total", &[]).await, 0.0);
}

#[tokio::test]
async fn a_socket_that_fills_mid_event_gets_the_rest_and_then_every_later_event() {
    let up = Upstream::start().await;
    // A document of 1.4 MB whose last 400 KB change whole: each patch is about 400 KB (a
    // patch as large as the document would be sent as a snapshot instead).
    let big = |i: u32| {
        let mut doc = version(i, 1_000_000);
        doc["part"] = json!(char::from(b'a' + (i % 26) as u8).to_string().repeat(400_000));
        doc
    };
    up.set_json("/doc", &big(0));
    // Room for everything in the queues: the client must get every version, none skipped.
    let proxy = Proxy::launch(up.addr, &setup().with("queue", 10_000).with("queue_bytes", 64 << 20)).await;
    let mut slow = Sse::connect(proxy.addr, "/doc", &[]).await;
    let mut client = Doc::new("json-patch");
    let first = slow.next_event(5 * SECOND).await.unwrap();
    client.apply(first.kind(), first.json());
    let mut last = version_of(first.id.as_deref().unwrap());
    // The client stops reading while about 16 MB of patches pile up: the socket's buffers
    // fill, and an event is written only in part.
    for i in 1..=40 {
        up.set_json("/doc", &big(i));
        tokio::time::sleep(Duration::from_millis(35)).await;
    }
    let full = proxy.metric("unpoll_direct_handbacks_total", &[("reason", "full")]).await;
    assert!(full >= 1.0, "the socket never filled");
    // Polls may have seen two versions as one change; every change the proxy made arrives.
    while client.value.as_ref().map(|d| d["v"].clone()) != Some(json!(40)) {
        let ev = slow.next_event(10 * SECOND).await.expect("every version arrives");
        let v = version_of(ev.id.as_deref().unwrap());
        assert_eq!(v, last + 1, "each version once, in order");
        last = v;
        client.apply(ev.kind(), ev.json());
    }
    assert_eq!(client.value.as_ref().map(|d| d["v"].clone()), Some(json!(40)));
    assert_eq!(client.value.as_ref().map(|d| d["log"].as_array().unwrap().len()), Some(40));
    assert_eq!(proxy.metric("unpoll_subscriber_lagged_total", &[]).await, 0.0);
}

#[tokio::test]
async fn many_subscribers_of_one_topic_each_get_every_version_once() {
    let up = Upstream::start().await;
    up.set_json("/doc", &version(0, 100));
    let proxy = Proxy::launch(up.addr, &setup()).await;
    // More subscribers than a shard writes under the topic's lock: tasks of their own write
    // the shards.
    let mut subscribers = Vec::new();
    for _ in 0..40 {
        let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
        let first = sse.next_event(5 * SECOND).await.unwrap();
        let last = version_of(first.id.as_deref().unwrap());
        subscribers.push((sse, last));
    }
    for i in 1..=5 {
        up.set_json("/doc", &version(i, 100));
        for (sse, last) in &mut subscribers {
            let ev = sse.next_event(5 * SECOND).await.expect("every subscriber gets every version");
            let v = version_of(ev.id.as_deref().unwrap());
            assert_eq!(v, *last + 1, "each version once, in order");
            *last = v;
        }
    }
    let direct = proxy.metric("unpoll_direct_writes_total", &[]).await;
    assert!(direct >= 180.0, "{direct} of 200 events written by the topic");
}
