//! Sticky routing and passive health in front of a pool of real servers, each answering with
//! its own identity.

mod support;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use support::*;

/// `n` upstream servers; each answers `GET /who` (and `POST /who`) with its own name.
async fn pool(n: usize) -> Vec<Upstream> {
    let mut servers = Vec::new();
    for i in 0..n {
        let up = Upstream::start().await;
        up.set_json("/who", &json!({"server": format!("s{i}")}));
        servers.push(up);
    }
    servers
}

fn addresses(servers: &[Upstream]) -> Value {
    json!(servers.iter().map(|s| s.addr.to_string()).collect::<Vec<_>>())
}

async fn request(proxy: &Proxy, method: &str, headers: &[(&str, &str)]) -> Response {
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let body = if method == "POST" { "content-length: 2\r\n\r\n{}" } else { "\r\n" };
    let req = format!("{method} /who HTTP/1.1\r\nHost: h\r\nConnection: close\r\n{extra}{body}");
    RawConn::send(proxy.addr, req.as_bytes()).await.read_to_end(5 * SECOND).await
}

fn served_by(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["server"].as_str().unwrap().to_string()
}

/// The `name=value` part of a response's `Set-Cookie`.
fn cookie_of(r: &Response) -> Option<String> {
    r.header("set-cookie").map(|c| c.split(';').next().unwrap().to_string())
}

#[tokio::test]
async fn a_cookie_keeps_a_client_on_its_server_and_new_clients_are_balanced() {
    let servers = pool(3).await;
    let setup =
        Setup::new().upstream("servers", addresses(&servers)).upstream("sticky", json!({"cookie": {}})).route("/*");
    let proxy = Proxy::launch(servers[0].addr, &setup).await;
    let first = request(&proxy, "GET", &[]).await;
    let home = served_by(&first);
    let set = first.header("set-cookie").expect("a new client is given a cookie").to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/"), "{set}");
    let cookie = cookie_of(&first).unwrap();
    assert!(!servers.iter().any(|s| cookie.contains(&s.addr.port().to_string())), "opaque: {cookie}");
    let mine = format!("{cookie}; theme=dark");
    for _ in 0..50 {
        let r = request(&proxy, "GET", &[("cookie", &mine)]).await;
        assert_eq!(served_by(&r), home, "the cookie's server, every time");
        assert!(r.header("set-cookie").is_none(), "a valid cookie is not re-issued");
    }
    // The upstream sees the client's own cookies, never unpoll's.
    for s in &servers {
        for seen in s.seen("/who") {
            if let Some(c) = seen.header("cookie") {
                assert_eq!(c, "theme=dark");
            }
        }
    }
    let mut spread: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        *spread.entry(served_by(&request(&proxy, "GET", &[]).await)).or_default() += 1;
    }
    assert_eq!(spread.len(), 3, "new clients go round the pool: {spread:?}");
    assert!(proxy.metric("unpoll_sticky_total", &[("upstream", "app"), ("result", "hit")]).await >= 50.0);
    assert!(proxy.metric("unpoll_sticky_total", &[("upstream", "app"), ("result", "assigned")]).await >= 31.0);
    // A cookie naming no server is re-picked and re-issued.
    let stale = request(&proxy, "GET", &[("cookie", "unpoll_server=0000000000000000")]).await;
    assert!(stale.header("set-cookie").is_some());
    assert_eq!(proxy.metric("unpoll_sticky_total", &[("upstream", "app"), ("result", "reassigned")]).await, 1.0);
}

#[tokio::test]
async fn weights_share_the_requests() {
    let servers = pool(2).await;
    let weighted = json!([servers[0].addr.to_string(), {"addr": servers[1].addr.to_string(), "weight": 3}]);
    let proxy = Proxy::launch(servers[0].addr, &Setup::new().upstream("servers", weighted).route("/*")).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        *count.entry(served_by(&request(&proxy, "GET", &[]).await)).or_default() += 1;
    }
    assert_eq!((count["s0"], count["s1"]), (10, 30), "{count:?}");
    let label = servers[1].addr.to_string();
    let to_s1 = proxy.metric("unpoll_upstream_requests_total", &[("server", &label), ("kind", "proxy")]).await;
    assert_eq!(to_s1, 30.0);
}

#[tokio::test]
async fn a_hashed_header_keeps_its_server() {
    let servers = pool(3).await;
    let setup = Setup::new()
        .upstream("servers", addresses(&servers))
        .upstream("sticky", json!({"hash": {"header": "x-session"}}))
        .route("/*");
    let proxy = Proxy::launch(servers[0].addr, &setup).await;
    let mut homes: HashMap<String, String> = HashMap::new();
    for round in 0..5 {
        for session in 0..20 {
            let id = format!("session-{session}");
            let got = served_by(&request(&proxy, "GET", &[("x-session", &id)]).await);
            let home = homes.entry(id).or_insert_with(|| got.clone());
            assert_eq!(&got, home, "round {round}");
        }
    }
    let used: std::collections::HashSet<&String> = homes.values().collect();
    assert_eq!(used.len(), 3, "sessions spread over the pool: {homes:?}");
}

#[tokio::test]
async fn a_dead_server_is_taken_out_its_clients_move_and_a_post_is_never_retried() {
    let servers = pool(2).await;
    let setup =
        Setup::new().upstream("servers", addresses(&servers)).upstream("sticky", json!({"cookie": {}})).route("/*");
    let proxy = Proxy::launch(servers[0].addr, &setup).await;
    // A client on s0.
    let cookie = loop {
        let r = request(&proxy, "GET", &[]).await;
        if served_by(&r) == "s0" {
            break cookie_of(&r).unwrap();
        }
    };
    servers[0].stop();
    // A POST to its dead server fails; it is not sent anywhere else.
    let posted = request(&proxy, "POST", &[("cookie", &cookie)]).await;
    assert_eq!(posted.status, 502, "{}", String::from_utf8_lossy(&posted.body));
    assert!(servers[1].seen("/who").iter().all(|s| s.method != "POST"), "a POST is never retried");
    // A GET is retried once on the other server, and the client is given a cookie for it.
    let moved = request(&proxy, "GET", &[("cookie", &cookie)]).await;
    assert_eq!(served_by(&moved), "s1");
    let new_cookie = cookie_of(&moved).expect("re-issued");
    assert_ne!(new_cookie, cookie);
    // After a third failure the server is out of rotation: no more connection attempts.
    let _ = request(&proxy, "GET", &[("cookie", &cookie)]).await;
    let label = servers[0].addr.to_string();
    assert!(
        eventually(2 * SECOND, || async {
            proxy.metric("unpoll_upstream_server_up", &[("server", &label)]).await == 0.0
        })
        .await
    );
    let before = proxy.metric("unpoll_upstream_requests_total", &[("server", &label), ("kind", "proxy")]).await;
    for _ in 0..10 {
        assert_eq!(served_by(&request(&proxy, "GET", &[("cookie", &cookie)]).await), "s1");
    }
    let after = proxy.metric("unpoll_upstream_requests_total", &[("server", &label), ("kind", "proxy")]).await;
    assert_eq!(before, after, "a server out of rotation is not tried");
    assert!(proxy.log().contains("out of rotation"), "{}", proxy.log());
    // It comes back once it answers again (after its time out).
    servers[0].restart().await;
    assert!(
        eventually(10 * SECOND, || async {
            request(&proxy, "GET", &[("cookie", &cookie)]).await.json()["server"] == "s0"
        })
        .await,
        "the old cookie's server is used again once it is back"
    );
    assert_eq!(proxy.metric("unpoll_upstream_server_up", &[("server", &label)]).await, 1.0);
}

/// A sticky pool whose `/who` is a stream route (polled every 100 ms) and everything else plain.
async fn streaming_pool(n: usize) -> (Vec<Upstream>, Proxy) {
    let servers = pool(n).await;
    let setup = Setup::stream("/who")
        .every("100ms")
        .route("/*")
        .upstream("servers", addresses(&servers))
        .upstream("sticky", json!({"cookie": {}}));
    let proxy = Proxy::launch(servers[0].addr, &setup).await;
    (servers, proxy)
}

/// A cookie pinning its holder to server `name`, got by plain requests.
async fn cookie_for(proxy: &Proxy, name: &str) -> String {
    loop {
        let r = request(proxy, "GET", &[]).await;
        if served_by(&r) == name {
            return cookie_of(&r).unwrap();
        }
    }
}

#[tokio::test]
async fn a_subscribers_polls_go_to_its_server_and_two_pinned_apart_never_share_a_poll() {
    let (servers, proxy) = streaming_pool(2).await;
    let (c0, c1) = (cookie_for(&proxy, "s0").await, cookie_for(&proxy, "s1").await);
    let mut on0 = Sse::connect(proxy.addr, "/who", &[("cookie", &c0)]).await;
    let mut on1 = Sse::connect(proxy.addr, "/who", &[("cookie", &c1)]).await;
    assert_eq!(on0.next_event(5 * SECOND).await.unwrap().json()["server"], "s0");
    assert_eq!(on1.next_event(5 * SECOND).await.unwrap().json()["server"], "s1");
    assert_eq!(proxy.metric("unpoll_topics", &[]).await, 2.0, "one topic per pinned server");
    // The polls never carry unpoll's cookie upstream.
    for s in &servers {
        assert!(s.seen("/who").iter().all(|r| r.header("cookie").is_none_or(|c| !c.contains("unpoll_server"))));
    }
    // A subscriber without a cookie is given one with its stream, naming the server it polls.
    let mut fresh = Sse::connect(proxy.addr, "/who", &[]).await;
    let home = fresh.next_event(5 * SECOND).await.unwrap().json()["server"].as_str().unwrap().to_string();
    let given = fresh.conn.header("set-cookie").expect("the stream's head sets the cookie").to_string();
    let cookie = given.split(';').next().unwrap().to_string();
    assert_eq!(served_by(&request(&proxy, "GET", &[("cookie", &cookie)]).await), home);
}

#[tokio::test]
async fn cookies_with_bytes_beyond_ascii_reach_the_upstream_and_split_topics() {
    let (servers, proxy) = streaming_pool(1).await;
    let pin = cookie_for(&proxy, "s0").await;
    // Raw UTF-8 in a cookie value, as browsers send it, beside unpoll's own cookie.
    let alice = "session=alice-café";
    let r = request(&proxy, "GET", &[("cookie", &format!("{alice}; {pin}; theme=é"))]).await;
    assert_eq!(served_by(&r), "s0", "the sticky cookie is still read");
    let seen = servers[0].seen("/who");
    let last = seen.last().unwrap().header("cookie").expect("the cookie header reaches the upstream");
    assert_eq!(last, format!("{alice}; theme=é"), "every cookie but unpoll's, byte for byte");
    // Two subscribers whose cookies differ only beyond ASCII: each is polled with its own.
    let bob = "session=bob-café";
    let mut a = Sse::connect(proxy.addr, "/who", &[("cookie", &format!("{alice}; {pin}"))]).await;
    let mut b = Sse::connect(proxy.addr, "/who", &[("cookie", bob)]).await;
    assert_eq!(a.next_event(5 * SECOND).await.unwrap().json()["server"], "s0");
    assert_eq!(b.next_event(5 * SECOND).await.unwrap().json()["server"], "s0");
    assert_eq!(proxy.metric("unpoll_topics", &[]).await, 2.0, "one topic per cookie");
    let cookies: Vec<String> =
        servers[0].seen("/who").iter().filter_map(|r| r.header("cookie").map(str::to_string)).collect();
    assert!(cookies.iter().any(|c| c == alice), "alice's polls carry her cookie: {cookies:?}");
    assert!(cookies.iter().any(|c| c == bob), "bob's polls carry his: {cookies:?}");
}

#[tokio::test]
async fn a_stream_whose_server_dies_keeps_flowing_from_another_without_reconnecting() {
    let (servers, proxy) = streaming_pool(2).await;
    let c0 = cookie_for(&proxy, "s0").await;
    let mut sse = Sse::connect(proxy.addr, "/who", &[("cookie", &c0)]).await;
    let mut doc = Doc::new("json-patch");
    let first = sse.next_event(5 * SECOND).await.unwrap();
    doc.apply(first.kind(), first.json());
    assert_eq!(doc.value.as_ref().unwrap()["server"], "s0");
    servers[0].stop();
    // The next event comes on the same stream, from the other server, and no error before it.
    let next = sse.next_event(5 * SECOND).await.expect("the stream goes on");
    assert_ne!(next.kind(), "error", "{:?}", next.json());
    doc.apply(next.kind(), next.json());
    assert_eq!(doc.value.as_ref().unwrap()["server"], "s1");
    // And goes on while s0 is down.
    let label = servers[0].addr.to_string();
    assert!(
        eventually(5 * SECOND, || async {
            proxy.metric("unpoll_upstream_server_up", &[("server", &label)]).await == 0.0
        })
        .await
    );
    servers[1].set_json("/who", &json!({"server": "s1", "v": 2}));
    let later = sse.next_event(5 * SECOND).await.unwrap();
    doc.apply(later.kind(), later.json());
    assert_eq!(doc.value.as_ref().unwrap()["v"], 2);
}

/// Two sticky servers whose `/healthz` passes, checked with `health`; a cookie pinning its
/// holder to the first, and the first's `server` label.
async fn checked_pool(health: Value) -> (Vec<Upstream>, Proxy, String, String) {
    let servers = pool(2).await;
    for s in &servers {
        s.set_json("/healthz", &json!({"ok": true}));
    }
    let setup = Setup::new()
        .upstream("servers", addresses(&servers))
        .upstream("sticky", json!({"cookie": {}}))
        .upstream("health", health)
        .route("/*");
    let proxy = Proxy::launch(servers[0].addr, &setup).await;
    let c0 = cookie_for(&proxy, "s0").await;
    let label = servers[0].addr.to_string();
    (servers, proxy, c0, label)
}

#[tokio::test]
async fn active_checks_take_a_failing_server_out_and_bring_it_back_after_healthy_after() {
    let health =
        json!({"path": "/healthz", "interval": "200ms", "timeout": "100ms", "healthy_after": 2, "unhealthy_after": 2});
    let (servers, proxy, c0, label) = checked_pool(health).await;
    let labels = [("server", label.as_str())];
    let up = || proxy.metric("unpoll_upstream_server_up", &labels);
    // s0 still answers requests, but says it is unhealthy: only an active check can tell.
    servers[0].set("/healthz", 503, "text/plain", "draining");
    let started = std::time::Instant::now();
    assert!(eventually(3 * SECOND, || async { up().await == 0.0 }).await);
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_millis(1500), "out within about unhealthy_after × interval: {took:?}");
    assert!(proxy.metric("unpoll_health_checks_total", &[("server", &label), ("result", "failed")]).await >= 2.0);
    let moved = request(&proxy, "GET", &[("cookie", &c0)]).await;
    assert_eq!(served_by(&moved), "s1", "its sticky client moves");
    assert!(moved.header("set-cookie").is_some(), "and is given a cookie for its new server");
    // Healthy again: back after two passed checks, and the old cookie's server is used again.
    servers[0].set_json("/healthz", &json!({"ok": true}));
    assert!(eventually(3 * SECOND, || async { up().await == 1.0 }).await);
    assert_eq!(served_by(&request(&proxy, "GET", &[("cookie", &c0)]).await), "s0");
    assert!(proxy.log().contains("checks of /healthz failed") && proxy.log().contains("back in rotation"));
    // Killed: its checks fail to connect, and it is out with no request having tried it.
    let before = proxy.metric("unpoll_upstream_requests_total", &[("server", &label), ("kind", "proxy")]).await;
    servers[0].stop();
    let killed = std::time::Instant::now();
    assert!(eventually(3 * SECOND, || async { up().await == 0.0 }).await);
    assert!(killed.elapsed() < std::time::Duration::from_millis(1500), "{:?}", killed.elapsed());
    let after = proxy.metric("unpoll_upstream_requests_total", &[("server", &label), ("kind", "proxy")]).await;
    assert_eq!(before, after, "taken out by its checks alone");
    assert_eq!(served_by(&request(&proxy, "GET", &[("cookie", &c0)]).await), "s1");
    servers[0].restart().await;
    assert!(eventually(3 * SECOND, || async { up().await == 1.0 }).await, "back after healthy_after passes");
}

#[tokio::test]
async fn failed_checks_take_a_server_out_however_much_traffic_it_answers() {
    let health =
        json!({"path": "/healthz", "interval": "150ms", "timeout": "100ms", "healthy_after": 1, "unhealthy_after": 3});
    let (servers, proxy, c0, label) = checked_pool(health).await;
    let labels = [("server", label.as_str())];
    let up = || proxy.metric("unpoll_upstream_server_up", &labels);
    // s0 drains: its health path answers 503 while it still answers every request, and its
    // sticky client keeps sending them, several between two checks.
    servers[0].set("/healthz", 503, "text/plain", "draining");
    let started = std::time::Instant::now();
    let mut out = false;
    while started.elapsed() < 3 * SECOND {
        let r = request(&proxy, "GET", &[("cookie", &c0)]).await;
        assert_eq!(r.status, 200);
        if up().await == 0.0 {
            out = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let failed = proxy.metric("unpoll_health_checks_total", &[("server", &label), ("result", "failed")]).await;
    assert!(out, "still in rotation after {failed} failed checks, because its requests were answered");
    assert_eq!(served_by(&request(&proxy, "GET", &[("cookie", &c0)]).await), "s1", "its client moves");
    // Too slow to answer its checks counts as failing them too, traffic or not.
    servers[0].set_json("/healthz", &json!({"ok": true}));
    assert!(eventually(3 * SECOND, || async { up().await == 1.0 }).await);
    servers[0].set_delay(std::time::Duration::from_millis(300));
    let slow = std::time::Instant::now();
    let mut out = false;
    while slow.elapsed() < 4 * SECOND {
        let _ = request(&proxy, "GET", &[("cookie", &c0)]).await;
        if up().await == 0.0 {
            out = true;
            break;
        }
    }
    assert!(out, "a server slower than health.timeout is taken out while it answers requests");
}

#[tokio::test]
async fn a_reload_that_changes_the_servers_keeps_the_affinity_of_those_that_stay() {
    let servers = pool(3).await;
    let with = |n: usize| {
        Setup::new().upstream("servers", addresses(&servers[..n])).upstream("sticky", json!({"cookie": {}})).route("/*")
    };
    let proxy = Proxy::launch(servers[0].addr, &with(2)).await;
    let (c0, c1) = (cookie_for(&proxy, "s0").await, cookie_for(&proxy, "s1").await);
    proxy.write_config(servers[0].addr, "", &with(3).body());
    assert!(eventually(5 * SECOND, || async { proxy.metric("unpoll_config_generation", &[]).await == 2.0 }).await);
    for _ in 0..10 {
        assert_eq!(served_by(&request(&proxy, "GET", &[("cookie", &c0)]).await), "s0");
        assert_eq!(served_by(&request(&proxy, "GET", &[("cookie", &c1)]).await), "s1");
    }
    let new_clients: std::collections::HashSet<String> =
        futures_util::future::join_all((0..9).map(|_| request(&proxy, "GET", &[])))
            .await
            .iter()
            .map(served_by)
            .collect();
    assert!(new_clients.contains("s2"), "the new server takes new clients: {new_clients:?}");
}

#[tokio::test]
async fn a_websocket_passed_through_a_plain_route_is_sticky_too() {
    // Two WebSocket servers, each noting the handshakes it accepts. Stickiness is read from
    // which one accepted each upgrade: frames after the 101 are not needed (and pingora can
    // tear an upgraded tunnel down when a fast upstream's 101 beats the request's empty
    // body: cloudflare/pingora#946, which also affects unpoll's plain WebSocket pass-through).
    let accepted: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let mut addrs = Vec::new();
    for name in ["w0", "w1"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap().to_string());
        let accepted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let accepted = accepted.clone();
                tokio::spawn(async move {
                    if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                        accepted.lock().unwrap().push(name);
                        drop(ws);
                    }
                });
            }
        });
    }
    let setup = Setup::new().upstream("servers", json!(addrs)).upstream("sticky", json!({"cookie": {}})).route("/*");
    let proxy = Proxy::launch(addrs[0].parse().unwrap(), &setup).await;
    // Upgrades once with `cookie`; which server accepted it, and the cookie the 101 set.
    let upgrade = |cookie: Option<String>| {
        let (addr, accepted) = (proxy.addr, accepted.clone());
        async move {
            let headers: Vec<(&str, &str)> = cookie.as_deref().map(|c| vec![("cookie", c)]).unwrap_or_default();
            let before = accepted.lock().unwrap().len();
            let (_ws, resp) = ws_connect(addr, "/chat", &[], &headers).await.expect("upgrade through the proxy");
            assert_eq!(resp.status(), 101);
            assert!(eventually(2 * SECOND, || async { accepted.lock().unwrap().len() > before }).await);
            let server = accepted.lock().unwrap()[before];
            let set =
                resp.headers().get("set-cookie").map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string());
            (server, set)
        }
    };
    let (home, cookie) = upgrade(None).await;
    let cookie = cookie.expect("the 101 sets the cookie");
    for _ in 0..10 {
        assert_eq!(upgrade(Some(cookie.clone())).await, (home, None), "the cookie's server, every time");
    }
    let mut fresh = std::collections::HashSet::new();
    for _ in 0..6 {
        fresh.insert(upgrade(None).await.0);
    }
    assert_eq!(fresh.len(), 2, "new clients are balanced: {fresh:?}");
}

#[tokio::test]
async fn hashing_on_the_source_address_keeps_each_client_on_its_server() {
    let servers = pool(3).await;
    let setup = Setup::new()
        .upstream("servers", addresses(&servers))
        .upstream("sticky", json!({"hash": {"source_ip": true}}))
        .route("/*");
    let proxy = Proxy::launch(servers[0].addr, &setup).await;
    let from = |i: u8| -> std::net::IpAddr { [127, 0, 0, 10 + i].into() };
    let ask = |ip| async move {
        let req = b"GET /who HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        served_by(&RawConn::send_from(ip, proxy.addr, req).await.read_to_end(5 * SECOND).await)
    };
    let mut homes = std::collections::HashSet::new();
    for i in 0..20 {
        let home = ask(from(i)).await;
        for _ in 0..3 {
            assert_eq!(ask(from(i)).await, home, "client {}", from(i));
        }
        homes.insert(home);
    }
    assert_eq!(homes.len(), 3, "20 addresses spread over the pool: {homes:?}");
}
