//! Hostile or broken upstreams: what a misbehaving legacy server must never be able to do
//! through unpoll (see docs/security.md). Each test is named after the attack.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// `/whoami` streamed, `/api/*` proxied.
fn whoami() -> Setup {
    Setup::stream("/whoami").every("50ms").route("/api/*")
}

/// What one user saw: documents (stream states and plain answers) that were theirs, and ones
/// that were somebody else's.
#[derive(Default)]
struct Tally {
    own: AtomicUsize,
    foreign: AtomicUsize,
}

impl Tally {
    fn check(&self, me: &str, doc: &serde_json::Value) {
        if doc["user"] == me {
            self.own.fetch_add(1, Ordering::Relaxed);
        } else {
            eprintln!("{me:?} received {doc}");
            self.foreign.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A plain GET of `/api/whoami` as `user`, on a connection of its own.
async fn plain_whoami(proxy: &Proxy, user: &str) -> Option<serde_json::Value> {
    let mut req = "GET /api/whoami HTTP/1.1\r\nHost: h\r\nConnection: close\r\n".to_string();
    if !user.is_empty() {
        req.push_str(&format!("Authorization: {user}\r\n"));
    }
    req.push_str("\r\n");
    let resp = RawConn::send(proxy.addr, req.as_bytes()).await.read_to_end(5 * SECOND).await;
    (resp.status == 200).then(|| serde_json::from_slice(&resp.body).ok()).flatten()
}

#[tokio::test]
async fn stray_bytes_after_a_response_never_reach_another_user() {
    let up = Upstream::start().await;
    let alice = "Bearer alice";
    up.set_stray(alice, &[Duration::from_millis(1), Duration::from_millis(10), Duration::from_millis(50)]);
    let proxy = Arc::new(Proxy::launch(up.addr, &whoami()).await);
    let users = [alice, "Bearer bob", "Bearer carol", ""];
    let tallies: Vec<Arc<Tally>> = users.iter().map(|_| Arc::default()).collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut tasks = Vec::new();
    for (user, tally) in users.iter().zip(&tallies) {
        let (user, tally, proxy) = (user.to_string(), tally.clone(), proxy.clone());
        // Plain proxied requests, one after another.
        tasks.push(tokio::spawn({
            let (user, tally, proxy) = (user.clone(), tally.clone(), proxy.clone());
            async move {
                while tokio::time::Instant::now() < until {
                    if let Some(doc) = plain_whoami(&proxy, &user).await {
                        tally.check(&user, &doc);
                    }
                }
            }
        }));
        if user.is_empty() {
            continue;
        }
        // A subscription, rebuilt from its events as a client would.
        tasks.push(tokio::spawn(async move {
            let mut sse = Sse::connect(proxy.addr, "/whoami", &[("Authorization", &user)]).await;
            let mut doc = Doc::new("json-patch");
            while tokio::time::Instant::now() < until {
                let Some(ev) = sse.next_event(Duration::from_secs(1)).await else { continue };
                if ev.kind() == "error" {
                    continue;
                }
                doc.apply(ev.kind(), ev.json());
                tally.check(&user, doc.value.as_ref().unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(up.strays_sent() > 50, "the upstream misbehaved only {} times", up.strays_sent());
    let caught = proxy.metric("unpoll_upstream_reuse_refused_total", &[("reason", "stray_bytes")]).await;
    eprintln!("caught {caught}");
    let counts: Vec<(usize, usize)> =
        tallies.iter().map(|t| (t.own.load(Ordering::Relaxed), t.foreign.load(Ordering::Relaxed))).collect();
    eprintln!("{} strays; (own, foreign) documents per user {users:?}: {counts:?}", up.strays_sent());
    for (user, (own, foreign)) in users.iter().zip(counts) {
        assert_eq!(foreign, 0, "{user:?} received {foreign} documents of another user");
        if *user != alice {
            assert!(own > 100, "{user:?} was served only {own} documents");
        }
    }
}

/// Plain requests and polls of `/whoami` by each of `users` for `secs` seconds.
async fn traffic(proxy: &Arc<Proxy>, users: &[&str], secs: u64) {
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for user in users {
        let (user, proxy) = (user.to_string(), proxy.clone());
        let watcher = (!user.is_empty()).then(|| {
            let (user, proxy) = (user.clone(), proxy.clone());
            tokio::spawn(async move {
                let mut s = Sse::connect(proxy.addr, "/whoami", &[("Authorization", &user)]).await;
                while s.next_event(Duration::from_secs(30)).await.is_some() {}
            })
        });
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < until {
                plain_whoami(&proxy, &user).await;
            }
            if let Some(w) = watcher {
                w.abort();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// For each upstream connection, the set of `Authorization` values it carried.
fn users_per_connection(up: &Upstream) -> std::collections::HashMap<usize, std::collections::HashSet<String>> {
    let mut map: std::collections::HashMap<usize, std::collections::HashSet<String>> = Default::default();
    for seen in up.seen("/whoami").into_iter().chain(up.seen("/api/whoami")) {
        map.entry(seen.conn).or_default().insert(seen.header("authorization").unwrap_or("").to_string());
    }
    map
}

#[tokio::test]
async fn pooled_connections_never_carry_two_users_credentials() {
    let users = ["Bearer alice", "Bearer bob", ""];
    for (reuse, shared_expected) in [("per_credential", false), ("shared", true)] {
        let up = Upstream::start().await;
        let proxy = Arc::new(Proxy::launch(up.addr, &whoami().upstream("reuse", reuse)).await);
        traffic(&proxy, &users, 3).await;
        let map = users_per_connection(&up);
        let requests: usize = up.count("/whoami") + up.count("/api/whoami");
        let mixed = map.values().filter(|u| u.len() > 1).count();
        eprintln!(
            "reuse: {reuse}: {requests} requests on {} connections, {mixed} of them for several users",
            map.len()
        );
        assert!(map.len() * 3 < requests, "reuse: {reuse}: connections were not reused");
        assert_eq!(mixed > 0, shared_expected, "reuse: {reuse}: connections shared between users: {mixed}");
    }
}

/// Polls keep their connections between polls (`server.poll_idle_connections`), one list
/// per server and credentials: two users' topics poll on connections of their own, each user
/// on one or two connections, and the gauge counts those waiting. With none kept, every poll
/// makes a new connection.
#[tokio::test]
async fn polls_reuse_their_own_kept_connections_and_none_when_none_are_kept() {
    for kept in [None, Some(0)] {
        let up = Upstream::start().await;
        let setup = match kept {
            Some(n) => whoami().server("poll_idle_connections", n),
            None => whoami(),
        };
        let proxy = Proxy::launch(up.addr, &setup).await;
        let mut streams = Vec::new();
        for user in ["Bearer alice", "Bearer bob"] {
            streams.push(Sse::connect(proxy.addr, "/whoami", &[("Authorization", user)]).await);
        }
        let until = tokio::time::Instant::now() + 10 * SECOND;
        while up.count("/whoami") < 24 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let idle = proxy.metric("unpoll_poll_idle_connections", &[]).await;
        drop(streams);
        let polls = up.seen("/whoami");
        assert!(polls.len() >= 24, "{} polls", polls.len());
        let mut per_conn: std::collections::HashMap<usize, std::collections::HashSet<String>> = Default::default();
        for seen in &polls {
            per_conn.entry(seen.conn).or_default().insert(seen.header("authorization").unwrap_or("").to_string());
        }
        assert!(per_conn.values().all(|users| users.len() == 1), "a connection carried two users' polls");
        match kept {
            None => {
                assert!(per_conn.len() <= 4, "{} polls on {} connections", polls.len(), per_conn.len());
                assert!((1.0..=2.0).contains(&idle), "connections waiting between polls: {idle}");
            }
            Some(_) => {
                assert_eq!(per_conn.len(), polls.len(), "a connection was kept with none to keep");
                assert_eq!(idle, 0.0);
            }
        }
    }
}

#[tokio::test]
async fn a_server_that_leaves_bytes_behind_loses_connection_reuse() {
    let up = Upstream::start().await;
    up.set_stray("Bearer alice", &[Duration::from_millis(1)]);
    let proxy = Arc::new(Proxy::launch(up.addr, &whoami().upstream("reuse", "shared")).await);
    let started = tokio::time::Instant::now();
    let mut caught = 0.0;
    while caught == 0.0 && started.elapsed() < Duration::from_secs(30) {
        traffic(&proxy, &["Bearer alice", "Bearer bob"], 1).await;
        caught = proxy.metric("unpoll_upstream_reuse_refused_total", &[("reason", "stray_bytes")]).await;
    }
    eprintln!("caught after {:?}", started.elapsed());
    assert!(caught > 0.0, "stray bytes were never noticed on a pooled connection");
    // Quarantined: every request now gets a connection of its own, closed after it.
    let before = up.count("/api/whoami");
    for _ in 0..10 {
        let doc = plain_whoami(&proxy, "Bearer bob").await.expect("an answer");
        assert_eq!(doc["user"], "Bearer bob");
    }
    let all: Vec<Seen> = up.seen("/whoami").into_iter().chain(up.seen("/api/whoami")).collect();
    for seen in &up.seen("/api/whoami")[before..] {
        let on_it = all.iter().filter(|s| s.conn == seen.conn).count();
        assert_eq!(on_it, 1, "a request while quarantined shared its connection");
    }
    assert!(proxy.log().contains("its connections are not reused"), "the quarantine is logged");
}

fn doc_route() -> Setup {
    Setup::stream("/doc/{id}").every("100ms")
}

/// A whole HTTP/1.1 200 response with a JSON body.
fn json_response(body: &serde_json::Value) -> Vec<u8> {
    let body = serde_json::to_vec(body).unwrap();
    let mut out =
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len())
            .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[tokio::test]
async fn informational_responses_before_the_answer_do_not_kill_the_topic() {
    let up = Upstream::start().await;
    let mut answer = b"HTTP/1.1 103 Early Hints\r\nlink: </app.css>; rel=preload\r\n\r\n".to_vec();
    answer.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    answer.extend_from_slice(&json_response(&doc(1)));
    let proxy = Proxy::launch(up.addr, &doc_route().with("linger", "100ms").server("max_topics", 5)).await;
    // More topics than max_topics, one after another: a dead topic would stay and lock the rest out.
    for id in 0..8 {
        let path = format!("/doc/{id}");
        up.set_raw(&path, answer.clone());
        let mut sse = Sse::connect(proxy.addr, &path, &[]).await;
        assert_eq!(sse.conn.status, 200, "topic {id}");
        let ev = sse.next_event(5 * SECOND).await.expect("a first event");
        assert_eq!((ev.kind(), ev.json()), ("snapshot", doc(1)), "topic {id}");
        // A few more polls through the hints.
        assert!(eventually(5 * SECOND, || async { up.count(&path) >= 3 }).await, "topic {id} stopped polling");
        drop(sse);
        assert!(eventually(5 * SECOND, || async { proxy.metric("unpoll_topics", &[]).await == 0.0 }).await);
    }
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}

#[tokio::test]
async fn a_document_that_is_expensive_to_diff_does_not_stall_the_proxy() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(0));
    let body = &Setup::stream("/shuffled").every("200ms").stream_route("/doc").every("50ms").route("/api/*").body();
    let proxy = Proxy::start(up.addr, body).await;
    // 2,000 rows of 100 fields, in a new order on every poll.
    // Its subscriber only drains what it is sent: the test's own CPU goes to the checks below.
    let mut hostile = Sse::connect(proxy.addr, "/shuffled?rows=2000&keys=100", &[]).await;
    assert_eq!(hostile.conn.status, 200);
    let hostile = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut sink = vec![0u8; 1 << 16];
        while hostile.conn.stream.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });
    let mut other = Sse::connect(proxy.addr, "/doc", &[]).await;
    let first = other.next_event(5 * SECOND).await.unwrap();
    let epoch = first.id.clone().unwrap().split('-').next().unwrap().to_string();
    let mut latencies = Vec::new();
    for v in 1..=20 {
        up.set_json("/doc", &doc(v));
        // Plain requests while the expensive topic polls.
        let until = tokio::time::Instant::now() + Duration::from_millis(250);
        while tokio::time::Instant::now() < until {
            let started = tokio::time::Instant::now();
            let resp = http_get(proxy.addr, "/api/x").await.expect("an answer");
            assert_eq!(resp.status, 200);
            latencies.push(started.elapsed());
        }
        let ev = other.next_event(10 * SECOND).await.expect("the other stream keeps getting events");
        assert_eq!(ev.id, Some(format!("{epoch}-{}", v + 1)), "every version, in order");
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    eprintln!("{} plain requests: p50 {:?} p99 {:?} max {:?}", latencies.len(), p(0.5), p(0.99), p(1.0));
    let exhausted = || async { proxy.metric("unpoll_diff_budget_exhausted_total", &[("route", "/shuffled")]).await };
    assert!(
        eventually(60 * SECOND, || async { exhausted().await >= 1.0 }).await,
        "reordering every row costs more than the diff budget"
    );
    eprintln!("{} polls of the expensive document, {} diffs cut short", up.count("/shuffled"), exhausted().await);
    // Timing belongs in benchmarks (benches/hostile.sh); this only catches a stalled proxy,
    // which before diffs left the async workers took more than 5 s to answer at all.
    assert!(p(0.99) < Duration::from_secs(2), "plain requests stalled: p99 {:?}", p(0.99));
    hostile.abort();
}

/// Version `v` of a document of about `size` bytes in which only `v` changes.
fn big_doc(v: u32, size: usize) -> serde_json::Value {
    serde_json::json!({"v": v, "rows": (0..size / 40).map(|i| format!("row {i:06} of the big document")).collect::<Vec<_>>()})
}

#[tokio::test]
async fn a_large_document_changing_a_little_keeps_history_small() {
    const SIZE: usize = 512 * 1024;
    let up = Upstream::start().await;
    up.set_json("/doc/big", &big_doc(1, SIZE));
    let proxy = Proxy::launch(up.addr, &doc_route().with("history", 64)).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/big", &[]).await;
    let first = sse.next_event(10 * SECOND).await.unwrap();
    let epoch = first.id.clone().unwrap().split('-').next().unwrap().to_string();
    let (mut ws, _) = ws_connect(proxy.addr, "/doc/big", &[], &[]).await.unwrap();
    ws_event(&mut ws, 10 * SECOND).await;
    // Ten versions in, so that buffers and the allocator have settled (after four, the
    // process was still growing by up to 6 MiB in some runs, to the same level in all).
    let at = |v: u32| {
        up.set_json("/doc/big", &big_doc(v, SIZE));
        v
    };
    for v in 2..=10 {
        at(v);
        assert_eq!(sse.next_event(10 * SECOND).await.unwrap().kind(), "patch");
        ws_event(&mut ws, 10 * SECOND).await;
    }
    // Resident memory at rest: the least of a few samples once nothing is being diffed (a diff
    // in progress holds more for a moment).
    let at_rest = || async {
        let mut least = u64::MAX;
        // Ten samples over a second: on a loaded machine a diff can still be running at one.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            least = least.min(rss_kib(proxy.pid()));
        }
        least
    };
    let before = at_rest().await;
    for v in 11..=95 {
        at(v);
        assert_eq!(sse.next_event(10 * SECOND).await.unwrap().id, Some(format!("{epoch}-{v}")));
        ws_event(&mut ws, 10 * SECOND).await;
    }
    let grown = at_rest().await.saturating_sub(before);
    let metrics = proxy.metrics().await;
    let held = metric_value(&metrics, "unpoll_history_bytes", &[("route", "/doc/{id}")]).expect("the metric is there");
    eprintln!("85 versions of a {SIZE}-byte document: RSS grew {grown} KiB; the history holds {held} bytes");
    // 64 versions of history and a ring of 256: whole documents would be tens of MiB.
    assert!(grown < 8 * 1024, "the process grew {grown} KiB");
    assert!(held > 0.0 && held < 64.0 * 1024.0, "the history holds {held} bytes");
    // The history still serves resumes with only what was missed, as patches.
    let mut resumed = Sse::connect(proxy.addr, "/doc/big", &[("Last-Event-ID", &format!("{epoch}-85"))]).await;
    for v in 86..=95 {
        let ev = resumed.next_event(10 * SECOND).await.unwrap();
        assert_eq!((ev.kind(), ev.id.clone()), ("patch", Some(format!("{epoch}-{v}"))));
    }
}

#[tokio::test]
async fn a_history_over_its_byte_budget_is_trimmed() {
    let up = Upstream::start().await;
    up.set_json("/doc/1", &doc(1));
    let proxy = Proxy::launch(up.addr, &doc_route().with("history", 64).with("max_history_bytes", 2000)).await;
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    let epoch = sse.next_event(5 * SECOND).await.unwrap().id.unwrap().split('-').next().unwrap().to_string();
    for v in 2..=20 {
        up.set_json("/doc/1", &doc(v));
        assert_eq!(sse.next_event(5 * SECOND).await.unwrap().kind(), "patch");
    }
    let held = proxy.metric("unpoll_history_bytes", &[("route", "/doc/{id}")]).await;
    let trimmed = proxy.metric("unpoll_history_trimmed_total", &[("route", "/doc/{id}")]).await;
    assert!(held > 0.0 && held <= 2000.0, "the history holds {held} bytes");
    assert!(trimmed >= 10.0, "{trimmed} events trimmed");
    // Version 5 left the history early: resuming from it gets the current snapshot.
    let mut old = Sse::connect(proxy.addr, "/doc/1", &[("Last-Event-ID", &format!("{epoch}-5"))]).await;
    let ev = old.next_event(5 * SECOND).await.unwrap();
    assert_eq!((ev.kind(), ev.json()), ("snapshot", doc(20)));
    // The newest few are still there.
    let mut recent = Sse::connect(proxy.addr, "/doc/1", &[("Last-Event-ID", &format!("{epoch}-19"))]).await;
    assert_eq!(recent.next_event(5 * SECOND).await.unwrap().kind(), "patch");
}

/// The first event (skipping comments) of a new SSE subscription to `path`.
async fn first_event(proxy: &Proxy, path: &str) -> SseEvent {
    let mut sse = Sse::connect(proxy.addr, path, &[]).await;
    sse.next_event(5 * SECOND).await.expect("an event")
}

#[tokio::test]
async fn a_304_to_a_poll_that_asked_nothing_is_an_error_not_silence() {
    let up = Upstream::start().await;
    up.set_raw("/doc/1", b"HTTP/1.1 304 Not Modified\r\n\r\n".to_vec());
    let proxy = Proxy::launch(up.addr, &doc_route()).await;
    let ev = first_event(&proxy, "/doc/1").await;
    assert_eq!(ev.kind(), "error");
    let data = ev.json();
    assert_eq!((data["status"].as_u64(), data["retrying"].as_bool()), (Some(304), Some(true)), "{data}");
}

#[tokio::test]
async fn json_nested_too_deep_to_parse_is_an_error_event() {
    let up = Upstream::start().await;
    up.set("/doc/1", 200, "application/json", format!("{}{}", "[".repeat(300), "]".repeat(300)));
    let proxy = Proxy::launch(up.addr, &doc_route()).await;
    let ev = first_event(&proxy, "/doc/1").await;
    assert_eq!((ev.kind(), ev.json()["error"].as_str()), ("error", Some("upstream_body_too_deep")));
    assert!(proxy.metric("unpoll_upstream_polls_total", &[("outcome", "too_deep")]).await >= 1.0);
}

#[tokio::test]
async fn compressed_bodies_are_asked_for_uncompressed_and_decoded_if_they_come() {
    use std::io::Write;
    let up = Upstream::start().await;
    let json = serde_json::to_vec(&doc(7)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&json).unwrap();
    let gz = gz.finish().unwrap();
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    answer.extend_from_slice(&gz);
    up.set_raw("/doc/1", answer);
    up.set_raw(
        "/doc/2",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: zstd\r\ncontent-length: 2\r\n\r\n{}"
            .to_vec(),
    );
    let proxy = Proxy::launch(up.addr, &doc_route()).await;
    let ev = first_event(&proxy, "/doc/1").await;
    assert_eq!((ev.kind(), ev.json()), ("snapshot", doc(7)), "the JSON, not the gzip bytes as text");
    assert_eq!(up.seen("/doc/1")[0].header("accept-encoding"), Some("identity"));
    let ev = first_event(&proxy, "/doc/2").await;
    assert_eq!((ev.kind(), ev.json()["error"].as_str()), ("error", Some("upstream_encoding")));
}

#[tokio::test]
async fn sse_to_an_http_1_0_client_is_not_chunked() {
    let up = Upstream::start().await;
    up.set_json("/doc/1", &doc(1));
    let proxy = Proxy::launch(up.addr, &doc_route()).await;
    let mut conn = RawConn::send(proxy.addr, b"GET /doc/1 HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n").await;
    assert_eq!(conn.status, 200);
    assert_eq!(conn.header("transfer-encoding"), None, "HTTP/1.0 has no chunked coding");
    assert!(conn.read_until(5 * SECOND, |b| String::from_utf8_lossy(b).contains("event: snapshot")).await);
    up.set_json("/doc/1", &doc(2));
    assert!(conn.read_until(5 * SECOND, |b| String::from_utf8_lossy(b).contains("event: patch")).await);
    let body = String::from_utf8_lossy(&conn.body).to_string();
    assert!(body.starts_with("retry: 2000\n\nid: "), "the events themselves, without chunk sizes: {body:?}");
    assert!(!body.contains('\r'), "no chunk framing: {body:?}");
}
