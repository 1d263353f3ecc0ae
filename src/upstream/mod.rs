//! Everything about reaching an upstream's servers: the [`Upstream`]s in force and their
//! servers, selection ([`balance`]: round robin, sticky ids, Ketama), health (passive here and
//! in [`balance`], active in [`health`]), [`discovery`] of servers by name, which requests may
//! share a pooled connection and the checks before reuse ([`pool`]), and [`peer`], the one place
//! that builds the pingora peer of a server (plain or TLS) for polls, proxied requests and
//! health checks alike. A poll or a proxied request asks it once and reports the outcome once.

pub mod balance;
pub mod discovery;
pub mod health;
pub mod peer;
pub mod pool;

use crate::config::UpstreamSettings;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use balance::{Balancer, Rules, Server, Transition};
use pool::{Distrust, Plan, Quarantine};
use prometheus::IntCounterVec;
use std::net::SocketAddr;
use std::sync::Arc;

/// The upstreams in force (the route table's, each once), for the background services that
/// look after every upstream: health checks and discovery.
pub type InForce = Arc<dyn Fn() -> Vec<Arc<Upstream>> + Send + Sync>;

/// Every `period` until `shutdown`, hands `each` the upstreams in force (the loop of the
/// background services that look after every upstream).
async fn every_tick<F, Fut>(
    period: std::time::Duration,
    shutdown: &mut pingora::server::ShutdownWatch,
    upstreams: &InForce,
    mut each: F,
) where
    F: FnMut(Vec<Arc<Upstream>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        each(upstreams()).await;
    }
}

/// A group of upstream servers (see [`balance`] for how one is chosen).
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
    /// Servers whose connections are not reused for now (see [`pool`]).
    quarantine: Quarantine,
    /// How its servers are reached over TLS, when they are (see [`peer`]).
    tls: Option<peer::Tls>,
    /// `unpoll_upstream_tls_failures_total`.
    tls_failures: IntCounterVec,
}

impl Upstream {
    /// The upstream `name` configured by `settings`. Servers that `before` (the same upstream
    /// in the configuration it replaces) had keep their health.
    pub fn new(name: &str, settings: &UpstreamSettings, metrics: &Metrics, before: Option<&Balancer>) -> Upstream {
        if settings.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
            log::warn!(
                "upstream {name}: tls.insecure_skip_verify is on: its servers' certificates are not verified, so \
                 anyone on the path can read and change its traffic"
            );
        }
        Upstream {
            name: name.to_string(),
            settings: settings.clone(),
            balancer: ArcSwap::from_pointee(Balancer::new(name, &settings.servers, metrics, before)),
            resolved_at: std::sync::Mutex::new(Some(std::time::Instant::now())),
            failing_names: Default::default(),
            polls: tokio::sync::Semaphore::new(settings.max_concurrent_polls),
            quarantine: Quarantine::default(),
            tls: settings.tls.as_ref().map(peer::Tls::new),
            tls_failures: metrics.tls_failures.clone(),
        }
    }

    /// Whether its servers are reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

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

    /// A poll of `server` failed for a reason of the server's (unreachable, no answer, 5xx,
    /// TLS), or a request failed in TLS: logged at `warn` when it begins an outage, with the
    /// detail clients are not shown.
    pub fn failing(&self, server: &Server, detail: &str) {
        if server.outage_begins() {
            log::warn!(
                "upstream {} server {} is failing: {detail}; its topics retry with backoff",
                self.name,
                server.label
            );
        }
    }

    /// A request (`kind` of `unpoll_upstream_tls_failures_total`) to `server` failed in TLS
    /// with `e`: counted, and logged with why when it begins an outage of the server.
    pub fn tls_failed(&self, server: &Server, e: &pingora::Error, kind: &str) {
        self.tls_failures.with_label_values(&[&self.name, &server.label, kind]).inc();
        self.failing(server, &format!("TLS failed ({e})"));
    }

    /// A poll of `server` was answered: the end of its outage, if it had one, is logged.
    pub fn answering(&self, server: &Server) {
        if server.outage_ends() {
            log::info!("upstream {} server {} answers again", self.name, server.label);
        }
    }

    /// `server` could not be reached (refused, reset, timed out): it counts towards taking it
    /// out of rotation (see [`balance`]).
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
