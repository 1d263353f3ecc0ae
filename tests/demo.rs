//! `unpoll demo` works on its own: the page, a shared stream, and a per-user stream.

mod support;

use std::process::{Command, Stdio};
use support::*;

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_demo_serves_its_page_and_live_streams() {
    let (listen, admin, api) = (free_addr(), free_addr(), free_addr());
    let child = Command::new(env!("CARGO_BIN_EXE_unpoll"))
        .args(["demo", "--listen", &listen, "--admin", &admin, "--api", &api])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child);
    let addr = listen.parse().unwrap();
    assert!(eventually(15 * SECOND, || async { http_get(addr, "/").await.is_some_and(|r| r.status == 200) }).await);
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
