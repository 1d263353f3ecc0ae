//! Active health checks: every `health.interval`, each server of an upstream with `health`
//! is asked `GET health.path` on a connection of its own; a 2xx or 3xx answer within
//! `health.timeout` passes. The servers' health is in [`crate::balance`]; this only asks.

use crate::metrics::Metrics;
use crate::route_table::{RouteTable, Upstream};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often the checker looks for checks that are due.
const TICK: Duration = Duration::from_millis(100);
/// The most of an answer a check reads (its status line is all it needs).
const MAX_ANSWER: usize = 1024;

/// Runs the checks of the route table in force.
pub struct HealthChecks {
    pub table: Arc<ArcSwap<RouteTable>>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            for upstream in self.table.load().upstreams() {
                self.due(&upstream);
            }
        }
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
            let (path, timeout) = (health.path.clone(), health.timeout);
            tokio::spawn(async move {
                let passed = matches!(tokio::time::timeout(timeout, check(server.addr, &path)).await, Ok(Ok(true)));
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

/// One check: whether `GET path` on `addr` is answered 2xx or 3xx.
async fn check(addr: SocketAddr, path: &str) -> std::io::Result<bool> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: unpoll-health\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while answer.len() < MAX_ANSWER {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let line = answer.split(|b| *b == b'\n').next().unwrap_or_default();
    let status =
        std::str::from_utf8(line).ok().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse::<u16>().ok());
    Ok(status.is_some_and(|s| (200..400).contains(&s)))
}
