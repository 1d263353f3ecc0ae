//! The fan-out load tool, run small: 500 subscribers for 5 s through a real unpoll in front of
//! the bench upstream. Checks behaviour only (every event delivered in order, one upstream GET
//! per interval, every delivery timed), never speed: the figures are in docs/benchmarks.md.
#![cfg(feature = "bench-tools")]

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use support::*;

const BENCH: &str = env!("CARGO_BIN_EXE_unpoll-bench");

/// The bench upstream, changing its document twice a second; killed on drop.
struct BenchUpstream {
    child: Child,
    addr: SocketAddr,
}

impl BenchUpstream {
    fn start() -> BenchUpstream {
        let mut child = Command::new(BENCH)
            .args(["upstream", "--rate", "2", "--size", "1024"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("unpoll-bench runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        BenchUpstream { child, addr: line.trim().parse().expect("the upstream prints its address") }
    }
}

impl Drop for BenchUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn fan_out(protocol: &str) -> Value {
    fan_out_with(protocol, &[]).await
}

/// Runs `unpoll-bench` with `args` and returns its JSON report.
async fn bench(args: Vec<String>) -> Value {
    let out = tokio::task::spawn_blocking(move || Command::new(BENCH).args(args).output().expect("unpoll-bench runs"))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

async fn fan_out_with(protocol: &str, extra: &[&str]) -> Value {
    let up = BenchUpstream::start();
    let body = "upstreams:\n  bench:\n    servers: [\"{upstream}\"]\nroutes:\n  - match: /doc\n    upstream: bench\n    stream:\n      interval: 500ms\n";
    let proxy = Proxy::start(up.addr, body).await;
    let args = [
        "subscribe".to_string(),
        format!("--url=http://{}/doc", proxy.addr),
        "--n=500".into(),
        format!("--protocol={protocol}"),
        "--warmup=1".into(),
        "--duration=5".into(),
        "--interval=0.5".into(),
        format!("--upstream-stats=http://{}/stats", up.addr),
        format!("--pid={}", proxy.pid()),
        "--json".into(),
    ];
    bench(args.into_iter().chain(extra.iter().map(|a| a.to_string())).collect()).await
}

fn check(report: &Value) {
    check_delivery(report);
    let text = report.to_string();
    // One poll per interval for all 500 (a window edge may hold one poll more or less).
    let gets = report["upstream_gets_per_interval"].as_f64().unwrap();
    assert!((0.85..=1.15).contains(&gets), "{text}");
}

/// Every subscriber subscribed and got every event, in order, each one timed.
fn check_delivery(report: &Value) {
    let text = report.to_string();
    assert_eq!(report["subscribed"], 500, "{text}");
    assert_eq!(report["failed"], serde_json::json!({}), "{text}");
    assert_eq!(report["lost"], 0, "{text}");
    assert_eq!(report["out_of_order"], 0, "{text}");
    assert_eq!(report["behind_at_end"], 0, "{text}");
    assert_eq!(report["ended_early"], 0, "{text}");
    assert_eq!(report["error_events"], 0, "{text}");
    // 5 s at two changes a second: about 10 events for each of the 500 subscribers.
    let deliveries = report["deliveries"].as_u64().unwrap();
    assert!((4_000..=6_000).contains(&deliveries), "{text}");
    assert_eq!(report["latency_ms"]["count"].as_u64(), Some(deliveries), "every delivery is timed: {text}");
    assert_eq!(report["unstamped"], 0, "{text}");
    assert!(report["server_cpu_s"].as_f64().unwrap() > 0.0, "{text}");
    assert!(report["server_mem_kib_per_subscriber"].as_f64().is_some(), "{text}");
    assert!(report["server_rss_kib_per_subscriber"].as_f64().is_some(), "{text}");
}

#[tokio::test]
async fn sse_fan_out_delivers_every_event_with_one_poll_per_interval() {
    check(&fan_out("sse").await);
}

#[tokio::test]
async fn websocket_fan_out_delivers_every_event_with_one_poll_per_interval() {
    check(&fan_out("ws").await);
}

#[tokio::test]
async fn subscribers_spread_over_topics_get_one_poll_per_topic_each() {
    // 500 subscribers over 5 topics (`/doc?t=0` … `/doc?t=4`): each topic is polled on its own.
    let report = fan_out_with("sse", &["--topics=5"]).await;
    check_delivery(&report);
    let text = report.to_string();
    assert_eq!(report["topics"], 5, "{text}");
    let gets = report["upstream_gets_per_interval"].as_f64().unwrap();
    assert!((4.25..=5.75).contains(&gets), "five polls per interval: {text}");
    assert!(report["upstream_peak_gets_10ms"].as_u64().unwrap() >= 1, "{text}");
    assert!(report["server_cpu_us_per_poll"].as_f64().unwrap() > 0.0, "{text}");
}

#[tokio::test]
async fn pollers_poll_once_per_interval_and_see_the_changes() {
    let up = BenchUpstream::start();
    let report = bench(vec![
        "poll".into(),
        format!("--url=http://{}/doc", up.addr),
        "--n=20".into(),
        "--interval=0.5".into(),
        "--warmup=1".into(),
        "--duration=4".into(),
        format!("--upstream-stats=http://{}/stats", up.addr),
        format!("--upstream-pid={}", up.child.id()),
        "--json".into(),
    ])
    .await;
    let text = report.to_string();
    assert_eq!(report["errors"], 0, "{text}");
    // 20 clients twice a second, for 4 s: about 160 requests, every one a GET upstream.
    let requests = report["requests"].as_u64().unwrap();
    assert!((136..=184).contains(&requests), "{text}");
    let (rate, gets) = (report["requests_per_s"].as_f64().unwrap(), report["upstream_gets_per_s"].as_f64().unwrap());
    assert!((rate - gets).abs() <= rate * 0.15, "{text}");
    // The document changes twice a second: every client sees new versions, each one timed.
    assert!(report["changes_seen"].as_u64().unwrap() >= 20 * 4, "{text}");
    assert!(report["staleness_ms"]["p50"].as_f64().is_some(), "{text}");
    // A response is about a kilobyte and a request a few dozen bytes.
    let bytes = report["bytes_per_client_per_min"].as_f64().unwrap();
    assert!((100_000.0..=160_000.0).contains(&bytes), "{text}");
    assert!(report["upstream_cpu_share"].as_f64().unwrap() > 0.0, "{text}");
}
