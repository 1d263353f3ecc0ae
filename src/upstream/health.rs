//! Active health checks: every `health.interval`, each server of an upstream with `health`
//! is asked `GET health.path` on a connection of its own; a 2xx or 3xx answer within
//! `health.timeout` passes. The servers' health is in [`crate::upstream::balance`]; this only asks.

use super::balance::Server;
use super::{InForce, Upstream};
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the checker looks for checks that are due.
const TICK: Duration = Duration::from_millis(100);

/// Runs the checks of the upstreams in force.
pub struct HealthChecks {
    pub upstreams: InForce,
    pub metrics: Arc<Metrics>,
    /// Connections of their own (never pooled), made as polls and requests make theirs (see
    /// [`super::peer`]): over TLS to a TLS upstream.
    pub connector: Arc<Connector>,
}

impl HealthChecks {
    pub fn new(upstreams: InForce, metrics: Arc<Metrics>) -> HealthChecks {
        HealthChecks { upstreams, metrics, connector: Arc::new(super::peer::connector()) }
    }
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        super::every_tick(TICK, &mut shutdown, &self.upstreams, |upstreams| async move {
            for upstream in upstreams {
                self.due(&upstream);
            }
        })
        .await
    }
}

impl HealthChecks {
    /// Starts the checks of `upstream`'s servers that are due.
    fn due(&self, upstream: &Arc<Upstream>) {
        let Some(health) = upstream.settings.health.clone() else { return };
        let now = Instant::now();
        for server in upstream.balancer().servers() {
            {
                let mut next = server.next_check.lock().unwrap_or_else(|e| e.into_inner());
                if next.is_some_and(|at| at > now) {
                    continue;
                }
                *next = Some(now + health.interval);
            }
            let (upstream, server, metrics) = (upstream.clone(), server.clone(), self.metrics.clone());
            let (path, timeout, connector) = (health.path.clone(), health.timeout, self.connector.clone());
            tokio::spawn(async move {
                let checked = tokio::time::timeout(timeout, check(&connector, &upstream, &server, &path)).await;
                if let Ok(Err(e)) = &checked {
                    if super::peer::is_tls_error(e) {
                        upstream.tls_failed(&server, e, "health");
                    }
                }
                let passed = matches!(checked, Ok(Ok(true)));
                if passed {
                    // The end of an outage (a TLS one, say) that requests and polls began.
                    upstream.answering(&server);
                }
                let result = if passed { "ok" } else { "failed" };
                metrics.health_checks.with_label_values(&[&upstream.name, &server.label, result]).inc();
                let rules = upstream.rules();
                let change = if passed { server.check_passed(rules) } else { server.check_failed(rules) };
                let why = if passed {
                    format!("{} checks of {path} passed", rules.healthy_after)
                } else {
                    format!("{} checks of {path} failed", rules.unhealthy_after)
                };
                upstream.changed(&server, change, &why);
            });
        }
    }
}

/// One check: whether `GET path` on `server` is answered 2xx or 3xx, on a connection of its
/// own, closed after it.
async fn check(connector: &Connector, upstream: &Upstream, server: &Server, path: &str) -> pingora::Result<bool> {
    let peer = upstream.peer(server, rand::random());
    let (mut session, _) = connector.get_http_session(&peer).await?;
    let mut req = RequestHeader::build("GET", path.as_bytes(), None)?;
    req.insert_header(http::header::HOST, upstream.host(server).unwrap_or_else(|| server.addr.to_string()))?;
    req.insert_header(http::header::USER_AGENT, "unpoll-health")?;
    req.insert_header(http::header::CONNECTION, "close")?;
    session.write_request_header(Box::new(req)).await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let status = session.response_header().map_or(0, |r| r.status.as_u16());
    Ok((200..400).contains(&status))
}
