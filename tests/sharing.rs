//! Shared polls: one upstream GET per interval however many subscribers, and never one
//! user's data to another.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

fn setup() -> Setup {
    Setup::stream("/board")
}

#[tokio::test]
async fn a_hundred_subscribers_cost_one_upstream_get_per_interval() {
    let up = Upstream::start().await;
    let pad = "p".repeat(100);
    up.set_json("/board", &json!({"trains": [1, 2, 3], "pad": pad}));
    let proxy = Proxy::launch(up.addr, &setup().every("500ms")).await;
    let mut clients = Vec::new();
    for i in 0..100 {
        if i % 2 == 0 {
            clients.push(Sse::connect(proxy.addr, "/board", &[]).await);
        } else {
            clients.push(Sse::connect(proxy.addr, "/board?unpoll_format=merge-patch", &[]).await);
        }
    }
    for c in clients.iter_mut() {
        let snap = c.next_event(5 * SECOND).await.expect("every subscriber gets the snapshot");
        assert_eq!(snap.json(), json!({"trains": [1, 2, 3], "pad": pad}));
    }
    assert_eq!(proxy.metric("unpoll_topics", &[]).await, 1.0);
    assert_eq!(proxy.metric("unpoll_subscribers", &[("route", "/board"), ("protocol", "sse")]).await, 100.0);
    let before = up.count("/board");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let polls = up.count("/board") - before;
    // 2 s at a 500 ms interval: 4 polls, give or take the one in flight at either edge.
    assert!((3..=5).contains(&polls), "{polls} upstream GETs in 2 s for 100 subscribers");
    up.set_json("/board", &json!({"trains": [1, 2, 3, 4], "pad": pad}));
    for c in clients.iter_mut() {
        assert_eq!(c.next_event(5 * SECOND).await.unwrap().kind(), "patch");
    }
}

#[tokio::test]
async fn first_subscriber_polls_at_once_and_later_ones_get_the_snapshot_from_memory() {
    let up = Upstream::start().await;
    up.set_json("/board", &json!({"v": 1}));
    let proxy = Proxy::launch(up.addr, &setup().every("1m")).await;
    let started = tokio::time::Instant::now();
    let mut first = Sse::connect(proxy.addr, "/board", &[]).await;
    first.next_event(5 * SECOND).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "no interval's wait before the first poll");
    assert_eq!(up.count("/board"), 1);
    let mut second = Sse::connect(proxy.addr, "/board", &[]).await;
    assert_eq!(second.next_event(2 * SECOND).await.unwrap().json(), json!({"v": 1}));
    let (mut ws, _) = ws_connect(proxy.addr, "/board", &[], &[]).await.unwrap();
    assert_eq!(ws_event(&mut ws, 2 * SECOND).await["data"], json!({"v": 1}));
    assert_eq!(up.count("/board"), 1, "later subscribers cost no upstream request");
}

#[tokio::test]
async fn polling_stops_linger_after_the_last_subscriber_leaves() {
    let up = Upstream::start().await;
    up.set_json("/board", &json!({"v": 1}));
    let proxy = Proxy::launch(up.addr, &setup().every("100ms").with("linger", "300ms")).await;
    let mut sse = Sse::connect(proxy.addr, "/board", &[]).await;
    sse.next_event(5 * SECOND).await.unwrap();
    drop(sse);
    assert!(eventually(3 * SECOND, || async { proxy.metric("unpoll_topics", &[]).await == 0.0 }).await);
    let stopped = up.count("/board");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(up.count("/board"), stopped, "no polls after the topic closed");
    assert!(stopped >= 3, "polling went on during the linger ({stopped} polls)");
    // A new subscriber starts a new topic with a fresh poll.
    let mut again = Sse::connect(proxy.addr, "/board", &[]).await;
    assert_eq!(again.next_event(5 * SECOND).await.unwrap().json(), json!({"v": 1}));
    assert_eq!(up.count("/board"), stopped + 1);
}

#[tokio::test]
async fn users_with_different_credentials_see_only_their_own_data() {
    // The upstream echoes each request's headers: a user's document shows their credentials.
    let up = Upstream::start().await;
    let proxy =
        Proxy::launch(up.addr, &setup().every("200ms").with("vary", json!(["authorization", "cookie", "x-tenant"])))
            .await;
    let users: [&[(&str, &str)]; 5] = [
        &[("Authorization", "Bearer alice")],
        &[("Authorization", "Bearer bob")],
        &[("Cookie", "session=carol")],
        &[("Authorization", "Bearer alice"), ("X-Tenant", "other")],
        &[],
    ];
    let mut streams = Vec::new();
    for headers in users {
        streams.push((Sse::connect(proxy.addr, "/board", headers).await, headers));
    }
    let (mut ws_bob, _) = ws_connect(proxy.addr, "/board", &[], &[("authorization", "Bearer bob")]).await.unwrap();
    for (sse, headers) in streams.iter_mut() {
        let doc = sse.next_event(5 * SECOND).await.unwrap().json();
        let seen = &doc["headers"];
        for (name, value) in headers.iter() {
            assert_eq!(seen[name.to_ascii_lowercase()], *value, "the user's own {name} was sent upstream");
        }
        for other in ["authorization", "cookie", "x-tenant"] {
            if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(other)) {
                assert!(seen.get(other).is_none(), "{other} leaked into {headers:?}: {seen}");
            }
        }
        assert!(seen.get("accept").is_none_or(|a| a != "text/event-stream"));
    }
    let bob = ws_event(&mut ws_bob, 5 * SECOND).await;
    assert_eq!(bob["data"]["headers"]["authorization"], "Bearer bob");
    assert!(bob["data"]["headers"].get("cookie").is_none());
    assert_eq!(proxy.metric("unpoll_topics", &[]).await, 5.0, "five distinct users, five polls");
    let sent: Vec<_> = up.seen("/board").iter().map(|s| s.header("authorization").map(str::to_string)).collect();
    assert!(sent.contains(&Some("Bearer alice".into())) && sent.contains(&Some("Bearer bob".into())));
}

#[tokio::test]
async fn headers_outside_vary_are_not_sent_by_the_poller() {
    let up = Upstream::start().await;
    let proxy = Proxy::launch(up.addr, &setup().every("1s")).await;
    let mut sse = Sse::connect(proxy.addr, "/board", &[("X-Debug", "1"), ("Authorization", "Bearer a")]).await;
    let doc = sse.next_event(5 * SECOND).await.unwrap().json();
    assert!(doc["headers"].get("x-debug").is_none(), "a header outside the key could make the answer differ");
    assert_eq!(doc["headers"]["authorization"], "Bearer a");
}

#[tokio::test]
async fn public_routes_share_one_poll_and_send_no_credentials() {
    let up = Upstream::start().await;
    let proxy = Proxy::launch(up.addr, &setup().every("200ms").with("share", "public")).await;
    let mut a = Sse::connect(proxy.addr, "/board", &[("Authorization", "Bearer alice"), ("Cookie", "s=1")]).await;
    let mut b = Sse::connect(proxy.addr, "/board", &[("Authorization", "Bearer bob")]).await;
    let doc_a = a.next_event(5 * SECOND).await.unwrap().json();
    let doc_b = b.next_event(5 * SECOND).await.unwrap().json();
    assert_eq!(doc_a, doc_b);
    assert!(doc_a["headers"].get("authorization").is_none() && doc_a["headers"].get("cookie").is_none());
    assert_eq!(proxy.metric("unpoll_topics", &[]).await, 1.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for seen in up.seen("/board") {
        assert_eq!(seen.header("authorization"), None);
        assert_eq!(seen.header("cookie"), None);
    }
}

#[tokio::test]
async fn a_vary_list_adds_to_the_credentials_never_replaces_them() {
    // The route varies on a tenant header: two users of one tenant must still not share.
    let up = Upstream::start().await;
    let proxy = Proxy::launch(up.addr, &setup().every("200ms").with("vary", json!(["x-tenant"]))).await;
    let mut alice = Sse::connect(proxy.addr, "/board", &[("X-Tenant", "t1"), ("Authorization", "Bearer alice")]).await;
    let mut bob = Sse::connect(proxy.addr, "/board", &[("X-Tenant", "t1"), ("Cookie", "session=bob")]).await;
    let a = alice.next_event(5 * SECOND).await.unwrap().json();
    let b = bob.next_event(5 * SECOND).await.unwrap().json();
    assert_eq!(a["headers"]["authorization"], "Bearer alice", "alice's poll carries her credentials");
    assert_eq!(b["headers"]["cookie"], "session=bob", "bob's poll carries his");
    assert!(a["headers"].get("cookie").is_none() && b["headers"].get("authorization").is_none());
    assert_eq!((a["headers"]["x-tenant"].as_str(), b["headers"]["x-tenant"].as_str()), (Some("t1"), Some("t1")));
    assert_eq!(proxy.metric("unpoll_topics", &[]).await, 2.0, "one topic per user, not per tenant");
}
