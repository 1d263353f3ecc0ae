//! The metrics an operator alerts on: every family exported from the start, at 0.

mod support;

use support::*;

#[tokio::test]
async fn every_metric_family_is_there_from_the_start() {
    let up = Upstream::start().await;
    let body = &Setup::stream("/doc").route("/*").body();
    let proxy = Proxy::start(up.addr, body).await;
    let text = proxy.metrics().await;
    let at_zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(metric_value(&text, name, labels), Some(0.0), "{name} {labels:?} is missing, or not 0");
    };
    for (protocol, kind) in [("sse", "snapshot"), ("websocket", "patch"), ("sse", "error")] {
        at_zero("unpoll_events_sent_total", &[("route", "/doc"), ("protocol", protocol), ("kind", kind)]);
    }
    at_zero("unpoll_sent_bytes_total", &[("route", "/doc"), ("protocol", "websocket")]);
    at_zero("unpoll_subscribers", &[("route", "/doc"), ("protocol", "sse")]);
    for outcome in ["changed", "unreachable", "timeout", "too_deep"] {
        at_zero("unpoll_upstream_polls_total", &[("route", "/doc"), ("outcome", outcome)]);
    }
    for reason in ["bad_path", "too_many_connections", "too_many_topics_for_client", "header_too_large"] {
        at_zero("unpoll_requests_rejected_total", &[("reason", reason)]);
    }
    for result in ["applied", "invalid", "rejected"] {
        at_zero("unpoll_config_reloads_total", &[("result", result)]);
    }
    at_zero("unpoll_subscribers_dropped_total", &[("route", "/doc"), ("reason", "ping_timeout")]);
    at_zero("unpoll_subscriber_lagged_total", &[("route", "/doc"), ("reason", "bytes")]);
    at_zero("unpoll_http_requests_total", &[("route", "/*"), ("kind", "proxy")]);
    at_zero("unpoll_http_requests_total", &[("route", ""), ("kind", "no_route")]);
    at_zero("unpoll_upstream_reuse_refused_total", &[("upstream", "app"), ("reason", "stray_bytes")]);
    at_zero("unpoll_upstream_poll_waits_total", &[("upstream", "app")]);
    at_zero("unpoll_diff_waits_total", &[("lane", "large")]);
    at_zero("unpoll_diff_budget_exhausted_total", &[("route", "/doc")]);
    at_zero("unpoll_history_trimmed_total", &[("route", "/doc")]);
    assert!(!text.contains("unpoll_bytes_sent_total"), "renamed to unpoll_sent_bytes_total");
    assert_eq!(undocumented_families(&text), Vec::<String>::new(), "every family is in docs/metrics.md");
    // A route added by a reload has its label sets from then on.
    proxy.write_config(up.addr, "", &Setup::stream("/doc").stream_route("/more").route("/*").body());
    assert!(eventually(5 * SECOND, || async { proxy.metric("unpoll_config_generation", &[]).await == 2.0 }).await);
    let text = proxy.metrics().await;
    assert_eq!(metric_value(&text, "unpoll_events_sent_total", &[("route", "/more"), ("kind", "patch")]), Some(0.0));
}

#[tokio::test]
async fn the_metric_matcher_tells_an_absent_series_from_zero_and_shows_what_it_saw() {
    let up = Upstream::start().await;
    let proxy = Proxy::launch(up.addr, &Setup::stream("/doc")).await;
    assert_eq!(proxy.metric("unpoll_topics", &[]).await, 0.0, "a series at 0 is 0");
    assert_eq!(proxy.metric_if_present("unpoll_topic", &[]).await, None, "a misspelt name is absent, not 0");
    let text = proxy.metrics().await;
    let renamed = absent(&text, "unpoll_topic", &[]);
    assert!(renamed.contains("no metric `unpoll_topic` at all") && renamed.contains("unpoll_topics "), "{renamed}");
    let relabelled = absent(&text, "unpoll_upstream_polls_total", &[("route", "/nowhere")]);
    assert!(relabelled.contains("route=\"/nowhere\"") && relabelled.contains("route=\"/doc\""), "{relabelled}");
    // `metric` fails on an absent series, printing what it saw.
    let proxy = std::sync::Arc::new(proxy);
    let asked = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.metric("unpoll_topic", &[]).await }
    });
    let failure = asked.await.expect_err("an absent series is a failure");
    let message = failure.into_panic().downcast::<String>().map(|s| *s).unwrap_or_default();
    assert!(message.contains("unpoll_topics"), "{message}");
}

#[tokio::test]
async fn latencies_are_histograms_and_the_process_reports_itself() {
    let up = Upstream::start().await;
    up.set_json("/doc", &doc(1));
    let proxy = Proxy::launch(up.addr, &Setup::stream("/doc").every("100ms").route("/*")).await;
    let text = proxy.metrics().await;
    for (name, labels) in [
        ("unpoll_upstream_poll_duration_seconds_count", vec![("upstream", "app")]),
        ("unpoll_subscribe_duration_seconds_count", vec![("route", "/doc")]),
        ("unpoll_fanout_lag_seconds_count", vec![("route", "/doc")]),
        ("unpoll_proxy_request_duration_seconds_count", vec![("route", "/*"), ("status", "2xx")]),
    ] {
        assert_eq!(
            metric_value(&text, name, &labels),
            Some(0.0),
            "{name} from the start:\n{}",
            absent(&text, name, &labels)
        );
    }
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    assert_eq!(sse.next_event(5 * SECOND).await.unwrap().kind(), "snapshot");
    assert_eq!(http_get(proxy.addr, "/plain").await.unwrap().status, 200);
    assert!(
        eventually(5 * SECOND, || async {
            proxy.metric("unpoll_upstream_poll_duration_seconds_count", &[("upstream", "app")]).await >= 2.0
        })
        .await
    );
    assert_eq!(proxy.metric("unpoll_subscribe_duration_seconds_count", &[("route", "/doc")]).await, 1.0);
    let proxied = [("route", "/*"), ("status", "2xx")];
    assert_eq!(proxy.metric("unpoll_proxy_request_duration_seconds_count", &proxied).await, 1.0);
    assert!(proxy.metric("unpoll_proxy_request_duration_seconds_sum", &proxied).await > 0.0);
    // An event's fan-out lag is counted once the next version supersedes it.
    for v in 2..=3 {
        up.set_json("/doc", &doc(v));
        assert_eq!(sse.next_event(5 * SECOND).await.unwrap().kind(), "patch");
    }
    let lag = proxy.metric("unpoll_fanout_lag_seconds_count", &[("route", "/doc")]).await;
    assert!(lag >= 2.0, "the snapshot's version and the first patch's: {lag}");
    let mean = proxy.metric("unpoll_fanout_lag_seconds_sum", &[("route", "/doc")]).await / lag;
    assert!(mean > 0.0 && mean < 1.0, "from the poll's answer to the write: {mean} s");
    // The standard process families, and what was built.
    let text = proxy.metrics().await;
    assert!(metric_value(&text, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(metric_value(&text, "process_open_fds", &[]).unwrap() >= 5.0);
    assert_eq!(metric_value(&text, "process_max_fds", &[]), Some(20000.0));
    assert!(metric_value(&text, "process_cpu_seconds_total", &[]).is_some());
    assert!(metric_value(&text, "process_start_time_seconds", &[]).unwrap() > 1.7e9);
    let version = env!("CARGO_PKG_VERSION");
    let build = text.lines().find(|l| l.starts_with("unpoll_build_info{")).expect("unpoll_build_info");
    assert!(
        build.contains(&format!("version=\"{version}\"")) && build.contains("commit=\"") && build.ends_with(" 1"),
        "{build}"
    );
}
