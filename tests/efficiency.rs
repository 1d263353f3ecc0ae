//! Upstream efficiency: conditional polls, unchanged bodies, backoff, Retry-After, per-upstream
//! limits, and Cache-Control.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

fn setup() -> Setup {
    Setup::stream("/doc/{id}").every("100ms")
}

#[tokio::test]
async fn polls_are_conditional_on_last_modified() {
    let up = Upstream::start().await;
    let date = "Sun, 22 Nov 2026 10:00:00 GMT";
    up.set_with_headers("/doc/1", 200, &doc(1), &[("last-modified", date)]);
    let proxy = Proxy::launch(up.addr, &setup()).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    sse.next_event(5 * SECOND).await.unwrap();
    assert!(eventually(5 * SECOND, || async { up.count("/doc/1") >= 3 }).await);
    let seen = up.seen("/doc/1");
    assert_eq!(seen[0].header("if-modified-since"), None);
    assert_eq!(seen[1].header("if-modified-since"), Some(date));
    assert!(proxy.metric("unpoll_upstream_polls_total", &[("outcome", "not_modified")]).await >= 1.0);
    assert!(sse.next_event(Duration::from_millis(300)).await.is_none(), "a 304 sends nothing");
}

#[tokio::test]
async fn identical_bytes_are_not_parsed_and_equivalent_json_sends_nothing() {
    let up = Upstream::start().await;
    up.set("/doc/1", 200, "application/json", r#"{"a": 1, "b": [1, 2]}"#);
    let proxy = Proxy::launch(up.addr, &setup()).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    sse.next_event(5 * SECOND).await.unwrap();
    assert!(
        eventually(5 * SECOND, || async {
            proxy.metric("unpoll_upstream_polls_total", &[("outcome", "unchanged")]).await >= 3.0
        })
        .await
    );
    assert_eq!(proxy.metric("unpoll_upstream_polls_total", &[("outcome", "equivalent")]).await, 0.0);
    // Other bytes, same JSON: parsed, found equal, nothing sent.
    up.set("/doc/1", 200, "application/json", "{\n  \"a\": 1,\n  \"b\": [1, 2]\n}");
    assert!(
        eventually(5 * SECOND, || async {
            proxy.metric("unpoll_upstream_polls_total", &[("outcome", "equivalent")]).await >= 1.0
        })
        .await
    );
    assert!(sse.next_event(Duration::from_millis(300)).await.is_none());
}

// The schedule itself (backoff doubling to max_backoff, Retry-After, Cache-Control max-age,
// linger, a reload's new interval) is tested in virtual time in `src/topic/poller_tests.rs`;
// these tests check what reaches clients and the upstream over real sockets.

#[tokio::test]
async fn a_failing_upstream_is_an_error_event_and_its_recovery_a_snapshot() {
    let up = Upstream::start().await;
    up.set("/doc/1", 500, "text/plain", "boom");
    let proxy = Proxy::launch(up.addr, &setup().with("max_backoff", "400ms")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    let err = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!((err.kind(), err.json()["status"].as_u64()), ("error", Some(500)));
    up.set_json("/doc/1", &doc(1));
    let back = sse.next_event(2 * SECOND).await.unwrap();
    assert_eq!(back.kind(), "snapshot", "recovered within max_backoff");
}

#[tokio::test]
async fn retry_after_is_honoured_on_503() {
    let up = Upstream::start().await;
    up.set_with_headers("/doc/1", 503, &json!({}), &[("retry-after", "2")]);
    let proxy = Proxy::launch(up.addr, &setup()).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    let err = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!(err.json()["status"], 503);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(up.count("/doc/1"), 1, "no poll before Retry-After (2 s) has passed");
    up.set_json("/doc/1", &doc(1));
    assert_eq!(sse.next_event(3 * SECOND).await.unwrap().kind(), "snapshot");
}

#[tokio::test]
async fn polls_per_upstream_are_limited() {
    let up = Upstream::start().await;
    up.set_delay(Duration::from_millis(200));
    let proxy = Proxy::launch(up.addr, &setup().upstream("max_concurrent_polls", 2)).await;
    let mut streams = Vec::new();
    for i in 0..6 {
        streams.push(Sse::connect(proxy.addr, &format!("/doc/{i}"), &[]).await);
    }
    for s in streams.iter_mut() {
        assert_eq!(s.next_event(10 * SECOND).await.unwrap().kind(), "snapshot");
    }
    assert_eq!(up.max_in_flight(), 2, "never more than max_concurrent_polls at once");
    assert!(proxy.metric("unpoll_upstream_poll_waits_total", &[("upstream", "app")]).await >= 1.0);
}

#[tokio::test]
async fn bodies_over_the_upstreams_max_body_are_errors() {
    let up = Upstream::start().await;
    up.set_json("/doc/1", &json!({"big": "x".repeat(5000)}));
    let proxy = Proxy::launch(up.addr, &setup().upstream("max_body", 4096)).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    let err = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!((err.kind(), err.json()["error"].as_str()), ("error", Some("upstream_body_too_large")));
    assert!(proxy.metric("unpoll_upstream_polls_total", &[("outcome", "too_large")]).await >= 1.0);
    up.set_json("/doc/1", &doc(1));
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().json(), doc(1));
}

#[tokio::test]
async fn a_topic_never_has_two_polls_in_flight() {
    let up = Upstream::start().await;
    up.set_json("/doc/1", &doc(1));
    up.set_delay(Duration::from_millis(250)); // slower than the 100 ms interval
    let proxy = Proxy::launch(up.addr, &setup()).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    sse.next_event(5 * SECOND).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(up.count("/doc/1") >= 3);
    assert_eq!(up.max_in_flight(), 1);
}

#[tokio::test]
async fn array_id_sends_moves_for_reordered_rows() {
    let up = Upstream::start().await;
    let rows = |order: &[u32]| {
        let rows: Vec<_> =
            order.iter().map(|i| json!({"id": i, "name": format!("row {i}"), "pad": "p".repeat(40)})).collect();
        json!({"rows": rows})
    };
    up.set_json("/doc/1", &rows(&[1, 2, 3, 4, 5]));
    let proxy = Proxy::launch(up.addr, &setup().with("array_id", "id")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    let mut client = Doc::new("json-patch");
    let first = sse.next_event(5 * SECOND).await.unwrap();
    client.apply(first.kind(), first.json());
    up.set_json("/doc/1", &rows(&[5, 1, 2, 3, 4]));
    let patch = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!(patch.kind(), "patch");
    assert_eq!(patch.json(), json!([{"op": "move", "from": "/rows/4", "path": "/rows/0"}]));
    client.apply(patch.kind(), patch.json());
    assert_eq!(client.value, Some(rows(&[5, 1, 2, 3, 4])));
}
