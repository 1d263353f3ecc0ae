//! Live reload: file changes and SIGHUP apply valid configurations atomically; invalid ones
//! and restart-only changes keep the running configuration; live streams follow.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

const BASE: &str = "upstreams:\n  app:\n    servers: [\"{upstream}\"]\nroutes:\n  - match: /doc\n    upstream: app\n    stream:\n      interval: 1s\n";

async fn generation(proxy: &Proxy) -> f64 {
    proxy.metric("unpoll_config_generation", &[]).await
}

#[tokio::test]
async fn a_changed_file_is_applied_and_a_broken_one_is_not() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, BASE).await;
    assert_eq!(http_get(proxy.addr, "/new").await.unwrap().status, 404);
    proxy.write_config(up.addr, "", &format!("{BASE}  - match: /new\n    upstream: app\n"));
    assert!(eventually(5 * SECOND, || async { generation(&proxy).await == 2.0 }).await, "{}", proxy.log());
    assert_eq!(http_get(proxy.addr, "/new").await.unwrap().status, 200);
    assert_eq!(proxy.metric("unpoll_config_reloads_total", &[("result", "applied")]).await, 1.0);
    assert_eq!(proxy.metric("unpoll_config_last_reload_successful", &[]).await, 1.0);

    // Unknown key and bad duration: refused, every problem logged with its path, old config stays.
    let broken =
        format!("{BASE}      colour: red\n  - match: /newer\n    upstream: app\n    stream:\n      interval: soon\n");
    proxy.write_config(up.addr, "", &broken);
    assert!(
        eventually(5 * SECOND, || async {
            proxy.metric("unpoll_config_reloads_total", &[("result", "invalid")]).await == 1.0
        })
        .await
    );
    let log = proxy.log();
    assert!(log.contains("routes[0].stream.colour") && log.contains("routes[1].stream.interval"), "{log}");
    assert_eq!(generation(&proxy).await, 2.0);
    assert_eq!(http_get(proxy.addr, "/new").await.unwrap().status, 200, "the running config still serves");
    assert_eq!(http_get(proxy.addr, "/newer").await.unwrap().status, 404);

    // A syntax error is refused the same way.
    proxy.write_config(up.addr, "", "routes: [\n");
    assert!(
        eventually(5 * SECOND, || async {
            proxy.metric("unpoll_config_reloads_total", &[("result", "invalid")]).await == 2.0
        })
        .await
    );
    assert_eq!(http_get(proxy.addr, "/new").await.unwrap().status, 200);
    assert_eq!(proxy.metric("unpoll_config_last_reload_successful", &[]).await, 0.0, "the alert's signal");
    // Fixed: applied, and the signal clears.
    proxy.write_config(up.addr, "", BASE);
    assert!(eventually(5 * SECOND, || async { generation(&proxy).await == 3.0 }).await, "{}", proxy.log());
    assert_eq!(proxy.metric("unpoll_config_last_reload_successful", &[]).await, 1.0);
}

#[tokio::test]
async fn a_file_written_in_several_steps_is_read_once_finished() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, BASE).await;
    let full =
        config_text(proxy.addr, proxy.admin, up.addr, "", &format!("{BASE}  - match: /new\n    upstream: app\n"));
    // An editor that truncates, writes half, pauses, then writes the rest.
    let (first, second) = full.split_at(full.len() / 2);
    std::fs::write(proxy.config_path(), first).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    std::fs::write(proxy.config_path(), full.clone()).unwrap();
    let _ = second;
    assert!(eventually(5 * SECOND, || async { generation(&proxy).await == 2.0 }).await);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        proxy.metric("unpoll_config_reloads_total", &[("result", "invalid")]).await,
        0.0,
        "the half file was never loaded"
    );
    assert_eq!(http_get(proxy.addr, "/new").await.unwrap().status, 200);
}

#[tokio::test]
async fn sighup_reloads_and_restart_only_changes_are_refused_whole() {
    let up = Upstream::start().await;
    let mut proxy = Proxy::start_args(up.addr, "", BASE, &["--no-watch"]).await;
    proxy.write_config(up.addr, "", &format!("{BASE}  - match: /new\n    upstream: app\n"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(generation(&proxy).await, 1.0, "--no-watch: the file alone does nothing");
    proxy.signal("HUP");
    assert!(eventually(5 * SECOND, || async { generation(&proxy).await == 2.0 }).await);
    assert_eq!(http_get(proxy.addr, "/new").await.unwrap().status, 200);

    // Changing the thread count needs a restart: the whole file is refused.
    proxy.write_config(up.addr, "  grace_period: 3s\n", &format!("{BASE}  - match: /newer\n    upstream: app\n"));
    proxy.signal("HUP");
    assert!(
        eventually(5 * SECOND, || async {
            proxy.metric("unpoll_config_reloads_total", &[("result", "rejected")]).await == 1.0
        })
        .await
    );
    assert!(proxy.log().contains("server.grace_period changed; restart unpoll"), "{}", proxy.log());
    assert_eq!(http_get(proxy.addr, "/newer").await.unwrap().status, 404, "nothing of that file applied");
    assert_eq!(generation(&proxy).await, 2.0);
    let (status, _) = proxy.terminate(10 * SECOND).await.unwrap();
    assert!(status.success(), "SIGHUP did not kill the process");
}

#[tokio::test]
async fn live_topics_follow_their_changed_route_without_disconnecting() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let proxy = Proxy::start(up.addr, &BASE.replace("interval: 1s", "interval: 2s")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    let (mut ws, _) = ws_connect(proxy.addr, "/doc", &[], &[]).await.unwrap();
    sse.next_event(5 * SECOND).await.unwrap();
    ws_event(&mut ws, 5 * SECOND).await;
    proxy.write_config(up.addr, "", &BASE.replace("interval: 1s", "interval: 100ms"));
    assert!(eventually(5 * SECOND, || async { generation(&proxy).await == 2.0 }).await);
    let before = up.count("/doc");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(up.count("/doc") - before >= 5, "the new interval applies to the live topic");
    up.set_json("/doc", &doc(2));
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().kind(), "patch", "same stream, no new snapshot");
    assert_eq!(ws_event(&mut ws, 5 * SECOND).await["event"], "patch");
    assert_eq!(proxy.metric("unpoll_topics", &[]).await, 1.0);
}

#[tokio::test]
async fn removed_and_rekeyed_routes_close_their_subscribers() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    up.set_json("/board", &doc(1));
    let two = format!("{BASE}  - match: /board\n    upstream: app\n    stream:\n      interval: 1s\n");
    let proxy = Proxy::start(up.addr, &two).await;
    let mut doc_sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    let (mut doc_ws, _) = ws_connect(proxy.addr, "/doc", &[], &[]).await.unwrap();
    let mut board = Sse::connect(proxy.addr, "/board", &[]).await;
    doc_sse.next_event(5 * SECOND).await.unwrap();
    ws_event(&mut doc_ws, 5 * SECOND).await;
    board.next_event(5 * SECOND).await.unwrap();
    // /doc is removed; /board becomes public (its topics were keyed with credentials).
    let next = "upstreams:\n  app:\n    servers: [\"{upstream}\"]\nroutes:\n  - match: /board\n    upstream: app\n    stream:\n      interval: 1s\n      share: public\n";
    proxy.write_config(up.addr, "", next);
    let removed = doc_sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!((removed.kind(), removed.json()["error"].as_str()), ("error", Some("route_removed")));
    assert!(doc_sse.next_event(2 * SECOND).await.is_none() && doc_sse.conn.finished);
    let ws_err = ws_event(&mut doc_ws, 5 * SECOND).await;
    assert_eq!(ws_err["data"]["error"], "route_removed");
    assert!(matches!(ws_next(&mut doc_ws, 5 * SECOND).await, Some(WsNext::Close(Some(1001)))));
    let changed = board.next_event(5 * SECOND).await.unwrap();
    assert_eq!(changed.json()["error"], "route_changed");
    // Resubscribing works under the new rules.
    let mut again = Sse::connect(proxy.addr, "/board", &[]).await;
    assert_eq!(again.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
    assert_eq!(http_get(proxy.addr, "/doc").await.unwrap().status, 404);
}

#[tokio::test]
async fn reloads_under_load_drop_no_stream_and_mix_no_configuration() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    a.set_json("/plain", &json!({"from": "a"}));
    b.set_json("/plain", &json!({"from": "b"}));
    a.set_json("/doc", &doc(1));
    let config = |plain: &str| {
        format!(
            "upstreams:\n  a:\n    servers: [\"{}\"]\n  b:\n    servers: [\"{}\"]\nroutes:\n  - match: /doc\n    upstream: a\n    stream:\n      interval: 50ms\n  - match: /plain\n    upstream: {plain}\n",
            a.addr, b.addr
        )
    };
    let proxy = Proxy::start_args(a.addr, "", &config("a"), &["--no-watch"]).await;
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    let (mut ws, _) = ws_connect(proxy.addr, "/doc", &[], &[]).await.unwrap();
    sse.next_event(5 * SECOND).await.unwrap();
    ws_event(&mut ws, 5 * SECOND).await;
    // Plain requests in a loop while the configuration flips.
    let addr = proxy.addr;
    let looping = tokio::spawn(async move {
        let mut answers = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        while tokio::time::Instant::now() < deadline {
            let r = http_get(addr, "/plain").await.expect("the proxy answers");
            answers.push((r.status, r.json()["from"].as_str().unwrap_or("").to_string()));
        }
        answers
    });
    for flip in 0..20u32 {
        proxy.write_config(a.addr, "", &config(if flip % 2 == 0 { "b" } else { "a" }));
        proxy.signal("HUP");
        let want = f64::from(flip + 2);
        assert!(eventually(5 * SECOND, || async { generation(&proxy).await == want }).await);
        a.set_json("/doc", &doc(flip + 2));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answers = looping.await.unwrap();
    assert!(answers.len() > 50, "{} requests", answers.len());
    assert!(answers.iter().all(|(s, from)| *s == 200 && (from == "a" || from == "b")), "{answers:?}");
    assert!(answers.iter().any(|(_, f)| f == "a") && answers.iter().any(|(_, f)| f == "b"));
    // Both streams stayed open and converged on the last version.
    let mut client = Doc::new("json-patch");
    client.value = Some(doc(1));
    while client.value != Some(doc(21)) {
        let ev = sse.next_event(5 * SECOND).await.expect("the SSE stream survived every reload");
        client.apply(ev.kind(), ev.json());
    }
    let mut last = json!(null);
    while last["id"].as_str().is_none_or(|id| !id.ends_with("-21")) {
        last = ws_event(&mut ws, 5 * SECOND).await;
        assert_ne!(last["event"], "error");
    }
    assert_eq!(proxy.metric("unpoll_config_reloads_total", &[("result", "applied")]).await, 20.0);
}

#[tokio::test]
async fn a_route_moved_to_another_upstream_keeps_its_subscribers() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    a.set_json("/doc", &doc(1));
    b.set_json("/doc", &doc(2));
    let config = |name: &str| {
        format!(
            "upstreams:\n  a:\n    servers: [\"{}\"]\n  b:\n    servers: [\"{}\"]\nroutes:\n  - match: /doc\n    upstream: {name}\n    stream:\n      interval: 100ms\n",
            a.addr, b.addr
        )
    };
    let proxy = Proxy::start(a.addr, &config("a")).await;
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    let (mut ws, _) = ws_connect(proxy.addr, "/doc", &["unpoll.merge-patch"], &[]).await.unwrap();
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().json(), doc(1));
    assert_eq!(ws_event(&mut ws, 5 * SECOND).await["data"], doc(1));
    proxy.write_config(a.addr, "", &config("b"));
    // The same streams carry on: the next poll goes to b, whose document differs by a patch.
    let patch = sse.next_event(5 * SECOND).await.unwrap();
    assert_eq!((patch.kind(), patch.json()), ("patch", json!([{"op": "replace", "path": "/v", "value": 2}])));
    let ws_patch = ws_event(&mut ws, 5 * SECOND).await;
    assert_eq!((ws_patch["event"].as_str(), ws_patch["data"].clone()), (Some("patch"), json!({"v": 2})));
    let polled_a = a.count("/doc");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.count("/doc"), polled_a, "no more polls to the old upstream");
    assert!(b.count("/doc") >= 3);
    assert_eq!(proxy.metric("unpoll_topics", &[]).await, 1.0, "one topic, kept");
}

#[tokio::test]
async fn a_configmap_volume_update_is_applied() {
    // The kubelet swaps the `..data` symlink to a new directory in one rename.
    let up = Upstream::start().await;
    let proxy = Proxy::start_configmap(up.addr, BASE).await;
    assert_eq!(http_get(proxy.addr, "/new").await.unwrap().status, 404);
    proxy.swap_configmap(up.addr, &format!("{BASE}  - match: /new\n    upstream: app\n"), 2);
    assert!(eventually(5 * SECOND, || async { generation(&proxy).await == 2.0 }).await, "{}", proxy.log());
    assert_eq!(http_get(proxy.addr, "/new").await.unwrap().status, 200);
    proxy.swap_configmap(up.addr, &format!("{BASE}  - match: /newer\n    upstream: app\n"), 3);
    assert!(eventually(5 * SECOND, || async { generation(&proxy).await == 3.0 }).await, "{}", proxy.log());
    assert_eq!(http_get(proxy.addr, "/newer").await.unwrap().status, 200);
    assert_eq!(http_get(proxy.addr, "/new").await.unwrap().status, 404, "the swapped-out file is gone");
}

#[tokio::test]
async fn an_editor_that_writes_a_new_file_and_renames_it_is_followed_and_no_change_is_missed() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, BASE).await;
    let save = |route: &str| {
        let text = config_text(
            proxy.addr,
            proxy.admin,
            up.addr,
            "",
            &format!("{BASE}  - match: {route}\n    upstream: app\n"),
        );
        let tmp = proxy.config_path().with_extension("yaml.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, proxy.config_path()).unwrap();
    };
    save("/first");
    assert!(eventually(5 * SECOND, || async { generation(&proxy).await == 2.0 }).await, "{}", proxy.log());
    assert_eq!(http_get(proxy.addr, "/first").await.unwrap().status, 200);
    // Two saves inside one settle window (500 ms): the last one is what runs.
    save("/second");
    tokio::time::sleep(Duration::from_millis(200)).await;
    save("/third");
    assert!(
        eventually(5 * SECOND, || async { http_get(proxy.addr, "/third").await.unwrap().status == 200 }).await,
        "{}",
        proxy.log()
    );
    // And a save landing just after a reload began is not lost either.
    tokio::time::sleep(Duration::from_millis(900)).await;
    save("/fourth");
    tokio::time::sleep(Duration::from_millis(600)).await;
    save("/fifth");
    assert!(eventually(5 * SECOND, || async { http_get(proxy.addr, "/fifth").await.unwrap().status == 200 }).await);
    assert_eq!(http_get(proxy.addr, "/fourth").await.unwrap().status, 404);
    assert_eq!(proxy.metric("unpoll_config_reloads_total", &[("result", "invalid")]).await, 0.0);
}
