//! Cluster mode: three real unpoll processes sharing one real `redis-server`, in front of one
//! upstream that counts its GETs.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(1);
const INTERVAL: Duration = Duration::from_millis(200);

fn setup(redis: &RedisServer) -> Setup {
    Setup::stream("/doc")
        .every("200ms")
        .with("history", 8)
        .stream_route("/me")
        .every("200ms")
        .upstream("timeout", "1s")
        .cluster("redis", redis.url())
        .cluster("secret_file", redis.secret_file())
        .cluster("lease", "1s")
        .cluster("timeout", "300ms")
}

/// At most two of these tests at once: each runs two or three unpoll processes and a Redis, and
/// on two cores more at once would make Redis calls time out (nodes then poll alone, which the
/// tests would see as extra upstream GETs).
static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn nodes(up: &Upstream, redis: &RedisServer, n: usize) -> Vec<Proxy> {
    let setup = setup(redis);
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Proxy::launch(up.addr, &setup).await);
    }
    nodes
}

/// A Redis, an upstream serving `doc(1)` at `/doc`, and `n` nodes sharing them.
async fn started(n: usize) -> (RedisServer, Upstream, Vec<Proxy>) {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let nodes = nodes(&up, &redis, n).await;
    (redis, up, nodes)
}

enum Conn {
    Sse(Sse),
    Ws(Ws),
}

/// A subscriber that keeps the document it was sent, and every event id, as a client would.
struct Client {
    conn: Conn,
    doc: Doc,
    /// `(kind, id)` of every snapshot and patch, in order.
    seen: Vec<(String, String)>,
}

impl Client {
    /// Subscribes through `addr` as through a load balancer: every node is sent the same
    /// `Host` (part of what makes a topic).
    async fn open(
        addr: std::net::SocketAddr,
        path: &str,
        transport: &str,
        format: &str,
        headers: &[(&str, &str)],
    ) -> Client {
        let mut headers = headers.to_vec();
        headers.push(("Host", "api.example.com"));
        let headers = &headers[..];
        let conn = match transport {
            "sse" => {
                let sep = if path.contains('?') { '&' } else { '?' };
                Conn::Sse(Sse::connect(addr, &format!("{path}{sep}unpoll_format={format}"), headers).await)
            }
            _ => {
                let protocol = format!("unpoll.{format}");
                let (ws, _) = ws_connect(addr, path, &[&protocol], headers).await.expect("WebSocket opens");
                Conn::Ws(ws)
            }
        };
        Client { conn, doc: Doc::new(format), seen: Vec::new() }
    }

    /// The next snapshot or patch, applied; `None` on timeout or the end of the stream.
    async fn next(&mut self, timeout: Duration) -> Option<(String, String)> {
        let (kind, id, data) = match &mut self.conn {
            Conn::Sse(sse) => {
                let ev = sse.next_event(timeout).await?;
                (ev.kind().to_string(), ev.id.clone().unwrap_or_default(), ev.json())
            }
            Conn::Ws(ws) => match ws_next(ws, timeout).await? {
                WsNext::Event(v) => (
                    v["event"].as_str().unwrap_or("").to_string(),
                    v["id"].as_str().unwrap_or("").to_string(),
                    v["data"].clone(),
                ),
                _ => return None,
            },
        };
        if kind == "error" {
            panic!("an error event: {data}");
        }
        self.doc.apply(&kind, data);
        self.seen.push((kind.clone(), id.clone()));
        Some((kind, id))
    }

    /// Reads until the document is `want`.
    async fn until(&mut self, want: &Value, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.doc.value.as_ref() != Some(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.next(left).await.is_none() {
                return false;
            }
        }
        true
    }

    async fn close(self) {
        if let Conn::Ws(mut ws) = self.conn {
            let _ = ws.close(None).await;
        }
    }
}

/// Every version this client saw came once, in order: within an epoch each id is the one
/// before plus one, and an epoch starts with a snapshot.
fn in_order(seen: &[(String, String)]) -> Result<(), String> {
    let mut last: Option<(String, u64)> = None;
    for (kind, id) in seen {
        let (epoch, version) = id.split_once('-').ok_or(format!("id {id}"))?;
        let version: u64 = version.parse().map_err(|_| format!("id {id}"))?;
        match &last {
            Some((e, v)) if e == epoch && version != v + 1 && !(kind == "snapshot" && version > *v) => {
                return Err(format!("{id} after {e}-{v} in {seen:?}"));
            }
            Some((e, _)) if e != epoch && kind != "snapshot" => return Err(format!("a new epoch by a patch: {id}")),
            _ => {}
        }
        last = Some((epoch.to_string(), version));
    }
    Ok(())
}

/// A metric's value summed over `nodes`.
async fn summed(nodes: &[Proxy], name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for n in nodes {
        sum += n.metric(name, labels).await;
    }
    sum
}

async fn leader(nodes: &[Proxy]) -> Option<usize> {
    for (i, node) in nodes.iter().enumerate() {
        if node.metric("unpoll_cluster_topics", &[("role", "leader")]).await >= 1.0 {
            return Some(i);
        }
    }
    None
}

/// GETs of `path` the upstream answers during `window`.
async fn gets_during(up: &Upstream, path: &str, window: Duration) -> usize {
    let before = up.count(path);
    tokio::time::sleep(window).await;
    up.count(path) - before
}

const FORMATS: [&str; 3] = ["json-patch", "merge-patch", "snapshot"];

#[tokio::test]
async fn thirty_subscribers_on_three_nodes_make_one_poll_per_interval() {
    let _slot = SLOTS.acquire().await.unwrap();
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    // Large enough that a patch is smaller than the document (else it is sent whole).
    let body = |v: u32, items: Value| json!({"v": v, "items": items, "pad": "p".repeat(200)});
    up.set_json("/doc", &body(0, json!([1, 2, 3])));
    let nodes = nodes(&up, &redis, 3).await;
    let mut clients = Vec::new();
    for i in 0..30 {
        let node = &nodes[i % 3];
        let transport = if i % 2 == 0 { "sse" } else { "websocket" };
        clients.push(Client::open(node.addr, "/doc", transport, FORMATS[(i / 2) % 3], &[]).await);
    }
    for c in &mut clients {
        assert!(c.until(&body(0, json!([1, 2, 3])), 10 * SECOND).await, "every client starts");
    }
    // One leader in all, and the others follow.
    assert!(eventually(5 * SECOND, || async { leader(&nodes).await.is_some() }).await);
    let mut roles = Vec::new();
    for n in &nodes {
        roles.push((
            n.metric("unpoll_cluster_topics", &[("role", "leader")]).await,
            n.metric("unpoll_cluster_topics", &[("role", "follower")]).await,
        ));
    }
    assert_eq!(roles.iter().map(|r| r.0).sum::<f64>(), 1.0, "{roles:?}");
    assert_eq!(roles.iter().map(|r| r.1).sum::<f64>(), 2.0, "{roles:?}");
    // /status says the same, topic by topic, with Redis up on every node.
    let mut said = Vec::new();
    for n in &nodes {
        let status: Value = http_get(n.admin, "/status").await.unwrap().json();
        assert_eq!(status["cluster"]["redis_up"], true, "{status:#}");
        let topics = status["routes"][0]["topics"].as_array().unwrap().clone();
        assert_eq!(topics.len(), 1, "{status:#}");
        assert_eq!(topics[0]["subscribers"]["total"], 10);
        said.push(topics[0]["role"].as_str().unwrap().to_string());
    }
    said.sort();
    assert_eq!(said, ["follower", "follower", "leader"]);
    // One GET per interval in all (three nodes polling alone would make three).
    let window = 4 * SECOND;
    let gets = gets_during(&up, "/doc", window).await;
    let per_interval = window.as_millis() as usize / INTERVAL.as_millis() as usize;
    assert!(gets <= per_interval + 2 && gets + 3 >= per_interval, "{gets} GETs in {window:?}");
    eprintln!("figures: {gets} upstream GETs in {window:?} for 30 subscribers on 3 nodes (interval {INTERVAL:?})");
    // Every change reaches every client, in every format and on every node.
    for v in 1..=5 {
        up.set_json("/doc", &body(v, json!([1, v, 3, v * 2])));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let last = body(5, json!([1, 5, 3, 10]));
    for c in &mut clients {
        assert!(c.until(&last, 10 * SECOND).await, "converges: {:?}", c.seen);
        in_order(&c.seen).unwrap();
        if c.doc.format != "snapshot" {
            assert!(
                c.seen.iter().skip(1).any(|(k, _)| k == "patch"),
                "patches, not snapshots: {} {:?}",
                c.doc.format,
                c.seen
            );
        }
    }
    // Each follower received the leader's events (five changes: two a poll interval apart
    // may be seen by one poll, so not always five).
    let mut received = Vec::new();
    for n in &nodes {
        received.push(n.metric("unpoll_cluster_events_received_total", &[("route", "/doc")]).await);
    }
    received.sort_by(f64::total_cmp);
    assert!(received[1] >= 3.0, "the leader's events reached both followers: {received:?}");
    // The cluster's families are documented with the rest.
    let text = nodes[0].metrics().await;
    assert!(text.contains("# TYPE unpoll_cluster_topics"), "a cluster node exports the cluster's families");
    assert_eq!(undocumented_families(&text), Vec::<String>::new(), "every family is in docs/metrics.md");
    // Followers poll nothing, yet their subscribers saved the polls they would have made.
    for n in &nodes {
        let saved = n.metric("unpoll_upstream_requests_saved_total", &[("route", "/doc")]).await;
        assert!(saved >= 100.0, "ten subscribers for five seconds at 200 ms: {saved}");
    }
}

#[tokio::test]
async fn a_client_resumes_on_another_node_with_only_what_it_missed() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (_redis, up, nodes) = started(2).await;
    let mut a = Client::open(nodes[0].addr, "/doc", "sse", "json-patch", &[]).await;
    assert!(a.until(&doc(1), 10 * SECOND).await);
    up.set_json("/doc", &doc(2));
    assert!(a.until(&doc(2), 10 * SECOND).await);
    let last = a.seen.last().unwrap().1.clone();
    // A watcher on node A keeps the topic going while the client is away.
    let mut watcher = Client::open(nodes[0].addr, "/doc", "websocket", "json-patch", &[]).await;
    assert!(watcher.until(&doc(2), 10 * SECOND).await);
    a.close().await;
    for v in 3..=5 {
        up.set_json("/doc", &doc(v));
        assert!(watcher.until(&doc(v), 10 * SECOND).await);
    }
    // Node B never had the topic: it reads the history from Redis.
    let mut b = Client::open(nodes[1].addr, "/doc", "sse", "json-patch", &[("Last-Event-ID", &last)]).await;
    b.doc.value = Some(doc(2));
    assert!(b.until(&doc(5), 10 * SECOND).await);
    let kinds: Vec<&str> = b.seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["patch", "patch", "patch"], "only the three missed patches: {:?}", b.seen);
    let (epoch, version) = last.split_once('-').unwrap();
    let version: u64 = version.parse().unwrap();
    let ids: Vec<String> = b.seen.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, (1..=3).map(|n| format!("{epoch}-{}", version + n)).collect::<Vec<_>>());
    // Older than the history (8 kept): a snapshot.
    for v in 6..=15 {
        up.set_json("/doc", &doc(v));
        assert!(watcher.until(&doc(v), 10 * SECOND).await);
    }
    let mut old = Client::open(nodes[1].addr, "/doc", "sse", "json-patch", &[("Last-Event-ID", &last)]).await;
    assert_eq!(old.next(10 * SECOND).await.map(|(k, _)| k), Some("snapshot".to_string()));
    // (Node B may be an event behind the watcher on A: the last one follows as a patch.)
    assert!(old.until(&doc(15), 10 * SECOND).await);
}

#[tokio::test]
async fn when_the_leader_is_killed_another_node_continues_its_versions() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (_redis, up, nodes) = started(3).await;
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for transport in ["sse", "websocket"] {
            clients.push((i, Client::open(node.addr, "/doc", transport, "json-patch", &[]).await));
        }
    }
    for (_, c) in &mut clients {
        assert!(c.until(&doc(1), 10 * SECOND).await);
    }
    up.set_json("/doc", &doc(2));
    for (_, c) in &mut clients {
        assert!(c.until(&doc(2), 10 * SECOND).await);
    }
    assert!(eventually(5 * SECOND, || async { leader(&nodes).await.is_some() }).await);
    let dead = leader(&nodes).await.unwrap();
    nodes[dead].signal("KILL");
    let killed = Instant::now();
    // Another node polls within the lease and an interval (and a little for a loaded machine).
    let before = up.count("/doc");
    assert!(
        eventually(LEASE + INTERVAL + 2 * SECOND, || async { up.count("/doc") > before + 1 }).await,
        "nobody polls after the leader died"
    );
    let took = killed.elapsed();
    up.set_json("/doc", &doc(3));
    let mut orphans = Vec::new();
    for (i, mut c) in clients {
        if i == dead {
            orphans.push(c);
            continue;
        }
        let seen_before = c.seen.len();
        assert!(c.until(&doc(3), 10 * SECOND).await, "a survivor converges");
        let after: Vec<_> = c.seen[seen_before..].to_vec();
        assert!(after.iter().all(|(k, _)| k == "patch"), "the next version as a patch, no snapshot: {after:?}");
        in_order(&c.seen).unwrap();
    }
    // The dead node's clients resume elsewhere, with only what they missed.
    let alive = (0..3).find(|i| *i != dead).unwrap();
    for c in orphans {
        let last = c.seen.last().unwrap().1.clone();
        let mut again = Client::open(nodes[alive].addr, "/doc", "sse", "json-patch", &[("Last-Event-ID", &last)]).await;
        again.doc.value = c.doc.value.clone();
        assert!(again.until(&doc(3), 10 * SECOND).await);
        assert!(again.seen.iter().all(|(k, _)| k == "patch"), "resumed: {:?}", again.seen);
    }
    let mut failovers = 0.0;
    for (i, n) in nodes.iter().enumerate() {
        if i != dead {
            failovers += n.metric("unpoll_cluster_failovers_total", &[]).await;
        }
    }
    assert_eq!(failovers, 1.0, "one node took over (after {took:?})");
    eprintln!("figures: polls resumed {took:?} after the leader was killed (lease {LEASE:?}, interval {INTERVAL:?})");
    let survivor = &nodes[alive];
    let (sum, count) = (
        survivor.metric("unpoll_cluster_redis_duration_seconds_sum", &[("call", "refresh")]).await,
        survivor.metric("unpoll_cluster_redis_duration_seconds_count", &[("call", "refresh")]).await,
    );
    eprintln!("figures: mean Redis refresh round trip {:.2} ms over {count} calls", 1000.0 * sum / count);
}

#[tokio::test]
async fn a_leader_stopped_past_its_lease_publishes_nothing_when_it_wakes() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (_redis, up, nodes) = started(3).await;
    let mut clients = Vec::new();
    for node in &nodes {
        for (transport, format) in [("sse", "json-patch"), ("websocket", "merge-patch")] {
            clients.push(Client::open(node.addr, "/doc", transport, format, &[]).await);
        }
    }
    for c in &mut clients {
        assert!(c.until(&doc(1), 10 * SECOND).await);
    }
    assert!(eventually(5 * SECOND, || async { leader(&nodes).await.is_some() }).await);
    let stopped = leader(&nodes).await.unwrap();
    // The upstream changes all along: the stalled leader wakes with polls of its own to publish.
    nodes[stopped].signal("STOP");
    for v in 2..=12 {
        up.set_json("/doc", &doc(v));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    nodes[stopped].signal("CONT");
    for v in 13..=20 {
        up.set_json("/doc", &doc(v));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for c in &mut clients {
        assert!(c.until(&doc(20), 15 * SECOND).await, "converges: {:?}", c.seen);
        in_order(&c.seen).unwrap();
        let mut ids: Vec<&String> = c.seen.iter().map(|(_, id)| id).collect();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "no version twice: {:?}", c.seen);
    }
    // The woken node follows now.
    assert!(
        eventually(5 * SECOND, || async {
            nodes[stopped].metric("unpoll_cluster_topics", &[("role", "follower")]).await == 1.0
        })
        .await
    );
}

#[tokio::test]
async fn without_redis_every_node_polls_alone_and_shares_again_when_it_returns() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (mut redis, up, nodes) = started(3).await;
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(Client::open(node.addr, "/doc", "sse", "json-patch", &[]).await);
        clients.push(Client::open(node.addr, "/doc", "websocket", "merge-patch", &[]).await);
    }
    for c in &mut clients {
        assert!(c.until(&doc(1), 10 * SECOND).await);
    }
    redis.kill();
    for n in &nodes {
        assert!(
            eventually(5 * SECOND, || async { n.metric("unpoll_cluster_redis_up", &[]).await == 0.0 }).await,
            "each node notices"
        );
    }
    // Streams keep flowing, each node polling for itself.
    for v in 2..=4 {
        up.set_json("/doc", &doc(v));
        for c in &mut clients {
            assert!(c.until(&doc(v), 10 * SECOND).await, "flows without Redis: {:?}", c.seen);
        }
    }
    let window = 2 * SECOND;
    let alone = gets_during(&up, "/doc", window).await;
    assert!(alone > 20, "three nodes polling alone: {alone} GETs in {window:?}");
    redis.restart();
    for n in &nodes {
        assert!(eventually(5 * SECOND, || async { n.metric("unpoll_cluster_redis_up", &[]).await == 1.0 }).await);
    }
    assert!(eventually(5 * SECOND, || async { leader(&nodes).await.is_some() }).await);
    tokio::time::sleep(LEASE).await;
    let shared = gets_during(&up, "/doc", window).await;
    assert!(shared <= 12, "one poll per interval again: {shared} GETs in {window:?}");
    for v in 5..=6 {
        up.set_json("/doc", &doc(v));
        for c in &mut clients {
            assert!(c.until(&doc(v), 10 * SECOND).await, "flows again: {:?}", c.seen);
        }
    }
    for c in &clients {
        in_order(&c.seen).unwrap();
    }
}

#[tokio::test]
async fn users_on_two_nodes_see_only_their_own_document_and_redis_holds_no_credential() {
    let _slot = SLOTS.acquire().await.unwrap();
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let (alice_token, bob_token) = ("Bearer alice-3f9a0c-secret", "Bearer bob-77d2e1-secret");
    up.set_user(alice_token, &json!({"user": "alice", "balance": 10}));
    up.set_user(bob_token, &json!({"user": "bob", "balance": 99}));
    let nodes = nodes(&up, &redis, 2).await;
    let mut alice = Vec::new();
    let mut bob = Vec::new();
    for node in &nodes {
        alice.push(Client::open(node.addr, "/me", "sse", "json-patch", &[("Authorization", alice_token)]).await);
        bob.push(Client::open(node.addr, "/me", "websocket", "json-patch", &[("Authorization", bob_token)]).await);
    }
    for c in &mut alice {
        assert!(c.until(&json!({"user": "alice", "balance": 10}), 10 * SECOND).await);
    }
    for c in &mut bob {
        assert!(c.until(&json!({"user": "bob", "balance": 99}), 10 * SECOND).await);
    }
    up.set_user(alice_token, &json!({"user": "alice", "balance": 11}));
    up.set_user(bob_token, &json!({"user": "bob", "balance": 98}));
    for c in &mut alice {
        assert!(c.until(&json!({"user": "alice", "balance": 11}), 10 * SECOND).await);
        assert!(c.seen.len() >= 2);
    }
    for c in &mut bob {
        assert!(c.until(&json!({"user": "bob", "balance": 98}), 10 * SECOND).await);
    }
    // Two topics, each polled once per interval (by whichever node leads it) with its own
    // user's credentials.
    let seen = up.seen("/me");
    assert!(seen
        .iter()
        .all(|s| s.header("authorization") == Some(alice_token) || s.header("authorization") == Some(bob_token)));
    let dump = redis.dump();
    assert!(!dump.is_empty());
    for (key, value) in &dump {
        for secret in [alice_token, bob_token, "alice-3f9a0c-secret", "bob-77d2e1-secret", "/me", "/doc"] {
            assert!(!key.contains(secret), "a key name holds {secret}: {key}");
            if secret.contains("secret") {
                assert!(!value.contains(secret), "{key} holds {secret}");
            }
        }
    }
    let states = dump.iter().filter(|(k, _)| k.ends_with(":state")).count();
    assert_eq!(states, 2, "one stored topic per user: {:?}", dump.iter().map(|(k, _)| k).collect::<Vec<_>>());
}

/// The fencing itself, against a real Redis: a node without the lease, or with a version that
/// does not follow the stored one, publishes nothing.
#[tokio::test]
async fn publication_is_fenced_by_the_lease_token_and_the_version_sequence() {
    let _slot = SLOTS.acquire().await.unwrap();
    use unpoll::cluster::message::Message;
    use unpoll::cluster::scripts::PUBLISH;
    let redis = RedisServer::start();
    let mut c = redis.connection().unwrap();
    let keys = ["t:{x}:lease", "t:{x}:state", "t:{x}:history", "t:{x}:events"];
    let publish = |c: &mut redis::Connection, token: &str, version: u64, reset: bool| -> i64 {
        let message = Message::Event {
            epoch: "e1".into(),
            version,
            document: bytes::Bytes::from(format!("{{\"v\":{version}}}")),
            json_patch: Some(bytes::Bytes::from_static(b"[]")),
            merge_patch: None,
            document_tag: [1; 32],
            patches_tag: [2; 32],
        };
        let (payload, spans) = message.encode();
        let s = spans.unwrap();
        let mut call = PUBLISH.key(keys[0]);
        call.key(keys[1]).key(keys[2]).key(keys[3]).arg(token).arg("e1").arg(version).arg(&payload[..]);
        for (at, len) in [s.document, s.json_patch, s.merge_patch] {
            call.arg(at).arg(len);
        }
        call.arg(8).arg(60_000).arg(if reset { "1" } else { "0" }).arg(&[1u8; 32][..]).arg(&[2u8; 32][..]);
        call.invoke(c).unwrap()
    };
    let _: () = redis::cmd("SET").arg(keys[0]).arg("b").arg("PX").arg(5000).query(&mut c).unwrap();
    assert_eq!(publish(&mut c, "a", 1, true), 0, "not the lease holder");
    assert_eq!(publish(&mut c, "b", 1, false), -1, "nothing stored to follow: only a reset starts");
    assert_eq!(publish(&mut c, "b", 1, true), 1);
    assert_eq!(publish(&mut c, "b", 2, false), 1);
    assert_eq!(publish(&mut c, "b", 2, false), -1, "the same version twice");
    assert_eq!(publish(&mut c, "b", 4, false), -1, "a gap");
    let _: () = redis::cmd("SET").arg(keys[0]).arg("c").arg("PX").arg(5000).query(&mut c).unwrap();
    assert_eq!(publish(&mut c, "b", 3, false), 0, "the lease moved on");
    let stored: Vec<Vec<u8>> =
        redis::cmd("HMGET").arg(keys[1]).arg("version").arg("doc").arg("tag").query(&mut c).unwrap();
    assert_eq!(stored, [b"2".to_vec(), b"{\"v\":2}".to_vec(), vec![1; 32]], "the document with its tag");
    let history: Vec<(String, Vec<Vec<u8>>)> =
        redis::cmd("XRANGE").arg(keys[2]).arg("-").arg("+").query(&mut c).unwrap();
    assert_eq!(history.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["1-1", "2-1"]);
    let fields = [b"t".to_vec(), vec![2; 32], b"j".to_vec(), b"[]".to_vec()];
    assert_eq!(history[1].1, fields, "the patches' tag and the JSON Patch kept; no merge patch");
}

#[tokio::test]
async fn a_topic_polls_while_any_node_has_a_subscriber_and_stops_a_linger_after_the_last_leaves() {
    let _slot = SLOTS.acquire().await.unwrap();
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let setup = setup(&redis).with("linger", "1s");
    let (a, b) = (Proxy::launch(up.addr, &setup).await, Proxy::launch(up.addr, &setup).await);
    let mut on_a = Client::open(a.addr, "/doc", "websocket", "json-patch", &[]).await;
    assert!(on_a.until(&doc(1), 10 * SECOND).await);
    assert!(eventually(5 * SECOND, || async { leader(std::slice::from_ref(&a)).await.is_some() }).await);
    let mut on_b = Client::open(b.addr, "/doc", "sse", "json-patch", &[]).await;
    assert!(on_b.until(&doc(1), 10 * SECOND).await);
    // The leader's last subscriber leaves; node B's subscriber keeps the poll going, well past
    // the linger.
    on_a.close().await;
    tokio::time::sleep(3 * SECOND).await;
    assert_eq!(
        a.metric("unpoll_cluster_topics", &[("role", "leader")]).await,
        1.0,
        "node A keeps the topic, and its lease, for node B's subscriber"
    );
    up.set_json("/doc", &doc(2));
    assert!(on_b.until(&doc(2), 5 * SECOND).await, "still polled for node B: {:?}", on_b.seen);
    assert!(gets_during(&up, "/doc", SECOND).await >= 3, "one poll per interval goes on");
    // The last subscriber anywhere leaves: polling stops a linger (plus a lease) later.
    drop(on_b);
    // (Generous: on a loaded machine Redis calls time out, and nodes poll alone for a while.)
    let quiet = eventually(15 * SECOND, || async { gets_during(&up, "/doc", SECOND).await == 0 }).await;
    assert!(quiet, "polling stopped after the last subscriber left:\n{}\n{}", a.log(), b.log());
    let mut topics = 0.0;
    for n in [&a, &b] {
        for role in ["leader", "follower", "local"] {
            topics += n.metric("unpoll_cluster_topics", &[("role", role)]).await;
        }
    }
    assert_eq!(topics, 0.0, "both nodes retired the topic");
}

#[tokio::test]
async fn a_reload_that_changes_the_cluster_is_refused_and_one_that_changes_routes_applies() {
    let _slot = SLOTS.acquire().await.unwrap();
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let setup = setup(&redis);
    let node = Proxy::launch(up.addr, &setup).await;
    let moved = setup.clone().cluster("prefix", "other:");
    node.write_config(up.addr, &moved.server_extra(), &moved.body());
    assert!(
        eventually(5 * SECOND, || async {
            node.metric("unpoll_config_reloads_total", &[("result", "rejected")]).await == 1.0
        })
        .await
    );
    assert!(node.log().contains("cluster changed; restart unpoll"), "{}", node.log());
    let more = setup.route("/plain");
    node.write_config(up.addr, &more.server_extra(), &more.body());
    assert!(
        eventually(5 * SECOND, || async {
            node.metric("unpoll_config_reloads_total", &[("result", "applied")]).await == 1.0
        })
        .await
    );
}

#[tokio::test]
async fn nodes_authenticate_with_the_password_of_password_file() {
    let _slot = SLOTS.acquire().await.unwrap();
    let redis = RedisServer::start_with_password(Some("hunter2-redis"));
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, "hunter2-redis\n").unwrap();
    let setup = setup(&redis).cluster("password_file", file.display().to_string());
    let nodes = [Proxy::launch(up.addr, &setup).await, Proxy::launch(up.addr, &setup).await];
    let mut clients = vec![
        Client::open(nodes[0].addr, "/doc", "sse", "json-patch", &[]).await,
        Client::open(nodes[1].addr, "/doc", "websocket", "merge-patch", &[]).await,
    ];
    for c in &mut clients {
        assert!(c.until(&doc(1), 10 * SECOND).await);
    }
    assert!(eventually(5 * SECOND, || async { leader(&nodes).await.is_some() }).await, "one leader: they share");
    for n in &nodes {
        assert_eq!(n.metric("unpoll_cluster_redis_up", &[]).await, 1.0, "{}", n.log());
        assert_eq!(n.metric("unpoll_cluster_topics", &[("role", "local")]).await, 0.0, "{}", n.log());
        assert!(!n.log().contains("hunter2"), "the password is never logged");
    }
}

/// A topic's stored state, straight from Redis: its key prefix (`unpoll:{id}`), epoch,
/// version, document and the document's tag.
struct Stored {
    prefix: String,
    epoch: String,
    version: u64,
    document: Vec<u8>,
    tag: Vec<u8>,
}

/// The stored topic whose document holds `needle`.
fn stored_with(redis: &RedisServer, needle: &str) -> Stored {
    let mut c = redis.connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*:state").query(&mut c).unwrap();
    for key in keys {
        let fields: Vec<Vec<u8>> =
            redis::cmd("HMGET").arg(&key).arg("epoch").arg("version").arg("doc").arg("tag").query(&mut c).unwrap();
        if String::from_utf8_lossy(&fields[2]).contains(needle) {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            return Stored {
                prefix: key.trim_end_matches(":state").to_string(),
                epoch: text(&fields[0]),
                version: text(&fields[1]).parse().unwrap(),
                document: fields[2].clone(),
                tag: fields[3].clone(),
            };
        }
    }
    panic!("no stored document holds {needle}");
}

/// Someone who can write to Redis, but does not know the cluster's secret, tries to put one
/// user's document in another user's stream and to end it with a sentence of their own.
#[tokio::test]
async fn forged_messages_and_stored_entries_never_reach_a_subscriber() {
    let _slot = SLOTS.acquire().await.unwrap();
    use unpoll::cluster::message::Message;
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let (alice_token, bob_token) = ("Bearer alice-5eed", "Bearer bob-5eed");
    up.set_user(alice_token, &json!({"user": "alice", "iban": "DE00 1111"}));
    up.set_user(bob_token, &json!({"user": "bob", "n": 1}));
    let nodes = nodes(&up, &redis, 2).await;
    let mut alice = Client::open(nodes[0].addr, "/me", "sse", "json-patch", &[("Authorization", alice_token)]).await;
    assert!(alice.until(&json!({"user": "alice", "iban": "DE00 1111"}), 10 * SECOND).await);
    // Bob on both nodes: whichever does not poll his topic follows it through Redis.
    let mut bob = Vec::new();
    for (node, transport) in nodes.iter().zip(["sse", "websocket"]) {
        let mut c = Client::open(node.addr, "/me", transport, "json-patch", &[("Authorization", bob_token)]).await;
        assert!(c.until(&json!({"user": "bob", "n": 1}), 10 * SECOND).await);
        bob.push(c);
    }
    let (a, b) = (stored_with(&redis, "alice"), stored_with(&redis, "\"bob\""));
    let channel = format!("{}:events", b.prefix);
    let mut c = redis.connection().unwrap();
    let mut publish = |message: Message| {
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(&message.encode().0[..]).query(&mut c).unwrap();
    };
    // Alice's document as Bob's next version, with made-up tags; then with Alice's own
    // authentic tag (bound to her topic, not his); then a terminal error he never got.
    let forged = |epoch: &str, version: u64, tag: [u8; 32]| Message::Event {
        epoch: epoch.to_string(),
        version,
        document: bytes::Bytes::from(a.document.clone()),
        json_patch: None,
        merge_patch: None,
        document_tag: tag,
        patches_tag: tag,
    };
    publish(forged(&b.epoch, b.version + 1, [0; 32]));
    publish(forged(&a.epoch, a.version, a.tag.clone().try_into().unwrap()));
    let (epoch, version) = (b.epoch.clone(), b.version);
    publish(Message::Error { epoch, version, status: 401, error: "unauthorized".into(), terminal: true, tag: [7; 32] });
    // And in the stored state: Alice's document over Bob's, for a node that reads it back.
    let mut c = redis.connection().unwrap();
    let _: () =
        redis::cmd("HSET").arg(format!("{}:state", b.prefix)).arg("doc").arg(&a.document).query(&mut c).unwrap();
    let third = Proxy::launch(up.addr, &setup(&redis)).await;
    let mut late = Client::open(third.addr, "/me", "sse", "json-patch", &[("Authorization", bob_token)]).await;
    // Bob's document moves on; every stream of his follows, and none ever held Alice's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    up.set_user(bob_token, &json!({"user": "bob", "n": 2}));
    for c in bob.iter_mut().chain([&mut late]) {
        // (An error event would panic in `next`: the forged terminal error must not arrive.)
        assert!(c.until(&json!({"user": "bob", "n": 2}), 10 * SECOND).await, "bob's stream goes on: {:?}", c.seen);
        assert_eq!(c.doc.value.as_ref().unwrap()["user"], "bob");
    }
    for n in nodes.iter().chain([&third]) {
        assert!(!n.log().contains("DE00"), "alice's data in a log");
    }
    let messages = summed(&nodes, "unpoll_cluster_unauthenticated_total", &[("what", "message")]).await;
    assert_eq!(messages, 3.0, "the follower of bob's topic dropped the three messages, and counted them");
    let read_back = third.metric("unpoll_cluster_unauthenticated_total", &[("what", "document")]).await;
    assert!(read_back >= 1.0, "the third node read the forged document and dropped it");
}

/// A Redis that answers `PING` but refuses every write (full, under `noeviction`) is down: each
/// node says so once, polls alone without flapping, and shares again once writes succeed.
#[tokio::test]
async fn a_redis_out_of_memory_is_down_once_not_a_flapping_node() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (redis, up, nodes) = started(2).await;
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(Client::open(node.addr, "/doc", "sse", "json-patch", &[]).await);
    }
    for c in &mut clients {
        assert!(c.until(&doc(1), 10 * SECOND).await);
    }
    assert!(eventually(5 * SECOND, || async { leader(&nodes).await.is_some() }).await);
    let mut c = redis.connection().unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("noeviction").query(&mut c).unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1).query(&mut c).unwrap();
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG", "it still answers");
    for n in &nodes {
        assert!(eventually(5 * SECOND, || async { n.metric("unpoll_cluster_redis_up", &[]).await == 0.0 }).await);
    }
    // Five seconds full: down the whole time, on every node.
    let until = Instant::now() + 5 * SECOND;
    while Instant::now() < until {
        for n in &nodes {
            assert_eq!(n.metric("unpoll_cluster_redis_up", &[]).await, 0.0, "up again while Redis is full");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    up.set_json("/doc", &doc(2));
    for c in &mut clients {
        assert!(c.until(&doc(2), 10 * SECOND).await, "streams flow, each node polling alone");
    }
    for n in &nodes {
        let log = n.log();
        assert_eq!(log.matches("Redis refuses writes: it is out of memory").count(), 1, "said once:\n{log}");
        assert_eq!(n.metric("unpoll_cluster_redis_outages_total", &[("reason", "out_of_memory")]).await, 1.0);
        let fallbacks = n.metric("unpoll_cluster_local_fallbacks_total", &[]).await;
        assert_eq!(fallbacks, 1.0, "the topic fell back once, not once per flap");
    }
    // Room again: writes succeed, and the nodes share one poll again.
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query(&mut c).unwrap();
    for n in &nodes {
        assert!(eventually(5 * SECOND, || async { n.metric("unpoll_cluster_redis_up", &[]).await == 1.0 }).await);
        assert!(n.log().contains("Redis accepts writes; topics share their polls again"));
    }
    assert!(eventually(5 * SECOND, || async { leader(&nodes).await.is_some() }).await);
    up.set_json("/doc", &doc(3));
    for c in &mut clients {
        assert!(c.until(&doc(3), 10 * SECOND).await);
        in_order(&c.seen).unwrap();
    }
}

#[tokio::test]
async fn a_write_through_one_node_refreshes_the_topic_another_polls_once_for_the_cluster() {
    let _slot = SLOTS.acquire().await.unwrap();
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    up.rest("/posts", vec![json!({"title": "a"}), json!({"title": "b"})]);
    let setup = Setup::stream("/posts/{id}")
        .every("10s")
        .cluster("redis", redis.url())
        .cluster("secret_file", redis.secret_file())
        .cluster("lease", "1s")
        .cluster("timeout", "300ms");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Proxy::launch(up.addr, &setup).await);
    }
    // Subscribers on nodes 0 and 2; node 1 has none, and sees the writes.
    let mut on_first = Client::open(nodes[0].addr, "/posts/1", "sse", "json-patch", &[]).await;
    assert!(on_first.until(&json!({"title": "a", "id": 1}), 5 * SECOND).await);
    let mut on_third = Client::open(nodes[2].addr, "/posts/1", "ws", "json-patch", &[]).await;
    assert!(on_third.until(&json!({"title": "a", "id": 1}), 5 * SECOND).await);
    assert!(eventually(5 * SECOND, || async { leader(&nodes).await.is_some() }).await);
    let polls = || up.seen("/posts/1").iter().filter(|s| s.method == "GET").count();
    let before = polls();

    let answer = http_send(nodes[1].addr, "PATCH", "/posts/1", Some(&json!({"title": "a2"}))).await.unwrap();
    assert_eq!(answer.status, 200);
    let want = json!({"title": "a2", "id": 1});
    assert!(on_first.until(&want, SECOND).await, "node 0's subscriber within 1 s: {:?}", on_first.doc.value);
    assert!(on_third.until(&want, SECOND).await, "node 2's subscriber within 1 s: {:?}", on_third.doc.value);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(polls() - before, 1, "one poll for the cluster, not one per node");
    assert_eq!(summed(&nodes, "unpoll_refreshes_total", &[("route", "/posts/{id}"), ("cause", "write")]).await, 1.0);

    // A hint to node 1's admin listener, for a change made on the upstream directly.
    let body = r#"{"title": "a3"}"#;
    let write = format!("PATCH /posts/1 HTTP/1.1\r\nHost: up\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    assert_eq!(RawConn::send(up.addr, write.as_bytes()).await.read_to_end(5 * SECOND).await.status, 200);
    let before = polls();
    let hint = r#"{"paths": ["/posts/*"]}"#;
    let request = format!(
        "POST /refresh HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{hint}",
        hint.len()
    );
    let answer = RawConn::send(nodes[1].admin, request.as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!(answer.status, 202, "{:?}", String::from_utf8_lossy(&answer.body));
    let want = json!({"title": "a3", "id": 1});
    assert!(on_first.until(&want, SECOND).await, "{:?}", on_first.doc.value);
    assert!(on_third.until(&want, SECOND).await, "{:?}", on_third.doc.value);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(polls() - before, 1, "one poll for the hint too");
    assert_eq!(summed(&nodes, "unpoll_cluster_unauthenticated_total", &[("what", "refresh")]).await, 0.0);
    on_third.close().await;
}
