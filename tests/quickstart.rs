//! The README's quick start, step by step, with Python's file server as the "legacy API" (on
//! free ports instead of 3000 and 8080): the stream shows the snapshot, then the patch.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_quick_start_shows_a_snapshot_then_a_patch() {
    let dir = tempfile::tempdir().unwrap();
    let api = dir.path().join("api");
    std::fs::create_dir_all(api.join("orders")).unwrap();
    std::fs::write(api.join("orders/42.json"), "{\"id\":42,\"status\":\"packed\"}\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _python = Kill(
        Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(&api)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(eventually(10 * SECOND, || async { tokio::net::TcpStream::connect(upstream).await.is_ok() }).await);
    // The README's routes, as written there.
    let readme = include_str!("../README.md");
    assert!(readme.contains("  - match: /orders/{id}              # GETs here can now be subscribed to"));
    let routes = "upstreams:\n  api:\n    servers: [\"{upstream}\"]\nroutes:\n  - match: /orders/{id}\n    upstream: api\n    stream:\n      interval: 1s\n  - match: /*\n    upstream: api\n";
    let proxy = Proxy::start(upstream, routes).await;
    let mut sse = Sse::connect(proxy.addr, "/orders/42.json", &[]).await;
    let snapshot = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!((snapshot.kind(), snapshot.data.as_deref()), ("snapshot", Some(r#"{"id":42,"status":"packed"}"#)));
    // The file server's Last-Modified counts whole seconds: change the order a second later, as
    // a person following the README would.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(api.join("orders/42.json"), "{\"id\":42,\"status\":\"shipped\"}\n").unwrap();
    let patch = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!(
        (patch.kind(), patch.data.as_deref()),
        ("patch", Some(r#"[{"op":"replace","path":"/status","value":"shipped"}]"#))
    );
}
