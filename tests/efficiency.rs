//! Upstream efficiency: conditional polls, unchanged bodies, backoff, Retry-After, per-upstream
//! limits, and Cache-Control.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

fn config(upstream_extra: &str, stream_extra: &str) -> String {
    format!(
        "upstreams:\n  app:\n    servers: [\"{{upstream}}\"]\n{upstream_extra}routes:\n  - match: /doc/{{id}}\n    upstream: app\n    stream:\n      interval: 100ms\n{stream_extra}"
    )
}

#[tokio::test]
async fn polls_are_conditional_on_last_modified() {
    let up = Upstream::start().await;
    let date = "Sun, 22 Nov 2026 10:00:00 GMT";
    up.set_with_headers("/doc/1", 200, &doc(1), &[("last-modified", date)]);
    let proxy = Proxy::start(up.addr, &config("", "")).await;
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
    let proxy = Proxy::start(up.addr, &config("", "")).await;
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

#[tokio::test]
async fn failing_upstreams_are_polled_with_backoff() {
    let up = Upstream::start().await;
    up.set("/doc/1", 500, "text/plain", "boom");
    let proxy = Proxy::start(up.addr, &config("", "      max_backoff: 400ms\n")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().kind(), "error");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let polls = up.count("/doc/1");
    // Without backoff: ~20 polls in 2 s. With it: 0, 200, 600, 1000, 1400, 1800 ms (+ jitter).
    assert!((4..=8).contains(&polls), "{polls} polls in 2 s");
    up.set_json("/doc/1", &doc(1));
    let back = sse.next_event(2 * SECOND).await.unwrap();
    assert_eq!(back.kind(), "snapshot", "recovered within max_backoff");
}

#[tokio::test]
async fn retry_after_is_honoured_on_503() {
    let up = Upstream::start().await;
    up.set_with_headers("/doc/1", 503, &json!({}), &[("retry-after", "2")]);
    let proxy = Proxy::start(up.addr, &config("", "")).await;
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
    let proxy = Proxy::start(up.addr, &config("    max_concurrent_polls: 2\n", "")).await;
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
    let proxy = Proxy::start(up.addr, &config("    max_body: 4096\n", "")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    let err = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!((err.kind(), err.json()["error"].as_str()), ("error", Some("upstream_body_too_large")));
    assert!(proxy.metric("unpoll_upstream_polls_total", &[("outcome", "too_large")]).await >= 1.0);
    up.set_json("/doc/1", &doc(1));
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().json(), doc(1));
}

#[tokio::test]
async fn cache_control_max_age_lengthens_the_interval_only_when_allowed() {
    let up = Upstream::start().await;
    up.set_with_headers("/doc/1", 200, &doc(1), &[("cache-control", "max-age=2")]);
    up.set_with_headers("/other/2", 200, &doc(1), &[("cache-control", "max-age=2")]);
    let body = format!(
        "{}  - match: /other/{{id}}\n    upstream: app\n    stream:\n      interval: 100ms\n",
        config("", "      respect_cache_control: true\n")
    );
    let proxy = Proxy::start(up.addr, &body).await;
    let mut respecting = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    let mut ignoring = Sse::connect(proxy.addr, "/other/2", &[]).await;
    respecting.next_event(5 * SECOND).await.unwrap();
    ignoring.next_event(5 * SECOND).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(up.count("/doc/1"), 1, "max-age=2 keeps the next poll 2 s away");
    assert!(up.count("/other/2") >= 5, "off by default: the interval rules");
}

#[tokio::test]
async fn a_topic_never_has_two_polls_in_flight() {
    let up = Upstream::start().await;
    up.set_json("/doc/1", &doc(1));
    up.set_delay(Duration::from_millis(250)); // slower than the 100 ms interval
    let proxy = Proxy::start(up.addr, &config("", "")).await;
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
    let proxy = Proxy::start(up.addr, &config("", "      array_id: id\n")).await;
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
