//! The route table in force: compiled from a [`Config`] and read lock-free through arc-swap.

use crate::config::{Config, RouteSettings, ServerSettings, StreamSettings, UpstreamSettings};
use crate::pool::{self, Distrust, Plan, Quarantine};
use prometheus::IntCounterVec;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A group of upstream servers, chosen round robin.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub settings: UpstreamSettings,
    next: AtomicUsize,
    /// One permit per poll in flight: `max_concurrent_polls`.
    pub polls: tokio::sync::Semaphore,
    /// Servers whose connections are not reused for now (see [`crate::pool`]).
    quarantine: Quarantine,
    /// Servers whose polls fail, so that an outage is logged once, and its end.
    failing: std::sync::Mutex<std::collections::HashSet<SocketAddr>>,
}

impl Upstream {
    /// The next server in round-robin order.
    pub fn pick(&self) -> SocketAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.settings.servers[i % self.settings.servers.len()]
    }

    /// A poll of `server` failed for a reason of the server's (unreachable, no answer, 5xx):
    /// logged at `warn` when it begins an outage, with the detail clients are not shown.
    pub fn failing(&self, server: SocketAddr, detail: &str) {
        if self.failing.lock().unwrap_or_else(|e| e.into_inner()).insert(server) {
            log::warn!("upstream {} server {server} is failing: {detail}; its topics retry with backoff", self.name);
        }
    }

    /// A poll of `server` was answered: the end of its outage, if it had one, is logged.
    pub fn answering(&self, server: SocketAddr) {
        if self.failing.lock().unwrap_or_else(|e| e.into_inner()).remove(&server) {
            log::info!("upstream {} server {server} answers again", self.name);
        }
    }

    /// How a request made for `identity` (see [`pool::identity`]) gets its connection to `server`.
    pub fn plan(&self, server: SocketAddr, identity: u64) -> Plan {
        pool::plan(self.settings.reuse, self.quarantine.holds(server), identity)
    }

    /// Stops reusing connections to `server` for a while: it left bytes behind or framed a
    /// response doubtfully. Counted in `refused` (`unpoll_upstream_reuse_refused_total`).
    pub fn distrust(&self, server: SocketAddr, why: Distrust, refused: &IntCounterVec) {
        refused.with_label_values(&[&self.name, why.label()]).inc();
        if self.quarantine.begin(server) {
            log::warn!(
                "upstream {} server {server}: {} on a connection; its connections are not reused for {}s",
                self.name,
                match why {
                    Distrust::StrayBytes => "bytes arrived outside any response",
                    Distrust::DoubtfulFraming => "a response's framing is in doubt",
                },
                pool::QUARANTINE.as_secs()
            );
        }
    }
}

/// A route with its upstream resolved.
#[derive(Debug)]
pub struct Route {
    pub settings: RouteSettings,
    pub upstream: Arc<Upstream>,
    pub stream: Option<Arc<StreamSettings>>,
}

impl Route {
    /// The route's label in metrics and logs: its `match` pattern.
    pub fn label(&self) -> &str {
        self.settings.pattern.as_str()
    }
}

/// A stream route: a route whose stream settings are there, which is what a topic follows.
#[derive(Debug, Clone)]
pub struct StreamRoute {
    pub route: Arc<Route>,
    pub stream: Arc<StreamSettings>,
}

impl StreamRoute {
    /// `route` as a stream route, if it is one.
    pub fn of(route: &Arc<Route>) -> Option<StreamRoute> {
        Some(StreamRoute { route: route.clone(), stream: route.stream.clone()? })
    }

    /// The route's label in metrics and logs.
    pub fn label(&self) -> &str {
        self.route.label()
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.route.upstream
    }
}

/// Everything a request needs to be routed, as one immutable value.
#[derive(Debug)]
pub struct RouteTable {
    pub server: ServerSettings,
    pub routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(config: &Config) -> RouteTable {
        let upstreams: HashMap<_, _> = config
            .upstreams
            .iter()
            .map(|(name, settings)| {
                let u = Upstream {
                    name: name.clone(),
                    settings: settings.clone(),
                    next: AtomicUsize::new(0),
                    polls: tokio::sync::Semaphore::new(settings.max_concurrent_polls),
                    quarantine: Quarantine::default(),
                    failing: Default::default(),
                };
                (name.clone(), Arc::new(u))
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                Arc::new(Route {
                    settings: r.clone(),
                    upstream: upstreams[&r.upstream].clone(),
                    stream: r.stream.clone().map(Arc::new),
                })
            })
            .collect();
        RouteTable { server: config.server.clone(), routes }
    }

    /// The first route whose pattern matches `path`.
    pub fn route(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.settings.pattern.matches(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_wins_and_servers_rotate() {
        let config = crate::config::parse_config(
            "upstreams: {a: {servers: ['127.0.0.1:1', '127.0.0.1:2']}}\nroutes:\n  - {match: '/x/{id}', upstream: a, stream: {}}\n  - {match: /*, upstream: a}\n",
        )
        .unwrap();
        let rt = RouteTable::new(&config);
        assert!(rt.route("/x/1").unwrap().stream.is_some());
        assert!(rt.route("/x/1/2").unwrap().stream.is_none());
        let u = &rt.routes[0].upstream;
        let picks: Vec<u16> = (0..4).map(|_| u.pick().port()).collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
    }
}
