//! Test support: a scripted upstream, the real proxy binary on free ports, and real clients.
#![allow(dead_code, unused_imports)]

mod clients;
mod proxy;
mod redis_server;
mod setup;
pub mod tls;
mod upstream;

pub use clients::*;
pub use proxy::{config_text, free_port, unpoll_command, Proxy};
pub use redis_server::{RedisServer, CLUSTER_SECRET};
pub use setup::Setup;
pub use upstream::{Seen, Upstream};

use serde_json::Value;
use std::future::Future;
use std::time::Duration;

pub const SECOND: Duration = Duration::from_secs(1);

/// Version `v` of a small document, padded so that a one-field change goes out as a patch
/// (well under `max_patch_ratio` of the snapshot).
pub fn doc(v: u32) -> Value {
    serde_json::json!({"v": v, "pad": "p".repeat(100)})
}

/// The resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A keep-alive connection that has made one plain request (`GET /api/x`, answered 200) and
/// stays open, counted by the proxy.
pub async fn held_connection(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    c
}

/// The value of a sample in Prometheus text, matched by name and labels.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            return None;
        }
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

/// The metric families in `text` (its `# TYPE` lines) that docs/metrics.md does not name.
pub fn undocumented_families(text: &str) -> Vec<String> {
    let reference = include_str!("../../docs/metrics.md");
    let families: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    assert!(families.len() > 10, "families in the metrics text: {families:?}");
    families.into_iter().filter(|f| !reference.contains(&format!("`{f}`"))).map(str::to_string).collect()
}

/// Why a series is not in `text`: what the proxy reports of that name (or, if nothing, of
/// the names most like it).
pub fn absent(text: &str, name: &str, labels: &[(&str, &str)]) -> String {
    let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let same: Vec<&str> = series.iter().copied().filter(|l| l.split(['{', ' ']).next() == Some(name)).collect();
    // Names like it: containing it (or it them), else sharing the most words.
    let words = |n: &str| n.split('_').filter(|w| *w != "unpoll").map(str::to_string).collect::<Vec<_>>();
    let asked = words(name);
    let score = |line: &str| {
        let other = line.split(['{', ' ']).next().unwrap_or("");
        if other.contains(name) || name.contains(other) {
            return usize::MAX;
        }
        words(other).iter().filter(|w| asked.contains(w)).count()
    };
    let best = series.iter().map(|l| score(l)).max().unwrap_or(0).max(1);
    let near: Vec<&str> = series.iter().copied().filter(|l| score(l) >= best).take(20).collect();
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    if same.is_empty() {
        format!("no metric `{name}` at all; series with names like it:\n  {}", near.join("\n  "))
    } else {
        format!("no series `{name}{{{}}}`; the series of that name are:\n  {}", wanted.join(","), same.join("\n  "))
    }
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client-side copy of the document, built only from events, as a real client would.
#[derive(Debug, Clone, Default)]
pub struct Doc {
    pub value: Option<Value>,
    pub format: String,
}

impl Doc {
    pub fn new(format: &str) -> Doc {
        Doc { value: None, format: format.to_string() }
    }

    /// Applies one `snapshot` or `patch` event.
    pub fn apply(&mut self, kind: &str, data: Value) {
        match kind {
            "snapshot" => self.value = Some(data),
            "patch" => {
                let doc = self.value.as_mut().expect("a patch before any snapshot");
                match self.format.as_str() {
                    "merge-patch" => json_patch::merge(doc, &data),
                    "json-patch" => {
                        let patch: json_patch::Patch = serde_json::from_value(data).expect("an RFC 6902 patch");
                        json_patch::patch(doc, &patch).expect("the patch applies");
                    }
                    other => panic!("a patch in format {other}"),
                }
            }
            other => panic!("unexpected event {other}"),
        }
    }
}
