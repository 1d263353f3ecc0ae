//! Graceful upgrade: a new process takes the listening sockets over on SIGQUIT, with no
//! connection refused, and stream clients move to it.

mod support;

use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

#[tokio::test]
async fn a_new_process_takes_over_on_sigquit_without_refusing_connections() {
    let up = Upstream::start().await;
    up.set_json("/doc", &json!({"v": 1, "pad": "p".repeat(100)}));
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("upgrade.sock");
    let server = format!("  grace_period: 2s\n  upgrade_sock: \"{}\"\n", sock.display());
    let body = &Setup::stream("/doc").every("200ms").route("/*").body();
    let mut old = Proxy::start_with(up.addr, &server, body).await;
    let old_pid = old.pid().to_string();
    let mut sse = Sse::connect(old.addr, "/doc", &[]).await;
    let first = sse.next_event(5 * SECOND).await.unwrap();

    // The new process waits on the upgrade socket for the old one's listeners.
    let log = std::fs::File::create(sock_dir.path().join("new.log")).unwrap();
    let mut new = Command::new(env!("CARGO_BIN_EXE_unpoll"))
        .args(["run", "--upgrade", "-c"])
        .arg(old.config_path())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");

    // Requests keep being answered throughout the hand-over.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(9);
    let mut answered = 0;
    let mut new_admin_seen = false;
    while tokio::time::Instant::now() < deadline {
        let r = http_get(old.addr, "/plain").await.expect("a connection was refused during the upgrade");
        assert_eq!(r.status, 200);
        answered += 1;
        if let Some(h) = http_get(old.admin, "/healthz").await {
            new_admin_seen |= h.header("x-unpoll-pid") == Some(new.id().to_string().as_str());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered > 50);
    assert!(new_admin_seen, "the new process serves the same admin address");

    // The old process closed its streams (clients reconnect) and exited.
    assert!(sse.next_event(5 * SECOND).await.is_none() && sse.conn.finished, "the old stream ended cleanly");
    let (status, _) = old
        .terminate(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("old process still running: {}", old.log()));
    let _ = status;
    // Reconnecting with Last-Event-ID reaches the new process: another epoch, so a snapshot.
    let mut again = Sse::connect(old.addr, "/doc", &[("Last-Event-ID", first.id.as_deref().unwrap())]).await;
    let ev = again.next_event(5 * SECOND).await.unwrap();
    assert_eq!(ev.kind(), "snapshot");
    assert_ne!(ev.id.unwrap().split('-').next(), first.id.unwrap().split('-').next());
    let h = http_get(old.admin, "/healthz").await.unwrap();
    assert_ne!(h.header("x-unpoll-pid"), Some(old_pid.as_str()));
    let _ = new.kill();
    let _ = new.wait();
}

#[tokio::test]
async fn readyz_reports_draining_once_shutdown_begins() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let body = &Setup::new().route("/*").body();
    let mut proxy = Proxy::start_with(up.addr, "  grace_period: 5s\n", body).await;
    // A plain request still in flight keeps the proxy draining (an idle one exits at once).
    up.set_delay(Duration::from_millis(3000));
    let addr = proxy.addr;
    let slow = tokio::spawn(async move { http_get(addr, "/slow").await });
    // It is in flight (at the upstream) before the shutdown begins: else the proxy, idle,
    // would exit at once.
    assert!(eventually(5 * SECOND, || async { up.count("/slow") == 1 }).await);
    // One keep-alive connection to the admin listener.
    let mut admin = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
    let ask = b"GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n";
    let mut buf = vec![0u8; 512];
    admin.write_all(ask).await.unwrap();
    let n = admin.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("ready\n"), "{text}");
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin.write_all(ask).await.unwrap();
    let n = admin.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 503") && text.ends_with("draining\n"), "{text}");
    // New connections too, while it drains: a load balancer is told, not refused.
    for _ in 0..5 {
        let r = http_get(proxy.admin, "/readyz").await.expect("the admin listener answers while draining");
        assert_eq!((r.status, r.body.as_slice()), (503, &b"draining\n"[..]));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(slow.await.unwrap().map(|r| r.status), Some(200));
    assert!(proxy.terminate(Duration::from_secs(10)).await.is_some());
}

#[tokio::test]
async fn systemd_is_told_when_unpoll_is_ready_and_when_it_stops() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = &Setup::new().route("/*").body();
    let mut proxy =
        Proxy::start_with_env(up.addr, "  grace_period: 2s\n", body, &[("NOTIFY_SOCKET", path.to_str().unwrap())])
            .await;
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(http_get(proxy.addr, "/x").await.map(|r| r.status), Some(200), "ready means serving");
    proxy.signal("TERM");
    let n = socket.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(proxy.terminate(Duration::from_secs(10)).await.is_some());
}

#[tokio::test]
async fn shutdown_ends_as_soon_as_nothing_is_left_to_drain() {
    let up = Upstream::start().await;
    up.set_json("/doc", &json!({"v": 1}));
    let body = &Setup::stream("/doc").route("/*").body();
    // Idle: out at once, not after the 10 s grace period.
    let mut idle = Proxy::start_with(up.addr, "  grace_period: 10s\n", body).await;
    let (status, took) = idle.terminate(Duration::from_secs(5)).await.expect("an idle proxy exits at once");
    assert!(status.success() && took < Duration::from_secs(2), "{status:?} after {took:?}");
    let log = idle.log();
    assert!(!log.lines().any(|l| l.contains("INFO  pingora")), "pingora's info lines are quiet:\n{log}");
    // Busy: a stream (closed at once) and a plain request in flight (finished first).
    let mut busy = Proxy::start_with(up.addr, "  grace_period: 10s\n", body).await;
    let mut sse = Sse::connect(busy.addr, "/doc", &[]).await;
    sse.next_event(5 * SECOND).await.unwrap();
    up.set_delay(Duration::from_millis(1500));
    let addr = busy.addr;
    let slow = tokio::spawn(async move { http_get(addr, "/slow").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, took) = busy.terminate(Duration::from_secs(8)).await.expect("exits once the request is done");
    assert!(status.success(), "{status:?}");
    assert!(took > Duration::from_millis(900) && took < Duration::from_secs(4), "exited after {took:?}");
    assert_eq!(slow.await.unwrap().map(|r| r.status), Some(200), "the request in flight was answered");
    assert!(sse.next_event(SECOND).await.is_none() && sse.conn.finished, "the stream ended cleanly");
}
