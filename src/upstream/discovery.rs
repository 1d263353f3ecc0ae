//! Service discovery: server names are resolved again every `resolve_interval`, so that a DNS
//! change (a Kubernetes headless service, a rolling deploy) takes effect without a reload.
//! Every address a name resolves to is a server; servers that stay keep their health and
//! their sticky clients. A name that stops resolving keeps its last addresses, and the log
//! says so once. Lookups block, so they run on a blocking thread.

use super::{InForce, Upstream};
use crate::config::{self, ServerAddr};
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often the service looks for upstreams that are due.
const TICK: Duration = Duration::from_secs(1);

/// A lookup: every address a `host:port` resolves to, or why it does not.
pub type Lookup = fn(&str) -> Result<Vec<SocketAddr>, String>;

/// Re-resolves the servers of the upstreams in force.
pub struct Discovery {
    pub upstreams: InForce,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        super::every_tick(TICK, &mut shutdown, &self.upstreams, |upstreams| async move {
            for upstream in upstreams.into_iter().filter(|u| u.discovery_due()) {
                let metrics = self.metrics.clone();
                let _ = tokio::task::spawn_blocking(move || rediscover(&upstream, &metrics, config::lookup)).await;
            }
        })
        .await
    }
}

/// Resolves `upstream`'s names again with `lookup`, and puts the servers they resolve to in
/// rotation if they changed. Returns whether they did.
pub fn rediscover(upstream: &Upstream, metrics: &Metrics, lookup: Lookup) -> bool {
    let current = upstream.balancer().servers().iter().map(|s| s.configured()).collect::<Vec<ServerAddr>>();
    let mut next = Vec::new();
    for entry in &upstream.settings.addresses {
        if entry.address.parse::<SocketAddr>().is_ok() {
            next.extend(current.iter().filter(|s| s.name == entry.address).cloned());
            continue;
        }
        match lookup(&entry.address) {
            Ok(addrs) => {
                if upstream.failing_names.lock().unwrap_or_else(|e| e.into_inner()).remove(&entry.address) {
                    log::info!("upstream {}: `{}` resolves again", upstream.name, entry.address);
                }
                next.extend(addrs.into_iter().map(|addr| ServerAddr {
                    name: entry.address.clone(),
                    addr,
                    weight: entry.weight,
                }));
            }
            Err(why) => {
                if upstream.failing_names.lock().unwrap_or_else(|e| e.into_inner()).insert(entry.address.clone()) {
                    log::warn!("upstream {}: {why}; its last addresses stay in use", upstream.name);
                }
                next.extend(current.iter().filter(|s| s.name == entry.address).cloned());
            }
        }
    }
    if next == current || next.is_empty() {
        return false;
    }
    let shown: Vec<String> = next.iter().map(ServerAddr::label).collect();
    log::info!("upstream {}: its servers are now {}", upstream.name, shown.join(", "));
    upstream.set_servers(&next, metrics);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use std::sync::Mutex;

    /// What the scripted lookup answers.
    static ANSWER: Mutex<Option<Result<Vec<SocketAddr>, String>>> = Mutex::new(None);

    fn scripted(_: &str) -> Result<Vec<SocketAddr>, String> {
        ANSWER.lock().unwrap().clone().expect("an answer")
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn servers(upstream: &Upstream) -> Vec<SocketAddr> {
        upstream.balancer().servers().iter().map(|s| s.addr).collect()
    }

    #[test]
    fn a_name_resolving_elsewhere_changes_the_servers_and_those_that_stay_keep_their_health() {
        let text =
            "upstreams: {a: {servers: ['localhost:8081', '127.0.0.9:80']}}\nroutes: [{match: /x, upstream: a}]\n";
        let metrics = Metrics::default();
        let config = parse_config(text).unwrap();
        let upstream = &Upstream::new("a", &config.upstreams["a"], &metrics, None);
        *ANSWER.lock().unwrap() = Some(Ok(addrs(&["127.0.0.2:8081", "127.0.0.3:8081"])));
        assert!(rediscover(upstream, &metrics, scripted));
        assert_eq!(
            servers(upstream),
            addrs(&["127.0.0.2:8081", "127.0.0.3:8081", "127.0.0.9:80"]),
            "every address is a server; literals stay"
        );
        // 127.0.0.2 goes out; it stays out after the name moves on from 127.0.0.3.
        let two = upstream.balancer().servers()[0].clone();
        for _ in 0..3 {
            upstream.unreachable(&two);
        }
        *ANSWER.lock().unwrap() = Some(Ok(addrs(&["127.0.0.2:8081", "127.0.0.4:8081"])));
        assert!(rediscover(upstream, &metrics, scripted));
        assert_eq!(servers(upstream), addrs(&["127.0.0.2:8081", "127.0.0.4:8081", "127.0.0.9:80"]));
        assert!(!upstream.balancer().servers()[0].healthy(), "a server that stays keeps its health");
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(!text.contains("127.0.0.3:8081"), "a server that is gone leaves the metrics");
        assert!(text.contains("localhost:8081 (127.0.0.4:8081)"), "a resolved name is labelled with its address");
        // Nothing changed: nothing to do. A name that stops resolving keeps its addresses.
        assert!(!rediscover(upstream, &metrics, scripted));
        *ANSWER.lock().unwrap() = Some(Err("`localhost:8081` resolves to no address".into()));
        assert!(!rediscover(upstream, &metrics, scripted));
        assert_eq!(servers(upstream).len(), 3);
        assert!(upstream.failing_names.lock().unwrap().contains("localhost:8081"));
    }
}
