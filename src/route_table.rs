//! The route table in force: compiled from a [`Config`] and read lock-free through arc-swap.

use crate::config::{ClusterSettings, Config, RouteSettings, ServerSettings, StreamSettings};
use crate::metrics::{Metrics, REQUEST_KINDS, STATUS_CLASSES};
use crate::upstream::Upstream;
use prometheus::{Histogram, IntCounter};
use std::collections::HashMap;
use std::sync::Arc;

/// A route with its upstream resolved.
#[derive(Debug)]
pub struct Route {
    pub settings: RouteSettings,
    pub upstream: Arc<Upstream>,
    pub stream: Option<Arc<StreamSettings>>,
    /// Its request counters and durations.
    pub counters: RouteCounters,
}

impl Route {
    /// The route's label in metrics and logs: its `match` pattern.
    pub fn label(&self) -> &str {
        self.settings.pattern.as_str()
    }
}

/// A route's `unpoll_http_requests_total` (by kind) and `unpoll_proxy_request_duration_seconds`
/// (by status class) series.
#[derive(Clone)]
pub struct RouteCounters {
    requests: [IntCounter; 2],
    durations: [Histogram; 6],
}

impl std::fmt::Debug for RouteCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteCounters").finish_non_exhaustive()
    }
}

impl RouteCounters {
    /// The series of the route `label` (its `match` pattern), resolved once for each route
    /// table rather than looked up by label for each request.
    pub fn new(metrics: &Metrics, label: &str) -> RouteCounters {
        RouteCounters {
            requests: REQUEST_KINDS.map(|kind| metrics.requests.with_label_values(&[label, kind])),
            durations: STATUS_CLASSES.map(|class| metrics.proxy_duration.with_label_values(&[label, class])),
        }
    }

    /// A proxied request.
    pub fn proxied(&self) -> &IntCounter {
        &self.requests[0]
    }

    /// A subscription.
    pub fn subscribed(&self) -> &IntCounter {
        &self.requests[1]
    }

    /// A proxied request's duration, by the status of its answer (`None`: none reached the
    /// client).
    pub fn duration(&self, status: Option<u16>) -> &Histogram {
        let class = match status {
            Some(s @ 100..=599) => (s / 100 - 1) as usize,
            _ => 5,
        };
        &self.durations[class]
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
                let u = Upstream::new(name, settings, metrics, before.as_ref().map(|b| &***b));
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
                    counters: RouteCounters::new(metrics, r.pattern.as_str()),
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
