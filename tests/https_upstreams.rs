//! HTTPS upstreams: polls, proxied requests and health checks over TLS to a real TLS server
//! on 127.0.0.1, with certificates the tests make (see docs and the README's "HTTPS
//! upstreams").

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::tls::{self, Ca};
use support::*;

/// An HTTPS test upstream with a certificate for `localhost` from `ca`.
async fn https_upstream(ca: &Ca, clients: Option<&Ca>) -> Upstream {
    Upstream::start_tls(tls::server_config(&ca.server(&["localhost"]), clients)).await
}

/// `upstreams.app.tls`, trusting the CA in `ca_file`, asking for `localhost`.
fn tls_settings(ca_file: &Path) -> Value {
    json!({"sni": "localhost", "ca": ca_file})
}

/// Follows an SSE subscription until its document is `want` (errors skipped), or `timeout`.
async fn sse_until(sse: &mut Sse, doc: &mut Doc, want: &Value, timeout: Duration) -> bool {
    let until = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < until {
        let Some(ev) = sse.next_event(Duration::from_millis(500)).await else { continue };
        if ev.kind() != "error" {
            doc.apply(ev.kind(), ev.json());
        }
        if doc.value.as_ref() == Some(want) {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn subscriptions_converge_and_every_method_is_proxied_over_few_handshakes() {
    let ca = Ca::new("test upstream CA");
    let up = https_upstream(&ca, None).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = tls::write(dir.path(), "ca.pem", &ca.pem());
    let setup = Setup::stream("/doc/{id}")
        .every("50ms")
        .route("/api/*")
        .upstream("tls", tls_settings(&ca_file))
        .upstream("health", json!({"path": "/healthz", "interval": "300ms", "timeout": "200ms"}));
    let proxy = Proxy::launch(up.addr, &setup).await;
    up.set_json("/doc/1", &doc(0));

    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    let (mut ws, _) = ws_connect(proxy.addr, "/doc/1", &[], &[]).await.unwrap();
    let (mut sse_doc, mut ws_doc) = (Doc::new("json-patch"), Doc::new("json-patch"));
    // Random changes, some faster than the interval; both converge on the last.
    let mut last = doc(0);
    for v in 1..=20u32 {
        last = json!({"v": v, "pad": "p".repeat(100), "list": (0..(rand::random::<u8>() % 8)).collect::<Vec<_>>()});
        up.set_json("/doc/1", &last);
        tokio::time::sleep(Duration::from_millis(u64::from(rand::random::<u8>() % 120))).await;
    }
    assert!(sse_until(&mut sse, &mut sse_doc, &last, Duration::from_secs(10)).await, "SSE did not converge");
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while ws_doc.value.as_ref() != Some(&last) && tokio::time::Instant::now() < until {
        let ev = ws_event(&mut ws, 5 * SECOND).await;
        ws_doc.apply(ev["event"].as_str().unwrap(), ev["data"].clone());
    }
    assert_eq!(ws_doc.value.as_ref(), Some(&last), "WebSocket did not converge");

    // Every method, proxied; the upstream is asked for its own name.
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let req = format!(
            "{method} /api/x?m={method} HTTP/1.1\r\nHost: app.example\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        let resp = RawConn::send(proxy.addr, req.as_bytes()).await.read_to_end(5 * SECOND).await;
        assert_eq!(resp.status, 200, "{method}");
        let echo = resp.json();
        assert_eq!(echo["method"], method);
        assert_eq!(echo["body"], "hi", "{method}");
        assert_eq!(echo["headers"]["host"], format!("localhost:{}", up.addr.port()), "{method}");
        assert_eq!(echo["headers"]["x-forwarded-host"], "app.example", "{method}");
    }
    // Polls carry the upstream's name too.
    let polls = up.seen("/doc/1");
    assert!(polls.iter().all(|s| s.header("host") == Some(&*format!("localhost:{}", up.addr.port()))));
    assert!(up.sni().iter().all(|n| n.as_deref() == Some("localhost")), "SNI: {:?}", up.sni());

    // Pooled: many polls and requests over few handshakes (health checks make their own).
    let (checks, handshakes) = (up.count("/healthz"), up.handshakes());
    let requests = polls.len() + up.count("/api/x");
    eprintln!("{requests} polls and requests, {checks} health checks, {handshakes} handshakes");
    assert!(checks > 0, "no health check reached the upstream over TLS");
    assert!(requests >= 20, "only {requests} polls and requests");
    assert!(handshakes <= checks + 6, "{handshakes} handshakes for {requests} requests and {checks} checks");
    assert!(proxy.metric("unpoll_health_checks_total", &[("result", "ok")]).await > 0.0);
    assert_eq!(proxy.metric("unpoll_health_checks_total", &[("result", "failed")]).await, 0.0);
    assert_eq!(proxy.metric("unpoll_upstream_reuse_refused_total", &[("reason", "stray_bytes")]).await, 0.0);
    assert_eq!(proxy.metric("unpoll_upstream_tls_failures_total", &[("kind", "poll")]).await, 0.0);
}

/// Two upstreams: `secure` over TLS (its CA in `ca_file`), `plain` on `plain`.
fn two_upstreams(secure: std::net::SocketAddr, ca_file: &Path, client: Option<(&Path, &Path)>) -> String {
    let mut tls = json!({"sni": "localhost", "ca": ca_file});
    if let Some((cert, key)) = client {
        tls["client_cert"] = json!(cert);
        tls["client_key"] = json!(key);
    }
    let upstreams =
        json!({"secure": {"servers": [secure.to_string()], "tls": tls}, "plain": {"servers": ["{upstream}"]}});
    let routes = json!([
        {"match": "/doc/{id}", "upstream": "secure", "stream": {"interval": "50ms"}},
        {"match": "/api/*", "upstream": "secure"},
        {"match": "/other/{id}", "upstream": "plain", "stream": {"interval": "50ms"}},
    ]);
    format!("upstreams: {upstreams}\nroutes: {routes}\n")
}

#[tokio::test]
async fn a_wrong_ca_is_an_upstream_tls_error_and_a_502_until_the_ca_file_is_fixed() {
    let (right, wrong) = (Ca::new("the upstream's CA"), Ca::new("another CA"));
    let up = https_upstream(&right, None).await;
    let plain = Upstream::start().await;
    plain.set_json("/other/1", &json!({"plain": true}));
    up.set_json("/doc/1", &doc(1));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = tls::write(dir.path(), "ca.pem", &wrong.pem());
    let proxy = Proxy::start(plain.addr, &two_upstreams(up.addr, &ca_file, None)).await;

    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    let ev = sse.next_event(5 * SECOND).await.expect("an event");
    assert_eq!(ev.kind(), "error");
    let error = ev.json();
    assert_eq!(error["error"], "upstream_tls", "{error}");
    assert!(!error.to_string().contains("UnknownIssuer"), "clients are not told internals: {error}");
    let resp = http_get(proxy.addr, "/api/x").await.unwrap();
    assert_eq!(resp.status, 502);
    // The proxy keeps serving the rest.
    let mut other = Sse::connect(proxy.addr, "/other/1", &[]).await;
    assert_eq!(other.next_event(5 * SECOND).await.unwrap().json(), json!({"plain": true}));
    // Polls keep failing (with backoff): each failure counted, one log line for the outage.
    let proxy_ref = &proxy;
    let tls_failures = move |kind| async move {
        proxy_ref.metric("unpoll_upstream_tls_failures_total", &[("upstream", "secure"), ("kind", kind)]).await
    };
    assert!(eventually(10 * SECOND, || async { tls_failures("poll").await >= 3.0 }).await, "polls stopped retrying");
    assert!(tls_failures("proxy").await >= 1.0);
    assert!(proxy.metric("unpoll_upstream_polls_total", &[("route", "/doc/{id}"), ("outcome", "tls")]).await >= 3.0);
    let log = proxy.log();
    assert_eq!(log.matches("is failing: TLS failed").count(), 1, "logged once per outage:\n{log}");
    assert!(log.contains(&format!("upstream secure server {}", up.addr)), "the log names the server");

    // The CA file is fixed: the change is picked up (no SIGHUP, no restart) and the same
    // subscription gets its document.
    std::fs::write(&ca_file, right.pem()).unwrap();
    let mut doc_seen = Doc::new("json-patch");
    assert!(sse_until(&mut sse, &mut doc_seen, &doc(1), Duration::from_secs(10)).await, "no recovery");
    assert_eq!(http_get(proxy.addr, "/api/x").await.unwrap().status, 200);
    assert!(proxy.log().contains("answers again"));

    // A broken replacement is refused at reload, and the CA read before stays in force.
    std::fs::write(&ca_file, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n").unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while proxy.metric("unpoll_config_reloads_total", &[("result", "invalid")]).await == 0.0 {
        assert!(tokio::time::Instant::now() < until, "the broken CA file was not noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proxy.log().contains("upstreams.secure.tls.ca"), "the refusal names the key");
    assert_eq!(http_get(proxy.addr, "/api/x").await.unwrap().status, 200);
    up.set_json("/doc/1", &doc(2));
    assert!(sse_until(&mut sse, &mut doc_seen, &doc(2), Duration::from_secs(5)).await, "polls stopped");
}

#[tokio::test]
async fn mutual_tls_works_with_the_client_certificate_and_is_refused_without() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let up = https_upstream(&server_ca, Some(&client_ca)).await;
    up.set_json("/doc/1", &doc(7));
    let plain = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = tls::write(dir.path(), "ca.pem", &server_ca.pem());
    let client = client_ca.client("unpoll");
    let cert = tls::write(dir.path(), "client.pem", &client.cert_pem);
    let key = tls::write(dir.path(), "client.key", &client.key_pem);

    let without = Proxy::start(plain.addr, &two_upstreams(up.addr, &ca_file, None)).await;
    assert_eq!(http_get(without.addr, "/api/x").await.unwrap().status, 502);
    let mut sse = Sse::connect(without.addr, "/doc/1", &[]).await;
    let ev = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!((ev.kind(), ev.json()["error"].as_str()), ("error", Some("upstream_tls")));

    let with = Proxy::start(plain.addr, &two_upstreams(up.addr, &ca_file, Some((&cert, &key)))).await;
    assert_eq!(http_get(with.addr, "/api/x").await.unwrap().status, 200);
    let mut sse = Sse::connect(with.addr, "/doc/1", &[]).await;
    let ev = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!((ev.kind(), ev.json()), ("snapshot", doc(7)));
}

/// An HTTPS upstream that follows alice's answers with stray bytes (a second answer, after a
/// delay), and a proxy polling and proxying `/whoami` through it with `reuse`.
async fn stray_setup(reuse: &str) -> (Upstream, Arc<Proxy>, tempfile::TempDir) {
    let ca = Ca::new("test upstream CA");
    let up = https_upstream(&ca, None).await;
    up.set_stray("Bearer alice", &[Duration::from_millis(1), Duration::from_millis(10), Duration::from_millis(40)]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = tls::write(dir.path(), "ca.pem", &ca.pem());
    let setup = Setup::stream("/whoami")
        .every("50ms")
        .route("/api/*")
        .upstream("reuse", reuse)
        .upstream("tls", tls_settings(&ca_file));
    let proxy = Arc::new(Proxy::launch(up.addr, &setup).await);
    (up, proxy, dir)
}

/// Each user's subscription to `/whoami` and plain requests of `/api/whoami` for `secs`:
/// the documents that were theirs, and those that were not.
async fn whoami_traffic(proxy: &Arc<Proxy>, users: &[&'static str], secs: u64) -> (usize, usize) {
    let (own, foreign) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for &user in users {
        let (proxy, own, foreign) = (proxy.clone(), own.clone(), foreign.clone());
        let check = move |doc: &Value| {
            if doc["user"] == user {
                own.fetch_add(1, Ordering::Relaxed);
            } else {
                eprintln!("{user} received {doc}");
                foreign.fetch_add(1, Ordering::Relaxed);
            }
        };
        tasks.push(tokio::spawn(async move {
            let mut sse = Sse::connect(proxy.addr, "/whoami", &[("Authorization", user)]).await;
            let mut doc = Doc::new("json-patch");
            while tokio::time::Instant::now() < until {
                let req = format!(
                    "GET /api/whoami HTTP/1.1\r\nHost: h\r\nAuthorization: {user}\r\nConnection: close\r\n\r\n"
                );
                let resp = RawConn::send(proxy.addr, req.as_bytes()).await.read_to_end(5 * SECOND).await;
                if resp.status == 200 {
                    check(&resp.json());
                }
                while let Some(ev) = sse.next_event(Duration::from_millis(1)).await {
                    if ev.kind() != "error" {
                        doc.apply(ev.kind(), ev.json());
                        check(doc.value.as_ref().unwrap());
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (own.load(Ordering::Relaxed), foreign.load(Ordering::Relaxed))
}

#[tokio::test]
async fn stray_bytes_from_a_tls_upstream_never_reach_another_user() {
    let (up, proxy, _dir) = stray_setup("per_credential").await;
    let (own, foreign) = whoami_traffic(&proxy, &["Bearer alice", "Bearer bob", "Bearer carol"], 10).await;
    eprintln!("{} strays sent; {own} own documents, {foreign} foreign", up.strays_sent());
    assert!(up.strays_sent() > 20, "the upstream misbehaved only {} times", up.strays_sent());
    assert_eq!(foreign, 0, "a document reached another user");
    assert!(own > 100, "only {own} documents were served");
}

#[tokio::test]
async fn a_tls_upstream_caught_leaving_bytes_behind_loses_connection_reuse() {
    let (up, proxy, _dir) = stray_setup("shared").await;
    let started = tokio::time::Instant::now();
    let mut caught = 0.0;
    while caught == 0.0 && started.elapsed() < Duration::from_secs(30) {
        whoami_traffic(&proxy, &["Bearer alice", "Bearer bob"], 1).await;
        caught = proxy.metric("unpoll_upstream_reuse_refused_total", &[("reason", "stray_bytes")]).await;
    }
    eprintln!("caught after {:?}", started.elapsed());
    assert!(caught > 0.0, "stray bytes read through TLS were never noticed");
    // Quarantined: every request now gets a connection (and a handshake) of its own.
    let (before, handshakes) = (up.count("/api/whoami"), up.handshakes());
    for _ in 0..10 {
        let req = "GET /api/whoami HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer bob\r\nConnection: close\r\n\r\n";
        let resp = RawConn::send(proxy.addr, req.as_bytes()).await.read_to_end(5 * SECOND).await;
        assert_eq!(resp.json()["user"], "Bearer bob");
    }
    let all: Vec<Seen> = up.seen("/whoami").into_iter().chain(up.seen("/api/whoami")).collect();
    for seen in &up.seen("/api/whoami")[before..] {
        assert_eq!(all.iter().filter(|s| s.conn == seen.conn).count(), 1, "a request shared its connection");
    }
    assert!(up.handshakes() >= handshakes + 10);
    assert!(proxy.log().contains("its connections are not reused"), "the quarantine is logged");
}

/// What `unpoll check` says of `config` (written to `dir`), which must be refused.
fn refused(dir: &Path, config: &str) -> String {
    let path = tls::write(dir, "unpoll.yaml", config);
    let out = unpoll_command(None).args(["check", "-c"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    text
}

fn says(text: &str, key: &str, what: &str) {
    let line = text.lines().find(|l| l.contains(&format!("{key}:"))).unwrap_or_else(|| panic!("no {key} in:\n{text}"));
    assert!(line.contains(what), "{key}: {line}");
}

#[tokio::test]
async fn check_names_each_bad_tls_setting_and_file_at_its_key() {
    let ca = Ca::new("a CA");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Settings that do not fit together.
    let text = refused(
        d,
        "upstreams:\n  half: {servers: ['localhost:1'], tls: {client_cert: /x.pem}}\n  by_ip: {servers: ['https://127.0.0.1:8443']}\n  by_ip_named: {servers: ['127.0.0.1:8443'], tls: {sni: api.example}}\n  mixed: {servers: ['https://localhost', 'http://localhost']}\n  relative: {servers: ['localhost:1'], tls: {ca: ca.pem}}\n  path: {servers: ['https://localhost/v1']}\nroutes: [{match: /x, upstream: half}]\n",
    );
    says(&text, "upstreams.half.tls.client_key", "`client_cert` needs `client_key` too");
    says(&text, "upstreams.by_ip.servers[0]", "is an IP address, which names no certificate: give `tls.sni`");
    says(&text, "upstreams.mixed.servers[1]", "`http://` here");
    says(&text, "upstreams.relative.tls.ca", "must be an absolute path");
    says(&text, "upstreams.path.servers[0]", "without a path");
    assert!(!text.contains("by_ip_named"), "an IP address with `sni` is fine:\n{text}");

    // Files that cannot be used.
    let one = ca.client("one");
    let cert = tls::write(d, "one.pem", &one.cert_pem);
    let other_key = tls::write(d, "two.key", &ca.client("two").key_pem);
    let empty = tls::write(d, "empty.pem", "not a certificate\n");
    let text = refused(
        d,
        &format!(
            "upstreams:\n  missing: {{servers: ['localhost:1'], tls: {{ca: {missing}}}}}\n  nocert: {{servers: ['https://localhost'], tls: {{ca: {empty}}}}}\n  mismatch: {{servers: ['localhost:1'], tls: {{client_cert: {cert}, client_key: {other_key}}}}}\n  nokey: {{servers: ['localhost:1'], tls: {{client_cert: {cert}, client_key: {cert}}}}}\nroutes: [{{match: /x, upstream: missing}}]\n",
            missing = d.join("nope.pem").display(),
            empty = empty.display(),
            cert = cert.display(),
            other_key = other_key.display(),
        ),
    );
    says(&text, "upstreams.missing.tls.ca", "cannot read");
    says(&text, "upstreams.nocert.tls.ca", "holds no certificate");
    says(&text, "upstreams.mismatch.tls.client_key", "is not the key of the certificate");
    says(&text, "upstreams.nokey.tls.client_key", "holds no private key");
}

#[tokio::test]
async fn a_host_without_a_readable_root_store_still_serves_and_check_asks_for_a_ca() {
    let plain = Upstream::start().await;
    let no_roots = [("SSL_CERT_FILE", "/nonexistent/unpoll-test-roots.pem")];
    // Pingora panics on a root store it cannot read; unpoll gives it an empty one.
    let proxy = Proxy::start_with_env(plain.addr, "", &Setup::new().route("/*").body(), &no_roots).await;
    assert_eq!(http_get(proxy.addr, "/x").await.unwrap().status, 200);
    assert!(proxy.log().contains("the system's root store cannot be read"), "{}", proxy.log());

    let dir = tempfile::tempdir().unwrap();
    let path = tls::write(
        dir.path(),
        "unpoll.yaml",
        "upstreams: {a: {servers: ['https://localhost']}}\nroutes: [{match: /x, upstream: a}]\n",
    );
    let out = unpoll_command(None).envs(no_roots).args(["check", "-c"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    says(&text, "upstreams.a.tls.ca", "the system's root store cannot be read");
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate_and_says_so_at_every_load() {
    let unknown = Ca::new("a CA nobody trusts");
    let up = https_upstream(&unknown, None).await;
    up.set_json("/doc/1", &doc(3));
    // An IP address with no `sni`: allowed only because nothing is verified.
    let setup = Setup::stream("/doc/{id}").route("/api/*").upstream("tls", json!({"insecure_skip_verify": true}));
    let proxy = Proxy::launch(up.addr, &setup).await;
    assert_eq!(http_get(proxy.addr, "/api/x").await.unwrap().status, 200);
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().json(), doc(3));
    assert_eq!(proxy.log().matches("tls.insecure_skip_verify is on").count(), 1, "{}", proxy.log());
    proxy.signal("HUP");
    assert!(
        eventually(5 * SECOND, || async { proxy.log().matches("tls.insecure_skip_verify is on").count() == 2 }).await,
        "not said again at the reload"
    );
}

#[tokio::test]
async fn upstreams_with_different_cas_never_share_a_connection() {
    let (right, other) = (Ca::new("the upstream's CA"), Ca::new("another CA"));
    let up = https_upstream(&right, None).await;
    let dir = tempfile::tempdir().unwrap();
    // Both trust the server; one trusts another CA as well. Same server, same name, one pool
    // for everyone: only the CA tells their connections apart.
    let one = tls::write(dir.path(), "one.pem", &right.pem());
    let both = tls::write(dir.path(), "both.pem", &format!("{}{}", other.pem(), right.pem()));
    let server = up.addr.to_string();
    let upstream = |ca: &Path| json!({"servers": [server], "reuse": "shared", "tls": {"sni": "localhost", "ca": ca}});
    let upstreams = json!({"one": upstream(&one), "both": upstream(&both)});
    let routes = json!([{"match": "/one/*", "upstream": "one"}, {"match": "/both/*", "upstream": "both"}]);
    let proxy = Proxy::start(up.addr, &format!("upstreams: {upstreams}\nroutes: {routes}\n")).await;
    for i in 0..20 {
        let path = if i % 2 == 0 { "/one/x" } else { "/both/x" };
        assert_eq!(http_get(proxy.addr, path).await.unwrap().status, 200, "{path}");
    }
    let seen = up.seen_all();
    let mut by_conn: std::collections::HashMap<usize, std::collections::HashSet<String>> = Default::default();
    for s in &seen {
        by_conn.entry(s.conn).or_default().insert(s.target.split('/').nth(1).unwrap().to_string());
    }
    eprintln!("{} requests on {} connections", seen.len(), by_conn.len());
    assert!(by_conn.len() < seen.len(), "connections were not reused at all");
    assert!(by_conn.values().all(|u| u.len() == 1), "a connection carried both upstreams' requests: {by_conn:?}");
}
