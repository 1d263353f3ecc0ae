//! `unpoll demo` works on its own: the page, a shared stream, and a per-user stream.

mod support;

use std::process::{Command, Stdio};
use support::*;

/// Three distinct addresses below the kernel's ephemeral range (where the demo's own outgoing
/// connections to its API never land).
fn free_addrs() -> (String, String, String) {
    loop {
        let [a, b, c] = [free_port(), free_port(), free_port()];
        if a != b && b != c && a != c {
            let at = |p: u16| format!("127.0.0.1:{p}");
            return (at(a), at(b), at(c));
        }
    }
}

struct Kill(std::process::Child, tempfile::TempDir);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `unpoll demo` and waits until it serves its page; tries other ports when one was taken
/// in the meantime (pingora keeps retrying a port in use rather than exiting).
async fn start_demo() -> (Kill, std::net::SocketAddr) {
    for _ in 0..3 {
        let (listen, admin, api) = free_addrs();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("demo.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_unpoll"))
            .args(["demo", "--listen", &listen, "--admin", &admin, "--api", &api])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let guard = Kill(child, dir);
        let addr = listen.parse().unwrap();
        if eventually(15 * SECOND, || async { http_get(addr, "/").await.is_some_and(|r| r.status == 200) }).await {
            return (guard, addr);
        }
        let log = std::fs::read_to_string(guard.1.path().join("demo.log")).unwrap_or_default();
        eprintln!("the demo did not serve its page on {listen}; retrying with other ports:\n{log}");
    }
    panic!("the demo did not start");
}

#[tokio::test]
async fn the_demo_serves_its_page_and_live_streams() {
    let (_guard, addr) = start_demo().await;
    let page = http_get(addr, "/").await.unwrap();
    let html = String::from_utf8(page.body).unwrap();
    assert!(
        html.contains(r#"import { subscribe } from "/unpoll-client/index.js""#)
            && html.contains(r#"transport: "websocket""#),
        "the page subscribes both ways, with the project's client"
    );
    for module in ["/unpoll-client/index.js", "/unpoll-client/patch.js"] {
        let served = http_get(addr, module).await.unwrap();
        assert_eq!(served.status, 200, "{module}");
        assert!(String::from_utf8(served.body).unwrap().contains("export function"), "{module} is the client");
    }

    let mut board = Sse::connect(addr, "/api/departures", &[]).await;
    let snap = board.next_event(5 * SECOND).await.unwrap();
    assert_eq!(snap.kind(), "snapshot");
    assert!(snap.json()["departures"].as_array().is_some_and(|d| !d.is_empty()));
    let next = board.next_event(10 * SECOND).await.expect("the board changes on its own");
    assert!(["patch", "snapshot"].contains(&next.kind()));

    let mut alice = Sse::connect(addr, "/api/me/notifications", &[("Authorization", "Bearer alice")]).await;
    assert_eq!(alice.next_event(5 * SECOND).await.unwrap().json()["user"], "alice");
    let (mut bob, _) =
        ws_connect(addr, "/api/me/notifications", &[], &[("authorization", "Bearer bob")]).await.unwrap();
    assert_eq!(ws_event(&mut bob, 5 * SECOND).await["data"]["user"], "bob");
    // The page's way: the token in the URL (EventSource cannot send Authorization).
    let mut carol = Sse::connect(addr, "/api/me/notifications?access_token=carol", &[]).await;
    assert_eq!(carol.next_event(5 * SECOND).await.unwrap().json()["user"], "carol");
    let mut anonymous = Sse::connect(addr, "/api/me/notifications", &[]).await;
    let denied = anonymous.next_event(5 * SECOND).await.unwrap();
    assert_eq!((denied.kind(), denied.json()["status"].as_u64()), ("error", Some(401)));
}
