//! TLS and HTTP/2 for clients: `server.tls` listeners with certificates the tests make,
//! reached by real TLS clients (rustls), WebSocket over TLS (tungstenite), and HTTP/2 clients
//! (the `h2` crate) over TLS and with prior knowledge (`server.h2c`).

mod support;

use bytes::Bytes;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::tls::{self, Ca, Issued};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A proxy with one TLS listener (its certificate and key in `dir`) beside its plain one.
struct TlsProxy {
    proxy: Proxy,
    tls: SocketAddr,
    dir: tempfile::TempDir,
}

impl TlsProxy {
    /// `cert` as the listener's certificate; `extra` more `server:` lines; `sni` more pairs.
    async fn start(up: &Upstream, setup: &Setup, cert: &Issued, sni: &[(&[&str], &Issued)]) -> TlsProxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let tls: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let (cert_file, key_file) = write_pair(dir.path(), "server", cert);
        let sni: Vec<Value> = sni
            .iter()
            .enumerate()
            .map(|(i, (names, issued))| {
                let (cert, key) = write_pair(dir.path(), &format!("sni{i}"), issued);
                json!({"names": names, "cert": cert, "key": key})
            })
            .collect();
        let listener = json!([{"listen": tls.to_string(), "cert": cert_file, "key": key_file, "sni": sni}]);
        let setup = setup.clone().server("tls", listener);
        let proxy = Proxy::launch(up.addr, &setup).await;
        TlsProxy { proxy, tls, dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Writes `issued` as `<name>.pem` and `<name>.key`.
fn write_pair(dir: &Path, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    (
        tls::write(dir, &format!("{name}.pem"), &issued.cert_pem),
        tls::write(dir, &format!("{name}.key"), &issued.key_pem),
    )
}

/// Sends `request` and reads the whole answer (the request asks to close).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(5 * SECOND, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads from `stream` until `bytes` hold `needle`, or `timeout`.
async fn read_until<S: AsyncRead + Unpin>(
    stream: &mut S,
    bytes: &mut Vec<u8>,
    needle: &str,
    timeout: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(bytes).contains(needle) {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    true
}

#[tokio::test]
async fn https_proxies_and_streams_sse_and_websocket_and_refuses_what_is_not_tls() {
    let ca = Ca::new("client-facing CA");
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    up.set_json("/api/x", &json!({"ok": true}));
    let setup = Setup::stream("/doc").every("50ms").route("/api/*");
    let p = TlsProxy::start(&up, &setup, &ca.server(&["localhost"]), &[]).await;
    let trusting = tls::client_config(&ca, &["http/1.1"]);

    // A plain request over TLS: answered, and the upstream is told the client used https.
    let mut c = tls::connect(p.tls, "localhost", trusting.clone()).await.unwrap();
    assert_eq!(tls::alpn(&c).as_deref(), Some("http/1.1"));
    let answer = exchange(&mut c, "GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.seen("/api/x");
    assert_eq!(seen.last().unwrap().header("x-forwarded-proto"), Some("https"));

    // SSE over TLS: the snapshot, then a change, then the stream ends with the shutdown;
    // every byte the client read was a TLS record (no plaintext written on the connection).
    let mut sse = tls::connect(p.tls, "localhost", trusting.clone()).await.unwrap();
    let seen = sse.get_ref().0.seen.clone();
    sse.write_all(b"GET /doc HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n").await.unwrap();
    let mut body = Vec::new();
    assert!(read_until(&mut sse, &mut body, "event: snapshot", 5 * SECOND).await);
    up.set_json("/doc", &doc(2));
    assert!(read_until(&mut sse, &mut body, "event: patch", 5 * SECOND).await);

    // WebSocket over TLS (wss://), on the same listener.
    let ws_tls = tls::connect(p.tls, "localhost", trusting.clone()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/doc", ws_tls).await.unwrap();
    let first = futures_util::StreamExt::next(&mut ws).await.unwrap().unwrap();
    let event: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!((event["event"].as_str(), &event["data"]), (Some("snapshot"), &doc(2)));

    // A client that does not trust the certificate fails its handshake; a plain HTTP
    // request to the TLS port is told to use https; the proxy serves on.
    let stranger = tls::client_config(&Ca::new("another CA"), &["http/1.1"]);
    assert!(tls::connect(p.tls, "localhost", stranger).await.is_err());
    let mut plain = tokio::net::TcpStream::connect(p.tls).await.unwrap();
    let answer = exchange(&mut plain, "GET /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("tls_required"), "{answer}");
    let mut again = tls::connect(p.tls, "localhost", trusting.clone()).await.unwrap();
    // Kept alive: three requests on one connection, one handshake.
    for i in 1..=3 {
        again.write_all(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        assert!(read_until(&mut again, &mut answer, "{\"ok\":true}", 5 * SECOND).await, "answer {i}");
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    }
    let answer = exchange(&mut again, "GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Connections that close as soon as they are answered, eight at a time: each new one gets
    // its own handshake, however soon its descriptor number was used before.
    let quick = futures_util::future::join_all((0..8).map(|_| {
        let trusting = trusting.clone();
        let addr = p.tls;
        async move {
            for _ in 0..25 {
                let mut c = tls::connect(addr, "localhost", trusting.clone()).await.expect("a handshake");
                let answer =
                    exchange(&mut c, "GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            }
        }
    }));
    quick.await;
    let listen = p.tls.to_string();
    let handshakes = |result: &'static str| {
        let listen = listen.clone();
        let proxy = &p.proxy;
        async move { proxy.metric("unpoll_tls_handshakes_total", &[("listen", &listen), ("result", result)]).await }
    };
    // The distrusting client fails the handshake; whether its alert arrives before it closes
    // is the client's doing (rustls's closes at once), so either is its count.
    let refused = || async { handshakes("rejected_by_client").await + handshakes("closed").await };
    assert!(eventually(5 * SECOND, || async { refused().await == 1.0 }).await);
    assert_eq!(handshakes("plaintext").await, 1.0);
    assert_eq!(handshakes("ok").await, 204.0);
    let connections = p.proxy.metric("unpoll_client_connections_total", &[("transport", "tls"), ("version", "1.1")]);
    assert_eq!(connections.await, 204.0);
    assert_eq!(p.proxy.metric("unpoll_client_streams", &[("version", "1.1")]).await, 2.0);
    assert!(!p.proxy.log().contains("ERROR"), "{}", p.proxy.log());

    // The shutdown ends the SSE stream with its last chunk and TLS's close_notify.
    let proxy = p.proxy;
    proxy.signal("TERM");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(5 * SECOND, sse.read_to_end(&mut rest)).await;
    assert!(matches!(ended, Ok(Ok(_))), "a clean end: {ended:?}");
    body.extend_from_slice(&rest);
    assert!(body.ends_with(b"0\r\n\r\n"), "{:?}", String::from_utf8_lossy(&body));
    let records = tls::tls_records(&seen.lock().unwrap());
    assert!(records.as_ref().is_ok_and(|n| *n > 3), "{records:?}");
    drop(ws);
}

/// One SSE subscription on an HTTP/2 stream, read in a task of its own (HTTP/2 flow control
/// wants every stream read): its document as it converges, and how it ended.
struct H2Sub {
    doc: Arc<Mutex<Option<Value>>>,
    ended: Arc<Mutex<Option<Result<(), String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl H2Sub {
    async fn open(send: &h2::client::SendRequest<Bytes>, authority: &str, path: &str) -> H2Sub {
        let request = http::Request::get(format!("https://{authority}{path}"))
            .header("accept", "text/event-stream")
            .body(())
            .unwrap();
        let mut send = send.clone().ready().await.unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body();
        let (doc, ended) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(None)));
        let (d, e) = (doc.clone(), ended.clone());
        let task = tokio::spawn(async move {
            let mut text = String::new();
            let mut state = Doc::new("json-patch");
            let end = loop {
                match body.data().await {
                    None => break Ok(()),
                    Some(Err(err)) => break Err(err.to_string()),
                    Some(Ok(data)) => {
                        let _ = body.flow_control().release_capacity(data.len());
                        text.push_str(std::str::from_utf8(&data).unwrap());
                        while let Some(at) = text.find("\n\n") {
                            let block: String = text.drain(..at + 2).collect();
                            let field =
                                |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).map(str::to_string);
                            if let (Some(kind), Some(data)) = (field("event: "), field("data: ")) {
                                state.apply(&kind, serde_json::from_str(&data).unwrap());
                                *d.lock().unwrap() = state.value.clone();
                            }
                        }
                    }
                }
            };
            *e.lock().unwrap() = Some(end);
        });
        H2Sub { doc, ended, task }
    }
}

/// Opens an HTTP/2 connection over `io`, driven in a task.
async fn h2_client<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: T) -> h2::client::SendRequest<Bytes> {
    h2_client_watched(io).await.0
}

/// The same, with a flag set once the connection has ended.
async fn h2_client_watched<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: T,
) -> (h2::client::SendRequest<Bytes>, Arc<std::sync::atomic::AtomicBool>) {
    let (send, connection) = h2::client::handshake(io).await.unwrap();
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ended.clone();
    tokio::spawn(async move {
        let _ = connection.await;
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    (send, ended)
}

/// `n` subscriptions on one HTTP/2 connection (`send`), to ten documents: each converges
/// over random changes; a reset one ends alone; SIGTERM ends the others cleanly.
async fn many_streams_on_one_connection(
    up: &Upstream,
    mut proxy: Proxy,
    send: h2::client::SendRequest<Bytes>,
    n: usize,
) {
    let mut subs = Vec::new();
    for i in 0..n {
        subs.push(H2Sub::open(&send, "localhost", &format!("/doc/{}", i % 10)).await);
    }
    let mut want: Vec<Value> = (0..10).map(|_| doc(0)).collect();
    for round in 1..=5u32 {
        for (id, value) in want.iter_mut().enumerate() {
            if rand::random::<bool>() || round == 5 {
                *value = json!({"v": round, "pad": "p".repeat(100), "n": rand::random::<u16>()});
                up.set_json(&format!("/doc/{id}"), value);
            }
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let converged = |subs: &[H2Sub], want: &[Value]| {
        subs.iter().enumerate().all(|(i, s)| s.doc.lock().unwrap().as_ref() == Some(&want[i % 10]))
    };
    assert!(eventually(10 * SECOND, || async { converged(&subs, &want) }).await, "every stream converges");
    assert_eq!(proxy.metric("unpoll_client_streams", &[("version", "2")]).await, n as f64);

    // Resetting one stream (dropping it: RST_STREAM) ends that subscription only.
    let reset = subs.remove(0);
    reset.task.abort();
    let _ = reset.task.await;
    let left = (n - 1) as f64;
    assert!(
        eventually(5 * SECOND, || async { proxy.metric("unpoll_client_streams", &[("version", "2")]).await == left })
            .await
    );
    let others = &subs;
    for (id, value) in want.iter_mut().enumerate() {
        *value = json!({"v": 6, "id": id});
        up.set_json(&format!("/doc/{id}"), value);
    }
    let converged_rest =
        || subs.iter().enumerate().all(|(i, s)| s.doc.lock().unwrap().as_ref() == Some(&want[(i + 1) % 10]));
    assert!(eventually(10 * SECOND, || async { converged_rest() }).await, "the other streams flow on");

    // SIGTERM: every stream ends cleanly (END_STREAM), well within the grace period.
    proxy.signal("TERM");
    let all_ended = || others.iter().all(|s| s.ended.lock().unwrap().is_some());
    assert!(eventually(10 * SECOND, || async { all_ended() }).await, "every stream ended");
    for s in others {
        assert_eq!(s.ended.lock().unwrap().clone(), Some(Ok(())), "a clean end, not a reset");
    }
    let exit = proxy.terminate(10 * SECOND).await;
    assert!(exit.is_some_and(|(status, _)| status.success()), "{exit:?}");
}

#[tokio::test]
async fn fifty_sse_streams_share_one_http2_connection_over_tls() {
    let ca = Ca::new("client-facing CA");
    let up = Upstream::start().await;
    for id in 0..10 {
        up.set_json(&format!("/doc/{id}"), &doc(0));
    }
    let setup = Setup::stream("/doc/{id}").every("50ms").route("/api/*");
    let p = TlsProxy::start(&up, &setup, &ca.server(&["localhost"]), &[]).await;
    let conn = tls::connect(p.tls, "localhost", tls::client_config(&ca, &["h2", "http/1.1"])).await.unwrap();
    assert_eq!(tls::alpn(&conn).as_deref(), Some("h2"));
    let send = h2_client(conn).await;
    // Plain proxying over HTTP/2 too, for a method with a body.
    let request = http::Request::post("https://localhost/api/x").body(()).unwrap();
    let (response, mut body) = send.clone().ready().await.unwrap().send_request(request, false).unwrap();
    body.send_data(Bytes::from_static(b"{\"a\":1}"), true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    let posted = up.seen("/api/x");
    assert_eq!(posted.last().unwrap().header("via").map(|v| v.starts_with("2 ")), Some(true), "{posted:?}");
    let connections = p.proxy.metric("unpoll_client_connections_total", &[("transport", "tls"), ("version", "2")]);
    assert_eq!(connections.await, 1.0);
    let TlsProxy { proxy, dir, .. } = p;
    many_streams_on_one_connection(&up, proxy, send, 50).await;
    drop(dir);
}

#[tokio::test]
async fn h2c_serves_http2_with_prior_knowledge_beside_http1_on_a_plain_listener() {
    let up = Upstream::start().await;
    for id in 0..10 {
        up.set_json(&format!("/doc/{id}"), &doc(0));
    }
    up.set_json("/api/x", &json!({"ok": true}));
    let setup = Setup::stream("/doc/{id}").every("50ms").route("/api/*").server("h2c", true);
    let proxy = Proxy::launch(up.addr, &setup).await;
    // HTTP/1.1 clients are served as before on the same listener, short requests included.
    let mut one = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let answer = exchange(&mut one, "GET /api/x HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut sse = Sse::connect(proxy.addr, "/doc/1", &[]).await;
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
    let send = h2_client(tokio::net::TcpStream::connect(proxy.addr).await.unwrap()).await;
    let connections = || proxy.metric("unpoll_client_connections_total", &[("transport", "tcp"), ("version", "2")]);
    assert!(eventually(5 * SECOND, || async { connections().await == 1.0 }).await);
    drop(sse);
    many_streams_on_one_connection(&up, proxy, send, 20).await;
}

#[tokio::test]
async fn http2_proxies_every_method_and_closes_idle_connections_but_not_those_carrying_streams() {
    use std::sync::atomic::Ordering::SeqCst;
    let up = Upstream::start().await;
    up.set_json("/doc/1", &doc(0));
    let setup =
        Setup::stream("/doc/{id}").every("50ms").route("/api/*").server("h2c", true).server("h2_idle_timeout", "300ms");
    let proxy = Proxy::launch(up.addr, &setup).await;
    let (send, idle_ended) = h2_client_watched(tokio::net::TcpStream::connect(proxy.addr).await.unwrap()).await;
    for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let sent = format!("{{\"sent\":\"{method}\"}}");
        let with_body = matches!(method, "POST" | "PUT" | "PATCH");
        let request = http::Request::builder().method(method).uri("http://localhost/api/m").body(()).unwrap();
        let (response, mut body) = send.clone().ready().await.unwrap().send_request(request, !with_body).unwrap();
        if with_body {
            body.send_data(Bytes::from(sent.clone()), true).unwrap();
        }
        let response = tokio::time::timeout(5 * SECOND, response).await.expect("answered").unwrap();
        assert_eq!(response.status(), 200, "{method}");
        let mut body = response.into_body();
        let mut got = Vec::new();
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
        let seen = up.seen("/api/m");
        let last = seen.last().unwrap();
        assert_eq!(last.method, method);
        assert_eq!(last.body, if with_body { sent.as_bytes() } else { b"" }, "{method}");
        if method == "HEAD" {
            assert!(got.is_empty(), "a HEAD answer has no body");
        } else {
            let echo: Value = serde_json::from_slice(&got).unwrap();
            assert_eq!(echo["method"], method);
        }
    }
    // Nothing open on it: the connection is closed after `h2_idle_timeout`.
    assert!(eventually(5 * SECOND, || async { idle_ended.load(SeqCst) }).await, "the idle connection was closed");

    // A connection carrying a subscription stays open well past it, and the stream flows on.
    let (send, streaming_ended) = h2_client_watched(tokio::net::TcpStream::connect(proxy.addr).await.unwrap()).await;
    let sub = H2Sub::open(&send, "localhost", "/doc/1").await;
    assert!(eventually(5 * SECOND, || async { sub.doc.lock().unwrap().as_ref() == Some(&doc(0)) }).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    up.set_json("/doc/1", &json!({"v": 1}));
    assert!(eventually(5 * SECOND, || async { sub.doc.lock().unwrap().as_ref() == Some(&json!({"v": 1})) }).await);
    assert!(!streaming_ended.load(SeqCst), "a connection carrying a stream is not idle");
    assert!(sub.ended.lock().unwrap().is_none());
    // Once its stream is reset, it is idle, and closed.
    sub.task.abort();
    assert!(eventually(5 * SECOND, || async { streaming_ended.load(SeqCst) }).await, "closed once idle");
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_handshakes_while_open_streams_go_on() {
    let ca = Ca::new("client-facing CA");
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let (first, second) = (ca.server(&["localhost"]), ca.server(&["localhost"]));
    let setup = Setup::stream("/doc").every("50ms");
    let p = TlsProxy::start(&up, &setup, &first, &[]).await;
    let config = tls::client_config(&ca, &["http/1.1"]);
    let serial = || async { tls::peer_certificate(&tls::connect(p.tls, "localhost", config.clone()).await.unwrap()) };
    assert_eq!(serial().await, first.der());

    let mut sse = tls::connect(p.tls, "localhost", config.clone()).await.unwrap();
    sse.write_all(b"GET /doc HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n").await.unwrap();
    let mut body = Vec::new();
    assert!(read_until(&mut sse, &mut body, "event: snapshot", 5 * SECOND).await);

    // Renewed in place, as certbot or cert-manager do: no signal, no restart.
    std::fs::write(p.file("server.key"), &second.key_pem).unwrap();
    std::fs::write(p.file("server.pem"), &second.cert_pem).unwrap();
    assert!(
        eventually(10 * SECOND, || async { serial().await == second.der() }).await,
        "new handshakes get the new pair"
    );
    up.set_json("/doc", &doc(2));
    assert!(read_until(&mut sse, &mut body, "event: patch", 5 * SECOND).await, "the open stream goes on");
    assert_eq!(tls::peer_certificate(&sse), first.der(), "with the pair it began with");

    // A broken replacement is refused: the pair in force keeps serving.
    std::fs::write(p.file("server.key"), "not a key").unwrap();
    let refused = || p.proxy.metric("unpoll_config_reloads_total", &[("result", "invalid")]);
    assert!(eventually(10 * SECOND, || async { refused().await >= 1.0 }).await);
    assert!(p.proxy.log().contains("server.tls[0].key"), "{}", p.proxy.log());
    assert_eq!(serial().await, second.der());
    assert_eq!(p.proxy.metric("unpoll_config_last_reload_successful", &[]).await, 0.0);
}

#[tokio::test]
async fn each_name_gets_its_own_certificate_by_sni() {
    let ca = Ca::new("client-facing CA");
    let up = Upstream::start().await;
    let (main, api, wild) = (ca.server(&["localhost"]), ca.server(&["api.test"]), ca.server(&["*.apps.test"]));
    let setup = Setup::new().route("/*");
    let p = TlsProxy::start(&up, &setup, &main, &[(&["api.test"], &api), (&["*.apps.test"], &wild)]).await;
    let config = tls::client_config(&ca, &["http/1.1"]);
    let cert_for = |sni: &'static str| {
        let config = config.clone();
        async move { tls::peer_certificate(&tls::connect(p.tls, sni, config).await.unwrap()) }
    };
    assert_eq!(cert_for("api.test").await, api.der());
    assert_eq!(cert_for("one.apps.test").await, wild.der());
    assert_eq!(cert_for("localhost").await, main.der());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    for name in ["default", "api.test", "*.apps.test"] {
        let expiry = p.proxy.metric_if_present("unpoll_tls_cert_expiry_seconds", &[("name", name)]).await;
        assert!(expiry.is_some_and(|t| t > now), "{name}: {expiry:?}");
    }
}

#[test]
fn unusable_pairs_are_problems_at_their_key_paths() {
    let ca = Ca::new("client-facing CA");
    let dir = tempfile::tempdir().unwrap();
    let good = ca.server(&["localhost"]);
    let expired = ca.server_with(&["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let (cert, key) = write_pair(dir.path(), "good", &good);
    let (old, old_key) = write_pair(dir.path(), "expired", &expired);
    let other_key = tls::write(dir.path(), "other.key", &ca.server(&["x"]).key_pem);
    let missing = dir.path().join("missing.pem");
    let text = format!(
        "server:\n  listen: [\"127.0.0.1:{}\"]\n  tls:\n    - {{listen: \"127.0.0.1:{}\", cert: {cert:?}, key: {other_key:?}}}\n    \
         - {{listen: \"127.0.0.1:{}\", cert: {old:?}, key: {old_key:?}}}\n    \
         - {{listen: \"127.0.0.1:{}\", cert: {missing:?}, key: {key:?}}}\n\
         upstreams: {{app: {{servers: [\"127.0.0.1:1\"]}}}}\nroutes: [{{match: /x, upstream: app}}]\n",
        free_port(),
        free_port(),
        free_port(),
        free_port()
    );
    let check = |text: &str| {
        let path = tls::write(dir.path(), "unpoll.yaml", text);
        let out = unpoll_command(None).args(["check", "-c"]).arg(&path).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = check(&text);
    assert!(!ok, "{err}");
    assert!(err.contains("server.tls[0].key") && err.contains("is not the key of the certificate"), "{err}");
    assert!(err.contains("server.tls[1].cert") && err.contains("expired"), "{err}");
    assert!(err.contains("server.tls[2].cert") && err.contains("cannot read"), "{err}");
    // Names and addresses are checked before any file is read.
    let text = format!(
        "server:\n  listen: [\"127.0.0.1:9\"]\n  tls:\n    - {{listen: \"127.0.0.1:9\", cert: {cert:?}, key: {key:?}, \
         sni: [{{names: [\"a b\"], cert: {cert:?}, key: {key:?}}}]}}\n\
         upstreams: {{app: {{servers: [\"127.0.0.1:1\"]}}}}\nroutes: [{{match: /x, upstream: app}}]\n"
    );
    let (ok, err) = check(&text);
    assert!(!ok && err.contains("server.tls[0].sni[0].names[0]"), "{err}");
    assert!(err.contains("server.tls[0].listen") && err.contains("server.listen[0]"), "{err}");
}

#[tokio::test]
async fn unfinished_handshakes_count_against_the_connection_limit_and_time_out() {
    let ca = Ca::new("client-facing CA");
    let up = Upstream::start().await;
    up.set_json("/api/x", &json!({"ok": true}));
    let setup = Setup::new().route("/*").server("max_connections", 4).server("header_timeout", "1s");
    let p = TlsProxy::start(&up, &setup, &ca.server(&["localhost"]), &[]).await;
    let open = || p.proxy.metric("unpoll_connections", &[]);
    assert!(eventually(5 * SECOND, || async { open().await == 0.0 }).await);
    // Four connections that never begin their handshake fill the proxy.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(tokio::net::TcpStream::connect(p.tls).await.unwrap());
    }
    assert!(eventually(5 * SECOND, || async { open().await == 4.0 }).await);
    // A fifth is closed before any handshake: a flood is bounded like any other.
    let config = tls::client_config(&ca, &["http/1.1"]);
    assert!(tls::connect(p.tls, "localhost", config.clone()).await.is_err(), "refused at the limit");
    let refused = p.proxy.metric("unpoll_requests_rejected_total", &[("reason", "too_many_connections")]);
    assert_eq!(refused.await, 1.0);
    // The silent four are closed after header_timeout, counted; then clients get in again.
    let timeouts = || p.proxy.metric("unpoll_tls_handshakes_total", &[("result", "timeout")]);
    assert!(eventually(5 * SECOND, || async { timeouts().await == 4.0 }).await);
    for mut s in silent {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(2 * SECOND, s.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    }
    let mut c = tls::connect(p.tls, "localhost", config).await.unwrap();
    let answer = exchange(&mut c, "GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
