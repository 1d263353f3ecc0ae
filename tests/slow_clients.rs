//! Slow consumers: bounded queues, write timeouts, and no effect on everyone else.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

fn setup() -> Setup {
    Setup::stream("/doc").every("30ms")
}

/// Version `i` of a document of about 300 KB that changes almost whole, with a log that grows
/// (so a patch applied twice would show).
fn version(i: u32) -> Value {
    let big = char::from(b'a' + (i % 26) as u8).to_string().repeat(300_000);
    json!({"big": big, "log": (0..i).collect::<Vec<_>>(), "pad": "p".repeat(20_000)})
}

#[tokio::test]
async fn a_subscriber_past_queue_bytes_is_resynchronised_and_converges() {
    let up = Upstream::start().await;
    up.set_json("/doc", &version(0));
    let proxy = Proxy::launch(up.addr, &setup().with("queue", 10000).with("queue_bytes", 400000)).await;
    let mut slow = Sse::connect(proxy.addr, "/doc", &[]).await;
    let mut client = Doc::new("json-patch");
    let first = slow.next_event(5 * SECOND).await.unwrap();
    client.apply(first.kind(), first.json());
    for i in 1..=40 {
        up.set_json("/doc", &version(i));
        tokio::time::sleep(Duration::from_millis(35)).await;
    }
    let last = version(40);
    let mut received = 0;
    while client.value.as_ref() != Some(&last) {
        let ev = slow.next_event(10 * SECOND).await.expect("the slow client still receives events");
        client.apply(ev.kind(), ev.json());
        received += 1;
    }
    assert!(proxy.metric("unpoll_subscriber_lagged_total", &[("reason", "bytes")]).await >= 1.0);
    assert!(received < 40, "missed events were skipped, not replayed ({received} events)");
}

#[tokio::test]
async fn clients_that_accept_nothing_for_write_timeout_are_dropped() {
    let up = Upstream::start().await;
    up.set_json("/doc", &version(0));
    let proxy = Proxy::launch(up.addr, &setup().server("write_timeout", "500ms")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    let ws_req = "GET /doc HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut ws = RawConn::send(proxy.addr, ws_req.as_bytes()).await;
    assert_eq!((sse.conn.status, ws.status), (200, 101));
    // Neither client reads while the document changes by 300 KB every 35 ms.
    for i in 1..=60 {
        up.set_json("/doc", &version(i));
        tokio::time::sleep(Duration::from_millis(35)).await;
        if proxy.metric("unpoll_subscribers_dropped_total", &[("reason", "write_timeout")]).await >= 2.0 {
            break;
        }
    }
    assert!(
        eventually(5 * SECOND, || async {
            proxy.metric("unpoll_subscribers_dropped_total", &[("reason", "write_timeout")]).await >= 2.0
        })
        .await
    );
    for protocol in ["sse", "websocket"] {
        assert_eq!(proxy.metric("unpoll_subscribers", &[("protocol", protocol)]).await, 0.0, "{protocol}");
    }
    // Both connections were closed by the proxy: reading drains what was sent, then EOF.
    assert!(!sse.conn.read_until(10 * SECOND, |_| false).await && sse.conn.eof);
    assert!(!ws.read_until(10 * SECOND, |_| false).await && ws.eof);
}

#[tokio::test]
async fn a_stalled_client_does_not_delay_the_others() {
    let up = Upstream::start().await;
    up.set_json("/doc", &version(0));
    let proxy = Proxy::launch(up.addr, &setup().with("queue", 4)).await;
    let mut stalled = Sse::connect(proxy.addr, "/doc", &[]).await;
    stalled.next_event(5 * SECOND).await.unwrap();
    // Live clients read all the time, in their own tasks.
    let mut live = Vec::new();
    for n in 0..3 {
        let addr = proxy.addr;
        live.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            if n == 0 {
                let (mut ws, _) = ws_connect(addr, "/doc", &[], &[]).await.unwrap();
                while let Some(WsNext::Event(ev)) = ws_next(&mut ws, 3 * SECOND).await {
                    versions.push((ev["id"].as_str().unwrap().to_string(), ev["event"].as_str().unwrap().to_string()));
                }
            } else {
                let mut sse = Sse::connect(addr, "/doc", &[]).await;
                while let Some(ev) = sse.next_event(3 * SECOND).await {
                    versions.push((ev.id.clone().unwrap(), ev.kind().to_string()));
                }
            }
            versions
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 1..=40 {
        up.set_json("/doc", &version(i));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    for task in live {
        let versions = task.await.unwrap();
        let numbers: Vec<u64> = versions.iter().map(|(id, _)| id.split('-').nth(1).unwrap().parse().unwrap()).collect();
        assert!(numbers.len() >= 30, "a live client received {} events", numbers.len());
        // A resynchronisation skips versions (it happens only past `queue` events or
        // `queue_bytes` bytes): consecutive versions mean every event reached the live client.
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "a live client skipped versions: {numbers:?}");
    }
    // The stalled client wakes up: it skips what it missed and converges.
    let mut client = Doc::new("json-patch");
    client.value = Some(version(0));
    let last = version(40);
    while client.value.as_ref() != Some(&last) {
        let ev = stalled.next_event(10 * SECOND).await.expect("the stalled client is still subscribed");
        client.apply(ev.kind(), ev.json());
    }
    assert!(proxy.metric("unpoll_subscriber_lagged_total", &[]).await >= 1.0, "the stalled client lagged");
}
