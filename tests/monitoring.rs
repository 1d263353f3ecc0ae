//! The monitoring `deploy/` ships, against the real thing: the alert rules pass promtool's
//! own unit tests, every metric the rules and the Grafana dashboard query is one a running
//! unpoll exports, and a real Prometheus scraping a running unpoll sees its subscribers.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(format!("{ROOT}/deploy/prometheus"))
        .output()
        .expect("promtool (./scripts/deps.sh installs Debian's prometheus)");
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    said
}

#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() {
    promtool(&["check", "rules", "alerts.yaml"]);
    let said = promtool(&["test", "rules", "alerts.test.yaml"]);
    assert!(said.contains("SUCCESS"), "{said}");
    // Every alert has its words for the person paged, and a test that makes it fire.
    let rules: yaml_serde::Value = yaml_serde::from_str(&read("deploy/prometheus/alerts.yaml")).unwrap();
    let tests = read("deploy/prometheus/alerts.test.yaml");
    let alerts = rules["groups"][0]["rules"].as_sequence().unwrap();
    assert!(alerts.len() >= 10);
    for rule in alerts {
        let name = rule["alert"].as_str().unwrap();
        let runbook = rule["annotations"]["runbook"].as_str().unwrap_or("");
        assert!(rule["annotations"]["summary"].is_string() && runbook.len() > 80, "{name}: summary and runbook");
        assert!(tests.contains(&format!("alertname: {name}\n        exp_alerts:\n          - exp_labels")), "{name}");
        assert!(read("docs/operations.md").contains(&format!("`{name}`")), "docs/operations.md explains {name}");
    }
}

/// Every metric name in `text` (a PromQL expression, or many).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = |p: &str| text[i..].starts_with(p) && (i == 0 || !(bytes[i - 1] as char).is_ascii_alphanumeric());
        if starts("unpoll_") || starts("process_") {
            let end = text[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(text.len(), |n| i + n);
            names.insert(text[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_query_is_exported() {
    // A cluster configuration (its Redis need not answer) exports the cluster families too.
    let up = Upstream::start().await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), CLUSTER_SECRET).unwrap();
    // And a TLS listener, for the certificate families.
    let dir = tempfile::tempdir().unwrap();
    let issued = support::tls::Ca::new("monitoring CA").server(&["localhost"]);
    let cert = support::tls::write(dir.path(), "cert.pem", &issued.cert_pem);
    let key = support::tls::write(dir.path(), "key.pem", &issued.key_pem);
    let listener = serde_json::json!([{"listen": format!("127.0.0.1:{}", free_port()), "cert": cert, "key": key}]);
    let setup = Setup::stream("/doc")
        .cluster("redis", "redis://127.0.0.1:9/0")
        .cluster("secret_file", secret.path().display().to_string())
        .route("/*")
        .server("tls", listener);
    let proxy = Proxy::launch(up.addr, &setup).await;
    let exported = proxy.metrics().await;
    let series: BTreeSet<&str> =
        exported.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let rules = read("deploy/prometheus/alerts.yaml");
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/unpoll.json")).unwrap();
    let mut queried: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queried.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    let from_rules = metric_names(&rules);
    let from_dashboard = metric_names(&queried.join("\n"));
    assert!(from_rules.len() >= 12 && from_dashboard.len() >= 25, "{from_rules:?} {from_dashboard:?}");
    for name in from_rules.iter().chain(&from_dashboard) {
        let histogram = format!("{name}_bucket");
        let found = series.contains(name.as_str()) || series.contains(histogram.as_str());
        assert!(found, "{name} is named but not exported:\n{exported}");
    }
    // What the issue asks the dashboard to show.
    for shown in [
        "unpoll_subscribers",
        "unpoll_topics",
        "unpoll_upstream_polls_total",
        "unpoll_bytes_saved_total",
        "unpoll_upstream_requests_saved_total",
        "unpoll_fanout_lag_seconds_bucket",
        "unpoll_subscribers_dropped_total",
        "unpoll_upstream_server_up",
    ] {
        assert!(from_dashboard.contains(shown), "the dashboard shows {shown}");
    }
}

/// A chunked body's data.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&body[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 2 + size + 2..];
    }
    out
}

/// A free port on 127.0.0.1, for a server that takes its port as a flag.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Debian's Prometheus scraping `target` every second, with unpoll's alert rules.
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(format!("{ROOT}/deploy/prometheus/alerts.yaml"), dir.path().join("alerts.yaml")).unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [alerts.yaml]\n\
             scrape_configs:\n  - job_name: unpoll\n    static_configs: [{{targets: ['{target}']}}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (./scripts/deps.sh installs it)");
        Prometheus { child, addr, _dir: dir }
    }

    async fn api(&self, path: &str) -> Option<Value> {
        let r = http_get(self.addr, path).await?;
        if r.status != 200 {
            return None;
        }
        let body = if r.header("transfer-encoding") == Some("chunked") { dechunk(&r.body) } else { r.body };
        serde_json::from_slice(&body).ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_subscriber_the_test_opened() {
    let up = Upstream::start().await;
    up.set_json("/doc", &json!({"v": 1}));
    let proxy = Proxy::launch(up.addr, &Setup::stream("/doc").every("200ms")).await;
    let prometheus = Prometheus::start(proxy.admin);
    let query = "/api/v1/query?query=unpoll_subscribers%7Broute%3D%22%2Fdoc%22%2Cprotocol%3D%22sse%22%7D";
    let value = |v: &Value| v["data"]["result"][0]["value"][1].as_str().map(str::to_string);
    // Scraped, with no subscriber yet.
    let zero = eventually(30 * SECOND, || async {
        prometheus.api(query).await.and_then(|v| value(&v)).as_deref() == Some("0")
    });
    assert!(zero.await, "Prometheus never saw unpoll_subscribers at 0:\n{}", prometheus.log());
    let mut sse = Sse::connect(proxy.addr, "/doc", &[]).await;
    sse.next_event(5 * SECOND).await.unwrap();
    let one = eventually(10 * SECOND, || async {
        prometheus.api(query).await.and_then(|v| value(&v)).as_deref() == Some("1")
    });
    assert!(one.await, "Prometheus never saw the subscriber:\n{}", prometheus.log());
    // The target is healthy and the alert rules loaded, none firing.
    let targets = prometheus.api("/api/v1/targets").await.unwrap();
    assert_eq!(targets["data"]["activeTargets"][0]["health"], "up", "{targets:#}");
    let rules = prometheus.api("/api/v1/rules").await.unwrap();
    let loaded = rules["data"]["groups"][0]["rules"].as_array().unwrap();
    assert!(loaded.len() >= 10 && loaded.iter().all(|r| r["health"] == "ok"), "{rules:#}");
    let alerts = prometheus.api("/api/v1/alerts").await.unwrap();
    assert_eq!(alerts["data"]["alerts"], json!([]), "a healthy unpoll fires nothing");
    drop(sse);
}
