//! The demo page in a real browser: headless Chromium, driven over the DevTools protocol, loads
//! `unpoll demo`'s page and must see every panel receive patches, the charts drawn, and no
//! script error. `./scripts/deps.sh` installs Chromium.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

/// Headless Chromium with its DevTools endpoint on a free port; returns the process and the
/// endpoint's `host:port`.
fn chromium(profile: &std::path::Path, extra: &[&str]) -> (Kill, String) {
    let binary = std::env::var("UNPOLL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut child = Command::new(&binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary} ({e}): run ./scripts/deps.sh, which installs chromium"));
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ws://") {
                let _ = tx.send(url.split('/').next().unwrap_or("").to_string());
            }
        }
    });
    let endpoint = rx.recv_timeout(Duration::from_secs(30)).expect("Chromium announces its DevTools endpoint");
    (Kill(child), endpoint)
}

/// Opens `url` in a new tab; returns the tab's DevTools WebSocket URL.
async fn new_tab(endpoint: &str, url: &str) -> String {
    let mut c = tokio::net::TcpStream::connect(endpoint).await.unwrap();
    let req = format!("PUT /json/new?{url} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    // Read by Content-Length: the DevTools server may keep the connection open.
    let mut resp = Vec::new();
    let text = loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut chunk)).await.unwrap().unwrap();
        resp.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&resp).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok());
            if n == 0 || length.is_some_and(|l| resp.len() >= end + 4 + l) {
                break text;
            }
        }
        assert!(n > 0, "the DevTools server closed early: {text}");
    };
    let body = &text[text.find("\r\n\r\n").expect("a response") + 4..];
    let tab: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    tab["webSocketDebuggerUrl"].as_str().expect("the tab's DevTools URL").to_string()
}

/// Starts `unpoll demo` with `more` arguments; returns it and its plain listen address.
async fn demo(listen: &str, more: &[&str]) -> Kill {
    let (admin, api) = (free_addr(), free_addr());
    let demo = Command::new(env!("CARGO_BIN_EXE_unpoll"))
        .args(["demo", "--listen", listen, "--admin", &admin, "--api", &api])
        .args(more)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let demo = Kill(demo);
    let addr = listen.parse().unwrap();
    assert!(eventually(15 * SECOND, || async { http_get(addr, "/").await.is_some_and(|r| r.status == 200) }).await);
    demo
}

/// Opens `url` in Chromium (with `flags`) and evaluates `expression` (JSON text) every half
/// second until `done` holds of its value or 40 s pass; returns the last value and the script
/// errors the page reported.
async fn watch(url: &str, flags: &[&str], expression: &str, done: impl Fn(&Value) -> bool) -> (Value, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let (_browser, endpoint) = chromium(profile.path(), flags);
    let (mut tab, _) =
        tokio_tungstenite::connect_async(new_tab(&endpoint, url).await).await.expect("the tab's DevTools socket");
    let mut next_id = 0;
    let mut call = |method: &str, params: Value| {
        next_id += 1;
        (next_id, Message::text(json!({"id": next_id, "method": method, "params": params}).to_string()))
    };
    let (_, enable) = call("Runtime.enable", json!({}));
    tab.send(enable).await.unwrap();
    let mut problems: Vec<String> = Vec::new();
    let mut state = Value::Null;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !done(&state) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (id, ask) = call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true}));
        tab.send(ask).await.unwrap();
        // Read until the answer, noting script errors the page reports meanwhile.
        loop {
            let Some(Ok(Message::Text(text))) =
                tokio::time::timeout(Duration::from_secs(10), tab.next()).await.ok().flatten()
            else {
                panic!("the browser stopped answering");
            };
            let msg: Value = serde_json::from_str(&text).unwrap();
            match msg["method"].as_str() {
                Some("Runtime.exceptionThrown") => problems.push(msg["params"]["exceptionDetails"].to_string()),
                Some("Runtime.consoleAPICalled") if msg["params"]["type"] == "error" => {
                    problems.push(msg["params"]["args"].to_string())
                }
                _ => {}
            }
            if msg["id"] == id {
                state =
                    serde_json::from_str(msg["result"]["result"]["value"].as_str().unwrap_or("{}")).unwrap_or_default();
                break;
            }
        }
    }
    (state, problems)
}

#[tokio::test]
async fn every_panel_of_the_demo_shows_patches_in_a_real_browser() {
    let listen = free_addr();
    let _demo = demo(&listen, &[]).await;
    let expression = "JSON.stringify({seen: window.unpollDemo && window.unpollDemo.seen, \
        charts: document.querySelectorAll('#bytes-chart polyline, #requests-chart polyline').length})";
    let done = |state: &Value| ["sse", "ws", "me"].iter().all(|p| state["seen"][p]["patch"].as_u64().unwrap_or(0) >= 2);
    let (state, problems) = watch(&format!("http://{listen}/"), &[], expression, done).await;
    assert!(
        done(&state),
        "every panel shows patches (JSON Patch over SSE, Merge Patch over WebSocket, per user): {state}"
    );
    assert_eq!(state["charts"], 4, "both charts draw two lines");
    assert!(problems.is_empty(), "script errors on the page: {problems:?}");
}

#[tokio::test]
async fn the_demo_page_over_https_keeps_ten_streams_live_on_one_http2_connection() {
    let dir = tempfile::tempdir().unwrap();
    let issued = support::tls::Ca::new("demo CA").server(&["localhost", "127.0.0.1"]);
    let cert = support::tls::write(dir.path(), "cert.pem", &issued.cert_pem);
    let key = support::tls::write(dir.path(), "key.pem", &issued.key_pem);
    let (listen, tls) = (free_addr(), free_addr());
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let _demo = demo(&listen, &["--tls-listen", &tls, "--tls-cert", &cert, "--tls-key", &key]).await;
    // Ten SSE streams (the board, the user's notifications, eight orders) and a WebSocket:
    // over HTTP/1.1 a browser would open at most six connections, and the rest would stall.
    let expression = "JSON.stringify({seen: window.unpollDemo && window.unpollDemo.seen, \
        protocol: window.unpollDemo && window.unpollDemo.protocol()})";
    let done = |state: &Value| {
        let seen = &state["seen"];
        ["sse", "ws", "me"].iter().all(|p| seen[p]["patch"].as_u64().unwrap_or(0) >= 1)
            && (1..=8).all(|i| seen["orders"][i.to_string()]["patch"].as_u64().unwrap_or(0) >= 1)
    };
    let flags = ["--ignore-certificate-errors"];
    let (state, problems) = watch(&format!("https://{tls}/?orders=8"), &flags, expression, done).await;
    assert!(done(&state), "every stream shows patches: {state}");
    assert_eq!(state["protocol"], "h2", "the page came over HTTP/2");
    assert!(problems.is_empty(), "script errors on the page: {problems:?}");
}
