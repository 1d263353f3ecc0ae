//! docs/deployment.md's nginx recipe, as written there (addresses substituted, and plain HTTP
//! instead of its TLS listener), with Debian's nginx in front of a real unpoll: a plain request,
//! an SSE stream that nginx does not hold back, a WebSocket stream, and the client's address
//! passed on.

mod support;

use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const NGINX: &str = "/usr/sbin/nginx";

/// nginx with the recipe, stopped on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The recipe from docs/deployment.md, between its BEGIN and END lines.
fn recipe() -> String {
    let doc = include_str!("../docs/deployment.md");
    let start = doc.find("# BEGIN nginx recipe").expect("the recipe's BEGIN line");
    let end = doc.find("# END nginx recipe").expect("the recipe's END line");
    doc[start..end].to_string()
}

async fn nginx_in_front_of(unpoll: SocketAddr) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let recipe = recipe();
    assert!(recipe.contains("server 127.0.0.1:8080;") && recipe.contains("listen 8443 ssl http2;"), "{recipe}");
    let recipe = recipe
        .replace("server 127.0.0.1:8080;", &format!("server {unpoll};"))
        .replace("listen 8443 ssl http2;", &format!("listen 127.0.0.1:{port};"))
        .lines()
        .filter(|l| !l.trim_start().starts_with("ssl_certificate"))
        .collect::<Vec<_>>()
        .join("\n");
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{recipe}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(NGINX)
        .args(["-e", &format!("{d}/error.log"), "-p"])
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {NGINX} ({e}): run ./scripts/deps.sh, which installs nginx"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = eventually(10 * SECOND, || async { tokio::net::TcpStream::connect(addr).await.is_ok() }).await;
    let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
    assert!(up, "nginx did not start: {log}");
    Nginx { child, addr, _dir: dir }
}

#[tokio::test]
async fn the_nginx_recipe_passes_requests_streams_and_websockets() {
    let up = Upstream::start().await;
    up.set_json("/plain", &json!({"ok": true}));
    up.set_json("/doc", &json!({"v": 1}));
    let body = "upstreams:\n  app:\n    servers: [\"{upstream}\"]\nroutes:\n  - match: /doc\n    upstream: app\n    stream:\n      interval: 100ms\n  - match: /*\n    upstream: app\n";
    // As the recipe says: unpoll trusts nginx's address.
    let proxy = Proxy::start_with(up.addr, "  trusted_proxies: [127.0.0.1]\n", body).await;
    let nginx = nginx_in_front_of(proxy.addr).await;

    // A plain request, from another address than nginx's: unpoll passes the client's on.
    let client: IpAddr = "127.0.0.2".parse().unwrap();
    let request = "GET /plain HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n";
    let response = RawConn::send_from(client, nginx.addr, request.as_bytes()).await.read_to_end(5 * SECOND).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json(), json!({"ok": true}));
    let seen = up.seen("/plain");
    let forwarded = seen.last().and_then(|s| s.header("x-forwarded-for")).unwrap_or_default().to_string();
    assert!(forwarded.starts_with("127.0.0.2"), "the client's address first: {forwarded}");
    assert_eq!(seen.last().and_then(|s| s.header("x-forwarded-host")), Some("api.example"));

    // SSE through nginx and straight from unpoll: each event arrives through nginx within
    // 100 ms of arriving straight (nginx buffering would hold a small event back for good).
    let mut through = Sse::connect_from(client, nginx.addr, "/doc", &[]).await;
    let mut straight = Sse::connect(proxy.addr, "/doc", &[]).await;
    assert_eq!(through.next_event(5 * SECOND).await.expect("a snapshot through nginx").json(), json!({"v": 1}));
    assert_eq!(straight.next_event(5 * SECOND).await.expect("a snapshot").json(), json!({"v": 1}));
    for v in 2..=4 {
        up.set_json("/doc", &json!({"v": v}));
        let (a, b) = tokio::join!(async { (straight.next_event(5 * SECOND).await, Instant::now()) }, async {
            (through.next_event(5 * SECOND).await, Instant::now())
        },);
        let (direct, direct_at) = (a.0.expect("a patch straight from unpoll"), a.1);
        let (proxied, proxied_at) = (b.0.expect("the patch through nginx"), b.1);
        assert_eq!((proxied.kind(), proxied.data.clone()), (direct.kind(), direct.data.clone()));
        let late = proxied_at.saturating_duration_since(direct_at);
        assert!(late < Duration::from_millis(100), "version {v} came {late:?} later through nginx");
    }

    // A WebSocket through nginx: the upgrade passes, and the stream flows.
    let (mut ws, response) = ws_connect(nginx.addr, "/doc", &[], &[]).await.expect("the upgrade through nginx");
    assert_eq!(response.status(), 101);
    let snapshot = ws_event(&mut ws, 5 * SECOND).await;
    assert_eq!((snapshot["event"].as_str(), &snapshot["data"]), (Some("snapshot"), &json!({"v": 4})));
    up.set_json("/doc", &json!({"v": 5}));
    let patch = ws_event(&mut ws, 5 * SECOND).await;
    assert_eq!(patch["event"], "patch", "{patch}");
}
