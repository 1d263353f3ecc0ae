//! Changes pushed at once: a write through unpoll that the upstream accepts refreshes the
//! topics it may have changed, whatever their interval. Against a REST collection served by
//! the test upstream (writes change what its GETs answer), with SSE and WebSocket
//! subscribers.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

/// An SSE subscriber's copy of its document, built from its events.
struct Follower {
    sse: Sse,
    doc: Doc,
}

impl Follower {
    async fn open(proxy: &Proxy, path: &str) -> Follower {
        let mut sse = Sse::connect(proxy.addr, path, &[]).await;
        let mut doc = Doc::new("json-patch");
        let first = sse.next_event(5 * SECOND).await.expect("a snapshot");
        doc.apply(first.kind(), first.json());
        Follower { sse, doc }
    }

    /// Reads events until the document is `want`, within `within`; how long it took.
    async fn until(&mut self, want: &Value, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        while self.doc.value.as_ref() != Some(want) {
            let left = within.checked_sub(start.elapsed())?;
            let event = self.sse.next_event(left).await?;
            self.doc.apply(event.kind(), event.json());
        }
        Some(start.elapsed())
    }
}

/// What the upstream answers now for `path`.
async fn upstream_doc(up: &Upstream, path: &str) -> Value {
    let request = format!("GET {path} HTTP/1.1\r\nHost: upstream\r\n\r\n");
    let answer = RawConn::send(up.addr, request.as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!(answer.status, 200, "{path}");
    answer.json()
}

async fn send(proxy: &Proxy, method: &str, path: &str, body: Option<Value>) -> u16 {
    http_send(proxy.addr, method, path, body.as_ref()).await.expect("an answer").status
}

#[tokio::test]
async fn a_write_through_unpoll_reaches_the_subscribers_of_the_item_and_its_collection_at_once() {
    let up = Upstream::start().await;
    up.rest("/posts", vec![json!({"title": "a"}), json!({"title": "b"})]);
    // Polled every 10 s: without refreshes a change would take up to 10 s to arrive.
    let setup = Setup::stream("/posts").every("10s").stream_route("/posts/{id}").every("10s");
    let proxy = Proxy::launch(up.addr, &setup).await;
    let mut item = Follower::open(&proxy, "/posts/1").await;
    let mut list = Follower::open(&proxy, "/posts").await;
    let mut tagged = Follower::open(&proxy, "/posts?tag=x").await;
    let (mut ws, _) = ws_connect(proxy.addr, "/posts", &[], &[]).await.unwrap();
    assert_eq!(ws_event(&mut ws, 5 * SECOND).await["event"], "snapshot");

    // PATCH an item: the item's subscribers and the collection's (any query, either protocol).
    assert_eq!(send(&proxy, "PATCH", "/posts/1", Some(json!({"title": "a2"}))).await, 200);
    let want_item = upstream_doc(&up, "/posts/1").await;
    let want_list = upstream_doc(&up, "/posts").await;
    assert_eq!(want_item["title"], "a2");
    for (name, follower, want) in
        [("item", &mut item, &want_item), ("collection", &mut list, &want_list), ("?tag=x", &mut tagged, &want_list)]
    {
        let took = follower.until(want, SECOND).await;
        assert!(took.is_some(), "{name}: the write reached it within 1 s: {:?}", follower.doc.value);
    }
    let event = ws_event(&mut ws, SECOND).await;
    assert_eq!(event["event"], "patch", "{event}");

    // POST to the collection, DELETE an item: the collection's subscribers.
    assert_eq!(send(&proxy, "POST", "/posts", Some(json!({"title": "c"}))).await, 201);
    let want_list = upstream_doc(&up, "/posts").await;
    assert_eq!(want_list.as_array().map(Vec::len), Some(3));
    assert!(list.until(&want_list, SECOND).await.is_some(), "POST: {:?}", list.doc.value);
    assert_eq!(send(&proxy, "DELETE", "/posts/2", None).await, 200);
    let want_list = upstream_doc(&up, "/posts").await;
    assert!(list.until(&want_list, SECOND).await.is_some(), "DELETE: {:?}", list.doc.value);
    // The tagged topic polls /posts too: its refresh is done before the polls are counted.
    assert!(tagged.until(&want_list, SECOND).await.is_some(), "DELETE: {:?}", tagged.doc.value);
    let refreshes = proxy.metric("unpoll_refreshes_total", &[("route", "/posts"), ("cause", "write")]).await;
    assert!(refreshes >= 2.0, "{refreshes}");

    // A write the upstream refuses (404) polls nothing.
    let polls = up.count("/posts") + up.count("/posts/1");
    assert_eq!(send(&proxy, "PATCH", "/posts/9", Some(json!({"title": "z"}))).await, 404);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(up.count("/posts") + up.count("/posts/1"), polls, "no poll after a refused write");
    // Nor does a read.
    assert_eq!(send(&proxy, "GET", "/posts/1", None).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.count("/posts") + up.count("/posts/1"), polls + 1, "only the GET itself");
}

#[tokio::test]
async fn a_routes_refreshes_replace_the_default_and_an_empty_list_refreshes_nothing() {
    let up = Upstream::start().await;
    up.rest("/users/ann/posts", vec![json!({"title": "a"})]);
    up.set_json("/feed", &json!({"latest": "a"}));
    up.set_json("/reports/daily", &json!({"n": 1}));
    let setup = Setup::stream("/users/{user}/posts")
        .every("10s")
        .stream_route("/feed")
        .every("10s")
        .route("/users/{user}/posts/{id}")
        .on_route("refreshes", json!(["/users/{user}/posts", "/feed"]))
        .stream_route("/reports/*")
        .every("10s")
        .on_route("refreshes", json!([]));
    let proxy = Proxy::launch(up.addr, &setup).await;
    let mut posts = Follower::open(&proxy, "/users/ann/posts").await;
    let mut feed = Follower::open(&proxy, "/feed").await;
    let mut report = Follower::open(&proxy, "/reports/daily").await;

    // The route's list: the user's posts and the feed (which the default would not reach).
    up.set_json("/feed", &json!({"latest": "a2"}));
    assert_eq!(send(&proxy, "PATCH", "/users/ann/posts/1", Some(json!({"title": "a2"}))).await, 200);
    let want = upstream_doc(&up, "/users/ann/posts").await;
    assert!(posts.until(&want, SECOND).await.is_some(), "{:?}", posts.doc.value);
    assert!(feed.until(&json!({"latest": "a2"}), SECOND).await.is_some(), "{:?}", feed.doc.value);

    // `refreshes: []`: a write there refreshes nothing, its own path included.
    up.set_json("/reports/daily", &json!({"n": 2}));
    assert_eq!(send(&proxy, "POST", "/reports/daily", Some(json!({"run": true}))).await, 200);
    assert!(report.until(&json!({"n": 2}), Duration::from_millis(1500)).await.is_none(), "not refreshed");
    let refreshes = proxy.metric("unpoll_refreshes_total", &[("route", "/reports/*"), ("cause", "write")]).await;
    assert_eq!(refreshes, 0.0);
}

#[tokio::test]
async fn a_burst_of_writes_costs_at_most_a_poll_each_and_ends_equal_to_the_upstream() {
    let up = Upstream::start().await;
    up.rest("/items", vec![json!({"n": 0})]);
    let setup = Setup::stream("/items/{id}").every("10s");
    let proxy = Proxy::launch(up.addr, &setup).await;
    let mut item = Follower::open(&proxy, "/items/1").await;
    let before = up.seen("/items/1").iter().filter(|s| s.method == "GET").count();
    let writes = (1..=20).map(|n| {
        let proxy = &proxy;
        async move { send(proxy, "PATCH", "/items/1", Some(json!({"n": n}))).await }
    });
    let statuses = futures_util::future::join_all(writes).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let want = upstream_doc(&up, "/items/1").await;
    assert!(item.until(&want, 2 * SECOND).await.is_some(), "{:?} against {want}", item.doc.value);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The GETs since: the polls, and our own read of the upstream (which did not go through unpoll).
    let polls = up.seen("/items/1").iter().filter(|s| s.method == "GET").count() - before - 1;
    assert!((1..=20).contains(&polls), "{polls} polls for 20 writes");
    let made = proxy.metric("unpoll_refreshes_total", &[("route", "/items/{id}"), ("cause", "write")]).await;
    let coalesced = proxy.metric("unpoll_refreshes_coalesced_total", &[]).await;
    assert_eq!(made + coalesced, 20.0, "every write's refresh is counted once: {made} made, {coalesced} coalesced");
    eprintln!("figures: 20 concurrent writes cost {polls} polls ({made} refresh polls, {coalesced} coalesced)");
}

/// A request to the admin listener, with `token` as a bearer token if given.
async fn admin(proxy: &Proxy, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> Response {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n");
    if let Some(token) = token {
        request += &format!("Authorization: Bearer {token}\r\n");
    }
    let body = body.unwrap_or_default();
    request += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    RawConn::send(proxy.admin, request.as_bytes()).await.read_to_end(5 * SECOND).await
}

#[tokio::test]
async fn a_refresh_hint_pushes_a_change_made_behind_unpolls_back_and_the_admin_token_guards_it() {
    let up = Upstream::start().await;
    up.set_json("/orders/42", &json!({"state": "new"}));
    up.set_json("/orders/43", &json!({"state": "new"}));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    let token = "0123456789abcdef0123456789abcdef";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let setup = Setup::stream("/orders/{id}").every("10s").server("admin_token_file", token_file.to_str().unwrap());
    let proxy = Proxy::launch(up.addr, &setup).await;
    let mut order = Follower::open(&proxy, "/orders/42").await;
    let mut other = Follower::open(&proxy, "/orders/43").await;

    // Without the token (or with another), neither /refresh nor /status answers; probes do.
    let hint = r#"{"paths": ["/orders/42"]}"#;
    for wrong in [None, Some("0123456789abcdef0123456789abcdee")] {
        let answer = admin(&proxy, "POST", "/refresh", Some(hint), wrong).await;
        assert_eq!(answer.status, 401, "{wrong:?}");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer realm=\"unpoll admin\""));
        assert_eq!(admin(&proxy, "GET", "/status", None, wrong).await.status, 401);
    }
    assert_eq!(admin(&proxy, "GET", "/metrics", None, None).await.status, 200);
    assert_eq!(admin(&proxy, "GET", "/readyz", None, None).await.status, 200);

    // Bad hints are told what is wrong.
    for (body, says) in [
        ("{\"paths\": [\"/orders/42\"", "EOF"),
        ("{\"path\": [\"/orders/42\"]}", "unknown field `path`"),
        ("{\"paths\": []}", "1 to 1000 paths"),
        ("{\"paths\": [\"orders\"]}", "paths[0]: `orders` must start with `/`"),
    ] {
        let answer = admin(&proxy, "POST", "/refresh", Some(body), Some(token)).await;
        assert_eq!(answer.status, 400, "{body}");
        let message = answer.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains(says), "{body}: {message}");
    }
    assert_eq!(admin(&proxy, "GET", "/refresh", None, Some(token)).await.status, 405);

    // A change made directly on the upstream, and a hint: pushed within a second.
    up.set_json("/orders/42", &json!({"state": "paid"}));
    up.set_json("/orders/43", &json!({"state": "paid"}));
    let answer = admin(&proxy, "POST", "/refresh", Some(hint), Some(token)).await;
    assert_eq!((answer.status, answer.json()), (202, json!({"refreshed": 1})));
    assert!(order.until(&json!({"state": "paid"}), SECOND).await.is_some(), "{:?}", order.doc.value);
    assert!(other.until(&json!({"state": "paid"}), Duration::from_millis(300)).await.is_none(), "not named");
    // A prefix reaches the others.
    let answer = admin(&proxy, "POST", "/refresh", Some(r#"{"paths": ["/orders/*"]}"#), Some(token)).await;
    assert_eq!((answer.status, answer.json()), (202, json!({"refreshed": 2})));
    assert!(other.until(&json!({"state": "paid"}), SECOND).await.is_some(), "{:?}", other.doc.value);

    // /status, with the token: each topic's last refresh and why.
    let status = admin(&proxy, "GET", "/status", None, Some(token)).await;
    assert_eq!(status.status, 200);
    let routes = status.json()["routes"].as_array().cloned().unwrap_or_default();
    let topics: Vec<Value> = routes.iter().flat_map(|r| r["topics"].as_array().cloned().unwrap_or_default()).collect();
    let refreshed: Vec<&str> = topics.iter().filter_map(|t| t["last_refresh"]["cause"].as_str()).collect();
    assert_eq!(refreshed, ["hint", "hint"], "{topics:?}");
    assert!(proxy.metric("unpoll_refreshes_total", &[("route", "/orders/{id}"), ("cause", "hint")]).await >= 2.0);
    assert!(!proxy.log().contains(token), "the token is never logged");

    // A new token in the file is taken with the configuration, without a restart.
    let renewed = "fedcba9876543210fedcba9876543210";
    std::fs::write(&token_file, format!("{renewed}\n")).unwrap();
    let takes = || async { admin(&proxy, "GET", "/status", None, Some(renewed)).await.status == 200 };
    assert!(eventually(10 * SECOND, takes).await, "the renewed token is taken");
    assert_eq!(admin(&proxy, "GET", "/status", None, Some(token)).await.status, 401, "the old one no longer");
}

#[tokio::test]
async fn one_users_write_refreshes_every_users_topic_each_with_its_own_credentials() {
    let up = Upstream::start().await;
    up.set_user("Bearer ann", &json!({"user": "ann", "n": 1}));
    up.set_user("Bearer bob", &json!({"user": "bob", "n": 1}));
    let setup = Setup::stream("/me").every("10s");
    let proxy = Proxy::launch(up.addr, &setup).await;
    let open = |auth: &'static str| {
        let proxy = &proxy;
        async move {
            let mut sse = Sse::connect(proxy.addr, "/me", &[("Authorization", auth)]).await;
            let mut doc = Doc::new("json-patch");
            let first = sse.next_event(5 * SECOND).await.expect("a snapshot");
            doc.apply(first.kind(), first.json());
            Follower { sse, doc }
        }
    };
    let (mut ann, mut bob) = (open("Bearer ann").await, open("Bearer bob").await);
    assert_eq!(ann.doc.value, Some(json!({"user": "ann", "n": 1})));
    // Both users' documents change; ann writes (her credentials only on her request).
    up.set_user("Bearer ann", &json!({"user": "ann", "n": 2}));
    up.set_user("Bearer bob", &json!({"user": "bob", "n": 2}));
    let write =
        "POST /me HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer ann\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
    assert_eq!(RawConn::send(proxy.addr, write.as_bytes()).await.read_to_end(5 * SECOND).await.status, 200);
    assert!(ann.until(&json!({"user": "ann", "n": 2}), SECOND).await.is_some(), "{:?}", ann.doc.value);
    // Bob's topic is refreshed too, polled with bob's credentials: his own document, never ann's.
    assert!(bob.until(&json!({"user": "bob", "n": 2}), SECOND).await.is_some(), "{:?}", bob.doc.value);
    let polls = up.seen("/me");
    let refreshed: Vec<Option<&str>> = polls.iter().rev().take(3).map(|s| s.header("authorization")).collect();
    assert!(refreshed.contains(&Some("Bearer bob")) && refreshed.contains(&Some("Bearer ann")), "{refreshed:?}");
}
