//! The admin listener's `GET /status`: what the proxy is doing, as JSON.
//!
//! Per stream route its live topics: subscribers by protocol and format, the last poll's time
//! and outcome, the current version, the error subscribers were told, and in a cluster this
//! node's role. A topic is named by its route, its target (path and query as sent upstream,
//! with `unpoll_*` and token parameters already gone, and the value of any parameter whose
//! name looks like a credential written `redacted`, see [`crate::redact`]) and a short hash
//! of the headers that
//! split it. That hash is salted per process, so it tells topics apart without letting anyone
//! confirm a guessed credential; no header value appears. At most [`TOPICS_LISTED`] topics
//! are listed per route, the most subscribed first, with the route's `topic_count`.

use crate::cluster::Cluster;
use crate::config::Format;
use crate::metrics::Metrics;
use crate::route_table::RouteTable;
use crate::topic::hub::Hub;
use crate::topic::state::Topic;
use crate::wire::encode::Protocol;
use arc_swap::ArcSwap;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Topics listed per route, the most subscribed first (`topic_count` says how many there are).
pub const TOPICS_LISTED: usize = 100;
/// Topics read at all for one answer (`server.max_topics` may be millions).
const MAX_TOPICS_READ: usize = 100_000;

/// What `/status` reads.
pub struct Status {
    pub hub: Arc<Hub>,
    pub table: Arc<ArcSwap<RouteTable>>,
    pub metrics: Arc<Metrics>,
    pub cluster: Option<Arc<Cluster>>,
    started: Instant,
    salt: [u8; 16],
}

impl Status {
    pub fn new(
        hub: Arc<Hub>,
        table: Arc<ArcSwap<RouteTable>>,
        metrics: Arc<Metrics>,
        cluster: Option<Arc<Cluster>>,
    ) -> Status {
        Status { hub, table, metrics, cluster, started: Instant::now(), salt: rand::random() }
    }

    /// The whole answer, as pretty JSON.
    pub fn render(&self, draining: bool) -> Vec<u8> {
        let table = self.table.load();
        let mut topics = self.hub.topics();
        topics.sort_by(|a, b| (&a.key.route, &a.key.target).cmp(&(&b.key.route, &b.key.target)));
        topics.truncate(MAX_TOPICS_READ);
        let mut routes: Vec<Value> = Vec::new();
        for route in table.routes.iter().filter(|r| r.stream.is_some()) {
            let mut of_route: Vec<&Arc<Topic>> = topics.iter().filter(|t| t.key.route == route.label()).collect();
            // The most subscribed first, and no more than a page of them.
            of_route.sort_by_key(|t| std::cmp::Reverse(t.subscribers()));
            let listed: Vec<Value> = of_route.iter().take(TOPICS_LISTED).map(|t| self.topic(t)).collect();
            let subscribers: usize = of_route.iter().map(|t| t.subscribers()).sum();
            routes.push(json!({
                "route": route.label(),
                "topic_count": of_route.len(),
                "subscribers": subscribers,
                "topics": listed,
            }));
        }
        // Topics whose route a reload just removed, until they are gone, by route.
        let mut removed: std::collections::BTreeMap<&str, Vec<&Arc<Topic>>> = Default::default();
        for t in topics.iter().filter(|t| !table.routes.iter().any(|r| r.label() == t.key.route)) {
            removed.entry(t.key.route.as_str()).or_default().push(t);
        }
        for (route, of_route) in removed {
            let listed: Vec<Value> = of_route.iter().take(TOPICS_LISTED).map(|t| self.topic(t)).collect();
            routes.push(json!({"route": route, "removed": true, "topic_count": of_route.len(), "topics": listed}));
        }
        let cluster = self.cluster.as_ref().map(|c| json!({"node": c.settings.node, "redis_up": c.is_up()}));
        let body = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "commit": env!("UNPOLL_COMMIT"),
            "pid": std::process::id(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "config_generation": self.metrics.generation.get(),
            "draining": draining,
            "cluster": cluster,
            "topics": self.hub.len(),
            "subscribers": topics.iter().map(|t| t.subscribers()).sum::<usize>(),
            "routes": routes,
        });
        let mut out = serde_json::to_vec_pretty(&body).expect("JSON values always serialise");
        out.push(b'\n');
        out
    }

    fn topic(&self, topic: &Topic) -> Value {
        let status = topic.status();
        let mut hasher = Sha256::new();
        hasher.update(self.salt);
        hasher.update(topic.key.headers_hash);
        let hash: String = hasher.finalize()[..4].iter().map(|b| format!("{b:02x}")).collect();
        let formats: serde_json::Map<String, Value> =
            Format::ALL.iter().map(|f| (f.name().to_string(), json!(status.formats[f.index()]))).collect();
        let last_poll = status.report.polled.map(|(at, outcome)| {
            let unix = at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            let ago = SystemTime::now().duration_since(at).map_or(0.0, |d| d.as_secs_f64());
            json!({"at": httpdate::fmt_http_date(at), "unix": unix, "ago_seconds": ago, "outcome": outcome})
        });
        let last_refresh = status.report.refreshed.map(|(at, cause)| {
            let unix = at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            json!({"at": httpdate::fmt_http_date(at), "unix": unix, "cause": cause.name()})
        });
        // A query parameter that carries a credential is not shown (see `redact`).
        let target = crate::redact::target(&topic.key.target);
        json!({
            "topic": format!("{} {target} #{hash}", topic.key.route),
            "target": target,
            "hash": hash,
            "subscribers": {"total": topic.subscribers(), "sse": status.protocols[Protocol::Sse.index()], "websocket": status.protocols[Protocol::WebSocket.index()]},
            "formats": formats,
            "last_poll": last_poll,
            "last_refresh": last_refresh,
            "version": status.version,
            "error": status.error,
            "role": status.report.role,
        })
    }
}
