//! The route table in force: compiled from a [`Config`] and read lock-free through arc-swap.

use crate::balance::{Balancer, Rules, Server, Transition};
use crate::config::{ClusterSettings, Config, RouteSettings, ServerSettings, StreamSettings, UpstreamSettings};
use crate::metrics::Metrics;
use crate::pool::{self, Distrust, Plan, Quarantine};
use arc_swap::ArcSwap;
use prometheus::IntCounterVec;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// A group of upstream servers (see [`crate::balance`] for how one is chosen).
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub settings: UpstreamSettings,
    /// Its servers and how one is chosen; replaced when names resolve to other addresses
    /// (service discovery).
    balancer: ArcSwap<Balancer>,
    /// When its names were last resolved.
    pub(crate) resolved_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Names that did not resolve last time.
    pub(crate) failing_names: std::sync::Mutex<std::collections::HashSet<String>>,
    /// One permit per poll in flight: `max_concurrent_polls`.
    pub polls: tokio::sync::Semaphore,
    /// Servers whose connections are not reused for now (see [`crate::pool`]).
    quarantine: Quarantine,
}

impl Upstream {
    /// The next healthy server in weighted round-robin order.
    pub fn pick(&self) -> Arc<Server> {
        self.balancer().round_robin(None).clone()
    }

    /// Whether its names are due to be resolved again (and marks them done).
    pub fn discovery_due(&self) -> bool {
        let named = self.settings.addresses.iter().any(|e| e.address.parse::<SocketAddr>().is_err());
        if !named {
            return false;
        }
        let mut last = self.resolved_at.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.settings.resolve_interval) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Its servers and how one is chosen, as they are now.
    pub fn balancer(&self) -> arc_swap::Guard<Arc<Balancer>> {
        self.balancer.load()
    }

    /// Puts `servers` in rotation; those it had already keep their health.
    pub fn set_servers(&self, servers: &[crate::config::ServerAddr], metrics: &Metrics) {
        let next = Balancer::new(&self.name, servers, metrics, Some(&self.balancer()));
        self.balancer.store(Arc::new(next));
    }

    /// A poll of `server` failed for a reason of the server's (unreachable, no answer, 5xx):
    /// logged at `warn` when it begins an outage, with the detail clients are not shown.
    pub fn failing(&self, server: &Server, detail: &str) {
        if server.outage_begins() {
            log::warn!(
                "upstream {} server {} is failing: {detail}; its topics retry with backoff",
                self.name,
                server.label
            );
        }
    }

    /// A poll of `server` was answered: the end of its outage, if it had one, is logged.
    pub fn answering(&self, server: &Server) {
        if server.outage_ends() {
            log::info!("upstream {} server {} answers again", self.name, server.label);
        }
    }

    /// `server` could not be reached (refused, reset, timed out): it counts towards taking it
    /// out of rotation (see [`crate::balance`]).
    pub fn unreachable(&self, server: &Server) {
        let rules = self.rules();
        let change = server.failed(rules);
        self.changed(server, change, &format!("after {} failures in a row", rules.unhealthy_after));
    }

    /// `server` answered.
    pub fn reached(&self, server: &Server) {
        self.changed(server, server.answered(), "it answers");
    }

    /// When servers are taken out and brought back.
    pub fn rules(&self) -> Rules {
        match &self.settings.health {
            Some(h) => {
                Rules { unhealthy_after: h.unhealthy_after, healthy_after: h.healthy_after, out_for: h.interval }
            }
            None => Rules::default(),
        }
    }

    /// Logs a change in `server`'s health, once, and when every server is out.
    pub fn changed(&self, server: &Server, change: Option<Transition>, why: &str) {
        match change {
            Some(Transition::Down) => {
                log::warn!("upstream {} server {} is out of rotation ({why})", self.name, server.label);
                if self.balancer().all_down() {
                    log::warn!("upstream {}: every server is out; requests still go to one of them", self.name);
                }
            }
            Some(Transition::Up) => {
                log::info!("upstream {} server {} is back in rotation ({why})", self.name, server.label)
            }
            None => {}
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
    /// `cluster:`, as the process started with it (it changes only with a restart).
    pub cluster: Option<ClusterSettings>,
    pub routes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// The table of `config`. Servers that `previous` (the table it replaces) had keep their
    /// health.
    pub fn new(config: &Config, metrics: &Metrics, previous: Option<&RouteTable>) -> RouteTable {
        let upstreams: HashMap<_, _> = config
            .upstreams
            .iter()
            .map(|(name, settings)| {
                let before = previous.and_then(|p| p.upstream(name)).map(|u| u.balancer());
                let u = Upstream {
                    name: name.clone(),
                    settings: settings.clone(),
                    balancer: ArcSwap::from_pointee(Balancer::new(
                        name,
                        &settings.servers,
                        metrics,
                        before.as_ref().map(|b| &***b),
                    )),
                    resolved_at: std::sync::Mutex::new(Some(std::time::Instant::now())),
                    failing_names: Default::default(),
                    polls: tokio::sync::Semaphore::new(settings.max_concurrent_polls),
                    quarantine: Quarantine::default(),
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
        RouteTable { server: config.server.clone(), cluster: config.cluster.clone(), routes }
    }

    /// Every upstream a route uses, each once.
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        let mut out: Vec<Arc<Upstream>> = Vec::new();
        for route in &self.routes {
            if !out.iter().any(|u| Arc::ptr_eq(u, &route.upstream)) {
                out.push(route.upstream.clone());
            }
        }
        out
    }

    /// The upstream named `name`.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.routes.iter().map(|r| &r.upstream).find(|u| u.name == name)
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
        let rt = RouteTable::new(&config, &Metrics::default(), None);
        assert!(rt.route("/x/1").unwrap().stream.is_some());
        assert!(rt.route("/x/1/2").unwrap().stream.is_none());
        let u = &rt.routes[0].upstream;
        let picks: Vec<u16> = (0..4).map(|_| u.pick().addr.port()).collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
    }
}
